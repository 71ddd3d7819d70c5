//! One batched migration, many workers, on MySQL and MariaDB (MariaDB 10.11 from
//! `datamig::testing::mysql()`): ranges recorded in an InnoDB table, each claimed by one
//! worker at a time (`GET_LOCK` per range, the row taken `FOR UPDATE SKIP LOCKED`). Two and
//! four workers over an integer key, a `CHAR(36)` and a `BINARY(16)` UUID key each reach
//! every row exactly once; a run stopped part-way resumes every range from its checkpoint;
//! worker processes killed at random instants lose nothing and apply nothing twice, and
//! the next run finishes their ranges; a run joins another's workers; a joiner gives up on
//! ranges a stopped process holds and names them; a joiner of old code claims no range of
//! a re-run of new code; under the lease lock a leased range is taken over once its lease
//! expires; a sample splits a large UUID table (more keys than the split reads whole)
//! into ranges of similar size; bad inputs are named.

use std::time::Duration;

use datamig::prelude::*;
use datamig::{Error, RunnerLock, State};
use datamig_tests::{mysql_numbers, send, text};
use sqlx::{AssertSqlSafe, MySqlPool};

/// Counts each row's visits (`hits = 1` everywhere proves each key was done once) and logs
/// each batch's connection, so a test can see the workers.
#[datamig::migration(
    id = "20250801_0000_hit_ints",
    batch(table = "by_int", key = "id", size = 25)
)]
async fn hit_ints(ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE by_int SET hits = hits + 1 WHERE {batch}", &batch)
        .await?;
    ctx.execute("INSERT INTO batch_log (conn) VALUES (CONNECTION_ID())")
        .await?;
    // A few milliseconds in the server: a range's batches outlast the other workers'
    // first claims, so every worker gets ranges however busy the machine is.
    ctx.fetch_i64("SELECT CAST(SLEEP(0.005) AS signed)").await?;
    Ok(())
}

/// The same over a `CHAR(36)` UUID key, only the rows of a scope.
#[datamig::migration(
    id = "20250801_0001_hit_char_uuids",
    batch(table = "by_char", key = "id", size = 25, scope = "deleted_at IS NULL")
)]
async fn hit_char_uuids(ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE by_char SET hits = hits + 1 WHERE {batch}", &batch)
        .await?;
    ctx.execute("INSERT INTO batch_log (conn) VALUES (CONNECTION_ID())")
        .await?;
    ctx.fetch_i64("SELECT CAST(SLEEP(0.005) AS signed)").await?;
    Ok(())
}

/// The same over a `BINARY(16)` UUID key.
#[datamig::migration(
    id = "20250801_0002_hit_binary_uuids",
    batch(table = "by_binary", key = "id", size = 25)
)]
async fn hit_binary_uuids(ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE by_binary SET hits = hits + 1 WHERE {batch}", &batch)
        .await?;
    ctx.execute("INSERT INTO batch_log (conn) VALUES (CONNECTION_ID())")
        .await?;
    ctx.fetch_i64("SELECT CAST(SLEEP(0.005) AS signed)").await?;
    Ok(())
}

/// The old code of a migration: adds 1 to each row, 10 keys a batch, slowly.
#[datamig::migration(
    id = "20250801_0003_bump_versioned",
    batch(table = "versioned", key = "id", size = 10)
)]
async fn bump_v1(ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE versioned SET v = v + 1 WHERE {batch}", &batch)
        .await?;
    ctx.fetch_i64("SELECT CAST(SLEEP(0.02) AS signed)").await?;
    Ok(())
}

/// The new code of the same migration: adds 100 to each row.
#[datamig::migration(
    id = "20250801_0003_bump_versioned",
    batch(table = "versioned", key = "id", size = 10),
    rerun_on_change
)]
async fn bump_v2(ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE versioned SET v = v + 100 WHERE {batch}", &batch)
        .await?;
    ctx.fetch_i64("SELECT CAST(SLEEP(0.02) AS signed)").await?;
    Ok(())
}

