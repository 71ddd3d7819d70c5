//! Fixtures shared by the integration tests: a deliberately non-idempotent migration, the
//! tables it needs, and small query helpers.
//!
//! The migrations here are linked into the `datamig-fixtures` binary, which the tests start
//! as separate processes. Migrations that exist to fail are defined in the test files
//! themselves and run through explicit lists.

pub mod spans;

use std::time::Duration;

use datamig::prelude::*;
use sqlx::PgPool;

/// Keeps this crate linked, so its migrations are registered (see `datamig::registry`).
pub fn link() {
    datamig::link_marker(module_path!());
}

/// The id of [`count_runs`].
pub const COUNT_RUNS: &str = "20240101_0000_count_runs";

/// Adds one to `counter.n` every time it runs: deliberately not idempotent, so a count of
/// 1 proves it ran exactly once. Then sleeps a little inside its transaction, so that
/// concurrent runners overlap: in the server on PostgreSQL (`pg_sleep`, which a statement
/// timeout cuts short), in the process on SQLite. Written once for both backends.
///
/// With the switch `slow` on it sleeps 3 s (to hold the runner lock while a test looks);
/// with `fail` on it fails after writing, with `panic` on it panics after writing.
#[datamig::migration(id = "20240101_0000_count_runs")]
pub async fn count_runs<DB: Backend>(ctx: &mut Ctx<'_, DB>) -> anyhow::Result<()> {
    let slow = switch(ctx, "slow").await?;
    ctx.execute("UPDATE counter SET n = n + 1").await?;
    if ctx.backend() == "postgres" {
        let sleep = if slow {
            "SELECT 0::bigint FROM pg_sleep(3)"
        } else {
            "SELECT 0::bigint FROM pg_sleep(0.2)"
        };
        ctx.fetch_i64(sleep).await?;
    } else {
        tokio::time::sleep(Duration::from_millis(if slow { 3_000 } else { 200 })).await;
    }
    if switch(ctx, "fail").await? {
        anyhow::bail!("the fail switch is on");
    }
    assert!(!switch(ctx, "panic").await?, "the panic switch is on");
    Ok(())
}

/// The id of [`bump_items`].
pub const BUMP_ITEMS: &str = "20240101_0001_bump_items";

/// Adds one to `items.v` for the keys of each batch (100 keys a batch): deliberately not
/// idempotent, so `v = 1` everywhere proves every batch committed exactly once. Written once
/// for both backends.
///
/// With the switch `slow_batches` on, each batch sleeps 100 ms after its update, holding its
/// rows' locks; with `fail_batch_3` on, batch 3 fails after writing.
#[datamig::migration(
    id = "20240101_0001_bump_items",
    batch(table = "items", key = "id", size = 100)
)]
pub async fn bump_items<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    ctx.execute_batch(
        "UPDATE items SET v = v + 1 WHERE id > $1 AND id <= $2",
        &batch,
    )
    .await?;
    if switch(ctx, "slow_batches").await? {
        // After the update: the batch holds its rows' locks while it sleeps.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if batch.number() == 3 && switch(ctx, "fail_batch_3").await? {
        anyhow::bail!("batch 3 failed on purpose");
    }
    Ok(())
}

/// Whether fixture switch `name` is on.
async fn switch<DB: Backend>(ctx: &mut Ctx<'_, DB>, name: &str) -> anyhow::Result<bool> {
    let sql = format!("SELECT count(*) FROM fixture_switches WHERE name = '{name}'");
    Ok(ctx.fetch_i64(sqlx::AssertSqlSafe(sql)).await?.unwrap_or(0) > 0)
}

