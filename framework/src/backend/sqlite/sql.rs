//! What several of SQLite's concerns ask the database.

use sqlx::AssertSqlSafe;
use sqlx::sqlite::SqliteConnection;

use crate::sql::quote_ident;

/// Whether `table` exists in `schema` (`main` by default).
pub(super) async fn table_exists(
    conn: &mut SqliteConnection,
    schema: Option<&str>,
    table: &str,
) -> Result<bool, sqlx::Error> {
    let master = format!("{}.sqlite_master", quote_ident(schema.unwrap_or("main")));
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM {master} WHERE type = 'table' AND name = $1)"
    )))
    .bind(table)
    .fetch_one(conn)
    .await
}
