//! The foundation's guarantees on SQLite, with nothing installed: a second run applies
//! nothing, concurrent processes on one file apply a migration once, a failure leaves
//! nothing, drift stops the run, a batched migration resumes, and the idempotency harness
//! tells an idempotent migration from one that is not.
//!
//! The fixture migrations (`count_runs`, `bump_items`) are the ones the PostgreSQL tests
//! use: written once, generic over the backend.

use std::process::Output;

use datamig::prelude::*;
use datamig::{Error, State};
use datamig_tests::{BUMP_ITEMS, COUNT_RUNS, text};
use sqlx::SqlitePool;

fn datamig(url: &str, args: &[&str]) -> tokio::process::Command {
    datamig_tests::command(env!("CARGO_BIN_EXE_datamig-fixtures"), url, args)
}

async fn scalar(pool: &SqlitePool, sql: &'static str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

async fn counter(pool: &SqlitePool) -> anyhow::Result<i64> {
    scalar(pool, "SELECT n FROM counter").await
}

/// How many items were bumped, and how many more than once.
async fn bumped(pool: &SqlitePool) -> anyhow::Result<(i64, i64)> {
    Ok((
        scalar(pool, "SELECT count(*) FROM items WHERE v >= 1").await?,
        scalar(pool, "SELECT count(*) FROM items WHERE v > 1").await?,
    ))
}

fn fixtures(pool: &SqlitePool) -> Migrator<sqlx::Sqlite> {
    Migrator::new(pool.clone()).migrations([
        &datamig_tests::count_runs::MIGRATION,
        &datamig_tests::bump_items::MIGRATION,
    ])
}

#[tokio::test]
async fn the_second_run_applies_nothing() -> anyhow::Result<()> {
    let db = datamig_tests::sqlite_fixture_database(&[]).await?;

    let first = fixtures(db.pool()).app_version("1.0").run().await?;
    let applied: Vec<&str> = first.applied.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(applied, [COUNT_RUNS, BUMP_ITEMS]);
    assert_eq!(first.applied[1].batches, 10, "1000 keys, 100 a batch");

    let second = fixtures(db.pool()).run().await?;
    assert!(second.applied.is_empty());
    assert_eq!(second.already_applied, [COUNT_RUNS, BUMP_ITEMS]);

    assert_eq!(counter(db.pool()).await?, 1, "the body ran exactly once");
    assert_eq!(bumped(db.pool()).await?, (1000, 0), "every batch once");
    let ledger: Vec<(String, String, i64, String, Option<String>)> = sqlx::query_as(
        "SELECT id, status, run_count, checksum, app_version FROM datamig_ledger ORDER BY id",
    )
    .fetch_all(db.pool())
    .await?;
    assert_eq!(ledger.len(), 2);
    assert_eq!(ledger[0].0, COUNT_RUNS);
    assert_eq!(ledger[0].3, datamig_tests::count_runs::MIGRATION.checksum());
    assert!(
        ledger
            .iter()
            .all(|r| r.1 == "applied" && r.2 == 1 && r.4.as_deref() == Some("1.0"))
    );
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT count(*) FROM datamig_runs WHERE outcome = 'succeeded'"
        )
        .await?,
        2
    );
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM datamig_ledger_lock").await?,
        0,
        "the lock row is gone after the run"
    );
    let states: Vec<State> = fixtures(db.pool())
        .status()
        .await?
        .iter()
        .map(|s| s.state)
        .collect();
    assert_eq!(states, [State::Applied, State::Applied]);
    Ok(())
}

#[tokio::test]
async fn four_processes_on_one_file_apply_once() -> anyhow::Result<()> {
    let db = datamig_tests::sqlite_fixture_database(&[]).await?;

    let children: Vec<_> = (0..4)
        .map(|_| datamig(db.url(), &["run", "--wait", "60s"]).spawn())
        .collect::<Result<_, _>>()?;
    let mut outputs: Vec<Output> = Vec::new();
    for child in children {
        outputs.push(child.wait_with_output().await?);
    }
    for output in &outputs {
        assert!(
            output.status.success(),
            "exit {:?}, stderr: {}",
            output.status,
            text(&output.stderr)
        );
    }
    let appliers = outputs
        .iter()
        .filter(|o| text(&o.stdout).contains(&format!("applied {COUNT_RUNS}")))
        .count();
    assert_eq!(appliers, 1, "exactly one process applies it");
    assert_eq!(counter(db.pool()).await?, 1, "the body ran exactly once");
    assert_eq!(bumped(db.pool()).await?, (1000, 0), "every batch once");
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM datamig_ledger").await?,
        2
    );
    Ok(())
}

