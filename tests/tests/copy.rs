//! `datamig copy` between two real PostgreSQL databases: an exact copy of related tables
//! (compared row by row here, not with datamig's fingerprints), resumption after SIGKILLs at
//! random instants, sequences, self-references and cycles, a target that holds rows, the
//! merge and truncate modes, a source taking writes during the copy, a lock held on the
//! target, and every kind of bad input, with nothing written where the copy refuses.
//!
//! `DATAMIG_RELIABILITY_COPY_KILLS` (default 20) sets the number of kills,
//! `DATAMIG_RELIABILITY_SEED` replays their instants.

use std::time::Duration;

use datamig::Error;
use datamig::copy::{Copier, CopyMode, Triggers};
use datamig::testing::TestDatabase;
use datamig_tests::{Instants, copy_args, text, url_for};
use sqlx::{AssertSqlSafe, PgPool};

fn datamig(args: &[&str]) -> tokio::process::Command {
    // `copy` reads its two URLs from its options; DATABASE_URL is not used.
    datamig_tests::command(env!("CARGO_BIN_EXE_datamig-fixtures"), "", args)
}

/// The application's schema, created by its own migrations on both sides.
const SCHEMA: &str = "
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email varchar(100),
                        created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                     customer_id int NOT NULL REFERENCES customers (id),
                     total numeric(10,2) NOT NULL, note text,
                     total_cents bigint GENERATED ALWAYS AS ((total * 100)::bigint) STORED);
CREATE TABLE categories (id int PRIMARY KEY, parent_id int REFERENCES categories (id), name text NOT NULL);
CREATE TABLE events (id uuid PRIMARY KEY, customer_id int REFERENCES customers (id), payload jsonb,
                     at timestamp);
CREATE TABLE tenant_items (tenant_id int, id bigint, label text, PRIMARY KEY (tenant_id, id));
CREATE TABLE audit_log (at timestamptz, line text);
CREATE TABLE _sqlx_migrations (version bigint PRIMARY KEY, description text NOT NULL);
";

/// The columns compared per table (the source's), in key order.
const TABLES: &[(&str, &str)] = &[
    (
        "customers",
        "SELECT (id, name, email, created_at)::text FROM customers ORDER BY id",
    ),
    (
        "orders",
        "SELECT (id, customer_id, total, note, total_cents)::text FROM orders ORDER BY id",
    ),
    (
        "categories",
        "SELECT (id, parent_id, name)::text FROM categories ORDER BY id",
    ),
    (
        "events",
        "SELECT (id, customer_id, payload, at)::text FROM events ORDER BY id",
    ),
    (
        "tenant_items",
        "SELECT (tenant_id, id, label)::text FROM tenant_items ORDER BY tenant_id, id",
    ),
    (
        "audit_log",
        "SELECT (at, line)::text FROM audit_log ORDER BY 1",
    ),
];

async fn execute(pool: &PgPool, sql: &str) -> anyhow::Result<()> {
    sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(pool)
        .await?;
    Ok(())
}

/// A source with `orders` rows and the rest in proportion: text with tabs, backslashes and
/// newlines, NULLs, JSON, a tree that references later rows, UUIDs, a composite key, a table
/// without a key holding duplicate rows.
async fn source(orders: i64) -> anyhow::Result<TestDatabase> {
    let db = datamig::testing::postgres().await?;
    execute(db.pool(), SCHEMA).await?;
    execute(
        db.pool(),
        &format!(
            "INSERT INTO customers (name, email, created_at)
               SELECT 'customer ' || g || E'\\twith\\\\tab\\nand newline', CASE WHEN g % 5 = 0 THEN NULL ELSE 'c' || g || '@example.com' END,
                      timestamptz '2024-03-31 00:30:00+00' + g * interval '7 minutes'
               FROM generate_series(1, 3000) g;
             INSERT INTO orders (customer_id, total, note)
               SELECT 1 + g % 3000, (g % 1000) * 1.25, CASE WHEN g % 3 = 0 THEN NULL ELSE 'note ' || g END
               FROM generate_series(1, {orders}) g;
             INSERT INTO categories SELECT g, CASE WHEN g < 500 THEN g + 1 END, 'category ' || g FROM generate_series(1, 500) g;
             INSERT INTO events SELECT gen_random_uuid(), 1 + g % 3000, jsonb_build_object('n', g, 'tags', jsonb_build_array('a', g)),
                                       timestamp '2025-01-01' + g * interval '1 second'
               FROM generate_series(1, 5000) g;
             INSERT INTO tenant_items SELECT 1 + g % 5, g, 'item ' || g FROM generate_series(1, 6000) g;
             INSERT INTO audit_log SELECT timestamptz '2025-01-01 00:00:00+00' + (g / 2) * interval '1 minute', 'line ' || (g / 2)
               FROM generate_series(1, 2000) g;
             INSERT INTO _sqlx_migrations VALUES (1, 'the source''s own schema');
             ANALYZE;"
        ),
    )
    .await?;
    Ok(db)
}

