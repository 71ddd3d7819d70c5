//! The contract at its edges, where real deployments live: a restricted role on a ledger
//! another role owns, an older ledger, misspelled or nullable batch keys, sequences reset
//! while the application inserts, migrations for another backend, reruns that race, failed
//! commits, rewrites with equal values, identifiers that look like markers, and the values
//! that must never change between two versions (checksums, lock keys).

use std::sync::OnceLock;
use std::time::Duration;

use datamig::prelude::*;
use datamig::{Error, LedgerConfig, State};
use datamig_tests::{
    BUMP_ITEMS, COUNT_RUNS, bump_items, count_runs, counter, fixture_database, item_values, scalar,
    url_for,
};
use sqlx::PgPool;

async fn exec(pool: &PgPool, sql: String) -> anyhow::Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(pool)
        .await?;
    Ok(())
}

/// The fixtures, as an explicit list.
fn fixtures(pool: &PgPool) -> Migrator<Postgres> {
    Migrator::new(pool.clone()).migrations([&count_runs::MIGRATION, &bump_items::MIGRATION])
}

/// A login role with no `CREATE` anywhere, `SELECT, INSERT, UPDATE` on the ledger's tables
/// and the fixture tables; returns its URL.
async fn application_role(db: &datamig::testing::TestDatabase) -> anyhow::Result<String> {
    let role = format!("app_{}", db.name());
    exec(
        db.pool(),
        format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'app-pw' NOSUPERUSER NOCREATEDB NOCREATEROLE;
             REVOKE CREATE ON SCHEMA public FROM PUBLIC;
             GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {role};
             GRANT USAGE ON SCHEMA public TO {role};
             GRANT SELECT, INSERT, UPDATE ON counter, items, fixture_switches TO {role};",
            db = db.name()
        ),
    )
    .await?;
    for table in ["datamig_ledger", "datamig_runs", "datamig_ledger_layout"] {
        exec(
            db.pool(),
            format!("GRANT SELECT, INSERT, UPDATE ON {table} TO {role}"),
        )
        .await
        .ok();
    }
    url_for(db.url(), &role, "app-pw")
}

#[tokio::test]
async fn a_role_without_create_runs_every_command_on_a_ledger_another_role_owns()
-> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    // The owner creates the ledger once (the first deploy, a DBA).
    let owner = fixtures(db.pool()).migrations([&count_runs::MIGRATION]);
    owner.run().await?;
    let url = application_role(&db).await?;
    let app = PgPool::connect(&url).await?;
    let can_create: bool = sqlx::query_scalar("SELECT has_schema_privilege('public', 'CREATE')")
        .fetch_one(&app)
        .await?;
    assert!(!can_create, "the application role has no CREATE");

    let migrator = fixtures(&app);
    let report = migrator.run().await?;
    assert_eq!(
        report.applied.len(),
        1,
        "bump_items applied by the app role"
    );
    assert_eq!(item_values(db.pool()).await?, vec![1; 1000]);
    let statuses = migrator.status().await?;
    assert!(statuses.iter().all(|s| s.state == State::Applied));
    let check = migrator.check().await?;
    assert!(check.pending.is_empty() && check.drifted.is_empty());
    migrator.rerun(COUNT_RUNS).await?;
    assert_eq!(
        counter(db.pool()).await?,
        2,
        "the rerun ran as the app role"
    );
    let checks = migrator.check_idempotency().await?;
    assert!(checks.is_empty(), "nothing pending to check");

    // The CLI: status, check, verify, rerun, check-idempotency.
    for args in [
        &["status"][..],
        &["check"],
        &["verify"],
        &["rerun", COUNT_RUNS],
        &["check-idempotency"],
    ] {
        let output = datamig_tests::command(env!("CARGO_BIN_EXE_datamig-fixtures"), &url, args)
            .output()
            .await?;
        assert!(
            output.status.success(),
            "datamig {args:?} as the app role: {}",
            datamig_tests::text(&output.stderr)
        );
    }
    Ok(())
}

