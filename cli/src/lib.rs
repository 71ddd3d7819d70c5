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

pub mod exit;
mod opt;

use std::io::Write;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use datamig::{Error, LedgerConfig, MigrationStatus, Migrator, RunReport, State};
use sqlx::Connection;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};

pub use opt::{Cli, Command, Format, GlobalOpts, RunOpts};

/// Parses the command line, runs the command, and returns its exit code.
///
/// Usage errors exit with [`exit::USAGE`] after clap's message.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
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
    match runtime.block_on(execute(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Runs one parsed command; returns the exit code, or the failure to print.
pub async fn execute(cli: Cli) -> Result<u8, Failure> {
    let pool = connect(&cli.global).await?;
    let mut ledger = LedgerConfig::default()
        .ledger_table(&cli.global.ledger_table)
        .runs_table(&cli.global.runs_table);
    if let Some(schema) = &cli.global.ledger_schema {
        ledger = ledger.schema(schema);
    }
    let migrator = Migrator::new(pool).ledger(ledger);
    let format = cli.global.format;
    match cli.command {
        Command::Run(opts) => run(migrator, &opts, format).await,
        Command::Status => status(migrator, format).await,
    }
}

async fn run(
    mut migrator: Migrator<sqlx::Postgres>,
    opts: &RunOpts,
    format: Format,
) -> Result<u8, Failure> {
    migrator = migrator
        .dry_run(opts.dry_run)
        .runner_lock_timeout(opts.wait);
    if let Some(timeout) = opts.lock_timeout {
        migrator = migrator.lock_timeout(timeout);
    }
    if let Some(timeout) = opts.statement_timeout {
        migrator = migrator.statement_timeout(timeout);
    }
    if let Some(version) = &opts.app_version {
        migrator = migrator.app_version(version);
    }
    let report = migrator.run().await.map_err(Failure::from)?;
    for id in &report.unknown {
        eprintln!(
            "warning: the ledger has a row for {id}, which this build does not know (applied by \
             another release?); it is left as it is"
        );
    }
    match format {
        Format::Json => print_json(&report)?,
        Format::Human => print_run(&report)?,
    }
    Ok(exit::OK)
}

fn print_run(report: &RunReport) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let verb = match report.dry_run {
        true => "would apply",
        false => "applied",
    };
    for applied in &report.applied {
        let verb = if applied.rerun && !report.dry_run {
            "re-ran"
        } else {
            verb
        };
        writeln!(
            out,
            "{verb} {}  {} rows  {}",
            applied.id,
            applied.rows_affected,
            humantime::format_duration(Duration::from_millis(applied.duration_ms))
        )?;
        for note in &applied.notes {
            writeln!(out, "  {note}")?;
        }
    }
    if report.dry_run {
        writeln!(
            out,
            "dry run: every change was rolled back, nothing was recorded"
        )?;
    }
    writeln!(
        out,
        "{} {}, 0 pending, {} already applied",
        report.applied.len(),
        if report.dry_run {
            "would apply"
        } else {
            "applied"
        },
        report.already_applied.len()
    )?;
    Ok(())
}

async fn status(migrator: Migrator<sqlx::Postgres>, format: Format) -> Result<u8, Failure> {
    let statuses = migrator.status().await.map_err(Failure::from)?;
    match format {
        Format::Json => print_json(&statuses)?,
        Format::Human => print_status(&statuses)?,
    }
    Ok(exit::OK)
}

fn print_status(statuses: &[MigrationStatus]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let width = statuses
        .iter()
        .map(|s| s.id.len())
        .max()
        .unwrap_or(2)
        .max(2);
    writeln!(
        out,
        "{:<width$}  {:<8}  {:<20}  {:>10}  DESCRIPTION",
        "ID", "STATE", "APPLIED AT", "ROWS"
    )?;
    for s in statuses {
        let state = match s.state {
            State::Applied => "applied",
            State::Pending => "pending",
            State::Running => "running",
            State::Drifted => "drifted",
            State::Unknown => "unknown",
            _ => "other",
        };
        let (at, rows) = match &s.ledger {
            Some(e) => (
                e.finished_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                e.rows_affected.to_string(),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        let description = s.description.lines().next().unwrap_or("");
        writeln!(
            out,
            "{:<width$}  {state:<8}  {at:<20}  {rows:>10}  {description}",
            s.id
        )?;
        if let Some(entry) = s.ledger.as_ref().filter(|e| e.is_running()) {
            writeln!(
                out,
                "{:<width$}  {} batches done, checkpoint {}",
                "",
                entry.batches,
                entry.checkpoint.as_deref().unwrap_or("-")
            )?;
        }
        if let Some(run) = s.last_run.as_ref().filter(|r| r.outcome == "failed") {
            writeln!(
                out,
                "{:<width$}  last attempt failed: {}",
                "",
                run.error.as_deref().unwrap_or("?")
            )?;
        }
    }
    let count = |state| statuses.iter().filter(|s| s.state == state).count();
    writeln!(
        out,
        "{} applied, {} pending, {} running, {} drifted, {} unknown",
        count(State::Applied),
        count(State::Pending),
        count(State::Running),
        count(State::Drifted),
        count(State::Unknown)
    )?;
    Ok(())
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)
        .map_err(|e| Failure::new(exit::UNEXPECTED, format!("cannot write JSON: {e}")))?;
    writeln!(out)?;
    Ok(())
}

async fn connect(global: &GlobalOpts) -> Result<PgPool, Failure> {
    let Some(url) = global.database_url.as_deref().filter(|u| !u.is_empty()) else {
        return Err(Failure::new(
            exit::USAGE,
            "no database given: set DATABASE_URL or pass --database-url",
        ));
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "unsupported database URL {}: expected postgres://user:password@host:port/database",
                redact(url)
            ),
        ));
    }
    let options = PgConnectOptions::from_str(url).map_err(|err| {
        Failure::new(
            exit::USAGE,
            format!("invalid database URL {}: {}", redact(url), describe(&err)),
        )
    })?;
    let cannot = |cause: String| {
        Failure::new(
            exit::USAGE,
            format!("cannot connect to the database at {}: {cause}", redact(url)),
        )
    };
    // One direct connection first: it fails fast with the server's own words (wrong
    // password, missing database, connection refused), where a pool would retry until its
    // timeout and report only that it timed out.
    let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
        .await
        .map_err(|_| {
            cannot(format!(
                "no answer within {}",
                humantime::format_duration(CONNECT_TIMEOUT)
            ))
        })?
        .map_err(|err| cannot(describe(&err)))?;
    let _ = probe.close().await;
    Ok(PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_lazy_with(options))
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The cause of a connection failure, in words.
fn describe(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => db.message().to_string(),
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::PoolTimedOut => "timed out".to_string(),
        sqlx::Error::Configuration(cause) => format!("invalid URL: {cause}"),
        other => other.to_string(),
    }
}

/// The URL with its password replaced by `***`, for messages.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &authority[..colon],
                &url[scheme_end + at..]
            ),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// A failure to report: its message for stderr and its exit code.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// One line saying what went wrong and what to do.
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
            Error::LockTimeout { .. } => exit::LOCK_TIMEOUT,
            Error::Drift { .. } => exit::DRIFT,
            Error::MigrationFailed { .. } => exit::MIGRATION_FAILED,
            Error::DuplicateId { .. }
            | Error::UnknownId { .. }
            | Error::UnsupportedBackend { .. }
            | Error::Config(_) => exit::USAGE,
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
    use super::redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
