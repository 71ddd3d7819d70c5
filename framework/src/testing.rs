//! Test support: real databases for every test, never a mock.
//!
//! [`sqlite`] hands each test a fresh SQLite database file, with nothing to install.
//! [`postgres`] hands each test a fresh, empty PostgreSQL database. The server behind it is
//! started once per test binary:
//!
//! - with `DATAMIG_TEST_DATABASE_URL` set, that server is used (databases are created on it
//!   and dropped when the test binary exits);
//! - otherwise testcontainers starts the image named by `DATAMIG_TEST_POSTGRES_IMAGE`
//!   (`name:tag`, default `postgres:15`), removed when the test binary exits.
//!
//! [`mysql`] (with the `mysql` feature) does the same on MySQL or MariaDB: the server at
//! `DATAMIG_TEST_MYSQL_URL`, or a container of `DATAMIG_TEST_MYSQL_IMAGE` (default
//! `mariadb:10.11`).
//!
//! The idempotency proof, for every migration of a crate, in a few lines, on either
//! backend:
//!
//! ```no_run
//! #[tokio::test]
//! async fn every_migration_is_idempotent() -> anyhow::Result<()> {
//!     let db = datamig::testing::postgres().await?;
//!     // create the schema and seed the data the migrations expect, then:
//!     datamig::testing::assert_all_idempotent(db.pool()).await?;
//!
//!     let file = datamig::testing::sqlite().await?; // no Docker, no server
//!     // the same on SQLite:
//!     datamig::testing::assert_all_idempotent(file.pool()).await?;
//!     Ok(())
//! }
//! # fn main() {}
//! ```
//!
//! ```no_run
//! #[tokio::test]
//! async fn backfill_gives_every_user_settings() -> anyhow::Result<()> {
//!     let db = datamig::testing::postgres().await?;
//!     sqlx::query("CREATE TABLE users (id bigint PRIMARY KEY)").execute(db.pool()).await?;
//!     // ... seed, run the migrator, assert on rows
//!     Ok(())
//! }
//! # fn main() {}
//! ```

#[cfg(feature = "mysql")]
mod mysql;

#[cfg(feature = "mysql")]
pub use self::mysql::{
    DEFAULT_MYSQL_IMAGE, MYSQL_IMAGE_VAR, MYSQL_TEST_CA_PEM, MYSQL_URL_VAR, MySqlTestDatabase,
    mysql, mysql_next_batch_plan,
};

use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgPool, Pool};
use testcontainers_modules::postgres::Postgres as PostgresImage;
use testcontainers_modules::testcontainers::ImageExt;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use tokio::sync::OnceCell;

use crate::backend::Backend;
use crate::error::Error;
use crate::fingerprint::{FingerprintOptions, fingerprint_on};
use crate::idempotency::{changes_between, snapshot_rows};
use crate::idempotency_check::IdempotencyCheck;
use crate::runner::Migrator;
use crate::sql::quote_ident;

/// The variable naming an existing server to test against (e.g. `postgres://u:p@localhost/postgres`).
pub const DATABASE_URL_VAR: &str = "DATAMIG_TEST_DATABASE_URL";
/// The variable naming the image testcontainers starts (`name:tag`).
pub const IMAGE_VAR: &str = "DATAMIG_TEST_POSTGRES_IMAGE";
/// The image started when [`IMAGE_VAR`] is not set.
pub const DEFAULT_IMAGE: &str = "postgres:15";

