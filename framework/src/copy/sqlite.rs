//! A copy's SQLite source: its catalog, its chunks, and its rows read and converted into
//! the target's types in binary `COPY`, value by value (see [`super::convert`]).

use std::collections::BTreeMap;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, Connection, Row};

use super::catalog::{Column, Table, TableName};
use super::chunk::Chunk;
use super::convert::{Conversion, Kind, UnixTime, Value};
use super::failure::Failure;
use super::load::Shared;
use super::pipe::{Buffers, SEND_BYTES};
use super::plan::{Planned, unix_unit};
use crate::error::{Error, UnconvertibleValue};
use crate::sql::quote_ident;

/// Opens the SQLite file (never creating it).
pub(super) async fn open(options: &SqliteConnectOptions) -> Result<SqliteConnection, Error> {
    let options = options.clone().create_if_missing(false);
    SqliteConnection::connect_with(&options)
        .await
        .map_err(|err| {
            Error::Config(format!(
                "cannot open the source SQLite database {}: {}",
                options.get_filename().display(),
                crate::error::describe_sqlx(&err)
            ))
        })
}

/// The name the copy goes by in the target's progress table.
pub(super) fn copy_name(options: &SqliteConnectOptions) -> String {
    let file = options.get_filename();
    let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    format!("sqlite:{}", file.display())
}

/// Takes the write lock, so that no writer commits while the copy's readers start their
/// read transactions: they all see one state of the file. `false` for a file the copy may
/// not write (opened read-only), which no one writes through it.
pub(super) async fn hold_writers(conn: &mut SqliteConnection) -> Result<bool, Error> {
    match sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await {
        Ok(_) => Ok(true),
        Err(err) if is_read_only(&err) => {
            sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
            Ok(false)
        }
        Err(err) => Err(Error::Config(format!(
            "cannot take the source SQLite database's write lock, which the copy holds while its readers start so that they all read one state of the file: {}; stop the application's writes, or run the copy again",
            crate::error::describe_sqlx(&err)
        ))),
    }
}

fn is_read_only(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "8" || code.starts_with("8"))
}

/// A reader: its own connection (read-only) in a read transaction, started at once. The
/// rows are stepped on a blocking thread through the C API (the same SQLite library as
/// the rest of datamig), converted there, and handed over in buffers of binary `COPY`.
pub(super) fn reader(options: &SqliteConnectOptions) -> Result<rusqlite::Connection, Error> {
    use rusqlite::OpenFlags;
    let file = options.get_filename();
    let opened = rusqlite::Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .and_then(|conn| {
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.execute_batch("BEGIN")?;
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
        Ok(conn)
    });
    opened.map_err(|err| {
        Error::Config(format!(
            "cannot read the source SQLite database {}: {err}",
            file.display()
        ))
    })
}

/// The tables of the SQLite database (its `main` schema), named as the target names them:
/// SQLite's names match regardless of case, so a table or column is matched exactly, or
/// else case-insensitively when only one target name fits. Each table is placed in
/// `schema`, the target's first schema.
pub(super) async fn catalog(
    conn: &mut SqliteConnection,
    schema: &str,
    target: &BTreeMap<TableName, Table>,
) -> Result<BTreeMap<TableName, Table>, Error> {
    let rows = sqlx::query(
        "SELECT name, type FROM pragma_table_list WHERE schema = 'main' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND type <> 'view' ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?;
    let in_schema: Vec<&Table> = target.values().filter(|t| t.name.0 == schema).collect();
    let mut out = BTreeMap::new();
    for row in rows {
        let local: String = row.try_get("name")?;
        let kind: String = row.try_get("type")?;
        let theirs = fit(&local, in_schema.iter().map(|t| (t.name.1.as_str(), *t)));
        let name = (
            schema.to_string(),
            theirs.map_or(local.clone(), |t| t.name.1.clone()),
        );
        let columns = sqlx::query(
            "SELECT name, type, \"notnull\", dflt_value IS NOT NULL AS has_default, pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid",
        )
        .bind(&local)
        .fetch_all(&mut *conn)
        .await?;
        let mut table_columns = Vec::new();
        let mut key: Vec<(i64, String)> = Vec::new();
        for c in columns {
            let local: String = c.try_get("name")?;
            let column_name = theirs
                .and_then(|t| fit(&local, t.columns.iter().map(|c| (c.name.as_str(), c))))
                .map_or(local, |c| c.name.clone());
            let hidden: i64 = c.try_get("hidden")?;
            let pk: i64 = c.try_get("pk")?;
            if pk > 0 {
                key.push((pk, column_name.clone()));
            }
            table_columns.push(Column {
                name: column_name,
                sql_type: c.try_get("type")?,
                not_null: c.try_get::<i64, _>("notnull")? != 0,
                has_default: c.try_get("has_default")?,
                generated: hidden >= 2,
                identity: String::new(),
                builtin_type: false,
            });
        }
        key.sort();
        let estimated_rows: i64 = if kind == "table" {
            sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT count(*) FROM {}",
                quote_ident(&local)
            )))
            .fetch_one(&mut *conn)
            .await?
        } else {
            0
        };
        out.insert(
            name.clone(),
            Table {
                name,
                kind: "r".into(),
                estimated_rows,
                // Virtual tables and their shadow tables belong to their module (FTS, R*Tree).
                extension: kind != "table",
                columns: table_columns,
                primary_key: key.into_iter().map(|(_, k)| k).collect(),
                foreign_keys: Vec::new(),
                sequences: Vec::new(),
                can_select: true,
                can_insert: false,
                can_update: false,
                can_truncate: false,
            },
        );
    }
    Ok(out)
}

