//! The runner's guarantees, proved against a real PostgreSQL: exactly once, failures leave
//! nothing, drift is visible, timeouts are applied.

use std::time::Duration;

use datamig::prelude::*;
use datamig::{Error, LedgerConfig, State};
use datamig_demo_migrations::{backfill_notification_settings, normalize_user_emails};
use datamig_tests::{COUNT_RUNS, count_runs, counter, fixture_database, scalar};
use sqlx::PgPool;

fn demo() -> [&'static datamig::Migration; 2] {
    [
        &backfill_notification_settings::MIGRATION,
        &normalize_user_emails::MIGRATION,
    ]
}

/// A database with the demo application's schema and `users` seeded users.
async fn demo_database(users: i64) -> anyhow::Result<datamig::testing::TestDatabase> {
    let db = datamig::testing::postgres().await?;
    datamig_demo_migrations::schema().run(db.pool()).await?;
    datamig_demo_migrations::seed_users(db.pool(), users).await?;
    Ok(db)
}

async fn ledger_ids(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM datamig_ledger ORDER BY id")
            .fetch_all(pool)
            .await?,
    )
}

#[tokio::test]
async fn second_run_applies_nothing() -> anyhow::Result<()> {
    let db = demo_database(100).await?;
    let pool = db.pool();

    let first = Migrator::new(pool.clone()).migrations(demo()).run().await?;
    assert_eq!(first.applied.len(), 2);
    assert_eq!(
        first.applied[0].rows_affected, 100,
        "every seeded user gets settings"
    );
    assert_eq!(
        scalar(pool, "SELECT count(*) FROM notification_settings").await?,
        100
    );
    let ledger_before: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT id, finished_at FROM datamig_ledger ORDER BY id")
            .fetch_all(pool)
            .await?;

    // Running it a second time must apply nothing and touch nothing.
    let second = Migrator::new(pool.clone()).migrations(demo()).run().await?;
    assert!(
        second.applied.is_empty(),
        "second run applied {:?}",
        second.applied
    );
    assert_eq!(second.already_applied, vec![demo()[0].id(), demo()[1].id()]);
    let ledger_after: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT id, finished_at FROM datamig_ledger ORDER BY id")
            .fetch_all(pool)
            .await?;
    assert_eq!(ledger_before, ledger_after);
    assert_eq!(scalar(pool, "SELECT count(*) FROM datamig_runs").await?, 2);
    Ok(())
}

#[tokio::test]
async fn concurrent_runners_apply_once() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;

    let runners = (0..8).map(|_| {
        let pool = db.pool().clone();
        tokio::spawn(async move {
            Migrator::new(pool)
                .migrations([&count_runs::MIGRATION])
                .run()
                .await
        })
    });
    let reports = futures_util::future::join_all(runners).await;

    let mut applied = 0;
    for report in reports {
        let report = report??;
        applied += report.applied.len();
        assert_eq!(report.applied.len() + report.already_applied.len(), 1);
    }
    assert_eq!(applied, 1, "exactly one runner applies the migration");
    assert_eq!(
        counter(db.pool()).await?,
        1,
        "the non-idempotent body ran exactly once"
    );
    assert_eq!(ledger_ids(db.pool()).await?, vec![COUNT_RUNS]);
    assert_eq!(
        scalar(db.pool(), "SELECT count(*) FROM datamig_runs").await?,
        1
    );
    Ok(())
}

/// Creates `things`, the table the failing fixtures write to.
async fn create_things(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("CREATE TABLE things (id serial PRIMARY KEY, label text NOT NULL)")
        .execute(pool)
        .await?;
    Ok(())
}

/// Writes a row, then fails.
#[datamig::migration(id = "20240201_0000_write_then_fail")]
async fn write_then_fail(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.execute("INSERT INTO things (label) VALUES ('from the failing migration')")
        .await?;
    Err(anyhow::anyhow!("the disk is full").context("boom: refusing to go on"))
}

