//! The datamig command line, as a library.
//!
//! An application builds its own `datamig` binary, linked with its own migrations, in three
//! lines:
//!
//! ```no_run
//! # mod my_app_migrations { pub fn link() {} }
//! fn main() -> std::process::ExitCode {
//!     my_app_migrations::link(); // keeps the crate of migrations linked (see datamig::registry)
//!     datamig_cli::main()
//! }
//! ```
//!
//! Results go to stdout (text, or JSON with `--format json`); errors go to stderr, and the
//! exit code says what kind of failure it was (see [`exit`]).

mod connect;
pub mod exit;
mod fleet;
mod fleet_output;
mod opt;
mod output;
mod scaffold;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use connect::{CliBackend, Scheme};
use datamig::{
    Error, Fingerprint, FingerprintOptions, IdempotencyCheck, LedgerConfig, Migrator, MySql,
    Postgres, RunnerLock, Sqlite, StopSignal,
};

pub use opt::{
    CheckIdempotencyOpts, Cli, Command, CompareOpts, CopyModeArg, CopyOpts, CutoverOpts, Format,
    GlobalOpts, LockKind, LogFormat, NewOpts, PauseOpts, ReasonOpts, RerunOpts, ResumeOpts,
    RunOpts, TablesOpts, TriggersArg, UnlockOpts,
};
pub use opt::{FleetOpts, OnFailureArg};
use output::Output;

/// Which migrations a `datamig` binary has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// An application's own binary, linked with its crate of migrations: every command.
    Application,
    /// The installed binary (`cargo install datamig-cli`), with no migrations compiled in:
    /// the commands that need none (status and verify list the ledger; check, doctor,
    /// unlock, pause, resume, fingerprint, compare, copy); `run`, `new`, `rerun`,
    /// `mark-applied`, `repair` and `check-idempotency` say that they need the
    /// application's own binary, and how to build it.
    LedgerOnly,
}

/// Parses the command line, runs the command, and returns its exit code: the entry point
/// of an application's own binary, linked with its migrations.
///
/// Usage errors exit with [`exit::USAGE`] after clap's message.
pub fn main() -> ExitCode {
    main_for(Build::Application)
}