/// Creates `counter` (one row, `n = 0`), `items` (ids 1 to 1000, `v = 0`) and the empty
/// `fixture_switches` table.
///
/// # Errors
///
/// Any database error.
pub async fn create_fixture_tables(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "CREATE TABLE counter (n integer NOT NULL);
         INSERT INTO counter VALUES (0);
         CREATE TABLE items (id bigint PRIMARY KEY, v integer NOT NULL);
         INSERT INTO items SELECT n, 0 FROM generate_series(1, 1000) AS n;
         CREATE TABLE fixture_switches (name text PRIMARY KEY);",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Creates the tables of the `datamig-keyed` binary's migrations: `keyed_uuid` (500 rows
/// keyed by UUIDs in no particular order) and `keyed_pair` (500 rows keyed by
/// `(tenant_id, id)`), each with `v = 0`. The same keys in every database.
///
/// # Errors
///
/// Any database error.
pub async fn create_keyed_tables(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "CREATE TABLE keyed_uuid (id uuid PRIMARY KEY, v integer NOT NULL DEFAULT 0);
         INSERT INTO keyed_uuid (id) SELECT md5(n::text)::uuid FROM generate_series(1, 500) AS n;
         CREATE TABLE keyed_pair (tenant_id bigint NOT NULL, id uuid NOT NULL,
                                  v integer NOT NULL DEFAULT 0, PRIMARY KEY (tenant_id, id));
         INSERT INTO keyed_pair (tenant_id, id)
             SELECT n % 7, md5(n::text)::uuid FROM generate_series(1, 500) AS n;",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// `(batches, rows affected, rows written, notes)` of a re-run of migration `id`, on any
/// backend.
///
/// # Errors
///
/// The re-run's failure.
pub async fn rerun_counts<DB: Backend>(
    pool: &sqlx::Pool<DB>,
    id: &str,
) -> anyhow::Result<(u64, u64, u64, String)> {
    let report = Migrator::new(pool.clone()).rerun(id).await?;
    let applied = &report.applied[0];
    Ok((
        applied.batches,
        applied.rows_affected,
        applied.rows_written.expect("a re-run counts its writes"),
        applied.notes.join("; "),
    ))
}

/// A MySQL `WITH` clause of `s (n)`, the numbers 1 to `rows`: digits crossed, not a
/// recursive query (MariaDB and MySQL stop those at 1000 levels by default).
pub fn mysql_numbers(rows: u32) -> String {
    let places = rows.max(1).to_string().len();
    let digits = "SELECT 0 UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL \
                  SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL \
                  SELECT 8 UNION ALL SELECT 9";
    let sum: Vec<String> = (0..places)
        .map(|i| format!("d{i}.x * {}", 10_u64.pow(u32::try_from(i).unwrap_or(0))))
        .collect();
    let from: Vec<String> = (0..places).map(|i| format!("d AS d{i}")).collect();
    format!(
        "WITH d (x) AS ({digits}), s (n) AS (SELECT n FROM (SELECT {} + 1 AS n FROM {}) AS t \
         WHERE n <= {rows})",
        sum.join(" + "),
        from.join(", ")
    )
}

/// Creates the tables of the `datamig-workers` binary's migration: `spread` (ids 1 to
/// `rows`, `v = 0`), `spread_log` (one row per committed batch: the client process and its
/// keys) and `spread_settings` (how long each batch sleeps in the server).
///
/// # Errors
///
/// Any database error.
pub async fn create_spread_tables(
    pool: &PgPool,
    rows: i64,
    sleep_ms: i32,
) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "CREATE TABLE spread (id bigint PRIMARY KEY, v integer NOT NULL DEFAULT 0);
         CREATE TABLE spread_log (pid bigint NOT NULL, keys bigint NOT NULL);
         CREATE TABLE spread_settings (sleep_ms integer NOT NULL);",
    )
    .execute(pool)
    .await?;
    sqlx::query("INSERT INTO spread (id) SELECT generate_series(1, $1)")
        .bind(rows)
        .execute(pool)
        .await?;
    sqlx::query("INSERT INTO spread_settings VALUES ($1)")
        .bind(sleep_ms)
        .execute(pool)
        .await?;
    Ok(())
}

