//! `--targets` / `--targets-query`: `run`, `status`, `check`, `verify`, `pause` and `resume`
//! across many databases and tenant schemas, through `datamig::Fleet`. The exit code is the
//! worst outcome over the targets (see [`crate::exit::worst`]).

use std::io::Read;
use std::sync::Arc;

use datamig::{
    CheckReport, Error, Fleet, FleetBackend, LedgerConfig, MigrationStatus, Migrator, OnFailure,
    Postgres, RunnerLock, Sqlite, StopSignal, Targets,
};

use crate::connect::{self, CliBackend, Scheme};
use crate::fleet_output::FleetOutput;
use crate::opt::{Cli, Command, LockKind, OnFailureArg, RunOpts};
use crate::{Build, Failure, Shutdown, exit};

/// Whether this command runs on targets. Refuses the fleet's `run` options without them.
pub(crate) fn wanted(cli: &Cli) -> Result<bool, Failure> {
    let fleet = &cli.global.fleet;
    let wanted = fleet.targets.is_some() || fleet.targets_query.is_some();
    if let Command::Run(opts) = &cli.command
        && !wanted
        && (opts.canary > 0 || opts.on_failure != OnFailureArg::Stop)
    {
        return Err(Failure::new(
            exit::USAGE,
            "--canary and --on-failure roll a run out over targets: give --targets FILE or \
             --targets-query SQL",
        ));
    }
    Ok(wanted)
}

/// Runs the command on every target.
pub(crate) async fn execute(cli: Cli, build: Build) -> Result<u8, Failure> {
    let name = match &cli.command {
        Command::Run(_) => "run",
        Command::Status => "status",
        Command::Check => "check",
        Command::Verify => "verify",
        Command::Pause(_) => "pause",
        Command::Resume(_) => "resume",
        _ => {
            return Err(Failure::new(
                exit::USAGE,
                "--targets and --targets-query apply to run, status, check, verify, pause and \
                 resume",
            ));
        }
    };
    let targets = read_targets(&cli).await?;
    match targets.backend()? {
        Some("sqlite") => execute_on::<Sqlite>(cli, targets, build, name).await,
        _ => execute_on::<Postgres>(cli, targets, build, name).await,
    }
}

/// The targets of `--targets FILE` (`-`: standard input) or `--targets-query SQL`.
async fn read_targets(cli: &Cli) -> Result<Targets, Failure> {
    let fleet = &cli.global.fleet;
    if let Some(sql) = &fleet.targets_query {
        let (url, scheme) = connect::database_url(&cli.global)?;
        return Ok(match scheme {
            Scheme::Postgres => Targets::query::<Postgres>(url, sql).await?,
            Scheme::Sqlite => Targets::query::<Sqlite>(url, sql).await?,
            Scheme::MySql => {
                return Err(Failure::new(
                    exit::USAGE,
                    "--targets-query reads its targets from PostgreSQL or SQLite; fleets are not \
                     available on MySQL and MariaDB",
                ));
            }
        });
    }
    let Some(path) = &fleet.targets else {
        return Err(Failure::new(exit::USAGE, "no targets given"));
    };
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|err| {
            Failure::new(
                exit::USAGE,
                format!("cannot read the targets from standard input: {err}"),
            )
        })?;
        return Ok(Targets::parse(&text)?);
    }
    Ok(Targets::read(path)?)
}

