//! Every PostgreSQL transaction datamig opens states its isolation level.
//!
//! datamig's statements are written for `READ COMMITTED`: each sees what committed before
//! it began. A server (or database, or role) whose `default_transaction_isolation` is
//! `repeatable read` or `serializable` would otherwise give each transaction one snapshot
//! for its whole length, and two workers finishing the last two ranges of a migration at
//! once would each see the other's range as not done: every range done, the migration
//! never applied. So no transaction takes the server's default.

use sqlx::Connection;
use sqlx::postgres::{PgConnection, Postgres};

/// The statement that begins every PostgreSQL transaction of datamig's.
pub(crate) const BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

/// Begins a `READ COMMITTED` transaction on `conn`, whatever the server's default; inside
/// a transaction already (begun here too), a savepoint.
pub(crate) async fn begin_read_committed(
    conn: &mut PgConnection,
) -> Result<sqlx::Transaction<'_, Postgres>, sqlx::Error> {
    if conn.is_in_transaction() {
        conn.begin().await
    } else {
        conn.begin_with(BEGIN).await
    }
}