/// The plan (`EXPLAIN`, one line per row) of the statement with which the runner finds
/// the next batch of a batched `migration` on PostgreSQL: the first batch's, or, with
/// `after_first`, the second's (bounded below by the first batch's last key). For a test
/// that proves the walk is an index range scan, not a sequential scan, on the real table.
///
/// # Errors
///
/// [`Error::Config`] for a migration that is not batched or whose key the runner refuses
/// (see [`crate::BatchSpec`]); [`Error::Database`].
pub async fn next_batch_plan(
    conn: &mut PgConnection,
    migration: &crate::Migration,
    after_first: bool,
) -> Result<String, Error> {
    let (spec, shape) = batched(conn, migration).await?;
    let after = if after_first {
        first_batch_end(conn, spec, &shape).await?
    } else {
        None
    };
    let sql = shape.next_batch_sql(after.is_some(), false);
    let bounds = after.as_ref().map(crate::Key::values).unwrap_or_default();
    explain(conn, sql, bounds, Some(spec.size())).await
}

/// The plan (`EXPLAIN`, one line per row) of the statement with which a batched
/// `migration` on PostgreSQL finds its last key after the first batch, before it checks
/// every key left in one statement: for a test that proves it is one backward step of the
/// key's index, not a read of the table.
///
/// # Errors
///
/// As [`next_batch_plan`].
pub async fn last_key_plan(
    conn: &mut PgConnection,
    migration: &crate::Migration,
) -> Result<String, Error> {
    let (spec, shape) = batched(conn, migration).await?;
    let after = first_batch_end(conn, spec, &shape).await?;
    let sql = shape.last_key_sql(after.is_some());
    let bounds = after.as_ref().map(crate::Key::values).unwrap_or_default();
    explain(conn, sql, bounds, None).await
}

/// The plan (`EXPLAIN`, one line per row) of the statement with which a worker finds the
/// next batch inside a range of a batched `migration` on PostgreSQL: the table's keys split
/// into four ranges as workers split them, the second range bounded on both sides. For a
/// test that proves workers walk their ranges by index range scans too.
///
/// # Errors
///
/// [`Error::Config`] for a migration that is not batched, whose key the runner refuses, or
/// whose table holds too few keys for four ranges; [`Error::Database`].
pub async fn range_batch_plan(
    conn: &mut PgConnection,
    migration: &crate::Migration,
) -> Result<String, Error> {
    use crate::backend::steps::RangeSteps;
    let (spec, shape) = batched(conn, migration).await?;
    let points = <sqlx::Postgres as RangeSteps>::split_keys(conn, &shape, None, 4).await?;
    let [lower, upper, ..] = points.as_slice() else {
        return Err(Error::Config(format!(
            "{} holds too few keys for four ranges",
            shape.table
        )));
    };
    let bounds: Vec<_> = lower
        .values()
        .iter()
        .chain(upper.values())
        .cloned()
        .collect();
    let sql = shape.next_batch_sql(true, true);
    explain(conn, sql, &bounds, Some(spec.size())).await
}

/// The batch settings of a batched `migration` and its key, checked as the runner checks
/// them.
async fn batched<'m>(
    conn: &mut PgConnection,
    migration: &'m crate::Migration,
) -> Result<(&'m crate::BatchSpec, Arc<crate::key::KeyShape>), Error> {
    let spec = migration
        .batch()
        .ok_or_else(|| Error::Config(format!("migration {} is not batched", migration.id())))?;
    let (shape, _) =
        crate::runner::batch_key::<sqlx::Postgres>(conn, migration.id(), spec, true).await?;
    Ok((spec, shape))
}

/// The last key of a batched migration's first batch.
async fn first_batch_end(
    conn: &mut PgConnection,
    spec: &crate::BatchSpec,
    shape: &crate::key::KeyShape,
) -> Result<Option<crate::Key>, Error> {
    use crate::backend::steps::WalkSteps;
    Ok(
        <sqlx::Postgres as WalkSteps>::next_batch(conn, shape, None, None, spec.size())
            .await?
            .map(|(key, _)| key),
    )
}

