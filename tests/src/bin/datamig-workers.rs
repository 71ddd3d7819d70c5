//! A user's own `datamig` binary whose batched migration is walked by several workers: the
//! worker tests run it as separate processes (joining each other, killed at any instant).
//! Each batch adds one to `spread.v` for its keys (not idempotent: `v = 1` everywhere proves
//! every key was done exactly once), logs which process did it, and sleeps in the server
//! as long as `spread_settings.sleep_ms` says.

use datamig::prelude::*;

/// The id of [`spread_ids`].
pub const SPREAD_IDS: &str = "20250301_0000_spread_ids";

/// Bumps `spread.v`, 20 keys a batch, with two workers unless `--workers` says otherwise.
#[datamig::migration(
    id = "20250301_0000_spread_ids",
    batch(table = "spread", key = "id", size = 20, workers = 2)
)]
async fn spread_ids(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    let bumped = ctx
        .execute_batch("UPDATE spread SET v = v + 1 WHERE {batch}", &batch)
        .await?;
    ctx.execute(sqlx::AssertSqlSafe(format!(
        "INSERT INTO spread_log (pid, keys) VALUES ({}, {bumped})",
        std::process::id()
    )))
    .await?;
    ctx.fetch_i64("SELECT 0::bigint FROM spread_settings, pg_sleep(sleep_ms / 1000.0)")
        .await?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    datamig_cli::main()
}
