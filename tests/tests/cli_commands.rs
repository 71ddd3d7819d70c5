//! Every command of the demo `datamig` binary against a real PostgreSQL: output, JSON and
//! exit codes. (Connection errors are in `cli.rs`; interruption and progress, which need
//! slow migrations, in `tests/tests/processes.rs`.)

use std::process::Output;

use assert_cmd::Command;
use serde_json::Value;
use sqlx::{Connection, PgConnection};

const BACKFILL: &str = "20241114_0930_backfill_notification_settings";
const NORMALIZE: &str = "20241120_1200_normalize_user_emails";

fn datamig(url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_datamig-demo"));
    cmd.env("DATABASE_URL", url);
    cmd
}

fn run(url: &str, args: &[&str]) -> Output {
    datamig(url).args(args).output().expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn demo_database() -> anyhow::Result<datamig::testing::TestDatabase> {
    let db = datamig::testing::postgres().await?;
    datamig_demo_migrations::schema().run(db.pool()).await?;
    sqlx::query("INSERT INTO users (email) SELECT 'User' || n || '@example.com' FROM generate_series(1, 30) AS n")
        .execute(db.pool())
        .await?;
    Ok(db)
}

async fn scalar(db: &datamig::testing::TestDatabase, sql: &'static str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(db.pool()).await?)
}

#[tokio::test]
async fn check_exits_6_while_anything_is_pending_then_0_after_a_run() -> anyhow::Result<()> {
    let db = demo_database().await?;
    let before = run(db.url(), &["check"]);
    assert_eq!(before.status.code(), Some(6), "{}", stderr(&before));
    assert_eq!(
        stdout(&before),
        format!("pending {BACKFILL}\npending {NORMALIZE}\n2 pending, 0 drifted\n")
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'datamig%'"
        )
        .await?,
        0,
        "check changes nothing"
    );

    let json = run(db.url(), &["check", "--format", "json"]);
    let report: Value = serde_json::from_slice(&json.stdout)?;
    assert_eq!(report["pending"], serde_json::json!([BACKFILL, NORMALIZE]));
    assert_eq!(report["drifted"], serde_json::json!([]));

    assert_eq!(run(db.url(), &["run"]).status.code(), Some(0));
    let after = run(db.url(), &["check"]);
    assert_eq!(after.status.code(), Some(0));
    assert_eq!(stdout(&after), "0 pending, 0 drifted\n");
    Ok(())
}

#[tokio::test]
async fn drift_fails_check_with_3_and_verify_names_it_and_the_unknown_rows() -> anyhow::Result<()> {
    let db = demo_database().await?;
    assert!(run(db.url(), &["run"]).status.success());
    // The ledger as a newer or edited release would leave it.
    sqlx::raw_sql(
        "UPDATE datamig_ledger SET checksum = 'edited' WHERE id = '20241120_1200_normalize_user_emails';
         INSERT INTO datamig_ledger (id, checksum, revision, description, started_at, finished_at, duration_ms, rows_affected, host)
         VALUES ('20991231_2359_from_the_future', 'x', 0, 'newer', now(), now(), 1, 0, 'elsewhere');",
    )
    .execute(db.pool())
    .await?;

    assert_eq!(run(db.url(), &["check"]).status.code(), Some(3));
    let verify = run(db.url(), &["verify"]);
    assert_eq!(verify.status.code(), Some(3));
    assert_eq!(
        stdout(&verify),
        format!(
            "drifted {NORMALIZE}: the ledger has checksum edited revision 0, the code differs\n\
             unknown 20991231_2359_from_the_future: in the ledger, but no migration of this build has the id\n\
             1 drifted, 1 unknown\n"
        )
    );
    let json: Value =
        serde_json::from_slice(&run(db.url(), &["verify", "--format", "json"]).stdout)?;
    assert_eq!(json["drifted"][0]["id"], NORMALIZE);
    assert_eq!(json["drifted"][0]["applied_checksum"], "edited");
    assert_eq!(
        json["unknown"],
        serde_json::json!(["20991231_2359_from_the_future"])
    );

    let blocked = run(db.url(), &["run"]);
    assert_eq!(blocked.status.code(), Some(3));
    assert!(stderr(&blocked).contains(&format!(
        "1 applied migration(s) changed since they were applied: {NORMALIZE}"
    )));

    // An operator accepts the change, with a reason: the run goes on.
    let repair = run(
        db.url(),
        &["repair", NORMALIZE, "--reason", "reformatted the SQL only"],
    );
    assert_eq!(repair.status.code(), Some(0), "{}", stderr(&repair));
    assert!(stdout(&repair).starts_with(&format!(
        "repaired {NORMALIZE}: the ledger now holds checksum "
    )));
    let audit: (String, String) =
        sqlx::query_as("SELECT action, reason FROM datamig_runs WHERE action = 'repair'")
            .fetch_one(db.pool())
            .await?;
    assert!(
        audit.1.starts_with("reformatted the SQL only (checksum "),
        "{}",
        audit.1
    );
    assert!(audit.1.contains("in place of edited revision 0"));
    assert_eq!(run(db.url(), &["check"]).status.code(), Some(0));
    assert_eq!(
        run(db.url(), &["repair", NORMALIZE, "--reason", "again"])
            .status
            .code(),
        Some(2),
        "nothing left to repair"
    );
    Ok(())
}

