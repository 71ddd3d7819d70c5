//! The ledger's guarantees on MySQL and MariaDB (MariaDB 10.11 from
//! `datamig::testing::mysql()`): a second run applies nothing, concurrent runners apply a
//! migration once, a failure leaves nothing, a body that runs DDL is refused and named
//! (MySQL commits DDL implicitly), the runner lock is `GET_LOCK` and dies with a killed
//! runner's session (20 kills at different moments, each leaving the ledger and the data
//! agreeing), the lease lock, and the proof and the reading commands.
//!
//! The fixture migration `count_runs` is the one the PostgreSQL and SQLite tests use:
//! written once, generic over the backend.

use std::time::{Duration, Instant};

use datamig::prelude::*;
use datamig::{Error, RunnerLock, State};
use datamig_tests::{BUMP_ITEMS, COUNT_RUNS, copy_args, text};
use sqlx::{AssertSqlSafe, MySqlPool};

fn datamig(url: &str, args: &[&str]) -> tokio::process::Command {
    datamig_tests::command(env!("CARGO_BIN_EXE_datamig-fixtures"), url, args)
}

async fn scalar(pool: &MySqlPool, sql: &'static str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

async fn scalar_bound(pool: &MySqlPool, sql: &'static str, value: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).bind(value).fetch_one(pool).await?)
}

async fn counter(pool: &MySqlPool) -> anyhow::Result<i64> {
    scalar(pool, "SELECT CAST(n AS signed) FROM counter").await
}

async fn ledger_rows(pool: &MySqlPool) -> anyhow::Result<i64> {
    scalar(pool, "SELECT count(*) FROM datamig_ledger").await
}

/// A fresh MariaDB database with `counter` (`n = 0`), `items` (ids 1 to 300) and
/// `fixture_switches` holding `switches`.
async fn fixture_database(
    switches: &[&str],
) -> anyhow::Result<datamig::testing::MySqlTestDatabase> {
    let db = datamig::testing::mysql().await?;
    for sql in [
        "CREATE TABLE counter (n int NOT NULL) ENGINE=InnoDB",
        "INSERT INTO counter VALUES (0)",
        "CREATE TABLE items (id bigint PRIMARY KEY, v int NOT NULL) ENGINE=InnoDB",
        "INSERT INTO items (id, v) WITH RECURSIVE s (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 300) SELECT n, 0 FROM s",
        "CREATE TABLE fixture_switches (name varchar(64) PRIMARY KEY) ENGINE=InnoDB",
    ] {
        sqlx::query(sql).execute(db.pool()).await?;
    }
    for switch in switches {
        sqlx::query("INSERT INTO fixture_switches VALUES (?)")
            .bind(switch)
            .execute(db.pool())
            .await?;
    }
    Ok(db)
}

fn fixtures(pool: &MySqlPool) -> Migrator<MySql> {
    Migrator::new(pool.clone()).migrations([&datamig_tests::count_runs::MIGRATION])
}

#[tokio::test]
async fn the_second_run_applies_nothing_and_the_ledger_is_innodb() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;

    let first = fixtures(db.pool()).app_version("1.0").run().await?;
    let applied: Vec<&str> = first.applied.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(applied, [COUNT_RUNS]);
    let second = fixtures(db.pool()).run().await?;
    assert!(second.applied.is_empty());
    assert_eq!(second.already_applied, [COUNT_RUNS]);
    assert_eq!(counter(db.pool()).await?, 1, "the body ran exactly once");

    let (id, status, run_count, checksum, app_version, applied_by): (
        String,
        String,
        i32,
        String,
        Option<String>,
        String,
    ) = sqlx::query_as(
        "SELECT id, status, run_count, checksum, app_version, applied_by FROM datamig_ledger",
    )
    .fetch_one(db.pool())
    .await?;
    assert_eq!(
        (
            id.as_str(),
            status.as_str(),
            run_count,
            app_version.as_deref()
        ),
        (COUNT_RUNS, "applied", 1, Some("1.0"))
    );
    assert_eq!(checksum, datamig_tests::count_runs::MIGRATION.checksum());
    assert!(applied_by.starts_with("root@"), "{applied_by}");
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT count(*) FROM datamig_runs WHERE outcome = 'succeeded'"
        )
        .await?,
        1
    );
    // Transactions and row locks: MyISAM would make exactly-once void.
    let engines: Vec<(String, String)> = sqlx::query_as(
        "SELECT CAST(TABLE_NAME AS char), CAST(ENGINE AS char) FROM information_schema.TABLES
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 'datamig%' ORDER BY TABLE_NAME",
    )
    .fetch_all(db.pool())
    .await?;
    assert_eq!(
        engines,
        [
            ("datamig_ledger".to_string(), "InnoDB".to_string()),
            ("datamig_ledger_layout".to_string(), "InnoDB".to_string()),
            ("datamig_runs".to_string(), "InnoDB".to_string()),
        ]
    );
    let states: Vec<State> = fixtures(db.pool())
        .status()
        .await?
        .iter()
        .map(|s| s.state)
        .collect();
    assert_eq!(states, [State::Applied]);
    Ok(())
}

#[tokio::test]
async fn concurrent_runners_in_one_process_apply_once() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let migrator = fixtures(db.pool()).runner_lock_timeout(Duration::from_secs(30));
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
    assert_eq!(ledger_rows(db.pool()).await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_failing_or_panicking_migration_leaves_nothing() -> anyhow::Result<()> {
    for switch in ["fail", "panic"] {
        let db = fixture_database(&[switch]).await?;
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
        assert_eq!(ledger_rows(db.pool()).await?, 0);
        let error: String = sqlx::query_scalar(
            "SELECT error FROM datamig_runs WHERE outcome = 'failed' AND migration_id = ?",
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

/// Writes, then creates a table through the migration's helper.
#[datamig::migration(id = "20240301_0000_ddl_through_ctx")]
async fn ddl_through_ctx(ctx: &mut Ctx<'_, MySql>) -> anyhow::Result<()> {
    ctx.execute("UPDATE counter SET n = n + 1").await?;
    ctx.execute("CREATE TABLE made_by_a_data_migration (id int PRIMARY KEY)")
        .await?;
    Ok(())
}

/// Writes, then creates a table with sqlx on the migration's connection.
#[datamig::migration(id = "20240301_0001_ddl_through_sqlx")]
async fn ddl_through_sqlx(ctx: &mut Ctx<'_, MySql>) -> anyhow::Result<()> {
    ctx.execute("UPDATE counter SET n = n + 1").await?;
    sqlx::query("CREATE TABLE made_behind_the_helpers_back (id int PRIMARY KEY)")
        .execute(ctx.tx())
        .await?;
    Ok(())
}

/// Writes, creates a table with the option whose name warns, writes again.
#[datamig::migration(id = "20240301_0002_ddl_allowed")]
async fn ddl_allowed(ctx: &mut Ctx<'_, MySql>) -> anyhow::Result<()> {
    ctx.execute("UPDATE counter SET n = n + 1").await?;
    ctx.dangerously_execute_non_atomic_ddl(
        "CREATE TABLE IF NOT EXISTS made_on_purpose (id int PRIMARY KEY)",
    )
    .await?;
    ctx.execute("INSERT INTO made_on_purpose VALUES (1)")
        .await?;
    Ok(())
}

/// Bumps `items.v`, 50 keys a batch; batch 3 (not the last: on MariaDB its transaction
/// is begun in batch 2's commit, and its checkpoint goes out with its `COMMIT`) also
/// creates a table with sqlx on the batch's connection (an implicit commit).
#[datamig::migration(
    id = "20240301_0003_ddl_in_batch_3",
    batch(table = "items", key = "id", size = 50)
)]
async fn ddl_in_batch_3(ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE items SET v = v + 1 WHERE id > $1 AND id <= $2",
        &batch,
    )
    .await?;
    if batch.number() == 3 {
        sqlx::query("CREATE TABLE made_in_batch_3 (id int PRIMARY KEY)")
            .execute(ctx.tx())
            .await?;
    }
    Ok(())
}

/// Runs `migration` alone, which fails naming it and the implicit commit it ran.
async fn implicit_commit_named(pool: &MySqlPool, migration: &'static datamig::Migration) {
    let err = Migrator::new(pool.clone())
        .migrations([migration])
        .run()
        .await
        .expect_err("the implicit commit is found");
    let message = err.to_string();
    assert!(
        message.contains(&format!(
            "migration {} ran a statement that MySQL commits implicitly",
            migration.id()
        )),
        "{message}"
    );
}

async fn table_exists(pool: &MySqlPool, name: &str) -> anyhow::Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.TABLES
                        WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?)",
    )
    .bind(name)
    .fetch_one(pool)
    .await?)
}