/// Walks a table that does not exist, with two workers.
#[datamig::migration(
    id = "20250801_0004_no_table",
    batch(table = "nowhere", key = "id", size = 10, workers = 2)
)]
async fn no_table(ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE nowhere SET v = 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// Walks a `DOUBLE` key, which batching does not walk, with two workers.
#[datamig::migration(
    id = "20250801_0005_by_score",
    batch(table = "scored", key = "score", size = 10, workers = 2)
)]
async fn by_score(ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE scored SET v = 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// Fails its first batch without reading a row: a run of it splits the keys and stops.
#[datamig::migration(
    id = "20250801_0006_split_only",
    batch(table = "big_char", key = "id", size = 500)
)]
async fn split_only(_ctx: &mut Ctx<'_, MySql>, _batch: Batch) -> anyhow::Result<()> {
    anyhow::bail!("stopped after the split")
}

/// Runs `migrator` in a task of its own.
fn spawn_run(
    migrator: Migrator<MySql>,
) -> tokio::task::JoinHandle<Result<datamig::RunReport, Error>> {
    tokio::spawn(async move { migrator.run().await })
}
const UUID: &str = "LOWER(CONCAT_WS('-', SUBSTR(MD5(n), 1, 8), SUBSTR(MD5(n), 9, 4), SUBSTR(MD5(n), 13, 4), SUBSTR(MD5(n), 17, 4), SUBSTR(MD5(n), 21)))";

async fn exec(pool: &MySqlPool, sql: &str) -> anyhow::Result<()> {
    sqlx::query(AssertSqlSafe(sql.to_string()))
        .execute(pool)
        .await?;
    Ok(())
}

async fn scalar(pool: &MySqlPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await?)
}

/// A fresh database with `by_int` (3000 integer keys), `by_char` (3000 `CHAR(36)` UUIDs,
/// one in five outside the scope), `by_binary` (3000 `BINARY(16)` UUIDs) and `batch_log`.
async fn keyed_database() -> anyhow::Result<datamig::testing::MySqlTestDatabase> {
    let db = datamig::testing::mysql().await?;
    for sql in [
        "CREATE TABLE batch_log (conn bigint NOT NULL) ENGINE=InnoDB".to_string(),
        "CREATE TABLE by_int (id bigint PRIMARY KEY, hits int NOT NULL DEFAULT 0) ENGINE=InnoDB"
            .to_string(),
        format!(
            "INSERT INTO by_int (id) {} SELECT n FROM s",
            mysql_numbers(3000)
        ),
        "CREATE TABLE by_char (id char(36) PRIMARY KEY, deleted_at datetime,
             hits int NOT NULL DEFAULT 0) ENGINE=InnoDB"
            .to_string(),
        format!(
            "INSERT INTO by_char (id, deleted_at) {}
             SELECT {UUID}, IF(n % 5 = 0, NOW(), NULL) FROM s",
            mysql_numbers(3000)
        ),
        "CREATE TABLE by_binary (id binary(16) PRIMARY KEY, hits int NOT NULL DEFAULT 0)
             ENGINE=InnoDB"
            .to_string(),
        format!(
            "INSERT INTO by_binary (id) {} SELECT UNHEX(MD5(n)) FROM s",
            mysql_numbers(3000)
        ),
    ] {
        exec(db.pool(), &sql).await?;
    }
    Ok(db)
}

/// `hits` of a table, counted by value: `[(1, n)]` when every row was hit once.
async fn hits(pool: &MySqlPool, table: &str, scope: &str) -> anyhow::Result<Vec<(i32, i64)>> {
    Ok(sqlx::query_as(AssertSqlSafe(format!(
        "SELECT hits, count(*) FROM {table} WHERE {scope} GROUP BY hits ORDER BY hits"
    )))
    .fetch_all(pool)
    .await?)
}

/// The migration's ledger row (status, batches, rows) and its succeeded attempts.
async fn ledger(pool: &MySqlPool, id: &str) -> anyhow::Result<(String, i64, i64, i64)> {
    let (status, batches, rows): (String, i64, i64) =
        sqlx::query_as("SELECT status, batches, rows_affected FROM datamig_ledger WHERE id = ?")
            .bind(id)
            .fetch_one(pool)
            .await?;
    let succeeded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM datamig_runs
         WHERE migration_id = ? AND outcome = 'succeeded' AND action IN ('apply', 'resume', 'rerun')",
    )
    .bind(id)
    .fetch_one(pool)
    .await?;
    Ok((status, batches, rows, succeeded))
}

