//! The installed `datamig` binary, built as a user installs it (`cargo install datamig-cli`:
//! no migrations compiled in), against PostgreSQL and SQLite: every command it serves reads
//! or manages the ledger as it is, and the commands that need the migrations' code say so,
//! show how to build the application's own binary, and change nothing.
//!
//! `scripts/test.sh` installs the binary before the tests and names it in
//! `DATAMIG_INSTALLED_BIN`; without it, the first test installs it (`cargo install --path
//! cli`) into `target/installed`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use datamig::Migrator;
use datamig_tests::{BUMP_ITEMS, COUNT_RUNS, bump_items, copy_args, count_runs, text};
use serde_json::Value;

/// The installed binary: `DATAMIG_INSTALLED_BIN`, or installed once by this test binary.
fn installed() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("DATAMIG_INSTALLED_BIN") {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "DATAMIG_INSTALLED_BIN names {}, which is not a file",
                path.display()
            );
            return path;
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace");
        let root = workspace.join("target/installed");
        // Its own target directory: the one of `cargo test` is locked while tests run.
        let status = std::process::Command::new(env!("CARGO"))
            .args(["install", "--locked", "--debug", "--force", "--path"])
            .arg(workspace.join("cli"))
            .arg("--root")
            .arg(&root)
            .arg("--target-dir")
            .arg(workspace.join("target/install"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo install --path cli failed");
        root.join("bin/datamig")
    })
}

/// `datamig ARGS` with the installed binary against `url`, run in `dir`.
async fn datamig(url: &str, args: &[&str], dir: &Path) -> anyhow::Result<Output> {
    let binary = installed().to_str().expect("a UTF-8 path").to_string();
    let mut cmd = datamig_tests::command(&binary, url, args);
    cmd.current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("DATAMIG_LOG")
        .env_remove("DATAMIG_LEDGER_TABLE")
        .env_remove("DATAMIG_RUNS_TABLE");
    Ok(cmd.output().await?)
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("{err}: {}", text(&output.stdout)))
}

fn state_of(statuses: &Value, id: &str) -> String {
    statuses
        .as_array()
        .expect("a list")
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("{id} is not listed: {statuses}"))["state"]
        .as_str()
        .expect("a state")
        .to_string()
}

/// The state both tests start from: `count_runs` applied, `bump_items` stopped after two
/// of its ten batches (part-way, checkpoint 200), as an application's own binary left it.
async fn part_way<DB: datamig::Backend>(pool: &sqlx::Pool<DB>) -> anyhow::Result<()> {
    let interrupted = Migrator::new(pool.clone())
        .migrations([&count_runs::MIGRATION, &bump_items::MIGRATION])
        .interrupt_after_batches(2)
        .run()
        .await;
    assert!(
        matches!(
            interrupted,
            Err(datamig::Error::Interrupted { batches: 2, .. })
        ),
        "{interrupted:?}"
    );
    Ok(())
}

