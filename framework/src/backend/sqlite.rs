//! SQLite: a lock row instead of advisory locks, `BEGIN IMMEDIATE` transactions, ledger DDL.
//!
//! SQLite has one writer at a time per database file, and no sessions other processes can
//! see. The runner lock is therefore a row of `<ledger>_lock` holding the runner's host,
//! process id and a token of its lock; a row whose runner is gone (a process of this host
//! that no longer runs, or a lock of this process that was dropped) is stale and taken over.
//! A runner's transactions die with its process, so a stale row never hides half-applied
//! work.

use std::time::Duration;

use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};
use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Connection, Row, SqlStr, Sqlite};

use super::dialect::{Actor, Dialect};
use super::shared::{Shared, bind_key_value};
use super::steps::Steps;
use super::{Backend, KeyColumn, LockToken, hex};
use crate::bulk::SequenceReset;
use crate::copy_text::{RowSink, Value};
use crate::error::Error;
use crate::key::{Key, KeyKind, KeyShape, KeyValue};
use crate::ledger::{Attempt, LAYOUT, LastRun, LedgerConfig, LedgerEntry, Pause};
use crate::merge::{Plan, Source, UpsertMode, UpsertReport, UpsertRequest, stage_name};
use crate::migration::{Code, Migration};
use crate::session::{SessionInfo, host_name, local_process_alive};
use crate::sql::quote_ident;