/// The ledger of the layout datamig wrote before layouts were recorded (layout 1).
const LAYOUT_1: &str = "
    CREATE TABLE datamig_ledger (
        id text PRIMARY KEY, checksum text NOT NULL, revision integer NOT NULL,
        description text NOT NULL, started_at timestamptz NOT NULL, finished_at timestamptz NOT NULL,
        duration_ms bigint NOT NULL, rows_affected bigint NOT NULL, notes text,
        applied_by text NOT NULL DEFAULT current_user, host text NOT NULL, app_version text,
        run_count integer NOT NULL DEFAULT 1, status text NOT NULL DEFAULT 'applied',
        checkpoint text, batches bigint NOT NULL DEFAULT 0);
    CREATE TABLE datamig_runs (
        run_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, migration_id text NOT NULL,
        action text NOT NULL, outcome text NOT NULL, checksum text NOT NULL, revision integer NOT NULL,
        started_at timestamptz NOT NULL, finished_at timestamptz NOT NULL, duration_ms bigint NOT NULL,
        rows_affected bigint NOT NULL, error text, reason text,
        db_user text NOT NULL DEFAULT current_user, host text NOT NULL, app_version text);
    CREATE INDEX datamig_runs_by_migration ON datamig_runs (migration_id, run_id);";

#[tokio::test]
async fn a_ledger_of_the_previous_layout_is_upgraded_in_place() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    exec(db.pool(), LAYOUT_1.to_string()).await?;
    sqlx::query(
        "INSERT INTO datamig_ledger (id, checksum, revision, description, started_at, finished_at,
             duration_ms, rows_affected, host)
         VALUES ($1, $2, 0, 'old', now(), now(), 5, 1, 'old-host')",
    )
    .bind(COUNT_RUNS)
    .bind(count_runs::MIGRATION.checksum())
    .execute(db.pool())
    .await?;

    // A role that may not alter the tables is told what to do, and nothing changes.
    let url = application_role(&db).await?;
    let app = PgPool::connect(&url).await?;
    let err = fixtures(&app).run().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("has layout 1 and this datamig needs layout 2")
            && err
                .to_string()
                .contains("run `datamig run` once as the owner"),
        "{err}"
    );
    assert_eq!(item_values(db.pool()).await?, vec![0; 1000]);

    let report = fixtures(db.pool()).run().await?;
    assert_eq!(report.already_applied, [COUNT_RUNS], "the old row is kept");
    assert_eq!(report.applied[0].id, BUMP_ITEMS);
    assert_eq!(counter(db.pool()).await?, 0, "count_runs did not run again");
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT max(version)::bigint FROM datamig_ledger_layout"
        )
        .await?,
        2
    );
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT count(*) FROM datamig_ledger WHERE host = 'old-host'"
        )
        .await?,
        1
    );
    // Upgraded once: the application role now works.
    exec(
        db.pool(),
        format!(
            "GRANT SELECT, INSERT, UPDATE ON datamig_ledger_layout TO app_{}",
            db.name()
        ),
    )
    .await?;
    assert_eq!(fixtures(&app).run().await?.applied.len(), 0);
    Ok(())
}

/// Batched over a key column that does not exist.
#[datamig::migration(
    id = "20240901_0000_misspelled_key",
    batch(table = "items", key = "idd", size = 100)
)]
async fn misspelled_key<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE items SET v = v + 1 WHERE id > $1 AND id <= $2",
        &batch,
    )
    .await?;
    Ok(())
}

/// Batched over a nullable key.
#[datamig::migration(
    id = "20240901_0001_nullable_key",
    batch(table = "loose", key = "k", size = 10)
)]
async fn nullable_key<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE loose SET v = v + 1 WHERE k > $1 AND k <= $2",
        &batch,
    )
    .await?;
    Ok(())
}