/// The entry point of a `datamig` binary built as `build` says: [`main`] is
/// `main_for(Build::Application)`; the installed binary is
/// `main_for(Build::LedgerOnly)`.
pub fn main_for(build: Build) -> ExitCode {
    let cli = Cli::parse();
    if let Err(message) = init_logging(&cli.global) {
        eprintln!("error: {message}");
        return ExitCode::from(exit::USAGE);
    }
    // A migration that panics is caught, rolled back and reported in one line on stderr;
    // Rust's default report of the panic would add a second, with a hint about backtraces.
    // With RUST_BACKTRACE set, the default report (and its backtrace) stays.
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        std::panic::set_hook(Box::new(|info| {
            let location = info.location().map(ToString::to_string).unwrap_or_default();
            eprintln!("panic at {location}");
        }));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(exit::UNEXPECTED);
        }
    };
    match runtime.block_on(execute_for(cli, build)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Runs one parsed command in an application's own binary; returns the exit code, or the
/// failure to print.
pub async fn execute(cli: Cli) -> Result<u8, Failure> {
    execute_for(cli, Build::Application).await
}

/// Runs one parsed command in a binary built as `build` says; returns the exit code, or
/// the failure to print.
pub async fn execute_for(cli: Cli, build: Build) -> Result<u8, Failure> {
    let out = Output::new(cli.global.format);
    if build == Build::LedgerOnly
        && let Some(command) = needs_migrations(&cli.command)
    {
        return Err(Failure::new(exit::USAGE, needs_application_binary(command)));
    }
    if fleet::wanted(&cli)? {
        return fleet::execute(cli, build).await;
    }
    match &cli.command {
        // Writes files only: no database needed.
        Command::New(opts) => return scaffold::new_migration(opts, &out),
        Command::Compare(opts) => return compare(opts, &cli.global, &out).await,
        Command::Copy(opts) => return copy(opts, &out).await,
        Command::Cutover(opts) => return cutover(opts, &out).await,
        _ => {}
    }
    let (url, scheme) = connect::database_url(&cli.global)?;
    let pooled = cli.global.lock == LockKind::Lease;
    match scheme {
        Scheme::Postgres => {
            let pool = Postgres::connect(url, pooled).await?;
            execute_on(cli, pool, &out, build).await
        }
        Scheme::Sqlite => {
            let pool = Sqlite::connect(url, pooled).await?;
            execute_on(cli, pool, &out, build).await
        }
        Scheme::MySql => {
            let pool = MySql::connect(url, pooled).await?;
            execute_on(cli, pool, &out, build).await
        }
    }
}

/// Sends the spans and events of `tracing` to stderr, filtered by `--log` (else
/// `RUST_LOG`; nothing when neither is set), as text or JSON lines. Span closes are logged
/// too: they carry the fields filled when the run, a migration, a batch or a chunk ends.
fn init_logging(global: &GlobalOpts) -> Result<(), String> {
    use tracing_subscriber::fmt::format::FmtSpan;
    let directives = match &global.log {
        Some(filter) => filter.clone(),
        None => match std::env::var("RUST_LOG") {
            Ok(filter) if !filter.trim().is_empty() => filter,
            _ => return Ok(()),
        },
    };
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(&directives)
        .map_err(|err| {
            format!(
                "invalid log filter {directives:?}: {err}; write it as RUST_LOG does \
                 (info, or datamig=debug,sqlx=warn)"
            )
        })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::CLOSE);
    let installed = match global.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
    installed.map_err(|err| format!("cannot install the log subscriber: {err}"))?;
    output::LOGGING.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// The name of a command that needs the migrations' code, or `None`.
fn needs_migrations(command: &Command) -> Option<&'static str> {
    Some(match command {
        Command::Run(_) => "run",
        Command::New(_) => "new",
        Command::Rerun(_) => "rerun",
        Command::MarkApplied(_) => "mark-applied",
        Command::Repair(_) => "repair",
        Command::CheckIdempotency(_) => "check-idempotency",
        _ => return None,
    })
}

/// What the installed binary says of a command that needs the application's migrations.
fn needs_application_binary(command: &str) -> String {
    format!(
        "`datamig {command}` needs your application's migrations, and this datamig binary has \
         none compiled in. Build your application's own datamig binary: add datamig-cli to the \
         crate that holds your migrations and write src/bin/datamig.rs:

    fn main() -> std::process::ExitCode {{
        my_app_migrations::link(); // the crate of migrations' link()
        datamig_cli::main()
    }}

then: cargo run --bin datamig -- {command}"
    )
}

