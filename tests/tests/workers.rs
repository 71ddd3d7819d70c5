//! One batched migration, many workers (PostgreSQL): ranges recorded in the database, each
//! claimed by one worker at a time and worked batch by batch with its checkpoint. Each key
//! applied exactly once with 2, 4 and 8 workers in one process and across processes; any
//! key type and a scope per worker; workers of another process joining a migration in
//! progress; random SIGKILLs of worker processes with nothing applied twice or lost and the
//! migration applied once; pause with several workers running; the statements that find
//! batches inside a range are index range scans; `status` shows the workers; SQLite
//! refuses more than one worker.

use std::time::Duration;

use datamig::prelude::*;
use datamig::{Error, State};
use datamig_tests::{create_spread_tables, scalar, text};
use sqlx::PgPool;
use tokio::io::AsyncBufReadExt;

/// Counts each row's visits (`hits = 1` everywhere proves each key was done once) and logs
/// each batch's connection, so a test can see the workers.
#[datamig::migration(
    id = "20250401_0000_hit_ints",
    batch(table = "by_int", key = "id", size = 25)
)]
async fn hit_ints<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE by_int SET hits = hits + 1 WHERE {batch}", &batch)
        .await?;
    ctx.execute("INSERT INTO batch_log (backend) VALUES (pg_backend_pid())")
        .await?;
    // A few milliseconds in the server: a range of 13 batches outlasts the other workers'
    // first claims, so every worker gets ranges however busy the machine is.
    ctx.fetch_i64("SELECT 0::bigint FROM pg_sleep(0.005)")
        .await?;
    Ok(())
}

/// The same over a UUID key, only the rows of a scope.
#[datamig::migration(
    id = "20250401_0001_hit_uuids",
    batch(
        table = "by_uuid",
        key = "id",
        size = 25,
        scope = "deleted_at IS NULL",
        workers = 4
    )
)]
async fn hit_uuids(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE by_uuid SET hits = hits + 1 WHERE {batch}", &batch)
        .await?;
    ctx.execute("INSERT INTO batch_log (backend) VALUES (pg_backend_pid())")
        .await?;
    ctx.fetch_i64("SELECT 0::bigint FROM pg_sleep(0.005)")
        .await?;
    Ok(())
}

/// The same over a text key.
#[datamig::migration(
    id = "20250401_0002_hit_texts",
    batch(table = "by_text", key = "code", size = 25, workers = 4)
)]
async fn hit_texts(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE by_text SET hits = hits + 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// The same over a composite key `(tenant_id, id)`.
#[datamig::migration(
    id = "20250401_0003_hit_pairs",
    batch(table = "by_pair", key = "tenant_id, id", size = 25, workers = 4)
)]
async fn hit_pairs(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE by_pair AS p SET hits = hits + 1 WHERE {batch:p}",
        &batch,
    )
    .await?;
    Ok(())
}

/// Fails in the batch that holds key 2500 of `by_int`, after writing, while `fail_flag`
/// has a row.
#[datamig::migration(
    id = "20250401_0004_fail_mid",
    batch(table = "by_int", key = "id", size = 25, workers = 4)
)]
async fn fail_mid(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE by_int SET hits = hits + 1 WHERE {batch}", &batch)
        .await?;
    let fail = ctx.fetch_i64("SELECT count(*) FROM fail_flag").await? == Some(1);
    let holds_2500 = batch
        .after()
        .zip(batch.last())
        .is_some_and(|(after, last)| after < 2500 && last >= 2500);
    if fail && holds_2500 {
        anyhow::bail!("key 2500 is bad");
    }
    Ok(())
}

