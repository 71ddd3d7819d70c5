//! The helpers converge: upsert counts on a first and a second run, no row rewritten by a
//! re-run, any identifier quoted; batched migrations resume after a failure or an
//! interruption with every batch committed once, wait out busy tables; sequences are reset.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use datamig::prelude::*;
use datamig::{Error, Migration, Progress, UpsertMode};
use datamig_tests::{
    BUMP_ITEMS, bump_items, create_fixture_tables, fixture_database, item_values, scalar,
    wait_until,
};
use sqlx::PgPool;

/// `prefs` holds users 1 to 5 on the free plan; the upserts bring users 1 to 10, of which
/// 1 to 3 are equal, 4 and 5 changed, and 6 to 10 new.
async fn prefs_database() -> anyhow::Result<datamig::testing::TestDatabase> {
    let db = datamig::testing::postgres().await?;
    sqlx::raw_sql(
        "CREATE TABLE prefs (user_id bigint PRIMARY KEY, plan text NOT NULL, score integer);
         INSERT INTO prefs SELECT n, 'free', 0 FROM generate_series(1, 5) AS n;",
    )
    .execute(db.pool())
    .await?;
    Ok(db)
}

fn incoming() -> Vec<(i64, &'static str, Option<i32>)> {
    (1..=10)
        .map(|id| match id {
            1..=3 => (id, "free", Some(0)),
            4 | 5 => (id, "pro", Some(1)),
            _ => (id, "free", None),
        })
        .collect()
}

/// Upserts `incoming()` into `prefs` in `mode` and notes the counts.
async fn upsert_incoming(ctx: &mut Ctx<'_, Postgres>, mode: UpsertMode) -> anyhow::Result<()> {
    let report = ctx
        .upsert("prefs")
        .key(["user_id"])
        .rows(["user_id", "plan", "score"], incoming())
        .mode(mode)
        .execute()
        .await?;
    ctx.note(format!("{report:?}"));
    Ok(())
}

/// Upserts `incoming()` without overwriting.
#[datamig::migration(id = "20240601_0000_prefs_insert_missing")]
async fn prefs_insert_missing(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    upsert_incoming(ctx, UpsertMode::InsertMissing).await
}

/// Upserts `incoming()`, overwriting.
#[datamig::migration(id = "20240601_0001_prefs_overwrite")]
async fn prefs_overwrite(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    upsert_incoming(ctx, UpsertMode::Overwrite).await
}

/// Upserts `incoming()`, updating only rows that differ.
#[datamig::migration(id = "20240601_0002_prefs_update_if_changed")]
async fn prefs_update_if_changed(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    upsert_incoming(ctx, UpsertMode::UpdateIfChanged).await
}

/// The same rows, from a query.
#[datamig::migration(id = "20240601_0003_prefs_from_query")]
async fn prefs_from_query(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    let report = ctx
        .upsert("prefs")
        .key(["user_id"])
        .from_query(
            "SELECT n::bigint AS user_id,
                    CASE WHEN n IN (4, 5) THEN 'pro' ELSE 'free' END AS plan,
                    CASE WHEN n <= 3 THEN 0 WHEN n <= 5 THEN 1 END AS score
             FROM generate_series(1, 10) AS n",
        )
        .update_if_changed()
        .execute()
        .await?;
    ctx.note(format!("{report:?}"));
    Ok(())
}

fn counts(inserted: u64, updated: u64, unchanged: u64) -> String {
    format!("UpsertReport {{ inserted: {inserted}, updated: {updated}, unchanged: {unchanged} }}")
}

/// Every row's `xmin` (the transaction that last wrote it) and values.
async fn row_versions(pool: &PgPool) -> anyhow::Result<Vec<(String, i64, String, Option<i32>)>> {
    Ok(
        sqlx::query_as("SELECT xmin::text, user_id, plan, score FROM prefs ORDER BY user_id")
            .fetch_all(pool)
            .await?,
    )
}

/// Runs `migration`, then re-runs it; returns both runs' notes (the upsert's counts).
async fn run_twice(
    pool: &PgPool,
    migration: &'static Migration,
) -> anyhow::Result<(String, String)> {
    let first = Migrator::new(pool.clone())
        .migrations([migration])
        .run()
        .await?;
    let second = Migrator::new(pool.clone())
        .migrations([migration])
        .rerun(migration.id())
        .await?;
    Ok((
        first.applied[0].notes[0].clone(),
        second.applied[0].notes[0].clone(),
    ))
}