/// An empty target with the same schema, its `_sqlx_migrations` holding its own rows, and
/// a column of its own (with a default) in `customers`.
async fn target() -> anyhow::Result<TestDatabase> {
    let db = datamig::testing::postgres().await?;
    execute(db.pool(), SCHEMA).await?;
    execute(
        db.pool(),
        "ALTER TABLE customers ADD COLUMN tier text NOT NULL DEFAULT 'free';
         INSERT INTO _sqlx_migrations VALUES (1, 'the target''s own schema'), (2, 'and more');",
    )
    .await?;
    Ok(db)
}

async fn rows(pool: &PgPool, sql: &str) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(AssertSqlSafe(sql.to_string()))
        .fetch_all(pool)
        .await?)
}

async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await?)
}

/// Chunks committed in the target (0 before the copy made its progress table).
async fn committed(pool: &PgPool, table: Option<&str>) -> anyhow::Result<i64> {
    if count(
        pool,
        "SELECT count(*) FROM pg_class WHERE relname = 'datamig_copy_progress'",
    )
    .await?
        == 0
    {
        return Ok(0);
    }
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM datamig_copy_progress WHERE copied_at IS NOT NULL AND table_name = COALESCE($1, table_name)",
    )
    .bind(table)
    .fetch_one(pool)
    .await?)
}

/// Every copied table holds exactly the rows of the source, compared row by row.
async fn assert_same(source: &PgPool, target: &PgPool) -> anyhow::Result<()> {
    for (table, sql) in TABLES {
        let (a, b) = (rows(source, sql).await?, rows(target, sql).await?);
        assert_eq!(a.len(), b.len(), "{table}: row counts differ");
        if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
            panic!(
                "{table}: row {i} differs: source {} / target {}",
                a[i], b[i]
            );
        }
    }
    Ok(())
}

/// Each table's rows, to compare with later.
async fn contents(pool: &PgPool) -> anyhow::Result<Vec<Vec<String>>> {
    let mut out = Vec::new();
    for (_, sql) in TABLES {
        out.push(rows(pool, sql).await?);
    }
    Ok(out)
}

#[tokio::test]
async fn an_exact_copy_resumes_nothing_twice_and_continues_the_sequences() -> anyhow::Result<()> {
    let src = source(20_000).await?;
    let dst = target().await?;
    let report = Copier::new(src.pool(), dst.pool())
        .jobs(2)
        .chunk_rows(1_000)
        .verify(true)
        .run()
        .await?;
    assert_same(src.pool(), dst.pool()).await?;
    let tables: Vec<&str> = report
        .plan
        .tables
        .iter()
        .map(|t| t.table.as_str())
        .collect();
    let at = |name: &str| tables.iter().position(|t| *t == name).unwrap();
    assert!(at("public.customers") < at("public.orders"), "{tables:?}");
    assert!(at("public.customers") < at("public.events"), "{tables:?}");
    assert_eq!(report.plan.left_out, vec!["public._sqlx_migrations"]);
    assert_eq!(
        rows(
            dst.pool(),
            "SELECT description FROM _sqlx_migrations ORDER BY version"
        )
        .await?,
        vec!["the target's own schema", "and more"],
        "the target's bookkeeping table is left alone"
    );
    let orders = report
        .plan
        .tables
        .iter()
        .find(|t| t.table == "public.orders")
        .unwrap();
    assert!(
        orders.chunks >= 10,
        "orders is split in key ranges: {orders:?}"
    );
    let categories = report
        .plan
        .tables
        .iter()
        .find(|t| t.table == "public.categories")
        .unwrap();
    assert_eq!(
        categories.chunks, 1,
        "a self-referencing table loads in one statement"
    );
    assert_eq!(report.rows, 20_000 + 3_000 + 500 + 5_000 + 6_000 + 2_000);
    let verification = report.verification.expect("asked for");
    assert!(
        verification.differences.is_empty(),
        "{:?}",
        verification.differences
    );
    assert_eq!(verification.target.tables["public.orders"].rows, 20_000);
    // Progress: every chunk once, its rows counted once.
    assert_eq!(
        count(
            dst.pool(),
            "SELECT count(*) FROM datamig_copy_progress WHERE copied_at IS NULL"
        )
        .await?,
        0
    );
    assert_eq!(
        count(
            dst.pool(),
            "SELECT sum(rows)::int8 FROM datamig_copy_progress WHERE table_name = 'public.orders'"
        )
        .await?,
        20_000
    );
    assert_eq!(count(dst.pool(), "SELECT count(*) FROM pg_stat_user_tables WHERE relname = 'orders' AND last_analyze IS NOT NULL").await?, 1);

    // A second run copies nothing and says so.
    let again = Copier::new(src.pool(), dst.pool()).run().await?;
    assert!(again.already_copied);
    assert_eq!(again.rows, 0);
    assert_same(src.pool(), dst.pool()).await?;

    // Sequences and identity columns continue past the copied ids.
    let id = count(
        dst.pool(),
        "INSERT INTO orders (customer_id, total) VALUES (1, 1) RETURNING id",
    )
    .await?;
    assert_eq!(id, 20_001);
    let id = count(
        dst.pool(),
        "INSERT INTO customers (name) VALUES ('new') RETURNING id::int8",
    )
    .await?;
    assert_eq!(id, 3_001);
    Ok(())
}

