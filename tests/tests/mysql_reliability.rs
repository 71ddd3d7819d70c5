//! The kill and concurrency suites of `reliability.rs`, on MariaDB 10.11 (from
//! `datamig::testing::mysql()`), with the same figures: SIGKILLs at random instants with an
//! integer key and with `CHAR(36)` UUID and composite keys (20 each), sixteen runners at
//! once (two rounds), sixteen runners kept waiting, a connection cut mid-migration and
//! mid-batch (exit 4, the next run completes), a frozen lock holder. Each test prints a
//! `RELIABILITY` line with what it ran; RELIABILITY.md lists them.
//!
//! The binaries are the PostgreSQL suite's (`datamig-fixtures`, `datamig-keyed`): their
//! migrations are written once over the backend.

use std::time::{Duration, Instant};

use datamig::{Fingerprint, Migrator, TableFingerprint};
use datamig_tests::{BUMP_ITEMS, COUNT_RUNS, Instants, mysql_numbers, send, text};
use sqlx::{AssertSqlSafe, MySqlPool};

fn datamig(url: &str, args: &[&str]) -> tokio::process::Command {
    datamig_tests::command(env!("CARGO_BIN_EXE_datamig-fixtures"), url, args)
}

fn keyed(url: &str, args: &[&str]) -> tokio::process::Command {
    datamig_tests::command(env!("CARGO_BIN_EXE_datamig-keyed"), url, args)
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

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

async fn counter(pool: &MySqlPool) -> anyhow::Result<i64> {
    scalar(pool, "SELECT CAST(n AS signed) FROM counter").await
}

async fn item_values(pool: &MySqlPool) -> anyhow::Result<Vec<i32>> {
    Ok(sqlx::query_scalar("SELECT v FROM items ORDER BY id")
        .fetch_all(pool)
        .await?)
}

/// A fresh database with the fixture tables of the PostgreSQL suite: `counter` (`n = 0`),
/// `items` (ids 1 to 1000, `v = 0`: ten batches of `bump_items`) and `fixture_switches`
/// holding `switches`.
async fn fixture_database(
    switches: &[&str],
) -> anyhow::Result<datamig::testing::MySqlTestDatabase> {
    let db = datamig::testing::mysql().await?;
    for sql in [
        "CREATE TABLE counter (n int NOT NULL) ENGINE=InnoDB".to_string(),
        "INSERT INTO counter VALUES (0)".to_string(),
        "CREATE TABLE items (id bigint PRIMARY KEY, v int NOT NULL) ENGINE=InnoDB".to_string(),
        format!(
            "INSERT INTO items (id, v) {} SELECT n, 0 FROM s",
            mysql_numbers(1000)
        ),
        "CREATE TABLE fixture_switches (name varchar(64) PRIMARY KEY) ENGINE=InnoDB".to_string(),
    ] {
        exec(db.pool(), &sql).await?;
    }
    for switch in switches {
        sqlx::query("INSERT INTO fixture_switches VALUES (?)")
            .bind(switch)
            .execute(db.pool())
            .await?;
    }
    Ok(db)
}

/// A fresh database with the tables of `datamig-keyed`: `keyed_uuid` (500 `CHAR(36)` UUIDs)
/// and `keyed_pair` (500 keys `(tenant_id, id)`), each with `v = 0`, the same keys in every
/// database.
async fn keyed_database() -> anyhow::Result<datamig::testing::MySqlTestDatabase> {
    let db = datamig::testing::mysql().await?;
    let uuid = "LOWER(CONCAT_WS('-', SUBSTR(MD5(n), 1, 8), SUBSTR(MD5(n), 9, 4), \
                SUBSTR(MD5(n), 13, 4), SUBSTR(MD5(n), 17, 4), SUBSTR(MD5(n), 21)))";
    for sql in [
        "CREATE TABLE keyed_uuid (id char(36) PRIMARY KEY, v int NOT NULL DEFAULT 0) ENGINE=InnoDB"
            .to_string(),
        format!(
            "INSERT INTO keyed_uuid (id) {} SELECT {uuid} FROM s",
            mysql_numbers(500)
        ),
        "CREATE TABLE keyed_pair (tenant_id bigint NOT NULL, id char(36) NOT NULL,
             v int NOT NULL DEFAULT 0, PRIMARY KEY (tenant_id, id)) ENGINE=InnoDB"
            .to_string(),
        format!(
            "INSERT INTO keyed_pair (tenant_id, id) {} SELECT n % 7, {uuid} FROM s",
            mysql_numbers(500)
        ),
    ] {
        exec(db.pool(), &sql).await?;
    }
    Ok(db)
}

