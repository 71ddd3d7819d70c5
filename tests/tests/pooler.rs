//! Through a real PgBouncer in `transaction` mode, with its default settings: the lease
//! lock and its fencing, every command, many runners at once, kills at random instants,
//! and the advisory lock refusing to run there.

use std::time::Duration;

use datamig::RunnerLock;
use datamig::prelude::*;
use datamig_tests::{
    BUMP_ITEMS, COUNT_RUNS, Instants, PgBouncer, counter, create_fixture_tables, fixture_database,
    item_values, scalar, send, switch_on, text, wait_for_sleeping_migration, wait_until,
};
use sqlx::PgPool;

fn datamig(url: &str, args: &[&str]) -> tokio::process::Command {
    datamig_tests::command(env!("CARGO_BIN_EXE_datamig-fixtures"), url, args)
}

/// `datamig ARGS` through the pooler with the lease lock; its output.
async fn leased(url: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let mut all = vec!["--lock", "lease"];
    all.extend_from_slice(args);
    Ok(datamig(url, &all).output().await?)
}

/// Every fixture applied once, every batch once, as one uninterrupted run leaves it.
async fn assert_applied_once(pool: &PgPool) -> anyhow::Result<()> {
    assert_eq!(counter(pool).await?, 1, "count_runs applied exactly once");
    assert!(
        item_values(pool).await?.iter().all(|v| *v == 1),
        "every batch committed exactly once"
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
    Ok(())
}

#[tokio::test]
async fn the_advisory_lock_refuses_to_run_through_a_transaction_pooler() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    let bouncer = PgBouncer::start(db.url()).await?;
    let url = bouncer.url(db.url())?;

    let output = datamig(&url, &["run"]).output().await?;
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("through a transaction pooler")
            && stderr.contains("two connections were served by one server session")
            && stderr.contains("--lock lease"),
        "{stderr}"
    );
    assert_eq!(counter(db.pool()).await?, 0, "nothing ran");
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT count(*) FROM pg_tables WHERE tablename = 'datamig_ledger'"
        )
        .await?,
        0,
        "not even the ledger was created"
    );

    // The library says the same, through a pool of its own.
    let pool = bouncer.pool(db.url()).await?;
    let err = datamig::Migrator::new(pool.clone())
        .migrations([&datamig_tests::count_runs::MIGRATION])
        .run()
        .await
        .expect_err("the advisory lock through a transaction pooler");
    assert!(matches!(err, datamig::Error::BehindPooler { .. }), "{err}");

    // Directly, the same database runs with the advisory lock.
    let direct = datamig(db.url(), &["run"]).output().await?;
    assert!(direct.status.success(), "{}", text(&direct.stderr));
    assert_applied_once(db.pool()).await?;
    Ok(())
}

#[tokio::test]
async fn every_command_works_through_pgbouncer() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    let other = fixture_database(&[]).await?;
    let bouncer = PgBouncer::start(db.url()).await?;
    let url = bouncer.url(db.url())?;
    let other_url = bouncer.url(other.url())?;

    let ok = |output: &std::process::Output| {
        assert!(
            output.status.success(),
            "exit {:?}: {}{}",
            output.status.code(),
            text(&output.stdout),
            text(&output.stderr)
        );
    };
    // Before anything ran: `check` finds both pending; `check-idempotency` proves them
    // and keeps nothing.
    let check = leased(&url, &["check"]).await?;
    assert_eq!(check.status.code(), Some(6), "{}", text(&check.stderr));
    let proof = leased(&url, &["check-idempotency", "--only", BUMP_ITEMS]).await?;
    assert_eq!(
        proof.status.code(),
        Some(7),
        "bump_items is not idempotent: {}",
        text(&proof.stdout)
    );
    assert!(
        text(&proof.stdout).contains("items"),
        "{}",
        text(&proof.stdout)
    );
    assert_eq!(
        counter(db.pool()).await?,
        0,
        "check-idempotency keeps nothing"
    );

    // `run` (a plain and a batched migration), then every reading command.
    let run = leased(&url, &["run"]).await?;
    ok(&run);
    assert!(
        text(&run.stdout).contains(&format!("applied {BUMP_ITEMS}")),
        "{}",
        text(&run.stdout)
    );
    assert_applied_once(db.pool()).await?;
    let status = leased(&url, &["status"]).await?;
    ok(&status);
    assert!(
        text(&status.stdout).contains(COUNT_RUNS),
        "{}",
        text(&status.stdout)
    );
    ok(&leased(&url, &["check"]).await?);
    ok(&leased(&url, &["verify"]).await?);
    let doctor = leased(&url, &["doctor"]).await?;
    ok(&doctor);
    assert!(
        text(&doctor.stdout).contains("runner lock: free"),
        "{}",
        text(&doctor.stdout)
    );
    let unlock = leased(&url, &["unlock"]).await?;
    ok(&unlock);
    assert!(
        text(&unlock.stdout).contains("nothing to release"),
        "{}",
        text(&unlock.stdout)
    );
    let fingerprint = leased(&url, &["fingerprint", "--format", "json"]).await?;
    ok(&fingerprint);
    let direct = datamig(db.url(), &["fingerprint", "--format", "json"])
        .output()
        .await?;
    assert_eq!(
        text(&fingerprint.stdout),
        text(&direct.stdout),
        "the same fingerprint through the pooler as directly"
    );
    // `compare` through the pooler: equal after the same run, different before.
    let differ = leased(&url, &["compare", "--source", &url, "--target", &other_url]).await?;
    assert_eq!(differ.status.code(), Some(8), "{}", text(&differ.stderr));
    ok(&leased(&other_url, &["run"]).await?);
    ok(&leased(&url, &["compare", "--source", &url, "--target", &other_url]).await?);
    // `mark-applied`, `repair` and `rerun` take the lease and write the ledger too.
    let rerun = leased(&url, &["rerun", COUNT_RUNS]).await?;
    ok(&rerun);
    assert_eq!(counter(db.pool()).await?, 2, "rerun ran it once more");
    Ok(())
}