/// A fresh test database with the fixture tables, and `switches` turned on.
///
/// # Errors
///
/// Any database error, or the test server not starting.
pub async fn fixture_database(switches: &[&str]) -> anyhow::Result<datamig::testing::TestDatabase> {
    let db = datamig::testing::postgres().await?;
    create_fixture_tables(db.pool()).await?;
    for switch in switches {
        switch_on(db.pool(), switch).await?;
    }
    Ok(db)
}

/// A fresh database with the fixture tables, empty: the target of a copy of a fixture
/// database.
///
/// # Errors
///
/// Any database error, or the test server not starting.
pub async fn empty_fixture_database() -> anyhow::Result<datamig::testing::TestDatabase> {
    let db = datamig::testing::postgres().await?;
    create_fixture_tables(db.pool()).await?;
    sqlx::raw_sql("DELETE FROM counter; DELETE FROM items")
        .execute(db.pool())
        .await?;
    Ok(db)
}

/// The fixture tables on SQLite: `counter` (n = 0), `items` (ids 1 to 1000, v = 0) and an
/// empty `fixture_switches`.
pub const SQLITE_FIXTURE_TABLES: &str = "CREATE TABLE counter (n INTEGER NOT NULL);
     INSERT INTO counter VALUES (0);
     CREATE TABLE items (id INTEGER PRIMARY KEY, v INTEGER NOT NULL);
     WITH RECURSIVE seq (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < 1000)
     INSERT INTO items SELECT n, 0 FROM seq;
     CREATE TABLE fixture_switches (name TEXT PRIMARY KEY);";

/// A fresh SQLite file with the fixture tables ([`SQLITE_FIXTURE_TABLES`]) and
/// `fixture_switches` holding `switches`.
///
/// # Errors
///
/// Any database error.
pub async fn sqlite_fixture_database(
    switches: &[&str],
) -> anyhow::Result<datamig::testing::SqliteTestDatabase> {
    let db = datamig::testing::sqlite().await?;
    sqlx::raw_sql(SQLITE_FIXTURE_TABLES)
        .execute(db.pool())
        .await?;
    for switch in switches {
        sqlx::query("INSERT INTO fixture_switches VALUES ($1)")
            .bind(switch)
            .execute(db.pool())
            .await?;
    }
    Ok(db)
}

/// Turns a fixture switch on.
///
/// # Errors
///
/// Any database error.
pub async fn switch_on(pool: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO fixture_switches VALUES ($1)")
        .bind(name)
        .execute(pool)
        .await?;
    Ok(())
}

/// `items.v`, in key order.
///
/// # Errors
///
/// Any database error.
pub async fn item_values(pool: &PgPool) -> Result<Vec<i32>, sqlx::Error> {
    sqlx::query_scalar("SELECT v FROM items ORDER BY id")
        .fetch_all(pool)
        .await
}

/// The value of `counter.n`.
///
/// # Errors
///
/// Any database error.
pub async fn counter(pool: &PgPool) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT n FROM counter")
        .fetch_one(pool)
        .await
}

/// The result of a query returning one `bigint` (e.g. `SELECT count(*) FROM t`).
///
/// # Errors
///
/// Any database error.
pub async fn scalar(pool: &PgPool, sql: &'static str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(sql).fetch_one(pool).await
}

