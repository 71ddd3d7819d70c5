//! The runner: the database-independent algorithm of `run` and `status`, written once
//! over [`Backend`].
//!
//! One `run` (`run_locked`): take the runner lock (`lock`), create the ledger if missing
//! and read it, derive the plan (`plan`, pure), stop on drift, then apply each pending
//! migration in its own transaction together with its ledger row (`apply`), or batch by
//! batch with its checkpoint (`batch`), in id order, and release the lock. `report` holds
//! what a run returns and `status`.

mod apply;
mod batch;
mod chain;
mod join;
mod key_check;
mod layout;
mod lock;
mod pace;
mod plan;
mod report;
mod throttle;
mod walk;
mod workers;

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use sqlx::Pool;
use sqlx::pool::PoolConnection;

use crate::backend::{Backend, pinned};
use crate::error::Error;
use crate::ledger::LedgerConfig;
use crate::migration::{Code, Migration};
use crate::registry;

use apply::Failure;
pub(crate) use apply::{BodyFailure, run_caught, writes_since};
pub(crate) use key_check::batch_key;
pub use lock::RunnerLock;
use plan::{Mode, Plan};
pub use report::{AppliedMigration, MigrationStatus, Progress, RunReport, State};
pub use throttle::Health;
pub(crate) use walk::Sizer;

/// The warning of a run whose binary registers no migration at all while the ledger holds
/// `applied` rows: the crate of migrations is almost certainly not linked.
fn unlinked_warning(applied: usize) -> String {
    format!(
        "no migration is registered in this binary, yet the ledger holds {applied} applied \
         migration(s): the crate that defines the migrations is probably not linked. Call its \
         `link()` (a function calling `datamig::link_marker`) from main before running datamig"
    )
}

/// A callback for [`Progress`] events.
type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

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
    runner_lock: RunnerLock,
    runner_lock_timeout: Duration,
    lock_timeout: Option<Duration>,
    statement_timeout: Option<Duration>,
    pub(crate) app_version: Option<String>,
    dry_run: bool,
    restart: bool,
    progress: Option<ProgressFn>,
    interrupt_after_batches: Option<u64>,
    only: Option<String>,
    up_to: Option<String>,
    stop: Option<StopSignal>,
    health_checks: Vec<throttle::HealthCheck<DB>>,
    throttle_interval: Duration,
    workers: Option<u32>,
    join: bool,
    ledger_only: bool,
    /// Whether the absence of a transaction pooler was already checked on this server (by
    /// a fleet, once for all its targets there): the advisory lock's own check, which
    /// opens a second connection, is skipped.
    pooler_checked: bool,
    /// Whether the runner's connection goes back to the pool after a run that released
    /// the lock (a fleet's pool serves its next target), instead of being closed.
    reuse_runner_connection: bool,
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

impl<DB: Backend> Clone for Migrator<DB> {
    fn clone(&self) -> Self {
        Migrator {
            pool: self.pool.clone(),
            source: self.source.clone(),
            ledger: self.ledger.clone(),
            runner_lock: self.runner_lock,
            runner_lock_timeout: self.runner_lock_timeout,
            lock_timeout: self.lock_timeout,
            statement_timeout: self.statement_timeout,
            app_version: self.app_version.clone(),
            dry_run: self.dry_run,
            restart: self.restart,
            progress: self.progress.clone(),
            interrupt_after_batches: self.interrupt_after_batches,
            only: self.only.clone(),
            up_to: self.up_to.clone(),
            stop: self.stop.clone(),
            health_checks: self.health_checks.clone(),
            throttle_interval: self.throttle_interval,
            workers: self.workers,
            join: self.join,
            ledger_only: self.ledger_only,
            pooler_checked: self.pooler_checked,
            reuse_runner_connection: self.reuse_runner_connection,
        }
    }
}

