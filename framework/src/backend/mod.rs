//! The per-database steps. The algorithm (`runner.rs`) is written once over [`Backend`];
//! each database implements only the small steps whose SQL differs.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::admin::SessionInfo;
use crate::ledger::{Attempt, LastRun, LedgerConfig, LedgerEntry};
use crate::migration::{Code, Migration};

#[cfg(feature = "postgres")]
mod postgres;

/// A boxed, sendable future: the type of a migration body once registered.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A database datamig can migrate: implemented for [`Postgres`](crate::Postgres).
///
/// The trait is sealed: its steps are internal to datamig.
pub trait Backend: sqlx::Database + steps::Steps {}

pub(crate) mod steps {
    use super::*;

    /// The steps the runner composes. Every method runs on the runner's connection.
    pub trait Steps: sqlx::Database + Sized {
        /// The backend's short name, as users see it (`postgres`).
        const ID: &'static str;

        /// This backend's code of a migration, if it has any.
        fn code(migration: &Migration) -> Option<Code<Self>>;

        /// Creates the ledger and run-history tables if they are missing.
        fn ensure_ledger(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

        /// The columns of a table (`schema.table` quoted), to check the ledger's shape.
        fn table_columns(
            conn: &mut Self::Connection,
            table: &str,
        ) -> impl Future<Output = Result<Vec<String>, sqlx::Error>> + Send;

        /// Whether the ledger table exists (read-only commands do not create it).
        fn ledger_exists(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
        ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

        /// Every ledger row, by id.
        fn read_ledger(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
        ) -> impl Future<Output = Result<Vec<LedgerEntry>, sqlx::Error>> + Send;

        /// The last recorded attempt of each migration.
        fn last_runs(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
        ) -> impl Future<Output = Result<Vec<LastRun>, sqlx::Error>> + Send;

        /// Tries once to take the runner lock; `true` if this session now holds it.
        fn try_lock(
            conn: &mut Self::Connection,
            key: i64,
        ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

        /// Releases the runner lock held by this session.
        fn unlock(
            conn: &mut Self::Connection,
            key: i64,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

        /// Sets the lock and statement timeouts for the current transaction only.
        fn set_local_timeouts(
            conn: &mut Self::Connection,
            lock_timeout: Option<Duration>,
            statement_timeout: Option<Duration>,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

        /// Writes the ledger row of an attempt, as its `write` says. Runs inside the
        /// migration's (or the batch's) transaction. `false` when a `Continue` found the row
        /// no longer at the expected checkpoint.
        fn write_ledger(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
            attempt: &Attempt,
        ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

        /// The next batch of keys after `after` (all keys when `None`), at most `size`:
        /// its last key and how many keys it holds; `None` when no key is left.
        fn next_batch(
            conn: &mut Self::Connection,
            table: &str,
            key: &str,
            after: Option<i64>,
            size: u32,
        ) -> impl Future<Output = Result<Option<(i64, u64)>, sqlx::Error>> + Send;

        /// Whether any key is greater than `after`.
        fn has_keys_after(
            conn: &mut Self::Connection,
            table: &str,
            key: &str,
            after: i64,
        ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

        /// An estimate of the table's row count, for progress.
        fn estimate_rows(
            conn: &mut Self::Connection,
            table: &str,
        ) -> impl Future<Output = Result<Option<u64>, sqlx::Error>> + Send;

        /// Names this session, so that others can see who holds the runner lock.
        fn tag_session(
            conn: &mut Self::Connection,
            name: &str,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

        /// The sessions holding the runner lock.
        fn lock_holders(
            conn: &mut Self::Connection,
            key: i64,
        ) -> impl Future<Output = Result<Vec<SessionInfo>, sqlx::Error>> + Send;

        /// Ends another session (its transaction rolls back, its locks are released).
        fn terminate_session(
            conn: &mut Self::Connection,
            pid: i32,
        ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

        /// Sessions that would block or slow a migration: idle in a transaction, waiting
        /// for a lock, or in a long transaction.
        fn blocking_sessions(
            conn: &mut Self::Connection,
        ) -> impl Future<Output = Result<Vec<SessionInfo>, sqlx::Error>> + Send;

        /// Whether the schema migration `version` of `sqlx migrate` has been applied
        /// (`_sqlx_migrations`).
        fn schema_version_applied(
            conn: &mut Self::Connection,
            version: i64,
        ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

        /// The server's version string.
        fn server_version(
            conn: &mut Self::Connection,
        ) -> impl Future<Output = Result<String, sqlx::Error>> + Send;

        /// Whether an error is a lock timeout (worth retrying after a pause).
        fn is_lock_timeout(err: &sqlx::Error) -> bool;

        /// Appends an attempt to the run history, with its error if it failed.
        fn record_run(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
            attempt: &Attempt,
            error: Option<&str>,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    }
}
