//! Every clap type of the CLI, in one place.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Idempotent business data migrations: apply pending data migrations exactly once, show
/// their state.
#[derive(Debug, Parser)]
#[command(name = "datamig", version)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalOpts,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalOpts {
    /// The database to migrate: postgres://user:password@host:5432/app,
    /// mysql://user:password@host:3306/app (or mariadb://..), or sqlite:app.db
    /// (sqlite:app.db?mode=rwc creates the file if it is missing).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Output format: human-readable text, or JSON on stdout (`run`: one JSON line per
    /// progress event, then one with the result).
    #[arg(long, value_enum, default_value_t = Format::Human, global = true)]
    pub format: Format,

    /// The ledger table.
    #[arg(
        long,
        env = "DATAMIG_LEDGER_TABLE",
        default_value = "datamig_ledger",
        global = true
    )]
    pub ledger_table: String,

    /// The run-history table.
    #[arg(
        long,
        env = "DATAMIG_RUNS_TABLE",
        default_value = "datamig_runs",
        global = true
    )]
    pub runs_table: String,

    /// The schema of the ledger and run-history tables (default: the search path's first).
    #[arg(long, env = "DATAMIG_LEDGER_SCHEMA", global = true)]
    pub ledger_schema: Option<String>,

    /// The runner lock: `advisory`, PostgreSQL's session advisory lock, for direct
    /// connections; `lease`, a renewed lease in the table `<ledger>_lease`, which holds
    /// through a transaction pooler (PgBouncer in transaction mode). A run through a
    /// transaction pooler with `advisory` refuses to start.
    #[arg(long, value_enum, env = "DATAMIG_LOCK", default_value_t = LockKind::Advisory, global = true)]
    pub lock: LockKind,

    /// With `--lock lease`: how long a lease lasts unless renewed (the runner renews it every
    /// third of this). A runner frozen longer loses it, and commits nothing after.
    #[arg(long, value_parser = parse_duration, env = "DATAMIG_LEASE_TTL", default_value = "30s", global = true)]
    pub lease_ttl: Duration,

    /// What to log on stderr, as a `RUST_LOG` filter (`info`, `datamig=debug,sqlx=warn`):
    /// spans and events of the run, each migration, each batch and each copy chunk.
    /// Default: the `RUST_LOG` environment variable, else nothing.
    #[arg(long, env = "DATAMIG_LOG", global = true)]
    pub log: Option<String>,

    /// The format of the log on stderr: `text`, or `json` (one object a line, with the
    /// fields of its spans). Results stay on stdout.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Many databases at once (`run`, `status`, `check`, `verify`, `pause`, `resume`).
    #[command(flatten)]
    pub fleet: FleetOpts,
}

/// The targets of a command run across many databases or tenant schemas.
#[derive(Debug, Args)]
pub struct FleetOpts {
    /// Run the command on every target of this file instead of one database: one a line,
    /// a database URL, optionally followed by `schema=NAME` for a tenant schema (the ledger
    /// lives there and the migrations run with it first on the search path); `#` comments.
    /// `-` reads standard input.
    #[arg(
        long,
        value_name = "FILE",
        global = true,
        conflicts_with = "targets_query"
    )]
    pub targets: Option<std::path::PathBuf>,

    /// Like --targets, from a query on --database-url: its first column a target's URL
    /// (NULL: a schema of that same database), its second, if any, the schema.
    #[arg(long, value_name = "SQL", global = true)]
    pub targets_query: Option<String>,

    /// With --targets: how many targets at once (each holds up to two connections).
    #[arg(long, value_name = "N", default_value_t = 4, global = true,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
}

/// What a fleet's `run` does once a target failed (`--on-failure`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OnFailureArg {
    /// Start no new target; the ones running finish their run.
    #[default]
    Stop,
    /// Try every target.
    Continue,
}

/// The format of the log on stderr (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line of text an event, with its spans' fields.
    Text,
    /// One JSON object an event: `timestamp`, `level`, `fields`, `target`, `span`, `spans`.
    Json,
}

/// The runner lock (`--lock`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LockKind {
    /// PostgreSQL's session advisory lock (SQLite: its lock row).
    Advisory,
    /// A lease renewed while the runner works, checked by every transaction before it commits.
    Lease,
}

