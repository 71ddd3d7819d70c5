//! MySQL's walk over a batched migration's key: the key's columns (from
//! `information_schema.COLUMNS`) and index (`information_schema.STATISTICS`), the next
//! batch by keyset pagination (the batch's last key read at its offset in the index range
//! scan; the shorter last batch counted), a row estimate for progress, and the check of the
//! keys left in one statement on MariaDB (each statement stopped at its first row by
//! `LIMIT 1`; see `begin_rest_check`).
//!
//! Keys: integer columns (read and bound as `i64`; `BIGINT UNSIGNED` refused when a value
//! is past `i64`'s range), `CHAR`/`VARCHAR`/`TEXT` (UUIDs as `CHAR(36)`, compared in the
//! column's collation, as the index orders them), `BINARY`/`VARBINARY` (UUIDs as
//! `BINARY(16)`, compared byte by byte), dates and times (read as text, which MySQL reads
//! back as the column's type); composite keys of these.

use sqlx::mysql::{MySqlConnection, MySqlRow};
use sqlx::{AssertSqlSafe, MySql, Row};

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::ledger::table_exists;
use super::server::{Server, error_number};
use super::sql::{bind_keyed, keyed, query_as, query_scalar};
use crate::backend::shared::Shared;
use crate::backend::steps::{KeyColumn, LoadSample, WalkSteps};
use crate::key::{Key, KeyKind, KeyShape, KeyValue, RestGuard};
use crate::sql::quote_ident;

