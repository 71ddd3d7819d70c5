//! Fleets: one `run --targets` across tenant schemas and databases, as real processes of
//! the `datamig-fixtures` binary (whose migrations are deliberately not idempotent: a
//! counter of 1 and every item at 1 prove each target got each migration exactly once).
//! Tenant schemas hold the fixture tables with 300 items (3 batches), so that a fleet of
//! dozens stays quick.
//!
//! `DATAMIG_RELIABILITY_SEED` replays the kill instants.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use datamig::prelude::*;
use datamig::testing::TestDatabase;
use datamig::{Fleet, FleetEvent, Outcome, Targets};
use datamig_tests::{BUMP_ITEMS, COUNT_RUNS, Instants, count_runs, fixture_database, text};
use sqlx::{AssertSqlSafe, PgPool};

/// The binary with `args` and no `DATABASE_URL`: the targets name every database.
fn datamig(args: &[&str]) -> tokio::process::Command {
    let mut cmd = datamig_tests::command(env!("CARGO_BIN_EXE_datamig-fixtures"), "", args);
    cmd.env_remove("DATABASE_URL");
    cmd
}

/// The targets of a test: its file, and where each target's tables are (a pool and the
/// schema), in the file's order.
struct Setup {
    file: PathBuf,
    places: Vec<(PgPool, String)>,
    databases: Vec<TestDatabase>,
}

impl Setup {
    /// `schemas` tenant schemas in one database, then `databases` databases of their own.
    async fn new(schemas: usize, databases: usize) -> anyhow::Result<Self> {
        let mut lines = Vec::new();
        let mut places = Vec::new();
        let mut kept = Vec::new();
        if schemas > 0 {
            let db = datamig::testing::postgres().await?;
            create_tenants(db.pool(), schemas).await?;
            for i in 1..=schemas {
                lines.push(format!("{} schema=tenant_{i}", db.url()));
                places.push((db.pool().clone(), format!("tenant_{i}")));
            }
            kept.push(db);
        }
        for _ in 0..databases {
            let db = fixture_database(&[]).await?;
            lines.push(db.url().to_string());
            places.push((db.pool().clone(), "public".to_string()));
            kept.push(db);
        }
        Ok(Setup {
            file: targets_file(&lines.join("\n"))?,
            places,
            databases: kept,
        })
    }

    fn path(&self) -> &str {
        self.file.to_str().unwrap_or_default()
    }

    /// Each target's `(counter, items not at 1, applied ledger rows)`.
    async fn states(&self) -> anyhow::Result<Vec<(i32, i64, i64)>> {
        let mut states = Vec::new();
        for (pool, schema) in &self.places {
            states.push(state(pool, schema).await?);
        }
        Ok(states)
    }

    /// Every target got each migration exactly once.
    async fn assert_applied_once(&self) -> anyhow::Result<()> {
        for (n, state) in self.states().await?.into_iter().enumerate() {
            assert_eq!(
                state,
                (1, 0, 2),
                "target {}: (counter, items off, ledger)",
                n + 1
            );
        }
        Ok(())
    }

    /// Every target as before any run (the ledgers emptied, the tables reset).
    async fn reset(&self) -> anyhow::Result<()> {
        for (pool, schema) in &self.places {
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DELETE FROM {schema}.datamig_ledger; DELETE FROM {schema}.datamig_runs;
                 UPDATE {schema}.counter SET n = 0; UPDATE {schema}.items SET v = 0;"
            )))
            .execute(pool)
            .await?;
        }
        Ok(())
    }

    /// Turns fixture switch `name` on in target `n` (from 1).
    async fn switch_on(&self, n: usize, name: &str) -> anyhow::Result<()> {
        let (pool, schema) = &self.places[n - 1];
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {schema}.fixture_switches VALUES ($1)"
        )))
        .bind(name)
        .execute(pool)
        .await?;
        Ok(())
    }

    async fn switch_off(&self, n: usize, name: &str) -> anyhow::Result<()> {
        let (pool, schema) = &self.places[n - 1];
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {schema}.fixture_switches WHERE name = $1"
        )))
        .bind(name)
        .execute(pool)
        .await?;
        Ok(())
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Tenant schemas `tenant_1` to `tenant_{n}`, each with the fixture tables (300 items).
async fn create_tenants(pool: &PgPool, n: usize) -> anyhow::Result<()> {
    let mut sql = String::new();
    for i in 1..=n {
        sql.push_str(&format!(
            "CREATE SCHEMA tenant_{i};
             CREATE TABLE tenant_{i}.counter (n integer NOT NULL);
             INSERT INTO tenant_{i}.counter VALUES (0);
             CREATE TABLE tenant_{i}.items (id bigint PRIMARY KEY, v integer NOT NULL);
             INSERT INTO tenant_{i}.items SELECT g, 0 FROM generate_series(1, 300) AS g;
             CREATE TABLE tenant_{i}.fixture_switches (name text PRIMARY KEY);"
        ));
    }
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(pool).await?;
    Ok(())
}

