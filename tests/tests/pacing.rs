//! Self-pacing and the failure policy of long backfills, against a real server: a
//! batched migration with no batch settings runs flat out while nobody else uses the
//! database and pauses, saying why, once an application's session works beside it (the
//! test's own writer); a batch that runs past its statement timeout is split in halves,
//! and one that still does at `min_size` stops the migration naming its keys; an operator
//! cancels a backfill from another process and only `run --restart` starts it again.
//! On MariaDB too: flat out alone, pausing beside an application, and for a session that
//! waits for the batch's rows (a user without `PROCESS` sees only its own user's sessions).
//! Assertions are on progress events, the ledger and the rows, never on timing (but for
//! one lower bound: a walk that pauses takes at least its pauses).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datamig::prelude::*;
use datamig::{Error, Progress};
use datamig_tests::{BUMP_ITEMS, fixture_database, item_values, text};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::io::AsyncBufReadExt;

/// Marks every row; no batch settings at all, so datamig paces it.
#[datamig::migration(id = "20250601_0000_self_paced", batch(table = "paced", key = "id"))]
async fn self_paced(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE paced SET done = true WHERE {batch} AND NOT done",
        &batch,
    )
    .await?;
    Ok(())
}

/// The same with the pacing turned off: fixed batches of the default size.
#[datamig::migration(
    id = "20250601_0001_not_paced",
    batch(table = "paced", key = "id", pace = false)
)]
async fn not_paced(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE paced SET done = true WHERE {batch} AND NOT done",
        &batch,
    )
    .await?;
    Ok(())
}

/// Each batch costs 1 ms a key of server time: 400 keys take 400 ms, past the 300 ms
/// statement timeout; 200 keys fit.
#[datamig::migration(
    id = "20250601_0002_splits",
    statement_timeout = "300ms",
    batch(table = "paced", key = "id", size = 400, min_size = 50)
)]
async fn splits(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "SELECT pg_sleep(count(*) * 0.001) FROM paced WHERE {batch}",
        &batch,
    )
    .await?;
    ctx.execute_batch("UPDATE paced SET done = true WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// Key 300 takes 1 s however small its batch: no split fits the 300 ms timeout.
#[datamig::migration(
    id = "20250601_0003_stuck",
    statement_timeout = "300ms",
    batch(table = "paced", key = "id", size = 400, min_size = 50)
)]
async fn stuck(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE paced SET done = true WHERE {batch} AND (id <> 300 OR pg_sleep(1) IS NOT NULL)",
        &batch,
    )
    .await?;
    Ok(())
}

/// A database holding `paced (id, done)` with `rows` rows, whose setup sessions are gone:
/// then no session but the migrator's own is there.
async fn paced_database(rows: i64) -> anyhow::Result<datamig::testing::TestDatabase> {
    let db = datamig::testing::postgres().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE paced (id bigint PRIMARY KEY, done boolean NOT NULL DEFAULT false);
         INSERT INTO paced (id) SELECT n FROM generate_series(1, {rows}) AS n;
         CREATE TABLE app_counter (n bigint NOT NULL);
         INSERT INTO app_counter VALUES (0);"
    )))
    .execute(db.pool())
    .await?;
    sqlx::raw_sql("VACUUM ANALYZE paced")
        .execute(db.pool())
        .await?;
    db.pool().close().await;
    Ok(db)
}

/// A migrator of `migration` on a pool of its own, its progress events kept in `events`.
async fn migrator(
    db: &datamig::testing::TestDatabase,
    migration: &'static datamig::Migration,
    events: &Arc<Mutex<Vec<Progress>>>,
) -> anyhow::Result<Migrator<Postgres>> {
    let pool = PgPool::connect(db.url()).await?;
    let sink = Arc::clone(events);
    Ok(Migrator::new(pool)
        .migrations([migration])
        .on_progress(move |p| sink.lock().unwrap().push(p.clone())))
}

/// The application: one session updating a row of its own table in a loop, each
/// transaction holding it for a moment, until stopped.
struct App {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<u64>>,
}

