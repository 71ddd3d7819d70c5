//! The steps every other group builds on: the backend's name and settings, its code of a
//! migration, transactions and plain statements.

use std::future::Future;
use std::time::Duration;

use sqlx::SqlStr;

use crate::backend::dialect::Dialect;
use crate::key::KeyValue;
use crate::migration::{Code, Migration};

/// The steps every other group requires. Every method runs on the runner's connection.
pub trait ConnectionSteps: sqlx::Database + Sized {
    /// The backend's short name, as users see it (`postgres`).
    const ID: &'static str;

    /// Whether the runner's connection is closed after a run instead of going back to
    /// the pool: where the runner lock belongs to the session (PostgreSQL), a dropped
    /// run must not hand a locked session to the pool. SQLite's lock is a row, and
    /// closing the last connection to an in-memory database would delete it.
    const CLOSE_RUNNER_CONNECTION: bool;

    /// Whether datamig runs each statement it sends outside a migration's transaction
    /// inside a short transaction of its own (see [`pinned`](crate::backend::pinned)): on
    /// PostgreSQL, where a transaction pooler hands each transaction, and each statement
    /// outside one, to whichever server session is free.
    const PIN_IN_TRANSACTION: bool;

    /// How this backend's SQL differs where the statements are written once
    /// (`shared.rs`).
    const DIALECT: Dialect;

    /// This backend's code of a migration, if it has any.
    fn code(migration: &Migration) -> Option<Code<Self>>;

    /// Begins a transaction that will write: on SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), waiting at most `lock_timeout` for it, so two writers queue
    /// instead of failing part-way.
    fn begin(
        conn: &mut Self::Connection,
        lock_timeout: Option<Duration>,
    ) -> impl Future<Output = Result<sqlx::Transaction<'_, Self>, sqlx::Error>> + Send;

    /// Executes one statement; returns the rows it affected.
    fn execute(
        conn: &mut Self::Connection,
        sql: SqlStr,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// The first column of the first row of a query, as an integer (`None` without a
    /// row or for `NULL`).
    fn fetch_i64(
        conn: &mut Self::Connection,
        sql: SqlStr,
    ) -> impl Future<Output = Result<Option<i64>, sqlx::Error>> + Send;

    /// Executes one statement with `$1`, `$2`.. bound to `values`.
    fn execute_keyed(
        conn: &mut Self::Connection,
        sql: SqlStr,
        values: &[KeyValue],
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// The rows a statement affected, from its result (sqlx's results have no common
    /// trait for it).
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// Sets the lock, statement and idle-in-transaction timeouts for the current
    /// transaction only.
    fn set_local_timeouts(
        conn: &mut Self::Connection,
        lock_timeout: Option<Duration>,
        statement_timeout: Option<Duration>,
        idle_in_transaction: Option<Duration>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Begins a batch's transaction (as [`Self::begin`]) and sets its local timeouts (as
    /// [`Self::set_local_timeouts`]). A backend may send both in one round trip.
    fn begin_with_timeouts(
        conn: &mut Self::Connection,
        lock_timeout: Option<Duration>,
        statement_timeout: Option<Duration>,
        idle_in_transaction: Option<Duration>,
    ) -> impl Future<Output = Result<sqlx::Transaction<'_, Self>, sqlx::Error>> + Send {
        async move {
            let mut tx = Self::begin(conn, lock_timeout).await?;
            Self::set_local_timeouts(
                &mut tx,
                lock_timeout,
                statement_timeout,
                idle_in_transaction,
            )
            .await?;
            Ok(tx)
        }
    }

    /// Whether an error is a lock timeout (worth retrying after a pause).
    fn is_lock_timeout(err: &sqlx::Error) -> bool;

    /// Whether an error is the statement timeout (a batch that hits it is split in
    /// halves). Never on a database without one (SQLite).
    fn is_statement_timeout(_err: &sqlx::Error) -> bool {
        false
    }

    /// The server's version string.
    fn server_version(
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<String, sqlx::Error>> + Send;
}
