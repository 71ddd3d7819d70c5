//! Connecting, with one-line errors, and applying `sqlx` schema migrations first.
//!
//! The URL's scheme picks the backend: `postgres://` (or `postgresql://`), `sqlite:`, or
//! `mysql://` (or `mariadb://`) for MySQL and MariaDB.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use datamig::{Backend, Migrator, MySql, Postgres, Sqlite};
use sqlx::migrate::Migrate;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqlitePoolOptions};
use sqlx::{Connection, Pool};

use crate::opt::GlobalOpts;
use crate::{Failure, exit};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The backend a database URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    Postgres,
    Sqlite,
    /// MySQL or MariaDB (`mysql://`, `mariadb://`).
    MySql,
}

/// The URL of `--database-url` / `DATABASE_URL`, and its backend.
pub(crate) fn database_url(global: &GlobalOpts) -> Result<(&str, Scheme), Failure> {
    let Some(url) = global.database_url.as_deref().filter(|u| !u.is_empty()) else {
        return Err(Failure::new(
            exit::USAGE,
            "no database given: set DATABASE_URL or pass --database-url",
        ));
    };
    Ok((url, scheme(url)?))
}

/// The backend of `url`.
pub(crate) fn scheme(url: &str) -> Result<Scheme, Failure> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Scheme::Postgres)
    } else if url.starts_with("sqlite:") {
        Ok(Scheme::Sqlite)
    } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        Ok(Scheme::MySql)
    } else {
        Err(Failure::new(
            exit::USAGE,
            format!(
                "unsupported database URL {}: expected postgres://user:password@host:port/database, \
                 mysql://user:password@host:port/database (or mariadb://..) \
                 or sqlite:path/to/file.db",
                redact(url)
            ),
        ))
    }
}

/// What the command line needs of a backend beyond [`Backend`]: connecting, and running
/// `sqlx` schema migrations.
pub(crate) trait CliBackend: Backend {
    /// A pool for the database at `url`, after one probing connection (a pool would retry
    /// until its timeout and report only that it timed out; the probe fails fast with the
    /// database's own words).
    ///
    /// `pooled` (with `--lock lease`): the connection may pass a transaction pooler, so
    /// sqlx keeps no statement cache (see `datamig::pooler_safe`).
    async fn connect(url: &str, pooled: bool) -> Result<Pool<Self>, Failure>;

    /// Applies the `sqlx` schema migrations in `dir` (as `sqlx migrate run`); returns how
    /// many were newly applied. (The generic [`apply_schema`] needs `Migrate` on the
    /// connection, which a bound on this trait could not pass on to its users.)
    async fn apply_schema(pool: &Pool<Self>, dir: &Path) -> Result<usize, Failure>;

    /// Adds the replay-lag health check (`run --max-replay-lag`).
    fn max_replay_lag(migrator: Migrator<Self>, max: Duration) -> Result<Migrator<Self>, Failure>;
}

impl CliBackend for Postgres {
    fn max_replay_lag(migrator: Migrator<Self>, max: Duration) -> Result<Migrator<Self>, Failure> {
        Ok(migrator.max_replay_lag(max))
    }

    async fn connect(url: &str, pooled: bool) -> Result<Pool<Self>, Failure> {
        // No `extra_float_digits` startup parameter, which PgBouncer refuses with its
        // default settings: every reading command works through a pooler as it is.
        let mut options = PgConnectOptions::from_str(url)
            .map_err(|err| invalid(url, &err))?
            .extra_float_digits(None);
        if pooled {
            options = datamig::pooler_safe(options);
        }
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| no_answer(url))?
            .map_err(|err| cannot_connect(url, &err, ""))?;
        let _ = probe.close().await;
        Ok(PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options))
    }

    async fn apply_schema(pool: &Pool<Self>, dir: &Path) -> Result<usize, Failure> {
        apply_schema(pool, dir).await
    }
}

impl CliBackend for Sqlite {
    fn max_replay_lag(_: Migrator<Self>, _: Duration) -> Result<Migrator<Self>, Failure> {
        Err(Failure::new(
            exit::USAGE,
            "--max-replay-lag watches the standbys of a PostgreSQL server; SQLite has none",
        ))
    }

    async fn connect(url: &str, _pooled: bool) -> Result<Pool<Self>, Failure> {
        let options = SqliteConnectOptions::from_str(url).map_err(|err| invalid(url, &err))?;
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, SqliteConnection::connect_with(&options))
            .await
            .map_err(|_| no_answer(url))?
            .map_err(|err| {
                cannot_connect(
                    url,
                    &err,
                    " (a database file that does not exist yet is created only with ?mode=rwc \
                     at the end of the URL)",
                )
            })?;
        let _ = probe.close().await;
        Ok(SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options))
    }

    async fn apply_schema(pool: &Pool<Self>, dir: &Path) -> Result<usize, Failure> {
        apply_schema(pool, dir).await
    }
}

