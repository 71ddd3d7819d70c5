#[datamig::migration(id = "20241114_0930_no_batch_arg", batch(table = "users", key = "id"))]
async fn no_batch_arg(ctx: &mut datamig::Ctx<'_, datamig::Postgres>) -> anyhow::Result<()> {
    Ok(())
}

#[datamig::migration(id = "20241114_0931_no_batch_spec")]
async fn no_batch_spec(ctx: &mut datamig::Ctx<'_, datamig::Postgres>, batch: datamig::Batch) -> anyhow::Result<()> {
    Ok(())
}

#[datamig::migration(id = "20241114_0932_no_key", batch(table = "users"))]
async fn no_key(ctx: &mut datamig::Ctx<'_, datamig::Postgres>, batch: datamig::Batch) -> anyhow::Result<()> {
    Ok(())
}

#[datamig::migration(id = "20241114_0933_zero", batch(table = "users", key = "id", size = 0))]
async fn zero(ctx: &mut datamig::Ctx<'_, datamig::Postgres>, batch: datamig::Batch) -> anyhow::Result<()> {
    Ok(())
}

#[datamig::migration(id = "20241114_0934_wrong_second", batch(table = "users", key = "id"))]
async fn wrong_second(ctx: &mut datamig::Ctx<'_, datamig::Postgres>, n: i64) -> anyhow::Result<()> {
    Ok(())
}

fn main() {}