const TABLES: &str = "
    CREATE TABLE batch_log (backend integer NOT NULL);
    CREATE TABLE fail_flag (reason text);
    INSERT INTO fail_flag VALUES ('key 2500');
    CREATE TABLE by_int (id bigint PRIMARY KEY, hits integer NOT NULL DEFAULT 0);
    INSERT INTO by_int (id) SELECT n FROM generate_series(1, 5000) AS n;
    CREATE TABLE by_uuid (id uuid PRIMARY KEY, deleted_at timestamptz,
                          hits integer NOT NULL DEFAULT 0);
    INSERT INTO by_uuid (id, deleted_at)
        SELECT md5(n::text)::uuid, CASE WHEN n % 5 = 0 THEN now() END
        FROM generate_series(1, 5000) AS n;
    CREATE TABLE by_text (code text PRIMARY KEY, hits integer NOT NULL DEFAULT 0);
    INSERT INTO by_text (code) SELECT md5(n::text) FROM generate_series(1, 5000) AS n;
    CREATE TABLE by_pair (tenant_id bigint NOT NULL, id uuid NOT NULL,
                          hits integer NOT NULL DEFAULT 0, PRIMARY KEY (tenant_id, id));
    INSERT INTO by_pair (tenant_id, id)
        SELECT n % 7, md5(n::text)::uuid FROM generate_series(1, 5000) AS n;
    ANALYZE;";

/// `hits` of a table, counted by value: `[(1, n)]` when every row was hit once.
async fn hits(pool: &PgPool, table: &str, scope: &str) -> anyhow::Result<Vec<(i32, i64)>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT hits, count(*) FROM {table} WHERE {scope} GROUP BY hits ORDER BY hits"
    )))
    .fetch_all(pool)
    .await?)
}

/// The migration's ledger row (status, batches, rows) and its succeeded attempts.
async fn ledger(pool: &PgPool, id: &str) -> anyhow::Result<(String, i64, i64, i64)> {
    let (status, batches, rows): (String, i64, i64) =
        sqlx::query_as("SELECT status, batches, rows_affected FROM datamig_ledger WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await?;
    let succeeded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM datamig_runs
         WHERE migration_id = $1 AND outcome = 'succeeded' AND action IN ('apply', 'resume', 'rerun')",
    )
    .bind(id)
    .fetch_one(pool)
    .await?;
    Ok((status, batches, rows, succeeded))
}

#[tokio::test]
async fn each_key_is_applied_exactly_once_with_2_4_and_8_workers_in_one_process()
-> anyhow::Result<()> {
    for workers in [2_u32, 4, 8] {
        let db = datamig::testing::postgres().await?;
        sqlx::raw_sql(TABLES).execute(db.pool()).await?;
        let report = Migrator::new(db.pool().clone())
            .migrations([&hit_ints::MIGRATION])
            .workers(workers)
            .run()
            .await?;
        let applied = &report.applied[0];
        assert_eq!(applied.workers, workers);
        // 5000 keys updated and one log row a batch; at least 200 batches of 25 keys (a
        // range's last batch may be shorter).
        let logged = scalar(db.pool(), "SELECT count(*) FROM batch_log").await?;
        assert_eq!(applied.batches, u64::try_from(logged)?);
        assert!(
            (200..=200 + 4 * i64::from(workers)).contains(&logged),
            "{logged}"
        );
        assert_eq!(
            applied.rows_affected,
            5000 + applied.batches,
            "{workers} workers"
        );
        assert_eq!(hits(db.pool(), "by_int", "true").await?, vec![(1, 5000)]);
        let (status, batches, rows, succeeded) =
            ledger(db.pool(), hit_ints::MIGRATION.id()).await?;
        assert_eq!(
            (status.as_str(), batches, rows, succeeded),
            ("applied", logged, 5000 + logged, 1)
        );
        // Every worker had its own connection, and the ranges are gone.
        let connections =
            scalar(db.pool(), "SELECT count(DISTINCT backend) FROM batch_log").await?;
        assert_eq!(connections, i64::from(workers), "{workers} workers");
        assert_eq!(
            scalar(db.pool(), "SELECT count(*) FROM datamig_ledger_ranges").await?,
            0
        );
        assert_eq!(datamig_tests::advisory_locks_held(db.pool()).await?, 0);
        // A second run finds it applied.
        let again = Migrator::new(db.pool().clone())
            .migrations([&hit_ints::MIGRATION])
            .workers(workers)
            .run()
            .await?;
        assert!(again.applied.is_empty());
        assert_eq!(hits(db.pool(), "by_int", "true").await?, vec![(1, 5000)]);
    }
    Ok(())
}

