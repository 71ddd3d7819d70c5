//! The demo application's migrations are written once, generic over the backend: the same
//! code runs on PostgreSQL and on SQLite, leaves the same data on both, and is idempotent on
//! both.

use datamig::{Migrator, State};
use datamig_demo_migrations::{backfill_notification_settings, normalize_user_emails};

/// What the migrations leave: each user's email and notification settings, by id.
type Outcome = Vec<(i64, String, Option<bool>, Option<bool>)>;

const OUTCOME: &str = "SELECT u.id, u.email, s.email_enabled, s.push_enabled
                       FROM users u LEFT JOIN notification_settings s ON s.user_id = u.id
                       ORDER BY u.id";

#[test]
fn the_demo_migrations_have_code_for_every_backend() {
    for migration in [
        &backfill_notification_settings::MIGRATION,
        &normalize_user_emails::MIGRATION,
    ] {
        assert_eq!(
            migration.backends(),
            ["postgres", "sqlite", "mysql"],
            "{migration:?}"
        );
    }
    assert!(normalize_user_emails::MIGRATION.batch().is_some());
}

#[tokio::test]
async fn the_demo_migrations_leave_the_same_data_on_postgres_and_sqlite() -> anyhow::Result<()> {
    let users = 2_500; // three batches of the email clean-up

    let pg = datamig::testing::postgres().await?;
    datamig_demo_migrations::schema().run(pg.pool()).await?;
    datamig_demo_migrations::seed_users(pg.pool(), users).await?;
    let pg_report = Migrator::new(pg.pool().clone()).run().await?;

    let lite = datamig::testing::sqlite().await?;
    datamig_demo_migrations::sqlite_schema()
        .run(lite.pool())
        .await?;
    datamig_demo_migrations::seed_users_sqlite(lite.pool(), users).await?;
    let lite_report = Migrator::new(lite.pool().clone()).run().await?;

    for report in [&pg_report, &lite_report] {
        let applied: Vec<(&str, u64)> = report
            .applied
            .iter()
            .map(|a| (a.id.as_str(), a.rows_affected))
            .collect();
        assert_eq!(
            applied,
            [
                (backfill_notification_settings::MIGRATION.id(), 2_500),
                (normalize_user_emails::MIGRATION.id(), 833),
            ]
        );
    }

    let on_pg: Outcome = sqlx::query_as(OUTCOME).fetch_all(pg.pool()).await?;
    let on_lite: Outcome = sqlx::query_as(OUTCOME).fetch_all(lite.pool()).await?;
    assert_eq!(on_pg.len(), 2_500);
    assert_eq!(on_pg, on_lite, "the same code left the same data");
    assert!(
        on_pg
            .iter()
            .all(|(_, email, e, p)| *email == email.trim().to_lowercase()
                && *e == Some(true)
                && *p == Some(true))
    );

    // And both ledgers say so.
    for statuses in [
        Migrator::new(pg.pool().clone()).status().await?,
        Migrator::new(lite.pool().clone()).status().await?,
    ] {
        assert!(statuses.iter().all(|s| s.state == State::Applied));
    }
    Ok(())
}

#[tokio::test]
async fn the_demo_migrations_are_idempotent_on_both_backends() -> anyhow::Result<()> {
    let pg = datamig::testing::postgres().await?;
    datamig_demo_migrations::schema().run(pg.pool()).await?;
    datamig_demo_migrations::seed_users(pg.pool(), 300).await?;
    datamig::testing::assert_all_idempotent(pg.pool()).await?;

    let lite = datamig::testing::sqlite().await?;
    datamig_demo_migrations::sqlite_schema()
        .run(lite.pool())
        .await?;
    datamig_demo_migrations::seed_users_sqlite(lite.pool(), 300).await?;
    datamig::testing::assert_all_idempotent(lite.pool()).await?;

    // The forced re-runs are recorded: run_count 2 on both.
    let pg_counts: Vec<i32> = sqlx::query_scalar("SELECT run_count FROM datamig_ledger")
        .fetch_all(pg.pool())
        .await?;
    let lite_counts: Vec<i32> = sqlx::query_scalar("SELECT run_count FROM datamig_ledger")
        .fetch_all(lite.pool())
        .await?;
    assert_eq!(pg_counts, [2, 2]);
    assert_eq!(lite_counts, [2, 2]);
    Ok(())
}
