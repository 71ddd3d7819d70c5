//! A migration that runs once: its body and its ledger row in one transaction.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use sqlx::pool::PoolConnection;

use super::Migrator;
use super::plan::Step;
use super::report::AppliedMigration;
use crate::backend::{Backend, pinned};
use crate::ctx::Ctx;
use crate::error::{BoxError, Error, describe_chain, describe_sqlx};
use crate::ledger::{Action, Attempt, LedgerWrite, STATUS_APPLIED};
use crate::migration::{Migration, MigrationFn};
use crate::session::host_name;

impl<DB: Backend> Migrator<DB> {
    /// Runs one migration in its own transaction.
    pub(super) async fn apply(
        &self,
        conn: &mut PoolConnection<DB>,
        migration: &'static Migration,
        run: MigrationFn<DB>,
        step: Step,
    ) -> Result<AppliedMigration, Failure> {
        let action = step.action;
        let started_at = Utc::now();
        let clock = Instant::now();
        let lock_timeout = migration.lock_timeout().or(self.lock_timeout);
        let mut tx = self.begin(conn, lock_timeout).await.map_err(Failure::db)?;
        DB::set_local_timeouts(
            &mut tx,
            lock_timeout,
            migration.statement_timeout().or(self.statement_timeout),
            self.idle_limit(),
        )
        .await
        .map_err(Failure::db)?;

        // Nothing was written in this transaction yet (`fresh`).
        let before = writes_before::<DB>(&mut tx, action, true)
            .await
            .map_err(Failure::db)?;
        let mut ctx = Ctx::new(&mut *tx, migration.id(), self.dry_run);
        let mut outcome = run_caught::<DB>(run(&mut ctx)).await;
        let rows_written = writes_after(&mut ctx, before, &mut outcome).await;
        let rows_affected = ctx.rows_affected();
        let notes = ctx.notes().to_vec();
        let mut attempt = self.attempt(migration, action, started_at);
        attempt.write = step.ledger_write();
        attempt.rows_affected = rows_affected;
        attempt.total_rows = rows_affected;
        attempt.notes = notes;
        let applied = |attempt: &Attempt| {
            let mut applied = AppliedMigration::new(attempt, clock.elapsed(), action);
            applied.rows_written = rows_written;
            applied
        };

        let failure = match outcome {
            Ok(()) if self.dry_run => {
                tx.rollback().await.map_err(Failure::db)?;
                return Ok(applied(&attempt));
            }
            Ok(()) => {
                // The ledger row is written in the migration's own transaction: the effects
                // and the record that they happened commit together or not at all. With the
                // ledger written afterwards, a crash between the two commits would leave the
                // migration applied but unrecorded, and the next run would apply it again.
                // sqlx's migrator does the same for that reason: launchbadge/sqlx#1966.
                // The ledger's primary key on `id` also turns a second application into a
                // unique violation, should anything ever get past the runner lock.
                if let Err(err) = self.fence(&mut tx, migration.id()).await {
                    let _ = tx.rollback().await;
                    return Err(Failure::Other(err));
                }
                let recorded = match DB::write_ledger(&mut tx, &self.ledger, &attempt).await {
                    Ok(true) => DB::record_run(&mut tx, &self.ledger, &attempt, None)
                        .await
                        .map_err(recording_failed),
                    Ok(false) => Err(ledger_row_moved()),
                    Err(err) => Err(recording_failed(err)),
                };
                match recorded {
                    Ok(()) => match tx.commit().await {
                        Ok(()) => return Ok(applied(&attempt)),
                        // A failed COMMIT is not a rollback: the server may have committed
                        // before the answer was lost. The ledger, read again, tells.
                        Err(err) => {
                            let expected = attempt.write.clone();
                            return Err(self
                                .commit_outcome(migration.id(), None, &err, move |row| {
                                    match &expected {
                                        LedgerWrite::Rerun { run_count, .. } => {
                                            row.run_count > *run_count
                                        }
                                        _ => true,
                                    }
                                })
                                .await);
                        }
                    },
                    Err(failure) => {
                        let _ = tx.rollback().await;
                        failure
                    }
                }
            }
            Err(failure) => {
                let _ = tx.rollback().await;
                Failure::Migration {
                    message: failure.message,
                    panicked: failure.panicked,
                    source: failure.source,
                }
            }
        };

        if !self.dry_run
            && let Failure::Migration { message, .. } = &failure
        {
            attempt.finished_at = Utc::now();
            self.record_failure(conn, &attempt, message)
                .await
                .map_err(Failure::Other)?;
        }
        Err(failure)
    }

