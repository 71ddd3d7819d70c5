//! The batched-keys benchmark: datamig's batched backfill over 1,000,000 rows keyed by
//! random UUIDs, and by a composite key `(tenant_id, id)`, against the one set-based
//! `UPDATE` on the same table, side by side on one server in one run; then an application
//! load on the same table (short transactions updating the rows being backfilled): its p99
//! latency alone, during a datamig backfill, and during the one-statement `UPDATE`; and the
//! sizes a target duration chose; then the self-paced backfill (no batch settings at all)
//! of pgbench's TPC-B accounts (1M), on an idle server against the one-statement `UPDATE`,
//! and beside TPC-B transactions at 200 a second (`DATAMIG_BENCH_PART=pace` alone).
//!
//!     scripts/bench.sh --keys   (or: cargo run --release -p datamig-examples --example keys_benchmark)
//!
//! Uses DATABASE_URL if set (its own bench_* tables only), else a throwaway PostgreSQL.
//! Each timing is the median of `DATAMIG_BENCH_REPEAT` runs (default 3).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datamig::prelude::*;
use datamig::{Progress, StopSignal};
use datamig_examples::bench::{median, ratio, ratio_value, secs, timed, verdict};
use sqlx::PgPool;

const ROWS: i64 = 1_000_000;

/// The backfill: every account's plan code from its plan, written only where it differs.
const SET_BASED_UUID: &str = "UPDATE bench_accounts SET plan_code = upper(plan) WHERE plan_code IS DISTINCT FROM upper(plan)";
const SET_BASED_PAIR: &str = "UPDATE bench_tenant_accounts SET plan_code = upper(plan)
     WHERE plan_code IS DISTINCT FROM upper(plan)";

/// One batch of the backfill of `bench_accounts`, whatever its size.
const ACCOUNTS_BATCH: &str = "UPDATE bench_accounts SET plan_code = upper(plan)
     WHERE {batch} AND plan_code IS DISTINCT FROM upper(plan)";

/// The backfill over the UUID key, 10,000 keys a batch.
#[datamig::migration(
    id = "20250301_0000_bench_uuid_backfill",
    batch(table = "bench_accounts", key = "id", size = 10_000)
)]
async fn uuid_backfill(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(ACCOUNTS_BATCH, &batch).await?;
    Ok(())
}

/// The backfill over the composite key, 10,000 keys a batch.
#[datamig::migration(
    id = "20250301_0001_bench_pair_backfill",
    batch(table = "bench_tenant_accounts", key = "tenant_id, id", size = 10_000)
)]
async fn pair_backfill(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE bench_tenant_accounts SET plan_code = upper(plan)
         WHERE {batch} AND plan_code IS DISTINCT FROM upper(plan)",
        &batch,
    )
    .await?;
    Ok(())
}

