//! PostgreSQL: session advisory lock, `set_config(.., true)` timeouts, ledger DDL.

use std::time::Duration;

use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row, SqlSafeStr};

use super::Backend;
use super::steps::Steps;
use crate::admin::SessionInfo;
use crate::ctx::Ctx;
use crate::ledger::{Attempt, LastRun, LedgerConfig, LedgerEntry, LedgerWrite};
use crate::migration::{Batch, Code, Migration};
use crate::sql::quote_ident;

impl Backend for Postgres {}

impl Steps for Postgres {
    const ID: &'static str = "postgres";

    fn code(migration: &Migration) -> Option<Code<Self>> {
        migration.postgres_code()
    }

    async fn ensure_ledger(
        conn: &mut PgConnection,
        config: &LedgerConfig,
    ) -> Result<(), sqlx::Error> {
        let ledger = config.ledger_ident();
        let runs = config.runs_ident();
        let index = quote_ident(&format!("{}_by_migration", config.runs_table_name()));
        let schema = match config.schema_name() {
            Some(schema) => format!("CREATE SCHEMA IF NOT EXISTS {};", quote_ident(schema)),
            None => String::new(),
        };
        let ddl = format!(
            "{schema}
            CREATE TABLE IF NOT EXISTS {ledger} (
                id            text PRIMARY KEY,
                checksum      text NOT NULL,
                revision      integer NOT NULL,
                description   text NOT NULL,
                started_at    timestamptz NOT NULL,
                finished_at   timestamptz NOT NULL,
                duration_ms   bigint NOT NULL,
                rows_affected bigint NOT NULL,
                notes         text,
                applied_by    text NOT NULL DEFAULT current_user,
                host          text NOT NULL,
                app_version   text,
                run_count     integer NOT NULL DEFAULT 1,
                status        text NOT NULL DEFAULT 'applied',
                checkpoint    text,
                batches       bigint NOT NULL DEFAULT 0
            );
            CREATE TABLE IF NOT EXISTS {runs} (
                run_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                migration_id  text NOT NULL,
                action        text NOT NULL,
                outcome       text NOT NULL,
                checksum      text NOT NULL,
                revision      integer NOT NULL,
                started_at    timestamptz NOT NULL,
                finished_at   timestamptz NOT NULL,
                duration_ms   bigint NOT NULL,
                rows_affected bigint NOT NULL,
                error         text,
                reason        text,
                db_user       text NOT NULL DEFAULT current_user,
                host          text NOT NULL,
                app_version   text
            );
            CREATE INDEX IF NOT EXISTS {index} ON {runs} (migration_id, run_id);"
        );
        sqlx::raw_sql(AssertSqlSafe(ddl)).execute(conn).await?;
        Ok(())
    }