#[tokio::test]
async fn two_and_four_workers_reach_every_integer_and_uuid_key_exactly_once() -> anyhow::Result<()>
{
    for workers in [2_u32, 4] {
        let db = keyed_database().await?;
        let migrations = [
            &hit_ints::MIGRATION,
            &hit_char_uuids::MIGRATION,
            &hit_binary_uuids::MIGRATION,
        ];
        let report = Migrator::new(db.pool().clone())
            .migrations(migrations)
            .workers(workers)
            .run()
            .await?;
        assert_eq!(report.applied.len(), 3, "{report:?}");
        assert!(report.applied.iter().all(|a| a.workers == workers));
        assert_eq!(hits(db.pool(), "by_int", "TRUE").await?, vec![(1, 3000)]);
        assert_eq!(
            hits(db.pool(), "by_char", "deleted_at IS NULL").await?,
            vec![(1, 2400)]
        );
        assert_eq!(
            hits(db.pool(), "by_char", "deleted_at IS NOT NULL").await?,
            vec![(0, 600)],
            "rows outside the scope are never walked"
        );
        assert_eq!(hits(db.pool(), "by_binary", "TRUE").await?, vec![(1, 3000)]);
        // Every batch counted once in the ledger: keys updated plus one log row a batch.
        let logged = scalar(db.pool(), "SELECT count(*) FROM batch_log").await?;
        let mut batches_total = 0;
        for (migration, keys) in migrations.iter().zip([3000, 2400, 3000]) {
            let applied = report
                .applied
                .iter()
                .find(|a| a.id == migration.id())
                .expect("applied");
            let (status, batches, rows, succeeded) = ledger(db.pool(), migration.id()).await?;
            assert_eq!(
                (status.as_str(), batches, rows, succeeded),
                (
                    "applied",
                    i64::try_from(applied.batches)?,
                    keys + i64::try_from(applied.batches)?,
                    1
                ),
                "{} with {workers} workers",
                migration.id()
            );
            // At least the batches of 25 keys (a range's last batch may be shorter).
            assert!(
                (keys / 25..=keys / 25 + 4 * i64::from(workers)).contains(&batches),
                "{}: {batches} batches",
                migration.id()
            );
            batches_total += batches;
        }
        assert_eq!(batches_total, logged);
        // Every worker had its own connection, and the ranges are gone.
        assert_eq!(
            scalar(db.pool(), "SELECT count(DISTINCT conn) FROM batch_log").await?,
            3 * i64::from(workers),
            "{workers} workers a migration, each on a connection of its own"
        );
        assert_eq!(
            scalar(db.pool(), "SELECT count(*) FROM datamig_ledger_ranges").await?,
            0
        );
        assert_eq!(
            scalar(
                db.pool(),
                "SELECT count(*) FROM information_schema.TABLES
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'datamig_ledger_ranges'
                   AND ENGINE = 'InnoDB'"
            )
            .await?,
            1,
            "the ranges table is InnoDB"
        );
        // A second run finds them applied.
        let again = Migrator::new(db.pool().clone())
            .migrations(migrations)
            .workers(workers)
            .run()
            .await?;
        assert!(again.applied.is_empty());
        assert_eq!(hits(db.pool(), "by_int", "TRUE").await?, vec![(1, 3000)]);
    }
    Ok(())
}

