//! The ledger (`datamig_ledger`: one row per applied migration) and the run history
//! (`datamig_runs`: one row per attempt), their configuration and their rows.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::sql::{check_name, quote_ident};

/// Where the ledger and the run history live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerConfig {
    schema: Option<String>,
    ledger_table: String,
    runs_table: String,
    /// Whether the runner lock's key names the schema even when it is the search path's
    /// first (a fleet's tenant schemas: see `lock_per_schema`).
    lock_per_schema: bool,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            schema: None,
            ledger_table: "datamig_ledger".to_string(),
            runs_table: "datamig_runs".to_string(),
            lock_per_schema: false,
        }
    }
}

impl LedgerConfig {
    /// Puts both tables in `schema` (created if missing) instead of the search path's first.
    /// On SQLite the schema is an attached database (`main`, `temp`, or one attached by the
    /// connection), which must exist.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Names the ledger table (default `datamig_ledger`).
    pub fn ledger_table(mut self, name: impl Into<String>) -> Self {
        self.ledger_table = name.into();
        self
    }

    /// Names the run-history table (default `datamig_runs`).
    pub fn runs_table(mut self, name: impl Into<String>) -> Self {
        self.runs_table = name.into();
        self
    }

    /// Keys the runner lock by the ledger's schema even where that schema is the search
    /// path's first. A fleet's tenant schemas in one database each run with their own
    /// schema first on the search path: without this, every tenant's ledger would take the
    /// key of the unqualified name, one lock for all of them, and the tenants of one
    /// database would wait for each other. The key is then the one a runner configured
    /// with this schema takes when another schema is first on its search path.
    pub(crate) fn lock_per_schema(mut self) -> Self {
        self.lock_per_schema = true;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if let Some(schema) = &self.schema {
            check_name("ledger schema", schema)?;
        }
        check_name("ledger table", &self.ledger_table)?;
        check_name("runs table", &self.runs_table)?;
        if self.ledger_table == self.runs_table {
            return Err(Error::Config(format!(
                "the ledger and the run history cannot both be table {:?}",
                self.ledger_table
            )));
        }
        Ok(())
    }

    pub(crate) fn schema_name(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    pub(crate) fn ledger_table_name(&self) -> &str {
        &self.ledger_table
    }

    pub(crate) fn runs_table_name(&self) -> &str {
        &self.runs_table
    }

    /// The name of the lock table of backends without advisory locks (SQLite):
    /// `<ledger table>_lock`.
    pub(crate) fn lock_table_name(&self) -> String {
        format!("{}_lock", self.ledger_table)
    }

    /// The name of the table that records the ledger's layout version:
    /// `<ledger table>_layout`.
    pub(crate) fn layout_table_name(&self) -> String {
        format!("{}_layout", self.ledger_table)
    }

    /// The name of the lease table of the lease lock (PostgreSQL, [`crate::RunnerLock::Lease`]):
    /// `<ledger table>_lease`.
    pub(crate) fn lease_table_name(&self) -> String {
        format!("{}_lease", self.ledger_table)
    }

    /// The name of the table of a batched migration's key ranges while several workers
    /// walk it (PostgreSQL, MySQL): `<ledger table>_ranges`.
    pub(crate) fn ranges_table_name(&self) -> String {
        format!("{}_ranges", self.ledger_table)
    }

    /// The ranges table's quoted, schema-qualified name.
    #[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
    pub(crate) fn ranges_ident(&self) -> String {
        self.qualify(&self.ranges_table_name())
    }

    /// The key of the advisory lock with which a worker connected directly claims range
    /// `range` of migration `id` (a session lock: it dies with the worker's session).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn range_key(&self, id: &str, range: i32) -> i64 {
        self.key_of(&format!("{}:range:{id}:{range}", self.ledger_ident()))
    }