#[tokio::test]
async fn mark_applied_records_a_baseline_without_running_it() -> anyhow::Result<()> {
    let db = demo_database().await?;
    let marked = run(
        db.url(),
        &[
            "mark-applied",
            BACKFILL,
            "--reason",
            "settings were created by hand",
        ],
    );
    assert_eq!(marked.status.code(), Some(0), "{}", stderr(&marked));
    assert_eq!(
        stdout(&marked),
        format!("marked {BACKFILL} as applied without running it: settings were created by hand\n")
    );
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM notification_settings").await?,
        0,
        "it did not run"
    );
    let (action, reason): (String, Option<String>) =
        sqlx::query_as("SELECT action, reason FROM datamig_runs")
            .fetch_one(db.pool())
            .await?;
    assert_eq!(
        (action.as_str(), reason.as_deref()),
        ("mark_applied", Some("settings were created by hand"))
    );

    let output = run(db.url(), &["run"]);
    assert!(
        stdout(&output).ends_with("1 applied, 0 pending, 1 already applied\n"),
        "{}",
        stdout(&output)
    );
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM notification_settings").await?,
        0
    );

    let again = run(db.url(), &["mark-applied", BACKFILL, "--reason", "twice"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("is already in the ledger"));
    let unknown = run(
        db.url(),
        &["mark-applied", "20240101_0000_nope", "--reason", "x"],
    );
    assert_eq!(unknown.status.code(), Some(2));
    assert_eq!(
        stderr(&unknown),
        "error: unknown migration id 20240101_0000_nope: no registered migration has it\n"
    );
    let no_reason = run(db.url(), &["mark-applied", NORMALIZE, "--reason", " "]);
    assert_eq!(no_reason.status.code(), Some(2));
    Ok(())
}

#[tokio::test]
async fn rerun_runs_an_applied_migration_again_and_counts_it() -> anyhow::Result<()> {
    let db = demo_database().await?;
    assert!(run(db.url(), &["run"]).status.success());
    sqlx::query("DELETE FROM notification_settings WHERE user_id <= 5")
        .execute(db.pool())
        .await?;
    let rerun = run(db.url(), &["rerun", BACKFILL]);
    assert_eq!(rerun.status.code(), Some(0), "{}", stderr(&rerun));
    assert!(
        stdout(&rerun).starts_with(&format!("re-ran {BACKFILL}  5 rows")),
        "{}",
        stdout(&rerun)
    );
    assert_eq!(scalar(&db, "SELECT run_count::bigint FROM datamig_ledger WHERE id = '20241114_0930_backfill_notification_settings'").await?, 2);
    let pending = demo_database().await?;
    let refused = run(pending.url(), &["rerun", BACKFILL]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("is not applied yet, so it cannot be re-run"));
    Ok(())
}