/// The output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Text for people.
    Human,
    /// One JSON document on stdout.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending migrations, each exactly once, in id order.
    Run(RunOpts),
    /// Show every migration: applied, pending, running, drifted, failed last time, or unknown to this build.
    Status,
    /// For CI gates: exit 6 if anything is pending, 3 if anything drifted, 0 otherwise. Changes nothing.
    Check,
    /// Recompute drift and find ledger rows unknown to this build; print each (exit 3 on drift).
    Verify,
    /// Record a migration as applied without running it (a baseline), audited with a reason.
    MarkApplied(ReasonOpts),
    /// Accept a drifted migration's new code (its checksum), audited with a reason.
    Repair(ReasonOpts),
    /// Run an applied migration again (it must be idempotent); counted in the ledger.
    Rerun(RerunOpts),
    /// Pause a migration: a run in progress (on any host) stops it after the batch in progress commits; later runs skip it.
    Pause(PauseOpts),
    /// Lift a pause: the next run continues the migration from its checkpoint.
    Resume(ResumeOpts),
    /// Cancel a migration: a run in progress (on any host) stops it after the batch in progress commits and records it cancelled (exit 13); later runs leave it alone until `run --restart`.
    Cancel(PauseOpts),
    /// Release the runner lock left by a runner that is gone. Refuses while its holder runs.
    Unlock(UnlockOpts),
    /// Write a new migration file with a fresh timestamped id into a crate of migrations.
    New(NewOpts),
    /// Diagnose: the connection, the ledger, the runner lock, sessions that would block a migration.
    Doctor,
    /// Run each pending migration twice in one transaction, compare the data, roll back (exit 7 if one is not idempotent).
    CheckIdempotency(CheckIdempotencyOpts),
    /// Print each table's row count and checksum (datamig's ledger excluded).
    Fingerprint(TablesOpts),
    /// Compare two databases table by table: row counts and checksums (exit 8 where they differ).
    Compare(CompareOpts),
    /// Copy the rows of a PostgreSQL, MySQL, MariaDB or SQLite database into a PostgreSQL database whose schema exists: data only, resumable, verified.
    Copy(CopyOpts),
    /// End an online copy (copy --follow): wait until every change committed on the source is applied, set the sequences, analyze, verify, drop the slot; or --abandon it, or show its --status.
    Cutover(CutoverOpts),
}

/// Options of `cutover`.
#[derive(Debug, Args)]
pub struct CutoverOpts {
    /// The source database's URL, as the copy was given it.
    #[arg(long)]
    pub source: String,

    /// The target database's URL, as the copy was given it.
    #[arg(long)]
    pub target: String,

    /// First wait until the follower is at most this far behind the source (as 1s, 500ms).
    #[arg(long, value_parser = parse_duration)]
    pub max_lag: Option<Duration>,

    /// Give up after this long (the follow goes on).
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    pub timeout: Duration,

    /// Drop the follow for good instead: its replication slot and publication on the source (the target keeps what was applied). Stop its follower first.
    #[arg(long, conflicts_with_all = ["status", "max_lag"])]
    pub abandon: bool,

    /// Only show the follow's state: its lag, rows applied, status.
    #[arg(long)]
    pub status: bool,

    /// The schema of the target's progress tables, as the copy was given it.
    #[arg(long)]
    pub progress_schema: Option<String>,
}

/// Whether the target's triggers fire while `copy` loads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum TriggersArg {
    /// Table by table: off where the role may set session_replication_role and the table has no trigger of its own that the load fires (on INSERT; on UPDATE too with --mode merge) and this would skip (the copy then checks its foreign keys itself, set-based); on otherwise. The plan says why a table keeps its triggers.
    #[default]
    Auto,
    /// On: user triggers fire and the server checks each foreign key row by row.
    On,
    /// Off whatever the tables' triggers, as pg_dump --disable-triggers: no trigger fires, not even one enabled ALWAYS; needs a superuser or GRANT SET ON PARAMETER session_replication_role.
    Off,
}

/// How `copy` treats target tables that already hold rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum CopyModeArg {
    /// Refuse a target table holding rows this copy did not write (nothing is written).
    #[default]
    Empty,
    /// Insert missing rows and update changed ones by primary key; never delete.
    Merge,
    /// Empty every selected target table first (TRUNCATE): the target's rows are lost.
    DangerouslyTruncate,
}

/// Options of `copy`.
#[derive(Debug, Args)]
pub struct CopyOpts {
    /// The source database's URL (postgres://..., sqlite:FILE to move a SQLite database into PostgreSQL, or mysql://user:password@host:3306/database (mariadb:// too; ?ssl-mode=required for TLS) to move a MySQL or MariaDB database).
    #[arg(long)]
    pub source: String,

    /// The target database's URL (postgres://...); its schema must exist.
    #[arg(long)]
    pub target: String,