impl WalkSteps for MySql {
    async fn key_columns(
        conn: &mut MySqlConnection,
        table: &str,
        names: &[&str],
    ) -> Result<Option<Vec<Option<KeyColumn>>>, sqlx::Error> {
        if !table_exists(&mut *conn, None, table).await? {
            return Ok(None);
        }
        let info: Vec<(String, String, String, String)> = query_as(
            "SELECT CAST(COLUMN_NAME AS char), CAST(COLUMN_TYPE AS char),
                    CAST(DATA_TYPE AS char), CAST(IS_NULLABLE AS char)
             FROM information_schema.COLUMNS
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = $1",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        let mut columns = Vec::with_capacity(names.len());
        for name in names {
            let Some((_, column_type, data_type, nullable)) = info.iter().find(|(n, ..)| n == name)
            else {
                columns.push(None);
                continue;
            };
            let kind = key_kind(data_type);
            // Values of a `BIGINT UNSIGNED` past i64's range cannot be read as integers.
            let not_integers = if data_type == "bigint" && column_type.contains("unsigned") {
                query_scalar(AssertSqlSafe(format!(
                    "SELECT count(*) FROM {} WHERE {} > 9223372036854775807",
                    quote_ident(table),
                    quote_ident(name)
                )))
                .fetch_one(&mut *conn)
                .await?
            } else {
                0
            };
            columns.push(Some(KeyColumn {
                name: name.to_string(),
                sql_type: column_type.clone(),
                kind,
                not_null: nullable == "NO",
                not_integers,
                number: 0,
                collation: 0,
            }));
        }
        Ok(Some(columns))
    }

    async fn key_index(
        conn: &mut MySqlConnection,
        table: &str,
        columns: &[KeyColumn],
    ) -> Result<Option<String>, sqlx::Error> {
        // An index whose leading columns are the key's, in order, each whole (no prefix
        // length: a prefix index cannot order the key).
        let rows: Vec<(String, i64, String, Option<i64>)> = query_as(
            "SELECT CAST(INDEX_NAME AS char), CAST(SEQ_IN_INDEX AS signed),
                    CAST(COLUMN_NAME AS char), CAST(SUB_PART AS signed)
             FROM information_schema.STATISTICS
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = $1
             ORDER BY INDEX_NAME = 'PRIMARY' DESC, INDEX_NAME, SEQ_IN_INDEX",
        )
        .bind(table)
        .fetch_all(conn)
        .await?;
        let mut names: Vec<&str> = rows.iter().map(|(n, ..)| n.as_str()).collect();
        names.dedup();
        for index in names {
            let leading: Vec<&(String, i64, String, Option<i64>)> =
                rows.iter().filter(|(n, ..)| n == index).collect();
            if leading.len() >= columns.len()
                && leading
                    .iter()
                    .zip(columns)
                    .all(|((_, _, column, prefix), want)| *column == want.name && prefix.is_none())
            {
                return Ok(Some(index.to_string()));
            }
        }
        Ok(None)
    }

    async fn check_scope(
        conn: &mut MySqlConnection,
        table: &str,
        scope: &str,
    ) -> Result<(), sqlx::Error> {
        Shared::<Self>::check_scope(conn, table, scope).await
    }

    async fn next_batch(
        conn: &mut MySqlConnection,
        shape: &KeyShape,
        after: Option<&Key>,
        upper: Option<&Key>,
        size: u32,
    ) -> Result<Option<(Key, u64)>, sqlx::Error> {
        // A whole batch: its last key is the `size`-th, read off the index range scan.
        let sql = full_batch_sql(shape, after.is_some(), upper.is_some());
        let (text, numbers) = keyed(&sql);
        let skip = KeyValue::Integer(i64::from(size.max(1)) - 1);
        let values: Vec<&KeyValue> = bounds(after, upper).chain([&skip]).collect();
        let q = bind_keyed(sqlx::query(AssertSqlSafe(text)), &numbers, &values);
        if let Some(row) = q.fetch_optional(&mut *conn).await? {
            return Ok(Some((read_key(&row, shape)?, u64::from(size.max(1)))));
        }
        // Fewer keys than that are left: the last of them and how many.
        let sql = next_batch_sql(shape, after.is_some(), upper.is_some());
        let (text, numbers) = keyed(&sql);
        let size = KeyValue::Integer(i64::from(size));
        let values: Vec<&KeyValue> = bounds(after, upper).chain([&size]).collect();
        let q = bind_keyed(sqlx::query(AssertSqlSafe(text)), &numbers, &values);
        let Some(row) = q.fetch_optional(conn).await? else {
            return Ok(None);
        };
        let keys: i64 = row.try_get(shape.parts.len())?;
        Ok(Some((
            read_key(&row, shape)?,
            u64::try_from(keys).unwrap_or(0),
        )))
    }

    async fn has_keys_after(
        conn: &mut MySqlConnection,
        shape: &KeyShape,
        after: &Key,
        upper: Option<&Key>,
    ) -> Result<bool, sqlx::Error> {
        let (text, numbers) = keyed(&shape.has_keys_after_sql(upper.is_some()));
        let values: Vec<&KeyValue> = bounds(Some(after), upper).collect();
        bind_keyed(sqlx::query(AssertSqlSafe(text)), &numbers, &values)
            .fetch_one(conn)
            .await?
            .try_get(0)
    }

    async fn estimate_rows(
        conn: &mut MySqlConnection,
        shape: &KeyShape,
        after: Option<&Key>,
        upper: Option<&Key>,
    ) -> Result<Option<u64>, sqlx::Error> {
        // The optimiser's estimate of the rows the range reads (`EXPLAIN`'s `rows`).
        let sql = format!(
            "EXPLAIN SELECT 1 FROM {} WHERE {}",
            quote_ident(&shape.table),
            shape.range(after.is_some(), upper.is_some(), 1, None).0
        );
        let (text, numbers) = keyed(&sql);
        let values: Vec<&KeyValue> = bounds(after, upper).collect();
        let rows = bind_keyed(sqlx::query(AssertSqlSafe(text)), &numbers, &values)
            .fetch_all(conn)
            .await?;
        let estimate = rows
            .first()
            .and_then(|row| row.try_get::<Option<i64>, _>("rows").ok().flatten())
            .or_else(|| {
                rows.first()
                    .and_then(|row| row.try_get::<Option<u64>, _>("rows").ok().flatten())
                    .and_then(|n| i64::try_from(n).ok())
            });
        Ok(estimate.and_then(|n| u64::try_from(n).ok()))
    }

    async fn load_sample(
        conn: &mut MySqlConnection,
        own: &[i32],
    ) -> Result<Option<LoadSample>, sqlx::Error> {
        // Client sessions of this database (`information_schema.PROCESSLIST`), not this one
        // nor the walk's workers. A session of another user shows only to a user with the
        // `PROCESS` privilege. `TIME` counts whole seconds since the session's last change
        // of state: a sleeping session at 0 ran a statement within the last second.
        let others = if own.is_empty() {
            String::new()
        } else {
            let ids: Vec<String> = own.iter().map(i32::to_string).collect();
            format!(" AND ID NOT IN ({})", ids.join(", "))
        };
        let (active, recent, at): (i64, i64, f64) = query_as(AssertSqlSafe(format!(
            "SELECT CAST(COALESCE(SUM(COMMAND <> 'Sleep'), 0) AS signed),
                    CAST(COALESCE(SUM(COMMAND = 'Sleep' AND TIME < 1), 0) AS signed),
                    CAST(UNIX_TIMESTAMP(NOW(6)) AS double)
             FROM information_schema.PROCESSLIST
             WHERE DB = DATABASE() AND ID <> CONNECTION_ID(){others}
               AND COMMAND NOT IN ('Daemon', 'Binlog Dump', 'Binlog Dump GTID', 'Killed')"
        )))
        .fetch_one(&mut *conn)
        .await?;
        // A session waiting for a row lock runs a statement: only then is there one to
        // look for. The lock waits are shown to a user with `PROCESS` alone; without it
        // they count as the sessions they are. InnoDB refreshes the tables of its
        // transactions and lock waits only for a read that comes at least 0.1 s after the
        // one before (whoever's): read any more often, they would show the same instant
        // for as long as the reads go on. Between two reads, the waiting sessions count
        // as the sessions they are.
        let lock_waits = if active > 0 && lock_waits_readable() {
            let sql = match Server::of(conn).await? {
                Server::MariaDb => {
                    "SELECT CAST(count(DISTINCT w.requesting_trx_id) AS signed)
                     FROM information_schema.INNODB_LOCK_WAITS w
                     JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id
                     WHERE b.trx_mysql_thread_id = CONNECTION_ID()"
                }
                Server::MySql => {
                    "SELECT CAST(count(DISTINCT waiting_pid) AS signed)
                     FROM sys.innodb_lock_waits WHERE blocking_pid = CONNECTION_ID()"
                }
            };
            match query_scalar::<i64>(sql).fetch_one(&mut *conn).await {
                Ok(n) => n,
                Err(err) if access_denied(&err) => 0,
                Err(err) => return Err(err),
            }
        } else {
            0
        };
        let count = |n: i64| u32::try_from(n).unwrap_or(if n < 0 { 0 } else { u32::MAX });
        Ok(Some(LoadSample {
            active: count(active),
            recent: count(recent),
            lock_waits: count(lock_waits),
            // MySQL counts commits for the whole server, not a database: none here.
            commits: None,
            at,
        }))
    }

    async fn session_id(conn: &mut MySqlConnection) -> Result<Option<i32>, sqlx::Error> {
        let id: i64 = query_scalar("SELECT CAST(CONNECTION_ID() AS signed)")
            .fetch_one(conn)
            .await?;
        Ok(i32::try_from(id).ok())
    }

    const READS_AHEAD: bool = true;

    const CHECKS_REST: bool = true;

    /// MySQL has no function a statement could call to fail without DDL (which commits):
    /// each statement is written with `LIMIT 1` after it instead, so it stops at the first
    /// row it matches, and the check holds only where no statement matched or wrote a row.
    /// Under MariaDB's `SET STATEMENT max_statement_time = .. FOR`, its limit for that
    /// statement alone. MySQL 8 has no limit on a writing statement: there the walk goes
    /// on batch by batch.
    async fn begin_rest_check(
        conn: &mut MySqlConnection,
        limit: Duration,
    ) -> Result<RestGuard, sqlx::Error> {
        match Server::of(conn).await? {
            Server::MariaDb => Ok(RestGuard {
                predicate: None,
                prefix: format!(
                    "SET STATEMENT max_statement_time = {:.3} FOR ",
                    limit.as_secs_f64().max(0.001)
                ),
                suffix: "LIMIT 1",
            }),
            Server::MySql => Err(sqlx::Error::Configuration(
                "MySQL 8 has no time limit for a writing statement, so the keys left of a \
                 batched migration are not checked in one statement there"
                    .into(),
            )),
        }
    }

    /// Nothing to drop: the check's limit was its statements' own.
    async fn end_rest_check(_conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
        Ok(())
    }

    async fn last_key(
        conn: &mut MySqlConnection,
        shape: &KeyShape,
        after: Option<&Key>,
    ) -> Result<Option<Key>, sqlx::Error> {
        let (range, _) = shape.range(after.is_some(), false, 1, None);
        let sql = format!(
            "SELECT {} FROM {} WHERE {range} ORDER BY {} LIMIT 1",
            select_list(shape, &shape.table),
            quote_ident(&shape.table),
            shape.order_by(true),
        );
        let (text, numbers) = keyed(&sql);
        let values: Vec<&KeyValue> = bounds(after, None).collect();
        let row = bind_keyed(sqlx::query(AssertSqlSafe(text)), &numbers, &values)
            .fetch_optional(conn)
            .await?;
        row.map(|row| read_key(&row, shape)).transpose()
    }
}

/// The statement that finds the next batch (standard SQL; see [`keyed`]): the first
/// `size` keys after the checkpoint (an index range scan in key order), then the last of
/// them and how many there are. Its parameters: the checkpoint's values (with `after`),
/// the range's end's (with `upper`), then the size.
pub(crate) fn next_batch_sql(shape: &KeyShape, after: bool, upper: bool) -> String {
    let (range, params) = shape.range(after, upper, 1, None);
    format!(
        "SELECT {}, count(*) OVER () FROM
             (SELECT {} FROM {} WHERE {range} ORDER BY {} LIMIT ${}) AS batch
         ORDER BY {} LIMIT 1",
        select_list(shape, "batch"),
        shape.order_by(false),
        quote_ident(&shape.table),
        shape.order_by(false),
        params + 1,
        shape.order_by_in(true, Some("batch")),
    )
}

/// The statement that finds the last key of a whole batch (standard SQL; see [`keyed`]):
/// the key `skip` keys after the first after the checkpoint, in key order (an index range
/// scan, which stops there); no row when fewer keys are left. Its parameters: the
/// checkpoint's values (with `after`), the range's end's (with `upper`), then `skip`.
pub(crate) fn full_batch_sql(shape: &KeyShape, after: bool, upper: bool) -> String {
    let (range, params) = shape.range(after, upper, 1, None);
    format!(
        "SELECT {} FROM {} WHERE {range} ORDER BY {} LIMIT 1 OFFSET ${}",
        select_list(shape, &shape.table),
        quote_ident(&shape.table),
        shape.order_by(false),
        params + 1,
    )
}

/// The values of a range's bounds, in the order of its parameters.
fn bounds<'k>(
    after: Option<&'k Key>,
    upper: Option<&'k Key>,
) -> impl Iterator<Item = &'k KeyValue> {
    after
        .map(Key::values)
        .unwrap_or_default()
        .iter()
        .chain(upper.map(Key::values).unwrap_or_default())
}