impl App {
    async fn start(url: &str) -> anyhow::Result<Self> {
        let mut conn = PgConnection::connect(url).await?;
        sqlx::query("SELECT set_config('application_name', 'web-app', false)")
            .execute(&mut conn)
            .await?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut done = 0;
            while !flag.load(Ordering::Relaxed) {
                sqlx::query("UPDATE app_counter SET n = n + 1 WHERE pg_sleep(0.02) IS NOT NULL")
                    .execute(&mut conn)
                    .await?;
                done += 1;
            }
            Ok(done)
        });
        Ok(App { stop, task })
    }

    async fn stop(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?
    }
}

/// A walk alone, interrupted after three batches: each ran flat out, and each was larger
/// than the one before.
fn assert_three_growing_batches_flat_out(
    run: Result<(), Error>,
    events: &Arc<Mutex<Vec<Progress>>>,
) {
    assert!(matches!(run, Err(Error::Interrupted { .. })), "{run:?}");
    let alone = events.lock().unwrap().clone();
    assert_eq!(alone.len(), 3, "{alone:?}");
    for event in &alone {
        assert_eq!(
            event.pacing.as_deref(),
            Some("full speed: no other session active"),
            "{event:?}"
        );
        assert_eq!(event.pause_ms, 0, "{event:?}");
    }
    assert!(
        alone.windows(2).all(|w| w[1].batch_size > w[0].batch_size),
        "sizes grow on an idle database: {:?}",
        alone.iter().map(|e| e.batch_size).collect::<Vec<_>>()
    );
}

async fn done_rows(url: &str) -> anyhow::Result<i64> {
    let mut conn = PgConnection::connect(url).await?;
    let n = sqlx::query_scalar("SELECT count(*) FROM paced WHERE done")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok(n)
}

#[tokio::test]
async fn a_backfill_without_settings_runs_flat_out_alone_and_pauses_beside_an_application()
-> anyhow::Result<()> {
    let db = paced_database(200_000).await?;
    let migration = &self_paced::MIGRATION;
    assert!(migration.batch().is_some_and(datamig::BatchSpec::paces));

    // Nobody else: back-to-back batches, growing.
    let alone: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let first = migrator(&db, migration, &alone)
        .await?
        .interrupt_after_batches(3)
        .run()
        .await;
    assert_three_growing_batches_flat_out(first.map(|_| ()), &alone);

    // The application starts: the next batches are followed by pauses, and say why.
    let app = App::start(db.url()).await?;
    // Each event with the moment it came.
    let events: Arc<Mutex<Vec<(std::time::Instant, Progress)>>> = Arc::default();
    let sink = Arc::clone(&events);
    let second = Migrator::new(PgPool::connect(db.url()).await?)
        .migrations([migration])
        .on_progress(move |p| {
            sink.lock()
                .unwrap()
                .push((std::time::Instant::now(), p.clone()));
        })
        .interrupt_after_batches(3)
        .run()
        .await;
    assert!(
        matches!(second, Err(Error::Interrupted { .. })),
        "{second:?}"
    );
    let transactions = app.stop().await?;
    assert!(transactions > 0);
    let (when, beside): (Vec<_>, Vec<_>) = events.lock().unwrap().iter().cloned().unzip();
    assert_eq!(beside.len(), 3, "{beside:?}");
    for event in &beside {
        let pacing = event.pacing.as_deref().unwrap_or_default();
        assert!(
            pacing.starts_with("pausing ")
                && pacing.contains("ms: ")
                && pacing.contains("application session"),
            "{event:?}"
        );
        assert!(event.pause_ms > 0, "{event:?}");
    }
    // The pauses are slept, not only reported: between two batches' events, at least the
    // pause the first announced.
    for (pair, event) in when.windows(2).zip(&beside) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(event.pause_ms),
            "a pause of {} ms announced, the next batch's event {gap:?} later",
            event.pause_ms
        );
    }

    // Alone again, it finishes; every row done once, and the report counts the pauses.
    let rest: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let report = migrator(&db, migration, &rest).await?.run().await?;
    assert_eq!(report.applied.len(), 1);
    assert_eq!(done_rows(db.url()).await?, 200_000);
    let rest = rest.lock().unwrap().clone();
    assert!(
        rest.last()
            .and_then(|e| e.pacing.as_deref())
            .is_some_and(|p| p.starts_with("full speed")),
        "{:?}",
        rest.last()
    );
    Ok(())
}