#[tokio::test]
async fn workers_walk_uuid_text_and_composite_keys_and_a_scope() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    sqlx::raw_sql(TABLES).execute(db.pool()).await?;
    let report = Migrator::new(db.pool().clone())
        .migrations([
            &hit_uuids::MIGRATION,
            &hit_texts::MIGRATION,
            &hit_pairs::MIGRATION,
        ])
        .run()
        .await?;
    assert!(report.applied.iter().all(|a| a.workers == 4), "{report:?}");
    assert_eq!(
        hits(db.pool(), "by_uuid", "deleted_at IS NULL").await?,
        vec![(1, 4000)]
    );
    assert_eq!(
        hits(db.pool(), "by_uuid", "deleted_at IS NOT NULL").await?,
        vec![(0, 1000)],
        "rows outside the scope are never walked"
    );
    assert_eq!(hits(db.pool(), "by_text", "true").await?, vec![(1, 5000)]);
    assert_eq!(hits(db.pool(), "by_pair", "true").await?, vec![(1, 5000)]);
    for migration in [
        &hit_uuids::MIGRATION,
        &hit_texts::MIGRATION,
        &hit_pairs::MIGRATION,
    ] {
        let (status, _, _, succeeded) = ledger(db.pool(), migration.id()).await?;
        assert_eq!((status.as_str(), succeeded), ("applied", 1));
    }
    let workers = scalar(db.pool(), "SELECT count(DISTINCT backend) FROM batch_log").await?;
    assert_eq!(workers, 4, "the UUID walk had four workers");
    Ok(())
}

#[tokio::test]
async fn a_run_killed_part_way_resumes_every_range_from_its_checkpoint() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    sqlx::raw_sql(TABLES).execute(db.pool()).await?;
    let interrupted = Migrator::new(db.pool().clone())
        .migrations([&hit_ints::MIGRATION])
        .workers(4)
        .interrupt_after_batches(37)
        .run()
        .await;
    assert!(
        matches!(interrupted, Err(Error::Interrupted { .. })),
        "{interrupted:?}"
    );
    let statuses = Migrator::new(db.pool().clone())
        .migrations([&hit_ints::MIGRATION])
        .status()
        .await?;
    assert_eq!(statuses[0].state, State::Running);
    assert_eq!(statuses[0].ranges.len(), 16, "four ranges a worker");
    let done: i64 = statuses[0].ranges.iter().map(|r| r.keys_done).sum();
    assert!(
        statuses[0].ranges.iter().all(|r| !r.held),
        "no worker holds a range after the run: {:?}",
        statuses[0].ranges
    );
    assert_eq!(
        hits(db.pool(), "by_int", "true").await?,
        vec![(0, 5000 - done), (1, done)]
    );
    // Resumed with a different number of workers: the ranges decide, not the count.
    let report = Migrator::new(db.pool().clone())
        .migrations([&hit_ints::MIGRATION])
        .workers(2)
        .run()
        .await?;
    assert_eq!(report.applied.len(), 1);
    assert_eq!(hits(db.pool(), "by_int", "true").await?, vec![(1, 5000)]);
    let (status, batches, rows, succeeded) = ledger(db.pool(), hit_ints::MIGRATION.id()).await?;
    let logged = scalar(db.pool(), "SELECT count(*) FROM batch_log").await?;
    assert_eq!(
        (status.as_str(), batches, rows, succeeded),
        ("applied", logged, 5000 + logged, 1),
        "every batch counted once, over both runs"
    );
    Ok(())
}

