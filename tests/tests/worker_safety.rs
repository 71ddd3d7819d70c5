//! The workers' guarantees at their edges (PostgreSQL), each a hole once found by reading
//! the code: a server whose default isolation is `repeatable read` or `serializable`; a
//! range held by a process that stopped; a runner of old code still joined when a re-run
//! replaces the ranges; a lease that changes hands between the fence and `COMMIT`; a
//! worker's batch whose `COMMIT` fails; splitting a table whose statistics are stale.
//!
//! Every test here passes an explicit list of migrations: two of them share an id (the old
//! and the new code of one migration), which the registry would refuse.

use std::time::Duration;

use datamig::prelude::*;
use datamig::{Error, RunnerLock};
use datamig_tests::{scalar, send, text};
use sqlx::PgPool;

/// One batch a range (a range holds 100 keys), each resting 0.3 s in the server: two
/// workers walk eight ranges in step, so the last two batches run at once.
#[datamig::migration(
    id = "20250701_0000_slow_ranges",
    batch(table = "slow", key = "id", size = 1000)
)]
async fn slow_ranges(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE slow SET hits = hits + 1 WHERE {batch}", &batch)
        .await?;
    ctx.fetch_i64("SELECT 0::bigint FROM pg_sleep(0.3)").await?;
    Ok(())
}

/// The old code of a migration: adds 1 to each row, 10 keys a batch, slowly. (Not
/// `rerun_on_change`: its runner stops on the drift once the new code applied.)
#[datamig::migration(
    id = "20250701_0001_bump_versioned",
    batch(table = "versioned", key = "id", size = 10)
)]
async fn bump_v1(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE versioned SET v = v + 1 WHERE {batch}", &batch)
        .await?;
    ctx.fetch_i64("SELECT 0::bigint FROM pg_sleep(0.02)")
        .await?;
    Ok(())
}

/// The new code of the same migration: adds 100 to each row.
#[datamig::migration(
    id = "20250701_0001_bump_versioned",
    batch(table = "versioned", key = "id", size = 10),
    rerun_on_change
)]
async fn bump_v2(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE versioned SET v = v + 100 WHERE {batch}", &batch)
        .await?;
    ctx.fetch_i64("SELECT 0::bigint FROM pg_sleep(0.02)")
        .await?;
    Ok(())
}

/// Writes `doomed` in the batch that holds key 250: its deferred trigger ends the session
/// during that batch's `COMMIT`.
#[datamig::migration(
    id = "20250701_0002_doomed_batch",
    batch(table = "slow", key = "id", size = 25)
)]
async fn doomed_batch(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE slow SET hits = hits + 1 WHERE {batch}", &batch)
        .await?;
    ctx.execute_batch(
        "INSERT INTO doomed SELECT id FROM slow WHERE {batch} AND id = 250",
        &batch,
    )
    .await?;
    Ok(())
}

/// A one-shot migration, for the lease test.
#[datamig::migration(id = "20250701_0003_one_shot")]
async fn one_shot(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.execute("UPDATE counter SET n = n + 1").await?;
    Ok(())
}

/// A UUID-keyed walk, for the split test.
#[datamig::migration(
    id = "20250701_0004_walk_uuids",
    batch(table = "stale", key = "id", size = 500)
)]
async fn walk_uuids(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE stale SET hits = hits + 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// Runs `migrator` in a task of its own.
fn spawn_run(
    migrator: Migrator<Postgres>,
) -> tokio::task::JoinHandle<Result<datamig::RunReport, Error>> {
    tokio::spawn(async move { migrator.run().await })
}

/// Fails its first batch without reading a row: a run of it splits the keys and stops.
#[datamig::migration(
    id = "20250701_0005_split_only",
    batch(table = "stale", key = "id", size = 500)
)]
async fn split_only(_ctx: &mut Ctx<'_, Postgres>, _batch: Batch) -> anyhow::Result<()> {
    anyhow::bail!("stopped after the split")
}

async fn exec(pool: &PgPool, sql: &str) -> anyhow::Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(pool)
        .await?;
    Ok(())
}

async fn status(pool: &PgPool, id: &str) -> anyhow::Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT status FROM datamig_ledger WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}