#[tokio::test]
async fn insert_missing_inserts_new_keys_then_nothing_and_rewrites_no_row() -> anyhow::Result<()> {
    let db = prefs_database().await?;
    let first = Migrator::new(db.pool().clone())
        .migrations([&prefs_insert_missing::MIGRATION])
        .run()
        .await?;
    assert_eq!(first.applied[0].notes[0], counts(5, 0, 5));
    assert_eq!(first.applied[0].rows_affected, 5);
    let before = row_versions(db.pool()).await?;
    let second = Migrator::new(db.pool().clone())
        .migrations([&prefs_insert_missing::MIGRATION])
        .rerun(prefs_insert_missing::MIGRATION.id())
        .await?;
    assert_eq!(second.applied[0].notes[0], counts(0, 0, 10));
    assert_eq!(row_versions(db.pool()).await?, before, "no row rewritten");
    assert_eq!(before[3].2, "free", "an existing row is kept as it was");
    Ok(())
}

#[tokio::test]
async fn overwrite_updates_every_existing_row_on_every_run() -> anyhow::Result<()> {
    let db = prefs_database().await?;
    let (first, second) = run_twice(db.pool(), &prefs_overwrite::MIGRATION).await?;
    assert_eq!(first, counts(5, 5, 0));
    assert_eq!(
        second,
        counts(0, 10, 0),
        "overwrite rewrites rows even when nothing differs"
    );
    let rows = row_versions(db.pool()).await?;
    assert_eq!((rows[3].2.as_str(), rows[3].3), ("pro", Some(1)));
    assert_eq!(rows[9].3, None, "a NULL travels through COPY");
    Ok(())
}

#[tokio::test]
async fn update_if_changed_updates_only_differences_and_a_rerun_rewrites_no_row()
-> anyhow::Result<()> {
    let db = prefs_database().await?;
    let first = Migrator::new(db.pool().clone())
        .migrations([&prefs_update_if_changed::MIGRATION])
        .run()
        .await?;
    assert_eq!(first.applied[0].notes[0], counts(5, 2, 3));
    let before = row_versions(db.pool()).await?;
    let second = Migrator::new(db.pool().clone())
        .migrations([&prefs_update_if_changed::MIGRATION])
        .rerun(prefs_update_if_changed::MIGRATION.id())
        .await?;
    assert_eq!(second.applied[0].notes[0], counts(0, 0, 10));
    assert_eq!(second.applied[0].rows_affected, 0);
    assert_eq!(
        row_versions(db.pool()).await?,
        before,
        "no row rewritten: every xmin is the same"
    );
    Ok(())
}

#[tokio::test]
async fn rows_from_a_query_converge_the_same_way() -> anyhow::Result<()> {
    let db = prefs_database().await?;
    let (first, second) = run_twice(db.pool(), &prefs_from_query::MIGRATION).await?;
    assert_eq!(first, counts(5, 2, 3));
    assert_eq!(second, counts(0, 0, 10));
    Ok(())
}

/// Upserts into a table and columns whose names hold quotes, spaces and semicolons.
#[datamig::migration(id = "20240601_0004_weird_names")]
async fn weird_names(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    let rows = vec![
        (1_i64, "it's \"quoted\"\tand\ttabbed\\"),
        (2, "line\nbreak"),
    ];
    let report = ctx
        .upsert("we\"ird table")
        .key(["user id"])
        .rows(["user id", "plan; DROP TABLE canary; --"], rows)
        .update_if_changed()
        .execute()
        .await?;
    ctx.note(format!("{report:?}"));
    Ok(())
}