/// Batched over a key of a type batching does not walk (jsonb).
#[datamig::migration(
    id = "20240901_0002_json_key",
    batch(table = "named", key = "doc", size = 10)
)]
async fn json_key(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE named SET v = v + 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

async fn refused(migrator: Migrator<Postgres>) -> String {
    match migrator.run().await {
        Err(err @ Error::Config(_)) => err.to_string(),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_batch_keys_are_refused_before_the_first_batch() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    exec(
        db.pool(),
        "CREATE TABLE loose (k bigint, v integer NOT NULL DEFAULT 0);
         INSERT INTO loose (k) SELECT n FROM generate_series(1, 50) AS n;
         INSERT INTO loose (k) VALUES (NULL), (NULL);
         CREATE TABLE named (doc jsonb NOT NULL UNIQUE, v integer NOT NULL DEFAULT 0);
         INSERT INTO named (doc) VALUES ('[1]'), ('[2]');
         CREATE TABLE extremes (id bigint PRIMARY KEY, v integer NOT NULL DEFAULT 0);
         INSERT INTO extremes (id) VALUES (-9223372036854775808), (0), (9223372036854775807);"
            .to_string(),
    )
    .await?;
    let before = datamig::fingerprint(db.pool()).await?;
    let only = |m: &'static datamig::Migration| Migrator::new(db.pool().clone()).migrations([m]);

    let err = refused(only(&misspelled_key::MIGRATION)).await;
    assert!(err.contains("table items has no column \"idd\""), "{err}");
    let err = refused(only(&nullable_key::MIGRATION)).await;
    assert!(
        err.contains(
            "its key column loose.k is nullable, and a row whose key is NULL is never reached"
        ),
        "{err}"
    );
    assert!(
        err.contains("ALTER TABLE loose ALTER COLUMN k SET NOT NULL"),
        "{err}"
    );
    let err = refused(only(&json_key::MIGRATION)).await;
    assert!(
        err.contains("its key column named.doc is of type jsonb, which batching does not walk"),
        "{err}"
    );
    let err = refused(only(&smallest_key::MIGRATION)).await;
    assert!(err.contains("holds the key -9223372036854775808"), "{err}");

    assert!(
        before
            .differences(&datamig::fingerprint(db.pool()).await?)
            .is_empty(),
        "nothing changed"
    );
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM datamig_ledger").await?,
        0,
        "nothing recorded as applied"
    );
    Ok(())
}

/// Batched over a table holding the smallest bigint.
#[datamig::migration(
    id = "20240901_0003_smallest_key",
    batch(table = "extremes", key = "id", size = 2)
)]
async fn smallest_key(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE extremes SET v = v + 1 WHERE id > $1 AND id <= $2",
        &batch,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_misspelled_batch_key_is_refused_on_sqlite_too() -> anyhow::Result<()> {
    let db = datamig::testing::sqlite().await?;
    sqlx::raw_sql(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, v INTEGER NOT NULL);
         INSERT INTO items (id, v) VALUES (1, 0), (2, 0), (3, 0);
         CREATE TABLE loose (k INTEGER, v INTEGER NOT NULL DEFAULT 0);
         INSERT INTO loose (k) VALUES (1), ('two'), (NULL);",
    )
    .execute(db.pool())
    .await?;
    let pool = db.pool().clone();
    let run = |m: &'static datamig::Migration| {
        let migrator = Migrator::new(pool.clone()).migrations([m]);
        async move { migrator.run().await }
    };
    let err = run(&misspelled_key::MIGRATION)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("table items has no column \"idd\""), "{err}");
    let err = run(&nullable_key::MIGRATION).await.unwrap_err().to_string();
    assert!(err.contains("its key column loose.k is nullable"), "{err}");
    sqlx::raw_sql(
        "DROP TABLE loose;
         CREATE TABLE loose (k INTEGER NOT NULL UNIQUE, v INTEGER NOT NULL DEFAULT 0);
         INSERT INTO loose (k) VALUES (1), ('two');",
    )
    .execute(db.pool())
    .await?;
    let err = run(&nullable_key::MIGRATION).await.unwrap_err().to_string();
    assert!(
        err.contains("1 row(s) of loose hold a k that is not an integer"),
        "{err}"
    );
    let values: Vec<i64> = sqlx::query_scalar("SELECT v FROM items ORDER BY id")
        .fetch_all(db.pool())
        .await?;
    assert_eq!(values, [0, 0, 0]);
    let ledger: i64 = sqlx::query_scalar("SELECT count(*) FROM datamig_ledger")
        .fetch_one(db.pool())
        .await?;
    assert_eq!(ledger, 0);
    Ok(())
}

