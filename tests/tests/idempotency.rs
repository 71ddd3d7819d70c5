//! The idempotency harness catches what it claims to catch: non-idempotent migrations fail
//! with the table named, the demo migrations pass, `compare` finds one changed row among
//! many tables, and `check-idempotency` leaves the database as it found it.

use std::process::Stdio;

use datamig::prelude::*;
use datamig::testing::{
    assert_all_idempotent_with, assert_idempotent_with, assert_interruption_converges,
};
use datamig::{Error, Migration};
use datamig_demo_migrations::{backfill_notification_settings, normalize_user_emails};
use datamig_tests::{bump_items, create_fixture_tables, fixture_database};
use sqlx::PgPool;

async fn accounts_database() -> anyhow::Result<datamig::testing::TestDatabase> {
    let db = datamig::testing::postgres().await?;
    sqlx::raw_sql(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance integer NOT NULL, touched_at timestamptz);
         INSERT INTO accounts VALUES (1, 100, NULL), (2, 200, NULL), (3, 300, NULL);
         CREATE TABLE audit_log (id serial PRIMARY KEY, message text NOT NULL);
         CREATE TABLE untouched (name text);
         INSERT INTO untouched VALUES ('a'), ('b');",
    )
    .execute(db.pool())
    .await?;
    Ok(db)
}

/// Credits every account: not idempotent.
#[datamig::migration(id = "20240701_0000_credit_accounts")]
async fn credit_accounts(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.execute("UPDATE accounts SET balance = balance + 10")
        .await?;
    Ok(())
}

/// Logs a message without a conflict guard: not idempotent.
#[datamig::migration(id = "20240701_0001_log_without_guard")]
async fn log_without_guard(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.execute("INSERT INTO audit_log (message) VALUES ('backfill ran')")
        .await?;
    Ok(())
}

/// Stamps every account with the time of the run: not idempotent.
#[datamig::migration(id = "20240701_0002_touch_accounts")]
async fn touch_accounts(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    sqlx::query("UPDATE accounts SET touched_at = clock_timestamp()")
        .execute(ctx.tx())
        .await?;
    Ok(())
}

/// Rewrites every row with its own values: the data is equal, but rows are rewritten.
#[datamig::migration(id = "20240701_0003_rewrite_accounts")]
async fn rewrite_accounts(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.execute("UPDATE accounts SET balance = balance").await?;
    Ok(())
}

/// Credits only accounts that were not credited yet: idempotent.
#[datamig::migration(id = "20240701_0004_credit_once")]
async fn credit_once(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.execute("UPDATE accounts SET balance = 1000 WHERE balance IS DISTINCT FROM 1000")
        .await?;
    Ok(())
}

fn migrator(pool: &PgPool, migration: &'static Migration) -> Migrator<Postgres> {
    Migrator::new(pool.clone()).migrations([migration])
}

async fn assert_caught(migration: &'static Migration, expected: &[&str]) -> anyhow::Result<()> {
    let db = accounts_database().await?;
    let err = assert_idempotent_with(&migrator(db.pool(), migration), migration.id())
        .await
        .expect_err("the harness must catch a non-idempotent migration");
    assert!(matches!(err, Error::NotIdempotent { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "migration {} is not idempotent: its second run",
            migration.id()
        )),
        "{message}"
    );
    for part in expected {
        assert!(message.contains(part), "expected {part:?} in: {message}");
    }
    assert!(
        !message.contains("untouched"),
        "an unchanged table is not named: {message}"
    );
    Ok(())
}

#[tokio::test]
async fn an_update_that_adds_to_a_balance_is_caught_with_the_rows_that_changed()
-> anyhow::Result<()> {
    assert_caught(
        &credit_accounts::MIGRATION,
        &[
            "changed table public.accounts (3 rows before, 3 after; before: (1,110,) (2,210,) (3,310,); after: (1,120,) (2,220,) (3,320,))",
            "reported 3 rows inserted or updated",
        ],
    )
    .await
}

