//! The ledger's steps: its tables, its rows (the exactly-once writes among them), the run
//! history, pauses, and the schema migrations of `sqlx migrate`.

use std::future::Future;
use std::time::Duration;

use super::connection::ConnectionSteps;
#[cfg(doc)]
use crate::ledger::LedgerWrite;
use crate::ledger::{Attempt, LastRun, LedgerConfig, LedgerEntry, Pause};

/// What [`LedgerSteps::commit_and_begin`] did.
#[derive(Debug)]
pub enum Chained {
    /// Nothing: the backend cannot, or not for this write or these timeouts. The
    /// transaction is as it was; the caller writes the row and commits step by step.
    Unsupported,
    /// The row was not at the checkpoint the write expects: nothing was committed, and the
    /// transaction is still open.
    NotWritten,
    /// The row could not be written (a lock wait, a deadlock, a transaction a statement of
    /// the body had committed implicitly): nothing was committed by this step, and the
    /// caller rolls the transaction back (the server may have done so already).
    Refused(sqlx::Error),
    /// Committed, and the next batch's transaction is open. `marked`: a pause or a cancel
    /// of the migration is in force, and the caller rolls that transaction back (the
    /// next batch's begin then finds the mark).
    Committed {
        /// Whether a pause or a cancel of the migration is in force.
        marked: bool,
    },
}

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

    /// Writes a batch's ledger row (`attempt`, a [`LedgerWrite::Continue`]), commits, and
    /// begins the next batch's transaction (as [`Self::begin_unless_marked`] with
    /// `lock_timeout`) in one round trip, where the backend can send them at once; see
    /// [`Chained`] for what it did. Runs inside the batch's transaction, which the caller
    /// (sqlx's transaction depth included) takes to be the next batch's when it returns
    /// [`Chained::Committed`]. An `Err` leaves it unknown whether the batch committed,
    /// as after a failed `COMMIT`.
    fn commit_and_begin(
        _conn: &mut Self::Connection,
        _config: &LedgerConfig,
        _attempt: &Attempt,
        _lock_timeout: Option<Duration>,
        _statement_timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Chained, sqlx::Error>> + Send {
        async { Ok(Chained::Unsupported) }
    }

    /// Whether the schema migration `version` of `sqlx migrate` has been applied
    /// (`_sqlx_migrations`).
    fn schema_version_applied(
        conn: &mut Self::Connection,
        version: i64,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;
}
