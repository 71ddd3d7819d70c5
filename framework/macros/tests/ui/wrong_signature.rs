#[datamig::migration(id = "20241114_0930_no_args")]
async fn no_args() -> anyhow::Result<()> {
    Ok(())
}

#[datamig::migration(id = "20241114_0931_by_value")]
async fn by_value(ctx: datamig::Ctx<'_, datamig::Postgres>) -> anyhow::Result<()> {
    Ok(())
}

#[datamig::migration(id = "20241114_0932_two_args")]
async fn two_args(ctx: &mut datamig::Ctx<'_, datamig::Postgres>, n: i32) -> anyhow::Result<()> {
    Ok(())
}

#[datamig::migration(id = "20241114_0933_no_result")]
async fn no_result(ctx: &mut datamig::Ctx<'_, datamig::Postgres>) {}

#[datamig::migration(id = "20241114_0934_pool")]
async fn pool(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    Ok(())
}

fn main() {}
