//! Batched migrations over every kind of key, on both backends: integers, UUIDs, text,
//! timestamps, composite keys, with and without a scope. Each: every row migrated exactly
//! once, resumed after a crash mid-way, a second run changes nothing; on PostgreSQL the
//! statement that finds each batch is an index range scan; a key no index serves is
//! refused; bad keys and scopes are named with nothing changed; the size adapts to a
//! target duration.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use datamig::prelude::*;
use datamig::{Error, Progress, State};
use sqlx::{PgPool, Pool};

/// Counts each row's visits: `hits = 1` everywhere proves each batch committed once.
#[datamig::migration(
    id = "20250101_0000_uuid_key",
    batch(table = "by_uuid", key = "id", size = 37)
)]
async fn uuid_key<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE by_uuid SET hits = hits + 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// The same over a text key, in the column's collation.
#[datamig::migration(
    id = "20250101_0001_text_key",
    batch(table = "by_text", key = "code", size = 37)
)]
async fn text_key<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE by_text SET hits = hits + 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// The same over a timestamp key.
#[datamig::migration(
    id = "20250101_0002_time_key",
    batch(table = "by_time", key = "at", size = 37)
)]
async fn time_key<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE by_time SET hits = hits + 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// The same over a composite primary key `(tenant_id, id)`, the statement aliasing the table.
#[datamig::migration(
    id = "20250101_0003_pair_key",
    batch(table = "by_pair", key = "tenant_id, id", size = 37)
)]
async fn pair_key<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE by_pair AS p SET hits = hits + 1 WHERE {batch:p}",
        &batch,
    )
    .await?;
    Ok(())
}

/// The same over a UUID key, only for the rows not soft-deleted.
#[datamig::migration(
    id = "20250101_0004_scoped",
    batch(table = "by_uuid", key = "id", size = 37, scope = "deleted_at IS NULL")
)]
async fn scoped<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE by_uuid SET hits = hits + 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// The same over a date and text composite key.
#[datamig::migration(
    id = "20250101_0005_day_key",
    batch(table = "by_day", key = "day, code", size = 37)
)]
async fn day_key<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE by_day SET hits = hits + 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// The integer form of before: `$1` and `$2`, bound to `after` and `last`.
#[datamig::migration(
    id = "20250101_0006_integer_key",
    batch(table = "by_int", key = "id", size = 37)
)]
async fn integer_key<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE by_int SET hits = hits + 1 WHERE id > $1 AND id <= $2",
        &batch,
    )
    .await?;
    Ok(())
}

/// Rows per table.
const ROWS: i64 = 500;

const POSTGRES_TABLES: &str = "
    CREATE TABLE by_int (id bigint PRIMARY KEY, hits integer NOT NULL DEFAULT 0);
    INSERT INTO by_int (id) SELECT n * 7 - 1000 FROM generate_series(1, 500) AS n;
    CREATE TABLE by_uuid (id uuid PRIMARY KEY, deleted_at timestamptz,
                          hits integer NOT NULL DEFAULT 0);
    INSERT INTO by_uuid (id, deleted_at)
        SELECT md5(n::text)::uuid, CASE WHEN n % 5 = 0 THEN now() END
        FROM generate_series(1, 500) AS n;
    CREATE TABLE by_text (code text PRIMARY KEY, hits integer NOT NULL DEFAULT 0);
    INSERT INTO by_text (code)
        SELECT CASE n % 3 WHEN 0 THEN upper(md5(n::text)) WHEN 1 THEN 'é' || md5(n::text)
                          ELSE 'O''Brien ' || n END
        FROM generate_series(1, 500) AS n;
    CREATE TABLE by_time (at timestamptz PRIMARY KEY, hits integer NOT NULL DEFAULT 0);
    INSERT INTO by_time (at)
        SELECT timestamptz '2024-03-31 01:59:59.999999+01' + n * interval '1 hour 0.000137 s'
        FROM generate_series(1, 500) AS n;
    CREATE TABLE by_pair (tenant_id bigint NOT NULL, id uuid NOT NULL,
                          hits integer NOT NULL DEFAULT 0, PRIMARY KEY (tenant_id, id));
    INSERT INTO by_pair (tenant_id, id)
        SELECT n % 7, md5(n::text)::uuid FROM generate_series(1, 500) AS n;
    CREATE TABLE by_day (day date NOT NULL, code varchar(40) NOT NULL,
                         hits integer NOT NULL DEFAULT 0, PRIMARY KEY (day, code));
    INSERT INTO by_day (day, code)
        SELECT date '2024-01-01' + n % 13, md5(n::text) FROM generate_series(1, 500) AS n;";