    async fn table_columns(
        conn: &mut PgConnection,
        table: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
        )
        .bind(table)
        .fetch_all(conn)
        .await
    }

    async fn ledger_exists(
        conn: &mut PgConnection,
        config: &LedgerConfig,
    ) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(config.ledger_ident())
            .fetch_one(conn)
            .await
    }

    async fn read_ledger(
        conn: &mut PgConnection,
        config: &LedgerConfig,
    ) -> Result<Vec<LedgerEntry>, sqlx::Error> {
        let sql = format!(
            "SELECT id, checksum, revision, description, started_at, finished_at, duration_ms,
                    rows_affected, notes, applied_by, host, app_version, run_count,
                    status, checkpoint, batches
             FROM {} ORDER BY id",
            config.ledger_ident()
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(conn).await?;
        rows.iter().map(ledger_entry).collect()
    }

    async fn last_runs(
        conn: &mut PgConnection,
        config: &LedgerConfig,
    ) -> Result<Vec<LastRun>, sqlx::Error> {
        let sql = format!(
            "SELECT DISTINCT ON (migration_id) migration_id, outcome, error, finished_at
             FROM {} ORDER BY migration_id, run_id DESC",
            config.runs_ident()
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(conn).await?;
        rows.iter()
            .map(|row| {
                Ok(LastRun {
                    migration_id: row.try_get("migration_id")?,
                    outcome: row.try_get("outcome")?,
                    error: row.try_get("error")?,
                    finished_at: row.try_get("finished_at")?,
                })
            })
            .collect()
    }

    async fn try_lock(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
        // A session-level advisory lock: it dies with the session, so a runner that is
        // killed cannot leave it behind.
        sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(conn)
            .await
    }

    async fn unlock(conn: &mut PgConnection, key: i64) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(key)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn set_local_timeouts(
        conn: &mut PgConnection,
        lock_timeout: Option<Duration>,
        statement_timeout: Option<Duration>,
    ) -> Result<(), sqlx::Error> {
        // `set_config(.., true)` is `SET LOCAL` with a bound value: it ends with the transaction.
        for (name, value) in [
            ("lock_timeout", lock_timeout),
            ("statement_timeout", statement_timeout),
        ] {
            if let Some(value) = value {
                sqlx::query("SELECT set_config($1, $2, true)")
                    .bind(name)
                    .bind(format!("{}ms", value.as_millis().max(1)))
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(())
    }

    async fn write_ledger(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        a: &Attempt,
    ) -> Result<bool, sqlx::Error> {
        let ledger = config.ledger_ident();
        if a.write == LedgerWrite::Accept {
            let sql = format!(
                "UPDATE {ledger} SET checksum = $2, revision = $3, description = $4 WHERE id = $1"
            );
            let done = sqlx::query(AssertSqlSafe(sql))
                .bind(a.id)
                .bind(a.checksum)
                .bind(i32::try_from(a.revision).unwrap_or(i32::MAX))
                .bind(a.description)
                .execute(conn)
                .await?;
            return Ok(done.rows_affected() == 1);
        }
        let sql = match &a.write {
            LedgerWrite::Insert => format!(
                "INSERT INTO {ledger} (id, checksum, revision, description, started_at, finished_at,
                     duration_ms, rows_affected, notes, host, app_version, status, checkpoint, batches)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
            ),
            LedgerWrite::Rerun => format!(
                "UPDATE {ledger} SET checksum = $2, revision = $3, description = $4,
                     started_at = $5, finished_at = $6, duration_ms = $7, rows_affected = $8,
                     notes = $9, host = $10, app_version = $11, status = $12, checkpoint = $13,
                     batches = $14, applied_by = current_user, run_count = run_count + 1
                 WHERE id = $1"
            ),
            LedgerWrite::Accept => unreachable!("handled above"),
            LedgerWrite::Continue { .. } => format!(
                "UPDATE {ledger} SET checksum = $2, revision = $3, description = $4,
                     started_at = $5, finished_at = $6, duration_ms = $7, rows_affected = $8,
                     notes = $9, host = $10, app_version = $11, status = $12, checkpoint = $13,
                     batches = $14, applied_by = current_user
                 WHERE id = $1 AND status = 'running' AND checkpoint IS NOT DISTINCT FROM $15"
            ),
        };
        let expected = match &a.write {
            LedgerWrite::Continue { expected } => expected.clone(),
            _ => None,
        };
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(a.id)
            .bind(a.checksum)
            .bind(i32::try_from(a.revision).unwrap_or(i32::MAX))
            .bind(a.description)
            .bind(a.first_started_at)
            .bind(a.finished_at)
            .bind(a.total_duration_ms())
            .bind(a.total_rows_i64())
            .bind(a.notes_text())
            .bind(&a.host)
            .bind(&a.app_version)
            .bind(a.status)
            .bind(&a.checkpoint)
            .bind(i64::try_from(a.batches).unwrap_or(i64::MAX))
            .bind(expected)
            .execute(conn)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn next_batch(
        conn: &mut PgConnection,
        table: &str,
        key: &str,
        after: Option<i64>,
        size: u32,
    ) -> Result<Option<(i64, u64)>, sqlx::Error> {
        // Keyset pagination: an index range scan from the checkpoint, never OFFSET.
        let (table, key) = (quote_ident(table), quote_ident(key));
        let filter = if after.is_some() {
            format!("WHERE {key} > $1")
        } else {
            "WHERE $1::bigint IS NULL".to_string()
        };
        let sql = format!(
            "SELECT max(k)::bigint, count(*) FROM
                 (SELECT {key} AS k FROM {table} {filter} ORDER BY {key} LIMIT $2) AS batch"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(after)
            .bind(i64::from(size))
            .fetch_one(conn)
            .await?;
        let last: Option<i64> = row.try_get(0)?;
        let keys: i64 = row.try_get(1)?;
        Ok(last.map(|last| (last, u64::try_from(keys).unwrap_or(0))))
    }

    async fn has_keys_after(
        conn: &mut PgConnection,
        table: &str,
        key: &str,
        after: i64,
    ) -> Result<bool, sqlx::Error> {
        let (table, key) = (quote_ident(table), quote_ident(key));
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE {key} > $1)");
        sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(after)
            .fetch_one(conn)
            .await
    }

    async fn estimate_rows(
        conn: &mut PgConnection,
        table: &str,
    ) -> Result<Option<u64>, sqlx::Error> {
        // The planner's estimate: free, and close enough for a progress bar.
        let estimate: Option<f32> =
            sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE oid = to_regclass($1)")
                .bind(quote_ident(table))
                .fetch_optional(conn)
                .await?
                .flatten();
        Ok(estimate.filter(|n| *n >= 0.0).map(|n| n as u64))
    }

    async fn tag_session(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT set_config('application_name', $1, false)")
            .bind(name)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn lock_holders(
        conn: &mut PgConnection,
        key: i64,
    ) -> Result<Vec<SessionInfo>, sqlx::Error> {
        // A bigint advisory key is stored as two 32-bit halves.
        let sql = format!(
            "{SESSION_COLUMNS} FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.classid::bigint = (($1::bigint >> 32) & 4294967295) AND l.objid::bigint = ($1::bigint & 4294967295)
               AND l.objsubid = 1"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(key)
            .fetch_all(conn)
            .await?;
        rows.iter().map(session_info).collect()
    }

    async fn terminate_session(conn: &mut PgConnection, pid: i32) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT pg_terminate_backend($1)")
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
        let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(conn).await?;
        rows.iter().map(session_info).collect()
    }

    async fn schema_version_applied(
        conn: &mut PgConnection,
        version: i64,
    ) -> Result<bool, sqlx::Error> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
        if !exists {
            return Ok(false);
        }
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $1 AND success)",
        )
        .bind(version)
        .fetch_one(conn)
        .await
    }

    async fn server_version(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
        sqlx::query_scalar("SELECT version()").fetch_one(conn).await
    }

    fn is_lock_timeout(err: &sqlx::Error) -> bool {
        // 55P03 lock_not_available: raised when lock_timeout expires.
        err.as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|c| c == "55P03")
    }

    async fn record_run(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        a: &Attempt,
        error: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO {} (migration_id, action, outcome, checksum, revision, started_at,
                 finished_at, duration_ms, rows_affected, error, host, app_version, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            config.runs_ident()
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(a.id)
            .bind(a.action.as_str())
            .bind(if error.is_some() {
                "failed"
            } else {
                "succeeded"
            })
            .bind(a.checksum)
            .bind(i32::try_from(a.revision).unwrap_or(i32::MAX))
            .bind(a.started_at)
            .bind(a.finished_at)
            .bind(a.duration_ms())
            .bind(a.rows_i64())
            .bind(error)
            .bind(&a.host)
            .bind(&a.app_version)
            .bind(&a.reason)
            .execute(conn)
            .await?;
        Ok(())
    }
}

const SESSION_COLUMNS: &str = "SELECT a.pid, a.usename::text AS db_user, COALESCE(a.application_name, '') AS application_name,
        a.client_addr::text AS client_addr, a.state,
        (extract(epoch FROM now() - a.xact_start) * 1000)::bigint AS transaction_age_ms,
        (extract(epoch FROM now() - a.state_change) * 1000)::bigint AS state_age_ms,
        a.wait_event_type, pg_blocking_pids(a.pid) AS blocked_by, left(a.query, 500) AS query";

fn session_info(row: &PgRow) -> Result<SessionInfo, sqlx::Error> {
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
    })
}

