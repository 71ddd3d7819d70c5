//! A batched migration: one transaction per batch, each committing with its checkpoint.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;

use super::apply::{BodyFailure, Failure, run_caught, writes_after, writes_before};
use super::plan::Step;
use super::report::{AppliedMigration, Progress};
use super::{Migrator, StopSignal};
use crate::backend::{Backend, pinned};
use crate::ctx::Ctx;
use crate::error::{Error, describe_sqlx};
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
        };
        state.first_started_at_from(&step, migration)?;
        pinned::<DB, _>(conn, async |c| {
            check_batch_key::<DB>(c, migration.id(), spec, state.after.is_none()).await
        })
        .await
        .map_err(Failure::Other)?;
        let first_started_at = step
            .resume
            .as_ref()
            .map_or(state.started_at, |e| e.started_at);
        let estimated_total =
            pinned::<DB, _>(
                conn,
                async |c| Ok(DB::estimate_rows(c, spec.table()).await?),
            )
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

        loop {
            if self
                .interrupt_after_batches
                .is_some_and(|limit| state.run_batches >= limit)
            {
                return Err(Failure::Interrupted {
                    batches: state.batches,
                });
            }
            let mut retries = 0;
            let outcome = loop {
                match self
                    .batch(
                        conn,
                        migration,
                        run,
                        spec,
                        &state,
                        step.action,
                        first_started_at,
                        timeouts,
                    )
                    .await
                {
                    Err(BatchError::LockTimeout(_)) if retries < spec.retries() => {
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
                Err(BatchError::Commit(err)) => {
                    // Committed if the ledger row moved past this runner's checkpoint.
                    let from = state.after.map(|k| k.to_string());
                    let batches = state.batches;
                    return Err(self
                        .commit_outcome(migration.id(), &err, move |row| {
                            row.batches > i64::try_from(batches).unwrap_or(i64::MAX)
                                || (row.checkpoint != from && !row.is_running())
                        })
                        .await);
                }
                Err(err) => {
                    let (message, panicked) = match err {
                        BatchError::LockTimeout(message) => (message, false),
                        BatchError::Failed { message, panicked } => (message, panicked),
                        BatchError::Commit(_) | BatchError::Fenced(_) => {
                            unreachable!("matched above")
                        }
                    };
                    return Err(self
                        .batch_failure(conn, migration, step.action, &state, message, panicked)
                        .await);
                }
            };
            let finished = match done {
                BatchDone::NothingLeft => true,
                BatchDone::Committed {
                    last,
                    keys,
                    rows,
                    written,
                    notes,
                    finished,
                } => {
                    if let Some(written) = written {
                        *state.run_written.get_or_insert(0) += written;
                    }
                    state.after = Some(last);
                    state.batches += 1;
                    state.run_batches += 1;
                    state.run_keys += keys;
                    state.run_rows += rows;
                    state.total_rows += rows;
                    // Bounded: a migration of many batches must not grow without limit.
                    let room = MAX_NOTES.saturating_sub(state.notes.len());
                    state.notes.extend(notes.into_iter().take(room));
                    state.write = LedgerWrite::Continue {
                        expected: Some(last.to_string()),
                    };
                    if let Some(report) = &self.progress {
                        let elapsed = clock.elapsed().as_secs_f64().max(1e-9);
                        report(&Progress {
                            id: migration.id().to_string(),
                            batches: state.batches,
                            keys_done: state.run_keys,
                            rows_affected: state.run_rows,
                            estimated_total,
                            keys_per_second: state.run_keys as f64 / elapsed,
                            checkpoint: last,
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
                });
            }
            if self.stop.as_ref().is_some_and(StopSignal::is_stopped) {
                return Err(Failure::Stopped {
                    batches: state.batches,
                    checkpoint: state.after,
                });
            }
            if let Some(pause) = spec.pause() {
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// One batch in its own transaction.
    #[allow(clippy::too_many_arguments)]
    async fn batch(
        &self,
        conn: &mut PoolConnection<DB>,
        migration: &'static Migration,
        run: BatchFn<DB>,
        spec: &BatchSpec,
        state: &BatchState,
        action: Action,
        first_started_at: DateTime<Utc>,
        (lock_timeout, statement_timeout): (Option<Duration>, Option<Duration>),
    ) -> Result<BatchDone, BatchError> {
        let classify = |err| BatchError::database::<DB>(err, state.batches + 1);
        let mut tx = self.begin(conn, lock_timeout).await.map_err(classify)?;
        DB::set_local_timeouts(&mut tx, lock_timeout, statement_timeout, self.idle_limit())
            .await
            .map_err(classify)?;
        let next = DB::next_batch(&mut tx, spec.table(), spec.key(), state.after, spec.size())
            .await
            .map_err(classify)?;
        let mut attempt = self.attempt(migration, action, state.started_at);
        attempt.first_started_at = first_started_at;
        attempt.write = state.write.clone();
        attempt.batches = state.batches;
        attempt.checkpoint = state.after.map(|k| k.to_string());
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
        if let Some(after) = state.after
            && last <= after
        {
            // Keyset pagination must move forward: a batch that does not would repeat
            // forever, or end the migration with keys never reached.
            let _ = tx.rollback().await;
            return Err(BatchError::Failed {
                message: format!(
                    "batch {number}: its last key {last} is not after the checkpoint {after}; \
                     the key column {}.{} does not order the rows as batching needs",
                    spec.table(),
                    spec.key()
                ),
                panicked: false,
            });
        }
        let before = writes_before::<DB>(&mut tx, action)
            .await
            .map_err(classify)?;
        let mut ctx = Ctx::new(&mut *tx, migration.id(), self.dry_run);
        let mut outcome =
            run_caught::<DB>(run(&mut ctx, Batch::new(state.after, last, number, keys))).await;
        let written = writes_after(&mut ctx, before, &mut outcome).await;
        let rows = ctx.rows_affected();
        let notes = ctx.notes().to_vec();
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
            });
        }
        let finished = !DB::has_keys_after(&mut tx, spec.table(), spec.key(), last)
            .await
            .map_err(classify)?;
        attempt.status = if finished {
            STATUS_APPLIED
        } else {
            STATUS_RUNNING
        };
        attempt.checkpoint = Some(last.to_string());
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
        })
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
        if let Err(err) = self.fence(&mut tx, attempt.id).await {
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

    /// Records a batch failure in the run history and turns it into a [`Failure`].
    async fn batch_failure(
        &self,
        conn: &mut PoolConnection<DB>,
        migration: &'static Migration,
        action: Action,
        state: &BatchState,
        message: String,
        panicked: bool,
    ) -> Failure {
        if self.dry_run {
            return Failure::Migration { message, panicked };
        }
        let mut attempt = self.attempt(migration, action, state.started_at);
        attempt.rows_affected = state.run_rows;
        attempt.checkpoint = state.after.map(|k| k.to_string());
        attempt.batches = state.batches;
        match self.record_failure(conn, &attempt, &message).await {
            Ok(()) => Failure::Migration { message, panicked },
            Err(err) => Failure::Other(err),
        }
    }
}

/// A batch's `lock_timeout` when neither the migration nor the migrator sets one: a batch
/// must never queue behind the application's locks for long.
const DEFAULT_BATCH_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// The most notes a batched migration keeps (the first ones).
const MAX_NOTES: usize = 100;

/// Where a batched migration stands, in this run.
struct BatchState {
    started_at: DateTime<Utc>,
    after: Option<i64>,
    batches: u64,
    total_rows: u64,
    write: LedgerWrite,
    run_batches: u64,
    run_keys: u64,
    run_rows: u64,
    notes: Vec<String>,
    lock_retries: u64,
    run_written: Option<u64>,
}

impl BatchState {
    /// Takes the checkpoint and counts of a resumed migration from its ledger row.
    fn first_started_at_from(&mut self, step: &Step, migration: &Migration) -> Result<(), Failure> {
        let Some(entry) = &step.resume else {
            return Ok(());
        };
        self.after = match &entry.checkpoint {
            None => None,
            Some(text) => Some(text.parse().map_err(|_| {
                Failure::Other(Error::Config(format!(
                    "the ledger's checkpoint of {} is {text:?}, not a bigint key",
                    migration.id()
                )))
            })?),
        };
        self.batches = u64::try_from(entry.batches).unwrap_or(0);
        self.total_rows = u64::try_from(entry.rows_affected).unwrap_or(0);
        self.write = LedgerWrite::Continue {
            expected: entry.checkpoint.clone(),
        };
        Ok(())
    }
}

/// What one batch did.
enum BatchDone {
    /// No key was left: the migration is applied.
    NothingLeft,
    /// A batch committed (or, in a dry run, ran and rolled back).
    Committed {
        last: i64,
        keys: u64,
        rows: u64,
        /// Rows written as the database counted them, when measured (re-runs).
        written: Option<u64>,
        notes: Vec<String>,
        finished: bool,
    },
}

/// Why one batch did not commit.
enum BatchError {
    /// It waited for a lock longer than its `lock_timeout`: worth retrying.
    LockTimeout(String),
    /// The body failed or panicked, a database error ended the batch, or the checkpoint moved.
    Failed { message: String, panicked: bool },
    /// Its `COMMIT` returned an error: whether it committed is unknown.
    Commit(sqlx::Error),
    /// The runner's lease ran out before the batch could commit (fencing): rolled back.
    Fenced(Error),
}

impl BatchError {
    /// A database error inside batch `number`'s transaction (a lost connection, a
    /// constraint, at any step up to the commit) fails the migration like an error of its
    /// body: recorded and reported by id. A lock timeout is worth a retry.
    fn database<DB: Backend>(err: sqlx::Error, number: u64) -> Self {
        if DB::is_lock_timeout(&err) {
            BatchError::LockTimeout(describe_sqlx(&err))
        } else {
            BatchError::Failed {
                message: format!("batch {number}: {}", describe_sqlx(&err)),
                panicked: false,
            }
        }
    }

    /// A failure of the body of batch `number`.
    fn body(failure: BodyFailure, number: u64) -> Self {
        if failure.lock_timeout {
            BatchError::LockTimeout(failure.message)
        } else {
            BatchError::Failed {
                message: format!("batch {number}: {}", failure.message),
                panicked: failure.panicked,
            }
        }
    }
}

/// Checks a batched migration's key before its first batch: the table and the column exist,
/// the column's type is one batching supports, and every row is reachable (no `NULL`, no
/// value of another type). On a fresh start, the smallest key must be reachable by the
/// first batch's lower bound too.
pub(crate) async fn check_batch_key<DB: Backend>(
    conn: &mut DB::Connection,
    id: &str,
    spec: &BatchSpec,
    fresh_start: bool,
) -> Result<(), Error> {
    let (table, key) = (spec.table(), spec.key());
    let refuse = |why: String| {
        Err(Error::Config(format!(
            "batched migration {id}: {why}; nothing ran"
        )))
    };
    let column = match DB::key_column(conn, table, key).await? {
        None => return refuse(format!("its table {table} does not exist")),
        Some(None) => {
            return refuse(format!(
                "table {table} has no column {key:?}, the batch key it names; check the spelling"
            ));
        }
        Some(Some(column)) => column,
    };
    if !column.supported {
        return refuse(format!(
            "its key {table}.{key} is of type {}, and batching walks integer keys \
             (smallint, integer, bigint)",
            column.data_type
        ));
    }
    if column.nulls > 0 {
        return refuse(format!(
            "{} row(s) of {table} have a NULL {key}, which batches cannot reach; give them keys \
             (or make the column NOT NULL) first",
            column.nulls
        ));
    }
    if column.not_integers > 0 {
        return refuse(format!(
            "{} row(s) of {table} hold a {key} that is not an integer, which batches cannot \
             reach; convert them first",
            column.not_integers
        ));
    }
    if fresh_start {
        let sql = format!(
            "SELECT CAST(min({}) AS bigint) FROM {}",
            crate::sql::quote_ident(key),
            crate::sql::quote_ident(table)
        );
        let smallest = DB::fetch_i64(
            conn,
            sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(sql)),
        )
        .await?;
        if smallest == Some(i64::MIN) {
            return refuse(format!(
                "{table} holds the key {} (the smallest bigint), which no batch can include: a \
                 batch's statement selects `{key} > $1`, and $1 cannot be below it; renumber \
                 that row first",
                i64::MIN
            ));
        }
    }
    Ok(())
}
