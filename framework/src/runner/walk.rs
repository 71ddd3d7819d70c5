//! What every batch of a batched migration does, with one worker (`batch.rs`) or with
//! several over ranges of keys (`workers.rs`): its timeouts, its start (the transaction, the
//! local timeouts, an operator's pause), the body's run with the write counter around it,
//! the retry after a lock timeout, the progress event, its span; and the size of the next
//! batch (`Sizer`). Written once, so the two walks cannot drift apart.

use std::time::Duration;

use super::Migrator;
use super::apply::{BodyFailure, Failure, run_caught, writes_after, writes_before};
use super::pace::Decision;
use super::report::Progress;
use crate::backend::Backend;
use crate::ctx::Ctx;
use crate::error::{Error, describe_sqlx};
use crate::key::RestGuard;
use crate::ledger::{Action, Pause};
use crate::migration::{Batch, BatchFn, BatchSpec, Migration};

/// Begins a batch's transaction (`$migrator.begin_unmarked_batch`, else
/// `$migrator.begin_batch`), its errors passed on with `?` (the first through
/// `$classify`). A macro, not a method: a method that returns the transaction cannot fall
/// back to a second borrow of the connection, since the borrow checker keeps the first
/// alive for the transaction it might have returned.
macro_rules! open_batch {
    ($migrator:expr, $conn:expr, $id:expr, $number:expr, $timeouts:expr, $classify:expr) => {{
        // One round trip where the backend can; step by step where it cannot, or where a
        // pause or a cancel may be in force (nothing is begun then).
        let begun = $migrator
            .begin_unmarked_batch(&mut *$conn, $id, $timeouts)
            .await
            .map_err($classify)?;
        match begun {
            Some(tx) => tx,
            none => {
                drop(none);
                $migrator
                    .begin_batch(&mut *$conn, $id, $number, $timeouts)
                    .await?
            }
        }
    }};
}
pub(super) use open_batch;

/// A batch's `lock_timeout` when neither the migration nor the migrator sets one: a batch
/// must never queue behind the application's locks for long.
pub(super) const DEFAULT_BATCH_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// The most notes a batched migration keeps (the first ones).
pub(super) const MAX_NOTES: usize = 100;

/// Where a batched migration stands, for the progress events sent while it waits.
#[derive(Debug, Default)]
pub(super) struct Position {
    /// Batches committed so far.
    pub(super) batches: u64,
    /// Keys done by this run.
    pub(super) keys: u64,
    /// The last key done, as people read it.
    pub(super) checkpoint: Option<String>,
}

/// The size of the next batch: fixed, or, with a target duration, scaled after each batch
/// by how long its keys took: down at once, up at most twofold a batch, within the bounds.
#[derive(Debug)]
pub(crate) struct Sizer {
    size: u32,
    target: Option<Duration>,
    min: u32,
    max: u32,
}

impl Sizer {
    pub(crate) fn new(spec: &BatchSpec) -> Self {
        let (min, max) = (spec.min_size().max(1), spec.max_size().max(1));
        Sizer {
            size: if spec.target().is_some() {
                spec.size().clamp(min, max.max(min))
            } else {
                spec.size()
            },
            target: spec.target(),
            min,
            max: max.max(min),
        }
    }

    /// The size of the next batch.
    pub(crate) fn size(&self) -> u32 {
        self.size
    }

    /// The size itself, when it is fixed (no target duration).
    pub(super) fn fixed_mut(&mut self) -> Option<&mut u32> {
        self.target.is_none().then_some(&mut self.size)
    }

    /// A batch of `keys` keys took `took`.
    pub(crate) fn record(&mut self, keys: u64, took: Duration) {
        let Some(target) = self.target else {
            return;
        };
        if keys == 0 {
            return;
        }
        let per_key = took.as_secs_f64().max(1e-6) / keys as f64;
        let ideal = target.as_secs_f64() / per_key;
        let current = f64::from(self.size);
        // Down at once (a batch that ran long holds its locks long), up at most twofold.
        let next = ideal
            .min(current * 2.0)
            .clamp(f64::from(self.min), f64::from(self.max));
        self.size = next.round() as u32;
    }
}

