//! `datamig copy`: the rows of one PostgreSQL database into another whose schema already
//! exists, data only, resumable and verified.
//!
//! ```no_run
//! # async fn example(source: sqlx::PgPool, target: sqlx::PgPool) -> Result<(), datamig::Error> {
//! use datamig::copy::{Copier, CopyMode};
//!
//! let report = Copier::new(&source, &target)
//!     .exclude(["audit_log"])
//!     .mode(CopyMode::Empty)
//!     .jobs(2)
//!     .verify(true)
//!     .run()
//!     .await?;
//! println!("{} rows in {:.1} s", report.rows, report.seconds);
//! # Ok(()) }
//! ```
//!
//! What a run does, in order:
//!
//! 1. **Plan**, before any row moves ([`Copier::plan`] stops here and writes nothing): the
//!    tables of the source (schema tools' and datamig's bookkeeping tables left out unless
//!    named), each matched by schema and name in the target, columns by name; a source
//!    column the target lacks, a target column the source lacks that is `NOT NULL` without a
//!    default, types that differ (other than a lossless widening such as `integer` into
//!    `bigint`), a missing privilege, a cycle of foreign keys that cannot be loaded: each is
//!    named, and nothing is written. Generated columns are never written. Tables load
//!    parents first by the target's foreign keys; a table that references itself loads in
//!    one statement (its references are checked when all its rows are in); tables in a
//!    cycle of `DEFERRABLE` keys load together in one transaction with the constraints
//!    deferred. Where the role may and no table has triggers of its own
//!    ([`Triggers::Auto`]), the load runs in `session_replication_role = replica` (no
//!    row-by-row foreign-key checks by the server) and the copy checks each foreign key
//!    itself, set-based over each chunk before it commits; [`Triggers::Off`] does so
//!    whatever the triggers, [`Triggers::On`] never.
//! 2. **Refuse a target that holds rows** this copy did not write ([`CopyMode::Empty`], the
//!    default), naming the tables; [`CopyMode::Merge`] inserts missing rows and updates
//!    changed ones by primary key (never deletes); [`CopyMode::DangerouslyTruncate`]
//!    empties the selected target tables first.
//! 3. **Copy** from one snapshot of the source, exported by the first connection and shared
//!    by every worker (`--jobs`), so rows related by foreign keys agree while the source
//!    takes writes. Each table is split in key ranges of its primary key (chunks of about
//!    [`Copier::chunk_rows`] rows); each chunk streams `COPY .. TO STDOUT` from the source
//!    into `COPY .. FROM STDIN` on the target, without parsing a row, and commits in one
//!    transaction with its row in the target's `datamig_copy_progress` table. A worker
//!    free for the next chunk takes one of a table no other worker is loading where one is
//!    ready (parents loaded), then the chunks of a shared table in key order: two loads
//!    into one table contend for its indexes' pages, and only one of them can append at
//!    the right edge of each B-tree. A copy killed
//!    at any instant keeps the chunks that committed and nothing of the others; the same
//!    command run again copies only the chunks left, and a finished copy run again copies
//!    nothing and says so.
//! 4. **Afterwards**: the sequences of serial and identity columns are set past the copied
//!    values (the source's position or the highest value copied, never moved backwards);
//!    every table that received rows is analyzed; with [`Copier::verify`] both sides are
//!    fingerprinted, table by table (row count and a SHA-256 of the copied columns in key
//!    order), and the differences returned.
//!
//! **What a resumed run reads.** A run reads one snapshot; a resumed run takes a new one,
//! so the chunks it copies show the source as it is then, while the chunks committed
//! before show it as it was. For an exact copy of a source that takes writes, copy while it
//! runs, then stop the writes for a short window and run the same copy with
//! [`CopyMode::Merge`]: it reads a fresh snapshot and inserts or updates every row that
//! changed (rows deleted from the source stay in the target), then `--verify` proves the
//! two equal.
//!
//! Both sides need direct connections (not a transaction pooler): the snapshot is shared
//! through `pg_export_snapshot()`, which lives in one server session.
//!
//! # From SQLite
//!
//! [`Copier::from_sqlite`] reads a SQLite file instead, with everything above, and converts
//! each value by its **target column's type**, checked and never guessed: integers into
//! `smallint`/`integer`/`bigint` (range-checked) and, as `0`/`1`, into `boolean`; text into
//! `text`/`varchar(n)`/`char(n)` (length-checked), `uuid` (or 16-byte blobs), `json`/`jsonb`
//! (parsed), `numeric(p,s)` (never rounded), `date`/`time`/`timestamp`/`timestamptz` (ISO
//! 8601; UTC without an offset; integers only with [`Copier::unix_time`]); reals into
//! `real`/`double precision`/`numeric`; blobs into `bytea`; `NULL` stays `NULL`. Any other
//! target type is refused by the plan. [`Copier::plan`] reads every row and lists each value
//! that would not convert ([`CopyPlan::unconvertible`]); a copy stops at the first, with
//! [`Error::CopyUnconvertible`] naming table, key, column, value and type, keeping the
//! chunks before it. Tables match by name in the target's first schema. Its readers start
//! their read transactions while the copy holds the file's write lock, so they all read
//! one state of it. datamig's ledger comes along ([`Copier::ledger`]), so migrations
//! applied on SQLite count as applied on PostgreSQL. [`Copier::verify`] and
//! [`Copier::compare`] convert the SQLite rows the same way into temporary tables on the
//! target and compare them row by row, naming the first rows that differ.

