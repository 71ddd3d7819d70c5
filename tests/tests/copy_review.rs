//! `datamig copy` against what a reading of its code found: the copy's own foreign-key
//! check (triggers off) over a partitioned table and over a text key whose collation
//! differs between the two sides; a SQLite key holding `NULL`; two sources of the same name
//! into one target (PostgreSQL databases, SQLite files); chunk bounds read back from the
//! target's progress table after someone wrote into it. Each test failed before its fix.

use datamig::Error;
use datamig::copy::Copier;
use datamig::testing::TestDatabase;
use datamig_tests::{copy_args, text};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AssertSqlSafe, Connection, PgPool};

fn datamig(args: &[&str]) -> tokio::process::Command {
    datamig_tests::command(env!("CARGO_BIN_EXE_datamig-fixtures"), "", args)
}

async fn execute(pool: &PgPool, sql: &str) -> anyhow::Result<()> {
    sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(pool)
        .await?;
    Ok(())
}

async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await?)
}

/// Two databases, `source` run on the first and `target` on the second.
async fn databases(source: &str, target: &str) -> anyhow::Result<(TestDatabase, TestDatabase)> {
    let src = datamig::testing::postgres().await?;
    execute(src.pool(), source).await?;
    let dst = datamig::testing::postgres().await?;
    execute(dst.pool(), target).await?;
    Ok((src, dst))
}

/// The tables not finished, which the copy must report.
fn failed(outcome: Result<datamig::copy::CopyReport, Error>) -> Vec<datamig::copy::TableFailure> {
    match outcome {
        Err(Error::CopyIncomplete { failed, .. }) => failed,
        other => panic!("the copy did not report tables not finished: {other:?}"),
    }
}

#[tokio::test]
async fn an_orphan_in_a_partition_is_caught_with_triggers_off() -> anyhow::Result<()> {
    let readings = "CREATE TABLE readings (id int, at date, parent_id int {fk}, PRIMARY KEY (id, at))
                        PARTITION BY RANGE (at);
                    CREATE TABLE readings_2023 PARTITION OF readings FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
                    CREATE TABLE readings_2024 PARTITION OF readings FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');";
    let (src, dst) = databases(
        &format!(
            "CREATE TABLE parents (id int PRIMARY KEY);
             {}
             INSERT INTO parents SELECT generate_series(1, 100);
             INSERT INTO readings SELECT g, date '2023-06-01' + g % 400, CASE WHEN g = 777 THEN 999 ELSE 1 + g % 100 END
               FROM generate_series(1, 1500) g;
             ANALYZE;",
            readings.replace("{fk}", "")
        ),
        &format!(
            "CREATE TABLE parents (id int PRIMARY KEY); {}",
            readings.replace("{fk}", "REFERENCES parents (id)")
        ),
    )
    .await?;
    // A superuser's copy loads with triggers off and checks the keys itself.
    let failed = failed(
        Copier::new(src.pool(), dst.pool())
            .chunk_rows(1_000)
            .run()
            .await,
    );
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].table, "public.readings");
    assert!(
        failed[0]
            .message
            .contains("foreign key readings_parent_id_fkey of the row with id = 777, at = ")
            && failed[0]
                .message
                .contains("(parent_id) = (999) is not present in table public.parents"),
        "{failed:?}"
    );
    assert_eq!(
        count(
            dst.pool(),
            "SELECT count(*) FROM readings WHERE parent_id NOT IN (SELECT id FROM parents)"
        )
        .await?,
        0,
        "no orphan was loaded"
    );
    // A partition copied alone is checked against the key it inherits.
    let alone = datamig::testing::postgres().await?;
    execute(
        alone.pool(),
        &format!(
            "CREATE TABLE parents (id int PRIMARY KEY); {}",
            readings.replace("{fk}", "REFERENCES parents (id)")
        ),
    )
    .await?;
    let failed_alone = crate::failed(
        Copier::new(src.pool(), alone.pool())
            .tables(["parents", "readings_2024"])
            .run()
            .await,
    );
    assert!(
        failed_alone.len() == 1
            && failed_alone[0].table == "public.readings_2024"
            && failed_alone[0]
                .message
                .contains("(parent_id) = (999) is not present in table public.parents"),
        "{failed_alone:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_text_key_in_another_collation_has_every_row_it_wrote_checked() -> anyhow::Result<()> {
    // The source orders its key in bytes, the target by ICU's rules: 'a' comes after every
    // 'B…' key in the source and before them in the target. The orphan's chunk is the
    // source's last; the target's range of that chunk does not hold it.
    let (src, dst) = databases(
        "CREATE TABLE parents (id int PRIMARY KEY);
         CREATE TABLE children (code text COLLATE \"C\" PRIMARY KEY, parent_id int);
         INSERT INTO parents SELECT generate_series(1, 10);
         INSERT INTO children SELECT 'B' || lpad(g::text, 4, '0'), 1 + g % 10 FROM generate_series(1, 3000) g;
         INSERT INTO children VALUES ('a', 999);
         ANALYZE;",
        "CREATE TABLE parents (id int PRIMARY KEY);
         CREATE TABLE children (code text COLLATE \"und-x-icu\" PRIMARY KEY,
                                parent_id int REFERENCES parents (id));",
    )
    .await?;
    let failed = failed(
        Copier::new(src.pool(), dst.pool())
            .chunk_rows(1_000)
            .jobs(1)
            .run()
            .await,
    );
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0]
            .message
            .contains("foreign key children_parent_id_fkey of the row with code = a"),
        "{failed:?}"
    );
    assert_eq!(
        count(dst.pool(), "SELECT count(*) FROM children WHERE code = 'a'").await?,
        0
    );
    Ok(())
}