const SQLITE_TABLES: &str = "
    CREATE TABLE seq (n INTEGER PRIMARY KEY);
    WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 500)
    INSERT INTO seq SELECT n FROM s;
    CREATE TABLE by_int (id INTEGER PRIMARY KEY, hits INTEGER NOT NULL DEFAULT 0);
    INSERT INTO by_int (id) SELECT n * 7 - 1000 FROM seq;
    CREATE TABLE by_uuid (id TEXT NOT NULL PRIMARY KEY, deleted_at TEXT,
                          hits INTEGER NOT NULL DEFAULT 0);
    INSERT INTO by_uuid (id, deleted_at)
        SELECT lower(hex(randomblob(16))), CASE WHEN n % 5 = 0 THEN '2024-01-01' END FROM seq;
    CREATE TABLE by_text (code TEXT NOT NULL PRIMARY KEY, hits INTEGER NOT NULL DEFAULT 0);
    INSERT INTO by_text (code)
        SELECT CASE n % 3 WHEN 0 THEN upper(hex(randomblob(8))) WHEN 1 THEN 'é' || n
                          ELSE 'O''Brien ' || n END FROM seq;
    CREATE TABLE by_time (at TEXT NOT NULL PRIMARY KEY, hits INTEGER NOT NULL DEFAULT 0);
    INSERT INTO by_time (at)
        SELECT strftime('%Y-%m-%dT%H:%M:%f', '2024-03-31 01:00:00', '+' || n || ' hours') FROM seq;
    CREATE TABLE by_pair (tenant_id INTEGER NOT NULL, id BLOB NOT NULL,
                          hits INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (tenant_id, id));
    INSERT INTO by_pair (tenant_id, id) SELECT n % 7, randomblob(16) FROM seq;
    CREATE TABLE by_day (day TEXT NOT NULL, code TEXT NOT NULL,
                         hits INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (day, code));
    INSERT INTO by_day (day, code)
        SELECT date('2024-01-01', '+' || (n % 13) || ' days'), hex(randomblob(8)) FROM seq;";

/// The key kinds, each as (migration, table, whether it is scoped).
fn cases() -> [(&'static datamig::Migration, &'static str, bool); 7] {
    [
        (&integer_key::MIGRATION, "by_int", false),
        (&uuid_key::MIGRATION, "by_uuid", false),
        (&text_key::MIGRATION, "by_text", false),
        (&time_key::MIGRATION, "by_time", false),
        (&pair_key::MIGRATION, "by_pair", false),
        (&day_key::MIGRATION, "by_day", false),
        (&scoped::MIGRATION, "by_uuid", true),
    ]
}

/// Runs one migration as a crash would leave it (after 3 batches), then to the end, then
/// once more; checks every row in scope was visited once and no other.
async fn walk_every_key<DB: Backend>(
    pool: &Pool<DB>,
    hits: impl AsyncFn(&str, bool) -> anyhow::Result<(i64, i64, i64)>,
    reset: impl AsyncFn(&str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for (migration, table, scoped) in cases() {
        let id = migration.id();
        let migrator = || Migrator::new(pool.clone()).migrations([migration]);
        let crashed = migrator().interrupt_after_batches(3).run().await;
        assert!(
            matches!(crashed, Err(Error::Interrupted { batches: 3, .. })),
            "{id}: {crashed:?}"
        );
        let status = migrator().status().await?;
        let status = status.iter().find(|s| s.id == id).expect("its status");
        assert_eq!(status.state, State::Running, "{id}");
        let checkpoint = status
            .ledger
            .as_ref()
            .and_then(|e| e.checkpoint.clone())
            .expect("a checkpoint");
        let readable = datamig::__private::describe_checkpoint(&checkpoint);
        if table == "by_int" {
            assert_eq!(
                checkpoint, readable,
                "{id}: an integer checkpoint is its number"
            );
        } else {
            // Typed: each column with its type and value, and readable by people.
            let parts: serde_json::Value = serde_json::from_str(&checkpoint)?;
            assert!(parts[0]["type"].is_string(), "{id}: {checkpoint}");
            assert!(readable.contains(" = "), "{id}: {readable}");
        }
        let (visited_once, visited_more, in_scope) = hits(table, scoped).await?;
        assert_eq!(visited_once, 3 * 37, "{id}: three batches committed");
        assert_eq!(visited_more, 0, "{id}");
        assert!(in_scope > 3 * 37, "{id}");

        let report = migrator().run().await?;
        assert_eq!(report.applied.len(), 1, "{id}");
        let (visited_once, visited_more, in_scope) = hits(table, scoped).await?;
        assert_eq!(
            (visited_once, visited_more),
            (in_scope, 0),
            "{id}: every row in scope once"
        );

        let before = hits(table, scoped).await?;
        let again = migrator().run().await?;
        assert!(
            again.applied.is_empty(),
            "{id}: a second run applies nothing"
        );
        assert_eq!(
            hits(table, scoped).await?,
            before,
            "{id}: and changes nothing"
        );
        // The table is reset for the scoped migration that walks it again.
        reset(table).await?;
    }
    Ok(())
}

/// Rows visited once in scope, rows visited more than once or out of scope, rows in scope.
fn hits_sql(table: &str, scoped: bool) -> String {
    let scope = if scoped {
        "deleted_at IS NULL"
    } else {
        "1 = 1"
    };
    format!(
        "SELECT count(*) FILTER (WHERE hits = 1 AND {scope}),
                count(*) FILTER (WHERE hits > 1),
                count(*) FILTER (WHERE hits > 0 AND NOT ({scope})),
                count(*) FILTER (WHERE {scope})
         FROM {table}"
    )
}

#[tokio::test]
async fn every_kind_of_key_is_walked_once_and_resumed_on_postgres() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    sqlx::raw_sql(POSTGRES_TABLES).execute(db.pool()).await?;
    let pool = db.pool().clone();
    walk_every_key(
        db.pool(),
        async |table: &str, scoped: bool| {
            let (once, more, outside, in_scope): (i64, i64, i64, i64) =
                sqlx::query_as(sqlx::AssertSqlSafe(hits_sql(table, scoped)))
                    .fetch_one(&pool)
                    .await?;
            Ok((once, more + outside, in_scope))
        },
        async |table: &str| {
            sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE {table} SET hits = 0")))
                .execute(&pool)
                .await?;
            Ok(())
        },
    )
    .await?;
    assert_eq!(
        datamig_tests::scalar(db.pool(), "SELECT count(*) FROM by_uuid").await?,
        ROWS
    );
    Ok(())
}

