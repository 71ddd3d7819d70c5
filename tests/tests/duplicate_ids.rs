//! Two migrations with one id: rejected when the registry loads, naming both definitions.
//! (Its own test binary: the duplicate is in this binary's global registry.)

use datamig::prelude::*;
use datamig::{Error, registry};

mod first {
    use datamig::prelude::*;

    /// One migration.
    #[datamig::migration(id = "20240501_0000_same_id")]
    pub async fn one(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
        ctx.execute("SELECT 1").await?;
        Ok(())
    }
}

mod second {
    use datamig::prelude::*;

    /// Another migration that took the same id.
    #[datamig::migration(id = "20240501_0000_same_id")]
    pub async fn two(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
        ctx.execute("SELECT 2").await?;
        Ok(())
    }
}

fn assert_names_both(err: &Error) {
    let Error::DuplicateId { id, first, second } = err else {
        panic!("expected DuplicateId, got {err:?}")
    };
    assert_eq!(id, "20240501_0000_same_id");
    let mut places = [first.as_str(), second.as_str()];
    places.sort();
    let file = file!();
    let expected = [
        format!("{file}:{}", first::one::MIGRATION.location().line),
        format!("{file}:{}", second::two::MIGRATION.location().line),
    ];
    assert_eq!(places, [expected[0].as_str(), expected[1].as_str()]);
    let message = err.to_string();
    assert!(
        message.contains(&expected[0]) && message.contains(&expected[1]),
        "{message}"
    );
}

#[test]
fn duplicate_ids_are_rejected_when_the_registry_loads() {
    let err = registry::load().expect_err("the registry holds a duplicate");
    assert_names_both(&err);
}

#[tokio::test]
async fn a_migrator_with_duplicate_ids_runs_nothing() {
    // A pool that never connects: the duplicate is found before the database is touched.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .expect("a lazy pool");
    let err = Migrator::new(pool)
        .migrations([&first::one::MIGRATION, &second::two::MIGRATION])
        .run()
        .await
        .expect_err("duplicate ids must be rejected");
    assert_names_both(&err);
}
