//! The workers' benchmark: the 1M-row backfill of the helpers' benchmark (10,000 users a
//! batch into `bench_settings`) with 1, 2 and 4 workers, side by side on one server in one
//! run, rounds interleaved.
//!
//!     scripts/bench.sh --workers      (or: cargo run --release -p datamig-examples --example workers_benchmark)
//!
//! Each run is a separate client process (this binary with `--child N URL`), which reports
//! how long `run` took and its peak resident set, so the memory per worker count is the
//! client's own. Uses DATABASE_URL if set (its own `bench_*` tables only), else a throwaway
//! PostgreSQL from `datamig::testing`. Each timing is the median of `DATAMIG_BENCH_REPEAT`
//! rounds (default 3).

use std::process::Command;
use std::time::Duration;

use datamig::prelude::*;
use datamig_examples::bench::{peak_rss_kib, secs, verdict};
use sqlx::PgPool;

const USERS: i64 = 1_000_000;

/// The helpers' benchmark's batched backfill, 10,000 users a batch, one commit each.
#[datamig::migration(
    id = "20250101_0003_bench_workers_backfill",
    batch(table = "bench_users", key = "id", size = 10_000)
)]
async fn workers_backfill(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "INSERT INTO bench_settings (user_id, email_enabled, push_enabled)
         SELECT id, true, true FROM bench_users WHERE {batch}
         ON CONFLICT (user_id) DO NOTHING",
        &batch,
    )
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        return child(args[2].parse()?, &args[3]).await;
    }
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
    println!("users: {USERS}; 10,000 a batch; timings are the median of {repeat} rounds\n");
    setup(&pool).await?;

    let counts = [1_u32, 2, 4];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); counts.len()];
    let mut peaks: Vec<u64> = vec![0; counts.len()];
    for round in 1..=repeat {
        for (i, workers) in counts.iter().enumerate() {
            reset(&pool).await?;
            let output = Command::new(std::env::current_exe()?)
                .args(["--child", &workers.to_string(), &url])
                .output()?;
            anyhow::ensure!(
                output.status.success(),
                "the run with {workers} worker(s) failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let text = String::from_utf8_lossy(&output.stdout);
            let mut fields = text.split_whitespace();
            let took = Duration::from_secs_f64(fields.next().unwrap_or("0").parse()?);
            let rss: u64 = fields.next().unwrap_or("0").parse()?;
            let done: i64 = sqlx::query_scalar("SELECT count(*) FROM bench_settings")
                .fetch_one(&pool)
                .await?;
            anyhow::ensure!(done == USERS, "{workers} worker(s) left {done} rows");
            println!(
                "round {round}: {workers} worker(s)  {}  peak client RSS {:.1} MiB",
                secs(took),
                rss as f64 / 1024.0
            );
            times[i].push(took);
            peaks[i] = peaks[i].max(rss);
        }
    }
    let median = |runs: &mut Vec<Duration>| {
        runs.sort();
        runs[runs.len() / 2]
    };
    let medians: Vec<Duration> = times.iter_mut().map(median).collect();
    println!();
    for ((workers, took), peak) in counts.iter().zip(&medians).zip(&peaks) {
        println!(
            "batched backfill, {workers} worker(s)  {}  ({:.0} rows/s)  peak client RSS {:.1} MiB",
            secs(*took),
            USERS as f64 / took.as_secs_f64(),
            *peak as f64 / 1024.0
        );
    }
    println!();
    let speedup_2 = medians[0].as_secs_f64() / medians[1].as_secs_f64();
    let speedup_4 = medians[0].as_secs_f64() / medians[2].as_secs_f64();
    let two = speedup_2 >= 1.5;
    let four = medians[2] <= medians[1].mul_f64(1.05);
    println!(
        "speed-up 2 workers / 1 = {speedup_2:.2}x  (target >= 1.5x)  {}",
        verdict(two)
    );
    println!(
        "speed-up 4 workers / 1 = {speedup_4:.2}x  (target: no slower than 2 workers, within 5% noise)  {}",
        verdict(four)
    );
    let memory = peaks.iter().all(|p| *p < 150 * 1024);
    println!(
        "peak client RSS by workers 1/2/4 = {:.1}/{:.1}/{:.1} MiB  (target: constant per worker, < 150 MiB)  {}",
        peaks[0] as f64 / 1024.0,
        peaks[1] as f64 / 1024.0,
        peaks[2] as f64 / 1024.0,
        verdict(memory)
    );
    cleanup(&pool).await?;
    println!(
        "\n{}",
        if two && four && memory {
            "all targets met"
        } else {
            "targets MISSED"
        }
    );
    Ok(())
}

/// One run of the backfill with `workers` workers, in this process: prints its duration in
/// seconds and the process's peak resident set in KiB.
async fn child(workers: u32, url: &str) -> anyhow::Result<()> {
    let pool = PgPool::connect(url).await?;
    let started = std::time::Instant::now();
    migrator(&pool).workers(workers).run().await?;
    let took = started.elapsed();
    println!("{} {}", took.as_secs_f64(), peak_rss_kib()?);
    Ok(())
}

fn migrator(pool: &PgPool) -> Migrator<Postgres> {
    Migrator::new(pool.clone())
        .migrations([&workers_backfill::MIGRATION])
        .ledger(datamig_examples::bench::ledger())
}

async fn setup(pool: &PgPool) -> anyhow::Result<()> {
    cleanup(pool).await?;
    datamig_examples::bench::create_users_and_settings(pool).await
}

async fn cleanup(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_settings, bench_users, bench_ledger, bench_runs, bench_ledger_ranges",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Empties the target and the ledger: the next run is a first run.
async fn reset(pool: &PgPool) -> anyhow::Result<()> {
    datamig_examples::bench::empty_settings_and_ledger(pool).await?;
    // The backfill's foreign-key checks lock rows of `bench_users`: vacuumed between runs,
    // so no run pays for (or leaves to the next) an autovacuum of the last one's locks.
    for table in ["bench_settings", "bench_users"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}")))
            .execute(pool)
            .await?;
    }
    Ok(())
}