#[tokio::test]
async fn every_kind_of_key_is_walked_once_and_resumed_on_sqlite() -> anyhow::Result<()> {
    let db = datamig::testing::sqlite().await?;
    sqlx::raw_sql(SQLITE_TABLES).execute(db.pool()).await?;
    let pool = db.pool().clone();
    walk_every_key(
        db.pool(),
        async |table: &str, scoped: bool| {
            let (once, more, outside, in_scope): (i64, i64, i64, i64) =
                sqlx::query_as(sqlx::AssertSqlSafe(hits_sql(table, scoped)))
                    .fetch_one(&pool)
                    .await?;
            Ok((once, more + outside, in_scope))
        },
        async |table: &str| {
            sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE {table} SET hits = 0")))
                .execute(&pool)
                .await?;
            Ok(())
        },
    )
    .await?;
    Ok(())
}

/// 20 000 rows in each table, analyzed: the planner's choice is the one production gets.
const PLANNED_TABLES: &str = "
    CREATE TABLE by_int (id bigint PRIMARY KEY, hits integer NOT NULL DEFAULT 0);
    INSERT INTO by_int (id) SELECT n FROM generate_series(1, 20000) AS n;
    CREATE TABLE by_uuid (id uuid PRIMARY KEY, deleted_at timestamptz,
                          hits integer NOT NULL DEFAULT 0);
    INSERT INTO by_uuid (id, deleted_at)
        SELECT md5(n::text)::uuid, CASE WHEN n % 5 = 0 THEN now() END
        FROM generate_series(1, 20000) AS n;
    CREATE TABLE by_text (code text PRIMARY KEY, hits integer NOT NULL DEFAULT 0);
    INSERT INTO by_text (code) SELECT md5(n::text) FROM generate_series(1, 20000) AS n;
    CREATE TABLE by_time (at timestamptz PRIMARY KEY, hits integer NOT NULL DEFAULT 0);
    INSERT INTO by_time (at) SELECT now() + n * interval '1 s' FROM generate_series(1, 20000) AS n;
    CREATE TABLE by_pair (tenant_id bigint NOT NULL, id uuid NOT NULL,
                          hits integer NOT NULL DEFAULT 0, PRIMARY KEY (tenant_id, id));
    INSERT INTO by_pair (tenant_id, id)
        SELECT n % 50, md5(n::text)::uuid FROM generate_series(1, 20000) AS n;
    CREATE TABLE by_day (day date NOT NULL, code varchar(40) NOT NULL,
                         hits integer NOT NULL DEFAULT 0, PRIMARY KEY (day, code));
    INSERT INTO by_day (day, code)
        SELECT date '2024-01-01' + n % 300, md5(n::text) FROM generate_series(1, 20000) AS n;
    ANALYZE;";

#[tokio::test]
async fn the_next_batch_is_found_by_an_index_range_scan_for_every_key() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    sqlx::raw_sql(PLANNED_TABLES).execute(db.pool()).await?;
    let mut conn = db.pool().acquire().await?;
    for (migration, table, _) in cases() {
        for after_first in [false, true] {
            let plan = datamig::testing::next_batch_plan(&mut conn, migration, after_first).await?;
            assert!(
                plan.contains(&format!("Index Only Scan using {table}_pkey on {table}"))
                    || plan.contains(&format!("Index Scan using {table}_pkey on {table}")),
                "{} (after the first batch: {after_first}) does not walk {table}_pkey:\n{plan}",
                migration.id()
            );
            assert!(!plan.contains("Seq Scan"), "{}:\n{plan}", migration.id());
            if after_first {
                assert!(
                    plan.contains("Index Cond"),
                    "a range, not a full walk:\n{plan}"
                );
            }
        }
        // The last key, found before the rest is checked in one statement: one step back.
        let plan = datamig::testing::last_key_plan(&mut conn, migration).await?;
        assert!(
            plan.contains(&format!("Scan Backward using {table}_pkey on {table}")),
            "{}: the last key is not one backward step of {table}_pkey:\n{plan}",
            migration.id()
        );
        assert!(
            !plan.contains("Seq Scan") && !plan.contains("Sort"),
            "{}:\n{plan}",
            migration.id()
        );
    }
    Ok(())
}

