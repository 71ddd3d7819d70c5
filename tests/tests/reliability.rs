//! Faults, load and bad input, with nothing lost. Each test prints a `RELIABILITY` line with
//! what it ran; RELIABILITY.md lists them.
//!
//! Long variants: `DATAMIG_RELIABILITY_KILLS` (default 50) kills, `DATAMIG_RELIABILITY_REPEAT`
//! (default 2) rounds of 16 runners, `DATAMIG_RELIABILITY_SEED` to replay the kill instants.

use std::time::{Duration, Instant};

use datamig::Fingerprint;
use datamig_tests::{
    BUMP_ITEMS, COUNT_RUNS, Instants, counter, create_fixture_tables, create_keyed_tables,
    fixture_database, item_values, scalar, send, switch_on, text, url_for, wait_for_lock_holder,
    wait_for_sleeping_migration, wait_until,
};
use sqlx::PgPool;

fn datamig(url: &str, args: &[&str]) -> tokio::process::Command {
    datamig_tests::command(env!("CARGO_BIN_EXE_datamig-fixtures"), url, args)
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The data, without the ledger (whose timestamps differ from run to run).
async fn data(pool: &PgPool) -> anyhow::Result<Fingerprint> {
    Ok(datamig::fingerprint(pool).await?)
}

/// After a complete run: every non-idempotent fixture applied once, every batch once.
async fn assert_complete(pool: &PgPool, reference: &Fingerprint) -> anyhow::Result<()> {
    assert_eq!(counter(pool).await?, 1, "count_runs applied exactly once");
    assert!(
        item_values(pool).await?.iter().all(|v| *v == 1),
        "every batch committed exactly once"
    );
    assert_eq!(
        &data(pool).await?,
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
    let succeeded: i64 = scalar(
        pool,
        "SELECT count(*) FROM datamig_runs WHERE outcome = 'succeeded'",
    )
    .await?;
    assert_eq!(
        succeeded, 2,
        "one successful attempt recorded per migration"
    );
    Ok(())
}

/// Where a killed run had got to, read from the ledger after the kill.
async fn stage(pool: &PgPool) -> String {
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
    let kills = env_number("DATAMIG_RELIABILITY_KILLS", 50);
    let (mut instants, seed) = Instants::from_env()?;

    let reference_db = datamig::testing::postgres().await?;
    create_fixture_tables(reference_db.pool()).await?;
    assert!(
        datamig(reference_db.url(), &["run"])
            .output()
            .await?
            .status
            .success()
    );
    let reference = data(reference_db.pool()).await?;

    let mut stages: std::collections::BTreeMap<String, u32> = Default::default();
    let mut done = 0;
    while done < kills {
        // A few at a time, each on a database of its own.
        let wave = (kills - done).min(5);
        let mut runs = Vec::new();
        for _ in 0..wave {
            let db = datamig::testing::postgres().await?;
            create_fixture_tables(db.pool()).await?;
            switch_on(db.pool(), "slow_batches").await?;
            // The run takes about 1.3 s: count_runs (0.2 s), then ten batches of 0.1 s.
            let delay = Duration::from_millis(instants.next_millis(1500));
            runs.push(async move {
                let mut child = datamig(db.url(), &["run"]).spawn()?;
                tokio::time::sleep(delay).await;
                child.start_kill()?; // SIGKILL: no cleanup of any kind
                child.wait().await?;
                let reached = stage(db.pool()).await;
                sqlx::query("DELETE FROM fixture_switches")
                    .execute(db.pool())
                    .await?;
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
        "RELIABILITY kill-at-any-instant: {kills} SIGKILLs (seed {seed}), nothing lost; killed {stages:?}"
    );
    Ok(())
}

/// After a complete run of `datamig-keyed`: both keyed backfills applied, every batch once.
async fn assert_keyed_complete(pool: &PgPool, reference: &Fingerprint) -> anyhow::Result<()> {
    let (uuid_ones, pair_ones): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM keyed_uuid WHERE v = 1),
                (SELECT count(*) FROM keyed_pair WHERE v = 1)",
    )
    .fetch_one(pool)
    .await?;
    assert_eq!(
        (uuid_ones, pair_ones),
        (500, 500),
        "every batch committed exactly once"
    );
    assert_eq!(
        &data(pool).await?,
        reference,
        "the same data as an uninterrupted run"
    );
    let applied = scalar(
        pool,
        "SELECT count(*) FROM datamig_ledger WHERE status = 'applied'",
    )
    .await?;
    assert_eq!(applied, 2);
    Ok(())
}

#[tokio::test]
async fn kills_at_random_instants_lose_nothing_with_uuid_and_composite_keys() -> anyhow::Result<()>
{
    let kills = env_number("DATAMIG_RELIABILITY_KEYED_KILLS", 20);
    let (mut instants, seed) = Instants::from_env()?;
    let keyed = |url: &str, args: &[&str]| {
        datamig_tests::command(env!("CARGO_BIN_EXE_datamig-keyed"), url, args)
    };
    let reference_db = datamig::testing::postgres().await?;
    create_keyed_tables(reference_db.pool()).await?;
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
            let db = datamig::testing::postgres().await?;
            create_keyed_tables(db.pool()).await?;
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
                    "SELECT coalesce(sum(batches), 0)::bigint FROM datamig_ledger",
                )
                .await
                .unwrap_or(0);
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
            assert_keyed_complete(db.pool(), &reference).await?;
            *stages.entry(reached).or_default() += 1;
        }
        done += wave;
    }
    println!(
        "RELIABILITY kill-at-any-instant (UUID and composite keys): {kills} SIGKILLs (seed {seed}), \
         nothing lost; killed {stages:?}"
    );
    Ok(())
}

