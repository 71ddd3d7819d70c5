//! SQLite's runner lock: a row instead of advisory locks.
//!
//! SQLite has one writer at a time per database file, and no sessions other processes can
//! see. The runner lock is therefore a row of `<ledger>_lock` holding the runner's host,
//! process id and a token of its lock; a row whose runner is gone (a process of this host
//! that no longer runs, or a lock of this process that was dropped) is stale and taken over.
//! A runner's transactions die with its process, so a stale row never hides half-applied
//! work.

use std::time::Duration;

use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Row, Sqlite};

use super::sql::table_exists;
use crate::backend::lock_token::LockToken;
use crate::backend::steps::{ConnectionSteps, LockSteps};
use crate::error::Error;
use crate::ledger::LedgerConfig;
use crate::session::{SessionInfo, host_name, local_process_alive};

impl LockSteps for Sqlite {
    async fn try_lock(
        conn: &mut SqliteConnection,
        config: &LedgerConfig,
        token: &LockToken,
    ) -> Result<bool, sqlx::Error> {
        match take_lock_row(conn, config, token).await {
            Ok(taken) => Ok(taken),
            // Another connection is writing (a migration's transaction): the lock is as
            // good as held; the runner polls again.
            Err(err) if Self::is_lock_timeout(&err) => Ok(false),
            Err(err) => Err(err),
        }
    }

    async fn unlock(
        conn: &mut SqliteConnection,
        config: &LedgerConfig,
        token: &LockToken,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE id = 1 AND token = $1",
            config.lock_ident()
        )))
        .bind(token.as_str())
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn tag_session(_conn: &mut SqliteConnection, _name: &str) -> Result<(), sqlx::Error> {
        // No server sessions: the lock row names its holder instead.
        Ok(())
    }

    async fn lock_holders(
        conn: &mut SqliteConnection,
        config: &LedgerConfig,
    ) -> Result<Vec<SessionInfo>, sqlx::Error> {
        if !table_exists(conn, config.schema_name(), &config.lock_table_name()).await? {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT host, pid, acquired_at,
                    CAST((julianday('now') - julianday(acquired_at)) * 86400000 AS INTEGER) AS age_ms
             FROM {} WHERE id = 1",
            config.lock_ident()
        )))
        .fetch_all(conn)
        .await?;
        rows.iter()
            .map(|row| {
                let host: String = row.try_get("host")?;
                let pid: i64 = row.try_get("pid")?;
                let acquired_at: String = row.try_get("acquired_at")?;
                Ok(SessionInfo {
                    pid: i32::try_from(pid).unwrap_or(i32::MAX),
                    user: None,
                    application_name: format!("datamig/{host}/{pid}"),
                    client_addr: None,
                    state: Some(format!("holds the lock row since {acquired_at}")),
                    transaction_age_ms: None,
                    state_age_ms: row.try_get("age_ms")?,
                    wait_event_type: None,
                    blocked_by: Vec::new(),
                    query: None,
                    lease: false,
                })
            })
            .collect()
    }

    async fn release_lock_holder(
        conn: &mut SqliteConnection,
        config: &LedgerConfig,
        pid: i32,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE id = 1 AND pid = $1",
            config.lock_ident()
        )))
        .bind(i64::from(pid))
        .execute(conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn blocking_sessions(
        _conn: &mut SqliteConnection,
    ) -> Result<Vec<SessionInfo>, sqlx::Error> {
        // SQLite shows no other connections; a blocked writer sees SQLITE_BUSY instead.
        Ok(Vec::new())
    }

    async fn pooler_evidence(
        _conn: &mut SqliteConnection,
        _options: &sqlx::sqlite::SqliteConnectOptions,
    ) -> Result<Option<String>, sqlx::Error> {
        Ok(None)
    }

    async fn reset_statements(_conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        Ok(())
    }

    async fn try_lease(
        conn: &mut SqliteConnection,
        config: &LedgerConfig,
        token: &LockToken,
        _ttl: Duration,
    ) -> Result<bool, Error> {
        // SQLite's lock is a row already, taken under the file's write lock, and no pooler
        // stands between a process and its file: the lease is that row.
        Ok(Self::try_lock(conn, config, token).await?)
    }

    async fn renew_lease(
        _conn: &mut SqliteConnection,
        _config: &LedgerConfig,
        _token: &str,
        _ttl: Duration,
    ) -> Result<bool, sqlx::Error> {
        Ok(true)
    }

    async fn release_lease(
        conn: &mut SqliteConnection,
        config: &LedgerConfig,
        token: &LockToken,
    ) -> Result<(), sqlx::Error> {
        Self::unlock(conn, config, token).await
    }

    async fn lease_lost(
        _conn: &mut SqliteConnection,
        _config: &LedgerConfig,
        _token: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        Ok(None)
    }
}

/// Takes the lock row if it is free or stale; `true` when this runner now holds it.
async fn take_lock_row(
    conn: &mut SqliteConnection,
    config: &LedgerConfig,
    token: &LockToken,
) -> Result<bool, sqlx::Error> {
    let lock = config.lock_ident();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {lock} (
            id          INTEGER PRIMARY KEY CHECK (id = 1),
            host        TEXT NOT NULL,
            pid         INTEGER NOT NULL,
            token       TEXT NOT NULL,
            acquired_at TEXT NOT NULL
        )"
    )))
    .execute(&mut *conn)
    .await?;
    let host = host_name();
    let pid = i64::from(std::process::id());
    for _ in 0..2 {
        let taken = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {lock} (id, host, pid, token, acquired_at)
             VALUES (1, $1, $2, $3, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
             ON CONFLICT (id) DO NOTHING"
        )))
        .bind(&host)
        .bind(pid)
        .bind(token.as_str())
        .execute(&mut *conn)
        .await?
        .rows_affected()
            == 1;
        if taken {
            return Ok(true);
        }
        let holder: Option<(String, i64, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT host, pid, token FROM {lock} WHERE id = 1"
        )))
        .fetch_optional(&mut *conn)
        .await?;
        let Some((holder_host, holder_pid, holder_token)) = holder else {
            continue;
        };
        // A holder on another host cannot be checked from here: it holds until it lets go
        // or an operator runs `datamig unlock` there.
        let stale = holder_host == host
            && if holder_pid == pid {
                !LockToken::is_live(&holder_token)
            } else {
                u32::try_from(holder_pid).is_ok_and(|p| !local_process_alive(p))
            };
        if !stale {
            return Ok(false);
        }
        // Removed only if it is still that holder's row.
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {lock} WHERE id = 1 AND token = $1"
        )))
        .bind(&holder_token)
        .execute(&mut *conn)
        .await?;
    }
    Ok(false)
}
