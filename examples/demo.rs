//! The demo: the notification-settings backfill of the demo application, run twice.
//!
//!     DATABASE_URL=postgres://user:password@localhost/app cargo run -p datamig-examples --example demo
//!
//! Without DATABASE_URL it starts a throwaway PostgreSQL with testcontainers (Docker needed;
//! see `datamig::testing` for DATAMIG_TEST_POSTGRES_IMAGE and DATAMIG_TEST_DATABASE_URL).

use datamig::{Migrator, State};
use sqlx::PgPool;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    datamig_demo_migrations::link();
    let (pool, _throwaway) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (PgPool::connect(&url).await?, None),
        _ => {
            println!(
                "DATABASE_URL is not set: starting a throwaway PostgreSQL with testcontainers"
            );
            let db = datamig::testing::postgres().await?;
            (db.pool().clone(), Some(db))
        }
    };

    println!(
        "1. The schema, applied by the schema tool (sqlx migrate): users, notification_settings"
    );
    datamig_demo_migrations::schema().run(&pool).await?;
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await?;
    if users == 0 {
        datamig_demo_migrations::seed_users(&pool, 1_000).await?;
        println!("   seeded 1000 existing users, a third of them with messy email addresses");
    }

    println!("\n2. The deploy runs the pending data migrations:");
    let report = Migrator::new(pool.clone())
        .app_version("demo")
        .run()
        .await?;
    for applied in &report.applied {
        println!(
            "   applied {}  {} rows  {} ms",
            applied.id, applied.rows_affected, applied.duration_ms
        );
        for note in &applied.notes {
            println!("     {note}");
        }
    }
    println!(
        "   {} applied, {} already applied",
        report.applied.len(),
        report.already_applied.len()
    );

    println!("\n3. The next deploy (another replica, or the same one again) finds nothing to do:");
    let again = Migrator::new(pool.clone()).run().await?;
    println!(
        "   {} applied, {} already applied",
        again.applied.len(),
        again.already_applied.len()
    );

    println!("\n4. The ledger (datamig_ledger), one row per applied migration:");
    for status in Migrator::new(pool.clone()).status().await? {
        let ledger = status.ledger.as_ref();
        println!(
            "   {}  {}  rows={}  by={}  checksum={}…",
            status.id,
            match status.state {
                State::Applied => "applied",
                State::Pending => "pending",
                State::Drifted => "drifted",
                _ => "unknown",
            },
            ledger.map_or(0, |e| e.rows_affected),
            ledger.map_or("-", |e| e.applied_by.as_str()),
            ledger.map_or("-", |e| &e.checksum[..12]),
        );
    }
    let settings: i64 = sqlx::query_scalar("SELECT count(*) FROM notification_settings")
        .fetch_one(&pool)
        .await?;
    println!(
        "\nEvery user has notification settings ({settings} rows). Each migration ran exactly once:"
    );
    println!("its changes and its ledger row were committed in one transaction, under a lock that");
    println!("concurrent runners wait for. Edit a migration's code and `run` reports it as drift.");
    Ok(())
}
