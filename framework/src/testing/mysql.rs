//! A fresh MySQL (MariaDB) database per test, on one server per test binary.

use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let external = std::env::var(MYSQL_URL_VAR).ok().filter(|u| !u.is_empty());
        let keeper_created = Arc::clone(&created);

        std::thread::Builder::new()
            .name("datamig-test-mysql".into())
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
                        Some(url) => {
                            let _ = ready_tx.send(Ok(url.clone()));
                            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                            drop_databases(&url, &keeper_created).await;
                        }
                        None => {
                            let container = match start_container().await {
                                Ok(c) => c,
                                Err(e) => {
                                    let _ = ready_tx.send(Err(e));
                                    return;
                                }
                            };
                            let url =
                                async {
                                    let host = container.get_host().await?;
                                    let port = container.get_host_port_ipv4(3306).await?;
                                    Ok::<
                                        _,
                                        testcontainers_modules::testcontainers::TestcontainersError,
                                    >(format!(
                                        "mysql://root:{ROOT_PASSWORD}@{host}:{port}/mysql"
                                    ))
                                }
                                .await
                                .map_err(|e| {
                                    format!("the MySQL test container has no reachable port: {e}")
                                });
                            let _ = ready_tx.send(url);
                            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                            let _ = container.rm().await;
                        }
                    }
                });
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("cannot start the MySQL test server thread: {e}"))?;

        let admin_url = ready_rx.recv().map_err(|_| {
            "the MySQL test server thread ended before the server was ready".to_string()
        })??;
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
    MariadbImage::default()
        .with_name(name)
        .with_tag(tag)
        .with_label("datamig.test", "1")
        .with_env_var("MARIADB_ROOT_PASSWORD", ROOT_PASSWORD)
        .with_cmd([
            "--innodb-flush-log-at-trx-commit=0",
            "--max-connections=500",
            "--skip-name-resolve",
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