#[tokio::test]
async fn a_failing_range_stops_every_worker_and_the_fixed_run_finishes() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    sqlx::raw_sql(TABLES).execute(db.pool()).await?;
    let failed = Migrator::new(db.pool().clone())
        .migrations([&fail_mid::MIGRATION])
        .run()
        .await;
    let Err(Error::MigrationFailed { id, message, .. }) = failed else {
        panic!("{failed:?}");
    };
    assert_eq!(id, fail_mid::MIGRATION.id());
    assert!(message.contains("key 2500 is bad"), "{message}");
    assert!(message.starts_with("range "), "names its range: {message}");
    // The failed batch rolled back (key 2500 not hit), nothing was hit twice, the other
    // workers stopped after their batch, and no range is held.
    assert_eq!(
        scalar(db.pool(), "SELECT hits::bigint FROM by_int WHERE id = 2500").await?,
        0
    );
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM by_int WHERE hits > 1").await?,
        0
    );
    let failures: i64 = scalar(
        db.pool(),
        "SELECT count(*) FROM datamig_runs WHERE outcome = 'failed'",
    )
    .await?;
    assert_eq!(failures, 1, "recorded once");
    assert_eq!(datamig_tests::advisory_locks_held(db.pool()).await?, 0);
    // Fixed, the next run finishes every range from its checkpoint.
    sqlx::query("DELETE FROM fail_flag")
        .execute(db.pool())
        .await?;
    Migrator::new(db.pool().clone())
        .migrations([&fail_mid::MIGRATION])
        .run()
        .await?;
    assert_eq!(hits(db.pool(), "by_int", "true").await?, vec![(1, 5000)]);
    let (status, _, rows, succeeded) = ledger(db.pool(), fail_mid::MIGRATION.id()).await?;
    assert_eq!((status.as_str(), rows, succeeded), ("applied", 5000, 1));
    Ok(())
}

#[tokio::test]
async fn a_worker_finds_its_batches_by_index_range_scans_inside_its_range() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    sqlx::raw_sql(TABLES).execute(db.pool()).await?;
    let mut conn = db.pool().acquire().await?;
    for (migration, table) in [
        (&hit_ints::MIGRATION, "by_int"),
        (&hit_uuids::MIGRATION, "by_uuid"),
        (&hit_texts::MIGRATION, "by_text"),
        (&hit_pairs::MIGRATION, "by_pair"),
    ] {
        let plan = datamig::testing::range_batch_plan(&mut conn, migration).await?;
        assert!(
            plan.contains(&format!("Index Scan using {table}_pkey on {table}"))
                || plan.contains(&format!("Index Only Scan using {table}_pkey on {table}")),
            "{}:\n{plan}",
            migration.id()
        );
        assert!(plan.contains("Index Cond"), "{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
    }
    Ok(())
}

#[tokio::test]
async fn sqlite_refuses_more_than_one_worker_and_runs_nothing() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("datamig-workers-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("refuse.db");
    let _ = std::fs::remove_file(&path);
    let url = format!("sqlite:{}?mode=rwc", path.display());
    let pool = sqlx::SqlitePool::connect(&url).await?;
    sqlx::raw_sql(
        "CREATE TABLE by_int (id INTEGER PRIMARY KEY, hits INTEGER NOT NULL DEFAULT 0);
         CREATE TABLE batch_log (backend INTEGER);
         INSERT INTO by_int (id) VALUES (1), (2), (3);",
    )
    .execute(&pool)
    .await?;
    let refused = Migrator::new(pool.clone())
        .migrations([&hit_ints::MIGRATION])
        .workers(2)
        .run()
        .await;
    let Err(Error::Config(message)) = refused else {
        panic!("{refused:?}");
    };
    assert!(
        message.contains("asks for 2 workers") && message.contains("one worker only"),
        "{message}"
    );
    assert!(message.ends_with("nothing ran"), "{message}");
    let hit: i64 = sqlx::query_scalar("SELECT sum(hits) FROM by_int")
        .fetch_one(&pool)
        .await?;
    assert_eq!(hit, 0);
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM datamig_ledger")
        .fetch_one(&pool)
        .await?;
    assert_eq!(recorded, 0);
    // One worker runs.
    Migrator::new(pool.clone())
        .migrations([&hit_ints::MIGRATION])
        .workers(1)
        .run()
        .await
        .map(|_| ())
        .or_else(|err| match err {
            // `pg_backend_pid()` does not exist on SQLite: the body fails, which is fine
            // here; the refusal is what this test is about.
            Error::MigrationFailed { .. } => Ok(()),
            other => Err(other),
        })?;
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

// ---- across processes -------------------------------------------------------------------

fn workers_bin(url: &str, args: &[&str]) -> tokio::process::Command {
    datamig_tests::command(env!("CARGO_BIN_EXE_datamig-workers"), url, args)
}

const SPREAD: &str = "20250301_0000_spread_ids";

/// Waits (under a deadline) until `spread_log` holds at least `batches` batches.
async fn wait_for_batches(pool: &PgPool, batches: i64) -> anyhow::Result<i64> {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let done = scalar(pool, "SELECT count(*) FROM spread_log").await?;
            if done >= batches {
                return Ok::<_, anyhow::Error>(done);
            }
            tokio::task::yield_now().await;
        }
    })
    .await?
}