/// `EXPLAIN sql` with the key values bound (then the batch size, where the statement takes
/// one), one line of the plan per row.
async fn explain(
    conn: &mut PgConnection,
    sql: String,
    bounds: &[crate::key::KeyValue],
    size: Option<u32>,
) -> Result<String, Error> {
    let mut query = sqlx::query(AssertSqlSafe(format!("EXPLAIN {sql}"))).persistent(false);
    for value in bounds {
        query = crate::backend::bind_key_value(query, value);
    }
    if let Some(size) = size {
        query = query.bind(i64::from(size));
    }
    let rows = query.fetch_all(conn).await?;
    let lines = rows
        .iter()
        .map(|row| sqlx::Row::try_get::<String, _>(row, 0))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(lines.join("\n"))
}

/// A fresh database on the shared test server.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    pool: PgPool,
}

impl TestDatabase {
    /// A pool connected to this database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The database's URL, for processes started by the test (`datamig run --database-url`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Creates a fresh, empty database on the test server (started on first use) and connects
/// to it.
///
/// # Errors
///
/// [`Error::Runtime`] when the server cannot be started or reached, with what to do;
/// [`Error::Database`] when creating the database fails.
pub async fn postgres() -> Result<TestDatabase, Error> {
    let server = SERVER
        .get_or_init(|| async {
            tokio::task::spawn_blocking(Server::start)
                .await
                .unwrap_or_else(|e| Err(format!("the test server thread failed: {e}")))
        })
        .await
        .as_ref()
        .map_err(|e| Error::Runtime(e.clone()))?;

    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "datamig_test_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = connect_with_retry(&server.admin_url).await?;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE DATABASE {}",
        quote_ident(&name)
    )))
    .execute(&mut admin)
    .await?;
    server
        .created
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(name.clone());
    admin.close().await?;

    let url = with_database(&server.admin_url, &name);
    let options = PgConnectOptions::from_str(&url)?;
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await?;
    Ok(TestDatabase { name, url, pool })
}

/// A fresh SQLite database file for one test, deleted when dropped.
///
/// A file, not `sqlite::memory:`: every process a test starts must see the same database.
#[cfg(feature = "sqlite")]
#[derive(Debug)]
pub struct SqliteTestDatabase {
    path: std::path::PathBuf,
    url: String,
    pool: sqlx::SqlitePool,
}

#[cfg(feature = "sqlite")]
impl SqliteTestDatabase {
    /// A pool connected to this database.
    pub fn pool(&self) -> &sqlx::SqlitePool {
        &self.pool
    }

    /// Its URL (`sqlite:` and the file's path), for a process a test starts.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

#[cfg(feature = "sqlite")]
impl Drop for SqliteTestDatabase {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut file = self.path.clone().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
    }
}

