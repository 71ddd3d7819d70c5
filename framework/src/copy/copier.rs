//! [`Copier`]: what a copy is asked to do, set by its builder methods. Its entry points
//! ([`Copier::plan`], [`Copier::compare`], [`Copier::run`]) are in the module root.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool};

use super::convert::UnixTime;
use super::event::{CopyEvent, EventSink};
use super::options::{CopyMode, Selection, Triggers, ZeroDates};

/// A copy from one PostgreSQL database into another: configure, then [`Copier::plan`] or
/// [`Copier::run`]. See the [module docs](super).
#[derive(Clone)]
pub struct Copier {
    pub(super) source: SourceOptions,
    pub(super) target: PgConnectOptions,
    pub(super) selection: Selection,
    pub(super) mode: CopyMode,
    pub(super) jobs: usize,
    pub(super) chunk_rows: u64,
    pub(super) triggers: Triggers,
    pub(super) analyze: bool,
    pub(super) sequences: bool,
    pub(super) verify: bool,
    pub(super) fail_fast: bool,
    pub(super) lock_timeout: Duration,
    pub(super) progress_schema: Option<String>,
    pub(super) on_event: Option<EventSink>,
    pub(super) unix_time: BTreeMap<String, UnixTime>,
    pub(super) follow: bool,
    pub(super) follow_poll: Duration,
    pub(super) zero_dates: ZeroDates,
}

/// The jobs a copy runs with unless told ([`Copier::jobs`]): the cores this machine has,
/// at most 4 (two servers' backends and the copy's own work share them when all run on one
/// machine; more jobs than that mostly wait on one another).
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// The rows a chunk holds by default ([`Copier::chunk_rows`], `--chunk-rows`): 500,000.
///
/// Each chunk pays fixed costs (its range query on the source, a commit, and for a table
/// whose foreign keys the copy checks, a pass over each parent), and the jobs find work
/// beside a big table in the tables that follow it (a child starts beside its parents' last
/// chunks), so chunks need not be small to keep the jobs busy. An interrupted copy loses at
/// most a chunk a job.
pub const DEFAULT_CHUNK_ROWS: u64 = 500_000;