/// The target's name for a SQLite name: the same, or else the one that matches it
/// ignoring case, when only one does.
fn fit<'a, T>(local: &str, names: impl Iterator<Item = (&'a str, T)>) -> Option<T> {
    let mut folded = Vec::new();
    for (name, item) in names {
        if name == local {
            return Some(item);
        }
        if name.eq_ignore_ascii_case(local) {
            folded.push(item);
        }
    }
    (folded.len() == 1).then(|| folded.pop()).flatten()
}

/// The conversion of each copied column of a planned table.
pub(super) fn conversions(p: &Planned, unix: &BTreeMap<String, UnixTime>) -> Vec<Conversion> {
    p.plan
        .copied()
        .map(|c| {
            let target = p.target.column(&c.name);
            Conversion {
                kind: Kind::of(&c.target_type).unwrap_or(Kind::Text(None)),
                not_null: target.is_some_and(|t| t.not_null),
                unix: unix_unit(unix, &p.source.name, &c.name),
            }
        })
        .collect()
}

/// The key ranges a table is copied in: even ranges of an integer key, else ranges of
/// `chunk_rows` rows in the key's order. Bounds are SQLite literals (`quote()`).
pub(super) async fn split(
    conn: &mut SqliteConnection,
    p: &Planned,
    chunk_rows: u64,
) -> Result<Vec<Chunk>, Error> {
    let estimate = u64::try_from(p.plan.estimated_rows).unwrap_or(0);
    if p.plan.whole.is_some() || estimate <= chunk_rows {
        return Ok(vec![Chunk::whole()]);
    }
    let table = quote_ident(&p.source.name.1);
    let columns: Vec<String> = p.plan.key.iter().map(|k| quote_ident(k)).collect();
    let mut bounds: Vec<Vec<String>> = Vec::new();
    let integer_key = p.plan.key.len() == 1
        && p.source
            .column(&p.plan.key[0])
            .is_some_and(|c| c.sql_type.eq_ignore_ascii_case("integer"));
    if integer_key {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT min({c}), max({c}), typeof(min({c})), typeof(max({c})) FROM {table}",
            c = columns[0]
        )))
        .fetch_one(&mut *conn)
        .await?;
        let kinds: (String, String) = (row.try_get(2)?, row.try_get(3)?);
        if kinds.0 == "integer" && kinds.1 == "integer" {
            let (min, max): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
            let span = i128::from(max) - i128::from(min) + 1;
            let n = i128::from(estimate.div_ceil(chunk_rows)).min(span).max(1);
            for i in 1..n {
                bounds.push(vec![(i128::from(min) + span * i / n - 1).to_string()]);
            }
            return Ok(Chunk::between(bounds));
        }
    }
    let quoted: Vec<String> = columns.iter().map(|c| format!("quote({c})")).collect();
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {} FROM (SELECT {}, row_number() OVER (ORDER BY {}) AS n FROM {table}) WHERE n % ?1 = 0",
        quoted.join(", "),
        columns.join(", "),
        columns.join(", ")
    )))
    .bind(i64::try_from(chunk_rows).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        bounds.push(
            (0..columns.len())
                .map(|i| row.try_get::<String, _>(i))
                .collect::<Result<_, _>>()?,
        );
    }
    Ok(Chunk::between(bounds))
}