impl<DB: Backend> std::fmt::Debug for Migrator<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migrator")
            .field("ledger", &self.ledger)
            .field("runner_lock", &self.runner_lock)
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
            runner_lock: RunnerLock::Advisory,
            runner_lock_timeout: Duration::from_secs(60),
            lock_timeout: None,
            statement_timeout: None,
            app_version: None,
            dry_run: false,
            restart: false,
            progress: None,
            interrupt_after_batches: None,
            only: None,
            up_to: None,
            stop: None,
            health_checks: Vec::new(),
            throttle_interval: Duration::from_secs(1),
            workers: None,
            join: true,
            ledger_only: false,
            pooler_checked: false,
            reuse_runner_connection: false,
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

    /// Walks every batched migration of the run with `workers` workers, whatever it
    /// declares (`batch(.., workers = N)`; 1 by default). PostgreSQL and MySQL: SQLite,
    /// which takes one writer at a time, refuses more than one, and nothing runs.
    ///
    /// The migration's keys still to do are split into ranges (four a worker), recorded
    /// in the table `<ledger>_ranges` in the transaction that records the migration as
    /// running. Each worker holds a connection of its own and claims one range at a time
    /// (on a direct connection with the range's session lock, an advisory lock or MySQL's
    /// `GET_LOCK`, which the server releases when a worker dies; under
    /// [`RunnerLock::Lease`] with a lease in the range's row), works it batch by batch, each batch committing its range's checkpoint
    /// with its changes, and claims the next. The batch that finishes the last range
    /// applies the migration, once. Another run that finds the migration part-way joins
    /// it ([`Migrator::join`]); a run after a kill resumes every range from its checkpoint.
    /// The pool needs no more connections than before: each worker's is its own.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), datamig::Error> {
    /// datamig::Migrator::new(pool).workers(4).run().await?;
    /// # Ok(()) }
    /// ```
    pub fn workers(mut self, workers: u32) -> Self {
        self.workers = Some(workers.max(1));
        self
    }

    /// Whether this run, finding another runner holding the runner lock while it walks a
    /// batched migration with workers, joins it as more workers (the default) instead of
    /// only waiting. It joins only a migration for which it has the same code (checksum
    /// and revision) that is not paused, works ranges no live worker holds until none is
    /// left, then waits for the runner lock as before (the wait's timeout starts again).
    /// What it did is in [`RunReport::joined`].
    pub fn join(mut self, join: bool) -> Self {
        self.join = join;
        self
    }

    /// Skips the advisory lock's check for a transaction pooler: the caller checked this
    /// server already (a fleet checks each server once, not each of its targets).
    pub(crate) fn pooler_checked(mut self) -> Self {
        self.pooler_checked = true;
        self
    }

    /// Hands the runner's connection back to the pool after a run that released the
    /// runner lock, instead of closing it: for a fleet, whose pool serves its next target
    /// (and resets each session it hands out). A run that did not release the lock still
    /// closes it.
    pub(crate) fn reuse_runner_connection(mut self) -> Self {
        self.reuse_runner_connection = true;
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

    /// Calls `report` after every committed batch of a batched migration (a CLI turns it
    /// into a progress bar).
    pub fn on_progress(mut self, report: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(report));
        self
    }

    /// Fault injection, for tests (hidden from the docs: not for production use): stops
    /// the run with [`Error::Interrupted`] after this
    /// many batches of a batched migration have committed, as a crash would, leaving the
    /// migration `running` at its checkpoint.
    #[doc(hidden)]
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

    /// A migrator with no migrations' code: it reads and manages the ledger alone, as the
    /// installed `datamig` binary does (it has no migrations compiled in).
    ///
    /// [`status`](Migrator::status) then reports each ledger row by what the ledger
    /// records (applied, running, paused) instead of as unknown to this build, and drift is
    /// not computed; [`check`](Migrator::check) lists what is part-way or paused;
    /// [`pause`](Migrator::pause) takes a migration the ledger records as part-way, and
    /// [`resume`](Migrator::resume) any paused one. What needs the code refuses with
    /// [`Error::Config`] before touching anything: [`run`](Migrator::run),
    /// [`rerun`](Migrator::rerun), [`mark_applied`](Migrator::mark_applied),
    /// [`repair`](Migrator::repair) and
    /// [`check_idempotency`](Migrator::check_idempotency).
    pub fn ledger_only(mut self) -> Self {
        self.source = Some(Vec::new());
        self.ledger_only = true;
        self
    }

    /// Whether this migrator reads the ledger alone ([`Migrator::ledger_only`]).
    pub fn is_ledger_only(&self) -> bool {
        self.ledger_only
    }

    /// Refuses `operation` on a ledger-only migrator: it needs the migrations' code.
    pub(crate) fn needs_code(&self, operation: &str) -> Result<(), Error> {
        if self.ledger_only {
            return Err(Error::Config(format!(
                "{operation} needs the migrations' code, and this migrator reads the ledger \
                 only (no migrations compiled in): use the application's own binary or \
                 Migrator, which links its crate of migrations"
            )));
        }
        Ok(())
    }

    /// Where the ledger and run history live (table names and schema).
    pub fn ledger(mut self, config: LedgerConfig) -> Self {
        self.ledger = config;
        self
    }

    /// Which lock keeps two runners apart: PostgreSQL's session advisory lock (the
    /// default, for direct connections) or a lease (through a transaction pooler such as
    /// PgBouncer in `transaction` mode). See [`RunnerLock`].
    pub fn runner_lock(mut self, lock: RunnerLock) -> Self {
        self.runner_lock = lock;
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

    /// Starts again, from their first key, the migrations an operator cancelled
    /// ([`Migrator::cancel`], `run --restart`); without it a run leaves them alone and
    /// reports them in [`RunReport::cancelled`].
    pub fn restart(mut self, restart: bool) -> Self {
        self.restart = restart;
        self
    }

    /// Executes each pending migration inside its transaction, reports rows affected, and
    /// rolls back: nothing the migrations do is kept and nothing is recorded. (The ledger
    /// tables themselves are created if missing.) A batched migration runs its first three
    /// batches (each rolled back) and reports the keys it would walk and an estimate of
    /// the whole walk's time on this database now ([`AppliedMigration::estimated_ms`]).
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

    /// One run, in the span `run` (fields: `backend`, `mode`, `dry_run`, and when it ends
    /// `applied`, `already_applied`, `paused`, `duration_ms`, `outcome`), with an event
    /// when it ends.
    async fn run_with(&self, mode: Mode) -> Result<RunReport, Error> {
        let span = tracing::info_span!(
            "run",
            backend = DB::ID,
            mode = match mode {
                Mode::Pending => "run",
                Mode::Rerun(_) => "rerun",
            },
            dry_run = self.dry_run,
            applied = tracing::field::Empty,
            already_applied = tracing::field::Empty,
            paused = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let result = self.run_traced(mode).instrument(span.clone()).await;
        let duration_ms = crate::trace::millis(started.elapsed());
        span.record("duration_ms", duration_ms);
        match &result {
            Ok(report) => {
                span.record("applied", report.applied.len());
                span.record("already_applied", report.already_applied.len());
                span.record("paused", report.paused.len());
                span.record("outcome", "ok");
                tracing::info!(
                    parent: &span,
                    applied = report.applied.len(),
                    already_applied = report.already_applied.len(),
                    paused = report.paused.len(),
                    duration_ms,
                    "run finished"
                );
            }
            Err(err) => {
                span.record("outcome", crate::trace::outcome(err));
                tracing::error!(parent: &span, error = %err, duration_ms, "run failed");
            }
        }
        result
    }

    async fn run_traced(&self, mode: Mode) -> Result<RunReport, Error> {
        self.needs_code(match mode {
            Mode::Rerun(_) => "rerun",
            _ => "run",
        })?;
        self.ledger.validate()?;
        let migrations = self.load()?;
        let unsupported = |m: &Migration| Error::UnsupportedBackend {
            id: m.id().to_string(),
            backend: DB::ID,
            available: m.backends().join(", "),
        };
        // Naming one migration that has no code here is an error; a run of everything
        // skips such migrations and reports them.
        let named = match &mode {
            Mode::Pending => self.only.as_ref(),
            Mode::Rerun(id) => Some(id),
        };
        if let Some(id) = named
            && let Some(m) = migrations.iter().find(|m| m.id() == id)
            && DB::code(m).is_none()
        {
            return Err(unsupported(m));
        }
        let code: Vec<(&'static Migration, Code<DB>)> = migrations
            .iter()
            .filter(|m| match &mode {
                Mode::Pending => true,
                Mode::Rerun(id) => m.id() == id,
            })
            .filter_map(|m| DB::code(m).map(|f| (*m, f)))
            .collect();
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
        // A run of pending migrations may join another runner's workers while it waits.
        let joinable = matches!(mode, Mode::Pending).then_some(code.as_slice());
        self.with_lock_or_join(joinable, async |conn, joined| {
            let mut report = self.run_locked(conn, &migrations, &code, &mode).await?;
            report.joined = joined;
            Ok(report)
        })
        .await
    }

    async fn run_locked(
        &self,
        conn: &mut PoolConnection<DB>,
        migrations: &[&'static Migration],
        code: &[(&'static Migration, Code<DB>)],
        mode: &Mode,
    ) -> Result<RunReport, Error> {
        let (ledger, pauses, cancels) = pinned::<DB, _>(conn, async |conn| {
            self.prepare_ledger(conn).await?;
            Ok((
                DB::read_ledger(conn, &self.ledger).await?,
                DB::pause_state(conn, &self.ledger, None).await?,
                DB::cancel_state(conn, &self.ledger, None).await?,
            ))
        })
        .await?;
        let mut cancels: std::collections::BTreeMap<String, crate::ledger::Pause> = cancels
            .into_iter()
            .map(|p| (p.migration_id.clone(), p))
            .collect();
        let mut pauses: std::collections::BTreeMap<String, crate::ledger::Pause> = pauses
            .into_iter()
            .map(|p| (p.migration_id.clone(), p))
            .collect();
        let mut warnings = Vec::new();
        if self.source.is_none() && migrations.is_empty() && !ledger.is_empty() {
            warnings.push(unlinked_warning(ledger.len()));
        }
        let mut plan = match mode {
            Mode::Pending => Plan::new(
                migrations.iter().map(|m| (*m, DB::code(m).is_some())),
                ledger,
            ),
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
            ) && !pinned::<DB, _>(conn, async |c| {
                Ok(DB::schema_version_applied(c, version).await?)
            })
            .await?
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
        if !DB::WORKERS {
            for (migration, _) in code {
                if let (Some(spec), true) =
                    (migration.batch(), plan.steps.contains_key(migration.id()))
                    && self.workers_for(spec) > 1
                {
                    return Err(Error::Config(format!(
                        "migration {} asks for {} workers, and {} takes one writer at a time:                          it runs batched migrations with one worker only (run --workers 1, or                          Migrator::workers(1)); nothing ran",
                        migration.id(),
                        self.workers_for(spec),
                        DB::ID
                    )));
                }
            }
        }

        let mut report = RunReport {
            dry_run: self.dry_run,
            unknown: plan.unknown,
            not_for_backend: plan.not_for_backend,
            warnings,
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
            if let Some(pause) = pauses.remove(migration.id()) {
                tracing::info!(id = migration.id(), by = %pause.by, "migration paused by an operator: skipped");
                report.paused.push(pause);
                continue;
            }
            let mut step = step;
            if let Some(cancel) = cancels.remove(migration.id()) {
                if !self.restart || self.dry_run {
                    tracing::info!(id = migration.id(), by = %cancel.by, "migration cancelled by an operator: skipped (run --restart starts it again)");
                    report.cancelled.push(cancel);
                    continue;
                }
                // Started again from its first key: the cancel is lifted in the run history.
                let mut attempt = self.attempt(
                    migration,
                    crate::ledger::Action::Restart,
                    chrono::Utc::now(),
                );
                attempt.reason = Some(format!(
                    "starts again from the first key after the cancel by {} from {} at {}",
                    cancel.by,
                    cancel.host,
                    cancel.at.to_rfc3339()
                ));
                pinned::<DB, _>(conn, async |c| {
                    Ok(DB::record_run(c, &self.ledger, &attempt, None).await?)
                })
                .await?;
                step.restart = true;
            }
            if self.stop.as_ref().is_some_and(StopSignal::is_stopped) {
                return Err(Error::Stopped {
                    after: match report.applied.last() {
                        Some(last) => format!("migration {} committed", last.id),
                        None => "nothing ran".to_string(),
                    },
                    applied: report.applied.into_iter().map(|a| a.id).collect(),
                });
            }
            let span = tracing::info_span!(
                "migration",
                id = migration.id(),
                action = step.action.as_str(),
                batched = migration.batch().is_some(),
                rows = tracing::field::Empty,
                batches = tracing::field::Empty,
                workers = tracing::field::Empty,
                duration_ms = tracing::field::Empty,
                outcome = tracing::field::Empty,
            );
            let started = std::time::Instant::now();
            let result = async {
                match (run, migration.batch()) {
                    (Code::Once(run), _) => self.apply(conn, migration, *run, step).await,
                    (Code::Batched(run), Some(spec)) => {
                        self.apply_batched(conn, migration, *run, spec, step).await
                    }
                    (Code::Batched(_), None) => Err(Failure::Other(Error::Runtime(format!(
                        "migration {} is batched but has no batch specification: its \
                         descriptor was not built by #[migration]; declare it with the attribute",
                        migration.id()
                    )))),
                }
            }
            .instrument(span.clone())
            .await;
            migration_ended(&span, &result, started.elapsed());
            match result {
                Ok(applied) => report.applied.push(applied),
                Err(Failure::Migration {
                    message,
                    panicked,
                    source,
                }) => {
                    return Err(Error::MigrationFailed {
                        id: migration.id().to_string(),
                        message,
                        panicked,
                        applied_before: report.applied.into_iter().map(|a| a.id).collect(),
                        source,
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
                            checkpoint.unwrap_or_else(|| "-".to_string())
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
                Err(Failure::Paused(pause)) => report.paused.push(pause),
                Err(Failure::Cancelled(cancel)) => report.cancelled.push(cancel),
                Err(Failure::Other(err)) => return Err(err),
            }
        }
        Ok(report)
    }
}

/// Fills the `migration` span's closing fields from what applying it came to, and emits
/// its closing event.
fn migration_ended(
    span: &tracing::Span,
    result: &Result<AppliedMigration, Failure>,
    elapsed: Duration,
) {
    let duration_ms = crate::trace::millis(elapsed);
    span.record("duration_ms", duration_ms);
    match result {
        Ok(applied) => {
            span.record("rows", applied.rows_affected);
            span.record("batches", applied.batches);
            span.record("workers", applied.workers);
            span.record("outcome", "applied");
            tracing::info!(
                parent: span,
                rows = applied.rows_affected,
                batches = applied.batches,
                workers = applied.workers,
                duration_ms,
                "migration applied"
            );
        }
        Err(Failure::Migration {
            message, panicked, ..
        }) => {
            span.record("outcome", "failed");
            tracing::error!(parent: span, error = %message, panicked, duration_ms, "migration failed");
        }
        Err(Failure::Stopped { batches, .. }) => {
            span.record("outcome", "stopped");
            span.record("batches", batches);
            tracing::warn!(parent: span, batches, duration_ms, "migration stopped on request");
        }
        Err(Failure::Interrupted { batches }) => {
            span.record("outcome", "interrupted");
            span.record("batches", batches);
            tracing::warn!(parent: span, batches, duration_ms, "migration interrupted");
        }
        Err(Failure::Paused(pause)) => {
            span.record("outcome", "paused");
            tracing::warn!(parent: span, by = %pause.by, host = %pause.host, duration_ms, "migration paused");
        }
        Err(Failure::Cancelled(cancel)) => {
            span.record("outcome", "cancelled");
            tracing::warn!(parent: span, by = %cancel.by, host = %cancel.host, duration_ms, "migration cancelled");
        }
        Err(Failure::Other(err)) => {
            span.record("outcome", crate::trace::outcome(err));
            tracing::error!(parent: span, error = %err, duration_ms, "migration failed");
        }
    }
}