/// A test database's URL with another database.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let root = base.rsplit_once('/').map_or(base, |(root, _)| root);
    if query.is_empty() {
        format!("{root}/{database}")
    } else {
        format!("{root}/{database}?{query}")
    }
}

#[tokio::test]
async fn two_sources_of_the_same_name_are_told_apart() -> anyhow::Result<()> {
    let dst = datamig::testing::postgres().await?;
    execute(
        dst.pool(),
        "CREATE TABLE items (id int PRIMARY KEY, v text)",
    )
    .await?;
    let name = format!("{}_same_name", dst.name());
    let source_url = with_database(dst.url(), &name);
    let mut server = sqlx::PgConnection::connect(&with_database(dst.url(), "postgres")).await?;
    // Two databases, one after the other, by the same name: different rows.
    for (round, rows) in [(1, 100), (2, 50)] {
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut server)
                .await?;
        }
        let src = sqlx::PgPool::connect(&source_url).await?;
        execute(
            &src,
            &format!(
                "CREATE TABLE items (id int PRIMARY KEY, v text);
                 INSERT INTO items SELECT g, 'round {round}' FROM generate_series(1, {rows}) g;"
            ),
        )
        .await?;
        let outcome = Copier::new(&src, dst.pool()).run().await;
        src.close().await;
        if round == 1 {
            assert_eq!(outcome?.rows, 100);
        } else {
            // The second source's copy would find the first one's chunks done.
            match outcome {
                Err(Error::CopyRefused(message)) => assert!(
                    message.contains("holds chunks of copy")
                        && message.contains("from another source"),
                    "{message}"
                ),
                other => panic!("a second source of the same name was not refused: {other:?}"),
            }
        }
    }
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut server)
    .await?;
    assert_eq!(
        count(dst.pool(), "SELECT count(*) FROM items WHERE v = 'round 1'").await?,
        100
    );
    Ok(())
}

/// A SQLite file holding `sql`, and its connect options.
async fn sqlite_source(
    sql: &str,
) -> anyhow::Result<(datamig::testing::SqliteTestDatabase, SqliteConnectOptions)> {
    let db = datamig::testing::sqlite().await?;
    sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(db.pool())
        .await?;
    let options = SqliteConnectOptions::new().filename(db.path());
    Ok((db, options))
}

/// `n` SQLite rows of `items (id, v)`, `v` the text of `round`.
fn sqlite_items(n: i64, round: &str) -> String {
    format!(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT NOT NULL);
         WITH RECURSIVE s (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {n})
         INSERT INTO items SELECT n, '{round}' FROM s;"
    )
}

#[tokio::test]
async fn a_sqlite_key_holding_null_loses_no_row() -> anyhow::Result<()> {
    // SQLite lets a TEXT PRIMARY KEY hold NULL; no key range selects those rows.
    let (src, options) = sqlite_source(
        "CREATE TABLE codes (code TEXT PRIMARY KEY, v INTEGER);
         WITH RECURSIVE s (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 3000)
         INSERT INTO codes SELECT printf('c%05d', n), n FROM s;
         INSERT INTO codes VALUES (NULL, -1), (NULL, -2);",
    )
    .await?;
    let dst = datamig::testing::postgres().await?;
    execute(
        dst.pool(),
        "CREATE TABLE codes (code text PRIMARY KEY, v int)",
    )
    .await?;
    let copier =
        Copier::from_sqlite(options, (*dst.pool().connect_options()).clone()).chunk_rows(1_000);
    // The plan reads every row: the NULL keys are named.
    let plan = copier.plan().await?;
    assert_eq!(plan.unconvertible_total, 2, "{:?}", plan.unconvertible);
    // The copy does not lose them: their chunk is refused, by name.
    let failed = failed(copier.run().await);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].table, "public.codes");
    assert_eq!(failed[0].column.as_deref(), Some("code"), "{failed:?}");
    assert!(failed[0].message.contains("NULL"), "{failed:?}");
    assert_eq!(count(dst.pool(), "SELECT count(*) FROM codes").await?, 3000);
    drop(src);
    Ok(())
}

