#[datamig::migration(id = "20241114_0930_backfill", lock_timeout = "soon")]
async fn bad_duration(ctx: &mut datamig::Ctx<'_, datamig::Postgres>) -> anyhow::Result<()> {
    Ok(())
}

#[datamig::migration(id = "20241114_0931_backfill", retries = 3)]
async fn unknown_argument(ctx: &mut datamig::Ctx<'_, datamig::Postgres>) -> anyhow::Result<()> {
    Ok(())
}

fn main() {}