/// A targets file holding `text`, in the temporary directory.
fn targets_file(text: &str) -> anyhow::Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let file = std::env::temp_dir().join(format!(
        "datamig-fleet-{}-{}.txt",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&file, text)?;
    Ok(file)
}

/// `(counter, items not at 1, applied ledger rows)` of the fixture tables in `schema`.
async fn state(pool: &PgPool, schema: &str) -> anyhow::Result<(i32, i64, i64)> {
    let counter: i32 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT n FROM {schema}.counter")))
        .fetch_one(pool)
        .await?;
    let off: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.items WHERE v <> 1"
    )))
    .fetch_one(pool)
    .await?;
    let ledger = sqlx::query_scalar::<_, i64>(AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.datamig_ledger WHERE status = 'applied'"
    )))
    .fetch_one(pool)
    .await;
    let ledger = match ledger {
        Ok(rows) => rows,
        Err(err) if datamig_tests::is_missing_table(&err) => 0,
        Err(err) => return Err(err.into()),
    };
    Ok((counter, off, ledger))
}

/// The lines of `stdout` that start with `label` (a target's outcome).
fn lines_with(stdout: &str, label: &str) -> usize {
    stdout.lines().filter(|l| l.starts_with(label)).count()
}

#[tokio::test]
async fn forty_tenant_schemas_and_eight_databases_get_each_migration_once() -> anyhow::Result<()> {
    let fleet = Setup::new(40, 8).await?;

    let check = datamig(&["check", "--targets", fleet.path()])
        .output()
        .await?;
    assert_eq!(check.status.code(), Some(6), "{}", text(&check.stderr));
    assert!(
        text(&check.stdout).contains("48 targets: 48 with pending migrations"),
        "{}",
        text(&check.stdout)
    );

    let started = Instant::now();
    let run = datamig(&["run", "--targets", fleet.path()])
        .output()
        .await?;
    let took = started.elapsed();
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", text(&run.stderr));
    assert!(
        stdout.contains("48 targets: 48 applied, 0 already applied, 0 failed, 0 not reached"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("2 applied: {COUNT_RUNS}, {BUMP_ITEMS}")),
        "{stdout}"
    );
    fleet.assert_applied_once().await?;

    // Nothing is left: a second run applies nothing anywhere, and the gates pass.
    let again = datamig(&["run", "--targets", fleet.path(), "--format", "json"])
        .output()
        .await?;
    assert!(again.status.success(), "{}", text(&again.stderr));
    let result: serde_json::Value =
        serde_json::from_str(text(&again.stdout).lines().last().unwrap_or_default())?;
    assert_eq!(result["type"], "fleet");
    assert_eq!(result["counts"]["already_applied"], 48, "{result}");
    assert_eq!(result["exit_code"], 0);
    assert_eq!(
        result["targets"][0]["target"],
        format!(
            "{} schema=tenant_1",
            redacted(fleet.places[0].0.connect_options().as_ref())
        )
    );
    fleet.assert_applied_once().await?;
    let check = datamig(&["check", "--targets", fleet.path()])
        .output()
        .await?;
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stdout));
    let status = datamig(&["status", "--targets", fleet.path()])
        .output()
        .await?;
    assert!(status.status.success());
    assert!(
        text(&status.stdout).contains("every migration is applied on every target read"),
        "{}",
        text(&status.stdout)
    );
    eprintln!("FLEET 48 targets applied in {took:?}");
    Ok(())
}

