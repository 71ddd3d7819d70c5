//! `datamig copy` from a real MariaDB into a real PostgreSQL whose schema already exists:
//! every MySQL type into its PostgreSQL counterparts with edge values (checked here against
//! the values written, not with datamig's own comparison), zero dates refused by name or
//! mapped, a plan that names every mismatch before any row moves, a table whose values do
//! not convert while the others copy, a real schema with foreign keys and AUTO_INCREMENT
//! resumed exactly after SIGKILLs at random instants, and a second run that copies nothing.
//!
//! `DATAMIG_RELIABILITY_COPY_KILLS` (default 20) sets the number of kills;
//! `DATAMIG_RELIABILITY_SEED` replays their instants.

use std::time::Duration;

use datamig::testing::TestDatabase;
use datamig_tests::{Instants, copy_args, text};
use sqlx::{AssertSqlSafe, MySqlPool, PgPool, Row};

fn datamig(args: &[&str]) -> tokio::process::Command {
    datamig_tests::command(env!("CARGO_BIN_EXE_datamig-fixtures"), "", args)
}

/// A fresh MariaDB database with `schema` (statements separated by `;`) run in it.
async fn source(schema: &str) -> anyhow::Result<datamig::testing::MySqlTestDatabase> {
    let db = datamig::testing::mysql().await?;
    my_execute(db.pool(), schema).await?;
    Ok(db)
}

async fn my_execute(pool: &MySqlPool, sql: &str) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    for statement in sql.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
        sqlx::raw_sql(AssertSqlSafe(statement.to_string()))
            .execute(&mut *conn)
            .await
            .map_err(|e| anyhow::anyhow!("{statement}: {e}"))?;
    }
    Ok(())
}

async fn target(schema: &str) -> anyhow::Result<TestDatabase> {
    let db = datamig::testing::postgres().await?;
    sqlx::raw_sql(AssertSqlSafe(schema.to_string()))
        .execute(db.pool())
        .await?;
    Ok(db)
}

async fn pg_text(pool: &PgPool, sql: &str) -> anyhow::Result<String> {
    Ok(sqlx::query_scalar(AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await?)
}

async fn pg_count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await?)
}

async fn copy(src: &str, dst: &str, extra: &[&str]) -> anyhow::Result<std::process::Output> {
    let mut args = vec!["copy", "--source", src, "--target", dst];
    args.extend_from_slice(extra);
    Ok(datamig(&args).output().await?)
}

/// Every type, with the edge values of each.
const TYPES_MY: &str = "
CREATE TABLE edges (
  id int unsigned NOT NULL PRIMARY KEY,
  ti tinyint, uti tinyint unsigned, si smallint, usi smallint unsigned, mi mediumint,
  umi mediumint unsigned, i int, ui int unsigned, bi bigint, ubi bigint unsigned,
  flag tinyint(1), b1 bit(1), b12 bit(12),
  f float, d double, dec_exact decimal(30,10), dec_int decimal(18,0),
  y year, dt date, dtm datetime(6), ts timestamp(6) NULL DEFAULT NULL, tm time(6), tm_long time,
  latin varchar(40) CHARACTER SET latin1, utf varchar(40) CHARACTER SET utf8mb4,
  sjis varchar(20) CHARACTER SET sjis, txt longtext,
  e enum('small','it''s','big, really'), e_text enum('x','y'), s set('a','b','c'), s_enum set('a','b'),
  bin binary(4), vbin varbinary(10), blb longblob, uid binary(16), js json, js_text text
) ENGINE=InnoDB;
INSERT INTO edges VALUES
 (1, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295,
  -9223372036854775808, 18446744073709551615, 1, b'1', b'111111111111',
  0, 0, '-12345678901234567890.0123456789', '-999999999999999999',
  1901, '1000-01-01', '1000-01-01 00:00:00.000000', '1970-01-01 00:00:01.000000', '-838:59:59.000000', '838:59:59',
  CONVERT(0x4ae972f46d65208024 USING latin1), 'emoji 😀 東京', CONVERT(0x93fa967b USING sjis), REPEAT('x', 100000),
  'it''s', 'y', 'a,c', 'a,b', 0x00000000, 0x00ff, 0x00, 0x0123456789abcdef0123456789abcdef, '{\"k\": [1, \"two\", null]}', '{}'),
 (2, 127, 0, 32767, 0, 8388607, 0, 2147483647, 0, 9223372036854775807, 0, 0, b'0', b'0',
  0, 0, '0.0000000001', '0',
  2155, '9999-12-31', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999', '23:59:59.999999', '-00:00:01',
  '', '', '', '', 'big, really', 'x', '', '', 0xffffffff, '', '', 0xffffffffffffffffffffffffffffffff, '[]', '[1]'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  0, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)";

const TYPES_PG: &str = "
CREATE TYPE size AS ENUM ('small', 'it''s', 'big, really');
CREATE TYPE ab AS ENUM ('a', 'b');
CREATE TABLE edges (
  id bigint PRIMARY KEY,
  ti smallint, uti smallint, si smallint, usi integer, mi integer, umi integer, i integer,
  ui bigint, bi bigint, ubi numeric(20,0),
  flag boolean, b1 boolean, b12 integer,
  f real, d double precision, dec_exact numeric(30,10), dec_int bigint,
  y smallint, dt date, dtm timestamp, ts timestamptz, tm interval, tm_long interval,
  latin text, utf varchar(40), sjis text, txt text,
  e size, e_text text, s text[], s_enum ab[],
  bin bytea, vbin bytea, blb bytea, uid uuid, js jsonb, js_text json)";

