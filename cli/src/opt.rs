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
    /// The database to migrate, e.g. postgres://user:password@host:5432/app.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Output format: human-readable text, or one JSON document on stdout.
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
    /// Show every migration: applied, pending, drifted, or unknown to this build.
    Status,
}

/// Options of `run`.
#[derive(Debug, Args)]
pub struct RunOpts {
    /// Execute each pending migration and roll it back: report what it would do, keep nothing.
    #[arg(long)]
    pub dry_run: bool,

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
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e}: expected a duration such as 500ms, 5s or 2min"))
}