/// Every command of the installed binary against the database of `url`, prepared by
/// [`part_way`]. `copy_target` is an empty PostgreSQL database with the same tables;
/// `ledger_moves`: whether the copy brings the ledger along (from SQLite).
async fn every_command(url: &str, copy_target: &str, ledger_moves: bool) -> anyhow::Result<()> {
    let dir = tempdir()?;

    // status: the ledger as it records it (no "unknown to this build"), and a note.
    let status = datamig(url, &["status"], &dir).await?;
    assert!(status.status.success(), "{}", text(&status.stderr));
    let shown = text(&status.stdout);
    assert!(shown.contains("2 batches done, checkpoint 200"), "{shown}");
    assert!(
        !shown
            .lines()
            .any(|line| line.split_whitespace().nth(1) == Some("unknown")),
        "{shown}"
    );
    assert!(
        text(&status.stderr).contains("no migrations compiled in"),
        "{}",
        text(&status.stderr)
    );
    let statuses = json(&datamig(url, &["status", "--format", "json"], &dir).await?);
    assert_eq!(state_of(&statuses, COUNT_RUNS), "applied");
    assert_eq!(state_of(&statuses, BUMP_ITEMS), "running");

    // verify: every ledger row with the checksum it was applied with.
    let verify = datamig(url, &["verify"], &dir).await?;
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify.stderr));
    let listed = text(&verify.stdout);
    assert!(
        listed.contains(&format!(
            "{COUNT_RUNS}  applied  checksum {}",
            count_runs::MIGRATION.checksum()
        )),
        "{listed}"
    );
    assert!(
        listed.contains(&format!("{BUMP_ITEMS}  running  checksum")),
        "{listed}"
    );
    assert!(listed.contains("2 ledger rows"), "{listed}");
    let rows = json(&datamig(url, &["verify", "--format", "json"], &dir).await?);
    assert_eq!(rows["ledger"].as_array().map(Vec::len), Some(2), "{rows}");

    // check: what the ledger holds part-way is pending (exit 6).
    let check = datamig(url, &["check"], &dir).await?;
    assert_eq!(check.status.code(), Some(6), "{}", text(&check.stderr));
    assert!(
        text(&check.stdout).contains(&format!("pending {BUMP_ITEMS}")),
        "{}",
        text(&check.stdout)
    );

    // pause and resume: a part-way migration, recorded; nothing else.
    let pause = datamig(url, &["pause", BUMP_ITEMS, "--reason", "replica lag"], &dir).await?;
    assert!(pause.status.success(), "{}", text(&pause.stderr));
    let statuses = json(&datamig(url, &["status", "--format", "json"], &dir).await?);
    assert_eq!(state_of(&statuses, BUMP_ITEMS), "paused");
    let check = datamig(url, &["check"], &dir).await?;
    assert!(
        text(&check.stdout).contains(&format!("paused {BUMP_ITEMS}")),
        "{}",
        text(&check.stdout)
    );
    let applied = datamig(url, &["pause", COUNT_RUNS], &dir).await?;
    assert_eq!(applied.status.code(), Some(2));
    assert!(
        text(&applied.stderr).contains("is applied; there is nothing to pause"),
        "{}",
        text(&applied.stderr)
    );
    let absent = datamig(url, &["pause", "20990101_0000_not_started"], &dir).await?;
    assert_eq!(absent.status.code(), Some(2));
    assert!(
        text(&absent.stderr).contains("is not in the ledger"),
        "{}",
        text(&absent.stderr)
    );
    let resume = datamig(url, &["resume", BUMP_ITEMS], &dir).await?;
    assert!(resume.status.success(), "{}", text(&resume.stderr));
    let statuses = json(&datamig(url, &["status", "--format", "json"], &dir).await?);
    assert_eq!(state_of(&statuses, BUMP_ITEMS), "running");

    // doctor and unlock.
    let doctor = datamig(url, &["doctor", "--format", "json"], &dir).await?;
    assert!(doctor.status.success(), "{}", text(&doctor.stderr));
    let doctor = json(&doctor);
    assert_eq!(doctor["ledger_exists"], true, "{doctor}");
    assert_eq!(doctor["migrations"].as_array().map(Vec::len), Some(2));
    let unlock = datamig(url, &["unlock"], &dir).await?;
    assert!(unlock.status.success(), "{}", text(&unlock.stderr));
    assert!(
        text(&unlock.stdout).contains("no runner holds the lock"),
        "{}",
        text(&unlock.stdout)
    );

    // fingerprint and compare.
    let fingerprint = json(&datamig(url, &["fingerprint", "--format", "json"], &dir).await?);
    let items = items_of(&fingerprint);
    assert_eq!(items["rows"], 1000, "{items}");
    let compare = datamig(url, &["compare", "--source", url, "--target", url], &dir).await?;
    assert_eq!(compare.status.code(), Some(0), "{}", text(&compare.stderr));

    // copy, then compare: the tables move, the ledger comes along.
    let copy = datamig(url, &copy_args(url, copy_target, &["--verify"]), &dir).await?;
    assert_eq!(copy.status.code(), Some(0), "{}", text(&copy.stderr));
    let copied = json(&datamig(copy_target, &["fingerprint", "--format", "json"], &dir).await?);
    let copied_items = items_of(&copied);
    assert_eq!(copied_items["rows"], 1000, "{copied_items}");
    if !ledger_moves {
        // Between PostgreSQL databases the checksums compare as they are.
        assert_eq!(copied_items["sha256"], items["sha256"]);
    }
    // From SQLite the ledger comes along; between PostgreSQL databases it is left out.
    let statuses = json(&datamig(copy_target, &["status", "--format", "json"], &dir).await?);
    if ledger_moves {
        assert_eq!(state_of(&statuses, BUMP_ITEMS), "running", "{statuses}");
    } else {
        assert_eq!(statuses.as_array().map(Vec::len), Some(0), "{statuses}");
    }

    // What needs the code: refused, with the three lines, and nothing written.
    let before = text(
        &datamig(url, &["verify", "--format", "json"], &dir)
            .await?
            .stdout,
    );
    for args in [
        &["run"][..],
        &["new", "backfill_something"],
        &["check-idempotency"],
        &["rerun", COUNT_RUNS],
        &["mark-applied", "20990101_0000_x", "--reason", "baseline"],
        &["repair", COUNT_RUNS, "--reason", "accepted"],
    ] {
        let refused = datamig(url, args, &dir).await?;
        assert_eq!(refused.status.code(), Some(2), "{args:?}");
        let said = text(&refused.stderr);
        assert!(
            said.contains(&format!(
                "`datamig {}` needs your application's migrations",
                args[0]
            )),
            "{args:?}: {said}"
        );
        assert!(said.contains("my_app_migrations::link();"), "{said}");
        assert!(said.contains("datamig_cli::main()"), "{said}");
        assert!(
            said.contains(&format!("cargo run --bin datamig -- {}", args[0])),
            "{said}"
        );
    }
    let after = text(
        &datamig(url, &["verify", "--format", "json"], &dir)
            .await?
            .stdout,
    );
    assert_eq!(before, after, "a refused command changed the ledger");
    assert_eq!(
        std::fs::read_dir(&dir)?.count(),
        0,
        "`new` wrote a file in the installed binary"
    );

    let version = datamig(url, &["--version"], &dir).await?;
    assert!(
        text(&version.stdout).starts_with("datamig "),
        "{}",
        text(&version.stdout)
    );
    Ok(())
}

