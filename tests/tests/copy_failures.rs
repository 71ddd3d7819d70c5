//! `datamig copy` when the target refuses some tables' rows: each such table stops at its
//! last committed chunk, the tables referencing it are not started, every other table is
//! copied, the end lists each table not finished (row, constraint or trigger, the
//! database's words) with an exit code of its own, and the same command run again resumes
//! just those. Every error names its table; triggers are kept or turned off table by table,
//! the plan saying why, and `--triggers off` keeps even `ALWAYS` triggers from firing.

use datamig::Error;
use datamig::copy::{Copier, Triggers};
use datamig::testing::TestDatabase;
use datamig_tests::{copy_args, text};
use sqlx::{AssertSqlSafe, PgPool};

fn datamig(args: &[&str]) -> tokio::process::Command {
    datamig_tests::command(env!("CARGO_BIN_EXE_datamig-fixtures"), "", args)
}

/// The application's schema on both sides.
const SCHEMA: &str = "
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL REFERENCES customers (id),
                     total numeric(10,2) NOT NULL);
CREATE TABLE order_lines (id int PRIMARY KEY, order_id int NOT NULL REFERENCES orders (id), qty int NOT NULL);
CREATE TABLE events (id int PRIMARY KEY, kind text NOT NULL);
CREATE TABLE notes (id int PRIMARY KEY, body text);
";

/// The source's rows: order 2222 has a total the target's check refuses, event 1500 a kind
/// the target's trigger refuses.
const ROWS: &str = "
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 500) g;
INSERT INTO orders SELECT g, 1 + g % 500, CASE WHEN g = 2222 THEN 5000 ELSE g % 1000 END FROM generate_series(1, 3000) g;
INSERT INTO order_lines SELECT g, g, 1 + g % 9 FROM generate_series(1, 3000) g;
INSERT INTO events SELECT g, CASE WHEN g = 1500 THEN 'forbidden' ELSE 'kind ' || g % 7 END FROM generate_series(1, 2000) g;
INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 1000) g;
ANALYZE;
";

/// The target's own rules: a check added `NOT VALID` (the source's rows break it), and a
/// trigger that refuses some writes.
const RULES: &str = "
ALTER TABLE orders ADD CONSTRAINT small_totals CHECK (total < 2000) NOT VALID;
CREATE FUNCTION refuse_forbidden() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN IF NEW.kind = 'forbidden' THEN RAISE EXCEPTION 'forbidden events are not welcome'; END IF; RETURN NEW; END$$;
CREATE TRIGGER gatekeeper BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_forbidden();
";

const TABLES: &[&str] = &["customers", "orders", "order_lines", "events", "notes"];

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

/// A source with the rows, and a target with the schema and `extra`.
async fn databases(extra: &str) -> anyhow::Result<(TestDatabase, TestDatabase)> {
    let src = datamig::testing::postgres().await?;
    execute(src.pool(), SCHEMA).await?;
    execute(src.pool(), ROWS).await?;
    let dst = datamig::testing::postgres().await?;
    execute(dst.pool(), SCHEMA).await?;
    execute(dst.pool(), extra).await?;
    Ok((src, dst))
}

/// The table's rows, in key order, as text.
async fn rows(pool: &PgPool, table: &str) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT t::text FROM {table} AS t ORDER BY id"
    )))
    .fetch_all(pool)
    .await?)
}