#[tokio::test]
async fn pace_false_keeps_fixed_batches_and_reports_no_pacing() -> anyhow::Result<()> {
    let db = paced_database(25_000).await?;
    let migration = &not_paced::MIGRATION;
    assert!(migration.batch().is_some_and(|b| !b.paces()));
    let app = App::start(db.url()).await?;
    let events: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let report = migrator(&db, migration, &events).await?.run().await;
    app.stop().await?;
    let report = report?;
    assert_eq!(report.applied[0].paced_ms, 0);
    let events = events.lock().unwrap().clone();
    assert_eq!(
        events.iter().map(|e| e.batch_keys).collect::<Vec<_>>(),
        [10_000, 10_000, 5_000]
    );
    assert!(events.iter().all(|e| e.pacing.is_none() && e.pause_ms == 0));
    Ok(())
}

#[tokio::test]
async fn a_batch_past_its_statement_timeout_is_split_in_halves() -> anyhow::Result<()> {
    let db = paced_database(1_000).await?;
    let events: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let report = migrator(&db, &splits::MIGRATION, &events)
        .await?
        .run()
        .await?;
    let applied = &report.applied[0];
    assert_eq!(done_rows(db.url()).await?, 1_000);
    // The first batch of 400 timed out and ran as 200; the size stays at what fits.
    let sizes: Vec<u64> = events
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.batch_keys)
        .collect();
    assert_eq!(sizes, [200, 200, 200, 200, 200], "{applied:?}");
    assert!(
        applied
            .notes
            .iter()
            .any(|n| n == "batch 1: ran past the statement timeout; tried again with 200 keys"),
        "{:?}",
        applied.notes
    );
    assert_eq!(applied.lock_retries, 0);
    Ok(())
}

#[tokio::test]
async fn a_batch_that_times_out_at_min_size_stops_the_migration_naming_its_keys()
-> anyhow::Result<()> {
    let db = paced_database(1_000).await?;
    let events: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let result = migrator(&db, &stuck::MIGRATION, &events).await?.run().await;
    // 1..400 holds key 300: 200 (1..200) fits, then 201..400, 201..300 and 201..250
    // (50 keys, fits), 251..300 at min_size times out.
    let Err(Error::MigrationFailed { id, message, .. }) = result else {
        panic!("expected the migration to fail: {result:?}");
    };
    assert_eq!(id, "20250601_0003_stuck");
    assert!(
        message.contains("the batch of keys after 250 up to 300 (50 keys, the smallest it may be split into: min_size = 50) ran past the statement timeout of 300 ms"),
        "{message}"
    );
    assert!(
        message.contains("canceling statement due to statement timeout"),
        "{message}"
    );
    let mut conn = PgConnection::connect(db.url()).await?;
    let (status, checkpoint): (String, Option<String>) =
        sqlx::query_as("SELECT status, checkpoint FROM datamig_ledger WHERE id = $1")
            .bind(&id)
            .fetch_one(&mut conn)
            .await?;
    assert_eq!(
        (status.as_str(), checkpoint.as_deref()),
        ("running", Some("250"))
    );
    let done: i64 = sqlx::query_scalar("SELECT count(*) FROM paced WHERE done")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(done, 250, "the batches before it committed, nothing after");
    let error: String = sqlx::query_scalar(
        "SELECT error FROM datamig_runs WHERE migration_id = $1 AND outcome = 'failed'",
    )
    .bind(&id)
    .fetch_one(&mut conn)
    .await?;
    assert!(error.contains("after 250 up to 300"), "{error}");
    Ok(())
}

fn datamig(url: &str, args: &[&str]) -> tokio::process::Command {
    datamig_tests::command(env!("CARGO_BIN_EXE_datamig-fixtures"), url, args)
}