fn ledger_entry(row: &PgRow) -> Result<LedgerEntry, sqlx::Error> {
    let revision: i32 = row.try_get("revision")?;
    Ok(LedgerEntry {
        id: row.try_get("id")?,
        checksum: row.try_get("checksum")?,
        revision: u32::try_from(revision).unwrap_or(0),
        description: row.try_get("description")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        duration_ms: row.try_get("duration_ms")?,
        rows_affected: row.try_get("rows_affected")?,
        notes: row.try_get("notes")?,
        applied_by: row.try_get("applied_by")?,
        host: row.try_get("host")?,
        app_version: row.try_get("app_version")?,
        run_count: row.try_get("run_count")?,
        status: row.try_get("status")?,
        checkpoint: row.try_get("checkpoint")?,
        batches: row.try_get("batches")?,
    })
}

impl Ctx<'_, Postgres> {
    /// Executes one statement for the keys of a batch, with `$1` bound to
    /// [`Batch::after`] and `$2` to [`Batch::last`], and adds the rows it affected to the
    /// ledger's count. Returns that number of rows.
    ///
    /// ```no_run
    /// # use datamig::prelude::*;
    /// # async fn body(ctx: &mut Ctx<'_, Postgres>, batch: Batch) -> anyhow::Result<()> {
    /// ctx.execute_batch(
    ///     "UPDATE users SET email = lower(email) WHERE id > $1 AND id <= $2 AND email <> lower(email)",
    ///     &batch,
    /// )
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn execute_batch(
        &mut self,
        sql: impl SqlSafeStr,
        batch: &Batch,
    ) -> Result<u64, sqlx::Error> {
        let rows = sqlx::query(sql)
            .bind(batch.after())
            .bind(batch.last())
            .execute(self.tx())
            .await?
            .rows_affected();
        self.add_rows_affected(rows);
        Ok(rows)
    }

    /// Executes one statement in the migration's transaction and adds the rows it affected
    /// to the ledger's count. Returns that number of rows.
    ///
    /// The SQL must be a `&'static str` or wrapped in [`sqlx::AssertSqlSafe`]; bind values
    /// with `sqlx::query(..).bind(..)` through [`Ctx::tx`] instead of formatting them in.
    pub async fn execute(&mut self, sql: impl SqlSafeStr) -> Result<u64, sqlx::Error> {
        let rows = sqlx::query(sql).execute(self.tx()).await?.rows_affected();
        self.add_rows_affected(rows);
        Ok(rows)
    }
}
