#[datamig::migration]
async fn backfill(ctx: &mut datamig::Ctx<'_, datamig::Postgres>) -> anyhow::Result<()> {
    Ok(())
}

fn main() {}