/// `postgres://user@host:port/database` of a pool's options.
fn redacted(options: &sqlx::postgres::PgConnectOptions) -> String {
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    )
}

#[tokio::test]
async fn two_fleet_runs_at_once_apply_each_migration_once_per_target() -> anyhow::Result<()> {
    let fleet = Setup::new(8, 2).await?;
    let first = datamig(&["run", "--targets", fleet.path()]).spawn()?;
    let second = datamig(&["run", "--targets", fleet.path()]).spawn()?;
    let outputs = [
        first.wait_with_output().await?,
        second.wait_with_output().await?,
    ];
    for output in &outputs {
        assert!(output.status.success(), "{}", text(&output.stderr));
    }
    // Each target was applied by one of them and found applied by the other.
    let applied: usize = outputs
        .iter()
        .map(|o| lines_with(&text(&o.stdout), "applied "))
        .sum();
    let found: usize = outputs
        .iter()
        .map(|o| lines_with(&text(&o.stdout), "already applied "))
        .sum();
    assert_eq!((applied, found), (10, 10), "{:?}", outputs);
    fleet.assert_applied_once().await?;
    Ok(())
}

#[tokio::test]
async fn tenants_of_one_database_run_at_once() -> anyhow::Result<()> {
    // Each tenant's runner lock is its own: two tenants' migrations are in progress at the
    // same moment (each sleeps 3 s inside its transaction with `slow` on).
    let fleet = Setup::new(2, 0).await?;
    fleet.switch_on(1, "slow").await?;
    fleet.switch_on(2, "slow").await?;
    let mut child = datamig(&["run", "--targets", fleet.path()]).spawn()?;
    datamig_tests::wait_until(
        &fleet.places[0].0,
        "SELECT (count(*) >= 2)::int::bigint FROM pg_stat_activity
         WHERE datname = current_database() AND state = 'active'
           AND query LIKE 'SELECT 0::bigint FROM pg_sleep%'",
    )
    .await?;
    child.start_kill()?;
    child.wait().await?;
    Ok(())
}

#[tokio::test]
async fn a_failing_tenant_stops_the_fleet_or_not_and_a_rerun_does_only_what_is_left()
-> anyhow::Result<()> {
    let fleet = Setup::new(6, 0).await?;
    fleet.switch_on(3, "fail").await?;

    // stop (the default), one target at a time: 1 and 2 applied, 3 failed, 4 to 6 untouched.
    let run = datamig(&["run", "--targets", fleet.path(), "--concurrency", "1"])
        .output()
        .await?;
    let stdout = text(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(4),
        "{stdout}\n{}",
        text(&run.stderr)
    );
    assert!(
        stdout.contains("6 targets: 2 applied, 0 already applied, 1 failed, 3 not reached"),
        "{stdout}"
    );
    assert!(stdout.contains("the fail switch is on"), "{stdout}");
    assert!(
        stdout.contains("tenant_3 failed and the fleet stops on failure"),
        "{stdout}"
    );
    let states = fleet.states().await?;
    assert_eq!(states[..2], [(1, 0, 2), (1, 0, 2)]);
    assert_eq!(
        states[2],
        (0, 300, 0),
        "the failed migration was rolled back"
    );
    assert!(states[3..].iter().all(|s| *s == (0, 300, 0)), "{states:?}");

    // continue: every target tried; 3 fails again, 4 to 6 applied, 1 and 2 left alone.
    let run = datamig(&["run", "--targets", fleet.path(), "--on-failure", "continue"])
        .output()
        .await?;
    let stdout = text(&run.stdout);
    assert_eq!(run.status.code(), Some(4), "{stdout}");
    assert!(
        stdout.contains("6 targets: 3 applied, 2 already applied, 1 failed, 0 not reached"),
        "{stdout}"
    );
    let states = fleet.states().await?;
    assert_eq!(states[2], (0, 300, 0));
    assert!(
        states
            .iter()
            .enumerate()
            .all(|(i, s)| i == 2 || *s == (1, 0, 2)),
        "{states:?}"
    );

    // Fixed: the re-run applies the one target left.
    fleet.switch_off(3, "fail").await?;
    let run = datamig(&["run", "--targets", fleet.path()])
        .output()
        .await?;
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{stdout}");
    assert!(
        stdout.contains("6 targets: 1 applied, 5 already applied, 0 failed, 0 not reached"),
        "{stdout}"
    );
    fleet.assert_applied_once().await?;
    Ok(())
}