#[tokio::test]
async fn every_type_arrives_with_its_edge_values() -> anyhow::Result<()> {
    let src = source(TYPES_MY).await?;
    // Floats bound in the server's binary forms: -0.0, the largest, the least normal, a
    // subnormal.
    for (id, f, d) in [
        (1, -0.0_f32, -0.0_f64),
        (2, f32::MAX, f64::MAX),
        (3, f32::MIN_POSITIVE, 5e-324),
    ] {
        sqlx::query("UPDATE edges SET f = ?, d = ? WHERE id = ?")
            .bind(f)
            .bind(d)
            .bind(id)
            .execute(src.pool())
            .await?;
    }
    // A huge blob (12 MB, more than one protocol packet) and 4-byte UTF-8 in a long text.
    my_execute(
        src.pool(),
        "INSERT INTO edges (id, f, d, blb, txt) VALUES (4, 0, 0, REPEAT(0xc3a9ff00, 3 * 1024 * 1024), REPEAT('😀', 70000))",
    )
    .await?;
    let dst = target(TYPES_PG).await?;
    let out = copy(src.url(), dst.url(), &["--verify"]).await?;
    assert!(
        out.status.success(),
        "the copy failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("0 tables differ"),
        "{}",
        text(&out.stdout)
    );
    let row = |id: i32, columns: &str| {
        let pool = dst.pool().clone();
        let sql = format!("SELECT ROW({columns})::text FROM edges WHERE id = {id}");
        async move { pg_text(&pool, &sql).await }
    };
    assert_eq!(
        row(1, "ti, uti, si, usi, mi, umi, i, ui, bi, ubi").await?,
        "(-128,255,-32768,65535,-8388608,16777215,-2147483648,4294967295,-9223372036854775808,18446744073709551615)"
    );
    assert_eq!(
        row(2, "ti, uti, si, usi, mi, umi, i, ui, bi, ubi").await?,
        "(127,0,32767,0,8388607,0,2147483647,0,9223372036854775807,0)"
    );
    assert_eq!(row(1, "flag, b1, b12").await?, "(t,t,4095)");
    assert_eq!(row(2, "flag, b1, b12").await?, "(f,f,0)");
    // Floats bit-exact: their binary forms. MariaDB stores a -0.0 bound to it as 0.0
    // (ATAN2(d, -1) is pi, not -pi): the copy writes the bits the server sends.
    let sign: String = sqlx::query_scalar(
        "SELECT CONCAT(ATAN2(d, -1) < 0, ATAN2(f, -1) < 0) FROM edges WHERE id = 1",
    )
    .fetch_one(src.pool())
    .await?;
    let zero = if sign == "11" { "80" } else { "00" };
    assert_eq!(
        row(1, "float4send(f), float8send(d)").await?,
        format!("(\"\\\\x{zero}000000\",\"\\\\x{zero}00000000000000\")")
    );
    assert_eq!(
        row(2, "float4send(f), float8send(d)").await?,
        "(\"\\\\x7f7fffff\",\"\\\\x7fefffffffffffff\")"
    );
    assert_eq!(
        row(3, "float4send(f), float8send(d)").await?,
        "(\"\\\\x00800000\",\"\\\\x0000000000000001\")"
    );
    assert_eq!(
        row(1, "dec_exact, dec_int").await?,
        "(-12345678901234567890.0123456789,-999999999999999999)"
    );
    assert_eq!(row(2, "dec_exact, dec_int").await?, "(0.0000000001,0)");
    // datetime as the local time it is; timestamp as UTC; time into interval, exactly.
    assert_eq!(
        row(1, "y, dt, dtm, ts AT TIME ZONE 'UTC', tm, tm_long").await?,
        "(1901,1000-01-01,\"1000-01-01 00:00:00\",\"1970-01-01 00:00:01\",-838:59:59,838:59:59)"
    );
    assert_eq!(
        row(2, "y, dt, dtm, ts AT TIME ZONE 'UTC', tm, tm_long").await?,
        "(2155,9999-12-31,\"9999-12-31 23:59:59.999999\",\"2038-01-19 03:14:07.999999\",23:59:59.999999,-00:00:01)"
    );
    // Text of any character set in UTF-8: latin1 (Windows-1252: 0x80 is the euro sign),
    // 4-byte UTF-8, Shift-JIS; a long text whole.
    assert_eq!(
        row(1, "latin, utf, sjis, length(txt)").await?,
        "(\"Jérôme €$\",\"emoji 😀 東京\",日本,100000)"
    );
    assert_eq!(
        row(1, "e, e_text, s, s_enum").await?,
        "(it's,y,\"{a,c}\",\"{a,b}\")"
    );
    assert_eq!(
        row(2, "e, e_text, s, s_enum").await?,
        "(\"big, really\",x,{},{})"
    );
    assert_eq!(
        row(1, "bin, vbin, blb, uid, js, js_text").await?,
        "(\"\\\\x00000000\",\"\\\\x00ff\",\"\\\\x00\",01234567-89ab-cdef-0123-456789abcdef,\"{\"\"k\"\": [1, \"\"two\"\", null]}\",{})"
    );
    assert_eq!(
        row(2, "bin, vbin, blb, js").await?,
        "(\"\\\\xffffffff\",\"\\\\x\",\"\\\\x\",[])"
    );
    assert_eq!(
        row(
            4,
            "length(blb), md5(blb), length(txt), txt = repeat('😀', 70000)"
        )
        .await?,
        format!(
            "(12582912,{},70000,t)",
            pg_text(
                dst.pool(),
                "SELECT md5(decode(repeat('c3a9ff00', 3 * 1024 * 1024), 'hex'))"
            )
            .await?
        )
    );
    assert_eq!(
        pg_count(
            dst.pool(),
            "SELECT count(*) FROM edges WHERE id = 3 AND num_nulls(ti, uti, si, usi, mi, umi, i, ui, bi, ubi, flag, b1, b12, dec_exact, dec_int, y, dt, dtm, ts, tm, tm_long, latin, utf, sjis, txt, e, e_text, s, s_enum, bin, vbin, blb, uid, js, js_text) = 35"
        )
        .await?,
        1,
        "NULLs stay NULL"
    );
    Ok(())
}