mod catalog;
mod convert;
mod load;
mod plan;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool};

pub use convert::UnixTime;
pub use plan::{BOOKKEEPING_TABLES, ColumnAction, ColumnPlan, TablePlan};

use crate::error::Error;
pub use crate::error::UnconvertibleValue;
use crate::fingerprint::{Fingerprint, TableDifference};

/// How a copy treats target tables that already hold rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum CopyMode {
    /// The default: a target table holding rows this copy did not write is refused (by
    /// name), and nothing is written.
    #[default]
    Empty,
    /// Rows missing from the target are inserted and rows that differ are updated, by
    /// primary key; nothing is deleted. Each merge is a pass over every row; an interrupted
    /// pass resumes where it stopped.
    Merge,
    /// Every selected target table is emptied (`TRUNCATE`, in one transaction with the reset
    /// of this copy's progress) before the copy starts. Rows in the target are lost.
    DangerouslyTruncate,
}

impl CopyMode {
    /// The CLI's name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            CopyMode::Empty => "empty",
            CopyMode::Merge => "merge",
            CopyMode::DangerouslyTruncate => "dangerously-truncate",
        }
    }

    pub(crate) fn option(self) -> String {
        format!("--mode {}", self.name())
    }
}

/// Which tables a copy selects.
#[derive(Clone, Debug, Default)]
pub(crate) struct Selection {
    pub(crate) tables: Vec<String>,
    pub(crate) exclude: Vec<String>,
    /// datamig's own ledger comes along (a copy from SQLite).
    pub(crate) ledger: bool,
}

/// What a copy reports as it goes, to [`Copier::on_event`].
#[derive(Clone, Debug, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CopyEvent {
    /// The plan is checked and the chunks are known; rows are about to move.
    Planned {
        /// The plan.
        plan: CopyPlan,
    },
    /// Rows of a table arrived in the target (not yet committed).
    Progress {
        /// `schema.table`.
        table: String,
        /// Rows of the table copied so far, including chunks committed by earlier runs.
        rows: u64,
        /// Bytes of `COPY` data of the table streamed by this run.
        bytes: u64,
        /// The source's estimate of the table's rows.
        estimated_rows: u64,
        /// Rows of every table copied so far.
        total_rows: u64,
        /// Bytes streamed by this run, all tables.
        total_bytes: u64,
        /// The estimate of every table's rows.
        total_estimated_rows: u64,
    },
    /// A chunk committed with its progress row.
    ChunkCopied {
        /// `schema.table`.
        table: String,
        /// Its number (from 1).
        chunk: usize,
        /// The table's chunks.
        chunks: usize,
        /// Rows it wrote (merge: rows read from the source).
        rows: u64,
        /// Bytes of `COPY` data.
        bytes: u64,
        /// How long it took.
        ms: u64,
    },
    /// Every chunk of a table is committed.
    TableCopied {
        /// `schema.table`.
        table: String,
        /// Rows of the table copied by this run.
        rows: u64,
    },
    /// A sequence was moved forward.
    SequenceSet(SequenceSet),
    /// A table was analyzed.
    Analyzed {
        /// `schema.table`.
        table: String,
    },
}

