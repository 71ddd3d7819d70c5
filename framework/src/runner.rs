//! The runner: the database-independent algorithm of `run` and `status`.
//!
//! One `run`: take the runner lock (polling a try-lock until the timeout), create the ledger
//! if missing, read it, stop on drift, then apply each pending migration in its own
//! transaction together with its ledger row, in id order, and release the lock.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::FutureExt;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, Pool};

use crate::backend::Backend;
use crate::ctx::Ctx;
use crate::error::{Drift, Error, describe_chain, describe_sqlx};
use crate::ledger::{Action, Attempt, LastRun, LedgerConfig, LedgerEntry};
use crate::migration::{Migration, MigrationFn};
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
#[derive(Debug)]
pub struct Migrator<DB: Backend> {
    pool: Pool<DB>,
    source: Option<Vec<&'static Migration>>,
    ledger: LedgerConfig,
    runner_lock_timeout: Duration,
    lock_timeout: Option<Duration>,
    statement_timeout: Option<Duration>,
    app_version: Option<String>,
    dry_run: bool,
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
        }
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
    /// fails instead of stalling the application behind it.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = Some(timeout);
        self
    }

    /// The database's `statement_timeout` inside each migration's transaction, unless the
    /// migration sets its own.
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
    /// tables themselves are created if missing.)
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
        self.ledger.validate()?;
        let migrations = self.load()?;
        let code: Vec<(&'static Migration, MigrationFn<DB>)> = migrations
            .iter()
            .map(|m| match DB::migration_fn(m) {
                Some(f) => Ok((*m, f)),
                None => Err(Error::UnsupportedBackend {
                    id: m.id().to_string(),
                    backend: DB::ID,
                    available: m.backends().join(", "),
                }),
            })
            .collect::<Result<_, _>>()?;

        let mut conn = self.pool.acquire().await?;
        // The lock belongs to this session. Should this future be dropped half-way (a timeout,
        // Ctrl-C), the connection is closed rather than returned to the pool still holding it.
        conn.close_on_drop();
        let key = self.ledger.lock_key();
        self.acquire_lock(&mut conn, key).await?;
        let report = self.run_locked(&mut conn, &code).await;
        // Closing the connection releases the lock too; unlocking explicitly is just prompt.
        let _ = DB::unlock(&mut conn, key).await;
        report
    }

    async fn acquire_lock(&self, conn: &mut PoolConnection<DB>, key: i64) -> Result<(), Error> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(25);
        loop {
            if DB::try_lock(conn, key).await? {
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
        code: &[(&'static Migration, MigrationFn<DB>)],
    ) -> Result<RunReport, Error> {
        // Created under the lock: concurrent `CREATE TABLE IF NOT EXISTS` can still collide.
        DB::ensure_ledger(conn, &self.ledger).await?;
        let ledger = DB::read_ledger(conn, &self.ledger).await?;
        let plan = Plan::new(code.iter().map(|(m, _)| *m), ledger);
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
            let action = match plan.actions.get(migration.id()) {
                Some(action) => *action,
                None => {
                    report.already_applied.push(migration.id().to_string());
                    continue;
                }
            };
            match self.apply(conn, migration, *run, action).await {
                Ok(applied) => report.applied.push(applied),
                Err(Failure::Migration { message, panicked }) => {
                    return Err(Error::MigrationFailed {
                        id: migration.id().to_string(),
                        message,
                        panicked,
                        applied_before: report.applied.into_iter().map(|a| a.id).collect(),
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
        action: Action,
    ) -> Result<AppliedMigration, Failure> {
        let started_at = Utc::now();
        let clock = Instant::now();
        let mut tx = conn.begin().await.map_err(Failure::db)?;
        DB::set_local_timeouts(
            &mut tx,
            migration.lock_timeout().or(self.lock_timeout),
            migration.statement_timeout().or(self.statement_timeout),
        )
        .await
        .map_err(Failure::db)?;

        let mut ctx = Ctx::new(&mut *tx, migration.id(), self.dry_run);
        let outcome = AssertUnwindSafe(run(&mut ctx)).catch_unwind().await;
        let rows_affected = ctx.rows_affected();
        let notes = ctx.notes().to_vec();
        let mut attempt = Attempt {
            id: migration.id(),
            checksum: migration.checksum(),
            revision: migration.revision(),
            description: migration.description(),
            action,
            started_at,
            finished_at: Utc::now(),
            rows_affected,
            notes,
            host: host_name(),
            app_version: self.app_version.clone(),
        };

        let failure = match outcome {
            Ok(Ok(())) if self.dry_run => {
                tx.rollback().await.map_err(Failure::db)?;
                return Ok(AppliedMigration::new(&attempt, clock.elapsed(), action));
            }
            Ok(Ok(())) => {
                // The ledger row is written in the migration's own transaction: the effects
                // and the record that they happened commit together or not at all. With the
                // ledger written afterwards, a crash between the two commits would leave the
                // migration applied but unrecorded, and the next run would apply it again
                // (the bug sqlx fixed by moving its ledger insert into the transaction).
                // The ledger's primary key on `id` also turns a second application into a
                // unique violation, should anything ever get past the runner lock.
                let recorded = match DB::record_applied(&mut tx, &self.ledger, &attempt).await {
                    Ok(()) => DB::record_run(&mut tx, &self.ledger, &attempt, None).await,
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
            Ok(Err(err)) => {
                let _ = tx.rollback().await;
                Failure::Migration {
                    message: describe_chain(&err),
                    panicked: false,
                }
            }
            Err(panic) => {
                let _ = tx.rollback().await;
                Failure::Migration {
                    message: panic_message(panic.as_ref()),
                    panicked: true,
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
    actions: BTreeMap<&'static str, Action>,
    drifted: Vec<Drift>,
    unknown: Vec<String>,
}

impl Plan {
    fn new(migrations: impl Iterator<Item = &'static Migration>, ledger: Vec<LedgerEntry>) -> Self {
        let mut entries: BTreeMap<String, LedgerEntry> =
            ledger.into_iter().map(|e| (e.id.clone(), e)).collect();
        let mut plan = Plan {
            actions: BTreeMap::new(),
            drifted: Vec::new(),
            unknown: Vec::new(),
        };
        let mut known = BTreeSet::new();
        for m in migrations {
            known.insert(m.id());
            match entries.remove(m.id()) {
                None => {
                    plan.actions.insert(m.id(), Action::Apply);
                }
                Some(e) if e.checksum != m.checksum() || e.revision != m.revision() => {
                    if m.reruns_on_change() {
                        plan.actions.insert(m.id(), Action::Rerun);
                    } else {
                        plan.drifted.push(Drift {
                            id: e.id,
                            applied_checksum: e.checksum,
                            code_checksum: m.checksum().to_string(),
                            applied_revision: e.revision,
                            code_revision: m.revision(),
                        });
                    }
                }
                Some(_) => {}
            }
        }
        // A row no registered migration has was written by another build (often a newer
        // release): it is reported, never deleted.
        plan.unknown = entries.into_keys().collect();
        plan
    }
}

enum Failure {
    /// The migration itself failed (or could not be recorded): reported by id.
    Migration { message: String, panicked: bool },
    /// The runner could not do its part.
    Other(Error),
}

impl Failure {
    fn db(err: sqlx::Error) -> Self {
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

fn host_name() -> String {
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
}

impl AppliedMigration {
    fn new(attempt: &Attempt, elapsed: Duration, action: Action) -> Self {
        AppliedMigration {
            id: attempt.id.to_string(),
            rerun: action == Action::Rerun,
            rows_affected: attempt.rows_affected,
            duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            notes: attempt.notes.clone(),
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
