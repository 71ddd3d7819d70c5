//! A user's own `datamig` binary whose batched migration is walked by several workers: the
//! worker tests run it as separate processes (joining each other, killed at any instant).
//! Each batch adds one to `spread.v` for its keys (not idempotent: `v = 1` everywhere proves
//! every key was done exactly once), logs which process did it, and sleeps in the server
//! as long as `spread_settings.sleep_ms` says. Written once for PostgreSQL and MySQL.

use datamig::prelude::*;

/// The id of [`spread_ids`].
pub const SPREAD_IDS: &str = "20250301_0000_spread_ids";

/// Bumps `spread.v`, 20 keys a batch, with two workers unless `--workers` says otherwise.
#[datamig::migration(
    id = "20250301_0000_spread_ids",
    batch(table = "spread", key = "id", size = 20, workers = 2)
)]
async fn spread_ids<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    let bumped = ctx
        .execute_batch("UPDATE spread SET v = v + 1 WHERE {batch}", &batch)
        .await?;
    let pid = std::process::id();
    if ctx.backend() == "mysql" {
        // `keys` is a reserved word of MySQL.
        ctx.execute(sqlx::AssertSqlSafe(format!(
            "INSERT INTO spread_log (pid, `keys`) VALUES ({pid}, {bumped})"
        )))
        .await?;
        ctx.fetch_i64("SELECT CAST(SLEEP(sleep_ms / 1000) AS signed) FROM spread_settings")
            .await?;
    } else {
        ctx.execute(sqlx::AssertSqlSafe(format!(
            "INSERT INTO spread_log (pid, keys) VALUES ({pid}, {bumped})"
        )))
        .await?;
        ctx.fetch_i64("SELECT 0::bigint FROM spread_settings, pg_sleep(sleep_ms / 1000.0)")
            .await?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    datamig_cli::main()
}