#[tokio::test]
async fn ddl_through_the_helpers_is_refused_before_it_is_sent_and_nothing_is_written()
-> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    let err = Migrator::new(db.pool().clone())
        .migrations([&ddl_through_ctx::MIGRATION])
        .run()
        .await
        .expect_err("DDL in a data migration is refused");
    let message = err.to_string();
    assert!(
        message.contains("CREATE TABLE commits the transaction it runs in on MySQL"),
        "{message}"
    );
    assert!(message.contains("schema migration"), "{message}");
    assert!(!table_exists(db.pool(), "made_by_a_data_migration").await?);
    assert_eq!(
        counter(db.pool()).await?,
        0,
        "the write before it rolled back"
    );
    assert_eq!(ledger_rows(db.pool()).await?, 0);
    Ok(())
}

#[tokio::test]
async fn ddl_sent_around_the_helpers_is_found_by_its_implicit_commit_and_named()
-> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    implicit_commit_named(db.pool(), &ddl_through_sqlx::MIGRATION).await;
    // MySQL committed the table and the write before it; datamig cannot undo them, and
    // says so: the ledger row is not written, the migration stays pending.
    assert!(table_exists(db.pool(), "made_behind_the_helpers_back").await?);
    assert_eq!(counter(db.pool()).await?, 1);
    assert_eq!(ledger_rows(db.pool()).await?, 0);
    let states: Vec<State> = Migrator::new(db.pool().clone())
        .migrations([&ddl_through_sqlx::MIGRATION])
        .status()
        .await?
        .iter()
        .map(|s| s.state)
        .collect();
    assert_eq!(states, [State::Pending]);
    Ok(())
}

#[tokio::test]
async fn ddl_in_a_later_batch_is_found_by_its_implicit_commit_and_the_checkpoint_stays()
-> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    implicit_commit_named(db.pool(), &ddl_in_batch_3::MIGRATION).await;
    // Batch 3's write and table were committed by MySQL; its checkpoint was not written:
    // the ledger row still stands at batch 2's last key.
    assert!(table_exists(db.pool(), "made_in_batch_3").await?);
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM items WHERE v = 1").await?,
        150
    );
    let (checkpoint, batches): (Option<String>, i64) =
        sqlx::query_as("SELECT checkpoint, batches FROM datamig_ledger")
            .fetch_one(db.pool())
            .await?;
    assert_eq!((checkpoint.as_deref(), batches), (Some("100"), 2));
    Ok(())
}

#[tokio::test]
async fn ddl_allowed_by_name_runs_and_its_ledger_row_says_it_was_not_atomic() -> anyhow::Result<()>
{
    let db = fixture_database(&[]).await?;
    let report = Migrator::new(db.pool().clone())
        .migrations([&ddl_allowed::MIGRATION])
        .run()
        .await?;
    assert_eq!(report.applied.len(), 1);
    assert!(table_exists(db.pool(), "made_on_purpose").await?);
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM made_on_purpose").await?,
        1
    );
    assert_eq!(counter(db.pool()).await?, 1);
    let notes: Option<String> = sqlx::query_scalar("SELECT notes FROM datamig_ledger WHERE id = ?")
        .bind(ddl_allowed::MIGRATION.id())
        .fetch_one(db.pool())
        .await?;
    let notes = notes.unwrap_or_default();
    assert!(
        notes.contains("not atomic: MySQL committed the migration's transaction at: CREATE TABLE IF NOT EXISTS made_on_purpose"),
        "{notes}"
    );
    Ok(())
}

/// Waits until a runner holds the lock of `pool`'s ledger.
async fn wait_for_lock_holder(pool: &MySqlPool) -> anyhow::Result<Vec<datamig::SessionInfo>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let holders = fixtures(pool).lock_holders().await?;
        if !holders.is_empty() {
            return Ok(holders);
        }
        anyhow::ensure!(Instant::now() < deadline, "no runner took the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until no session holds the lock of `pool`'s ledger.
async fn wait_for_no_lock_holder(pool: &MySqlPool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fixtures(pool).lock_holders().await?.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "the lock outlived its runner");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test]
async fn the_runner_lock_is_get_lock_held_by_one_runner_at_a_time() -> anyhow::Result<()> {
    let db = fixture_database(&["slow"]).await?;
    let holder = {
        let migrator = fixtures(db.pool());
        tokio::spawn(async move { migrator.run().await })
    };
    let holders = wait_for_lock_holder(db.pool()).await?;
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert!(!holders[0].lease);
    let err = fixtures(db.pool())
        .runner_lock_timeout(Duration::from_millis(300))
        .run()
        .await
        .expect_err("the lock is held");
    assert!(matches!(err, Error::LockTimeout { .. }), "{err:?}");
    let report = holder.await??;
    assert_eq!(report.applied.len(), 1);
    // The runner's session is closed, not handed back to the pool with the lock.
    wait_for_no_lock_holder(db.pool()).await?;
    assert_eq!(counter(db.pool()).await?, 1);
    Ok(())
}

#[tokio::test]
async fn twenty_killed_runners_leave_the_ledger_and_the_data_agreeing() -> anyhow::Result<()> {
    // Each batch holds its rows 100 ms: kills land inside batches too.
    let db = fixture_database(&["slow_batches"]).await?;
    let (mut applied_before_kill, mut mid_batches) = (0, 0);
    for kill in 0..20u64 {
        let mut child = datamig(db.url(), &["run"]).spawn()?;
        wait_for_lock_holder(db.pool()).await?;
        // From right after the lock to past count_runs' 200 ms in its transaction and into
        // bump_items' batches: kills land before, during and after each COMMIT.
        tokio::time::sleep(Duration::from_millis(kill % 10 * 60)).await;
        child.start_kill()?; // SIGKILL: no unlock, no rollback statement
        let _ = child.wait().await?;
        wait_for_no_lock_holder(db.pool()).await?;
        let n = counter(db.pool()).await?;
        // A kill before the runner created the ledger leaves none.
        let ledger = table_exists(db.pool(), "datamig_ledger").await?;
        let applied = if ledger {
            scalar_bound(
                db.pool(),
                "SELECT count(*) FROM datamig_ledger WHERE id = ? AND status = 'applied'",
                COUNT_RUNS,
            )
            .await?
        } else {
            0
        };
        assert_eq!(
            n, applied,
            "kill {kill}: counter {n} with {applied} ledger rows"
        );
        // The batched migration: every committed batch once, and its checkpoint says which.
        let bump: Option<(String, Option<String>)> = if ledger {
            sqlx::query_as("SELECT status, checkpoint FROM datamig_ledger WHERE id = ?")
                .bind(BUMP_ITEMS)
                .fetch_optional(db.pool())
                .await?
        } else {
            None
        };
        let bumped = scalar(db.pool(), "SELECT count(*) FROM items WHERE v = 1").await?;
        assert_eq!(
            scalar(db.pool(), "SELECT count(*) FROM items WHERE v > 1").await?,
            0,
            "kill {kill}: a batch ran twice"
        );
        let expected = match &bump {
            None => 0,
            Some((status, _)) if status == "applied" => 300,
            Some((_, checkpoint)) => checkpoint.as_deref().unwrap_or("0").parse()?,
        };
        assert_eq!(bumped, expected, "kill {kill}: {bump:?}");
        if applied == 1 {
            applied_before_kill += 1;
        }
        if matches!(&bump, Some((status, _)) if status == "running") {
            mid_batches += 1;
        }
        if ledger {
            sqlx::query("DELETE FROM datamig_ledger")
                .execute(db.pool())
                .await?;
        }
        sqlx::query("UPDATE counter SET n = 0")
            .execute(db.pool())
            .await?;
        sqlx::query("UPDATE items SET v = 0")
            .execute(db.pool())
            .await?;
    }
    // Then one run applies it exactly once.
    let output = datamig(db.url(), &["run"]).output().await?;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        (counter(db.pool()).await?, ledger_rows(db.pool()).await?),
        (1, 2)
    );
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM items WHERE v = 1").await?,
        300
    );
    eprintln!(
        "of 20 kills, {applied_before_kill} came after count_runs committed, {mid_batches} between batches of bump_items"
    );
    assert!(mid_batches > 0, "no kill landed between two batches");
    Ok(())
}