/// Walks a table no index serves; refused.
#[datamig::migration(
    id = "20250102_0000_unindexed",
    batch(table = "unindexed", key = "id", size = 10)
)]
async fn unindexed<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE unindexed SET hits = hits + 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// The same, accepting a full scan per batch.
#[datamig::migration(
    id = "20250102_0001_unindexed_allowed",
    batch(
        table = "unindexed",
        key = "id",
        size = 10,
        dangerously_scan_without_index = true
    )
)]
async fn unindexed_allowed<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE unindexed SET hits = hits + 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// A composite key whose second column does not exist.
#[datamig::migration(
    id = "20250102_0002_missing_column",
    batch(table = "by_pair", key = "tenant_id, uid", size = 10)
)]
async fn missing_column<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE by_pair SET hits = hits + 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// A scope that is not valid SQL.
#[datamig::migration(
    id = "20250102_0003_bad_scope",
    batch(table = "by_uuid", key = "id", size = 10, scope = "deleted_at IS NUL")
)]
async fn bad_scope<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE by_uuid SET hits = hits + 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// A nullable key column.
#[datamig::migration(
    id = "20250102_0004_nullable",
    batch(table = "nullable", key = "code", size = 10)
)]
async fn nullable<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE nullable SET hits = hits + 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// A key of an unsupported type (double precision).
#[datamig::migration(
    id = "20250102_0005_float_key",
    batch(table = "floats", key = "x", size = 10)
)]
async fn float_key(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch("UPDATE floats SET hits = hits + 1 WHERE {batch}", &batch)
        .await?;
    Ok(())
}

/// The integer form (`$1`, `$2`) over a UUID key: a plain error, rolled back.
#[datamig::migration(
    id = "20250102_0006_integer_form_on_uuid",
    batch(table = "by_uuid", key = "id", size = 10)
)]
async fn integer_form_on_uuid<DB: Backend>(
    ctx: &mut Ctx<'_, DB>,
    batch: Batch,
) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE by_uuid SET hits = hits + 1 WHERE id > $1 AND id <= $2",
        &batch,
    )
    .await?;
    Ok(())
}

async fn config_error<DB: Backend>(pool: &Pool<DB>, m: &'static datamig::Migration) -> String {
    match Migrator::new(pool.clone()).migrations([m]).run().await {
        Err(err @ Error::Config(_)) => err.to_string(),
        other => panic!("{}: expected a configuration error, got {other:?}", m.id()),
    }
}

#[tokio::test]
async fn bad_keys_and_scopes_are_named_and_change_nothing_on_postgres() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    sqlx::raw_sql(POSTGRES_TABLES).execute(db.pool()).await?;
    sqlx::raw_sql(
        "CREATE TABLE unindexed (id uuid NOT NULL, hits integer NOT NULL DEFAULT 0);
         INSERT INTO unindexed (id) SELECT md5(n::text)::uuid FROM generate_series(1, 25) AS n;
         CREATE TABLE nullable (code text UNIQUE, hits integer NOT NULL DEFAULT 0);
         INSERT INTO nullable (code) VALUES ('a'), ('b');
         CREATE TABLE floats (x float8 PRIMARY KEY, hits integer NOT NULL DEFAULT 0);
         INSERT INTO floats (x) VALUES (0.5), (1.5);",
    )
    .execute(db.pool())
    .await?;
    let before = datamig::fingerprint(db.pool()).await?;
    let pool = db.pool();

    let err = config_error(pool, &unindexed::MIGRATION).await;
    assert!(
        err.contains("no index of unindexed serves its key (id)")
            && err.contains("CREATE INDEX CONCURRENTLY \"unindexed_id_idx\" ON unindexed (id)")
            && err.contains("dangerously_scan_without_index = true"),
        "{err}"
    );
    let err = config_error(pool, &missing_column::MIGRATION).await;
    assert!(
        err.contains("table by_pair has no column \"uid\", which its batch key names"),
        "{err}"
    );
    let err = config_error(pool, &bad_scope::MIGRATION).await;
    assert!(
        err.contains("its scope \"deleted_at IS NUL\" is not a valid condition on table by_uuid")
            && err.contains("syntax error"),
        "{err}"
    );
    let err = config_error(pool, &nullable::MIGRATION).await;
    assert!(
        err.contains("its key column nullable.code is nullable"),
        "{err}"
    );
    let err = config_error(pool, &float_key::MIGRATION).await;
    assert!(
        err.contains(
            "its key column floats.x is of type double precision, which batching does not walk"
        ),
        "{err}"
    );
    match Migrator::new(pool.clone())
        .migrations([&integer_form_on_uuid::MIGRATION])
        .run()
        .await
    {
        Err(Error::MigrationFailed { message, .. }) => assert!(
            message.contains("walk the key id, which is not one integer column: write {batch}"),
            "{message}"
        ),
        other => panic!("expected the body to fail, got {other:?}"),
    }
    assert!(
        before
            .differences(&datamig::fingerprint(pool).await?)
            .is_empty(),
        "nothing changed"
    );
    assert_eq!(
        datamig_tests::scalar(pool, "SELECT count(*) FROM datamig_ledger").await?,
        0
    );

    // Opting out of the index runs, and says so in the ledger's notes.
    Migrator::new(pool.clone())
        .migrations([&unindexed_allowed::MIGRATION])
        .run()
        .await?;
    assert_eq!(
        datamig_tests::scalar(pool, "SELECT count(*) FROM unindexed WHERE hits = 1").await?,
        25
    );
    let notes: String = sqlx::query_scalar("SELECT notes FROM datamig_ledger")
        .fetch_one(pool)
        .await?;
    assert!(
        notes.contains("no index serves the key (id) of unindexed"),
        "{notes}"
    );
    Ok(())
}

