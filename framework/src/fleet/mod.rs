//! Fleets: the same migrations across many databases, or many tenant schemas of one, in
//! one deploy. Written once over [`Migrator`]: each target gets a migrator of its own, with
//! its own ledger and runner lock, as a single run would.
//!
//! One fleet command, by phase: the targets (`target.rs`: read, checked, each named once),
//! the rollout (`rollout.rs`: which target starts when), each target (`pools.rs`: its
//! database's pool, shared by the database's targets; `connect.rs`: each session reset for
//! the target it serves, its schema first on the search path; then the command on its
//! migrator), and the summary (`report.rs`).

mod connect;
mod pools;
mod query;
mod report;
mod rollout;
mod target;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tracing::Instrument;

use crate::admin::CheckReport;
use crate::error::Error;
use crate::ledger::{LedgerConfig, Pause};
use crate::runner::{MigrationStatus, Migrator, RunReport, RunnerLock, State, StopSignal};

pub use connect::FleetBackend;
use pools::Pools;
pub use report::{FleetEvent, FleetReport, Outcome, TargetReport};
pub use rollout::{Halted, OnFailure};
use rollout::{Rollout, roll};
pub use target::{Target, Targets};

/// A callback that changes each target's migrator.
type Configure<DB> = Arc<dyn Fn(Migrator<DB>) -> Migrator<DB> + Send + Sync>;

/// A callback for [`FleetEvent`]s.
type EventFn = Arc<dyn Fn(&FleetEvent) + Send + Sync>;

/// Runs the same migrations on every target of a list: databases, and tenant schemas of
/// databases, of one backend.
///
/// Each target gets its own [`Migrator`], with its own ledger and runner lock: two fleets
/// running at once, or a fleet and a single run, still apply each migration once per
/// target, and a fleet run after a failure or a kill starts only what is left. For a
/// tenant schema (`schema=NAME`), the ledger lives in that schema and every connection has
/// it first on its search path, so a body written for one tenant (`UPDATE users ..`) runs
/// for each.
///
/// The targets of one database share its sessions: a pool opened when the first of them
/// starts and closed when the last has ended, each connection reset before it serves a
/// target (`RESET ALL`, `DISCARD TEMP`, the target's schema first on the search path). A
/// tenant with nothing pending then costs a few statements, not a new server process.
///
/// At most [`concurrency`](Fleet::concurrency) targets run at once (default
/// [`Fleet::DEFAULT_CONCURRENCY`]), in the order given; the first
/// [`canary`](Fleet::canary) targets run first and the fleet stops if one fails; after a
/// failure, the fleet either starts no new target or tries every one
/// ([`on_failure`](Fleet::on_failure)). An unreachable target is one failed target, named.
///
/// # Examples
///
/// ```no_run
/// # async fn deploy() -> Result<(), datamig::Error> {
/// use std::time::Duration;
/// use datamig::{Fleet, OnFailure, Outcome, Postgres, Targets};
///
/// let targets = Targets::parse(
///     "postgres://deploy:secret@db1/shop schema=tenant_1
///      postgres://deploy:secret@db1/shop schema=tenant_2
///      postgres://deploy:secret@db2/shop_eu",
/// )?;
/// let report = Fleet::<Postgres>::new(targets)
///     .concurrency(8)
///     .canary(1)
///     .on_failure(OnFailure::Continue)
///     .configure(|migrator| migrator.app_version("2.14.0").lock_timeout(Duration::from_secs(5)))
///     .run()
///     .await?;
/// for target in &report.targets {
///     println!("{}: {}", target.target, target.outcome.as_str());
/// }
/// println!("{} applied, {} failed", report.count(Outcome::Applied), report.count(Outcome::Failed));
/// # Ok(()) }
/// ```
pub struct Fleet<DB: FleetBackend> {
    targets: Targets,
    concurrency: usize,
    canary: usize,
    on_failure: OnFailure,
    ledger: LedgerConfig,
    runner_lock: RunnerLock,
    configure: Option<Configure<DB>>,
    events: Option<EventFn>,
    stop: Option<StopSignal>,
}