#[tokio::test]
async fn a_run_stopped_part_way_resumes_every_range_and_a_restart_replaces_them()
-> anyhow::Result<()> {
    let db = keyed_database().await?;
    let interrupted = Migrator::new(db.pool().clone())
        .migrations([&hit_binary_uuids::MIGRATION])
        .workers(4)
        .interrupt_after_batches(37)
        .run()
        .await;
    assert!(
        matches!(interrupted, Err(Error::Interrupted { .. })),
        "{interrupted:?}"
    );
    let statuses = Migrator::new(db.pool().clone())
        .migrations([&hit_binary_uuids::MIGRATION])
        .status()
        .await?;
    assert_eq!(statuses[0].state, State::Running);
    assert_eq!(statuses[0].ranges.len(), 16, "four ranges a worker");
    assert!(
        statuses[0].ranges.iter().all(|r| !r.held),
        "no worker holds a range after the run: {:?}",
        statuses[0].ranges
    );
    let done: i64 = statuses[0].ranges.iter().map(|r| r.keys_done).sum();
    assert!(done > 0 && done < 3000, "{done}");
    assert_eq!(
        hits(db.pool(), "by_binary", "TRUE").await?,
        vec![(0, 3000 - done), (1, done)]
    );
    // Resumed with a different number of workers: the ranges decide, not the count.
    let report = Migrator::new(db.pool().clone())
        .migrations([&hit_binary_uuids::MIGRATION])
        .workers(2)
        .run()
        .await?;
    assert_eq!(report.applied.len(), 1);
    assert_eq!(hits(db.pool(), "by_binary", "TRUE").await?, vec![(1, 3000)]);
    let (status, batches, rows, succeeded) =
        ledger(db.pool(), hit_binary_uuids::MIGRATION.id()).await?;
    let logged = scalar(db.pool(), "SELECT count(*) FROM batch_log").await?;
    assert_eq!(
        (status.as_str(), batches, rows, succeeded),
        ("applied", logged, 3000 + logged, 1),
        "every batch counted once, over both runs"
    );

    // A cancelled run restarted from the first key: its ranges are replaced by new ones
    // over every key.
    let interrupted = Migrator::new(db.pool().clone())
        .migrations([&hit_ints::MIGRATION])
        .workers(2)
        .interrupt_after_batches(10)
        .run()
        .await;
    assert!(matches!(interrupted, Err(Error::Interrupted { .. })));
    let before: Vec<(i32, Option<String>)> =
        sqlx::query_as("SELECT range_no, upper_key FROM datamig_ledger_ranges ORDER BY range_no")
            .fetch_all(db.pool())
            .await?;
    assert_eq!(before.len(), 8, "four ranges a worker");
    Migrator::new(db.pool().clone())
        .migrations([&hit_ints::MIGRATION])
        .cancel(hit_ints::MIGRATION.id(), Some("wrong data"))
        .await?;
    exec(db.pool(), "UPDATE by_int SET hits = 0").await?;
    let report = Migrator::new(db.pool().clone())
        .migrations([&hit_ints::MIGRATION])
        .workers(4)
        .restart(true)
        .run()
        .await?;
    assert_eq!(report.applied.len(), 1, "{report:?}");
    assert_eq!(hits(db.pool(), "by_int", "TRUE").await?, vec![(1, 3000)]);
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM datamig_ledger_ranges").await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn under_the_lease_lock_ranges_are_leased_and_taken_over_once_a_lease_expires()
-> anyhow::Result<()> {
    let db = keyed_database().await?;
    let lease = RunnerLock::Lease {
        ttl: Duration::from_secs(3),
    };
    // Stopped part-way: its workers gave their ranges back.
    let interrupted = Migrator::new(db.pool().clone())
        .migrations([&hit_char_uuids::MIGRATION])
        .runner_lock(lease)
        .workers(2)
        .interrupt_after_batches(12)
        .run()
        .await;
    assert!(
        matches!(interrupted, Err(Error::Interrupted { .. })),
        "{interrupted:?}"
    );
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT count(*) FROM datamig_ledger_ranges WHERE token IS NOT NULL"
        )
        .await?,
        0
    );
    // One range left as a worker killed mid-range would leave it: its lease running.
    exec(
        db.pool(),
        "UPDATE datamig_ledger_ranges SET token = 'a killed worker', worker = 'elsewhere/1/1',
             claimed_at = NOW(6), expires_at = NOW(6) + INTERVAL 5 SECOND
         WHERE range_no = 5",
    )
    .await?;
    let leased = 1;
    let statuses = Migrator::new(db.pool().clone())
        .migrations([&hit_char_uuids::MIGRATION])
        .status()
        .await?;
    assert_eq!(
        statuses[0].ranges.iter().filter(|r| r.held).count(),
        usize::try_from(leased)?,
        "a live lease holds its range"
    );
    // The next run takes the other ranges at once and the leased one once it expires.
    let started = std::time::Instant::now();
    let report = Migrator::new(db.pool().clone())
        .migrations([&hit_char_uuids::MIGRATION])
        .runner_lock(lease)
        .workers(2)
        .run()
        .await?;
    assert_eq!(report.applied.len(), 1);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(30),
        "the leased range was taken over after its lease expired: {took:?}"
    );
    assert_eq!(
        hits(db.pool(), "by_char", "deleted_at IS NULL").await?,
        vec![(1, 2400)]
    );
    let (status, batches, rows, succeeded) =
        ledger(db.pool(), hit_char_uuids::MIGRATION.id()).await?;
    let logged = scalar(db.pool(), "SELECT count(*) FROM batch_log").await?;
    assert_eq!(
        (status.as_str(), batches, rows, succeeded),
        ("applied", logged, 2400 + logged, 1)
    );
    Ok(())
}