/// Runs one command against the database of `pool`.
async fn execute_on<DB: CliBackend>(
    cli: Cli,
    pool: sqlx::Pool<DB>,
    out: &Output,
    build: Build,
) -> Result<u8, Failure> {
    let mut ledger = LedgerConfig::default()
        .ledger_table(&cli.global.ledger_table)
        .runs_table(&cli.global.runs_table);
    if let Some(schema) = &cli.global.ledger_schema {
        ledger = ledger.schema(schema);
    }
    let lock = match cli.global.lock {
        LockKind::Advisory => RunnerLock::Advisory,
        LockKind::Lease => RunnerLock::lease_for(cli.global.lease_ttl),
    };
    let mut migrator = Migrator::new(pool).ledger(ledger).runner_lock(lock);
    if build == Build::LedgerOnly {
        migrator = migrator.ledger_only();
        if matches!(
            cli.command,
            Command::Status | Command::Check | Command::Verify | Command::Doctor
        ) {
            eprintln!(
                "note: this datamig binary has no migrations compiled in: it reads the ledger \
                 alone; pending migrations and drift need your application's own binary"
            );
        }
    }
    match cli.command {
        Command::Run(opts) => run(migrator, &opts, out).await,
        Command::Status => {
            let statuses = migrator.status().await?;
            out.status(&statuses)?;
            Ok(exit::OK)
        }
        Command::Check => {
            let report = migrator.check().await?;
            out.check(&report)?;
            Ok(if !report.drifted.is_empty() {
                exit::DRIFT
            } else if !report.pending.is_empty() {
                exit::PENDING
            } else {
                exit::OK
            })
        }
        Command::Verify if build == Build::LedgerOnly => {
            let statuses = migrator.status().await?;
            out.ledger(&statuses)?;
            Ok(exit::OK)
        }
        Command::Verify => {
            let report = migrator.check().await?;
            let statuses = migrator.status().await?;
            out.verify(&report, &statuses)?;
            Ok(if report.drifted.is_empty() {
                exit::OK
            } else {
                exit::DRIFT
            })
        }
        Command::MarkApplied(opts) => {
            migrator
                .runner_lock_timeout(opts.wait)
                .mark_applied(&opts.id, &opts.reason)
                .await?;
            out.done(
                &format!(
                    "marked {} as applied without running it: {}",
                    opts.id, opts.reason
                ),
                &opts.id,
            )?;
            Ok(exit::OK)
        }
        Command::Repair(opts) => {
            let drift = migrator
                .runner_lock_timeout(opts.wait)
                .repair(&opts.id, &opts.reason)
                .await?;
            out.repaired(&drift, &opts.reason)?;
            Ok(exit::OK)
        }
        Command::Rerun(opts) => {
            let mut migrator = migrator.runner_lock_timeout(opts.wait);
            if let Some(version) = &opts.app_version {
                migrator = migrator.app_version(version);
            }
            let report = migrator.rerun(&opts.id).await?;
            out.run(&report)?;
            Ok(exit::OK)
        }
        Command::Pause(opts) => {
            let pause = migrator.pause(&opts.id, opts.reason.as_deref()).await?;
            out.paused(&pause, "paused")?;
            Ok(exit::OK)
        }
        Command::Resume(opts) => {
            let pause = migrator.resume(&opts.id).await?;
            out.paused(&pause, "resumed")?;
            Ok(exit::OK)
        }
        Command::Cancel(opts) => {
            let cancel = migrator.cancel(&opts.id, opts.reason.as_deref()).await?;
            out.paused(&cancel, "cancelled")?;
            Ok(exit::OK)
        }
        Command::Unlock(opts) => unlock(migrator, &opts, out).await,
        Command::Doctor => {
            let doctor = migrator.doctor().await?;
            out.doctor(&doctor)?;
            Ok(if doctor.ledger_problem.is_some() {
                exit::UNEXPECTED
            } else {
                exit::OK
            })
        }
        Command::CheckIdempotency(opts) => {
            let migrator = match &opts.only {
                Some(id) => migrator.only(id),
                None => migrator,
            };
            let checks = migrator.check_idempotency().await?;
            out.idempotency(&checks)?;
            Ok(if checks.iter().all(IdempotencyCheck::is_idempotent) {
                exit::OK
            } else {
                exit::NOT_IDEMPOTENT
            })
        }
        Command::Fingerprint(opts) => {
            let mut conn = migrator
                .pool()
                .acquire()
                .await
                .map_err(|e| Failure::from(Error::Database(e)))?;
            let fingerprint =
                datamig::fingerprint_on::<DB>(&mut conn, &fingerprint_options(&opts, &cli.global))
                    .await?;
            out.fingerprint(&fingerprint)?;
            Ok(exit::OK)
        }
        Command::New(_) | Command::Compare(_) | Command::Copy(_) | Command::Cutover(_) => {
            unreachable!("handled above")
        }
    }
}