#[tokio::test]
async fn bad_keys_and_scopes_are_named_and_change_nothing_on_sqlite() -> anyhow::Result<()> {
    let db = datamig::testing::sqlite().await?;
    sqlx::raw_sql(SQLITE_TABLES).execute(db.pool()).await?;
    sqlx::raw_sql(
        "CREATE TABLE unindexed (id TEXT NOT NULL, hits INTEGER NOT NULL DEFAULT 0);
         INSERT INTO unindexed (id) SELECT hex(randomblob(16)) FROM seq WHERE n <= 25;
         CREATE TABLE nullable (code TEXT UNIQUE, hits INTEGER NOT NULL DEFAULT 0);
         INSERT INTO nullable (code) VALUES ('a'), ('b');",
    )
    .execute(db.pool())
    .await?;
    let pool = db.pool();
    let count = async || -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT (SELECT sum(hits) FROM by_uuid) + (SELECT sum(hits) FROM by_pair)
                  + (SELECT sum(hits) FROM unindexed) + (SELECT sum(hits) FROM nullable)",
        )
        .fetch_one(pool)
        .await?)
    };
    let err = config_error(pool, &unindexed::MIGRATION).await;
    assert!(
        err.contains("no index of unindexed serves its key (id)"),
        "{err}"
    );
    let err = config_error(pool, &missing_column::MIGRATION).await;
    assert!(err.contains("table by_pair has no column \"uid\""), "{err}");
    let err = config_error(pool, &bad_scope::MIGRATION).await;
    assert!(
        err.contains("its scope \"deleted_at IS NUL\" is not a valid condition on table by_uuid"),
        "{err}"
    );
    let err = config_error(pool, &nullable::MIGRATION).await;
    assert!(
        err.contains("its key column nullable.code is nullable"),
        "{err}"
    );
    assert_eq!(count().await?, 0, "nothing changed");
    let ledger: i64 = sqlx::query_scalar("SELECT count(*) FROM datamig_ledger")
        .fetch_one(pool)
        .await?;
    assert_eq!(ledger, 0);
    Migrator::new(pool.clone())
        .migrations([&unindexed_allowed::MIGRATION])
        .run()
        .await?;
    assert_eq!(count().await?, 25);
    Ok(())
}

