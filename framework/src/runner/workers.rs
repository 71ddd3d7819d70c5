//! Several workers on one batched migration (PostgreSQL, MySQL).
//!
//! The key space is split into ranges recorded in the database (`<ledger>_ranges`), in the
//! transaction that records the migration as running. Each worker, on a connection of its
//! own, claims a range no live worker holds (a session lock per range on a direct
//! connection: an advisory lock, MySQL's `GET_LOCK`, so a worker that dies gives its range back with its session; a lease in the
//! range's row through a transaction pooler), then works it batch by batch: every batch
//! locks the range's row, reads the checkpoint there, runs, and commits the new checkpoint
//! with its changes. A batch therefore never depends on what a worker remembers, and two
//! workers can never commit the same keys. The batch that finishes the last range applies
//! the migration (`finish_ranges`). Workers of another `run` (another host) join through
//! the same tables: see `join.rs`.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument;

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;

use super::apply::Failure;
use super::pace::{Observed, Pacer};
use super::plan::Step;
use super::report::AppliedMigration;
use super::walk::{
    BatchError, BodyRun, MAX_NOTES, Position, Retry, Sizer, Timeouts, Walked, batch_ended,
    batch_span, open_batch, run_body,
};
use super::{Migrator, RunnerLock, StopSignal};
use crate::backend::{Backend, LoadSample, LockToken, pinned};
use crate::error::Error;
use crate::key::{Key, KeyShape};
use crate::ledger::{Action, Claim, LedgerWrite, RangeMark, RangeStep, STATUS_RUNNING};
use crate::migration::{Batch, BatchFn, BatchSpec, Migration};
use crate::session::host_name;

/// Ranges per worker: more ranges than workers, so that a worker that finishes early (or
/// joins late) finds work, and the last range left is short.
const RANGES_PER_WORKER: usize = 4;

/// How often a worker that found every remaining range held by others looks again.
const CLAIM_POLL: Duration = Duration::from_millis(200);

/// One batched migration as its workers walk it.
pub(super) struct Job<'a, DB: Backend> {
    pub(super) migration: &'static Migration,
    pub(super) run: BatchFn<DB>,
    pub(super) spec: &'a BatchSpec,
    pub(super) shape: Arc<KeyShape>,
    pub(super) action: Action,
    pub(super) started_at: DateTime<Utc>,
}

/// What the workers of this process share while they walk one migration.
pub(super) struct Team {
    workers: u32,
    /// Raised when one worker fails, is paused or interrupted: the others stop after the
    /// batch in progress.
    halt: AtomicBool,
    /// Workers of this team working a range now.
    busy: AtomicU32,
    batches: AtomicU64,
    keys: AtomicU64,
    rows: AtomicU64,
    lock_retries: AtomicU64,
    written: Mutex<Option<u64>>,
    notes: Mutex<Vec<String>>,
    estimated_total: Option<u64>,
    clock: Instant,
    /// The server sessions of this team's workers and its runner, left out of the pacing's
    /// signals.
    sessions: Mutex<Vec<i32>>,
    /// Time the workers spent pausing for other sessions (pacing), in milliseconds.
    paced_ms: AtomicU64,
}

impl Team {
    fn halted(&self) -> bool {
        self.halt.load(Ordering::SeqCst)
    }
}

/// Why a worker left a range.
enum RangeEnd {
    /// It has no key left.
    Done,
    /// The worker no longer holds it (its lease expired and another worker took it), or it
    /// was finished meanwhile: claim another.
    Lost,
    /// The team halted.
    Halted,
}

/// What one batch of a range did.
enum RangeBatch {
    /// The worker does not hold the range (any more).
    Lost,
    /// The range had no key left; it is now done.
    Empty,
    /// A batch committed.
    Committed {
        last: Key,
        keys: u64,
        rows: u64,
        written: Option<u64>,
        notes: Vec<String>,
        range_done: bool,
        /// What the database showed about the other sessions while it ran (pacing only).
        sample: Option<LoadSample>,
    },
}