/// Resets the sequence of `tickets`.
#[datamig::migration(id = "20240902_0000_reset_tickets")]
async fn reset_tickets<DB: Backend>(ctx: &mut Ctx<'_, DB>) -> anyhow::Result<()> {
    for reset in ctx.reset_sequences(["tickets"]).await? {
        ctx.note(format!("next {}", reset.next_value));
    }
    Ok(())
}

#[tokio::test]
async fn a_sequence_ahead_of_the_rows_is_never_moved_back() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    exec(
        db.pool(),
        "CREATE TABLE tickets (id bigserial PRIMARY KEY, note text);
         INSERT INTO tickets (note) SELECT 'x' FROM generate_series(1, 1000);
         DELETE FROM tickets WHERE id > 10;"
            .to_string(),
    )
    .await?;
    let report = Migrator::new(db.pool().clone())
        .migrations([&reset_tickets::MIGRATION])
        .run()
        .await?;
    assert_eq!(report.applied[0].notes, ["next 1001"]);
    let id: i64 = sqlx::query_scalar("INSERT INTO tickets (note) VALUES ('new') RETURNING id")
        .fetch_one(db.pool())
        .await?;
    assert_eq!(id, 1001, "the sequence kept its place");

    let file = datamig::testing::sqlite().await?;
    sqlx::raw_sql(
        "CREATE TABLE tickets (id INTEGER PRIMARY KEY AUTOINCREMENT, note TEXT);
         INSERT INTO tickets (note) VALUES ('a'), ('b'), ('c'), ('d'), ('e');
         DELETE FROM tickets WHERE id > 2;",
    )
    .execute(file.pool())
    .await?;
    let report = Migrator::new(file.pool().clone())
        .migrations([&reset_tickets::MIGRATION])
        .run()
        .await?;
    assert_eq!(report.applied[0].notes, ["next 6"]);
    Ok(())
}

#[tokio::test]
async fn sequences_reset_while_the_application_inserts_never_collide() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    exec(
        db.pool(),
        "CREATE TABLE tickets (id bigserial PRIMARY KEY, note text);
         INSERT INTO tickets (note) SELECT 'x' FROM generate_series(1, 100);"
            .to_string(),
    )
    .await?;
    // The application inserts in short transactions while sequences are reset again and
    // again; every insert must succeed.
    let app = db.pool().clone();
    let inserts = tokio::spawn(async move {
        for _ in 0..2_000 {
            sqlx::query("INSERT INTO tickets (note) VALUES ('app')")
                .execute(&app)
                .await?;
        }
        Ok::<_, sqlx::Error>(())
    });
    let migrator = Migrator::new(db.pool().clone()).migrations([&reset_tickets::MIGRATION]);
    migrator.run().await?;
    let mut resets = 1;
    while !inserts.is_finished() {
        migrator.rerun(reset_tickets::MIGRATION.id()).await?;
        resets += 1;
    }
    inserts.await??;
    assert!(resets > 1, "the resets overlapped the inserts ({resets})");
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM tickets").await?,
        2_100
    );
    Ok(())
}

/// Only for SQLite.
#[datamig::migration(id = "20240903_0000_sqlite_only")]
async fn sqlite_only(ctx: &mut Ctx<'_, Sqlite>) -> anyhow::Result<()> {
    ctx.execute("UPDATE counter SET n = n + 100").await?;
    Ok(())
}

#[tokio::test]
async fn a_migration_for_another_backend_is_skipped_and_reported() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    let migrator = Migrator::new(db.pool().clone())
        .migrations([&count_runs::MIGRATION, &sqlite_only::MIGRATION]);
    let report = migrator.run().await?;
    assert_eq!(report.applied.len(), 1);
    assert_eq!(report.not_for_backend, [sqlite_only::MIGRATION.id()]);
    assert_eq!(counter(db.pool()).await?, 1);
    let statuses = migrator.status().await?;
    let other = statuses
        .iter()
        .find(|s| s.id == sqlite_only::MIGRATION.id())
        .unwrap();
    assert_eq!(other.state, State::NotForBackend);
    assert!(migrator.check().await?.pending.is_empty());
    let err = migrator
        .clone()
        .only(sqlite_only::MIGRATION.id())
        .run()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedBackend { .. }),
        "--only naming it is an error: {err}"
    );
    Ok(())
}