#[tokio::test]
async fn sigkills_at_random_instants_then_a_rerun_give_an_exact_copy() -> anyhow::Result<()> {
    let kills: u64 = std::env::var("DATAMIG_RELIABILITY_COPY_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let (mut instants, seed) = Instants::from_env()?;
    let src = source(60_000).await?;
    let mut partial = 0;
    let mut done = 0;
    while done < kills {
        let wave = (kills - done).min(4);
        let mut runs = Vec::new();
        for _ in 0..wave {
            let dst = target().await?;
            let delay = Duration::from_millis(instants.next_millis(2_500));
            let src_url = src.url().to_string();
            runs.push(async move {
                let args = copy_args(
                    &src_url,
                    dst.url(),
                    &["--chunk-rows", "1000", "--jobs", "2"],
                );
                let mut child = datamig(&args).spawn()?;
                tokio::time::sleep(delay).await;
                child.start_kill()?; // SIGKILL: no cleanup of any kind
                child.wait().await?;
                let committed = committed(dst.pool(), None).await?;
                // Whatever committed is consistent: each committed chunk's rows are there.
                let finish = datamig(&args).output().await?;
                anyhow::ensure!(
                    finish.status.success(),
                    "the rerun failed: {}",
                    text(&finish.stderr)
                );
                Ok::<_, anyhow::Error>((dst, committed))
            });
        }
        for outcome in futures_util::future::join_all(runs).await {
            let (dst, committed) = outcome?;
            if committed > 0 {
                partial += 1;
            }
            assert_same(src.pool(), dst.pool()).await?;
            assert_eq!(
                count(
                    dst.pool(),
                    "SELECT sum(rows)::int8 FROM datamig_copy_progress"
                )
                .await?,
                60_000 + 3_000 + 500 + 5_000 + 6_000 + 2_000,
                "every row counted once"
            );
            let third = Copier::new(src.pool(), dst.pool()).run().await?;
            assert!(third.already_copied);
        }
        done += wave;
    }
    println!(
        "RELIABILITY copy: {kills} SIGKILLs (seed {seed}), {partial} after some chunks had committed: every rerun gave an exact copy"
    );
    assert!(
        partial > 0,
        "no kill landed after a committed chunk: the instants are too early (seed {seed})"
    );
    Ok(())
}

#[tokio::test]
async fn a_target_holding_rows_is_refused_and_merge_inserts_and_updates() -> anyhow::Result<()> {
    let src = source(2_000).await?;
    let dst = target().await?;
    execute(
        dst.pool(),
        "INSERT INTO customers (id, name) VALUES (900000, 'already here')",
    )
    .await?;
    let before = contents(dst.pool()).await?;
    let err = Copier::new(src.pool(), dst.pool()).run().await.unwrap_err();
    let Error::CopyRefused(message) = &err else {
        panic!("{err}")
    };
    assert!(
        message.contains("public.customers") && message.contains("--mode merge"),
        "{message}"
    );
    assert_eq!(contents(dst.pool()).await?, before, "nothing was written");
    assert_eq!(
        count(
            dst.pool(),
            "SELECT count(*) FROM pg_class WHERE relname = 'datamig_copy_progress'"
        )
        .await?,
        0
    );

    // Merge: everything inserted, the target's own row kept.
    let merged = Copier::new(src.pool(), dst.pool())
        .mode(CopyMode::Merge)
        .exclude(["audit_log"])
        .chunk_rows(1_000)
        .run()
        .await?;
    let customers = merged
        .tables
        .iter()
        .find(|t| t.table == "public.customers")
        .unwrap();
    assert_eq!((customers.inserted, customers.updated), (3_000, 0));
    assert_eq!(
        count(
            dst.pool(),
            "SELECT count(*) FROM customers WHERE id = 900000"
        )
        .await?,
        1
    );

    // The source changes; a second merge pass updates and inserts, and deletes nothing.
    execute(
        src.pool(),
        "UPDATE customers SET name = name || ' (renamed)' WHERE id <= 10;
         INSERT INTO customers (name) VALUES ('brand new');
         DELETE FROM audit_log WHERE line = 'line 1';",
    )
    .await?;
    let again = Copier::new(src.pool(), dst.pool())
        .mode(CopyMode::Merge)
        .exclude(["audit_log"])
        .run()
        .await?;
    assert!(
        !again.already_copied,
        "a finished merge pass is followed by a new one"
    );
    let customers = again
        .tables
        .iter()
        .find(|t| t.table == "public.customers")
        .unwrap();
    assert_eq!((customers.inserted, customers.updated), (1, 10));
    let orders = again
        .tables
        .iter()
        .find(|t| t.table == "public.orders")
        .unwrap();
    assert_eq!((orders.inserted, orders.updated), (0, 0));
    assert_eq!(
        rows(dst.pool(), "SELECT name FROM customers WHERE id = 3").await?,
        vec!["customer 3\twith\\tab\nand newline (renamed)"]
    );
    assert_eq!(
        count(
            dst.pool(),
            "SELECT count(*) FROM customers WHERE id = 900000"
        )
        .await?,
        1
    );

    // The mode that empties the target first says so in its name.
    let fresh = Copier::new(src.pool(), dst.pool())
        .mode(CopyMode::DangerouslyTruncate)
        .run()
        .await?;
    assert!(fresh.rows > 0);
    assert_same(src.pool(), dst.pool()).await?;
    assert_eq!(
        count(
            dst.pool(),
            "SELECT count(*) FROM customers WHERE id = 900000"
        )
        .await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn the_target_equals_the_snapshot_while_the_source_takes_writes() -> anyhow::Result<()> {
    let src = source(5_000).await?;
    let dst = target().await?;
    let expected = contents(src.pool()).await?;
    // Hold `orders` on the target so that the copy waits there, after its snapshot.
    let mut holder = dst.pool().begin().await?;
    sqlx::query("LOCK TABLE orders IN SHARE MODE")
        .execute(&mut *holder)
        .await?;
    let copier = Copier::new(src.pool(), dst.pool())
        .chunk_rows(1_000)
        .jobs(2)
        .lock_timeout(Duration::from_secs(120));
    let copy = tokio::spawn(async move { copier.run().await });
    // Wait until customers is committed in the target: the snapshot is taken by then.
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let done = committed(dst.pool(), Some("public.customers")).await?;
            if done >= 3 {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::task::yield_now().await;
        }
    })
    .await??;
    execute(
        src.pool(),
        "UPDATE orders SET note = 'changed after the snapshot' WHERE id % 2 = 0;
         DELETE FROM orders WHERE id > 4000;
         INSERT INTO customers (name) VALUES ('after the snapshot');
         UPDATE events SET payload = '{}';
         DELETE FROM tenant_items WHERE tenant_id = 1;",
    )
    .await?;
    holder.rollback().await?;
    let report = copy.await??;
    assert!(report.rows > 0);
    assert_eq!(
        contents(dst.pool()).await?,
        expected,
        "the target holds the snapshot"
    );
    Ok(())
}

#[tokio::test]
async fn self_references_and_cycles_load_or_are_refused_by_name() -> anyhow::Result<()> {
    let cycle = "CREATE TABLE a (id int PRIMARY KEY, b_id int);
                 CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a (id) DEFERRABLE);
                 ALTER TABLE a ADD CONSTRAINT a_b FOREIGN KEY (b_id) REFERENCES b (id) {};";
    for (deferrable, loads) in [("DEFERRABLE", true), ("", false)] {
        let schema = cycle.replace("{}", deferrable);
        let src = datamig::testing::postgres().await?;
        let dst = datamig::testing::postgres().await?;
        execute(src.pool(), &schema).await?;
        execute(dst.pool(), &schema).await?;
        execute(
            src.pool(),
            "BEGIN; SET CONSTRAINTS ALL DEFERRED;
             INSERT INTO b SELECT g, g FROM generate_series(1, 3000) g;
             INSERT INTO a SELECT g, g FROM generate_series(1, 3000) g;
             COMMIT;",
        )
        .await?;
        // The server's own checks (triggers on): a cycle loads only when deferrable.
        let outcome = Copier::new(src.pool(), dst.pool())
            .chunk_rows(1_000)
            .triggers(datamig::copy::Triggers::On)
            .run()
            .await;
        if loads {
            let report = outcome?;
            assert_eq!(report.rows, 6_000);
            assert_eq!(
                count(
                    dst.pool(),
                    "SELECT count(*) FROM a JOIN b ON b.a_id = a.id AND a.b_id = b.id"
                )
                .await?,
                3_000
            );
            assert_eq!(report.plan.tables[0].cycle, vec!["public.b"]);
        } else {
            let err = outcome.unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, Error::CopyPlan { .. }), "{message}");
            assert!(
                message.contains("public.a, public.b")
                    && message.contains("a_b on public.a")
                    && message.contains("DEFERRABLE"),
                "{message}"
            );
            assert_eq!(count(dst.pool(), "SELECT count(*) FROM a").await?, 0);
            // A superuser loads it with the triggers off, by default: the cycle's tables
            // in one transaction, their references checked by the copy before it commits.
            let report = Copier::new(src.pool(), dst.pool())
                .chunk_rows(1_000)
                .run()
                .await?;
            assert_eq!(report.rows, 6_000);
            assert!(report.plan.triggers_off);
            assert!(
                report
                    .plan
                    .tables
                    .iter()
                    .all(|t| t.chunks == 1 && t.whole.is_some()),
                "{:?}",
                report.plan.tables
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_plan_mismatch_is_named_and_nothing_is_written() -> anyhow::Result<()> {
    let src = source(100).await?;
    let dst = datamig::testing::postgres().await?;
    execute(dst.pool(), SCHEMA).await?;
    execute(
        dst.pool(),
        "ALTER TABLE orders ALTER COLUMN customer_id TYPE bigint;  -- a widening: fine
         ALTER TABLE orders ALTER COLUMN note TYPE varchar(10);     -- narrower: refused
         ALTER TABLE categories DROP COLUMN name;
         ALTER TABLE events ADD COLUMN required text NOT NULL;
         DROP TABLE audit_log;",
    )
    .await?;
    let args = ["copy", "--source", src.url(), "--target", dst.url()];
    for dry_run in [true, false] {
        let mut args = args.to_vec();
        if dry_run {
            args.push("--dry-run");
        }
        let out = datamig(&args).output().await?;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        for named in [
            "column public.orders.note is text in the source and character varying(10) in the target",
            "column public.categories.name (text) is in the source but not in the target",
            "column public.events.required (text) is NOT NULL without a default in the target",
            "table public.audit_log is in the source but not in the target",
        ] {
            assert!(stderr.contains(named), "{named:?} missing from {stderr}");
        }
        assert!(
            !stderr.contains("customer_id"),
            "a widening is no problem: {stderr}"
        );
    }
    assert_eq!(
        count(dst.pool(), "SELECT count(*) FROM customers").await?,
        0
    );
    assert_eq!(
        count(
            dst.pool(),
            "SELECT count(*) FROM pg_class WHERE relname = 'datamig_copy_progress'"
        )
        .await?,
        0
    );

    // --dry-run prints the plan of a good copy and writes nothing.
    let good = target().await?;
    let out = datamig(&copy_args(src.url(), good.url(), &["--dry-run"]))
        .output()
        .await?;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("public.orders") && stdout.contains("after public.customers"),
        "{stdout}"
    );
    assert!(
        stdout.contains("tier: not in the source: the target fills it"),
        "{stdout}"
    );
    assert!(
        stdout.contains("total_cents: generated: not written"),
        "{stdout}"
    );
    assert!(stdout.contains("dry run: nothing was written"), "{stdout}");
    assert_eq!(
        count(good.pool(), "SELECT count(*) FROM customers").await?,
        0
    );
    assert_eq!(
        count(
            good.pool(),
            "SELECT count(*) FROM pg_class WHERE relname = 'datamig_copy_progress'"
        )
        .await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn a_rejected_row_stops_its_chunk_keeps_the_others_and_a_fixed_source_resumes()
-> anyhow::Result<()> {
    let src = source(10_000).await?;
    let dst = target().await?;
    execute(
        dst.pool(),
        "ALTER TABLE orders ADD CONSTRAINT small_totals CHECK (total < 2000)",
    )
    .await?;
    execute(src.pool(), "UPDATE orders SET total = 5000 WHERE id = 7777").await?;
    let args = copy_args(
        src.url(),
        dst.url(),
        &[
            "--chunk-rows",
            "1000",
            // One chunk at a time: which chunks are in before the bad one is then certain.
            "--jobs",
            "1",
            // The first rejected row stops the copy (without it, the other tables go on).
            "--fail-fast",
        ],
    );
    let out = datamig(&args).output().await?;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(10), "{stderr}");
    assert!(
        stderr.contains("public.orders") && stderr.contains("small_totals"),
        "{stderr}"
    );
    assert!(stderr.contains("7777"), "the row's key is named: {stderr}");
    assert!(stderr.contains("run the same copy again"), "{stderr}");
    let kept = count(dst.pool(), "SELECT count(*) FROM orders").await?;
    assert!(
        (6_000..=7_000).contains(&kept),
        "the chunks before the bad row are kept: {kept}"
    );
    assert_eq!(
        count(dst.pool(), "SELECT count(*) FROM orders WHERE id > 7000").await?,
        0,
        "its chunk was rolled back"
    );

    execute(src.pool(), "UPDATE orders SET total = 1 WHERE id = 7777").await?;
    let out = datamig(&args).output().await?;
    assert!(
        out.status.success(),
        "the fixed source resumes: {}",
        text(&out.stderr)
    );
    assert_same(src.pool(), dst.pool()).await?;
    Ok(())
}

#[tokio::test]
async fn a_missing_foreign_key_names_the_row_that_holds_it() -> anyhow::Result<()> {
    let src = source(3_000).await?;
    let dst = target().await?;
    // The target's customers come from elsewhere and lack one the orders need: whether
    // the copy checks the key (triggers off, a superuser's default) or the server does.
    execute(
        dst.pool(),
        "INSERT INTO customers (id, name) SELECT g, 'elsewhere' FROM generate_series(2, 3000) g",
    )
    .await?;
    // The copy's check joins a chunk of 1,000 orders to the 2,999 customers whole (a chunk
    // that wrote more than an eighth of its parent's rows), then, once the target holds
    // 200,000 more customers, probes their key's index a row: the same row named each way.
    for (triggers, by_copy, more_customers) in [
        (Triggers::Auto, true, false),
        (Triggers::On, false, false),
        (Triggers::Auto, true, true),
    ] {
        if more_customers {
            execute(
                dst.pool(),
                "INSERT INTO customers (id, name) SELECT g, 'elsewhere' FROM generate_series(10001, 210000) g",
            )
            .await?;
        }
        let err = Copier::new(src.pool(), dst.pool())
            .exclude(["customers", "events"])
            .chunk_rows(1_000)
            .triggers(triggers)
            .fail_fast(true)
            .run()
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, Error::CopyRejected { .. }), "{message}");
        assert!(message.contains("orders_customer_id_fkey"), "{message}");
        assert!(message.contains("customer_id"), "{message}");
        assert_eq!(
            message.contains("checked by the copy"),
            by_copy,
            "{message}"
        );
        assert!(message.contains("the row with id = 3000"), "{message}");
        // Only the chunks before the dangling row's committed: order 3000 holds it.
        assert_eq!(
            count(
                dst.pool(),
                "SELECT count(*) FROM orders WHERE customer_id = 1"
            )
            .await?,
            0
        );
    }
    Ok(())
}