/// The backfill beside the application's load: batches sized to take about 20 ms.
#[datamig::migration(
    id = "20250301_0002_bench_gentle_backfill",
    batch(
        table = "bench_accounts",
        key = "id",
        size = 1_000,
        target = "20ms",
        min_size = 100,
        max_size = 20_000
    )
)]
async fn gentle_backfill(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(ACCOUNTS_BATCH, &batch).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (pool, _throwaway) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (PgPool::connect(&url).await?, None),
        _ => {
            let db = datamig::testing::postgres().await?;
            (db.pool().clone(), Some(db))
        }
    };
    let repeat: usize = std::env::var("DATAMIG_BENCH_REPEAT")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&pool)
        .await?;
    println!("server: {version}");
    println!("rows: {ROWS} per table; timings are the median of {repeat} runs\n");
    setup(&pool).await?;

    // DATAMIG_BENCH_PART=load measures the application load alone; =keys the backfills
    // over the two keys alone.
    let part = std::env::var("DATAMIG_BENCH_PART").unwrap_or_default();
    let (only_load, only_keys, only_pace) = (part == "load", part == "keys", part == "pace");
    let mut ok = true;
    for (what, table, set_based, migration) in [
        (
            "random UUID key",
            "bench_accounts",
            SET_BASED_UUID,
            &uuid_backfill::MIGRATION,
        ),
        (
            "composite key (tenant_id, id)",
            "bench_tenant_accounts",
            SET_BASED_PAIR,
            &pair_backfill::MIGRATION,
        ),
    ] {
        if only_load || only_pace {
            break;
        }
        let set_first = median(repeat, || async {
            reset(&pool, table).await?;
            timed(async { sqlx::query(set_based).execute(&pool).await.map(drop) }).await
        })
        .await?;
        let set_second = median(repeat, || async {
            timed(async { sqlx::query(set_based).execute(&pool).await.map(drop) }).await
        })
        .await?;
        let set_rewritten = rewritten(&pool, table, || async {
            sqlx::query(set_based).execute(&pool).await.map(drop)
        })
        .await?;
        let first = median(repeat, || async {
            reset(&pool, table).await?;
            timed(async { migrator(&pool, migration).run().await.map(drop) }).await
        })
        .await?;
        let rerun = || async {
            migrator(&pool, migration)
                .rerun(migration.id())
                .await
                .map(drop)
        };
        let second = median(repeat, || async { timed(rerun()).await }).await?;
        let second_rewritten = rewritten(&pool, table, rerun).await?;
        let missing: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE plan_code IS DISTINCT FROM upper(plan)"
        )))
        .fetch_one(&pool)
        .await?;
        anyhow::ensure!(
            missing == 0,
            "the backfill of {table} missed {missing} rows"
        );

        println!("{what}:");
        println!("  set-based UPDATE, first run        {}", secs(set_first));
        println!(
            "  set-based UPDATE, second run       {}  ({set_rewritten} rows rewritten)",
            secs(set_second)
        );
        println!("  datamig batched, first run         {}", secs(first));
        println!(
            "  datamig batched, second run        {}  ({second_rewritten} rows rewritten)",
            secs(second)
        );
        ok &= ratio(
            &format!("{what}: first run / set-based"),
            first,
            set_first,
            1.3,
        );
        ok &= ratio(
            &format!("{what}: second run / set-based second run"),
            second,
            set_second,
            1.5,
        );
        println!(
            "check {what}: second run rows rewritten = {second_rewritten}  (target 0)  {}",
            verdict(second_rewritten == 0)
        );
        ok &= second_rewritten == 0;
        println!();
    }

    if !only_keys && !only_pace {
        ok &= application_load(&pool).await?;
    }
    if !only_keys && !only_load {
        ok &= self_paced(&pool, repeat).await?;
    }
    cleanup(&pool).await?;
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

/// The same backfill paced for a busy table: batches of about 5 ms with a 10 ms pause
/// after each, so the application has the database most of the time.
#[datamig::migration(
    id = "20250301_0003_bench_paced_backfill",
    batch(
        table = "bench_accounts",
        key = "id",
        size = 500,
        target = "5ms",
        min_size = 100,
        max_size = 20_000,
        pause = "10ms"
    )
)]
async fn paced_backfill(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(ACCOUNTS_BATCH, &batch).await?;
    Ok(())
}

/// Between the two: batches of about 10 ms, a 10 ms pause after each (half the time the
/// database is the application's alone).
#[datamig::migration(
    id = "20250301_0004_bench_balanced_backfill",
    batch(
        table = "bench_accounts",
        key = "id",
        size = 1_000,
        target = "10ms",
        min_size = 100,
        max_size = 20_000,
        pause = "10ms"
    )
)]
async fn balanced_backfill(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(ACCOUNTS_BATCH, &batch).await?;
    Ok(())
}