/// Each row costs nothing, until `heavy` rows, which sleep 1 ms each in the server.
#[datamig::migration(
    id = "20250103_0000_adaptive",
    batch(
        table = "costly",
        key = "id",
        size = 20,
        target = "150ms",
        min_size = 5,
        max_size = 4000
    )
)]
async fn adaptive(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE costly SET hits = hits + 1
                         + length(pg_sleep(CASE WHEN heavy THEN 0.001 ELSE 0 END)::text)
         WHERE {batch}",
        &batch,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_batch_size_follows_a_target_duration_as_the_row_cost_changes() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    sqlx::raw_sql(
        "CREATE TABLE costly (id uuid PRIMARY KEY, heavy boolean NOT NULL,
                              hits integer NOT NULL DEFAULT 0);
         INSERT INTO costly (id, heavy)
             SELECT ('00000000-0000-0000-0000-' || lpad(n::text, 12, '0'))::uuid, n > 20000
             FROM generate_series(1, 25000) AS n;",
    )
    .execute(db.pool())
    .await?;
    let events: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let sink = Arc::clone(&events);
    Migrator::new(db.pool().clone())
        .migrations([&adaptive::MIGRATION])
        .on_progress(move |p| sink.lock().unwrap().push(p.clone()))
        .run()
        .await?;
    assert_eq!(
        datamig_tests::scalar(db.pool(), "SELECT count(*) FROM costly WHERE hits = 1").await?,
        25000,
        "every row once"
    );
    let events = events.lock().unwrap().clone();
    assert!(events.iter().all(|e| e.target_ms == Some(150)));
    // The checkpoint (a UUID) says which part of the table each batch was in.
    let heavy = |e: &Progress| {
        e.checkpoint
            .as_deref()
            .and_then(|c| c.trim_matches('\'').rsplit('-').next()?.parse::<u64>().ok())
            .is_some_and(|n| n > 20000)
    };
    let cheap_max = events
        .iter()
        .filter(|e| !heavy(e))
        .map(|e| e.batch_size)
        .max()
        .unwrap_or(0);
    let heavy_sizes: Vec<u32> = events
        .iter()
        .filter(|e| heavy(e))
        .map(|e| e.batch_size)
        .collect();
    let settled = &heavy_sizes[heavy_sizes.len().saturating_sub(5)..];
    let trace: Vec<(u32, u64)> = events.iter().map(|e| (e.batch_size, e.batch_ms)).collect();
    // Cheap rows: the size grows from 20 toward the maximum. Rows of 1 ms: about 150 fit in
    // 150 ms, so it shrinks to well under a tenth of that.
    assert!(cheap_max >= 1280, "the size grew on cheap rows: {trace:?}");
    assert!(
        settled.iter().all(|s| *s * 10 <= cheap_max && *s >= 5),
        "the size shrank on costly rows: {trace:?}"
    );
    Ok(())
}

/// Keeps `on_progress` events for a test.
fn recorder() -> (
    Arc<Mutex<Vec<Progress>>>,
    impl Fn(&Progress) + Send + Sync + 'static,
) {
    let events: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let sink = Arc::clone(&events);
    (events, move |p: &Progress| {
        sink.lock().unwrap().push(p.clone())
    })
}