/// The checked plan of a copy.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct CopyPlan {
    /// The name the copy goes by in the target's progress table (the source's database
    /// name and, where readable, its cluster's system identifier; `merge` passes add
    /// ` merge`).
    pub copy: String,
    /// How target rows are treated.
    pub mode: CopyMode,
    /// The tables in load order.
    pub tables: Vec<TablePlan>,
    /// Bookkeeping tables of schema tools and extensions' tables, left out (name them in
    /// `tables` to copy them).
    pub left_out: Vec<String>,
    /// Whether an earlier run of this copy committed chunks this run keeps.
    pub resumed: bool,
    /// The source is a SQLite database: its values are converted column by column.
    pub from_sqlite: bool,
    /// The load runs with the target's triggers off (`session_replication_role =
    /// replica`) and the copy checks every foreign key itself, set-based over each chunk;
    /// otherwise the server checks them row by row. See [`Triggers`].
    pub triggers_off: bool,
    /// Values of a SQLite source that would not convert: [`Copier::plan`] reads every row
    /// and lists the first 1,000 here ([`CopyPlan::unconvertible_total`] counts them all).
    pub unconvertible: Vec<UnconvertibleValue>,
    /// How many values would not convert.
    pub unconvertible_total: u64,
}

/// A row that differs between the two sides of a verification or comparison.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RowDifference {
    /// `schema.table`.
    pub table: String,
    /// The row's key (`id = 42`); for a table without a primary key, the row itself.
    pub key: String,
    /// `only in the source`, `only in the target`, or `differs`.
    pub difference: String,
}

/// A sequence moved forward after the copy.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SequenceSet {
    /// The sequence, schema-qualified.
    pub sequence: String,
    /// `schema.table` of the column it serves.
    pub table: String,
    /// The column.
    pub column: String,
    /// Its last value before (`None`: never used).
    pub from: Option<i64>,
    /// Its last value now: the next value it gives is after this one.
    pub to: i64,
}

/// What a copy did to one table.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct TableReport {
    /// `schema.table`.
    pub table: String,
    /// Rows this run wrote (merge: rows read from the source).
    pub rows: u64,
    /// Rows a merge inserted.
    pub inserted: u64,
    /// Rows a merge updated.
    pub updated: u64,
    /// Bytes of `COPY` data this run streamed.
    pub bytes: u64,
    /// Chunks this run committed.
    pub chunks: usize,
    /// Chunks committed by earlier runs, skipped.
    pub chunks_skipped: usize,
    /// Seconds spent on its chunks (summed over workers).
    pub seconds: f64,
}

/// Both sides' fingerprints of the copied tables and columns.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct Verification {
    /// The source's, read in the run's snapshot.
    pub source: Fingerprint,
    /// The target's, after the copy.
    pub target: Fingerprint,
    /// The tables that differ (empty: an exact copy).
    pub differences: Vec<TableDifference>,
    /// The first rows that differ, by key (a SQLite source, whose rows are compared one by
    /// one in the target's types; up to 10 per table).
    pub rows: Vec<RowDifference>,
}

/// What a copy did.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct CopyReport {
    /// The plan it followed.
    pub plan: CopyPlan,
    /// Per table, in load order.
    pub tables: Vec<TableReport>,
    /// Rows written by this run.
    pub rows: u64,
    /// Bytes of `COPY` data streamed by this run.
    pub bytes: u64,
    /// Seconds, start to end.
    pub seconds: f64,
    /// Every chunk had been committed by earlier runs: this run copied nothing.
    pub already_copied: bool,
    /// Sequences moved forward.
    pub sequences: Vec<SequenceSet>,
    /// Tables analyzed.
    pub analyzed: Vec<String>,
    /// The fingerprints, when verification was asked for.
    pub verification: Option<Verification>,
}

/// Receives [`CopyEvent`]s, from whichever worker produced them.
pub type EventSink = Arc<dyn Fn(&CopyEvent) + Send + Sync>;

/// A copy from one PostgreSQL database into another: configure, then [`Copier::plan`] or
/// [`Copier::run`]. See the [module docs](self).
#[derive(Clone)]
pub struct Copier {
    source: Source,
    target: PgConnectOptions,
    selection: Selection,
    mode: CopyMode,
    jobs: usize,
    chunk_rows: u64,
    triggers: Triggers,
    analyze: bool,
    sequences: bool,
    verify: bool,
    lock_timeout: Duration,
    progress_schema: Option<String>,
    on_event: Option<EventSink>,
    unix_time: BTreeMap<String, UnixTime>,
}