/// The plan the target's `auto_explain` sent for the copy's foreign-key check (its notices
/// logged on stderr), or `None` when none came.
fn check_plan(stderr: &str) -> Option<&str> {
    stderr
        .split("Query Text:")
        .find(|plan| plan.contains("NOT EXISTS (SELECT 1 FROM"))
}

#[tokio::test]
async fn the_last_tables_key_check_runs_in_the_idle_jobs_parallel_workers() -> anyhow::Result<()> {
    let schema = "CREATE TABLE parents (id int PRIMARY KEY);
        CREATE TABLE children (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parents (id));";
    // The source's children hold an orphan: its key is not declared there.
    let src = datamig::testing::postgres().await?;
    execute(src.pool(), &schema.replace(" REFERENCES parents (id)", "")).await?;
    execute(
        src.pool(),
        "INSERT INTO parents SELECT generate_series(1, 2000);
         INSERT INTO children SELECT g, CASE WHEN g = 15000 THEN 99999 ELSE 1 + g % 2000 END
           FROM generate_series(1, 20000) g;",
    )
    .await?;
    // Two targets whose sessions plan in parallel wherever the query allows it, and send
    // each plan to the client.
    let mut targets = Vec::new();
    for _ in 0..2 {
        let dst = datamig::testing::postgres().await?;
        execute(dst.pool(), schema).await?;
        let name: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(dst.pool())
            .await?;
        for setting in [
            "session_preload_libraries = 'auto_explain'",
            "auto_explain.log_min_duration = 0",
            "auto_explain.log_level = 'notice'",
            "parallel_setup_cost = 0",
            "parallel_tuple_cost = 0",
            "min_parallel_table_scan_size = 0",
        ] {
            execute(
                dst.pool(),
                &format!("ALTER DATABASE \"{name}\" SET {setting}"),
            )
            .await?;
        }
        targets.push(dst);
    }
    let copy = |dst: &TestDatabase, jobs: &str| {
        let args = copy_args(
            src.url(),
            dst.url(),
            &["--jobs", jobs, "--log", "sqlx::postgres::notice=info"],
        );
        datamig(&args).output()
    };
    // Two jobs: `children` is checked last, when the other job has nothing left to take;
    // its check may use one worker, and the orphan is found all the same.
    let out = copy(&targets[0], "2").await?;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(11), "{stderr}");
    let plan = check_plan(&stderr).expect("the check's plan");
    assert!(plan.contains("Workers Planned: 1"), "{plan}");
    assert!(
        stderr.contains("(parent_id) = (99999) is not present in table public.parents"),
        "{stderr}"
    );
    assert_eq!(
        count(targets[0].pool(), "SELECT count(*) FROM children").await?,
        0
    );
    // One job: no job idles, the check stays in the job's own process.
    let out = copy(&targets[1], "1").await?;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(11), "{stderr}");
    let plan = check_plan(&stderr).expect("the check's plan");
    assert!(!plan.contains("Workers Planned"), "{plan}");
    assert!(
        stderr.contains("(parent_id) = (99999) is not present in table public.parents"),
        "{stderr}"
    );
    // Fixed, the two-job copy finishes.
    execute(
        src.pool(),
        "UPDATE children SET parent_id = 1 WHERE id = 15000",
    )
    .await?;
    let out = copy(&targets[0], "2").await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        rows(src.pool(), "SELECT c::text FROM children c ORDER BY id").await?,
        rows(
            targets[0].pool(),
            "SELECT c::text FROM children c ORDER BY id"
        )
        .await?
    );
    Ok(())
}

