//! The `datamig` binary of the demo application, end to end against a real PostgreSQL:
//! output, JSON, exit codes, and one-line errors for bad connections.

use assert_cmd::Command;
use serde_json::Value;

fn datamig(url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_datamig-demo"));
    cmd.env("DATABASE_URL", url)
        .env_remove("DATAMIG_LEDGER_TABLE")
        .env_remove("DATAMIG_RUNS_TABLE");
    cmd
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A database with the demo schema (applied by sqlx, as a deploy would) and 20 users.
async fn demo_database() -> anyhow::Result<datamig::testing::TestDatabase> {
    let db = datamig::testing::postgres().await?;
    datamig_demo_migrations::schema().run(db.pool()).await?;
    sqlx::query("INSERT INTO users (email) SELECT ' User' || n || '@Example.com' FROM generate_series(1, 20) AS n")
        .execute(db.pool())
        .await?;
    Ok(db)
}

const BACKFILL: &str = "20241114_0930_backfill_notification_settings";
const NORMALIZE: &str = "20241120_1200_normalize_user_emails";

#[tokio::test]
async fn status_lists_the_linked_demo_migrations_as_pending() -> anyhow::Result<()> {
    let db = demo_database().await?;
    let output = datamig(db.url()).arg("status").output()?;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains(&format!("{BACKFILL}  pending")), "{text}");
    assert!(
        text.contains(&format!("{NORMALIZE}           pending")),
        "{text}"
    );
    assert!(
        text.contains("Give every existing user the default notification settings"),
        "{text}"
    );
    assert!(
        text.ends_with("0 applied, 2 pending, 0 running, 0 drifted, 0 unknown\n"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn run_applies_then_finds_nothing_pending() -> anyhow::Result<()> {
    let db = demo_database().await?;
    let first = datamig(db.url())
        .args(["run", "--app-version", "9.9.9"])
        .output()?;
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let text = stdout(&first);
    assert!(
        text.contains(&format!("applied {BACKFILL}  20 rows")),
        "{text}"
    );
    assert!(
        text.contains("  20 users got default notification settings"),
        "{text}"
    );
    assert!(
        text.contains(&format!("applied {NORMALIZE}  20 rows")),
        "{text}"
    );
    assert!(
        text.ends_with("2 applied, 0 pending, 0 already applied\n"),
        "{text}"
    );
    assert!(
        stderr(&first).is_empty(),
        "nothing on stderr: {}",
        stderr(&first)
    );

    let second = datamig(db.url()).arg("run").output()?;
    assert_eq!(second.status.code(), Some(0));
    assert_eq!(stdout(&second), "0 applied, 0 pending, 2 already applied\n");
    Ok(())
}

#[tokio::test]
async fn json_output_is_json_lines_for_run_and_one_document_for_status() -> anyhow::Result<()> {
    let db = demo_database().await?;
    let run = datamig(db.url())
        .args(["--format", "json", "run", "--app-version", "1.0"])
        .output()?;
    assert!(run.status.success(), "{}", stderr(&run));
    // One JSON document a line: progress events of batched migrations, then the result.
    let lines: Vec<Value> = stdout(&run)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2, "{lines:?}");
    let progress = &lines[0];
    assert_eq!(progress["type"], "progress");
    assert_eq!(progress["id"], NORMALIZE);
    assert_eq!(progress["batches"], 1);
    assert_eq!(progress["keys_done"], 20);
    assert_eq!(progress["checkpoint"], 20);
    let report = &lines[1];
    assert_eq!(report["type"], "result");
    assert_eq!(report["dry_run"], false);
    assert_eq!(report["applied"][0]["id"], BACKFILL);
    assert_eq!(report["applied"][0]["rows_affected"], 20);
    assert_eq!(report["applied"][0]["rerun"], false);
    assert_eq!(
        report["applied"][0]["notes"][0],
        "20 users got default notification settings"
    );
    assert!(report["applied"][0]["duration_ms"].is_u64());
    assert_eq!(report["applied"][1]["id"], NORMALIZE);
    assert_eq!(report["already_applied"], Value::Array(vec![]));
    assert_eq!(report["unknown"], Value::Array(vec![]));

    let status = datamig(db.url())
        .args(["status", "--format", "json"])
        .output()?;
    let statuses: Value = serde_json::from_slice(&status.stdout)?;
    let first = &statuses[0];
    assert_eq!(first["id"], BACKFILL);
    assert_eq!(first["state"], "applied");
    assert_eq!(first["ledger"]["rows_affected"], 20);
    assert_eq!(first["ledger"]["app_version"], "1.0");
    assert_eq!(first["ledger"]["run_count"], 1);
    assert_eq!(first["ledger"]["checksum"].as_str().map(str::len), Some(64));
    assert_eq!(first["last_run"]["outcome"], "succeeded");
    assert_eq!(statuses.as_array().map(Vec::len), Some(2));
    Ok(())
}

#[tokio::test]
async fn a_dry_run_says_so_and_keeps_nothing() -> anyhow::Result<()> {
    let db = demo_database().await?;
    let output = datamig(db.url()).args(["run", "--dry-run"]).output()?;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains(&format!("would apply {BACKFILL}  20 rows")),
        "{text}"
    );
    assert!(
        text.contains("dry run: every change was rolled back, nothing was recorded"),
        "{text}"
    );
    let settings: i64 = sqlx::query_scalar("SELECT count(*) FROM notification_settings")
        .fetch_one(db.pool())
        .await?;
    assert_eq!(settings, 0);
    let status = stdout(&datamig(db.url()).arg("status").output()?);
    assert!(
        status.ends_with("0 applied, 2 pending, 0 running, 0 drifted, 0 unknown\n"),
        "{status}"
    );
    Ok(())
}

/// Runs `datamig status` against `url` and checks: exit 2, one line on stderr containing
/// `expected`, nothing on stdout, and the password not shown.
fn assert_connection_error(url: &str, expected: &str) {
    let output = datamig(url)
        .arg("status")
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(2), "stderr: {}", stderr(&output));
    let err = stderr(&output);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("error: cannot connect to the database at "),
        "{err}"
    );
    assert!(err.contains(expected), "expected {expected:?} in {err}");
    assert!(
        !err.contains("secret-pw"),
        "the password is never printed: {err}"
    );
    assert!(stdout(&output).is_empty());
}