/// The application's p99 beside datamig's backfills and beside the one-statement
/// `UPDATE`; and the sizes the target duration chose.
///
/// The load runs without a break while each backfill runs in windows of
/// `DATAMIG_BENCH_WINDOW` seconds (default 5), stopped at a batch boundary
/// ([`StopSignal`]) and resumed from its checkpoint after a window of the load alone: a
/// transaction that ran, even in part, inside a backfill's window counts as during it, the
/// others as alone (see [`Timed::split`]), so the two p99s are taken
/// over the same stretch of time and share the machine's own ups and downs (on a shared
/// 2-core machine the p99 of the load alone moves by several times from one minute to the
/// next, more than any backfill moves it).
async fn application_load(pool: &PgPool) -> anyhow::Result<bool> {
    let clients = 4;
    let window = Duration::from_secs_f64(
        std::env::var("DATAMIG_BENCH_WINDOW")
            .ok()
            .and_then(|w| w.parse().ok())
            .unwrap_or(5.0),
    );
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id::text FROM bench_accounts TABLESAMPLE SYSTEM (2) LIMIT 20000",
    )
    .fetch_all(pool)
    .await?;
    let ids = Arc::new(ids);
    println!(
        "application load: {clients} clients, each a loop of one-row UPDATE transactions on \
         random rows of bench_accounts, 2 ms apart; each backfill runs in {seconds:.0} s \
         windows between {seconds:.0} s windows of the load alone",
        seconds = window.as_secs_f64()
    );

    let settings = [
        (&gentle_backfill::MIGRATION, "target 20 ms, no pause", false),
        (
            &paced_backfill::MIGRATION,
            "target 5 ms, 10 ms pause after each batch",
            true,
        ),
        (
            &balanced_backfill::MIGRATION,
            "target 10 ms, 10 ms pause after each batch",
            false,
        ),
    ];
    let mut ok = true;
    let mut adaptive = Vec::new();
    for (migration, what, target) in settings {
        reset(pool, "bench_accounts").await?;
        let events: Arc<Mutex<Vec<Progress>>> = Arc::default();
        let load = Load::start(pool, clients, Arc::clone(&ids));
        let mut during = Vec::new();
        loop {
            tokio::time::sleep(window).await;
            let stop = StopSignal::new();
            let timer = {
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(window).await;
                    stop.stop();
                })
            };
            let sink = Arc::clone(&events);
            let began = Instant::now();
            let result = migrator(pool, migration)
                .stop_on(stop)
                .on_progress(move |p| sink.lock().unwrap().push(p.clone()))
                .run()
                .await;
            during.push((began, Instant::now()));
            timer.abort();
            match result {
                Ok(_) => break,
                Err(datamig::Error::Stopped { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
        tokio::time::sleep(window).await;
        let (alone, busy) = load.stop().await?.split(&during);
        let took: Duration = during.iter().map(|(from, to)| *to - *from).sum();
        let events = events.lock().unwrap().clone();
        println!(
            "  {what}: backfill {:.1} s in {} windows, {} batches; p99 alone {:.2} ms ({} \
             transactions), during {:.2} ms ({} transactions)",
            took.as_secs_f64(),
            during.len(),
            events.len(),
            alone.p99_ms(),
            alone.count(),
            busy.p99_ms(),
            busy.count()
        );
        let label = format!("application p99 during the backfill ({what}) / p99 alone");
        if target {
            ok &= ratio_value(&label, busy.p99_ms(), alone.p99_ms(), 2.0);
        } else {
            println!(
                "ratio {label} = {:.2}x  (reported)",
                busy.p99_ms() / alone.p99_ms().max(1e-9)
            );
        }
        if adaptive.is_empty() {
            adaptive = events;
        }
    }

    // The one-statement UPDATE: one window alone, the statement, one window alone.
    reset(pool, "bench_accounts").await?;
    let load = Load::start(pool, clients, Arc::clone(&ids));
    tokio::time::sleep(window).await;
    let started = Instant::now();
    sqlx::query(SET_BASED_UUID).execute(pool).await?;
    let update = (started, Instant::now());
    tokio::time::sleep(window).await;
    let (alone, during_update) = load.stop().await?.split(&[update]);
    println!(
        "  the one-statement UPDATE ({:.1} s): p99 alone {:.2} ms, during {:.1} ms ({} \
         transactions, max {:.0} ms)",
        (update.1 - update.0).as_secs_f64(),
        alone.p99_ms(),
        during_update.p99_ms(),
        during_update.count(),
        during_update.max_ms()
    );
    println!(
        "ratio application p99 during the one-statement UPDATE / p99 alone = {:.1}x  (reported)",
        during_update.p99_ms() / alone.p99_ms().max(1e-9)
    );

    let events = &adaptive;
    let mut sizes: Vec<u32> = events.iter().map(|e| e.batch_size).collect();
    let mut took: Vec<u64> = events.iter().map(|e| e.batch_ms).collect();
    let trace: Vec<String> = events
        .iter()
        .take(12)
        .map(|e| format!("{}:{}ms", e.batch_size, e.batch_ms))
        .collect();
    sizes.sort_unstable();
    took.sort_unstable();
    let pick = |v: &[u64], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    let sizes64: Vec<u64> = sizes.iter().map(|s| u64::from(*s)).collect();
    println!(
        "adaptive size, target 20 ms: {} batches; sizes min {} / median {} / max {}; batch \
         durations median {} ms, p90 {} ms, max {} ms; first batches (size:duration) {}",
        events.len(),
        pick(&sizes64, 0.0),
        pick(&sizes64, 0.5),
        pick(&sizes64, 1.0),
        pick(&took, 0.5),
        pick(&took, 0.9),
        pick(&took, 1.0),
        trace.join(" ")
    );
    Ok(ok)
}

/// When a transaction ended, and how long it took.
type Ended = (Instant, Duration);

/// Clients updating random rows until stopped, each transaction timed.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<Ended>>>>,
}