#[tokio::test]
async fn an_insert_without_a_conflict_guard_is_caught() -> anyhow::Result<()> {
    assert_caught(
        &log_without_guard::MIGRATION,
        &["changed table public.audit_log (1 rows before, 2 after; after: (2,\"backfill ran\"))"],
    )
    .await
}

#[tokio::test]
async fn a_timestamp_written_on_every_run_is_caught() -> anyhow::Result<()> {
    assert_caught(
        &touch_accounts::MIGRATION,
        &["changed table public.accounts (3 rows before, 3 after; before: (1,100,"],
    )
    .await
}

#[tokio::test]
async fn a_second_run_that_rewrites_equal_rows_is_caught_by_its_counts() -> anyhow::Result<()> {
    assert_caught(
        &rewrite_accounts::MIGRATION,
        &["its second run reported 3 rows inserted or updated (0 expected)"],
    )
    .await
}

#[tokio::test]
async fn an_idempotent_migration_passes() -> anyhow::Result<()> {
    let db = accounts_database().await?;
    assert_idempotent_with(
        &migrator(db.pool(), &credit_once::MIGRATION),
        credit_once::MIGRATION.id(),
    )
    .await?;
    let balances: Vec<i32> = sqlx::query_scalar("SELECT balance FROM accounts ORDER BY id")
        .fetch_all(db.pool())
        .await?;
    assert_eq!(balances, vec![1000, 1000, 1000]);
    let leftovers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_class WHERE relname LIKE 'datamig_snapshot%'")
            .fetch_one(db.pool())
            .await?;
    assert_eq!(leftovers, 0, "the snapshot tables are gone");
    Ok(())
}

#[tokio::test]
async fn every_demo_migration_is_idempotent() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    datamig_demo_migrations::schema().run(db.pool()).await?;
    datamig_demo_migrations::seed_users(db.pool(), 25_000).await?;
    let demo = Migrator::new(db.pool().clone()).migrations([
        &backfill_notification_settings::MIGRATION,
        &normalize_user_emails::MIGRATION,
    ]);
    assert_all_idempotent_with(&demo).await?;
    let settings: i64 = sqlx::query_scalar("SELECT count(*) FROM notification_settings")
        .fetch_one(db.pool())
        .await?;
    assert_eq!(settings, 25_000);
    Ok(())
}

#[tokio::test]
async fn a_batched_migration_interrupted_and_resumed_converges() -> anyhow::Result<()> {
    let (interrupted, uninterrupted) = (
        datamig::testing::postgres().await?,
        datamig::testing::postgres().await?,
    );
    create_fixture_tables(interrupted.pool()).await?;
    create_fixture_tables(uninterrupted.pool()).await?;
    assert_interruption_converges(
        interrupted.pool(),
        uninterrupted.pool(),
        bump_items::MIGRATION.id(),
        4,
    )
    .await?;
    let err = assert_interruption_converges(
        interrupted.pool(),
        uninterrupted.pool(),
        bump_items::MIGRATION.id(),
        4,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("finished before 4 batches"),
        "an applied migration is not interrupted: {err}"
    );
    Ok(())
}

