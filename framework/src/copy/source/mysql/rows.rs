//! A MySQL source's rows, streamed from a prepared statement (the binary protocol: floats
//! bit-exact, text in its column's character set) one row at a time, each value converted
//! by its target column's type (see `types.rs`) into binary `COPY`, and handed to the
//! target in the pipe's buffers while the next rows are read.

use futures_util::TryStreamExt;
use sqlx::mysql::{MySqlConnection, MySqlRow};
use sqlx::postgres::{PgConnection, PgCopyIn};
use sqlx::{AssertSqlSafe, Row};

use super::types::{Conversion, SourceType, Target};
use crate::copy::chunk::Chunk;
use crate::copy::convert::Kind;
use crate::copy::failure::Failure;
use crate::copy::pipe::{Buffers, Filled, SEND_BYTES};
use crate::copy::plan::Planned;
use crate::error::UnconvertibleValue;

/// `name` quoted as a MySQL identifier.
pub(super) fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// What a reader selects of a table's chunk.
pub(super) struct Reading {
    table: String,
    pub(super) sql: String,
    /// The chunk's bounds, bound to `sql`'s `?` in order.
    pub(super) binds: Vec<i128>,
    /// Copied columns: name and target type.
    columns: Vec<(String, String)>,
    pub(super) conversions: Vec<Conversion>,
    /// The key columns that name a row ([`naming_key`](super::naming_key)), where they are in the
    /// `SELECT`, and their types.
    key: Vec<(String, usize, SourceType)>,
}