/// The pool a migration body uses to act as a second runner would.
static OTHER_RUNNER: OnceLock<PgPool> = OnceLock::new();

/// While it runs, another runner re-runs it (its ledger row moves on).
#[datamig::migration(id = "20240904_0000_raced_rerun")]
async fn raced_rerun(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.execute("UPDATE counter SET n = n + 1").await?;
    if let Some(other) = OTHER_RUNNER.get() {
        sqlx::query("UPDATE datamig_ledger SET run_count = run_count + 1 WHERE id = $1")
            .bind("20240904_0000_raced_rerun")
            .execute(other)
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_rerun_whose_ledger_row_moved_is_rolled_back() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    let migrator = Migrator::new(db.pool().clone()).migrations([&raced_rerun::MIGRATION]);
    migrator.run().await?;
    assert_eq!(counter(db.pool()).await?, 1);
    OTHER_RUNNER.set(db.pool().clone()).ok();
    let err = migrator
        .rerun(raced_rerun::MIGRATION.id())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("its ledger row changed while it ran"),
        "{err}"
    );
    assert_eq!(counter(db.pool()).await?, 1, "the rerun was rolled back");
    Ok(())
}

#[tokio::test]
async fn no_schema_and_the_current_schema_are_one_lock() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    // The lock keys are part of the contract (a rolling deploy mixes versions): pinned.
    assert_eq!(
        LedgerConfig::default().lock_key(),
        4_023_995_056_163_852_709
    );
    assert_eq!(
        LedgerConfig::default().schema("public").lock_key(),
        LedgerConfig::default().schema("public").lock_key()
    );
    assert_eq!(
        LedgerConfig::default()
            .schema("public")
            .lock_key_in("public"),
        LedgerConfig::default().lock_key()
    );
    // A runner with `schema("public")` waits for one without a schema.
    datamig_tests::switch_on(db.pool(), "slow").await?;
    let first = fixtures(db.pool()).migrations([&count_runs::MIGRATION]);
    let holder = tokio::spawn(async move { first.run().await });
    datamig_tests::wait_for_lock_holder(db.pool()).await?;
    let err = fixtures(db.pool())
        .ledger(LedgerConfig::default().schema("public"))
        .runner_lock_timeout(Duration::from_millis(300))
        .run()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LockTimeout { .. }), "{err}");
    holder.await??;
    assert_eq!(counter(db.pool()).await?, 1);
    Ok(())
}

/// A fixed body whose checksum must never change.
#[datamig::migration(id = "20240905_0000_pinned")]
async fn pinned(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.execute("UPDATE counter SET n = n + 1").await?;
    Ok(())
}

#[test]
fn the_checksum_of_a_fixed_body_is_pinned() {
    // Changing how checksums are computed would mark every applied migration as drifted.
    assert_eq!(
        pinned::MIGRATION.checksum(),
        "db9dfb125092af16fbc1b9338bdc1cade50659ed2569dc7ff0daaec22f0d5b6f"
    );
}

/// Stamps every row with the transaction's time, through `ctx.tx()`: within one
/// transaction `now()` is the same, so a second pass leaves equal values.
#[datamig::migration(id = "20240906_0000_stamp_rows")]
async fn stamp_rows(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    sqlx::query("UPDATE stamped SET touched_at = now()")
        .execute(ctx.tx())
        .await?;
    Ok(())
}

/// Rewrites every row with its own values, through `ctx.tx()`, uncounted.
#[datamig::migration(id = "20240906_0001_rewrite_rows")]
async fn rewrite_rows(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    sqlx::query("UPDATE stamped SET v = v")
        .execute(ctx.tx())
        .await?;
    Ok(())
}

/// The same on SQLite.
#[datamig::migration(id = "20240906_0002_rewrite_rows_sqlite")]
async fn rewrite_rows_sqlite(ctx: &mut Ctx<'_, Sqlite>) -> anyhow::Result<()> {
    sqlx::query("UPDATE stamped SET v = v")
        .execute(ctx.tx())
        .await?;
    Ok(())
}