#[tokio::test]
async fn a_failed_canary_starts_no_other_target() -> anyhow::Result<()> {
    let fleet = Setup::new(6, 0).await?;
    fleet.switch_on(2, "fail").await?;
    let run = datamig(&[
        "run",
        "--targets",
        fleet.path(),
        "--canary",
        "2",
        "--on-failure",
        "continue",
    ])
    .output()
    .await?;
    let stdout = text(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(4),
        "{stdout}\n{}",
        text(&run.stderr)
    );
    assert!(
        stdout.contains("6 targets: 1 applied, 0 already applied, 1 failed, 4 not reached"),
        "{stdout}"
    );
    assert!(
        stdout.contains("canary target") && stdout.contains("tenant_2 failed"),
        "{stdout}"
    );
    let states = fleet.states().await?;
    assert_eq!(states[0], (1, 0, 2));
    assert!(states[1..].iter().all(|s| *s == (0, 300, 0)), "{states:?}");
    Ok(())
}

#[tokio::test]
async fn twenty_kills_at_random_instants_each_rerun_leave_every_target_applied_once()
-> anyhow::Result<()> {
    let fleet = Setup::new(4, 2).await?;
    let (mut instants, seed) = Instants::from_env()?;
    let run = || datamig(&["run", "--targets", fleet.path(), "--concurrency", "6"]);
    let output = run().output().await?;
    assert!(output.status.success(), "{}", text(&output.stderr));
    // The kills' window: most of what a whole run from the start takes here.
    fleet.reset().await?;
    let started = Instant::now();
    assert!(run().output().await?.status.success());
    let window = started.elapsed().mul_f64(0.8);
    fleet.assert_applied_once().await?;
    let (mut kills, mut attempts) = (0, 0);
    while kills < 20 {
        attempts += 1;
        assert!(
            attempts <= 60,
            "only {kills} kills landed in {attempts} runs (seed {seed})"
        );
        fleet.reset().await?;
        let mut child = run().spawn()?;
        let at = Duration::from_millis(instants.next_millis(window.as_millis() as u64 + 1));
        if tokio::time::timeout(at, child.wait()).await.is_err() {
            kills += 1;
            child.start_kill()?; // SIGKILL
            child.wait().await?;
        }
        for (n, (counter, _, _)) in fleet.states().await?.into_iter().enumerate() {
            assert!(
                counter <= 1,
                "run {attempts} (seed {seed}), target {}: {counter}",
                n + 1
            );
        }
        let rerun = run().output().await?;
        assert!(
            rerun.status.success(),
            "run {attempts}, killed at {at:?} (seed {seed}): {}\n{}",
            text(&rerun.stdout),
            text(&rerun.stderr)
        );
        for (n, state) in fleet.states().await?.into_iter().enumerate() {
            assert_eq!(
                state,
                (1, 0, 2),
                "run {attempts}, killed at {at:?} (seed {seed}), target {}",
                n + 1
            );
        }
    }
    eprintln!(
        "FLEET 20 kills in a {window:?} window ({attempts} runs), each re-run applied every \
         target once (seed {seed})"
    );
    Ok(())
}