/// The data, without the ledger (whose timestamps differ from run to run): each table's
/// fingerprint by its name (without the database's, which differs from test to test).
async fn data(pool: &MySqlPool) -> anyhow::Result<Vec<(String, TableFingerprint)>> {
    let fingerprint: Fingerprint = datamig::fingerprint(pool).await?;
    Ok(fingerprint
        .tables
        .into_iter()
        .map(|(name, table)| {
            let short = name.rsplit('.').next().unwrap_or(&name).to_string();
            (short, table)
        })
        .collect())
}

/// After a complete run: every non-idempotent fixture applied once, every batch once.
async fn assert_complete(
    pool: &MySqlPool,
    reference: &[(String, TableFingerprint)],
) -> anyhow::Result<()> {
    assert_eq!(counter(pool).await?, 1, "count_runs applied exactly once");
    assert!(
        item_values(pool).await?.iter().all(|v| *v == 1),
        "every batch committed exactly once"
    );
    assert_eq!(
        data(pool).await?,
        reference,
        "the same data as an uninterrupted run"
    );
    let ledger: Vec<(String, String)> =
        sqlx::query_as("SELECT id, status FROM datamig_ledger ORDER BY id")
            .fetch_all(pool)
            .await?;
    assert_eq!(
        ledger,
        vec![
            (COUNT_RUNS.to_string(), "applied".to_string()),
            (BUMP_ITEMS.to_string(), "applied".to_string())
        ]
    );
    assert_eq!(
        scalar(
            pool,
            "SELECT count(*) FROM datamig_runs WHERE outcome = 'succeeded'"
        )
        .await?,
        2,
        "one successful attempt recorded per migration"
    );
    Ok(())
}

/// Where a killed run had got to, read from the ledger after the kill.
async fn stage(pool: &MySqlPool) -> String {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT id, status, batches FROM datamig_ledger ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    match rows.as_slice() {
        [] => "before any commit".to_string(),
        [_] => "after count_runs, before batch 1".to_string(),
        [_, (_, status, _)] if status == "applied" => "after everything".to_string(),
        [_, (_, _, batches)] => format!("after batch {batches} of 10"),
        _ => "unexpected".to_string(),
    }
}

#[tokio::test]
async fn kills_at_random_instants_lose_nothing() -> anyhow::Result<()> {
    let kills = env_number("DATAMIG_RELIABILITY_MYSQL_KILLS", 20);
    let (mut instants, seed) = Instants::from_env()?;
    let reference_db = fixture_database(&[]).await?;
    let reference_run = datamig(reference_db.url(), &["run"]).output().await?;
    assert!(
        reference_run.status.success(),
        "{}",
        text(&reference_run.stderr)
    );
    let reference = data(reference_db.pool()).await?;

    let mut stages: std::collections::BTreeMap<String, u32> = Default::default();
    let mut done = 0;
    while done < kills {
        // A few at a time, each on a database of its own.
        let wave = (kills - done).min(5);
        let mut runs = Vec::new();
        for _ in 0..wave {
            let db = fixture_database(&["slow_batches"]).await?;
            // The run takes about 1.3 s: count_runs (0.2 s), then ten batches of 0.1 s.
            let delay = Duration::from_millis(instants.next_millis(1500));
            runs.push(async move {
                let mut child = datamig(db.url(), &["run"]).spawn()?;
                tokio::time::sleep(delay).await;
                child.start_kill()?; // SIGKILL: no cleanup of any kind
                child.wait().await?;
                let reached = stage(db.pool()).await;
                exec(db.pool(), "DELETE FROM fixture_switches").await?;
                let next = datamig(db.url(), &["run", "--wait", "30s"])
                    .output()
                    .await?;
                anyhow::ensure!(
                    next.status.success(),
                    "the run after a kill failed: {}",
                    text(&next.stderr)
                );
                Ok::<_, anyhow::Error>((db, reached))
            });
        }
        for result in futures_util::future::join_all(runs).await {
            let (db, reached) = result?;
            assert_complete(db.pool(), &reference).await?;
            *stages.entry(reached).or_default() += 1;
        }
        done += wave;
    }
    println!(
        "RELIABILITY kill-at-any-instant (MariaDB): {kills} SIGKILLs (seed {seed}), nothing lost; killed {stages:?}"
    );
    Ok(())
}