/// How long a statement waits for another connection's write lock when the migration sets
/// no `lock_timeout`: sqlx's default busy timeout.
const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Rows per `INSERT` when staging Rust values (SQLite binds at most 32766 values a
/// statement).
const STAGE_CHUNK_VALUES: usize = 30_000;

impl Backend for Sqlite {}

impl Steps for Sqlite {
    const ID: &'static str = "sqlite";
    const CLOSE_RUNNER_CONNECTION: bool = false;
    const PIN_IN_TRANSACTION: bool = false;

    const DIALECT: Dialect = Dialect {
        actor: Actor::OsUser,
        persistent: true,
    };

    fn rows_affected(result: &<Self as sqlx::Database>::QueryResult) -> u64 {
        result.rows_affected()
    }

    async fn execute(conn: &mut SqliteConnection, sql: SqlStr) -> Result<u64, sqlx::Error> {
        Shared::<Self>::execute(conn, sql).await
    }

    async fn fetch_i64(
        conn: &mut SqliteConnection,
        sql: SqlStr,
    ) -> Result<Option<i64>, sqlx::Error> {
        Shared::<Self>::fetch_i64(conn, sql).await
    }

    async fn execute_keyed(
        conn: &mut SqliteConnection,
        sql: SqlStr,
        values: &[KeyValue],
    ) -> Result<u64, sqlx::Error> {
        Shared::<Self>::execute_keyed(conn, sql, values).await
    }

    async fn check_scope(
        conn: &mut SqliteConnection,
        table: &str,
        scope: &str,
    ) -> Result<(), sqlx::Error> {
        Shared::<Self>::check_scope(conn, table, scope).await
    }

    async fn has_keys_after(
        conn: &mut SqliteConnection,
        shape: &KeyShape,
        after: &Key,
        upper: Option<&Key>,
    ) -> Result<bool, sqlx::Error> {
        Shared::<Self>::has_keys_after(conn, shape, after, upper).await
    }

    async fn pause_state(
        conn: &mut SqliteConnection,
        config: &LedgerConfig,
        id: Option<&str>,
    ) -> Result<Vec<Pause>, sqlx::Error> {
        Shared::<Self>::pause_state(conn, config, id).await
    }

    async fn read_ledger(
        conn: &mut SqliteConnection,
        config: &LedgerConfig,
    ) -> Result<Vec<LedgerEntry>, sqlx::Error> {
        Shared::<Self>::read_ledger(conn, config).await
    }

    fn code(migration: &Migration) -> Option<Code<Self>> {
        migration.sqlite_code()
    }

    async fn ensure_ledger(
        conn: &mut SqliteConnection,
        config: &LedgerConfig,
    ) -> Result<(), sqlx::Error> {
        let ledger = config.ledger_ident();
        let runs = config.runs_ident();
        let layout = config.layout_ident();
        // An index is created in the schema of its table, named without it.
        let index = match config.schema_name() {
            Some(schema) => format!(
                "{}.{}",
                quote_ident(schema),
                quote_ident(&format!("{}_by_migration", config.runs_table_name()))
            ),
            None => quote_ident(&format!("{}_by_migration", config.runs_table_name())),
        };
        let runs_table = quote_ident(config.runs_table_name());
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {ledger} (
                id            TEXT PRIMARY KEY NOT NULL,
                checksum      TEXT NOT NULL,
                revision      INTEGER NOT NULL,
                description   TEXT NOT NULL,
                started_at    TEXT NOT NULL,
                finished_at   TEXT NOT NULL,
                duration_ms   INTEGER NOT NULL,
                rows_affected INTEGER NOT NULL,
                notes         TEXT,
                applied_by    TEXT NOT NULL,
                host          TEXT NOT NULL,
                app_version   TEXT,
                run_count     INTEGER NOT NULL DEFAULT 1,
                status        TEXT NOT NULL DEFAULT 'applied',
                checkpoint    TEXT,
                batches       INTEGER NOT NULL DEFAULT 0
            );
            CREATE TABLE IF NOT EXISTS {runs} (
                run_id        INTEGER PRIMARY KEY AUTOINCREMENT,
                migration_id  TEXT NOT NULL,
                action        TEXT NOT NULL,
                outcome       TEXT NOT NULL,
                checksum      TEXT NOT NULL,
                revision      INTEGER NOT NULL,
                started_at    TEXT NOT NULL,
                finished_at   TEXT NOT NULL,
                duration_ms   INTEGER NOT NULL,
                rows_affected INTEGER NOT NULL,
                error         TEXT,
                reason        TEXT,
                db_user       TEXT NOT NULL,
                host          TEXT NOT NULL,
                app_version   TEXT
            );
            CREATE INDEX IF NOT EXISTS {index} ON {runs_table} (migration_id, run_id);
            CREATE TABLE IF NOT EXISTS {layout} (
                version     INTEGER NOT NULL,
                upgraded_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
            );
            DELETE FROM {layout};
            INSERT INTO {layout} (version) VALUES ({LAYOUT});"
        );
        sqlx::raw_sql(AssertSqlSafe(ddl)).execute(conn).await?;
        Ok(())
    }

    async fn table_columns(
        conn: &mut SqliteConnection,
        schema: Option<&str>,
        table: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT name FROM pragma_table_info($1, $2) ORDER BY cid")
            .bind(table)
            .bind(schema.unwrap_or("main"))
            .fetch_all(conn)
            .await
    }

    async fn begin(
        conn: &mut SqliteConnection,
        lock_timeout: Option<Duration>,
    ) -> Result<sqlx::Transaction<'_, Sqlite>, sqlx::Error> {
        // The migration's lock timeout is how long it waits for the write lock: SQLite's
        // busy timeout, set before the transaction asks for it.
        let busy = lock_timeout.unwrap_or(DEFAULT_BUSY_TIMEOUT);
        sqlx::query(AssertSqlSafe(format!(
            "PRAGMA busy_timeout = {}",
            busy.as_millis().clamp(1, i32::MAX as u128)
        )))
        .execute(&mut *conn)
        .await?;
        // IMMEDIATE takes the write lock now: two writers queue at BEGIN instead of one
        // failing with SQLITE_BUSY when it first writes after reading.
        conn.begin_with("BEGIN IMMEDIATE").await
    }

    async fn upsert(
        conn: &mut SqliteConnection,
        request: UpsertRequest<'_>,
    ) -> Result<(UpsertReport, u64), Error> {
        upsert(conn, request).await
    }

    async fn write_count(conn: &mut SqliteConnection) -> Result<u64, sqlx::Error> {
        let n: i64 = sqlx::query_scalar("SELECT total_changes()")
            .fetch_one(conn)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn reset_sequences(
        conn: &mut SqliteConnection,
        table: &str,
    ) -> Result<Vec<SequenceReset>, Error> {
        let sql: Option<String> =
            sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = $1")
                .bind(table)
                .fetch_optional(&mut *conn)
                .await?;
        let Some(sql) = sql else {
            return Err(Error::Config(format!(
                "cannot reset the sequences of {table}: no such table"
            )));
        };
        // Only an AUTOINCREMENT key has a counter; a plain INTEGER PRIMARY KEY always takes
        // the largest rowid + 1 and needs nothing.
        if !sql.to_ascii_uppercase().contains("AUTOINCREMENT") {
            return Ok(Vec::new());
        }
        let column: String =
            sqlx::query_scalar("SELECT name FROM pragma_table_info($1) WHERE pk = 1")
                .bind(table)
                .fetch_one(&mut *conn)
                .await?;
        let max: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT coalesce(max(rowid), 0) FROM {}",
            quote_ident(table)
        )))
        .fetch_one(&mut *conn)
        .await?;
        // Never backwards: the counter keeps its value when it is already past the rows.
        let updated = sqlx::query("UPDATE sqlite_sequence SET seq = max(seq, $2) WHERE name = $1")
            .bind(table)
            .bind(max)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        if updated == 0 {
            sqlx::query("INSERT INTO sqlite_sequence (name, seq) VALUES ($1, $2)")
                .bind(table)
                .bind(max)
                .execute(&mut *conn)
                .await?;
        }
        let seq: i64 = sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = $1")
            .bind(table)
            .fetch_one(&mut *conn)
            .await?;
        Ok(vec![SequenceReset {
            table: table.to_string(),
            column,
            sequence: "sqlite_sequence".to_string(),
            next_value: seq + 1,
        }])
    }

    async fn analyze(conn: &mut SqliteConnection, table: &str) -> Result<(), Error> {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1)",
        )
        .bind(table)
        .fetch_one(&mut *conn)
        .await?;
        if !exists {
            return Err(Error::Config(format!(
                "cannot analyze {table}: no such table"
            )));
        }
        sqlx::query(AssertSqlSafe(format!("ANALYZE {}", quote_ident(table))))
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn user_tables(
        conn: &mut SqliteConnection,
    ) -> Result<Vec<(String, String)>, sqlx::Error> {
        // The main database's tables; SQLite's own (`sqlite_%`) are left out.
        sqlx::query_as(
            "SELECT 'main', name FROM sqlite_master
             WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
             ORDER BY name",
        )
        .fetch_all(conn)
        .await
    }

    async fn primary_key(
        conn: &mut SqliteConnection,
        schema: &str,
        table: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT name FROM pragma_table_info($1, $2) WHERE pk > 0 ORDER BY pk")
            .bind(table)
            .bind(schema)
            .fetch_all(conn)
            .await
    }

    async fn table_fingerprint(
        conn: &mut SqliteConnection,
        schema: &str,
        table: &str,
        key: &[String],
    ) -> Result<(i64, String), sqlx::Error> {
        let text = row_text(conn, schema, table).await?;
        let order = if key.is_empty() {
            "1".to_string()
        } else {
            key.iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let ident = format!("{}.{}", quote_ident(schema), quote_ident(table));
        let sql = format!("SELECT {text} FROM {ident} ORDER BY {order}");
        // The same scheme as PostgreSQL's: each row's text hashed, the row hashes hashed in
        // key order. The rows stream through; only the running digest is kept.
        let mut all = Sha256::new();
        let mut rows = 0_i64;
        let mut stream = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql)).fetch(&mut *conn);
        while let Some(row) = stream.try_next().await? {
            all.update(Sha256::digest(row.as_bytes()));
            rows += 1;
        }
        Ok((rows, hex(&all.finalize())))
    }

    async fn rows_missing_from(
        conn: &mut SqliteConnection,
        schema: &str,
        table: &str,
        left: &str,
        right: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        let text = row_text(conn, schema, table).await?;
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT {text} FROM {left} EXCEPT SELECT {text} FROM {right} ORDER BY 1 LIMIT 5"
        )))
        .fetch_all(conn)
        .await
    }

    async fn table_rows(
        conn: &mut SqliteConnection,
        schema: &str,
        table: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        let text = row_text(conn, schema, table).await?;
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT {text} FROM {}.{}",
            quote_ident(schema),
            quote_ident(table)
        )))
        .fetch_all(conn)
        .await
    }

    async fn ledger_exists(
        conn: &mut SqliteConnection,
        config: &LedgerConfig,
    ) -> Result<bool, sqlx::Error> {
        table_exists(conn, config.schema_name(), config.ledger_table_name()).await
    }

    async fn last_runs(
        conn: &mut SqliteConnection,
        config: &LedgerConfig,
    ) -> Result<Vec<LastRun>, sqlx::Error> {
        Shared::<Self>::last_runs(conn, config).await
    }

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

    async fn pooler_evidence(
        _conn: &mut SqliteConnection,
        _options: &sqlx::sqlite::SqliteConnectOptions,
    ) -> Result<Option<String>, sqlx::Error> {
        Ok(None)
    }

    async fn set_local_timeouts(
        _conn: &mut SqliteConnection,
        _lock_timeout: Option<Duration>,
        _statement_timeout: Option<Duration>,
        _idle_in_transaction: Option<Duration>,
    ) -> Result<(), sqlx::Error> {
        // The lock timeout was applied by `begin`; SQLite has no statement timeout, and a
        // transaction dies with its process.
        Ok(())
    }

    async fn write_ledger(
        conn: &mut SqliteConnection,
        config: &LedgerConfig,
        a: &Attempt,
    ) -> Result<bool, sqlx::Error> {
        Shared::<Self>::write_ledger(conn, config, a).await
    }

    async fn key_columns(
        conn: &mut SqliteConnection,
        table: &str,
        names: &[&str],
    ) -> Result<Option<Vec<Option<KeyColumn>>>, sqlx::Error> {
        if !table_exists(conn, None, table).await? {
            return Ok(None);
        }
        // Looked up by name: in SQL, a double-quoted name that matches no column would be
        // read as a string literal, and every comparison with it would quietly succeed.
        let info: Vec<(String, String, bool, i64)> =
            sqlx::query_as("SELECT name, type, \"notnull\", pk FROM pragma_table_info($1)")
                .bind(table)
                .fetch_all(&mut *conn)
                .await?;
        let primary: Vec<&(String, String, bool, i64)> =
            info.iter().filter(|(.., pk)| *pk > 0).collect();
        let mut columns = Vec::with_capacity(names.len());
        for name in names {
            let Some((_, data_type, not_null, pk)) = info.iter().find(|(n, ..)| n == name) else {
                columns.push(None);
                continue;
            };
            // SQLite's integer affinity: a declared type containing INT.
            let integer = data_type.to_ascii_uppercase().contains("INT");
            // `INTEGER PRIMARY KEY` is the rowid, which is never NULL.
            let rowid = *pk > 0 && primary.len() == 1 && data_type.eq_ignore_ascii_case("INTEGER");
            let not_integers = if integer {
                let key = quote_ident(name);
                sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT count(*) FROM {} WHERE {key} IS NOT NULL AND typeof({key}) <> 'integer'",
                    quote_ident(table)
                )))
                .fetch_one(&mut *conn)
                .await?
            } else {
                0
            };
            columns.push(Some(KeyColumn {
                name: name.to_string(),
                sql_type: data_type.clone(),
                kind: Some(if integer {
                    KeyKind::Integer
                } else {
                    KeyKind::Other
                }),
                not_null: *not_null || rowid,
                not_integers,
                number: 0,
                collation: 0,
            }));
        }
        Ok(Some(columns))
    }

    async fn key_index(
        conn: &mut SqliteConnection,
        table: &str,
        columns: &[KeyColumn],
    ) -> Result<Option<String>, sqlx::Error> {
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        // The rowid (`INTEGER PRIMARY KEY`) is the table's own order.
        let rowid: Option<String> = sqlx::query_scalar(
            "SELECT name FROM pragma_table_info($1) WHERE pk = 1 AND upper(type) = 'INTEGER'
               AND (SELECT count(*) FROM pragma_table_info($1) WHERE pk > 0) = 1",
        )
        .bind(table)
        .fetch_optional(&mut *conn)
        .await?;
        if names.len() == 1 && rowid.as_deref() == Some(names[0]) {
            return Ok(Some("the rowid".to_string()));
        }
        let indexes: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_index_list($1) WHERE partial = 0")
                .bind(table)
                .fetch_all(&mut *conn)
                .await?;
        for index in indexes {
            let leading: Vec<Option<String>> =
                sqlx::query_scalar("SELECT name FROM pragma_index_info($1) ORDER BY seqno")
                    .bind(&index)
                    .fetch_all(&mut *conn)
                    .await?;
            if leading.len() >= names.len()
                && leading
                    .iter()
                    .zip(&names)
                    .all(|(have, want)| have.as_deref() == Some(*want))
            {
                return Ok(Some(index));
            }
        }
        Ok(None)
    }

    async fn next_batch(
        conn: &mut SqliteConnection,
        shape: &KeyShape,
        after: Option<&Key>,
        upper: Option<&Key>,
        size: u32,
    ) -> Result<Option<(Key, u64)>, sqlx::Error> {
        let sql = shape.next_batch_sql(after.is_some(), upper.is_some());
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for value in after
            .map(Key::values)
            .unwrap_or_default()
            .iter()
            .chain(upper.map(Key::values).unwrap_or_default())
        {
            q = bind_key_value(q, value);
        }
        let Some(row) = q.bind(i64::from(size)).fetch_optional(conn).await? else {
            return Ok(None);
        };
        let mut values = Vec::with_capacity(shape.parts.len());
        for i in 0..shape.parts.len() {
            let class: String = row.try_get(2 * i + 1)?;
            values.push(match class.as_str() {
                "integer" => KeyValue::Integer(row.try_get(2 * i)?),
                "real" => KeyValue::Real(row.try_get(2 * i)?),
                "blob" => KeyValue::Bytes(row.try_get(2 * i)?),
                _ => KeyValue::Text(row.try_get(2 * i)?),
            });
        }
        let keys: i64 = row.try_get(2 * shape.parts.len())?;
        Ok(Some((Key(values), u64::try_from(keys).unwrap_or(0))))
    }

    async fn estimate_rows(
        conn: &mut SqliteConnection,
        shape: &KeyShape,
        after: Option<&Key>,
        upper: Option<&Key>,
    ) -> Result<Option<u64>, sqlx::Error> {
        // SQLite keeps no row estimate; counting walks the key's index, once per run.
        let mut q = sqlx::query(AssertSqlSafe(format!(
            "SELECT count(*) FROM ({})",
            shape.rows_after_sql(after.is_some(), upper.is_some())
        )));
        for value in after
            .map(Key::values)
            .unwrap_or_default()
            .iter()
            .chain(upper.map(Key::values).unwrap_or_default())
        {
            q = bind_key_value(q, value);
        }
        let rows: i64 = q.fetch_one(conn).await?.try_get(0)?;
        Ok(u64::try_from(rows).ok())
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

    async fn schema_version_applied(
        conn: &mut SqliteConnection,
        version: i64,
    ) -> Result<bool, sqlx::Error> {
        if !table_exists(conn, None, "_sqlx_migrations").await? {
            return Ok(false);
        }
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $1 AND success)",
        )
        .bind(version)
        .fetch_one(conn)
        .await
    }

    async fn server_version(conn: &mut SqliteConnection) -> Result<String, sqlx::Error> {
        sqlx::query_scalar("SELECT 'SQLite ' || sqlite_version()")
            .fetch_one(conn)
            .await
    }

    fn is_lock_timeout(err: &sqlx::Error) -> bool {
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes: the busy
        // timeout ran out while another connection held the lock.
        err.as_database_error()
            .and_then(|e| e.code())
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 5 | 6))
    }

    async fn record_run(
        conn: &mut SqliteConnection,
        config: &LedgerConfig,
        a: &Attempt,
        error: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        Shared::<Self>::record_run(conn, config, a, error).await
    }
}

