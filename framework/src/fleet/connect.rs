//! Reaching a fleet's targets. The targets of one database share its pool (`pools.rs`);
//! each connection the pool hands a target is first reset for it: its session settings
//! back to their defaults, its temporary objects dropped, and, for a tenant schema, that
//! schema first on its search path, so that a body written for one tenant runs for each.
//! Which target is asking is a task-local value set around each target's work
//! ([`for_target`]): the pool calls its hooks inside the acquiring task.

use std::future::Future;
use std::time::Duration;

use sqlx::Pool;

use crate::backend::Backend;
use crate::error::Error;

use super::target::Target;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
use super::target::redact;

/// A row of a targets query: the URL, and the schema.
type TargetRow = (Option<String>, Option<String>);

/// How long a target may take to answer a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

tokio::task_local! {
    /// The target whose work is being polled: its schema, if it is a tenant schema.
    static TARGET: Option<String>;
}

/// Runs `work` as `target`'s: the connections its pool hands out are reset for it.
pub(super) async fn for_target<F: Future>(target: &Target, work: F) -> F::Output {
    TARGET
        .scope(target.schema().map(str::to_string), work)
        .await
}

/// A backend whose databases a fleet can reach: [`Postgres`](crate::Postgres) and
/// [`Sqlite`](crate::Sqlite), each behind its cargo feature. Sealed, like [`Backend`].
pub trait FleetBackend: Backend {
    /// The pool of `target`'s database, of at most `size` connections, opened lazily,
    /// after asking its server whether it answers at all (a refused connection then fails
    /// at once, not after the pool's retries). `pooled`: the connections may pass a
    /// transaction pooler (see [`crate::pooler_safe`]).
    #[doc(hidden)]
    fn open_database(
        target: &Target,
        pooled: bool,
        size: u32,
    ) -> impl Future<Output = Result<Pool<Self>, Error>> + Send;

    /// Checks that `target` can be worked on through `pool` (it connects; its schema
    /// exists), inside [`for_target`].
    #[doc(hidden)]
    fn check_target(
        pool: &Pool<Self>,
        target: &Target,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The rows of a targets query: its first column, and its second if it has one.
    #[doc(hidden)]
    fn query_targets(
        url: &str,
        sql: &str,
    ) -> impl Future<Output = Result<Vec<TargetRow>, Error>> + Send;
}

/// Waits until the pool holds an idle connection again. A connection dropped goes back to
/// its pool in a task of its own, after a round trip that tests it: without this wait, the
/// runner's first acquire right after a check would open another connection.
#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
async fn returned<DB: sqlx::Database>(pool: &Pool<DB>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while pool.num_idle() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Fails with [`Error::BehindPooler`] when a transaction pooler stands between the fleet
/// and `target`'s database (the advisory lock would not hold there), as a run checks.
pub(super) async fn no_pooler<DB: FleetBackend>(
    pool: &Pool<DB>,
    target: &Target,
) -> Result<(), Error> {
    let mut conn = for_target(target, pool.acquire())
        .await
        .map_err(|err| unreachable(target.name(), describe(&err)))?;
    // Plain statements, outside a transaction: as the runner lock's own check.
    match DB::pooler_evidence(&mut conn, &pool.connect_options()).await? {
        Some(evidence) => Err(Error::BehindPooler { evidence }),
        None => Ok(()),
    }
}

fn unreachable(target: &str, reason: String) -> Error {
    Error::Unreachable {
        target: target.to_string(),
        reason,
    }
}

/// A connection failure in words (the URL is named by the caller, without its password).
fn describe(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => db.message().to_string(),
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::PoolTimedOut => {
            format!("no connection within {} s", CONNECT_TIMEOUT.as_secs())
        }
        sqlx::Error::Configuration(cause) => format!("invalid URL: {cause}"),
        other => other.to_string(),
    }
}

#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
fn no_answer() -> String {
    format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())
}