#[tokio::test]
async fn kills_at_random_instants_lose_nothing_with_uuid_and_composite_keys() -> anyhow::Result<()>
{
    let kills = env_number("DATAMIG_RELIABILITY_KEYED_KILLS", 20);
    let (mut instants, seed) = Instants::from_env()?;
    let reference_db = keyed_database().await?;
    let reference_run = keyed(reference_db.url(), &["run"]).output().await?;
    assert!(
        reference_run.status.success(),
        "{}",
        text(&reference_run.stderr)
    );
    let reference = data(reference_db.pool()).await?;

    let mut stages: std::collections::BTreeMap<String, u32> = Default::default();
    let mut done = 0;
    while done < kills {
        let wave = (kills - done).min(5);
        let mut runs = Vec::new();
        for _ in 0..wave {
            let db = keyed_database().await?;
            // The run takes about 1.1 s (ten batches of each backfill, 50 ms apiece) after
            // the binary starts, which under load takes a while.
            let delay = Duration::from_millis(instants.next_millis(2200));
            runs.push(async move {
                let mut child = keyed(db.url(), &["run"]).spawn()?;
                tokio::time::sleep(delay).await;
                child.start_kill()?; // SIGKILL
                child.wait().await?;
                let batches = scalar(
                    db.pool(),
                    "SELECT CAST(coalesce(sum(batches), 0) AS signed) FROM datamig_ledger",
                )
                .await
                .unwrap_or(0);
                // Nothing committed twice, at the kill.
                let (uuid_ones, pair_ones, twice): (i64, i64, i64) = sqlx::query_as(
                    "SELECT (SELECT count(*) FROM keyed_uuid WHERE v = 1),
                            (SELECT count(*) FROM keyed_pair WHERE v = 1),
                            (SELECT count(*) FROM keyed_uuid WHERE v > 1)
                              + (SELECT count(*) FROM keyed_pair WHERE v > 1)",
                )
                .fetch_one(db.pool())
                .await?;
                anyhow::ensure!(twice == 0, "a batch committed twice");
                // The ledger's checkpoints agree with the rows: 50 keys a committed batch.
                anyhow::ensure!(
                    uuid_ones + pair_ones == 50 * batches || batches == 20,
                    "{uuid_ones} + {pair_ones} rows done, {batches} batches in the ledger"
                );
                let next = keyed(db.url(), &["run", "--wait", "30s"]).output().await?;
                anyhow::ensure!(
                    next.status.success(),
                    "the run after a kill failed: {}",
                    text(&next.stderr)
                );
                Ok::<_, anyhow::Error>((db, format!("after {batches} of 20 batches")))
            });
        }
        for result in futures_util::future::join_all(runs).await {
            let (db, reached) = result?;
            let (uuid_ones, pair_ones): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM keyed_uuid WHERE v = 1),
                        (SELECT count(*) FROM keyed_pair WHERE v = 1)",
            )
            .fetch_one(db.pool())
            .await?;
            assert_eq!(
                (uuid_ones, pair_ones),
                (500, 500),
                "every batch committed exactly once"
            );
            assert_eq!(
                data(db.pool()).await?,
                reference,
                "the same data as an uninterrupted run"
            );
            assert_eq!(
                scalar(
                    db.pool(),
                    "SELECT count(*) FROM datamig_ledger WHERE status = 'applied'"
                )
                .await?,
                2
            );
            *stages.entry(reached).or_default() += 1;
        }
        done += wave;
    }
    println!(
        "RELIABILITY kill-at-any-instant (MariaDB, UUID and composite keys): {kills} SIGKILLs \
         (seed {seed}), nothing lost; killed {stages:?}"
    );
    Ok(())
}

#[tokio::test]
async fn sixteen_runners_at_once_apply_each_migration_once_and_all_exit_0() -> anyhow::Result<()> {
    let rounds = env_number("DATAMIG_RELIABILITY_REPEAT", 2);
    let reference = {
        let other = fixture_database(&[]).await?;
        let run = datamig(other.url(), &["run"]).output().await?;
        assert!(run.status.success(), "{}", text(&run.stderr));
        data(other.pool()).await?
    };
    for _ in 0..rounds {
        let db = fixture_database(&[]).await?;
        let started = Instant::now();
        let children: Vec<_> = (0..16)
            .map(|_| datamig(db.url(), &["run", "--wait", "60s"]).spawn())
            .collect::<Result<_, _>>()?;
        let outputs =
            futures_util::future::join_all(children.into_iter().map(|c| c.wait_with_output()))
                .await;
        let mut appliers = 0;
        for output in outputs {
            let output = output?;
            assert!(output.status.success(), "{}", text(&output.stderr));
            appliers +=
                usize::from(text(&output.stdout).contains(&format!("applied {COUNT_RUNS}")));
        }
        assert_eq!(appliers, 1);
        assert!(started.elapsed() < Duration::from_secs(60));
        assert_complete(db.pool(), &reference).await?;
    }
    println!(
        "RELIABILITY many-runners (MariaDB): {rounds} rounds of 16 concurrent `datamig run`, each migration applied once, all exit 0"
    );
    Ok(())
}