#[tokio::test]
async fn sixteen_runners_at_once_apply_each_migration_once_and_all_exit_0() -> anyhow::Result<()> {
    let rounds = env_number("DATAMIG_RELIABILITY_REPEAT", 2);
    for _ in 0..rounds {
        let db = datamig::testing::postgres().await?;
        create_fixture_tables(db.pool()).await?;
        let reference = {
            let other = datamig::testing::postgres().await?;
            create_fixture_tables(other.pool()).await?;
            assert!(
                datamig(other.url(), &["run"])
                    .output()
                    .await?
                    .status
                    .success()
            );
            data(other.pool()).await?
        };
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
        "RELIABILITY many-runners: {rounds} rounds of 16 concurrent `datamig run`, each migration applied once, all exit 0"
    );
    Ok(())
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
        assert!(text(&output.stderr).contains("could not acquire the migration lock within 300ms"));
        // Exit 5 already says it gave up while the holder kept the lock (a waiter that
        // waited it out would have taken the lock and exited 0); the wall time adds the
        // start of 16 processes at once on a small machine (2.55 s seen on 2 cores).
        assert!(
            took < Duration::from_secs(5),
            "a waiter gave up only after {took:?}"
        );
    }
    assert!(holder.wait_with_output().await?.status.success());
    assert_eq!(counter(db.pool()).await?, 1);
    println!(
        "RELIABILITY lock-waiters: 16 runners behind a holder each exited 5 with the reason, within 2.5 s of a 300 ms wait"
    );
    Ok(())
}

/// Ends the runner's database session from another session.
async fn cut_runner_connection(pool: &PgPool) -> anyhow::Result<()> {
    let cut: i64 = scalar(
        pool,
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name LIKE 'datamig/%') AS cut",
    )
    .await?;
    anyhow::ensure!(cut >= 1, "no runner session to cut");
    Ok(())
}