#[tokio::test]
async fn an_unreachable_target_is_one_failed_target_named_without_its_password()
-> anyhow::Result<()> {
    let fleet = Setup::new(2, 0).await?;
    let lines = format!(
        "{}\npostgres://fleet:Hunter2Secret@127.0.0.1:1/nowhere\n",
        std::fs::read_to_string(&fleet.file)?
    );
    let file = targets_file(&lines)?;
    let path = file.to_str().unwrap_or_default();
    let run = datamig(&[
        "run",
        "--targets",
        path,
        "--on-failure",
        "continue",
        "--log",
        "info",
        "--log-format",
        "json",
    ])
    .output()
    .await?;
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    assert_eq!(run.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("cannot connect to target postgres://fleet@127.0.0.1:1/nowhere"),
        "{stdout}"
    );
    assert!(
        stdout.contains("3 targets: 2 applied, 0 already applied, 1 failed, 0 not reached"),
        "{stdout}"
    );
    assert!(!stdout.contains("Hunter2Secret") && !stderr.contains("Hunter2Secret"));
    fleet.assert_applied_once().await?;

    // The trace: a `fleet` span around each target's `target` span (its name, no
    // password) around that target's `run`.
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let run_finished = events
        .iter()
        .find(|e| e["fields"]["message"] == "run finished")
        .unwrap_or_else(|| panic!("no run event: {stderr}"));
    // `spans` lists the spans around the event's own, which is `span`.
    let mut spans: Vec<&str> = run_finished["spans"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    if let Some(own) = run_finished["span"]["name"].as_str()
        && spans.last() != Some(&own)
    {
        spans.push(own);
    }
    assert_eq!(spans, ["fleet", "target", "run"], "{run_finished}");
    assert!(
        run_finished["spans"][1]["target"]
            .as_str()
            .is_some_and(|t| t.ends_with("schema=tenant_1") || t.ends_with("schema=tenant_2")),
        "{run_finished}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["fields"]["message"] == "target failed"
                && e["span"]["target"] == "postgres://fleet@127.0.0.1:1/nowhere"),
        "{stderr}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["fields"]["message"] == "fleet failed" && e["span"]["failed"] == 1),
        "{stderr}"
    );
    let _ = std::fs::remove_file(file);
    Ok(())
}

#[tokio::test]
async fn sqlite_files_are_targets_too() -> anyhow::Result<()> {
    let files = [
        datamig_tests::sqlite_fixture_database(&[]).await?,
        datamig_tests::sqlite_fixture_database(&[]).await?,
        datamig_tests::sqlite_fixture_database(&[]).await?,
    ];
    let lines: Vec<&str> = files.iter().map(|f| f.url()).collect();
    let file = targets_file(&lines.join("\n"))?;
    let path = file.to_str().unwrap_or_default();
    let run = datamig(&["run", "--targets", path]).output().await?;
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", text(&run.stderr));
    assert!(
        stdout.contains("3 targets: 3 applied, 0 already applied"),
        "{stdout}"
    );
    for f in &files {
        let n: i64 = sqlx::query_scalar("SELECT n FROM counter")
            .fetch_one(f.pool())
            .await?;
        let off: i64 = sqlx::query_scalar("SELECT count(*) FROM items WHERE v <> 1")
            .fetch_one(f.pool())
            .await?;
        assert_eq!((n, off), (1, 0));
    }

    // The library, in process: the same fleet, every target already applied, with its events.
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&events);
    let report = Fleet::<Sqlite>::new(Targets::parse(&lines.join("\n"))?)
        .concurrency(2)
        .configure(|m| m.migrations([&count_runs::MIGRATION]))
        .on_event(move |e| seen.lock().unwrap().push(e.clone()))
        .run()
        .await?;
    assert!(report.is_success());
    assert_eq!(report.count(Outcome::AlreadyApplied), 3);
    let events = events.lock().unwrap();
    assert_eq!(events.len(), 6, "{events:?}");
    assert!(matches!(
        events.last(),
        Some(FleetEvent::Finished {
            done: 3,
            total: 3,
            ..
        })
    ));
    let _ = std::fs::remove_file(file);
    Ok(())
}