/// Stores each item's `v` in `item_copies` with an upsert, through whatever pooler.
#[datamig::migration(id = "20240301_0000_copy_items")]
async fn copy_items(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.execute("CREATE TABLE IF NOT EXISTS item_copies (id int PRIMARY KEY, v int NOT NULL)")
        .await?;
    ctx.upsert("item_copies")
        .key(["id"])
        .from_query("SELECT id, v FROM items")
        .execute()
        .await?;
    Ok(())
}

#[tokio::test]
async fn the_library_and_its_testing_helpers_work_through_pgbouncer() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    let bouncer = PgBouncer::start(db.url()).await?;
    let pool = bouncer.pool(db.url()).await?;
    let migrator = datamig::Migrator::new(pool.clone())
        .runner_lock(RunnerLock::lease())
        .migrations([
            &datamig_tests::count_runs::MIGRATION,
            &datamig_tests::bump_items::MIGRATION,
            &copy_items::MIGRATION,
        ]);

    let report = migrator.run().await?;
    assert_eq!(
        report
            .applied
            .iter()
            .map(|a| a.id.as_str())
            .collect::<Vec<_>>(),
        vec![COUNT_RUNS, BUMP_ITEMS, "20240301_0000_copy_items"]
    );
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM item_copies").await?,
        1000
    );
    assert_eq!(counter(db.pool()).await?, 1);
    assert!(item_values(db.pool()).await?.iter().all(|v| *v == 1));
    // The testing helpers run a migration again and compare, through the pooler.
    datamig::testing::assert_idempotent_with(&migrator, "20240301_0000_copy_items").await?;
    let check = datamig::testing::check_idempotent(&migrator, BUMP_ITEMS).await?;
    assert!(!check.is_idempotent(), "bump_items adds one again");
    assert_eq!(check.changes.len(), 1, "{check:?}");
    assert_eq!(check.changes[0].table, "public.items");
    assert_eq!(check.changes[0].only_before.len(), 5, "{check:?}");
    assert!(check.changes[0].only_after[0].contains(",2)"), "{check:?}");

    let statuses = migrator.status().await?;
    assert!(statuses.iter().all(|s| s.state == datamig::State::Applied));
    assert!(migrator.lock_holders().await?.is_empty());
    assert!(migrator.doctor().await?.lock_holders.is_empty());
    let through = datamig::fingerprint(&pool).await?;
    assert_eq!(through, datamig::fingerprint(db.pool()).await?);
    Ok(())
}

#[tokio::test]
async fn eight_concurrent_runs_through_pgbouncer_apply_each_migration_once() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    let bouncer = PgBouncer::start(db.url()).await?;
    let url = bouncer.url(db.url())?;

    let children: Vec<_> = (0..8)
        .map(|_| datamig(&url, &["--lock", "lease", "run"]).spawn())
        .collect::<Result<_, _>>()?;
    let mut appliers = 0;
    for child in children {
        let output = child.wait_with_output().await?;
        assert!(
            output.status.success(),
            "exit {:?}: {}",
            output.status.code(),
            text(&output.stderr)
        );
        if text(&output.stdout).contains(&format!("applied {COUNT_RUNS}")) {
            appliers += 1;
        }
    }
    assert_eq!(appliers, 1, "exactly one runner applies count_runs");
    assert_applied_once(db.pool()).await?;
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT count(*) FROM datamig_runs WHERE outcome = 'succeeded'"
        )
        .await?,
        2,
        "one successful attempt recorded per migration"
    );
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM datamig_ledger_lease").await?,
        0,
        "every runner gave its lease up"
    );
    Ok(())
}

