//! What a run reports: progress events, the run's report, and each migration's status.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Migrator;
use crate::backend::{Backend, pinned};
use crate::error::Error;
use crate::ledger::{Action, Attempt, LastRun, LedgerEntry};

/// How far a batched migration has come: sent after every committed batch, and while the
/// runner waits on a health check (then with its `waiting` field set).
#[derive(Clone, Debug, Default, serde::Serialize)]
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
    /// An estimate of the keys this run walks in all (the rows of the scope after the
    /// checkpoint it started from): the planner's on PostgreSQL, a count on SQLite.
    pub estimated_total: Option<u64>,
    /// Keys processed per second by this run.
    pub keys_per_second: f64,
    /// The time left at this rate, in seconds, when the total is known.
    pub seconds_left: Option<f64>,
    /// The last key done, as people read it (`41200`, `(7, 'a0ee..')`); in JSON, a number
    /// for an integer key.
    #[serde(serialize_with = "checkpoint_json")]
    pub checkpoint: Option<String>,
    /// Keys in the batch just committed.
    pub batch_keys: u64,
    /// The size that batch was asked for.
    pub batch_size: u32,
    /// How long that batch took, in milliseconds.
    pub batch_ms: u64,
    /// The target duration of a batch, in milliseconds, when the size adapts.
    pub target_ms: Option<u64>,
    /// The size of the next batch.
    pub next_size: u32,
    /// Why the runner waits before the next batch (a health check's reason); `None` after
    /// a batch.
    pub waiting: Option<String>,
    /// Workers of this process walking the migration (1 without workers). With several,
    /// the counts and rates are their sums, and `checkpoint` is the last key of the batch
    /// just committed, in its worker's range.
    pub workers: u32,
    /// What the pacing does before the next batch and why ("full speed: no other session
    /// active", "pausing 12 ms: 3 application sessions active"); `None` where the
    /// migration sets its batches by hand (or `pace = false`).
    pub pacing: Option<String>,
    /// How long the runner pauses before the next batch, in milliseconds (the pacing's
    /// pause; 0 at full speed).
    pub pause_ms: u64,
}

/// A checkpoint in JSON: a number when it is one (an integer key), otherwise its text.
fn checkpoint_json<S: serde::Serializer>(
    checkpoint: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match checkpoint.as_deref().map(|c| (c, c.parse::<i64>())) {
        Some((_, Ok(n))) => serializer.serialize_i64(n),
        Some((text, Err(_))) => serializer.serialize_str(text),
        None => serializer.serialize_none(),
    }
}

impl Progress {
    pub(super) fn waiting(id: &str, why: String) -> Self {
        Progress {
            id: id.to_string(),
            waiting: Some(why),
            ..Progress::default()
        }
    }
}

