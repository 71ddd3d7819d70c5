//! PostgreSQL's runner lock: the session advisory lock, the lease that stands in for it
//! through a transaction pooler (with the fence every transaction checks), the evidence of
//! a pooler, and the sessions that hold the lock or block a migration.

use std::time::Duration;

use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{AssertSqlSafe, Connection, Postgres, Row};

use super::sql::{millis, query, query_as, query_scalar};
use crate::backend::isolation::begin_read_committed;
use crate::backend::lock_token::LockToken;
use crate::backend::steps::{ConnectionSteps, LockSteps};
use crate::error::Error;
use crate::ledger::LedgerConfig;
use crate::session::SessionInfo;
use crate::sql::quote_ident;

impl LockSteps for Postgres {
    async fn try_lock(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        _token: &LockToken,
    ) -> Result<bool, sqlx::Error> {
        // A session-level advisory lock: it dies with the session, so a runner that is
        // killed cannot leave it behind.
        let key = lock_key(&mut *conn, config).await?;
        let taken: bool = query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        // Runners of one ledger with the other lock (during a move to a pooler) must keep
        // out too: a live lease holds the ledger. (A lease is taken under the same key as a
        // transaction-level lock, so no lease can appear between these two statements.)
        if taken && lease_holder(&mut *conn, config).await?.is_some() {
            query("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .execute(conn)
                .await?;
            return Ok(false);
        }
        Ok(taken)
    }

    async fn unlock(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        _token: &LockToken,
    ) -> Result<(), sqlx::Error> {
        let key = lock_key(&mut *conn, config).await?;
        query("SELECT pg_advisory_unlock($1)")
            .bind(key)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn tag_session(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
        query("SELECT set_config('application_name', $1, false)")
            .bind(name)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn lock_holders(
        conn: &mut PgConnection,
        config: &LedgerConfig,
    ) -> Result<Vec<SessionInfo>, sqlx::Error> {
        let key = lock_key(&mut *conn, config).await?;
        // A bigint advisory key is stored as two 32-bit halves.
        let sql = format!(
            "{SESSION_COLUMNS} FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.classid::bigint = (($1::bigint >> 32) & 4294967295) AND l.objid::bigint = ($1::bigint & 4294967295)
               AND l.objsubid = 1"
        );
        let rows = query(AssertSqlSafe(sql))
            .bind(key)
            .fetch_all(&mut *conn)
            .await?;
        let mut holders = rows
            .iter()
            .map(session_info)
            .collect::<Result<Vec<_>, _>>()?;
        holders.extend(lease_holder(conn, config).await?);
        Ok(holders)
    }

    async fn release_lock_holder(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        pid: i32,
    ) -> Result<bool, sqlx::Error> {
        // A lease names its runner's process; an advisory lock, its server session.
        if lease_holder(conn, config)
            .await?
            .is_some_and(|h| h.pid == pid)
        {
            let done = query(AssertSqlSafe(format!(
                "DELETE FROM {} WHERE id = 1 AND pid = $1",
                config.lease_ident()
            )))
            .bind(i64::from(pid))
            .execute(conn)
            .await?;
            return Ok(done.rows_affected() == 1);
        }
        query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(conn)
            .await
    }

    async fn blocking_sessions(conn: &mut PgConnection) -> Result<Vec<SessionInfo>, sqlx::Error> {
        let sql = format!(
            "{SESSION_COLUMNS} FROM pg_stat_activity a
             WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'
               AND (a.state IN ('idle in transaction', 'idle in transaction (aborted)')
                    OR a.wait_event_type = 'Lock'
                    OR cardinality(pg_blocking_pids(a.pid)) > 0
                    OR (a.state = 'active' AND a.xact_start < now() - interval '1 minute'))
             ORDER BY a.xact_start NULLS LAST"
        );
        let rows = query(AssertSqlSafe(sql)).fetch_all(conn).await?;
        rows.iter().map(session_info).collect()
    }

    async fn pooler_evidence(
        conn: &mut PgConnection,
        options: &sqlx::postgres::PgConnectOptions,
    ) -> Result<Option<String>, sqlx::Error> {
        // Plain-text queries only: they pass any pooler in one exchange.
        let first = backend_pid(conn).await?;
        let mut other = PgConnection::connect_with(options).await?;
        let second = backend_pid(&mut other).await;
        let again = backend_pid(conn).await;
        let _ = other.close().await;
        let (second, again) = (second?, again?);
        Ok(if second == first {
            Some(format!(
                "two connections were served by one server session, process {first}"
            ))
        } else if again != first {
            Some(format!(
                "the server session changed from process {first} to {again} between two statements"
            ))
        } else {
            None
        })
    }

    async fn reset_statements(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        conn.clear_cached_statements().await?;
        sqlx::raw_sql(AssertSqlSafe("DEALLOCATE ALL".to_string()))
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn try_lease(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<bool, Error> {
        let key = lock_key(&mut *conn, config).await?;
        match ensure_lease_table(conn, config, key).await {
            // An advisory holder of this ledger runs: poll again.
            Err(Error::Database(err)) if Self::is_lock_timeout(&err) => return Ok(false),
            other => other?,
        }
        let mut tx = begin_read_committed(conn).await?;
        // A runner of this ledger holding the advisory lock (connected directly, during a
        // move to a pooler) keeps leases out: this transaction-level lock on the same key
        // is not granted while it holds it, and it sees the lease once this commits.
        let clear: bool = query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
        if !clear {
            return Ok(false);
        }
        // A holder's renewal in flight holds the row for a moment; never queue behind it.
        query("SELECT set_config('lock_timeout', '2s', true)")
            .execute(&mut *tx)
            .await?;
        // Taken when missing or expired, in one statement: two runners racing for an
        // expired lease queue on its row, and the second finds it taken. Times are the
        // server's, so the runners' clocks do not matter.
        let sql = format!(
            "INSERT INTO {lease} AS l (id, token, host, pid, acquired_at, renewed_at, expires_at)
             VALUES (1, $1, $2, $3, clock_timestamp(), clock_timestamp(),
                     clock_timestamp() + $4 * interval '1 millisecond')
             ON CONFLICT (id) DO UPDATE SET token = excluded.token, host = excluded.host,
                 pid = excluded.pid, db_user = current_user, acquired_at = excluded.acquired_at,
                 renewed_at = excluded.renewed_at, expires_at = excluded.expires_at
             WHERE l.expires_at <= clock_timestamp()
             RETURNING token",
            lease = config.lease_ident()
        );
        let taken: Result<Option<String>, sqlx::Error> = query_scalar(AssertSqlSafe(sql))
            .bind(token.as_str())
            .bind(crate::session::host_name())
            .bind(i64::from(std::process::id()))
            .bind(millis(ttl))
            .fetch_optional(&mut *tx)
            .await;
        match taken {
            Ok(taken) => {
                tx.commit().await?;
                Ok(taken.is_some())
            }
            Err(err) if Self::is_lock_timeout(&err) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    async fn renew_lease(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = begin_read_committed(conn).await?;
        let sql = format!(
            "UPDATE {} SET renewed_at = clock_timestamp(),
                 expires_at = clock_timestamp() + $2 * interval '1 millisecond'
             WHERE id = 1 AND token = $1 AND expires_at > clock_timestamp()",
            config.lease_ident()
        );
        let done = query(AssertSqlSafe(sql))
            .bind(token)
            .bind(millis(ttl))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_lease(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        token: &LockToken,
    ) -> Result<(), sqlx::Error> {
        let mut tx = begin_read_committed(conn).await?;
        query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE id = 1 AND token = $1",
            config.lease_ident()
        )))
        .bind(token.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    // Inside the transaction about to commit, the row is locked (`FOR SHARE`) until that
    // transaction ends: neither a renewal nor another runner taking the lease over can
    // change it between this check and the COMMIT, so a runner that lost its lease never
    // commits afterwards.
    async fn lease_lost(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        token: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        let sql = format!(
            "SELECT token = $1, expires_at > clock_timestamp(), host, pid, expires_at::text
             FROM {} WHERE id = 1 FOR SHARE",
            config.lease_ident()
        );
        let row: Option<(bool, bool, String, i64, String)> = query_as(AssertSqlSafe(sql))
            .bind(token)
            .fetch_optional(conn)
            .await?;
        Ok(match row {
            None => Some("the lease was released: `datamig unlock` removed it".to_string()),
            Some((true, true, ..)) => None,
            Some((true, false, _, _, expires_at)) => Some(format!(
                "the lease expired at {expires_at}, not renewed in time"
            )),
            Some((false, _, host, pid, _)) => Some(format!(
                "the lease expired and datamig process {pid} on {host} holds it now"
            )),
        })
    }
}

/// The server process serving this session, asked in plain text (one exchange).
async fn backend_pid(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
    let row = sqlx::raw_sql(AssertSqlSafe("SELECT pg_backend_pid()::text".to_string()))
        .fetch_one(conn)
        .await?;
    row.try_get(0)
}

/// Creates the lease table where it is missing, under a transaction-level advisory lock
/// (which, unlike a session's, holds through a transaction pooler): concurrent
/// `CREATE TABLE IF NOT EXISTS` can collide. A role without `CREATE` gets a clear error.
async fn ensure_lease_table(
    conn: &mut PgConnection,
    config: &LedgerConfig,
    key: i64,
) -> Result<(), Error> {
    let lease = config.lease_ident();
    let mut tx = begin_read_committed(conn).await?;
    let exists: bool = query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&lease)
        .fetch_one(&mut *tx)
        .await?;
    if exists {
        return Ok(());
    }
    query("SELECT set_config('lock_timeout', '2s', true)")
        .execute(&mut *tx)
        .await?;
    query("SELECT pg_advisory_xact_lock($1)")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    let schema = match config.schema_name() {
        Some(schema) => format!("CREATE SCHEMA IF NOT EXISTS {};", quote_ident(schema)),
        None => String::new(),
    };
    let ddl = format!(
        "{schema}
        CREATE TABLE IF NOT EXISTS {lease} (
            id          integer PRIMARY KEY CHECK (id = 1),
            token       text NOT NULL,
            host        text NOT NULL,
            pid         bigint NOT NULL,
            db_user     text NOT NULL DEFAULT current_user,
            acquired_at timestamptz NOT NULL,
            renewed_at  timestamptz NOT NULL,
            expires_at  timestamptz NOT NULL
        )"
    );
    if let Err(err) = sqlx::raw_sql(AssertSqlSafe(ddl)).execute(&mut *tx).await {
        if err
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|c| c == "42501")
        {
            return Err(Error::Config(format!(
                "the lease table {lease} of the lease lock does not exist, and this role may not \
                 create it ({}): run `datamig run --lock lease` once as the owner of the schema \
                 (or a role with CREATE on it), then this role needs SELECT, INSERT, UPDATE, \
                 DELETE on {lease}",
                crate::error::describe_sqlx(&err)
            )));
        }
        return Err(err.into());
    }
    tx.commit().await?;
    Ok(())
}

/// The holder of an unexpired lease, as a session: its runner's process id and name.
async fn lease_holder(
    conn: &mut PgConnection,
    config: &LedgerConfig,
) -> Result<Option<SessionInfo>, sqlx::Error> {
    let exists: bool = query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(config.lease_ident())
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(None);
    }
    let sql = format!(
        "SELECT host, pid, db_user, expires_at::text,
                (extract(epoch FROM clock_timestamp() - acquired_at) * 1000)::bigint,
                (extract(epoch FROM clock_timestamp() - renewed_at) * 1000)::bigint
         FROM {} WHERE id = 1 AND expires_at > clock_timestamp()",
        config.lease_ident()
    );
    let row: Option<(String, i64, String, String, i64, i64)> =
        query_as(AssertSqlSafe(sql)).fetch_optional(conn).await?;
    Ok(row.map(
        |(host, pid, user, expires_at, held_ms, renewed_ms)| SessionInfo {
            pid: i32::try_from(pid).unwrap_or(i32::MAX),
            user: Some(user),
            application_name: format!("datamig/{host}/{pid}"),
            client_addr: None,
            state: Some(format!(
                "holds the lease until {expires_at} (renewed {renewed_ms} ms ago)"
            )),
            transaction_age_ms: None,
            state_age_ms: Some(held_ms),
            wait_event_type: None,
            blocked_by: Vec::new(),
            query: None,
            lease: true,
        },
    ))
}

/// The runner lock's key, with the ledger's schema resolved against this session's
/// `current_schema()` (asked only when a schema is configured).
async fn lock_key(conn: &mut PgConnection, config: &LedgerConfig) -> Result<i64, sqlx::Error> {
    if config.schema_name().is_none() {
        return Ok(config.lock_key());
    }
    let current: Option<String> = query_scalar("SELECT current_schema()::text")
        .fetch_one(conn)
        .await?;
    Ok(match current {
        Some(current) => config.lock_key_in(&current),
        None => config.lock_key(),
    })
}

pub(crate) const SESSION_COLUMNS: &str = "SELECT a.pid, a.usename::text AS db_user, COALESCE(a.application_name, '') AS application_name,
        a.client_addr::text AS client_addr, a.state,
        (extract(epoch FROM now() - a.xact_start) * 1000)::bigint AS transaction_age_ms,
        (extract(epoch FROM now() - a.state_change) * 1000)::bigint AS state_age_ms,
        a.wait_event_type, pg_blocking_pids(a.pid) AS blocked_by, left(a.query, 500) AS query";

pub(crate) fn session_info(row: &PgRow) -> Result<SessionInfo, sqlx::Error> {
    Ok(SessionInfo {
        pid: row.try_get("pid")?,
        user: row.try_get("db_user")?,
        application_name: row.try_get("application_name")?,
        client_addr: row.try_get("client_addr")?,
        state: row.try_get("state")?,
        transaction_age_ms: row.try_get("transaction_age_ms")?,
        state_age_ms: row.try_get("state_age_ms")?,
        wait_event_type: row.try_get("wait_event_type")?,
        blocked_by: row.try_get("blocked_by")?,
        query: row.try_get("query")?,
        lease: false,
    })
}