/// The jobs a copy runs with unless told ([`Copier::jobs`]): the cores this machine has,
/// at most 4 (two servers' backends and the copy's own work share them when all run on one
/// machine; more jobs than that mostly wait on one another).
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// Whether the target's triggers fire while a copy loads ([`Copier::triggers`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Triggers {
    /// Off when that changes nothing but the speed: the target role may set
    /// `session_replication_role` (a superuser or, from PostgreSQL 15, `GRANT SET ON
    /// PARAMETER`), and no selected target table has a trigger of its own that replica
    /// mode would skip or start, nor a `MATCH FULL` foreign key; the foreign keys are then
    /// checked by the copy, set-based. On otherwise. The plan says which
    /// ([`CopyPlan::triggers_off`]).
    #[default]
    Auto,
    /// On: user triggers fire, and the server checks each foreign key row by row.
    On,
    /// Off whatever the tables' triggers (user triggers do not fire); refused before any
    /// row moves where the role may not set `session_replication_role`.
    Off,
}

/// Where a copy reads.
#[derive(Clone)]
pub(crate) enum Source {
    Postgres(PgConnectOptions),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::sqlite::SqliteConnectOptions),
}

impl Source {
    /// The source's backend, as the `copy` span's `source` field names it.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Source::Postgres(_) => "postgres",
            #[cfg(feature = "sqlite")]
            Source::Sqlite(_) => "sqlite",
        }
    }
}

impl std::fmt::Debug for Copier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Copier")
            .field("mode", &self.mode)
            .field("jobs", &self.jobs)
            .field("chunk_rows", &self.chunk_rows)
            .finish_non_exhaustive()
    }
}

impl Copier {
    /// A copy from the database of `source` into the database of `target`, with the
    /// defaults: every table, [`CopyMode::Empty`], one job, chunks of 250,000 rows,
    /// sequences set and tables analyzed afterwards, no verification, a lock timeout of
    /// 10 s. The pools' connection options are used to open the copy's own connections.
    pub fn new(source: &PgPool, target: &PgPool) -> Self {
        Copier::with_options(
            (*source.connect_options()).clone(),
            (*target.connect_options()).clone(),
        )
    }

    /// A copy between the databases these options connect to.
    pub fn with_options(source: PgConnectOptions, target: PgConnectOptions) -> Self {
        Copier::from_source(Source::Postgres(source), target)
    }

    /// A copy from a SQLite database into the PostgreSQL database of `target`, whose schema
    /// already exists: each value is converted by its target column's type (see the
    /// [module docs](self#from-sqlite)). datamig's ledger comes along ([`Copier::ledger`]).
    #[cfg(feature = "sqlite")]
    pub fn from_sqlite(
        source: sqlx::sqlite::SqliteConnectOptions,
        target: PgConnectOptions,
    ) -> Self {
        let mut copier = Copier::from_source(Source::Sqlite(source), target);
        copier.selection.ledger = true;
        copier
    }

    fn from_source(source: Source, target: PgConnectOptions) -> Self {
        Copier {
            source,
            target,
            selection: Selection::default(),
            mode: CopyMode::Empty,
            jobs: default_jobs(),
            chunk_rows: 250_000,
            triggers: Triggers::Auto,
            analyze: true,
            sequences: true,
            verify: false,
            lock_timeout: Duration::from_secs(10),
            progress_schema: None,
            on_event: None,
            unix_time: BTreeMap::new(),
        }
    }

    /// A SQLite source: integers in this date or timestamp column (`table.column`) are Unix
    /// time in `unit`. Without it such an integer does not convert (it is never guessed).
    pub fn unix_time(mut self, column: impl Into<String>, unit: UnixTime) -> Self {
        self.unix_time.insert(column.into(), unit);
        self
    }

    /// A SQLite source: whether datamig's ledger (`datamig_ledger`, `datamig_runs`) comes
    /// along (default: yes), so that the migrations applied on SQLite count as applied on
    /// PostgreSQL. The target's ledger is created where it is missing.
    pub fn ledger(mut self, ledger: bool) -> Self {
        self.selection.ledger = ledger;
        self
    }

    /// Only these tables (`table` or `schema.table`); a bookkeeping table named here is
    /// copied.
    pub fn tables<S: Into<String>>(mut self, tables: impl IntoIterator<Item = S>) -> Self {
        self.selection
            .tables
            .extend(tables.into_iter().map(Into::into));
        self
    }