#[tokio::test]
async fn a_table_the_target_rejects_stops_alone_and_a_rerun_resumes_just_it() -> anyhow::Result<()>
{
    let (src, dst) = databases(RULES).await?;
    let args = copy_args(
        src.url(),
        dst.url(),
        &["--chunk-rows", "1000", "--jobs", "2"],
    );
    let out = datamig(&args).output().await?;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(11), "{stderr}");
    assert!(
        stderr.contains("the copy did not finish 3 table(s) (2 copied in full)"),
        "{stderr}"
    );
    // Each table not finished, with the row, the constraint or trigger and the words.
    let orders = stderr
        .lines()
        .find(|l| l.contains("- public.orders "))
        .unwrap_or_default();
    assert!(
        orders.contains("chunk 3 of 3")
            && orders.contains("row with (2222, 223, 5000.00)")
            && orders.contains("constraint small_totals")
            && orders.contains("violates check constraint"),
        "{stderr}"
    );
    let events = stderr
        .lines()
        .find(|l| l.contains("- public.events "))
        .unwrap_or_default();
    assert!(
        events.contains("trigger gatekeeper")
            && events.contains("forbidden events are not welcome"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "- public.order_lines: not started: it references public.orders, which did not finish"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("it resumes just those"), "{stderr}");
    // The other tables are copied; the failed ones stopped at their last committed chunk.
    for table in ["customers", "notes"] {
        assert_eq!(
            rows(src.pool(), table).await?,
            rows(dst.pool(), table).await?
        );
    }
    assert_eq!(
        count(dst.pool(), "SELECT count(*) FROM orders").await?,
        2000
    );
    assert_eq!(
        count(dst.pool(), "SELECT count(*) FROM order_lines").await?,
        0
    );
    assert_eq!(
        count(dst.pool(), "SELECT count(*) FROM events WHERE id >= 1500").await?,
        0
    );

    // Fixed at the source, the same command resumes just those tables.
    execute(
        src.pool(),
        "UPDATE orders SET total = 1 WHERE id = 2222; UPDATE events SET kind = 'fine' WHERE id = 1500",
    )
    .await?;
    let mut json = args.to_vec();
    json.extend(["--format", "json"]);
    let out = datamig(&json).output().await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default())?;
    let by_table = |name: &str| {
        report["report"]["tables"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["table"] == name).cloned())
            .unwrap_or_default()
    };
    assert_eq!(by_table("public.customers")["rows"], 0, "{stdout}");
    assert_eq!(by_table("public.notes")["rows"], 0, "{stdout}");
    assert_eq!(by_table("public.orders")["rows"], 1000, "{stdout}");
    assert_eq!(by_table("public.order_lines")["rows"], 3000, "{stdout}");
    for table in TABLES {
        assert_eq!(
            rows(src.pool(), table).await?,
            rows(dst.pool(), table).await?,
            "{table}"
        );
    }
    Ok(())
}

/// A trigger on `table` that raises `raise` (PL/pgSQL) for every row.
fn raising(table: &str, raise: &str) -> String {
    format!(
        "CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN {raise}; RETURN NEW; END$$;
         CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION refuse_{table}();"
    )
}

#[tokio::test]
async fn every_error_names_its_table() -> anyhow::Result<()> {
    // Refusals of every kind, each on a table of its own: each is listed by name.
    let extra = [
        raising(
            "orders",
            "RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'permission denied for table audit'",
        ),
        raising("events", "PERFORM 'not a number'::int"),
        raising(
            "notes",
            "RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = 'not supported here'",
        ),
    ]
    .join("\n");
    let (src, dst) = databases(&extra).await?;
    let err = Copier::new(src.pool(), dst.pool())
        .run()
        .await
        .expect_err("tables are refused");
    let message = err.to_string();
    assert!(!message.contains("database error"), "{message}");
    let Error::CopyIncomplete { failed, copied } = &err else {
        panic!("{message}");
    };
    assert_eq!(*copied, 1, "customers: {message}");
    let find = |table: &str| {
        failed
            .iter()
            .find(|f| f.table == table)
            .unwrap_or_else(|| panic!("{table} is not listed: {message}"))
    };
    let orders = find("public.orders");
    assert_eq!(
        orders.trigger.as_deref(),
        Some("refuse_orders"),
        "{message}"
    );
    assert!(orders.message.contains("permission denied for table audit"));
    assert!(
        find("public.events")
            .message
            .contains("invalid input syntax for type integer"),
        "{message}"
    );
    assert!(find("public.notes").message.contains("not supported here"));
    assert_eq!(find("public.order_lines").chunk, None, "{message}");

    // A failure of the server itself stops the copy, naming the table and chunk it was on.
    let (src, dst) = databases(&raising(
        "customers",
        "RAISE EXCEPTION USING ERRCODE = '53100', MESSAGE = 'could not extend file: no space left'",
    ))
    .await?;
    let err = Copier::new(src.pool(), dst.pool())
        .run()
        .await
        .expect_err("the copy stops");
    let message = err.to_string();
    assert!(
        matches!(err, Error::CopyDatabase { .. })
            && message
                .starts_with("loading chunk 1 of 1 of public.customers: could not extend file")
            && message.contains("SQLSTATE 53100"),
        "{message}"
    );

    Ok(())
}

