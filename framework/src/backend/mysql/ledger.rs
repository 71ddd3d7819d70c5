//! MySQL's ledger: InnoDB tables (their DDL commits implicitly, so it runs outside any
//! migration's transaction), its rows written in the migration's transaction after the
//! check that no statement of the body committed that transaction already (on MariaDB,
//! within the `UPDATE` of a re-run or a batch itself), and the run history. The reads are the statements every backend shares (`shared.rs`); the writes
//! are written here, since MySQL binds its `?` in order, once each.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::mysql::MySqlConnection;
use sqlx::{AssertSqlSafe, Connection, MySql, Row};

use super::server::error_number;
use super::sql::{ident, query, query_scalar};
use crate::backend::dialect::{to_mysql, to_mysql_with};
use crate::backend::hex;
use crate::backend::shared::Shared;
use crate::backend::steps::{Chained, LedgerSteps};
use crate::error::Error;
use crate::ledger::{Attempt, LAYOUT, LastRun, LedgerConfig, LedgerEntry, LedgerWrite, Pause};

/// The table options of every table datamig creates on MySQL: InnoDB (transactions, row
/// locks; MyISAM would make the ledger's exactly-once promise void), binary collation
/// (ids compare as PostgreSQL and SQLite compare them).
pub(super) const TABLE_OPTIONS: &str = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