#[tokio::test]
async fn identifiers_with_quotes_spaces_and_semicolons_are_quoted_and_values_are_never_spliced()
-> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    sqlx::raw_sql(
        r#"CREATE TABLE canary (id int);
           CREATE TABLE "we""ird table" ("user id" bigint PRIMARY KEY, "plan; DROP TABLE canary; --" text);"#,
    )
    .execute(db.pool())
    .await?;
    let (first, second) = run_twice(db.pool(), &weird_names::MIGRATION).await?;
    assert_eq!(first, counts(2, 0, 0));
    assert_eq!(second, counts(0, 0, 2));
    let values: Vec<String> = sqlx::query_scalar(
        r#"SELECT "plan; DROP TABLE canary; --" FROM "we""ird table" ORDER BY "user id""#,
    )
    .fetch_all(db.pool())
    .await?;
    assert_eq!(
        values,
        vec![
            "it's \"quoted\"\tand\ttabbed\\".to_string(),
            "line\nbreak".to_string()
        ]
    );
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM canary").await?,
        0,
        "the canary table still exists"
    );
    Ok(())
}

/// Upserts rows that hold one key twice.
#[datamig::migration(id = "20240601_0005_duplicate_keys")]
async fn duplicate_keys(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.upsert("prefs")
        .key(["user_id"])
        .rows(
            ["user_id", "plan", "score"],
            vec![(1_i64, "a", 1), (1, "b", 2)],
        )
        .overwrite()
        .execute()
        .await?;
    Ok(())
}

/// Names a key column the rows do not have.
#[datamig::migration(id = "20240601_0006_wrong_width")]
async fn wrong_width(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.upsert("prefs")
        .key(["user_id"])
        .rows(["user_id", "plan"], vec![(1_i64, "a", 1)])
        .execute()
        .await?;
    Ok(())
}

#[tokio::test]
async fn bad_upsert_input_is_named_plainly_and_changes_nothing() -> anyhow::Result<()> {
    let db = prefs_database().await?;
    let before = row_versions(db.pool()).await?;
    for (migration, expected) in [
        (
            &duplicate_keys::MIGRATION,
            "hold the same key more than once",
        ),
        (
            &wrong_width::MIGRATION,
            "names 2 columns but its rows hold 3 values",
        ),
    ] {
        let err = Migrator::new(db.pool().clone())
            .migrations([migration])
            .run()
            .await
            .unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
    }
    assert_eq!(row_versions(db.pool()).await?, before);
    Ok(())
}

#[tokio::test]
async fn a_batched_migration_that_fails_resumes_after_its_last_committed_batch()
-> anyhow::Result<()> {
    let db = fixture_database(&["fail_batch_3"]).await?;
    let migrator = || Migrator::new(db.pool().clone()).migrations([&bump_items::MIGRATION]);

    let err = migrator().run().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("batch 3: batch 3 failed on purpose"),
        "{err}"
    );
    let (status, checkpoint, batches): (String, Option<String>, i64) =
        sqlx::query_as("SELECT status, checkpoint, batches FROM datamig_ledger")
            .fetch_one(db.pool())
            .await?;
    assert_eq!(
        (status.as_str(), checkpoint.as_deref(), batches),
        ("running", Some("200"), 2)
    );
    let values = item_values(db.pool()).await?;
    assert!(values[..200].iter().all(|v| *v == 1) && values[200..].iter().all(|v| *v == 0));
    let failed: i64 = scalar(
        db.pool(),
        "SELECT count(*) FROM datamig_runs WHERE outcome = 'failed'",
    )
    .await?;
    assert_eq!(failed, 1);

    sqlx::query("DELETE FROM fixture_switches")
        .execute(db.pool())
        .await?;
    let report = migrator().run().await?;
    assert_eq!(report.applied[0].batches, 8, "it resumed at batch 3");
    assert!(
        item_values(db.pool()).await?.iter().all(|v| *v == 1),
        "each batch committed once"
    );
    let (status, batches, rows): (String, i64, i64) =
        sqlx::query_as("SELECT status, batches, rows_affected FROM datamig_ledger")
            .fetch_one(db.pool())
            .await?;
    assert_eq!((status.as_str(), batches, rows), ("applied", 10, 1000));
    Ok(())
}