/// Sets on `migrator` what `run`'s options say, but the standbys' replay lag, which only
/// PostgreSQL watches (the caller sets it): for one run, and for each target of a fleet.
pub(crate) fn configure_run<DB: CliBackend>(
    mut migrator: Migrator<DB>,
    opts: &RunOpts,
) -> Migrator<DB> {
    migrator = migrator
        .dry_run(opts.dry_run)
        .restart(opts.restart)
        .runner_lock_timeout(opts.wait)
        .throttle_interval(opts.throttle_interval)
        .join(!opts.no_join);
    if let Some(timeout) = opts.lock_timeout {
        migrator = migrator.lock_timeout(timeout);
    }
    if let Some(timeout) = opts.statement_timeout {
        migrator = migrator.statement_timeout(timeout);
    }
    if let Some(version) = &opts.app_version {
        migrator = migrator.app_version(version);
    }
    if let Some(id) = &opts.to {
        migrator = migrator.up_to(id);
    }
    if let Some(id) = &opts.only {
        migrator = migrator.only(id);
    }
    if let Some(workers) = opts.workers {
        migrator = migrator.workers(workers);
    }
    migrator
}

async fn run<DB: CliBackend>(
    mut migrator: Migrator<DB>,
    opts: &RunOpts,
    out: &Output,
) -> Result<u8, Failure> {
    if let Some(dir) = &opts.schema {
        let applied = DB::apply_schema(migrator.pool(), dir).await?;
        out.schema_applied(dir, applied)?;
    }
    migrator = configure_run(migrator, opts);
    if let Some(max) = opts.max_replay_lag {
        migrator = DB::max_replay_lag(migrator, max)?;
    }
    let progress = Arc::new(out.progress());
    let sink = Arc::clone(&progress);
    migrator = migrator.on_progress(move |event| sink.update(event));

    // Ctrl-C or SIGTERM (a pod being stopped): the first asks the run to stop at the next
    // transaction boundary (after the migration or batch in progress commits); the second
    // abandons the transaction in progress: its session is closed, so the server rolls it back.
    let stop = StopSignal::new();
    migrator = migrator.stop_on(stop.clone());
    // Listening starts here, once, for both signals: a second signal that arrives while the
    // first is being handled is queued, never lost between two listeners.
    let mut shutdown = Shutdown::listen();
    let interrupted = async {
        shutdown.requested().await;
        stop.stop();
        progress.suspend(|| {
            eprintln!(
                "stopping after the current transaction commits or rolls back (interrupt again to roll it back now)"
            )
        });
        shutdown.requested().await;
    };
    let result = tokio::select! {
        result = migrator.run() => result,
        () = interrupted => {
            progress.finish();
            return Err(Failure::new(
                exit::INTERRUPTED,
                "interrupted: the transaction in progress was rolled back (its session was closed); \
                 what committed before it stays, and the next run goes on from there",
            ));
        }
    };
    progress.finish();
    let report = match result {
        Ok(report) => report,
        Err(Error::Stopped { after, .. }) => {
            return Err(Failure::new(
                exit::INTERRUPTED,
                format!("stopped on request: {after}; nothing is half-applied"),
            ));
        }
        Err(err) => return Err(err.into()),
    };
    for id in &report.unknown {
        eprintln!(
            "warning: the ledger has a row for {id}, which this build does not know (applied by \
             another release?); it is left as it is"
        );
    }
    // Also in the JSON result (`warnings`), for machines.
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    out.run(&report)?;
    Ok(if report.cancelled.is_empty() {
        exit::OK
    } else {
        exit::CANCELLED
    })
}