/// Writes a row, then panics.
#[datamig::migration(id = "20240201_0000_write_then_panic")]
async fn write_then_panic(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.execute("INSERT INTO things (label) VALUES ('from the panicking migration')")
        .await?;
    panic!("kaboom: an invariant broke");
}

/// Writes a row and succeeds.
#[datamig::migration(id = "20240101_0000_write_ok")]
async fn write_ok(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.execute("INSERT INTO things (label) VALUES ('ok')")
        .await?;
    Ok(())
}

/// Runs `[write_ok, failing]` and checks that only `write_ok`'s effects and ledger row remain,
/// with one failed run recorded for the failing migration.
async fn assert_failure_leaves_nothing(
    failing: &'static datamig::Migration,
    expect_message: &str,
    expect_panicked: bool,
) -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    let pool = db.pool();
    create_things(pool).await?;

    let err = Migrator::new(pool.clone())
        .migrations([&write_ok::MIGRATION, failing])
        .run()
        .await
        .expect_err("the run must fail");
    match &err {
        Error::MigrationFailed {
            id,
            message,
            panicked,
            applied_before,
            source,
        } => {
            assert_eq!(id, failing.id());
            assert!(message.contains(expect_message), "message: {message}");
            assert_eq!(*panicked, expect_panicked);
            assert_eq!(applied_before, &vec![write_ok::MIGRATION.id().to_string()]);
            // The body's error is the source (its context first); a panic has none.
            match source {
                Some(source) => assert_eq!(source.to_string(), "boom: refusing to go on"),
                None => assert!(expect_panicked, "a returned error is kept as the source"),
            }
        }
        other => panic!("expected MigrationFailed, got {other:?}"),
    }
    assert!(
        err.to_string().contains(failing.id()),
        "the error names the migration: {err}"
    );

    let labels: Vec<String> = sqlx::query_scalar("SELECT label FROM things")
        .fetch_all(pool)
        .await?;
    assert_eq!(
        labels,
        vec!["ok"],
        "the failing migration's write was rolled back"
    );
    assert_eq!(ledger_ids(pool).await?, vec![write_ok::MIGRATION.id()]);
    let runs: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT migration_id, outcome, error FROM datamig_runs WHERE migration_id = $1",
    )
    .bind(failing.id())
    .fetch_all(pool)
    .await?;
    assert_eq!(runs.len(), 1, "one run row for the failed attempt");
    assert_eq!(runs[0].1, "failed");
    assert!(runs[0].2.as_deref().unwrap_or("").contains(expect_message));
    Ok(())
}

#[tokio::test]
async fn a_failing_migration_leaves_no_data_no_ledger_row_and_one_run_row() -> anyhow::Result<()> {
    // `{:#}` of the anyhow error: the context and its cause.
    assert_failure_leaves_nothing(
        &write_then_fail::MIGRATION,
        "boom: refusing to go on: the disk is full",
        false,
    )
    .await
}

#[tokio::test]
async fn a_panicking_migration_leaves_no_data_no_ledger_row_and_one_run_row() -> anyhow::Result<()>
{
    assert_failure_leaves_nothing(
        &write_then_panic::MIGRATION,
        "kaboom: an invariant broke",
        true,
    )
    .await
}

#[tokio::test]
async fn a_failed_migration_is_retried_by_the_next_run() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    datamig_tests::switch_on(db.pool(), "fail").await?;
    let migrator = || Migrator::new(db.pool().clone()).migrations([&count_runs::MIGRATION]);
    assert!(matches!(
        migrator().run().await,
        Err(Error::MigrationFailed { .. })
    ));
    assert_eq!(
        counter(db.pool()).await?,
        0,
        "the failed attempt's update was rolled back"
    );

    sqlx::query("DELETE FROM fixture_switches")
        .execute(db.pool())
        .await?;
    let report = migrator().run().await?;
    assert_eq!(report.applied.len(), 1);
    assert_eq!(counter(db.pool()).await?, 1);
    let outcomes: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM datamig_runs ORDER BY run_id")
            .fetch_all(db.pool())
            .await?;
    assert_eq!(outcomes, vec!["failed", "succeeded"]);
    Ok(())
}