#[tokio::test]
async fn bad_targets_are_named_and_nothing_runs() -> anyhow::Result<()> {
    let fleet = Setup::new(2, 0).await?;
    let good = std::fs::read_to_string(&fleet.file)?;
    let first = good.lines().next().unwrap_or_default().to_string();
    let other_user = first.replacen("postgres:postgres@", "someone:Hunter2Secret@", 1);
    for (lines, code, words) in [
        (
            format!("{first}\n\npostgres//app:Hunter2Secret@db/shop\n"),
            2,
            "targets, line 3: postgres//app:***@db/shop is not a database URL",
        ),
        (
            format!("# twice\n{first}\n{other_user}\n"),
            2,
            "targets, line 3: postgres://someone@",
        ),
        (
            format!("{first}\nsqlite:tenants.db\n"),
            2,
            "the targets mix backends: line 1 is a postgres target and line 2 a sqlite one",
        ),
    ] {
        let file = targets_file(&lines)?;
        let run = datamig(&["run", "--targets", file.to_str().unwrap_or_default()])
            .output()
            .await?;
        let stderr = text(&run.stderr);
        assert_eq!(run.status.code(), Some(code), "{stderr}");
        assert!(stderr.contains(words), "{words:?} in {stderr}");
        assert!(!stderr.contains("Hunter2Secret"), "{stderr}");
        let _ = std::fs::remove_file(file);
    }
    assert!(
        fleet.states().await?.iter().all(|s| *s == (0, 300, 0)),
        "nothing ran"
    );

    // A schema that does not exist is one failed target, named.
    let file = targets_file(&format!(
        "{good}\n{} schema=tenant_9\n",
        first.split_whitespace().next().unwrap_or_default()
    ))?;
    let run = datamig(&[
        "run",
        "--targets",
        file.to_str().unwrap_or_default(),
        "--on-failure",
        "continue",
    ])
    .output()
    .await?;
    let stdout = text(&run.stdout);
    assert_eq!(run.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("schema tenant_9 does not exist in that database"),
        "{stdout}"
    );
    fleet.assert_applied_once().await?;
    let _ = std::fs::remove_file(file);

    // The rollout's options need targets.
    let run = datamig(&["run", "--canary", "1"]).output().await?;
    assert_eq!(run.status.code(), Some(2));
    assert!(
        text(&run.stderr).contains("--targets"),
        "{}",
        text(&run.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn a_tenants_query_names_the_targets_and_pause_resume_reach_each() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    create_tenants(db.pool(), 3).await?;
    sqlx::raw_sql(
        "CREATE TABLE tenants (id int PRIMARY KEY, schema_name text NOT NULL);
         INSERT INTO tenants VALUES (1, 'tenant_1'), (2, 'tenant_2'), (3, 'tenant_3');",
    )
    .execute(db.pool())
    .await?;
    let query = "SELECT NULL, schema_name FROM tenants ORDER BY id";
    let fleet_cmd = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--targets-query", query]);
        datamig_tests::command(env!("CARGO_BIN_EXE_datamig-fixtures"), db.url(), &all)
    };

    let pause = fleet_cmd(&["pause", BUMP_ITEMS, "--reason", "replica lag"])
        .output()
        .await?;
    assert!(pause.status.success(), "{}", text(&pause.stderr));
    assert!(
        text(&pause.stdout).contains("3 targets: 3 paused, 0 failed"),
        "{}",
        text(&pause.stdout)
    );
    let run = fleet_cmd(&["run"]).output().await?;
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("1 applied: {COUNT_RUNS}; paused: {BUMP_ITEMS}")),
        "{stdout}"
    );
    let status = fleet_cmd(&["status"]).output().await?;
    let matrix = text(&status.stdout);
    assert!(matrix.contains(&format!("[1] {BUMP_ITEMS}")), "{matrix}");
    assert_eq!(
        matrix.lines().filter(|l| l.ends_with("  paused")).count(),
        3,
        "{matrix}"
    );
    let resume = fleet_cmd(&["resume", BUMP_ITEMS]).output().await?;
    assert!(
        text(&resume.stdout).contains("3 targets: 3 resumed, 0 failed"),
        "{}",
        text(&resume.stdout)
    );
    let run = fleet_cmd(&["run"]).output().await?;
    assert!(
        text(&run.stdout).contains("3 targets: 3 applied"),
        "{}",
        text(&run.stdout)
    );
    for i in 1..=3 {
        assert_eq!(state(db.pool(), &format!("tenant_{i}")).await?, (1, 0, 2));
    }
    Ok(())
}

