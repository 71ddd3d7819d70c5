// A generic migration must be generic over its backend only, bounded by `Backend`.

#[datamig::migration(id = "20241114_0930_unbounded")]
async fn unbounded<DB>(ctx: &mut datamig::Ctx<'_, DB>) -> anyhow::Result<()>
where
    DB: sqlx::Database,
{
    Ok(())
}

#[datamig::migration(id = "20241114_0931_two_params")]
async fn two_params<DB: datamig::Backend, T>(ctx: &mut datamig::Ctx<'_, DB>) -> anyhow::Result<()> {
    Ok(())
}

#[datamig::migration(id = "20241114_0932_other_type")]
async fn other_type<DB: datamig::Backend>(
    ctx: &mut datamig::Ctx<'_, datamig::Postgres>,
) -> anyhow::Result<()> {
    Ok(())
}

fn main() {}
