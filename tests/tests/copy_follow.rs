//! `datamig copy --follow` against a real source taking writes (inserts, updates, deletes,
//! updates that leave a TOASTed value unchanged, primary keys that change, truncates, a
//! transaction of 100,000 rows and one deleting half of them, rolled-back transactions,
//! subtransactions, unique values swapped between rows): the target equals the source after
//! the cut-over, table by table, compared row by row here; SIGKILLs of the follower at
//! random instants, each followed by a restart, end in an exact copy; a schema change
//! during the follow stops it naming the table; a table without a key is followed with
//! `REPLICA IDENTITY FULL` (its rows repeating, matched by all their values) and refused
//! without it, as is a table whose replica identity is NOTHING; the slot and publication
//! are gone after a cut-over and after an abandon.
//!
//! `DATAMIG_FOLLOW_KILLS` (default 20) sets the number of kills, `DATAMIG_RELIABILITY_SEED`
//! replays their instants.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use datamig::Error;
use datamig::copy::{Copier, Cutover};
use datamig::testing::TestDatabase;
use datamig_tests::{Instants, copy_args, text};
use sqlx::{AssertSqlSafe, PgPool};

fn datamig(args: &[&str]) -> tokio::process::Command {
    datamig_tests::command(env!("CARGO_BIN_EXE_datamig-fixtures"), "", args)
}

const SCHEMA: &str = "
CREATE TABLE items (id bigint PRIMARY KEY, code text UNIQUE, qty int NOT NULL, doc text);
ALTER TABLE items ALTER COLUMN doc SET STORAGE EXTERNAL;
CREATE TABLE bulk (id int PRIMARY KEY, payload text);
CREATE TABLE scratch (id int PRIMARY KEY, v text);
CREATE TABLE lines (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, item bigint, note text);
";

/// The tables compared, each in key order.
const TABLES: &[&str] = &["items", "bulk", "scratch", "lines"];

async fn execute(pool: &PgPool, sql: &str) -> anyhow::Result<()> {
    sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(pool)
        .await?;
    Ok(())
}

/// A source with 2,000 items (each with a TOASTed document) and the target's schema.
async fn databases() -> anyhow::Result<(TestDatabase, TestDatabase)> {
    let src = datamig::testing::postgres().await?;
    execute(src.pool(), SCHEMA).await?;
    execute(
        src.pool(),
        "CREATE SEQUENCE item_ids START 5000;
         INSERT INTO items SELECT g, 'c' || g, g % 10, repeat(md5(g::text), 200) FROM generate_series(1, 2000) g;
         INSERT INTO scratch SELECT g, 'v' || g FROM generate_series(1, 50) g;
         INSERT INTO lines (item, note) SELECT g, 'n' || g FROM generate_series(1, 500) g;",
    )
    .await?;
    let dst = datamig::testing::postgres().await?;
    execute(dst.pool(), SCHEMA).await?;
    Ok((src, dst))
}