#[tokio::test]
async fn a_joiner_with_old_code_claims_no_range_of_a_rerun_of_new_code() -> anyhow::Result<()> {
    let db = datamig::testing::mysql().await?;
    exec(
        db.pool(),
        "CREATE TABLE versioned (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0) ENGINE=InnoDB",
    )
    .await?;
    exec(
        db.pool(),
        &format!(
            "INSERT INTO versioned (id) {} SELECT n FROM s",
            mysql_numbers(2000)
        ),
    )
    .await?;
    let old_runner = spawn_run(
        Migrator::new(db.pool().clone())
            .migrations([&bump_v1::MIGRATION])
            .workers(2),
    );
    wait_for(
        db.pool(),
        "SELECT count(*) FROM datamig_ledger_ranges WHERE batches > 0",
        1,
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
    )
    .await?;
    // The old runner dies (its connections close with it); the joiner works on.
    old_runner.abort();
    let _ = old_runner.await;
    let report = Migrator::new(db.pool().clone())
        .migrations([&bump_v2::MIGRATION])
        .workers(2)
        .runner_lock_timeout(Duration::from_secs(60))
        .run()
        .await?;
    assert_eq!(report.applied.len(), 1);
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM versioned WHERE v < 100").await?,
        0,
        "rows the old code walked in the new run's ranges"
    );
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM versioned WHERE v >= 200").await?,
        0
    );
    let joined = tokio::time::timeout(Duration::from_secs(120), joiner).await??;
    assert!(
        matches!(joined, Err(Error::Drift { .. })),
        "the old code's runner: {joined:?}"
    );
    Ok(())
}

#[tokio::test]
async fn splitting_a_large_uuid_table_samples_it_into_ranges_of_similar_size() -> anyhow::Result<()>
{
    let db = datamig::testing::mysql().await?;
    exec(
        db.pool(),
        "CREATE TABLE big_char (id char(36) PRIMARY KEY, hits int NOT NULL DEFAULT 0) ENGINE=InnoDB",
    )
    .await?;
    // 100 000 keys: more than the split reads whole (200 a range, twenty times over).
    exec(
        db.pool(),
        &format!(
            "INSERT INTO big_char (id) {} SELECT {UUID} FROM s",
            mysql_numbers(100_000)
        ),
    )
    .await?;
    exec(db.pool(), "ANALYZE TABLE big_char").await?;
    let failed = Migrator::new(db.pool().clone())
        .migrations([&split_only::MIGRATION])
        .workers(4)
        .run()
        .await;
    assert!(
        matches!(failed, Err(Error::MigrationFailed { .. })),
        "{failed:?}"
    );
    let uppers: Vec<Option<String>> =
        sqlx::query_scalar("SELECT upper_key FROM datamig_ledger_ranges ORDER BY range_no")
            .fetch_all(db.pool())
            .await?;
    assert_eq!(uppers.len(), 16, "{uppers:?}");
    // The ranges are of similar size: each within a third of a sixteenth of the keys. (The
    // table holds more keys than the split reads whole: a sample cut short at its bound,
    // the first keys in order, would leave the last range a third of the table.)
    let mut lower: Option<String> = None;
    for upper in &uppers {
        let key = |text: &Option<String>| -> anyhow::Result<Option<String>> {
            Ok(match text {
                None => None,
                Some(t) => {
                    let value: serde_json::Value = serde_json::from_str(t)?;
                    Some(
                        value
                            .as_array()
                            .and_then(|a| a.first())
                            .and_then(|v| v["value"].as_str())
                            .map_or_else(|| value.to_string(), str::to_string),
                    )
                }
            })
        };
        let (low, high) = (key(&lower)?, key(upper)?);
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM big_char WHERE (? IS NULL OR id > ?) AND (? IS NULL OR id <= ?)",
        )
        .bind(&low)
        .bind(&low)
        .bind(&high)
        .bind(&high)
        .fetch_one(db.pool())
        .await?;
        assert!(
            (100_000 / 16 * 2 / 3..=100_000 / 16 * 4 / 3).contains(&count),
            "range ({low:?}, {high:?}] holds {count} keys"
        );
        lower.clone_from(upper);
    }
    Ok(())
}

