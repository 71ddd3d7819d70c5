//! The fleet's benchmark: one deploy of two small data migrations to 200 tenant schemas,
//! as `datamig run --targets` with the default concurrency against a shell loop of
//! `datamig run` (one process a tenant, its schema first on the search path through the
//! URL's `options`); the same deploy again with nothing pending; and the client's peak
//! memory over 1,000 targets.
//!
//!     scripts/bench.sh --fleet      (or: cargo run --release -p datamig-examples --example fleet_benchmark)
//!
//! Both ways run this binary as the application's own `datamig` (with
//! `DATAMIG_BENCH_CLI=1` it is `datamig_cli::main()`, linked with the two migrations
//! below), so both pay for starting processes the same way. Memory is the peak resident
//! set of the fleet's process as `/usr/bin/time -v` reports it. Uses DATABASE_URL if set
//! (its own `bench_fleet_*` schemas only, dropped at the end), else a throwaway PostgreSQL
//! from `datamig::testing`. Timings are the median of `DATAMIG_BENCH_REPEAT` rounds
//! (default 3), the two ways interleaved.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use datamig::prelude::*;
use datamig_examples::bench::{secs, verdict};
use sqlx::PgPool;

const TENANTS: usize = 200;
const MEMORY_TARGETS: usize = 1_000;
const USERS: i64 = 100;

/// Every user of the tenant gets default settings.
#[datamig::migration(id = "20250401_0000_bench_fleet_defaults")]
async fn fleet_defaults(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.execute(
        "INSERT INTO settings (user_id, email_enabled)
         SELECT id, true FROM users ON CONFLICT (user_id) DO NOTHING",
    )
    .await?;
    Ok(())
}

/// Every email address of the tenant in lower case.
#[datamig::migration(id = "20250401_0001_bench_fleet_emails")]
async fn fleet_emails(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.execute("UPDATE users SET email = lower(email) WHERE email <> lower(email)")
        .await?;
    Ok(())
}