#[tokio::test]
async fn a_backfill_cancelled_from_another_process_stops_and_starts_again_only_on_restart()
-> anyhow::Result<()> {
    // Ten batches of 100 keys, 100 ms each; `bump_items` adds one to each row it visits.
    let db = fixture_database(&["slow_batches"]).await?;
    let mut run = datamig(db.url(), &["run", "--format", "json"]).spawn()?;
    let mut lines = tokio::io::BufReader::new(run.stdout.take().expect("piped")).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            let event: serde_json::Value = serde_json::from_str(&line)?;
            if event["type"] == "progress" && event["batches"].as_u64() >= Some(2) {
                return Ok::<_, anyhow::Error>(());
            }
        }
        anyhow::bail!("the run ended before its second batch")
    })
    .await??;

    let cancel = datamig(
        db.url(),
        &["cancel", BUMP_ITEMS, "--reason", "wrong column"],
    )
    .output()
    .await?;
    assert!(cancel.status.success(), "{}", text(&cancel.stderr));
    assert!(
        text(&cancel.stdout).contains(&format!("{BUMP_ITEMS} is cancelled by postgres on ")),
        "{}",
        text(&cancel.stdout)
    );

    let rest: Vec<String> = tokio::time::timeout(Duration::from_secs(30), async {
        let mut rest = Vec::new();
        while let Some(line) = lines.next_line().await? {
            rest.push(line);
        }
        Ok::<_, std::io::Error>(rest)
    })
    .await??;
    let status = run.wait().await?;
    assert_eq!(status.code(), Some(13), "{rest:?}");
    let result: serde_json::Value = serde_json::from_str(rest.last().expect("a result"))?;
    assert_eq!(result["cancelled"][0]["migration_id"], BUMP_ITEMS);
    assert_eq!(result["cancelled"][0]["reason"], "wrong column");

    let (state, batches): (String, i64) =
        sqlx::query_as("SELECT status, batches FROM datamig_ledger WHERE id = $1")
            .bind(BUMP_ITEMS)
            .fetch_one(db.pool())
            .await?;
    assert_eq!(state, "running");
    assert!((2..10).contains(&batches), "stopped part-way: {batches}");
    let outcome: String = sqlx::query_scalar(
        "SELECT outcome FROM datamig_runs WHERE migration_id = $1
         AND action NOT IN ('cancel', 'restart') ORDER BY run_id DESC LIMIT 1",
    )
    .bind(BUMP_ITEMS)
    .fetch_one(db.pool())
    .await?;
    assert_eq!(outcome, "cancelled");
    let before = item_values(db.pool()).await?;

    // A plain run leaves it alone, and says so.
    let again = datamig(db.url(), &["run"]).output().await?;
    assert_eq!(again.status.code(), Some(13), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains(&format!("cancelled {BUMP_ITEMS}: by postgres on "))
            && text(&again.stdout).contains("`datamig run --restart` starts it again"),
        "{}",
        text(&again.stdout)
    );
    assert_eq!(item_values(db.pool()).await?, before);

    // `status` names it cancelled.
    let status = datamig(db.url(), &["status", "--format", "json"])
        .output()
        .await?;
    let listed: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    let line = listed
        .as_array()
        .and_then(|all| all.iter().find(|m| m["id"] == BUMP_ITEMS))
        .unwrap_or_else(|| panic!("{BUMP_ITEMS} in {listed}"));
    assert_eq!(line["state"], "cancelled", "{line}");
    assert_eq!(line["cancelled"]["reason"], "wrong column", "{line}");
    let human = datamig(db.url(), &["status"]).output().await?;
    assert!(
        text(&human.stdout).contains("1 cancelled"),
        "{}",
        text(&human.stdout)
    );

    // A resume is not a restart.
    let resume = datamig(db.url(), &["resume", BUMP_ITEMS]).output().await?;
    assert_eq!(resume.status.code(), Some(2), "{}", text(&resume.stdout));

    // --restart starts it from its first key: the rows done before the cancel are bumped
    // twice (the migration is not idempotent, on purpose), the others once.
    let restart = datamig(db.url(), &["run", "--restart"]).output().await?;
    assert!(restart.status.success(), "{}", text(&restart.stderr));
    let after = item_values(db.pool()).await?;
    let done_before = usize::try_from(batches)? * 100;
    assert!(after[..done_before].iter().all(|v| *v == 2), "{after:?}");
    assert!(after[done_before..].iter().all(|v| *v == 1), "{after:?}");
    let status: String = sqlx::query_scalar("SELECT status FROM datamig_ledger WHERE id = $1")
        .bind(BUMP_ITEMS)
        .fetch_one(db.pool())
        .await?;
    assert_eq!(status, "applied");
    Ok(())
}

