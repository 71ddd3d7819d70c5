#[datamig::migration(id = "20250601_0000_pace_and_size", batch(table = "users", key = "id", pace = true, size = 100))]
async fn pace_and_size(ctx: &mut datamig::Ctx<'_, datamig::Postgres>, batch: datamig::Batch) -> anyhow::Result<()> {
    Ok(())
}

#[datamig::migration(id = "20250601_0001_max_of_fixed", batch(table = "users", key = "id", size = 100, max_size = 500))]
async fn max_of_fixed(ctx: &mut datamig::Ctx<'_, datamig::Postgres>, batch: datamig::Batch) -> anyhow::Result<()> {
    Ok(())
}

#[datamig::migration(id = "20250601_0002_pace_not_bool", batch(table = "users", key = "id", pace = "no"))]
async fn pace_not_bool(ctx: &mut datamig::Ctx<'_, datamig::Postgres>, batch: datamig::Batch) -> anyhow::Result<()> {
    Ok(())
}

fn main() {}