async fn unlock<DB: CliBackend>(
    migrator: Migrator<DB>,
    opts: &UnlockOpts,
    out: &Output,
) -> Result<u8, Failure> {
    let holders = migrator.lock_holders().await?;
    if holders.is_empty() {
        out.done("no runner holds the lock; nothing to release", "")?;
        return Ok(exit::OK);
    }
    // The same name the runners put in their session tag.
    let this_host = datamig::__private::host_name();
    for holder in &holders {
        let held_by = if holder.lease {
            "its lease".to_string()
        } else {
            format!("database session {}", holder.pid)
        };
        let verdict = match holder.runner() {
            Some((host, pid)) if host == this_host => {
                if datamig::__private::local_process_alive(pid) {
                    return Err(Failure::new(
                        exit::LOCK_TIMEOUT,
                        format!(
                            "the lock is held by datamig process {pid} on this host, which is still running \
                             ({held_by}); wait for it to finish or stop it first"
                        ),
                    ));
                }
                format!("its runner, process {pid} on this host, is gone")
            }
            Some((host, pid)) if opts.dangerously_terminate_holder => {
                format!(
                    "process {pid} on {host}, ended on request (--dangerously-terminate-holder)"
                )
            }
            Some((host, pid)) => {
                return Err(Failure::new(
                    exit::LOCK_TIMEOUT,
                    format!(
                        "the lock is held by datamig process {pid} on {host} ({held_by}); this host \
                         cannot tell whether it still runs: run `datamig unlock` on {host}, or pass \
                         --dangerously-terminate-holder once you know it is gone"
                    ),
                ));
            }
            None if opts.dangerously_terminate_holder => {
                format!(
                    "session {} ({:?}), ended on request",
                    holder.pid, holder.application_name
                )
            }
            None => {
                return Err(Failure::new(
                    exit::LOCK_TIMEOUT,
                    format!(
                        "the lock is held by database session {} ({:?}), which is not a datamig runner this \
                         command can check; pass --dangerously-terminate-holder once you know it is gone",
                        holder.pid, holder.application_name
                    ),
                ));
            }
        };
        if migrator.terminate_lock_holder(holder.pid).await? {
            let what = if holder.lease {
                format!("removed the lease of {}", holder.application_name)
            } else {
                format!("ended database session {}", holder.pid)
            };
            out.done(&format!("released the lock: {what} ({verdict})"), "")?;
        }
    }
    Ok(exit::OK)
}

fn fingerprint_options(tables: &TablesOpts, global: &GlobalOpts) -> FingerprintOptions {
    let ledger = LedgerConfig::default()
        .ledger_table(&global.ledger_table)
        .runs_table(&global.runs_table);
    let options = FingerprintOptions::new().ledger(&ledger);
    if tables.tables.is_empty() {
        options
    } else {
        options.only(tables.tables.clone())
    }
}

/// `compare`: both databases' fingerprints, table by table.
async fn compare(opts: &CompareOpts, global: &GlobalOpts, out: &Output) -> Result<u8, Failure> {
    let options = fingerprint_options(&opts.tables, global);
    let schemes = [
        connect::scheme(&opts.source)?,
        connect::scheme(&opts.target)?,
    ];
    if schemes[0] != schemes[1] && !schemes.contains(&Scheme::Postgres) {
        return Err(Failure::new(
            exit::USAGE,
            "compare takes two databases of one kind, or a PostgreSQL database and a SQLite \
             or MySQL one: a SQLite database is not compared with a MySQL one",
        ));
    }
    if !opts.unix_time.is_empty()
        && (schemes[0] == schemes[1] || !schemes.contains(&Scheme::Sqlite))
    {
        return Err(Failure::new(
            exit::USAGE,
            "--unix-time applies to a comparison of a SQLite and a PostgreSQL database",
        ));
    }
    if opts.zero_dates.is_some() && (schemes[0] == schemes[1] || !schemes.contains(&Scheme::MySql))
    {
        return Err(Failure::new(
            exit::USAGE,
            "--zero-dates applies to a comparison of a MySQL or MariaDB and a PostgreSQL database",
        ));
    }
    if schemes[0] != schemes[1] {
        return compare_across(opts, schemes[0] != Scheme::Postgres, out).await;
    }
    let mut sides = Vec::new();
    for url in [&opts.source, &opts.target] {
        sides.push(match schemes[0] {
            Scheme::Postgres => {
                fingerprint_at::<Postgres>(url, &options, global.lock == LockKind::Lease).await?
            }
            Scheme::Sqlite => fingerprint_at::<Sqlite>(url, &options, false).await?,
            Scheme::MySql => fingerprint_at::<MySql>(url, &options, false).await?,
        });
    }
    let differences = sides[0].differences(&sides[1]);
    out.comparison(&sides[0], &sides[1], &differences, &[])?;
    Ok(if differences.is_empty() {
        exit::OK
    } else {
        exit::DIFFERENT
    })
}