impl CliBackend for MySql {
    fn max_replay_lag(_: Migrator<Self>, _: Duration) -> Result<Migrator<Self>, Failure> {
        Err(Failure::new(
            exit::USAGE,
            "--max-replay-lag watches the standbys of a PostgreSQL server; it is not available \
             on MySQL and MariaDB",
        ))
    }

    async fn connect(url: &str, _pooled: bool) -> Result<Pool<Self>, Failure> {
        let options = mysql_options(url)?;
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, MySqlConnection::connect_with(&options))
            .await
            .map_err(|_| no_answer(url))?
            .map_err(|err| cannot_connect(url, &err, ""))?;
        let _ = probe.close().await;
        Ok(MySqlPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options))
    }

    async fn apply_schema(pool: &Pool<Self>, dir: &Path) -> Result<usize, Failure> {
        apply_schema(pool, dir).await
    }
}

/// The connection options of a `mysql://` or `mariadb://` URL (sqlx reads `mysql://`;
/// `mariadb://` names the same protocol).
pub(crate) fn mysql_options(url: &str) -> Result<MySqlConnectOptions, Failure> {
    let url_for_sqlx = match url.strip_prefix("mariadb://") {
        Some(rest) => format!("mysql://{rest}"),
        None => url.to_string(),
    };
    MySqlConnectOptions::from_str(&url_for_sqlx).map_err(|err| invalid(url, &err))
}

/// Applies the `sqlx` schema migrations in `dir`; returns how many were newly applied.
async fn apply_schema<DB: Backend>(pool: &Pool<DB>, dir: &Path) -> Result<usize, Failure>
where
    DB::Connection: Migrate,
{
    let migrator = sqlx::migrate::Migrator::new(dir).await.map_err(|err| {
        Failure::new(
            exit::USAGE,
            format!(
                "cannot read the schema migrations in {}: {err}",
                dir.display()
            ),
        )
    })?;
    // Counted by sqlx's own bookkeeping, the same on every backend.
    let applied = async || -> Result<usize, sqlx::migrate::MigrateError> {
        let mut conn = pool.acquire().await?;
        conn.ensure_migrations_table(&migrator.table_name).await?;
        Ok(conn
            .list_applied_migrations(&migrator.table_name)
            .await?
            .len())
    };
    let before = applied().await.map_err(|err| schema_failed(dir, &err))?;
    migrator
        .run(pool)
        .await
        .map_err(|err| schema_failed(dir, &err))?;
    let after = applied().await.map_err(|err| schema_failed(dir, &err))?;
    Ok(after.saturating_sub(before))
}

fn schema_failed(dir: &Path, err: &sqlx::migrate::MigrateError) -> Failure {
    Failure::new(
        exit::MIGRATION_FAILED,
        format!(
            "the schema migrations in {} failed: {err}; no data migration ran",
            dir.display()
        ),
    )
}

/// The connection options of a `postgres://` URL (a malformed URL is a usage error).
pub(crate) fn postgres_options(url: &str) -> Result<PgConnectOptions, Failure> {
    PgConnectOptions::from_str(url).map_err(|err| invalid(url, &err))
}

/// The connection options of a `sqlite:` URL (a malformed URL is a usage error).
pub(crate) fn sqlite_options(url: &str) -> Result<SqliteConnectOptions, Failure> {
    SqliteConnectOptions::from_str(url).map_err(|err| invalid(url, &err))
}

fn invalid(url: &str, err: &sqlx::Error) -> Failure {
    Failure::new(
        exit::USAGE,
        format!("invalid database URL {}: {}", redact(url), describe(err)),
    )
}

fn no_answer(url: &str) -> Failure {
    Failure::new(
        exit::USAGE,
        format!(
            "cannot connect to the database at {}: no answer within {}",
            redact(url),
            humantime::format_duration(CONNECT_TIMEOUT)
        ),
    )
}

fn cannot_connect(url: &str, err: &sqlx::Error, hint: &str) -> Failure {
    Failure::new(
        exit::USAGE,
        format!(
            "cannot connect to the database at {}: {}{hint}",
            redact(url),
            describe(err)
        ),
    )
}

/// The cause of a connection failure, in words.
fn describe(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => db.message().to_string(),
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::PoolTimedOut => "timed out".to_string(),
        sqlx::Error::Configuration(cause) => format!("invalid URL: {cause}"),
        other => other.to_string(),
    }
}

/// The URL with its password replaced by `***`, for messages.
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &authority[..colon],
                &url[scheme_end + at..]
            ),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