/// One round of the writer: a transaction of kind `i`. Truncates wait for `truncates`:
/// a `TRUNCATE` queued behind the copy's snapshot (which holds its tables' share locks
/// until it ends) would stop the copy's readers behind it.
async fn write_round(pool: &PgPool, i: u64, truncates: bool) -> anyhow::Result<()> {
    let pick = "(SELECT id FROM items WHERE id < 1000000 ORDER BY random() LIMIT 1)";
    let sql = match i % 10 {
        0 => "INSERT INTO items SELECT nextval('item_ids'), 'n' || currval('item_ids'), 1, repeat(md5(random()::text), 200)".to_string(),
        // Only the small column changes: the TOASTed document is not sent.
        1 => format!("UPDATE items SET qty = qty + 1 WHERE id = {pick}"),
        2 => format!("DELETE FROM items WHERE id = {pick}"),
        // The key changes, the document stays.
        3 => format!("UPDATE items SET id = id + 1000000 WHERE id = {pick}"),
        4 => "BEGIN; INSERT INTO scratch VALUES (-1, 'rolled back'); UPDATE items SET qty = -1; ROLLBACK".to_string(),
        5 => "BEGIN; INSERT INTO lines (item, note) VALUES (1, 'kept'); SAVEPOINT s;
              INSERT INTO lines (item, note) VALUES (2, 'rolled back to the savepoint'); ROLLBACK TO s;
              SAVEPOINT t; UPDATE lines SET note = note || '+' WHERE id = (SELECT min(id) FROM lines); RELEASE t; COMMIT".to_string(),
        6 if !truncates => "UPDATE scratch SET v = md5(v) WHERE id % 7 = 1".to_string(),
        6 => "BEGIN; TRUNCATE scratch; INSERT INTO scratch SELECT g, md5(random()::text) FROM generate_series(1, 20) g; COMMIT".to_string(),
        // Two rows swap their unique codes: one statement per row would pass, the batch's
        // set-based upsert breaks the constraint and applies it change by change instead.
        7 => "BEGIN; UPDATE items SET code = 'swap' WHERE id = (SELECT min(id) FROM items);
              UPDATE items SET code = (SELECT code FROM items WHERE id = (SELECT min(id) FROM items WHERE code <> 'swap'))
                || '' WHERE false;
              WITH a AS (SELECT id, code FROM items WHERE id = (SELECT max(id) FROM items WHERE id < 1000000)),
                   b AS (SELECT min(id) AS id FROM items)
              UPDATE items SET code = 'was-' || (SELECT code FROM a) WHERE id = (SELECT id FROM b);
              UPDATE items SET code = 'c-moved-' || id WHERE id = (SELECT max(id) FROM items WHERE id < 1000000);
              UPDATE items SET code = replace((SELECT code FROM items WHERE id = (SELECT min(id) FROM items)), 'was-', '')
                WHERE id = (SELECT max(id) FROM items WHERE id < 1000000) AND false;
              COMMIT".to_string(),
        8 => format!("UPDATE items SET doc = repeat(md5(random()::text), 300), qty = qty + 1 WHERE id = {pick}"),
        _ => "UPDATE lines SET note = md5(note) WHERE id % 50 = (SELECT (random() * 49)::int)".to_string(),
    };
    execute(pool, &sql).await
}

/// Writes until `stop`, in rounds; the transactions of 100,000 rows and of 50,000 deletes
/// come at rounds 100 and 200, and two code-swapping transactions back to back at 150.
async fn writer(
    pool: PgPool,
    stop: Arc<AtomicBool>,
    truncates: Arc<AtomicBool>,
    at_least: u64,
) -> anyhow::Result<u64> {
    let mut i = 0;
    while i < at_least || !stop.load(Ordering::Relaxed) {
        match i {
            100 => {
                execute(
                    &pool,
                    "INSERT INTO bulk SELECT g, md5(g::text) FROM generate_series(1, 100000) g",
                )
                .await?
            }
            150 => {
                // A swap of two unique values over three statements, committed in two
                // transactions applied in one batch. The rows are found by their codes: an
                // earlier round may have moved or deleted either (its key picked at random).
                execute(&pool, "BEGIN; UPDATE items SET code = 'tmp-swap' WHERE code = 'c10'; UPDATE items SET code = 'c10' WHERE code = 'c11'; COMMIT").await?;
                execute(
                    &pool,
                    "UPDATE items SET code = 'c11' WHERE code = 'tmp-swap'",
                )
                .await?;
            }
            200 => execute(&pool, "DELETE FROM bulk WHERE id % 2 = 0").await?,
            _ => write_round(&pool, i, truncates.load(Ordering::Relaxed)).await?,
        }
        i += 1;
    }
    Ok(i)
}

/// Every row of `table`, as text, in key order.
async fn rows(pool: &PgPool, table: &str) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT t::text FROM {table} t ORDER BY 1"
    )))
    .fetch_all(pool)
    .await?)
}

async fn assert_equal(src: &PgPool, dst: &PgPool) -> anyhow::Result<()> {
    for table in TABLES {
        let (a, b) = (rows(src, table).await?, rows(dst, table).await?);
        assert_eq!(a.len(), b.len(), "{table}: row counts differ");
        assert!(a == b, "{table}: rows differ");
    }
    Ok(())
}

/// The slots and publications datamig left on the source's server for its database.
async fn leftovers(src: &PgPool) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database()),
                (SELECT count(*) FROM pg_publication)",
    )
    .fetch_one(src)
    .await?)
}