#[tokio::test]
async fn run_only_and_run_to_leave_the_other_migrations_pending() -> anyhow::Result<()> {
    let db = demo_database().await?;
    let only = run(db.url(), &["run", "--only", NORMALIZE]);
    assert_eq!(only.status.code(), Some(0), "{}", stderr(&only));
    assert!(stdout(&only).starts_with(&format!("applied {NORMALIZE}")));
    assert!(
        stdout(&only).ends_with("1 applied, 1 pending, 0 already applied\n"),
        "{}",
        stdout(&only)
    );
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM notification_settings").await?,
        0
    );
    // An applied migration outside the selection counts as applied, not pending.
    let then = run(db.url(), &["run", "--only", BACKFILL]);
    assert!(
        stdout(&then).ends_with("1 applied, 0 pending, 1 already applied\n"),
        "{}",
        stdout(&then)
    );

    let other = demo_database().await?;
    let to = run(other.url(), &["run", "--to", BACKFILL]);
    assert!(
        stdout(&to).ends_with("1 applied, 1 pending, 0 already applied\n"),
        "{}",
        stdout(&to)
    );
    assert_eq!(run(other.url(), &["check"]).status.code(), Some(6));
    let unknown = run(other.url(), &["run", "--to", "20240101_0000_nope"]);
    assert_eq!(unknown.status.code(), Some(2));
    Ok(())
}

#[tokio::test]
async fn run_with_schema_applies_the_schema_migrations_first() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/schema/postgres");

    // Without the schema, the data migration that needs it refuses to run, and nothing runs.
    let refused = run(db.url(), &["run"]);
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(
        stderr(&refused),
        format!(
            "error: migration {BACKFILL} needs schema migration 20241110000000, which is not applied \
             (_sqlx_migrations): run the schema migrations first (`datamig run --schema DIR`); nothing ran\n"
        )
    );
    assert_eq!(scalar(&db, "SELECT count(*) FROM datamig_ledger").await?, 0);

    let deploy = run(db.url(), &["run", "--schema", schema]);
    assert_eq!(deploy.status.code(), Some(0), "{}", stderr(&deploy));
    let text = stdout(&deploy);
    assert!(
        text.starts_with(&format!(
            "schema: 2 schema migrations applied from {schema}\napplied {BACKFILL}"
        )),
        "{text}"
    );
    assert!(
        text.ends_with("2 applied, 0 pending, 0 already applied\n"),
        "{text}"
    );
    let again = run(db.url(), &["run", "--schema", schema]);
    assert!(
        stdout(&again).starts_with("schema: 0 schema migrations applied"),
        "{}",
        stdout(&again)
    );
    let missing = run(db.url(), &["run", "--schema", "/no/such/dir"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).starts_with("error: cannot read the schema migrations in /no/such/dir")
    );
    Ok(())
}

#[tokio::test]
async fn two_run_processes_started_together_both_exit_0_and_apply_once() -> anyhow::Result<()> {
    let db = demo_database().await?;
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_datamig-demo"))
            .args(["run"])
            .env("DATABASE_URL", db.url())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
    };
    let (a, b) = (spawn()?, spawn()?);
    let outputs = [a.wait_with_output()?, b.wait_with_output()?];
    assert!(
        outputs.iter().all(|o| o.status.success()),
        "{:?}",
        outputs.iter().map(stderr).collect::<Vec<_>>()
    );
    let texts: Vec<String> = outputs.iter().map(stdout).collect();
    assert_eq!(
        texts
            .iter()
            .filter(|t| t.ends_with("2 applied, 0 pending, 0 already applied\n"))
            .count(),
        1,
        "{texts:?}"
    );
    assert_eq!(
        texts
            .iter()
            .filter(|t| *t == "0 applied, 0 pending, 2 already applied\n")
            .count(),
        1,
        "{texts:?}"
    );
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM notification_settings").await?,
        30
    );
    Ok(())
}