    /// Only these tables (`table` or `schema.table`, comma-separated); names bookkeeping tables too.
    #[arg(long, value_delimiter = ',')]
    pub tables: Vec<String>,

    /// Leave these tables out (`table` or `schema.table`, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub exclude: Vec<String>,

    /// Leave these source columns out (`table.column` or `schema.table.column`, comma-separated): their values are not copied, and a target column of that name is filled by the target (its default, identity, a BEFORE INSERT trigger, or NULL). Not a primary key's column; not with --follow.
    #[arg(long, value_delimiter = ',', value_name = "TABLE.COLUMN")]
    pub exclude_columns: Vec<String>,

    /// What to do with target tables that already hold rows.
    #[arg(long, value_enum, default_value_t = CopyModeArg::Empty)]
    pub mode: CopyModeArg,

    /// After the copy, apply every change committed on the source (logical decoding; the source needs wal_level = logical) until `datamig cutover` from another terminal ends it. Killed, the same command resumes.
    #[arg(long)]
    pub follow: bool,

    /// Chunks copied at once, each on its own pair of connections; big tables are split in key ranges (default: this machine's cores, at most 4).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: Option<u16>,

    /// About how many rows one chunk holds (each chunk commits with its progress); fewer,
    /// down to 50,000, where that gives each job a chunk of the table and the jobs would
    /// idle otherwise.
    #[arg(long, default_value_t = datamig::copy::DEFAULT_CHUNK_ROWS)]
    pub chunk_rows: u64,

    /// Check and print the plan (tables, order, columns, chunks); write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Whether the target's triggers fire during the load: with them off (session_replication_role = replica) the copy checks each foreign key itself, set-based per chunk, instead of the server row by row.
    #[arg(long, value_enum, default_value_t = TriggersArg::Auto)]
    pub triggers: TriggersArg,

    /// Afterwards, compare row counts and checksums of every copied table (exit 8 where they differ).
    #[arg(long)]
    pub verify: bool,

    /// Do not ANALYZE the copied tables afterwards.
    #[arg(long)]
    pub no_analyze: bool,

    /// Do not move the target's sequences past the copied values afterwards.
    #[arg(long)]
    pub no_sequences: bool,

    /// Stop at the first table whose rows the target rejects (exit 10), instead of going on with the other tables and listing those not finished at the end (exit 11).
    #[arg(long)]
    pub fail_fast: bool,

    /// How long a statement on the target waits for a lock before the copy stops and names the sessions holding it.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub lock_timeout: Duration,

    /// The schema of the target's datamig_copy_progress table (default: the first of its search_path).
    #[arg(long)]
    pub progress_schema: Option<String>,

    /// A SQLite source: integers in this date/timestamp column are Unix time (TABLE.COLUMN=seconds|milliseconds; repeat or comma-separate).
    #[arg(long, value_delimiter = ',', value_name = "TABLE.COLUMN=UNIT")]
    pub unix_time: Vec<String>,

    /// A SQLite source: leave datamig's ledger behind (by default it comes along, so that nothing runs twice).
    #[arg(long)]
    pub no_ledger: bool,

    /// A MySQL or MariaDB source: what a zero date (0000-00-00) or a date with a zero part becomes: refuse (the default: each is named), null, or a date or timestamp (1970-01-01).
    #[arg(long, value_name = "refuse|null|DATE")]
    pub zero_dates: Option<String>,
}

/// Options of `check-idempotency`.
#[derive(Debug, Args)]
pub struct CheckIdempotencyOpts {
    /// Check only this pending migration.
    #[arg(long, value_name = "ID")]
    pub only: Option<String>,
}

/// Which tables to fingerprint.
#[derive(Debug, Args)]
pub struct TablesOpts {
    /// Only these tables (`table` or `schema.table`, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub tables: Vec<String>,
}

/// Options of `compare`.
#[derive(Debug, Args)]
pub struct CompareOpts {
    /// The source database's URL.
    #[arg(long)]
    pub source: String,

    /// The target database's URL.
    #[arg(long)]
    pub target: String,

    /// Which tables.
    #[command(flatten)]
    pub tables: TablesOpts,

    /// A SQLite side: integers in this date/timestamp column are Unix time (TABLE.COLUMN=seconds|milliseconds), as for copy.
    #[arg(long, value_delimiter = ',', value_name = "TABLE.COLUMN=UNIT")]
    pub unix_time: Vec<String>,