    /// After a `COMMIT` of migration `id` that returned an error: reads the ledger on a
    /// fresh connection and says whether the migration is applied (`committed` tells the
    /// ledger row of this run from an older one).
    pub(super) async fn commit_outcome(
        &self,
        id: &str,
        batch: Option<u64>,
        err: &sqlx::Error,
        committed: impl Fn(&crate::ledger::LedgerEntry) -> bool,
    ) -> Failure {
        let ledger = match self.pool.acquire().await {
            Ok(mut fresh) => {
                pinned::<DB, _>(&mut fresh, async |c| {
                    Ok(DB::read_ledger(c, &self.ledger).await?)
                })
                .await
            }
            Err(e) => Err(e.into()),
        };
        Failure::Other(Error::CommitOutcome {
            id: id.to_string(),
            batch,
            error: describe_sqlx(err),
            applied: match ledger {
                Ok(rows) => Some(rows.iter().any(|row| row.id == id && committed(row))),
                Err(_) => None,
            },
        })
    }

    /// A record of an attempt of `migration`, started at `started_at`, ending now.
    pub(crate) fn attempt(
        &self,
        migration: &'static Migration,
        action: Action,
        started_at: DateTime<Utc>,
    ) -> Attempt {
        Attempt {
            write: LedgerWrite::Insert,
            status: STATUS_APPLIED,
            checkpoint: None,
            batches: 0,
            first_started_at: started_at,
            total_rows: 0,
            id: migration.id().into(),
            checksum: migration.checksum().into(),
            revision: migration.revision(),
            description: migration.description().into(),
            action,
            started_at,
            finished_at: Utc::now(),
            rows_affected: 0,
            notes: Vec::new(),
            host: host_name(),
            app_version: self.app_version.clone(),
            reason: None,
            cancelled: false,
        }
    }

    /// Appends a failed attempt to the run history, after the rollback. The runner's own
    /// connection may be what failed, so a fresh one from the pool is the fallback.
    pub(super) async fn record_failure(
        &self,
        conn: &mut DB::Connection,
        attempt: &Attempt,
        message: &str,
    ) -> Result<(), Error> {
        // A runner that lost its lease records nothing more: the failure was most likely
        // its transaction ended by the server while it was frozen, and the lease's new
        // holder owns the ledger now.
        if let Some(lost) = self.lost_lease(&attempt.id).await {
            return Err(lost);
        }
        let record = async |conn: &mut DB::Connection| {
            pinned::<DB, _>(conn, async |c| {
                Ok(DB::record_run(c, &self.ledger, attempt, Some(message)).await?)
            })
            .await
        };
        if record(conn).await.is_ok() {
            return Ok(());
        }
        let mut fresh = self.pool.acquire().await?;
        record(&mut fresh).await
    }
}

/// The database's write counter before a body, for a re-run (`None` otherwise): a re-run
/// counts the rows it writes as the database counts them, because the idempotency proof
/// must see rows rewritten with equal values. First runs do not pay for it, nor a `fresh`
/// transaction (one that has written nothing yet) where the count is the transaction's own
/// and so 0 (MySQL).
pub(super) async fn writes_before<DB: Backend>(
    conn: &mut DB::Connection,
    action: Action,
    fresh: bool,
) -> Result<Option<u64>, sqlx::Error> {
    if action == Action::Rerun {
        if fresh && DB::WRITE_COUNT_OF_TRANSACTION {
            // Nothing written yet by a transaction whose count starts at 0.
            return Ok(Some(0));
        }
        DB::write_count(conn).await.map(Some)
    } else {
        Ok(None)
    }
}