/// A trigger of the target's own: each order inserted is written down in `order_audit`.
const AUDIT_TRIGGER: &str = "CREATE TABLE order_audit (order_id bigint);
     CREATE FUNCTION audit_order() RETURNS trigger LANGUAGE plpgsql AS
       'BEGIN INSERT INTO order_audit VALUES (NEW.id); RETURN NEW; END';
     CREATE TRIGGER audited AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION audit_order();";

#[tokio::test]
async fn triggers_stay_on_where_turning_them_off_would_change_the_load() -> anyhow::Result<()> {
    let src = source(2_000).await?;
    let dst = target().await?;
    // A trigger of the target's own: turning triggers off would skip it, so the default
    // keeps them on (and the trigger sees every row); --triggers off skips it, as asked.
    execute(dst.pool(), AUDIT_TRIGGER).await?;
    let plan = Copier::new(src.pool(), dst.pool()).plan().await?;
    assert!(!plan.triggers_off);
    let report = Copier::new(src.pool(), dst.pool())
        .chunk_rows(1_000)
        .run()
        .await?;
    assert!(!report.plan.triggers_off);
    assert_eq!(
        count(dst.pool(), "SELECT count(*) FROM order_audit").await?,
        2_000
    );
    assert_same(src.pool(), dst.pool()).await?;

    // Without it a superuser's copy turns them off; the plan says so.
    let other = target().await?;
    let out = datamig(&copy_args(src.url(), other.url(), &["--dry-run"]))
        .output()
        .await?;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("foreign keys: checked by the copy, one anti-join per key over each chunk (triggers off)"),
        "{stdout}"
    );

    // --triggers off: the trigger does not fire, the rows arrive all the same.
    let third = target().await?;
    execute(third.pool(), AUDIT_TRIGGER).await?;
    let out = datamig(&copy_args(src.url(), third.url(), &["--triggers", "off"]))
        .output()
        .await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        count(third.pool(), "SELECT count(*) FROM order_audit").await?,
        0
    );
    assert_same(src.pool(), third.pool()).await?;
    Ok(())
}

