//! A migration that fails keeps its error: `Error::MigrationFailed`'s `source()` is the
//! error the body returned, and a `sqlx::Error` in it is found by walking the chain, with
//! the database's own code, on PostgreSQL and on SQLite. The message still shows the chain.

use std::error::Error as _;

use anyhow::Context as _;
use datamig::Error;
use datamig::prelude::*;

/// Updates a table that does not exist, with a context around the database's error.
#[datamig::migration(id = "20250601_0000_update_missing_table")]
async fn update_missing_table<DB: Backend>(ctx: &mut Ctx<'_, DB>) -> anyhow::Result<()> {
    ctx.execute("UPDATE no_such_table SET flag = 1")
        .await
        .context("flagging the rows")?;
    Ok(())
}

/// Each batch updates a table that does not exist, returning the database's error as is.
#[datamig::migration(
    id = "20250601_0001_batched_missing_table",
    batch(table = "items", key = "id", size = 10)
)]
async fn batched_missing_table(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE no_such_table SET flag = 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// The same with two workers, each walking ranges of the key.
#[datamig::migration(
    id = "20250601_0002_workers_missing_table",
    batch(table = "items", key = "id", size = 10, workers = 2)
)]
async fn workers_missing_table(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE no_such_table SET flag = 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// The `sqlx::Error` in the chain of sources of `err`, after the error itself.
fn sqlx_source(err: &Error) -> Option<&sqlx::Error> {
    let mut cause = err.source();
    while let Some(err) = cause {
        if let Some(found) = err.downcast_ref::<sqlx::Error>() {
            return Some(found);
        }
        cause = err.source();
    }
    None
}

/// The database's code of the `sqlx::Error` that failed migration `id`.
fn database_code(err: &Error, id: &str) -> String {
    let Error::MigrationFailed {
        id: failed,
        panicked,
        ..
    } = err
    else {
        panic!("expected MigrationFailed, got {err:?}");
    };
    assert_eq!((failed.as_str(), *panicked), (id, false));
    let found =
        sqlx_source(err).unwrap_or_else(|| panic!("no sqlx::Error in the sources of {err}"));
    let sqlx::Error::Database(db) = found else {
        panic!("expected a database error, got {found:?}");
    };
    db.code().expect("a database code").into_owned()
}

#[tokio::test]
async fn a_postgres_error_of_the_body_is_the_source_with_its_sqlstate() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    let err = Migrator::new(db.pool().clone())
        .migrations([&update_missing_table::MIGRATION])
        .run()
        .await
        .expect_err("the table does not exist");
    assert_eq!(
        database_code(&err, update_missing_table::MIGRATION.id()),
        "42P01"
    );
    // The body's own error comes first: its context, then the database's error.
    let source = err.source().expect("a source");
    assert_eq!(source.to_string(), "flagging the rows");
    assert!(
        err.to_string().contains(
            "flagging the rows: relation \"no_such_table\" does not exist (SQLSTATE 42P01)"
        ),
        "the message shows the chain: {err}"
    );
    Ok(())
}

/// A database with a table `items` of 25 keys.
async fn items_database() -> anyhow::Result<datamig::testing::TestDatabase> {
    let db = datamig::testing::postgres().await?;
    sqlx::query("CREATE TABLE items (id bigint PRIMARY KEY)")
        .execute(db.pool())
        .await?;
    sqlx::query("INSERT INTO items SELECT generate_series(1, 25)")
        .execute(db.pool())
        .await?;
    Ok(db)
}

#[tokio::test]
async fn a_postgres_error_of_a_batch_is_the_source_with_its_sqlstate() -> anyhow::Result<()> {
    let db = items_database().await?;
    let err = Migrator::new(db.pool().clone())
        .migrations([&batched_missing_table::MIGRATION])
        .run()
        .await
        .expect_err("the table does not exist");
    assert_eq!(
        database_code(&err, batched_missing_table::MIGRATION.id()),
        "42P01"
    );
    // Returned as is, the database's error is the source itself.
    assert!(err.source().expect("a source").is::<sqlx::Error>());
    assert!(err.to_string().contains("batch 1: "), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_postgres_error_of_a_workers_batch_is_the_source_with_its_sqlstate() -> anyhow::Result<()>
{
    let db = items_database().await?;
    let err = Migrator::new(db.pool().clone())
        .migrations([&workers_missing_table::MIGRATION])
        .run()
        .await
        .expect_err("the table does not exist");
    assert_eq!(
        database_code(&err, workers_missing_table::MIGRATION.id()),
        "42P01"
    );
    assert!(err.to_string().contains("range "), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_sqlite_error_of_the_body_is_the_source_with_its_code() -> anyhow::Result<()> {
    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    let err = Migrator::new(pool)
        .migrations([&update_missing_table::MIGRATION])
        .run()
        .await
        .expect_err("the table does not exist");
    // SQLITE_ERROR, the code of a statement on a missing table.
    assert_eq!(
        database_code(&err, update_missing_table::MIGRATION.id()),
        "1"
    );
    assert!(
        err.to_string().contains("no such table: no_such_table"),
        "the message shows the chain: {err}"
    );
    Ok(())
}