/// How batching reads and binds a column of MySQL type `data_type`; `None` for a type it
/// does not walk (floating point, whose equality is unreliable; `enum`/`set`, ordered by
/// their position but compared as text; `json`, spatial, `bit`, `decimal`).
fn key_kind(data_type: &str) -> Option<KeyKind> {
    match data_type {
        "tinyint" | "smallint" | "mediumint" | "int" | "bigint" => Some(KeyKind::Integer),
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "binary"
        | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => Some(KeyKind::Other),
        "date" | "datetime" | "timestamp" | "time" | "year" => Some(KeyKind::Temporal),
        _ => None,
    }
}

/// How a key column's values travel between MySQL and the runner.
enum Read {
    Integer,
    Bytes,
    Text,
}

fn read_as(kind: KeyKind, sql_type: &str) -> Read {
    match kind {
        KeyKind::Integer => Read::Integer,
        KeyKind::Temporal => Read::Text,
        KeyKind::Other if sql_type.contains("binary") || sql_type.contains("blob") => Read::Bytes,
        KeyKind::Other => Read::Text,
    }
}

/// The key in the first columns of `row`, selected by [`select_list`].
pub(super) fn read_key(row: &MySqlRow, shape: &KeyShape) -> Result<Key, sqlx::Error> {
    let mut values = Vec::with_capacity(shape.parts.len());
    for (i, part) in shape.parts.iter().enumerate() {
        values.push(match read_as(part.kind, &part.sql_type) {
            Read::Integer => KeyValue::Integer(row.try_get(i)?),
            Read::Bytes => KeyValue::Bytes(row.try_get(i)?),
            Read::Text => KeyValue::Text(row.try_get(i)?),
        });
    }
    Ok(Key(values))
}