#[tokio::test]
async fn the_lease_lock_runs_and_a_live_lease_of_another_runner_keeps_it_out() -> anyhow::Result<()>
{
    let db = fixture_database(&[]).await?;
    let lease = RunnerLock::Lease {
        ttl: Duration::from_secs(5),
    };
    // Another runner's live lease.
    fixtures(db.pool()).status().await?;
    sqlx::query(
        "CREATE TABLE datamig_ledger_lease (id int NOT NULL PRIMARY KEY, token varchar(255) NOT NULL,
             host varchar(255) NOT NULL, pid bigint NOT NULL, db_user varchar(300) NOT NULL,
             acquired_at datetime(6) NOT NULL, renewed_at datetime(6) NOT NULL,
             expires_at datetime(6) NOT NULL) ENGINE=InnoDB",
    )
    .execute(db.pool())
    .await?;
    sqlx::query(
        "INSERT INTO datamig_ledger_lease VALUES
             (1, 'elsewhere', 'another-host', 4242, 'root', NOW(6), NOW(6), NOW(6) + INTERVAL 1 HOUR)",
    )
    .execute(db.pool())
    .await?;
    let err = fixtures(db.pool())
        .runner_lock(lease)
        .runner_lock_timeout(Duration::from_millis(500))
        .run()
        .await
        .expect_err("the lease is held");
    assert!(matches!(err, Error::LockTimeout { .. }), "{err:?}");
    // GET_LOCK runners keep out too.
    let err = fixtures(db.pool())
        .runner_lock_timeout(Duration::from_millis(500))
        .run()
        .await
        .expect_err("the lease is held");
    assert!(matches!(err, Error::LockTimeout { .. }), "{err:?}");
    let holders = fixtures(db.pool()).lock_holders().await?;
    assert!(
        holders.iter().any(|h| h.lease && h.pid == 4242),
        "{holders:?}"
    );
    assert_eq!(counter(db.pool()).await?, 0);

    // Expired: taken over, and given up after the run.
    sqlx::query("UPDATE datamig_ledger_lease SET expires_at = NOW(6) - INTERVAL 1 SECOND")
        .execute(db.pool())
        .await?;
    let report = fixtures(db.pool()).runner_lock(lease).run().await?;
    assert_eq!(report.applied.len(), 1);
    assert_eq!(counter(db.pool()).await?, 1);
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM datamig_ledger_lease").await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn a_batched_migration_walks_its_integer_key_once_and_resumes_after_a_failed_batch()
-> anyhow::Result<()> {
    let db = fixture_database(&["fail_batch_3"]).await?;
    let bump =
        || Migrator::new(db.pool().clone()).migrations([&datamig_tests::bump_items::MIGRATION]);
    let err = bump().run().await.expect_err("batch 3 fails");
    assert!(
        err.to_string().contains("batch 3 failed on purpose"),
        "{err}"
    );
    // Batches 1 and 2 committed with their checkpoint; batch 3 rolled back.
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM items WHERE v = 1").await?,
        200
    );
    let checkpoint: Option<String> = sqlx::query_scalar("SELECT checkpoint FROM datamig_ledger")
        .fetch_one(db.pool())
        .await?;
    assert_eq!(checkpoint.as_deref(), Some("200"));
    sqlx::query("DELETE FROM fixture_switches")
        .execute(db.pool())
        .await?;
    let report = bump().run().await?;
    assert_eq!(report.applied.len(), 1);
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM items WHERE v = 1").await?,
        300,
        "every row once"
    );
    let second = bump().run().await?;
    assert!(second.applied.is_empty());
    Ok(())
}

#[tokio::test]
async fn the_proof_names_the_table_a_second_run_changed() -> anyhow::Result<()> {
    // count_runs adds one on every run: the harness names the table.
    let db = fixture_database(&[]).await?;
    let err = datamig::testing::assert_idempotent_with(&fixtures(db.pool()), COUNT_RUNS)
        .await
        .expect_err("count_runs is not idempotent");
    match &err {
        Error::NotIdempotent { id, changes, .. } => {
            assert_eq!(id, COUNT_RUNS);
            assert_eq!(changes.len(), 1, "{changes:?}");
            assert!(format!("{changes:?}").contains("counter"), "{changes:?}");
        }
        other => panic!("expected NotIdempotent, got {other:?}"),
    }
    // The write counter (InnoDB's rows modified by the re-run's transaction) sees the
    // re-run's one row, not the ledger's.
    let db = fixture_database(&[]).await?;
    let check = datamig::testing::check_idempotent(&fixtures(db.pool()), COUNT_RUNS).await?;
    assert_eq!(
        (check.second_run_rows, check.second_run_writes),
        (1, 1),
        "{check:?}"
    );
    Ok(())
}

#[tokio::test]
async fn fingerprints_are_stable_and_name_the_table_a_change_reaches() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    let before = datamig::fingerprint(db.pool()).await?;
    let again = datamig::fingerprint(db.pool()).await?;
    assert!(before.differences(&again).is_empty());
    sqlx::query("UPDATE items SET v = 7 WHERE id = 150")
        .execute(db.pool())
        .await?;
    let after = datamig::fingerprint(db.pool()).await?;
    let tables: Vec<String> = before
        .differences(&after)
        .into_iter()
        .map(|d| d.table)
        .collect();
    assert_eq!(tables, [format!("{}.items", db.name())]);
    Ok(())
}

#[tokio::test]
async fn the_command_line_runs_and_reads_a_mariadb_url() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    let url = db.url().replacen("mysql://", "mariadb://", 1);
    let run = datamig(&url, &["run"]).output().await?;
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        text(&run.stdout).contains(&format!("applied {COUNT_RUNS}")),
        "{}",
        text(&run.stdout)
    );
    for args in [
        ["status"].as_slice(),
        &["verify"],
        &["fingerprint"],
        &["doctor"],
    ] {
        let output = datamig(&url, args).output().await?;
        assert!(
            output.status.success(),
            "{args:?}: exit {:?}\n{}\n{}",
            output.status,
            text(&output.stdout),
            text(&output.stderr)
        );
    }
    let status = datamig(&url, &["status"]).output().await?;
    assert!(
        text(&status.stdout).contains(COUNT_RUNS),
        "{}",
        text(&status.stdout)
    );
    // A MySQL source is copied, but not followed: said by name, exit 2, nothing created.
    let copy = datamig(
        &url,
        &copy_args(&url, "postgres://u@127.0.0.1:1/x", &["--follow"]),
    )
    .output()
    .await?;
    assert_eq!(copy.status.code(), Some(2), "{}", text(&copy.stderr));
    assert!(
        text(&copy.stderr).contains("a SQLite, MySQL or MariaDB source is copied without --follow"),
        "{}",
        text(&copy.stderr)
    );
    // No lock is held: unlock says so and succeeds.
    let unlock = datamig(&url, &["unlock"]).output().await?;
    assert!(unlock.status.success(), "{}", text(&unlock.stderr));
    let _ = sqlx::query(AssertSqlSafe("SELECT 1".to_string()))
        .execute(db.pool())
        .await?;
    Ok(())
}

