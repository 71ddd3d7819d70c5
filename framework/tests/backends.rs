//! Migrations for one backend, and generic migrations registered for every backend compiled
//! in: they compile, and each is registered for the backends it names.
#![cfg(all(feature = "postgres", feature = "sqlite"))]

use datamig::prelude::*;

#[datamig::migration(id = "20241114_0930_postgres_only")]
async fn postgres_only(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.execute("SELECT 1").await?;
    Ok(())
}

#[datamig::migration(id = "20241114_0931_sqlite_only")]
async fn sqlite_only(ctx: &mut Ctx<'_, Sqlite>) -> anyhow::Result<()> {
    ctx.execute("SELECT 1").await?;
    Ok(())
}

#[datamig::migration(id = "20241114_0932_portable")]
async fn portable<DB: Backend>(ctx: &mut Ctx<'_, DB>) -> anyhow::Result<()> {
    ctx.execute("SELECT 1").await?;
    Ok(())
}

#[datamig::migration(
    id = "20241114_0933_portable_batched",
    batch(table = "users", key = "id", size = 100)
)]
async fn portable_batched<DB>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()>
where
    DB: datamig::Backend,
{
    ctx.execute_batch("UPDATE users SET n = n WHERE id > $1 AND id <= $2", &batch)
        .await?;
    Ok(())
}

#[test]
fn each_migration_is_registered_for_its_backends() {
    assert_eq!(postgres_only::MIGRATION.backends(), ["postgres"]);
    assert_eq!(sqlite_only::MIGRATION.backends(), ["sqlite"]);
    // Every backend compiled in: PostgreSQL and SQLite by default, and MySQL where a crate of
    // the build turns its feature on.
    for generic in [&portable::MIGRATION, &portable_batched::MIGRATION] {
        let backends = generic.backends();
        assert_eq!(backends[..2], ["postgres", "sqlite"]);
        assert!(
            backends[2..].is_empty() || backends[2..] == ["mysql"],
            "{backends:?}"
        );
    }
    assert!(portable_batched::MIGRATION.batch().is_some());
}
