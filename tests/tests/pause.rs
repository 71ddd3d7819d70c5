//! Pause and resume: an operator pauses a running backfill from another process; it stops
//! after the batch in progress commits, runs skip it, `status` and `check` show it, and a
//! resume lets the next run continue from its checkpoint. Every pause and resume is in the
//! run history with who, from where and when.

use std::time::Duration;

use datamig_tests::{BUMP_ITEMS, fixture_database, item_values, scalar, text};
use tokio::io::AsyncBufReadExt;

fn datamig(url: &str, args: &[&str]) -> tokio::process::Command {
    datamig_tests::command(env!("CARGO_BIN_EXE_datamig-fixtures"), url, args)
}

async fn ledger_batches(pool: &sqlx::PgPool) -> anyhow::Result<(String, i64)> {
    Ok(
        sqlx::query_as("SELECT status, batches FROM datamig_ledger WHERE id = $1")
            .bind(BUMP_ITEMS)
            .fetch_one(pool)
            .await?,
    )
}

#[tokio::test]
async fn a_backfill_paused_from_another_process_stops_after_its_batch_and_resumes_later()
-> anyhow::Result<()> {
    // Ten batches of 100 ms each.
    let db = fixture_database(&["slow_batches"]).await?;
    let mut run = datamig(db.url(), &["run", "--format", "json"]).spawn()?;
    let stdout = run.stdout.take().expect("piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    // Wait for the second committed batch of the backfill, as the runner reports it.
    let mut printed = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            let event: serde_json::Value = serde_json::from_str(&line)?;
            printed.push(line);
            if event["type"] == "progress" && event["batches"].as_u64() >= Some(2) {
                return Ok::<_, anyhow::Error>(());
            }
        }
        anyhow::bail!("the run ended before its second batch")
    })
    .await??;

    let pause = datamig(
        db.url(),
        &["pause", BUMP_ITEMS, "--reason", "replica lag on web"],
    )
    .output()
    .await?;
    assert!(pause.status.success(), "{}", text(&pause.stderr));
    assert!(
        text(&pause.stdout).contains(&format!("{BUMP_ITEMS} is paused by postgres on ")),
        "{}",
        text(&pause.stdout)
    );

    // The run stops the backfill after the batch in progress and exits 0, saying so.
    let rest: Vec<String> = tokio::time::timeout(Duration::from_secs(30), async {
        let mut rest = Vec::new();
        while let Some(line) = lines.next_line().await? {
            rest.push(line);
        }
        Ok::<_, std::io::Error>(rest)
    })
    .await??;
    let status = run.wait().await?;
    assert!(status.success(), "{printed:?} {rest:?}");
    let result: serde_json::Value = serde_json::from_str(rest.last().expect("a result"))?;
    assert_eq!(result["type"], "result");
    assert_eq!(result["paused"][0]["migration_id"], BUMP_ITEMS);
    assert_eq!(result["paused"][0]["reason"], "replica lag on web");
    assert!(result["applied"].as_array().is_some_and(|a| a.len() == 1));

    let (state, batches) = ledger_batches(db.pool()).await?;
    assert_eq!(state, "running");
    assert!((2..10).contains(&batches), "stopped part-way: {batches}");
    let values = item_values(db.pool()).await?;
    let done = usize::try_from(batches)? * 100;
    assert!(
        values[..done].iter().all(|v| *v == 1) && values[done..].iter().all(|v| *v == 0),
        "exactly the committed batches"
    );
    let (action, user, host, reason): (String, String, String, Option<String>) = sqlx::query_as(
        "SELECT action, db_user, host, reason FROM datamig_runs WHERE migration_id = $1
         ORDER BY run_id DESC LIMIT 1",
    )
    .bind(BUMP_ITEMS)
    .fetch_one(db.pool())
    .await?;
    assert_eq!(
        (action.as_str(), user.as_str(), reason.as_deref()),
        ("pause", "postgres", Some("replica lag on web"))
    );
    assert_eq!(host, datamig::__private::host_name());

    // status and check show it paused; a run skips it and changes nothing.
    let status = datamig(db.url(), &["status"]).output().await?;
    let shown = text(&status.stdout);
    assert!(
        shown.contains(&format!("{BUMP_ITEMS}  paused"))
            && shown.contains(&format!("paused by postgres on {host} at "))
            && shown.contains(&format!("{batches} batches done, checkpoint {done}")),
        "{shown}"
    );
    let check = datamig(db.url(), &["check"]).output().await?;
    assert_eq!(check.status.code(), Some(6));
    assert!(
        text(&check.stdout).contains(&format!("paused {BUMP_ITEMS}")),
        "{}",
        text(&check.stdout)
    );
    let skipped = datamig(db.url(), &["run"]).output().await?;
    assert!(skipped.status.success(), "{}", text(&skipped.stderr));
    assert!(
        text(&skipped.stdout).contains(&format!("paused {BUMP_ITEMS}: paused by postgres")),
        "{}",
        text(&skipped.stdout)
    );
    assert_eq!(ledger_batches(db.pool()).await?.1, batches);
    assert_eq!(item_values(db.pool()).await?, values);

    // Pausing again keeps the pause; resuming lifts it, and the next run finishes.
    let again = datamig(db.url(), &["pause", BUMP_ITEMS]).output().await?;
    assert!(again.status.success());
    let resume = datamig(db.url(), &["resume", BUMP_ITEMS]).output().await?;
    assert!(resume.status.success(), "{}", text(&resume.stderr));
    assert!(text(&resume.stdout).contains(&format!("resumed {BUMP_ITEMS}")));
    let finish = datamig(db.url(), &["run"]).output().await?;
    assert!(finish.status.success(), "{}", text(&finish.stderr));
    assert_eq!(ledger_batches(db.pool()).await?.0, "applied");
    assert!(item_values(db.pool()).await?.iter().all(|v| *v == 1));
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT count(*) FROM datamig_runs WHERE action IN ('pause', 'unpause')"
        )
        .await?,
        2,
        "one pause and one resume recorded"
    );

    // Nothing to pause or resume is an error that names why.
    let applied = datamig(db.url(), &["pause", BUMP_ITEMS]).output().await?;
    assert_eq!(applied.status.code(), Some(2));
    assert!(text(&applied.stderr).contains("is applied; there is nothing to pause"));
    let not_paused = datamig(db.url(), &["resume", BUMP_ITEMS]).output().await?;
    assert_eq!(not_paused.status.code(), Some(2));
    assert!(text(&not_paused.stderr).contains("is not paused; there is nothing to resume"));
    let unknown = datamig(db.url(), &["pause", "20991231_nope"])
        .output()
        .await?;
    assert_eq!(unknown.status.code(), Some(2));
    Ok(())
}

