//! MySQL's runner lock: `GET_LOCK`, held by the runner's session (whose connection never
//! returns to the pool: sqlx's MySQL pool does not reset a session it takes back, and a
//! pooled session still holding the lock would hand it to whoever takes it next); the
//! lease for clusters where `GET_LOCK` does not serialise (Galera), with the fence every
//! transaction checks; and the sessions that hold the lock or block a migration.

use std::time::Duration;

use sqlx::mysql::MySqlConnection;
use sqlx::{AssertSqlSafe, Connection, MySql};

use super::ledger::{TABLE_OPTIONS, table_exists};
use super::server::{Server, error_number};
use super::sql::{query, query_as, query_scalar};
use crate::backend::lock_token::LockToken;
use crate::backend::steps::{ConnectionSteps, LockSteps};
use crate::error::Error;
use crate::ledger::LedgerConfig;
use crate::session::SessionInfo;

/// The lock's name, as SQL taking the ledger's database (`$1`, `NULL` for the
/// connection's) and table (`$2`): `GET_LOCK` names are server-wide and at most 64
/// characters, so the database and table are hashed: `datamig:` and 40 hex digits.
const LOCK_NAME: &str =
    "CONCAT('datamig:', LEFT(SHA2(CONCAT(coalesce($1, DATABASE()), '.', $2), 256), 40))";

impl LockSteps for MySql {
    async fn try_lock(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
        _token: &LockToken,
    ) -> Result<bool, sqlx::Error> {
        // A session lock: it dies with the session, so a runner that is killed cannot
        // leave it behind. Timeout 0: one try; the runner polls.
        let taken: Option<i64> =
            query_scalar(AssertSqlSafe(format!("SELECT GET_LOCK({LOCK_NAME}, 0)")))
                .bind(config.schema_name())
                .bind(config.ledger_table_name())
                .fetch_one(&mut *conn)
                .await?;
        let taken = taken == Some(1);
        // Runners of one ledger with the other lock must keep out too: a live lease
        // holds the ledger.
        if taken && lease_holder(&mut *conn, config).await?.is_some() {
            Self::unlock(conn, config, _token).await?;
            return Ok(false);
        }
        Ok(taken)
    }

    async fn unlock(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
        _token: &LockToken,
    ) -> Result<(), sqlx::Error> {
        query(AssertSqlSafe(format!("SELECT RELEASE_LOCK({LOCK_NAME})")))
            .bind(config.schema_name())
            .bind(config.ledger_table_name())
            .execute(conn)
            .await?;
        Ok(())
    }

    /// MySQL has no session name a client sets after connecting (as PostgreSQL's
    /// `application_name`): the holder of the lock is named by its connection id, user
    /// and host instead.
    async fn tag_session(_conn: &mut MySqlConnection, _name: &str) -> Result<(), sqlx::Error> {
        Ok(())
    }

    async fn lock_holders(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
    ) -> Result<Vec<SessionInfo>, sqlx::Error> {
        let holder: Option<i64> =
            query_scalar(AssertSqlSafe(format!("SELECT IS_USED_LOCK({LOCK_NAME})")))
                .bind(config.schema_name())
                .bind(config.ledger_table_name())
                .fetch_one(&mut *conn)
                .await?;
        let mut holders = Vec::new();
        if let Some(id) = holder {
            let sql = format!("{SESSION_COLUMNS} WHERE p.ID = $1");
            let rows: Vec<SessionRow> = query_as(AssertSqlSafe(sql))
                .bind(id)
                .fetch_all(&mut *conn)
                .await?;
            holders.extend(rows.into_iter().map(|row| session_info(row, Vec::new())));
        }
        holders.extend(lease_holder(conn, config).await?);
        Ok(holders)
    }

    async fn release_lock_holder(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
        pid: i32,
    ) -> Result<bool, sqlx::Error> {
        // A lease names its runner's process; `GET_LOCK`, its server session.
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
        // Ending the session rolls its transaction back and frees its `GET_LOCK`.
        match query(AssertSqlSafe(format!("KILL CONNECTION {pid}")))
            .execute(conn)
            .await
        {
            Ok(_) => Ok(true),
            // 1094 ER_NO_SUCH_THREAD: gone already.
            Err(err) if error_number(&err) == Some(1094) => Ok(false),
            Err(err) => Err(err),
        }
    }