impl<DB: Backend> Migrator<DB> {
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
        let (ledger, last_runs, pauses, cancels, ranges) =
            pinned::<DB, _>(&mut conn, async |conn| {
                self.ledger_layout(conn).await?;
                Ok(if DB::ledger_exists(conn, &self.ledger).await? {
                    (
                        DB::read_ledger(conn, &self.ledger).await?,
                        DB::last_runs(conn, &self.ledger).await?,
                        DB::pause_state(conn, &self.ledger, None).await?,
                        DB::cancel_state(conn, &self.ledger, None).await?,
                        DB::read_ranges(conn, &self.ledger, None).await?,
                    )
                } else {
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new())
                })
            })
            .await?;
        let mut ranges_of: BTreeMap<String, Vec<crate::ledger::WorkRange>> = BTreeMap::new();
        for range in ranges {
            ranges_of
                .entry(range.migration_id.clone())
                .or_default()
                .push(range);
        }
        let mut pauses: BTreeMap<String, crate::ledger::Pause> = pauses
            .into_iter()
            .map(|p| (p.migration_id.clone(), p))
            .collect();
        let mut cancels: BTreeMap<String, crate::ledger::Pause> = cancels
            .into_iter()
            .map(|c| (c.migration_id.clone(), c))
            .collect();
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
                    None if DB::code(m).is_none() => State::NotForBackend,
                    None => State::Pending,
                    Some(e) if e.checksum != m.checksum() || e.revision != m.revision() => {
                        State::Drifted
                    }
                    Some(e) if e.is_running() => State::Running,
                    Some(_) => State::Applied,
                };
                let paused = pauses.remove(m.id());
                let cancelled = cancels.remove(m.id());
                let state = match (state, &paused, &cancelled) {
                    (State::Pending | State::Running, _, Some(_)) => State::Cancelled,
                    (State::Pending | State::Running, Some(_), None) => State::Paused,
                    (state, _, _) => state,
                };
                MigrationStatus {
                    id: m.id().to_string(),
                    description: m.description().to_string(),
                    state,
                    ledger: entry,
                    last_run: last_runs.remove(m.id()),
                    paused,
                    cancelled,
                    ranges: ranges_of.remove(m.id()).unwrap_or_default(),
                }
            })
            .collect();
        // Without the code (a ledger-only migrator), a row's state is what the ledger
        // records; with it, a row no migration has is unknown to this build.
        let ledger_only = self.ledger_only;
        statuses.extend(entries.into_values().map(|entry| {
            let paused = pauses.remove(&entry.id);
            let cancelled = cancels.remove(&entry.id);
            let state = match (ledger_only, cancelled.is_some(), paused.is_some()) {
                (false, _, _) => State::Unknown,
                (true, true, _) => State::Cancelled,
                (true, false, true) => State::Paused,
                (true, false, false) if entry.is_running() => State::Running,
                (true, false, false) => State::Applied,
            };
            MigrationStatus {
                id: entry.id.clone(),
                description: entry.description.clone(),
                state,
                last_run: last_runs.remove(&entry.id),
                paused,
                cancelled,
                ranges: ranges_of.remove(&entry.id).unwrap_or_default(),
                ledger: Some(entry),
            }
        }));
        if ledger_only {
            // Paused before they started: in the run history only.
            statuses.extend(pauses.into_values().map(|pause| MigrationStatus {
                id: pause.migration_id.clone(),
                description: String::new(),
                state: State::Paused,
                ledger: None,
                last_run: last_runs.remove(&pause.migration_id),
                paused: Some(pause),
                cancelled: None,
                ranges: Vec::new(),
            }));
        }
        statuses.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(statuses)
    }
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
    /// Pending migrations with no code for the connected backend (written for another
    /// one): skipped.
    pub not_for_backend: Vec<String>,
    /// Migrations an operator paused (`datamig pause`): skipped, or stopped after the batch
    /// in progress committed. `datamig resume` lets the next run go on.
    pub paused: Vec<crate::ledger::Pause>,
    /// Migrations an operator cancelled (`datamig cancel`): stopped by this run after the
    /// batch in progress committed, or skipped. Not applied: `run --restart` starts them
    /// again from their first key.
    pub cancelled: Vec<crate::ledger::Pause>,
    /// Things the operator should know that did not stop the run (a crate of migrations
    /// that is probably not linked).
    pub warnings: Vec<String>,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Batched migrations another runner was walking with workers, which this run joined
    /// while it waited for the runner lock: what this run's workers did in each.
    pub joined: Vec<AppliedMigration>,
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
    /// For a re-run: the rows it wrote (inserted, updated, deleted), as the database
    /// counted them, including rows rewritten with equal values. `None` for a first run.
    pub rows_written: Option<u64>,
    /// Workers of this process that walked it (1 without workers; 0 for a migration that
    /// runs in one transaction).
    pub workers: u32,
    /// Time this run spent pausing for other sessions of the database (the pacing), in
    /// milliseconds.
    pub paced_ms: u64,
    /// In a dry run of a batched migration: the keys its walk would visit (the planner's
    /// estimate on PostgreSQL, a count on SQLite).
    pub estimated_keys: Option<u64>,
    /// In a dry run of a batched migration: how long the whole walk would take on this
    /// database now, in milliseconds, at the rate of the batches it ran (and rolled back),
    /// pauses included.
    pub estimated_ms: Option<u64>,
}

impl AppliedMigration {
    pub(super) fn new(attempt: &Attempt, elapsed: Duration, action: Action) -> Self {
        AppliedMigration {
            id: attempt.id.to_string(),
            rerun: action == Action::Rerun,
            rows_affected: attempt.rows_affected,
            duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            notes: attempt.notes.clone(),
            batches: 0,
            lock_retries: 0,
            rows_written: None,
            workers: 0,
            paced_ms: 0,
            estimated_keys: None,
            estimated_ms: None,
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
    /// Not applied, and it has no code for the connected backend (it was written for
    /// another one): `run` skips it.
    NotForBackend,
    /// Not applied (pending, or part-way through), and paused by an operator: `run` skips
    /// it until `datamig resume`.
    Paused,
    /// Not applied, and cancelled by an operator (`datamig cancel`): `run` leaves it alone
    /// until `run --restart` starts it again from its first key.
    Cancelled,
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
    /// The pause in force, if an operator paused it.
    pub paused: Option<crate::ledger::Pause>,
    /// The cancellation in force, if an operator cancelled it (`datamig cancel`).
    pub cancelled: Option<crate::ledger::Pause>,
    /// For a batched migration part-way through with workers: its ranges of keys, each
    /// with the worker that holds (or last held) it and how far it has come. Empty
    /// otherwise.
    pub ranges: Vec<crate::ledger::WorkRange>,
}
