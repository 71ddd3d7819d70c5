//! What operators do besides `run`: check for CI gates, mark a migration applied (a
//! baseline), accept a drifted migration's new code, inspect and release the runner lock,
//! and diagnose the database. Every change is audited in the run history with its reason.

use chrono::Utc;

use crate::backend::{Backend, pinned};
use crate::error::{Drift, Error};
use crate::ledger::{Action, LedgerWrite, Pause};
use crate::migration::Migration;
use crate::runner::{MigrationStatus, Migrator, State};
use crate::session::SessionInfo;

/// What `check` found; it changes nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CheckReport {
    /// Migrations not applied yet (batched ones part-way through included).
    pub pending: Vec<String>,
    /// Applied migrations whose code changed.
    pub drifted: Vec<String>,
    /// Ledger rows this build does not know.
    pub unknown: Vec<String>,
    /// Pending migrations an operator paused (also listed in `pending`).
    pub paused: Vec<String>,
}

/// What `doctor` found.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct Doctor {
    /// The server's version.
    pub server_version: String,
    /// Whether the ledger table exists.
    pub ledger_exists: bool,
    /// Why the ledger could not be read, if it could not.
    pub ledger_problem: Option<String>,
    /// Every migration's state (empty when the ledger could not be read).
    pub migrations: Vec<MigrationStatus>,
    /// The sessions holding the runner lock.
    pub lock_holders: Vec<SessionInfo>,
    /// Sessions that would block or slow a migration.
    pub blocking_sessions: Vec<SessionInfo>,
}

impl<DB: Backend> Migrator<DB> {
    /// Pending, drifted and unknown migrations, for a CI gate. Reads only.
    ///
    /// # Errors
    ///
    /// As [`Migrator::status`].
    pub async fn check(&self) -> Result<CheckReport, Error> {
        let statuses = self.status().await?;
        let ids = |states: &[State]| -> Vec<String> {
            statuses
                .iter()
                .filter(|s| states.contains(&s.state))
                .map(|s| s.id.clone())
                .collect()
        };
        Ok(CheckReport {
            pending: ids(&[
                State::Pending,
                State::Running,
                State::Paused,
                State::Cancelled,
            ]),
            drifted: ids(&[State::Drifted]),
            unknown: ids(&[State::Unknown]),
            paused: ids(&[State::Paused]),
        })
    }