#[tokio::test]
async fn kills_at_random_instants_through_pgbouncer_lose_nothing() -> anyhow::Result<()> {
    let kills: u64 = std::env::var("DATAMIG_POOLER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let (mut instants, seed) = Instants::from_env()?;
    let server = datamig::testing::postgres().await?;
    let bouncer = PgBouncer::start(server.url()).await?;

    let mut done = 0;
    let mut killed_holding = 0;
    while done < kills {
        let wave = (kills - done).min(5);
        let mut runs = Vec::new();
        for _ in 0..wave {
            let db = datamig::testing::postgres().await?;
            create_fixture_tables(db.pool()).await?;
            switch_on(db.pool(), "slow_batches").await?;
            let url = bouncer.url(db.url())?;
            let delay = Duration::from_millis(instants.next_millis(1500));
            runs.push(async move {
                let mut child =
                    datamig(&url, &["--lock", "lease", "--lease-ttl", "2s", "run"]).spawn()?;
                tokio::time::sleep(delay).await;
                child.start_kill()?; // SIGKILL: the lease stays behind until it expires
                child.wait().await?;
                let holding = scalar(
                    db.pool(),
                    "SELECT count(*) FROM datamig_ledger_lease WHERE expires_at > clock_timestamp()",
                )
                .await
                .unwrap_or(0);
                sqlx::query("DELETE FROM fixture_switches")
                    .execute(db.pool())
                    .await?;
                let next = datamig(&url, &["--lock", "lease", "run", "--wait", "30s"])
                    .output()
                    .await?;
                anyhow::ensure!(
                    next.status.success(),
                    "the run after a kill failed: {}",
                    text(&next.stderr)
                );
                Ok::<_, anyhow::Error>((db, holding))
            });
        }
        for result in futures_util::future::join_all(runs).await {
            let (db, holding) = result?;
            assert_applied_once(db.pool()).await?;
            killed_holding += holding;
        }
        done += wave;
    }
    println!(
        "RELIABILITY pooler kill-at-any-instant: {kills} SIGKILLs through PgBouncer (seed {seed}), \
         {killed_holding} of them holding a live lease, nothing lost"
    );
    Ok(())
}

#[tokio::test]
async fn a_runner_frozen_past_its_lease_commits_nothing_after_another_took_over()
-> anyhow::Result<()> {
    let db = fixture_database(&["slow"]).await?;
    let bouncer = PgBouncer::start(db.url()).await?;
    let url = bouncer.url(db.url())?;
    let lease = ["--lock", "lease", "--lease-ttl", "2s"];

    // The first runner sits in count_runs' transaction (a 3 s pg_sleep) when it is frozen.
    let first = datamig(&url, &[&lease[..], &["run"]].concat()).spawn()?;
    wait_for_sleeping_migration(db.pool()).await?;
    send(&first, "-STOP")?;

    // Its lease runs out; the server ends its idle transaction; a second runner takes
    // over and finishes everything.
    let second = datamig(&url, &[&lease[..], &["run", "--wait", "60s"]].concat())
        .output()
        .await?;
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(
        text(&second.stdout).contains(&format!("applied {COUNT_RUNS}")),
        "{}",
        text(&second.stdout)
    );
    assert_applied_once(db.pool()).await?;

    // The first goes on, and must not commit anything.
    send(&first, "-CONT")?;
    let output = first.wait_with_output().await?;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(9), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the runner lost its lease on the migration lock before migration {COUNT_RUNS} could commit"
        )),
        "{stderr}"
    );
    assert_applied_once(db.pool()).await?;
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM datamig_runs").await?,
        2,
        "the frozen runner recorded nothing"
    );
    Ok(())
}