impl LedgerSteps for MySql {
    async fn ensure_ledger(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
    ) -> Result<(), sqlx::Error> {
        let ledger = config.ledger_ident();
        let runs = config.runs_ident();
        let layout = config.layout_ident();
        let mut ddl = Vec::new();
        if let Some(schema) = config.schema_name() {
            ddl.push(format!("CREATE DATABASE IF NOT EXISTS {}", ident(schema)));
        }
        // DATETIME(6), written and read as UTC (sqlx sets the session's time zone to
        // +00:00): no year-2038 limit, as TIMESTAMP has.
        ddl.push(format!(
            "CREATE TABLE IF NOT EXISTS {ledger} (
                id            varchar(255) NOT NULL PRIMARY KEY,
                checksum      varchar(128) NOT NULL,
                revision      int NOT NULL,
                description   text NOT NULL,
                started_at    datetime(6) NOT NULL,
                finished_at   datetime(6) NOT NULL,
                duration_ms   bigint NOT NULL,
                rows_affected bigint NOT NULL,
                notes         text,
                applied_by    varchar(300) NOT NULL,
                host          varchar(255) NOT NULL,
                app_version   text,
                run_count     int NOT NULL DEFAULT 1,
                status        varchar(32) NOT NULL DEFAULT 'applied',
                checkpoint    text,
                batches       bigint NOT NULL DEFAULT 0
            ) {TABLE_OPTIONS}"
        ));
        ddl.push(format!(
            "CREATE TABLE IF NOT EXISTS {runs} (
                run_id        bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
                migration_id  varchar(255) NOT NULL,
                action        varchar(32) NOT NULL,
                outcome       varchar(32) NOT NULL,
                checksum      varchar(128) NOT NULL,
                revision      int NOT NULL,
                started_at    datetime(6) NOT NULL,
                finished_at   datetime(6) NOT NULL,
                duration_ms   bigint NOT NULL,
                rows_affected bigint NOT NULL,
                error         text,
                reason        text,
                db_user       varchar(300) NOT NULL,
                host          varchar(255) NOT NULL,
                app_version   text,
                KEY by_migration (migration_id, run_id)
            ) {TABLE_OPTIONS}"
        ));
        ddl.push(format!(
            "CREATE TABLE IF NOT EXISTS {layout} (
                version     int NOT NULL,
                upgraded_at datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
            ) {TABLE_OPTIONS}"
        ));
        for statement in ddl {
            query(AssertSqlSafe(statement)).execute(&mut *conn).await?;
        }
        let mut tx = <MySql as crate::backend::steps::ConnectionSteps>::begin(conn, None).await?;
        query(AssertSqlSafe(format!("DELETE FROM {layout}")))
            .execute(&mut *tx)
            .await?;
        query(AssertSqlSafe(format!(
            "INSERT INTO {layout} (version) VALUES ({LAYOUT})"
        )))
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    async fn ledger_exists(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
    ) -> Result<bool, sqlx::Error> {
        table_exists(conn, config.schema_name(), config.ledger_table_name()).await
    }

    async fn read_ledger(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
    ) -> Result<Vec<LedgerEntry>, sqlx::Error> {
        Shared::<Self>::read_ledger(conn, config).await
    }

    async fn write_ledger(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
        a: &Attempt,
    ) -> Result<bool, sqlx::Error> {
        // A re-run's or a batch's `UPDATE` checks its transaction itself where the server
        // knows `@@in_transaction` (MariaDB): one statement a batch instead of two. Where
        // it matched nothing, the check tells a transaction gone from a row moved on.
        let guarded = matches!(
            a.write,
            LedgerWrite::Rerun { .. } | LedgerWrite::Continue { .. }
        ) && UPDATE_CHECKS_TRANSACTION.load(Ordering::Relaxed);
        if guarded {
            match write_row(conn, config, a, true).await {
                Ok(true) => return Ok(true),
                Ok(false) => {
                    still_atomic(conn, a).await?;
                    return Ok(false);
                }
                Err(err) if error_number(&err) == Some(UNKNOWN_SYSTEM_VARIABLE) => {
                    // MySQL: refused before it ran, the transaction as it was.
                    UPDATE_CHECKS_TRANSACTION.store(false, Ordering::Relaxed);
                }
                Err(err) => return Err(err),
            }
        }
        still_atomic(conn, a).await?;
        write_row(conn, config, a, false).await
    }

    async fn record_run(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
        a: &Attempt,
        error: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO {} (migration_id, action, outcome, checksum, revision, started_at,
                 finished_at, duration_ms, rows_affected, error, host, app_version, reason, db_user)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, CURRENT_USER())",
            config.runs_ident(),
        );
        query(AssertSqlSafe(sql))
            .bind(a.id.as_ref())
            .bind(a.action.as_str())
            .bind(if a.cancelled {
                "cancelled"
            } else if error.is_some() {
                "failed"
            } else {
                "succeeded"
            })
            .bind(a.checksum.as_ref())
            .bind(i32::try_from(a.revision).unwrap_or(i32::MAX))
            .bind(a.started_at)
            .bind(a.finished_at)
            .bind(a.duration_ms())
            .bind(a.rows_i64())
            .bind(error.map(str::to_string))
            .bind(a.host.as_str())
            .bind(&a.app_version)
            .bind(&a.reason)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn last_runs(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
    ) -> Result<Vec<LastRun>, sqlx::Error> {
        Shared::<Self>::last_runs(conn, config).await
    }

    async fn pause_state(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
        id: Option<&str>,
    ) -> Result<Vec<Pause>, sqlx::Error> {
        marks_in_force(conn, config, id, ("pause", "unpause")).await
    }

    async fn cancel_state(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
        id: Option<&str>,
    ) -> Result<Vec<Pause>, sqlx::Error> {
        marks_in_force(conn, config, id, ("cancel", "restart")).await
    }

    /// Pauses and cancellations in one statement: the latest pause or cancel of each
    /// migration that no unpause or restart followed.
    async fn marks_state(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
        id: Option<&str>,
    ) -> Result<(Vec<Pause>, Vec<Pause>), sqlx::Error> {
        let sql = format!(
            "SELECT action, migration_id, db_user, host, finished_at, reason {}
             ORDER BY migration_id",
            marks_in_force_of(config, "coalesce($1, r.migration_id)")
        );
        let rows: Vec<MarkRow> = super::sql::query_as(AssertSqlSafe(sql))
            .bind(id)
            .fetch_all(conn)
            .await?;
        let (mut pauses, mut cancels) = (Vec::new(), Vec::new());
        for (action, migration_id, by, host, at, reason) in rows {
            let mark = Pause {
                migration_id,
                by,
                host,
                at,
                reason,
            };
            if action == "pause" {
                pauses.push(mark);
            } else {
                cancels.push(mark);
            }
        }
        Ok((pauses, cancels))
    }

    /// One text query: first a check that assigns a user variable a subquery of one
    /// constant row and, where a pause or a cancel of `id` is in force, that mark's row.
    /// With a mark the subquery has two rows: the server refuses it (1242) and runs
    /// nothing after it, so nothing begins. Without one, the transaction begins as in
    /// `begin_with_timeouts`. The check is a plain read just before the transaction (step
    /// by step the marks are its first statement: under READ COMMITTED, the same view).
    /// `None` also with a statement timeout (set step by step) or inside a transaction;
    /// any other error is the server's answer to the begin.
    async fn begin_unless_marked<'c>(
        conn: &'c mut MySqlConnection,
        config: &LedgerConfig,
        id: &str,
        lock_timeout: Option<Duration>,
        statement_timeout: Option<Duration>,
    ) -> Result<Option<sqlx::Transaction<'c, MySql>>, sqlx::Error> {
        if conn.is_in_transaction() || statement_timeout.is_some() {
            return Ok(None);
        }
        let check = format!(
            "SET @datamig_marks = (SELECT 1 UNION ALL SELECT 1 {})",
            marks_in_force_of(config, &Value::Text(Some(id.to_string())).literal())
        );
        let check = crate::backend::dialect::to_mysql(&check);
        let sql = super::begin_sql(Some(&check), lock_timeout, None);
        match conn.begin_with(AssertSqlSafe(sql)).await {
            Ok(tx) => Ok(Some(tx)),
            Err(err) if error_number(&err) == Some(SUBQUERY_ROWS) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn commit_and_begin(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
        a: &Attempt,
        lock_timeout: Option<Duration>,
        statement_timeout: Option<Duration>,
    ) -> Result<Chained, sqlx::Error> {
        // Only a batch's `UPDATE`, and only where it checks its transaction itself
        // (MariaDB): on MySQL, the check is a statement of its own before it.
        if !matches!(a.write, LedgerWrite::Continue { .. })
            || statement_timeout.is_some()
            || !UPDATE_CHECKS_TRANSACTION.load(Ordering::Relaxed)
        {
            return Ok(Chained::Unsupported);
        }
        // One text of statements, the values written in: the row's `UPDATE`; a subquery
        // the server refuses (ER_SUBQUERY_NO_1_ROW) unless it changed exactly one row, which
        // stops the text before `COMMIT`; `COMMIT`; the next batch's begin; whether a
        // pause or a cancel is in force.
        let (update, values) = row_statement(config, a, true);
        let update = to_mysql_with(&update, |n| values[n - 1].literal());
        let written = "SET @datamig_written = (SELECT 1 UNION ALL SELECT 1 FROM DUAL \
                       WHERE ROW_COUNT() <> 1)";
        let marks = to_mysql(&format!(
            "SELECT EXISTS (SELECT 1 {})",
            marks_in_force_of(config, &Value::Text(Some(a.id.to_string())).literal())
        ));
        let first = format!("{update}; {written}; COMMIT");
        let sql = format!(
            "{}; {marks}",
            super::begin_sql(Some(&first), lock_timeout, None)
        );
        match sqlx::raw_sql(AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await
        {
            Ok(rows) => {
                let marked = match rows.last() {
                    Some(row) => row.try_get::<i64, _>(0)? != 0,
                    None => false,
                };
                Ok(Chained::Committed { marked })
            }
            Err(err) => match error_number(&err) {
                Some(SUBQUERY_ROWS) => match still_atomic(conn, a).await {
                    Ok(()) => Ok(Chained::NotWritten),
                    Err(gone) => Ok(Chained::Refused(gone)),
                },
                Some(UNKNOWN_SYSTEM_VARIABLE) => {
                    // MySQL: refused before it ran, the transaction as it was.
                    UPDATE_CHECKS_TRANSACTION.store(false, Ordering::Relaxed);
                    Ok(Chained::Unsupported)
                }
                // Only the `UPDATE` waits for locks: nothing committed.
                Some(LOCK_WAIT_TIMEOUT | DEADLOCK) => Ok(Chained::Refused(err)),
                _ => Err(err),
            },
        }
    }

    async fn schema_version_applied(
        conn: &mut MySqlConnection,
        version: i64,
    ) -> Result<bool, sqlx::Error> {
        if !table_exists(&mut *conn, None, "_sqlx_migrations").await? {
            return Ok(false);
        }
        query_scalar(
            "SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $1 AND success)",
        )
        .bind(version)
        .fetch_one(conn)
        .await
    }
}

/// `FROM .. WHERE ..` of the run history's pauses and cancellations in force of the
/// migration `id` (an SQL expression, which may name `r.migration_id` for every
/// migration): each mark that no unpause or restart followed. Read by `marks_state` and
/// checked by `begin_unless_marked`.
fn marks_in_force_of(config: &LedgerConfig, id: &str) -> String {
    let runs = config.runs_ident();
    format!(
        "FROM {runs} AS r
         WHERE r.action IN ('pause', 'cancel') AND r.migration_id = {id}
           AND r.run_id = (SELECT max(run_id) FROM {runs}
                           WHERE migration_id = r.migration_id
                             AND action IN (r.action,
                                            CASE r.action WHEN 'pause' THEN 'unpause'
                                                          ELSE 'restart' END))"
    )
}

/// ER_SUBQUERY_NO_1_ROW: the check of `begin_unless_marked` found a mark in force, or
/// the `UPDATE` of `commit_and_begin` did not change its row.
const SUBQUERY_ROWS: u16 = 1242;

/// ER_LOCK_WAIT_TIMEOUT: a lock wait ran past `innodb_lock_wait_timeout`.
const LOCK_WAIT_TIMEOUT: u16 = 1205;

/// ER_LOCK_DEADLOCK: the server rolled the transaction back to break a deadlock.
const DEADLOCK: u16 = 1213;

/// Whether the ledger's `UPDATE`s check their transaction themselves (see `write_ledger`):
/// until a server refuses `@@in_transaction` (MySQL), for the rest of the process. A wrong
/// guess costs one refused statement, never a write: every server still checks.
static UPDATE_CHECKS_TRANSACTION: AtomicBool = AtomicBool::new(true);

/// MySQL's error for a system variable it does not have (`@@in_transaction`).
const UNKNOWN_SYSTEM_VARIABLE: u16 = 1193;

/// Writes `a`'s ledger row; whether it applied. `guarded`: an `UPDATE` that applies only
/// inside a transaction (`@@in_transaction`, MariaDB's: 0 in a statement that runs on its
/// own after an implicit commit).
async fn write_row(
    conn: &mut MySqlConnection,
    config: &LedgerConfig,
    a: &Attempt,
    guarded: bool,
) -> Result<bool, sqlx::Error> {
    let (sql, values) = row_statement(config, a, guarded);
    let mut q = query(AssertSqlSafe(sql));
    for value in values {
        q = match value {
            Value::Text(text) => q.bind(text),
            Value::Int(n) => q.bind(n),
            Value::Time(at) => q.bind(at),
        };
    }
    Ok(q.execute(conn).await?.rows_affected() == 1)
}

/// A value of a ledger row's statement: bound as a parameter, or written into the
/// statement as a literal where it goes out as text among others (`commit_and_begin`).
enum Value {
    Text(Option<String>),
    Int(i64),
    Time(DateTime<Utc>),
}

impl Value {
    /// The value as a MySQL literal: text as the bytes of a hex literal read as
    /// `utf8mb4` (no quoting to get wrong), a time as the `DATETIME(6)` it is stored as
    /// (UTC, as sqlx binds it).
    fn literal(&self) -> String {
        match self {
            Value::Text(None) => "NULL".to_string(),
            Value::Text(Some(text)) => {
                format!("CONVERT(X'{}' USING utf8mb4)", hex(text.as_bytes()))
            }
            Value::Int(n) => n.to_string(),
            Value::Time(at) => format!("'{}'", at.format("%Y-%m-%d %H:%M:%S%.6f")),
        }
    }
}

/// The statement that writes `a`'s ledger row (numbered parameters, in standard SQL) and
/// its values in order; `guarded` as in [`write_row`].
fn row_statement(config: &LedgerConfig, a: &Attempt, guarded: bool) -> (String, Vec<Value>) {
    let open = if guarded {
        " AND @@in_transaction = 1"
    } else {
        ""
    };
    let ledger = config.ledger_ident();
    let revision = i64::from(i32::try_from(a.revision).unwrap_or(i32::MAX));
    if a.write == LedgerWrite::Accept {
        return (
            format!(
                "UPDATE {ledger} SET checksum = $1, revision = $2, description = $3 WHERE id = $4"
            ),
            vec![
                Value::Text(Some(a.checksum.to_string())),
                Value::Int(revision),
                Value::Text(Some(a.description.to_string())),
                Value::Text(Some(a.id.to_string())),
            ],
        );
    }
    // The same exactly-once statements as the other backends' (see `shared.rs`): an
    // insert refused by the primary key a second time; a re-run only while the row
    // holds the checksum and run count it planned from; a batch only while the row is
    // `running` at its checkpoint (`<=>` is MySQL's null-safe equality).
    let set = "checksum = $1, revision = $2, description = $3, started_at = $4,
               finished_at = $5, duration_ms = $6, rows_affected = $7, notes = $8,
               host = $9, app_version = $10, status = $11, checkpoint = $12,
               batches = $13, applied_by = CURRENT_USER()";
    let sql = match &a.write {
        LedgerWrite::Insert => format!("INSERT INTO {ledger} SET {set}, id = $14"),
        LedgerWrite::Rerun { .. } => format!(
            "UPDATE {ledger} SET {set}, run_count = run_count + 1
             WHERE id = $14 AND checksum = $15 AND run_count = $16{open}"
        ),
        LedgerWrite::Continue { .. } => format!(
            "UPDATE {ledger} SET {set}
             WHERE id = $14 AND status = 'running' AND checkpoint <=> $15{open}"
        ),
        LedgerWrite::Accept => unreachable!("handled above"),
    };
    let mut values = vec![
        Value::Text(Some(a.checksum.to_string())),
        Value::Int(revision),
        Value::Text(Some(a.description.to_string())),
        Value::Time(a.first_started_at),
        Value::Time(a.finished_at),
        Value::Int(a.total_duration_ms()),
        Value::Int(a.total_rows_i64()),
        Value::Text(a.notes_text()),
        Value::Text(Some(a.host.clone())),
        Value::Text(a.app_version.clone()),
        Value::Text(Some(a.status.to_string())),
        Value::Text(a.checkpoint.clone()),
        Value::Int(i64::try_from(a.batches).unwrap_or(i64::MAX)),
        Value::Text(Some(a.id.to_string())),
    ];
    match &a.write {
        LedgerWrite::Rerun {
            checksum,
            run_count,
        } => {
            values.push(Value::Text(Some(checksum.clone())));
            values.push(Value::Int(i64::from(*run_count)));
        }
        LedgerWrite::Continue { expected } => values.push(Value::Text(expected.clone())),
        LedgerWrite::Insert | LedgerWrite::Accept => {}
    }
    (sql, values)
}

/// A pause, as `pause_state` reads it: migration, by, host, at, reason.
type PauseRow = (
    String,
    String,
    String,
    chrono::DateTime<chrono::Utc>,
    Option<String>,
);

/// A pause or a cancel, as `marks_state` reads it: action, then as [`PauseRow`].
type MarkRow = (
    String,
    String,
    String,
    String,
    DateTime<Utc>,
    Option<String>,
);

/// Whether table `table` exists in database `schema` (the connection's, without one).
pub(super) async fn table_exists(
    conn: &mut MySqlConnection,
    schema: Option<&str>,
    table: &str,
) -> Result<bool, sqlx::Error> {
    query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.TABLES
                        WHERE TABLE_SCHEMA = coalesce($1, DATABASE()) AND TABLE_NAME = $2)",
    )
    .bind(schema)
    .bind(table)
    .fetch_one(conn)
    .await
}