/// Where a copy reads.
#[derive(Clone)]
pub(crate) enum SourceOptions {
    Postgres(PgConnectOptions),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::sqlite::SqliteConnectOptions),
    #[cfg(feature = "mysql")]
    Mysql(sqlx::mysql::MySqlConnectOptions),
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
    /// defaults: every table, [`CopyMode::Empty`], [`default_jobs`] jobs, chunks of
    /// [`DEFAULT_CHUNK_ROWS`] rows,
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
        Copier::from_source(SourceOptions::Postgres(source), target)
    }

    /// A copy from a SQLite database into the PostgreSQL database of `target`, whose schema
    /// already exists: each value is converted by its target column's type (see the
    /// [module docs](super#from-sqlite)). datamig's ledger comes along ([`Copier::ledger`]).
    #[cfg(feature = "sqlite")]
    pub fn from_sqlite(
        source: sqlx::sqlite::SqliteConnectOptions,
        target: PgConnectOptions,
    ) -> Self {
        let mut copier = Copier::from_source(SourceOptions::Sqlite(source), target);
        copier.selection.ledger = true;
        copier
    }

    /// A copy from a MySQL or MariaDB database into the PostgreSQL database of `target`,
    /// whose schema already exists: each value is converted by its target column's type
    /// (see the [module docs](super#from-mysql-or-mariadb) and the copying guide).
    #[cfg(feature = "mysql")]
    pub fn from_mysql(source: sqlx::mysql::MySqlConnectOptions, target: PgConnectOptions) -> Self {
        Copier::from_source(SourceOptions::Mysql(source), target)
    }

    /// A MySQL or MariaDB source: what a zero date (`0000-00-00`) or a date with a zero part
    /// becomes (default: [`ZeroDates::Refuse`], each named). Never guessed.
    pub fn zero_dates(mut self, zero_dates: ZeroDates) -> Self {
        self.zero_dates = zero_dates;
        self
    }

    fn from_source(source: SourceOptions, target: PgConnectOptions) -> Self {
        Copier {
            source,
            target,
            selection: Selection::default(),
            mode: CopyMode::Empty,
            jobs: default_jobs(),
            chunk_rows: DEFAULT_CHUNK_ROWS,
            triggers: Triggers::Auto,
            analyze: true,
            sequences: true,
            verify: false,
            fail_fast: false,
            lock_timeout: Duration::from_secs(10),
            progress_schema: None,
            on_event: None,
            unix_time: BTreeMap::new(),
            follow: false,
            follow_poll: Duration::from_millis(100),
            zero_dates: ZeroDates::Refuse,
        }
    }

    /// After the copy, follow the source: apply every change committed on it since the
    /// copy's snapshot, until a cut-over ([`Cutover::run`](crate::copy::Cutover::run)) from
    /// another process stops it. See [the online copy](crate::copy#online-copy-follow).
    /// PostgreSQL sources only; the source needs `wal_level = logical`.
    pub fn follow(mut self, follow: bool) -> Self {
        self.follow = follow;
        self
    }

    /// How long the follower waits before reading the source's changes again when it found
    /// none (default 100 ms).
    pub fn follow_poll(mut self, poll: Duration) -> Self {
        self.follow_poll = poll;
        self
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

    /// Leaves these source columns out (`table.column` or `schema.table.column`): their
    /// values are not read, and a target column of the same name is filled by the target
    /// (its default, identity, a `BEFORE INSERT` trigger, or `NULL`). A primary key's
    /// column cannot be left out; neither can any column with [`Copier::follow`].
    pub fn exclude_columns<S: Into<String>>(
        mut self,
        columns: impl IntoIterator<Item = S>,
    ) -> Self {
        self.selection
            .exclude_columns
            .extend(columns.into_iter().map(Into::into));
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

    /// About how many rows a chunk holds (at least 1,000; by default
    /// [`DEFAULT_CHUNK_ROWS`]): tables with more are split in
    /// key ranges of their primary key. Smaller chunks lose less to an interruption and
    /// spread one table over more jobs; each costs a commit (and, for a table whose foreign
    /// keys the copy checks, a pass over each parent). A table with fewer rows than `jobs`
    /// chunks of this size is split into a chunk per job (none under 50,000 rows) where the
    /// jobs would idle otherwise: when the whole copy holds fewer chunks than jobs, or when
    /// a table the target checks row by row references it.
    pub fn chunk_rows(mut self, rows: u64) -> Self {
        self.chunk_rows = rows.max(1_000);
        self
    }

    /// Whether the target's triggers fire during the load (default [`Triggers::Auto`]:
    /// off, table by table, where that changes nothing but the speed). A table loading
    /// with them off does so in `session_replication_role = replica` and the server
    /// checks none of its foreign keys row by row; the copy checks each one itself, one
    /// anti-join per key over exactly the rows each chunk wrote, before it commits (a row
    /// whose parent is missing stops its table, named in
    /// [`Error::CopyIncomplete`](crate::Error::CopyIncomplete)), and loads a cycle of such
    /// tables in one transaction whatever their keys' deferrability.
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

    /// Whether to fingerprint both sides afterwards ([`CopyReport::verification`](crate::copy::CopyReport::verification)).
    pub fn verify(mut self, verify: bool) -> Self {
        self.verify = verify;
        self
    }

    /// Whether the first table whose rows the target rejects stops the copy (default: no).
    ///
    /// By default a table whose chunk the target rejects (a constraint, a trigger, a value
    /// its type refuses) is rolled back to its last committed chunk and the other tables go
    /// on, except those that reference it; the run then ends with
    /// [`Error::CopyIncomplete`](crate::Error::CopyIncomplete) listing each table not
    /// finished, and the same copy run again resumes just those. With `fail_fast` the copy
    /// stops at the first ([`Error::CopyRejected`](crate::Error::CopyRejected),
    /// [`Error::CopyUnconvertible`](crate::Error::CopyUnconvertible)), the other workers'
    /// chunks in progress rolled back.
    pub fn fail_fast(mut self, fail_fast: bool) -> Self {
        self.fail_fast = fail_fast;
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
}