    /// Records a pending migration as applied without running it (a baseline: its effect
    /// is already in the data), audited in the run history with `reason`.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownId`]; [`Error::Config`] when it is already in the ledger or the
    /// reason is empty; as [`Migrator::run`] for the lock and the database.
    pub async fn mark_applied(&self, id: &str, reason: &str) -> Result<(), Error> {
        self.needs_code("mark-applied")?;
        let migration = self.find(id)?;
        require_reason(reason)?;
        self.with_lock(async |conn| {
            let ledger = pinned::<DB, _>(conn, async |conn| {
                self.prepare_ledger(conn).await?;
                Ok(DB::read_ledger(conn, self.ledger_config()).await?)
            })
            .await?;
            if ledger.iter().any(|e| e.id == id) {
                return Err(Error::Config(format!(
                    "migration {id} is already in the ledger; nothing to mark"
                )));
            }
            let mut attempt = self.attempt(migration, Action::MarkApplied, Utc::now());
            attempt.write = LedgerWrite::Insert;
            attempt.notes = vec![format!("marked applied without running: {reason}")];
            attempt.reason = Some(reason.to_string());
            let mut tx = sqlx::Connection::begin(&mut **conn).await?;
            self.fence(&mut tx, id).await?;
            DB::write_ledger(&mut tx, self.ledger_config(), &attempt).await?;
            DB::record_run(&mut tx, self.ledger_config(), &attempt, None).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Accepts the new code of a drifted migration: the ledger takes the code's checksum and
    /// revision, without running it, audited in the run history with `reason` and the old
    /// checksum. Returns the drift that was accepted.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownId`]; [`Error::Config`] when the migration is not applied or not
    /// drifted, or the reason is empty; as [`Migrator::run`] for the lock and the database.
    pub async fn repair(&self, id: &str, reason: &str) -> Result<Drift, Error> {
        self.needs_code("repair")?;
        let migration = self.find(id)?;
        require_reason(reason)?;
        self.with_lock(async |conn| {
            let ledger = pinned::<DB, _>(conn, async |conn| {
                self.prepare_ledger(conn).await?;
                Ok(DB::read_ledger(conn, self.ledger_config()).await?)
            })
            .await?;
            let Some(entry) = ledger.into_iter().find(|e| e.id == id) else {
                return Err(Error::Config(format!(
                    "migration {id} is not applied; there is nothing to repair"
                )));
            };
            if entry.checksum == migration.checksum() && entry.revision == migration.revision() {
                return Err(Error::Config(format!(
                    "migration {id} has not drifted; there is nothing to repair"
                )));
            }
            let drift = Drift {
                id: id.to_string(),
                applied_checksum: entry.checksum,
                code_checksum: migration.checksum().to_string(),
                applied_revision: entry.revision,
                code_revision: migration.revision(),
            };
            let mut attempt = self.attempt(migration, Action::Repair, Utc::now());
            attempt.write = LedgerWrite::Accept;
            attempt.reason = Some(format!(
                "{reason} (checksum {} revision {} accepted in place of {} revision {})",
                drift.code_checksum,
                drift.code_revision,
                drift.applied_checksum,
                drift.applied_revision
            ));
            let mut tx = sqlx::Connection::begin(&mut **conn).await?;
            self.fence(&mut tx, id).await?;
            DB::write_ledger(&mut tx, self.ledger_config(), &attempt).await?;
            DB::record_run(&mut tx, self.ledger_config(), &attempt, None).await?;
            tx.commit().await?;
            Ok(drift)
        })
        .await
    }

    /// Pauses a migration that is not applied yet: a `run` in progress on any host stops
    /// it after the batch in progress commits, and every later `run` skips it (and reports
    /// it paused) until [`Migrator::resume`]. Recorded in the run history (`pause`) with
    /// who, from where, when and why. Takes no lock: it works while a runner holds it.
    /// Returns the pause in force (an earlier one, when it was paused already).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownId`]; [`Error::Config`] when it is applied already;
    /// [`Error::Database`].
    pub async fn pause(&self, id: &str, reason: Option<&str>) -> Result<Pause, Error> {
        self.mark(id, reason, Mark::Pause).await
    }

    /// Cancels a migration that is not applied yet: a `run` in progress on any host stops
    /// it after the batch in progress commits and records that attempt as `cancelled`;
    /// later runs leave it alone (and report it cancelled) until one runs with
    /// [`Migrator::restart`] (`run --restart`), which starts it again from its first key.
    /// Unlike a pause, nothing but a restart lifts it. Recorded in the run history
    /// (`cancel`) with who, from where, when and why; takes no lock. Returns the cancel in
    /// force (an earlier one, when it was cancelled already).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownId`]; [`Error::Config`] when it is applied already;
    /// [`Error::Database`].
    pub async fn cancel(&self, id: &str, reason: Option<&str>) -> Result<Pause, Error> {
        self.mark(id, reason, Mark::Cancel).await
    }

    /// Sets an operator's mark (a pause or a cancel) on a migration that is not applied
    /// yet, unless one is in force already; returns the mark in force.
    async fn mark(&self, id: &str, reason: Option<&str>, mark: Mark) -> Result<Pause, Error> {
        let (verb, past) = mark.words();
        let migration = if self.is_ledger_only() {
            None
        } else {
            Some(self.find(id)?)
        };
        if migration.is_some() {
            self.ensure_ledger_for_pause().await?;
        }
        let mut conn = self.pool().acquire().await?;
        pinned::<DB, _>(&mut conn, async |conn| {
            let ledger =
                if migration.is_some() || DB::ledger_exists(conn, self.ledger_config()).await? {
                    DB::read_ledger(conn, self.ledger_config()).await?
                } else {
                    Vec::new()
                };
            let entry = ledger.iter().find(|e| e.id == id);
            if let Some(entry) = entry
                && !entry.is_running()
            {
                return Err(Error::Config(format!(
                    "migration {id} is applied; there is nothing to {verb}"
                )));
            }
            if migration.is_none() && entry.is_none() {
                return Err(Error::Config(format!(
                    "migration {id} is not in the ledger: without the migrations' code only a \
                     migration the ledger records as part-way can be {past}; to {verb} one \
                     before it starts, use the application's own binary"
                )));
            }
            if let Some(mark) = mark
                .in_force::<DB>(conn, self.ledger_config(), id)
                .await?
                .pop()
            {
                return Ok(mark);
            }
            let mut attempt = match migration {
                Some(migration) => self.attempt(migration, mark.action(), Utc::now()),
                None => self.attempt_for(id, entry, mark.action()),
            };
            attempt.reason = reason.map(str::to_string);
            DB::record_run(conn, self.ledger_config(), &attempt, None).await?;
            mark.in_force::<DB>(conn, self.ledger_config(), id)
                .await?
                .pop()
                .ok_or_else(|| {
                    Error::Runtime(format!(
                        "the {verb} of {id} was written but does not read back; run `datamig \
                         status` to see whether {id} is {past}, and {verb} it again if not"
                    ))
                })
        })
        .await
    }

    /// Lifts the pause of a migration: the next `run` continues it from its checkpoint.
    /// Recorded in the run history (`unpause`) with who, from where and when. Returns the
    /// pause it lifted.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownId`]; [`Error::Config`] when it is not paused; [`Error::Database`].
    pub async fn resume(&self, id: &str) -> Result<Pause, Error> {
        let migration = if self.is_ledger_only() {
            None
        } else {
            Some(self.find(id)?)
        };
        let mut conn = self.pool().acquire().await?;
        pinned::<DB, _>(&mut conn, async |conn| {
            let (paused, entry) = if DB::ledger_exists(conn, self.ledger_config()).await? {
                let pause = DB::pause_state(conn, self.ledger_config(), Some(id))
                    .await?
                    .pop();
                let entry = DB::read_ledger(conn, self.ledger_config())
                    .await?
                    .into_iter()
                    .find(|e| e.id == id);
                (pause, entry)
            } else {
                (None, None)
            };
            let Some(pause) = paused else {
                return Err(Error::Config(format!(
                    "migration {id} is not paused; there is nothing to resume"
                )));
            };
            let mut attempt = match migration {
                Some(migration) => self.attempt(migration, Action::Unpause, Utc::now()),
                None => self.attempt_for(id, entry.as_ref(), Action::Unpause),
            };
            attempt.reason = Some(format!(
                "lifts the pause by {} from {} at {}",
                pause.by,
                pause.host,
                pause.at.to_rfc3339()
            ));
            DB::record_run(conn, self.ledger_config(), &attempt, None).await?;
            Ok(pause)
        })
        .await
    }

    /// Creates the ledger for a pause before any run did (under the runner lock, as a run
    /// would).
    async fn ensure_ledger_for_pause(&self) -> Result<(), Error> {
        let mut conn = self.pool().acquire().await?;
        let exists = pinned::<DB, _>(&mut conn, async |conn| {
            Ok(DB::ledger_exists(conn, self.ledger_config()).await?)
        })
        .await?;
        drop(conn);
        if !exists {
            self.with_lock(async |conn| {
                pinned::<DB, _>(conn, async |conn| self.prepare_ledger(conn).await).await
            })
            .await?;
        }
        Ok(())
    }

    /// The sessions holding the runner lock (none when no runner is active).
    ///
    /// # Errors
    ///
    /// [`Error::Database`].
    pub async fn lock_holders(&self) -> Result<Vec<SessionInfo>, Error> {
        let mut conn = self.pool().acquire().await?;
        pinned::<DB, _>(&mut conn, async |c| {
            Ok(DB::lock_holders(c, self.ledger_config()).await?)
        })
        .await
    }

    /// Takes the runner lock from holder `pid` if, and only if, it holds it. On PostgreSQL
    /// the session ends: its transaction rolls back and the lock is released. On SQLite the
    /// holder's lock row is removed (a holder's transaction dies with its process).
    /// Deciding that its runner is gone is the caller's job (see `datamig unlock`). Returns
    /// whether a holder was removed.
    ///
    /// # Errors
    ///
    /// [`Error::Database`], for instance without the privilege to end that session.
    pub async fn terminate_lock_holder(&self, pid: i32) -> Result<bool, Error> {
        let holders = self.lock_holders().await?;
        if !holders.iter().any(|h| h.pid == pid) {
            return Ok(false);
        }
        let mut conn = self.pool().acquire().await?;
        pinned::<DB, _>(&mut conn, async |c| {
            Ok(DB::release_lock_holder(c, self.ledger_config(), pid).await?)
        })
        .await
    }

    /// Can it connect; is the ledger readable; who holds the runner lock; which sessions
    /// would block a migration.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the server cannot be queried at all.
    pub async fn doctor(&self) -> Result<Doctor, Error> {
        let mut conn = self.pool().acquire().await?;
        let (server_version, ledger_exists, lock_holders, blocking_sessions) =
            pinned::<DB, _>(&mut conn, async |conn| {
                Ok((
                    DB::server_version(conn).await?,
                    DB::ledger_exists(conn, self.ledger_config()).await?,
                    DB::lock_holders(conn, self.ledger_config()).await?,
                    DB::blocking_sessions(conn).await?,
                ))
            })
            .await?;
        drop(conn);
        let (migrations, ledger_problem) = match self.status().await {
            Ok(statuses) => (statuses, None),
            Err(err) => (Vec::new(), Some(err.to_string())),
        };
        Ok(Doctor {
            server_version,
            ledger_exists,
            ledger_problem,
            migrations,
            lock_holders,
            blocking_sessions,
        })
    }

    /// An attempt of a ledger-only migrator, which has no code: the checksum, revision and
    /// description come from the ledger row (empty before the migration started).
    fn attempt_for(
        &self,
        id: &str,
        entry: Option<&crate::ledger::LedgerEntry>,
        action: Action,
    ) -> crate::ledger::Attempt {
        let now = Utc::now();
        crate::ledger::Attempt {
            write: LedgerWrite::Insert,
            status: crate::ledger::STATUS_APPLIED,
            checkpoint: None,
            batches: 0,
            first_started_at: now,
            total_rows: 0,
            id: id.to_string().into(),
            checksum: entry.map(|e| e.checksum.clone()).unwrap_or_default().into(),
            revision: entry.map_or(0, |e| e.revision),
            description: entry
                .map(|e| e.description.clone())
                .unwrap_or_default()
                .into(),
            action,
            started_at: now,
            finished_at: now,
            rows_affected: 0,
            notes: Vec::new(),
            host: crate::session::host_name(),
            app_version: self.app_version.clone(),
            reason: None,
            cancelled: false,
        }
    }

    fn find(&self, id: &str) -> Result<&'static Migration, Error> {
        self.load()?
            .into_iter()
            .find(|m| m.id() == id)
            .ok_or_else(|| Error::UnknownId { id: id.to_string() })
    }
}

fn require_reason(reason: &str) -> Result<(), Error> {
    if reason.trim().is_empty() {
        return Err(Error::Config(
            "a reason is required: it is recorded in the run history".to_string(),
        ));
    }
    Ok(())
}

/// An operator's mark on a migration, kept in the run history.
#[derive(Clone, Copy)]
enum Mark {
    Pause,
    Cancel,
}

impl Mark {
    /// The verb and its past participle, for messages.
    fn words(self) -> (&'static str, &'static str) {
        match self {
            Mark::Pause => ("pause", "paused"),
            Mark::Cancel => ("cancel", "cancelled"),
        }
    }

    fn action(self) -> Action {
        match self {
            Mark::Pause => Action::Pause,
            Mark::Cancel => Action::Cancel,
        }
    }

    /// The marks of this kind in force on migration `id`.
    async fn in_force<DB: Backend>(
        self,
        conn: &mut DB::Connection,
        ledger: &crate::ledger::LedgerConfig,
        id: &str,
    ) -> Result<Vec<Pause>, sqlx::Error> {
        match self {
            Mark::Pause => DB::pause_state(conn, ledger, Some(id)).await,
            Mark::Cancel => DB::cancel_state(conn, ledger, Some(id)).await,
        }
    }
}