#[tokio::test]
async fn workers_in_several_processes_apply_each_key_exactly_once() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    // 20 ms a batch: the run lasts seconds, longer than starting the other two processes.
    create_spread_tables(db.pool(), 4000, 20).await?;
    let runs: Vec<_> = (0..3)
        .map(|_| workers_bin(db.url(), &["run", "--workers", "2", "--format", "json"]).output())
        .collect();
    let outputs = futures_util::future::join_all(runs).await;
    let mut joined = 0;
    let mut applied = 0;
    let mut progress_workers = Vec::new();
    for output in outputs {
        let output = output?;
        assert!(output.status.success(), "{}", text(&output.stderr));
        for line in text(&output.stdout).lines() {
            let event: serde_json::Value = serde_json::from_str(line)?;
            if event["type"] == "progress" {
                progress_workers.push(event["workers"].as_u64());
            }
            if event["type"] == "result" {
                joined += event["joined"].as_array().map_or(0, Vec::len);
                applied += event["applied"].as_array().map_or(0, Vec::len);
            }
        }
    }
    assert_eq!(applied, 1, "one run applied it");
    assert!(joined >= 1, "another run joined it as workers");
    assert!(progress_workers.iter().all(|w| *w == Some(2)));
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM spread WHERE v <> 1").await?,
        0
    );
    assert_eq!(
        scalar(db.pool(), "SELECT sum(keys)::bigint FROM spread_log").await?,
        4000
    );
    assert!(
        scalar(db.pool(), "SELECT count(DISTINCT pid) FROM spread_log").await? >= 2,
        "batches were committed by more than one process"
    );
    let (status, batches, rows, succeeded) = ledger(db.pool(), SPREAD).await?;
    // 4000 keys updated, and one log row a batch.
    let logged = scalar(db.pool(), "SELECT count(*) FROM spread_log").await?;
    assert_eq!(
        (status.as_str(), batches, rows, succeeded),
        ("applied", logged, 4000 + logged, 1)
    );
    Ok(())
}

#[tokio::test]
async fn a_run_joins_a_migration_in_progress_and_status_shows_the_workers() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    // 40 ms a batch: what is left lasts seconds, longer than starting the second run.
    create_spread_tables(db.pool(), 3000, 40).await?;
    let first = workers_bin(db.url(), &["run", "--workers", "2"]).spawn()?;
    // Two workers hold one range each; the other six wait for a worker.
    wait_for_batches(db.pool(), 3).await?;
    let status = workers_bin(db.url(), &["status"]).output().await?;
    let shown = text(&status.stdout);
    assert!(status.status.success(), "{}", text(&status.stderr));
    assert!(shown.contains("ranges done"), "{shown}");
    let first_pid = first.id().expect("running");
    for worker in 1..=2 {
        assert!(
            shown.contains(&format!(
                "worked by {}/{first_pid}/{worker}",
                datamig::__private::host_name()
            )),
            "{shown}"
        );
    }
    assert!(shown.contains("waiting"), "{shown}");
    let json = workers_bin(db.url(), &["status", "--format", "json"])
        .output()
        .await?;
    let statuses: serde_json::Value = serde_json::from_slice(&json.stdout)?;
    let ranges = statuses[0]["ranges"].as_array().expect("ranges");
    assert_eq!(ranges.len(), 8, "four ranges a worker");
    assert_eq!(ranges.iter().filter(|r| r["held"] == true).count(), 2);

    let second = workers_bin(db.url(), &["run", "--workers", "3"])
        .output()
        .await?;
    assert!(second.status.success(), "{}", text(&second.stderr));
    let said = text(&second.stdout);
    assert!(
        said.contains(&format!("joined {SPREAD} as 3 worker(s)")),
        "{said}"
    );
    let first = first.wait_with_output().await?;
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stdout).contains(&format!("applied {SPREAD}")),
        "{}",
        text(&first.stdout)
    );
    assert!(
        scalar(db.pool(), "SELECT count(DISTINCT pid) FROM spread_log").await? >= 2,
        "the joining run committed batches"
    );
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM spread WHERE v <> 1").await?,
        0
    );
    let (status, _, rows, succeeded) = ledger(db.pool(), SPREAD).await?;
    let logged = scalar(db.pool(), "SELECT count(*) FROM spread_log").await?;
    assert_eq!(
        (status.as_str(), rows, succeeded),
        ("applied", 3000 + logged, 1)
    );
    Ok(())
}

