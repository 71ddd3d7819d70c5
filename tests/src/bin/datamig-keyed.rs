//! A user's own `datamig` binary whose two batched migrations walk a UUID key and a
//! composite key `(tenant_id, id)`: the random-kill suite runs it as a separate process and
//! kills it at any instant. Each batch adds one to `v` (not idempotent: `v = 1` everywhere
//! proves every batch committed exactly once) and then sleeps 50 ms in the server, so that
//! a run lasts about a second. Written once for PostgreSQL and MySQL (`keyed_uuid.id` a
//! `CHAR(36)` there).

use datamig::prelude::*;

/// Bumps `keyed_uuid.v`, 50 keys a batch.
#[datamig::migration(
    id = "20250201_0000_bump_by_uuid",
    batch(table = "keyed_uuid", key = "id", size = 50)
)]
async fn bump_by_uuid<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE keyed_uuid SET v = v + 1 WHERE {batch}", &batch)
        .await?;
    rest(ctx).await
}

/// Bumps `keyed_pair.v`, 50 keys a batch, walking the composite primary key.
#[datamig::migration(
    id = "20250201_0001_bump_by_pair",
    batch(table = "keyed_pair", key = "tenant_id, id", size = 50)
)]
async fn bump_by_pair<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE keyed_pair SET v = v + 1 WHERE {batch}", &batch)
        .await?;
    rest(ctx).await
}

/// 50 ms in the server, holding the batch's locks.
async fn rest<DB: Backend>(ctx: &mut Ctx<'_, DB>) -> anyhow::Result<()> {
    if ctx.backend() == "mysql" {
        ctx.fetch_i64("SELECT CAST(SLEEP(0.05) AS signed)").await?;
    } else {
        ctx.fetch_i64("SELECT 0::bigint FROM pg_sleep(0.05)")
            .await?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    datamig_cli::main()
}