/// A fresh, empty SQLite database in a file of the system's temporary directory, deleted
/// when the returned value is dropped. Needs nothing installed.
///
/// # Errors
///
/// [`Error::Database`] when the file cannot be created.
#[cfg(feature = "sqlite")]
pub async fn sqlite() -> Result<SqliteTestDatabase, Error> {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "datamig-test-{}-{}-{}.db",
        std::process::id(),
        chrono::Utc::now().timestamp_micros(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let url = format!("sqlite:{}", path.display());
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    Ok(SqliteTestDatabase { path, url, pool })
}

/// Proves migration `id` idempotent on this database: runs it (and the pending migrations
/// before it) through the ledger, takes a fingerprint of the data, runs it again as a forced
/// re-run, takes another, and fails if they differ, or if the second run reported rows
/// inserted or updated.
///
/// # Errors
///
/// [`Error::NotIdempotent`], naming each table the second run changed with a few rows that
/// differ; any error of the runs themselves.
pub async fn assert_idempotent<DB: Backend>(pool: &Pool<DB>, id: &str) -> Result<(), Error> {
    assert_idempotent_with(&Migrator::new(pool.clone()), id).await
}

/// [`assert_idempotent`] with a migrator of your own (an explicit list of migrations,
/// another ledger).
///
/// # Errors
///
/// As [`assert_idempotent`].
pub async fn assert_idempotent_with<DB: Backend>(
    migrator: &Migrator<DB>,
    id: &str,
) -> Result<(), Error> {
    check_idempotent(migrator, id).await?.into_result()
}

/// [`assert_idempotent`] for every migration, in id order.
///
/// # Errors
///
/// The first failure.
pub async fn assert_all_idempotent<DB: Backend>(pool: &Pool<DB>) -> Result<(), Error> {
    assert_all_idempotent_with(&Migrator::new(pool.clone())).await
}

/// [`assert_all_idempotent`] with a migrator of your own.
///
/// # Errors
///
/// The first failure.
pub async fn assert_all_idempotent_with<DB: Backend>(migrator: &Migrator<DB>) -> Result<(), Error> {
    for migration in migrator.load()? {
        assert_idempotent_with(migrator, migration.id()).await?;
    }
    Ok(())
}

/// Runs `id` twice as [`assert_idempotent`] does, and returns what it found.
///
/// # Errors
///
/// Any error of the runs themselves.
pub async fn check_idempotent<DB: Backend>(
    migrator: &Migrator<DB>,
    id: &str,
) -> Result<IdempotencyCheck, Error> {
    let first = migrator.clone().up_to(id).run().await?;
    let first_run_rows = first
        .applied
        .iter()
        .find(|a| a.id == id)
        .map_or(0, |a| a.rows_affected);
    // The snapshot is held in memory, not in temporary tables of one session: through a
    // transaction pooler, the statements after the re-run may reach another session.
    let mut conn = migrator.pool().acquire().await?;
    let options = FingerprintOptions::new().ledger(migrator.ledger_config());
    let before = fingerprint_on::<DB>(&mut conn, &options).await?;
    let copy = snapshot_rows::<DB>(&mut conn, &options).await?;
    drop(conn);
    let second = migrator.rerun(id).await?;
    let mut conn = migrator.pool().acquire().await?;
    let after = fingerprint_on::<DB>(&mut conn, &options).await?;
    let differences = before.differences(&after);
    let changes = if differences.is_empty() {
        Vec::new()
    } else {
        changes_between(
            &copy,
            &snapshot_rows::<DB>(&mut conn, &options).await?,
            &differences,
        )
    };
    let second_run_rows = second.applied.first().map_or(0, |a| a.rows_affected);
    let second_run_writes = second
        .applied
        .first()
        .and_then(|a| a.rows_written)
        .unwrap_or(0);
    Ok(IdempotencyCheck::new(
        id,
        first_run_rows,
        second_run_rows,
        second_run_writes,
        changes,
    ))
}

/// Proves that batched migration `id`, stopped after `after_batches` batches (as a crash
/// would stop it) and resumed, ends where an uninterrupted run ends: the two databases,
/// seeded alike, have equal fingerprints afterwards.
///
/// # Errors
///
/// [`Error::Diverged`] naming the tables that differ; [`Error::Config`] when the migration
/// finished before `after_batches` batches (choose fewer); any error of the runs.
pub async fn assert_interruption_converges<DB: Backend>(
    interrupted: &Pool<DB>,
    uninterrupted: &Pool<DB>,
    id: &str,
    after_batches: u64,
) -> Result<(), Error> {
    Migrator::new(uninterrupted.clone()).up_to(id).run().await?;
    match Migrator::new(interrupted.clone())
        .up_to(id)
        .interrupt_after_batches(after_batches)
        .run()
        .await
    {
        Err(Error::Interrupted { .. }) => {}
        Ok(_) => {
            return Err(Error::Config(format!(
                "migration {id} finished before {after_batches} batches, so it was never interrupted: choose fewer batches"
            )));
        }
        Err(other) => return Err(other),
    }
    Migrator::new(interrupted.clone()).up_to(id).run().await?;
    let left = crate::fingerprint::fingerprint(interrupted).await?;
    let right = crate::fingerprint::fingerprint(uninterrupted).await?;
    let differences = left.differences(&right);
    if differences.is_empty() {
        Ok(())
    } else {
        Err(Error::Diverged {
            id: id.to_string(),
            batches: after_batches,
            tables: differences.into_iter().map(|d| d.table).collect(),
        })
    }
}

async fn connect_with_retry(url: &str) -> Result<PgConnection, Error> {
    let mut attempt = 0;
    loop {
        match PgConnection::connect(url).await {
            Ok(conn) => return Ok(conn),
            Err(_) if attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

static SERVER: OnceCell<Result<Server, String>> = OnceCell::const_new();

/// The server all tests of this binary share, and what to clean up when it exits.
struct Server {
    admin_url: String,
    created: Arc<Mutex<Vec<String>>>,
}

/// Tells the keeper thread to clean up, then waits for it: set once, taken at exit.
static STOP: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>> = Mutex::new(None);

impl Server {
    /// Runs on a blocking thread. The container (or the list of databases to drop) is owned
    /// by a keeper thread with its own runtime, because each `#[tokio::test]` has a runtime
    /// of its own that ends with the test, while the server must outlive them all.
    fn start() -> Result<Server, String> {
        let created = Arc::new(Mutex::new(Vec::new()));
        let external = std::env::var(DATABASE_URL_VAR)
            .ok()
            .filter(|u| !u.is_empty());
        let Keeper {
            admin_url,
            stop: stop_tx,
            done: done_rx,
        } = spawn_keeper(
            "test",
            "datamig-test-server",
            external,
            start_container,
            5432,
            |host, port| format!("postgres://postgres:postgres@{host}:{port}/postgres"),
            Arc::clone(&created),
            |url, created| Box::pin(async move { drop_databases(&url, &created).await }),
        )?;
        *STOP.lock().unwrap_or_else(|p| p.into_inner()) = Some((stop_tx, done_rx));
        register_cleanup_at_exit();
        Ok(Server { admin_url, created })
    }
}

/// Drops the databases the tests created on the server at `admin_url`.
pub(crate) type DropDatabases =
    fn(
        String,
        Arc<Mutex<Vec<String>>>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A keeper thread, started: the server's admin URL, and how to tell it to clean up and
/// wait for it.
pub(crate) struct Keeper {
    pub(crate) admin_url: String,
    pub(crate) stop: mpsc::Sender<()>,
    pub(crate) done: mpsc::Receiver<()>,
}

/// Starts the thread that owns a test binary's server: the server at `external` (whose
/// created databases it drops at the end), or a container started by `start` (removed at
/// the end), its URL made by `url` from the host and the mapped `port`. The thread has a
/// runtime of its own, because each `#[tokio::test]` has a runtime that ends with the
/// test, while the server must outlive them all. `what` names the server in errors.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn_keeper<I, S, F, U>(
    what: &'static str,
    thread: &str,
    external: Option<String>,
    start: S,
    port: u16,
    url: U,
    created: Arc<Mutex<Vec<String>>>,
    drop_databases: DropDatabases,
) -> Result<Keeper, String>
where
    I: testcontainers_modules::testcontainers::Image + 'static,
    S: FnOnce() -> F + Send + 'static,
    F: std::future::Future<
            Output = Result<testcontainers_modules::testcontainers::ContainerAsync<I>, String>,
        >,
    U: FnOnce(String, u16) -> String + Send + 'static,
{
    let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot start a runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                match external {
                    Some(admin_url) => {
                        let _ = ready_tx.send(Ok(admin_url.clone()));
                        let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                        drop_databases(admin_url, created).await;
                    }
                    None => {
                        let container = match start().await {
                            Ok(c) => c,
                            Err(e) => {
                                let _ = ready_tx.send(Err(e));
                                return;
                            }
                        };
                        let reached = async {
                            let host = container.get_host().await?;
                            let port = container.get_host_port_ipv4(port).await?;
                            Ok::<_, testcontainers_modules::testcontainers::TestcontainersError>((
                                host.to_string(),
                                port,
                            ))
                        }
                        .await
                        .map(|(host, port)| url(host, port))
                        .map_err(|e| format!("the {what} container has no reachable port: {e}"));
                        let _ = ready_tx.send(reached);
                        let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                        let _ = container.rm().await;
                    }
                }
            });
            let _ = done_tx.send(());
        })
        .map_err(|e| format!("cannot start the {what} server thread: {e}"))?;
    let admin_url = ready_rx
        .recv()
        .map_err(|_| format!("the {what} server thread ended before the server was ready"))??;
    Ok(Keeper {
        admin_url,
        stop: stop_tx,
        done: done_rx,
    })
}