#[tokio::test]
async fn doctor_names_the_lease_holder_and_unlock_releases_a_dead_holders_lease()
-> anyhow::Result<()> {
    let db = fixture_database(&["slow"]).await?;
    let bouncer = PgBouncer::start(db.url()).await?;
    let url = bouncer.url(db.url())?;

    let mut holder = datamig(&url, &["--lock", "lease", "--lease-ttl", "10min", "run"]).spawn()?;
    let pid = holder.id().expect("running");
    wait_until(
        db.pool(),
        "SELECT count(*) FROM datamig_ledger_lease WHERE expires_at > clock_timestamp()",
    )
    .await?;
    let doctor = leased(&url, &["doctor"]).await?;
    let stdout = text(&doctor.stdout);
    assert!(
        stdout.contains(&format!(
            "runner lock: lease held by datamig/{}/{pid} (user postgres); it holds the lease until",
            datamig::__private::host_name()
        )),
        "{stdout}"
    );
    // A live holder is not released.
    let refused = leased(&url, &["unlock"]).await?;
    assert_eq!(refused.status.code(), Some(5), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains(&format!(
            "process {pid} on this host, which is still running"
        )),
        "{}",
        text(&refused.stderr)
    );

    holder.start_kill()?;
    holder.wait().await?;
    // Its lease would hold for ten minutes; its process is gone, so `unlock` removes it.
    let unlock = leased(&url, &["unlock"]).await?;
    assert!(unlock.status.success(), "{}", text(&unlock.stderr));
    assert!(
        text(&unlock.stdout).contains(&format!(
            "released the lock: removed the lease of datamig/{}/{pid} (its runner, process {pid} on this host, is gone)",
            datamig::__private::host_name()
        )),
        "{}",
        text(&unlock.stdout)
    );
    let run = leased(&url, &["run", "--wait", "5s"]).await?;
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert_applied_once(db.pool()).await?;
    Ok(())
}

#[tokio::test]
async fn runners_with_the_other_lock_keep_out_too() -> anyhow::Result<()> {
    let db = fixture_database(&["slow"]).await?;
    let bouncer = PgBouncer::start(db.url()).await?;
    let url = bouncer.url(db.url())?;

    // A runner connected directly holds the advisory lock: a leased one waits, and gives up.
    let direct = datamig(db.url(), &["run"]).spawn()?;
    wait_for_sleeping_migration(db.pool()).await?;
    let leased_run = leased(&url, &["run", "--wait", "1s"]).await?;
    assert_eq!(
        leased_run.status.code(),
        Some(5),
        "{}",
        text(&leased_run.stderr)
    );
    let output = direct.wait_with_output().await?;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_applied_once(db.pool()).await?;

    // A leased runner holds the lease: a direct one with the advisory lock waits too.
    let other = fixture_database(&["slow"]).await?;
    let other_url = bouncer.url(other.url())?;
    let leasing = datamig(&other_url, &["--lock", "lease", "run"]).spawn()?;
    wait_for_sleeping_migration(other.pool()).await?;
    let advisory = datamig(other.url(), &["run", "--wait", "1s"])
        .output()
        .await?;
    assert_eq!(
        advisory.status.code(),
        Some(5),
        "{}",
        text(&advisory.stderr)
    );
    let output = leasing.wait_with_output().await?;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_applied_once(other.pool()).await?;
    Ok(())
}

/// Workers through the pooler hold their ranges by lease: three runs with two workers each,
/// one SIGKILLed part-way; its ranges are taken over once their leases expire, and every key
/// is done exactly once.
#[tokio::test]
async fn workers_hold_their_ranges_by_lease_through_pgbouncer() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    datamig_tests::create_spread_tables(db.pool(), 3000, 20).await?;
    let bouncer = PgBouncer::start(db.url()).await?;
    let url = bouncer.url(db.url())?;
    let workers = |url: &str| {
        datamig_tests::command(
            env!("CARGO_BIN_EXE_datamig-workers"),
            url,
            &[
                "--lock",
                "lease",
                "--lease-ttl",
                "2s",
                "run",
                "--workers",
                "2",
                "--wait",
                "60s",
            ],
        )
    };
    let mut victim = workers(&url).spawn()?;
    let others: Vec<_> = (0..2)
        .map(|_| workers(&url).spawn())
        .collect::<Result<_, _>>()?;
    wait_until(
        db.pool(),
        "SELECT count(*) FROM (SELECT 1 FROM spread_log OFFSET 9) AS ten",
    )
    .await?;
    victim.start_kill()?;
    victim.wait().await?;
    for other in others {
        let output = other.wait_with_output().await?;
        assert!(output.status.success(), "{}", text(&output.stderr));
    }
    let last = workers(&url).output().await?;
    assert!(last.status.success(), "{}", text(&last.stderr));
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM spread WHERE v <> 1").await?,
        0,
        "every key once"
    );
    let (status, batches): (String, i64) =
        sqlx::query_as("SELECT status, batches FROM datamig_ledger WHERE id = $1")
            .bind("20250301_0000_spread_ids")
            .fetch_one(db.pool())
            .await?;
    assert_eq!(status, "applied");
    assert_eq!(
        batches,
        scalar(db.pool(), "SELECT count(*) FROM spread_log").await?,
        "every committed batch counted once"
    );
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT count(*) FROM datamig_runs WHERE outcome = 'succeeded' AND action IN ('apply', 'resume')"
        )
        .await?,
        1
    );
    Ok(())
}