/// `compare` of a SQLite or MySQL database and a PostgreSQL one: row by row in
/// PostgreSQL's types, the other side's rows converted as a copy converts them.
async fn compare_across(
    opts: &CompareOpts,
    other_first: bool,
    out: &Output,
) -> Result<u8, Failure> {
    let (other, postgres) = if other_first {
        (&opts.source, &opts.target)
    } else {
        (&opts.target, &opts.source)
    };
    let postgres = connect::postgres_options(postgres)?;
    let mut copier = if connect::scheme(other)? == Scheme::MySql {
        datamig::copy::Copier::from_mysql(connect::mysql_options(other)?, postgres)
            .zero_dates(zero_dates(opts.zero_dates.as_deref())?)
    } else {
        let mut copier =
            datamig::copy::Copier::from_sqlite(connect::sqlite_options(other)?, postgres)
                .ledger(false);
        for given in &opts.unix_time {
            let (column, unit) = parse_unix_time(given)?;
            copier = copier.unix_time(column, unit);
        }
        copier
    };
    copier = copier.tables(opts.tables.tables.iter().cloned());
    let mut verification = copier.compare().await?;
    if !other_first {
        // Named from the SQLite or MySQL side; the source here is PostgreSQL.
        for row in &mut verification.rows {
            row.difference = match row.difference.as_str() {
                "only in the source" => "only in the target".into(),
                "only in the target" => "only in the source".into(),
                other => other.into(),
            };
        }
    }
    let (left, right) = if other_first {
        (&verification.source, &verification.target)
    } else {
        (&verification.target, &verification.source)
    };
    let differences = left.differences(right);
    out.comparison(left, right, &differences, &verification.rows)?;
    Ok(if differences.is_empty() {
        exit::OK
    } else {
        exit::DIFFERENT
    })
}

/// The target of a copy: a PostgreSQL database.
fn copy_target(url: &str) -> Result<sqlx::postgres::PgConnectOptions, Failure> {
    if connect::scheme(url)? != Scheme::Postgres {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "copy writes into PostgreSQL: the target {} is not a postgres:// URL (the source may be postgres://, sqlite: or mysql://)",
                connect::redact(url)
            ),
        ));
    }
    connect::postgres_options(url)
}

/// `--zero-dates`: refuse (the default), null, or a date.
fn zero_dates(given: Option<&str>) -> Result<datamig::copy::ZeroDates, Failure> {
    match given {
        Some(given) => given.parse().map_err(|why: String| {
            Failure::new(exit::USAGE, format!("--zero-dates {given}: {why}"))
        }),
        None => Ok(datamig::copy::ZeroDates::Refuse),
    }
}

/// `TABLE.COLUMN=seconds|milliseconds`.
fn parse_unix_time(given: &str) -> Result<(String, datamig::copy::UnixTime), Failure> {
    let usage = |why: String| {
        Failure::new(
            exit::USAGE,
            format!(
                "--unix-time {given}: {why}; write TABLE.COLUMN=seconds or TABLE.COLUMN=milliseconds"
            ),
        )
    };
    let (column, unit) = given
        .split_once('=')
        .ok_or_else(|| usage("no unit".into()))?;
    if !column.contains('.') {
        return Err(usage("no table".into()));
    }
    Ok((column.to_string(), unit.parse().map_err(usage)?))
}