    async fn blocking_sessions(
        conn: &mut MySqlConnection,
    ) -> Result<Vec<SessionInfo>, sqlx::Error> {
        // Sessions of this database in a transaction that waits for a lock, holds one
        // another waits for, sits idle, or is older than a minute; each with the sessions
        // blocking it (MariaDB: `information_schema.INNODB_LOCK_WAITS`; MySQL 8:
        // `performance_schema.data_lock_waits`).
        let sql = format!(
            "{SESSION_COLUMNS}
             JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID
             WHERE p.ID <> CONNECTION_ID() AND (p.DB = DATABASE() OR p.DB IS NULL)
               AND (t.trx_state = 'LOCK WAIT' OR p.COMMAND = 'Sleep'
                    OR t.trx_started < NOW() - INTERVAL 1 MINUTE)
             ORDER BY t.trx_started"
        );
        let rows: Vec<SessionRow> = query_as(AssertSqlSafe(sql)).fetch_all(&mut *conn).await?;
        let waits = lock_waits(conn).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let blocked_by = waits
                    .iter()
                    .filter(|(waiting, _)| i64::from(*waiting) == row.0)
                    .map(|(_, blocking)| *blocking)
                    .collect();
                session_info(row, blocked_by)
            })
            .collect())
    }

    /// No transaction pooler is known to stand between datamig and MySQL: none found.
    async fn pooler_evidence(
        _conn: &mut MySqlConnection,
        _options: &sqlx::mysql::MySqlConnectOptions,
    ) -> Result<Option<String>, sqlx::Error> {
        Ok(None)
    }

    async fn reset_statements(conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
        conn.clear_cached_statements().await
    }

    async fn try_lease(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<bool, Error> {
        ensure_lease_table(conn, config).await?;
        // A runner of this ledger holding `GET_LOCK` keeps leases out.
        let free: Option<i64> =
            query_scalar(AssertSqlSafe(format!("SELECT IS_FREE_LOCK({LOCK_NAME})")))
                .bind(config.schema_name())
                .bind(config.ledger_table_name())
                .fetch_one(&mut *conn)
                .await?;
        if free != Some(1) {
            return Ok(false);
        }
        let mut tx = Self::begin(conn, None).await?;
        // Taken when missing or expired, in one statement: two runners racing for an
        // expired lease queue on its row (the insert's duplicate key locks it), and the
        // second finds it taken. Times are the server's.
        let sql = format!(
            "INSERT INTO {lease} (id, token, host, pid, db_user, acquired_at, renewed_at, expires_at)
             VALUES (1, $1, $2, $3, CURRENT_USER(), NOW(6), NOW(6), NOW(6) + INTERVAL $4 MICROSECOND)
             ON DUPLICATE KEY UPDATE
                 token = IF(expires_at <= NOW(6), VALUES(token), token),
                 host = IF(expires_at <= NOW(6), VALUES(host), host),
                 pid = IF(expires_at <= NOW(6), VALUES(pid), pid),
                 db_user = IF(expires_at <= NOW(6), VALUES(db_user), db_user),
                 acquired_at = IF(expires_at <= NOW(6), VALUES(acquired_at), acquired_at),
                 renewed_at = IF(expires_at <= NOW(6), VALUES(renewed_at), renewed_at),
                 expires_at = IF(expires_at <= NOW(6), VALUES(expires_at), expires_at)",
            lease = config.lease_ident()
        );
        let inserted = query(AssertSqlSafe(sql))
            .bind(token.as_str())
            .bind(crate::session::host_name())
            .bind(i64::from(std::process::id()))
            .bind(micros(ttl))
            .execute(&mut *tx)
            .await;
        if let Err(err) = inserted {
            return if Self::is_lock_timeout(&err) {
                Ok(false)
            } else {
                Err(err.into())
            };
        }
        let holder: Option<String> = query_scalar(AssertSqlSafe(format!(
            "SELECT token FROM {} WHERE id = 1",
            config.lease_ident()
        )))
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(holder.as_deref() == Some(token.as_str()))
    }

    async fn renew_lease(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, sqlx::Error> {
        let sql = format!(
            "UPDATE {} SET renewed_at = NOW(6), expires_at = NOW(6) + INTERVAL $1 MICROSECOND
             WHERE id = 1 AND token = $2 AND expires_at > NOW(6)",
            config.lease_ident()
        );
        let done = query(AssertSqlSafe(sql))
            .bind(micros(ttl))
            .bind(token)
            .execute(conn)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_lease(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
        token: &LockToken,
    ) -> Result<(), sqlx::Error> {
        query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE id = 1 AND token = $1",
            config.lease_ident()
        )))
        .bind(token.as_str())
        .execute(conn)
        .await?;
        Ok(())
    }

    // Inside the transaction about to commit, the row is locked (`LOCK IN SHARE MODE`)
    // until that transaction ends: neither a renewal nor another runner taking the lease
    // over can change it between this check and the COMMIT, so a runner that lost its
    // lease never commits afterwards.
    async fn lease_lost(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
        token: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        let sql = format!(
            "SELECT token = $1, expires_at > NOW(6), host, pid, CAST(expires_at AS char)
             FROM {} WHERE id = 1 LOCK IN SHARE MODE",
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
                "the lease expired at {expires_at} UTC, not renewed in time"
            )),
            Some((false, _, host, pid, _)) => Some(format!(
                "the lease expired and datamig process {pid} on {host} holds it now"
            )),
        })
    }
}