/// Before a migration's ledger row is written in its transaction: fails when that
/// transaction is gone, committed by a statement of the body that commits implicitly
/// (DDL: `CREATE`, `ALTER`, `DROP`, `TRUNCATE`, `RENAME`, ..; or `LOCK TABLES`, `BEGIN`).
/// Its writes before that statement are committed, and writing the ledger row now would
/// record as atomic what was not; without the row, the migration stays pending and says
/// why.
async fn still_atomic(conn: &mut MySqlConnection, a: &Attempt) -> Result<(), sqlx::Error> {
    if in_transaction(conn).await? {
        return Ok(());
    }
    Err(sqlx::Error::Configuration(Box::new(Error::Config(
        format!(
            "migration {} ran a statement that MySQL commits implicitly (DDL such as CREATE, ALTER, \
         DROP, TRUNCATE or RENAME TABLE, or LOCK TABLES, or a second BEGIN): its transaction \
         was committed part-way, so its writes up to that statement are in the database and \
         its ledger row is not written, and the migration is still pending. MySQL cannot roll \
         DDL back: move the DDL into a schema migration that runs before it, and make the \
         data migration's writes converge before running it again",
            a.id
        ),
    ))))
}

/// Whether `conn` is inside a transaction on the server, in one statement whatever the
/// server: `@@in_transaction` on MariaDB (read through a comment only MariaDB executes); on
/// MySQL, which has no such variable, whether InnoDB lists a transaction of this session (a
/// transaction begun with a consistent snapshot is listed from its start).
pub(super) async fn in_transaction(conn: &mut MySqlConnection) -> Result<bool, sqlx::Error> {
    let open: i64 = query_scalar(
        "SELECT CAST(coalesce(/*M!100000 @@in_transaction, */
                              (SELECT count(*) FROM information_schema.INNODB_TRX
                               WHERE trx_mysql_thread_id = CONNECTION_ID())) AS signed)",
    )
    .fetch_one(conn)
    .await?;
    Ok(open != 0)
}

/// The marks an operator set (`on`) and did not lift since (`off`) in the run history:
/// pauses, cancellations. As the shared statement, with the optional id bound once
/// (MySQL's `?` are positional): `coalesce(?, migration_id)` is the id, or every
/// migration. The actions are constants of this file.
async fn marks_in_force(
    conn: &mut MySqlConnection,
    config: &LedgerConfig,
    id: Option<&str>,
    (on, off): (&'static str, &'static str),
) -> Result<Vec<Pause>, sqlx::Error> {
    let runs = config.runs_ident();
    let sql = format!(
        "SELECT migration_id, db_user, host, finished_at, reason FROM {runs} AS r
         WHERE action = '{on}' AND migration_id = coalesce($1, migration_id)
           AND run_id = (SELECT max(run_id) FROM {runs}
                         WHERE migration_id = r.migration_id
                           AND action IN ('{on}', '{off}'))
         ORDER BY migration_id"
    );
    let rows: Vec<PauseRow> = super::sql::query_as(AssertSqlSafe(sql))
        .bind(id)
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(migration_id, by, host, at, reason)| Pause {
            migration_id,
            by,
            host,
            at,
            reason,
        })
        .collect())
}