#[tokio::test]
async fn fingerprints_find_one_changed_row_in_one_table_among_many() -> anyhow::Result<()> {
    let (source, target) = (
        datamig::testing::postgres().await?,
        datamig::testing::postgres().await?,
    );
    for db in [&source, &target] {
        for n in 0..8 {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CREATE TABLE t{n} (id int PRIMARY KEY, v text); INSERT INTO t{n} SELECT i, md5(i::text) FROM generate_series(1, 2000) AS i;"
            )))
            .execute(db.pool())
            .await?;
        }
        sqlx::raw_sql("CREATE TABLE nokey (v text); INSERT INTO nokey SELECT md5(i::text) FROM generate_series(1, 100) AS i;")
            .execute(db.pool())
            .await?;
    }
    let same = datamig::fingerprint(source.pool()).await?;
    assert_eq!(same, datamig::fingerprint(target.pool()).await?);
    assert_eq!(same.tables.len(), 9);
    assert_eq!(same.tables["public.t3"].rows, 2000);
    assert_eq!(same.tables["public.t3"].key, vec!["id"]);
    assert!(same.tables["public.nokey"].key.is_empty());

    sqlx::query("UPDATE t5 SET v = 'changed' WHERE id = 1234")
        .execute(target.pool())
        .await?;
    let differences = same.differences(&datamig::fingerprint(target.pool()).await?);
    assert_eq!(differences.len(), 1);
    assert_eq!(differences[0].table, "public.t5");

    // The CLI: `compare` exits 8 and names the table.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_datamig-fixtures"))
        .args([
            "compare",
            "--source",
            source.url(),
            "--target",
            target.url(),
        ])
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .output()?;
    assert_eq!(
        output.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let line = |table: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{table} ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("public.t5").ends_with("source       2000 rows  target       2000 rows  DIFFERS"),
        "{text}"
    );
    assert!(line("public.t4").ends_with("same"), "{text}");
    assert!(text.ends_with("1 tables differ\n"), "{text}");
    let only = std::process::Command::new(env!("CARGO_BIN_EXE_datamig-fixtures"))
        .args([
            "compare",
            "--source",
            source.url(),
            "--target",
            target.url(),
            "--tables",
            "t1,t2",
        ])
        .output()?;
    assert_eq!(
        only.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&only.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn check_idempotency_reports_and_leaves_the_database_exactly_as_it_found_it()
-> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    let before = datamig::fingerprint(db.pool()).await?;

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_datamig-fixtures"))
        .args(["check-idempotency"])
        .env("DATABASE_URL", db.url())
        .output()?;
    assert_eq!(
        output.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("NOT idempotent 20240101_0000_count_runs: migration 20240101_0000_count_runs is not idempotent: its second run changed table public.counter (1 rows before, 1 after; before: (1); after: (2))"),
        "{text}"
    );
    assert!(
        text.contains("NOT idempotent 20240101_0001_bump_items:"),
        "{text}"
    );
    assert!(
        text.contains("changed table public.items (1000 rows before, 1000 after"),
        "{text}"
    );
    assert!(
        text.ends_with(
            "2 checked, 2 not idempotent; everything was rolled back, nothing was committed\n"
        ),
        "{text}"
    );

    assert_eq!(
        datamig::fingerprint(db.pool()).await?,
        before,
        "nothing was committed"
    );
    let ledgers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'datamig%'")
            .fetch_one(db.pool())
            .await?;
    assert_eq!(ledgers, 0, "not even the ledger");

    let json = std::process::Command::new(env!("CARGO_BIN_EXE_datamig-fixtures"))
        .args([
            "check-idempotency",
            "--only",
            "20240101_0000_count_runs",
            "--format",
            "json",
        ])
        .env("DATABASE_URL", db.url())
        .output()?;
    let report: serde_json::Value = serde_json::from_slice(&json.stdout)?;
    assert_eq!(report["committed"], false);
    assert_eq!(report["checks"].as_array().map(Vec::len), Some(1));
    assert_eq!(report["checks"][0]["first_run_rows"], 1);
    assert_eq!(report["checks"][0]["second_run_rows"], 1);
    assert_eq!(report["checks"][0]["changes"][0]["table"], "public.counter");
    assert_eq!(datamig::fingerprint(db.pool()).await?, before);
    Ok(())
}

#[tokio::test]
async fn check_idempotency_passes_idempotent_pending_migrations() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    datamig_demo_migrations::schema().run(db.pool()).await?;
    datamig_demo_migrations::seed_users(db.pool(), 300).await?;
    let demo = Migrator::new(db.pool().clone()).migrations([
        &backfill_notification_settings::MIGRATION,
        &normalize_user_emails::MIGRATION,
    ]);
    let before = datamig::fingerprint(db.pool()).await?;
    let checks = demo.check_idempotency().await?;
    assert_eq!(checks.len(), 2);
    assert!(checks.iter().all(|c| c.is_idempotent()), "{checks:?}");
    assert_eq!(
        (checks[0].first_run_rows, checks[1].first_run_rows),
        (300, 100)
    );
    assert_eq!(datamig::fingerprint(db.pool()).await?, before);
    Ok(())
}
