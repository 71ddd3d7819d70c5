//! A fresh MySQL (MariaDB) database per test, on one server per test binary.

use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Keeper, spawn_keeper};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Connection, MySqlPool};
use testcontainers_modules::mariadb::Mariadb as MariadbImage;
use testcontainers_modules::testcontainers::ImageExt;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use tokio::sync::OnceCell;

use super::split_image;
use crate::error::Error;

/// The variable naming an existing MySQL or MariaDB server to test against
/// (`mysql://root:password@localhost:3306/mysql`): databases are created on it and dropped
/// when the test binary exits.
pub const MYSQL_URL_VAR: &str = "DATAMIG_TEST_MYSQL_URL";
/// The variable naming the MariaDB (or MySQL) image testcontainers starts (`name:tag`).
pub const MYSQL_IMAGE_VAR: &str = "DATAMIG_TEST_MYSQL_IMAGE";
/// The image started when [`MYSQL_IMAGE_VAR`] is not set.
pub const DEFAULT_MYSQL_IMAGE: &str = "mariadb:10.11";

/// The root password of the test container.
const ROOT_PASSWORD: &str = "datamig";

/// The certificate authority (PEM) that signed the TLS certificate of the server
/// [`mysql`] starts: a client that verifies the server (`ssl-mode=VERIFY_CA` and
/// `ssl-ca=FILE`) trusts it. A throwaway authority for tests only; its key is not kept.
pub const MYSQL_TEST_CA_PEM: &str = include_str!("tls/ca.pem");
/// The test server's certificate (for `localhost` and `127.0.0.1`) and key.
const SERVER_CERT_PEM: &str = include_str!("tls/server-cert.pem");
const SERVER_KEY_PEM: &str = include_str!("tls/server-key.pem");
/// Where the container holds them.
const TLS_DIR: &str = "/etc/mysql/datamig-tls";

/// A fresh database on the shared MySQL test server.
#[derive(Debug)]
pub struct MySqlTestDatabase {
    name: String,
    url: String,
    pool: MySqlPool,
}

