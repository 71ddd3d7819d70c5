//! The quickstart: datamig doing its job on a SQLite file, with nothing installed.
//!
//!     cargo run --example quickstart
//!
//! It creates `datamig-quickstart.db` afresh beside its own executable (in the target
//! directory, wherever `CARGO_TARGET_DIR` puts it; or the file given as the first argument), adds demo users, runs the demo application's data migrations, shows the
//! ledger, runs again to show that nothing is pending, and proves each migration idempotent.
//! The same migrations run on PostgreSQL: `scripts/demo.sh`.

use std::path::PathBuf;

use datamig::{Migrator, State};
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    datamig_demo_migrations::link();
    let path = match std::env::args_os().nth(1) {
        Some(path) => PathBuf::from(path),
        None => default_path()?,
    };
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
    let pool = SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true),
    )
    .await?;
    let shown = path.canonicalize().unwrap_or_else(|_| path.clone());
    println!("datamig quickstart: a SQLite database in one file, nothing to install");
    println!("  {}\n", shown.display());

    println!("1. The application's schema, applied by its schema tool (sqlx migrate):");
    datamig_demo_migrations::sqlite_schema().run(&pool).await?;
    datamig_demo_migrations::seed_users_sqlite(&pool, 1_000).await?;
    let messy = messy_emails(&pool).await?;
    println!("   users, notification_settings; 1000 users, {messy} of them with messy emails");
    println!("   (' User3@Example.COM '), and nobody has notification settings yet.\n");

    println!("2. A deploy runs the pending data migrations, each exactly once:");
    let report = Migrator::new(pool.clone())
        .app_version("quickstart")
        .run()
        .await?;
    for applied in &report.applied {
        let batches = if applied.batches > 0 {
            format!(", {} batch(es)", applied.batches)
        } else {
            String::new()
        };
        println!(
            "   applied {}: {} rows{batches}, {} ms",
            applied.id, applied.rows_affected, applied.duration_ms
        );
        for note in &applied.notes {
            println!("     note: {note}");
        }
    }

    println!("\n3. The ledger (table datamig_ledger), one row per applied migration:");
    for status in Migrator::new(pool.clone()).status().await? {
        let Some(entry) = status.ledger.as_ref() else {
            continue;
        };
        println!(
            "   {}  rows={}  runs={}  by={}  checksum={}…",
            status.id,
            entry.rows_affected,
            entry.run_count,
            entry.applied_by,
            &entry.checksum[..12]
        );
    }

    println!("\n4. The next deploy (another replica, or the same one again) finds nothing to do:");
    let again = Migrator::new(pool.clone()).run().await?;
    println!(
        "   {} applied, {} already applied",
        again.applied.len(),
        again.already_applied.len()
    );
    let pending = Migrator::new(pool.clone())
        .status()
        .await?
        .iter()
        .filter(|s| s.state != State::Applied)
        .count();
    println!("   {pending} pending");

    println!("\n5. The data:");
    let settings: i64 = sqlx::query_scalar("SELECT count(*) FROM notification_settings")
        .fetch_one(&pool)
        .await?;
    println!(
        "   {settings} of 1000 users have notification settings; {} messy emails left",
        messy_emails(&pool).await?
    );

    println!("\n6. The idempotency proof: each migration forced to run a second time, every table");
    println!("   fingerprinted before and after (the re-runs are recorded in the run history):");
    let migrator = Migrator::new(pool.clone());
    for migration in migrator.load()? {
        let check = datamig::testing::check_idempotent(&migrator, migration.id()).await?;
        println!(
            "   {}: second run changed {} rows, {} tables differ -> {}",
            check.id,
            check.second_run_rows,
            check.changes.len(),
            if check.is_idempotent() {
                "idempotent"
            } else {
                "NOT idempotent"
            }
        );
    }

    println!(
        "
What you just saw:
- Data migrations are Rust functions with #[datamig::migration(id = ..)], written once for
  any backend (migrations/src/lib.rs): these two run on SQLite here and on PostgreSQL in
  production, unchanged.
- Each one ran exactly once. Its changes and its ledger row committed in one transaction,
  under a lock that other runners wait for, so the second deploy applied nothing.
- The ledger keeps a checksum of each migration's code: edit an applied migration and the
  next run stops with a drift error instead of silently skipping or re-running it.
- The email clean-up ran in batches by key, each batch committing with its checkpoint: a
  run that is stopped resumes where it left off.
- Running a migration twice changed nothing, proven by fingerprints of every table; tests
  do the same with datamig::testing::assert_all_idempotent.

Next:
  cargo run -p datamig-examples --example my_datamig -- status --database-url sqlite:{}
  scripts/demo.sh     the same migrations on PostgreSQL
  scripts/test.sh     the test suite",
        shown.display()
    );
    Ok(())
}

/// Emails that are not trimmed lower case.
async fn messy_emails(pool: &SqlitePool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM users WHERE email <> lower(trim(email))")
            .fetch_one(pool)
            .await?,
    )
}

/// `datamig-quickstart.db` beside this executable: a directory that exists whatever the
/// current directory and wherever the target directory is (`CARGO_TARGET_DIR`).
fn default_path() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("the executable {} has no directory", exe.display()))?;
    Ok(dir.join("datamig-quickstart.db"))
}