    /// A MySQL or MariaDB side: what a zero date becomes, as for copy (refuse, null, or a date).
    #[arg(long, value_name = "refuse|null|DATE")]
    pub zero_dates: Option<String>,
}

/// Options of `run`.
#[derive(Clone, Debug, Args)]
pub struct RunOpts {
    /// Execute each pending migration and roll it back: report what it would do, keep nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Apply pending migrations up to and including this id.
    #[arg(long, value_name = "ID", conflicts_with = "only")]
    pub to: Option<String>,

    /// Apply only this pending migration.
    #[arg(long, value_name = "ID")]
    pub only: Option<String>,

    /// Start cancelled migrations (`datamig cancel`) again, from their first key; without it a run leaves them alone and exits 12.
    #[arg(long)]
    pub restart: bool,

    /// Apply the sqlx schema migrations of this directory first (as `sqlx migrate run`).
    #[arg(long, value_name = "DIR")]
    pub schema: Option<std::path::PathBuf>,

    /// `lock_timeout` inside each migration's transaction (e.g. 5s), unless the migration sets its own.
    #[arg(long, value_parser = parse_duration)]
    pub lock_timeout: Option<Duration>,

    /// `statement_timeout` inside each migration's transaction (e.g. 10min), unless the migration sets its own.
    #[arg(long, value_parser = parse_duration)]
    pub statement_timeout: Option<Duration>,

    /// How long to wait for another runner to finish before giving up with exit code 5.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub wait: Duration,

    /// The application's version, recorded in the ledger.
    #[arg(long, env = "DATAMIG_APP_VERSION")]
    pub app_version: Option<String>,

    /// PostgreSQL: before each batch, wait while any standby replays more than this behind
    /// (pg_stat_replication.replay_lag; the role needs pg_monitor), e.g. 10s.
    #[arg(long, value_parser = parse_duration, env = "DATAMIG_MAX_REPLAY_LAG")]
    pub max_replay_lag: Option<Duration>,

    /// How often a throttled run asks again whether the database can take the next batch.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub throttle_interval: Duration,

    /// PostgreSQL, MySQL: walk each batched migration with this many workers, each on a
    /// connection of its own, whatever the migration declares (batch(.., workers = N)).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub workers: Option<u32>,

    /// Do not join another runner's workers while waiting for the runner lock (by default a
    /// run that finds a batched migration part-way with workers works ranges of it too).
    #[arg(long)]
    pub no_join: bool,

    /// With --targets: run the first K targets first, and stop if one of them fails.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub canary: usize,

    /// With --targets: once a target failed, start no other (`stop`) or try every one.
    #[arg(long, value_enum, default_value_t = OnFailureArg::Stop)]
    pub on_failure: OnFailureArg,
}

/// Options of `mark-applied` and `repair`.
#[derive(Debug, Args)]
pub struct ReasonOpts {
    /// The migration's id.
    pub id: String,

    /// Why: recorded in the run history.
    #[arg(long)]
    pub reason: String,

    /// How long to wait for another runner to finish before giving up with exit code 5.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub wait: Duration,
}

/// Options of `pause`.
#[derive(Debug, Args)]
pub struct PauseOpts {
    /// The migration's id.
    pub id: String,

    /// Why: recorded in the run history.
    #[arg(long)]
    pub reason: Option<String>,
}

/// Options of `resume`.
#[derive(Debug, Args)]
pub struct ResumeOpts {
    /// The migration's id.
    pub id: String,
}

/// Options of `rerun`.
#[derive(Debug, Args)]
pub struct RerunOpts {
    /// The migration's id.
    pub id: String,

    /// How long to wait for another runner to finish before giving up with exit code 5.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub wait: Duration,

    /// The application's version, recorded in the ledger.
    #[arg(long, env = "DATAMIG_APP_VERSION")]
    pub app_version: Option<String>,
}

/// Options of `unlock`.
#[derive(Debug, Args)]
pub struct UnlockOpts {
    /// End the lock holder's session even when this host cannot tell whether its runner is
    /// gone (it ran on another host). Its transaction rolls back. Only once you know it is gone.
    #[arg(long)]
    pub dangerously_terminate_holder: bool,
}

/// Options of `new`.
#[derive(Debug, Args)]
pub struct NewOpts {
    /// The migration's name, in snake case (e.g. backfill_notification_settings).
    pub name: String,

    /// The source directory of the crate of migrations (holding lib.rs, mod.rs or main.rs).
    #[arg(long, default_value = "migrations/src")]
    pub dir: std::path::PathBuf,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e}: expected a duration such as 500ms, 5s or 2min"))
}