/// What a blocking reader needs of a table: owned, so it can move to its thread.
#[derive(Clone)]
struct Reading {
    table: String,
    sql: String,
    /// Copied columns: name and target type, with their conversions.
    columns: Vec<(String, String)>,
    conversions: Vec<Conversion>,
    /// The columns that name a row, and where they are in the `SELECT`.
    key: Vec<(String, usize)>,
}

impl Reading {
    fn new(p: &Planned, conversions: &[Conversion], chunk: &Chunk) -> Reading {
        let (sql, key) = select(p, chunk);
        Reading {
            table: p.plan.table.clone(),
            sql,
            columns: p
                .plan
                .copied()
                .map(|c| (c.name.clone(), c.target_type.clone()))
                .collect(),
            conversions: conversions.to_vec(),
            key,
        }
    }

    /// Converts one row into a tuple of binary `COPY` appended to `out`; on a value that
    /// does not convert, `out` is restored and the value described.
    fn tuple(
        &self,
        row: &rusqlite::Row<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), Box<UnconvertibleValue>> {
        let start = out.len();
        let fields = i16::try_from(self.conversions.len()).unwrap_or(i16::MAX);
        out.extend_from_slice(&fields.to_be_bytes());
        for (i, conversion) in self.conversions.iter().enumerate() {
            let failure = match row.get_ref(i) {
                Ok(v) => {
                    let v = value(v);
                    conversion
                        .write_binary(v, out)
                        .err()
                        .map(|reason| (v.show(), reason))
                }
                Err(err) => Some(("a value SQLite cannot read".to_string(), err.to_string())),
            };
            if let Some((shown, reason)) = failure {
                out.truncate(start);
                return Err(Box::new(self.bad(row, i, shown, reason)));
            }
        }
        Ok(())
    }

    fn bad(
        &self,
        row: &rusqlite::Row<'_>,
        i: usize,
        value: String,
        reason: String,
    ) -> UnconvertibleValue {
        UnconvertibleValue {
            table: self.table.clone(),
            key: key_of(row, &self.key),
            column: self.columns[i].0.clone(),
            value,
            target_type: self.columns[i].1.clone(),
            reason,
        }
    }
}