#[tokio::test]
async fn a_pause_on_sqlite_works_the_same() -> anyhow::Result<()> {
    use datamig::Migrator;
    let db = datamig::testing::sqlite().await?;
    sqlx::raw_sql(
        "CREATE TABLE counter (n INTEGER NOT NULL); INSERT INTO counter VALUES (0);
         CREATE TABLE fixture_switches (name TEXT PRIMARY KEY);
         CREATE TABLE items (id INTEGER PRIMARY KEY, v INTEGER NOT NULL);
         WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 1000)
         INSERT INTO items SELECT n, 0 FROM s;",
    )
    .execute(db.pool())
    .await?;
    let migrator = Migrator::new(db.pool().clone()).migrations([
        &datamig_tests::count_runs::MIGRATION,
        &datamig_tests::bump_items::MIGRATION,
    ]);
    let pause = migrator.pause(BUMP_ITEMS, None).await?;
    assert_eq!(pause.migration_id, BUMP_ITEMS);
    let report = migrator.run().await?;
    assert_eq!(report.paused.len(), 1);
    assert_eq!(
        report.applied.len(),
        1,
        "count_runs ran; the paused backfill did not"
    );
    let untouched: i64 = sqlx::query_scalar("SELECT sum(v) FROM items")
        .fetch_one(db.pool())
        .await?;
    assert_eq!(untouched, 0);
    let status = migrator.status().await?;
    let paused = status.iter().find(|s| s.id == BUMP_ITEMS).expect("listed");
    assert_eq!(paused.state, datamig::State::Paused);
    migrator.resume(BUMP_ITEMS).await?;
    assert_eq!(migrator.run().await?.applied.len(), 1);
    let done: i64 = sqlx::query_scalar("SELECT sum(v) FROM items")
        .fetch_one(db.pool())
        .await?;
    assert_eq!(done, 1000);
    Ok(())
}
