//! A batched migration: one transaction per batch, each committing with its checkpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument;

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;

use super::apply::Failure;
use super::chain::{BatchTx, Link};
use super::key_check::batch_key;
use super::pace::{Observed, Pacer};
use super::plan::Step;
use super::report::AppliedMigration;
use super::walk::{
    BatchError, BodyRun, DEFAULT_BATCH_LOCK_TIMEOUT, MAX_NOTES, Position, Retry, Sizer, Timeouts,
    Walked, batch_ended, batch_span, open_batch, run_body,
};
use super::{Migrator, StopSignal};
use crate::backend::{Backend, Chained, LoadSample, pinned};
use crate::error::Error;
use crate::key::{Key, KeyShape};
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
            paced: Duration::ZERO,
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
        let timeouts = self.batch_timeouts(migration);
        let mut sizer = Sizer::new(spec);
        // Without settings of its own, the walk paces itself (`pace.rs`).
        let mut pacer = spec
            .paces()
            .then(|| Pacer::new(spec.min_size(), spec.max_size()));
        let mut next_size = pacer.as_ref().map_or(sizer.size(), Pacer::first_size);
        // After batches that changed nothing, the rest of the keys is checked in one
        // statement (see `Ctx::checking_rest`); each check that finds work doubles the
        // batches that must change nothing before the next.
        let (mut check_rest, mut quiet_batches, mut quiet_needed) = (false, 0u64, 1u64);
        let mut pause_after = Duration::ZERO;
        // Where the batches keep one size, the next batch's bounds are read ahead while a
        // batch's body runs (see `ReadAhead`).
        let mut read_ahead: Option<ReadAhead> = None;
        let reads_ahead =
            DB::READS_AHEAD && !self.dry_run && pacer.is_none() && spec.target().is_none();
        // Without a health check to run before each batch or a lease to fence it with, a
        // batch's commit may begin the next batch (see `chain.rs`); one begun before a
        // pause between batches is rolled back before the pause.
        let chains = !self.dry_run && !self.leased() && self.health_checks.is_empty();
        let mut link = Link::new(conn);

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
            if !self.health_checks.is_empty()
                && let Err(failure) = self
                    .wait_until_healthy(link.idle().await, migration, &position)
                    .await
            {
                return Err(match failure {
                    Failure::Migration {
                        message,
                        panicked,
                        source,
                    } => {
                        let failure = (message, panicked, source);
                        let conn = link.idle().await;
                        self.batch_failure(conn, migration, step.action, &state, failure)
                            .await
                    }
                    other => other,
                });
            }
            let mut size = next_size;
            let rest = std::mem::take(&mut check_rest);
            let began = Instant::now();
            let mut retry = Retry::new(spec.retries(), spec.min_size());
            let outcome = loop {
                let result = match self
                    .batch(
                        &mut link,
                        migration,
                        run,
                        (&shape, size, rest, chains),
                        pacer.is_some(),
                        reads_ahead.then_some(&mut read_ahead),
                        &state,
                        step.action,
                        first_started_at,
                        timeouts,
                    )
                    .await
                {
                    // A check of the rest that could not run is no failure: the walk goes on.
                    Err(
                        BatchError::LockTimeout(..)
                        | BatchError::StatementTimeout { .. }
                        | BatchError::Failed { .. },
                    ) if rest => Ok(BatchDone::WorkLeft),
                    other => other,
                };
                let halvings = retry.halvings;
                if !retry.again(&result, &mut size).await {
                    break result.map_err(|err| {
                        err.smallest_failed(size, spec.min_size().max(1), timeouts.statement)
                    });
                }
                if retry.halvings == halvings {
                    state.lock_retries += 1;
                } else {
                    state.notes.push(format!(
                        "batch {}: ran past the statement timeout; tried again with {size} keys",
                        state.batches + 1
                    ));
                    // A fixed size stays at the half that fits; a size that adapts finds
                    // its own again.
                    next_size = next_size.min(size);
                    if let Some(sizer) = sizer.fixed_mut() {
                        *sizer = size;
                    }
                }
            };
            let done = match outcome {
                Ok(done) => done,
                Err(BatchError::Fenced(err) | BatchError::ReadBack(err)) => {
                    return Err(Failure::Other(err));
                }
                Err(BatchError::Paused(pause)) => return Err(Failure::Paused(pause)),
                Err(BatchError::Cancelled(cancel)) => {
                    let counts = (state.batches, state.run_rows, state.checkpoint.clone());
                    let conn = link.idle().await;
                    return Err(self
                        .cancelled(conn, migration, step.action, cancel, counts)
                        .await);
                }
                Err(BatchError::Commit(err)) => {
                    // Committed if the ledger row moved past this runner's checkpoint.
                    let from = state.after.as_ref().map(|k| shape.encode(k));
                    let batches = state.batches;
                    return Err(self
                        .commit_outcome(migration.id(), Some(batches + 1), &err, move |row| {
                            row.batches > i64::try_from(batches).unwrap_or(i64::MAX)
                                || (row.checkpoint != from && !row.is_running())
                        })
                        .await);
                }
                Err(err) => {
                    let failure = match err {
                        BatchError::LockTimeout(message, source)
                        | BatchError::StatementTimeout {
                            message, source, ..
                        } => (message, false, source),
                        BatchError::Failed {
                            message,
                            panicked,
                            source,
                        } => (message, panicked, source),
                        BatchError::Commit(_)
                        | BatchError::Fenced(_)
                        | BatchError::ReadBack(_)
                        | BatchError::Paused(_)
                        | BatchError::Cancelled(_) => {
                            unreachable!("matched above")
                        }
                    };
                    let conn = link.idle().await;
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
                    sample,
                } => {
                    let took = began.elapsed();
                    let mut pace = None;
                    if rest {
                        quiet_batches = 0;
                    } else {
                        sizer.record(keys, took);
                        next_size = sizer.size();
                        if let Some(pacer) = pacer.as_mut() {
                            let decision = pacer.next(&Observed {
                                keys,
                                took,
                                sample,
                                own_commits: 1,
                            });
                            next_size = decision.size;
                            pace = Some(decision);
                        }
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
                    self.report_batch(Walked {
                        id: migration.id(),
                        batches: state.batches,
                        keys_done: state.run_keys,
                        rows_affected: state.run_rows,
                        estimated_total,
                        elapsed: clock.elapsed(),
                        checkpoint: state.after.as_ref().map(ToString::to_string),
                        batch_keys: keys,
                        batch_size: size,
                        took,
                        spec,
                        next_size,
                        workers: 1,
                        pace: pace.as_ref(),
                    });
                    if let Some(decision) = pace.filter(|d| !finished && d.pause > Duration::ZERO) {
                        pause_after = decision.pause;
                        if decision.paced {
                            state.paced += decision.pause;
                        }
                    }
                    finished
                }
            };
            if finished || (self.dry_run && state.run_batches >= DRY_RUN_BATCHES) {
                let elapsed = clock.elapsed();
                // In a dry run: the whole walk at the rate of its first batches.
                let estimated_ms = (self.dry_run && state.run_keys > 0)
                    .then(|| {
                        estimated_total.map(|total| {
                            let per_key = elapsed.as_secs_f64() / state.run_keys as f64;
                            (per_key * total.max(state.run_keys) as f64 * 1000.0) as u64
                        })
                    })
                    .flatten();
                return Ok(AppliedMigration {
                    estimated_keys: estimated_total.filter(|_| self.dry_run),
                    estimated_ms,
                    id: migration.id().to_string(),
                    rerun: step.action == Action::Rerun,
                    rows_affected: state.run_rows,
                    duration_ms: u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX),
                    notes: state.notes,
                    batches: state.run_batches,
                    lock_retries: state.lock_retries,
                    rows_written: state.run_written,
                    workers: 1,
                    paced_ms: u64::try_from(state.paced.as_millis()).unwrap_or(u64::MAX),
                });
            }
            if self.stop.as_ref().is_some_and(StopSignal::is_stopped) {
                return Err(Failure::Stopped {
                    batches: state.batches,
                    checkpoint: state.after.as_ref().map(ToString::to_string),
                });
            }
            // An operator's pause written while the walk waits stops it before its next
            // batch: that batch's transaction, begun before, goes.
            if let Some(pause) = spec.pause() {
                link.idle().await;
                tokio::time::sleep(pause).await;
            }
            let pause = std::mem::take(&mut pause_after);
            if !pause.is_zero() {
                link.idle().await;
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
        link: &mut Link<'_, DB>,
        migration: &'static Migration,
        run: BatchFn<DB>,
        (shape, size, rest, chains): (&Arc<KeyShape>, u32, bool, bool),
        sample: bool,
        mut read_ahead: Option<&mut Option<ReadAhead>>,
        state: &BatchState,
        action: Action,
        first_started_at: DateTime<Utc>,
        timeouts: Timeouts,
    ) -> Result<BatchDone, BatchError> {
        let span = batch_span(migration.id(), state.batches + 1, size, None);
        let began = Instant::now();
        let result = async {
            let classify = |err| BatchError::database::<DB>(err, state.batches + 1);
            span.record("begun", if link.has_next() { "chained" } else { "own" });
            let mut tx = if link.has_next() {
                link.take_next()
            } else {
                let conn = link.conn();
                BatchTx::Own(open_batch!(
                    self,
                    conn,
                    migration.id(),
                    state.batches + 1,
                    timeouts,
                    classify
                ))
            };
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
                let ahead = match read_ahead.as_deref_mut().and_then(Option::take) {
                    Some(ahead) => {
                        let wait = timeouts.lock.unwrap_or(DEFAULT_BATCH_LOCK_TIMEOUT);
                        ahead.take(state.after.as_ref(), size, wait).await
                    }
                    None => None,
                };
                span.record("bounds", if ahead.is_some() { "ahead" } else { "read" });
                match ahead {
                    Some(next) => Some(next),
                    None => DB::next_batch(&mut tx, shape, state.after.as_ref(), None, size)
                        .await
                        .map_err(classify)?,
                }
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
                self.commit_batch(tx, &attempt, true, None).await?;
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
            if !rest && let Some(slot) = read_ahead.as_deref_mut() {
                *slot = ReadAhead::start::<DB>(&self.pool, shape, last.clone(), size);
            }
            let guard = if rest {
                let limit = timeouts
                    .statement
                    .map_or(REST_CHECK_LIMIT, |t| t.min(REST_CHECK_LIMIT));
                match DB::begin_rest_check(&mut tx, limit).await {
                    Ok(guard) => Some(guard),
                    Err(_) => {
                        // No guard here (a role without TEMP, MySQL 8): the walk goes on.
                        let _ = tx.rollback().await;
                        return Ok(BatchDone::WorkLeft);
                    }
                }
            } else {
                None
            };
            let batch = Batch::new(
                state.after.clone(),
                last.clone(),
                number,
                keys,
                Arc::clone(shape),
            );
            let BodyRun {
                outcome,
                written,
                rows,
                mut notes,
                guarded,
                rest_holds,
            } = run_body::<DB>(
                &mut tx,
                migration.id(),
                action,
                self.dry_run,
                guard,
                // Only reads (the marks, the next batch) ran in it so far.
                true,
                run,
                batch,
            )
            .await?;
            if rest {
                if outcome.is_err() || !rest_holds || written.is_some_and(|w| w > 0) {
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
                return Err(BatchError::body(failure, number).with_keys(|| {
                    format!(
                        "after {} up to {last}",
                        state
                            .after
                            .as_ref()
                            .map_or_else(|| "the first key".to_string(), ToString::to_string)
                    )
                }));
            }
            if self.dry_run {
                // A sample of the walk for the estimate: the next batches read on from
                // here, though this one's changes are rolled back.
                let finished = !DB::has_keys_after(&mut tx, shape, &last, None)
                    .await
                    .map_err(classify)?;
                tx.rollback().await.map_err(classify)?;
                return Ok(BatchDone::Committed {
                    last,
                    keys,
                    rows,
                    written,
                    notes,
                    finished,
                    guarded,
                    sample: None,
                });
            }
            // While the batch still holds its locks: who else is there, and who waits for it.
            let sample = if sample && !rest {
                DB::load_sample(&mut tx, &[]).await.map_err(classify)?
            } else {
                None
            };
            // Keys after this batch that the read ahead found are there: no need to ask.
            let found_ahead = match read_ahead.as_deref_mut().and_then(Option::as_mut) {
                Some(ahead) => ahead.found_after(&last).await,
                None => false,
            };
            let finished = !found_ahead
                && !DB::has_keys_after(&mut tx, shape, &last, None)
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
            // The next batch begins in this one's commit where it follows at once.
            let chain = (chains && !self.stop.as_ref().is_some_and(StopSignal::is_stopped))
                .then_some(timeouts);
            if self.commit_batch(tx, &attempt, finished, chain).await? {
                link.hold_next();
            }
            Ok(BatchDone::Committed {
                last,
                keys,
                rows,
                written,
                notes,
                finished,
                guarded,
                sample,
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
    /// transaction, then commits. With `chain` (the next batch's timeouts), the backend
    /// may begin the next batch's transaction in the same round trip: `true` when it did,
    /// and the transaction open on the connection is the next batch's.
    async fn commit_batch(
        &self,
        mut tx: BatchTx<'_, DB>,
        attempt: &Attempt,
        finished: bool,
        chain: Option<Timeouts>,
    ) -> Result<bool, BatchError> {
        let mut attempt = attempt.clone();
        if finished {
            attempt.status = STATUS_APPLIED;
        }
        let classify = |err| BatchError::database::<DB>(err, attempt.batches);
        if let Err(err) = self.fence(&mut tx, &attempt.id).await {
            let _ = tx.rollback().await;
            return Err(BatchError::Fenced(err));
        }
        let moved = || {
            let from = match &attempt.write {
                LedgerWrite::Continue {
                    expected: Some(checkpoint),
                } => checkpoint.as_str(),
                _ => "the first key",
            };
            BatchError::Failed {
                message: format!(
                    "batch {}: its ledger row is no longer at the checkpoint this runner \
                     started from ({from}); another runner must have moved it \
                     (`datamig status` shows where the migration stands; the next run goes on \
                     from there)",
                    attempt.batches
                ),
                panicked: false,
                source: None,
            }
        };
        if let Some(next) = chain.filter(|_| !finished) {
            let chained =
                DB::commit_and_begin(&mut tx, &self.ledger, &attempt, next.lock, next.statement);
            match chained.await {
                Ok(Chained::Unsupported) => {}
                Ok(Chained::Committed { marked: false }) => {
                    tx.hand_on();
                    return Ok(true);
                }
                Ok(Chained::Committed { marked: true }) => {
                    // Committed. The next batch's begin reads the pause or the cancel and
                    // stops there; the transaction begun for it goes.
                    let _ = tx.rollback().await;
                    return Ok(false);
                }
                Ok(Chained::NotWritten) => {
                    let _ = tx.rollback().await;
                    return Err(moved());
                }
                Ok(Chained::Refused(err)) => {
                    let _ = tx.rollback().await;
                    return Err(classify(err));
                }
                // As after a failed `COMMIT`: the caller reads the ledger again to tell.
                Err(err) => return Err(BatchError::Commit(err)),
            }
        }
        if !DB::write_ledger(&mut tx, &self.ledger, &attempt)
            .await
            .map_err(classify)?
        {
            let _ = tx.rollback().await;
            return Err(moved());
        }
        if finished {
            DB::record_run(&mut tx, &self.ledger, &attempt, None)
                .await
                .map_err(classify)?;
        }
        // A failed COMMIT is not a rollback: the caller reads the ledger again to tell.
        tx.commit().await.map_err(BatchError::Commit)?;
        Ok(false)
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

/// Batches a dry run walks (each rolled back) to estimate a batched migration's time.
pub(super) const DRY_RUN_BATCHES: u64 = 3;

/// The longest a check of the rest of a batched migration's keys may run (less where the
/// migration's `statement_timeout` is shorter): past it, the walk goes on batch by batch.
pub(super) const REST_CHECK_LIMIT: Duration = Duration::from_secs(10);

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
    /// Time spent pausing for other sessions (pacing).
    paced: Duration,
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
        if step.restart {
            // From the first key; the first batch's write still names the row's checkpoint.
            self.after = None;
            self.checkpoint = None;
            self.batches = 0;
            self.total_rows = 0;
        }
        Ok(())
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
        /// What the database showed about the other sessions while it ran (pacing only).
        sample: Option<LoadSample>,
    },
}

/// The next batch's bounds read on a pooled connection of their own while a batch's body
/// runs: the index range scan that finds a batch's last key is then off the batch's path
/// (on a server with a core to spare, it runs beside the body). Used only when it is for
/// the batch that follows (the same checkpoint and size) and found a batch: otherwise the
/// batch reads its bounds itself, as without it. A read still under way when its batch
/// begins is waited for once it has its connection (its statement is then on the server,
/// and reading again inside the batch would only repeat it), at most the batch's lock
/// timeout; one still waiting for a connection of the pool is dropped (a pool with none
/// to spare must not stall the walk).
/// A batch's range is whatever keys lie between its bounds when its body runs, so bounds
/// read a moment early cover the same keys; "no key left" is never taken from it (a row
/// inserted since counts), while keys it found after a batch spare that batch the question
/// whether any are left.
pub(super) struct ReadAhead {
    after: Key,
    size: u32,
    task: tokio::task::JoinHandle<Result<Option<(Key, u64)>, sqlx::Error>>,
    /// Set by whichever comes first: the read, once it has its connection (its statement
    /// is then on its way), or the drop of this handle (the read then ends without one).
    claimed: Arc<AtomicBool>,
    /// The read's bounds, once it has ended without an error (`None` inside: no key was
    /// left).
    read: Option<Option<(Key, u64)>>,
    /// Whether the task has ended (its result taken, or its error dropped).
    ended: bool,
}

impl ReadAhead {
    /// Starts reading the bounds of the batch of `size` keys after `after`; `None` where
    /// the pool has no connection to spare (all open, none idle): the batch reads its own.
    fn start<DB: Backend>(
        pool: &sqlx::Pool<DB>,
        shape: &Arc<KeyShape>,
        after: Key,
        size: u32,
    ) -> Option<Self> {
        if pool.num_idle() == 0 && pool.size() >= pool.options().get_max_connections() {
            return None;
        }
        let (pool, shape, from) = (pool.clone(), Arc::clone(shape), after.clone());
        let claimed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&claimed);
        let task = tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            if flag.swap(true, Ordering::AcqRel) {
                // Dropped while it waited for its connection: the connection goes back to
                // the pool, for the next read.
                return Ok(None);
            }
            DB::next_batch(&mut conn, &shape, Some(&from), None, size).await
        });
        Some(ReadAhead {
            after,
            size,
            task,
            claimed,
            read: None,
            ended: false,
        })
    }

    /// The read's bounds: waited for, at most `wait`, if the read is on the server; `None`
    /// if it failed, is still waiting for a connection, or did not end in time (it then
    /// goes on alone, and is not asked again).
    async fn settle(&mut self, wait: Duration) -> Option<&Option<(Key, u64)>> {
        if !self.ended && (self.task.is_finished() || self.claimed.load(Ordering::Acquire)) {
            self.ended = true;
            if let Ok(Ok(Ok(next))) = tokio::time::timeout(wait, &mut self.task).await {
                self.read = Some(next);
            }
        }
        self.read.as_ref()
    }

    /// Whether the read, for the batch after `after`, has ended and found keys there. Not
    /// waited for: the batch asking holds its locks on the table, and a read queued behind
    /// another session's lock request that waits for them would wait for this batch.
    async fn found_after(&mut self, after: &Key) -> bool {
        if !self.task.is_finished() {
            return false;
        }
        *after == self.after && matches!(self.settle(Duration::ZERO).await, Some(Some(_)))
    }

    /// The bounds read ahead, when they are for the batch of `size` keys after `after` and
    /// the read found a batch, waited for at most `wait` (the batch's lock timeout: no
    /// longer than the batch's own read would be let wait for a lock). The batch taking
    /// them has touched nothing of the table yet.
    async fn take(mut self, after: Option<&Key>, size: u32, wait: Duration) -> Option<(Key, u64)> {
        if after != Some(&self.after) || size != self.size {
            return None;
        }
        self.settle(wait).await?;
        self.read.take().flatten()
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // A read not taken is not waited for. One still waiting for its connection gets it
        // (a connection being opened is not thrown away: the next read takes it from the
        // pool) and returns at once; one on the server ends there, its bounds unused.
        self.claimed.store(true, Ordering::Release);
    }
}
