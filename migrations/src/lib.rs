//! The demo application's data migrations.
//!
//! The story: a product adds a notification bell. New users get default notification
//! settings when they sign up; the users who already exist need them too, and that is a data
//! migration. A second one cleans up email addresses.
//!
//! The data migrations are written once, generic over the backend, and run on PostgreSQL,
//! SQLite and MySQL (MariaDB) alike. The schema they need is in `schema/postgres/`,
//! `schema/sqlite/` and `schema/mysql/`, as `sqlx` schema migrations with the same versions
//! ([`schema`], [`sqlite_schema`], [`mysql_schema`]): a schema tool changes tables,
//! datamig changes rows.

use datamig::prelude::*;

/// Makes sure this crate is linked, so its migrations are registered.
///
/// Migrations register themselves through `inventory` when their crate is linked, and rustc
/// does not link a crate that nothing refers to: a binary that depends on this crate but
/// never calls into it would silently run no migrations. Every binary that runs these
/// migrations calls `link()` first.
pub fn link() {
    datamig::link_marker(module_path!());
}

/// The demo application's PostgreSQL schema migrations (`schema/postgres/`), for `sqlx`'s
/// migrator.
pub fn schema() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./schema/postgres")
}

/// The demo application's SQLite schema migrations (`schema/sqlite/`): the same tables and
/// versions as [`schema`], in SQLite's types.
pub fn sqlite_schema() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./schema/sqlite")
}

/// The demo application's MySQL and MariaDB schema migrations (`schema/mysql/`): the same
/// tables and versions as [`schema`], in MySQL's types.
pub fn mysql_schema() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./schema/mysql")
}

/// The email of demo user `n`: every third one upper case with stray spaces.
const SEED_EMAIL: &str = "CASE WHEN n % 3 = 0 THEN ' User' || n || '@Example.COM '
                              ELSE 'user' || n || '@example.com' END";

/// Inserts `count` demo users whose emails are not all clean (upper case, stray spaces),
/// numbered after the users already there.
///
/// # Errors
///
/// Any database error.
pub async fn seed_users(pool: &sqlx::PgPool, count: i64) -> Result<u64, sqlx::Error> {
    let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO users (email)
         SELECT {SEED_EMAIL}
         FROM generate_series((SELECT count(*) FROM users) + 1, (SELECT count(*) FROM users) + $1) AS n"
    )))
    .bind(count)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(inserted)
}

/// [`seed_users`] for SQLite.
///
/// # Errors
///
/// Any database error.
pub async fn seed_users_sqlite(pool: &sqlx::SqlitePool, count: i64) -> Result<u64, sqlx::Error> {
    let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH RECURSIVE seq (n) AS (
             SELECT (SELECT count(*) FROM users) + 1
             UNION ALL SELECT n + 1 FROM seq WHERE n < (SELECT count(*) FROM users) + $1
         )
         INSERT INTO users (email) SELECT {SEED_EMAIL} FROM seq WHERE $1 > 0"
    )))
    .bind(count)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(inserted)
}

/// [`seed_users`] for MySQL and MariaDB (sqlx turns on `PIPES_AS_CONCAT`, so `||` joins
/// text as elsewhere).
///
/// # Errors
///
/// Any database error.
pub async fn seed_users_mysql(pool: &sqlx::MySqlPool, count: i64) -> Result<u64, sqlx::Error> {
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(pool)
        .await?;
    let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO users (email)
         WITH RECURSIVE seq (n) AS (
             SELECT ? + 1 UNION ALL SELECT n + 1 FROM seq WHERE n < ? + ?
         )
         SELECT {SEED_EMAIL} FROM seq WHERE ? > 0"
    )))
    .bind(existing)
    .bind(existing)
    .bind(count)
    .bind(count)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(inserted)
}

/// Give every existing user the default notification settings (email and push on).
///
/// Users who already have settings keep them: only missing keys are inserted, so a second
/// run inserts nothing.
#[datamig::migration(
    id = "20241114_0930_backfill_notification_settings",
    requires_schema = 20241110000000
)]
pub async fn backfill_notification_settings<DB: Backend>(
    ctx: &mut Ctx<'_, DB>,
) -> anyhow::Result<()> {
    let report = ctx
        .upsert("notification_settings")
        .key(["user_id"])
        .from_query("SELECT id AS user_id, true AS email_enabled, true AS push_enabled FROM users")
        .insert_missing()
        .execute()
        .await?;
    ctx.note(format!(
        "{} users got default notification settings",
        report.inserted
    ));
    Ok(())
}

/// Store every email address trimmed and in lower case.
///
/// Batched: 10,000 users a transaction, so the table is never locked for long, and a run
/// that stops resumes from its checkpoint. Only rows that change are written, so a second
/// run updates nothing.
#[datamig::migration(
    id = "20241120_1200_normalize_user_emails",
    lock_timeout = "2s",
    batch(table = "users", key = "id", size = 10_000)
)]
pub async fn normalize_user_emails<DB: Backend>(
    ctx: &mut Ctx<'_, DB>,
    batch: Batch,
) -> anyhow::Result<()> {
    // SQL every backend accepts: `lower`, `trim`, `<>` (email is NOT NULL), `$1`, `$2`.
    ctx.execute_batch(
        "UPDATE users SET email = lower(trim(email))
         WHERE id > $1 AND id <= $2 AND email <> lower(trim(email))",
        &batch,
    )
    .await?;
    Ok(())
}
