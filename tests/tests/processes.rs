//! Guarantees across processes: `datamig run` started several times at once, killed
//! half-way, failing, or kept waiting. The binary is `datamig-fixtures`, a user's own CLI
//! built with `datamig_cli::main()` and linked with the fixture migrations.

use std::process::Output;
use std::time::Duration;

use datamig_tests::{
    BUMP_ITEMS, COUNT_RUNS, counter, fixture_database, interrupt, item_values, scalar, send, text,
    wait_for_line, wait_for_lock_holder, wait_for_sleeping_migration, wait_until,
};
use tokio::io::{AsyncBufReadExt, BufReader};

fn datamig(url: &str, args: &[&str]) -> tokio::process::Command {
    datamig_tests::command(env!("CARGO_BIN_EXE_datamig-fixtures"), url, args)
}

#[tokio::test]
async fn four_concurrent_run_processes_apply_once() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;

    let children: Vec<_> = (0..4)
        .map(|_| datamig(db.url(), &["run"]).spawn())
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
    let skippers = outputs
        .iter()
        .filter(|o| text(&o.stdout).contains("0 applied, 0 pending, 2 already applied"))
        .count();
    assert_eq!(skippers, 3, "the others find it applied");
    assert_eq!(
        counter(db.pool()).await?,
        1,
        "the non-idempotent body ran exactly once"
    );
    assert!(
        item_values(db.pool()).await?.iter().all(|v| *v == 1),
        "every batch committed once"
    );
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM datamig_ledger").await?,
        2
    );
    Ok(())
}

#[tokio::test]
async fn a_run_killed_mid_migration_leaves_nothing_and_the_next_run_applies_once()
-> anyhow::Result<()> {
    let db = fixture_database(&["slow"]).await?;

    let mut child = datamig(db.url(), &["run"]).spawn()?;
    wait_for_sleeping_migration(db.pool()).await?; // inside the migration's transaction
    child.start_kill()?; // SIGKILL
    let status = child.wait().await?;
    assert!(!status.success());

    // The killed session's transaction is rolled back and its lock released by the server.
    assert_eq!(counter(db.pool()).await?, 0);
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM datamig_ledger").await?,
        0
    );

    sqlx::query("DELETE FROM fixture_switches")
        .execute(db.pool())
        .await?;
    let output = datamig(db.url(), &["run", "--wait", "10s"])
        .output()
        .await?;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(counter(db.pool()).await?, 1);
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM datamig_ledger").await?,
        2
    );
    Ok(())
}

#[tokio::test]
async fn a_run_killed_mid_batch_resumes_from_its_checkpoint_and_commits_each_batch_once()
-> anyhow::Result<()> {
    let db = fixture_database(&["slow_batches"]).await?;

    let mut child = datamig(db.url(), &["run"]).spawn()?;
    // Once some batches have committed, kill the process in the middle of one: inside a
    // batch's transaction, while the batch sleeps holding its rows (its session shows
    // `idle in transaction`).
    wait_until(
        db.pool(),
        "SELECT count(*) FROM datamig_ledger l, pg_stat_activity a
         WHERE l.id = '20240101_0001_bump_items' AND l.batches >= 3
           AND a.datname = current_database() AND a.application_name LIKE 'datamig/%'
           AND a.state = 'idle in transaction'",
    )
    .await?;
    child.start_kill()?;
    child.wait().await?;

    let (status, checkpoint, batches): (String, Option<String>, i64) =
        sqlx::query_as("SELECT status, checkpoint, batches FROM datamig_ledger WHERE id = $1")
            .bind(BUMP_ITEMS)
            .fetch_one(db.pool())
            .await?;
    assert_eq!(status, "running");
    let checkpoint: i64 = checkpoint.expect("a checkpoint").parse()?;
    assert_eq!(
        checkpoint,
        batches * 100,
        "the checkpoint is the last key of the last committed batch"
    );
    let values = item_values(db.pool()).await?;
    let done = usize::try_from(checkpoint)?;
    assert!(
        values[..done].iter().all(|v| *v == 1),
        "committed batches are there once"
    );
    assert!(
        values[done..].iter().all(|v| *v == 0),
        "the killed batch left nothing"
    );

    let status = datamig(db.url(), &["status"]).output().await?;
    assert!(
        text(&status.stdout).contains(&format!("{BUMP_ITEMS}  running")),
        "{}",
        text(&status.stdout)
    );

    sqlx::query("DELETE FROM fixture_switches")
        .execute(db.pool())
        .await?;
    let output = datamig(db.url(), &["run"]).output().await?;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        item_values(db.pool()).await?.iter().all(|v| *v == 1),
        "the same data as an uninterrupted run"
    );
    let (status, batches): (String, i64) =
        sqlx::query_as("SELECT status, batches FROM datamig_ledger WHERE id = $1")
            .bind(BUMP_ITEMS)
            .fetch_one(db.pool())
            .await?;
    assert_eq!((status.as_str(), batches), ("applied", 10));
    Ok(())
}