#[tokio::test]
async fn concurrent_runners_in_one_process_apply_once() -> anyhow::Result<()> {
    let db = datamig_tests::sqlite_fixture_database(&[]).await?;
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let migrator = fixtures(db.pool());
            tokio::spawn(async move { migrator.run().await })
        })
        .collect();
    let mut appliers = 0;
    for run in runs {
        let report = run.await??;
        appliers += usize::from(report.applied.iter().any(|a| a.id == COUNT_RUNS));
    }
    assert_eq!(appliers, 1);
    assert_eq!(counter(db.pool()).await?, 1);
    assert_eq!(bumped(db.pool()).await?, (1000, 0));
    Ok(())
}

#[tokio::test]
async fn a_failing_or_panicking_migration_leaves_nothing() -> anyhow::Result<()> {
    for switch in ["fail", "panic"] {
        let db = datamig_tests::sqlite_fixture_database(&[switch]).await?;
        let err = fixtures(db.pool())
            .run()
            .await
            .expect_err("the migration fails");
        match &err {
            Error::MigrationFailed { id, panicked, .. } => {
                assert_eq!(id, COUNT_RUNS);
                assert_eq!(*panicked, switch == "panic");
            }
            other => panic!("expected MigrationFailed, got {other:?}"),
        }
        assert_eq!(counter(db.pool()).await?, 0, "its update was rolled back");
        assert_eq!(bumped(db.pool()).await?, (0, 0), "nothing after it ran");
        assert_eq!(
            scalar(db.pool(), "SELECT count(*) FROM datamig_ledger").await?,
            0
        );
        let error: String = sqlx::query_scalar(
            "SELECT error FROM datamig_runs WHERE outcome = 'failed' AND migration_id = $1",
        )
        .bind(COUNT_RUNS)
        .fetch_one(db.pool())
        .await?;
        assert!(
            error.contains(&format!("the {switch} switch is on")),
            "{error}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_failing_batch_keeps_the_batches_before_it_and_the_next_run_resumes() -> anyhow::Result<()>
{
    let db = datamig_tests::sqlite_fixture_database(&["fail_batch_3"]).await?;
    let bump = Migrator::new(db.pool().clone()).migrations([&datamig_tests::bump_items::MIGRATION]);
    let err = bump.run().await.expect_err("batch 3 fails");
    assert!(
        err.to_string().contains("batch 3 failed on purpose"),
        "{err}"
    );
    assert_eq!(
        bumped(db.pool()).await?,
        (200, 0),
        "batches 1 and 2 committed"
    );
    let (status, checkpoint): (String, Option<String>) =
        sqlx::query_as("SELECT status, checkpoint FROM datamig_ledger WHERE id = $1")
            .bind(BUMP_ITEMS)
            .fetch_one(db.pool())
            .await?;
    assert_eq!(
        (status.as_str(), checkpoint.as_deref()),
        ("running", Some("200"))
    );

    sqlx::query("DELETE FROM fixture_switches")
        .execute(db.pool())
        .await?;
    let report = bump.run().await?;
    assert_eq!(report.applied[0].batches, 8, "resumed after batch 2");
    assert_eq!(bumped(db.pool()).await?, (1000, 0), "no batch ran twice");
    Ok(())
}

#[tokio::test]
async fn an_interrupted_batched_migration_converges() -> anyhow::Result<()> {
    let interrupted = datamig_tests::sqlite_fixture_database(&[]).await?;
    let uninterrupted = datamig_tests::sqlite_fixture_database(&[]).await?;
    datamig::testing::assert_interruption_converges(
        interrupted.pool(),
        uninterrupted.pool(),
        BUMP_ITEMS,
        4,
    )
    .await?;
    assert_eq!(bumped(interrupted.pool()).await?, (1000, 0));
    Ok(())
}

#[tokio::test]
async fn drift_stops_the_run_and_changes_nothing() -> anyhow::Result<()> {
    let db = datamig_tests::sqlite_fixture_database(&[]).await?;
    let count =
        Migrator::new(db.pool().clone()).migrations([&datamig_tests::count_runs::MIGRATION]);
    count.run().await?;
    // As if the code had been edited since it was applied.
    sqlx::query("UPDATE datamig_ledger SET checksum = 'an older checksum'")
        .execute(db.pool())
        .await?;

    let err = count.run().await.expect_err("drift stops the run");
    match &err {
        Error::Drift { drifted } => {
            assert_eq!(drifted[0].id, COUNT_RUNS);
            assert_eq!(drifted[0].applied_checksum, "an older checksum");
        }
        other => panic!("expected Drift, got {other:?}"),
    }
    assert_eq!(counter(db.pool()).await?, 1, "nothing ran again");
    assert_eq!(count.status().await?[0].state, State::Drifted);
    Ok(())
}

#[tokio::test]
async fn a_dry_run_keeps_nothing() -> anyhow::Result<()> {
    let db = datamig_tests::sqlite_fixture_database(&[]).await?;
    let report = fixtures(db.pool()).dry_run(true).run().await?;
    assert!(report.dry_run);
    assert_eq!(report.applied.len(), 2);
    assert_eq!(counter(db.pool()).await?, 0);
    assert_eq!(bumped(db.pool()).await?, (0, 0));
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM datamig_ledger").await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn a_killed_runner_leaves_nothing_and_its_stale_lock_is_taken_over() -> anyhow::Result<()> {
    let db = datamig_tests::sqlite_fixture_database(&["slow"]).await?;

    let mut child = datamig(db.url(), &["run"]).spawn()?;
    // The runner holds the lock row, then sleeps 3 s inside count_runs' transaction.
    // Inside the transaction: the runner holds SQLite's write lock, so another writer
    // that will not wait is refused.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut probe = db.pool().acquire().await?;
    sqlx::query("PRAGMA busy_timeout = 0")
        .execute(&mut *probe)
        .await?;
    loop {
        // The lock row taken and the ledger created (its own transaction, committed before
        // the migration's begins): the write lock held after that is a migration's.
        let counted = scalar(
            db.pool(),
            "SELECT count(*) FROM datamig_ledger_lock WHERE EXISTS
             (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'datamig_ledger')",
        )
        .await;
        let locked = counted.as_ref().is_ok_and(|n| *n > 0)
            && match sqlx::query("BEGIN IMMEDIATE").execute(&mut *probe).await {
                Ok(_) => {
                    sqlx::query("ROLLBACK").execute(&mut *probe).await?;
                    false
                }
                Err(err) => {
                    // SQLITE_BUSY (5), with its extended codes.
                    let busy = err
                        .as_database_error()
                        .and_then(|e| e.code())
                        .and_then(|c| c.parse::<i32>().ok())
                        .is_some_and(|c| c & 0xff == 5);
                    anyhow::ensure!(busy, "{err}");
                    true
                }
            };
        if locked {
            break;
        }
        if let Err(err) = &counted {
            anyhow::ensure!(err.to_string().contains("no such table"), "{err}");
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the runner never took the write lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    drop(probe);
    child.start_kill()?; // SIGKILL: no unlock, no rollback statement
    assert!(!child.wait().await?.success());

    assert_eq!(counter(db.pool()).await?, 0, "its transaction died with it");
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM datamig_ledger").await?,
        0
    );
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM datamig_ledger_lock").await?,
        1,
        "its lock row is left behind"
    );
    let holders = fixtures(db.pool()).lock_holders().await?;
    assert_eq!(holders.len(), 1);
    assert!(holders[0].runner().is_some(), "{:?}", holders[0]);

    // Its process is gone from this host, so the next runner takes the lock over.
    sqlx::query("DELETE FROM fixture_switches")
        .execute(db.pool())
        .await?;
    let report = fixtures(db.pool())
        .runner_lock_timeout(std::time::Duration::from_secs(10))
        .run()
        .await?;
    assert_eq!(report.applied.len(), 2);
    assert_eq!(counter(db.pool()).await?, 1);
    Ok(())
}

#[tokio::test]
async fn unlock_releases_the_lock_of_a_killed_runner() -> anyhow::Result<()> {
    let db = datamig_tests::sqlite_fixture_database(&[]).await?;
    // A lock row as a killed runner of this host leaves it: a process that no longer runs.
    let mut gone = std::process::Command::new("true").spawn()?;
    let pid = gone.id();
    gone.wait()?;
    fixtures(db.pool()).run().await?;
    sqlx::query(
        "INSERT INTO datamig_ledger_lock (id, host, pid, token, acquired_at)
         VALUES (1, $1, $2, 'killed', '2026-01-01T00:00:00Z')",
    )
    .bind(datamig::__private::host_name())
    .bind(i64::from(pid))
    .execute(db.pool())
    .await?;

    let output = datamig(db.url(), &["unlock"]).output().await?;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains(&format!("process {pid} on this host, is gone")),
        "{}",
        text(&output.stdout)
    );
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM datamig_ledger_lock").await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn a_lock_held_by_another_host_makes_the_runner_wait_and_time_out() -> anyhow::Result<()> {
    let db = datamig_tests::sqlite_fixture_database(&[]).await?;
    fixtures(db.pool()).status().await?;
    sqlx::raw_sql(
        "CREATE TABLE datamig_ledger_lock (id INTEGER PRIMARY KEY CHECK (id = 1), host TEXT NOT NULL,
             pid INTEGER NOT NULL, token TEXT NOT NULL, acquired_at TEXT NOT NULL);
         INSERT INTO datamig_ledger_lock VALUES (1, 'another-host', 1, 'elsewhere', '2026-01-01T00:00:00Z');",
    )
    .execute(db.pool())
    .await?;
    let err = fixtures(db.pool())
        .runner_lock_timeout(std::time::Duration::from_millis(300))
        .run()
        .await
        .expect_err("the lock is held");
    assert!(matches!(err, Error::LockTimeout { .. }), "{err:?}");
    assert_eq!(counter(db.pool()).await?, 0);

    let output = datamig(db.url(), &["unlock"]).output().await?;
    assert_eq!(
        output.status.code(),
        Some(i32::from(datamig_cli::exit::LOCK_TIMEOUT)),
        "{}",
        text(&output.stdout)
    );
    assert!(
        text(&output.stderr).contains("on another-host"),
        "{}",
        text(&output.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn the_idempotency_harness_works_on_sqlite() -> anyhow::Result<()> {
    // count_runs adds one on every run: the harness names the table and the rows.
    let db = datamig_tests::sqlite_fixture_database(&[]).await?;
    let err = datamig::testing::assert_idempotent_with(&fixtures(db.pool()), COUNT_RUNS)
        .await
        .expect_err("count_runs is not idempotent");
    match &err {
        Error::NotIdempotent { id, changes, .. } => {
            assert_eq!(id, COUNT_RUNS);
            assert_eq!(changes.len(), 1, "{changes:?}");
            assert_eq!(changes[0].table, "main.counter");
            assert_eq!(changes[0].only_before, ["1"]);
            assert_eq!(changes[0].only_after, ["2"]);
        }
        other => panic!("expected NotIdempotent, got {other:?}"),
    }

    // The check before a deploy: both runs in one transaction, rolled back.
    let db = datamig_tests::sqlite_fixture_database(&[]).await?;
    let checks = fixtures(db.pool()).check_idempotency().await?;
    assert_eq!(checks.len(), 2);
    assert!(checks.iter().all(|c| !c.is_idempotent()));
    assert_eq!(counter(db.pool()).await?, 0, "nothing was kept");
    Ok(())
}

/// Merges `wanted` into `plans` from a query, where a value differs.
#[datamig::migration(id = "20240701_0000_plans_from_query")]
async fn plans_from_query(ctx: &mut Ctx<'_, Sqlite>) -> anyhow::Result<()> {
    let report = ctx
        .upsert("plans")
        .key(["user_id"])
        .from_query("SELECT user_id, plan, seats FROM wanted")
        .update_if_changed()
        .execute()
        .await?;
    ctx.note(format!("{report:?}"));
    Ok(())
}

/// The same rows as `wanted`, from Rust values.
#[datamig::migration(id = "20240701_0001_plans_from_rows")]
async fn plans_from_rows(ctx: &mut Ctx<'_, Sqlite>) -> anyhow::Result<()> {
    let report = ctx
        .upsert("plans")
        .key(["user_id"])
        .rows(
            ["user_id", "plan", "seats"],
            vec![
                (1_i64, "free", None::<i64>),
                (2, "team", Some(5)),
                (3, "pro", Some(1)),
            ],
        )
        .update_if_changed()
        .execute()
        .await?;
    ctx.note(format!("{report:?}"));
    Ok(())
}

/// Inserts user 4, leaves user 1 alone.
#[datamig::migration(id = "20240701_0002_plans_insert_missing")]
async fn plans_insert_missing(ctx: &mut Ctx<'_, Sqlite>) -> anyhow::Result<()> {
    let report = ctx
        .upsert("plans")
        .key(["user_id"])
        .rows(["user_id", "plan"], vec![(4_i64, "free"), (1, "pro")])
        .insert_missing()
        .execute()
        .await?;
    ctx.note(format!("{report:?}"));
    Ok(())
}

/// Brings key 5 twice.
#[datamig::migration(id = "20240701_0003_plans_key_twice")]
async fn plans_key_twice(ctx: &mut Ctx<'_, Sqlite>) -> anyhow::Result<()> {
    ctx.upsert("plans")
        .key(["user_id"])
        .rows(["user_id", "plan"], vec![(5_i64, "free"), (5, "pro")])
        .overwrite()
        .execute()
        .await?;
    Ok(())
}

/// Uses a column without a unique index as the key.
#[datamig::migration(id = "20240701_0004_plans_not_a_key")]
async fn plans_not_a_key(ctx: &mut Ctx<'_, Sqlite>) -> anyhow::Result<()> {
    ctx.upsert("plans")
        .key(["plan"])
        .rows(["plan", "seats"], vec![("free", 1_i64)])
        .overwrite()
        .execute()
        .await?;
    Ok(())
}

/// Runs one migration; returns its note, or its failure.
async fn run_one(
    pool: &SqlitePool,
    migration: &'static datamig::Migration,
) -> Result<String, Error> {
    let report = Migrator::new(pool.clone())
        .migrations([migration])
        .run()
        .await?;
    Ok(report.applied[0].notes.join(" "))
}

#[tokio::test]
async fn the_upsert_helper_counts_and_rewrites_nothing_on_a_second_run() -> anyhow::Result<()> {
    let db = datamig::testing::sqlite().await?;
    sqlx::raw_sql(
        "CREATE TABLE plans (user_id INTEGER PRIMARY KEY, plan TEXT NOT NULL, seats INTEGER);
         INSERT INTO plans VALUES (1, 'free', NULL), (2, 'pro', 3);
         CREATE TABLE wanted (user_id INTEGER, plan TEXT, seats INTEGER);
         INSERT INTO wanted VALUES (1, 'free', NULL), (2, 'team', 5), (3, 'pro', 1);",
    )
    .execute(db.pool())
    .await?;
    let pool = db.pool();
    assert_eq!(
        run_one(pool, &plans_from_query::MIGRATION).await?,
        "UpsertReport { inserted: 1, updated: 1, unchanged: 1 }"
    );
    assert_eq!(
        run_one(pool, &plans_from_rows::MIGRATION).await?,
        "UpsertReport { inserted: 0, updated: 0, unchanged: 3 }",
        "equal rows are not rewritten"
    );
    assert_eq!(
        run_one(pool, &plans_insert_missing::MIGRATION).await?,
        "UpsertReport { inserted: 1, updated: 0, unchanged: 1 }"
    );
    let plans: Vec<(i64, String, Option<i64>)> =
        sqlx::query_as("SELECT user_id, plan, seats FROM plans ORDER BY user_id")
            .fetch_all(pool)
            .await?;
    assert_eq!(
        plans,
        [
            (1, "free".to_string(), None),
            (2, "team".to_string(), Some(5)),
            (3, "pro".to_string(), Some(1)),
            (4, "free".to_string(), None)
        ]
    );
    let twice = run_one(pool, &plans_key_twice::MIGRATION)
        .await
        .expect_err("a key twice");
    assert!(
        twice.to_string().contains("the same key more than once"),
        "{twice}"
    );
    let not_a_key = run_one(pool, &plans_not_a_key::MIGRATION)
        .await
        .expect_err("plan is not a key");
    assert!(
        not_a_key
            .to_string()
            .contains("is not a primary key or unique index"),
        "{not_a_key}"
    );
    assert_eq!(
        scalar(pool, "SELECT count(*) FROM plans").await?,
        4,
        "the failed upserts left nothing"
    );
    Ok(())
}

#[tokio::test]
async fn another_tools_ledger_table_is_named_not_touched() -> anyhow::Result<()> {
    let db = datamig_tests::sqlite_fixture_database(&[]).await?;
    sqlx::query("CREATE TABLE datamig_ledger (id TEXT PRIMARY KEY, note TEXT)")
        .execute(db.pool())
        .await?;
    let err = fixtures(db.pool()).run().await.expect_err("not our ledger");
    match &err {
        Error::LedgerShape { table, missing } => {
            assert_eq!(table, "\"datamig_ledger\"");
            assert!(missing.iter().any(|c| c == "checksum"), "{missing:?}");
        }
        other => panic!("expected LedgerShape, got {other:?}"),
    }
    assert_eq!(counter(db.pool()).await?, 0);
    Ok(())
}

/// Bumps `items` 250 keys a batch, pausing 300 ms between batches (when it holds no lock).
#[datamig::migration(
    id = "20240702_0000_paused_bump",
    batch(table = "items", key = "id", size = 250, pause = "300ms")
)]
async fn paused_bump<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE items SET v = v + 1 WHERE id > $1 AND id <= $2",
        &batch,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_batch_waiting_for_the_write_lock_retries_and_commits_once() -> anyhow::Result<()> {
    let db = datamig_tests::sqlite_fixture_database(&[]).await?;
    let migrator = Migrator::new(db.pool().clone())
        .migrations([&paused_bump::MIGRATION])
        .lock_timeout(std::time::Duration::from_millis(200));
    let run = tokio::spawn(async move { migrator.run().await });

    // Once the first batch has committed, in the pause after it, another writer takes
    // SQLite's write lock and keeps it for 1.5 s.
    for _ in 0..500 {
        let running = scalar(
            db.pool(),
            "SELECT count(*) FROM datamig_ledger WHERE status = 'running'",
        )
        .await
        .unwrap_or(0);
        if running > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut other = db.pool().acquire().await?;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *other).await?;
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    sqlx::query("COMMIT").execute(&mut *other).await?;

    let report = run.await??;
    assert!(
        report.applied[0].lock_retries > 0,
        "a batch waited 200 ms for the lock, then retried: {:?}",
        report.applied[0]
    );
    assert_eq!(bumped(db.pool()).await?, (1000, 0), "each batch once");
    Ok(())
}

#[tokio::test]
async fn an_in_memory_database_shared_by_the_pool_works_too() -> anyhow::Result<()> {
    // `sqlite::memory:` through sqlx is one database shared by the pool's connections.
    let pool = SqlitePool::connect("sqlite::memory:").await?;
    sqlx::raw_sql(datamig_tests::SQLITE_FIXTURE_TABLES)
        .execute(&pool)
        .await?;
    let first = fixtures(&pool).run().await?;
    assert_eq!(first.applied.len(), 2);
    let second = fixtures(&pool).run().await?;
    assert!(second.applied.is_empty());
    assert_eq!(counter(&pool).await?, 1);
    assert_eq!(bumped(&pool).await?, (1000, 0));
    Ok(())
}