impl MySqlTestDatabase {
    /// A pool connected to this database.
    pub fn pool(&self) -> &MySqlPool {
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

/// Creates a fresh, empty database on the MySQL test server (started on first use: the
/// server at `DATAMIG_TEST_MYSQL_URL`, or a container of `DATAMIG_TEST_MYSQL_IMAGE`,
/// default `mariadb:10.11`, removed when the test binary exits) and connects to it.
///
/// ```no_run
/// #[tokio::test]
/// async fn backfill_runs_on_mariadb() -> anyhow::Result<()> {
///     let db = datamig::testing::mysql().await?;
///     sqlx::query("CREATE TABLE users (id bigint PRIMARY KEY)").execute(db.pool()).await?;
///     // ... seed, run the migrator, assert on rows
///     Ok(())
/// }
/// # fn main() {}
/// ```
///
/// # Errors
///
/// [`Error::Runtime`] when the server cannot be started or reached, with what to do;
/// [`Error::Database`] when creating the database fails.
pub async fn mysql() -> Result<MySqlTestDatabase, Error> {
    let server = SERVER
        .get_or_init(|| async {
            tokio::task::spawn_blocking(Server::start)
                .await
                .unwrap_or_else(|e| Err(format!("the MySQL test server thread failed: {e}")))
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
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
        .execute(&mut admin)
        .await?;
    server
        .created
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(name.clone());
    admin.close().await?;

    let url = with_database(&server.admin_url, &name);
    let options = MySqlConnectOptions::from_str(&url)?;
    let pool = MySqlPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await?;
    Ok(MySqlTestDatabase { name, url, pool })
}

/// The plans (`EXPLAIN`, one line per table each reads: `table type key rows`) of the
/// statements with which the runner finds the next batch of a batched `migration` on MySQL:
/// the one that reads a whole batch's last key at its offset, then the one that counts a
/// shorter last batch. The first batch's, or, with `after_first`, the second's (bounded
/// below by the first batch's last key). For a test that proves each batch is an index range
/// scan (`range` on the key's index), not a read of the whole table (`ALL`).
///
/// # Errors
///
/// [`Error::Config`] for a migration that is not batched or whose key the runner refuses;
/// [`Error::Database`].
pub async fn mysql_next_batch_plan(
    conn: &mut MySqlConnection,
    migration: &crate::Migration,
    after_first: bool,
) -> Result<String, Error> {
    use crate::backend::steps::WalkSteps;
    let spec = migration
        .batch()
        .ok_or_else(|| Error::Config(format!("migration {} is not batched", migration.id())))?;
    let (shape, _) =
        crate::runner::batch_key::<sqlx::MySql>(conn, migration.id(), spec, true).await?;
    let after = if after_first {
        <sqlx::MySql as WalkSteps>::next_batch(conn, &shape, None, None, spec.size())
            .await?
            .map(|(key, _)| key)
    } else {
        None
    };
    let skip = crate::key::KeyValue::Integer(i64::from(spec.size().max(1)) - 1);
    let size = crate::key::KeyValue::Integer(i64::from(spec.size()));
    let mut lines = Vec::new();
    for (sql, last) in [
        (
            crate::backend::mysql::full_batch_sql(&shape, after.is_some(), false),
            &skip,
        ),
        (
            crate::backend::mysql::next_batch_sql(&shape, after.is_some(), false),
            &size,
        ),
    ] {
        let values: Vec<&crate::key::KeyValue> = after
            .as_ref()
            .map(crate::Key::values)
            .unwrap_or_default()
            .iter()
            .chain([last])
            .collect();
        lines.extend(explain(conn, &sql, &values).await?);
    }
    Ok(lines.join("\n"))
}

/// `EXPLAIN` of a keyed statement, a line per table it reads: `table type key rows`.
async fn explain(
    conn: &mut MySqlConnection,
    sql: &str,
    values: &[&crate::key::KeyValue],
) -> Result<Vec<String>, Error> {
    use sqlx::Row;
    let (text, numbers) = crate::backend::mysql::keyed(sql);
    let rows = crate::backend::mysql::bind_keyed(
        sqlx::query(AssertSqlSafe(format!("EXPLAIN {text}"))),
        &numbers,
        values,
    )
    .fetch_all(conn)
    .await?;
    let mut lines = Vec::new();
    for row in &rows {
        let text = |name: &str| -> String {
            row.try_get::<Option<String>, _>(name)
                .ok()
                .flatten()
                .unwrap_or_else(|| "NULL".to_string())
        };
        let estimate = row
            .try_get::<Option<u64>, _>("rows")
            .ok()
            .flatten()
            .map_or_else(|| "NULL".to_string(), |n| n.to_string());
        lines.push(format!(
            "{} {} {} {estimate}",
            text("table"),
            text("type"),
            text("key")
        ));
    }
    Ok(lines)
}

async fn connect_with_retry(url: &str) -> Result<MySqlConnection, Error> {
    let mut attempt = 0;
    loop {
        match MySqlConnection::connect(url).await {
            Ok(conn) => return Ok(conn),
            // The server may still be finishing its start after its ready line.
            Err(_) if attempt < 40 => {
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
    /// As the PostgreSQL server of `testing`: the container is owned by a keeper thread
    /// with its own runtime, which outlives every test's runtime.
    fn start() -> Result<Server, String> {
        let created = Arc::new(Mutex::new(Vec::new()));
        let external = std::env::var(MYSQL_URL_VAR).ok().filter(|u| !u.is_empty());
        let Keeper {
            admin_url,
            stop: stop_tx,
            done: done_rx,
        } = spawn_keeper(
            "MySQL test",
            "datamig-test-mysql",
            external,
            start_container,
            3306,
            |host, port| format!("mysql://root:{ROOT_PASSWORD}@{host}:{port}/mysql"),
            Arc::clone(&created),
            |url, created| Box::pin(async move { drop_databases(&url, &created).await }),
        )?;
        *STOP.lock().unwrap_or_else(|p| p.into_inner()) = Some((stop_tx, done_rx));
        register_cleanup_at_exit();
        Ok(Server { admin_url, created })
    }
}

async fn start_container()
-> Result<testcontainers_modules::testcontainers::ContainerAsync<MariadbImage>, String> {
    let image = std::env::var(MYSQL_IMAGE_VAR)
        .ok()
        .filter(|i| !i.is_empty());
    let image = image.as_deref().unwrap_or(DEFAULT_MYSQL_IMAGE);
    let (name, tag) = split_image(image);
    // Durability is not what the tests measure: the redo log is flushed once a second.
    // TLS is on (clients choose: sqlx prefers it), with a certificate of the test CA.
    MariadbImage::default()
        .with_name(name)
        .with_tag(tag)
        .with_label("datamig.test", "1")
        .with_env_var("MARIADB_ROOT_PASSWORD", ROOT_PASSWORD)
        .with_copy_to(
            format!("{TLS_DIR}/ca.pem"),
            MYSQL_TEST_CA_PEM.as_bytes().to_vec(),
        )
        .with_copy_to(
            format!("{TLS_DIR}/server-cert.pem"),
            SERVER_CERT_PEM.as_bytes().to_vec(),
        )
        .with_copy_to(
            format!("{TLS_DIR}/server-key.pem"),
            SERVER_KEY_PEM.as_bytes().to_vec(),
        )
        .with_cmd([
            "--innodb-flush-log-at-trx-commit=0".to_string(),
            "--max-connections=500".to_string(),
            "--skip-name-resolve".to_string(),
            format!("--ssl-ca={TLS_DIR}/ca.pem"),
            format!("--ssl-cert={TLS_DIR}/server-cert.pem"),
            format!("--ssl-key={TLS_DIR}/server-key.pem"),
        ])
        .with_startup_timeout(Duration::from_secs(120))
        .start()
        .await
        .map_err(|e| {
            format!(
                "cannot start the MariaDB test container from image {image}: {e}. \
                 Start Docker (or set {MYSQL_IMAGE_VAR} to an image that is present: \
                 scripts/test-env.sh builds one from Debian's packages), \
                 or set {MYSQL_URL_VAR} to a server to test against"
            )
        })
}

async fn drop_databases(admin_url: &str, created: &Mutex<Vec<String>>) {
    let names = std::mem::take(&mut *created.lock().unwrap_or_else(|p| p.into_inner()));
    let Ok(mut admin) = MySqlConnection::connect(admin_url).await else {
        return;
    };
    for name in names {
        let sql = format!("DROP DATABASE IF EXISTS `{name}`");
        let _ = sqlx::query(AssertSqlSafe(sql)).execute(&mut admin).await;
    }
    let _ = admin.close().await;
}

/// Replaces the database of a MySQL URL.
fn with_database(url: &str, database: &str) -> String {
    super::with_database(url, database)
}

extern "C" fn cleanup_at_exit() {
    if let Some((stop, done)) = STOP.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = stop.send(());
        let _ = done.recv_timeout(Duration::from_secs(60));
    }
}

#[allow(unsafe_code)]
fn register_cleanup_at_exit() {
    // SAFETY: as in `testing`: `atexit` stores the pointer of an `extern "C" fn()` that
    // only uses channels and a `Mutex`.
    unsafe {
        libc::atexit(cleanup_at_exit);
    }
}