/// How many advisory locks are held in this database (the runner lock among them).
/// `pg_locks` spans the whole server, where other tests' databases hold locks too.
///
/// # Errors
///
/// Any database error.
pub async fn advisory_locks_held(pool: &PgPool) -> Result<i64, sqlx::Error> {
    scalar(
        pool,
        "SELECT count(*) FROM pg_locks
         WHERE locktype = 'advisory' AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .await
}

/// `BINARY ARGS` against `url`, with piped output, killed if dropped. Integration tests
/// pass `env!("CARGO_BIN_EXE_datamig-fixtures")`.
pub fn command(binary: &str, url: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args(args)
        .env("DATABASE_URL", url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// The arguments of `datamig copy --source SOURCE --target TARGET`, then `more`.
pub fn copy_args<'a>(source: &'a str, target: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["copy", "--source", source, "--target", target];
    args.extend_from_slice(more);
    args
}

/// The target's schema of the camel-case tests: Chinook's tables as its PostgreSQL script
/// names them, in snake case.
pub const SNAKE_CASE_TARGET: &str =
    "CREATE TABLE media_type (media_type_id int PRIMARY KEY, name varchar(120));
     CREATE TABLE invoice_line (invoice_line_id int PRIMARY KEY,
         media_type_id int NOT NULL REFERENCES media_type, unit_price numeric(10,2) NOT NULL)";

/// The arguments of the camel-case tests' copy: `invoice_line` in chunks of 1,000 rows,
/// verified.
pub const SNAKE_CASE_COPY: [&str; 5] = ["--chunk-rows", "1000", "--jobs", "2", "--verify"];

/// Asserts a camel-case source's `MediaType` (two audio types) and `InvoiceLine` (3,000
/// lines of 0.99, each of media type `1 + id % 2`) arrived in [`SNAKE_CASE_TARGET`]: the
/// copy succeeded, verified, `invoice_line` split in key ranges.
///
/// # Panics
///
/// Where any of that is not so.
///
/// # Errors
///
/// When the target cannot be read.
pub async fn assert_snake_case_copied(
    out: &std::process::Output,
    target: &PgPool,
) -> anyhow::Result<()> {
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("0 tables differ"), "{stdout}");
    // Split in key ranges: about three, by the source's estimate of its rows (MySQL's
    // is not exact).
    let chunks: u32 = stdout
        .lines()
        .find(|l| l.starts_with("public.invoice_line "))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_default();
    assert!((2..=5).contains(&chunks), "chunks: {stdout}");
    let (lines, types): (i64, String) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM invoice_line
                 WHERE media_type_id = 1 + invoice_line_id % 2 AND unit_price = 0.99),
                (SELECT string_agg(name, ', ' ORDER BY media_type_id) FROM media_type)",
    )
    .fetch_one(target)
    .await?;
    assert_eq!(
        (lines, types.as_str()),
        (3000, "MPEG audio file, AAC audio file")
    );
    Ok(())
}

/// The URL of the same database for another user.
///
/// # Errors
///
/// When `url` is not a PostgreSQL URL.
pub fn url_for(url: &str, user: &str, password: &str) -> anyhow::Result<String> {
    let options: sqlx::postgres::PgConnectOptions = url.parse()?;
    Ok(format!(
        "postgres://{user}:{password}@{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres")
    ))
}

/// Bytes as text, for assertions on output.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Sends `signal` (`-INT`, `-TERM`, `-STOP`, ...) to a child process.
///
/// # Errors
///
/// When the child has exited or `kill` fails.
pub fn send(child: &tokio::process::Child, signal: &str) -> anyhow::Result<()> {
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("the child has exited"))?;
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill {signal} failed");
    Ok(())
}

/// Ctrl-C for a child process.
///
/// # Errors
///
/// As [`send`].
pub fn interrupt(child: &tokio::process::Child) -> anyhow::Result<()> {
    send(child, "-INT")
}

/// Reads a child's stderr line by line until a line contains `needle`; returns the lines
/// read so far.
///
/// # Errors
///
/// When the stream ends first, or after `deadline`.
pub async fn wait_for_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    needle: &str,
    deadline: std::time::Duration,
) -> anyhow::Result<Vec<String>> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(deadline, async {
        while let Some(line) = lines.next_line().await? {
            let hit = line.contains(needle);
            seen.push(line);
            if hit {
                return Ok::<bool, std::io::Error>(true);
            }
        }
        Ok(false)
    })
    .await;
    match found {
        Ok(Ok(true)) => Ok(seen),
        Ok(Ok(false)) => anyhow::bail!("stderr ended without {needle:?}: {seen:?}"),
        Ok(Err(err)) => Err(err.into()),
        Err(_) => anyhow::bail!("waited {deadline:?} for {needle:?} on stderr: {seen:?}"),
    }
}