/// Bumps `keyed_char.v` (a `CHAR(36)` UUID key), 37 keys a batch.
#[datamig::migration(
    id = "20240401_0000_bump_char_uuid",
    batch(table = "keyed_char", key = "id", size = 37)
)]
async fn bump_char_uuid(ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE keyed_char SET v = v + 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// Bumps `keyed_binary.v` (a `BINARY(16)` UUID key), 37 keys a batch.
#[datamig::migration(
    id = "20240401_0001_bump_binary_uuid",
    batch(table = "keyed_binary", key = "id", size = 37)
)]
async fn bump_binary_uuid(ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE keyed_binary SET v = v + 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// Bumps `keyed_text.v` (a `VARCHAR` key, some values with `é`), 37 keys a batch.
#[datamig::migration(
    id = "20240401_0002_bump_text",
    batch(table = "keyed_text", key = "code", size = 37)
)]
async fn bump_text(ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE keyed_text SET v = v + 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// Bumps `keyed_pair.v` (the composite key `(tenant_id, id)`), 37 keys a batch.
#[datamig::migration(
    id = "20240401_0003_bump_pair",
    batch(table = "keyed_pair", key = "tenant_id, id", size = 37)
)]
async fn bump_pair(ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE keyed_pair SET v = v + 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

#[tokio::test]
async fn batches_walk_uuid_text_and_composite_keys_reaching_every_row_once() -> anyhow::Result<()> {
    let db = datamig::testing::mysql().await?;
    let numbers = "WITH RECURSIVE s (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 500)";
    let uuid = "LOWER(CONCAT_WS('-', SUBSTR(MD5(n), 1, 8), SUBSTR(MD5(n), 9, 4), SUBSTR(MD5(n), 13, 4), SUBSTR(MD5(n), 17, 4), SUBSTR(MD5(n), 21)))";
    for sql in [
        "CREATE TABLE keyed_char (id char(36) PRIMARY KEY, v int NOT NULL DEFAULT 0)".to_string(),
        format!("INSERT INTO keyed_char (id) {numbers} SELECT {uuid} FROM s"),
        "CREATE TABLE keyed_binary (id binary(16) PRIMARY KEY, v int NOT NULL DEFAULT 0)"
            .to_string(),
        format!("INSERT INTO keyed_binary (id) {numbers} SELECT UNHEX(MD5(n)) FROM s"),
        "CREATE TABLE keyed_text (code varchar(40) PRIMARY KEY, v int NOT NULL DEFAULT 0)"
            .to_string(),
        format!(
            "INSERT INTO keyed_text (code) {numbers} SELECT CONCAT(IF(n % 2 = 0, 'K', 'k'), n, IF(n % 3 = 0, 'é', '')) FROM s"
        ),
        "CREATE TABLE keyed_pair (tenant_id bigint NOT NULL, id binary(16) NOT NULL,
             v int NOT NULL DEFAULT 0, PRIMARY KEY (tenant_id, id))"
            .to_string(),
        format!(
            "INSERT INTO keyed_pair (tenant_id, id) {numbers} SELECT n % 7, UNHEX(MD5(n)) FROM s"
        ),
    ] {
        sqlx::query(AssertSqlSafe(sql)).execute(db.pool()).await?;
    }
    let report = Migrator::new(db.pool().clone())
        .migrations([
            &bump_char_uuid::MIGRATION,
            &bump_binary_uuid::MIGRATION,
            &bump_text::MIGRATION,
            &bump_pair::MIGRATION,
        ])
        .run()
        .await?;
    assert_eq!(report.applied.len(), 4);
    for applied in &report.applied {
        assert_eq!(applied.batches, 14, "{}: 500 keys, 37 a batch", applied.id);
    }
    for table in ["keyed_char", "keyed_binary", "keyed_text", "keyed_pair"] {
        let (once, other): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT CAST(SUM(v = 1) AS signed), CAST(SUM(v <> 1) AS signed) FROM {table}"
        )))
        .fetch_one(db.pool())
        .await?;
        assert_eq!((once, other), (500, 0), "{table}: every row exactly once");
    }
    // The checkpoint of a non-integer key names its column, type and value.
    let checkpoint: Option<String> =
        sqlx::query_scalar("SELECT checkpoint FROM datamig_ledger WHERE id = ?")
            .bind(bump_pair::MIGRATION.id())
            .fetch_one(db.pool())
            .await?;
    let checkpoint = checkpoint.unwrap_or_default();
    assert!(
        checkpoint.contains("tenant_id") && checkpoint.contains("\"hex\""),
        "{checkpoint}"
    );
    Ok(())
}

/// Sets `plan_rows.plan_code` where it is not yet `upper(plan)`: a `CHAR(36)` UUID key,
/// 100 keys a batch.
#[datamig::migration(
    id = "20240402_0000_plan_codes",
    batch(table = "plan_rows", key = "id", size = 100)
)]
async fn plan_codes(ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE plan_rows SET plan_code = upper(plan) \
         WHERE {batch} AND (plan_code IS NULL OR plan_code <> upper(plan))",
        &batch,
    )
    .await?;
    Ok(())
}

/// The same with a `LIMIT` of its own, after which a check's `LIMIT 1` cannot be written.
#[datamig::migration(
    id = "20240402_0001_plan_codes_limited",
    batch(table = "plan_rows_limited", key = "id", size = 100)
)]
async fn plan_codes_limited(ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE plan_rows_limited SET plan_code = upper(plan) \
         WHERE {batch} AND (plan_code IS NULL OR plan_code <> upper(plan)) LIMIT 1000;",
        &batch,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_run_with_nothing_left_to_do_checks_the_rest_in_one_statement() -> anyhow::Result<()> {
    let db = datamig::testing::mysql().await?;
    let pool = db.pool();
    let numbers = datamig_tests::mysql_numbers(2000);
    let uuid = "LOWER(CONCAT_WS('-', SUBSTR(MD5(n), 1, 8), SUBSTR(MD5(n), 9, 4), SUBSTR(MD5(n), 13, 4), SUBSTR(MD5(n), 17, 4), SUBSTR(MD5(n), 21)))";
    for table in ["plan_rows", "plan_rows_limited"] {
        for sql in [
            // Binary collation: `plan_code <> upper(plan)` compares case.
            format!(
                "CREATE TABLE {table} (id char(36) PRIMARY KEY, plan varchar(10) NOT NULL,
                     plan_code varchar(10)) COLLATE utf8mb4_bin"
            ),
            format!(
                "INSERT INTO {table} (id, plan) {numbers}
                 SELECT {uuid}, ELT(1 + n % 3, 'free', 'pro', 'team') FROM s"
            ),
        ] {
            sqlx::query(AssertSqlSafe(sql)).execute(pool).await?;
        }
    }
    let migrator = Migrator::new(pool.clone())
        .migrations([&plan_codes::MIGRATION, &plan_codes_limited::MIGRATION]);
    let first = migrator.run().await?;
    for applied in &first.applied {
        assert_eq!(
            (applied.batches, applied.rows_affected),
            (20, 2000),
            "{}",
            applied.id
        );
    }
    let stale = "SELECT count(*) FROM plan_rows \
                 WHERE plan_code IS NULL OR plan_code <> upper(plan)";

    // Nothing to do: one batch walked, then every key after it checked in one statement,
    // committed as the last batch with the checkpoint at the last key.
    let (batches, rows, written, notes) =
        datamig_tests::rerun_counts(pool, plan_codes::MIGRATION.id()).await?;
    assert_eq!((batches, rows, written), (2, 0, 0), "{notes}");
    assert!(notes.contains("checked in one statement"), "{notes}");
    let entry = migrator
        .status()
        .await?
        .into_iter()
        .find(|s| s.id == plan_codes::MIGRATION.id())
        .and_then(|s| s.ledger)
        .expect("its ledger row");
    let last: String = sqlx::query_scalar("SELECT id FROM plan_rows ORDER BY id DESC LIMIT 1")
        .fetch_one(pool)
        .await?;
    assert_eq!(
        datamig::__private::describe_checkpoint(entry.checkpoint.as_deref().unwrap_or_default()),
        format!("id = '{last}'")
    );
    assert_eq!((entry.status.as_str(), entry.batches), ("applied", 2));

    // Stale rows in batches 4 and 10: the checks after batch 1 and after batch 3 stop at
    // the first of them and roll back (each failed check doubles the quiet batches before
    // the next), the walk fixes it; the check after four quiet batches more (5 to 8) stops
    // at the second, which batch 10 fixes; after eight quiet batches more (11 to 18) the
    // rest holds, committed as batch 19. Nothing was left undone by a check that stopped
    // at its first row.
    sqlx::query(
        "UPDATE plan_rows SET plan_code = NULL
         WHERE id IN (SELECT id FROM (SELECT id FROM plan_rows ORDER BY id LIMIT 1 OFFSET 350) a
                      UNION ALL
                      SELECT id FROM (SELECT id FROM plan_rows ORDER BY id LIMIT 1 OFFSET 950) b)",
    )
    .execute(pool)
    .await?;
    assert_eq!(scalar(pool, stale).await?, 2);
    let (batches, rows, written, notes) =
        datamig_tests::rerun_counts(pool, plan_codes::MIGRATION.id()).await?;
    assert_eq!((rows, written), (2, 2), "{notes}");
    assert_eq!(scalar(pool, stale).await?, 0);
    assert_eq!(batches, 19, "{notes}");
    assert!(notes.contains("batch 19: no row after"), "{notes}");

    // A statement that takes no `LIMIT 1` after it fails its check, which rolls back: it
    // is walked batch by batch, as before.
    let (batches, rows, written, notes) =
        datamig_tests::rerun_counts(pool, plan_codes_limited::MIGRATION.id()).await?;
    assert_eq!((batches, rows, written), (20, 0, 0), "{notes}");
    assert!(!notes.contains("checked in one statement"), "{notes}");
    Ok(())
}