/// Why one batch did not commit.
pub(super) enum BatchError {
    /// It waited for a lock longer than its `lock_timeout`: worth retrying. With the error.
    LockTimeout(String, Option<crate::error::BoxError>),
    /// A statement ran past its `statement_timeout`: worth trying in halves. With the
    /// error and the batch's keys, as people read them.
    StatementTimeout {
        message: String,
        keys: String,
        source: Option<crate::error::BoxError>,
    },
    /// The body failed or panicked, a database error ended the batch, or the checkpoint
    /// moved. With the error, if there is one.
    Failed {
        message: String,
        panicked: bool,
        source: Option<crate::error::BoxError>,
    },
    /// Its `COMMIT` returned an error: whether it committed is unknown.
    Commit(sqlx::Error),
    /// The runner's lease ran out before the batch could commit (fencing): rolled back.
    Fenced(Error),
    /// Its `COMMIT` returned an error, and the database, read again, said what became of
    /// it ([`Error::CommitOutcome`]).
    ReadBack(Error),
    /// An operator paused the migration: this batch did not begin.
    Paused(Pause),
    /// An operator cancelled the migration: this batch did not begin.
    Cancelled(Pause),
}

impl BatchError {
    /// A database error inside batch `number`'s transaction (a lost connection, a
    /// constraint, at any step up to the commit) fails the migration like an error of its
    /// body: recorded and reported by id. A lock timeout is worth a retry.
    pub(super) fn database<DB: Backend>(err: sqlx::Error, number: u64) -> Self {
        if DB::is_lock_timeout(&err) {
            BatchError::LockTimeout(describe_sqlx(&err), Some(Box::new(err)))
        } else if DB::is_statement_timeout(&err) {
            BatchError::StatementTimeout {
                message: format!("batch {number}: {}", describe_sqlx(&err)),
                keys: String::new(),
                source: Some(Box::new(err)),
            }
        } else {
            BatchError::Failed {
                message: format!("batch {number}: {}", describe_sqlx(&err)),
                panicked: false,
                source: Some(Box::new(err)),
            }
        }
    }

    /// Names the keys of the batch a statement timeout stopped (`keys` describes them).
    pub(super) fn with_keys(self, keys: impl FnOnce() -> String) -> Self {
        match self {
            BatchError::StatementTimeout {
                message, source, ..
            } => BatchError::StatementTimeout {
                message,
                keys: keys(),
                source,
            },
            other => other,
        }
    }

    /// The failure of a batch whose statement timeout ended it at the smallest size it
    /// may take (`min`, after halving from larger sizes): names its keys, for the operator
    /// to look at; anything else as it is.
    pub(super) fn smallest_failed(self, size: u32, min: u32, timeout: Option<Duration>) -> Self {
        match self {
            BatchError::StatementTimeout {
                message,
                keys,
                source,
            } => BatchError::Failed {
                message: format!(
                    "{message}; the batch of keys {keys} ({size} keys, the smallest it may be \
                     split into: min_size = {min}) ran past the statement timeout{}, as did \
                     every larger batch from the same checkpoint. Look at these rows (a lock \
                     held elsewhere, a slow trigger, a row much bigger than the others), then \
                     raise statement_timeout or lower min_size and run again: the migration \
                     resumes from its checkpoint",
                    timeout.map_or(String::new(), |t| format!(" of {} ms", t.as_millis()))
                ),
                panicked: false,
                source,
            },
            other => other,
        }
    }

    /// A failure of the body of batch `number`.
    pub(super) fn body(failure: BodyFailure, number: u64) -> Self {
        if failure.lock_timeout {
            BatchError::LockTimeout(failure.message, failure.source)
        } else if failure.statement_timeout {
            BatchError::StatementTimeout {
                message: format!("batch {number}: {}", failure.message),
                keys: String::new(),
                source: failure.source,
            }
        } else {
            BatchError::Failed {
                message: format!("batch {number}: {}", failure.message),
                panicked: failure.panicked,
                source: failure.source,
            }
        }
    }
}