    /// The lease table's quoted, schema-qualified name.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn lease_ident(&self) -> String {
        self.qualify(&self.lease_table_name())
    }

    /// The layout table's quoted, schema-qualified name.
    pub(crate) fn layout_ident(&self) -> String {
        self.qualify(&self.layout_table_name())
    }

    /// The lock table's quoted, schema-qualified name.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn lock_ident(&self) -> String {
        self.qualify(&self.lock_table_name())
    }

    /// The ledger's quoted, schema-qualified name.
    pub(crate) fn ledger_ident(&self) -> String {
        self.qualify(&self.ledger_table)
    }

    /// The run history's quoted, schema-qualified name.
    pub(crate) fn runs_ident(&self) -> String {
        self.qualify(&self.runs_table)
    }

    fn qualify(&self, table: &str) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(table)),
            None => quote_ident(table),
        }
    }

    /// The key of the runner lock (a PostgreSQL advisory lock) for this configuration as
    /// written: derived from the ledger's name, so that two ledgers in one database do not
    /// contend. A runner uses [`LedgerConfig::lock_key_in`], which gives the ledger in the
    /// search path's first schema one key however it is named.
    ///
    /// These values are part of datamig's contract: runners of two versions during a
    /// rolling deploy must take the same lock. Tests pin them.
    pub fn lock_key(&self) -> i64 {
        self.key_of(&self.ledger_ident())
    }

    /// The runner lock's key with the schema resolved: a ledger in `current_schema` (the
    /// search path's first, where an unqualified name lands) has the key of the
    /// unqualified name, so `schema("public")` and no schema are one lock.
    pub fn lock_key_in(&self, current_schema: &str) -> i64 {
        if self.schema.as_deref() == Some(current_schema) && !self.lock_per_schema {
            self.key_of(&quote_ident(&self.ledger_table))
        } else {
            self.lock_key()
        }
    }

    fn key_of(&self, ident: &str) -> i64 {
        let digest = Sha256::digest(format!("datamig:{ident}").as_bytes());
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&digest[..8]);
        i64::from_be_bytes(bytes)
    }
}

/// One row of the ledger: a migration that has been applied.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct LedgerEntry {
    /// The migration's id.
    pub id: String,
    /// The checksum of the code that was applied.
    pub checksum: String,
    /// The revision that was applied.
    pub revision: u32,
    /// The migration's description when it was applied.
    pub description: String,
    /// When the last application started.
    pub started_at: DateTime<Utc>,
    /// When the last application finished.
    pub finished_at: DateTime<Utc>,
    /// How long the last application took, in milliseconds.
    pub duration_ms: i64,
    /// Rows affected by the last application, as the migration reported them.
    pub rows_affected: i64,
    /// Notes recorded by the migration, one per line.
    pub notes: Option<String>,
    /// The database user that applied it.
    pub applied_by: String,
    /// The host name of the machine that applied it.
    pub host: String,
    /// The application version given by the runner, if any.
    pub app_version: Option<String>,
    /// How many times it ran (1, unless re-run).
    pub run_count: i32,
    /// `applied`, or `running` for a batched migration part-way through.
    pub status: String,
    /// For a batched migration: the last key of the last committed batch.
    pub checkpoint: Option<String>,
    /// For a batched migration: the batches committed so far.
    pub batches: i64,
}

impl LedgerEntry {
    /// Whether this is a batched migration part-way through (not applied yet).
    pub fn is_running(&self) -> bool {
        self.status == STATUS_RUNNING
    }
}

/// The layout of the ledger tables this datamig writes, recorded in `<ledger>_layout`.
///
/// 1. `datamig_ledger` and `datamig_runs` (no layout table: a ledger without one is at 1).
/// 2. The layout table itself, so that later layouts can be recognised and upgraded in place.
///
/// A newer datamig upgrades an older ledger in place on its next `run` (which needs a role
/// that may alter the tables); an older datamig refuses a newer ledger.
pub(crate) const LAYOUT: i64 = 2;

/// The columns datamig reads and writes in the ledger.
pub(crate) const LEDGER_COLUMNS: &[&str] = &[
    "id",
    "checksum",
    "revision",
    "description",
    "started_at",
    "finished_at",
    "duration_ms",
    "rows_affected",
    "notes",
    "applied_by",
    "host",
    "app_version",
    "run_count",
    "status",
    "checkpoint",
    "batches",
];

/// The columns datamig reads and writes in the run history.
pub(crate) const RUNS_COLUMNS: &[&str] = &[
    "run_id",
    "migration_id",
    "action",
    "outcome",
    "checksum",
    "revision",
    "started_at",
    "finished_at",
    "duration_ms",
    "rows_affected",
    "error",
    "reason",
    "db_user",
    "host",
    "app_version",
];

/// Ledger status of an applied migration.
pub(crate) const STATUS_APPLIED: &str = "applied";
/// Ledger status of a batched migration part-way through.
pub(crate) const STATUS_RUNNING: &str = "running";

