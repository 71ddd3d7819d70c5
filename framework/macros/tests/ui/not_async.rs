#[datamig::migration(id = "20241114_0930_backfill")]
fn backfill(ctx: &mut datamig::Ctx<'_, datamig::Postgres>) -> anyhow::Result<()> {
    Ok(())
}

fn main() {}