async fn start_container()
-> Result<testcontainers_modules::testcontainers::ContainerAsync<PostgresImage>, String> {
    let image = std::env::var(IMAGE_VAR).ok().filter(|i| !i.is_empty());
    let image = image.as_deref().unwrap_or(DEFAULT_IMAGE);
    let (name, tag) = split_image(image);
    PostgresImage::default()
        .with_name(name)
        .with_tag(tag)
        .with_label("datamig.test", "1")
        // wal_level=logical: `datamig copy --follow` reads changes by logical decoding.
        .with_cmd([
            "-c",
            "fsync=off",
            "-c",
            "max_connections=300",
            "-c",
            "wal_level=logical",
            "-c",
            "max_replication_slots=64",
        ])
        .with_startup_timeout(Duration::from_secs(120))
        .start()
        .await
        .map_err(|e| {
            format!(
                "cannot start the PostgreSQL test container from image {image}: {e}. \
                 Start Docker (or set {IMAGE_VAR} to an image that is present), \
                 or set {DATABASE_URL_VAR} to a server to test against"
            )
        })
}

async fn drop_databases(admin_url: &str, created: &Mutex<Vec<String>>) {
    let names = std::mem::take(&mut *created.lock().unwrap_or_else(|p| p.into_inner()));
    let Ok(mut admin) = PgConnection::connect(admin_url).await else {
        return;
    };
    for name in names {
        let sql = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&name)
        );
        let _ = sqlx::query(AssertSqlSafe(sql)).execute(&mut admin).await;
    }
    let _ = admin.close().await;
}