/// After a body that succeeded, the rows it wrote since `before` (when measured); a failed
/// reading fails the body.
pub(super) async fn writes_after<DB: Backend>(
    ctx: &mut Ctx<'_, DB>,
    before: Option<u64>,
    outcome: &mut Result<(), BodyFailure>,
) -> Option<u64> {
    let before = before.filter(|_| outcome.is_ok())?;
    match writes_since(ctx, before).await {
        Ok(written) => Some(written),
        Err(err) => {
            *outcome = Err(BodyFailure::database(err));
            None
        }
    }
}

/// The rows a migration body wrote since the database's write counter read `before`,
/// less what the helpers wrote to their own staging tables.
pub(crate) async fn writes_since<DB: Backend>(
    ctx: &mut Ctx<'_, DB>,
    before: u64,
) -> Result<u64, sqlx::Error> {
    let after = DB::write_count(ctx.conn()).await?;
    Ok(after
        .saturating_sub(before)
        .saturating_sub(ctx.uncounted_writes()))
}

/// The failure of a migration whose ledger row was no longer the one its run planned from.
fn ledger_row_moved() -> Failure {
    Failure::Migration {
        message: "its ledger row changed while it ran (another runner re-ran or repaired it); \
                  this run was rolled back"
            .to_string(),
        panicked: false,
        source: None,
    }
}

/// The failure of a migration whose ledger row could not be written.
fn recording_failed(err: sqlx::Error) -> Failure {
    Failure::Migration {
        message: format!("recording it in the ledger failed: {}", describe_sqlx(&err)),
        panicked: false,
        source: Some(Box::new(err)),
    }
}

/// How a migration body failed.
pub(crate) struct BodyFailure {
    /// Its error with its causes, or its panic message.
    pub(crate) message: String,
    /// Whether it panicked.
    pub(crate) panicked: bool,
    /// Whether the error was a lock timeout.
    pub(crate) lock_timeout: bool,
    /// Whether the error was the statement timeout.
    pub(crate) statement_timeout: bool,
    /// The error itself (`None` for a panic).
    pub(crate) source: Option<BoxError>,
}

impl BodyFailure {
    /// A database error around the body (reading the write counter).
    pub(super) fn database(err: sqlx::Error) -> Self {
        BodyFailure {
            message: describe_sqlx(&err),
            panicked: false,
            lock_timeout: false,
            statement_timeout: false,
            source: Some(Box::new(err)),
        }
    }
}

/// Runs a migration body with its panics caught, and says how it failed.
pub(crate) async fn run_caught<DB: Backend>(
    body: impl std::future::Future<Output = anyhow::Result<()>>,
) -> Result<(), BodyFailure> {
    match AssertUnwindSafe(body).catch_unwind().await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(BodyFailure {
            message: describe_chain(&err),
            panicked: false,
            lock_timeout: err
                .chain()
                .filter_map(|c| c.downcast_ref::<sqlx::Error>())
                .any(DB::is_lock_timeout),
            statement_timeout: err
                .chain()
                .filter_map(|c| c.downcast_ref::<sqlx::Error>())
                .any(DB::is_statement_timeout),
            // Moved out of anyhow's box, the body's own error stays downcastable (a `sqlx::Error`).
            source: Some(err.reallocate_into_boxed_dyn_error_without_backtrace()),
        }),
        Err(panic) => Err(BodyFailure {
            message: panic_message(panic.as_ref()),
            panicked: true,
            lock_timeout: false,
            statement_timeout: false,
            source: None,
        }),
    }
}

pub(super) enum Failure {
    /// The migration itself failed (or could not be recorded): reported by id, with the
    /// error that failed it.
    Migration {
        message: String,
        panicked: bool,
        source: Option<BoxError>,
    },
    /// Fault injection stopped a batched migration after this many batches in all.
    Interrupted { batches: u64 },
    /// The stop signal stopped a batched migration after a committed batch.
    Stopped {
        batches: u64,
        checkpoint: Option<String>,
    },
    /// An operator paused the migration: `run` skips it and goes on.
    Paused(crate::ledger::Pause),
    /// An operator cancelled the migration (recorded): `run` goes on with the next one.
    Cancelled(crate::ledger::Pause),
    /// The runner could not do its part.
    Other(Error),
}

impl Failure {
    pub(super) fn db(err: sqlx::Error) -> Self {
        Failure::Other(Error::Database(err))
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}