/// Waits until a runner holds the lock of `pool`'s ledger; the holders' sessions.
async fn wait_for_lock_holder(pool: &MySqlPool) -> anyhow::Result<Vec<i32>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let holders = Migrator::new(pool.clone())
            .migrations([])
            .lock_holders()
            .await
            .unwrap_or_default();
        if !holders.is_empty() {
            return Ok(holders.iter().map(|h| h.pid).collect());
        }
        anyhow::ensure!(Instant::now() < deadline, "no runner took the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `count_sql` returns at least 1, for at most 20 s.
async fn wait_until(pool: &MySqlPool, count_sql: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match scalar(pool, count_sql).await {
            Ok(n) if n >= 1 => return Ok(()),
            Ok(_) => {}
            // The ledger may not exist yet.
            Err(err) if err.to_string().contains("1146") => {}
            Err(err) => return Err(err),
        }
        anyhow::ensure!(Instant::now() < deadline, "waited 20 s for {count_sql}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn sixteen_runners_kept_waiting_each_say_so_within_their_timeout() -> anyhow::Result<()> {
    let db = fixture_database(&["slow"]).await?;
    let holder = datamig(db.url(), &["run"]).spawn()?;
    wait_for_lock_holder(db.pool()).await?;
    let waiters = (0..16).map(|_| async {
        let started = Instant::now();
        let output = datamig(db.url(), &["run", "--wait", "300ms"])
            .output()
            .await?;
        Ok::<_, anyhow::Error>((output, started.elapsed()))
    });
    for result in futures_util::future::join_all(waiters).await {
        let (output, took) = result?;
        assert_eq!(output.status.code(), Some(5), "{}", text(&output.stderr));
        assert!(
            text(&output.stderr).contains("could not acquire the migration lock within 300ms"),
            "{}",
            text(&output.stderr)
        );
        assert!(
            took < Duration::from_secs(5),
            "a waiter gave up only after {took:?}"
        );
    }
    assert!(holder.wait_with_output().await?.status.success());
    assert_eq!(counter(db.pool()).await?, 1);
    println!(
        "RELIABILITY lock-waiters (MariaDB): 16 runners behind a holder each exited 5 with the reason, within 5 s of a 300 ms wait"
    );
    Ok(())
}

/// Ends the runner's sessions from another session: every session of the test's database
/// but this one (MySQL sessions carry no name a client sets; the test pool's idle
/// connections, cut too, are replaced by the pool on their next use).
async fn cut_runner_connection(pool: &MySqlPool) -> anyhow::Result<()> {
    wait_for_lock_holder(pool).await?;
    let mut conn = pool.acquire().await?;
    let sessions: Vec<i64> = sqlx::query_scalar(
        "SELECT CAST(ID AS signed) FROM information_schema.PROCESSLIST
         WHERE DB = DATABASE() AND ID <> CONNECTION_ID()",
    )
    .fetch_all(&mut *conn)
    .await?;
    anyhow::ensure!(!sessions.is_empty(), "no runner session to cut");
    for id in sessions {
        // 1094: gone already.
        if let Err(err) = sqlx::query(AssertSqlSafe(format!("KILL CONNECTION {id}")))
            .execute(&mut *conn)
            .await
            && !err.to_string().contains("1094")
        {
            return Err(err.into());
        }
    }
    Ok(())
}

/// Waits until a migration's transaction holds the lock of `counter`'s row: `count_runs`
/// has written and rests in its transaction.
async fn wait_for_counter_locked(pool: &MySqlPool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let free: Option<i32> = sqlx::query_scalar("SELECT n FROM counter FOR UPDATE SKIP LOCKED")
            .fetch_optional(pool)
            .await?;
        if free.is_none() {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "no migration wrote counter");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_connection_cut_mid_migration_fails_with_4_and_the_next_run_completes()
-> anyhow::Result<()> {
    let db = fixture_database(&["slow"]).await?;
    let child = datamig(db.url(), &["run"]).spawn()?;
    // count_runs has written and rests 3 s in its transaction.
    wait_for_counter_locked(db.pool()).await?;
    cut_runner_connection(db.pool()).await?;
    let output = child.wait_with_output().await?;
    assert_eq!(output.status.code(), Some(4), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).starts_with(&format!("error: migration {COUNT_RUNS} failed: ")),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(counter(db.pool()).await?, 0, "nothing half-applied");
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM datamig_ledger").await?,
        0
    );
    exec(db.pool(), "DELETE FROM fixture_switches").await?;
    let next = datamig(db.url(), &["run"]).output().await?;
    assert!(next.status.success(), "{}", text(&next.stderr));
    assert_eq!(counter(db.pool()).await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_connection_cut_mid_batch_fails_with_4_and_the_next_run_resumes() -> anyhow::Result<()> {
    let db = fixture_database(&["slow_batches"]).await?;
    let child = datamig(db.url(), &["run"]).spawn()?;
    wait_until(
        db.pool(),
        "SELECT count(*) FROM datamig_ledger WHERE status = 'running' AND batches >= 3",
    )
    .await?;
    cut_runner_connection(db.pool()).await?;
    let output = child.wait_with_output().await?;
    assert_eq!(output.status.code(), Some(4), "{}", text(&output.stderr));
    // The first statement after the cut fails: the body's (batch 3 reads a switch), or,
    // from batch 4 on, the batch's checkpoint, which goes out with its `COMMIT` on
    // MariaDB, so that its outcome is read back from the ledger.
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!("migration {BUMP_ITEMS} failed: batch "))
            || (stderr.contains("the COMMIT of batch ")
                && stderr.contains(&format!(
                    "of migration {BUMP_ITEMS} failed (error communicating with database"
                ))),
        "{stderr}"
    );
    let (checkpoint, batches): (String, i64) =
        sqlx::query_as("SELECT checkpoint, batches FROM datamig_ledger WHERE id = ?")
            .bind(BUMP_ITEMS)
            .fetch_one(db.pool())
            .await?;
    let done = usize::try_from(batches * 100)?;
    assert_eq!(checkpoint, done.to_string());
    let values = item_values(db.pool()).await?;
    assert!(
        values[..done].iter().all(|v| *v == 1) && values[done..].iter().all(|v| *v == 0),
        "no batch half-applied"
    );
    exec(db.pool(), "DELETE FROM fixture_switches").await?;
    let next = datamig(db.url(), &["run"]).output().await?;
    assert!(next.status.success(), "{}", text(&next.stderr));
    assert!(item_values(db.pool()).await?.iter().all(|v| *v == 1));
    println!(
        "RELIABILITY lost-connections (MariaDB): cut mid-migration and mid-batch, exit 4, nothing half-applied, the next run resumed"
    );
    Ok(())
}

#[tokio::test]
async fn a_frozen_lock_holder_keeps_others_out_until_it_dies() -> anyhow::Result<()> {
    let db = fixture_database(&["slow"]).await?;
    let mut frozen = datamig(db.url(), &["run"]).spawn()?;
    wait_for_counter_locked(db.pool()).await?;
    send(&frozen, "-STOP")?;
    let other = datamig(db.url(), &["run", "--wait", "500ms"])
        .output()
        .await?;
    assert_eq!(
        other.status.code(),
        Some(5),
        "never two runners in the critical section: {}",
        text(&other.stderr)
    );
    let unlock = datamig(db.url(), &["unlock"]).output().await?;
    assert_eq!(
        unlock.status.code(),
        Some(5),
        "a frozen process is alive: {} {}",
        text(&unlock.stdout),
        text(&unlock.stderr)
    );
    frozen.start_kill()?;
    frozen.wait().await?;
    exec(db.pool(), "DELETE FROM fixture_switches").await?;
    let after = datamig(db.url(), &["run", "--wait", "30s"])
        .output()
        .await?;
    assert!(
        after.status.success(),
        "the lock died with the session: {}",
        text(&after.stderr)
    );
    assert_eq!(counter(db.pool()).await?, 1);
    println!(
        "RELIABILITY dead-lock-holder (MariaDB): a frozen holder kept others out (exit 5) and unlock refused; once killed, its lock went with its session"
    );
    Ok(())
}
