//! What a `tracing` subscriber sees: the spans of a run, of each migration, of each batch
//! and of each copy chunk, nested as they happen, with ids, rows, durations and outcomes as
//! fields; and the CLI's log on stderr (text or JSON lines), apart from its results on
//! stdout.

use datamig::Migrator;
use datamig_tests::spans::{Closed, captured, spans_named};
use datamig_tests::{BUMP_ITEMS, COUNT_RUNS, bump_items, count_runs, text};

#[tokio::test]
async fn a_subscriber_sees_the_run_each_migration_and_each_batch_with_their_fields()
-> anyhow::Result<()> {
    captured();
    let db = datamig_tests::fixture_database(&[]).await?;
    let report = Migrator::new(db.pool().clone())
        .migrations([&count_runs::MIGRATION, &bump_items::MIGRATION])
        .run()
        .await?;
    assert_eq!(report.applied.len(), 2);

    let runs = spans_named("run");
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert_eq!(run.field("backend"), "postgres");
    assert_eq!(run.field("mode"), "run");
    assert_eq!(run.field("outcome"), "ok");
    assert_eq!(run.number("applied"), 2);
    assert_eq!(run.number("already_applied"), 0);
    assert!(run.fields.contains_key("duration_ms"), "{run:?}");

    let migrations = spans_named("migration");
    let migration = |id: &str| {
        migrations
            .iter()
            .find(|m| m.field("id") == id)
            .unwrap_or_else(|| panic!("no span for {id}: {migrations:?}"))
            .clone()
    };
    let once = migration(COUNT_RUNS);
    assert_eq!(once.field("outcome"), "applied");
    assert_eq!(once.field("action"), "apply");
    assert_eq!(once.field("batched"), "false");
    assert_eq!(once.number("rows"), 1);
    assert!(
        once.number("duration_ms") >= 200,
        "it sleeps 200 ms: {once:?}"
    );
    assert_eq!(
        once.parent.as_ref().map(|(name, _)| name.as_str()),
        Some("run")
    );
    let batched = migration(BUMP_ITEMS);
    assert_eq!(batched.field("outcome"), "applied");
    assert_eq!(batched.field("batched"), "true");
    assert_eq!(batched.number("rows"), 1000);
    assert_eq!(batched.number("batches"), 10);

    // Ten batches of 100 keys committed, each in its migration's span, numbered in order;
    // the look for more that found none is a span of its own.
    let batches: Vec<Closed> = spans_named("batch")
        .into_iter()
        .filter(|b| b.field("id") == BUMP_ITEMS)
        .collect();
    let committed: Vec<&Closed> = batches
        .iter()
        .filter(|b| b.field("outcome") == "committed")
        .collect();
    assert_eq!(committed.len(), 10, "{batches:?}");
    let numbers: Vec<u64> = committed.iter().map(|b| b.number("batch")).collect();
    assert_eq!(numbers, (1..=10).collect::<Vec<u64>>());
    for batch in &committed {
        assert_eq!(batch.number("keys"), 100, "{batch:?}");
        assert_eq!(batch.number("rows"), 100, "{batch:?}");
        assert_eq!(batch.number("size"), 100, "{batch:?}");
        assert!(batch.fields.contains_key("duration_ms"), "{batch:?}");
        let (parent, fields) = batch.parent.as_ref().expect("a parent");
        assert_eq!(parent, "migration");
        assert_eq!(fields.get("id").map(String::as_str), Some(BUMP_ITEMS));
    }
    assert!(
        batches
            .iter()
            .all(|b| ["committed", "nothing_left"].contains(&b.field("outcome"))),
        "{batches:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_subscriber_sees_a_copy_and_each_of_its_chunks() -> anyhow::Result<()> {
    captured();
    let source = datamig_tests::fixture_database(&[]).await?;
    let target = datamig_tests::empty_fixture_database().await?;
    // 4,000 items: the copy splits them in key ranges of about 1,000 rows.
    sqlx::raw_sql(
        "INSERT INTO items SELECT n, 0 FROM generate_series(1001, 4000) AS n; ANALYZE items",
    )
    .execute(source.pool())
    .await?;
    let report = datamig::copy::Copier::new(source.pool(), target.pool())
        .chunk_rows(1_000)
        .run()
        .await?;
    assert_eq!(report.rows, 4001);

    let copies = spans_named("copy");
    let copy = copies
        .iter()
        .find(|c| c.fields.get("rows").map(String::as_str) == Some("4001"))
        .unwrap_or_else(|| panic!("no copy span of 4001 rows: {copies:?}"));
    assert_eq!(copy.field("source"), "postgres");
    assert_eq!(copy.field("mode"), "empty");
    assert_eq!(copy.field("outcome"), "ok");
    assert_eq!(copy.number("tables"), 3);

    let chunks: Vec<Closed> = spans_named("copy_chunk")
        .into_iter()
        // The only copy of this test binary: each chunk is a child of its span.
        .filter(|c| c.parent.as_ref().is_some_and(|(name, _)| name == "copy"))
        .collect();
    let items: Vec<&Closed> = chunks
        .iter()
        .filter(|c| c.field("tables").split(',').any(|t| t.ends_with("items")))
        .collect();
    assert!(
        items.len() >= 3,
        "items is split in chunks of about 1,000 rows: {chunks:?}"
    );
    let rows: u64 = chunks.iter().map(|c| c.number("rows")).sum();
    assert_eq!(rows, 4001, "{chunks:?}");
    for chunk in &chunks {
        assert_eq!(chunk.field("outcome"), "committed");
        assert!(
            chunk.number("bytes") > 0 || chunk.number("rows") == 0,
            "{chunk:?}"
        );
        assert!(chunk.fields.contains_key("duration_ms"), "{chunk:?}");
    }
    Ok(())
}

/// The demo binary's log: JSON lines on stderr with the spans' fields; stdout holds only
/// the results.
#[tokio::test]
async fn the_cli_logs_json_lines_on_stderr_and_keeps_results_on_stdout() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    datamig_demo_migrations::schema().run(db.pool()).await?;
    sqlx::query("INSERT INTO users (email) SELECT 'user' || n || '@example.com' FROM generate_series(1, 50) AS n")
        .execute(db.pool())
        .await?;
    let output = datamig_tests::command(
        env!("CARGO_BIN_EXE_datamig-demo"),
        db.url(),
        &[
            "run",
            "--format",
            "json",
            "--log-format",
            "json",
            "--log",
            "datamig=info",
        ],
    )
    .env_remove("RUST_LOG")
    .output()
    .await?;
    assert!(output.status.success(), "{}", text(&output.stderr));
    // stdout: the run's JSON lines (progress events, then the result), nothing else.
    let stdout = text(&output.stdout);
    for line in stdout.lines() {
        let value: serde_json::Value = serde_json::from_str(line)?;
        assert!(value.get("type").is_some(), "not a result line: {line}");
    }
    // stderr: one JSON object a line, with the span it belongs to.
    let stderr = text(&output.stderr);
    let logged: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let applied: Vec<&serde_json::Value> = logged
        .iter()
        .filter(|e| e["fields"]["message"] == "migration applied")
        .collect();
    assert_eq!(applied.len(), 2, "{stderr}");
    assert!(
        applied.iter().any(|e| e["span"]["name"] == "migration"
            && e["span"]["id"] == "20241114_0930_backfill_notification_settings"
            && e["fields"]["rows"] == 50),
        "{stderr}"
    );
    assert!(
        logged
            .iter()
            .any(|e| e["fields"]["message"] == "run finished"
                && e["fields"]["applied"] == 2
                && e["span"]["name"] == "run"),
        "{stderr}"
    );

    // Text, filtered by RUST_LOG: the run again applies nothing, and says so.
    let output = datamig_tests::command(env!("CARGO_BIN_EXE_datamig-demo"), db.url(), &["run"])
        .env("RUST_LOG", "datamig=info")
        .output()
        .await?;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("run finished") && stderr.contains("applied=0"),
        "{stderr}"
    );
    assert!(!text(&output.stdout).contains("run finished"));

    // A filter that does not parse is a usage error, named.
    let output = datamig_tests::command(
        env!("CARGO_BIN_EXE_datamig-demo"),
        db.url(),
        &["status", "--log", "datamig=loud"],
    )
    .output()
    .await?;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("invalid log filter \"datamig=loud\""),
        "{}",
        text(&output.stderr)
    );
    Ok(())
}