fn main() -> ExitCode {
    if std::env::var_os("DATAMIG_BENCH_CLI").is_some() {
        return datamig_cli::main();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(benchmark()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

async fn benchmark() -> anyhow::Result<bool> {
    let (pool, url, _throwaway) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (PgPool::connect(&url).await?, url, None),
        _ => {
            let db = datamig::testing::postgres().await?;
            (db.pool().clone(), db.url().to_string(), Some(db))
        }
    };
    let repeat: usize = std::env::var("DATAMIG_BENCH_REPEAT")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&pool)
        .await?;
    println!("server: {version}");
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!("machine: {cores} cores (client and server share them)");
    println!(
        "tenants: {TENANTS} schemas of one database, {USERS} users each, two migrations; \
         timings are the median of {repeat} rounds\n"
    );
    drop_schemas(&pool).await?;
    create_tenants(&pool, 1, TENANTS).await?;
    let dir = std::env::temp_dir().join(format!("datamig-fleet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let targets = dir.join("targets.txt");
    std::fs::write(&targets, target_lines(&url, TENANTS))?;
    let script = dir.join("loop.sh");
    std::fs::write(&script, shell_loop(&url, TENANTS)?)?;

    // A first deploy creates every tenant's ledger; the rounds then start from ledgers
    // that exist and hold nothing, as a deploy of two new migrations does.
    fleet(&targets, &[])?;
    let mut loops = Vec::new();
    let mut fleets = Vec::new();
    let mut fleet_nothing = Vec::new();
    let mut loop_nothing = Vec::new();
    for round in 1..=repeat {
        reset(&pool, TENANTS).await?;
        let looped = timed(|| run_script(&script))?;
        check_applied(&pool, TENANTS).await?;
        let nothing_looped = timed(|| run_script(&script))?;
        reset(&pool, TENANTS).await?;
        let fleeted = timed(|| fleet(&targets, &[]))?;
        check_applied(&pool, TENANTS).await?;
        let nothing = timed(|| fleet(&targets, &[]))?;
        println!(
            "round {round}: shell loop {}  fleet {}  fleet, nothing pending {}  shell loop, \
             nothing pending {}",
            secs(looped),
            secs(fleeted),
            secs(nothing),
            secs(nothing_looped)
        );
        loops.push(looped);
        fleets.push(fleeted);
        fleet_nothing.push(nothing);
        loop_nothing.push(nothing_looped);
    }
    let (looped, fleeted) = (median(&mut loops), median(&mut fleets));
    let (nothing, nothing_looped) = (median(&mut fleet_nothing), median(&mut loop_nothing));

    println!("\nmemory: {MEMORY_TARGETS} tenant schemas");
    create_tenants(&pool, TENANTS + 1, MEMORY_TARGETS).await?;
    let many = dir.join("targets-1000.txt");
    std::fs::write(&many, target_lines(&url, MEMORY_TARGETS))?;
    reset(&pool, MEMORY_TARGETS).await?;
    let started = Instant::now();
    let peak_kib = fleet_peak_rss(&many)?;
    let many_took = started.elapsed();
    check_applied(&pool, MEMORY_TARGETS).await?;
    let started = Instant::now();
    let idle_peak_kib = fleet_peak_rss(&many)?;
    let many_nothing = started.elapsed();

    println!();
    println!(
        "shell loop of `datamig run`, {TENANTS} tenants, 2 pending each      {}",
        secs(looped)
    );
    println!(
        "`datamig run --targets`, default concurrency (4), 2 pending each  {}",
        secs(fleeted)
    );
    println!(
        "`datamig run --targets`, nothing pending                         {}",
        secs(nothing)
    );
    println!(
        "shell loop, nothing pending                                      {}",
        secs(nothing_looped)
    );
    println!(
        "`datamig run --targets` over {MEMORY_TARGETS} tenants, 2 pending each: {}, peak RSS \
         {:.1} MiB; nothing pending: {}, peak RSS {:.1} MiB",
        secs(many_took),
        peak_kib as f64 / 1024.0,
        secs(many_nothing),
        idle_peak_kib as f64 / 1024.0
    );
    println!();
    let speedup = looped.as_secs_f64() / fleeted.as_secs_f64();
    let fast = speedup >= 4.0;
    println!(
        "speed-up fleet / shell loop = {speedup:.2}x  (target >= 4x)  {}",
        verdict(fast)
    );
    let quick = nothing < Duration::from_secs(2);
    println!(
        "fleet with nothing pending = {}  (target < 2 s)  {}",
        secs(nothing),
        verdict(quick)
    );
    let peak = peak_kib.max(idle_peak_kib);
    let small = peak < 100 * 1024;
    println!(
        "peak client RSS over {MEMORY_TARGETS} targets = {:.1} MiB  (target < 100 MB)  {}",
        peak as f64 / 1024.0,
        verdict(small)
    );
    drop_schemas(&pool).await?;
    let _ = std::fs::remove_dir_all(&dir);
    let met = fast && quick && small;
    println!(
        "\n{}",
        if met {
            "all targets met"
        } else {
            "targets MISSED"
        }
    );
    Ok(met)
}

/// Schemas `bench_fleet_{from}` to `bench_fleet_{to}`, each with `users` (mixed-case
/// emails) and an empty `settings`.
async fn create_tenants(pool: &PgPool, from: usize, to: usize) -> anyhow::Result<()> {
    for chunk in (from..=to).collect::<Vec<_>>().chunks(100) {
        let mut sql = String::new();
        for i in chunk {
            sql.push_str(&format!(
                "CREATE SCHEMA bench_fleet_{i};
                 CREATE TABLE bench_fleet_{i}.users (id bigint PRIMARY KEY, email text NOT NULL);
                 INSERT INTO bench_fleet_{i}.users
                     SELECT n, 'User' || n || '@Example.com' FROM generate_series(1, {USERS}) AS n;
                 CREATE TABLE bench_fleet_{i}.settings (user_id bigint PRIMARY KEY, email_enabled boolean NOT NULL);"
            ));
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Every tenant as before the deploy: no settings, emails in mixed case, ledgers empty.
async fn reset(pool: &PgPool, tenants: usize) -> anyhow::Result<()> {
    for chunk in (1..=tenants).collect::<Vec<_>>().chunks(200) {
        let mut sql = String::new();
        for i in chunk {
            sql.push_str(&format!(
                "TRUNCATE bench_fleet_{i}.settings;
                 UPDATE bench_fleet_{i}.users SET email = 'User' || id || '@Example.com';
                 DO $$ BEGIN
                   IF to_regclass('bench_fleet_{i}.datamig_ledger') IS NOT NULL THEN
                     TRUNCATE bench_fleet_{i}.datamig_ledger, bench_fleet_{i}.datamig_runs;
                   END IF;
                 END $$;"
            ));
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await?;
    }
    sqlx::raw_sql("VACUUM ANALYZE").execute(pool).await?;
    Ok(())
}

/// Fails unless both migrations are applied, once, on each of the first `tenants`.
async fn check_applied(pool: &PgPool, tenants: usize) -> anyhow::Result<()> {
    let mut sql = Vec::new();
    for i in 1..=tenants {
        sql.push(format!(
            "SELECT (SELECT count(*) FROM bench_fleet_{i}.datamig_ledger) * 1000
                    + (SELECT count(*) FROM bench_fleet_{i}.settings)
                    + (SELECT count(*) FROM bench_fleet_{i}.users WHERE email <> lower(email)) AS n"
        ));
    }
    let per_tenant: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.join(" UNION ALL ")))
        .fetch_all(pool)
        .await?;
    anyhow::ensure!(
        per_tenant.iter().all(|n| *n == 2000 + USERS),
        "a tenant was not migrated exactly once: {:?}",
        per_tenant.iter().find(|n| **n != 2000 + USERS)
    );
    Ok(())
}

async fn drop_schemas(pool: &PgPool) -> anyhow::Result<()> {
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'bench\\_fleet\\_%'",
    )
    .fetch_all(pool)
    .await?;
    for chunk in schemas.chunks(100) {
        let sql: String = chunk
            .iter()
            .map(|s| format!("DROP SCHEMA {s} CASCADE;"))
            .collect();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// The targets file of the first `tenants` schemas.
fn target_lines(url: &str, tenants: usize) -> String {
    (1..=tenants)
        .map(|i| format!("{url} schema=bench_fleet_{i}\n"))
        .collect()
}

/// The shell loop a deploy runs without fleets: `datamig run` once a tenant, the tenant's
/// schema first on the search path (the URL's `options`), its ledger there.
fn shell_loop(url: &str, tenants: usize) -> anyhow::Result<String> {
    let exe = std::env::current_exe()?;
    let separator = if url.contains('?') { '&' } else { '?' };
    let schemas: Vec<String> = (1..=tenants).map(|i| format!("bench_fleet_{i}")).collect();
    Ok(format!(
        "set -e\nfor schema in {}; do\n  DATABASE_URL=\"{url}{separator}options=-c%20search_path%3D$schema\" \
         DATAMIG_BENCH_CLI=1 '{}' run --ledger-schema \"$schema\" >/dev/null\ndone\n",
        schemas.join(" "),
        exe.display()
    ))
}

fn run_script(script: &Path) -> anyhow::Result<()> {
    let output = Command::new("sh").arg(script).output()?;
    anyhow::ensure!(
        output.status.success(),
        "the shell loop failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// `datamig run --targets FILE` with the default concurrency, in a process of its own.
fn fleet(targets: &Path, wrapper: &[&str]) -> anyhow::Result<String> {
    let exe = std::env::current_exe()?;
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(&exe);
            cmd
        }
        None => Command::new(&exe),
    };
    let output = cmd
        .env("DATAMIG_BENCH_CLI", "1")
        .env_remove("DATABASE_URL")
        .args(["run", "--targets"])
        .arg(targets)
        .stdout(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    anyhow::ensure!(output.status.success(), "the fleet failed: {stderr}");
    Ok(stderr)
}

/// The fleet's peak resident set in KiB, as `/usr/bin/time -v` reports it.
fn fleet_peak_rss(targets: &Path) -> anyhow::Result<u64> {
    let report = fleet(targets, &["/usr/bin/time", "-v"])?;
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no peak RSS in the report of /usr/bin/time: {report}"))
}

fn timed<T>(work: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<Duration> {
    let started = Instant::now();
    work()?;
    Ok(started.elapsed())
}

fn median(runs: &mut [Duration]) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}