/// Merges `wanted` into `plans` from a query, where a value differs.
#[datamig::migration(id = "20240701_0000_plans_from_query")]
async fn plans_from_query(ctx: &mut Ctx<'_, MySql>) -> anyhow::Result<()> {
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
async fn plans_from_rows(ctx: &mut Ctx<'_, MySql>) -> anyhow::Result<()> {
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
        .overwrite()
        .execute()
        .await?;
    ctx.note(format!("{report:?}"));
    Ok(())
}

/// Inserts user 4, leaves user 1 alone.
#[datamig::migration(id = "20240701_0002_plans_insert_missing")]
async fn plans_insert_missing(ctx: &mut Ctx<'_, MySql>) -> anyhow::Result<()> {
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
async fn plans_key_twice(ctx: &mut Ctx<'_, MySql>) -> anyhow::Result<()> {
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
async fn plans_not_a_key(ctx: &mut Ctx<'_, MySql>) -> anyhow::Result<()> {
    ctx.upsert("plans")
        .key(["plan"])
        .rows(["plan", "seats"], vec![("free", 1_i64)])
        .overwrite()
        .execute()
        .await?;
    Ok(())
}

/// 20,000 rows of 4 values from Rust: more than one statement's 65,535 parameters.
#[datamig::migration(id = "20240701_0005_many_rows")]
async fn many_rows(ctx: &mut Ctx<'_, MySql>) -> anyhow::Result<()> {
    let rows: Vec<(i64, String, i64, f64)> = (1..=20_000)
        .map(|n| (n, format!("name {n}"), n % 7, n as f64 / 4.0))
        .collect();
    let report = ctx
        .upsert("wide")
        .key(["id"])
        .rows(["id", "name", "grp", "score"], rows)
        .update_if_changed()
        .execute()
        .await?;
    ctx.note(format!("{report:?}"));
    Ok(())
}

/// Runs one migration; returns its note, or its failure.
async fn run_one(
    pool: &MySqlPool,
    migration: &'static datamig::Migration,
) -> Result<String, Error> {
    let report = Migrator::new(pool.clone())
        .migrations([migration])
        .run()
        .await?;
    Ok(report.applied[0].notes.join(" "))
}

#[tokio::test]
async fn the_upsert_counts_and_rewrites_nothing_on_a_second_run() -> anyhow::Result<()> {
    let db = datamig::testing::mysql().await?;
    for sql in [
        "CREATE TABLE plans (user_id bigint PRIMARY KEY, plan varchar(20) NOT NULL, seats bigint)",
        "INSERT INTO plans VALUES (1, 'free', NULL), (2, 'pro', 3)",
        "CREATE TABLE wanted (user_id bigint, plan varchar(20), seats bigint)",
        "INSERT INTO wanted VALUES (1, 'free', NULL), (2, 'team', 5), (3, 'pro', 1)",
    ] {
        sqlx::query(sql).execute(db.pool()).await?;
    }
    let pool = db.pool();
    assert_eq!(
        run_one(pool, &plans_from_query::MIGRATION).await?,
        "UpsertReport { inserted: 1, updated: 1, unchanged: 1 }"
    );
    assert_eq!(
        run_one(pool, &plans_from_rows::MIGRATION).await?,
        "UpsertReport { inserted: 0, updated: 0, unchanged: 3 }",
        "equal rows are not rewritten, even when overwriting"
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
    assert_eq!(scalar(pool, "SELECT count(*) FROM plans").await?, 4);
    Ok(())
}

/// 2,500 rows on an integer key, several statements' worth: keys 1 to 500 as they are,
/// 501 to 1,000 changed, 1,001 to 2,500 new.
#[datamig::migration(id = "20240701_0009_mixed_rows")]
async fn mixed_rows(ctx: &mut Ctx<'_, MySql>) -> anyhow::Result<()> {
    let rows: Vec<(i64, String, i64)> = (1..=2500)
        .map(|i| (i, if i <= 500 { "old" } else { "new" }.to_string(), i * 2))
        .collect();
    let report = ctx
        .upsert("many")
        .key(["id"])
        .rows(["id", "v", "n"], rows)
        .update_if_changed()
        .execute()
        .await?;
    ctx.note(format!("{report:?}"));
    Ok(())
}

/// Key 5,100 (the 100th row's) again as the 1,700th row, statements after the first.
#[datamig::migration(id = "20240701_0010_mixed_rows_key_twice")]
async fn mixed_rows_key_twice(ctx: &mut Ctx<'_, MySql>) -> anyhow::Result<()> {
    let rows: Vec<(i64, String, i64)> = (1..=2000)
        .map(|i| (5000 + if i == 1700 { 100 } else { i }, "x".to_string(), i))
        .collect();
    ctx.upsert("many")
        .key(["id"])
        .rows(["id", "v", "n"], rows)
        .overwrite()
        .execute()
        .await?;
    Ok(())
}

#[tokio::test]
async fn an_upsert_of_many_rust_rows_counts_and_refuses_across_its_statements() -> anyhow::Result<()>
{
    let db = datamig::testing::mysql().await?;
    let pool = db.pool();
    for sql in [
        "CREATE TABLE many (id bigint PRIMARY KEY, v varchar(10) NOT NULL, n bigint NOT NULL)"
            .to_string(),
        format!(
            "INSERT INTO many (id, v, n) {} SELECT n, 'old', IF(n <= 500, n * 2, 0) FROM s",
            datamig_tests::mysql_numbers(1000)
        ),
    ] {
        sqlx::query(AssertSqlSafe(sql)).execute(pool).await?;
    }
    assert_eq!(
        run_one(pool, &mixed_rows::MIGRATION).await?,
        "UpsertReport { inserted: 1500, updated: 500, unchanged: 500 }"
    );
    assert_eq!(
        scalar(
            pool,
            "SELECT count(*) FROM many WHERE n = id * 2 AND v = IF(id <= 500, 'old', 'new')"
        )
        .await?,
        2500
    );
    let twice = run_one(pool, &mixed_rows_key_twice::MIGRATION)
        .await
        .expect_err("key 5,100 twice");
    assert!(
        twice
            .to_string()
            .contains("the same key more than once (\"id\" = 5100)"),
        "{twice}"
    );
    // Nothing of the failed migration stayed, though statements before the row ran.
    assert_eq!(scalar(pool, "SELECT count(*) FROM many").await?, 2500);
    Ok(())
}

/// Text keys from Rust: `b` is new, `a` is the existing `A` under the column's
/// case-insensitive collation.
#[datamig::migration(id = "20240701_0006_codes_text_key")]
async fn codes_text_key(ctx: &mut Ctx<'_, MySql>) -> anyhow::Result<()> {
    let report = ctx
        .upsert("codes")
        .key(["code"])
        .rows(["code", "label"], vec![("a", "first"), ("b", "second")])
        .update_if_changed()
        .execute()
        .await?;
    ctx.note(format!("{report:?}"));
    Ok(())
}

/// `x` and `X`: one key twice under the collation, though not byte for byte.
#[datamig::migration(id = "20240701_0007_codes_key_twice_by_collation")]
async fn codes_key_twice_by_collation(ctx: &mut Ctx<'_, MySql>) -> anyhow::Result<()> {
    ctx.upsert("codes")
        .key(["code"])
        .rows(["code", "label"], vec![("x", "one"), ("X", "two")])
        .overwrite()
        .execute()
        .await?;
    Ok(())
}

/// The integer key given as text: staged, and converted by MySQL as it compares.
#[datamig::migration(id = "20240701_0008_plans_text_for_integer_key")]
async fn plans_text_for_integer_key(ctx: &mut Ctx<'_, MySql>) -> anyhow::Result<()> {
    let report = ctx
        .upsert("plans")
        .key(["user_id"])
        .rows(["user_id", "plan"], vec![("7", "free"), ("8", "pro")])
        .overwrite()
        .execute()
        .await?;
    ctx.note(format!("{report:?}"));
    Ok(())
}

#[tokio::test]
async fn an_upsert_on_a_text_key_compares_keys_in_the_columns_collation() -> anyhow::Result<()> {
    let db = datamig::testing::mysql().await?;
    let pool = db.pool();
    for sql in [
        "CREATE TABLE codes (code varchar(20) COLLATE utf8mb4_general_ci PRIMARY KEY, label text)
         DEFAULT CHARSET = utf8mb4",
        "INSERT INTO codes VALUES ('A', 'old')",
        "CREATE TABLE plans (user_id bigint PRIMARY KEY, plan varchar(20) NOT NULL)",
    ] {
        sqlx::query(sql).execute(pool).await?;
    }
    assert_eq!(
        run_one(pool, &codes_text_key::MIGRATION).await?,
        "UpsertReport { inserted: 1, updated: 1, unchanged: 0 }"
    );
    let codes: Vec<(String, String)> =
        sqlx::query_as("SELECT code, label FROM codes ORDER BY code")
            .fetch_all(pool)
            .await?;
    assert_eq!(
        codes,
        [
            ("A".to_string(), "first".to_string()),
            ("b".to_string(), "second".to_string())
        ]
    );
    let twice = run_one(pool, &codes_key_twice_by_collation::MIGRATION)
        .await
        .expect_err("x and X are one key");
    assert!(
        twice.to_string().contains("the same key more than once"),
        "{twice}"
    );
    assert_eq!(
        run_one(pool, &plans_text_for_integer_key::MIGRATION).await?,
        "UpsertReport { inserted: 2, updated: 0, unchanged: 0 }"
    );
    // Nothing of the failed migration stayed.
    assert_eq!(scalar(pool, "SELECT count(*) FROM codes").await?, 2);
    assert_eq!(
        scalar(pool, "SELECT CAST(sum(user_id) AS signed) FROM plans").await?,
        15
    );
    Ok(())
}

#[tokio::test]
async fn a_large_upsert_is_split_under_the_parameter_limit_and_proven_idempotent()
-> anyhow::Result<()> {
    let db = datamig::testing::mysql().await?;
    sqlx::query(
        "CREATE TABLE wide (id bigint PRIMARY KEY, name varchar(40) NOT NULL, grp bigint NOT NULL, score double NOT NULL)",
    )
    .execute(db.pool())
    .await?;
    let migrator = Migrator::new(db.pool().clone()).migrations([&many_rows::MIGRATION]);
    let check = datamig::testing::check_idempotent(&migrator, many_rows::MIGRATION.id()).await?;
    assert!(check.is_idempotent(), "{check:?}");
    assert_eq!(check.first_run_rows, 20_000, "{check:?}");
    assert_eq!(
        (check.second_run_rows, check.second_run_writes),
        (0, 0),
        "{check:?}"
    );
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM wide").await?,
        20_000
    );
    Ok(())
}

#[tokio::test]
async fn the_demo_applications_migrations_run_unchanged_and_prove_idempotent() -> anyhow::Result<()>
{
    datamig_demo_migrations::link();
    let db = datamig::testing::mysql().await?;
    datamig_demo_migrations::mysql_schema()
        .run(db.pool())
        .await?;
    assert_eq!(
        datamig_demo_migrations::seed_users_mysql(db.pool(), 1_000).await?,
        1_000
    );
    let migrator = Migrator::new(db.pool().clone()).migrations([
        &datamig_demo_migrations::backfill_notification_settings::MIGRATION,
        &datamig_demo_migrations::normalize_user_emails::MIGRATION,
    ]);
    let report = migrator.run().await?;
    assert_eq!(report.applied.len(), 2);
    assert_eq!(report.applied[0].rows_affected, 1_000);
    // 333 of the 1,000 seeded emails were upper case with spaces: each rewritten once.
    assert_eq!(report.applied[1].rows_affected, 333);
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT count(*) FROM notification_settings WHERE email_enabled AND push_enabled"
        )
        .await?,
        1_000
    );
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT count(*) FROM users WHERE BINARY email <> BINARY lower(trim(email))"
        )
        .await?,
        0
    );
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT count(*) FROM users WHERE BINARY email = BINARY 'user3@example.com'"
        )
        .await?,
        1
    );
    for id in [
        datamig_demo_migrations::backfill_notification_settings::MIGRATION.id(),
        datamig_demo_migrations::normalize_user_emails::MIGRATION.id(),
    ] {
        let check = datamig::testing::check_idempotent(&migrator, id).await?;
        assert!(check.is_idempotent(), "{check:?}");
    }
    Ok(())
}