/// The last attempt recorded in the run history for one migration.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct LastRun {
    /// The migration's id.
    pub migration_id: String,
    /// `succeeded` or `failed`.
    pub outcome: String,
    /// The error, for a failed attempt.
    pub error: Option<String>,
    /// When the attempt ended.
    pub finished_at: DateTime<Utc>,
}

/// A pause of a migration by an operator (`datamig pause`), in force until a resume; or
/// its cancellation (`datamig cancel`), in force until `run --restart`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Pause {
    /// The migration's id.
    pub migration_id: String,
    /// The database role that paused (or cancelled) it.
    pub by: String,
    /// The host it was paused (or cancelled) from.
    pub host: String,
    /// When it was paused (or cancelled).
    pub at: DateTime<Utc>,
    /// Why, if the operator said.
    pub reason: Option<String>,
}

/// One range of a batched migration's keys while several workers walk it (the rows of
/// `<ledger>_ranges`, which `status` shows): the keys after `lower` up to and including
/// `upper`, worked batch by batch by one worker at a time, its checkpoint committed with
/// each batch. The ranges of a migration are removed when its last range commits, which
/// applies the migration.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct WorkRange {
    /// The migration's id.
    pub migration_id: String,
    /// The range's number, from 0 in key order.
    pub number: i32,
    /// Its keys start after this key (as the ledger stores checkpoints); `None`: from the
    /// first key.
    pub lower: Option<String>,
    /// Its keys end with this key; `None`: up to the last key, including keys added later.
    pub upper: Option<String>,
    /// The last key of its last committed batch; `None` before its first batch.
    pub checkpoint: Option<String>,
    /// Whether every key of the range is done.
    pub done: bool,
    /// Batches committed in this range.
    pub batches: i64,
    /// Keys done in this range.
    pub keys_done: i64,
    /// Rows affected in this range, as the migration reported them.
    pub rows_affected: i64,
    /// The worker that claimed it last: `<host>/<pid>/<worker number>`.
    pub worker: Option<String>,
    /// Whether that worker holds the range now (its session is alive, or its lease has
    /// not expired).
    pub held: bool,
    /// When that worker claimed it.
    pub claimed_at: Option<DateTime<Utc>>,
    /// When its last batch committed.
    pub updated_at: Option<DateTime<Utc>>,
}

/// How a range not done stood when a worker looked: its number, its batches and when its
/// last batch committed. A worker waiting for ranges others hold compares these to tell a
/// stall from progress. (Public only to the sealed backend steps.)
pub type RangeMark = (i32, i64, Option<DateTime<Utc>>);

/// What one committed batch did to its range (see [`WorkRange`]). (Public only to the
/// sealed backend steps; not reachable from outside the crate.)
#[derive(Clone, Debug)]
#[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
pub struct RangeStep {
    /// The new checkpoint (`None`: unchanged).
    pub(crate) checkpoint: Option<String>,
    pub(crate) keys: u64,
    pub(crate) rows: u64,
    /// Whether the range has no key left.
    pub(crate) done: bool,
}

/// A worker's hold on ranges: its token, its name, and how the hold is kept. (Public only
/// to the sealed backend steps; not reachable from outside the crate.)
#[derive(Clone, Debug)]
#[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
pub struct Claim {
    /// Random, unique to this worker: written into the range it holds and checked by every
    /// batch, so a worker that lost its range (a lease expired) cannot commit into it.
    pub(crate) token: String,
    /// `<host>/<pid>/<worker number>`.
    pub(crate) worker: String,
    /// `None`: the hold is a session advisory lock, released when the worker's session
    /// ends. `Some(ttl)`: a lease in the range's row, renewed by every batch (through a
    /// transaction pooler).
    pub(crate) lease: Option<std::time::Duration>,
    /// The checksum and revision of the code this worker runs. A range belongs to the run
    /// its migration's ledger row records: a claim takes a range only while that row
    /// records the same code, so a worker of old code still joined when a re-run of new
    /// code replaced the ranges claims none of them.
    pub(crate) code: (String, u32),
}