impl Load {
    fn start(pool: &PgPool, clients: usize, ids: Arc<Vec<String>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|client| {
                let (pool, ids, stop) = (pool.clone(), Arc::clone(&ids), Arc::clone(&stop));
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut conn = pool.acquire().await?;
                    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ (client as u64 + 1);
                    while !stop.load(Ordering::Relaxed) {
                        // xorshift: a random row each time.
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        let id = &ids[(state % ids.len() as u64) as usize];
                        let started = Instant::now();
                        sqlx::query(
                            "UPDATE bench_accounts SET hits = hits + 1 WHERE id = $1::uuid",
                        )
                        .bind(id)
                        .execute(&mut *conn)
                        .await?;
                        latencies.push((Instant::now(), started.elapsed()));
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Ok(latencies)
                })
            })
            .collect();
        Load { stop, clients }
    }

    async fn stop(self) -> anyhow::Result<Timed> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for client in self.clients {
            all.extend(client.await??);
        }
        Ok(Timed(all))
    }
}

/// Each transaction's end and latency.
struct Timed(Vec<Ended>);

impl Timed {
    /// The latencies of transactions that ran wholly outside `windows`, and of those that
    /// ran, even in part, inside one (a transaction kept waiting by the backfill counts as
    /// during it, however late it ends).
    fn split(self, windows: &[(Instant, Instant)]) -> (Latencies, Latencies) {
        let (mut alone, mut during) = (Vec::new(), Vec::new());
        for (ended, latency) in self.0 {
            let began = ended - latency;
            if windows
                .iter()
                .any(|(from, to)| began <= *to && *from <= ended)
            {
                during.push(latency);
            } else {
                alone.push(latency);
            }
        }
        alone.sort();
        during.sort();
        (Latencies(alone), Latencies(during))
    }
}

struct Latencies(Vec<Duration>);

impl Latencies {
    fn p99_ms(&self) -> f64 {
        let i = ((self.0.len().max(1) - 1) as f64 * 0.99) as usize;
        self.0.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }

    fn max_ms(&self) -> f64 {
        self.0.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }

    fn count(&self) -> usize {
        self.0.len()
    }
}

fn migrator(pool: &PgPool, migration: &'static datamig::Migration) -> Migrator<Postgres> {
    Migrator::new(pool.clone()).migrations([migration]).ledger(
        datamig::LedgerConfig::default()
            .ledger_table("bench_keys_ledger")
            .runs_table("bench_keys_runs"),
    )
}

async fn setup(pool: &PgPool) -> anyhow::Result<()> {
    cleanup(pool).await?;
    sqlx::raw_sql(
        "CREATE TABLE bench_accounts (id uuid PRIMARY KEY, plan text NOT NULL, plan_code text,
                                      hits bigint NOT NULL DEFAULT 0);
         INSERT INTO bench_accounts (id, plan)
             SELECT gen_random_uuid(), (ARRAY['free', 'team', 'enterprise'])[1 + n % 3]
             FROM generate_series(1, 1000000) AS n;
         CREATE TABLE bench_tenant_accounts (tenant_id bigint NOT NULL, id uuid NOT NULL,
                                             plan text NOT NULL, plan_code text,
                                             PRIMARY KEY (tenant_id, id));
         INSERT INTO bench_tenant_accounts (tenant_id, id, plan)
             SELECT n % 1000, gen_random_uuid(), (ARRAY['free', 'team', 'enterprise'])[1 + n % 3]
             FROM generate_series(1, 1000000) AS n;",
    )
    .execute(pool)
    .await?;
    sqlx::raw_sql("VACUUM ANALYZE bench_accounts, bench_tenant_accounts")
        .execute(pool)
        .await?;
    Ok(())
}