impl<DB: FleetBackend> std::fmt::Debug for Fleet<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("targets", &self.targets.len())
            .field("concurrency", &self.concurrency)
            .field("canary", &self.canary)
            .field("on_failure", &self.on_failure)
            .field("ledger", &self.ledger)
            .field("runner_lock", &self.runner_lock)
            .finish_non_exhaustive()
    }
}

impl<DB: FleetBackend> Fleet<DB> {
    /// Targets run at once unless told otherwise.
    pub const DEFAULT_CONCURRENCY: usize = 4;

    /// A fleet of `targets`: every registered migration, the default ledger tables, 4
    /// targets at once, no canary, stopping on the first failure.
    pub fn new(targets: Targets) -> Self {
        Fleet {
            targets,
            concurrency: Self::DEFAULT_CONCURRENCY,
            canary: 0,
            on_failure: OnFailure::Stop,
            ledger: LedgerConfig::default(),
            runner_lock: RunnerLock::Advisory,
            configure: None,
            events: None,
            stop: None,
        }
    }

    /// Runs at most `targets` targets at once (at least 1). A running target uses up to
    /// two connections (plus its workers', for a batched migration walked by several); a
    /// database's pool holds at most twice this many, and its idle ones until its last
    /// target has ended.
    pub fn concurrency(mut self, targets: usize) -> Self {
        self.concurrency = targets.max(1);
        self
    }

    /// `run` runs the first `targets` targets first (the canaries) and starts no other
    /// target if one of them fails, whatever [`on_failure`](Fleet::on_failure) says.
    pub fn canary(mut self, targets: usize) -> Self {
        self.canary = targets;
        self
    }

    /// What `run` does once a target has failed: start no new target (the default; the
    /// targets running finish their run), or try every target.
    pub fn on_failure(mut self, on_failure: OnFailure) -> Self {
        self.on_failure = on_failure;
        self
    }

    /// Where each target's ledger lives: its table names. A tenant schema target's
    /// ledger is in the tenant's schema; a schema given here applies to the other targets.
    pub fn ledger(mut self, config: LedgerConfig) -> Self {
        self.ledger = config;
        self
    }

    /// The runner lock of each target (see [`RunnerLock`]). With
    /// [`RunnerLock::Lease`], which is for transaction poolers, the targets connect as
    /// through one ([`crate::pooler_safe`]), and tenant schema targets are refused: a
    /// transaction pooler does not keep a session's search path.
    pub fn runner_lock(mut self, lock: RunnerLock) -> Self {
        self.runner_lock = lock;
        self
    }

    /// Sets up each target's migrator the same way (timeouts, application version, an
    /// explicit list of migrations, ...).
    ///
    /// ```no_run
    /// # async fn demo(targets: datamig::Targets) -> Result<(), datamig::Error> {
    /// use std::time::Duration;
    /// let fleet = datamig::Fleet::<datamig::Postgres>::new(targets)
    ///     .configure(|m| m.runner_lock_timeout(Duration::from_secs(300)).app_version("2.14.0"));
    /// # Ok(()) }
    /// ```
    pub fn configure(
        mut self,
        configure: impl Fn(Migrator<DB>) -> Migrator<DB> + Send + Sync + 'static,
    ) -> Self {
        self.configure = Some(Arc::new(configure));
        self
    }

    /// Calls `event` when a target starts and when it ends (a CLI turns them into its
    /// progress: targets done of total, and the ones in progress).
    pub fn on_event(mut self, event: impl Fn(&FleetEvent) + Send + Sync + 'static) -> Self {
        self.events = Some(Arc::new(event));
        self
    }

    /// Once `signal` is raised, no new target starts and each running target stops at its
    /// next transaction boundary ([`Migrator::stop_on`]).
    pub fn stop_on(mut self, signal: StopSignal) -> Self {
        self.stop = Some(signal);
        self
    }

    /// The targets.
    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// Applies every pending migration on every target ([`Migrator::run`] on each), as
    /// the rollout says: [`concurrency`](Fleet::concurrency), [`canary`](Fleet::canary),
    /// [`on_failure`](Fleet::on_failure). A target ends applied, already applied, failed
    /// (its error in its report) or not reached.
    ///
    /// # Errors
    ///
    /// Only when nothing ran: [`Error::Config`] for targets of another backend than
    /// `DB`, for no targets at all, for tenant schema targets under a lease or with a
    /// ledger schema configured. What fails on a target is in its report.
    pub async fn run(&self) -> Result<FleetReport<RunReport>, Error> {
        let rollout = Rollout {
            concurrency: self.concurrency,
            canary: self.canary,
            on_failure: self.on_failure,
        };
        self.roll_out("run", rollout, Outcome::of_run, async |m| m.run().await)
            .await
    }