/// The span of one batch: `id`, `batch` (its number), `size`, and with workers `worker` and
/// `range`; `bounds` (`ahead` or `read`) in a single walk's batches; `keys`, `rows`,
/// `duration_ms` and `outcome` are filled when it ends.
pub(super) fn batch_span(
    id: &str,
    number: u64,
    size: u32,
    worker: Option<(&str, i32)>,
) -> tracing::Span {
    tracing::info_span!(
        "batch",
        id,
        batch = number,
        size,
        worker = worker.map(|(w, _)| w),
        range = worker.map(|(_, r)| r),
        bounds = tracing::field::Empty,
        begun = tracing::field::Empty,
        keys = tracing::field::Empty,
        rows = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
        outcome = tracing::field::Empty,
    )
}

/// Fills a batch span's closing fields and emits its closing event: `counts` is the keys
/// and rows of a committed batch, `None` when no key was left.
pub(super) fn batch_ended(
    span: &tracing::Span,
    counts: Result<Option<(u64, u64)>, &BatchError>,
    elapsed: Duration,
) {
    let duration_ms = crate::trace::millis(elapsed);
    span.record("duration_ms", duration_ms);
    match counts {
        Ok(Some((keys, rows))) => {
            span.record("keys", keys);
            span.record("rows", rows);
            span.record("outcome", "committed");
            tracing::info!(parent: span, keys, rows, duration_ms, "batch committed");
        }
        Ok(None) => {
            span.record("keys", 0);
            span.record("rows", 0);
            span.record("outcome", "nothing_left");
            tracing::debug!(parent: span, duration_ms, "no key left");
        }
        Err(err) => {
            let (outcome, message) = match err {
                BatchError::LockTimeout(message, _) => ("lock_timeout", message.clone()),
                BatchError::StatementTimeout { message, .. } => {
                    ("statement_timeout", message.clone())
                }
                BatchError::Failed { message, .. } => ("failed", message.clone()),
                BatchError::Commit(err) => ("commit_unknown", err.to_string()),
                BatchError::Fenced(err) => ("fenced", err.to_string()),
                BatchError::ReadBack(err) => ("commit_failed", err.to_string()),
                BatchError::Paused(pause) => ("paused", format!("paused by {}", pause.by)),
                BatchError::Cancelled(pause) => ("cancelled", format!("cancelled by {}", pause.by)),
            };
            span.record("outcome", outcome);
            tracing::warn!(parent: span, outcome, error = %message, duration_ms, "batch did not commit");
        }
    }
}

/// The local timeouts of every batch of one migration: the migration's own, else the
/// migrator's, and for locks at least [`DEFAULT_BATCH_LOCK_TIMEOUT`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeouts {
    pub(super) lock: Option<Duration>,
    pub(super) statement: Option<Duration>,
}

/// What a batch's body did, read before its transaction ends.
pub(super) struct BodyRun {
    /// The body's result.
    pub(super) outcome: Result<(), BodyFailure>,
    /// Rows the database counted as written (a re-run only).
    pub(super) written: Option<u64>,
    /// Rows the body reported.
    pub(super) rows: u64,
    pub(super) notes: Vec<String>,
    /// Whether the body ran only statements a check of the rest can guard.
    pub(super) guarded: bool,
    /// In a check of the rest: whether no row needed work.
    pub(super) rest_holds: bool,
}

/// One batch as the progress event tells it.
pub(super) struct Walked<'a> {
    pub(super) id: &'a str,
    /// Batches committed in all, and by this run: keys and rows.
    pub(super) batches: u64,
    pub(super) keys_done: u64,
    pub(super) rows_affected: u64,
    pub(super) estimated_total: Option<u64>,
    /// Since this run began walking.
    pub(super) elapsed: Duration,
    pub(super) checkpoint: Option<String>,
    /// The batch itself.
    pub(super) batch_keys: u64,
    pub(super) batch_size: u32,
    pub(super) took: Duration,
    pub(super) spec: &'a BatchSpec,
    pub(super) next_size: u32,
    pub(super) workers: u32,
    /// What the pacing decided after the batch, when it paces.
    pub(super) pace: Option<&'a Decision>,
}