#[tokio::test]
async fn a_connection_cut_mid_migration_fails_with_4_and_the_next_run_completes()
-> anyhow::Result<()> {
    let db = fixture_database(&["slow"]).await?;
    let child = datamig(db.url(), &["run"]).spawn()?;
    wait_for_sleeping_migration(db.pool()).await?;
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
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT count(*) FROM datamig_runs WHERE outcome = 'failed'"
        )
        .await?,
        1,
        "the failure is recorded"
    );

    sqlx::query("DELETE FROM fixture_switches")
        .execute(db.pool())
        .await?;
    assert!(datamig(db.url(), &["run"]).output().await?.status.success());
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
    assert!(
        text(&output.stderr).contains(&format!("migration {BUMP_ITEMS} failed: batch ")),
        "{}",
        text(&output.stderr)
    );
    let (checkpoint, batches): (String, i64) =
        sqlx::query_as("SELECT checkpoint, batches FROM datamig_ledger WHERE id = $1")
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

    sqlx::query("DELETE FROM fixture_switches")
        .execute(db.pool())
        .await?;
    assert!(datamig(db.url(), &["run"]).output().await?.status.success());
    assert!(item_values(db.pool()).await?.iter().all(|v| *v == 1));
    println!(
        "RELIABILITY lost-connections: cut mid-migration and mid-batch, exit 4, nothing half-applied, the next run resumed"
    );
    Ok(())
}

#[tokio::test]
async fn a_frozen_lock_holder_keeps_others_out_until_it_dies() -> anyhow::Result<()> {
    let db = fixture_database(&["slow"]).await?;
    let mut frozen = datamig(db.url(), &["run"]).spawn()?;
    wait_for_sleeping_migration(db.pool()).await?;
    send(&frozen, "-STOP")?;

    let other = datamig(db.url(), &["run", "--wait", "500ms"])
        .output()
        .await?;
    assert_eq!(
        other.status.code(),
        Some(5),
        "never two runners in the critical section"
    );
    let unlock = datamig(db.url(), &["unlock"]).output().await?;
    assert_eq!(
        unlock.status.code(),
        Some(5),
        "a frozen process is alive: {}",
        text(&unlock.stderr)
    );

    frozen.start_kill()?;
    frozen.wait().await?;
    sqlx::query("DELETE FROM fixture_switches")
        .execute(db.pool())
        .await?;
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
        "RELIABILITY dead-lock-holder: a frozen holder kept others out (exit 5) and unlock refused; once killed, its lock went with its session"
    );
    Ok(())
}

#[tokio::test]
async fn the_application_is_not_blocked_longer_than_a_batch() -> anyhow::Result<()> {
    let db = fixture_database(&["slow_batches"]).await?;
    let child = datamig(db.url(), &["run"]).spawn()?;
    wait_until(
        db.pool(),
        "SELECT count(*) FROM datamig_ledger WHERE status = 'running'",
    )
    .await?;
    // The application updates the rows of the batch in progress (just past the
    // checkpoint) until the migration is applied; its own lock_timeout is 1 s, ten times a
    // batch. A write that waits is one that met a batch holding its rows.
    let mut app = db.pool().acquire().await?;
    sqlx::query("SET lock_timeout = '1s'")
        .execute(&mut *app)
        .await?;
    let mut longest = Duration::ZERO;
    let (mut writes, mut waited) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, checkpoint): (String, Option<String>) =
            sqlx::query_as("SELECT status, checkpoint FROM datamig_ledger WHERE id = $1")
                .bind(BUMP_ITEMS)
                .fetch_one(db.pool())
                .await?;
        if status == "applied" {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the migration did not finish in 60 s"
        );
        let target = checkpoint.map_or(Ok(0), |c| c.parse::<i64>())? + 50;
        let started = Instant::now();
        sqlx::query("UPDATE items SET v = v WHERE id = $1")
            .bind(target)
            .execute(&mut *app)
            .await?;
        let took = started.elapsed();
        longest = longest.max(took);
        writes += 1;
        if took >= Duration::from_millis(20) {
            waited += 1;
        }
    }
    assert!(
        waited > 0,
        "no application write overlapped a batch holding its rows ({writes} writes)"
    );
    let output = child.wait_with_output().await?;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        longest < Duration::from_millis(1000),
        "an application write waited {longest:?}"
    );
    assert!(item_values(db.pool()).await?.iter().all(|v| *v == 1));
    println!(
        "RELIABILITY busy-tables: {writes} application writes during a batched migration, {waited} of them waited for a batch's rows, none timed out, the longest waited {longest:?}"
    );
    Ok(())
}

