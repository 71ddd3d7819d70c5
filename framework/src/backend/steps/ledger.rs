//! The ledger's steps: its tables, its rows (the exactly-once writes among them), the run
//! history, pauses, and the schema migrations of `sqlx migrate`.

use std::future::Future;
use std::time::Duration;

use super::connection::ConnectionSteps;
use crate::ledger::{Attempt, LastRun, LedgerConfig, LedgerEntry, Pause};

/// The ledger's steps. Most are written once for every backend (`shared.rs`).
pub trait LedgerSteps: ConnectionSteps {
    /// Creates the ledger, run-history and layout tables where they are missing and
    /// records the current layout: the DDL of a new ledger, and the upgrade of an older
    /// one. The runner calls it only when the ledger is missing or older, so a role
    /// without DDL privileges works on a current ledger.
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

    /// Writes the ledger row of an attempt, as its `write` says. Runs inside the
    /// migration's (or the batch's) transaction. `false` when a `Continue` found the row
    /// no longer at the expected checkpoint.
    fn write_ledger(
        conn: &mut Self::Connection,
        config: &LedgerConfig,
        attempt: &Attempt,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

    /// Appends an attempt to the run history, with its error if it failed.
    fn record_run(
        conn: &mut Self::Connection,
        config: &LedgerConfig,
        attempt: &Attempt,
        error: Option<&str>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// The last recorded attempt of each migration.
    fn last_runs(
        conn: &mut Self::Connection,
        config: &LedgerConfig,
    ) -> impl Future<Output = Result<Vec<LastRun>, sqlx::Error>> + Send;

    /// The pauses in force (of one migration, or of all): for each paused migration,
    /// its latest pause in the run history.
    fn pause_state(
        conn: &mut Self::Connection,
        config: &LedgerConfig,
        id: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Pause>, sqlx::Error>> + Send;

    /// The cancellations in force (of one migration, or of all): for each cancelled
    /// migration, its latest cancel in the run history (none since restarted).
    fn cancel_state(
        conn: &mut Self::Connection,
        config: &LedgerConfig,
        id: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Pause>, sqlx::Error>> + Send;

    /// The pauses and the cancellations in force (as [`Self::pause_state`] and
    /// [`Self::cancel_state`]), read at the start of every batch. A backend may read both
    /// in one statement.
    fn marks_state(
        conn: &mut Self::Connection,
        config: &LedgerConfig,
        id: Option<&str>,
    ) -> impl Future<Output = Result<(Vec<Pause>, Vec<Pause>), sqlx::Error>> + Send {
        async move {
            let pauses = Self::pause_state(&mut *conn, config, id).await?;
            let cancels = Self::cancel_state(conn, config, id).await?;
            Ok((pauses, cancels))
        }
    }

    /// Begins a batch's transaction (as
    /// [`ConnectionSteps::begin_with_timeouts`]) in the same round trip as the check that
    /// no pause or cancel of migration `id` is in force (as [`Self::marks_state`] would
    /// find), where the backend can send both at once: `Some` when it began and nothing
    /// was in force. `None` began nothing and says nothing more: a mark may be in force,
    /// or the backend cannot do this (the default); the runner then begins and reads the
    /// marks step by step, which finds the mark.
    fn begin_unless_marked<'c>(
        _conn: &'c mut Self::Connection,
        _config: &LedgerConfig,
        _id: &str,
        _lock_timeout: Option<Duration>,
        _statement_timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Option<sqlx::Transaction<'c, Self>>, sqlx::Error>> + Send {
        async { Ok(None) }
    }

    /// Whether the schema migration `version` of `sqlx migrate` has been applied
    /// (`_sqlx_migrations`).
    fn schema_version_applied(
        conn: &mut Self::Connection,
        version: i64,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;
}