/// The target's triggers: `audited` (an ordinary trigger, which replica mode would skip)
/// writes each order down; `stamped` (enabled ALWAYS) each note.
const TRIGGERS: &str = "
CREATE TABLE order_audit (order_id int);
CREATE TABLE note_audit (note_id int);
CREATE FUNCTION audit_order() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN INSERT INTO order_audit VALUES (NEW.id); RETURN NEW; END$$;
CREATE TRIGGER audited AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION audit_order();
CREATE FUNCTION stamp_note() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN INSERT INTO note_audit VALUES (NEW.id); RETURN NEW; END$$;
CREATE TRIGGER stamped AFTER INSERT ON notes FOR EACH ROW EXECUTE FUNCTION stamp_note();
ALTER TABLE notes ENABLE ALWAYS TRIGGER stamped;
";

#[tokio::test]
async fn triggers_are_kept_table_by_table_and_off_means_none_fires() -> anyhow::Result<()> {
    let (src, dst) = databases(TRIGGERS).await?;
    // Auto: the table whose trigger replica mode would skip keeps its triggers, and the
    // plan says why; the others (the ALWAYS trigger fires either way) load with them off.
    let plan = Copier::new(src.pool(), dst.pool()).plan().await?;
    let table = |name: &str| {
        plan.tables
            .iter()
            .find(|t| t.table == name)
            .cloned()
            .expect("planned")
    };
    assert!(!plan.triggers_off);
    let orders = table("public.orders");
    assert!(!orders.triggers_off);
    assert!(
        orders.triggers.as_deref().is_some_and(|why| why.contains(
            "trigger audited (function public.audit_order) would not fire with triggers off"
        )),
        "{orders:?}"
    );
    assert!(table("public.notes").triggers_off);
    assert!(table("public.customers").triggers_off);
    let out = datamig(&copy_args(src.url(), dst.url(), &["--dry-run"]))
        .output()
        .await?;
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("except for the 1 table(s) that keep their triggers")
            && stdout.contains("keeps its triggers: trigger audited"),
        "{stdout}"
    );
    Copier::new(src.pool(), dst.pool()).run().await?;
    assert_eq!(
        count(dst.pool(), "SELECT count(*) FROM order_audit").await?,
        3000
    );
    assert_eq!(
        count(dst.pool(), "SELECT count(*) FROM note_audit").await?,
        1000
    );

    // Off: no trigger fires, not even the ALWAYS one (disabled within each chunk's
    // transaction), as pg_dump --disable-triggers; the trigger is ALWAYS again afterwards.
    let (_, other) = databases(TRIGGERS).await?;
    let plan = Copier::new(src.pool(), other.pool())
        .triggers(Triggers::Off)
        .plan()
        .await?;
    let notes = plan
        .tables
        .iter()
        .find(|t| t.table == "public.notes")
        .expect("planned");
    assert!(
        notes.triggers.as_deref().is_some_and(|why| why.contains(
            "trigger stamped (function public.stamp_note) fires in the replica role too"
        )),
        "{notes:?}"
    );
    let out = datamig(&copy_args(
        src.url(),
        other.url(),
        &["--triggers", "off", "--chunk-rows", "1000"],
    ))
    .output()
    .await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        count(other.pool(), "SELECT count(*) FROM order_audit").await?,
        0
    );
    assert_eq!(
        count(other.pool(), "SELECT count(*) FROM note_audit").await?,
        0
    );
    let enabled: String =
        sqlx::query_scalar("SELECT tgenabled::text FROM pg_trigger WHERE tgname = 'stamped'")
            .fetch_one(other.pool())
            .await?;
    assert_eq!(enabled, "A");
    for table in TABLES {
        assert_eq!(
            rows(src.pool(), table).await?,
            rows(other.pool(), table).await?
        );
    }
    Ok(())
}