/// A slow UUID-keyed backfill on the replication test's primary: 100 batches, 20 ms apart.
#[datamig::migration(
    id = "20250104_0000_replicated",
    batch(table = "replicated", key = "id", size = 10, pause = "20ms")
)]
async fn replicated(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE replicated SET hits = hits + 1, pad = repeat('x', 2000) WHERE {batch}",
        &batch,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_backfill_waits_while_a_standby_replays_behind_and_goes_on_after() -> anyhow::Result<()> {
    let replication = datamig_tests::Replication::start().await?;
    let result = throttled_by_a_paused_standby(&replication).await;
    replication.remove().await;
    result
}

async fn throttled_by_a_paused_standby(
    replication: &datamig_tests::Replication,
) -> anyhow::Result<()> {
    let pool = PgPool::connect(&replication.primary_url).await?;
    sqlx::raw_sql(
        "CREATE TABLE replicated (id uuid PRIMARY KEY, hits integer NOT NULL DEFAULT 0, pad text);
         INSERT INTO replicated (id) SELECT md5(n::text)::uuid FROM generate_series(1, 1000) AS n;",
    )
    .execute(&pool)
    .await?;
    replication.pause_replay().await?;
    let (events, sink) = recorder();
    let migrator = Migrator::new(pool.clone())
        .migrations([&replicated::MIGRATION])
        .max_replay_lag(Duration::from_millis(300))
        .throttle_interval(Duration::from_millis(100))
        .on_progress(sink);
    let run = tokio::spawn(async move { migrator.run().await });

    // It waits, saying why, while replay is paused...
    let waiting = |events: &[Progress]| {
        events
            .iter()
            .filter(|e| e.waiting.as_deref().is_some_and(|w| w.contains("replays")))
            .count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while waiting(&events.lock().unwrap()) == 0 {
        anyhow::ensure!(!run.is_finished(), "the backfill finished without waiting");
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the backfill did not wait within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ledger_batches = || async {
        sqlx::query_scalar::<_, i64>("SELECT batches FROM datamig_ledger")
            .fetch_one(&pool)
            .await
    };
    let held_at = ledger_batches().await?;
    let seen = waiting(&events.lock().unwrap());
    while waiting(&events.lock().unwrap()) < seen + 5 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no more waiting events"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        ledger_batches().await?,
        held_at,
        "no batch committed while the standby was behind"
    );
    assert!(held_at < 100, "it stopped before the end");
    let why = events
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find_map(|e| e.waiting.clone())
        .unwrap_or_default();
    assert!(why.contains("behind (limit 0.3s)"), "{why}");

    // ...and goes on once it replays again.
    replication.resume_replay().await?;
    let report = tokio::time::timeout(Duration::from_secs(120), run).await???;
    assert_eq!(report.applied.len(), 1);
    assert_eq!(
        datamig_tests::scalar(&pool, "SELECT count(*) FROM replicated WHERE hits = 1").await?,
        1000
    );
    pool.close().await;
    Ok(())
}

/// A user's own health check: stressed while `maintenance` holds a row.
#[tokio::test]
async fn a_custom_health_check_holds_batches_until_it_says_healthy() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    sqlx::raw_sql(POSTGRES_TABLES).execute(db.pool()).await?;
    sqlx::raw_sql("CREATE TABLE maintenance (why text NOT NULL); INSERT INTO maintenance VALUES ('vacuum of orders');")
        .execute(db.pool())
        .await?;
    let (events, sink) = recorder();
    let migrator = Migrator::new(db.pool().clone())
        .migrations([&pair_key::MIGRATION])
        .throttle_interval(Duration::from_millis(50))
        .health_check(|conn| {
            Box::pin(async move {
                let why: Option<String> = sqlx::query_scalar("SELECT why FROM maintenance")
                    .fetch_optional(conn)
                    .await?;
                Ok(match why {
                    Some(why) => datamig::Health::Stressed(format!("maintenance: {why}")),
                    None => datamig::Health::Healthy,
                })
            })
        })
        .on_progress(sink);
    let run = tokio::spawn(async move { migrator.run().await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while events.lock().unwrap().len() < 3 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no waiting events");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    {
        let events = events.lock().unwrap();
        assert!(
            events
                .iter()
                .all(|e| e.waiting.as_deref() == Some("maintenance: vacuum of orders")),
            "{events:?}"
        );
    }
    assert_eq!(
        datamig_tests::scalar(db.pool(), "SELECT count(*) FROM by_pair WHERE hits > 0").await?,
        0,
        "no batch ran while the check said stressed"
    );
    sqlx::query("DELETE FROM maintenance")
        .execute(db.pool())
        .await?;
    tokio::time::timeout(Duration::from_secs(60), run).await???;
    assert_eq!(
        datamig_tests::scalar(db.pool(), "SELECT count(*) FROM by_pair WHERE hits = 1").await?,
        ROWS
    );
    // Progress for a composite key: rows done, the estimated total, the rate, time left.
    let events = events.lock().unwrap();
    let done: Vec<&Progress> = events.iter().filter(|e| e.waiting.is_none()).collect();
    assert_eq!(done.len(), 14, "500 keys in batches of 37");
    let last = done.last().expect("a batch");
    assert_eq!(last.keys_done, 500);
    assert!(last.estimated_total.is_some_and(|n| n > 0), "{last:?}");
    assert!(
        last.keys_per_second > 0.0 && last.seconds_left.is_some(),
        "{last:?}"
    );
    assert!(
        last.checkpoint
            .as_deref()
            .is_some_and(|c| c.starts_with('(')),
        "a composite checkpoint, readable: {last:?}"
    );
    Ok(())
}

/// Idempotent: only a row whose plan code is missing or stale changes.
#[datamig::migration(
    id = "20250101_0030_plan_codes",
    batch(table = "plans", key = "id", size = 100)
)]
async fn plan_codes(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE plans SET plan_code = upper(plan) \
         WHERE {batch} AND plan_code IS DISTINCT FROM upper(plan)",
        &batch,
    )
    .await?;
    Ok(())
}

/// The same statement through the transaction itself, which no check can guard.
#[datamig::migration(
    id = "20250101_0031_plan_codes_raw",
    batch(table = "plans_raw", key = "id", size = 100)
)]
async fn plan_codes_raw(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    let (after, last) = batch
        .after()
        .zip(batch.last())
        .ok_or_else(|| anyhow::anyhow!("plans_raw's key is one integer column"))?;
    let done = sqlx::query(
        "UPDATE plans_raw SET plan_code = upper(plan) \
         WHERE id > $1 AND id <= $2 AND plan_code IS DISTINCT FROM upper(plan)",
    )
    .bind(after)
    .bind(last)
    .execute(ctx.tx())
    .await?;
    ctx.add_rows_affected(done.rows_affected());
    Ok(())
}

/// The `$1`/`$2` form without a marker, which a check cannot guard either.
#[datamig::migration(
    id = "20250101_0032_plan_codes_bounds",
    batch(table = "plans_bounds", key = "id", size = 100)
)]
async fn plan_codes_bounds(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE plans_bounds SET plan_code = upper(plan) \
         WHERE id > $1 AND id <= $2 AND plan_code IS DISTINCT FROM upper(plan)",
        &batch,
    )
    .await?;
    Ok(())
}

const PLAN_TABLES: &str = "
    CREATE TABLE plans (id uuid PRIMARY KEY, plan text NOT NULL, plan_code text);
    INSERT INTO plans (id, plan)
        SELECT md5(n::text)::uuid, (ARRAY['free', 'pro', 'team'])[1 + n % 3]
        FROM generate_series(1, 2000) AS n;
    CREATE TABLE plans_raw (id bigint PRIMARY KEY, plan text NOT NULL, plan_code text);
    INSERT INTO plans_raw (id, plan)
        SELECT n, (ARRAY['free', 'pro', 'team'])[1 + n % 3] FROM generate_series(1, 2000) AS n;
    CREATE TABLE plans_bounds (LIKE plans_raw INCLUDING ALL);
    INSERT INTO plans_bounds SELECT * FROM plans_raw;";

