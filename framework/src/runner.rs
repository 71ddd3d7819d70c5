//! The runner: the database-independent algorithm of `run` and `status`.
//!
//! One `run`: take the runner lock (polling a try-lock until the timeout), create the ledger
//! if missing, read it, stop on drift, then apply each pending migration in its own
//! transaction together with its ledger row, in id order, and release the lock.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use sqlx::Pool;
use sqlx::pool::PoolConnection;

use crate::backend::{Backend, LockToken};
use crate::ctx::Ctx;
use crate::error::{Drift, Error, describe_chain, describe_sqlx};
use crate::ledger::{
    Action, Attempt, LastRun, LedgerConfig, LedgerEntry, LedgerWrite, STATUS_APPLIED,
    STATUS_RUNNING,
};
use crate::migration::{Batch, BatchFn, BatchSpec, Code, Migration, MigrationFn};
use crate::registry;

/// Runs data migrations against one database.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), datamig::Error> {
/// use std::time::Duration;
///
/// let report = datamig::Migrator::new(pool)
///     .lock_timeout(Duration::from_secs(5))
///     .app_version("2.14.0")
///     .run()
///     .await?;
/// for applied in &report.applied {
///     println!("applied {} ({} rows)", applied.id, applied.rows_affected);
/// }
/// # Ok(()) }
/// ```
pub struct Migrator<DB: Backend> {
    pool: Pool<DB>,
    source: Option<Vec<&'static Migration>>,
    ledger: LedgerConfig,
    runner_lock_timeout: Duration,
    lock_timeout: Option<Duration>,
    statement_timeout: Option<Duration>,
    app_version: Option<String>,
    dry_run: bool,
    progress: Option<ProgressFn>,
    interrupt_after_batches: Option<u64>,
    only: Option<String>,
    up_to: Option<String>,
    stop: Option<StopSignal>,
}

/// Asks a run to stop at the next transaction boundary: after the migration or batch in
/// progress commits (or rolls back), before the next one begins. Clone it into a Ctrl-C
/// handler.
#[derive(Clone, Debug, Default)]
pub struct StopSignal(Arc<std::sync::atomic::AtomicBool>);

impl StopSignal {
    /// A signal not raised yet.
    pub fn new() -> Self {
        StopSignal::default()
    }

    /// Raises the signal.
    pub fn stop(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether it was raised.
    pub fn is_stopped(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A callback for [`Progress`] events.
type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// How far a batched migration has come: sent after every committed batch.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct Progress {
    /// The migration's id.
    pub id: String,
    /// Batches committed so far (resumes included).
    pub batches: u64,
    /// Keys processed by this run so far.
    pub keys_done: u64,
    /// Rows affected by this run so far, as the migration reported them.
    pub rows_affected: u64,
    /// The planner's estimate of the table's rows, if known.
    pub estimated_total: Option<u64>,
    /// Keys processed per second by this run.
    pub keys_per_second: f64,
    /// The last key done.
    pub checkpoint: i64,
}

impl<DB: Backend> Clone for Migrator<DB> {
    fn clone(&self) -> Self {
        Migrator {
            pool: self.pool.clone(),
            source: self.source.clone(),
            ledger: self.ledger.clone(),
            runner_lock_timeout: self.runner_lock_timeout,
            lock_timeout: self.lock_timeout,
            statement_timeout: self.statement_timeout,
            app_version: self.app_version.clone(),
            dry_run: self.dry_run,
            progress: self.progress.clone(),
            interrupt_after_batches: self.interrupt_after_batches,
            only: self.only.clone(),
            up_to: self.up_to.clone(),
            stop: self.stop.clone(),
        }
    }
}

impl<DB: Backend> std::fmt::Debug for Migrator<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migrator")
            .field("ledger", &self.ledger)
            .field("runner_lock_timeout", &self.runner_lock_timeout)
            .field("lock_timeout", &self.lock_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("app_version", &self.app_version)
            .field("dry_run", &self.dry_run)
            .finish_non_exhaustive()
    }
}

impl<DB: Backend> Migrator<DB> {
    /// A migrator for every registered migration, with the default ledger tables.
    pub fn new(pool: Pool<DB>) -> Self {
        Migrator {
            pool,
            source: None,
            ledger: LedgerConfig::default(),
            runner_lock_timeout: Duration::from_secs(60),
            lock_timeout: None,
            statement_timeout: None,
            app_version: None,
            dry_run: false,
            progress: None,
            interrupt_after_batches: None,
            only: None,
            up_to: None,
            stop: None,
        }
    }