#[tokio::test]
async fn a_session_holding_a_lock_on_the_target_is_named() -> anyhow::Result<()> {
    let src = source(2_000).await?;
    let dst = target().await?;
    let mut holder = dst.pool().begin().await?;
    sqlx::query("LOCK TABLE orders IN SHARE MODE")
        .execute(&mut *holder)
        .await?;
    let out = datamig(&copy_args(
        src.url(),
        dst.url(),
        &["--lock-timeout", "500ms"],
    ))
    .output()
    .await?;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("loading public.orders waited for a lock longer than 500ms"),
        "{stderr}"
    );
    assert!(
        stderr.contains("idle in transaction") && stderr.contains("LOCK TABLE orders"),
        "{stderr}"
    );
    holder.rollback().await?;
    assert_eq!(
        count(dst.pool(), "SELECT count(*) FROM customers").await?,
        3_000,
        "customers committed before"
    );
    let out = datamig(&["copy", "--source", src.url(), "--target", dst.url()])
        .output()
        .await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_same(src.pool(), dst.pool()).await?;
    Ok(())
}

#[tokio::test]
async fn bad_urls_the_same_database_and_missing_privileges_are_refused() -> anyhow::Result<()> {
    let src = source(100).await?;
    let dst = target().await?;
    let copy = |source: &str, target: &str, extra: &[&str]| {
        let mut args = vec!["copy", "--source", source, "--target", target];
        args.extend_from_slice(extra);
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = datamig(&refs).output().await?;
            Ok::<_, anyhow::Error>((out.status.code(), text(&out.stderr)))
        }
    };
    let (code, stderr) = copy("postgres://nobody:x@127.0.0.1:1/none", dst.url(), &[]).await?;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot connect to the source database"),
        "{stderr}"
    );

    let (code, stderr) = copy(src.url(), src.url(), &[]).await?;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("the same database"), "{stderr}");

    let (code, stderr) = copy("sqlite:app.db", dst.url(), &[]).await?;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot open the source SQLite database app.db"),
        "{stderr}"
    );

    // A target role that may read but not write, and may not set session_replication_role.
    let role = format!("{}_reader", dst.name());
    execute(
        dst.pool(),
        &format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'reader';
             GRANT USAGE, CREATE ON SCHEMA public TO {role};
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};
             GRANT SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {role};"
        ),
    )
    .await?;
    let reader = url_for(dst.url(), &role, "reader")?;
    let (code, stderr) = copy(src.url(), &reader, &[]).await?;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("may not INSERT into public.customers")
            && stderr.contains("GRANT INSERT ON \"public\".\"customers\""),
        "{stderr}"
    );
    execute(
        dst.pool(),
        &format!("GRANT INSERT ON ALL TABLES IN SCHEMA public TO {role}"),
    )
    .await?;
    let (code, stderr) = copy(src.url(), &reader, &["--triggers", "off"]).await?;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("session_replication_role"), "{stderr}");
    let (code, stderr) = copy(src.url(), &reader, &["--mode", "merge"]).await?;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("may not UPDATE into public.customers"),
        "{stderr}"
    );
    assert_eq!(
        count(dst.pool(), "SELECT count(*) FROM customers").await?,
        0
    );

    // With INSERT granted, the copy runs as that role, and reports in JSON.
    let out = datamig(&copy_args(
        src.url(),
        &reader,
        &["--format", "json", "--verify"],
    ))
    .output()
    .await?;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())?;
    assert_eq!(last["type"], "copy_report");
    assert_eq!(
        last["report"]["verification"]["differences"],
        serde_json::json!([])
    );
    // That role may not set session_replication_role: the server checked the keys.
    assert_eq!(last["report"]["plan"]["triggers_off"], false, "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("\"event\":\"chunk_copied\"")),
        "{stdout}"
    );
    drop(reader);
    execute(dst.pool(), &format!("DROP OWNED BY {role}; "))
        .await
        .ok();
    Ok(())
}