async fn execute_on<DB: CliBackend + FleetBackend>(
    cli: Cli,
    targets: Targets,
    build: Build,
    name: &'static str,
) -> Result<u8, Failure> {
    let global = &cli.global;
    let mut ledger = LedgerConfig::default()
        .ledger_table(&global.ledger_table)
        .runs_table(&global.runs_table);
    if let Some(schema) = &global.ledger_schema {
        ledger = ledger.schema(schema);
    }
    let lock = match global.lock {
        LockKind::Advisory => RunnerLock::Advisory,
        LockKind::Lease => RunnerLock::lease_for(global.lease_ttl),
    };
    let out = FleetOutput::new(global.format, name);
    let mut fleet = Fleet::<DB>::new(targets)
        .concurrency(usize::from(global.fleet.concurrency))
        .ledger(ledger)
        .runner_lock(lock);
    if build == Build::LedgerOnly {
        fleet = fleet.configure(Migrator::ledger_only);
        if matches!(
            cli.command,
            Command::Status | Command::Check | Command::Verify
        ) {
            eprintln!(
                "note: this datamig binary has no migrations compiled in: it reads the ledgers \
                 alone; pending migrations and drift need your application's own binary"
            );
        }
    }
    match &cli.command {
        Command::Run(opts) => run(fleet, opts, &out).await,
        Command::Status => {
            let report = fleet.status().await?;
            out.status(report)
        }
        Command::Check => {
            let report = fleet.check().await?;
            out.check(report)
        }
        Command::Verify => {
            let report = fleet
                .on_failure(OnFailure::Continue)
                .each(
                    async |m| -> Result<(CheckReport, Vec<MigrationStatus>), Error> {
                        Ok((m.check().await?, m.status().await?))
                    },
                )
                .await?;
            out.verify(report)
        }
        Command::Pause(opts) => {
            let report = fleet.pause(&opts.id, opts.reason.as_deref()).await?;
            out.paused(report, &opts.id, "paused")
        }
        Command::Resume(opts) => {
            let report = fleet.resume(&opts.id).await?;
            out.paused(report, &opts.id, "resumed")
        }
        _ => unreachable!("refused in execute"),
    }
}

/// `run --targets`: every target's migrator set up as `run` sets up one, rolled out, with
/// progress on stderr and the same two-step interruption as a single run.
async fn run<DB: CliBackend + FleetBackend>(
    fleet: Fleet<DB>,
    opts: &RunOpts,
    out: &FleetOutput,
) -> Result<u8, Failure> {
    if opts.schema.is_some() {
        return Err(Failure::new(
            exit::USAGE,
            "--schema DIR applies schema migrations to one database: with --targets, apply \
             them to each target first (sqlx migrate run), then run the data migrations",
        ));
    }
    if opts.max_replay_lag.is_some() && DB::ID != "postgres" {
        return Err(Failure::new(
            exit::USAGE,
            "--max-replay-lag watches the standbys of a PostgreSQL server; SQLite has none",
        ));
    }
    let setup = opts.clone();
    let progress = Arc::new(out.progress(fleet.targets().len()));
    let events = Arc::clone(&progress);
    let stop = StopSignal::new();
    let fleet = fleet
        .canary(opts.canary)
        .on_failure(match opts.on_failure {
            OnFailureArg::Stop => OnFailure::Stop,
            OnFailureArg::Continue => OnFailure::Continue,
        })
        .configure(move |m| {
            let m = crate::configure_run::<DB>(m, &setup);
            match setup.max_replay_lag {
                // Refused on SQLite before the fleet starts.
                Some(max) => DB::max_replay_lag(m.clone(), max).unwrap_or(m),
                None => m,
            }
        })
        .on_event(move |event| events.update(event))
        .stop_on(stop.clone());

    // Ctrl-C or SIGTERM: the first starts no new target and stops each running one at its
    // next transaction boundary; the second abandons the transactions in progress (their
    // sessions are closed, so the servers roll them back).
    let mut shutdown = Shutdown::listen();
    let interrupted = async {
        shutdown.requested().await;
        stop.stop();
        progress.suspend(|| {
            eprintln!(
                "stopping: no new target starts, and each running one stops after its current \
                 transaction commits or rolls back (interrupt again to roll them back now)"
            )
        });
        shutdown.requested().await;
    };
    let result = tokio::select! {
        result = fleet.run() => result,
        () = interrupted => {
            progress.finish();
            return Err(Failure::new(
                exit::INTERRUPTED,
                "interrupted: the transactions in progress were rolled back (their sessions were \
                 closed); what committed before them stays, and the next run goes on from there",
            ));
        }
    };
    progress.finish();
    out.run(result?)
}