/// Polls `count_sql` until it returns at least `at_least`, for at most `deadline`.
async fn wait_for(
    pool: &PgPool,
    count_sql: &'static str,
    at_least: i64,
    deadline: Duration,
) -> anyhow::Result<i64> {
    let until = std::time::Instant::now() + deadline;
    loop {
        let n = match scalar(pool, count_sql).await {
            Ok(n) => n,
            Err(err) if datamig_tests::is_missing_table(&err) => 0,
            Err(err) => return Err(err.into()),
        };
        if n >= at_least {
            return Ok(n);
        }
        anyhow::ensure!(
            std::time::Instant::now() < until,
            "waited {deadline:?} for {count_sql} to reach {at_least} (it is {n})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn workers_apply_the_migration_under_repeatable_read_and_serializable_defaults()
-> anyhow::Result<()> {
    for level in ["repeatable read", "serializable"] {
        let db = datamig::testing::postgres().await?;
        exec(
            db.pool(),
            &format!(
                "CREATE TABLE slow (id bigint PRIMARY KEY, hits integer NOT NULL DEFAULT 0);
                 INSERT INTO slow (id) SELECT generate_series(1, 800);
                 ANALYZE slow;
                 ALTER DATABASE {} SET default_transaction_isolation = '{level}';",
                db.name()
            ),
        )
        .await?;
        // Sessions opened from now on start every transaction at that level unless told.
        let pool = PgPool::connect(db.url()).await?;
        assert_eq!(
            sqlx::query_scalar::<_, String>("SHOW default_transaction_isolation")
                .fetch_one(&pool)
                .await?,
            level
        );
        let report = Migrator::new(pool.clone())
            .migrations([&slow_ranges::MIGRATION])
            .workers(2)
            .run()
            .await
            .map_err(|e| anyhow::anyhow!("under {level}: {e}"))?;
        assert_eq!(report.applied.len(), 1, "under {level}");
        assert_eq!(
            status(&pool, slow_ranges::MIGRATION.id()).await?.as_deref(),
            Some("applied"),
            "under {level}"
        );
        assert_eq!(
            scalar(&pool, "SELECT count(*) FROM slow WHERE hits <> 1").await?,
            0,
            "under {level}"
        );
        // And the next run has nothing to do.
        let again = Migrator::new(pool.clone())
            .migrations([&slow_ranges::MIGRATION])
            .workers(2)
            .run()
            .await?;
        assert!(again.applied.is_empty(), "under {level}");
        pool.close().await;
    }
    Ok(())
}

fn workers_bin(url: &str, args: &[&str]) -> tokio::process::Command {
    datamig_tests::command(env!("CARGO_BIN_EXE_datamig-workers"), url, args)
}

#[tokio::test]
async fn a_joiner_gives_up_on_ranges_a_stopped_process_holds_and_names_them() -> anyhow::Result<()>
{
    let db = datamig::testing::postgres().await?;
    // 50 ms a batch of 20 keys: a range of 500 keys takes over a second.
    datamig_tests::create_spread_tables(db.pool(), 4000, 50).await?;
    let mut frozen = workers_bin(db.url(), &["run", "--workers", "2"]).spawn()?;
    wait_for(
        db.pool(),
        "SELECT count(*) FROM spread_log",
        4,
        Duration::from_secs(60),
    )
    .await?;
    // Stopped, not dead: its session keeps the runner lock and its ranges' locks.
    send(&frozen, "-STOP")?;
    let started = std::time::Instant::now();
    let joiner = workers_bin(
        db.url(),
        &["run", "--workers", "2", "--wait", "2s", "--format", "json"],
    )
    .output();
    let output = tokio::time::timeout(Duration::from_secs(120), joiner).await;
    send(&frozen, "-KILL")?;
    let _ = frozen.wait().await;
    let output = output.map_err(|_| anyhow::anyhow!("the joiner waited for 120 s"))??;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("20250301_0000_spread_ids")
            && stderr.contains("range")
            && stderr.contains("made no progress"),
        "{stderr}"
    );
    // It worked every range it could take before giving up: only the frozen worker's two
    // ranges (and what the frozen process had done of them) are left.
    let left = scalar(
        db.pool(),
        "SELECT count(*) FROM datamig_ledger_ranges WHERE NOT done",
    )
    .await?;
    assert_eq!(left, 2, "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60));
    // Nothing was done twice.
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM spread WHERE v > 1").await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn a_joiner_with_old_code_claims_no_range_of_a_rerun_of_new_code() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    exec(
        db.pool(),
        "CREATE TABLE versioned (id bigint PRIMARY KEY, v integer NOT NULL DEFAULT 0);
         INSERT INTO versioned (id) SELECT generate_series(1, 2000);
         ANALYZE versioned;",
    )
    .await?;
    // The old code's runner holds the lock and walks with two workers; another runner of
    // the old code joins it.
    let old_runner = spawn_run(
        Migrator::new(db.pool().clone())
            .migrations([&bump_v1::MIGRATION])
            .workers(2),
    );
    wait_for(
        db.pool(),
        "SELECT count(*) FROM datamig_ledger_ranges WHERE batches > 0",
        1,
        Duration::from_secs(60),
    )
    .await?;
    let joiner = spawn_run(
        Migrator::new(db.pool().clone())
            .migrations([&bump_v1::MIGRATION])
            .workers(2)
            .runner_lock_timeout(Duration::from_secs(120)),
    );
    // Joined: four ranges held at once.
    wait_for(
        db.pool(),
        "SELECT count(*) FROM datamig_ledger_ranges WHERE token IS NOT NULL",
        4,
        Duration::from_secs(60),
    )
    .await?;
    // The old runner dies (its connections close with it); the joiner works on.
    old_runner.abort();
    let _ = old_runner.await;
    // The new code takes the lock and re-runs the migration: new ranges over every key.
    let report = Migrator::new(db.pool().clone())
        .migrations([&bump_v2::MIGRATION])
        .workers(2)
        .runner_lock_timeout(Duration::from_secs(60))
        .run()
        .await?;
    assert_eq!(report.applied.len(), 1);
    // Every key was done by the new code exactly once after its re-run started: no row
    // went through the old body in a range of the new run.
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM versioned WHERE v < 100").await?,
        0,
        "rows the old code walked in the new run's ranges"
    );
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM versioned WHERE v >= 200").await?,
        0
    );
    // The joiner, its code now drifted from the ledger's, stops on the drift.
    let joined = tokio::time::timeout(Duration::from_secs(120), joiner).await??;
    assert!(
        matches!(joined, Err(Error::Drift { .. })),
        "the old code's runner: {joined:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_lease_cannot_change_hands_between_the_fence_and_the_commit() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    exec(
        db.pool(),
        "CREATE TABLE counter (n integer NOT NULL); INSERT INTO counter VALUES (0);",
    )
    .await?;
    // Create the ledger and the lease table, then hold the runner's transaction between its
    // fence and its COMMIT: a trigger on the ledger sleeps after the row is written.
    Migrator::new(db.pool().clone())
        .migrations([])
        .runner_lock(RunnerLock::lease())
        .run()
        .await?;
    exec(
        db.pool(),
        "CREATE FUNCTION slow_ledger() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM pg_sleep(1.5); RETURN NEW; END $$;
         CREATE TRIGGER slow_ledger AFTER INSERT ON datamig_ledger
             FOR EACH ROW EXECUTE FUNCTION slow_ledger();",
    )
    .await?;
    let runner = spawn_run(
        Migrator::new(db.pool().clone())
            .migrations([&one_shot::MIGRATION])
            .runner_lock(RunnerLock::lease_for(Duration::from_secs(30))),
    );
    wait_for(
        db.pool(),
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event = 'PgSleep'",
        1,
        Duration::from_secs(30),
    )
    .await?;
    // Another runner takes the lease over (as one would after it expired).
    sqlx::query(
        "UPDATE datamig_ledger_lease SET token = 'another runner', pid = 1,
             expires_at = clock_timestamp() + interval '1 hour'",
    )
    .execute(db.pool())
    .await?;
    // Whatever the first runner commits, it committed before the lease changed hands.
    let committed_before = status(db.pool(), one_shot::MIGRATION.id()).await?.is_some();
    let outcome = tokio::time::timeout(Duration::from_secs(30), runner).await??;
    match outcome {
        Ok(report) => {
            assert!(
                committed_before,
                "the runner committed after its lease changed hands: {report:?}"
            );
        }
        Err(err) => {
            assert!(matches!(err, Error::LeaseLost { .. }), "{err:?}");
            assert_eq!(status(db.pool(), one_shot::MIGRATION.id()).await?, None);
            assert_eq!(scalar(db.pool(), "SELECT n::bigint FROM counter").await?, 0);
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_workers_batch_whose_commit_fails_is_read_back() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    exec(
        db.pool(),
        "CREATE TABLE slow (id bigint PRIMARY KEY, hits integer NOT NULL DEFAULT 0);
         INSERT INTO slow (id) SELECT generate_series(1, 400);
         ANALYZE slow;",
    )
    .await?;
    exec(db.pool(), datamig_tests::DOOMED_AT_COMMIT).await?;
    let err = Migrator::new(db.pool().clone())
        .migrations([&doomed_batch::MIGRATION])
        .workers(2)
        .run()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::CommitOutcome {
                applied: Some(false),
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("rolled back"), "{message}");
    // The batch holding key 250 did not commit: its rows are not hit.
    assert_eq!(
        scalar(db.pool(), "SELECT hits::bigint FROM slow WHERE id = 250").await?,
        0
    );
    // Fixed, the next run finishes every key once.
    exec(db.pool(), "DROP TRIGGER end_session_at_commit ON doomed").await?;
    Migrator::new(db.pool().clone())
        .migrations([&doomed_batch::MIGRATION])
        .workers(2)
        .run()
        .await?;
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM slow WHERE hits <> 1").await?,
        0
    );
    Ok(())
}

/// The same doomed batch in a single walk: the error names the batch and says it rolled
/// back, the batches before it stay committed, and the next run goes on after them.
#[tokio::test]
async fn a_walks_batch_whose_commit_fails_is_named_and_read_back() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    exec(
        db.pool(),
        "CREATE TABLE slow (id bigint PRIMARY KEY, hits integer NOT NULL DEFAULT 0);
         INSERT INTO slow (id) SELECT generate_series(1, 400);",
    )
    .await?;
    exec(db.pool(), datamig_tests::DOOMED_AT_COMMIT).await?;
    let err = Migrator::new(db.pool().clone())
        .migrations([&doomed_batch::MIGRATION])
        .run()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::CommitOutcome {
                applied: Some(false),
                batch: Some(10),
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "the COMMIT of batch 10 of migration {} failed (",
            doomed_batch::MIGRATION.id()
        )) && message.ends_with("the batch rolled back: the next run does it again"),
        "{message}"
    );
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM slow WHERE hits = 1").await?,
        225,
        "the nine batches before it committed"
    );
    exec(db.pool(), "DROP TRIGGER end_session_at_commit ON doomed").await?;
    Migrator::new(db.pool().clone())
        .migrations([&doomed_batch::MIGRATION])
        .run()
        .await?;
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM slow WHERE hits <> 1").await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn splitting_a_table_with_stale_statistics_reads_a_sample_not_every_key() -> anyhow::Result<()>
{
    let db = datamig::testing::postgres().await?;
    // Statistics taken while the table was empty, then 200,000 rows: the planner's
    // statistics say it is empty.
    exec(
        db.pool(),
        "CREATE TABLE stale (id uuid PRIMARY KEY, hits integer NOT NULL DEFAULT 0,
                             pad text NOT NULL DEFAULT repeat('x', 40))
             WITH (autovacuum_enabled = false);
         ANALYZE stale;
         INSERT INTO stale (id) SELECT md5(n::text)::uuid FROM generate_series(1, 200000) AS n;",
    )
    .await?;
    let reltuples: f64 =
        sqlx::query_scalar("SELECT reltuples::float8 FROM pg_class WHERE oid = 'stale'::regclass")
            .fetch_one(db.pool())
            .await?;
    assert!(reltuples <= 0.0, "{reltuples}");
    let before = rows_read(db.pool()).await?;
    // The split, then each worker's first batch fails before its body reads a row.
    let options: sqlx::postgres::PgConnectOptions = db.url().parse()?;
    let pool = PgPool::connect_with(options.application_name("split-test")).await?;
    let err = Migrator::new(pool.clone())
        .migrations([&split_only::MIGRATION])
        .workers(2)
        .run()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MigrationFailed { .. }), "{err:?}");
    let ranges = scalar(db.pool(), "SELECT count(*) FROM datamig_ledger_ranges").await?;
    assert!(ranges >= 4, "the keys were split into {ranges} ranges");
    // Once the run's sessions have ended, their statistics have reached the server.
    pool.close().await;
    wait_for(
        db.pool(),
        "SELECT (count(*) = 0)::int::bigint FROM pg_stat_activity
         WHERE datname = current_database()
           AND (application_name = 'split-test' OR application_name LIKE 'datamig/%')",
        1,
        Duration::from_secs(30),
    )
    .await?;
    let read = rows_read(db.pool()).await? - before;
    assert!(
        (1..50_000).contains(&read),
        "the split read {read} rows or index entries of 200,000"
    );
    // And the ranges of a split cover every key: a walk hits each row once.
    Migrator::new(db.pool().clone())
        .migrations([&walk_uuids::MIGRATION])
        .workers(2)
        .run()
        .await?;
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM stale WHERE hits <> 1").await?,
        0
    );
    Ok(())
}

/// Rows and index entries of `stale` read by scans, as the server's statistics have them
/// now.
async fn rows_read(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await?;
    sqlx::query_scalar(
        "SELECT (COALESCE(t.seq_tup_read, 0)
                 + COALESCE((SELECT sum(idx_tup_read) FROM pg_stat_user_indexes i
                             WHERE i.relid = t.relid), 0))::bigint
         FROM pg_stat_user_tables t WHERE t.relname = 'stale'",
    )
    .fetch_one(&mut *conn)
    .await
}