/// A duration in whole microseconds, for `INTERVAL $n MICROSECOND`.
fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Creates the lease table where it is missing (DDL: outside any transaction).
async fn ensure_lease_table(
    conn: &mut MySqlConnection,
    config: &LedgerConfig,
) -> Result<(), Error> {
    if table_exists(&mut *conn, config.schema_name(), &config.lease_table_name()).await? {
        return Ok(());
    }
    let lease = config.lease_ident();
    let ddl = format!(
        "CREATE TABLE IF NOT EXISTS {lease} (
            id          int NOT NULL PRIMARY KEY CHECK (id = 1),
            token       varchar(255) NOT NULL,
            host        varchar(255) NOT NULL,
            pid         bigint NOT NULL,
            db_user     varchar(300) NOT NULL,
            acquired_at datetime(6) NOT NULL,
            renewed_at  datetime(6) NOT NULL,
            expires_at  datetime(6) NOT NULL
        ) {TABLE_OPTIONS}"
    );
    if let Err(err) = query(AssertSqlSafe(ddl)).execute(&mut *conn).await {
        // 1142 ER_TABLEACCESS_DENIED_ERROR: no CREATE privilege.
        if error_number(&err) == Some(1142) {
            return Err(Error::Config(format!(
                "the lease table {lease} of the lease lock does not exist, and this user may not \
                 create it ({}): run `datamig run --lock lease` once as a user with CREATE on the \
                 database, then this user needs SELECT, INSERT, UPDATE, DELETE on {lease}",
                crate::error::describe_sqlx(&err)
            )));
        }
        return Err(err.into());
    }
    Ok(())
}

/// The holder of an unexpired lease, as a session: its runner's process id and name.
async fn lease_holder(
    conn: &mut MySqlConnection,
    config: &LedgerConfig,
) -> Result<Option<SessionInfo>, sqlx::Error> {
    if !table_exists(&mut *conn, config.schema_name(), &config.lease_table_name()).await? {
        return Ok(None);
    }
    let sql = format!(
        "SELECT host, pid, db_user, CAST(expires_at AS char),
                CAST(TIMESTAMPDIFF(MICROSECOND, acquired_at, NOW(6)) DIV 1000 AS signed),
                CAST(TIMESTAMPDIFF(MICROSECOND, renewed_at, NOW(6)) DIV 1000 AS signed)
         FROM {} WHERE id = 1 AND expires_at > NOW(6)",
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
                "holds the lease until {expires_at} UTC (renewed {renewed_ms} ms ago)"
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

/// Which session waits for which: `(waiting, blocking)` connection ids.
async fn lock_waits(conn: &mut MySqlConnection) -> Result<Vec<(i32, i32)>, sqlx::Error> {
    let sql = match Server::of(conn).await? {
        Server::MariaDb => {
            "SELECT CAST(r.trx_mysql_thread_id AS signed), CAST(b.trx_mysql_thread_id AS signed)
             FROM information_schema.INNODB_LOCK_WAITS w
             JOIN information_schema.INNODB_TRX r ON r.trx_id = w.requesting_trx_id
             JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id"
        }
        Server::MySql => {
            "SELECT CAST(waiting_pid AS signed), CAST(blocking_pid AS signed)
             FROM sys.innodb_lock_waits"
        }
    };
    let rows: Vec<(i64, i64)> = query_as(sql).fetch_all(conn).await?;
    Ok(rows
        .into_iter()
        .map(|(w, b)| {
            (
                i32::try_from(w).unwrap_or(i32::MAX),
                i32::try_from(b).unwrap_or(i32::MAX),
            )
        })
        .collect())
}

/// A session as `information_schema.PROCESSLIST` shows it, with its transaction's age
/// where it has one.
const SESSION_COLUMNS: &str = "SELECT CAST(p.ID AS signed), p.USER, p.HOST, p.COMMAND,
        CAST((SELECT TIMESTAMPDIFF(MICROSECOND, x.trx_started, NOW(6)) DIV 1000
              FROM information_schema.INNODB_TRX x WHERE x.trx_mysql_thread_id = p.ID) AS signed),
        CAST(p.TIME AS signed) * 1000, p.STATE, LEFT(p.INFO, 500)
     FROM information_schema.PROCESSLIST p";

type SessionRow = (
    i64,
    String,
    String,
    String,
    Option<i64>,
    i64,
    Option<String>,
    Option<String>,
);

fn session_info(row: SessionRow, blocked_by: Vec<i32>) -> SessionInfo {
    let (id, user, host, command, transaction_age_ms, state_age_ms, state, info) = row;
    SessionInfo {
        pid: i32::try_from(id).unwrap_or(i32::MAX),
        user: Some(user),
        application_name: String::new(),
        client_addr: Some(host),
        state: Some(match (&transaction_age_ms, command.as_str()) {
            (Some(_), "Sleep") => "idle in transaction".to_string(),
            (_, "Sleep") => "idle".to_string(),
            _ => command.to_ascii_lowercase(),
        }),
        transaction_age_ms,
        state_age_ms: Some(state_age_ms),
        wait_event_type: state.filter(|s| !s.is_empty()),
        blocked_by,
        query: info,
        lease: false,
    }
}