/// `copy`: the rows of the source into the target's existing schema.
async fn copy(opts: &CopyOpts, out: &Output) -> Result<u8, Failure> {
    use datamig::copy::{Copier, CopyMode, Triggers};
    let target = copy_target(&opts.target)?;
    let scheme = connect::scheme(&opts.source)?;
    let from_mysql = scheme == Scheme::MySql;
    let from_sqlite = scheme == Scheme::Sqlite;
    if !from_mysql && opts.zero_dates.is_some() {
        return Err(Failure::new(
            exit::USAGE,
            "--zero-dates applies to a MySQL or MariaDB source (--source mysql://...)",
        ));
    }
    if !from_sqlite && (!opts.unix_time.is_empty() || opts.no_ledger) {
        return Err(Failure::new(
            exit::USAGE,
            "--unix-time and --no-ledger apply to a SQLite source (--source sqlite:FILE)",
        ));
    }
    let mode = match opts.mode {
        CopyModeArg::Empty => CopyMode::Empty,
        CopyModeArg::Merge => CopyMode::Merge,
        CopyModeArg::DangerouslyTruncate => CopyMode::DangerouslyTruncate,
    };
    let progress = std::sync::Arc::new(out.copy_progress());
    let events = std::sync::Arc::clone(&progress);
    let mut copier = if from_mysql {
        Copier::from_mysql(connect::mysql_options(&opts.source)?, target)
            .zero_dates(zero_dates(opts.zero_dates.as_deref())?)
    } else if from_sqlite {
        let mut copier = Copier::from_sqlite(connect::sqlite_options(&opts.source)?, target)
            .ledger(!opts.no_ledger);
        for given in &opts.unix_time {
            let (column, unit) = parse_unix_time(given)?;
            copier = copier.unix_time(column, unit);
        }
        copier
    } else {
        Copier::with_options(connect::postgres_options(&opts.source)?, target)
    }
    .tables(opts.tables.iter().cloned())
    .exclude(opts.exclude.iter().cloned())
    .exclude_columns(opts.exclude_columns.iter().cloned())
    .mode(mode)
    .jobs(
        opts.jobs
            .map_or_else(datamig::copy::default_jobs, usize::from),
    )
    .chunk_rows(opts.chunk_rows)
    .triggers(match opts.triggers {
        TriggersArg::Auto => Triggers::Auto,
        TriggersArg::On => Triggers::On,
        TriggersArg::Off => Triggers::Off,
    })
    .analyze(!opts.no_analyze)
    .sequences(!opts.no_sequences)
    .verify(opts.verify)
    .fail_fast(opts.fail_fast)
    .lock_timeout(opts.lock_timeout)
    .follow(opts.follow)
    .on_event(move |event| events.update(event));
    if let Some(schema) = &opts.progress_schema {
        copier = copier.progress_schema(schema);
    }
    if opts.dry_run {
        let plan = copier.plan().await?;
        out.copy_plan(&plan)?;
        return Ok(if plan.unconvertible_total > 0 {
            exit::COPY_FAILED
        } else {
            exit::OK
        });
    }
    let result = copier.run().await;
    progress.finish();
    let report = result?;
    out.copy_report(&report)?;
    let differs = report
        .verification
        .as_ref()
        .is_some_and(|v| !v.differences.is_empty());
    Ok(if differs { exit::DIFFERENT } else { exit::OK })
}

/// `cutover`: the end of an online copy (or its abandon, or its state).
async fn cutover(opts: &CutoverOpts, out: &Output) -> Result<u8, Failure> {
    let mut cutover = datamig::copy::Cutover::new(
        connect::postgres_options(&opts.source)?,
        copy_target(&opts.target)?,
    )
    .timeout(opts.timeout);
    if let Some(lag) = opts.max_lag {
        cutover = cutover.max_lag(lag);
    }
    if let Some(schema) = &opts.progress_schema {
        cutover = cutover.progress_schema(schema);
    }
    if opts.status {
        out.follow_status(&cutover.status().await?)?;
        return Ok(exit::OK);
    }
    if opts.abandon {
        out.follow_status(&cutover.abandon().await?)?;
        return Ok(exit::OK);
    }
    out.cutover_started();
    let report = cutover.run().await?;
    out.cutover_report(&report)?;
    Ok(if report.differences.is_empty() {
        exit::OK
    } else {
        exit::DIFFERENT
    })
}

/// The fingerprint of the database at `url`.
async fn fingerprint_at<DB: CliBackend>(
    url: &str,
    options: &FingerprintOptions,
    pooled: bool,
) -> Result<Fingerprint, Failure> {
    let pool = DB::connect(url, pooled).await?;
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| Failure::from(Error::Database(e)))?;
    Ok(datamig::fingerprint_on::<DB>(&mut conn, options).await?)
}