#[tokio::test]
async fn each_batch_is_an_index_range_scan_for_integer_and_composite_keys() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    sqlx::query(
        "CREATE TABLE keyed_pair (tenant_id bigint NOT NULL, id binary(16) NOT NULL,
             v int NOT NULL DEFAULT 0, PRIMARY KEY (tenant_id, id))",
    )
    .execute(db.pool())
    .await?;
    sqlx::query(
        "INSERT INTO keyed_pair (tenant_id, id) WITH RECURSIVE s (n) AS
             (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 1000)
         SELECT a.n % 7, UNHEX(MD5(a.n * 10 + b.n)) FROM s AS a JOIN s AS b ON b.n <= 5",
    )
    .execute(db.pool())
    .await?;
    sqlx::query("ANALYZE TABLE keyed_pair")
        .execute(db.pool())
        .await?;
    let mut conn = db.pool().acquire().await?;
    for (migration, table) in [
        (&datamig_tests::bump_items::MIGRATION, "items"),
        (&bump_pair::MIGRATION, "keyed_pair"),
    ] {
        let plan = datamig::testing::mysql_next_batch_plan(&mut conn, migration, true).await?;
        // Both statements: the whole batch's last key, and the shorter last batch's count.
        let scans: Vec<&str> = plan
            .lines()
            .filter(|line| line.starts_with(&format!("{table} ")))
            .collect();
        assert!(
            scans.len() == 2
                && scans
                    .iter()
                    .all(|line| line.starts_with(&format!("{table} range PRIMARY"))),
            "{table}: the second batch must be a range scan of the primary key:\n{plan}"
        );
        assert!(
            !plan
                .lines()
                .any(|line| line.starts_with(&format!("{table} ALL"))),
            "{table}:\n{plan}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn doctor_names_the_session_that_blocks_and_a_lock_wait_times_out_by_name()
-> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    // Another session holds the counter's row, idle in its transaction.
    let mut blocker = db.pool().acquire().await?;
    sqlx::query("BEGIN").execute(&mut *blocker).await?;
    sqlx::query("UPDATE counter SET n = n")
        .execute(&mut *blocker)
        .await?;
    let blocker_id: i64 = sqlx::query_scalar("SELECT CAST(CONNECTION_ID() AS signed)")
        .fetch_one(&mut *blocker)
        .await?;

    let started = Instant::now();
    let err = fixtures(db.pool())
        .lock_timeout(Duration::from_secs(1))
        .run()
        .await
        .expect_err("the row is held");
    let message = err.to_string();
    assert!(message.contains("Lock wait timeout exceeded"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ledger_rows(db.pool()).await?, 0);

    // While the blocker still holds its row, a runner waits behind it: doctor names both.
    let waiting = {
        let migrator = fixtures(db.pool()).lock_timeout(Duration::from_secs(20));
        tokio::spawn(async move { migrator.run().await })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let doctor = loop {
        let doctor = fixtures(db.pool()).doctor().await?;
        if doctor
            .blocking_sessions
            .iter()
            .any(|s| !s.blocked_by.is_empty())
        {
            break doctor;
        }
        anyhow::ensure!(Instant::now() < deadline, "no waiting session: {doctor:?}");
        // InnoDB refreshes INNODB_TRX only when nobody read it for 100 ms.
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let blocker_pid = i32::try_from(blocker_id)?;
    let idle = doctor
        .blocking_sessions
        .iter()
        .find(|s| s.pid == blocker_pid)
        .ok_or_else(|| anyhow::anyhow!("the blocker is not named: {doctor:?}"))?;
    assert_eq!(
        idle.state.as_deref(),
        Some("idle in transaction"),
        "{idle:?}"
    );
    assert!(
        doctor
            .blocking_sessions
            .iter()
            .any(|s| s.blocked_by == [blocker_pid]),
        "{doctor:?}"
    );
    assert!(
        doctor.server_version.contains("MariaDB"),
        "{}",
        doctor.server_version
    );
    sqlx::query("ROLLBACK").execute(&mut *blocker).await?;
    let report = waiting.await??;
    assert_eq!(report.applied.len(), 1);
    Ok(())
}

/// A batched migration keyed by a floating-point column.
#[datamig::migration(
    id = "20240401_0004_bump_by_score",
    batch(table = "scored", key = "score", size = 10)
)]
async fn bump_by_score(ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE scored SET v = v + 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_key_of_a_type_batching_does_not_walk_is_refused_by_name() -> anyhow::Result<()> {
    let db = datamig::testing::mysql().await?;
    sqlx::query("CREATE TABLE scored (score double PRIMARY KEY, v int NOT NULL DEFAULT 0)")
        .execute(db.pool())
        .await?;
    sqlx::query("INSERT INTO scored (score) VALUES (0.5), (1.5)")
        .execute(db.pool())
        .await?;
    let err = Migrator::new(db.pool().clone())
        .migrations([&bump_by_score::MIGRATION])
        .run()
        .await
        .expect_err("a double key is refused");
    let message = err.to_string();
    assert!(
        message.contains("its key column scored.score is of type double"),
        "{message}"
    );
    assert!(message.contains("binary, varbinary"), "{message}");
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM scored WHERE v <> 0").await?,
        0
    );
    Ok(())
}

/// A batch of a migration that waits, its rows written and its transaction open, while the
/// test acts from another session.
struct Gate {
    /// The batch that waits (0: none).
    batch: std::sync::atomic::AtomicU64,
    /// Told by the waiting batch once it has written.
    reached: tokio::sync::Notify,
    /// Told by the test once it has acted.
    acted: tokio::sync::Notify,
}

impl Gate {
    const fn new() -> Self {
        Gate {
            batch: std::sync::atomic::AtomicU64::new(0),
            reached: tokio::sync::Notify::const_new(),
            acted: tokio::sync::Notify::const_new(),
        }
    }

    /// A migration's body: bumps `items.v` over the batch, then, in the gate's batch,
    /// waits for the test.
    async fn bump(&self, ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
        ctx.execute_batch(
            "UPDATE items SET v = v + 1 WHERE id > $1 AND id <= $2",
            &batch,
        )
        .await?;
        if batch.number() == self.batch.load(std::sync::atomic::Ordering::SeqCst) {
            self.reached.notify_one();
            tokio::time::timeout(Duration::from_secs(30), self.acted.notified())
                .await
                .map_err(|_| anyhow::anyhow!("batch {}: the test did not act", batch.number()))?;
        }
        Ok(())
    }

    /// Runs `migration` (whose body is [`Self::bump`]) and, while its batch `number` runs
    /// (written, not yet committed), does `act`.
    async fn act_while_batch_runs(
        &self,
        pool: &MySqlPool,
        migration: &'static datamig::Migration,
        number: u64,
        act: impl AsyncFnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<Result<datamig::RunReport, datamig::Error>> {
        self.batch
            .store(number, std::sync::atomic::Ordering::SeqCst);
        let runner = Migrator::new(pool.clone()).migrations([migration]);
        let mut run = tokio::spawn(async move { runner.run().await });
        tokio::select! {
            _ = self.reached.notified() => {}
            ended = &mut run => anyhow::bail!("the run ended before batch {number} ran: {ended:?}"),
            _ = tokio::time::sleep(Duration::from_secs(30)) => {
                anyhow::bail!("batch {number} did not run within 30 s")
            }
        }
        let acted = act().await;
        self.acted.notify_one();
        acted?;
        Ok(run.await?)
    }
}

/// The id of [`bump_until_marked`].
const UNTIL_MARKED: &str = "20240406_0000_bump_until_marked";

/// Where [`bump_until_marked`] waits.
static UNTIL_MARKED_GATE: Gate = Gate::new();

/// Bumps `items.v`, 100 keys a batch (three batches); one batch waits for the test's mark.
#[datamig::migration(
    id = "20240406_0000_bump_until_marked",
    batch(table = "items", key = "id", size = 100)
)]
async fn bump_until_marked(ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
    UNTIL_MARKED_GATE.bump(ctx, batch).await
}

/// Runs [`bump_until_marked`] and, while its batch `number` runs, has `mark` pause or
/// cancel it from another runner.
async fn marked_while_batch_runs(
    pool: &MySqlPool,
    number: u64,
    mark: impl AsyncFnOnce(Migrator<MySql>) -> anyhow::Result<()>,
) -> anyhow::Result<datamig::RunReport> {
    let other = Migrator::new(pool.clone()).migrations([&bump_until_marked::MIGRATION]);
    let run = UNTIL_MARKED_GATE
        .act_while_batch_runs(pool, &bump_until_marked::MIGRATION, number, async || {
            mark(other).await
        })
        .await?;
    Ok(run?)
}

/// Where [`bump_moved`] waits.
static MOVED_GATE: Gate = Gate::new();

/// Bumps `items.v`, 50 keys a batch (six batches); one batch waits while the test moves
/// its ledger row.
#[datamig::migration(
    id = "20240406_0001_bump_moved",
    batch(table = "items", key = "id", size = 50)
)]
async fn bump_moved(ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
    MOVED_GATE.bump(ctx, batch).await
}

