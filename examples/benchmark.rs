//! The helpers' benchmark: datamig's upsert and batched backfill against the set-based
//! `INSERT .. SELECT .. ON CONFLICT DO NOTHING`, side by side on one server in one run.
//!
//!     scripts/bench.sh        (or: cargo run --release -p datamig-examples --example benchmark)
//!
//! Uses DATABASE_URL if set (the benchmark creates and drops its own tables there), else a
//! throwaway PostgreSQL from `datamig::testing`. Prints one line per figure and a ratio line
//! per target. Each timing is the median of `DATAMIG_BENCH_REPEAT` runs (default 3).

use std::process::Command;
use std::time::{Duration, Instant};

use datamig::prelude::*;
use datamig_examples::bench::{median, peak_rss_kib, ratio, secs, timed, verdict};
use sqlx::PgPool;

const USERS: i64 = 1_000_000;
const NAIVE_ROWS: i64 = 100_000;

const SET_BASED: &str = "INSERT INTO bench_settings (user_id, email_enabled, push_enabled)
     SELECT id, true, true FROM bench_users ON CONFLICT (user_id) DO NOTHING";

/// 1,000,000 rows built in Rust, streamed through the upsert builder.
#[datamig::migration(id = "20250101_0000_bench_upsert_rust_rows")]
async fn upsert_rust_rows(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    let rows = (1..=USERS).map(|id| (id, true, true));
    ctx.upsert("bench_settings")
        .key(["user_id"])
        .rows(["user_id", "email_enabled", "push_enabled"], rows)
        .insert_missing()
        .execute()
        .await?;
    Ok(())
}

/// The same backfill, 10,000 users a batch, one commit each.
#[datamig::migration(
    id = "20250101_0001_bench_batched_backfill",
    batch(table = "bench_users", key = "id", size = 10_000)
)]
async fn batched_backfill(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "INSERT INTO bench_settings (user_id, email_enabled, push_enabled)
         SELECT id, true, true FROM bench_users WHERE id > $1 AND id <= $2
         ON CONFLICT (user_id) DO NOTHING",
        &batch,
    )
    .await?;
    Ok(())
}