impl<DB: Backend> Migrator<DB> {
    /// How many workers walk `spec`'s migration in this run: the migrator's, else the
    /// migration's own.
    pub(super) fn workers_for(&self, spec: &BatchSpec) -> u32 {
        self.workers.unwrap_or(spec.workers()).max(1)
    }

    /// Runs a batched migration with `workers` workers (under the runner lock): splits the
    /// keys still to do into ranges, unless a previous run left them, records them with
    /// the migration as running in one transaction, then works them until none is left.
    pub(super) async fn apply_with_workers(
        &self,
        conn: &mut PoolConnection<DB>,
        job: Job<'_, DB>,
        step: Step,
        notes: Vec<String>,
        workers: u32,
    ) -> Result<AppliedMigration, Failure> {
        let (migration, shape, started_at) =
            (job.migration, Arc::clone(&job.shape), job.started_at);
        let id = migration.id();
        pinned::<DB, _>(conn, async |c| DB::ensure_ranges(c, &self.ledger).await)
            .await
            .map_err(Failure::Other)?;
        let existing = pinned::<DB, _>(conn, async |c| {
            Ok(DB::read_ranges(c, &self.ledger, Some(id)).await?)
        })
        .await
        .map_err(Failure::Other)?;
        if step.resume.is_none() || existing.is_empty() || step.restart {
            // A fresh start, a re-run, a restart after a cancel (from the first key, the
            // ranges left replaced), or a resume from one worker's checkpoint: split what is
            // left after the checkpoint.
            let checkpoint = if step.restart {
                None
            } else {
                step.resume.as_ref().and_then(|e| e.checkpoint.as_deref())
            };
            let after = match checkpoint {
                None => None,
                Some(text) => Some(shape.decode(text).map_err(|why| {
                    Failure::Other(Error::Config(format!(
                        "the ledger's checkpoint of {id} is {text:?}, which this migration cannot \
                         resume from: {why}"
                    )))
                })?),
            };
            let pieces = workers as usize * RANGES_PER_WORKER;
            let points = pinned::<DB, _>(conn, async |c| {
                DB::split_keys(c, &shape, after.as_ref(), pieces).await
            })
            .await
            .map_err(Failure::Other)?;
            let mut bounds = Vec::with_capacity(points.len() + 1);
            let mut lower = after.as_ref().map(|k| shape.encode(k));
            for point in &points {
                let upper = shape.encode(point);
                bounds.push((lower.replace(upper.clone()), Some(upper)));
            }
            bounds.push((lower, None));
            let mut attempt = self.attempt(migration, step.action, started_at);
            attempt.status = STATUS_RUNNING;
            attempt.write = match &step.resume {
                Some(entry) => LedgerWrite::Continue {
                    expected: entry.checkpoint.clone(),
                },
                None => step.ledger_write(),
            };
            attempt.checkpoint = after.as_ref().map(|k| shape.encode(k));
            if let Some(entry) = &step.resume {
                attempt.first_started_at = entry.started_at;
                if !step.restart {
                    attempt.batches = u64::try_from(entry.batches).unwrap_or(0);
                    attempt.total_rows = u64::try_from(entry.rows_affected).unwrap_or(0);
                }
            }
            attempt.notes = notes.clone();
            let mut tx = self
                .begin(conn, None)
                .await
                .map_err(|e| Failure::Other(e.into()))?;
            if let Err(err) = self.fence(&mut tx, id).await {
                let _ = tx.rollback().await;
                return Err(Failure::Other(err));
            }
            if !DB::write_ledger(&mut tx, &self.ledger, &attempt)
                .await
                .map_err(Failure::db)?
            {
                let _ = tx.rollback().await;
                return Err(Failure::Migration {
                    message: "its ledger row changed before its ranges were recorded (another \
                              runner moved it); nothing ran"
                        .to_string(),
                    panicked: false,
                    source: None,
                });
            }
            DB::replace_ranges(&mut tx, &self.ledger, id, &bounds)
                .await
                .map_err(Failure::Other)?;
            tx.commit().await.map_err(Failure::db)?;
        }
        let team = self.work_ranges(conn, &job, workers, notes).await?;
        let applied = pinned::<DB, _>(conn, async |c| Ok(DB::read_ledger(c, &self.ledger).await?))
            .await
            .map_err(Failure::Other)?
            .into_iter()
            .any(|row| row.id == id && !row.is_running());
        if !applied {
            return Err(Failure::Other(Error::Runtime(format!(
                "the workers of {id} found no range left, yet its ledger row is not applied; \
                 run `datamig status` and report this"
            ))));
        }
        Ok(team_report(&team, id, step.action))
    }