#[tokio::test]
async fn cancel_names_what_it_cannot_cancel() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    let unknown = datamig(db.url(), &["cancel", "20990101_0000_nope"])
        .output()
        .await?;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        text(&unknown.stderr).contains("20990101_0000_nope"),
        "{}",
        text(&unknown.stderr)
    );
    let run = datamig(db.url(), &["run"]).output().await?;
    assert!(run.status.success(), "{}", text(&run.stderr));
    let applied = datamig(db.url(), &["cancel", BUMP_ITEMS]).output().await?;
    assert_eq!(applied.status.code(), Some(2));
    assert!(
        text(&applied.stderr).contains(&format!(
            "migration {BUMP_ITEMS} is applied; there is nothing to cancel"
        )),
        "{}",
        text(&applied.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn a_dry_run_estimates_a_batched_migration_and_changes_nothing() -> anyhow::Result<()> {
    let db = paced_database(200_000).await?;
    let events: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let report = migrator(&db, &self_paced::MIGRATION, &events)
        .await?
        .dry_run(true)
        .run()
        .await?;
    assert!(report.dry_run);
    let applied = &report.applied[0];
    // Three batches, each rolled back; the walk's keys and its time estimated from them.
    assert_eq!(applied.batches, 3, "{applied:?}");
    assert_eq!(applied.rows_affected, 1_000 + 2_000 + 4_000);
    assert_eq!(applied.estimated_keys, Some(200_000));
    assert!(applied.estimated_ms.is_some(), "{applied:?}");
    assert_eq!(done_rows(db.url()).await?, 0);
    let mut conn = PgConnection::connect(db.url()).await?;
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM datamig_ledger) + (SELECT count(*) FROM datamig_runs)",
    )
    .fetch_one(&mut conn)
    .await?;
    assert_eq!(rows, 0, "a dry run records nothing");

    // The CLI prints the estimate.
    let fixtures = fixture_database(&[]).await?;
    let dry = datamig(fixtures.url(), &["run", "--dry-run"])
        .output()
        .await?;
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    assert!(
        text(&dry.stdout).contains(&format!("would apply {BUMP_ITEMS}"))
            && text(&dry.stdout).contains("  estimate: about ")
            // (the keys are the planner's estimate: this table was never analysed)
            && text(&dry.stdout).contains(
                " keys, 100 rows a batch in the 3 batches tried; the whole migration would take \
                 about "
            ),
        "{}",
        text(&dry.stdout)
    );
    assert!(item_values(fixtures.pool()).await?.iter().all(|v| *v == 0));
    Ok(())
}

#[tokio::test]
async fn a_restart_after_a_cancel_with_workers_walks_every_range_from_the_first_key()
-> anyhow::Result<()> {
    let db = fixture_database(&["slow_batches"]).await?;
    let mut run = datamig(db.url(), &["run", "--workers", "2", "--format", "json"]).spawn()?;
    let mut lines = tokio::io::BufReader::new(run.stdout.take().expect("piped")).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            let event: serde_json::Value = serde_json::from_str(&line)?;
            if event["type"] == "progress" && event["batches"].as_u64() >= Some(2) {
                return Ok::<_, anyhow::Error>(());
            }
        }
        anyhow::bail!("the run ended before its second batch")
    })
    .await??;
    let cancel = datamig(db.url(), &["cancel", BUMP_ITEMS]).output().await?;
    assert!(cancel.status.success(), "{}", text(&cancel.stderr));
    tokio::time::timeout(Duration::from_secs(30), async {
        while lines.next_line().await?.is_some() {}
        Ok::<_, std::io::Error>(())
    })
    .await??;
    assert_eq!(run.wait().await?.code(), Some(13));
    let before = item_values(db.pool()).await?;
    assert!(
        before.contains(&1) && before.contains(&0),
        "stopped part-way: {before:?}"
    );

    // From the first key: every row bumped once more, those the ranges had done too.
    let restart = datamig(db.url(), &["run", "--restart", "--workers", "2"])
        .output()
        .await?;
    assert!(restart.status.success(), "{}", text(&restart.stderr));
    let after = item_values(db.pool()).await?;
    let missed = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| *a - *b != 1)
        .count();
    assert_eq!(
        missed, 0,
        "rows not bumped exactly once more by the restart"
    );
    let status: String = sqlx::query_scalar("SELECT status FROM datamig_ledger WHERE id = $1")
        .bind(BUMP_ITEMS)
        .fetch_one(db.pool())
        .await?;
    assert_eq!(status, "applied");
    Ok(())
}