#[tokio::test]
async fn zero_dates_are_refused_by_name_or_mapped_as_asked() -> anyhow::Result<()> {
    let src = source(
        "SET SESSION sql_mode = '';
         CREATE TABLE events (id int PRIMARY KEY, day date, at datetime NOT NULL, seen timestamp NULL DEFAULT NULL);
         INSERT INTO events VALUES (1, '2024-05-01', '2024-05-01 10:00:00', '2024-05-01 10:00:00'),
           (2, '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00'), (3, '2024-00-15', '2024-05-00 12:00:00', NULL)",
    )
    .await?;
    let schema = "CREATE TABLE events (id int PRIMARY KEY, day date, at timestamp NOT NULL, seen timestamptz)";
    let dst = target(schema).await?;
    let out = copy(src.url(), dst.url(), &[]).await?;
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(11), "{said}");
    assert!(
        said.contains("events") && said.contains("id = 2") && said.contains("day"),
        "the refusal names table, key and column: {said}"
    );
    assert!(
        said.contains("0000-00-00") && said.contains("--zero-dates"),
        "{said}"
    );
    assert_eq!(
        pg_count(dst.pool(), "SELECT count(*) FROM events").await?,
        0,
        "nothing half-written"
    );

    // The plan lists each of them, every row read.
    let plan = copy(src.url(), dst.url(), &["--dry-run"]).await?;
    let said = text(&plan.stdout);
    for part in ["id = 2", "id = 3", "2024-00-15", "2024-05-00 12:00:00"] {
        assert!(said.contains(part), "{part} in {said}");
    }

    // NULL where asked; a NOT NULL column then refuses it, by name.
    let out = copy(src.url(), dst.url(), &["--zero-dates", "null"]).await?;
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(11), "{said}");
    assert!(said.contains("NOT NULL") && said.contains("at"), "{said}");

    let dst = target(schema).await?;
    let out = copy(src.url(), dst.url(), &["--zero-dates", "1970-01-01"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        pg_text(
            dst.pool(),
            "SELECT string_agg(ROW(id, day, at, seen AT TIME ZONE 'UTC')::text, ' ' ORDER BY id) FROM events"
        )
        .await?,
        "(1,2024-05-01,\"2024-05-01 10:00:00\",\"2024-05-01 10:00:00\") (2,1970-01-01,\"1970-01-01 00:00:00\",\"1970-01-01 00:00:00\") (3,1970-01-01,\"1970-01-01 00:00:00\",)"
    );
    let bad = copy(src.url(), dst.url(), &["--zero-dates", "sometime"]).await?;
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
    Ok(())
}