async fn cleanup(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_accounts, bench_tenant_accounts, bench_keys_ledger,
                              bench_keys_runs, bench_tpcb_accounts, bench_tpcb_branches,
                              bench_tpcb_tellers, bench_tpcb_history",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Undoes the backfill of `table` and empties the ledger: the next run is a first run.
async fn reset(pool: &PgPool, table: &str) -> anyhow::Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET plan_code = NULL WHERE plan_code IS NOT NULL;
         DO $$ BEGIN
           IF to_regclass('bench_keys_ledger') IS NOT NULL THEN
             TRUNCATE bench_keys_ledger, bench_keys_runs;
           END IF;
         END $$;"
    )))
    .execute(pool)
    .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}")))
        .execute(pool)
        .await?;
    Ok(())
}

/// Runs `work` and counts the rows of `table` it wrote (their `xmin` is newer).
async fn rewritten<F, Fut, E>(pool: &PgPool, table: &str, work: F) -> anyhow::Result<i64>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<anyhow::Error>,
{
    let before: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(pool)
        .await?;
    work().await.map_err(Into::into)?;
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {table} WHERE xmin::text::bigint > $1"
    )))
    .bind(before)
    .fetch_one(pool)
    .await?)
}

/// The backfill of pgbench's accounts, one statement.
const TPCB_SET_BASED: &str = "UPDATE bench_tpcb_accounts
     SET grade = CASE WHEN abalance < 0 THEN 'owing' ELSE 'clear' END WHERE grade IS NULL";

/// The same backfill batched, with no batch settings: datamig paces it.
#[datamig::migration(
    id = "20250301_0005_bench_self_paced_backfill",
    batch(table = "bench_tpcb_accounts", key = "aid")
)]
async fn self_paced_backfill(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE bench_tpcb_accounts
         SET grade = CASE WHEN abalance < 0 THEN 'owing' ELSE 'clear' END
         WHERE {batch} AND grade IS NULL",
        &batch,
    )
    .await?;
    Ok(())
}

/// TPC-B transactions a second, in all, beside the self-paced backfill.
const TPCB_RATE: u32 = 200;

