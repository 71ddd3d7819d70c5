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
use datamig_tests::{BUMP_ITEMS, COUNT_RUNS, text};
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
    let err = Migrator::new(db.pool().clone())
        .migrations([&ddl_through_sqlx::MIGRATION])
        .run()
        .await
        .expect_err("the implicit commit is found");
    let message = err.to_string();
    assert!(
        message.contains(
            "migration 20240301_0001_ddl_through_sqlx ran a statement that MySQL commits implicitly"
        ),
        "{message}"
    );
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
        let applied = scalar_bound(
            db.pool(),
            "SELECT count(*) FROM datamig_ledger WHERE id = ? AND status = 'applied'",
            COUNT_RUNS,
        )
        .await?;
        assert_eq!(
            n, applied,
            "kill {kill}: counter {n} with {applied} ledger rows"
        );
        // The batched migration: every committed batch once, and its checkpoint says which.
        let bump: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT status, checkpoint FROM datamig_ledger WHERE id = ?")
                .bind(BUMP_ITEMS)
                .fetch_optional(db.pool())
                .await?;
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
        sqlx::query("DELETE FROM datamig_ledger")
            .execute(db.pool())
            .await?;
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
        .runner_lock(lease.clone())
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
    // No lock is held: unlock says so and succeeds.
    let unlock = datamig(&url, &["unlock"]).output().await?;
    assert!(unlock.status.success(), "{}", text(&unlock.stderr));
    let _ = sqlx::query(AssertSqlSafe("SELECT 1".to_string()))
        .execute(db.pool())
        .await?;
    Ok(())
}