#[tokio::test]
async fn the_plan_names_every_mismatch_and_nothing_is_written() -> anyhow::Result<()> {
    let src = source(
        "CREATE TABLE places (id int PRIMARY KEY, name varchar(10), spot point, ratio double, kind enum('a','b'), extra int);
         INSERT INTO places VALUES (1, 'x', POINT(1, 2), 0.5, 'b', 1)",
    )
    .await?;
    let dst = target(
        "CREATE TYPE only_a AS ENUM ('a');
         CREATE TABLE places (id int PRIMARY KEY, name varchar(10), spot bytea, ratio integer, kind only_a, born date NOT NULL)",
    )
    .await?;
    let out = copy(src.url(), dst.url(), &[]).await?;
    let said = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    for part in [
        "places.spot",
        "PostGIS",
        "places.ratio is double in the source and integer in the target",
        "leave the column out with --exclude-columns public.places.ratio (the target fills it)",
        "no label 'b'",
        "places.extra (int(11)) is in the source but not in the target",
        "places.born (date) is NOT NULL without a default",
    ] {
        assert!(said.contains(part), "{part} in {said}");
    }
    assert_eq!(
        pg_count(
            dst.pool(),
            "SELECT count(*) FROM pg_tables WHERE tablename = 'datamig_copy_progress'"
        )
        .await?,
        0,
        "nothing written, not even the progress table"
    );
    // A user who may read but not take the read lock: refused, naming the privilege.
    let dst = target("CREATE TABLE only_this (id int PRIMARY KEY)").await?;
    let reader = format!("reader_{}", std::process::id());
    my_execute(
        src.pool(),
        &format!(
            "CREATE TABLE only_this (id int PRIMARY KEY);\nCREATE USER IF NOT EXISTS '{reader}'@'%' IDENTIFIED BY 'pw';\nGRANT SELECT ON `{}`.* TO '{reader}'@'%'",
            src.name()
        ),
    )
    .await?;
    let (scheme, rest) = src.url().split_once("://").expect("a URL");
    let weak = format!(
        "{scheme}://{reader}:pw@{}",
        rest.split_once('@').expect("a user").1
    );
    let out = copy(&weak, dst.url(), &["--tables", "only_this"]).await?;
    let said = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("FLUSH TABLES WITH READ LOCK") && said.contains("RELOAD"),
        "{said}"
    );
    assert_eq!(
        pg_count(
            dst.pool(),
            "SELECT count(*) FROM pg_tables WHERE tablename = 'datamig_copy_progress'"
        )
        .await?,
        0
    );
    // Its plan needs no lock.
    let plan = copy(&weak, dst.url(), &["--tables", "only_this", "--dry-run"]).await?;
    assert!(plan.status.success(), "{}", text(&plan.stderr));

    let bad = copy("mysql://nobody:wrong@127.0.0.1:1/none", dst.url(), &[]).await?;
    assert_ne!(bad.status.code(), Some(0));
    assert!(
        text(&bad.stderr)
            .contains("cannot connect to the source MySQL database 127.0.0.1:1/none as nobody"),
        "{}",
        text(&bad.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn a_table_whose_values_do_not_convert_stops_alone_and_is_named() -> anyhow::Result<()> {
    let src = source(
        "CREATE TABLE notes (id int PRIMARY KEY, body varchar(20));
         CREATE TABLE counters (id int PRIMARY KEY, n bigint unsigned);
         CREATE TABLE fine (id int PRIMARY KEY, v int);
         INSERT INTO notes VALUES (1, 'ok'), (2, CONCAT('a', CHAR(0), 'b'));
         INSERT INTO counters VALUES (1, 5), (7, 18446744073709551615);
         INSERT INTO fine VALUES (1, 1), (2, 2)",
    )
    .await?;
    let dst = target(
        "CREATE TABLE notes (id int PRIMARY KEY, body text);
         CREATE TABLE counters (id int PRIMARY KEY, n bigint);
         CREATE TABLE fine (id int PRIMARY KEY, v int)",
    )
    .await?;
    let out = copy(src.url(), dst.url(), &[]).await?;
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(11), "{said}");
    assert!(said.contains("id = 2") && said.contains("\\0"), "{said}");
    assert!(
        said.contains("id = 7")
            && said.contains("18446744073709551615")
            && said.contains("out of range"),
        "{said}"
    );
    assert_eq!(pg_count(dst.pool(), "SELECT count(*) FROM fine").await?, 2);
    assert_eq!(pg_count(dst.pool(), "SELECT count(*) FROM notes").await?, 0);
    assert_eq!(
        pg_count(dst.pool(), "SELECT count(*) FROM counters").await?,
        0
    );
    Ok(())
}

/// An application's schema on MariaDB: customers, their orders and the orders' lines, each
/// keyed by AUTO_INCREMENT, with foreign keys; rows made by formulas the checks repeat.
const SHOP_MY: &str = "
CREATE TABLE customers (id int unsigned AUTO_INCREMENT PRIMARY KEY, name varchar(80) CHARACTER SET latin1 NOT NULL,
  email varchar(120), vip tinyint(1) NOT NULL DEFAULT 0, created datetime NOT NULL) ENGINE=InnoDB;
CREATE TABLE orders (id bigint unsigned AUTO_INCREMENT PRIMARY KEY, customer_id int unsigned NOT NULL,
  status enum('new','paid','shipped') NOT NULL, total decimal(12,2) NOT NULL, placed timestamp NOT NULL DEFAULT '2024-01-01 00:00:00',
  FOREIGN KEY (customer_id) REFERENCES customers (id)) ENGINE=InnoDB;
CREATE TABLE order_lines (order_id bigint unsigned NOT NULL, line smallint NOT NULL, sku char(8) NOT NULL, qty int NOT NULL,
  PRIMARY KEY (order_id, line), FOREIGN KEY (order_id) REFERENCES orders (id)) ENGINE=InnoDB;
INSERT INTO customers (name, email, vip, created)
  SELECT CONCAT('Cust', CHAR(233), ' ', seq), IF(seq % 5 = 0, NULL, CONCAT('c', seq, '@example.com')), seq % 2,
         '2020-01-01 00:00:00' + INTERVAL seq MINUTE FROM seq_1_to_3000;
INSERT INTO orders (customer_id, status, total, placed)
  SELECT 1 + seq % 3000, ELT(1 + seq % 3, 'new', 'paid', 'shipped'), seq / 100, '2024-01-01 00:00:00' + INTERVAL seq SECOND
  FROM seq_1_to_20000;
INSERT INTO order_lines SELECT 1 + seq % 20000, seq DIV 20000, LPAD(seq, 8, '0'), seq % 7 FROM seq_0_to_39999;
ANALYZE TABLE customers, orders, order_lines";

const SHOP_PG: &str = "
CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped');
CREATE TABLE customers (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, name text NOT NULL, email text,
  vip boolean NOT NULL DEFAULT false, created timestamp NOT NULL);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers,
  status order_status NOT NULL, total numeric(12,2) NOT NULL, placed timestamptz NOT NULL);