/// Waits until a runner holds the runner lock of this database.
///
/// # Errors
///
/// After 10 s without one.
pub async fn wait_for_lock_holder(pool: &PgPool) -> anyhow::Result<()> {
    wait_until(
        pool,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
        AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .await
}

/// Waits until [`count_runs`] sits in its `pg_sleep`: inside its transaction.
///
/// # Errors
///
/// After 10 s without one.
pub async fn wait_for_sleeping_migration(pool: &PgPool) -> anyhow::Result<()> {
    wait_until(
        pool,
        "SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND state = 'active'
          AND query LIKE 'SELECT 0::bigint FROM pg_sleep%'",
    )
    .await
}

/// Waits until `count_sql` returns more than 0. A table that does not exist yet (the
/// ledger before the first run creates it) counts as 0; any other error is returned.
///
/// # Errors
///
/// After 10 s, or on a database error.
pub async fn wait_until(pool: &PgPool, count_sql: &'static str) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let count = match scalar(pool, count_sql).await {
            Ok(count) => count,
            Err(err) if is_missing_table(&err) => 0,
            Err(err) => return Err(err.into()),
        };
        if count > 0 {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "waited 10 s for: {count_sql}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Whether a query failed because a table does not exist (yet).
pub fn is_missing_table(err: &sqlx::Error) -> bool {
    err.as_database_error().is_some_and(|e| {
        e.code().as_deref() == Some("42P01") || e.message().contains("no such table")
    })
}

/// PgBouncer in `transaction` mode in front of the test server, with its default settings
/// otherwise (no `ignore_startup_parameters`, no prepared-statement support): the pooler
/// of most production databases. Started from the `pgbouncer` binary (Debian's package,
/// which `scripts/test-env.sh` installs); stopped when dropped.
pub struct PgBouncer {
    child: tokio::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl PgBouncer {
    /// Starts one in front of the server of `url` (any database on it), and waits until it
    /// listens.
    ///
    /// # Errors
    ///
    /// When the binary is missing (the message says how to install it) or does not start
    /// within 10 s.
    pub async fn start(url: &str) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        use tokio::io::AsyncBufReadExt;

        let binary = [
            "/usr/sbin/pgbouncer",
            "/usr/bin/pgbouncer",
            "/usr/local/bin/pgbouncer",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(str::to_string)
        .or_else(|| {
            std::process::Command::new("sh")
                .args(["-c", "command -v pgbouncer"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| text(&o.stdout).trim().to_string())
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the pooler tests need PgBouncer: install Debian's `pgbouncer` package \
                     (scripts/test-env.sh does, as root), or put `pgbouncer` on the PATH"
            )
        })?;
        let server: sqlx::postgres::PgConnectOptions = url.parse()?;
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.local_addr()?.port()
        };
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "datamig-pgbouncer-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        // The test server's users: the superuser, and those the tests create.
        let users: String = [("postgres", "postgres"), ("app", "app")]
            .iter()
            .map(|(u, p)| format!("\"{u}\" \"{p}\"\n"))
            .collect();
        std::fs::write(dir.join("users.txt"), users)?;
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host={} port={}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
                 listen_port = {port}\nunix_socket_dir =\nauth_file = {}\npool_mode = transaction\n",
                server.get_host(),
                server.get_port(),
                dir.join("users.txt").display()
            ),
        )?;
        for file in ["users.txt", "pgbouncer.ini"] {
            std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o644))?;
        }
        let mut cmd = tokio::process::Command::new(binary);
        // PgBouncer refuses to run as root; it switches to another user itself.
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| text(&o.stdout).trim() == "0");
        if root {
            cmd.args(["-u", "postgres"]);
        }
        cmd.arg(dir.join("pgbouncer.ini"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        wait_for_line(&mut lines, "process up", Duration::from_secs(10)).await?;
        // It logs every connection: keep reading, so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(PgBouncer { child, port, dir })
    }

    /// The URL of the database of `url` (user, password, database) through this pooler.
    ///
    /// # Errors
    ///
    /// When `url` is not a PostgreSQL URL.
    pub fn url(&self, url: &str) -> anyhow::Result<String> {
        let options: sqlx::postgres::PgConnectOptions = url.parse()?;
        let password = url
            .strip_prefix("postgres://")
            .and_then(|rest| rest.split_once('@'))
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map_or("postgres", |(_, password)| password)
            .to_string();
        Ok(format!(
            "postgres://{}:{password}@127.0.0.1:{}/{}",
            options.get_username(),
            self.port,
            options.get_database().unwrap_or("postgres")
        ))
    }

    /// A pool through this pooler, with the options it needs ([`datamig::pooler_safe`]).
    ///
    /// # Errors
    ///
    /// When it does not connect.
    pub async fn pool(&self, url: &str) -> anyhow::Result<PgPool> {
        let options: sqlx::postgres::PgConnectOptions = self.url(url)?.parse()?;
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect_with(datamig::pooler_safe(options))
            .await?)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A small xorshift generator: the instants of random kills, reproducible from the seed a
/// test prints.
pub struct Instants(pub u64);

impl Instants {
    /// Seeded from `DATAMIG_RELIABILITY_SEED`, or from the clock; returns the seed too, for
    /// the test to print.
    ///
    /// # Errors
    ///
    /// When the variable is not a number.
    pub fn from_env() -> anyhow::Result<(Self, u64)> {
        let seed = match std::env::var("DATAMIG_RELIABILITY_SEED") {
            Ok(seed) => seed.parse()?,
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as u64,
        }
        .max(1);
        Ok((Instants(seed), seed))
    }

    /// The next number of milliseconds below `below`.
    pub fn next_millis(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// A primary PostgreSQL server and a streaming standby cloned from it with
/// `pg_basebackup`, each in a container of the test image (`DATAMIG_TEST_POSTGRES_IMAGE`,
/// default `postgres:15`): the standby's replay can be paused and resumed, so that its
/// replay lag grows for real. Remove both with [`Replication::remove`].
pub struct Replication {
    primary: testcontainers::ContainerAsync<testcontainers_modules::postgres::Postgres>,
    standby: testcontainers::ContainerAsync<testcontainers::GenericImage>,
    /// The primary's `postgres` database, as the superuser `postgres`.
    pub primary_url: String,
    /// The standby's `postgres` database (read-only), as the superuser.
    pub standby_url: String,
}

impl Replication {
    /// Starts the primary, lets the standby replicate from it, clones it and starts the
    /// standby; returns once the standby streams (it appears in the primary's
    /// `pg_stat_replication`).
    ///
    /// # Errors
    ///
    /// When a container does not start; the message names the container's image.
    pub async fn start() -> anyhow::Result<Self> {
        use testcontainers::core::{IntoContainerPort, WaitFor};
        use testcontainers::runners::AsyncRunner;
        use testcontainers::{GenericImage, ImageExt};

        let image = std::env::var(datamig::testing::IMAGE_VAR)
            .ok()
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| datamig::testing::DEFAULT_IMAGE.to_string());
        let (name, tag) = image.rsplit_once(':').unwrap_or((image.as_str(), "latest"));
        let primary = testcontainers_modules::postgres::Postgres::default()
            .with_name(name)
            .with_tag(tag)
            .with_label("datamig.test", "1")
            .with_cmd(["-c", "fsync=off", "-c", "wal_level=replica"])
            .with_network("bridge")
            .with_startup_timeout(Duration::from_secs(120))
            .start()
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the primary from image {image}: {e}"))?;
        let primary_url = format!(
            "postgres://postgres:postgres@{}:{}/postgres",
            primary.get_host().await?,
            primary.get_host_port_ipv4(5432).await?
        );
        let admin = PgPool::connect(&primary_url).await?;
        // The images' pg_hba.conf lets no one replicate over the network: this test server
        // trusts every connection, replication included.
        let hba: String = sqlx::query_scalar("SELECT current_setting('hba_file')")
            .fetch_one(&admin)
            .await?;
        let rewrite = format!(
            "COPY (SELECT unnest(ARRAY['local all all trust', 'host all all all trust', \
             'local replication all trust', 'host replication all all trust'])) TO '{}'",
            hba.replace('\'', "''")
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(rewrite))
            .execute(&admin)
            .await?;
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&admin)
            .await?;

        let primary_ip = primary.get_bridge_ip_address().await?;
        let bin = "/usr/lib/postgresql/15/bin";
        let script = format!(
            "set -e; rm -rf /tmp/standby; \
             {bin}/pg_basebackup -h {primary_ip} -p 5432 -U postgres -D /tmp/standby -R -X stream -c fast; \
             chmod 700 /tmp/standby; \
             exec {bin}/postgres -D /tmp/standby -c hot_standby=on -c listen_addresses='*' \
               -c wal_receiver_status_interval=1s -c fsync=off -c unix_socket_directories=/tmp"
        );
        let standby = GenericImage::new(name, tag)
            .with_entrypoint("/bin/bash")
            .with_exposed_port(5432.tcp())
            .with_wait_for(WaitFor::message_on_stderr(
                "database system is ready to accept read-only connections",
            ))
            .with_cmd(["-c", script.as_str()])
            .with_user("postgres")
            .with_network("bridge")
            .with_label("datamig.test", "1")
            .with_startup_timeout(Duration::from_secs(120))
            .start()
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the standby from image {image}: {e}"))?;
        let standby_url = format!(
            "postgres://postgres:postgres@{}:{}/postgres",
            standby.get_host().await?,
            standby.get_host_port_ipv4(5432).await?
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let streaming: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            )
            .fetch_one(&admin)
            .await?;
            if streaming > 0 {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the standby did not stream from the primary within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        admin.close().await;
        Ok(Replication {
            primary,
            standby,
            primary_url,
            standby_url,
        })
    }

    /// Pauses the standby's replay (`pg_wal_replay_pause`) and waits until it is paused.
    ///
    /// # Errors
    ///
    /// When the standby does not answer, or does not pause within 10 s.
    pub async fn pause_replay(&self) -> anyhow::Result<()> {
        self.replay("pg_wal_replay_pause", "paused").await
    }

    /// Resumes the standby's replay and waits until it is no longer paused.
    ///
    /// # Errors
    ///
    /// When the standby does not answer, or does not resume within 10 s.
    pub async fn resume_replay(&self) -> anyhow::Result<()> {
        self.replay("pg_wal_replay_resume", "not paused").await
    }

    async fn replay(&self, function: &str, state: &str) -> anyhow::Result<()> {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&self.standby_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {function}()")))
            .execute(&mut conn)
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now: String = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
                .fetch_one(&mut conn)
                .await?;
            if now == state {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the standby's replay is {now:?}, not {state:?}, 10 s after {function}()"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Removes both containers.
    pub async fn remove(self) {
        let _ = self.standby.rm().await;
        let _ = self.primary.rm().await;
    }
}

/// A table `doomed` whose deferred trigger ends the session during the `COMMIT` of any
/// transaction that inserted into it: a `COMMIT` that fails, with its outcome unknown to
/// the client until it reads the database again.
pub const DOOMED_AT_COMMIT: &str = "
    CREATE TABLE doomed (id bigint);
    CREATE FUNCTION end_session() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$;
    CREATE CONSTRAINT TRIGGER end_session_at_commit AFTER INSERT ON doomed
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION end_session();";