    /// Every migration's state on every target ([`Migrator::status`]), every target
    /// tried whatever fails.
    ///
    /// # Errors
    ///
    /// As [`Fleet::run`].
    pub async fn status(&self) -> Result<FleetReport<Vec<MigrationStatus>>, Error> {
        self.read("status", async |m| m.status().await).await
    }

    /// What is pending, drifted or unknown on every target ([`Migrator::check`]).
    ///
    /// # Errors
    ///
    /// As [`Fleet::run`].
    pub async fn check(&self) -> Result<FleetReport<CheckReport>, Error> {
        self.read("check", async |m| m.check().await).await
    }

    /// Pauses migration `id` on every target where it is not applied yet
    /// ([`Migrator::pause`]); `None` in a target's report where it is applied already.
    ///
    /// # Errors
    ///
    /// As [`Fleet::run`].
    pub async fn pause(
        &self,
        id: &str,
        reason: Option<&str>,
    ) -> Result<FleetReport<Option<Pause>>, Error> {
        self.read("pause", async |m| {
            if state_of(&m, id).await? == Some(State::Applied) {
                return Ok(None);
            }
            Ok(Some(m.pause(id, reason).await?))
        })
        .await
    }

    /// Lifts the pause of migration `id` on every target where it is paused
    /// ([`Migrator::resume`]); `None` in a target's report where it is not paused.
    ///
    /// # Errors
    ///
    /// As [`Fleet::run`].
    pub async fn resume(&self, id: &str) -> Result<FleetReport<Option<Pause>>, Error> {
        self.read("resume", async |m| {
            let statuses = m.status().await?;
            if !statuses.iter().any(|s| s.id == id && s.paused.is_some()) {
                if !m.is_ledger_only() && !statuses.iter().any(|s| s.id == id) {
                    return Err(Error::UnknownId { id: id.to_string() });
                }
                return Ok(None);
            }
            Ok(Some(m.resume(id).await?))
        })
        .await
    }

    /// Runs `work` with each target's migrator, as `run` rolls out (concurrency, canary,
    /// on failure): for what the other commands do not cover.
    ///
    /// ```no_run
    /// # async fn demo(fleet: datamig::Fleet<datamig::Postgres>) -> Result<(), datamig::Error> {
    /// let doctors = fleet.each(async |migrator| migrator.doctor().await).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Fleet::run`].
    pub async fn each<T>(
        &self,
        work: impl AsyncFn(Migrator<DB>) -> Result<T, Error>,
    ) -> Result<FleetReport<T>, Error> {
        let rollout = Rollout {
            concurrency: self.concurrency,
            canary: self.canary,
            on_failure: self.on_failure,
        };
        self.roll_out("each", rollout, |_| Outcome::Done, work)
            .await
    }

    /// A command that every target gets, whatever fails.
    async fn read<T>(
        &self,
        command: &'static str,
        work: impl AsyncFn(Migrator<DB>) -> Result<T, Error>,
    ) -> Result<FleetReport<T>, Error> {
        self.roll_out(
            command,
            Rollout::every(self.concurrency),
            |_| Outcome::Done,
            work,
        )
        .await
    }

