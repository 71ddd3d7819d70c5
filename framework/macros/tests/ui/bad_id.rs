#[datamig::migration(id = "backfill-settings")]
async fn backfill(ctx: &mut datamig::Ctx<'_, datamig::Postgres>) -> anyhow::Result<()> {
    Ok(())
}

#[datamig::migration(id = "20241399_0930_backfill")]
async fn bad_date(ctx: &mut datamig::Ctx<'_, datamig::Postgres>) -> anyhow::Result<()> {
    Ok(())
}

#[datamig::migration(id = "20241114_0930_Backfill")]
async fn upper_case(ctx: &mut datamig::Ctx<'_, datamig::Postgres>) -> anyhow::Result<()> {
    Ok(())
}

fn main() {}