/// Polls `count_sql` until it returns at least `at_least`, for at most 60 s.
async fn wait_for(pool: &MySqlPool, count_sql: &str, at_least: i64) -> anyhow::Result<i64> {
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n = match scalar(pool, count_sql).await {
            Ok(n) => n,
            // The table the count reads may not exist yet.
            Err(err)
                if err
                    .downcast_ref::<sqlx::Error>()
                    .and_then(|e| e.as_database_error())
                    .and_then(|e| e.code())
                    .is_some_and(|c| c == "42S02") =>
            {
                0
            }
            Err(err) => return Err(err),
        };
        if n >= at_least {
            return Ok(n);
        }
        anyhow::ensure!(
            std::time::Instant::now() < until,
            "waited 60 s for {count_sql} to reach {at_least} (it is {n})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn bad_inputs_are_named_and_run_nothing() -> anyhow::Result<()> {
    let db = keyed_database().await?;
    // No workers at all.
    let zero = workers_bin(db.url(), &["run", "--workers", "0"])
        .output()
        .await?;
    assert_eq!(zero.status.code(), Some(2), "{}", text(&zero.stderr));
    assert!(
        text(&zero.stderr).contains("--workers"),
        "{}",
        text(&zero.stderr)
    );
    // A table that does not exist.
    let err = Migrator::new(db.pool().clone())
        .migrations([&no_table::MIGRATION])
        .run()
        .await
        .expect_err("no table");
    let message = err.to_string();
    assert!(
        message.contains("nowhere") && message.contains(no_table::MIGRATION.id()),
        "{message}"
    );
    // A key batching does not walk.
    exec(
        db.pool(),
        "CREATE TABLE scored (score double PRIMARY KEY, v int NOT NULL DEFAULT 0) ENGINE=InnoDB",
    )
    .await?;
    exec(db.pool(), "INSERT INTO scored (score) VALUES (1.5), (2.5)").await?;
    let err = Migrator::new(db.pool().clone())
        .migrations([&by_score::MIGRATION])
        .run()
        .await
        .expect_err("a double key");
    let message = err.to_string();
    assert!(
        message.contains("score") && message.contains("double"),
        "{message}"
    );
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM scored WHERE v <> 0").await?,
        0
    );
    // A user who may not create the ranges table: named, with what to do.
    Migrator::new(db.pool().clone())
        .migrations([])
        .run()
        .await?;
    let database = db.name().to_string();
    let user = format!("w{}", std::process::id());
    exec(
        db.pool(),
        &format!("CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY 'secret'"),
    )
    .await?;
    exec(
        db.pool(),
        &format!("GRANT SELECT, INSERT, UPDATE, DELETE ON `{database}`.* TO '{user}'@'%'"),
    )
    .await?;
    let url = {
        let rest = db.url().split_once('@').map_or("", |(_, r)| r);
        format!("mysql://{user}:secret@{rest}")
    };
    let pool = sqlx::MySqlPool::connect(&url).await?;
    let err = Migrator::new(pool.clone())
        .migrations([&hit_ints::MIGRATION])
        .workers(2)
        .run()
        .await
        .expect_err("no CREATE");
    pool.close().await;
    exec(db.pool(), &format!("DROP USER '{user}'@'%'")).await?;
    let message = err.to_string();
    assert!(
        message.contains("datamig_ledger_ranges")
            && message.contains("may not create it")
            && message.contains("one worker"),
        "{message}"
    );
    assert_eq!(hits(db.pool(), "by_int", "TRUE").await?, vec![(0, 3000)]);
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT count(*) FROM information_schema.TABLES
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'datamig_ledger_ranges'"
        )
        .await?,
        0
    );
    Ok(())
}

// ---- across processes -------------------------------------------------------------------