/// The fingerprint of the table `items` (`public.items` or `main.items`).
fn items_of(fingerprint: &Value) -> Value {
    fingerprint["tables"]
        .as_object()
        .expect("tables")
        .iter()
        .find(|(name, _)| name.ends_with(".items"))
        .unwrap_or_else(|| panic!("no items: {fingerprint}"))
        .1
        .clone()
}

/// An empty directory of its own, for commands that could write files.
fn tempdir() -> anyhow::Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "datamig-installed-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::test]
async fn the_installed_binary_serves_a_postgres_ledger_and_refuses_what_needs_code()
-> anyhow::Result<()> {
    let db = datamig_tests::fixture_database(&[]).await?;
    part_way(db.pool()).await?;
    let target = datamig_tests::empty_fixture_database().await?;
    every_command(db.url(), target.url(), false).await?;
    // The pause and its lifting are in the run history, with who and from where.
    let actions: Vec<(String,)> = sqlx::query_as(
        "SELECT action FROM datamig_runs WHERE migration_id = $1 AND action IN ('pause', 'unpause') ORDER BY run_id",
    )
    .bind(BUMP_ITEMS)
    .fetch_all(db.pool())
    .await?;
    let names: Vec<&str> = actions.iter().map(|(a,)| a.as_str()).collect();
    assert_eq!(names, ["pause", "unpause"]);
    Ok(())
}

#[tokio::test]
async fn the_installed_binary_serves_a_sqlite_ledger_and_refuses_what_needs_code()
-> anyhow::Result<()> {
    let db = datamig_tests::sqlite_fixture_database(&[]).await?;
    part_way(db.pool()).await?;
    // Its data moves into PostgreSQL with the same installed binary.
    let target = datamig_tests::empty_fixture_database().await?;
    every_command(db.url(), target.url(), true).await?;
    let actions: Vec<(String,)> = sqlx::query_as(
        "SELECT action FROM datamig_runs WHERE migration_id = ? AND action IN ('pause', 'unpause') ORDER BY run_id",
    )
    .bind(BUMP_ITEMS)
    .fetch_all(db.pool())
    .await?;
    let names: Vec<&str> = actions.iter().map(|(a,)| a.as_str()).collect();
    assert_eq!(names, ["pause", "unpause"]);
    Ok(())
}
