// Migrations for one backend, and one generic migration registered for every backend.

use datamig::prelude::*;

#[datamig::migration(id = "20241114_0930_postgres_only")]
async fn postgres_only(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    ctx.execute("SELECT 1").await?;
    Ok(())
}

#[datamig::migration(id = "20241114_0931_sqlite_only")]
async fn sqlite_only(ctx: &mut Ctx<'_, Sqlite>) -> anyhow::Result<()> {
    ctx.execute("SELECT 1").await?;
    Ok(())
}

#[datamig::migration(id = "20241114_0932_portable")]
async fn portable<DB: Backend>(ctx: &mut Ctx<'_, DB>) -> anyhow::Result<()> {
    ctx.execute("SELECT 1").await?;
    Ok(())
}

#[datamig::migration(
    id = "20241114_0933_portable_batched",
    batch(table = "users", key = "id", size = 100)
)]
async fn portable_batched<DB>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()>
where
    DB: datamig::Backend,
{
    ctx.execute_batch("UPDATE users SET n = n WHERE id > $1 AND id <= $2", &batch)
        .await?;
    Ok(())
}

fn main() {
    assert_eq!(postgres_only::MIGRATION.backends(), ["postgres"]);
    assert_eq!(sqlite_only::MIGRATION.backends(), ["sqlite"]);
    assert_eq!(portable::MIGRATION.backends(), ["postgres", "sqlite"]);
    assert_eq!(portable_batched::MIGRATION.backends(), ["postgres", "sqlite"]);
    assert!(portable_batched::MIGRATION.batch().is_some());
}