    /// Refuses what no target could run with, before any target starts.
    fn validate(&self) -> Result<(), Error> {
        if self.targets.is_empty() {
            return Err(Error::Config(
                "the fleet has no targets: nothing to migrate".to_string(),
            ));
        }
        if let Some(target) = self.targets.iter().find(|t| t.backend() != DB::ID) {
            return Err(Error::Config(format!(
                "line {}: {} is a {} target, and this fleet migrates {} databases",
                target.line(),
                target.name(),
                target.backend(),
                DB::ID
            )));
        }
        if let Some(target) = self.targets.iter().find(|t| t.schema().is_some()) {
            if matches!(self.runner_lock, RunnerLock::Lease { .. }) {
                return Err(Error::Config(format!(
                    "line {}: {} is a tenant schema, and the lease lock is for transaction \
                     poolers, which do not keep a session's search path: connect the fleet \
                     directly (or through a pooler in session mode) with the advisory lock",
                    target.line(),
                    target.name()
                )));
            }
            if self.ledger.schema_name().is_some() {
                return Err(Error::Config(format!(
                    "line {}: {} names the schema its ledger lives in, and a ledger schema is \
                     configured too: give one or the other",
                    target.line(),
                    target.name()
                )));
            }
        }
        Ok(())
    }

    /// The migrator of `target` on `pool`: its ledger (in its schema, with a lock of its
    /// own), the configuration, the stop signal.
    fn migrator(&self, target: &Target, pool: sqlx::Pool<DB>) -> Migrator<DB> {
        let ledger = match target.schema() {
            Some(schema) => self.ledger.clone().schema(schema).lock_per_schema(),
            None => self.ledger.clone(),
        };
        let mut migrator = Migrator::new(pool)
            .ledger(ledger)
            .runner_lock(self.runner_lock);
        if let Some(configure) = &self.configure {
            migrator = configure(migrator);
        }
        if let Some(stop) = &self.stop {
            migrator = migrator.stop_on(stop.clone());
        }
        migrator
    }