/// The `SELECT` of a chunk: the copied columns, then the key columns (or `_rowid_`) that
/// name a row in messages; and the positions of those.
fn select(p: &Planned, chunk: &Chunk) -> (String, Vec<(String, usize)>) {
    let mut list: Vec<String> = p.plan.copied().map(|c| c.name.clone()).collect();
    let mut key = Vec::new();
    let key_columns: Vec<String> = if p.plan.key.is_empty() {
        vec!["_rowid_".to_string()]
    } else {
        p.plan.key.clone()
    };
    for k in &key_columns {
        let at = match list.iter().position(|c| c == k) {
            Some(at) => at,
            None => {
                list.push(k.clone());
                list.len() - 1
            }
        };
        key.push((
            if k == "_rowid_" {
                "rowid".into()
            } else {
                k.clone()
            },
            at,
        ));
    }
    let quoted: Vec<String> = list
        .iter()
        .map(|c| {
            if c == "_rowid_" {
                c.clone()
            } else {
                quote_ident(c)
            }
        })
        .collect();
    let tuple = p
        .plan
        .key
        .iter()
        .map(|k| quote_ident(k))
        .collect::<Vec<_>>()
        .join(", ");
    let mut conditions = Vec::new();
    if let Some(lower) = &chunk.lower {
        conditions.push(format!("({tuple}) > ({})", lower.join(", ")));
    }
    if let Some(upper) = &chunk.upper {
        conditions.push(format!("({tuple}) <= ({})", upper.join(", ")));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    let order = if p.plan.key.is_empty() {
        String::new()
    } else {
        format!(" ORDER BY {tuple}")
    };
    (
        format!(
            "SELECT {} FROM {}{filter}{order}",
            quoted.join(", "),
            quote_ident(&p.source.name.1)
        ),
        key,
    )
}

/// A SQLite value, by its storage class (text that is not UTF-8 is treated as the bytes
/// it is, and refused where text is expected).
fn value(v: rusqlite::types::ValueRef<'_>) -> Value<'_> {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(r) => Value::Real(r),
        ValueRef::Text(t) => std::str::from_utf8(t).map_or(Value::Blob(t), Value::Text),
        ValueRef::Blob(b) => Value::Blob(b),
    }
}

/// The row's key as messages name it: `id = 42`, `tenant_id = 1, code = 'a'`.
fn key_of(row: &rusqlite::Row<'_>, key: &[(String, usize)]) -> String {
    key.iter()
        .map(|(name, at)| {
            let shown = match row.get_ref(*at).map(value) {
                Ok(Value::Integer(i)) => i.to_string(),
                Ok(Value::Real(r)) => r.to_string(),
                Ok(Value::Text(t)) => format!("'{}'", t.replace('\'', "''")),
                Ok(other) => other.show(),
                Err(_) => "?".into(),
            };
            format!("{name} = {shown}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a blocking read ended.
enum Ended {
    Done,
    /// The receiver went away (the writer failed): its error is the one to report.
    Dropped,
    Bad(Box<UnconvertibleValue>),
    Failed(String),
}

/// The start of binary `COPY` data: the signature, no flags, no header extension.
const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// On a blocking thread: steps the rows, converts each into binary `COPY` (the header
/// first, the trailer last), sends full buffers (with their row counts), takes empty ones
/// back.
fn produce(
    conn: &rusqlite::Connection,
    reading: &Reading,
    full: &tokio::sync::mpsc::Sender<(Vec<u8>, u64)>,
    empty: &mut tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> Ended {
    let mut stmt = match conn.prepare(&reading.sql) {
        Ok(stmt) => stmt,
        Err(err) => return Ended::Failed(err.to_string()),
    };
    let mut rows = match stmt.query([]) {
        Ok(rows) => rows,
        Err(err) => return Ended::Failed(err.to_string()),
    };
    let mut buf = empty.blocking_recv().unwrap_or_default();
    buf.extend_from_slice(BINARY_HEADER);
    let mut count = 0_u64;
    loop {
        let row = match rows.next() {
            Ok(row) => row,
            Err(err) => return Ended::Failed(err.to_string()),
        };
        let end = row.is_none();
        if let Some(row) = row {
            if let Err(bad) = reading.tuple(row, &mut buf) {
                return Ended::Bad(bad);
            }
            count += 1;
        } else {
            buf.extend_from_slice(&(-1_i16).to_be_bytes());
        }
        if buf.len() >= SEND_BYTES || end {
            if full
                .blocking_send((buf, std::mem::take(&mut count)))
                .is_err()
            {
                return Ended::Dropped;
            }
            buf = empty.blocking_recv().unwrap_or_default();
        }
        if end {
            return Ended::Done;
        }
    }
}

/// A blocking reader at work: full buffers (with their row counts) come out of `full`,
/// emptied ones go back through `empty`.
struct Pump {
    full: tokio::sync::mpsc::Receiver<(Vec<u8>, u64)>,
    empty: tokio::sync::mpsc::Sender<Vec<u8>>,
    reader: tokio::task::JoinHandle<(rusqlite::Connection, Ended)>,
}

impl Pump {
    /// Starts reading `reading`'s rows on a blocking thread with `conn` (handed back by
    /// [`Pump::finish`]).
    fn start(conn: &mut Option<rusqlite::Connection>, reading: Reading) -> Result<Pump, Error> {
        let taken = conn.take().ok_or_else(|| {
            Error::Config(
                "a SQLite reader was lost after an earlier failure; run the copy again".into(),
            )
        })?;
        let Buffers {
            full_tx,
            full_rx: full,
            empty_tx: empty,
            mut empty_rx,
        } = Buffers::new();
        let reader = tokio::task::spawn_blocking(move || {
            let ended = produce(&taken, &reading, &full_tx, &mut empty_rx);
            (taken, ended)
        });
        Ok(Pump {
            full,
            empty,
            reader,
        })
    }

    /// Gives an emptied buffer back.
    async fn recycle(&self, mut buf: Vec<u8>) {
        buf.clear();
        let _ = self.empty.send(buf).await;
    }

    /// Stops taking buffers, waits for the reader and hands its connection back.
    async fn finish(self, conn: &mut Option<rusqlite::Connection>) -> Result<Ended, Error> {
        drop(self.full);
        drop(self.empty);
        let (taken, ended) = self.reader.await.map_err(|err| {
            Error::Config(format!("the SQLite reader stopped unexpectedly: {err}"))
        })?;
        *conn = Some(taken);
        Ok(ended)
    }
}

/// Streams a chunk's rows, converted, into the open `COPY .. FROM STDIN`; returns the
/// bytes streamed. The first value that does not convert stops it.
pub(super) async fn stream(
    shared: &Shared,
    table: usize,
    conn: &mut Option<rusqlite::Connection>,
    chunk: &Chunk,
    copy_in: &mut sqlx::postgres::PgCopyIn<&mut sqlx::postgres::PgConnection>,
) -> Result<u64, Failure> {
    let p = &shared.planned[table];
    let mut pump = Pump::start(conn, Reading::new(p, &shared.conversions[table], chunk))
        .map_err(Failure::Other)?;
    let mut total = 0_u64;
    let mut failure = None;
    while let Some((buf, rows)) = pump.full.recv().await {
        if let Err(err) = copy_in.send(buf.as_slice()).await {
            failure = Some(Failure::Target(table, err));
            break;
        }
        total += buf.len() as u64;
        shared.progress(table, rows, buf.len() as u64);
        pump.recycle(buf).await;
    }
    match pump.finish(conn).await.map_err(Failure::Other)? {
        // A value that does not convert is the error to report, even if the target then
        // complained of the copy's abrupt end.
        Ended::Bad(bad) => Err(Failure::Value(table, bad)),
        Ended::Failed(message) => Err(Failure::SourceText(p.plan.table.clone(), message)),
        Ended::Done | Ended::Dropped => failure.map_or(Ok(total), Err),
    }
}

/// Reads every row of the planned tables and lists the values that would not convert (the
/// first `limit` of them); returns the list and how many there are in all.
pub(super) async fn scan(
    conn: &mut Option<rusqlite::Connection>,
    planned: &[Planned],
    conversions: &[Vec<Conversion>],
    limit: usize,
) -> Result<(Vec<UnconvertibleValue>, u64), Error> {
    let Some(taken) = conn.take() else {
        return Err(Error::Config("the SQLite reader was lost".into()));
    };
    let readings: Vec<Reading> = planned
        .iter()
        .zip(conversions)
        .map(|(p, c)| Reading::new(p, c, &Chunk::whole()))
        .collect();
    let (taken, outcome) = tokio::task::spawn_blocking(move || {
        let outcome = (|| {
            let mut found = Vec::new();
            let mut total = 0_u64;
            for reading in &readings {
                let mut stmt = taken.prepare(&reading.sql)?;
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    // A row may hold several values that do not convert: each is reported.
                    for (i, conversion) in reading.conversions.iter().enumerate() {
                        let v = value(row.get_ref(i)?);
                        if let Err(reason) = conversion.check(v) {
                            total += 1;
                            if found.len() < limit {
                                found.push(reading.bad(row, i, v.show(), reason));
                            }
                        }
                    }
                }
            }
            Ok::<_, rusqlite::Error>((found, total))
        })();
        (taken, outcome)
    })
    .await
    .map_err(|err| Error::Config(format!("the SQLite reader stopped unexpectedly: {err}")))?;
    *conn = Some(taken);
    outcome
        .map_err(|err| Error::Config(format!("reading the source SQLite database failed: {err}")))
}

/// Streams every row of a table, converted, into `COPY .. FROM STDIN` of a temporary
/// table on the target (for a comparison in the target's types).
pub(super) async fn stream_all(
    conn: &mut Option<rusqlite::Connection>,
    p: &Planned,
    conversions: &[Conversion],
    copy_in: &mut sqlx::postgres::PgCopyIn<&mut sqlx::postgres::PgConnection>,
) -> Result<(), Error> {
    let mut pump = Pump::start(conn, Reading::new(p, conversions, &Chunk::whole()))?;
    let mut failure = None;
    while let Some((buf, _)) = pump.full.recv().await {
        if let Err(err) = copy_in.send(buf.as_slice()).await {
            failure = Some(Error::Database(err));
            break;
        }
        pump.recycle(buf).await;
    }
    match pump.finish(conn).await? {
        Ended::Bad(bad) => Err(Error::CopyRefused(format!(
            "{bad}: the comparison converts every row as a copy would; fix the value in the source"
        ))),
        Ended::Failed(message) => Err(Error::Config(format!(
            "reading {} from the source SQLite database failed: {message}",
            p.plan.table
        ))),
        Ended::Done | Ended::Dropped => failure.map_or(Ok(()), Err),
    }
}
