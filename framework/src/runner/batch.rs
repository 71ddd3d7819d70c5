//! A batched migration: one transaction per batch, each committing with its checkpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;

use super::apply::{BodyFailure, Failure, run_caught, writes_after, writes_before};
use super::plan::Step;
use super::report::{AppliedMigration, Progress};
use super::{Migrator, StopSignal};
use crate::backend::{Backend, pinned};
use crate::ctx::Ctx;
use crate::error::{Error, describe_sqlx};
use crate::key::{Key, KeyKind, KeyPart, KeyShape};
use crate::ledger::Pause;
use crate::ledger::{Action, Attempt, LedgerWrite, STATUS_APPLIED, STATUS_RUNNING};
use crate::migration::{Batch, BatchFn, BatchSpec, Migration};

impl<DB: Backend> Migrator<DB> {
    /// Runs a batched migration: one transaction per batch of keys, each committing the
    /// batch's changes together with the checkpoint (the batch's last key) in the ledger row,
    /// so a process killed at any instant resumes after the last committed batch and never
    /// redoes one. The migration counts as applied when its last batch commits.
    pub(super) async fn apply_batched(
        &self,
        conn: &mut PoolConnection<DB>,
        migration: &'static Migration,
        run: BatchFn<DB>,
        spec: &BatchSpec,
        step: Step,
    ) -> Result<AppliedMigration, Failure> {
        let clock = Instant::now();
        let mut state = BatchState {
            started_at: Utc::now(),
            after: None,
            batches: 0,
            total_rows: 0,
            write: step.ledger_write(),
            run_batches: 0,
            run_keys: 0,
            run_rows: 0,
            notes: Vec::new(),
            lock_retries: 0,
            run_written: None,
            checkpoint: None,
        };
        let (shape, warning) = pinned::<DB, _>(conn, async |c| {
            batch_key::<DB>(c, migration.id(), spec, step.resume.is_none()).await
        })
        .await
        .map_err(Failure::Other)?;
        if let Some(warning) = warning {
            state.notes.push(warning);
        }
        let workers = self.workers_for(spec);
        if !self.dry_run && DB::WORKERS {
            // Ranges left by a run with workers are finished as ranges, whatever the count
            // (looked for only where there can be some: a migration part-way).
            let ranges_left = workers == 1
                && step.resume.is_some()
                && !pinned::<DB, _>(conn, async |c| {
                    Ok(DB::read_ranges(c, &self.ledger, Some(migration.id())).await?)
                })
                .await
                .map_err(Failure::Other)?
                .is_empty();
            if workers > 1 || ranges_left {
                let job = super::workers::Job {
                    migration,
                    run,
                    spec,
                    shape,
                    action: step.action,
                    started_at: state.started_at,
                };
                return self
                    .apply_with_workers(conn, job, step, state.notes, workers)
                    .await;
            }
        }
        state.resume_from(&step, migration, &shape)?;
        let first_started_at = step
            .resume
            .as_ref()
            .map_or(state.started_at, |e| e.started_at);
        let estimated_total = pinned::<DB, _>(conn, async |c| {
            Ok(DB::estimate_rows(c, &shape, state.after.as_ref(), None).await?)
        })
        .await
        .ok()
        .flatten();
        let timeouts = (
            migration
                .lock_timeout()
                .or(self.lock_timeout)
                .or(Some(DEFAULT_BATCH_LOCK_TIMEOUT)),
            migration.statement_timeout().or(self.statement_timeout),
        );
        let mut sizer = Sizer::new(spec);
        // After batches that changed nothing, the rest of the keys is checked in one
        // statement (see `Ctx::checking_rest`); each check that finds work doubles the
        // batches that must change nothing before the next.
        let (mut check_rest, mut quiet_batches, mut quiet_needed) = (false, 0u64, 1u64);

        loop {
            if self
                .interrupt_after_batches
                .is_some_and(|limit| state.run_batches >= limit)
            {
                return Err(Failure::Interrupted {
                    batches: state.batches,
                });
            }
            let position = Position {
                batches: state.batches,
                keys: state.run_keys,
                checkpoint: state.after.as_ref().map(ToString::to_string),
            };
            if let Err(failure) = self.wait_until_healthy(conn, migration, &position).await {
                return Err(match failure {
                    Failure::Migration {
                        message,
                        panicked,
                        source,
                    } => {
                        let failure = (message, panicked, source);
                        self.batch_failure(conn, migration, step.action, &state, failure)
                            .await
                    }
                    other => other,
                });
            }
            let size = sizer.size();
            let rest = std::mem::take(&mut check_rest);
            let began = Instant::now();
            let mut retries = 0;
            let outcome = loop {
                match self
                    .batch(
                        conn,
                        migration,
                        run,
                        (&shape, size, rest),
                        &state,
                        step.action,
                        first_started_at,
                        timeouts,
                    )
                    .await
                {
                    // A check of the rest that could not run is no failure: the walk goes on.
                    Err(BatchError::LockTimeout(..) | BatchError::Failed { .. }) if rest => {
                        break Ok(BatchDone::WorkLeft);
                    }
                    Err(BatchError::LockTimeout(..)) if retries < spec.retries() => {
                        retries += 1;
                        state.lock_retries += 1;
                        // A busy table slows the migration down instead of stalling the
                        // application: back off, then try the same batch again.
                        let backoff = Duration::from_millis(100 * (1 << retries.min(6)));
                        tokio::time::sleep(backoff).await;
                    }
                    other => break other,
                }
            };
            let done = match outcome {
                Ok(done) => done,
                Err(BatchError::Fenced(err)) => return Err(Failure::Other(err)),
                Err(BatchError::Paused(pause)) => return Err(Failure::Paused(pause)),
                Err(BatchError::Commit(err)) => {
                    // Committed if the ledger row moved past this runner's checkpoint.
                    let from = state.after.as_ref().map(|k| shape.encode(k));
                    let batches = state.batches;
                    return Err(self
                        .commit_outcome(migration.id(), &err, move |row| {
                            row.batches > i64::try_from(batches).unwrap_or(i64::MAX)
                                || (row.checkpoint != from && !row.is_running())
                        })
                        .await);
                }
                Err(err) => {
                    let failure = match err {
                        BatchError::LockTimeout(message, source) => (message, false, source),
                        BatchError::Failed {
                            message,
                            panicked,
                            source,
                        } => (message, panicked, source),
                        BatchError::Commit(_) | BatchError::Fenced(_) | BatchError::Paused(_) => {
                            unreachable!("matched above")
                        }
                    };
                    return Err(self
                        .batch_failure(conn, migration, step.action, &state, failure)
                        .await);
                }
            };
            let finished = match done {
                BatchDone::NothingLeft => true,
                BatchDone::WorkLeft => {
                    quiet_batches = 0;
                    quiet_needed = quiet_needed.saturating_mul(2);
                    continue;
                }
                BatchDone::Committed {
                    last,
                    keys,
                    rows,
                    written,
                    notes,
                    finished,
                    guarded,
                } => {
                    let took = began.elapsed();
                    if rest {
                        quiet_batches = 0;
                    } else {
                        sizer.record(keys, took);
                        quiet_batches = if rows == 0 && guarded {
                            quiet_batches + 1
                        } else {
                            0
                        };
                    }
                    check_rest = DB::CHECKS_REST && !self.dry_run && quiet_batches >= quiet_needed;
                    if let Some(written) = written {
                        *state.run_written.get_or_insert(0) += written;
                    }
                    state.write = LedgerWrite::Continue {
                        expected: Some(shape.encode(&last)),
                    };
                    state.checkpoint = Some(shape.encode(&last));
                    state.after = Some(last);
                    state.batches += 1;
                    state.run_batches += 1;
                    state.run_keys += keys;
                    state.run_rows += rows;
                    state.total_rows += rows;
                    // Bounded: a migration of many batches must not grow without limit.
                    let room = MAX_NOTES.saturating_sub(state.notes.len());
                    state.notes.extend(notes.into_iter().take(room));
                    if let Some(report) = &self.progress {
                        let elapsed = clock.elapsed().as_secs_f64().max(1e-9);
                        let rate = state.run_keys as f64 / elapsed;
                        report(&Progress {
                            id: migration.id().to_string(),
                            batches: state.batches,
                            keys_done: state.run_keys,
                            rows_affected: state.run_rows,
                            estimated_total,
                            keys_per_second: rate,
                            seconds_left: estimated_total.map(|total| {
                                total.saturating_sub(state.run_keys) as f64 / rate.max(1e-9)
                            }),
                            checkpoint: state.after.as_ref().map(ToString::to_string),
                            batch_keys: keys,
                            batch_size: size,
                            batch_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                            target_ms: spec
                                .target()
                                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
                            next_size: sizer.size(),
                            waiting: None,
                            workers: 1,
                        });
                    }
                    finished
                }
            };
            if finished || self.dry_run {
                return Ok(AppliedMigration {
                    id: migration.id().to_string(),
                    rerun: step.action == Action::Rerun,
                    rows_affected: state.run_rows,
                    duration_ms: u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX),
                    notes: state.notes,
                    batches: state.run_batches,
                    lock_retries: state.lock_retries,
                    rows_written: state.run_written,
                    workers: 1,
                });
            }
            if self.stop.as_ref().is_some_and(StopSignal::is_stopped) {
                return Err(Failure::Stopped {
                    batches: state.batches,
                    checkpoint: state.after.as_ref().map(ToString::to_string),
                });
            }
            if let Some(pause) = spec.pause() {
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// One batch in its own transaction, in the span `batch` (see [`crate::trace`]).
    ///
    /// With `rest`, the batch is every key left, and the body runs as a check (see
    /// `Ctx::checking_rest`): it commits, as one batch that changed nothing, only where no
    /// row after the checkpoint needed work; otherwise it rolls back with
    /// [`BatchDone::WorkLeft`].
    #[allow(clippy::too_many_arguments)]
    async fn batch(
        &self,
        conn: &mut PoolConnection<DB>,
        migration: &'static Migration,
        run: BatchFn<DB>,
        (shape, size, rest): (&Arc<KeyShape>, u32, bool),
        state: &BatchState,
        action: Action,
        first_started_at: DateTime<Utc>,
        timeouts: (Option<Duration>, Option<Duration>),
    ) -> Result<BatchDone, BatchError> {
        let span = batch_span(migration.id(), state.batches + 1, size, None);
        let began = Instant::now();
        let result = async {
            let (lock_timeout, statement_timeout) = timeouts;
            let classify = |err| BatchError::database::<DB>(err, state.batches + 1);
            let mut tx = self.begin(conn, lock_timeout).await.map_err(classify)?;
            DB::set_local_timeouts(&mut tx, lock_timeout, statement_timeout, self.idle_limit())
                .await
                .map_err(classify)?;
            // An operator's pause (`datamig pause`, from any host) stops the migration here:
            // after the batch before this one committed, before this one does anything.
            if !self.dry_run
                && let Some(pause) = DB::pause_state(&mut tx, &self.ledger, Some(migration.id()))
                    .await
                    .map_err(classify)?
                    .pop()
            {
                let _ = tx.rollback().await;
                return Err(BatchError::Paused(pause));
            }
            let next = if rest {
                match DB::last_key(&mut tx, shape, state.after.as_ref())
                    .await
                    .map_err(classify)?
                {
                    Some(last) => {
                        let keys =
                            DB::estimate_rows(&mut tx, shape, state.after.as_ref(), Some(&last))
                                .await
                                .map_err(classify)?;
                        Some((last, keys.unwrap_or(0)))
                    }
                    None => None,
                }
            } else {
                DB::next_batch(&mut tx, shape, state.after.as_ref(), None, size)
                    .await
                    .map_err(classify)?
            };
            let mut attempt = self.attempt(migration, action, state.started_at);
            attempt.first_started_at = first_started_at;
            attempt.write = state.write.clone();
            attempt.batches = state.batches;
            attempt.checkpoint = state.after.as_ref().map(|k| shape.encode(k));
            attempt.notes = state.notes.clone();

            let Some((last, keys)) = next else {
                // No key left (an empty table, or a resume at the very end): applied now.
                if self.dry_run {
                    tx.rollback().await.map_err(classify)?;
                    return Ok(BatchDone::NothingLeft);
                }
                attempt.rows_affected = state.run_rows;
                attempt.total_rows = state.total_rows;
                self.commit_batch(tx, &attempt, true).await?;
                return Ok(BatchDone::NothingLeft);
            };

            let number = state.batches + 1;
            if let (Some(after), Some(last)) =
                (state.after.as_ref().and_then(Key::as_i64), last.as_i64())
                && last <= after
            {
                // Keyset pagination must move forward: a batch that does not would repeat
                // forever, or end the migration with keys never reached.
                let _ = tx.rollback().await;
                return Err(BatchError::Failed {
                    message: format!(
                        "batch {number}: its last key {last} is not after the checkpoint {after}; \
                         the key column {}.{} does not order the rows as batching needs",
                        shape.table,
                        shape.names()
                    ),
                    panicked: false,
                    source: None,
                });
            }
            if rest {
                let limit = statement_timeout.map_or(REST_CHECK_LIMIT, |t| t.min(REST_CHECK_LIMIT));
                if DB::begin_rest_check(&mut tx, limit).await.is_err() {
                    // No guard here (a role without TEMP, for one): the walk goes on.
                    let _ = tx.rollback().await;
                    return Ok(BatchDone::WorkLeft);
                }
            }
            let before = writes_before::<DB>(&mut tx, action)
                .await
                .map_err(classify)?;
            let mut ctx = Ctx::new(&mut *tx, migration.id(), self.dry_run);
            if rest {
                ctx = ctx.checking_rest(DB::REST_GUARD);
            }
            let batch = Batch::new(
                state.after.clone(),
                last.clone(),
                number,
                keys,
                Arc::clone(shape),
            );
            let mut outcome = run_caught::<DB>(run(&mut ctx, batch)).await;
            let written = writes_after(&mut ctx, before, &mut outcome).await;
            let rows = ctx.rows_affected();
            let guarded = ctx.guarded_only();
            let mut notes = ctx.notes().to_vec();
            if rest {
                if outcome.is_err() || !ctx.rest_holds() || written.is_some_and(|w| w > 0) {
                    // A row still needs work, or the body did what a check cannot guard.
                    let _ = tx.rollback().await;
                    return Ok(BatchDone::WorkLeft);
                }
                DB::end_rest_check(&mut tx).await.map_err(classify)?;
                notes.push(format!(
                    "batch {number}: no row after {} needed work, checked in one statement \
                     instead of walked (about {keys} keys)",
                    state
                        .after
                        .as_ref()
                        .map_or_else(|| "the first key".to_string(), ToString::to_string)
                ));
            }
            if let Err(failure) = outcome {
                let _ = tx.rollback().await;
                return Err(BatchError::body(failure, number));
            }
            if self.dry_run {
                tx.rollback().await.map_err(classify)?;
                return Ok(BatchDone::Committed {
                    last,
                    keys,
                    rows,
                    written,
                    notes,
                    finished: true,
                    guarded,
                });
            }
            let finished = !DB::has_keys_after(&mut tx, shape, &last, None)
                .await
                .map_err(classify)?;
            attempt.status = if finished {
                STATUS_APPLIED
            } else {
                STATUS_RUNNING
            };
            attempt.checkpoint = Some(shape.encode(&last));
            attempt.batches = number;
            attempt.rows_affected = state.run_rows + rows;
            attempt.total_rows = state.total_rows + rows;
            let room = MAX_NOTES.saturating_sub(attempt.notes.len());
            attempt.notes.extend(notes.iter().take(room).cloned());
            attempt.finished_at = Utc::now();
            self.commit_batch(tx, &attempt, finished).await?;
            Ok(BatchDone::Committed {
                last,
                keys,
                rows,
                written,
                notes,
                finished,
                guarded,
            })
        }
        .instrument(span.clone())
        .await;
        let counts = match &result {
            Ok(BatchDone::Committed { keys, rows, .. }) => Ok(Some((*keys, *rows))),
            Ok(BatchDone::NothingLeft) => Ok(None),
            Ok(BatchDone::WorkLeft) => {
                span.record("outcome", "work_left");
                tracing::debug!(parent: &span, "the rest still needs work: walked batch by batch");
                return result;
            }
            Err(err) => Err(err),
        };
        batch_ended(&span, counts, began.elapsed());
        result
    }

    /// Writes the checkpoint (and, for the last batch, the run history) in the batch's
    /// transaction, then commits.
    async fn commit_batch(
        &self,
        mut tx: sqlx::Transaction<'_, DB>,
        attempt: &Attempt,
        finished: bool,
    ) -> Result<(), BatchError> {
        let mut attempt = attempt.clone();
        if finished {
            attempt.status = STATUS_APPLIED;
        }
        let classify = |err| BatchError::database::<DB>(err, attempt.batches);
        if let Err(err) = self.fence(&mut tx, &attempt.id).await {
            let _ = tx.rollback().await;
            return Err(BatchError::Fenced(err));
        }
        if !DB::write_ledger(&mut tx, &self.ledger, &attempt)
            .await
            .map_err(classify)?
        {
            let _ = tx.rollback().await;
            return Err(BatchError::Failed {
                message: "its ledger row is no longer at the checkpoint this runner started from; \
                          another runner must have moved it"
                    .to_string(),
                panicked: false,
                source: None,
            });
        }
        if finished {
            DB::record_run(&mut tx, &self.ledger, &attempt, None)
                .await
                .map_err(classify)?;
        }
        // A failed COMMIT is not a rollback: the caller reads the ledger again to tell.
        tx.commit().await.map_err(BatchError::Commit)
    }

    /// Records a batch failure (its message, whether it panicked, its error) in the run
    /// history and turns it into a [`Failure`].
    async fn batch_failure(
        &self,
        conn: &mut PoolConnection<DB>,
        migration: &'static Migration,
        action: Action,
        state: &BatchState,
        (message, panicked, source): (String, bool, Option<crate::error::BoxError>),
    ) -> Failure {
        if self.dry_run {
            return Failure::Migration {
                message,
                panicked,
                source,
            };
        }
        let mut attempt = self.attempt(migration, action, state.started_at);
        attempt.rows_affected = state.run_rows;
        attempt.checkpoint = state.checkpoint.clone();
        attempt.batches = state.batches;
        match self.record_failure(conn, &attempt, &message).await {
            Ok(()) => Failure::Migration {
                message,
                panicked,
                source,
            },
            Err(err) => Failure::Other(err),
        }
    }
}

/// A batch's `lock_timeout` when neither the migration nor the migrator sets one: a batch
/// must never queue behind the application's locks for long.
pub(super) const DEFAULT_BATCH_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest a check of the rest of a batched migration's keys may run (less where the
/// migration's `statement_timeout` is shorter): past it, the walk goes on batch by batch.
pub(super) const REST_CHECK_LIMIT: Duration = Duration::from_secs(10);

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

/// Where a batched migration stands, in this run.
pub(super) struct BatchState {
    started_at: DateTime<Utc>,
    pub(super) after: Option<Key>,
    /// `after` as the ledger stores it.
    checkpoint: Option<String>,
    pub(super) batches: u64,
    total_rows: u64,
    write: LedgerWrite,
    run_batches: u64,
    pub(super) run_keys: u64,
    run_rows: u64,
    notes: Vec<String>,
    lock_retries: u64,
    run_written: Option<u64>,
}

impl BatchState {
    /// Takes the checkpoint and counts of a resumed migration from its ledger row.
    fn resume_from(
        &mut self,
        step: &Step,
        migration: &Migration,
        shape: &KeyShape,
    ) -> Result<(), Failure> {
        let Some(entry) = &step.resume else {
            return Ok(());
        };
        self.after = match &entry.checkpoint {
            None => None,
            Some(text) => Some(shape.decode(text).map_err(|why| {
                Failure::Other(Error::Config(format!(
                    "the ledger's checkpoint of {} is {text:?}, which this migration cannot \
                     resume from: {why}. Its key changed while it was part-way; finish it with \
                     the code that started it, or re-run it from the start",
                    migration.id()
                )))
            })?),
        };
        self.checkpoint = entry.checkpoint.clone();
        self.batches = u64::try_from(entry.batches).unwrap_or(0);
        self.total_rows = u64::try_from(entry.rows_affected).unwrap_or(0);
        self.write = LedgerWrite::Continue {
            expected: entry.checkpoint.clone(),
        };
        Ok(())
    }
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

/// What one batch did.
enum BatchDone {
    /// No key was left: the migration is applied.
    NothingLeft,
    /// A check of the rest found a row that still needs work (or could not run): rolled
    /// back, and the walk goes on.
    WorkLeft,
    /// A batch committed (or, in a dry run, ran and rolled back).
    Committed {
        last: Key,
        keys: u64,
        rows: u64,
        /// Rows written as the database counted them, when measured (re-runs).
        written: Option<u64>,
        notes: Vec<String>,
        finished: bool,
        /// Whether the body ran only statements a rest check can guard.
        guarded: bool,
    },
}

/// Why one batch did not commit.
pub(super) enum BatchError {
    /// It waited for a lock longer than its `lock_timeout`: worth retrying. With the error.
    LockTimeout(String, Option<crate::error::BoxError>),
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
    /// An operator paused the migration: this batch did not begin.
    Paused(Pause),
}

impl BatchError {
    /// A database error inside batch `number`'s transaction (a lost connection, a
    /// constraint, at any step up to the commit) fails the migration like an error of its
    /// body: recorded and reported by id. A lock timeout is worth a retry.
    pub(super) fn database<DB: Backend>(err: sqlx::Error, number: u64) -> Self {
        if DB::is_lock_timeout(&err) {
            BatchError::LockTimeout(describe_sqlx(&err), Some(Box::new(err)))
        } else {
            BatchError::Failed {
                message: format!("batch {number}: {}", describe_sqlx(&err)),
                panicked: false,
                source: Some(Box::new(err)),
            }
        }
    }

    /// A failure of the body of batch `number`.
    pub(super) fn body(failure: BodyFailure, number: u64) -> Self {
        if failure.lock_timeout {
            BatchError::LockTimeout(failure.message, failure.source)
        } else {
            BatchError::Failed {
                message: format!("batch {number}: {}", failure.message),
                panicked: failure.panicked,
                source: failure.source,
            }
        }
    }
}

/// The key types batching walks on PostgreSQL, for messages.
const POSTGRES_KEY_TYPES: &str = "smallint, integer, bigint, uuid, text, varchar, char, citext, \
                                  numeric, bytea, date, timestamp, timestamptz";

/// Checks a batched migration's key and scope before its first batch, and returns the
/// key's shape (and a warning to record, for a key no index serves that the migration
/// allowed): the table and the columns exist, each column is `NOT NULL` and of a type
/// batching walks, the scope is a valid condition, and an index serves the key. On a fresh
/// start of a key of one integer column, the smallest key must be reachable by the first
/// batch's `$1` too. Nothing is written: a refusal leaves the database as it was.
pub(crate) async fn batch_key<DB: Backend>(
    conn: &mut DB::Connection,
    id: &str,
    spec: &BatchSpec,
    fresh_start: bool,
) -> Result<(Arc<KeyShape>, Option<String>), Error> {
    let table = spec.table();
    let refuse = |why: String| {
        Err(Error::Config(format!(
            "batched migration {id}: {why}; nothing ran"
        )))
    };
    let names = spec.key_columns();
    if names.is_empty() {
        return refuse(format!(
            "its key {:?} names no column; write key = \"id\" or key = \"tenant_id, id\"",
            spec.key()
        ));
    }
    let Some(found) = DB::key_columns(conn, table, &names).await? else {
        return refuse(format!("its table {table} does not exist"));
    };
    let mut columns = Vec::with_capacity(found.len());
    for (name, column) in names.iter().zip(found) {
        let Some(column) = column else {
            return refuse(format!(
                "table {table} has no column {name:?}, which its batch key names; check the spelling"
            ));
        };
        if column.kind.is_none() {
            return refuse(format!(
                "its key column {table}.{name} is of type {}, which batching does not walk \
                 (it walks {POSTGRES_KEY_TYPES}); key the batches by another unique column",
                column.sql_type
            ));
        }
        if !column.not_null {
            return refuse(format!(
                "its key column {table}.{name} is nullable, and a row whose key is NULL is \
                 never reached by any batch; make it NOT NULL first \
                 (ALTER TABLE {table} ALTER COLUMN {name} SET NOT NULL), or key the batches \
                 by another column"
            ));
        }
        if column.not_integers > 0 {
            return refuse(format!(
                "{} row(s) of {table} hold a {name} that is not an integer in an integer column, \
                 which batches cannot reach; convert them first",
                column.not_integers
            ));
        }
        columns.push(column);
    }
    if let Some(scope) = spec.scope()
        && let Err(err) = DB::check_scope(conn, table, scope).await
    {
        return refuse(format!(
            "its scope {scope:?} is not a valid condition on table {table}: {}",
            describe_sqlx(&err)
        ));
    }
    let shape = Arc::new(KeyShape {
        table: table.to_string(),
        parts: columns
            .iter()
            .map(|c| KeyPart {
                name: c.name.clone(),
                sql_type: c.sql_type.clone(),
                kind: c.kind.unwrap_or(KeyKind::Other),
            })
            .collect(),
        scope: spec.scope().map(str::to_string),
        casts: DB::ID == "postgres",
    });
    let mut warning = None;
    if DB::key_index(conn, table, &columns).await?.is_none() {
        let list = names.join(", ");
        let create = format!(
            "CREATE INDEX CONCURRENTLY {} ON {table} ({list})",
            crate::sql::quote_ident(&format!("{table}_{}_idx", names.join("_")))
        );
        if !spec.scans_without_index() {
            return refuse(format!(
                "no index of {table} serves its key ({list}): every batch would read the whole \
                 table. Create one first (on PostgreSQL: {create}), or, for a small table only, \
                 set dangerously_scan_without_index = true in batch(..)"
            ));
        }
        warning = Some(format!(
            "no index serves the key ({list}) of {table}: every batch read the whole table \
             (dangerously_scan_without_index); {create} would make each an index range scan"
        ));
    }
    if fresh_start && shape.is_single_integer() {
        let sql = format!(
            "SELECT CAST(min({}) AS bigint) FROM {}",
            crate::sql::quote_ident(names[0]),
            crate::sql::quote_ident(table)
        );
        let smallest = DB::fetch_i64(
            conn,
            sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(sql)),
        )
        .await?;
        if smallest == Some(i64::MIN) {
            return refuse(format!(
                "{table} holds the key {} (the smallest bigint), which the form `{} > $1` of a \
                 first batch cannot include; renumber that row first",
                i64::MIN,
                names[0]
            ));
        }
    }
    Ok((shape, warning))
}

/// The span of one batch: `id`, `batch` (its number), `size`, and with workers `worker` and
/// `range`; `keys`, `rows`, `duration_ms` and `outcome` are filled when it ends.
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
                BatchError::Failed { message, .. } => ("failed", message.clone()),
                BatchError::Commit(err) => ("commit_unknown", err.to_string()),
                BatchError::Fenced(err) => ("fenced", err.to_string()),
                BatchError::Paused(pause) => ("paused", format!("paused by {}", pause.by)),
            };
            span.record("outcome", outcome);
            tracing::warn!(parent: span, outcome, error = %message, duration_ms, "batch did not commit");
        }
    }
}