/// Splits `name:tag` (a registry host's port is not a tag: `host:5000/postgres` has none).
fn split_image(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (image, "latest"),
    }
}

/// Replaces the database of a PostgreSQL URL.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let root = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(query) => format!("{root}/{database}?{query}"),
        None => format!("{root}/{database}"),
    }
}

extern "C" fn cleanup_at_exit() {
    if let Some((stop, done)) = STOP.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = stop.send(());
        let _ = done.recv_timeout(Duration::from_secs(60));
    }
}

#[allow(unsafe_code)]
fn register_cleanup_at_exit() {
    // SAFETY: `atexit` only stores the pointer of an `extern "C" fn()` with no arguments,
    // which runs once when the test binary exits normally (libtest returns from `main`,
    // also when tests failed). The function only uses channels and a `Mutex`.
    unsafe {
        libc::atexit(cleanup_at_exit);
    }
}

#[cfg(test)]
mod tests {
    use super::{split_image, with_database};

    #[test]
    fn image_names_split_at_the_tag() {
        assert_eq!(split_image("postgres:15"), ("postgres", "15"));
        assert_eq!(split_image("local/postgres:15"), ("local/postgres", "15"));
        assert_eq!(
            split_image("host:5000/postgres"),
            ("host:5000/postgres", "latest")
        );
        assert_eq!(split_image("postgres"), ("postgres", "latest"));
    }

    #[test]
    fn the_database_of_a_url_is_replaced() {
        assert_eq!(
            with_database("postgres://u:p@h:5/postgres", "t1"),
            "postgres://u:p@h:5/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h:5", "t1"),
            "postgres://u:p@h:5/t1"
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "t1"),
            "postgres://u@h/t1?sslmode=disable"
        );
    }
}