/// Runs `datamig-fixtures ARGS` and checks its exit code and the start of its error.
async fn assert_fails(url: &str, args: &[&str], code: i32, error: &str) -> anyhow::Result<()> {
    // As a user runs it: without RUST_BACKTRACE.
    let output = datamig(url, args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .await?;
    assert_eq!(output.status.code(), Some(code), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(stderr.contains(error), "expected {error:?} in: {stderr}");
    assert!(
        !stderr.contains("stack backtrace") && !stderr.contains("RUST_BACKTRACE"),
        "no stack trace: {stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn bad_input_is_named_with_its_exit_code_and_changes_nothing() -> anyhow::Result<()> {
    let mut cases = 0;
    // A migration that returns an error, one that panics, a statement timeout: exit 4.
    for (switch, args, error) in [
        (
            "fail",
            &["run"][..],
            format!(
                "error: migration {COUNT_RUNS} failed: the fail switch is on; its changes were rolled back"
            ),
        ),
        (
            "panic",
            &["run"][..],
            format!(
                "error: migration {COUNT_RUNS} panicked: the panic switch is on; its changes were rolled back"
            ),
        ),
        (
            "slow",
            &["run", "--statement-timeout", "200ms"][..],
            "canceling statement due to statement timeout (SQLSTATE 57014)".to_string(),
        ),
    ] {
        let db = datamig::testing::postgres().await?;
        create_fixture_tables(db.pool()).await?;
        switch_on(db.pool(), switch).await?;
        let before = data(db.pool()).await?;
        assert_fails(db.url(), args, 4, &error).await?;
        assert_eq!(data(db.pool()).await?, before, "{switch}: nothing changed");
        assert_eq!(
            scalar(
                db.pool(),
                "SELECT count(*) FROM datamig_runs WHERE outcome = 'failed'"
            )
            .await?,
            1
        );
        cases += 1;
    }

    // A migration on a missing table: exit 4, the relation named.
    let db = fixture_database(&[]).await?;
    sqlx::query("DROP TABLE counter").execute(db.pool()).await?;
    let before = data(db.pool()).await?;
    assert_fails(
        db.url(),
        &["run"],
        4,
        "relation \"counter\" does not exist (SQLSTATE 42P01)",
    )
    .await?;
    assert_eq!(data(db.pool()).await?, before);
    cases += 1;

    // Another tool's table where the ledger should be: exit 2, the missing columns named.
    let db = fixture_database(&[]).await?;
    sqlx::query("CREATE TABLE datamig_ledger (id text PRIMARY KEY, note text)")
        .execute(db.pool())
        .await?;
    let before = data(db.pool()).await?;
    let shape = "error: the table \"datamig_ledger\" is not a datamig ledger: it lacks the columns checksum, revision, description";
    assert_fails(db.url(), &["run"], 2, shape).await?;
    assert_fails(db.url(), &["status"], 2, shape).await?;
    assert_eq!(data(db.pool()).await?, before);
    cases += 1;

    // A tampered checkpoint: exit 2, named; the batches already done stay as they are.
    let db = fixture_database(&["fail_batch_3"]).await?;
    assert_fails(db.url(), &["run"], 4, "batch 3 failed on purpose").await?;
    sqlx::query("DELETE FROM fixture_switches")
        .execute(db.pool())
        .await?;
    sqlx::query("UPDATE datamig_ledger SET checkpoint = 'two hundred' WHERE id = $1")
        .bind(BUMP_ITEMS)
        .execute(db.pool())
        .await?;
    let before = data(db.pool()).await?;
    assert_fails(
        db.url(),
        &["run"],
        2,
        &format!(
            "the ledger's checkpoint of {BUMP_ITEMS} is \"two hundred\", which this migration \
             cannot resume from"
        ),
    )
    .await?;
    assert_eq!(data(db.pool()).await?, before);
    cases += 1;

    // A tampered checksum is drift: exit 3, nothing runs.
    sqlx::query("UPDATE datamig_ledger SET checksum = 'tampered' WHERE id = $1")
        .bind(COUNT_RUNS)
        .execute(db.pool())
        .await?;
    assert_fails(
        db.url(),
        &["run"],
        3,
        &format!("1 applied migration(s) changed since they were applied: {COUNT_RUNS}"),
    )
    .await?;
    assert_eq!(data(db.pool()).await?, before);
    cases += 1;

    // A ledger row no migration of this build has: reported, kept, exit 0.
    let db = fixture_database(&[]).await?;
    assert!(datamig(db.url(), &["run"]).output().await?.status.success());
    sqlx::query(
        "INSERT INTO datamig_ledger (id, checksum, revision, description, started_at, finished_at, duration_ms, rows_affected, host)
         VALUES ('20990101_0000_newer', 'x', 0, 'from a newer release', now(), now(), 1, 0, 'elsewhere')",
    )
    .execute(db.pool())
    .await?;
    let output = datamig(db.url(), &["run"]).output().await?;
    assert_eq!(output.status.code(), Some(0));
    assert!(text(&output.stderr).contains(
        "warning: the ledger has a row for 20990101_0000_newer, which this build does not know"
    ));
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM datamig_ledger").await?,
        3,
        "kept"
    );
    cases += 1;
    println!(
        "RELIABILITY bad-input: {cases} cases through the CLI, each named with its exit code, nothing changed"
    );
    Ok(())
}

/// Rewrites a URL for another user and password.
/// Resets the sequence of `counter_log` and analyses `items` (owned by another role).
#[datamig::migration(id = "20240801_0000_after_copy_as_migrator")]
async fn after_copy_as_migrator(
    ctx: &mut datamig::Ctx<'_, datamig::Postgres>,
) -> anyhow::Result<()> {
    ctx.reset_sequences(["counter_log"]).await?;
    ctx.analyze(["items"]).await?;
    Ok(())
}

#[tokio::test]
async fn a_role_that_is_not_superuser_and_owns_no_table_runs_every_migration() -> anyhow::Result<()>
{
    let db = fixture_database(&[]).await?;
    datamig_demo_migrations::schema().run(db.pool()).await?;
    datamig_demo_migrations::seed_users(db.pool(), 500).await?;
    sqlx::query("CREATE TABLE counter_log (id serial PRIMARY KEY)")
        .execute(db.pool())
        .await?;
    let role = format!("migrator_{}", db.name());
    for statement in [
        format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'migrator-pw' NOSUPERUSER NOCREATEDB NOCREATEROLE"
        ),
        format!(
            "GRANT CONNECT, TEMPORARY ON DATABASE {} TO {role}",
            db.name()
        ),
        format!("GRANT USAGE, CREATE ON SCHEMA public TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"),
        format!("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(db.pool())
            .await?;
    }
    let url = url_for(db.url(), &role, "migrator-pw")?;

    // The fixtures (a plain and a batched migration) through the CLI.
    let output = datamig(&url, &["run"]).output().await?;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(counter(db.pool()).await?, 1);

    // The demo migrations (the upsert builder stages rows in a temporary table) in process.
    let pool = sqlx::PgPool::connect(&url).await?;
    let demo = datamig::Migrator::new(pool.clone()).migrations([
        &datamig_demo_migrations::backfill_notification_settings::MIGRATION,
        &datamig_demo_migrations::normalize_user_emails::MIGRATION,
    ]);
    datamig::testing::assert_all_idempotent_with(&demo).await?;
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM notification_settings").await?,
        500
    );
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&pool)
            .await?;
    assert!(!superuser);

    // What needs more says so: ANALYZE of a table the role does not own.
    let err = datamig::Migrator::new(pool.clone())
        .migrations([&after_copy_as_migrator::MIGRATION])
        .run()
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot analyze items: only its owner (postgres) or a superuser may"),
        "{err}"
    );
    pool.close().await;
    println!(
        "RELIABILITY least-privilege: a NOSUPERUSER role owning no table ran the plain, batched and upsert migrations; ANALYZE said what it needs"
    );
    Ok(())
}