fn options(db: &TestDatabase) -> anyhow::Result<sqlx::postgres::PgConnectOptions> {
    Ok(db.url().parse()?)
}

type Follower = tokio::task::JoinHandle<Result<datamig::copy::CopyReport, Error>>;

/// Waits until the target's follow row says `status` (while the follower runs).
async fn wait_for_status(
    dst: &PgPool,
    status: &str,
    follower: &mut Follower,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now: Option<String> = sqlx::query_scalar(
            "SELECT status FROM datamig_copy_follow WHERE to_regclass('datamig_copy_follow') IS NOT NULL",
        )
        .fetch_optional(dst)
        .await
        .ok()
        .flatten();
        if now.as_deref() == Some(status) {
            return Ok(());
        }
        if follower.is_finished() {
            anyhow::bail!("the follower ended: {:?}", follower.await?);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the follow never reached status {status} (it is {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn follow_applies_every_change_and_the_cutover_ends_it_exact() -> anyhow::Result<()> {
    let (src, dst) = databases().await?;
    let stop = Arc::new(AtomicBool::new(false));
    // The writes start before the copy: some commit while the slot and the snapshot are
    // created.
    let truncates = Arc::new(AtomicBool::new(false));
    let writes = tokio::spawn(writer(
        src.pool().clone(),
        Arc::clone(&stop),
        Arc::clone(&truncates),
        400,
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let copier = Copier::new(src.pool(), dst.pool())
        .follow(true)
        .jobs(2)
        .chunk_rows(300);
    let mut follower: Follower = tokio::spawn(async move { copier.run().await });
    wait_for_status(dst.pool(), "following", &mut follower).await?;
    truncates.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let rounds = writes.await??;
    assert!(rounds >= 400);

    let report = Cutover::new(options(&src)?, options(&dst)?)
        .max_lag(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
        .run()
        .await?;
    assert!(report.writers.is_empty(), "{:?}", report.writers);
    assert!(report.differences.is_empty(), "{:?}", report.differences);
    assert_eq!(report.tables, TABLES.len());
    let copied = follower.await??;
    let verification = copied.verification.expect("verified at the cut-over");
    assert!(verification.differences.is_empty());
    assert_equal(src.pool(), dst.pool()).await?;
    // The identity column's sequence is past the copied values.
    let next: i64 = sqlx::query_scalar("INSERT INTO lines (item) VALUES (0) RETURNING id")
        .fetch_one(dst.pool())
        .await?;
    let max: i64 = sqlx::query_scalar("SELECT max(id) FROM lines")
        .fetch_one(src.pool())
        .await?;
    assert!(next > max);
    assert_eq!(
        leftovers(src.pool()).await?,
        (0, 0),
        "slot or publication left"
    );
    Ok(())
}

#[tokio::test]
async fn sigkilled_followers_resume_into_an_exact_copy() -> anyhow::Result<()> {
    let kills: usize = std::env::var("DATAMIG_FOLLOW_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(20);
    let (mut instants, seed) = Instants::from_env()?;
    eprintln!("DATAMIG_RELIABILITY_SEED={seed}");
    let (src, dst) = databases().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let truncates = Arc::new(AtomicBool::new(false));
    let writes = tokio::spawn(writer(
        src.pool().clone(),
        Arc::clone(&stop),
        Arc::clone(&truncates),
        300,
    ));
    let args = copy_args(
        src.url(),
        dst.url(),
        &["--follow", "--chunk-rows", "200", "--jobs", "2"],
    );
    for _ in 0..kills {
        let mut child = datamig(&args).spawn()?;
        tokio::time::sleep(Duration::from_millis(200 + instants.next_millis(1_500))).await;
        if let Some(status) = child.try_wait()? {
            let out = child.wait_with_output().await?;
            anyhow::bail!(
                "the follower exited on its own ({status}): {}",
                text(&out.stderr)
            );
        }
        child.start_kill()?; // SIGKILL: no cleanup of any kind
        child.wait().await?;
        let following: bool =
            sqlx::query_scalar("SELECT status = 'following' FROM datamig_copy_follow")
                .fetch_optional(dst.pool())
                .await
                .ok()
                .flatten()
                .unwrap_or(false);
        truncates.store(following, Ordering::Relaxed);
    }
    stop.store(true, Ordering::Relaxed);
    writes.await??;
    let mut follower = datamig(&args).spawn()?;
    let cutover = datamig(&[
        "cutover",
        "--source",
        src.url(),
        "--target",
        dst.url(),
        "--timeout",
        "120s",
    ])
    .output()
    .await?;
    if !cutover.status.success() {
        let sessions: Vec<String> = sqlx::query_scalar(
            "SELECT concat_ws(' | ', pid, datname, state, wait_event_type, wait_event, left(query, 150))
             FROM pg_stat_activity WHERE datname LIKE 'datamig_test%'",
        )
        .fetch_all(src.pool())
        .await?;
        let follow: Vec<String> = sqlx::query_scalar("SELECT f::text FROM datamig_copy_follow f")
            .fetch_all(dst.pool())
            .await?;
        follower.start_kill()?;
        let follower = follower.wait_with_output().await?;
        panic!(
            "cutover failed: {}{}\nthe follower said: {}\nsessions:\n{}\nfollow: {follow:?}",
            text(&cutover.stdout),
            text(&cutover.stderr),
            text(&follower.stderr),
            sessions.join("\n")
        );
    }
    assert!(
        text(&cutover.stdout).contains("all equal"),
        "{}",
        text(&cutover.stdout)
    );
    let follower = follower.wait_with_output().await?;
    assert!(
        follower.status.success(),
        "the follower failed: {}",
        text(&follower.stderr)
    );
    assert_equal(src.pool(), dst.pool()).await?;
    assert_eq!(
        leftovers(src.pool()).await?,
        (0, 0),
        "slot or publication left"
    );
    Ok(())
}

#[tokio::test]
async fn a_schema_change_during_the_follow_stops_it_naming_the_table() -> anyhow::Result<()> {
    let (src, dst) = databases().await?;
    let copier = Copier::new(src.pool(), dst.pool()).follow(true);
    let mut follower: Follower = tokio::spawn(async move { copier.run().await });
    wait_for_status(dst.pool(), "following", &mut follower).await?;
    execute(src.pool(), "UPDATE items SET qty = 7 WHERE id = 1").await?;
    execute(src.pool(), "ALTER TABLE items ADD COLUMN extra int").await?;
    execute(
        src.pool(),
        "INSERT INTO items VALUES (999999, 'x', 1, 'd', 5)",
    )
    .await?;
    let stopped = tokio::time::timeout(Duration::from_secs(60), follower).await??;
    match stopped {
        Err(Error::FollowStopped(message)) => {
            assert!(message.contains("public.items"), "{message}");
            assert!(message.contains("extra"), "{message}");
        }
        other => panic!("expected the follow to stop, got {other:?}"),
    }
    // The change before the schema change is applied, the one after it is not.
    let qty: i32 = sqlx::query_scalar("SELECT qty FROM items WHERE id = 1")
        .fetch_one(dst.pool())
        .await?;
    assert_eq!(qty, 7);
    let status = Cutover::new(options(&src)?, options(&dst)?)
        .abandon()
        .await?;
    assert_eq!(status.status, "abandoned");
    assert_eq!(
        leftovers(src.pool()).await?,
        (0, 0),
        "slot or publication left"
    );
    Ok(())
}

#[tokio::test]
async fn tables_without_key_or_replica_identity_are_refused() -> anyhow::Result<()> {
    let (src, dst) = databases().await?;
    let extra = "CREATE TABLE unkeyed (a int, b text); CREATE TABLE quiet (id int PRIMARY KEY);";
    execute(src.pool(), extra).await?;
    execute(dst.pool(), extra).await?;
    // A column the source computes and the target stores: the change stream has no value
    // for it.
    execute(
        src.pool(),
        "CREATE TABLE priced (id int PRIMARY KEY, price numeric, doubled numeric GENERATED ALWAYS AS (price * 2) STORED)",
    )
    .await?;
    execute(
        dst.pool(),
        "CREATE TABLE priced (id int PRIMARY KEY, price numeric, doubled numeric)",
    )
    .await?;
    execute(src.pool(), "ALTER TABLE quiet REPLICA IDENTITY NOTHING").await?;
    let result = Copier::new(src.pool(), dst.pool()).follow(true).run().await;
    let Err(Error::CopyPlan { problems }) = result else {
        panic!("expected the plan to refuse, got {result:?}");
    };
    let all = problems.join("\n");
    assert!(
        all.contains("public.unkeyed")
            && all.contains("no primary key")
            && all.contains("ALTER TABLE public.unkeyed REPLICA IDENTITY FULL"),
        "{all}"
    );
    assert!(
        all.contains("public.quiet") && all.contains("REPLICA IDENTITY"),
        "{all}"
    );
    assert!(
        all.contains(
            "column public.priced.doubled is generated in the source and stored in the target"
        ),
        "{all}"
    );
    assert_eq!(
        leftovers(src.pool()).await?,
        (0, 0),
        "nothing created on the source"
    );
    let items: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(dst.pool())
        .await?;
    assert_eq!(items, 0, "nothing written");
    Ok(())
}

/// A table without a primary key, its rows repeating, followed with `REPLICA IDENTITY
/// FULL`: one of three identical rows deleted or updated, identical rows added, NULLs,
/// a TOASTed value an update leaves unchanged (not sent), a `point` (no equality) and a
/// `jsonb`, a row added and removed in one transaction: the target holds the same
/// multiset of rows after the cut-over.
#[tokio::test]
async fn a_table_without_a_key_is_followed_by_its_whole_rows() -> anyhow::Result<()> {
    let (src, dst) = databases().await?;
    let tags = "CREATE TABLE tags (item int, tag text, doc text, meta jsonb, at point);
                ALTER TABLE tags ALTER COLUMN doc SET STORAGE EXTERNAL;";
    execute(src.pool(), tags).await?;
    execute(dst.pool(), tags).await?;
    execute(
        src.pool(),
        "ALTER TABLE tags REPLICA IDENTITY FULL;
         INSERT INTO tags SELECT g % 100, CASE WHEN g % 100 = 9 THEN NULL ELSE 't' || (g % 100) END,
                                 CASE WHEN g % 100 = 7 THEN repeat(md5((g % 100)::text), 300) END,
                                 jsonb_build_object('n', g % 100), point(g % 100, 0.5)
           FROM generate_series(1, 300) g;",
    )
    .await?;
    let copier = Copier::new(src.pool(), dst.pool()).follow(true);
    let mut follower: Follower = tokio::spawn(async move { copier.run().await });
    wait_for_status(dst.pool(), "following", &mut follower).await?;
    for sql in [
        "DELETE FROM tags WHERE ctid = (SELECT ctid FROM tags WHERE item = 5 LIMIT 1)",
        "UPDATE tags SET tag = 'one of three' WHERE ctid = (SELECT ctid FROM tags WHERE item = 6 LIMIT 1)",
        "INSERT INTO tags SELECT * FROM tags WHERE item = 4 LIMIT 1; INSERT INTO tags SELECT * FROM tags WHERE item = 4 LIMIT 1",
        "UPDATE tags SET tag = tag || '!' WHERE item = 7",
        "UPDATE tags SET meta = NULL, at = point(1, 2) WHERE ctid = (SELECT ctid FROM tags WHERE item = 8 LIMIT 1)",
        "DELETE FROM tags WHERE item = 9",
        "BEGIN; INSERT INTO tags VALUES (1000, 'brief', NULL, NULL, NULL); DELETE FROM tags WHERE item = 1000; COMMIT",
        "UPDATE tags SET item = item + 500 WHERE item = 3",
    ] {
        execute(src.pool(), sql).await?;
    }
    let report = Cutover::new(options(&src)?, options(&dst)?)
        .timeout(Duration::from_secs(120))
        .run()
        .await?;
    assert!(report.differences.is_empty(), "{:?}", report.differences);
    follower.await??;
    let (a, b) = (
        rows(src.pool(), "tags").await?,
        rows(dst.pool(), "tags").await?,
    );
    assert_eq!(a.len(), 300 - 1 + 2 - 3, "the source's rows");
    assert!(a == b, "tags: the rows differ");
    let toasted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tags WHERE item = 7 AND tag = 't7!' AND length(doc) = 9600",
    )
    .fetch_one(dst.pool())
    .await?;
    assert_eq!(toasted, 3, "the unchanged TOASTed value is kept");
    Ok(())
}