#[tokio::test]
async fn a_failing_migration_exits_4_and_names_it() -> anyhow::Result<()> {
    let db = fixture_database(&["fail"]).await?;

    let output = datamig(db.url(), &["run"]).output().await?;
    assert_eq!(
        output.status.code(),
        Some(4),
        "stderr: {}",
        text(&output.stderr)
    );
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "error: migration {COUNT_RUNS} failed: the fail switch is on"
        )),
        "{stderr}"
    );
    assert!(text(&output.stdout).is_empty(), "errors go to stderr only");
    assert_eq!(counter(db.pool()).await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_runner_kept_waiting_for_the_lock_exits_5() -> anyhow::Result<()> {
    let db = fixture_database(&["slow"]).await?;

    let holder = datamig(db.url(), &["run"]).spawn()?;
    wait_for_lock_holder(db.pool()).await?;
    let waiter = datamig(db.url(), &["run", "--wait", "200ms"])
        .output()
        .await?;
    assert_eq!(
        waiter.status.code(),
        Some(5),
        "stderr: {}",
        text(&waiter.stderr)
    );
    assert!(text(&waiter.stderr).contains("could not acquire the migration lock within 200ms"));

    let holder = holder.wait_with_output().await?;
    assert!(holder.status.success(), "{}", text(&holder.stderr));
    assert_eq!(counter(db.pool()).await?, 1);
    Ok(())
}

#[tokio::test]
async fn ctrl_c_stops_after_the_batch_in_progress_commits_and_says_so() -> anyhow::Result<()> {
    assert_stops_after_the_batch_in_progress("-INT").await
}

#[tokio::test]
async fn sigterm_stops_after_the_batch_in_progress_commits_and_says_so() -> anyhow::Result<()> {
    assert_stops_after_the_batch_in_progress("-TERM").await
}

async fn assert_stops_after_the_batch_in_progress(signal: &str) -> anyhow::Result<()> {
    let db = fixture_database(&["slow_batches"]).await?;

    let child = datamig(db.url(), &["run"]).spawn()?;
    wait_until(
        db.pool(),
        "SELECT count(*) FROM datamig_ledger WHERE status = 'running' AND batches >= 2",
    )
    .await?;
    send(&child, signal)?;
    let output = child.wait_with_output().await?;
    assert_eq!(output.status.code(), Some(130), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("stopping after the current transaction commits or rolls back"),
        "{stderr}"
    );
    let (checkpoint, batches): (String, i64) =
        sqlx::query_as("SELECT checkpoint, batches FROM datamig_ledger WHERE id = $1")
            .bind(BUMP_ITEMS)
            .fetch_one(db.pool())
            .await?;
    assert!(
        stderr.contains(&format!(
            "error: stopped on request: batch {batches} of {BUMP_ITEMS} committed (checkpoint {checkpoint}); \
             the next run resumes it; nothing is half-applied"
        )),
        "{stderr}"
    );
    let done = usize::try_from(batches * 100)?;
    let values = item_values(db.pool()).await?;
    assert!(values[..done].iter().all(|v| *v == 1) && values[done..].iter().all(|v| *v == 0));

    let resumed = datamig(db.url(), &["run"]).output().await?;
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    assert!(item_values(db.pool()).await?.iter().all(|v| *v == 1));
    Ok(())
}

#[tokio::test]
async fn a_second_ctrl_c_rolls_back_the_transaction_in_progress_and_says_so() -> anyhow::Result<()>
{
    let db = fixture_database(&["slow"]).await?;

    let mut child = datamig(db.url(), &["run"]).spawn()?;
    let mut stderr = BufReader::new(child.stderr.take().expect("piped")).lines();
    wait_for_sleeping_migration(db.pool()).await?;
    interrupt(&child)?;
    // The second once the first is acknowledged: what the process prints, not a delay.
    wait_for_line(
        &mut stderr,
        "stopping after the current transaction",
        Duration::from_secs(10),
    )
    .await?;
    interrupt(&child)?;
    let rest = wait_for_line(&mut stderr, "error: interrupted", Duration::from_secs(10)).await?;
    let output = child.wait_with_output().await?;
    let output = std::process::Output {
        stderr: rest.join("\n").into_bytes(),
        ..output
    };
    assert_eq!(output.status.code(), Some(130), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr)
            .contains("error: interrupted: the transaction in progress was rolled back"),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(
        counter(db.pool()).await?,
        0,
        "the migration in progress was rolled back"
    );
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM datamig_ledger").await?,
        0
    );

    sqlx::query("DELETE FROM fixture_switches")
        .execute(db.pool())
        .await?;
    let output = datamig(db.url(), &["run", "--wait", "10s"])
        .output()
        .await?;
    assert!(
        output.status.success(),
        "the lock died with the session: {}",
        text(&output.stderr)
    );
    assert_eq!(counter(db.pool()).await?, 1);
    Ok(())
}

#[tokio::test]
async fn two_signals_back_to_back_roll_back_the_transaction_in_progress() -> anyhow::Result<()> {
    let db = fixture_database(&["slow"]).await?;
    let child = datamig(db.url(), &["run"]).spawn()?;
    wait_for_sleeping_migration(db.pool()).await?;
    // Both at once: the second arrives while the first is being handled, and must not be
    // lost between two listeners.
    send(&child, "-INT")?;
    send(&child, "-TERM")?;
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await??;
    assert_eq!(output.status.code(), Some(130), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("the transaction in progress was rolled back"),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(counter(db.pool()).await?, 0, "rolled back, not committed");
    Ok(())
}

#[tokio::test]
async fn json_output_streams_one_progress_line_per_batch_then_the_result() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    let output = datamig(db.url(), &["--format", "json", "run"])
        .output()
        .await?;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let lines: Vec<serde_json::Value> = text(&output.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let (progress, result) = lines.split_at(lines.len() - 1);
    assert_eq!(progress.len(), 10);
    for (n, event) in progress.iter().enumerate() {
        assert_eq!(event["type"], "progress");
        assert_eq!(event["id"], BUMP_ITEMS);
        assert_eq!(event["batches"], n as u64 + 1);
        assert_eq!(event["keys_done"], (n as u64 + 1) * 100);
    }
    assert_eq!(result[0]["type"], "result");
    assert_eq!(result[0]["applied"][1]["id"], BUMP_ITEMS);
    assert_eq!(result[0]["applied"][1]["batches"], 10);
    assert_eq!(result[0]["applied"][1]["rows_affected"], 1000);
    Ok(())
}