    /// Leaves these tables out (`table` or `schema.table`).
    pub fn exclude<S: Into<String>>(mut self, tables: impl IntoIterator<Item = S>) -> Self {
        self.selection
            .exclude
            .extend(tables.into_iter().map(Into::into));
        self
    }

    /// How target tables that hold rows are treated.
    pub fn mode(mut self, mode: CopyMode) -> Self {
        self.mode = mode;
        self
    }

    /// How many chunks are copied at once, each on its own pair of connections (at least
    /// 1; by default [`default_jobs`]: this machine's cores, at most 4).
    pub fn jobs(mut self, jobs: usize) -> Self {
        self.jobs = jobs.max(1);
        self
    }

    /// About how many rows a chunk holds (at least 1,000): tables with more are split in
    /// key ranges of their primary key. Smaller chunks lose less to an interruption and
    /// spread one table over more jobs; each costs a commit.
    pub fn chunk_rows(mut self, rows: u64) -> Self {
        self.chunk_rows = rows.max(1_000);
        self
    }

    /// Whether the target's triggers fire during the load (default [`Triggers::Auto`]:
    /// off where that changes nothing but the speed). With them off the load runs in
    /// `session_replication_role = replica` and the server checks no foreign key row by
    /// row; the copy checks each foreign key itself, one anti-join per key over each
    /// chunk before it commits (a row whose parent is missing stops its chunk,
    /// [`Error::CopyRejected`]), and loads a cycle's tables in one transaction whatever
    /// their keys' deferrability.
    pub fn triggers(mut self, triggers: Triggers) -> Self {
        self.triggers = triggers;
        self
    }

    /// Whether to `ANALYZE` the tables that received rows (default: yes).
    pub fn analyze(mut self, analyze: bool) -> Self {
        self.analyze = analyze;
        self
    }

    /// Whether to move the target's sequences past the copied values (default: yes).
    pub fn sequences(mut self, sequences: bool) -> Self {
        self.sequences = sequences;
        self
    }

    /// Whether to fingerprint both sides afterwards ([`CopyReport::verification`]).
    pub fn verify(mut self, verify: bool) -> Self {
        self.verify = verify;
        self
    }

    /// How long a statement on the target waits for a lock before the copy stops and names
    /// the sessions holding it (default 10 s).
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// The schema of the target's `datamig_copy_progress` table (default: the first schema
    /// of the target role's `search_path`).
    pub fn progress_schema(mut self, schema: impl Into<String>) -> Self {
        self.progress_schema = Some(schema.into());
        self
    }

    /// Receives every [`CopyEvent`].
    pub fn on_event(mut self, sink: impl Fn(&CopyEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(sink));
        self
    }

    /// Checks everything a run checks before any row moves and returns the plan, with the
    /// chunks each table would be split in: nothing is written to either database.
    ///
    /// # Errors
    ///
    /// [`Error::CopyPlan`] naming every mismatch, [`Error::CopyRefused`] (the same database
    /// on both sides, a target holding rows, a missing privilege), [`Error::Database`].
    pub async fn plan(&self) -> Result<CopyPlan, Error> {
        load::run(self, load::Purpose::Plan)
            .await
            .map(|report| report.plan)
    }

    /// Compares the selected tables of both databases row by row, writing nothing: for a
    /// SQLite source each row is converted into the target's types as a copy would, and the
    /// first rows that differ are named ([`Verification::rows`]); between two PostgreSQL
    /// databases the tables' fingerprints are compared.
    ///
    /// # Errors
    ///
    /// As [`Copier::plan`].
    pub async fn compare(&self) -> Result<Verification, Error> {
        let report = load::run(self, load::Purpose::Compare).await?;
        report.verification.ok_or_else(|| {
            Error::Config(
                "the comparison produced no verification; this is a bug in datamig".into(),
            )
        })
    }

    /// Runs the copy. See the [module docs](self) for what it does, and the errors of
    /// [`Copier::plan`] for what stops it before any row moves.
    ///
    /// # Errors
    ///
    /// As [`Copier::plan`], and: [`Error::CopyRejected`] when the target rejects a row (its
    /// chunk rolled back, the chunks before it kept); [`Error::CopyBlocked`] when a lock
    /// wait on the target outlasts the lock timeout (naming the sessions holding it);
    /// [`Error::Database`] when a connection fails (run the copy again to resume).
    pub async fn run(&self) -> Result<CopyReport, Error> {
        load::run(self, load::Purpose::Run).await
    }
}