#[tokio::test]
async fn rewrites_with_equal_values_are_caught_by_the_write_counters() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    exec(
        db.pool(),
        "CREATE TABLE stamped (id bigint PRIMARY KEY, v integer NOT NULL, touched_at timestamptz);
         INSERT INTO stamped (id, v) SELECT n, n FROM generate_series(1, 50) AS n;"
            .to_string(),
    )
    .await?;
    // Both passes of check-idempotency in one transaction: now() is equal in both.
    let checks = Migrator::new(db.pool().clone())
        .migrations([&stamp_rows::MIGRATION])
        .check_idempotency()
        .await?;
    assert_eq!(checks[0].second_run_writes, 50);
    assert!(
        checks[0].changes.is_empty(),
        "the data is equal after both passes"
    );
    let err = checks[0].clone().into_result().unwrap_err().to_string();
    assert!(
        err.contains("wrote 50 rows, as the database counted them"),
        "{err}"
    );
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT count(*) FROM stamped WHERE touched_at IS NOT NULL"
        )
        .await?,
        0,
        "check-idempotency kept nothing"
    );

    // assert_idempotent: equal values written in a second transaction.
    let migrator = Migrator::new(db.pool().clone()).migrations([&rewrite_rows::MIGRATION]);
    let err = datamig::testing::assert_idempotent_with(&migrator, rewrite_rows::MIGRATION.id())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotIdempotent {
                second_run_writes: 50,
                ..
            }
        ),
        "{err}"
    );

    let file = datamig::testing::sqlite().await?;
    sqlx::raw_sql(
        "CREATE TABLE stamped (id INTEGER PRIMARY KEY, v INTEGER NOT NULL);
         INSERT INTO stamped (id, v) VALUES (1, 1), (2, 2), (3, 3);",
    )
    .execute(file.pool())
    .await?;
    let migrator = Migrator::new(file.pool().clone()).migrations([&rewrite_rows_sqlite::MIGRATION]);
    let err =
        datamig::testing::assert_idempotent_with(&migrator, rewrite_rows_sqlite::MIGRATION.id())
            .await
            .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotIdempotent {
                second_run_writes: 3,
                ..
            }
        ),
        "{err}"
    );
    // And a migration that converges writes nothing the second time.
    let checks = Migrator::new(file.pool().clone())
        .migrations([&converging_sqlite::MIGRATION])
        .check_idempotency()
        .await?;
    assert!(checks[0].is_idempotent(), "{:?}", checks[0]);
    Ok(())
}

/// Converges: writes only rows that differ, and upserts Rust values.
#[datamig::migration(id = "20240906_0003_converging_sqlite")]
async fn converging_sqlite(ctx: &mut Ctx<'_, Sqlite>) -> anyhow::Result<()> {
    ctx.execute("UPDATE stamped SET v = 0 WHERE v <> 0").await?;
    ctx.upsert("stamped")
        .key(["id"])
        .rows(["id", "v"], vec![(10_i64, 0_i64), (11, 0)])
        .update_if_changed()
        .execute()
        .await?;
    Ok(())
}

/// Upserts into a table whose names look like a statement marker.
#[datamig::migration(id = "20240907_0000_marker_names")]
async fn marker_names<DB: Backend>(ctx: &mut Ctx<'_, DB>) -> anyhow::Result<()> {
    ctx.upsert("%SOURCE%")
        .key(["%SOURCE%"])
        .rows(["%SOURCE%", "v %SOURCE%"], vec![(1_i64, "one"), (2, "two")])
        .update_if_changed()
        .execute()
        .await?;
    Ok(())
}