/// The comparison's checksums (one aggregate per table and side, summed in no order) find
/// one value changed, a row gone, and in a table without a key one row there twice and
/// another missing (the count unchanged); the tables left alone compare equal. A source
/// whose database is in another encoding (LATIN1, text hashed as UTF-8 there) compares
/// equal to its copy.
#[tokio::test]
async fn the_comparison_finds_a_changed_value_a_lost_row_and_a_multiset_that_differs()
-> anyhow::Result<()> {
    let src = source(2_000).await?;
    let dst = target().await?;
    Copier::new(src.pool(), dst.pool()).run().await?;
    let same = Copier::new(src.pool(), dst.pool()).compare().await?;
    assert!(same.differences.is_empty(), "{:?}", same.differences);
    assert_eq!(same.source.tables["public.orders"].rows, 2_000);

    execute(
        dst.pool(),
        "UPDATE orders SET note = 'note 8 ' WHERE id = 8;
         DELETE FROM tenant_items WHERE tenant_id = 2 AND id = 6;
         WITH one AS (SELECT ctid FROM audit_log WHERE line = 'line 7' LIMIT 1)
           DELETE FROM audit_log WHERE ctid IN (SELECT ctid FROM one);
         INSERT INTO audit_log SELECT at, line FROM audit_log WHERE line = 'line 9' LIMIT 1;",
    )
    .await?;
    let found = Copier::new(src.pool(), dst.pool()).compare().await?;
    let mut tables: Vec<&str> = found.differences.iter().map(|d| d.table.as_str()).collect();
    tables.sort_unstable();
    assert_eq!(
        tables,
        ["public.audit_log", "public.orders", "public.tenant_items"]
    );
    assert_eq!(
        found.source.tables["public.audit_log"].rows, found.target.tables["public.audit_log"].rows,
        "the keyless table's count is unchanged: only its checksum tells"
    );

    // A LATIN1 source and its UTF-8 copy.
    execute(
        src.pool(),
        "CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
    )
    .await?;
    let mut latin: sqlx::postgres::PgConnectOptions = src.url().parse()?;
    latin = latin.database("latin");
    let latin = PgPool::connect_with(latin).await?;
    let words = "CREATE TABLE words (id int PRIMARY KEY, word text, at timestamptz, n numeric)";
    execute(&latin, words).await?;
    execute(
        &latin,
        "INSERT INTO words SELECT g, 'café crème ' || g, timestamptz '2025-01-01 00:00:00+00' + g * interval '1 hour', g / 7.0
           FROM generate_series(1, 500) g",
    )
    .await?;
    let utf8 = target().await?;
    execute(utf8.pool(), words).await?;
    Copier::new(&latin, utf8.pool())
        .tables(["public.words"])
        .run()
        .await?;
    let across = Copier::new(&latin, utf8.pool())
        .tables(["public.words"])
        .compare()
        .await?;
    assert!(across.differences.is_empty(), "{:?}", across.differences);
    assert_eq!(across.target.tables["public.words"].rows, 500);
    execute(
        utf8.pool(),
        "UPDATE words SET word = 'cafe creme 3' WHERE id = 3",
    )
    .await?;
    let found = Copier::new(&latin, utf8.pool())
        .tables(["public.words"])
        .compare()
        .await?;
    assert_eq!(found.differences.len(), 1, "{:?}", found.differences);
    latin.close().await;
    Ok(())
}