#[tokio::test]
async fn random_kills_of_worker_processes_lose_nothing_and_apply_nothing_twice()
-> anyhow::Result<()> {
    let kills: u32 = std::env::var("DATAMIG_RELIABILITY_WORKER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let db = datamig::testing::postgres().await?;
    create_spread_tables(db.pool(), 20_000, 2).await?;
    let mut seed = u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
    let mut random = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut done = 0;
    let mut killed = 0;
    while killed < kills {
        // Two processes of two to four workers each; one of them killed once both have
        // committed more batches, at an instant that falls anywhere in a batch.
        let mut runs = Vec::new();
        for _ in 0..2 {
            let workers = (2 + random(3)).to_string();
            runs.push(workers_bin(db.url(), &["run", "--workers", &workers]).spawn()?);
        }
        done = wait_for_batches(db.pool(), done + 1 + i64::try_from(random(6))?).await?;
        let victim = usize::try_from(random(2))?;
        runs[victim].start_kill()?;
        let _ = runs[victim].wait().await;
        killed += 1;
        if random(2) == 0 {
            wait_for_batches(db.pool(), done + 1).await?;
            let other = 1 - victim;
            runs[other].start_kill()?;
            let _ = runs[other].wait().await;
            killed += 1;
        }
        for mut run in runs {
            let _ = run.start_kill();
            let _ = run.wait().await;
        }
        done = scalar(db.pool(), "SELECT count(*) FROM spread_log").await?;
        // Nothing was applied twice, at any point.
        assert_eq!(
            scalar(db.pool(), "SELECT count(*) FROM spread WHERE v > 1").await?,
            0,
            "after {killed} kills"
        );
        if scalar(db.pool(), "SELECT count(*) FROM spread WHERE v = 0").await? == 0 {
            break;
        }
    }
    assert!(
        killed >= kills,
        "only {killed} kills before the migration finished"
    );
    let last = workers_bin(db.url(), &["run", "--workers", "4"])
        .output()
        .await?;
    assert!(last.status.success(), "{}", text(&last.stderr));
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM spread WHERE v <> 1").await?,
        0
    );
    assert_eq!(
        scalar(db.pool(), "SELECT sum(keys)::bigint FROM spread_log").await?,
        20_000
    );
    let (status, batches, rows, succeeded) = ledger(db.pool(), SPREAD).await?;
    assert_eq!(
        (status.as_str(), rows, succeeded),
        ("applied", 20_000 + batches, 1)
    );
    assert_eq!(
        batches,
        scalar(db.pool(), "SELECT count(*) FROM spread_log").await?,
        "every committed batch counted once"
    );
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM datamig_ledger_ranges").await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn a_pause_stops_every_worker_after_its_batch_and_a_resume_finishes() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    create_spread_tables(db.pool(), 4000, 20).await?;
    let mut run = workers_bin(db.url(), &["run", "--workers", "4", "--format", "json"]).spawn()?;
    let stdout = run.stdout.take().expect("piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    wait_for_batches(db.pool(), 8).await?;
    let pause = workers_bin(db.url(), &["pause", SPREAD, "--reason", "busy"])
        .output()
        .await?;
    assert!(pause.status.success(), "{}", text(&pause.stderr));
    let mut result = None;
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            let event: serde_json::Value = serde_json::from_str(&line)?;
            if event["type"] == "result" {
                result = Some(event);
            }
        }
        Ok::<_, anyhow::Error>(())
    })
    .await??;
    assert!(run.wait().await?.success());
    let result = result.expect("a result");
    assert_eq!(result["paused"][0]["migration_id"], SPREAD);
    // Every worker has stopped: no range is held, and the process is gone.
    let held = Migrator::new(db.pool().clone()).status().await?;
    let ranges = &held.iter().find(|s| s.id == SPREAD).expect("listed").ranges;
    assert!(
        !ranges.is_empty() && ranges.iter().all(|r| !r.held),
        "{ranges:?}"
    );
    let stopped_at = scalar(db.pool(), "SELECT count(*) FROM spread_log").await?;
    assert!(stopped_at < 200, "paused part-way: {stopped_at} batches");
    // A run while paused skips it, and joins nothing.
    let skipped = workers_bin(db.url(), &["run"]).output().await?;
    assert!(skipped.status.success());
    assert!(text(&skipped.stdout).contains(&format!("paused {SPREAD}")));
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM spread_log").await?,
        stopped_at
    );
    let resume = workers_bin(db.url(), &["resume", SPREAD]).output().await?;
    assert!(resume.status.success(), "{}", text(&resume.stderr));
    let finish = workers_bin(db.url(), &["run", "--workers", "4"])
        .output()
        .await?;
    assert!(finish.status.success(), "{}", text(&finish.stderr));
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM spread WHERE v <> 1").await?,
        0
    );
    let (status, _, _, succeeded) = ledger(db.pool(), SPREAD).await?;
    assert_eq!((status.as_str(), succeeded), ("applied", 1));
    Ok(())
}