#[tokio::test]
async fn a_run_with_nothing_left_to_do_checks_the_rest_in_one_statement() -> anyhow::Result<()> {
    let db = datamig::testing::postgres().await?;
    let pool = db.pool();
    sqlx::raw_sql(PLAN_TABLES).execute(pool).await?;
    let migrator = Migrator::new(pool.clone()).migrations([
        &plan_codes::MIGRATION,
        &plan_codes_raw::MIGRATION,
        &plan_codes_bounds::MIGRATION,
    ]);
    let first = migrator.run().await?;
    for applied in &first.applied {
        assert_eq!(
            (applied.batches, applied.rows_affected),
            (20, 2000),
            "{}",
            applied.id
        );
    }
    let stale = "SELECT count(*) FROM plans WHERE plan_code IS DISTINCT FROM upper(plan)";

    // Nothing to do: one batch walked, then every key after it checked in one statement,
    // committed as the last batch with the checkpoint at the last key.
    let (batches, rows, written, notes) =
        datamig_tests::rerun_counts(pool, plan_codes::MIGRATION.id()).await?;
    assert_eq!((batches, rows, written), (2, 0, 0), "{notes}");
    assert!(notes.contains("checked in one statement"), "{notes}");
    let entry = migrator
        .status()
        .await?
        .into_iter()
        .find(|s| s.id == plan_codes::MIGRATION.id())
        .and_then(|s| s.ledger)
        .expect("its ledger row");
    let last: String = sqlx::query_scalar("SELECT id::text FROM plans ORDER BY id DESC LIMIT 1")
        .fetch_one(pool)
        .await?;
    assert_eq!(
        datamig::__private::describe_checkpoint(entry.checkpoint.as_deref().unwrap_or_default()),
        format!("id = '{last}'")
    );
    assert_eq!((entry.status.as_str(), entry.batches), ("applied", 2));
    assert_eq!(
        datamig_tests::scalar(
            pool,
            "SELECT count(*) FROM pg_proc WHERE proname = 'datamig_rest_has_work'"
        )
        .await?,
        0,
        "the guard is gone with its transaction"
    );

    // One stale row in batch 4: the checks after batch 1 and after batch 3 find it and roll
    // back (each failed check doubles the quiet batches before the next), the walk fixes
    // it, and after four quiet batches more the rest is checked again and holds.
    sqlx::query(
        "UPDATE plans SET plan_code = NULL
         WHERE id = (SELECT id FROM plans ORDER BY id OFFSET 350 LIMIT 1)",
    )
    .execute(pool)
    .await?;
    let (batches, rows, written, notes) =
        datamig_tests::rerun_counts(pool, plan_codes::MIGRATION.id()).await?;
    assert_eq!((rows, written), (1, 1), "{notes}");
    assert_eq!(datamig_tests::scalar(pool, stale).await?, 0);
    assert_eq!(batches, 9, "{notes}");
    assert!(notes.contains("batch 9: no row after"), "{notes}");

    // Statements a check cannot guard are walked batch by batch, as before.
    for id in [
        plan_codes_raw::MIGRATION.id(),
        plan_codes_bounds::MIGRATION.id(),
    ] {
        let (batches, rows, written, notes) = datamig_tests::rerun_counts(pool, id).await?;
        assert_eq!((batches, rows, written), (20, 0, 0), "{id}: {notes}");
        assert!(!notes.contains("checked in one statement"), "{id}: {notes}");
    }

    // A role that may not create temporary objects has no guard: it walks, as before.
    let role = format!("no_temp_{}", db.name());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'no-temp' NOSUPERUSER;
         REVOKE TEMPORARY ON DATABASE {db} FROM PUBLIC;
         GRANT CONNECT ON DATABASE {db} TO {role};
         GRANT USAGE ON SCHEMA public TO {role};
         GRANT SELECT, INSERT, UPDATE ON plans, datamig_ledger, datamig_runs,
                                          datamig_ledger_layout TO {role};",
        db = db.name()
    )))
    .execute(pool)
    .await?;
    let restricted = PgPool::connect(&datamig_tests::url_for(db.url(), &role, "no-temp")?).await?;
    let may_temp: bool =
        sqlx::query_scalar("SELECT has_database_privilege(current_database(), 'TEMPORARY')")
            .fetch_one(&restricted)
            .await?;
    assert!(!may_temp, "the role may not create temporary objects");
    let (batches, rows, written, notes) =
        datamig_tests::rerun_counts(&restricted, plan_codes::MIGRATION.id()).await?;
    assert_eq!((batches, rows, written), (20, 0, 0), "{notes}");
    assert_eq!(datamig_tests::scalar(pool, stale).await?, 0);
    Ok(())
}
