//! PostgreSQL: session advisory lock, `set_config(.., true)` timeouts, ledger DDL.
//!
//! A file per concern, as the step traits are grouped: `ledger.rs`, `lock.rs` (the advisory
//! lock, the lease, pooler evidence, sessions), `walk.rs`, `tables.rs`, `upsert.rs`,
//! `ranges.rs` (several workers); `sql.rs` holds how every statement here is sent.

mod ledger;
mod lock;
mod ranges;
mod sql;
mod tables;
mod upsert;
mod walk;

use std::time::Duration;

use sqlx::postgres::PgConnection;
use sqlx::{Postgres, SqlStr};

use crate::backend::Backend;
use crate::backend::dialect::{Actor, Dialect, Syntax};
use crate::backend::isolation::begin_read_committed;
use crate::backend::shared::Shared;
use crate::backend::steps::ConnectionSteps;
use crate::key::KeyValue;
use crate::migration::{Code, Migration};

// What the copy (`datamig::copy`), which runs on PostgreSQL only, sends its statements
// through and reads sessions and fingerprints with.
pub(crate) use self::lock::{SESSION_COLUMNS, session_info};
pub(crate) use self::sql::{explained_rows, query, query_as, query_scalar};

impl Backend for Postgres {}

impl ConnectionSteps for Postgres {
    const ID: &'static str = "postgres";
    const CLOSE_RUNNER_CONNECTION: bool = true;
    const PIN_IN_TRANSACTION: bool = true;

    const DIALECT: Dialect = Dialect {
        actor: Actor::DatabaseUser,
        persistent: false,
        syntax: Syntax::Standard,
    };

    fn code(migration: &Migration) -> Option<Code<Self>> {
        migration.postgres_code()
    }

    async fn begin(
        conn: &mut PgConnection,
        _lock_timeout: Option<Duration>,
    ) -> Result<sqlx::Transaction<'_, Postgres>, sqlx::Error> {
        begin_read_committed(conn).await
    }

    async fn execute(conn: &mut PgConnection, sql: SqlStr) -> Result<u64, sqlx::Error> {
        Shared::<Self>::execute(conn, sql).await
    }

    async fn fetch_i64(conn: &mut PgConnection, sql: SqlStr) -> Result<Option<i64>, sqlx::Error> {
        Shared::<Self>::fetch_i64(conn, sql).await
    }

    async fn execute_keyed(
        conn: &mut PgConnection,
        sql: SqlStr,
        values: &[KeyValue],
    ) -> Result<u64, sqlx::Error> {
        Shared::<Self>::execute_keyed(conn, sql, values).await
    }

    fn rows_affected(result: &<Self as sqlx::Database>::QueryResult) -> u64 {
        result.rows_affected()
    }

    async fn set_local_timeouts(
        conn: &mut PgConnection,
        lock_timeout: Option<Duration>,
        statement_timeout: Option<Duration>,
        idle_in_transaction: Option<Duration>,
    ) -> Result<(), sqlx::Error> {
        // `set_config(.., true)` is `SET LOCAL` with a bound value: it ends with the transaction.
        for (name, value) in [
            ("lock_timeout", lock_timeout),
            ("statement_timeout", statement_timeout),
            ("idle_in_transaction_session_timeout", idle_in_transaction),
        ] {
            if let Some(value) = value {
                query("SELECT set_config($1, $2, true)")
                    .bind(name)
                    .bind(format!("{}ms", value.as_millis().max(1)))
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(())
    }

    fn is_lock_timeout(err: &sqlx::Error) -> bool {
        // 55P03 lock_not_available: raised when lock_timeout expires.
        err.as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|c| c == "55P03")
    }

    fn is_statement_timeout(err: &sqlx::Error) -> bool {
        // 57014 query_canceled, raised by statement_timeout and by a cancel request alike:
        // only the timeout's message says which.
        err.as_database_error().is_some_and(|e| {
            e.code().is_some_and(|c| c == "57014") && e.message().contains("statement timeout")
        })
    }

    async fn server_version(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
        query_scalar("SELECT version()").fetch_one(conn).await
    }
}