mod original {
    use datamig::prelude::*;

    /// Version 1 of a migration.
    #[datamig::migration(id = "20240301_0000_bump")]
    pub async fn bump(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
        ctx.execute("UPDATE counter SET n = n + 1").await?;
        Ok(())
    }

    /// Another applied migration.
    #[datamig::migration(id = "20240301_0001_bump_twice")]
    pub async fn bump_twice(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
        ctx.execute("UPDATE counter SET n = n + 2").await?;
        Ok(())
    }
}

mod edited {
    use datamig::prelude::*;

    /// Version 2: the body changed.
    #[datamig::migration(id = "20240301_0000_bump")]
    pub async fn bump(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
        ctx.execute("UPDATE counter SET n = n + 10").await?;
        Ok(())
    }

    /// Edited too.
    #[datamig::migration(id = "20240301_0001_bump_twice")]
    pub async fn bump_twice(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
        ctx.execute("UPDATE counter SET n = n + 20").await?;
        Ok(())
    }

    /// A pending migration that must not run while others drifted.
    #[datamig::migration(id = "20240301_0002_pending")]
    pub async fn pending(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
        ctx.execute("UPDATE counter SET n = n + 100").await?;
        Ok(())
    }
}

mod reformatted {
    use datamig::prelude::*;

    /// Version 1 again, reformatted (rustfmt would undo it: it is told to keep out), with a
    /// comment and a new doc comment.
    #[datamig::migration(id = "20240301_0000_bump")]
    #[rustfmt::skip]
    pub async fn bump(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
        // Bump the counter by one.
        ctx
            .execute(
                "UPDATE counter SET n = n + 1"
            )
            .await
            ?;
        Ok(
            ()
        )
    }
}

mod rerunnable {
    use datamig::prelude::*;

    /// Sets the counter: converges, so it may re-run when its code changes.
    #[datamig::migration(id = "20240301_0000_bump", rerun_on_change)]
    pub async fn bump(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
        ctx.execute("UPDATE counter SET n = 42").await?;
        Ok(())
    }

    /// Same code as `bump`, one revision later.
    #[datamig::migration(id = "20240301_0000_bump", revision = 1)]
    pub async fn bump_revised(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
        ctx.execute("UPDATE counter SET n = n + 1").await?;
        Ok(())
    }
}

#[tokio::test]
async fn an_edited_body_is_drift_and_blocks_the_run() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    Migrator::new(db.pool().clone())
        .migrations([&original::bump::MIGRATION, &original::bump_twice::MIGRATION])
        .run()
        .await?;
    assert_eq!(counter(db.pool()).await?, 3);

    let err = Migrator::new(db.pool().clone())
        .migrations([
            &edited::bump::MIGRATION,
            &edited::bump_twice::MIGRATION,
            &edited::pending::MIGRATION,
        ])
        .run()
        .await
        .expect_err("drift must stop the run");
    let Error::Drift { drifted } = &err else {
        panic!("expected Drift, got {err:?}")
    };
    let ids: Vec<&str> = drifted.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, vec!["20240301_0000_bump", "20240301_0001_bump_twice"]);
    assert_eq!(
        drifted[0].applied_checksum,
        original::bump::MIGRATION.checksum()
    );
    assert_eq!(drifted[0].code_checksum, edited::bump::MIGRATION.checksum());
    let message = err.to_string();
    assert!(
        message.contains("20240301_0000_bump") && message.contains("20240301_0001_bump_twice"),
        "{message}"
    );
    assert_eq!(
        counter(db.pool()).await?,
        3,
        "nothing ran, not even the pending migration"
    );
    assert_eq!(ledger_ids(db.pool()).await?.len(), 2);

    let statuses = Migrator::new(db.pool().clone())
        .migrations([
            &edited::bump::MIGRATION,
            &edited::bump_twice::MIGRATION,
            &edited::pending::MIGRATION,
        ])
        .status()
        .await?;
    let states: Vec<State> = statuses.iter().map(|s| s.state).collect();
    assert_eq!(states, vec![State::Drifted, State::Drifted, State::Pending]);
    Ok(())
}