impl Reading {
    /// `local` is the table's name in the source. `Err` names a bound read back from the
    /// progress table that is not an integer.
    pub(super) fn new(
        p: &Planned,
        local: &str,
        conversions: Vec<Conversion>,
        key_types: Vec<SourceType>,
        chunk: &Chunk,
    ) -> Result<Reading, String> {
        let mut list: Vec<String> = p.plan.copied().map(|c| c.name.clone()).collect();
        let mut key = Vec::new();
        for (k, st) in super::naming_key(p).iter().zip(key_types) {
            let at = match list.iter().position(|c| c == k) {
                Some(at) => at,
                None => {
                    list.push(k.clone());
                    list.len() - 1
                }
            };
            key.push((k.clone(), at, st));
        }
        let (filter, binds) = range(p, chunk).map_err(|why| {
            format!(
                "chunk {} of {} has bounds in the target's progress table that the copy cannot have written: {why}; delete the copy's rows from the progress table and run it again",
                chunk.number, p.plan.table
            )
        })?;
        let order = if p.plan.key.is_empty() {
            String::new()
        } else {
            format!(
                " ORDER BY {}",
                p.plan
                    .key
                    .iter()
                    .map(|k| quote(p.source.local_column(k)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let columns: Vec<String> = list
            .iter()
            .map(|c| quote(p.source.local_column(c)))
            .collect();
        Ok(Reading {
            table: p.plan.table.clone(),
            sql: format!(
                "SELECT {} FROM {}{filter}{order}",
                if columns.is_empty() {
                    "1".into()
                } else {
                    columns.join(", ")
                },
                quote(local)
            ),
            binds,
            columns: p
                .plan
                .copied()
                .map(|c| (c.name.clone(), c.target_type.clone()))
                .collect(),
            conversions,
            key,
        })
    }

    /// Converts one row into a tuple of binary `COPY` appended to `out`; on a value that
    /// does not convert, `out` is restored and the value described.
    fn tuple(
        &self,
        row: &MySqlRow,
        number: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), Box<UnconvertibleValue>> {
        let start = out.len();
        let fields = i16::try_from(self.conversions.len()).unwrap_or(i16::MAX);
        out.extend_from_slice(&fields.to_be_bytes());
        for (i, conversion) in self.conversions.iter().enumerate() {
            let failure = match raw(row, i) {
                Ok(raw) => conversion.write(raw, out).err(),
                Err(err) => Some(("a value the driver cannot read".into(), err.to_string())),
            };
            if let Some((value, reason)) = failure {
                out.truncate(start);
                return Err(Box::new(self.bad(row, number, i, value, reason)));
            }
        }
        Ok(())
    }

    /// Every value of the row that does not convert.
    fn check(&self, row: &MySqlRow, number: u64, found: &mut Vec<UnconvertibleValue>) -> u64 {
        let mut scratch = Vec::new();
        let mut bad = 0;
        for (i, conversion) in self.conversions.iter().enumerate() {
            scratch.clear();
            let failure = match raw(row, i) {
                Ok(raw) => conversion.write(raw, &mut scratch).err(),
                Err(err) => Some(("a value the driver cannot read".into(), err.to_string())),
            };
            if let Some((value, reason)) = failure {
                bad += 1;
                found.push(self.bad(row, number, i, value, reason));
            }
        }
        bad
    }

    fn bad(
        &self,
        row: &MySqlRow,
        number: u64,
        i: usize,
        value: String,
        reason: String,
    ) -> UnconvertibleValue {
        UnconvertibleValue {
            table: self.table.clone(),
            key: self.key_of(row, number),
            column: self.columns[i].0.clone(),
            value,
            target_type: self.columns[i].1.clone(),
            reason,
        }
    }

    /// The row's key as messages name it (`id = 42`), or its place in the chunk for a
    /// table without one.
    fn key_of(&self, row: &MySqlRow, number: u64) -> String {
        if self.key.is_empty() {
            return format!("row {number} of the read (the source table has no primary key)");
        }
        self.key
            .iter()
            .map(|(name, at, st)| {
                let conversion = Conversion {
                    source: st.clone(),
                    target: Target::Kind(Kind::Text(None)),
                    not_null: false,
                    zero_dates: crate::copy::options::ZeroDates::Refuse,
                    offset: Some(0),
                };
                let mut out = Vec::new();
                let shown = match raw(row, *at) {
                    Ok(raw) if conversion.write(raw, &mut out).is_ok() && out.len() >= 4 => {
                        let text = String::from_utf8_lossy(&out[4..]).into_owned();
                        if matches!(st, SourceType::Int { .. }) {
                            text
                        } else {
                            format!("'{}'", text.replace('\'', "''"))
                        }
                    }
                    _ => "?".into(),
                };
                format!("{name} = {shown}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A value's bytes as the server sent them, `None` for `NULL`. Not through `Option`'s
/// decoding, which takes a zero date (`0000-00-00`) for `NULL`: a zero date is refused or
/// mapped by `--zero-dates`, never silently made `NULL`.
fn raw(row: &MySqlRow, i: usize) -> Result<Option<&[u8]>, sqlx::Error> {
    use sqlx::Decode;
    let value = row.try_get_raw(i)?;
    // Decoding bytes fails only where the server sent no value.
    Ok(<&[u8] as Decode<sqlx::MySql>>::decode(value).ok())
}

/// ` WHERE ..` over the first column of the table's key for a chunk and the bounds to bind:
/// chunks split an integer column (`split` writes no other).
fn range(p: &Planned, chunk: &Chunk) -> Result<(String, Vec<i128>), String> {
    let mut conditions = Vec::new();
    let mut binds = Vec::new();
    for (bound, op) in [(&chunk.lower, ">"), (&chunk.upper, "<=")] {
        let Some(bound) = bound else { continue };
        let [value] = bound.as_slice() else {
            return Err(format!("{bound:?} is not one integer"));
        };
        let key = p.plan.key.first().ok_or("the table has no key")?;
        binds.push(
            value
                .parse::<i128>()
                .map_err(|_| format!("{value:?} is not an integer"))?,
        );
        conditions.push(format!("{} {op} ?", quote(p.source.local_column(key))));
    }
    Ok(if conditions.is_empty() {
        (String::new(), binds)
    } else {
        (format!(" WHERE {}", conditions.join(" AND ")), binds)
    })
}

/// The query of a reading, its bounds bound (as `i64`, or `u64` above its range).
fn query<'q>(
    sql: &'q str,
    binds: &[i128],
) -> sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments> {
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for &b in binds {
        q = match i64::try_from(b) {
            Ok(i) => q.bind(i),
            Err(_) => q.bind(u64::try_from(b).unwrap_or(u64::MAX)),
        };
    }
    q
}

/// How reading ended.
enum Ended {
    Done,
    /// The writer went away (the target failed): its error is the one to report.
    Dropped,
    Bad(Box<UnconvertibleValue>),
    Failed(sqlx::Error),
}

/// The start of binary `COPY` data: the signature, no flags, no header extension.
const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Reads the rows and converts them into full buffers (with their row counts) sent to
/// `full` (the header first, the trailer last), taking emptied ones back from `empty`.
async fn produce(
    conn: &mut MySqlConnection,
    reading: &Reading,
    full: tokio::sync::mpsc::Sender<Filled>,
    empty: &mut tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> Ended {
    let mut rows = query(&reading.sql, &reading.binds).fetch(&mut *conn);
    let mut buf = empty.recv().await.unwrap_or_default();
    buf.extend_from_slice(BINARY_HEADER);
    let mut count = 0_u64;
    let mut number = 0_u64;
    loop {
        let row = match rows.try_next().await {
            Ok(row) => row,
            Err(err) => return Ended::Failed(err),
        };
        let end = row.is_none();
        if let Some(row) = row {
            number += 1;
            if let Err(bad) = reading.tuple(&row, number, &mut buf) {
                return Ended::Bad(bad);
            }
            count += 1;
        } else {
            buf.extend_from_slice(&(-1_i16).to_be_bytes());
        }
        if buf.len() >= SEND_BYTES || end {
            if full.send((buf, std::mem::take(&mut count))).await.is_err() {
                return Ended::Dropped;
            }
            buf = empty.recv().await.unwrap_or_default();
        }
        if end {
            return Ended::Done;
        }
    }
}

/// Streams the reading's rows, converted, into the open `COPY .. FROM STDIN` while the
/// next are read; returns the bytes streamed, or where it stopped.
pub(super) async fn stream(
    conn: &mut MySqlConnection,
    reading: &Reading,
    table: usize,
    copy_in: &mut PgCopyIn<&mut PgConnection>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<u64, Failure> {
    let Buffers {
        full_tx,
        mut full_rx,
        empty_tx,
        mut empty_rx,
    } = Buffers::new();
    let reader = produce(conn, reading, full_tx, &mut empty_rx);
    // The writer owns its ends of the pipe: when it stops, the reader's sends fail and
    // its waits for an emptied buffer end, so it stops too.
    let writer = async move {
        let mut total = 0_u64;
        while let Some((mut buf, rows)) = full_rx.recv().await {
            if let Err(err) = copy_in.send(buf.as_slice()).await {
                return Err(Failure::Target(table, err));
            }
            total += buf.len() as u64;
            progress(rows, buf.len() as u64);
            buf.clear();
            let _ = empty_tx.send(buf).await;
        }
        Ok(total)
    };
    let (ended, written) = tokio::join!(reader, writer);
    match ended {
        // A value that does not convert is the error to report, even if the target then
        // complained of the copy's abrupt end.
        Ended::Bad(bad) => Err(Failure::Value(table, bad)),
        Ended::Failed(err) => Err(Failure::Source(table, err)),
        Ended::Done | Ended::Dropped => written,
    }
}

/// The rows of a chunk (a table with no column to copy).
pub(super) async fn count(
    conn: &mut MySqlConnection,
    reading: &Reading,
    table: usize,
) -> Result<u64, Failure> {
    let sql = format!("SELECT COUNT(*) FROM ({}) AS chunk", reading.sql);
    let row = query(&sql, &reading.binds)
        .fetch_one(&mut *conn)
        .await
        .map_err(|err| Failure::Source(table, err))?;
    let n: i64 = row.try_get(0).map_err(|err| Failure::Source(table, err))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Reads every row of a reading and lists the values that would not convert (the first
/// `limit` of them, over every reading); returns how many there are.
pub(super) async fn scan(
    conn: &mut MySqlConnection,
    reading: &Reading,
    limit: usize,
    found: &mut Vec<UnconvertibleValue>,
) -> Result<u64, sqlx::Error> {
    let mut rows = query(&reading.sql, &reading.binds).fetch(&mut *conn);
    let mut total = 0;
    let mut number = 0;
    let mut here = Vec::new();
    while let Some(row) = rows.try_next().await? {
        number += 1;
        total += reading.check(&row, number, &mut here);
        let room = limit.saturating_sub(found.len());
        found.extend(here.drain(..).take(room));
    }
    Ok(total)
}

/// Streams every row of a reading, converted, into `COPY .. FROM STDIN` of a temporary
/// table on the target (for a comparison in the target's types).
pub(super) async fn stream_all(
    conn: &mut MySqlConnection,
    reading: &Reading,
    copy_in: &mut PgCopyIn<&mut PgConnection>,
) -> Result<(), crate::error::Error> {
    use crate::error::Error;
    match stream(conn, reading, 0, copy_in, &|_, _| {}).await {
        Ok(_) => Ok(()),
        Err(Failure::Value(_, bad)) => Err(Error::CopyRefused(format!(
            "{bad}: the comparison converts every row as a copy would; fix the value in the source"
        ))),
        Err(Failure::Source(_, err)) => Err(Error::Runtime(format!(
            "reading {} from the source MySQL database failed: {}",
            reading.table,
            crate::error::describe_sqlx(&err)
        ))),
        Err(Failure::Target(_, err)) => Err(Error::CopyDatabase {
            during: format!(
                "comparing {}: sending its converted rows to the target",
                reading.table
            ),
            error: err,
        }),
        Err(Failure::Other(err)) => Err(err),
        Err(Failure::Rejected(_, why) | Failure::SourceText(_, why)) => Err(Error::Runtime(why)),
        Err(Failure::ParentFailed) => Err(Error::Runtime(format!(
            "comparing {}: its rows were not all read; this is a bug in datamig: please report it",
            reading.table
        ))),
    }
}
