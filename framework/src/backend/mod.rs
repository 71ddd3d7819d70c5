//! The per-database steps. The algorithm (`runner.rs`) is written once over [`Backend`];
//! each database implements only the small steps whose SQL differs.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::ledger::{Attempt, LastRun, LedgerConfig, LedgerEntry};
use crate::migration::{Migration, MigrationFn};

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
        fn migration_fn(migration: &Migration) -> Option<MigrationFn<Self>>;

        /// Creates the ledger and run-history tables if they are missing.
        fn ensure_ledger(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

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

        /// Records a successful attempt in the ledger (insert, or update for a re-run).
        /// Runs inside the migration's transaction.
        fn record_applied(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
            attempt: &Attempt,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

        /// Appends an attempt to the run history, with its error if it failed.
        fn record_run(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
            attempt: &Attempt,
            error: Option<&str>,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    }
}