#[tokio::test]
async fn a_stressed_database_holds_every_worker_until_it_recovers() -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let db = datamig::testing::postgres().await?;
    sqlx::raw_sql(TABLES).execute(db.pool()).await?;
    sqlx::raw_sql("CREATE TABLE stress (why text)")
        .execute(db.pool())
        .await?;
    sqlx::query("INSERT INTO stress VALUES ('replica behind')")
        .execute(db.pool())
        .await?;
    let asked = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&asked);
    let waits = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&waits);
    let migrator = Migrator::new(db.pool().clone())
        .migrations([&hit_ints::MIGRATION])
        .workers(4)
        .throttle_interval(Duration::from_millis(20))
        .on_progress(move |event| {
            if event.waiting.as_deref() == Some("replica behind") {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })
        .health_check(move |conn| {
            counter.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                let why: Option<String> = sqlx::query_scalar("SELECT why FROM stress")
                    .fetch_optional(&mut *conn)
                    .await?;
                Ok(why.map_or(datamig::Health::Healthy, datamig::Health::Stressed))
            })
        });
    let run = tokio::spawn(async move { migrator.run().await });
    // Every worker asks before its first batch, and again while stressed.
    tokio::time::timeout(Duration::from_secs(30), async {
        while asked.load(Ordering::SeqCst) < 12 {
            tokio::task::yield_now().await;
        }
    })
    .await?;
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM batch_log").await?,
        0,
        "no worker ran a batch while the database said it was stressed"
    );
    assert!(waits.load(Ordering::SeqCst) >= 4, "the waits were reported");
    sqlx::query("DELETE FROM stress").execute(db.pool()).await?;
    let report = tokio::time::timeout(Duration::from_secs(60), run).await???;
    assert_eq!(report.applied[0].workers, 4);
    assert_eq!(hits(db.pool(), "by_int", "true").await?, vec![(1, 5000)]);
    Ok(())
}