/// A batched pass over `bench_rss_users` (the memory figure): normalises emails.
#[datamig::migration(
    id = "20250101_0002_bench_rss_pass",
    batch(table = "bench_rss_users", key = "id", size = 10_000)
)]
async fn rss_pass(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE bench_rss_users SET email = lower(email)
         WHERE id > $1 AND id <= $2 AND email IS DISTINCT FROM lower(email)",
        &batch,
    )
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--rss-pass") {
        return rss_child(&args[2], args[3].parse()?).await;
    }
    if args.get(1).map(String::as_str) == Some("--fingerprint-child") {
        return fingerprint_child(&args[2]).await;
    }

    let (pool, url, _throwaway) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (PgPool::connect(&url).await?, url, None),
        _ => {
            let db = datamig::testing::postgres().await?;
            (db.pool().clone(), db.url().to_string(), Some(db))
        }
    };
    if args.get(1).map(String::as_str) == Some("--fingerprint") {
        let rows = args.get(2).map_or(Ok(10_000_000), |n| n.parse())?;
        return fingerprint_figure(&url, rows).await;
    }
    let repeat: usize = std::env::var("DATAMIG_BENCH_REPEAT")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&pool)
        .await?;
    println!("server: {version}");
    println!("users: {USERS}; timings are the median of {repeat} runs\n");
    setup(&pool).await?;

    let set_first = median(repeat, || async {
        truncate(&pool).await?;
        timed(async { sqlx::query(SET_BASED).execute(&pool).await.map(drop) }).await
    })
    .await?;
    let set_second = median(repeat, || async {
        timed(async { sqlx::query(SET_BASED).execute(&pool).await.map(drop) }).await
    })
    .await?;
    let set_rewritten = rewritten(&pool, || async {
        sqlx::query(SET_BASED).execute(&pool).await.map(drop)
    })
    .await?;

    let (upsert_first, upsert_second, upsert_rewritten) =
        measure(&pool, repeat, &upsert_rust_rows::MIGRATION).await?;
    let (batched_first, batched_second, batched_rewritten) =
        measure(&pool, repeat, &batched_backfill::MIGRATION).await?;
    let settings: i64 = sqlx::query_scalar("SELECT count(*) FROM bench_settings")
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(
        settings == USERS,
        "the backfill left {settings} rows, expected {USERS}"
    );

    truncate(&pool).await?;
    let naive = timed(naive_loop(&pool)).await?;
    let naive_per_million = naive.mul_f64(USERS as f64 / NAIVE_ROWS as f64);

    println!(
        "set-based INSERT .. SELECT .. ON CONFLICT DO NOTHING, first run   {}",
        secs(set_first)
    );
    println!(
        "set-based INSERT .. SELECT .. ON CONFLICT DO NOTHING, second run  {}  ({set_rewritten} rows rewritten)",
        secs(set_second)
    );
    println!(
        "upsert of 1M rows built in Rust (COPY + one statement), first run {}",
        secs(upsert_first)
    );
    println!(
        "upsert of 1M rows built in Rust, second run                      {}  ({upsert_rewritten} rows rewritten)",
        secs(upsert_second)
    );
    println!(
        "batched backfill, 10,000 rows a batch, first run                 {}",
        secs(batched_first)
    );
    println!(
        "batched backfill, second run                                     {}  ({batched_rewritten} rows rewritten)",
        secs(batched_second)
    );
    println!(
        "naive per-row INSERT loop from Rust ({NAIVE_ROWS} rows, one transaction)  {}  (about {} for 1M)",
        secs(naive),
        secs(naive_per_million)
    );

    println!();
    let mut ok = true;
    ok &= ratio(
        "upsert first run / set-based first run",
        upsert_first,
        set_first,
        1.3,
    );
    ok &= ratio(
        "batched first run / set-based first run",
        batched_first,
        set_first,
        1.3,
    );
    ok &= ratio(
        "upsert second run / set-based second run",
        upsert_second,
        set_second,
        1.5,
    );
    ok &= ratio(
        "batched second run / set-based second run",
        batched_second,
        set_second,
        1.5,
    );
    for (what, rows) in [("upsert", upsert_rewritten), ("batched", batched_rewritten)] {
        println!(
            "check {what} second run rows rewritten = {rows}  (target 0)  {}",
            verdict(rows == 0)
        );
        ok &= rows == 0;
    }
    println!(
        "ratio naive loop (1M, extrapolated) / set-based first run = {:.1}x  (reported)",
        naive_per_million.as_secs_f64() / set_first.as_secs_f64()
    );

    cleanup(&pool).await?;
    for rows in [USERS, 10 * USERS] {
        let output = Command::new(std::env::current_exe()?)
            .args(["--rss-pass", &url, &rows.to_string()])
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "the memory pass failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let kib: u64 = String::from_utf8_lossy(&output.stdout).trim().parse()?;
        let mib = kib as f64 / 1024.0;
        println!(
            "peak RSS of the client during a batched pass over {rows} rows: {mib:.1} MiB  (target < 150 MiB)  {}",
            verdict(mib < 150.0)
        );
        ok &= mib < 150.0;
    }
    println!(
        "\n{}",
        if ok {
            "all targets met"
        } else {
            "SOME TARGETS MISSED"
        }
    );
    Ok(())
}

/// A migration's first run (from an empty target), its second run (`rerun`), and the rows
/// the second run rewrote.
async fn measure(
    pool: &PgPool,
    repeat: usize,
    migration: &'static datamig::Migration,
) -> anyhow::Result<(Duration, Duration, i64)> {
    let first = median(repeat, || async {
        truncate(pool).await?;
        timed(async { migrator(pool, migration).run().await.map(drop) }).await
    })
    .await?;
    let rerun = || async {
        migrator(pool, migration)
            .rerun(migration.id())
            .await
            .map(drop)
    };
    let second = median(repeat, || async { timed(rerun()).await }).await?;
    let rewritten = rewritten(pool, rerun).await?;
    Ok((first, second, rewritten))
}

fn migrator(pool: &PgPool, migration: &'static datamig::Migration) -> Migrator<Postgres> {
    Migrator::new(pool.clone())
        .migrations([migration])
        .ledger(datamig_examples::bench::ledger())
}

async fn setup(pool: &PgPool) -> anyhow::Result<()> {
    cleanup(pool).await?;
    datamig_examples::bench::create_users_and_settings(pool).await
}