CREATE TABLE order_lines (order_id bigint NOT NULL REFERENCES orders, line smallint NOT NULL, sku text NOT NULL,
  qty integer NOT NULL, PRIMARY KEY (order_id, line))";

/// The target holds exactly the rows the formulas made.
async fn assert_shop(pool: &PgPool) -> anyhow::Result<()> {
    let wrong = |sql: &'static str| async move { pg_count(pool, sql).await };
    assert_eq!(
        pg_count(pool, "SELECT count(*) FROM customers").await?,
        3000
    );
    assert_eq!(pg_count(pool, "SELECT count(*) FROM orders").await?, 20000);
    assert_eq!(
        pg_count(pool, "SELECT count(*) FROM order_lines").await?,
        40000
    );
    assert_eq!(
        wrong(
            "SELECT count(*) FROM customers WHERE name <> 'Custé ' || id OR email IS DISTINCT FROM CASE WHEN id % 5 = 0 THEN NULL ELSE 'c' || id || '@example.com' END
             OR vip <> (id % 2 = 1) OR created <> '2020-01-01'::timestamp + id * interval '1 minute'"
        )
        .await?,
        0
    );
    assert_eq!(
        wrong(
            "SELECT count(*) FROM orders WHERE customer_id <> 1 + id % 3000 OR status::text <> (ARRAY['new','paid','shipped'])[1 + id % 3]
             OR total <> round(id / 100.0, 2) OR placed <> '2024-01-01 00:00:00+00'::timestamptz + id * interval '1 second'"
        )
        .await?,
        0
    );
    assert_eq!(
        wrong(
            "SELECT count(*) FROM order_lines WHERE sku <> lpad((line * 20000 + order_id - 1)::text, 8, '0') OR qty <> (line * 20000 + order_id - 1) % 7"
        )
        .await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn sigkills_at_random_instants_then_a_rerun_give_an_exact_copy() -> anyhow::Result<()> {
    let kills: u64 = std::env::var("DATAMIG_RELIABILITY_COPY_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let (mut instants, seed) = Instants::from_env()?;
    let src = source(SHOP_MY).await?;
    let args = |dst: &str| -> Vec<String> {
        copy_args(src.url(), dst, &["--chunk-rows", "1000", "--jobs", "2"])
            .into_iter()
            .map(String::from)
            .collect()
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        datamig(&args)
    };

    // One whole copy first: exact, its sequences continued, and how long a copy takes
    // (the kills below fall within it).
    let dst = target(SHOP_PG).await?;
    let started = std::time::Instant::now();
    let whole = run(args(dst.url())).output().await?;
    let took = started.elapsed().as_millis() as u64;
    assert!(whole.status.success(), "{}", text(&whole.stderr));
    assert_shop(dst.pool()).await?;
    assert_eq!(
        pg_count(
            dst.pool(),
            "INSERT INTO customers (name, created) VALUES ('new', now()) RETURNING id"
        )
        .await?,
        3001
    );
    assert_eq!(
        pg_count(
            dst.pool(),
            "INSERT INTO orders (customer_id, status, total, placed) VALUES (1, 'new', 1, now()) RETURNING id"
        )
        .await?,
        20001
    );
    sqlx::raw_sql("DELETE FROM orders WHERE id = 20001; DELETE FROM customers WHERE id = 3001")
        .execute(dst.pool())
        .await?;
    // A second run copies nothing; a verification finds both sides the same.
    let again = run([args(dst.url()), vec!["--verify".into()]].concat())
        .output()
        .await?;
    let said = text(&again.stdout);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(said.contains("nothing to copy"), "{said}");
    assert!(said.contains("0 tables differ"), "{said}");
    // `compare` takes the MySQL and the PostgreSQL database either way round, and names the
    // row that differs.
    for (a, b) in [(src.url(), dst.url()), (dst.url(), src.url())] {
        let same = datamig(&["compare", "--source", a, "--target", b])
            .output()
            .await?;
        assert_eq!(same.status.code(), Some(0), "{}", text(&same.stderr));
        assert!(
            text(&same.stdout).contains("0 tables differ"),
            "{}",
            text(&same.stdout)
        );
    }
    sqlx::raw_sql("UPDATE orders SET total = total + 1 WHERE id = 5")
        .execute(dst.pool())
        .await?;
    for (a, b) in [(src.url(), dst.url()), (dst.url(), src.url())] {
        let differ = datamig(&["compare", "--source", a, "--target", b])
            .output()
            .await?;
        let out = text(&differ.stdout);
        assert_eq!(
            differ.status.code(),
            Some(8),
            "{out} {}",
            text(&differ.stderr)
        );
        assert!(out.contains("public.orders id = 5: differs"), "{out}");
        assert!(out.contains("1 tables differ"), "{out}");
    }
    let refused = datamig(&[
        "compare",
        "--source",
        src.url(),
        "--target",
        dst.url(),
        "--unix-time",
        "orders.placed=seconds",
    ])
    .output()
    .await?;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("--unix-time applies to a comparison of a SQLite"),
        "{}",
        text(&refused.stderr)
    );
    sqlx::raw_sql("UPDATE orders SET total = total - 1 WHERE id = 5")
        .execute(dst.pool())
        .await?;

    let mut partial = 0;
    for _ in 0..kills {
        let dst = target(SHOP_PG).await?;
        let mut child = run(args(dst.url())).spawn()?;
        tokio::time::sleep(Duration::from_millis(
            took / 10 + instants.next_millis(took * 8 / 10 + 1),
        ))
        .await;
        child.start_kill()?; // SIGKILL: no cleanup of any kind
        child.wait().await?;
        let exists = pg_count(
            dst.pool(),
            "SELECT count(*) FROM pg_tables WHERE tablename = 'datamig_copy_progress'",
        )
        .await?;
        if exists > 0
            && pg_count(
                dst.pool(),
                "SELECT count(*) FROM datamig_copy_progress WHERE copied_at IS NOT NULL",
            )
            .await?
                > 0
        {
            partial += 1;
        }
        let finish = run(args(dst.url())).output().await?;
        assert!(
            finish.status.success(),
            "the rerun failed: {}",
            text(&finish.stderr)
        );
        assert_shop(dst.pool()).await?;
        assert_eq!(
            pg_count(
                dst.pool(),
                "SELECT sum(rows)::int8 FROM datamig_copy_progress"
            )
            .await?,
            63_000,
            "every row counted once"
        );
    }
    println!(
        "RELIABILITY copy from MariaDB: {kills} SIGKILLs (seed {seed}) within a {took} ms copy, {partial} after some chunks had committed: every rerun gave an exact copy"
    );
    Ok(())
}

#[tokio::test]
async fn the_copy_reads_one_state_while_the_source_is_written() -> anyhow::Result<()> {
    let src = source(SHOP_MY).await?;
    let dst = target(SHOP_PG).await?;
    // Writes go on in the source while the copy runs: the copy holds the rows of one
    // moment, whatever its jobs read when.
    let writer_pool = src.pool().clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = std::sync::Arc::clone(&stop);
    let writer = tokio::spawn(async move {
        let mut n = 0_u64;
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let mut tx = writer_pool.begin().await?;
            sqlx::query("INSERT INTO customers (name, created) VALUES ('late', NOW())")
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE order_lines SET qty = qty + 1 WHERE order_id = 1 + ? % 20000")
                .bind(n)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            n += 1;
        }
        anyhow::Ok(n)
    });
    let out = copy(
        src.url(),
        dst.url(),
        &["--chunk-rows", "1000", "--jobs", "3"],
    )
    .await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await??;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(writes > 0, "the source was written during the copy");
    let customers = pg_count(dst.pool(), "SELECT count(*) FROM customers").await?;
    let late = pg_count(
        dst.pool(),
        "SELECT count(*) FROM customers WHERE name = 'late'",
    )
    .await?;
    let qty: i64 = pg_count(dst.pool(), "SELECT sum(qty)::int8 FROM order_lines").await?;
    // Each write added one customer and one to some line's qty in one transaction: a
    // state of one moment holds as many of each.
    let base_qty: i64 = (0..40000_i64).map(|s| s % 7).sum();
    let lines_bumped = qty - base_qty;
    assert_eq!(customers, 3000 + late);
    println!("{writes} writes during the copy, {late} of them before its snapshot");
    let per_write: i64 = sqlx::query("SELECT COUNT(*) FROM order_lines WHERE order_id = 1")
        .fetch_one(src.pool())
        .await?
        .try_get(0)?;
    assert_eq!(
        lines_bumped,
        late * per_write,
        "one moment of the source: {late} writes seen in customers, {lines_bumped} bumps in lines"
    );
    Ok(())
}

/// TLS where the URL asks: a user the server admits only over TLS (`REQUIRE SSL`) copies
/// with `ssl-mode=required`, and with `ssl-mode=verify_ca` and the server's authority; its
/// session is encrypted. Asked to go without TLS, the copy is refused before anything is
/// written, naming the source.
#[tokio::test]
async fn tls_where_the_url_asks_it() -> anyhow::Result<()> {
    let src = source(
        "CREATE TABLE notes (id int PRIMARY KEY, body text CHARACTER SET utf8mb4);
         INSERT INTO notes VALUES (1, 'über TLS 🔒'), (2, NULL)",
    )
    .await?;
    // `datamig_test_<pid>_<n>`: `tls_<pid>_<n>`, under MySQL's 32 characters.
    let user = src.name().replacen("datamig_test", "tls", 1);
    my_execute(
        src.pool(),
        &format!(
            "CREATE USER '{user}'@'%' IDENTIFIED BY 'secret' REQUIRE SSL;
             GRANT SELECT, SHOW VIEW ON `{db}`.* TO '{user}'@'%';
             GRANT RELOAD ON *.* TO '{user}'@'%'",
            db = src.name()
        ),
    )
    .await?;
    let cipher: (String, String) = sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .fetch_one(src.pool())
        .await?;
    assert!(
        !cipher.1.is_empty(),
        "the test server offers TLS (a server given by DATAMIG_TEST_MYSQL_URL must too)"
    );
    let options: sqlx::mysql::MySqlConnectOptions = src.url().parse()?;
    let base = format!(
        "mysql://{user}:secret@{}:{}/{}",
        options.get_host(),
        options.get_port(),
        src.name()
    );
    let ca = std::env::temp_dir().join(format!("datamig-test-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, datamig::testing::MYSQL_TEST_CA_PEM)?;
    let schema = "CREATE TABLE notes (id int PRIMARY KEY, body text)";

    let refused_dst = target(schema).await?;
    let refused = copy(&format!("{base}?ssl-mode=disabled"), refused_dst.url(), &[]).await?;
    let said = text(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains(&user) || said.contains("denied"), "{said}");
    assert_eq!(
        pg_count(refused_dst.pool(), "SELECT count(*) FROM notes").await?,
        0
    );

    for query in [
        "ssl-mode=required".to_string(),
        format!("ssl-mode=verify_ca&ssl-ca={}", ca.display()),
    ] {
        let dst = target(schema).await?;
        let out = copy(&format!("{base}?{query}"), dst.url(), &["--verify"]).await?;
        assert!(
            out.status.success(),
            "{query}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains("0 tables differ"),
            "{}",
            text(&out.stdout)
        );
        assert_eq!(
            pg_text(
                dst.pool(),
                "SELECT string_agg(id || ':' || coalesce(body, 'NULL'), ',' ORDER BY id) FROM notes"
            )
            .await?,
            "1:über TLS 🔒,2:NULL"
        );
    }
    let _ = std::fs::remove_file(&ca);
    my_execute(src.pool(), &format!("DROP USER '{user}'@'%'")).await?;
    Ok(())
}

/// A Sakila-shaped source into a Pagila-shaped target: enum labels in capitals into the
/// target's enum, `YEAR` into a domain over `integer`, a set into `text[]`, a `NOT NULL`
/// column the target's `BEFORE INSERT` trigger fills, and a source column the target has
/// not, left out by name.
#[tokio::test]
async fn a_target_with_its_own_domains_enums_and_triggers_takes_the_rows() -> anyhow::Result<()> {
    let src = source(
        "CREATE TABLE film (film_id smallint unsigned AUTO_INCREMENT PRIMARY KEY, title varchar(128) NOT NULL,
             release_year year, rating enum('G','PG','PG-13','R','NC-17') DEFAULT 'G',
             special_features set('Trailers','Commentaries','Deleted Scenes','Behind the Scenes'));
         INSERT INTO film (title, release_year, rating, special_features) VALUES
             ('ACADEMY DINOSAUR', 2006, 'PG', 'Deleted Scenes,Behind the Scenes'),
             ('ACE GOLDFINGER', 2155, 'NC-17', ''),
             ('ADAPTATION HOLES', NULL, NULL, NULL);
         CREATE TABLE payment (payment_id smallint unsigned AUTO_INCREMENT PRIMARY KEY,
             amount decimal(5,2) NOT NULL, last_update timestamp NULL);
         INSERT INTO payment (amount, last_update) VALUES (2.99, '2006-02-15 22:12:30'), (0.99, NULL)",
    )
    .await?;
    let dst = target(
        "CREATE DOMAIN year AS integer CONSTRAINT year_check CHECK (VALUE >= 1901 AND VALUE <= 2155);
         CREATE TYPE mpaa_rating AS ENUM ('G', 'PG', 'PG-13', 'R', 'NC-17');
         CREATE TABLE film (film_id serial PRIMARY KEY, title text NOT NULL, release_year year,
             rating mpaa_rating DEFAULT 'G', special_features text[], fulltext tsvector NOT NULL);
         CREATE TRIGGER film_fulltext_trigger BEFORE INSERT OR UPDATE ON film FOR EACH ROW
             EXECUTE FUNCTION tsvector_update_trigger(fulltext, 'pg_catalog.english', title);
         CREATE TABLE payment (payment_id serial PRIMARY KEY, amount numeric(5,2) NOT NULL)",
    )
    .await?;

    let out = copy(src.url(), dst.url(), &[]).await?;
    let said = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("column public.payment.last_update (timestamp) is in the source but not in the target, so its values would be lost: add it to the target, leave it out with --exclude-columns public.payment.last_update, or leave the table out with --exclude"),
        "{said}"
    );
    assert!(
        !said.contains("film"),
        "labels in capitals, a domain, a set and a trigger's column all planned: {said}"
    );

    let out = copy(
        src.url(),
        dst.url(),
        &["--exclude-columns", "payment.last_update", "--verify"],
    )
    .await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let films: Vec<String> = sqlx::query_scalar(
        "SELECT format('%s|%s|%s|%s|%s', film_id, release_year, rating, special_features, fulltext)
         FROM film ORDER BY film_id",
    )
    .fetch_all(dst.pool())
    .await?;
    assert_eq!(
        films,
        [
            "1|2006|PG|{\"Deleted Scenes\",\"Behind the Scenes\"}|'academi':1 'dinosaur':2",
            "2|2155|NC-17|{}|'ace':1 'goldfing':2",
            "3||||'adapt':1 'hole':2",
        ]
    );
    assert_eq!(
        pg_text(
            dst.pool(),
            "SELECT string_agg(payment_id || ':' || amount, ' ' ORDER BY payment_id) FROM payment"
        )
        .await?,
        "1:2.99 2:0.99"
    );
    Ok(())
}

/// The snake-case names of the target (as Chinook's PostgreSQL script writes them) and the
/// camel-case names of a MySQL source: tables and columns match ignoring case and
/// underscores, and every statement on the source says the source's own names (the key
/// ranges too: the table splits in chunks).
#[tokio::test]
async fn camel_case_names_meet_their_snake_case_targets() -> anyhow::Result<()> {
    let src = source(
        "CREATE TABLE MediaType (MediaTypeId int PRIMARY KEY, Name varchar(120));
         CREATE TABLE InvoiceLine (InvoiceLineId int PRIMARY KEY, MediaTypeId int NOT NULL,
             UnitPrice decimal(10,2) NOT NULL, FOREIGN KEY (MediaTypeId) REFERENCES MediaType (MediaTypeId));
         INSERT INTO MediaType VALUES (1, 'MPEG audio file'), (2, 'AAC audio file');
         SET STATEMENT max_recursive_iterations = 5000 FOR INSERT INTO InvoiceLine
             WITH RECURSIVE s (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 3000)
             SELECT n, 1 + n % 2, 0.99 FROM s",
    )
    .await?;
    let dst = target(datamig_tests::SNAKE_CASE_TARGET).await?;
    // The plan shows the source's own names beside the target's.
    let plan = copy(src.url(), dst.url(), &["--dry-run"]).await?;
    let shown = text(&plan.stdout);
    assert!(plan.status.success(), "{shown}{}", text(&plan.stderr));
    assert!(
        shown.contains("public.invoice_line (source: InvoiceLine)")
            && shown.contains("unit_price (source: UnitPrice): decimal(10,2) -> numeric(10,2)"),
        "{shown}"
    );
    let out = copy(src.url(), dst.url(), &datamig_tests::SNAKE_CASE_COPY).await?;
    datamig_tests::assert_snake_case_copied(&out, dst.pool()).await?;
    Ok(())
}

/// MariaDB's own `uuid`, `inet4` and `inet6` columns, and addresses kept as text, into
/// PostgreSQL's `uuid`, `inet` and `text`; an address that is none is named with its row.
#[tokio::test]
async fn mariadb_uuids_and_addresses_arrive_as_postgresql_types() -> anyhow::Result<()> {
    let src = source(
        "CREATE TABLE devices (id uuid PRIMARY KEY, v6 inet6, v4 inet4, seen_from varchar(50), label uuid);
         INSERT INTO devices VALUES
             ('123e4567-e89b-12d3-a456-426614174000', '2001:db8::ff00:42:8329', '192.168.1.1', '10.0.0.0/8', '00000000-0000-0000-0000-000000000001'),
             ('0191e4c5-7a8b-7c3d-9e0f-a1b2c3d4e5f6', '::ffff:10.0.0.1', '0.0.0.0', ' ::1 ', NULL),
             ('ffffffff-ffff-ffff-ffff-ffffffffffff', NULL, NULL, NULL, NULL);
         CREATE TABLE visits (id int PRIMARY KEY, seen_from varchar(50));
         INSERT INTO visits VALUES (1, '10.1.2.3'), (2, 'localhost')",
    )
    .await?;
    let dst = target(
        "CREATE TABLE devices (id uuid PRIMARY KEY, v6 inet, v4 inet, seen_from inet, label text);
         CREATE TABLE visits (id int PRIMARY KEY, seen_from inet)",
    )
    .await?;
    let out = copy(src.url(), dst.url(), &["--verify"]).await?;
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(11), "{said}");
    assert!(
        said.contains("public.visits")
            && said.contains("id = 2")
            && said.contains("column seen_from")
            && said.contains("not an IPv4 or IPv6 address"),
        "{said}"
    );
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT format('%s|%s|%s|%s|%s', id, v6, v4, seen_from, label) FROM devices ORDER BY id",
    )
    .fetch_all(dst.pool())
    .await?;
    assert_eq!(
        rows,
        [
            "0191e4c5-7a8b-7c3d-9e0f-a1b2c3d4e5f6|::ffff:10.0.0.1|0.0.0.0|::1|",
            "123e4567-e89b-12d3-a456-426614174000|2001:db8::ff00:42:8329|192.168.1.1|10.0.0.0/8|00000000-0000-0000-0000-000000000001",
            "ffffffff-ffff-ffff-ffff-ffffffffffff||||",
        ]
    );
    Ok(())
}