#[tokio::test]
async fn an_interrupted_batched_migration_converges_to_the_uninterrupted_result()
-> anyhow::Result<()> {
    let uninterrupted = datamig::testing::postgres().await?;
    create_fixture_tables(uninterrupted.pool()).await?;
    Migrator::new(uninterrupted.pool().clone())
        .migrations([&bump_items::MIGRATION])
        .run()
        .await?;

    let db = fixture_database(&[]).await?;
    for expected in [4, 8] {
        let err = Migrator::new(db.pool().clone())
            .migrations([&bump_items::MIGRATION])
            .interrupt_after_batches(4)
            .run()
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Interrupted { batches, .. } if batches == expected),
            "{err:?}"
        );
    }
    let report = Migrator::new(db.pool().clone())
        .migrations([&bump_items::MIGRATION])
        .run()
        .await?;
    assert_eq!(report.applied[0].batches, 2);
    assert_eq!(
        item_values(db.pool()).await?,
        item_values(uninterrupted.pool()).await?
    );
    let runs: Vec<(String, String)> = sqlx::query_as("SELECT action, outcome FROM datamig_runs")
        .fetch_all(db.pool())
        .await?;
    assert_eq!(runs, vec![("resume".to_string(), "succeeded".to_string())]);
    Ok(())
}

#[tokio::test]
async fn a_batch_blocked_by_a_row_lock_times_out_retries_and_succeeds_once_the_lock_is_released()
-> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    let mut blocker = db.pool().begin().await?;
    sqlx::query("SELECT * FROM items WHERE id = 350 FOR UPDATE")
        .execute(&mut *blocker)
        .await?;

    let pool = db.pool().clone();
    let run = tokio::spawn(async move {
        Migrator::new(pool)
            .migrations([&bump_items::MIGRATION])
            .lock_timeout(Duration::from_millis(100))
            .run()
            .await
    });
    // Batches 1 to 3 commit; batch 4 (keys 301 to 400) waits for the row lock: its session
    // is seen waiting on a lock, and its checkpoint has not moved.
    wait_until(
        db.pool(),
        "SELECT count(*) FROM datamig_ledger WHERE checkpoint = '300'",
    )
    .await?;
    wait_until(
        db.pool(),
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name LIKE 'datamig/%'
           AND wait_event_type = 'Lock'",
    )
    .await?;
    // Its lock timeout ends the wait: the batch rolls back and the runner backs off (its
    // session idle, outside a transaction) before it tries the batch again.
    wait_until(
        db.pool(),
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name LIKE 'datamig/%'
           AND state = 'idle'",
    )
    .await?;
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT max(checkpoint::bigint) FROM datamig_ledger"
        )
        .await?,
        300,
        "batch 4 is held back"
    );
    blocker.commit().await?;

    let report = run.await??;
    assert!(
        report.applied[0].lock_retries >= 1,
        "{:?}",
        report.applied[0]
    );
    assert!(item_values(db.pool()).await?.iter().all(|v| *v == 1));
    Ok(())
}

/// `bump_items` with a single retry.
#[datamig::migration(
    id = "20240602_0000_bump_items_impatient",
    batch(table = "items", key = "id", size = 100, retries = 1)
)]
async fn bump_items_impatient(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE items SET v = v + 1 WHERE id > $1 AND id <= $2",
        &batch,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_batch_that_keeps_timing_out_fails_after_its_retries_and_keeps_earlier_batches()
-> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    let mut blocker = db.pool().begin().await?;
    sqlx::query("SELECT * FROM items WHERE id = 150 FOR UPDATE")
        .execute(&mut *blocker)
        .await?;
    let err = Migrator::new(db.pool().clone())
        .migrations([&bump_items_impatient::MIGRATION])
        .lock_timeout(Duration::from_millis(50))
        .run()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("lock timeout"), "{err}");
    blocker.rollback().await?;
    assert_eq!(
        scalar(db.pool(), "SELECT checkpoint::bigint FROM datamig_ledger").await?,
        100
    );
    let report = Migrator::new(db.pool().clone())
        .migrations([&bump_items_impatient::MIGRATION])
        .run()
        .await?;
    assert_eq!(report.applied[0].batches, 9);
    assert!(item_values(db.pool()).await?.iter().all(|v| *v == 1));
    Ok(())
}

#[tokio::test]
async fn progress_is_reported_after_every_batch() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    sqlx::query("ANALYZE items").execute(db.pool()).await?;
    let events: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let sink = Arc::clone(&events);
    Migrator::new(db.pool().clone())
        .migrations([&bump_items::MIGRATION])
        .on_progress(move |p| sink.lock().unwrap().push(p.clone()))
        .run()
        .await?;
    let events = events.lock().unwrap();
    assert_eq!(events.len(), 10);
    assert!(
        events
            .iter()
            .all(|e| e.id == BUMP_ITEMS && e.estimated_total == Some(1000))
    );
    let batches: Vec<u64> = events.iter().map(|e| e.batches).collect();
    assert_eq!(batches, (1..=10).collect::<Vec<_>>());
    let last = events.last().unwrap();
    assert_eq!(
        (last.keys_done, last.rows_affected, last.checkpoint.clone()),
        (1000, 1000, Some("1000".to_string()))
    );
    assert!(last.keys_per_second > 0.0);
    Ok(())
}