/// The first column of each row, and its second if it has one, as text.
#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
fn text_columns<R: sqlx::Row>(rows: &[R]) -> Result<Vec<TargetRow>, Error>
where
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    rows.iter()
        .map(|row| {
            let schema = if row.len() > 1 {
                row.try_get::<Option<String>, _>(1)?
            } else {
                None
            };
            Ok((row.try_get::<Option<String>, _>(0)?, schema))
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(|err| query_failed(&err))
}

/// A targets query that failed, or whose columns are not text.
fn query_failed(err: &sqlx::Error) -> Error {
    Error::Config(format!(
        "the targets query failed: {}; it returns a URL (text, or NULL for this database) \
         and optionally a schema (text)",
        crate::error::describe_sqlx(err)
    ))
}

#[cfg(feature = "postgres")]
mod postgres {
    use std::str::FromStr;

    use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
    use sqlx::{Connection, PgPool, Postgres};

    use super::*;
    use crate::sql::quote_ident;

    /// Resets a session for the target being polled, in one round trip: its settings back
    /// to what it started with (`RESET ALL`: what a body or an earlier target `SET`), its
    /// temporary objects dropped, and a tenant's schema first on its search path, before
    /// the server's. Outside a target, it fails: no connection is handed out unset.
    async fn reset_for_target(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let schema = TARGET.try_with(Clone::clone).map_err(|_| {
            sqlx::Error::Configuration(
                "a fleet's connection was asked for outside its targets".into(),
            )
        })?;
        let mut sql = "RESET ALL; DISCARD TEMP;".to_string();
        if let Some(schema) = schema {
            // The schema's quoted name, as a string literal.
            let name = quote_ident(&schema).replace('\'', "''");
            sql.push_str(&format!(
                " SELECT set_config('search_path', '{name}, ' || current_setting('search_path'), false);"
            ));
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Whether the server at `options` takes a connection at all (TCP, or its Unix
    /// socket): a refused one is named at once. The pool would retry it until its timeout.
    async fn answers(name: &str, options: &PgConnectOptions) -> Result<(), Error> {
        let connect = async {
            match options.get_socket() {
                #[cfg(unix)]
                Some(dir) => {
                    let path = dir.join(format!(".s.PGSQL.{}", options.get_port()));
                    tokio::net::UnixStream::connect(path).await.map(drop)
                }
                _ => tokio::net::TcpStream::connect((options.get_host(), options.get_port()))
                    .await
                    .map(drop),
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(unreachable(name, err.to_string())),
            Err(_) => Err(unreachable(name, no_answer())),
        }
    }

    impl FleetBackend for Postgres {
        async fn open_database(target: &Target, pooled: bool, size: u32) -> Result<PgPool, Error> {
            // No `extra_float_digits` startup parameter, which PgBouncer refuses with its
            // default settings (as the command line connects).
            let mut options = PgConnectOptions::from_str(target.url())
                .map_err(|err| unreachable(target.name(), describe(&err)))?
                .extra_float_digits(None);
            if pooled {
                options = crate::session::pooler_safe(options);
            }
            answers(target.name(), &options).await?;
            Ok(PgPoolOptions::new()
                .max_connections(size)
                .acquire_timeout(CONNECT_TIMEOUT)
                // The reset is a round trip already: no ping before it.
                .test_before_acquire(false)
                .after_connect(|conn, _| Box::pin(reset_for_target(conn)))
                .before_acquire(|conn, _| {
                    Box::pin(async move { reset_for_target(conn).await.map(|()| true) })
                })
                .connect_lazy_with(options))
        }

        async fn check_target(pool: &PgPool, target: &Target) -> Result<(), Error> {
            let mut conn = pool
                .acquire()
                .await
                .map_err(|err| unreachable(target.name(), describe(&err)))?;
            if let Some(schema) = target.schema() {
                // `current_schema()` skips a schema that does not exist: a migration never
                // runs in the schema that happens to come next.
                let current: Option<String> = sqlx::query_scalar("SELECT current_schema()::text")
                    .persistent(false)
                    .fetch_one(&mut *conn)
                    .await?;
                if current.as_deref() != Some(schema) {
                    return Err(Error::SchemaMissing {
                        target: target.name().to_string(),
                        schema: schema.to_string(),
                    });
                }
            }
            drop(conn);
            returned(pool).await;
            Ok(())
        }

        async fn query_targets(url: &str, sql: &str) -> Result<Vec<TargetRow>, Error> {
            let name = redact(url);
            let options = PgConnectOptions::from_str(url)
                .map_err(|err| unreachable(&name, describe(&err)))?
                .extra_float_digits(None);
            let mut conn =
                tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
                    .await
                    .map_err(|_| unreachable(&name, no_answer()))?
                    .map_err(|err| unreachable(&name, describe(&err)))?;
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                .persistent(false)
                .fetch_all(&mut conn)
                .await
                .map_err(|err| query_failed(&err));
            let _ = conn.close().await;
            text_columns(&rows?)
        }
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use std::str::FromStr;

    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqlitePoolOptions};
    use sqlx::{Connection, Sqlite, SqlitePool};

    use super::*;

    fn cannot_open(name: &str, err: &sqlx::Error) -> Error {
        unreachable(
            name,
            format!(
                "{} (a database file that does not exist yet is created only with ?mode=rwc \
                 at the end of the URL)",
                describe(err)
            ),
        )
    }

    impl FleetBackend for Sqlite {
        async fn open_database(
            target: &Target,
            _pooled: bool,
            size: u32,
        ) -> Result<SqlitePool, Error> {
            let options = SqliteConnectOptions::from_str(target.url())
                .map_err(|err| unreachable(target.name(), describe(&err)))?;
            Ok(SqlitePoolOptions::new()
                .max_connections(size)
                .acquire_timeout(CONNECT_TIMEOUT)
                .connect_lazy_with(options))
        }

        async fn check_target(pool: &SqlitePool, target: &Target) -> Result<(), Error> {
            // The first connection opens the file.
            drop(
                pool.acquire()
                    .await
                    .map_err(|err| cannot_open(target.name(), &err))?,
            );
            returned(pool).await;
            Ok(())
        }

        async fn query_targets(url: &str, sql: &str) -> Result<Vec<TargetRow>, Error> {
            let name = redact(url);
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|err| unreachable(&name, describe(&err)))?;
            let mut conn =
                tokio::time::timeout(CONNECT_TIMEOUT, SqliteConnection::connect_with(&options))
                    .await
                    .map_err(|_| unreachable(&name, no_answer()))?
                    .map_err(|err| cannot_open(&name, &err))?;
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                .fetch_all(&mut conn)
                .await
                .map_err(|err| query_failed(&err));
            let _ = conn.close().await;
            text_columns(&rows?)
        }
    }
}