/// Ctrl-C (SIGINT) and, on Unix, SIGTERM, listened for from its creation on: each call of
/// [`Shutdown::requested`] takes the next signal, including one that arrived before it was
/// called.
struct Shutdown {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Shutdown {
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signals = signal(SignalKind::interrupt())
                .and_then(|int| Ok((int, signal(SignalKind::terminate())?)))
                .ok();
            Shutdown { signals }
        }
        #[cfg(not(unix))]
        Shutdown {}
    }

    /// Resolves on the next signal.
    async fn requested(&mut self) {
        #[cfg(unix)]
        if let Some((int, term)) = &mut self.signals {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A failure to report: its message for stderr and its exit code.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// What went wrong and what to do.
    pub message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::LockTimeout { .. } | Error::RangesHeld { .. } | Error::CopyBlocked { .. } => {
                exit::LOCK_TIMEOUT
            }
            Error::CopyRejected { .. } | Error::CopyUnconvertible { .. } => exit::COPY_FAILED,
            Error::CopyIncomplete { .. } => exit::COPY_INCOMPLETE,
            Error::FollowStopped(_) => exit::FOLLOW_STOPPED,
            Error::Drift { .. } => exit::DRIFT,
            Error::MigrationFailed { .. } | Error::Interrupted { .. } => exit::MIGRATION_FAILED,
            // A batch's COMMIT that failed leaves its migration unfinished, whatever the
            // batch's outcome: the next run goes on.
            Error::CommitOutcome {
                applied: Some(false),
                ..
            }
            | Error::CommitOutcome { batch: Some(_), .. } => exit::MIGRATION_FAILED,
            Error::NotIdempotent { .. } | Error::Diverged { .. } => exit::NOT_IDEMPOTENT,
            Error::Stopped { .. } => exit::INTERRUPTED,
            Error::LeaseLost { .. } => exit::LEASE_LOST,
            Error::DuplicateId { .. }
            | Error::LedgerShape { .. }
            | Error::UnknownId { .. }
            | Error::UnsupportedBackend { .. }
            | Error::SchemaNotReady { .. }
            | Error::BehindPooler { .. }
            | Error::CopyPlan { .. }
            | Error::CopyRefused(_)
            | Error::BadTarget { .. }
            | Error::DuplicateTarget { .. }
            | Error::Unreachable { .. }
            | Error::SchemaMissing { .. }
            | Error::Config(_) => exit::USAGE,
            Error::Runtime(_) => exit::UNEXPECTED,
            _ => exit::UNEXPECTED,
        };
        let mut message = err.to_string();
        if let Error::Drift { drifted } = &err {
            for d in drifted {
                message.push_str(&format!(
                    "\n  {}: applied checksum {} revision {}, code checksum {} revision {}",
                    d.id, d.applied_checksum, d.applied_revision, d.code_checksum, d.code_revision
                ));
            }
        }
        Failure::new(code, message)
    }
}

impl From<std::io::Error> for Failure {
    fn from(err: std::io::Error) -> Self {
        Failure::new(exit::UNEXPECTED, format!("cannot write the output: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::{Error, Failure, exit};

    #[test]
    fn a_runtime_failure_exits_as_unexpected_and_bad_configuration_as_usage() {
        let runtime = Failure::from(Error::Runtime(
            "the workers of m found no range left, yet its ledger row is not applied".into(),
        ));
        assert_eq!(runtime.code, exit::UNEXPECTED);
        assert!(
            runtime.message.starts_with("the workers of m"),
            "{}",
            runtime.message
        );
        let config = Failure::from(Error::Config("a reason is required".into()));
        assert_eq!(config.code, exit::USAGE);
        let failed = Failure::from(Error::MigrationFailed {
            id: "m".into(),
            message: "boom".into(),
            panicked: false,
            applied_before: Vec::new(),
            source: None,
        });
        assert_eq!(failed.code, exit::MIGRATION_FAILED);
    }
}