fn workers_bin(url: &str, args: &[&str]) -> tokio::process::Command {
    datamig_tests::command(env!("CARGO_BIN_EXE_datamig-workers"), url, args)
}

const SPREAD: &str = "20250301_0000_spread_ids";

/// `spread` (`rows` keys, `v = 0`), `spread_log` (one row a committed batch: the process
/// and its keys) and `spread_settings` (how long each batch sleeps in the server), as the
/// PostgreSQL worker tests have them.
async fn spread_database(
    rows: u32,
    sleep_ms: i32,
) -> anyhow::Result<datamig::testing::MySqlTestDatabase> {
    let db = datamig::testing::mysql().await?;
    for sql in [
        "CREATE TABLE spread (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0) ENGINE=InnoDB"
            .to_string(),
        "CREATE TABLE spread_log (pid bigint NOT NULL, `keys` bigint NOT NULL) ENGINE=InnoDB"
            .to_string(),
        "CREATE TABLE spread_settings (sleep_ms int NOT NULL) ENGINE=InnoDB".to_string(),
        format!(
            "INSERT INTO spread (id) {} SELECT n FROM s",
            mysql_numbers(rows)
        ),
        format!("INSERT INTO spread_settings VALUES ({sleep_ms})"),
    ] {
        exec(db.pool(), &sql).await?;
    }
    Ok(db)
}

/// Waits (under a deadline) until `spread_log` holds at least `batches` batches.
async fn wait_for_batches(pool: &MySqlPool, batches: i64) -> anyhow::Result<i64> {
    wait_for(pool, "SELECT count(*) FROM spread_log", batches).await
}

#[tokio::test]
async fn workers_in_several_processes_apply_each_key_exactly_once() -> anyhow::Result<()> {
    let db = spread_database(4000, 20).await?;
    let runs: Vec<_> = (0..3)
        .map(|_| workers_bin(db.url(), &["run", "--workers", "2", "--format", "json"]).output())
        .collect();
    let outputs = futures_util::future::join_all(runs).await;
    let (mut joined, mut applied) = (0, 0);
    for output in outputs {
        let output = output?;
        assert!(output.status.success(), "{}", text(&output.stderr));
        for line in text(&output.stdout).lines() {
            let event: serde_json::Value = serde_json::from_str(line)?;
            if event["type"] == "result" {
                joined += event["joined"].as_array().map_or(0, Vec::len);
                applied += event["applied"].as_array().map_or(0, Vec::len);
            }
        }
    }
    assert_eq!(applied, 1, "one run applied it");
    assert!(joined >= 1, "another run joined it as workers");
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM spread WHERE v <> 1").await?,
        0
    );
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT CAST(sum(`keys`) AS signed) FROM spread_log"
        )
        .await?,
        4000
    );
    assert!(
        scalar(db.pool(), "SELECT count(DISTINCT pid) FROM spread_log").await? >= 2,
        "batches were committed by more than one process"
    );
    let (status, batches, rows, succeeded) = ledger(db.pool(), SPREAD).await?;
    let logged = scalar(db.pool(), "SELECT count(*) FROM spread_log").await?;
    assert_eq!(
        (status.as_str(), batches, rows, succeeded),
        ("applied", logged, 4000 + logged, 1)
    );
    Ok(())
}