/// Counts its run, then leaves its session changed: a temporary table, and another search
/// path (a `SET` inside a transaction outlives it).
#[datamig::migration(id = "20240301_0000_leaves_session_state")]
async fn leaves_session_state(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.execute("UPDATE counter SET n = n + 1").await?;
    ctx.execute("CREATE TEMP TABLE scratch (n int)").await?;
    ctx.execute("SET search_path TO public").await?;
    Ok(())
}

#[tokio::test]
async fn tenants_sharing_sessions_each_get_a_session_reset_for_them() -> anyhow::Result<()> {
    // The tenants of one database share its sessions, one target after the other here: what
    // a body left in a session (a search path, a temporary table) is gone for the next.
    let db = datamig::testing::postgres().await?;
    create_tenants(db.pool(), 3).await?;
    sqlx::raw_sql(
        "CREATE TABLE public.counter (n integer NOT NULL); INSERT INTO public.counter VALUES (0);",
    )
    .execute(db.pool())
    .await?;
    let lines: Vec<String> = (1..=3)
        .map(|i| format!("{} schema=tenant_{i}", db.url()))
        .collect();
    let report = Fleet::<Postgres>::new(Targets::parse(&lines.join("\n"))?)
        .concurrency(1)
        .configure(|m| m.migrations([&leaves_session_state::MIGRATION]))
        .run()
        .await?;
    assert!(
        report.is_success(),
        "{:?}",
        report.failures().collect::<Vec<_>>()
    );
    assert_eq!(report.count(Outcome::Applied), 3);
    for i in 1..=3 {
        let n: i32 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT n FROM tenant_{i}.counter")))
            .fetch_one(db.pool())
            .await?;
        assert_eq!(n, 1, "tenant_{i}");
    }
    assert_eq!(
        datamig_tests::counter(db.pool()).await?,
        0,
        "public was never migrated"
    );
    Ok(())
}

#[tokio::test]
async fn through_a_transaction_pooler_databases_take_the_lease_and_tenant_schemas_are_refused()
-> anyhow::Result<()> {
    let fleet = Setup::new(0, 2).await?;
    let bouncer = datamig_tests::PgBouncer::start(fleet.databases[0].url()).await?;
    let lines = fleet
        .databases
        .iter()
        .map(|db| bouncer.url(db.url()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let file = targets_file(&lines.join("\n"))?;
    let path = file.to_str().unwrap_or_default();

    // The advisory lock does not hold through it: each target refuses, nothing runs.
    let run = datamig(&["run", "--targets", path, "--on-failure", "continue"])
        .output()
        .await?;
    let stdout = text(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(2),
        "{stdout}\n{}",
        text(&run.stderr)
    );
    assert!(stdout.contains("transaction pooler"), "{stdout}");
    assert!(fleet.states().await?.iter().all(|s| s.0 == 0));

    let run = datamig(&["run", "--targets", path, "--lock", "lease"])
        .output()
        .await?;
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", text(&run.stderr));
    assert!(stdout.contains("2 targets: 2 applied"), "{stdout}");
    fleet.assert_applied_once().await?;

    // A tenant schema needs a session that keeps its search path.
    let tenant = targets_file(&format!("{} schema=public", lines[0]))?;
    let run = datamig(&[
        "run",
        "--targets",
        tenant.to_str().unwrap_or_default(),
        "--lock",
        "lease",
    ])
    .output()
    .await?;
    assert_eq!(run.status.code(), Some(2));
    assert!(
        text(&run.stderr).contains("the lease lock is for transaction poolers"),
        "{}",
        text(&run.stderr)
    );
    let _ = std::fs::remove_file(file);
    let _ = std::fs::remove_file(tenant);
    Ok(())
}