#[tokio::test]
async fn a_reformatted_body_with_a_comment_is_not_drift() -> anyhow::Result<()> {
    assert_eq!(
        original::bump::MIGRATION.checksum(),
        reformatted::bump::MIGRATION.checksum()
    );
    assert_ne!(
        original::bump::MIGRATION.checksum(),
        edited::bump::MIGRATION.checksum()
    );

    let db = fixture_database(&[]).await?;
    Migrator::new(db.pool().clone())
        .migrations([&original::bump::MIGRATION])
        .run()
        .await?;
    let report = Migrator::new(db.pool().clone())
        .migrations([&reformatted::bump::MIGRATION])
        .run()
        .await?;
    assert!(report.applied.is_empty());
    assert_eq!(report.already_applied, vec!["20240301_0000_bump"]);
    assert_eq!(counter(db.pool()).await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_raised_revision_is_drift() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    Migrator::new(db.pool().clone())
        .migrations([&original::bump::MIGRATION])
        .run()
        .await?;
    assert_eq!(
        original::bump::MIGRATION.checksum(),
        rerunnable::bump_revised::MIGRATION.checksum()
    );
    let err = Migrator::new(db.pool().clone())
        .migrations([&rerunnable::bump_revised::MIGRATION])
        .run()
        .await
        .expect_err("a new revision of an applied migration is drift");
    let Error::Drift { drifted } = err else {
        panic!("expected Drift, got {err:?}")
    };
    assert_eq!(
        (drifted[0].applied_revision, drifted[0].code_revision),
        (0, 1)
    );
    Ok(())
}

#[tokio::test]
async fn a_changed_migration_marked_rerun_on_change_runs_again() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    Migrator::new(db.pool().clone())
        .migrations([&original::bump::MIGRATION])
        .run()
        .await?;

    let report = Migrator::new(db.pool().clone())
        .migrations([&rerunnable::bump::MIGRATION])
        .run()
        .await?;
    assert_eq!(report.applied.len(), 1);
    assert!(report.applied[0].rerun);
    assert_eq!(counter(db.pool()).await?, 42);
    let (checksum, run_count): (String, i32) =
        sqlx::query_as("SELECT checksum, run_count FROM datamig_ledger")
            .fetch_one(db.pool())
            .await?;
    assert_eq!(checksum, rerunnable::bump::MIGRATION.checksum());
    assert_eq!(run_count, 2);
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM datamig_runs ORDER BY run_id")
            .fetch_all(db.pool())
            .await?;
    assert_eq!(actions, vec!["apply", "rerun"]);

    let again = Migrator::new(db.pool().clone())
        .migrations([&rerunnable::bump::MIGRATION])
        .run()
        .await?;
    assert!(
        again.applied.is_empty(),
        "unchanged since the re-run: nothing to do"
    );
    Ok(())
}

#[tokio::test]
async fn unknown_ledger_rows_are_reported_never_deleted() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    Migrator::new(db.pool().clone())
        .migrations([&original::bump::MIGRATION, &original::bump_twice::MIGRATION])
        .run()
        .await?;

    // An older build that knows only the first migration.
    let report = Migrator::new(db.pool().clone())
        .migrations([&original::bump::MIGRATION])
        .run()
        .await?;
    assert_eq!(report.unknown, vec!["20240301_0001_bump_twice"]);
    assert_eq!(
        ledger_ids(db.pool()).await?.len(),
        2,
        "the unknown row is kept"
    );
    let statuses = Migrator::new(db.pool().clone())
        .migrations([&original::bump::MIGRATION])
        .status()
        .await?;
    assert_eq!(statuses[1].id, "20240301_0001_bump_twice");
    assert_eq!(statuses[1].state, State::Unknown);
    Ok(())
}

