//! A SQLite source's rows read on a blocking thread through the C API, each value
//! converted by its target column's type (see `convert.rs`) into binary `COPY`, and handed
//! over in the pipe's buffers.

use rusqlite::types::Value as Bound;
use sqlx::postgres::{PgConnection, PgCopyIn};

use super::bounds::sqlite_range;
use crate::copy::chunk::Chunk;
use crate::copy::convert::{Conversion, Value};
use crate::copy::failure::Failure;
use crate::copy::pipe::{Buffers, SEND_BYTES};
use crate::copy::plan::Planned;
use crate::error::{Error, UnconvertibleValue};
use crate::sql::quote_ident;

/// What a blocking reader needs of a table: owned, so it can move to its thread.
#[derive(Clone)]
struct Reading {
    table: String,
    sql: String,
    /// The chunk's bounds, bound to `sql`'s `?n`.
    params: Vec<Bound>,
    /// Copied columns: name and target type, with their conversions.
    columns: Vec<(String, String)>,
    conversions: Vec<Conversion>,
    /// The columns that name a row, and where they are in the `SELECT`.
    key: Vec<(String, usize)>,
}

impl Reading {
    /// `Err` when a bound read back from the progress table is not a SQLite value.
    fn new(p: &Planned, conversions: &[Conversion], chunk: &Chunk) -> Result<Reading, String> {
        let (sql, params, key) = select(p, chunk).map_err(|why| {
            format!(
                "chunk {} of {} has bounds in the target's progress table that SQLite cannot have written: {why}; delete the copy's rows from the progress table and run it again",
                chunk.number, p.plan.table
            )
        })?;
        Ok(Reading {
            table: p.plan.table.clone(),
            sql,
            params,
            columns: p
                .plan
                .copied()
                .map(|c| (c.name.clone(), c.target_type.clone()))
                .collect(),
            conversions: conversions.to_vec(),
            key,
        })
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

/// What a reader selects: its SQL, the values bound to it, the key columns that name a row
/// in messages with where they are.
type Select = (String, Vec<Bound>, Vec<(String, usize)>);

/// The `SELECT` of a chunk: the copied columns, then the key columns (or `_rowid_`) that
/// name a row in messages; the chunk's bounds bound; and the positions of those columns.
fn select(p: &Planned, chunk: &Chunk) -> Result<Select, String> {
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
                quote_ident(p.source.local_column(c))
            }
        })
        .collect();
    let tuple = p
        .plan
        .key
        .iter()
        .map(|k| quote_ident(p.source.local_column(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let (filter, params) = sqlite_range(p, chunk)?;
    let order = if p.plan.key.is_empty() {
        String::new()
    } else {
        format!(" ORDER BY {tuple}")
    };
    Ok((
        format!(
            "SELECT {} FROM {}{filter}{order}",
            quoted.join(", "),
            quote_ident(p.source.local_name())
        ),
        params,
        key,
    ))
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
    let mut rows = match stmt.query(rusqlite::params_from_iter(&reading.params)) {
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
    /// The table read, for messages.
    table: String,
    full: tokio::sync::mpsc::Receiver<(Vec<u8>, u64)>,
    empty: tokio::sync::mpsc::Sender<Vec<u8>>,
    reader: tokio::task::JoinHandle<(rusqlite::Connection, Ended)>,
}

impl Pump {
    /// Starts reading `reading`'s rows on a blocking thread with `conn` (handed back by
    /// [`Pump::finish`]).
    fn start(conn: &mut Option<rusqlite::Connection>, reading: Reading) -> Result<Pump, Error> {
        let taken = conn.take().ok_or_else(|| {
            Error::Runtime(format!(
                "reading {}: the SQLite reader was lost after an earlier failure; run the copy again",
                reading.table
            ))
        })?;
        let Buffers {
            full_tx,
            full_rx: full,
            empty_tx: empty,
            mut empty_rx,
        } = Buffers::new();
        let table = reading.table.clone();
        let reader = tokio::task::spawn_blocking(move || {
            let ended = produce(&taken, &reading, &full_tx, &mut empty_rx);
            (taken, ended)
        });
        Ok(Pump {
            table,
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
            Error::Runtime(format!(
                "reading {}: the SQLite reader stopped unexpectedly ({err}); run the copy again",
                self.table
            ))
        })?;
        *conn = Some(taken);
        Ok(ended)
    }
}

/// Streams a chunk's rows, converted, into the open `COPY .. FROM STDIN`; returns the
/// bytes streamed. The first value that does not convert stops it.
pub(super) async fn stream(
    p: &Planned,
    conversions: &[Conversion],
    table: usize,
    conn: &mut Option<rusqlite::Connection>,
    chunk: &Chunk,
    copy_in: &mut PgCopyIn<&mut PgConnection>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<u64, Failure> {
    let reading =
        Reading::new(p, conversions, chunk).map_err(|why| Failure::SourceText(table, why))?;
    let mut pump = Pump::start(conn, reading).map_err(Failure::Other)?;
    let mut total = 0_u64;
    let mut failure = None;
    while let Some((buf, rows)) = pump.full.recv().await {
        if let Err(err) = copy_in.send(buf.as_slice()).await {
            failure = Some(Failure::Target(table, err));
            break;
        }
        total += buf.len() as u64;
        progress(rows, buf.len() as u64);
        pump.recycle(buf).await;
    }
    match pump.finish(conn).await.map_err(Failure::Other)? {
        // A value that does not convert is the error to report, even if the target then
        // complained of the copy's abrupt end.
        Ended::Bad(bad) => Err(Failure::Value(table, bad)),
        Ended::Failed(message) => Err(Failure::SourceText(table, message)),
        Ended::Done | Ended::Dropped => failure.map_or(Ok(total), Err),
    }
}

/// The rows of a chunk (a table with no column to copy).
pub(super) async fn count(
    conn: &mut Option<rusqlite::Connection>,
    p: &Planned,
    table: usize,
    chunk: &Chunk,
) -> Result<u64, Failure> {
    let (filter, params) = sqlite_range(p, chunk).map_err(|why| Failure::SourceText(table, why))?;
    let sql = format!(
        "SELECT count(*) FROM {}{filter}",
        quote_ident(p.source.local_name())
    );
    let Some(taken) = conn.take() else {
        return Err(Failure::Other(Error::Config(format!(
            "counting {}: the SQLite reader was lost after an earlier failure; run the copy again",
            p.plan.table
        ))));
    };
    let (taken, counted) = tokio::task::spawn_blocking(move || {
        let counted = taken.query_row(&sql, rusqlite::params_from_iter(&params), |row| {
            row.get::<_, i64>(0)
        });
        (taken, counted)
    })
    .await
    .map_err(|err| {
        Failure::Other(Error::Config(format!(
            "counting {}: the SQLite reader stopped unexpectedly ({err}); run the copy again",
            p.plan.table
        )))
    })?;
    *conn = Some(taken);
    counted
        .map(|n| u64::try_from(n).unwrap_or(0))
        .map_err(|err| Failure::SourceText(table, err.to_string()))
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
        return Err(Error::Runtime(format!(
            "reading {}: the SQLite reader was lost after an earlier failure; run the plan again",
            planned
                .iter()
                .map(|p| p.plan.table.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let readings: Vec<Reading> = planned
        .iter()
        .zip(conversions)
        .map(|(p, c)| Reading::new(p, c, &Chunk::whole()))
        .collect::<Result<_, String>>()
        .map_err(Error::Config)?;
    let (taken, outcome) = tokio::task::spawn_blocking(move || {
        let outcome = (|| {
            let mut found = Vec::new();
            let mut total = 0_u64;
            for reading in &readings {
                let mut stmt = taken.prepare(&reading.sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(&reading.params))?;
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
    .map_err(|err| {
        Error::Runtime(format!(
            "reading {}: the SQLite reader stopped unexpectedly ({err})",
            planned
                .iter()
                .map(|p| p.plan.table.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    *conn = Some(taken);
    outcome.map_err(|err| {
        Error::Runtime(format!(
            "reading the source SQLite database's tables ({}) failed: {err}",
            planned
                .iter()
                .map(|p| p.plan.table.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// Streams every row of a table, converted, into `COPY .. FROM STDIN` of a temporary
/// table on the target (for a comparison in the target's types).
pub(super) async fn stream_all(
    conn: &mut Option<rusqlite::Connection>,
    p: &Planned,
    conversions: &[Conversion],
    copy_in: &mut PgCopyIn<&mut PgConnection>,
) -> Result<(), Error> {
    let reading = Reading::new(p, conversions, &Chunk::whole()).map_err(Error::Config)?;
    let mut pump = Pump::start(conn, reading)?;
    let mut failure = None;
    while let Some((buf, _)) = pump.full.recv().await {
        if let Err(err) = copy_in.send(buf.as_slice()).await {
            failure = Some(Error::CopyDatabase {
                during: format!(
                    "comparing {}: sending its converted rows to the target",
                    p.plan.table
                ),
                error: err,
            });
            break;
        }
        pump.recycle(buf).await;
    }
    match pump.finish(conn).await? {
        Ended::Bad(bad) => Err(Error::CopyRefused(format!(
            "{bad}: the comparison converts every row as a copy would; fix the value in the source"
        ))),
        Ended::Failed(message) => Err(Error::Runtime(format!(
            "reading {} from the source SQLite database failed: {message}",
            p.plan.table
        ))),
        Ended::Done | Ended::Dropped => failure.map_or(Ok(()), Err),
    }
}
