//! Connecting, with one-line errors, and applying `sqlx` schema migrations first.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, PgPool};

use crate::opt::GlobalOpts;
use crate::{Failure, exit};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A pool for the database of `--database-url` / `DATABASE_URL`.
pub(crate) async fn connect(global: &GlobalOpts) -> Result<PgPool, Failure> {
    let Some(url) = global.database_url.as_deref().filter(|u| !u.is_empty()) else {
        return Err(Failure::new(
            exit::USAGE,
            "no database given: set DATABASE_URL or pass --database-url",
        ));
    };
    connect_url(url).await
}

/// A pool for the database at `url`.
pub(crate) async fn connect_url(url: &str) -> Result<PgPool, Failure> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "unsupported database URL {}: expected postgres://user:password@host:port/database",
                redact(url)
            ),
        ));
    }
    let options = PgConnectOptions::from_str(url).map_err(|err| {
        Failure::new(
            exit::USAGE,
            format!("invalid database URL {}: {}", redact(url), describe(&err)),
        )
    })?;
    let cannot = |cause: String| {
        Failure::new(
            exit::USAGE,
            format!("cannot connect to the database at {}: {cause}", redact(url)),
        )
    };
    // One direct connection first: it fails fast with the server's own words (wrong
    // password, missing database, connection refused), where a pool would retry until its
    // timeout and report only that it timed out.
    let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
        .await
        .map_err(|_| {
            cannot(format!(
                "no answer within {}",
                humantime::format_duration(CONNECT_TIMEOUT)
            ))
        })?
        .map_err(|err| cannot(describe(&err)))?;
    let _ = probe.close().await;
    Ok(PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_lazy_with(options))
}

/// Applies the `sqlx` schema migrations in `dir` (as `sqlx migrate run`); returns how many
/// were newly applied.
pub(crate) async fn apply_schema(pool: &PgPool, dir: &Path) -> Result<usize, Failure> {
    let migrator = sqlx::migrate::Migrator::new(dir).await.map_err(|err| {
        Failure::new(
            exit::USAGE,
            format!(
                "cannot read the schema migrations in {}: {err}",
                dir.display()
            ),
        )
    })?;
    let count = || async {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await?;
        if !exists {
            return Ok::<i64, sqlx::Error>(0);
        }
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await
    };
    let before = count()
        .await
        .map_err(|err| Failure::from(datamig::Error::Database(err)))?;
    migrator.run(pool).await.map_err(|err| {
        Failure::new(
            exit::MIGRATION_FAILED,
            format!(
                "the schema migrations in {} failed: {err}; no data migration ran",
                dir.display()
            ),
        )
    })?;
    let after = count()
        .await
        .map_err(|err| Failure::from(datamig::Error::Database(err)))?;
    Ok(usize::try_from(after - before).unwrap_or(0))
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