/// The self-paced backfill of 1M accounts: on the idle server against the one-statement
/// `UPDATE` (interleaved, medians of `repeat`), then beside pgbench's TPC-B transaction at
/// [`TPCB_RATE`] a second, in interleaved windows as [`application_load`] does: the
/// application's p99 during the backfill against its p99 alone, and the backfill's time
/// under load against its time on the idle server.
async fn self_paced(pool: &PgPool, repeat: usize) -> anyhow::Result<bool> {
    tpcb_setup(pool).await?;
    // The backfill on a pool of its own, as `datamig run` has: the benchmark's own
    // sessions (the resets, the one-statement UPDATE) are not datamig's.
    let datamig_pool = PgPool::connect_with(pool.connect_options().as_ref().clone()).await?;
    let datamig_pool = &datamig_pool;
    let migration = &self_paced_backfill::MIGRATION;
    println!(
        "\nself-paced backfill (no batch settings) of bench_tpcb_accounts, pgbench's TPC-B \
         tables at scale 10 (1,000,000 accounts):"
    );
    let (mut statement, mut backfill, mut idle_paced) = (Vec::new(), Vec::new(), 0u64);
    let mut idle_batches = Vec::new();
    for _ in 0..repeat.max(1) {
        tpcb_reset(pool).await?;
        statement.push(
            timed(async { sqlx::query(TPCB_SET_BASED).execute(pool).await.map(drop) }).await?,
        );
        tpcb_reset(pool).await?;
        // An idle server is one no session used within the last second: the reset's
        // sessions would count as an application's for that second (see the backfills
        // guide), and the one-statement UPDATE has no such second to wait.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let events: Arc<Mutex<Vec<Progress>>> = Arc::default();
        let sink = Arc::clone(&events);
        let began = Instant::now();
        let report = migrator(datamig_pool, migration)
            .on_progress(move |p| sink.lock().unwrap().push(p.clone()))
            .run()
            .await?;
        backfill.push(began.elapsed());
        idle_paced += report.applied.iter().map(|a| a.paced_ms).sum::<u64>();
        let events = events.lock().unwrap();
        idle_batches.push(events.len());
        // Why it paced, if it did: each kind of reason (the part after the pause) counted.
        let mut why: std::collections::BTreeMap<String, usize> = Default::default();
        for pacing in events.iter().filter_map(|e| e.pacing.as_deref()) {
            if let Some((_, reason)) = pacing.split_once(": ") {
                *why.entry(
                    reason
                        .split(|c: char| c.is_ascii_digit())
                        .collect::<Vec<_>>()
                        .join("N"),
                )
                .or_default() += 1;
            }
        }
        if !why.is_empty() {
            println!("  (paced on the idle server, batches by reason: {why:?})");
        }
    }
    statement.sort();
    backfill.sort();
    let (one, idle) = (statement[statement.len() / 2], backfill[backfill.len() / 2]);
    println!("  one-statement UPDATE, idle server        {}", secs(one));
    println!(
        "  datamig self-paced, idle server          {}  (batches per run {idle_batches:?}, \
         {idle_paced} ms paused in all runs)",
        secs(idle)
    );
    let mut ok = ratio(
        "self-paced backfill on an idle server / one UPDATE",
        idle,
        one,
        1.3,
    );

    // Beside the TPC-B load, in windows.
    let window = Duration::from_secs_f64(
        std::env::var("DATAMIG_BENCH_WINDOW")
            .ok()
            .and_then(|w| w.parse().ok())
            .unwrap_or(5.0),
    );
    tpcb_reset(pool).await?;
    let events: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let load = Tpcb::start(pool, 4, TPCB_RATE);
    let mut during = Vec::new();
    let mut paced_ms = 0;
    loop {
        tokio::time::sleep(window).await;
        let stop = StopSignal::new();
        let timer = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                stop.stop();
            })
        };
        let sink = Arc::clone(&events);
        let began = Instant::now();
        let result = migrator(datamig_pool, migration)
            .stop_on(stop)
            .on_progress(move |p| sink.lock().unwrap().push(p.clone()))
            .run()
            .await;
        during.push((began, Instant::now()));
        timer.abort();
        match result {
            Ok(report) => {
                paced_ms += report.applied.iter().map(|a| a.paced_ms).sum::<u64>();
                break;
            }
            Err(datamig::Error::Stopped { .. }) => {}
            Err(err) => return Err(err.into()),
        }
    }
    tokio::time::sleep(window).await;
    let (alone, busy) = load.stop().await?.split(&during);
    let took: Duration = during.iter().map(|(from, to)| *to - *from).sum();
    let events = events.lock().unwrap().clone();
    let paused: u64 = events.iter().map(|e| e.pause_ms).sum();
    let full = events
        .iter()
        .filter(|e| {
            e.pacing
                .as_deref()
                .is_some_and(|p| p.starts_with("full speed"))
        })
        .count();
    let mut reasons: Vec<&str> = events
        .iter()
        .filter_map(|e| e.pacing.as_deref())
        .filter(|p| !p.starts_with("full speed"))
        .collect();
    reasons.dedup();
    let mut sizes: Vec<u32> = events.iter().map(|e| e.batch_size).collect();
    sizes.sort_unstable();
    println!(
        "  beside TPC-B at {TPCB_RATE} tx/s (4 clients): backfill {:.1} s in {} windows, {} \
         batches ({full} at full speed), sizes median {}, {:.1} s paused ({paced_ms} ms in \
         the last window's report); p99 alone {:.2} ms ({} transactions), during {:.2} ms ({} \
         transactions)",
        took.as_secs_f64(),
        during.len(),
        events.len(),
        sizes.get(sizes.len() / 2).copied().unwrap_or(0),
        paused as f64 / 1000.0,
        alone.p99_ms(),
        alone.count(),
        busy.p99_ms(),
        busy.count()
    );
    println!(
        "  first reasons: {}",
        reasons
            .iter()
            .take(3)
            .copied()
            .collect::<Vec<_>>()
            .join(" | ")
    );
    ok &= ratio_value(
        "TPC-B p99 during the self-paced backfill / p99 alone",
        busy.p99_ms(),
        alone.p99_ms(),
        1.5,
    );
    ok &= ratio(
        "self-paced backfill under load / on the idle server",
        took,
        idle,
        3.0,
    );
    Ok(ok)
}