    /// Applies only this pending migration (`run --only ID`); the others stay pending.
    /// Drift anywhere still stops the run.
    pub fn only(mut self, id: impl Into<String>) -> Self {
        self.only = Some(id.into());
        self
    }

    /// Applies pending migrations up to and including this id (`run --to ID`).
    pub fn up_to(mut self, id: impl Into<String>) -> Self {
        self.up_to = Some(id.into());
        self
    }

    /// Stops the run at the next transaction boundary once `signal` is raised, with
    /// [`Error::Stopped`].
    pub fn stop_on(mut self, signal: StopSignal) -> Self {
        self.stop = Some(signal);
        self
    }

    /// The pool this migrator migrates.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    pub(crate) fn only_id(&self) -> Option<&str> {
        self.only.as_deref()
    }

    pub(crate) fn ledger_config(&self) -> &LedgerConfig {
        &self.ledger
    }

    /// Takes the runner lock on a connection of its own, runs `work` on it, releases the
    /// lock. On PostgreSQL the connection is closed afterwards, never returned to the pool:
    /// should this future be dropped half-way (a timeout, Ctrl-C), the session ends and the
    /// server releases the lock and rolls back what was in progress. On SQLite the dropped
    /// transaction rolls back, and the lock row's token dies with this future, so the next
    /// runner finds the row stale.
    pub(crate) async fn with_lock<T>(
        &self,
        work: impl AsyncFnOnce(&mut PoolConnection<DB>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.ledger.validate()?;
        let mut conn = self.pool.acquire().await?;
        if DB::CLOSE_RUNNER_CONNECTION {
            conn.close_on_drop();
        }
        DB::tag_session(&mut conn, &crate::admin::runner_tag()).await?;
        let token = LockToken::new();
        self.acquire_lock(&mut conn, &token).await?;
        let result = work(&mut conn).await;
        // Closing the connection releases PostgreSQL's lock too; unlocking explicitly is
        // prompt, and SQLite's lock row needs it (should this future be dropped instead,
        // the token dies with it and the next runner finds the row stale).
        let _ = DB::unlock(&mut conn, &self.ledger, &token).await;
        result
    }

    /// Calls `report` after every committed batch of a batched migration (a CLI turns it
    /// into a progress bar).
    pub fn on_progress(mut self, report: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(report));
        self
    }

    /// Fault injection, for tests: stops the run with [`Error::Interrupted`] after this
    /// many batches of a batched migration have committed, as a crash would, leaving the
    /// migration `running` at its checkpoint.
    pub fn interrupt_after_batches(mut self, batches: u64) -> Self {
        self.interrupt_after_batches = Some(batches);
        self
    }

