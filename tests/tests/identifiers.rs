//! Property: any identifier given to the helpers round-trips, and nothing is injected.

use datamig::prelude::*;
use proptest::prelude::*;

/// The table and column names of the current case, read by the migration below.
static NAMES: std::sync::Mutex<(String, String)> =
    std::sync::Mutex::new((String::new(), String::new()));

/// Upserts one row into the table and column named in `NAMES`.
#[datamig::migration(id = "20240901_0000_upsert_named")]
async fn upsert_named(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    let (table, column) = NAMES.lock().unwrap().clone();
    let report = ctx
        .upsert(table)
        .key(["id"])
        .rows(["id", column.as_str()], vec![(1_i64, "value")])
        .update_if_changed()
        .execute()
        .await?;
    anyhow::ensure!(report.inserted == 1, "{report:?}");
    Ok(())
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn any_identifier_round_trips_and_nothing_is_injected(
        table in "[^\u{0}]{1,20}",
        column in "[^\u{0}]{1,20}",
    ) {
        // PostgreSQL keeps 63 bytes of a name; longer names are cut, by design.
        prop_assume!(table.len() <= 63 && column.len() <= 63 && column != "id");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let db = datamig::testing::postgres().await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CREATE TABLE canary (id int); CREATE TABLE {} (id bigint PRIMARY KEY, {} text);",
                quoted(&table),
                quoted(&column)
            )))
            .execute(db.pool())
            .await
            .unwrap();
            *NAMES.lock().unwrap() = (table.clone(), column.clone());
            Migrator::new(db.pool().clone()).migrations([&upsert_named::MIGRATION]).run().await.unwrap();
            let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM {} WHERE id = 1",
                quoted(&column),
                quoted(&table)
            )))
            .fetch_one(db.pool())
            .await
            .unwrap();
            assert_eq!(value, "value");
            let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
                .fetch_one(db.pool())
                .await
                .unwrap();
            assert_eq!(tables, 5, "canary, the table, and the ledger's three (ledger, runs, layout): nothing dropped, nothing created");
            db.pool().close().await;
        });
    }
}