/// Waits until a copy's transaction has written `children`'s rows and sits idle, waiting
/// to check them.
async fn wait_for_children_waiting(pool: &PgPool) -> anyhow::Result<()> {
    datamig_tests::wait_until(
        pool,
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
         JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE c.relname = 'children' AND l.mode = 'RowExclusiveLock' AND l.granted
           AND a.state = 'idle in transaction'",
    )
    .await
}

#[tokio::test]
async fn a_table_loaded_before_the_table_it_references_commits_waits_for_it_or_rolls_back()
-> anyhow::Result<()> {
    // `parents` loads with its own trigger, which waits for a lock the test holds and
    // refuses a row that is not ok; `children` references it and is checked by the copy.
    let schema = "CREATE TABLE parents (id int PRIMARY KEY, ok boolean NOT NULL);
        CREATE TABLE children (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parents (id));";
    let src = datamig::testing::postgres().await?;
    execute(src.pool(), schema).await?;
    execute(
        src.pool(),
        "INSERT INTO parents SELECT g, g <> 700 FROM generate_series(1, 1000) g;
         INSERT INTO children SELECT g, 1 + g % 1000 FROM generate_series(1, 3000) g;",
    )
    .await?;
    let dst = datamig::testing::postgres().await?;
    execute(dst.pool(), schema).await?;
    execute(
        dst.pool(),
        "CREATE FUNCTION gate() RETURNS trigger LANGUAGE plpgsql AS
           $$BEGIN PERFORM pg_advisory_xact_lock_shared(4242);
             IF NOT NEW.ok THEN RAISE EXCEPTION 'parent % is not ok', NEW.id; END IF;
             RETURN NEW; END$$;
         CREATE TRIGGER gate BEFORE INSERT ON parents FOR EACH ROW EXECUTE FUNCTION gate();",
    )
    .await?;
    let args = copy_args(src.url(), dst.url(), &["--jobs", "2"]);
    let mut holder = dst.pool().acquire().await?;

    // The parent fails after its child has loaded: the child rolls back, not started.
    sqlx::query("SELECT pg_advisory_lock(4242)")
        .execute(&mut *holder)
        .await?;
    let copy = datamig(&args).spawn()?;
    wait_for_children_waiting(dst.pool()).await?;
    sqlx::query("SELECT pg_advisory_unlock(4242)")
        .execute(&mut *holder)
        .await?;
    let out = copy.wait_with_output().await?;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(11), "{stderr}");
    assert!(stderr.contains("parent 700 is not ok"), "{stderr}");
    assert!(
        stderr.contains(
            "- public.children: not started: it references public.parents, which did not finish"
        ),
        "{stderr}"
    );
    for table in ["parents", "children"] {
        assert_eq!(
            count(dst.pool(), &format!("SELECT count(*) FROM {table}")).await?,
            0,
            "{table}"
        );
    }

    // Fixed, the same copy: the child loads while its parent waits, checks its keys once
    // the parent has committed, and commits.
    execute(src.pool(), "UPDATE parents SET ok = true").await?;
    sqlx::query("SELECT pg_advisory_lock(4242)")
        .execute(&mut *holder)
        .await?;
    let copy = datamig(&args).spawn()?;
    wait_for_children_waiting(dst.pool()).await?;
    assert_eq!(count(dst.pool(), "SELECT count(*) FROM parents").await?, 0);
    sqlx::query("SELECT pg_advisory_unlock(4242)")
        .execute(&mut *holder)
        .await?;
    let out = copy.wait_with_output().await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    for table in ["parents", "children"] {
        assert_eq!(
            rows(src.pool(), table).await?,
            rows(dst.pool(), table).await?
        );
    }
    Ok(())
}