/// The key columns of `qualifier` as the runner reads them: integers as `signed`, dates
/// and times as their text, the rest as stored.
pub(super) fn select_list(shape: &KeyShape, qualifier: &str) -> String {
    shape
        .parts
        .iter()
        .map(|p| {
            let column = format!("{}.{}", quote_ident(qualifier), quote_ident(&p.name));
            match read_as(p.kind, &p.sql_type) {
                Read::Integer => format!("CAST({column} AS signed)"),
                Read::Bytes => column,
                Read::Text if p.kind == KeyKind::Temporal => format!("CAST({column} AS char)"),
                Read::Text => column,
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `err` says the user may not read what was asked: 1227
/// `ER_SPECIFIC_ACCESS_DENIED_ERROR` (`PROCESS` missing), 1142 `ER_TABLEACCESS_DENIED_ERROR`
/// and 1044 `ER_DBACCESS_DENIED_ERROR` (no access to MySQL's `sys`).
fn access_denied(err: &sqlx::Error) -> bool {
    matches!(error_number(err), Some(1227 | 1142 | 1044))
}

/// Whether InnoDB's lock waits may be read now: at most every [`LOCK_WAITS_EVERY`] by this
/// process (its walks and workers together), so that each read finds them refreshed.
fn lock_waits_readable() -> bool {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
    if last.is_some_and(|at| at.elapsed() < LOCK_WAITS_EVERY) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

/// How often InnoDB's lock waits are read for the pacing: a little over the 0.1 s for
/// which InnoDB keeps showing what its last read found.
const LOCK_WAITS_EVERY: Duration = Duration::from_millis(150);