#[tokio::test]
async fn a_run_joins_a_migration_in_progress_and_status_shows_the_workers() -> anyhow::Result<()> {
    let db = spread_database(3000, 40).await?;
    let first = workers_bin(db.url(), &["run", "--workers", "2"]).spawn()?;
    wait_for_batches(db.pool(), 3).await?;
    let status = workers_bin(db.url(), &["status", "--format", "json"])
        .output()
        .await?;
    assert!(status.status.success(), "{}", text(&status.stderr));
    let statuses: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    let ranges = statuses[0]["ranges"].as_array().expect("ranges");
    assert_eq!(ranges.len(), 8, "four ranges a worker");
    assert_eq!(
        ranges.iter().filter(|r| r["held"] == true).count(),
        2,
        "{ranges:?}"
    );
    let first_pid = first.id().expect("running");
    let host = datamig::__private::host_name();
    for worker in 1..=2 {
        let name = format!("{host}/{first_pid}/{worker}");
        assert!(
            ranges
                .iter()
                .any(|r| r["held"] == true && r["worker"] == name.as_str()),
            "{name}: {ranges:?}"
        );
    }
    let shown = workers_bin(db.url(), &["status"]).output().await?;
    let shown = text(&shown.stdout);
    assert!(
        shown.contains("ranges done") && shown.contains(&format!("worked by {host}/{first_pid}/")),
        "{shown}"
    );
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
    let db = spread_database(20_000, 2).await?;
    let mut seed = u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
    let mut random = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let (mut done, mut killed) = (0, 0);
    while killed < kills {
        // Two processes of two to four workers each; one of them SIGKILLed once both have
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
            // The survivor works on (the victim's ranges free for it) before it dies too.
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
        assert_eq!(
            scalar(db.pool(), "SELECT count(*) FROM spread WHERE v > 1").await?,
            0,
            "after {killed} kills: a key done twice"
        );
        // The ledger and the ranges agree with the data: every key of a committed batch
        // is counted in its range, and nothing else.
        let counted = scalar(
            db.pool(),
            "SELECT CAST(COALESCE(SUM(keys_done), 0) AS signed) FROM datamig_ledger_ranges",
        )
        .await
        .unwrap_or(0);
        let bumped = scalar(db.pool(), "SELECT count(*) FROM spread WHERE v = 1").await?;
        if bumped < 20_000 {
            assert_eq!(counted, bumped, "after {killed} kills");
        }
        if scalar(db.pool(), "SELECT count(*) FROM spread WHERE v = 0").await? == 0 {
            break;
        }
    }
    assert!(
        killed >= kills,
        "only {killed} kills before the migration finished"
    );
    // After the kills no range is held (their sessions ended with the processes), and a
    // new run finishes them.
    let statuses = workers_bin(db.url(), &["status", "--format", "json"])
        .output()
        .await?;
    let statuses: serde_json::Value = serde_json::from_slice(&statuses.stdout)?;
    let ranges = statuses[0]["ranges"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(ranges.iter().all(|r| r["held"] == false), "{ranges:?}");
    let last = workers_bin(db.url(), &["run", "--workers", "4"])
        .output()
        .await?;
    assert!(last.status.success(), "{}", text(&last.stderr));
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM spread WHERE v <> 1").await?,
        0
    );
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT CAST(sum(`keys`) AS signed) FROM spread_log"
        )
        .await?,
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
    println!(
        "RELIABILITY workers killed at any instant (MariaDB): {killed} SIGKILLs of worker processes, nothing lost or done twice"
    );
    Ok(())
}

#[tokio::test]
async fn a_joiner_gives_up_on_ranges_a_stopped_process_holds_and_names_them() -> anyhow::Result<()>
{
    // 50 ms a batch of 20 keys: a range of 500 keys takes over a second.
    let db = spread_database(4000, 50).await?;
    let mut frozen = workers_bin(db.url(), &["run", "--workers", "2"]).spawn()?;
    wait_for_batches(db.pool(), 4).await?;
    // Stopped, not dead: its sessions keep the runner lock and its ranges' locks.
    send(&frozen, "-STOP")?;
    let started = std::time::Instant::now();
    let joiner = workers_bin(
        db.url(),
        &["run", "--workers", "2", "--wait", "2s", "--format", "json"],
    )
    .output();
    let output = tokio::time::timeout(Duration::from_secs(60), joiner).await;
    send(&frozen, "-KILL")?;
    let _ = frozen.wait().await;
    let output = output.map_err(|_| anyhow::anyhow!("the joiner waited for 60 s"))??;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains(SPREAD) && stderr.contains("range") && stderr.contains("made no progress"),
        "{stderr}"
    );
    // It worked every range it could take before giving up: only the frozen process's two
    // ranges are left.
    let left = scalar(
        db.pool(),
        "SELECT count(*) FROM datamig_ledger_ranges WHERE NOT done",
    )
    .await?;
    assert_eq!(left, 2, "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(45));
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM spread WHERE v > 1").await?,
        0
    );
    // The frozen process dead, the next run finishes its ranges.
    let last = workers_bin(db.url(), &["run", "--workers", "2"])
        .output()
        .await?;
    assert!(last.status.success(), "{}", text(&last.stderr));
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM spread WHERE v <> 1").await?,
        0
    );
    Ok(())
}