    /// Works the ranges of `job` with `workers` workers, each on a connection of its own,
    /// until no range has keys left (another process's workers may be working some).
    /// `conn` is the runner's, idle while the workers work.
    pub(super) async fn work_ranges(
        &self,
        conn: &mut DB::Connection,
        job: &Job<'_, DB>,
        workers: u32,
        notes: Vec<String>,
    ) -> Result<Team, Failure> {
        let estimated_total = self.estimate_left(conn, job).await;
        // The runner's session is not an application's: the pacing leaves it out, with
        // the workers' own.
        let own = if job.spec.paces() {
            DB::session_id(conn).await.ok().flatten()
        } else {
            None
        };
        let team = Team {
            workers,
            halt: AtomicBool::new(false),
            busy: AtomicU32::new(0),
            batches: AtomicU64::new(0),
            keys: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            lock_retries: AtomicU64::new(0),
            written: Mutex::new(None),
            notes: Mutex::new(notes),
            estimated_total,
            clock: Instant::now(),
            sessions: Mutex::new(own.into_iter().collect()),
            paced_ms: AtomicU64::new(0),
        };
        // Every worker's connection first, so that the workers start together (and a
        // server that cannot take that many connections fails the run before any batch).
        let connections = futures_util::future::join_all(
            (0..workers)
                .map(|_| async { Ok::<_, sqlx::Error>(self.pool.acquire().await?.detach()) }),
        )
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::db)?;
        let results = futures_util::future::join_all(
            connections
                .into_iter()
                .zip(1..)
                .map(|(conn, n)| self.worker(conn, job, &team, n)),
        )
        .await;
        // The most telling failure: a migration's own, then the runner's, then a stop.
        let rank = |f: &Failure| match f {
            Failure::Migration { .. } => 0,
            Failure::Other(_) => 1,
            Failure::Interrupted { .. } => 2,
            Failure::Paused(_) | Failure::Cancelled(_) => 3,
            Failure::Stopped { .. } => 4,
        };
        if let Some(failure) = results
            .into_iter()
            .filter_map(Result::err)
            .min_by_key(|f| rank(f))
        {
            return Err(failure);
        }
        Ok(team)
    }

    /// The planner's estimate of the keys left in the ranges, for progress, read on the
    /// runner's connection (one of the pool's would look, for a second, like an
    /// application's session to the pacing).
    async fn estimate_left(&self, conn: &mut DB::Connection, job: &Job<'_, DB>) -> Option<u64> {
        pinned::<DB, _>(conn, async |c| {
            let mut total = 0;
            for range in DB::read_ranges(c, &self.ledger, Some(job.migration.id())).await? {
                if range.done {
                    continue;
                }
                let decode = |text: Option<&str>| text.and_then(|t| job.shape.decode(t).ok());
                let after = decode(range.checkpoint.as_deref().or(range.lower.as_deref()));
                let upper = decode(range.upper.as_deref());
                total += DB::estimate_rows(c, &job.shape, after.as_ref(), upper.as_ref())
                    .await?
                    .unwrap_or(0);
            }
            Ok(total)
        })
        .await
        .ok()
    }

    /// One worker: claims ranges and works them until none is left.
    /// `conn` is the worker's own, never returned to the pool: its session holds the
    /// worker's advisory locks, and closing it releases them whatever happens.
    async fn worker(
        &self,
        mut conn: DB::Connection,
        job: &Job<'_, DB>,
        team: &Team,
        number: u32,
    ) -> Result<(), Failure> {
        let id = job.migration.id();
        if matches!(self.runner_lock, RunnerLock::Advisory) {
            // Named like its runner, so `pg_stat_activity` shows whose it is. (Not through
            // a pooler, where the setting would outlive this client's transaction.)
            DB::tag_session(&mut conn, &crate::session::runner_tag())
                .await
                .map_err(Failure::db)?;
        }
        let token = LockToken::new();
        let claim = Claim {
            token: token.as_str().to_string(),
            worker: format!("{}/{}/{number}", host_name(), std::process::id()),
            lease: match self.runner_lock {
                RunnerLock::Advisory => None,
                RunnerLock::Lease { ttl } => Some(ttl),
            },
            code: (
                job.migration.checksum().to_string(),
                job.migration.revision(),
            ),
        };
        let mut sizer = Sizer::new(job.spec);
        let mut pacer = job
            .spec
            .paces()
            .then(|| Pacer::new(job.spec.min_size(), job.spec.max_size()));
        if pacer.is_some()
            && let Ok(Some(session)) = DB::session_id(&mut conn).await
            && let Ok(mut sessions) = team.sessions.lock()
        {
            sessions.push(session);
        }
        // Since when this worker has found no range to claim, and how the ranges left
        // stood then.
        let mut waiting: Option<(Instant, Vec<RangeMark>)> = None;
        loop {
            if team.halted() {
                return Ok(());
            }
            if self.stop.as_ref().is_some_and(StopSignal::is_stopped) {
                return Err(Failure::Stopped {
                    batches: team.batches.load(Ordering::SeqCst),
                    checkpoint: None,
                });
            }
            let claimed = pinned::<DB, _>(&mut conn, async |c| {
                DB::claim_range(c, &self.ledger, id, &claim).await
            })
            .await
            .map_err(Failure::Other)?;
            let Some(range) = claimed else {
                let marks = pinned::<DB, _>(&mut conn, async |c| {
                    Ok(DB::range_marks(c, &self.ledger, id).await?)
                })
                .await
                .map_err(Failure::Other)?;
                if marks.is_empty() {
                    return Ok(());
                }
                // Other workers hold what is left: wait for them to finish (or die),
                // stopping for a pause as they do.
                let paused = pinned::<DB, _>(&mut conn, async |c| {
                    Ok(DB::pause_state(c, &self.ledger, Some(id)).await?)
                })
                .await
                .map_err(Failure::Other)?;
                if let Some(pause) = paused.into_iter().next() {
                    return Err(Failure::Paused(pause));
                }
                // The wait has a deadline: ranges held by a process that is stopped (or
                // cut off with its session alive) never move. It counts only while no
                // worker of this team works a range (a teammate's long batch is no stall)
                // and starts again whenever a range left moves.
                let teammates_busy = team.busy.load(Ordering::SeqCst) > 0;
                match &waiting {
                    Some((since, seen)) if *seen == marks && !teammates_busy => {
                        if since.elapsed() >= self.runner_lock_timeout {
                            team.halt.store(true, Ordering::SeqCst);
                            let left = pinned::<DB, _>(&mut conn, async |c| {
                                Ok(DB::read_ranges(c, &self.ledger, Some(id)).await?)
                            })
                            .await
                            .map_err(Failure::Other)?;
                            return Err(Failure::Other(Error::RangesHeld {
                                id: id.to_string(),
                                ranges: left
                                    .iter()
                                    .filter(|r| !r.done)
                                    .map(describe_held)
                                    .collect(),
                                waited: since.elapsed(),
                            }));
                        }
                    }
                    _ => waiting = Some((Instant::now(), marks)),
                }
                tokio::time::sleep(CLAIM_POLL.min(self.runner_lock_timeout)).await;
                continue;
            };
            waiting = None;
            team.busy.fetch_add(1, Ordering::SeqCst);
            let outcome = self
                .work_range(
                    &mut conn,
                    job,
                    team,
                    &claim,
                    range,
                    (&mut sizer, &mut pacer),
                )
                .await;
            team.busy.fetch_sub(1, Ordering::SeqCst);
            let released = pinned::<DB, _>(&mut conn, async |c| {
                DB::release_range(c, &self.ledger, id, range, &claim).await
            })
            .await;
            match outcome {
                Ok(RangeEnd::Done | RangeEnd::Lost) => released.map_err(Failure::Other)?,
                Ok(RangeEnd::Halted) => return Ok(()),
                Err(failure) => {
                    team.halt.store(true, Ordering::SeqCst);
                    return Err(failure);
                }
            }
        }
    }

    /// Works range `range` batch by batch until it has no key left.
    async fn work_range(
        &self,
        conn: &mut DB::Connection,
        job: &Job<'_, DB>,
        team: &Team,
        claim: &Claim,
        range: i32,
        (sizer, pacer): (&mut Sizer, &mut Option<Pacer>),
    ) -> Result<RangeEnd, Failure> {
        let migration = job.migration;
        let timeouts = self.batch_timeouts(migration);
        let mut position = Position::default();
        let mut next_size = pacer.as_ref().map_or(sizer.size(), Pacer::first_size);
        loop {
            if team.halted() {
                return Ok(RangeEnd::Halted);
            }
            position.batches = team.batches.load(Ordering::SeqCst);
            position.keys = team.keys.load(Ordering::SeqCst);
            self.wait_until_healthy(conn, migration, &position).await?;
            let mut size = pacer.as_ref().map_or(sizer.size(), |_| next_size);
            let began = Instant::now();
            let mut retry = Retry::new(job.spec.retries(), job.spec.min_size());
            let outcome = loop {
                let result = self
                    .range_batch(
                        conn,
                        job,
                        team,
                        claim,
                        range,
                        (size, pacer.is_some()),
                        timeouts,
                    )
                    .await;
                let halvings = retry.halvings;
                if !retry.again(&result, &mut size).await {
                    break result.map_err(|err| {
                        err.smallest_failed(size, job.spec.min_size().max(1), timeouts.statement)
                    });
                }
                if retry.halvings == halvings {
                    team.lock_retries.fetch_add(1, Ordering::SeqCst);
                } else {
                    next_size = next_size.min(size);
                    if let Some(fixed) = sizer.fixed_mut() {
                        *fixed = size;
                    }
                }
            };
            let (last, keys, range_done, mut load) = match outcome {
                Ok(RangeBatch::Lost) => return Ok(RangeEnd::Lost),
                Ok(RangeBatch::Empty) => return Ok(RangeEnd::Done),
                Ok(RangeBatch::Committed {
                    last,
                    keys,
                    rows,
                    written,
                    notes,
                    range_done,
                    sample,
                }) => {
                    team.keys.fetch_add(keys, Ordering::SeqCst);
                    team.rows.fetch_add(rows, Ordering::SeqCst);
                    team.batches.fetch_add(1, Ordering::SeqCst);
                    if let Some(written) = written
                        && let Ok(mut total) = team.written.lock()
                    {
                        *total.get_or_insert(0) += written;
                    }
                    if let Ok(mut kept) = team.notes.lock() {
                        let room = MAX_NOTES.saturating_sub(kept.len());
                        kept.extend(notes.into_iter().take(room));
                    }
                    (last, keys, range_done, sample)
                }
                Err(BatchError::Paused(pause)) => return Err(Failure::Paused(pause)),
                Err(BatchError::Cancelled(cancel)) => {
                    team.halt.store(true, Ordering::SeqCst);
                    let counts = (
                        team.batches.load(Ordering::SeqCst),
                        team.rows.load(Ordering::SeqCst),
                        None,
                    );
                    return Err(self
                        .cancelled(conn, job.migration, job.action, cancel, counts)
                        .await);
                }
                Err(BatchError::Commit(err)) => {
                    return Err(Failure::Other(Error::CommitOutcome {
                        id: migration.id().to_string(),
                        batch: None,
                        error: crate::error::describe_sqlx(&err),
                        applied: None,
                    }));
                }
                Err(BatchError::Fenced(err) | BatchError::ReadBack(err)) => {
                    return Err(Failure::Other(err));
                }
                Err(
                    BatchError::LockTimeout(message, source)
                    | BatchError::StatementTimeout {
                        message, source, ..
                    },
                ) => {
                    return Err(self
                        .range_failure(conn, job, team, range, (message, false, source))
                        .await);
                }
                Err(BatchError::Failed {
                    message,
                    panicked,
                    source,
                }) => {
                    return Err(self
                        .range_failure(conn, job, team, range, (message, panicked, source))
                        .await);
                }
            };
            let took = began.elapsed();
            sizer.record(keys, took);
            let decision = pacer.as_mut().map(|pacer| {
                pacer.next(&Observed {
                    keys,
                    took,
                    sample: load.take(),
                    own_commits: i64::from(team.workers),
                })
            });
            next_size = decision.as_ref().map_or(sizer.size(), |d| d.size);
            position.checkpoint = Some(last.to_string());
            self.report_batch(Walked {
                id: migration.id(),
                batches: team.batches.load(Ordering::SeqCst),
                keys_done: team.keys.load(Ordering::SeqCst),
                rows_affected: team.rows.load(Ordering::SeqCst),
                estimated_total: team.estimated_total,
                elapsed: team.clock.elapsed(),
                checkpoint: position.checkpoint.clone(),
                batch_keys: keys,
                batch_size: size,
                took,
                spec: job.spec,
                next_size,
                workers: team.workers,
                pace: decision.as_ref(),
            });
            if range_done {
                return Ok(RangeEnd::Done);
            }
            let batches = team.batches.load(Ordering::SeqCst);
            if self
                .interrupt_after_batches
                .is_some_and(|limit| batches >= limit)
            {
                team.halt.store(true, Ordering::SeqCst);
                return Err(Failure::Interrupted { batches });
            }
            if self.stop.as_ref().is_some_and(StopSignal::is_stopped) {
                return Err(Failure::Stopped {
                    batches,
                    checkpoint: position.checkpoint.clone(),
                });
            }
            if let Some(pause) = job.spec.pause() {
                tokio::time::sleep(pause).await;
            }
            if let Some(decision) = decision.filter(|d| !d.pause.is_zero()) {
                if decision.paced {
                    team.paced_ms.fetch_add(
                        u64::try_from(decision.pause.as_millis()).unwrap_or(u64::MAX),
                        Ordering::SeqCst,
                    );
                }
                tokio::time::sleep(decision.pause).await;
            }
        }
    }

    /// A batch of range `range` failed: recorded in the run history.
    async fn range_failure(
        &self,
        conn: &mut DB::Connection,
        job: &Job<'_, DB>,
        team: &Team,
        range: i32,
        (message, panicked, source): (String, bool, Option<crate::error::BoxError>),
    ) -> Failure {
        let message = format!("range {range}: {message}");
        let mut attempt = self.attempt(job.migration, job.action, job.started_at);
        attempt.rows_affected = team.rows.load(Ordering::SeqCst);
        attempt.batches = team.batches.load(Ordering::SeqCst);
        match self.record_failure(conn, &attempt, &message).await {
            Ok(()) => Failure::Migration {
                message,
                panicked,
                source,
            },
            Err(err) => Failure::Other(err),
        }
    }

    /// One batch of range `range`, in its own transaction: the range's row locked and its
    /// checkpoint read there, the body, the new checkpoint, and, when the range is done
    /// and no other is left, the migration applied.
    #[allow(clippy::too_many_arguments)]
    async fn range_batch(
        &self,
        conn: &mut DB::Connection,
        job: &Job<'_, DB>,
        team: &Team,
        claim: &Claim,
        range: i32,
        (size, sample): (u32, bool),
        timeouts: Timeouts,
    ) -> Result<RangeBatch, BatchError> {
        let span = batch_span(
            job.migration.id(),
            team.batches.load(Ordering::SeqCst) + 1,
            size,
            Some((&claim.worker, range)),
        );
        let began = Instant::now();
        let result = async {
            let migration = job.migration;
            let id = migration.id();
            let classify = |err| BatchError::database::<DB>(err, 0);
            let mut tx = open_batch!(self, conn, id, 0, timeouts, classify);
            let Some((after, upper, batches)) =
                DB::hold_range(&mut tx, &self.ledger, id, range, &claim.token)
                    .await
                    .map_err(classify)?
            else {
                let _ = tx.rollback().await;
                return Ok(RangeBatch::Lost);
            };
            let decode = |text: Option<String>| -> Result<Option<Key>, BatchError> {
                text.map(|t| {
                    job.shape.decode(&t).map_err(|why| BatchError::Failed {
                        message: format!(
                            "its range {range} holds the position {t:?}, which this migration \
                             cannot resume from: {why}"
                        ),
                        panicked: false,
                        source: None,
                    })
                })
                .transpose()
            };
            let (after, upper) = (decode(after)?, decode(upper)?);
            let mut attempt = self.attempt(migration, job.action, job.started_at);
            attempt.rows_affected = team.rows.load(Ordering::SeqCst);
            attempt.notes = team.notes.lock().map(|n| n.clone()).unwrap_or_default();
            let next = DB::next_batch(&mut tx, &job.shape, after.as_ref(), upper.as_ref(), size)
                .await
                .map_err(classify)?;
            let Some((last, keys)) = next else {
                // Nothing left in the range (its last keys were deleted since it was split).
                let step = RangeStep {
                    checkpoint: None,
                    keys: 0,
                    rows: 0,
                    done: true,
                };
                DB::advance_range(&mut tx, &self.ledger, id, range, claim, &step)
                    .await
                    .map_err(classify)?;
                self.finish(&mut tx, &attempt).await?;
                if let Err(err) = tx.commit().await {
                    return Err(self.range_commit_failed(id, range, batches, err).await);
                }
                return Ok(RangeBatch::Empty);
            };
            let number = u64::try_from(batches).unwrap_or(0) + 1;
            let from = after
                .as_ref()
                .map_or_else(|| "the range's first key".to_string(), ToString::to_string);
            let batch = Batch::new(after, last.clone(), number, keys, Arc::clone(&job.shape));
            let BodyRun {
                outcome,
                written,
                rows,
                notes,
                ..
            } = run_body::<DB>(&mut tx, id, job.action, false, None, false, job.run, batch).await?;
            if let Err(failure) = outcome {
                let _ = tx.rollback().await;
                return Err(BatchError::body(failure, number)
                    .with_keys(|| format!("after {from} up to {last}")));
            }
            // While the batch still holds its locks: who else is there, and who waits for it.
            let sample = if sample {
                let own = team.sessions.lock().map(|s| s.clone()).unwrap_or_default();
                DB::load_sample(&mut tx, &own).await.map_err(classify)?
            } else {
                None
            };
            let range_done = !DB::has_keys_after(&mut tx, &job.shape, &last, upper.as_ref())
                .await
                .map_err(classify)?;
            let step = RangeStep {
                checkpoint: Some(job.shape.encode(&last)),
                keys,
                rows,
                done: range_done,
            };
            DB::advance_range(&mut tx, &self.ledger, id, range, claim, &step)
                .await
                .map_err(classify)?;
            if range_done {
                attempt.rows_affected += rows;
                self.finish(&mut tx, &attempt).await?;
            }
            if let Err(err) = tx.commit().await {
                return Err(self.range_commit_failed(id, range, batches, err).await);
            }
            Ok(RangeBatch::Committed {
                last,
                keys,
                rows,
                written,
                notes,
                range_done,
                sample,
            })
        }
        .instrument(span.clone())
        .await;
        let counts = match &result {
            Ok(RangeBatch::Committed { keys, rows, .. }) => Ok(Some((*keys, *rows))),
            Ok(RangeBatch::Lost | RangeBatch::Empty) => Ok(None),
            Err(err) => Err(err),
        };
        batch_ended(&span, counts, began.elapsed());
        result
    }

    /// The `COMMIT` of a batch of range `range` (which had `batches` batches before it)
    /// failed: whether it committed is read again on a connection of its own, as for a
    /// one-shot migration. It did if the range counts more batches, or if the range is gone
    /// and the migration applied (the batch finished the last range).
    async fn range_commit_failed(
        &self,
        id: &str,
        range: i32,
        batches: i64,
        err: sqlx::Error,
    ) -> BatchError {
        let read = async {
            let mut fresh = self.pool.acquire().await?;
            pinned::<DB, _>(&mut fresh, async |c| {
                Ok((
                    DB::read_ranges(c, &self.ledger, Some(id)).await?,
                    DB::read_ledger(c, &self.ledger).await?,
                ))
            })
            .await
        };
        let committed = match read.await {
            Ok((ranges, ledger)) => Some(match ranges.iter().find(|r| r.number == range) {
                Some(row) => row.batches > batches,
                None => {
                    ranges.is_empty() && ledger.iter().any(|row| row.id == id && !row.is_running())
                }
            }),
            Err::<_, Error>(_) => None,
        };
        BatchError::ReadBack(Error::CommitOutcome {
            id: id.to_string(),
            batch: None,
            error: format!(
                "a batch of range {range}: {}",
                crate::error::describe_sqlx(&err)
            ),
            applied: committed,
        })
    }

    /// In the transaction of a batch that finished its range: applies the migration when
    /// no range is left, with its run-history row.
    async fn finish(
        &self,
        tx: &mut DB::Connection,
        attempt: &crate::ledger::Attempt,
    ) -> Result<bool, BatchError> {
        let classify = |err| BatchError::database::<DB>(err, 0);
        let mut attempt = attempt.clone();
        attempt.finished_at = Utc::now();
        let applied = DB::finish_ranges(tx, &self.ledger, &attempt)
            .await
            .map_err(classify)?;
        if applied {
            DB::record_run(tx, &self.ledger, &attempt, None)
                .await
                .map_err(classify)?;
        }
        Ok(applied)
    }
}