async fn cleanup(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_settings, bench_users, bench_rss_users, bench_ledger, bench_runs",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Empties the target and the ledger: the next run is a first run.
async fn truncate(pool: &PgPool) -> anyhow::Result<()> {
    datamig_examples::bench::empty_settings_and_ledger(pool).await?;
    sqlx::raw_sql("VACUUM ANALYZE bench_settings")
        .execute(pool)
        .await?;
    Ok(())
}

/// Runs `work` and counts the rows of `bench_settings` it wrote: rows whose `xmin` (the
/// transaction that last wrote them) is newer than the transactions before it.
async fn rewritten<F, Fut, E>(pool: &PgPool, work: F) -> anyhow::Result<i64>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<anyhow::Error>,
{
    let before: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(pool)
        .await?;
    work().await.map_err(Into::into)?;
    let rewritten: i64 =
        sqlx::query_scalar("SELECT count(*) FROM bench_settings WHERE xmin::text::bigint > $1")
            .bind(before)
            .fetch_one(pool)
            .await?;
    Ok(rewritten)
}

async fn naive_loop(pool: &PgPool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for id in 1..=NAIVE_ROWS {
        sqlx::query(
            "INSERT INTO bench_settings (user_id, email_enabled, push_enabled) VALUES ($1, true, true)
             ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The memory figure, in a process of its own: a batched pass over `rows` rows; prints the
/// process's peak resident set (VmHWM, KiB).
async fn rss_child(url: &str, rows: i64) -> anyhow::Result<()> {
    let pool = PgPool::connect(url).await?;
    sqlx::raw_sql("DROP TABLE IF EXISTS bench_rss_users, bench_ledger, bench_runs")
        .execute(&pool)
        .await?;
    sqlx::raw_sql("CREATE TABLE bench_rss_users (id bigint PRIMARY KEY, email text NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO bench_rss_users SELECT n, 'User' || n || '@Example.com' FROM generate_series(1, $1) AS n")
        .bind(rows)
        .execute(&pool)
        .await?;
    let report = migrator(&pool, &rss_pass::MIGRATION).run().await?;
    anyhow::ensure!(
        report.applied[0].rows_affected == u64::try_from(rows)?,
        "the pass missed rows"
    );
    sqlx::raw_sql("DROP TABLE bench_rss_users, bench_ledger, bench_runs")
        .execute(&pool)
        .await?;
    println!("{}", peak_rss_kib()?);
    Ok(())
}

/// The fingerprint of a table of `rows` rows: datamig's (in a process of its own, for its
/// peak memory) beside the one-aggregate SQL it replaced, on the same table.
async fn fingerprint_figure(url: &str, rows: i64) -> anyhow::Result<()> {
    let pool = PgPool::connect(url).await?;
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&pool)
        .await?;
    println!("server: {version}");
    sqlx::raw_sql("DROP TABLE IF EXISTS bench_fingerprint")
        .execute(&pool)
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE bench_fingerprint (id bigint PRIMARY KEY, email text NOT NULL, n integer)",
    )
    .execute(&pool)
    .await?;
    sqlx::query("INSERT INTO bench_fingerprint SELECT n, 'User' || n || '@Example.com', n % 1000 FROM generate_series(1, $1) AS n")
        .bind(rows)
        .execute(&pool)
        .await?;
    sqlx::raw_sql("VACUUM ANALYZE bench_fingerprint")
        .execute(&pool)
        .await?;
    let started = Instant::now();
    let reference: String = sqlx::query_scalar(
        "SELECT encode(sha256(COALESCE(string_agg(sha256(convert_to(t::text, 'UTF8')), ''::bytea ORDER BY t.id), ''::bytea)), 'hex')
         FROM bench_fingerprint AS t",
    )
    .fetch_one(&pool)
    .await?;
    let aggregate = started.elapsed();
    let started = Instant::now();
    let output = Command::new(std::env::current_exe()?)
        .args(["--fingerprint-child", url])
        .output()?;
    let streamed = started.elapsed();
    anyhow::ensure!(
        output.status.success(),
        "the fingerprint child failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (sha, kib) = stdout
        .trim()
        .split_once(' ')
        .ok_or_else(|| anyhow::anyhow!("unexpected child output {stdout:?}"))?;
    println!("rows: {rows}");
    println!(
        "one SQL aggregate (string_agg of row hashes; fails past 1 GB of hashes) {}",
        secs(aggregate)
    );
    println!(
        "datamig fingerprint (row hashes streamed, hashed in the client)      {}  (process start included)",
        secs(streamed)
    );
    let kib: u64 = kib.parse()?;
    println!(
        "peak RSS of the fingerprinting client: {:.1} MiB; same result as the aggregate: {}",
        kib as f64 / 1024.0,
        sha == reference
    );
    sqlx::raw_sql("DROP TABLE bench_fingerprint")
        .execute(&pool)
        .await?;
    anyhow::ensure!(sha == reference, "the fingerprints differ");
    Ok(())
}

/// Prints the fingerprint of `bench_fingerprint` and this process's peak resident set (KiB).
async fn fingerprint_child(url: &str) -> anyhow::Result<()> {
    let pool = PgPool::connect(url).await?;
    let mut conn = pool.acquire().await?;
    let options = datamig::FingerprintOptions::new().only(["bench_fingerprint"]);
    let fingerprint = datamig::fingerprint_on::<Postgres>(&mut conn, &options).await?;
    let sha = &fingerprint.tables["public.bench_fingerprint"].sha256;
    println!("{sha} {}", peak_rss_kib()?);
    Ok(())
}