/// Resets the sequences of the copied tables, and analyses one.
#[datamig::migration(id = "20240603_0000_after_copy")]
async fn after_copy(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    for reset in ctx
        .reset_sequences(["copied serial", "copied_identity", "empty_serial"])
        .await?
    {
        ctx.note(format!(
            "{}.{} next {}",
            reset.table, reset.column, reset.next_value
        ));
    }
    ctx.analyze(["copied serial"]).await?;
    Ok(())
}

#[tokio::test]
async fn sequences_are_reset_so_the_next_insert_does_not_collide() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    sqlx::raw_sql(
        r#"CREATE TABLE "copied serial" (id serial PRIMARY KEY, label text);
           CREATE TABLE copied_identity (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY);
           CREATE TABLE empty_serial (id bigserial PRIMARY KEY);
           INSERT INTO "copied serial" (id, label) SELECT n, 'copied' FROM generate_series(1, 100) AS n;
           INSERT INTO copied_identity (id) SELECT n FROM generate_series(1, 7) AS n;"#,
    )
    .execute(db.pool())
    .await?;
    // Before: the next insert collides with a copied id.
    assert!(
        sqlx::query(r#"INSERT INTO "copied serial" (label) VALUES ('new')"#)
            .execute(db.pool())
            .await
            .is_err()
    );

    let report = Migrator::new(db.pool().clone())
        .migrations([&after_copy::MIGRATION])
        .run()
        .await?;
    assert_eq!(
        report.applied[0].notes,
        vec![
            "copied serial.id next 101",
            "copied_identity.id next 8",
            "empty_serial.id next 1"
        ]
    );
    let id: i32 =
        sqlx::query_scalar(r#"INSERT INTO "copied serial" (label) VALUES ('new') RETURNING id"#)
            .fetch_one(db.pool())
            .await?;
    assert_eq!(id, 101);
    let id: i64 = sqlx::query_scalar("INSERT INTO copied_identity DEFAULT VALUES RETURNING id")
        .fetch_one(db.pool())
        .await?;
    assert_eq!(id, 8);
    let id: i64 = sqlx::query_scalar("INSERT INTO empty_serial DEFAULT VALUES RETURNING id")
        .fetch_one(db.pool())
        .await?;
    assert_eq!(id, 1);
    let analysed: f32 =
        sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE relname = 'copied serial'")
            .fetch_one(db.pool())
            .await?;
    assert!(analysed >= 100.0, "ANALYZE ran: {analysed}");
    Ok(())
}

/// Resets the sequences of a table that does not exist.
#[datamig::migration(id = "20240603_0001_reset_missing")]
async fn reset_missing(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.reset_sequences(["no_such_table"]).await?;
    Ok(())
}

#[tokio::test]
async fn resetting_the_sequences_of_a_missing_table_is_a_clear_error() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    let err = Migrator::new(db.pool().clone())
        .migrations([&reset_missing::MIGRATION])
        .run()
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot reset the sequences of no_such_table: no such table"),
        "{err}"
    );
    Ok(())
}

/// `bump_items` in 250-key batches with a pause between batches.
#[datamig::migration(
    id = "20240604_0000_bump_items_pausing",
    batch(table = "items", key = "id", size = 250, pause = "150ms")
)]
async fn bump_items_pausing(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE items SET v = v + 1 WHERE id > $1 AND id <= $2",
        &batch,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_pause_leaves_room_between_batches() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    let started = std::time::Instant::now();
    let report = Migrator::new(db.pool().clone())
        .migrations([&bump_items_pausing::MIGRATION])
        .run()
        .await?;
    assert_eq!(report.applied[0].batches, 4);
    // Three pauses between four batches (none after the last).
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    assert!(item_values(db.pool()).await?.iter().all(|v| *v == 1));
    Ok(())
}