#[tokio::test]
async fn doctor_reports_the_ledger_the_lock_and_blocking_sessions() -> anyhow::Result<()> {
    let db = demo_database().await?;
    let fresh = run(db.url(), &["doctor"]);
    assert_eq!(fresh.status.code(), Some(0), "{}", stderr(&fresh));
    let text = stdout(&fresh);
    assert!(text.starts_with("connection: ok (PostgreSQL "), "{text}");
    assert!(
        text.contains("ledger: not created yet (the first `run` creates it)\n"),
        "{text}"
    );
    assert!(
        text.contains("runner lock: free\nblocking sessions: none\n"),
        "{text}"
    );

    assert!(run(db.url(), &["run"]).status.success());
    // A session left idle in a transaction holding a row lock: it would block a migration.
    let mut idle = PgConnection::connect(db.url()).await?;
    sqlx::query("SET application_name = 'forgotten-console'")
        .execute(&mut idle)
        .await?;
    let mut forgotten = idle.begin().await?;
    sqlx::query("SELECT * FROM users WHERE id = 1 FOR UPDATE")
        .execute(&mut *forgotten)
        .await?;
    let report = run(db.url(), &["doctor"]);
    let text = stdout(&report);
    assert!(
        text.contains("ledger: ok (2 applied, 0 pending, 0 running, 0 drifted, 0 unknown)"),
        "{text}"
    );
    assert!(
        text.contains("sessions that would block or slow a migration:\n  session "),
        "{text}"
    );
    assert!(text.contains("(forgotten-console, user "), "{text}");
    assert!(text.contains("idle in transaction"), "{text}");
    assert!(
        text.contains("query: SELECT * FROM users WHERE id = 1 FOR UPDATE"),
        "{text}"
    );

    let json: Value =
        serde_json::from_slice(&run(db.url(), &["doctor", "--format", "json"]).stdout)?;
    assert_eq!(json["ledger_exists"], true);
    assert_eq!(
        json["blocking_sessions"][0]["application_name"],
        "forgotten-console"
    );
    assert_eq!(json["blocking_sessions"][0]["state"], "idle in transaction");
    assert!(json["blocking_sessions"][0]["transaction_age_ms"].is_i64());
    assert_eq!(json["migrations"].as_array().map(Vec::len), Some(2));
    forgotten.rollback().await?;
    Ok(())
}

/// Holds the runner lock of the default ledger from a session named `application_name`.
async fn hold_lock(url: &str, application_name: &str) -> anyhow::Result<PgConnection> {
    let mut conn = PgConnection::connect(url).await?;
    sqlx::query("SELECT set_config('application_name', $1, false)")
        .bind(application_name)
        .execute(&mut conn)
        .await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(datamig::LedgerConfig::default().lock_key())
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[tokio::test]
async fn unlock_refuses_while_the_holder_runs_and_releases_a_dead_holders_lock()
-> anyhow::Result<()> {
    let db = demo_database().await?;
    let free = run(db.url(), &["unlock"]);
    assert_eq!(
        (free.status.code(), stdout(&free).as_str()),
        (Some(0), "no runner holds the lock; nothing to release\n")
    );

    // A live holder: this test process.
    let alive = hold_lock(
        db.url(),
        &format!("datamig/{}/{}", this_host(), std::process::id()),
    )
    .await?;
    let refused = run(db.url(), &["unlock"]);
    assert_eq!(refused.status.code(), Some(5), "{}", stderr(&refused));
    assert!(stderr(&refused).contains(&format!(
        "held by datamig process {} on this host, which is still running",
        std::process::id()
    )));
    assert_eq!(
        run(db.url(), &["run", "--wait", "200ms"]).status.code(),
        Some(5),
        "the lock is really held"
    );
    drop(alive);

    // A dead holder: its process is gone but its session lingers (a frozen or partitioned runner).
    let dead_pid = (4_000_000..4_194_304)
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let mut dead = hold_lock(db.url(), &format!("datamig/{}/{dead_pid}", this_host())).await?;
    let released = run(db.url(), &["unlock"]);
    assert_eq!(released.status.code(), Some(0), "{}", stderr(&released));
    assert!(
        stdout(&released).contains(&format!(
            "its runner, process {dead_pid} on this host, is gone"
        )),
        "{}",
        stdout(&released)
    );
    assert!(
        sqlx::query("SELECT 1").execute(&mut dead).await.is_err(),
        "the holder's session was ended"
    );
    assert_eq!(
        run(db.url(), &["run"]).status.code(),
        Some(0),
        "the lock is free again"
    );

    // A holder on another host: this host cannot tell, so it refuses unless told.
    let mut remote = hold_lock(db.url(), "datamig/another-host/1234").await?;
    let refused = run(db.url(), &["unlock"]);
    assert_eq!(refused.status.code(), Some(5));
    assert!(
        stderr(&refused).contains("held by datamig process 1234 on another-host"),
        "{}",
        stderr(&refused)
    );
    let forced = run(db.url(), &["unlock", "--dangerously-terminate-holder"]);
    assert_eq!(forced.status.code(), Some(0), "{}", stderr(&forced));
    assert!(sqlx::query("SELECT 1").execute(&mut remote).await.is_err());
    Ok(())
}