/// A batch whose ledger row another session moved while it ran does not commit: on
/// MariaDB its checkpoint, `COMMIT` and the next begin go out as one text, which stops
/// before the `COMMIT` when the row did not change; the batch rolls back and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_ledger_row_was_moved_while_it_ran_rolls_back_and_says_so()
-> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    // Batch 3: begun in batch 2's commit, and committing the same way (not the last).
    let run = MOVED_GATE
        .act_while_batch_runs(db.pool(), &bump_moved::MIGRATION, 3, async || {
            sqlx::query("UPDATE datamig_ledger SET checkpoint = '250' WHERE id = ?")
                .bind(bump_moved::MIGRATION.id())
                .execute(db.pool())
                .await?;
            Ok(())
        })
        .await?;
    let message = run.expect_err("the batch does not commit").to_string();
    assert!(message.contains(bump_moved::MIGRATION.id()), "{message}");
    assert!(
        message.contains(
            "batch 3: its ledger row is no longer at the checkpoint this runner started from \
             (100); another runner must have moved it"
        ),
        "{message}"
    );
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM items WHERE v = 1").await?,
        100,
        "batches 1 and 2 committed, batch 3 rolled back"
    );
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT count(*) FROM items WHERE v = 1 AND id <= 100"
        )
        .await?,
        100
    );
    let (checkpoint, batches): (Option<String>, i64) =
        sqlx::query_as("SELECT checkpoint, batches FROM datamig_ledger WHERE id = ?")
            .bind(bump_moved::MIGRATION.id())
            .fetch_one(db.pool())
            .await?;
    assert_eq!((checkpoint.as_deref(), batches), (Some("250"), 2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_or_a_cancel_written_while_a_backfill_walks_stops_it_before_its_next_batch()
-> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    let ledger = async || -> anyhow::Result<(String, i64)> {
        Ok(sqlx::query_as(
            "SELECT status, CAST(batches AS signed) FROM datamig_ledger WHERE id = ?",
        )
        .bind(UNTIL_MARKED)
        .fetch_one(db.pool())
        .await?)
    };
    // Written while batch 1 runs: batch 1 (it inserts the ledger row) commits on its own,
    // and batch 2's begin finds the pause.
    let report = marked_while_batch_runs(db.pool(), 1, async |other| {
        other.pause(UNTIL_MARKED, Some("replica lag")).await?;
        Ok(())
    })
    .await?;
    assert_eq!(report.paused.len(), 1, "{report:?}");
    assert_eq!(report.paused[0].reason.as_deref(), Some("replica lag"));
    assert!(report.applied.is_empty(), "{report:?}");
    assert_eq!(ledger().await?, ("running".to_string(), 1));
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT count(*) FROM items WHERE v = 1 AND id <= 100"
        )
        .await?,
        100,
        "the first batch committed"
    );
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT count(*) FROM items WHERE v <> 0 AND id > 100"
        )
        .await?,
        0,
        "the second never began"
    );

    // Resumed, and cancelled the same way: the walk stops again, the cancel recorded.
    Migrator::new(db.pool().clone())
        .migrations([&bump_until_marked::MIGRATION])
        .resume(UNTIL_MARKED)
        .await?;
    // Written while batch 2 runs: on MariaDB, batch 2's commit begins batch 3 in the same
    // round trip and finds the cancel there; batch 3 then stops before it does anything.
    let report = marked_while_batch_runs(db.pool(), 2, async |other| {
        other.cancel(UNTIL_MARKED, Some("wrong data")).await?;
        Ok(())
    })
    .await?;
    assert_eq!(report.cancelled.len(), 1, "{report:?}");
    assert_eq!(report.cancelled[0].reason.as_deref(), Some("wrong data"));
    assert_eq!(ledger().await?.1, 2, "one batch more, then the cancel");
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM items WHERE v = 1").await?,
        200
    );
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM items WHERE v > 1").await?,
        0,
        "no batch ran twice"
    );
    // The operator's cancel, then the run it stopped, recorded as cancelled.
    let history: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT action, outcome, reason FROM datamig_runs WHERE migration_id = ?
         ORDER BY run_id DESC LIMIT 2",
    )
    .bind(UNTIL_MARKED)
    .fetch_all(db.pool())
    .await?;
    assert_eq!(history[1].0, "cancel");
    assert_eq!(history[1].2.as_deref(), Some("wrong data"));
    assert_eq!(history[0].1, "cancelled", "{history:?}");
    Ok(())
}