#[tokio::test]
async fn bad_connections_exit_2_with_one_line() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    // The test server's address and user, with a wrong password or a missing database.
    let options: sqlx::postgres::PgConnectOptions = db.url().parse()?;
    let (host, port, user) = (
        options.get_host(),
        options.get_port(),
        options.get_username(),
    );
    let host_and_port = format!("{host}:{port}");
    let url = db.url();

    assert_connection_error(
        &format!("postgres://{user}:secret-pw@{host_and_port}/{}", db.name()),
        "password authentication failed",
    );
    assert_connection_error(
        &url.replace(&format!("/{}", db.name()), "/no_such_database"),
        "database \"no_such_database\" does not exist",
    );
    assert_connection_error(
        "postgres://someone:secret-pw@127.0.0.1:1/app",
        "Connection refused",
    );
    Ok(())
}

#[test]
fn a_missing_or_unsupported_url_exits_2() {
    let output = datamig("").arg("status").output().expect("the binary runs");
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output),
        "error: no database given: set DATABASE_URL or pass --database-url\n"
    );

    let output = datamig("oracle://root@localhost/app")
        .arg("run")
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).starts_with("error: unsupported database URL oracle://root@localhost/app"),
        "{}",
        stderr(&output)
    );
    assert!(stderr(&output).contains("mysql://"), "{}", stderr(&output));
}

#[test]
fn an_unknown_option_exits_2() {
    let output = datamig("postgres://x@localhost/app")
        .args(["run", "--no-such-option"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--no-such-option"));
}

/// The demo binary against a SQLite file: schema from `--schema`, `run`, `check`, `doctor`,
/// `fingerprint`; a missing file is named with what to do.
#[tokio::test]
async fn the_cli_migrates_a_sqlite_file() -> anyhow::Result<()> {
    let db = datamig::testing::sqlite().await?;
    datamig_demo_migrations::sqlite_schema()
        .run(db.pool())
        .await?;
    datamig_demo_migrations::seed_users_sqlite(db.pool(), 30).await?;

    let output = datamig(db.url()).arg("check").output()?;
    assert_eq!(
        output.status.code(),
        Some(6),
        "pending: {}",
        stderr(&output)
    );

    let output = datamig(db.url())
        .args(["run", "--app-version", "9.9"])
        .output()?;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains(&format!("applied {BACKFILL}")), "{text}");
    assert!(text.contains(&format!("applied {NORMALIZE}")), "{text}");
    assert!(
        text.contains("30 users got default notification settings"),
        "{text}"
    );

    let output = datamig(db.url()).arg("check").output()?;
    assert!(output.status.success(), "{}", stdout(&output));
    let output = datamig(db.url()).arg("run").output()?;
    assert!(
        stdout(&output).contains("0 applied, 0 pending, 2 already applied"),
        "{}",
        stdout(&output)
    );

    let output = datamig(db.url()).arg("doctor").output()?;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("connection: ok (SQLite 3."), "{text}");
    assert!(text.contains("runner lock: free"), "{text}");

    let output = datamig(db.url())
        .args(["fingerprint", "--tables", "users", "--format", "json"])
        .output()?;
    assert!(output.status.success(), "{}", stderr(&output));
    let json: Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(json["tables"]["main.users"]["rows"], 30, "{json}");

    let app_version: String = sqlx::query_scalar(
        "SELECT app_version FROM datamig_ledger WHERE id = '20241114_0930_backfill_notification_settings'",
    )
    .fetch_one(db.pool())
    .await?;
    assert_eq!(app_version, "9.9");

    let missing = format!("{}-missing.db", db.url());
    let output = datamig(&missing).arg("status").output()?;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("unable to open database file")
            && stderr(&output).contains("?mode=rwc"),
        "{}",
        stderr(&output)
    );

    // A MySQL URL is taken; a server that does not answer is named, its password not.
    let output = datamig("mysql://u:secret@127.0.0.1:1/app")
        .arg("status")
        .output()?;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("cannot connect to the database at mysql://u:***@127.0.0.1:1/app")
            && !stderr(&output).contains("secret"),
        "{}",
        stderr(&output)
    );
    Ok(())
}

/// `run --schema` applies the SQLite schema migrations first, then the data migrations.
#[tokio::test]
async fn run_applies_the_sqlite_schema_first() -> anyhow::Result<()> {
    let db = datamig::testing::sqlite().await?;
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/schema/sqlite");
    let output = datamig(db.url())
        .args(["run", "--schema", schema])
        .output()?;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.starts_with(&format!(
            "schema: 2 schema migrations applied from {schema}\napplied {BACKFILL}"
        )),
        "{text}"
    );
    let again = datamig(db.url())
        .args(["run", "--schema", schema])
        .output()?;
    assert!(
        stdout(&again).starts_with("schema: 0 schema migrations applied"),
        "{}",
        stdout(&again)
    );
    Ok(())
}
