//! Reaching a fleet's target: one probing connection first (an unreachable target fails in
//! a moment, in the driver's words, instead of after a pool's retries), then a small pool of
//! its own. For a tenant schema, every connection of the pool puts that schema first on its
//! search path (and checks that it exists), so that a body written for one tenant runs for
//! each.

use std::future::Future;
use std::time::Duration;

use sqlx::Pool;

use crate::backend::Backend;
use crate::error::Error;

use super::target::{Target, redact};

/// A row of a targets query: the URL, and the schema.
type TargetRow = (Option<String>, Option<String>);

/// How long a target may take to answer a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Connections of a target's pool: the runner's own (which holds the lock and runs the
/// migrations) and one for what it reads beside it (the ledger after a failed `COMMIT`, a
/// lease's check). Workers of a batched migration open their own.
const POOL_SIZE: u32 = 2;

/// A backend whose databases a fleet can reach: [`Postgres`](crate::Postgres) and
/// [`Sqlite`](crate::Sqlite), each behind its cargo feature. Sealed, like [`Backend`].
pub trait FleetBackend: Backend {
    /// A pool for `target`, after a probing connection; `pooled`: the connections may pass
    /// a transaction pooler (see [`crate::pooler_safe`]).
    #[doc(hidden)]
    fn open_target(
        target: &Target,
        pooled: bool,
    ) -> impl Future<Output = Result<Pool<Self>, Error>> + Send;

    /// The rows of a targets query: its first column, and its second if it has one.
    #[doc(hidden)]
    fn query_targets(
        url: &str,
        sql: &str,
    ) -> impl Future<Output = Result<Vec<TargetRow>, Error>> + Send;
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
        sqlx::Error::Configuration(cause) => format!("invalid URL: {cause}"),
        other => other.to_string(),
    }
}

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

    /// Puts `schema` first on this session's search path (before what the server set);
    /// returns whether it is there, i.e. whether the schema exists (`current_schema()`
    /// skips a schema that does not).
    async fn search_path_first(conn: &mut PgConnection, schema: &str) -> Result<bool, sqlx::Error> {
        sqlx::query(
            "SELECT set_config('search_path', quote_ident($1) || ', ' || current_setting('search_path'), false)",
        )
        .persistent(false)
        .bind(schema)
        .execute(&mut *conn)
        .await?;
        let current: Option<String> = sqlx::query_scalar("SELECT current_schema()::text")
            .persistent(false)
            .fetch_one(&mut *conn)
            .await?;
        Ok(current.as_deref() == Some(schema))
    }

    impl FleetBackend for Postgres {
        async fn open_target(target: &Target, pooled: bool) -> Result<PgPool, Error> {
            // No `extra_float_digits` startup parameter, which PgBouncer refuses with its
            // default settings (as the command line connects).
            let mut options = PgConnectOptions::from_str(target.url())
                .map_err(|err| unreachable(target.name(), describe(&err)))?
                .extra_float_digits(None);
            if pooled {
                options = crate::pooler_safe(options);
            }
            let mut probe =
                tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
                    .await
                    .map_err(|_| unreachable(target.name(), no_answer()))?
                    .map_err(|err| unreachable(target.name(), describe(&err)))?;
            if let Some(schema) = target.schema() {
                let exists = search_path_first(&mut probe, schema).await;
                let _ = probe.close().await;
                if !exists? {
                    return Err(Error::SchemaMissing {
                        target: target.name().to_string(),
                        schema: schema.to_string(),
                    });
                }
            } else {
                let _ = probe.close().await;
            }
            let mut pool = PgPoolOptions::new()
                .max_connections(POOL_SIZE)
                .acquire_timeout(CONNECT_TIMEOUT);
            if let Some(schema) = target.schema() {
                let schema = schema.to_string();
                pool = pool.after_connect(move |conn, _| {
                    let schema = schema.clone();
                    Box::pin(async move {
                        // Checked again on every connection: a migration never runs in the
                        // schema that happens to come next.
                        if search_path_first(conn, &schema).await? {
                            Ok(())
                        } else {
                            Err(sqlx::Error::Configuration(
                                format!("schema {schema} does not exist").into(),
                            ))
                        }
                    })
                });
            }
            Ok(pool.connect_lazy_with(options))
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

    async fn probe(name: &str, options: &SqliteConnectOptions) -> Result<SqliteConnection, Error> {
        tokio::time::timeout(CONNECT_TIMEOUT, SqliteConnection::connect_with(options))
            .await
            .map_err(|_| unreachable(name, no_answer()))?
            .map_err(|err| {
                unreachable(
                    name,
                    format!(
                        "{} (a database file that does not exist yet is created only with \
                         ?mode=rwc at the end of the URL)",
                        describe(&err)
                    ),
                )
            })
    }

    impl FleetBackend for Sqlite {
        async fn open_target(target: &Target, _pooled: bool) -> Result<SqlitePool, Error> {
            let options = SqliteConnectOptions::from_str(target.url())
                .map_err(|err| unreachable(target.name(), describe(&err)))?;
            let _ = probe(target.name(), &options).await?.close().await;
            Ok(SqlitePoolOptions::new()
                .max_connections(POOL_SIZE)
                .acquire_timeout(CONNECT_TIMEOUT)
                .connect_lazy_with(options))
        }

        async fn query_targets(url: &str, sql: &str) -> Result<Vec<TargetRow>, Error> {
            let name = redact(url);
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|err| unreachable(&name, describe(&err)))?;
            let mut conn = probe(&name, &options).await?;
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                .fetch_all(&mut conn)
                .await
                .map_err(|err| query_failed(&err));
            let _ = conn.close().await;
            text_columns(&rows?)
        }
    }
}