#[tokio::test]
async fn a_paused_backfill_is_skipped_and_runs_once_resumed() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    let migrator = Migrator::new(db.pool().clone()).migrations([
        &datamig_tests::count_runs::MIGRATION,
        &datamig_tests::bump_items::MIGRATION,
    ]);
    let pause = migrator.pause(BUMP_ITEMS, Some("replica lag")).await?;
    assert_eq!(pause.migration_id, BUMP_ITEMS);
    assert_eq!(pause.reason.as_deref(), Some("replica lag"));
    let report = migrator.run().await?;
    assert_eq!(report.paused.len(), 1);
    assert_eq!(
        report.applied.len(),
        1,
        "count_runs ran; the paused backfill did not"
    );
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM items WHERE v <> 0").await?,
        0
    );
    let status = migrator.status().await?;
    let paused = status.iter().find(|s| s.id == BUMP_ITEMS).expect("listed");
    assert_eq!(paused.state, State::Paused);
    migrator.resume(BUMP_ITEMS).await?;
    assert_eq!(migrator.run().await?.applied.len(), 1);
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM items WHERE v = 1").await?,
        300
    );
    Ok(())
}

/// Bumps `ahead_items.v`, 10 keys a batch, each batch at least 5 ms.
#[datamig::migration(
    id = "20240405_0000_bump_ahead",
    batch(table = "ahead_items", key = "id", size = 10)
)]
async fn bump_ahead(ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE ahead_items SET v = v + 1 WHERE {batch}", &batch)
        .await?;
    ctx.execute("DO SLEEP(0.005)").await?;
    Ok(())
}

/// The next batch's bounds are read ahead on another connection, even from a pool that
/// must open that connection first (TLS, the session's settings: longer than a batch
/// here). A read still waiting for its connection when its batch begins is not thrown
/// away with the connection half open: the connection goes to the pool, and the later
/// batches take their bounds from the reads ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_on_a_fresh_pool_takes_its_batches_bounds_from_the_reads_ahead() -> anyhow::Result<()>
{
    datamig_tests::spans::captured();
    let db = datamig::testing::mysql().await?;
    sqlx::query("CREATE TABLE ahead_items (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0)")
        .execute(db.pool())
        .await?;
    sqlx::query(
        "INSERT INTO ahead_items (id) WITH RECURSIVE s (n) AS
             (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 1000) SELECT n FROM s",
    )
    .execute(db.pool())
    .await?;
    // One connection open, which the runner takes: each read ahead needs one more.
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(4)
        .connect(db.url())
        .await?;
    assert_eq!((pool.size(), pool.num_idle()), (1, 1));
    let report = Migrator::new(pool)
        .migrations([&bump_ahead::MIGRATION])
        .run()
        .await?;
    assert_eq!(report.applied[0].batches, 100);
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT CAST(SUM(v = 1) AS signed) FROM ahead_items"
        )
        .await?,
        1000,
        "every row exactly once"
    );
    let batches: Vec<datamig_tests::spans::Closed> = datamig_tests::spans::spans_named("batch")
        .into_iter()
        .filter(|b| {
            b.field("id") == bump_ahead::MIGRATION.id() && b.field("outcome") == "committed"
        })
        .collect();
    assert_eq!(batches.len(), 100);
    assert_eq!(
        batches[0].field("bounds"),
        "read",
        "the first batch reads its own"
    );
    // The first batch inserts the ledger row and the second begins on its own; from the
    // third on, each batch's transaction was begun in the commit of the batch before.
    let begun: Vec<&str> = batches.iter().map(|b| b.field("begun")).collect();
    assert_eq!(begun[..2], ["own", "own"], "{begun:?}");
    assert!(begun[2..].iter().all(|b| *b == "chained"), "{begun:?}");
    let ahead = batches
        .iter()
        .filter(|b| b.field("bounds") == "ahead")
        .count();
    assert!(
        ahead >= 50,
        "{ahead} of 100 batches took their bounds from a read ahead: {:?}",
        batches
            .iter()
            .map(|b| b.field("bounds"))
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// Bumps `items.v`, 50 keys a batch, with a pause after each batch.
#[datamig::migration(
    id = "20240406_0002_bump_with_pauses",
    batch(table = "items", key = "id", size = 50, pause = "1ms")
)]
async fn bump_with_pauses(ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE items SET v = v + 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// A walk that pauses between batches does not keep the transaction a batch's commit
/// began for the next one through the pause (an operator's pause written meanwhile must
/// stop it): that transaction is rolled back, and each batch begins its own.
#[tokio::test]
async fn a_walk_that_pauses_between_batches_begins_each_batch_after_the_pause() -> anyhow::Result<()>
{
    datamig_tests::spans::captured();
    let db = fixture_database(&[]).await?;
    let report = Migrator::new(db.pool().clone())
        .migrations([&bump_with_pauses::MIGRATION])
        .run()
        .await?;
    assert_eq!(report.applied[0].batches, 6);
    assert_eq!(
        scalar(db.pool(), "SELECT CAST(SUM(v = 1) AS signed) FROM items").await?,
        300,
        "every row exactly once"
    );
    let begun: Vec<String> = datamig_tests::spans::spans_named("batch")
        .into_iter()
        .filter(|b| b.field("id") == bump_with_pauses::MIGRATION.id())
        .map(|b| b.field("begun").to_string())
        .collect();
    assert_eq!(begun, ["own"; 6], "{begun:?}");
    Ok(())
}