/// The same pacing on MySQL and MariaDB (MariaDB 10.11 from `datamig::testing::mysql()`),
/// whose signals are the sessions of `information_schema.PROCESSLIST` and the lock waits of
/// InnoDB.
mod mysql {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use datamig::prelude::*;
    use datamig::{Error, Progress};
    use sqlx::{AssertSqlSafe, Connection, MySqlConnection, MySqlPool};

    /// Marks every row; no batch settings at all, so datamig paces it.
    #[datamig::migration(
        id = "20250601_0100_self_paced_mysql",
        batch(table = "paced", key = "id")
    )]
    async fn self_paced(ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
        ctx.execute_batch(
            "UPDATE paced SET done = 1 WHERE {batch} AND NOT done",
            &batch,
        )
        .await?;
        Ok(())
    }

    /// Set by the first batch of `holds_rows` once it has written its rows.
    static HOLDING: AtomicBool = AtomicBool::new(false);

    /// The same, and its first batch, holding its rows, waits (for at most 30 s) until
    /// another session waits for one of them.
    #[datamig::migration(
        id = "20250601_0101_holds_rows_mysql",
        batch(table = "paced", key = "id")
    )]
    async fn holds_rows(ctx: &mut Ctx<'_, MySql>, batch: Batch) -> anyhow::Result<()> {
        ctx.execute_batch(
            "UPDATE paced SET done = 1 WHERE {batch} AND NOT done",
            &batch,
        )
        .await?;
        if batch.number() == 1 {
            HOLDING.store(true, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let running = ctx
                    .fetch_i64(
                        "SELECT count(*) FROM information_schema.PROCESSLIST
                         WHERE DB = DATABASE() AND INFO LIKE 'UPDATE paced SET done = 2%'",
                    )
                    .await?;
                // Waiting for the lock, where this user may see it (`PROCESS`).
                let waiting = ctx
                    .fetch_i64(
                        "SELECT count(*) FROM information_schema.INNODB_TRX
                         WHERE trx_state = 'LOCK WAIT'",
                    )
                    .await
                    .unwrap_or(Some(1));
                if running == Some(1) && waiting.unwrap_or(0) >= 1 {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "nobody waited for the batch's rows within 30 s"
                );
                // InnoDB shows its transactions afresh only to a read at least 0.1 s after
                // the one before.
                ctx.fetch_i64("SELECT CAST(SLEEP(0.15) AS signed)").await?;
            }
        }
        Ok(())
    }

    /// A database holding `paced (id, done)` with `rows` rows and `app_counter`, whose
    /// setup sessions are gone: then no session but the migrator's own is there.
    async fn paced_database(rows: i64) -> anyhow::Result<datamig::testing::MySqlTestDatabase> {
        let db = datamig::testing::mysql().await?;
        for sql in [
            "CREATE TABLE paced (id bigint PRIMARY KEY, done boolean NOT NULL DEFAULT false) ENGINE=InnoDB".to_string(),
            format!(
                "INSERT INTO paced (id) {} SELECT n FROM s",
                datamig_tests::mysql_numbers(rows as u32)
            ),
            "CREATE TABLE app_counter (n bigint NOT NULL) ENGINE=InnoDB".to_string(),
            "INSERT INTO app_counter VALUES (0)".to_string(),
        ] {
            sqlx::query(AssertSqlSafe(sql)).execute(db.pool()).await?;
        }
        db.pool().close().await;
        Ok(db)
    }

    /// A migrator of `migration` on a pool of its own, its progress events kept in `events`.
    async fn migrator(
        url: &str,
        migration: &'static datamig::Migration,
        events: &Arc<Mutex<Vec<Progress>>>,
    ) -> anyhow::Result<Migrator<MySql>> {
        let sink = Arc::clone(events);
        Ok(Migrator::new(MySqlPool::connect(url).await?)
            .migrations([migration])
            .on_progress(move |p| sink.lock().unwrap().push(p.clone())))
    }

    async fn done_rows(url: &str) -> anyhow::Result<i64> {
        let mut conn = MySqlConnection::connect(url).await?;
        let n = sqlx::query_scalar("SELECT count(*) FROM paced WHERE done")
            .fetch_one(&mut conn)
            .await?;
        conn.close().await?;
        Ok(n)
    }

    /// The application: one session updating a row of its own table in a loop, each
    /// statement taking a moment, until stopped.
    struct App {
        stop: Arc<AtomicBool>,
        task: tokio::task::JoinHandle<anyhow::Result<u64>>,
    }

    impl App {
        async fn start(url: &str) -> anyhow::Result<Self> {
            let mut conn = MySqlConnection::connect(url).await?;
            let stop = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&stop);
            let task = tokio::spawn(async move {
                let mut done = 0;
                while !flag.load(Ordering::Relaxed) {
                    sqlx::query("UPDATE app_counter SET n = n + 1 WHERE SLEEP(0.02) = 0")
                        .execute(&mut conn)
                        .await?;
                    done += 1;
                }
                Ok(done)
            });
            Ok(App { stop, task })
        }

        async fn stop(self) -> anyhow::Result<u64> {
            self.stop.store(true, Ordering::Relaxed);
            self.task.await?
        }
    }

    #[tokio::test]
    async fn a_mysql_backfill_runs_flat_out_alone_and_pauses_beside_an_application()
    -> anyhow::Result<()> {
        let db = paced_database(200_000).await?;
        let migration = &self_paced::MIGRATION;

        // Nobody else: back-to-back batches, growing.
        let alone: Arc<Mutex<Vec<Progress>>> = Arc::default();
        let first = migrator(db.url(), migration, &alone)
            .await?
            .interrupt_after_batches(3)
            .run()
            .await;
        super::assert_three_growing_batches_flat_out(first.map(|_| ()), &alone);

        // The application starts: the next batches are followed by pauses, and say why.
        let app = App::start(db.url()).await?;
        let beside: Arc<Mutex<Vec<Progress>>> = Arc::default();
        let second = migrator(db.url(), migration, &beside)
            .await?
            .interrupt_after_batches(3)
            .run()
            .await;
        assert!(
            matches!(second, Err(Error::Interrupted { .. })),
            "{second:?}"
        );
        assert!(app.stop().await? > 0);
        let beside = beside.lock().unwrap().clone();
        assert_eq!(beside.len(), 3, "{beside:?}");
        for event in &beside {
            let pacing = event.pacing.as_deref().unwrap_or_default();
            assert!(
                pacing.starts_with("pausing ") && pacing.contains("1 application session active"),
                "{event:?}"
            );
            assert!(event.pause_ms > 0, "{event:?}");
        }

        // Alone again, it finishes; every row done once.
        let rest: Arc<Mutex<Vec<Progress>>> = Arc::default();
        let report = migrator(db.url(), migration, &rest).await?.run().await?;
        assert_eq!(report.applied.len(), 1);
        assert_eq!(done_rows(db.url()).await?, 200_000);
        assert!(
            rest.lock()
                .unwrap()
                .last()
                .and_then(|e| e.pacing.as_deref())
                .is_some_and(|p| p.starts_with("full speed")),
            "{:?}",
            rest.lock().unwrap().last()
        );
        Ok(())
    }

    #[tokio::test]
    async fn mysql_workers_do_not_count_their_runner_or_each_other_as_applications()
    -> anyhow::Result<()> {
        let db = paced_database(60_000).await?;
        let events: Arc<Mutex<Vec<Progress>>> = Arc::default();
        let report = migrator(db.url(), &self_paced::MIGRATION, &events)
            .await?
            .workers(2)
            .run()
            .await?;
        assert_eq!(report.applied.len(), 1);
        assert_eq!(report.applied[0].workers, 2);
        assert_eq!(done_rows(db.url()).await?, 60_000);
        let events = events.lock().unwrap().clone();
        assert!(events.len() >= 2, "{events:?}");
        // The other tests of this binary may slow the batches down (a signal of its own);
        // no session of this walk counts as an application's.
        for event in &events {
            let pacing = event.pacing.as_deref().unwrap_or_default();
            assert!(
                !pacing.is_empty() && !pacing.contains("application session"),
                "{:?}",
                events.iter().map(|e| e.pacing.clone()).collect::<Vec<_>>()
            );
        }
        Ok(())
    }

    /// Runs `holds_rows` on `url` while an application session (on `app_url`) updates a
    /// row of its first batch, and returns the first batch's progress event and what the
    /// application's update changed.
    async fn one_session_waits(url: &str, app_url: &str) -> anyhow::Result<(Progress, u64)> {
        HOLDING.store(false, Ordering::SeqCst);
        let events: Arc<Mutex<Vec<Progress>>> = Arc::default();
        let migrator = migrator(url, &holds_rows::MIGRATION, &events).await?;
        let run = tokio::spawn(async move { migrator.interrupt_after_batches(1).run().await });
        let deadline = Instant::now() + Duration::from_secs(30);
        while !HOLDING.load(Ordering::SeqCst) {
            anyhow::ensure!(Instant::now() < deadline, "the first batch never ran");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Waits for the batch's lock on row 1, until the batch commits.
        let mut app = MySqlConnection::connect(app_url).await?;
        let changed = sqlx::query("UPDATE paced SET done = 2 WHERE id = 1")
            .execute(&mut app)
            .await?
            .rows_affected();
        app.close().await?;
        let result = run.await?;
        assert!(
            matches!(result, Err(Error::Interrupted { .. })),
            "{result:?}"
        );
        let first = events.lock().unwrap().first().cloned();
        Ok((first.expect("one progress event"), changed))
    }

    #[tokio::test]
    async fn a_mysql_backfill_sees_a_session_waiting_for_its_rows_and_pauses_for_it()
    -> anyhow::Result<()> {
        let db = paced_database(20_000).await?;
        let (event, changed) = one_session_waits(db.url(), db.url()).await?;
        let pacing = event.pacing.as_deref().unwrap_or_default();
        assert!(
            pacing.starts_with("pausing ")
                && pacing.contains("1 session waited for rows this backfill locked"),
            "{event:?}"
        );
        assert!(event.pause_ms > 0, "{event:?}");
        assert_eq!(changed, 1, "the application's update ran after the batch");

        // A user without the PROCESS privilege sees no lock waits, only its own user's
        // sessions: the backfill goes on, pausing for the session it sees.
        let mut admin = MySqlConnection::connect(db.url()).await?;
        let user = format!("p{}", std::process::id());
        for sql in [
            format!("CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY 'secret'"),
            format!("GRANT ALL ON `{}`.* TO '{user}'@'%'", db.name()),
            "UPDATE paced SET done = 0".to_string(),
        ] {
            sqlx::query(AssertSqlSafe(sql)).execute(&mut admin).await?;
        }
        let limited = {
            let rest = db.url().split_once('@').map_or("", |(_, r)| r);
            format!("mysql://{user}:secret@{rest}")
        };
        let mut ledger = MySqlConnection::connect(db.url()).await?;
        sqlx::query("DELETE FROM datamig_ledger")
            .execute(&mut ledger)
            .await?;
        ledger.close().await?;
        let waited = one_session_waits(&limited, &limited).await;
        sqlx::query(AssertSqlSafe(format!("DROP USER '{user}'@'%'")))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let (event, changed) = waited?;
        let pacing = event.pacing.as_deref().unwrap_or_default();
        assert!(
            pacing.starts_with("pausing ") && pacing.contains("1 application session active"),
            "{event:?}"
        );
        assert!(!pacing.contains("waited for rows"), "{event:?}");
        assert_eq!(changed, 1);
        Ok(())
    }
}