#[tokio::test]
async fn a_dry_run_reports_rows_and_keeps_nothing() -> anyhow::Result<()> {
    let db = demo_database(50).await?;
    let pool = db.pool();
    let report = Migrator::new(pool.clone())
        .migrations(demo())
        .dry_run(true)
        .run()
        .await?;
    assert!(report.dry_run);
    let rows: Vec<u64> = report.applied.iter().map(|a| a.rows_affected).collect();
    assert_eq!(
        rows,
        vec![50, 16],
        "50 users would get settings, 16 messy emails would change"
    );
    assert_eq!(
        scalar(pool, "SELECT count(*) FROM notification_settings").await?,
        0
    );
    assert_eq!(
        scalar(
            pool,
            "SELECT count(*) FROM users WHERE email <> lower(btrim(email))"
        )
        .await?,
        16
    );
    assert_eq!(
        scalar(pool, "SELECT count(*) FROM datamig_ledger").await?,
        0
    );
    assert_eq!(scalar(pool, "SELECT count(*) FROM datamig_runs").await?, 0);
    Ok(())
}

/// Sleeps longer than its own statement timeout.
#[datamig::migration(id = "20240401_0000_too_slow", statement_timeout = "100ms")]
async fn too_slow(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.execute("SELECT pg_sleep(5)").await?;
    Ok(())
}

/// Sleeps for half a second; no timeout of its own.
#[datamig::migration(id = "20240401_0001_half_second")]
async fn half_second(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.execute("SELECT pg_sleep(0.5)").await?;
    Ok(())
}

#[tokio::test]
async fn statement_timeouts_stop_slow_migrations() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    let started = std::time::Instant::now();
    let err = Migrator::new(db.pool().clone())
        .migrations([&too_slow::MIGRATION])
        .run()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("statement timeout"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the migration's own timeout applied"
    );

    // The migrator's timeout applies to a migration without its own...
    let err = Migrator::new(db.pool().clone())
        .migrations([&half_second::MIGRATION])
        .statement_timeout(Duration::from_millis(100))
        .run()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("statement timeout"), "{err}");
    // ...and is local to the migration's transaction: the session keeps its default.
    let report = Migrator::new(db.pool().clone())
        .migrations([&half_second::MIGRATION])
        .run()
        .await?;
    assert_eq!(report.applied.len(), 1);
    Ok(())
}

/// Updates `things`.
#[datamig::migration(id = "20240401_0002_touch_things")]
async fn touch_things(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.execute("UPDATE things SET label = label").await?;
    Ok(())
}

#[tokio::test]
async fn a_lock_timeout_fails_a_blocked_migration_instead_of_waiting() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    create_things(db.pool()).await?;
    let mut blocker = db.pool().begin().await?;
    sqlx::query("LOCK TABLE things IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await?;

    let started = std::time::Instant::now();
    let err = Migrator::new(db.pool().clone())
        .migrations([&touch_things::MIGRATION])
        .lock_timeout(Duration::from_millis(200))
        .run()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("lock timeout"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));

    blocker.rollback().await?;
    let report = Migrator::new(db.pool().clone())
        .migrations([&touch_things::MIGRATION])
        .lock_timeout(Duration::from_millis(200))
        .run()
        .await?;
    assert_eq!(
        report.applied.len(),
        1,
        "once the lock is released the migration applies"
    );
    Ok(())
}

#[tokio::test]
async fn a_runner_that_cannot_get_the_lock_in_time_fails_with_lock_timeout() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    datamig_tests::switch_on(db.pool(), "slow").await?;
    let pool = db.pool().clone();
    let holder = tokio::spawn(async move {
        Migrator::new(pool)
            .migrations([&count_runs::MIGRATION])
            .run()
            .await
    });
    // Wait (at most 10 s) until the first runner holds the advisory lock.
    datamig_tests::wait_for_lock_holder(db.pool()).await?;
    let err = Migrator::new(db.pool().clone())
        .migrations([&count_runs::MIGRATION])
        .runner_lock_timeout(Duration::from_millis(300))
        .run()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LockTimeout { .. }), "{err:?}");
    assert!(err.to_string().contains("300ms"), "{err}");
    holder.await??;
    assert_eq!(counter(db.pool()).await?, 1);
    Ok(())
}