    /// Runs exactly these migrations instead of every registered one (sorted by id; duplicate
    /// ids are rejected when the migrator runs).
    ///
    /// ```no_run
    /// # use datamig::prelude::*;
    /// #[datamig::migration(id = "20241114_0930_backfill")]
    /// async fn backfill(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> { Ok(()) }
    ///
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), datamig::Error> {
    /// datamig::Migrator::new(pool).migrations([&backfill::MIGRATION]).run().await?;
    /// # Ok(()) }
    /// # fn main() {}
    /// ```
    pub fn migrations(mut self, migrations: impl IntoIterator<Item = &'static Migration>) -> Self {
        self.source = Some(migrations.into_iter().collect());
        self
    }

    /// Where the ledger and run history live (table names and schema).
    pub fn ledger(mut self, config: LedgerConfig) -> Self {
        self.ledger = config;
        self
    }

    /// How long `run` waits for another runner to release the runner lock before it fails
    /// with [`Error::LockTimeout`] (default 60 s). It never waits forever.
    pub fn runner_lock_timeout(mut self, timeout: Duration) -> Self {
        self.runner_lock_timeout = timeout;
        self
    }

    /// The database's `lock_timeout` inside each migration's transaction, unless the
    /// migration sets its own: a migration waiting for a row or table lock longer than this
    /// fails instead of stalling the application behind it. On SQLite, how long a
    /// migration's transaction waits for the database's write lock (5 s by default).
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = Some(timeout);
        self
    }

    /// The database's `statement_timeout` inside each migration's transaction, unless the
    /// migration sets its own. SQLite has none: there it has no effect.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = Some(timeout);
        self
    }

    /// A version string of the application, recorded in the ledger and run history.
    pub fn app_version(mut self, version: impl Into<String>) -> Self {
        self.app_version = Some(version.into());
        self
    }

    /// Executes each pending migration inside its transaction, reports rows affected, and
    /// rolls back: nothing the migrations do is kept and nothing is recorded. (The ledger
    /// tables themselves are created if missing.) A batched migration runs its first batch
    /// only.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// The migrations this migrator runs, sorted by id.
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateId`] when two share an id.
    pub fn load(&self) -> Result<Vec<&'static Migration>, Error> {
        match &self.source {
            Some(list) => registry::validate(list.iter().copied()),
            None => registry::load(),
        }
    }

    /// Applies every pending migration, in id order, each exactly once.
    ///
    /// # Errors
    ///
    /// - [`Error::LockTimeout`]: another runner held the lock for too long; nothing ran.
    /// - [`Error::Drift`]: applied migrations changed; nothing ran.
    /// - [`Error::MigrationFailed`]: a migration failed or panicked; it was rolled back and
    ///   recorded in the run history, and the run stopped. Migrations applied before it
    ///   stay applied.
    /// - [`Error::Database`], [`Error::DuplicateId`], [`Error::UnsupportedBackend`],
    ///   [`Error::Config`].
    pub async fn run(&self) -> Result<RunReport, Error> {
        self.run_with(Mode::Pending).await
    }

    /// Runs one applied migration again, although the ledger says it is done: for a
    /// migration that converges (re-running it is safe), e.g. after restoring data. The
    /// ledger row is updated (`run_count` goes up, the checksum becomes the code's) and the
    /// run history records a `rerun`. Other migrations are not looked at.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownId`] when no migration has the id; [`Error::Config`] when it is not
    /// applied yet (use [`Migrator::run`]); otherwise as [`Migrator::run`].
    pub async fn rerun(&self, id: &str) -> Result<RunReport, Error> {
        self.run_with(Mode::Rerun(id.to_string())).await
    }

    async fn run_with(&self, mode: Mode) -> Result<RunReport, Error> {
        self.ledger.validate()?;
        let migrations = self.load()?;
        let code: Vec<(&'static Migration, Code<DB>)> = migrations
            .iter()
            .filter(|m| match &mode {
                Mode::Pending => true,
                Mode::Rerun(id) => m.id() == id,
            })
            .map(|m| match DB::code(m) {
                Some(f) => Ok((*m, f)),
                None => Err(Error::UnsupportedBackend {
                    id: m.id().to_string(),
                    backend: DB::ID,
                    available: m.backends().join(", "),
                }),
            })
            .collect::<Result<_, _>>()?;
        if let Mode::Rerun(id) = &mode
            && code.is_empty()
        {
            return Err(Error::UnknownId { id: id.clone() });
        }

        for id in [&self.only, &self.up_to].into_iter().flatten() {
            if !migrations.iter().any(|m| m.id() == id) {
                return Err(Error::UnknownId { id: id.clone() });
            }
        }
        self.with_lock(async |conn| self.run_locked(conn, &code, &mode).await)
            .await
    }

    async fn acquire_lock(
        &self,
        conn: &mut PoolConnection<DB>,
        token: &LockToken,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(25);
        loop {
            if DB::try_lock(conn, &self.ledger, token).await? {
                return Ok(());
            }
            let waited = started.elapsed();
            if waited >= self.runner_lock_timeout {
                return Err(Error::LockTimeout {
                    timeout: self.runner_lock_timeout,
                });
            }
            tokio::time::sleep(pause.min(self.runner_lock_timeout - waited)).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    async fn run_locked(
        &self,
        conn: &mut PoolConnection<DB>,
        code: &[(&'static Migration, Code<DB>)],
        mode: &Mode,
    ) -> Result<RunReport, Error> {
        // Created under the lock: concurrent `CREATE TABLE IF NOT EXISTS` can still collide.
        DB::ensure_ledger(conn, &self.ledger).await?;
        self.check_ledger_shape(conn).await?;
        let ledger = DB::read_ledger(conn, &self.ledger).await?;
        let mut plan = match mode {
            Mode::Pending => Plan::new(code.iter().map(|(m, _)| *m), ledger),
            Mode::Rerun(id) => Plan::rerun(id, ledger)?,
        };
        // Pending migrations outside the selection (`only`, `up_to`) stay pending.
        let mut left_pending = std::collections::BTreeSet::new();
        plan.steps.retain(|id, _| {
            let selected = self.only.as_ref().is_none_or(|only| id == only)
                && self.up_to.as_ref().is_none_or(|last| id <= last);
            if !selected {
                left_pending.insert(id.clone());
            }
            selected
        });
        // Schema first: a data migration that needs a schema migration which has not run
        // stops the run before anything runs.
        for (migration, _) in code {
            if let (Some(version), true) = (
                migration.requires_schema(),
                plan.steps.contains_key(migration.id()),
            ) && !DB::schema_version_applied(conn, version).await?
            {
                return Err(Error::SchemaNotReady {
                    id: migration.id().to_string(),
                    version,
                });
            }
        }
        if !plan.drifted.is_empty() {
            return Err(Error::Drift {
                drifted: plan.drifted,
            });
        }

        let mut report = RunReport {
            dry_run: self.dry_run,
            unknown: plan.unknown,
            ..RunReport::default()
        };
        for (migration, run) in code {
            let Some(step) = plan.steps.remove(migration.id()) else {
                if left_pending.contains(migration.id()) {
                    report.pending.push(migration.id().to_string());
                } else {
                    report.already_applied.push(migration.id().to_string());
                }
                continue;
            };
            if self.stop.as_ref().is_some_and(StopSignal::is_stopped) {
                return Err(Error::Stopped {
                    after: match report.applied.last() {
                        Some(last) => format!("migration {} committed", last.id),
                        None => "nothing ran".to_string(),
                    },
                    applied: report.applied.into_iter().map(|a| a.id).collect(),
                });
            }
            let result = match (run, migration.batch()) {
                (Code::Once(run), _) => self.apply(conn, migration, *run, step).await,
                (Code::Batched(run), Some(spec)) => {
                    self.apply_batched(conn, migration, *run, spec, step).await
                }
                (Code::Batched(_), None) => Err(Failure::Other(Error::Config(format!(
                    "migration {} is batched but has no batch specification",
                    migration.id()
                )))),
            };
            match result {
                Ok(applied) => report.applied.push(applied),
                Err(Failure::Migration { message, panicked }) => {
                    return Err(Error::MigrationFailed {
                        id: migration.id().to_string(),
                        message,
                        panicked,
                        applied_before: report.applied.into_iter().map(|a| a.id).collect(),
                    });
                }
                Err(Failure::Stopped {
                    batches,
                    checkpoint,
                }) => {
                    return Err(Error::Stopped {
                        after: format!(
                            "batch {batches} of {} committed (checkpoint {}); the next run resumes it",
                            migration.id(),
                            checkpoint.map_or_else(|| "-".to_string(), |k| k.to_string())
                        ),
                        applied: report.applied.into_iter().map(|a| a.id).collect(),
                    });
                }
                Err(Failure::Interrupted { batches }) => {
                    return Err(Error::Interrupted {
                        id: migration.id().to_string(),
                        batches,
                    });
                }
                Err(Failure::Other(err)) => return Err(err),
            }
        }
        Ok(report)
    }

    /// Runs one migration in its own transaction.
    async fn apply(
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
        let mut tx = DB::begin(conn, lock_timeout).await.map_err(Failure::db)?;
        DB::set_local_timeouts(
            &mut tx,
            lock_timeout,
            migration.statement_timeout().or(self.statement_timeout),
        )
        .await
        .map_err(Failure::db)?;

        let mut ctx = Ctx::new(&mut *tx, migration.id(), self.dry_run);
        let outcome = run_caught::<DB>(run(&mut ctx)).await;
        let rows_affected = ctx.rows_affected();
        let notes = ctx.notes().to_vec();
        let mut attempt = self.attempt(migration, action, started_at);
        attempt.write = if action == Action::Apply {
            LedgerWrite::Insert
        } else {
            LedgerWrite::Rerun
        };
        attempt.rows_affected = rows_affected;
        attempt.total_rows = rows_affected;
        attempt.notes = notes;

        let failure = match outcome {
            Ok(()) if self.dry_run => {
                tx.rollback().await.map_err(Failure::db)?;
                return Ok(AppliedMigration::new(&attempt, clock.elapsed(), action));
            }
            Ok(()) => {
                // The ledger row is written in the migration's own transaction: the effects
                // and the record that they happened commit together or not at all. With the
                // ledger written afterwards, a crash between the two commits would leave the
                // migration applied but unrecorded, and the next run would apply it again.
                // sqlx's migrator does the same for that reason: launchbadge/sqlx#1966.
                // The ledger's primary key on `id` also turns a second application into a
                // unique violation, should anything ever get past the runner lock.
                let recorded = match DB::write_ledger(&mut tx, &self.ledger, &attempt).await {
                    Ok(_) => DB::record_run(&mut tx, &self.ledger, &attempt, None).await,
                    Err(err) => Err(err),
                };
                let recorded = match recorded {
                    Ok(()) => tx.commit().await,
                    Err(err) => {
                        let _ = tx.rollback().await;
                        Err(err)
                    }
                };
                match recorded {
                    Ok(()) => return Ok(AppliedMigration::new(&attempt, clock.elapsed(), action)),
                    Err(err) => Failure::Migration {
                        message: format!(
                            "recording it in the ledger failed: {}",
                            describe_sqlx(&err)
                        ),
                        panicked: false,
                    },
                }
            }
            Err(failure) => {
                let _ = tx.rollback().await;
                Failure::Migration {
                    message: failure.message,
                    panicked: failure.panicked,
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

    /// Fails with [`Error::LedgerShape`] when a ledger table lacks datamig's columns.
    pub(crate) async fn check_ledger_shape(&self, conn: &mut DB::Connection) -> Result<(), Error> {
        for (name, table, expected) in [
            (
                self.ledger.ledger_table_name(),
                self.ledger.ledger_ident(),
                crate::ledger::LEDGER_COLUMNS,
            ),
            (
                self.ledger.runs_table_name(),
                self.ledger.runs_ident(),
                crate::ledger::RUNS_COLUMNS,
            ),
        ] {
            let columns = DB::table_columns(conn, self.ledger.schema_name(), name).await?;
            if columns.is_empty() {
                continue;
            }
            let missing: Vec<String> = expected
                .iter()
                .filter(|c| !columns.iter().any(|have| have == *c))
                .map(|c| c.to_string())
                .collect();
            if !missing.is_empty() {
                return Err(Error::LedgerShape { table, missing });
            }
        }
        Ok(())
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
            id: migration.id(),
            checksum: migration.checksum(),
            revision: migration.revision(),
            description: migration.description(),
            action,
            started_at,
            finished_at: Utc::now(),
            rows_affected: 0,
            notes: Vec::new(),
            host: host_name(),
            app_version: self.app_version.clone(),
            reason: None,
        }
    }

    /// Runs a batched migration: one transaction per batch of keys, each committing the
    /// batch's changes together with the checkpoint (the batch's last key) in the ledger row,
    /// so a process killed at any instant resumes after the last committed batch and never
    /// redoes one. The migration counts as applied when its last batch commits.
    async fn apply_batched(
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
            write: if step.action == Action::Rerun {
                LedgerWrite::Rerun
            } else {
                LedgerWrite::Insert
            },
            run_batches: 0,
            run_keys: 0,
            run_rows: 0,
            notes: Vec::new(),
            lock_retries: 0,
        };
        state.first_started_at_from(&step, migration)?;
        let first_started_at = step
            .resume
            .as_ref()
            .map_or(state.started_at, |e| e.started_at);
        let estimated_total = DB::estimate_rows(conn, spec.table()).await.ok().flatten();
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
                Err(err) => {
                    let (message, panicked) = match err {
                        BatchError::LockTimeout(message) => (message, false),
                        BatchError::Failed { message, panicked } => (message, panicked),
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
                    notes,
                    finished,
                } => {
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
        let mut tx = DB::begin(conn, lock_timeout).await.map_err(classify)?;
        DB::set_local_timeouts(&mut tx, lock_timeout, statement_timeout)
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
        let mut ctx = Ctx::new(&mut *tx, migration.id(), self.dry_run);
        let outcome =
            run_caught::<DB>(run(&mut ctx, Batch::new(state.after, last, number, keys))).await;
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
        tx.commit().await.map_err(classify)
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

    /// Appends a failed attempt to the run history, after the rollback. The runner's own
    /// connection may be what failed, so a fresh one from the pool is the fallback.
    async fn record_failure(
        &self,
        conn: &mut PoolConnection<DB>,
        attempt: &Attempt,
        message: &str,
    ) -> Result<(), Error> {
        if DB::record_run(conn, &self.ledger, attempt, Some(message))
            .await
            .is_ok()
        {
            return Ok(());
        }
        let mut fresh = self.pool.acquire().await?;
        DB::record_run(&mut fresh, &self.ledger, attempt, Some(message)).await?;
        Ok(())
    }

    /// The state of every migration this migrator knows, and of ledger rows it does not.
    /// Reads only: the ledger is not created, no lock is taken.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] and [`Error::DuplicateId`].
    pub async fn status(&self) -> Result<Vec<MigrationStatus>, Error> {
        self.ledger.validate()?;
        let migrations = self.load()?;
        let mut conn = self.pool.acquire().await?;
        self.check_ledger_shape(&mut conn).await?;
        let (ledger, last_runs) = if DB::ledger_exists(&mut conn, &self.ledger).await? {
            (
                DB::read_ledger(&mut conn, &self.ledger).await?,
                DB::last_runs(&mut conn, &self.ledger).await?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let mut last_runs: BTreeMap<String, LastRun> = last_runs
            .into_iter()
            .map(|r| (r.migration_id.clone(), r))
            .collect();
        let mut entries: BTreeMap<String, LedgerEntry> =
            ledger.into_iter().map(|e| (e.id.clone(), e)).collect();

        let mut statuses: Vec<MigrationStatus> = migrations
            .iter()
            .map(|m| {
                let entry = entries.remove(m.id());
                let state = match &entry {
                    None => State::Pending,
                    Some(e) if e.checksum != m.checksum() || e.revision != m.revision() => {
                        State::Drifted
                    }
                    Some(e) if e.is_running() => State::Running,
                    Some(_) => State::Applied,
                };
                MigrationStatus {
                    id: m.id().to_string(),
                    description: m.description().to_string(),
                    state,
                    ledger: entry,
                    last_run: last_runs.remove(m.id()),
                }
            })
            .collect();
        statuses.extend(entries.into_values().map(|entry| MigrationStatus {
            id: entry.id.clone(),
            description: entry.description.clone(),
            state: State::Unknown,
            last_run: last_runs.remove(&entry.id),
            ledger: Some(entry),
        }));
        statuses.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(statuses)
    }
}

/// What a run must do, derived from the migrations and the ledger.
struct Plan {
    steps: BTreeMap<String, Step>,
    drifted: Vec<Drift>,
    unknown: Vec<String>,
}

/// What a run applies.
enum Mode {
    /// Every pending migration.
    Pending,
    /// One applied migration, again.
    Rerun(String),
}

/// What to do with one migration.
struct Step {
    action: Action,
    /// For a batched migration part-way through: its ledger row (checkpoint, counts).
    resume: Option<LedgerEntry>,
}

impl Plan {
    fn new(migrations: impl Iterator<Item = &'static Migration>, ledger: Vec<LedgerEntry>) -> Self {
        let mut entries: BTreeMap<String, LedgerEntry> =
            ledger.into_iter().map(|e| (e.id.clone(), e)).collect();
        let mut plan = Plan {
            steps: BTreeMap::new(),
            drifted: Vec::new(),
            unknown: Vec::new(),
        };
        for m in migrations {
            let step = match entries.remove(m.id()) {
                None => Step {
                    action: Action::Apply,
                    resume: None,
                },
                Some(e) if e.checksum != m.checksum() || e.revision != m.revision() => {
                    if m.reruns_on_change() {
                        // A changed migration that may re-run starts over, batched or not.
                        Step {
                            action: Action::Rerun,
                            resume: None,
                        }
                    } else {
                        plan.drifted.push(Drift {
                            id: e.id,
                            applied_checksum: e.checksum,
                            code_checksum: m.checksum().to_string(),
                            applied_revision: e.revision,
                            code_revision: m.revision(),
                        });
                        continue;
                    }
                }
                Some(e) if e.is_running() => Step {
                    action: Action::Resume,
                    resume: Some(e),
                },
                Some(_) => continue,
            };
            plan.steps.insert(m.id().to_string(), step);
        }
        // A row no registered migration has was written by another build (often a newer
        // release): it is reported, never deleted.
        plan.unknown = entries.into_keys().collect();
        plan
    }

    /// The plan of a forced re-run of `id`, which must be in the ledger.
    fn rerun(id: &str, ledger: Vec<LedgerEntry>) -> Result<Self, Error> {
        if !ledger.iter().any(|e| e.id == id) {
            return Err(Error::Config(format!(
                "migration {id} is not applied yet, so it cannot be re-run: apply it with `run`"
            )));
        }
        let mut steps = BTreeMap::new();
        steps.insert(
            id.to_string(),
            Step {
                action: Action::Rerun,
                resume: None,
            },
        );
        Ok(Plan {
            steps,
            drifted: Vec::new(),
            unknown: Vec::new(),
        })
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

/// How a migration body failed.
pub(crate) struct BodyFailure {
    /// Its error with its causes, or its panic message.
    pub(crate) message: String,
    /// Whether it panicked.
    pub(crate) panicked: bool,
    /// Whether the error was a lock timeout.
    pub(crate) lock_timeout: bool,
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
        }),
        Err(panic) => Err(BodyFailure {
            message: panic_message(panic.as_ref()),
            panicked: true,
            lock_timeout: false,
        }),
    }
}

enum Failure {
    /// The migration itself failed (or could not be recorded): reported by id.
    Migration { message: String, panicked: bool },
    /// Fault injection stopped a batched migration after this many batches in all.
    Interrupted { batches: u64 },
    /// The stop signal stopped a batched migration after a committed batch.
    Stopped {
        batches: u64,
        checkpoint: Option<i64>,
    },
    /// The runner could not do its part.
    Other(Error),
}

impl Failure {
    fn db(err: sqlx::Error) -> Self {
        Failure::Other(Error::Database(err))
    }
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

/// This machine's host name, as datamig records it: in the ledger, the run history, and
/// the `application_name` of a runner's session (`datamig/<host>/<pid>`).
pub fn host_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// What a run did.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[non_exhaustive]
pub struct RunReport {
    /// Migrations applied (or re-run) by this run, in order. In a dry run: executed and
    /// rolled back.
    pub applied: Vec<AppliedMigration>,
    /// Migrations that were already applied and unchanged.
    pub already_applied: Vec<String>,
    /// Ledger rows whose id no migration of this build has.
    pub unknown: Vec<String>,
    /// Pending migrations this run left alone (`only`, `up_to`).
    pub pending: Vec<String>,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

/// One migration applied by a run.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct AppliedMigration {
    /// The migration's id.
    pub id: String,
    /// Whether it was a re-run of an applied migration whose code changed.
    pub rerun: bool,
    /// Rows affected, as the migration reported them.
    pub rows_affected: u64,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// Notes the migration recorded.
    pub notes: Vec<String>,
    /// Batches committed by this run (0 for a migration that runs in one transaction).
    pub batches: u64,
    /// Batches retried after waiting for a lock longer than their `lock_timeout`.
    pub lock_retries: u64,
}

impl AppliedMigration {
    fn new(attempt: &Attempt, elapsed: Duration, action: Action) -> Self {
        AppliedMigration {
            id: attempt.id.to_string(),
            rerun: action == Action::Rerun,
            rows_affected: attempt.rows_affected,
            duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            notes: attempt.notes.clone(),
            batches: 0,
            lock_retries: 0,
        }
    }
}

/// The state of one migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum State {
    /// Applied, with the code of this build.
    Applied,
    /// Not applied yet.
    Pending,
    /// A batched migration part-way through: its ledger row holds the checkpoint.
    Running,
    /// Applied, but its code changed since.
    Drifted,
    /// In the ledger, but no migration of this build has the id.
    Unknown,
}

/// One line of `status`.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct MigrationStatus {
    /// The migration's id.
    pub id: String,
    /// Its description (from the code, or from the ledger for an unknown row).
    pub description: String,
    /// Its state.
    pub state: State,
    /// Its ledger row, if applied.
    pub ledger: Option<LedgerEntry>,
    /// Its last recorded attempt, if any.
    pub last_run: Option<LastRun>,
}
