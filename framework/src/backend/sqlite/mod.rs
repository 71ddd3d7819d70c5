//! SQLite: a lock row instead of advisory locks, `BEGIN IMMEDIATE` transactions, ledger DDL.
//!
//! SQLite has one writer at a time per database file: a batched migration runs with one
//! worker, and there is no rest check. A file per concern, as the step traits are grouped:
//! `ledger.rs`, `lock.rs` (the lock row), `walk.rs`, `tables.rs`, `upsert.rs`; `sql.rs`
//! holds what several of them ask.

mod ledger;
mod lock;
mod sql;
mod tables;
mod upsert;
mod walk;

use std::time::Duration;

use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Connection, SqlStr, Sqlite};

use crate::backend::Backend;
use crate::backend::dialect::{Actor, Dialect, Syntax};
use crate::backend::shared::Shared;
use crate::backend::steps::{ConnectionSteps, RangeSteps};
use crate::key::KeyValue;
use crate::migration::{Code, Migration};

/// How long a statement waits for another connection's write lock when the migration sets
/// no `lock_timeout`: sqlx's default busy timeout.
const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl Backend for Sqlite {}

impl ConnectionSteps for Sqlite {
    const ID: &'static str = "sqlite";
    const CLOSE_RUNNER_CONNECTION: bool = false;
    const PIN_IN_TRANSACTION: bool = false;

    const DIALECT: Dialect = Dialect {
        actor: Actor::OsUser,
        persistent: true,
        syntax: Syntax::Standard,
    };

    fn code(migration: &Migration) -> Option<Code<Self>> {
        migration.sqlite_code()
    }

    async fn begin(
        conn: &mut SqliteConnection,
        lock_timeout: Option<Duration>,
    ) -> Result<sqlx::Transaction<'_, Sqlite>, sqlx::Error> {
        // The migration's lock timeout is how long it waits for the write lock: SQLite's
        // busy timeout, set before the transaction asks for it.
        let busy = lock_timeout.unwrap_or(DEFAULT_BUSY_TIMEOUT);
        sqlx::query(AssertSqlSafe(format!(
            "PRAGMA busy_timeout = {}",
            busy.as_millis().clamp(1, i32::MAX as u128)
        )))
        .execute(&mut *conn)
        .await?;
        // IMMEDIATE takes the write lock now: two writers queue at BEGIN instead of one
        // failing with SQLITE_BUSY when it first writes after reading.
        conn.begin_with("BEGIN IMMEDIATE").await
    }

    async fn execute(conn: &mut SqliteConnection, sql: SqlStr) -> Result<u64, sqlx::Error> {
        Shared::<Self>::execute(conn, sql).await
    }

    async fn fetch_i64(
        conn: &mut SqliteConnection,
        sql: SqlStr,
    ) -> Result<Option<i64>, sqlx::Error> {
        Shared::<Self>::fetch_i64(conn, sql).await
    }

    async fn execute_keyed(
        conn: &mut SqliteConnection,
        sql: SqlStr,
        values: &[KeyValue],
    ) -> Result<u64, sqlx::Error> {
        Shared::<Self>::execute_keyed(conn, sql, values).await
    }

    fn rows_affected(result: &<Self as sqlx::Database>::QueryResult) -> u64 {
        result.rows_affected()
    }

    async fn set_local_timeouts(
        _conn: &mut SqliteConnection,
        _lock_timeout: Option<Duration>,
        _statement_timeout: Option<Duration>,
        _idle_in_transaction: Option<Duration>,
    ) -> Result<(), sqlx::Error> {
        // The lock timeout was applied by `begin`; SQLite has no statement timeout, and a
        // transaction dies with its process.
        Ok(())
    }

    fn is_lock_timeout(err: &sqlx::Error) -> bool {
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes: the busy
        // timeout ran out while another connection held the lock.
        err.as_database_error()
            .and_then(|e| e.code())
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 5 | 6))
    }

    async fn server_version(conn: &mut SqliteConnection) -> Result<String, sqlx::Error> {
        sqlx::query_scalar("SELECT 'SQLite ' || sqlite_version()")
            .fetch_one(conn)
            .await
    }
}

// One writer at a time: several workers would only queue on the file's write lock. The
// runner refuses more than one worker here, and the range steps keep the trait's defaults,
// which fail.
impl RangeSteps for Sqlite {}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::{Connection, Sqlite, SqliteConnection};

    use crate::backend::steps::{RangeSteps, WalkSteps};
    use crate::error::Error;
    use crate::ledger::LedgerConfig;

    /// The typed error a step SQLite cannot take fails with, directly or as the source of
    /// sqlx's error.
    fn is_unsupported(err: &(dyn std::error::Error + 'static)) -> bool {
        let err = match err.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::Configuration(source)) => &**source,
            _ => err,
        };
        matches!(
            err.downcast_ref::<Error>(),
            Some(Error::Unsupported {
                backend: "sqlite",
                ..
            })
        )
    }

    #[tokio::test]
    async fn the_steps_of_workers_and_of_the_rest_check_fail_with_a_typed_error() {
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let ledger = LedgerConfig::default();
        let err = <Sqlite as RangeSteps>::ensure_ranges(&mut conn, &ledger)
            .await
            .unwrap_err();
        assert!(is_unsupported(&err), "{err}");
        assert_eq!(
            err.to_string(),
            "sqlite cannot run a batched migration with several workers: it takes one writer at a time"
        );
        let err = <Sqlite as RangeSteps>::hold_range(&mut conn, &ledger, "m", 0, "token")
            .await
            .unwrap_err();
        assert!(is_unsupported(&err), "{err}");
        let err = <Sqlite as WalkSteps>::begin_rest_check(&mut conn, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(is_unsupported(&err), "{err}");
        // Reading the ranges is not a step of a worker: there are none.
        let ranges = <Sqlite as RangeSteps>::read_ranges(&mut conn, &ledger, None)
            .await
            .unwrap();
        assert!(ranges.is_empty());
    }
}