/// Whether `table` exists in `schema` (`main` by default).
async fn table_exists(
    conn: &mut SqliteConnection,
    schema: Option<&str>,
    table: &str,
) -> Result<bool, sqlx::Error> {
    let master = format!("{}.sqlite_master", quote_ident(schema.unwrap_or("main")));
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM {master} WHERE type = 'table' AND name = $1)"
    )))
    .bind(table)
    .fetch_one(conn)
    .await
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

/// Each row as one text: its values `quote()`d and joined by commas.
async fn row_text(
    conn: &mut SqliteConnection,
    schema: &str,
    table: &str,
) -> Result<String, sqlx::Error> {
    let columns: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pragma_table_info($1, $2) ORDER BY cid")
            .bind(table)
            .bind(schema)
            .fetch_all(conn)
            .await?;
    if columns.is_empty() {
        return Ok("''".to_string());
    }
    Ok(columns
        .iter()
        .map(|c| format!("quote({})", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(" || ',' || "))
}

/// The upsert on SQLite: the rows staged in a temporary table, then one
/// `INSERT .. SELECT .. ON CONFLICT (key) DO UPDATE SET .. WHERE (..) IS NOT (..)`.
///
/// SQLite's `RETURNING` cannot tell an inserted row from an updated one, so the counts come
/// from the staged rows: those whose key already existed could only be updated.
async fn upsert(
    conn: &mut SqliteConnection,
    request: UpsertRequest<'_>,
) -> Result<(UpsertReport, u64), Error> {
    let distinct = |current: &str, incoming: &str| format!("({current}) IS NOT ({incoming})");
    let stage = stage_name("stage");
    let plan = match &request.source {
        Source::Missing => unreachable!("checked by the builder"),
        Source::Query(sql) => {
            sqlx::query(AssertSqlSafe(format!(
                "CREATE TEMP TABLE {stage} AS SELECT * FROM ({sql})"
            )))
            .execute(&mut *conn)
            .await?;
            let columns: Vec<String> =
                sqlx::query_scalar("SELECT name FROM pragma_table_info($1, 'temp') ORDER BY cid")
                    .bind(stage.trim_matches('"'))
                    .fetch_all(&mut *conn)
                    .await?;
            Plan::new(&request, &columns, distinct)
        }
        Source::Rows { columns, .. } => {
            let plan = Plan::new(&request, columns, distinct)?;
            sqlx::query(AssertSqlSafe(format!(
                "CREATE TEMP TABLE {stage} AS SELECT {} FROM {} WHERE 0",
                plan.column_list, request.target
            )))
            .execute(&mut *conn)
            .await?;
            Ok(plan)
        }
    };
    let result = match plan {
        Ok(plan) => merge(conn, request, &plan, &stage).await,
        Err(err) => Err(err),
    };
    // The staging table goes whatever happened, so that the migration can stage again.
    sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS temp.{stage}")))
        .execute(&mut *conn)
        .await?;
    result
}

/// Stages the Rust rows (if any), checks the keys, merges, counts.
async fn merge(
    conn: &mut SqliteConnection,
    request: UpsertRequest<'_>,
    plan: &Plan,
    stage: &str,
) -> Result<(UpsertReport, u64), Error> {
    let UpsertRequest {
        target,
        table,
        key,
        source,
        mode,
    } = request;
    let staged_rows = matches!(source, Source::Rows { .. });
    if let Source::Rows {
        columns, mut next, ..
    } = source
    {
        let per_row = columns.len().max(1);
        let chunk_rows = (STAGE_CHUNK_VALUES / per_row).max(1);
        let mut values = Vec::with_capacity(chunk_rows * per_row);
        loop {
            let more = next(RowSink::Values(&mut values));
            let rows = values.len() / per_row;
            if rows > 0 && (rows >= chunk_rows || !more) {
                stage_chunk(conn, stage, &plan.column_list, per_row, &mut values).await?;
            }
            if !more {
                break;
            }
        }
    }
    let updates = matches!(mode, UpsertMode::Overwrite | UpsertMode::UpdateIfChanged);
    if updates {
        // PostgreSQL refuses to update one row twice in a statement; SQLite would quietly
        // let the last source row win. Both fail here instead.
        let repeated: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM (SELECT 1 FROM {stage} GROUP BY {} HAVING count(*) > 1)",
            plan.key_list
        )))
        .fetch_one(&mut *conn)
        .await?;
        if repeated > 0 {
            return Err(Error::Config(format!(
                "the rows for the upsert into {table} hold the same key more than once; each key may appear once"
            )));
        }
    }
    let matching = key
        .iter()
        .map(|k| format!("t.{0} = s.{0}", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let (total, existing): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT count(*), coalesce(sum(EXISTS (SELECT 1 FROM {target} AS t WHERE {matching})), 0)
         FROM {stage} AS s"
    )))
    .fetch_one(&mut *conn)
    .await?;
    // `WHERE true` keeps SQLite from reading `ON CONFLICT` as a join's `ON`.
    let statement = plan.insert_from(&format!(
        "SELECT {} FROM {stage} WHERE true",
        plan.column_list
    ));
    let changed = sqlx::query(AssertSqlSafe(statement))
        .execute(&mut *conn)
        .await
        .map_err(|err| explain_upsert_error(&table, err))?
        .rows_affected();
    let as_u64 = |n: i64| u64::try_from(n).unwrap_or(0);
    let (total, existing) = (as_u64(total), as_u64(existing));
    let (inserted, updated) = if updates {
        let inserted = total.saturating_sub(existing);
        (inserted, changed.saturating_sub(inserted))
    } else {
        (changed, 0)
    };
    let report = UpsertReport {
        inserted,
        updated,
        unchanged: total.saturating_sub(inserted + updated),
    };
    // Rust values were staged with `INSERT`s, which `total_changes()` counts; rows of a
    // query were staged by `CREATE TABLE .. AS`, which it does not.
    let staged = if staged_rows { total } else { 0 };
    Ok((report, staged))
}

/// Inserts the staged values (whole rows of `per_row` values) into the staging table.
async fn stage_chunk(
    conn: &mut SqliteConnection,
    stage: &str,
    columns: &str,
    per_row: usize,
    values: &mut Vec<Value>,
) -> Result<(), Error> {
    let rows = values.len() / per_row;
    let row = format!("({})", vec!["?"; per_row].join(", "));
    let sql = format!(
        "INSERT INTO {stage} ({columns}) VALUES {}",
        vec![row.as_str(); rows].join(", ")
    );
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for value in values.drain(..) {
        query = match value {
            Value::Null => query.bind(None::<i64>),
            Value::Bool(b) => query.bind(b),
            Value::Int(i) => query.bind(i),
            Value::Float(f) => query.bind(f),
            Value::Text(t) => query.bind(t),
        };
    }
    query.execute(conn).await?;
    Ok(())
}

fn explain_upsert_error(table: &str, err: sqlx::Error) -> Error {
    let message = err
        .as_database_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    if message.contains("ON CONFLICT clause does not match") {
        Error::Config(format!(
            "the upsert key of {table} is not a primary key or unique index of the table"
        ))
    } else {
        Error::Database(err)
    }
}