impl<DB: Backend> Migrator<DB> {
    /// The local timeouts of `migration`'s batches.
    pub(super) fn batch_timeouts(&self, migration: &Migration) -> Timeouts {
        Timeouts {
            lock: migration
                .lock_timeout()
                .or(self.lock_timeout)
                .or(Some(DEFAULT_BATCH_LOCK_TIMEOUT)),
            statement: migration.statement_timeout().or(self.statement_timeout),
        }
    }

    /// A batch's transaction begun in the same round trip as the check of the pauses and
    /// cancellations, where the backend can (see `LedgerSteps::begin_unless_marked`);
    /// `None` otherwise (and in a dry run, and under a lease), and the caller then calls
    /// [`Self::begin_batch`], which reads them step by step and stops at one in force.
    pub(super) async fn begin_unmarked_batch<'c>(
        &self,
        conn: &'c mut DB::Connection,
        id: &str,
        timeouts: Timeouts,
    ) -> Result<Option<sqlx::Transaction<'c, DB>>, sqlx::Error> {
        if self.dry_run || self.leased() {
            return Ok(None);
        }
        DB::begin_unless_marked(conn, &self.ledger, id, timeouts.lock, timeouts.statement).await
    }

    /// Begins batch `number` of migration `id`: its transaction, its local timeouts, and,
    /// unless this is a dry run, an operator's pause or cancel (`datamig pause`, `datamig
    /// cancel`, from any host), which stops the migration here: after the batch before
    /// this one committed, before this one does anything.
    pub(super) async fn begin_batch<'c>(
        &self,
        conn: &'c mut DB::Connection,
        id: &str,
        number: u64,
        timeouts: Timeouts,
    ) -> Result<sqlx::Transaction<'c, DB>, BatchError> {
        let classify = |err| BatchError::database::<DB>(err, number);
        let mut tx = if self.leased() {
            // Under a lease the session's prepared statements are reset first (`begin`).
            let mut tx = self.begin(conn, timeouts.lock).await.map_err(classify)?;
            DB::set_local_timeouts(
                &mut tx,
                timeouts.lock,
                timeouts.statement,
                self.idle_limit(),
            )
            .await
            .map_err(classify)?;
            tx
        } else {
            DB::begin_with_timeouts(conn, timeouts.lock, timeouts.statement, None)
                .await
                .map_err(classify)?
        };
        if self.dry_run {
            return Ok(tx);
        }
        let (mut pauses, mut cancels) = DB::marks_state(&mut tx, &self.ledger, Some(id))
            .await
            .map_err(classify)?;
        if let Some(pause) = pauses.pop() {
            let _ = tx.rollback().await;
            return Err(BatchError::Paused(pause));
        }
        if let Some(cancel) = cancels.pop() {
            let _ = tx.rollback().await;
            return Err(BatchError::Cancelled(cancel));
        }
        Ok(tx)
    }

    /// Records that an operator's cancel stopped `migration` (the run history's row of this
    /// attempt, outcome `cancelled`, with `counts`: its batches, this run's rows, its
    /// checkpoint) and turns it into [`Failure::Cancelled`].
    pub(super) async fn cancelled(
        &self,
        conn: &mut DB::Connection,
        migration: &'static Migration,
        action: Action,
        cancel: Pause,
        (batches, rows, checkpoint): (u64, u64, Option<String>),
    ) -> Failure {
        let mut attempt = self.attempt(migration, action, chrono::Utc::now());
        attempt.batches = batches;
        attempt.rows_affected = rows;
        attempt.checkpoint = checkpoint;
        attempt.cancelled = true;
        let message = format!(
            "cancelled by {} from {} at {}{}",
            cancel.by,
            cancel.host,
            cancel.at.to_rfc3339(),
            cancel
                .reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        match self.record_failure(conn, &attempt, &message).await {
            Ok(()) => Failure::Cancelled(cancel),
            Err(err) => Failure::Other(err),
        }
    }

    /// Sends the progress event of a batch that committed.
    pub(super) fn report_batch(&self, walked: Walked<'_>) {
        let Some(report) = &self.progress else {
            return;
        };
        let rate = walked.keys_done as f64 / walked.elapsed.as_secs_f64().max(1e-9);
        report(&Progress {
            id: walked.id.to_string(),
            batches: walked.batches,
            keys_done: walked.keys_done,
            rows_affected: walked.rows_affected,
            estimated_total: walked.estimated_total,
            keys_per_second: rate,
            seconds_left: walked
                .estimated_total
                .map(|total| total.saturating_sub(walked.keys_done) as f64 / rate.max(1e-9)),
            checkpoint: walked.checkpoint,
            batch_keys: walked.batch_keys,
            batch_size: walked.batch_size,
            batch_ms: u64::try_from(walked.took.as_millis()).unwrap_or(u64::MAX),
            target_ms: walked
                .spec
                .target()
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            next_size: walked.next_size,
            waiting: None,
            workers: walked.workers,
            pacing: walked.pace.map(|d| d.reason.clone()),
            pause_ms: walked.pace.map_or(0, |d| {
                u64::try_from(d.pause.as_millis()).unwrap_or(u64::MAX)
            }),
        });
    }
}