#[tokio::test]
async fn two_sqlite_files_at_one_path_are_told_apart() -> anyhow::Result<()> {
    let (first, options) = sqlite_source(&sqlite_items(100, "first")).await?;
    let dst = datamig::testing::postgres().await?;
    execute(
        dst.pool(),
        "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL)",
    )
    .await?;
    let target = (*dst.pool().connect_options()).clone();
    let report = Copier::from_sqlite(options.clone(), target.clone())
        .run()
        .await?;
    assert_eq!(report.rows, 100);
    // Another file put in its place: a copy of the same name, from another source.
    let (second, _) = sqlite_source(&sqlite_items(50, "second")).await?;
    second.pool().close().await;
    std::fs::rename(second.path(), first.path())?;
    match Copier::from_sqlite(options, target).run().await {
        Err(Error::CopyRefused(message)) => {
            assert!(message.contains("from another source"), "{message}")
        }
        other => panic!("another file at the same path was not refused: {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn bounds_read_back_from_the_progress_table_are_bound_never_spliced() -> anyhow::Result<()> {
    // A copy stopped by a rejected row leaves its last chunk to do; someone then writes
    // into that chunk's bounds in the target's progress table.
    let (src, _) = sqlite_source(&format!(
        "{} UPDATE items SET v = 'bad' WHERE id = 2500;",
        sqlite_items(3000, "fine")
    ))
    .await?;
    let dst = datamig::testing::postgres().await?;
    execute(
        dst.pool(),
        "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL CHECK (v <> 'bad'))",
    )
    .await?;
    let args = copy_args(
        src.url(),
        dst.url(),
        &["--chunk-rows", "1000", "--jobs", "1"],
    );
    let out = datamig(&args).output().await?;
    assert_eq!(out.status.code(), Some(11), "{}", text(&out.stderr));
    assert_eq!(count(dst.pool(), "SELECT count(*) FROM items").await?, 2000);
    sqlx::raw_sql("UPDATE items SET v = 'fine' WHERE id = 2500")
        .execute(src.pool())
        .await?;
    execute(
        dst.pool(),
        "UPDATE datamig_copy_progress SET lower_key = ARRAY['0) OR (1=1'] WHERE copied_at IS NULL",
    )
    .await?;
    // Spliced, the bound would read every row again; bound, it is no SQLite value.
    let out = datamig(&args).output().await?;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("chunk 3 of public.items has bounds in the target's progress table that SQLite cannot have written")
            && stderr.contains("\"0) OR (1=1\" is not a value"),
        "{stderr}"
    );
    assert_eq!(count(dst.pool(), "SELECT count(*) FROM items").await?, 2000);

    // From PostgreSQL the same: a bound is cast to the key's type by the server, bound.
    let (pg_src, pg_dst) = databases(
        "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO items SELECT g, CASE WHEN g = 2500 THEN 'bad' ELSE 'fine' END FROM generate_series(1, 3000) g;
         ANALYZE;",
        "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL CHECK (v <> 'bad'))",
    )
    .await?;
    let copier = || {
        Copier::new(pg_src.pool(), pg_dst.pool())
            .chunk_rows(1_000)
            .jobs(1)
    };
    failed(copier().run().await);
    execute(pg_src.pool(), "UPDATE items SET v = 'fine' WHERE id = 2500").await?;
    execute(
        pg_dst.pool(),
        "UPDATE datamig_copy_progress SET lower_key = ARRAY['2000'' OR ''1''=''1'] WHERE copied_at IS NULL",
    )
    .await?;
    let failed = failed(copier().run().await);
    assert!(
        failed[0].table == "public.items"
            && failed[0]
                .message
                .contains("invalid input syntax for type integer: \"2000' OR '1'='1\""),
        "{failed:?}"
    );
    assert_eq!(
        count(pg_dst.pool(), "SELECT count(*) FROM items").await?,
        2000
    );
    Ok(())
}