#[tokio::test]
async fn the_ledger_records_what_ran_who_ran_it_and_where() -> anyhow::Result<()> {
    let db = demo_database(10).await?;
    Migrator::new(db.pool().clone())
        .migrations([&backfill_notification_settings::MIGRATION])
        .app_version("2.14.0")
        .run()
        .await?;
    let row = sqlx::query_as::<
        _,
        (
            String,
            String,
            i32,
            String,
            i64,
            Option<String>,
            String,
            String,
            Option<String>,
            i32,
            bool,
        ),
    >(
        "SELECT id, checksum, revision, description, rows_affected, notes, applied_by, host,
                app_version, run_count, finished_at >= started_at
         FROM datamig_ledger",
    )
    .fetch_one(db.pool())
    .await?;
    let m = &backfill_notification_settings::MIGRATION;
    assert_eq!(row.0, m.id());
    assert_eq!(row.1, m.checksum());
    assert_eq!(row.2, 0);
    assert!(
        row.3
            .starts_with("Give every existing user the default notification settings")
    );
    assert_eq!(row.4, 10);
    assert_eq!(
        row.5.as_deref(),
        Some("10 users got default notification settings")
    );
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(db.pool())
        .await?;
    assert_eq!(row.6, user);
    assert!(!row.7.is_empty(), "the host is recorded");
    assert_eq!(row.8.as_deref(), Some("2.14.0"));
    assert_eq!(row.9, 1);
    assert!(row.10);
    Ok(())
}

#[tokio::test]
async fn ledger_tables_can_be_renamed_and_moved_to_a_schema() -> anyhow::Result<()> {
    let db = fixture_database(&[]).await?;
    let config = LedgerConfig::default()
        .schema("ops \"data\"")
        .ledger_table("data ledger")
        .runs_table("data; runs");
    let migrator = || {
        Migrator::new(db.pool().clone())
            .ledger(config.clone())
            .migrations([&count_runs::MIGRATION])
    };
    assert_eq!(migrator().run().await?.applied.len(), 1);
    assert!(migrator().run().await?.applied.is_empty());
    let ids: Vec<String> = sqlx::query_scalar(r#"SELECT id FROM "ops ""data"""."data ledger""#)
        .fetch_all(db.pool())
        .await?;
    assert_eq!(ids, vec![COUNT_RUNS]);
    assert_eq!(
        scalar(
            db.pool(),
            r#"SELECT count(*) FROM "ops ""data"""."data; runs""#
        )
        .await?,
        1
    );
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'datamig%'"
        )
        .await?,
        0
    );
    assert_eq!(counter(db.pool()).await?, 1);
    Ok(())
}

#[tokio::test]
async fn status_shows_pending_applied_and_the_last_failure() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    create_things(db.pool()).await?;
    let all = [&write_ok::MIGRATION, &write_then_fail::MIGRATION];
    let before = Migrator::new(db.pool().clone())
        .migrations(all)
        .status()
        .await?;
    assert!(before.iter().all(|s| s.state == State::Pending));
    assert_eq!(
        scalar(
            db.pool(),
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'datamig%'"
        )
        .await?,
        0,
        "status reads only: it creates no ledger"
    );

    let _ = Migrator::new(db.pool().clone()).migrations(all).run().await;
    let after = Migrator::new(db.pool().clone())
        .migrations(all)
        .status()
        .await?;
    assert_eq!(after[0].state, State::Applied);
    assert_eq!(after[0].ledger.as_ref().map(|e| e.rows_affected), Some(1));
    assert_eq!(after[1].state, State::Pending);
    let last = after[1]
        .last_run
        .as_ref()
        .expect("the failed attempt is shown");
    assert_eq!(last.outcome, "failed");
    assert!(
        last.error
            .as_deref()
            .unwrap_or("")
            .contains("the disk is full")
    );
    Ok(())
}