/// pgbench's TPC-B tables at scale 10, as `pgbench -i -s 10` makes them (with a column to
/// backfill), under the benchmark's own names.
async fn tpcb_setup(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_tpcb_accounts, bench_tpcb_branches, bench_tpcb_tellers,
                              bench_tpcb_history;
         CREATE TABLE bench_tpcb_branches (bid int PRIMARY KEY, bbalance int, filler char(88));
         CREATE TABLE bench_tpcb_tellers (tid int PRIMARY KEY, bid int, tbalance int,
                                          filler char(84));
         CREATE TABLE bench_tpcb_accounts (aid int PRIMARY KEY, bid int, abalance int,
                                           filler char(84), grade text);
         CREATE TABLE bench_tpcb_history (tid int, bid int, aid int, delta int,
                                          mtime timestamp, filler char(22));
         INSERT INTO bench_tpcb_branches SELECT n, 0, '' FROM generate_series(1, 10) AS n;
         INSERT INTO bench_tpcb_tellers SELECT n, (n - 1) / 10 + 1, 0, ''
             FROM generate_series(1, 100) AS n;
         INSERT INTO bench_tpcb_accounts (aid, bid, abalance, filler)
             SELECT n, (n - 1) / 100000 + 1, 0, '' FROM generate_series(1, 1000000) AS n;",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Undoes the backfill, empties the ledger and the history, and vacuums.
async fn tpcb_reset(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "UPDATE bench_tpcb_accounts SET grade = NULL WHERE grade IS NOT NULL;
         TRUNCATE bench_tpcb_history;
         DO $$ BEGIN
           IF to_regclass('bench_keys_ledger') IS NOT NULL THEN
             TRUNCATE bench_keys_ledger, bench_keys_runs;
           END IF;
         END $$;",
    )
    .execute(pool)
    .await?;
    sqlx::raw_sql("VACUUM ANALYZE bench_tpcb_accounts, bench_tpcb_branches, bench_tpcb_tellers")
        .execute(pool)
        .await?;
    sqlx::raw_sql("CHECKPOINT").execute(pool).await?;
    Ok(())
}

/// Clients running pgbench's TPC-B transaction at `rate` a second in all, each on a fixed
/// schedule; a transaction's latency runs from when it was due (as `pgbench --rate`
/// counts it), so one kept waiting delays the next.
struct Tpcb {
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<Ended>>>>,
}

impl Tpcb {
    fn start(pool: &PgPool, clients: u32, rate: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let every = Duration::from_secs_f64(f64::from(clients) / f64::from(rate));
        let clients = (0..clients)
            .map(|client| {
                let (pool, stop) = (pool.clone(), Arc::clone(&stop));
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut conn = pool.acquire().await?;
                    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ (u64::from(client) + 1);
                    let mut next = move |n: u64| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        i32::try_from(state % n).unwrap_or(0)
                    };
                    let mut schedule = tokio::time::interval(every);
                    schedule.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    while !stop.load(Ordering::Relaxed) {
                        let due = schedule.tick().await.into_std();
                        let (aid, bid, tid) = (next(1_000_000) + 1, next(10) + 1, next(100) + 1);
                        let delta = next(10_001) - 5_000;
                        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                        sqlx::query(
                            "UPDATE bench_tpcb_accounts SET abalance = abalance + $1 WHERE aid = $2",
                        )
                        .bind(delta)
                        .bind(aid)
                        .execute(&mut *tx)
                        .await?;
                        let _: Option<i32> = sqlx::query_scalar(
                            "SELECT abalance FROM bench_tpcb_accounts WHERE aid = $1",
                        )
                        .bind(aid)
                        .fetch_one(&mut *tx)
                        .await?;
                        sqlx::query(
                            "UPDATE bench_tpcb_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
                        )
                        .bind(delta)
                        .bind(tid)
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query(
                            "UPDATE bench_tpcb_branches SET bbalance = bbalance + $1 WHERE bid = $2",
                        )
                        .bind(delta)
                        .bind(bid)
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query(
                            "INSERT INTO bench_tpcb_history (tid, bid, aid, delta, mtime)
                             VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
                        )
                        .bind(tid)
                        .bind(bid)
                        .bind(aid)
                        .bind(delta)
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await?;
                        latencies.push((Instant::now(), due.elapsed()));
                    }
                    Ok(latencies)
                })
            })
            .collect();
        Tpcb { stop, clients }
    }

    async fn stop(self) -> anyhow::Result<Timed> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for client in self.clients {
            all.extend(client.await??);
        }
        Ok(Timed(all))
    }
}