#[tokio::test]
async fn identifiers_that_look_like_a_marker_work() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    exec(
        db.pool(),
        r#"CREATE TABLE "%SOURCE%" ("%SOURCE%" bigint PRIMARY KEY, "v %SOURCE%" text)"#.to_string(),
    )
    .await?;
    Migrator::new(db.pool().clone())
        .migrations([&marker_names::MIGRATION])
        .run()
        .await?;
    assert_eq!(
        scalar(db.pool(), r#"SELECT count(*) FROM "%SOURCE%""#).await?,
        2
    );

    let file = datamig::testing::sqlite().await?;
    sqlx::raw_sql(r#"CREATE TABLE "%SOURCE%" ("%SOURCE%" INTEGER PRIMARY KEY, "v %SOURCE%" TEXT)"#)
        .execute(file.pool())
        .await?;
    Migrator::new(file.pool().clone())
        .migrations([&marker_names::MIGRATION])
        .run()
        .await?;
    let rows: i64 = sqlx::query_scalar(r#"SELECT count(*) FROM "%SOURCE%""#)
        .fetch_one(file.pool())
        .await?;
    assert_eq!(rows, 2);
    Ok(())
}

/// Inserts into `doomed`, whose deferred trigger ends the session during COMMIT.
#[datamig::migration(id = "20240908_0000_doomed_commit")]
async fn doomed_commit(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.execute("UPDATE counter SET n = n + 1").await?;
    ctx.execute("INSERT INTO doomed VALUES (1)").await?;
    Ok(())
}

#[tokio::test]
async fn a_failed_commit_is_reported_as_unknown_then_read_back_from_the_ledger()
-> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    exec(db.pool(), datamig_tests::DOOMED_AT_COMMIT.to_string()).await?;
    let err = Migrator::new(db.pool().clone())
        .migrations([&doomed_commit::MIGRATION])
        .run()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::CommitOutcome {
                applied: Some(false),
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("so its outcome was unknown")
            && message.contains("shows it not applied: it was rolled back"),
        "{message}"
    );
    assert_eq!(counter(db.pool()).await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_binary_without_its_migrations_warns_that_they_are_not_linked() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    let mut fixtures =
        datamig_tests::command(env!("CARGO_BIN_EXE_datamig-fixtures"), db.url(), &["run"]);
    assert!(fixtures.output().await?.status.success());

    let unlinked = env!("CARGO_BIN_EXE_datamig-unlinked");
    let output = datamig_tests::command(unlinked, db.url(), &["run"])
        .output()
        .await?;
    let stderr = datamig_tests::text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("no migration is registered in this binary, yet the ledger holds 2")
            && stderr.contains("`link()`"),
        "{stderr}"
    );
    let output = datamig_tests::command(unlinked, db.url(), &["--format", "json", "run"])
        .output()
        .await?;
    let result: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert!(
        result["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("probably not linked")),
        "{result}"
    );
    Ok(())
}

#[tokio::test]
async fn fingerprints_stream_and_match_the_reference_computation() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    exec(
        db.pool(),
        "CREATE TABLE wide (tenant int, id bigint, note text, amount numeric, PRIMARY KEY (tenant, id));
         INSERT INTO wide SELECT n % 7, n, CASE WHEN n % 5 = 0 THEN NULL ELSE 'row ' || n END, n / 3.0
         FROM generate_series(1, 20000) AS n;
         CREATE TABLE empty_one (id int PRIMARY KEY);
         CREATE TABLE keyless (a int, b text);
         INSERT INTO keyless VALUES (2, 'b'), (1, 'a'), (1, 'a');"
            .to_string(),
    )
    .await?;
    let fingerprint = datamig::fingerprint(db.pool()).await?;
    // The reference: SHA-256 over the rows' SHA-256s in key order (full-row order without
    // a key), computed in one SQL aggregate.
    for (table, order) in [
        ("wide", "t.tenant, t.id"),
        ("empty_one", "t.id"),
        ("keyless", "t::text"),
    ] {
        let reference: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT encode(sha256(COALESCE(string_agg(sha256(convert_to(t::text, 'UTF8')), ''::bytea ORDER BY {order}), ''::bytea)), 'hex')
             FROM public.{table} AS t"
        )))
        .fetch_one(db.pool())
        .await?;
        let ours = &fingerprint.tables[&format!("public.{table}")];
        assert_eq!(ours.sha256, reference, "{table}");
    }
    assert_eq!(fingerprint.tables["public.wide"].rows, 20000);
    Ok(())
}