/// Runs a batch's body inside its transaction `tx` (a panic caught), with the database's
/// write counter read around it on a re-run, and, with `rest`, as a check of every key left
/// (see `Ctx::checking_rest`) written as `rest` says. `fresh`: the transaction wrote
/// nothing before the body.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_body<DB: Backend>(
    tx: &mut DB::Connection,
    id: &'static str,
    action: Action,
    dry_run: bool,
    rest: Option<RestGuard>,
    fresh: bool,
    run: BatchFn<DB>,
    batch: Batch,
) -> Result<BodyRun, BatchError> {
    let number = batch.number();
    let before = writes_before::<DB>(&mut *tx, action, fresh)
        .await
        .map_err(|err| BatchError::database::<DB>(err, number))?;
    let checks_rest = rest.is_some();
    let mut ctx = Ctx::new(tx, id, dry_run);
    if let Some(guard) = rest {
        ctx = ctx.checking_rest(guard);
    }
    let mut outcome = run_caught::<DB>(run(&mut ctx, batch)).await;
    let written = writes_after(&mut ctx, before, &mut outcome).await;
    Ok(BodyRun {
        written,
        rows: ctx.rows_affected(),
        notes: ctx.notes().to_vec(),
        guarded: ctx.guarded_only(),
        rest_holds: checks_rest && ctx.rest_holds(),
        outcome,
    })
}

/// The retries of one batch: after a lock timeout, back off and try the same batch again,
/// at most `retries` times (a busy table slows the migration down instead of stalling the
/// application); after a statement timeout, try the first half of it, down to `min` keys.
pub(super) struct Retry {
    tries: u32,
    retries: u32,
    min: u32,
    /// Halvings after statement timeouts so far.
    pub(super) halvings: u32,
}

impl Retry {
    pub(super) fn new(retries: u32, min: u32) -> Self {
        Retry {
            tries: 0,
            retries,
            min: min.max(1),
            halvings: 0,
        }
    }

    /// Whether to run the batch again after `result`, and at what `size`; backs off first
    /// after a lock timeout.
    pub(super) async fn again<T>(
        &mut self,
        result: &Result<T, BatchError>,
        size: &mut u32,
    ) -> bool {
        match result {
            Err(BatchError::StatementTimeout { .. }) if *size > self.min => {
                *size = (*size / 2).max(self.min);
                self.halvings += 1;
                true
            }
            Err(BatchError::LockTimeout(..)) if self.tries < self.retries => {
                self.tries += 1;
                let backoff = Duration::from_millis(100 * (1 << self.tries.min(6)));
                tokio::time::sleep(backoff).await;
                true
            }
            _ => false,
        }
    }
}