/// What this process's workers did in one migration.
pub(super) fn team_report(team: &Team, id: &str, action: Action) -> AppliedMigration {
    AppliedMigration {
        id: id.to_string(),
        rerun: action == Action::Rerun,
        rows_affected: team.rows.load(Ordering::SeqCst),
        duration_ms: u64::try_from(team.clock.elapsed().as_millis()).unwrap_or(u64::MAX),
        notes: team.notes.lock().map(|n| n.clone()).unwrap_or_default(),
        batches: team.batches.load(Ordering::SeqCst),
        lock_retries: team.lock_retries.load(Ordering::SeqCst),
        rows_written: team.written.lock().map(|w| *w).unwrap_or(None),
        workers: team.workers,
        paced_ms: team.paced_ms.load(Ordering::SeqCst),
        estimated_keys: None,
        estimated_ms: None,
    }
}

/// A range left, in words, for [`Error::RangesHeld`].
fn describe_held(range: &crate::ledger::WorkRange) -> String {
    let holder = match (&range.worker, range.held) {
        (Some(worker), true) => format!("held by worker {worker}"),
        (Some(worker), false) => format!("last claimed by worker {worker}, not held now"),
        (None, _) => "never claimed".to_string(),
    };
    let moved = match range.updated_at {
        Some(at) => format!("last batch committed at {at}"),
        None => "no batch committed".to_string(),
    };
    format!(
        "range {} ({holder}; {} batch(es), {moved})",
        range.number, range.batches
    )
}