/// Why a migration ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// First application.
    Apply,
    /// Re-run of an applied migration (its code changed and it may re-run on change).
    Rerun,
    /// Continuation of a batched migration from its checkpoint.
    Resume,
    /// Recorded as applied without running (a baseline), by an operator.
    MarkApplied,
    /// A drifted migration's new code accepted, by an operator.
    Repair,
    /// Paused by an operator: `run` skips it, a running one stops after its batch.
    Pause,
    /// A pause lifted by an operator (`datamig resume`).
    Unpause,
    /// Cancelled by an operator (`datamig cancel`): a running one stops after its batch,
    /// and `run` leaves it alone until `run --restart`.
    Cancel,
    /// A cancelled migration started again from its first key (`run --restart`).
    Restart,
}

impl Action {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Apply => "apply",
            Action::Rerun => "rerun",
            Action::Resume => "resume",
            Action::MarkApplied => "mark_applied",
            Action::Repair => "repair",
            Action::Pause => "pause",
            Action::Unpause => "unpause",
            Action::Cancel => "cancel",
            Action::Restart => "restart",
        }
    }
}

/// What the runner records about one attempt, in the ledger and the run history.
/// (Public only to the sealed backend steps; not reachable from outside the crate.)
#[derive(Clone, Debug)]
pub struct Attempt {
    /// How the ledger row is written.
    pub(crate) write: LedgerWrite,
    /// `applied` or `running`.
    pub(crate) status: &'static str,
    /// The last key done, for batched migrations.
    pub(crate) checkpoint: Option<String>,
    /// Batches committed in all, for batched migrations.
    pub(crate) batches: u64,
    /// When the ledger row's first application started (a resumed migration keeps it).
    pub(crate) first_started_at: DateTime<Utc>,
    /// Rows affected in all, over every batch and resume.
    pub(crate) total_rows: u64,
    pub(crate) id: Cow<'static, str>,
    pub(crate) checksum: Cow<'static, str>,
    pub(crate) revision: u32,
    pub(crate) description: Cow<'static, str>,
    pub(crate) action: Action,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) finished_at: DateTime<Utc>,
    pub(crate) rows_affected: u64,
    pub(crate) notes: Vec<String>,
    pub(crate) host: String,
    pub(crate) app_version: Option<String>,
    /// Why an operator did it (`mark-applied`, `repair`).
    pub(crate) reason: Option<String>,
    /// Whether the attempt stopped because an operator cancelled it (recorded with the
    /// outcome `cancelled`).
    pub(crate) cancelled: bool,
}

/// How a ledger row is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerWrite {
    /// A new row. The primary key turns a second application into an error.
    Insert,
    /// The row of an applied migration that runs again: `run_count` goes up. Only if the
    /// row is still the one the run planned from (its checksum and run count), so that two
    /// runners cannot both count a re-run.
    Rerun {
        /// The checksum the row must hold.
        checksum: String,
        /// The run count the row must hold.
        run_count: i32,
    },
    /// The next batch of a running batched migration: only if the row is still `running` at
    /// the checkpoint this runner started from, so that no batch commits twice.
    Continue {
        /// The checkpoint the row must hold.
        expected: Option<String>,
    },
    /// An applied row takes the code's checksum, revision and description (repair).
    Accept,
}

impl LedgerWrite {
    /// What the row must hold for the write to apply: the checkpoint of a `Continue`, the
    /// checksum and run count of a `Rerun`.
    #[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
    pub(crate) fn expected(&self) -> (Option<String>, Option<i32>) {
        match self {
            LedgerWrite::Continue { expected } => (expected.clone(), None),
            LedgerWrite::Rerun {
                checksum,
                run_count,
            } => (Some(checksum.clone()), Some(*run_count)),
            LedgerWrite::Insert | LedgerWrite::Accept => (None, None),
        }
    }
}

impl Attempt {
    /// This attempt's duration.
    pub(crate) fn duration_ms(&self) -> i64 {
        (self.finished_at - self.started_at).num_milliseconds()
    }

    /// The ledger row's duration: from the first application's start.
    pub(crate) fn total_duration_ms(&self) -> i64 {
        (self.finished_at - self.first_started_at).num_milliseconds()
    }

    pub(crate) fn total_rows_i64(&self) -> i64 {
        i64::try_from(self.total_rows).unwrap_or(i64::MAX)
    }

    pub(crate) fn notes_text(&self) -> Option<String> {
        (!self.notes.is_empty()).then(|| self.notes.join("\n"))
    }

    pub(crate) fn rows_i64(&self) -> i64 {
        i64::try_from(self.rows_affected).unwrap_or(i64::MAX)
    }
}