    /// One target, in the span `target`: its database's pool (opened by the first of its
    /// targets), the target checked (it connects, its schema exists), then `work` on its
    /// migrator, every connection it is handed reset for it.
    async fn visit<T>(
        &self,
        target: &Target,
        pools: &Pools<DB>,
        work: &impl AsyncFn(Migrator<DB>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let result = connect::for_target(target, async {
            let pool = pools.get(target, || self.open_database(target)).await?;
            DB::check_target(&pool, target).await?;
            // The pool's sessions serve the database's other targets after this one: the
            // runner hands its connection back once it released the lock.
            let migrator = self
                .migrator(target, pool)
                .pooler_checked()
                .reuse_runner_connection();
            work(migrator).await
        })
        .await;
        pools.done(target).await;
        result
    }

    /// The pool of `target`'s database, two connections for each target that may run at
    /// once; under the advisory lock, checked for a transaction pooler (once a database,
    /// so each run skips its own check).
    async fn open_database(&self, target: &Target) -> Result<sqlx::Pool<DB>, Error> {
        let pooled = matches!(self.runner_lock, RunnerLock::Lease { .. });
        let size = u32::try_from(self.concurrency.saturating_mul(2)).unwrap_or(u32::MAX);
        let pool = DB::open_database(target, pooled, size).await?;
        if !pooled && let Err(err) = connect::no_pooler(&pool, target).await {
            pool.close().await;
            return Err(err);
        }
        Ok(pool)
    }

    /// The fleet, in the span `fleet`: the targets rolled out, each in its span `target`,
    /// and the report.
    async fn roll_out<T>(
        &self,
        command: &'static str,
        rollout: Rollout,
        outcome_of: impl Fn(&T) -> Outcome,
        work: impl AsyncFn(Migrator<DB>) -> Result<T, Error>,
    ) -> Result<FleetReport<T>, Error> {
        self.validate()?;
        let targets: Vec<&Target> = self.targets.iter().collect();
        let total = targets.len();
        let span = tracing::info_span!(
            "fleet",
            backend = DB::ID,
            command,
            targets = total,
            concurrency = rollout.concurrency,
            canary = rollout.canary,
            applied = tracing::field::Empty,
            already_applied = tracing::field::Empty,
            done = tracing::field::Empty,
            failed = tracing::field::Empty,
            not_reached = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let started = Instant::now();
        let ended = AtomicUsize::new(0);
        let pools = Pools::new(targets.iter().copied());
        let durations: Vec<AtomicUsize> = (0..total).map(|_| AtomicUsize::new(0)).collect();
        let emit = |event: FleetEvent| {
            if let Some(events) = &self.events {
                events(&event);
            }
        };
        let work = &work;
        let (results, halted) = roll(
            total,
            rollout,
            self.stop.as_ref(),
            |index| {
                let target = targets[index];
                emit(FleetEvent::Started {
                    target: target.name().to_string(),
                    index,
                    total,
                });
                let target_span = tracing::info_span!(
                    "target",
                    target = target.name(),
                    outcome = tracing::field::Empty,
                    duration_ms = tracing::field::Empty,
                );
                let durations = &durations;
                let outcome_of = &outcome_of;
                let pools = &pools;
                async move {
                    let began = Instant::now();
                    let result = self.visit(target, pools, work).instrument(target_span.clone()).await;
                    let duration_ms = crate::trace::millis(began.elapsed());
                    durations[index].store(
                        usize::try_from(duration_ms).unwrap_or(usize::MAX),
                        Ordering::Relaxed,
                    );
                    target_span.record("duration_ms", duration_ms);
                    match &result {
                        Ok(report) => {
                            let outcome = outcome_of(report).as_str();
                            target_span.record("outcome", outcome);
                            tracing::info!(parent: &target_span, outcome, duration_ms, "target finished");
                        }
                        Err(err) => {
                            target_span.record("outcome", crate::trace::outcome(err));
                            tracing::error!(parent: &target_span, error = %err, duration_ms, "target failed");
                        }
                    }
                    result
                }
            },
            |index, result| {
                let done = ended.fetch_add(1, Ordering::Relaxed) + 1;
                emit(FleetEvent::Finished {
                    target: targets[index].name().to_string(),
                    index,
                    outcome: match result {
                        Ok(report) => outcome_of(report),
                        Err(_) => Outcome::Failed,
                    },
                    error: result.as_ref().err().map(ToString::to_string),
                    done,
                    total,
                });
            },
            |index| targets[index].name().to_string(),
        )
        .instrument(span.clone())
        .await;
        pools.close_all().await;

        let report = FleetReport {
            targets: targets
                .iter()
                .zip(results)
                .zip(&durations)
                .map(|((target, result), duration)| {
                    let (outcome, report, error) = match result {
                        Some(Ok(report)) => (outcome_of(&report), Some(report), None),
                        Some(Err(err)) => (Outcome::Failed, None, Some(err)),
                        None => (Outcome::NotReached, None, None),
                    };
                    TargetReport {
                        target: target.name().to_string(),
                        line: target.line(),
                        outcome,
                        report,
                        error,
                        duration_ms: duration.load(Ordering::Relaxed) as u64,
                    }
                })
                .collect(),
            halted,
            duration_ms: crate::trace::millis(started.elapsed()),
        };
        fleet_ended(&span, &report);
        Ok(report)
    }
}

/// The state of migration `id` on a target, if it knows it.
async fn state_of<DB: FleetBackend>(
    migrator: &Migrator<DB>,
    id: &str,
) -> Result<Option<State>, Error> {
    Ok(migrator
        .status()
        .await?
        .into_iter()
        .find(|s| s.id == id)
        .map(|s| s.state))
}

/// Fills the `fleet` span's closing fields and emits its closing event.
fn fleet_ended<T>(span: &tracing::Span, report: &FleetReport<T>) {
    let count = |outcome| report.count(outcome);
    let outcome = match (&report.halted, report.is_success()) {
        (Some(Halted::Stopped), _) => "stopped",
        (_, true) => "ok",
        (_, false) => "failed",
    };
    span.record("applied", count(Outcome::Applied));
    span.record("already_applied", count(Outcome::AlreadyApplied));
    span.record("done", count(Outcome::Done));
    span.record("failed", count(Outcome::Failed));
    span.record("not_reached", count(Outcome::NotReached));
    span.record("duration_ms", report.duration_ms);
    span.record("outcome", outcome);
    let fields = (
        count(Outcome::Applied),
        count(Outcome::AlreadyApplied),
        count(Outcome::Failed),
        count(Outcome::NotReached),
    );
    if report.is_success() {
        tracing::info!(parent: span, applied = fields.0, already_applied = fields.1, duration_ms = report.duration_ms, "fleet finished");
    } else {
        tracing::error!(parent: span, applied = fields.0, already_applied = fields.1, failed = fields.2, not_reached = fields.3, duration_ms = report.duration_ms, "fleet failed");
    }
}
