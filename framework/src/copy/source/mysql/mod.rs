//! A MySQL or MariaDB source (the URL's database), read with sqlx's MySQL driver.
//!
//! One consistent read: MySQL cannot share a snapshot between connections, so when the
//! workers' readers open, the copy's own connection takes `FLUSH TABLES WITH READ LOCK`
//! (writes wait; reads go on), each worker's connection (and one for the verification)
//! starts `START TRANSACTION WITH CONSISTENT SNAPSHOT`, and the lock is released: every
//! reader sees the same state, and writers waited only while the readers opened. The
//! copy's own connection reads the catalog and splits the tables in a snapshot of its own
//! (a chunk's bounds only split the key's range: the first and last are open-ended). The
//! lock needs the `RELOAD` privilege: it is tried when the source is opened, so that a
//! user who may not take it is refused before anything is written. Each session reads with `time_zone = '+00:00'` (a `timestamp` is read
//! as UTC, a `datetime` as the local time it is) and `character_set_results = NULL` (text
//! in its column's own character set, decoded here, its invalid bytes named).
//!
//! Rows stream from a prepared statement (the binary protocol: floats bit-exact) one at a
//! time: a table is never held in memory. Chunks are ranges of the first column of the
//! primary key, where it is an integer; a table with another key, or none, is one chunk. A copy is identified by the server
//! (`@@hostname`, `@@port`, `@@server_id`) and database, and records the server's GTID
//! position when it was opened with each chunk.

use std::collections::BTreeMap;
use std::sync::Arc;

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::postgres::{PgConnection, PgCopyIn};
use sqlx::{AssertSqlSafe, Connection, Row};

use super::compare::{StreamAll, compare_rows};
use super::{Compared, Opened, Reader, Readers, Source};
use crate::backend::postgres::query_scalar;
use crate::copy::catalog::{Table, TableName, display};
use crate::copy::chunk::Chunk;
use crate::copy::context::During;
use crate::copy::copier::Copier;
use crate::copy::failure::Failure;
use crate::copy::options::{Purpose, ZeroDates};
use crate::copy::plan::{ColumnPlan, Planned};
use crate::copy::sql::Predicate;
use crate::error::{Error, UnconvertibleValue};
use crate::sql::quote_ident;

mod catalog;
mod rows;
mod types;

use catalog::{SourceTypes, TargetTypes};
use rows::{Reading, quote};
use types::{DatetimeOffset, SourceType};

/// What every reader needs to read and convert a table: shared by the workers.
struct Shared {
    types: SourceTypes,
    target_types: TargetTypes,
    /// Each table's name in the source, by its name in the target.
    local: BTreeMap<TableName, String>,
    zero_dates: ZeroDates,
    offset: DatetimeOffset,
}

impl Shared {
    /// The reading of a chunk of `p`.
    fn reading(&self, p: &Planned, chunk: &Chunk) -> Result<Reading, String> {
        let conversions = catalog::conversions(
            p,
            &self.types,
            &self.target_types,
            &self.zero_dates,
            self.offset,
        );
        let table = display(&p.source.name);
        let key_types = naming_key(p)
            .iter()
            .map(|k| {
                self.types
                    .get(&(table.clone(), k.clone()))
                    .and_then(|t| t.as_ref().ok())
                    .cloned()
                    .unwrap_or(SourceType::Binary)
            })
            .collect();
        let local = self
            .local
            .get(&p.source.name)
            .cloned()
            .unwrap_or_else(|| p.source.name.1.clone());
        Reading::new(p, &local, conversions, key_types, chunk)
    }
}

/// A MySQL source, opened.
pub(in crate::copy) struct MysqlSource {
    options: MySqlConnectOptions,
    shared: Arc<Shared>,
    /// The copy's own connection: the catalog, the chunks, and the read lock held while
    /// the readers start.
    main: MySqlConnection,
    locked: bool,
    /// The reader of a plan or a comparison, or a run's reader for its verification.
    reader: Option<MySqlConnection>,
}

/// The workers' readers, opened while the read lock was held.
pub(in crate::copy) struct MysqlReaders {
    readers: std::sync::Mutex<Vec<MySqlConnection>>,
    shared: Arc<Shared>,
}

/// A worker's reader.
pub(in crate::copy) struct MysqlReader {
    conn: MySqlConnection,
    shared: Arc<Shared>,
}

/// The session every connection of the copy reads in.
const SESSION: &str = "SET SESSION time_zone = '+00:00', SESSION net_write_timeout = 3600, SESSION net_read_timeout = 3600; SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ";

/// Connects to the source, its session set.
async fn connect(options: &MySqlConnectOptions) -> Result<MySqlConnection, Error> {
    let mut conn = MySqlConnection::connect_with(options)
        .await
        .map_err(|err| {
            Error::Config(format!(
                "cannot connect to the source MySQL database {}:{}/{} as {}: {}",
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or(""),
                options.get_username(),
                crate::error::describe_sqlx(&err)
            ))
        })?;
    sqlx::raw_sql(SESSION)
        .execute(&mut conn)
        .await
        .during(|| "setting the source MySQL session (time zone +00:00)".into())?;
    Ok(conn)
}

/// A reader: its own connection, reading text in its columns' character sets, in a
/// consistent snapshot started at once.
async fn reader(options: &MySqlConnectOptions) -> Result<MySqlConnection, Error> {
    let mut conn = connect(options).await?;
    sqlx::raw_sql(
        "SET SESSION character_set_results = NULL; START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
    )
    .execute(&mut conn)
    .await
    .during(|| "starting a consistent snapshot of the source MySQL database".into())?;
    Ok(conn)
}

/// Takes `FLUSH TABLES WITH READ LOCK`: writes wait until [`unlock`], reads go on.
async fn read_lock(conn: &mut MySqlConnection) -> Result<(), Error> {
    sqlx::raw_sql("FLUSH TABLES WITH READ LOCK")
        .execute(&mut *conn)
        .await
        .map(|_| ())
        .map_err(|err| {
            Error::Config(format!(
                "cannot take the source's read lock (FLUSH TABLES WITH READ LOCK), which the copy holds for a moment while its readers start their snapshots so that they all read one state of the database: {}; grant the source user the RELOAD privilege, or end the long statements it waited for",
                crate::error::describe_sqlx(&err)
            ))
        })
}

/// Lets the source's writers go.
async fn unlock(conn: &mut MySqlConnection) -> Result<(), Error> {
    sqlx::raw_sql("UNLOCK TABLES")
        .execute(&mut *conn)
        .await
        .map(|_| ())
        .during(|| "releasing the source's read lock".into())
}

/// The server's time zone as a fixed offset from UTC, in seconds, if it has one.
async fn fixed_offset(conn: &mut MySqlConnection) -> Result<DatetimeOffset, sqlx::Error> {
    let row = sqlx::raw_sql("SELECT @@global.time_zone, @@system_time_zone")
        .fetch_one(&mut *conn)
        .await?;
    let text = |i: usize| -> Result<String, sqlx::Error> {
        let raw: Option<&[u8]> = row.try_get_unchecked(i)?;
        Ok(raw
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default())
    };
    let zone = text(0)?;
    let zone = if zone.eq_ignore_ascii_case("SYSTEM") {
        text(1)?
    } else {
        zone
    };
    Ok(parse_offset(&zone))
}

/// `+HH:MM`, `-HH:MM`, or `UTC`/`GMT` (and `Etc/UTC`), as seconds east of UTC.
fn parse_offset(zone: &str) -> DatetimeOffset {
    match zone {
        "UTC" | "GMT" | "Etc/UTC" | "Etc/GMT" | "Z" | "Universal" => return Some(0),
        _ => {}
    }
    let (sign, rest) = match zone.as_bytes().first()? {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    Some(sign * (h * 3600 + m * 60))
}

/// Who the source is and where its history stands.
async fn identity(conn: &mut MySqlConnection) -> Result<(String, String), sqlx::Error> {
    let row = sqlx::raw_sql("SELECT @@hostname, @@port, @@server_id, DATABASE(), VERSION()")
        .fetch_one(&mut *conn)
        .await?;
    let text = |i: usize| -> String {
        row.try_get_unchecked::<Option<&[u8]>, _>(i)
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    let identity = format!(
        "mysql server {}:{} id {} database {}",
        text(0),
        text(1),
        text(2),
        text(3)
    );
    let mut version = format!("{} gtid unknown", text(4));
    for variable in ["@@global.gtid_current_pos", "@@global.gtid_executed"] {
        if let Ok(row) = sqlx::raw_sql(AssertSqlSafe(format!("SELECT {variable}")))
            .fetch_one(&mut *conn)
            .await
            && let Ok(Some(raw)) = row.try_get_unchecked::<Option<&[u8]>, _>(0)
        {
            version = format!("{} gtid {}", text(4), String::from_utf8_lossy(raw));
            break;
        }
    }
    Ok((identity, version))
}

impl Source for MysqlSource {
    type Options = MySqlConnectOptions;
    type Readers = MysqlReaders;
    type Reader = MysqlReader;

    const KIND: &'static str = "mysql";

    async fn open(
        options: &MySqlConnectOptions,
        copier: &Copier,
        target: &mut PgConnection,
        target_tables: &BTreeMap<TableName, Table>,
        purpose: Purpose,
    ) -> Result<Opened<Self>, Error> {
        let mut main = connect(options).await?;
        let locked = purpose == Purpose::Run;
        if locked {
            // Tried now, so that a user who may not take it is refused before anything is
            // written; taken again while the readers start.
            let wait = copier.lock_timeout.as_secs().max(1);
            sqlx::raw_sql(AssertSqlSafe(format!(
                "SET SESSION lock_wait_timeout = {wait}"
            )))
            .execute(&mut main)
            .await
            .during(|| "setting the source's lock wait timeout".into())?;
            read_lock(&mut main).await?;
            unlock(&mut main).await?;
        }
        sqlx::raw_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .execute(&mut main)
            .await
            .during(|| "starting a consistent snapshot of the source MySQL database".into())?;
        let schema: String = query_scalar("SELECT current_schema()::text")
            .fetch_one(&mut *target)
            .await
            .during(|| "reading the target's first schema (current_schema())".into())?;
        let target_types = TargetTypes::read(target)
            .await
            .during(|| "reading the target's enums and array types".into())?;
        let (tables, types) = catalog::catalog(&mut main, &schema, target_tables)
            .await
            .during(|| "reading the catalog of the source MySQL database".into())?;
        let offset = fixed_offset(&mut main)
            .await
            .during(|| "reading the source's time zone".into())?;
        let (identity, version) = identity(&mut main)
            .await
            .during(|| "reading the source server's identity".into())?;
        let local = tables
            .iter()
            .map(|(name, t)| (name.clone(), t.local_name().to_string()))
            .collect::<BTreeMap<_, _>>();
        let name = format!(
            "mysql://{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("")
        );
        let reader = if purpose == Purpose::Run {
            None
        } else {
            Some(reader(options).await?)
        };
        Ok(Opened {
            source: MysqlSource {
                options: options.clone(),
                shared: Arc::new(Shared {
                    types,
                    target_types,
                    local,
                    zero_dates: copier.zero_dates.clone(),
                    offset,
                }),
                main,
                locked,
                reader,
            },
            tables,
            name,
            identity,
            version,
            xids: None,
        })
    }

    fn columns(
        &self,
        source: &Table,
        target: &Table,
        problems: &mut Vec<String>,
    ) -> Vec<ColumnPlan> {
        catalog::convert_columns(
            source,
            target,
            &self.shared.types,
            &self.shared.target_types,
            self.shared.offset,
            problems,
        )
    }

    async fn split(&mut self, p: &mut Planned, chunk_rows: u64) -> Result<Vec<Chunk>, Error> {
        let local = self
            .shared
            .local
            .get(&p.source.name)
            .cloned()
            .unwrap_or_else(|| p.source.name.1.clone());
        split(&mut self.main, p, &self.shared.types, &local, chunk_rows)
            .await
            .during(|| format!("splitting {} into chunks", p.plan.table))
    }

    async fn unconvertible(
        &mut self,
        planned: &[Planned],
        limit: usize,
    ) -> Result<(Vec<UnconvertibleValue>, u64), Error> {
        let Some(conn) = self.reader.as_mut() else {
            return Ok((Vec::new(), 0));
        };
        let mut found = Vec::new();
        let mut total = 0;
        for p in planned {
            let reading = self
                .shared
                .reading(p, &Chunk::whole())
                .map_err(Error::Config)?;
            total += rows::scan(conn, &reading, limit, &mut found)
                .await
                .during(|| format!("reading {} from the source MySQL database", p.plan.table))?;
        }
        Ok((found, total))
    }

    /// The workers' readers (and one for verification) start their snapshots while the
    /// copy's connection holds the read lock, then it lets writers go.
    async fn readers(&mut self, jobs: usize) -> Result<MysqlReaders, Error> {
        if self.locked {
            read_lock(&mut self.main).await?;
        }
        let mut readers = Vec::new();
        for _ in 0..=jobs {
            match reader(&self.options).await {
                Ok(r) => readers.push(r),
                Err(err) => {
                    let _ = unlock(&mut self.main).await;
                    return Err(err);
                }
            }
        }
        if self.locked {
            unlock(&mut self.main).await?;
            self.locked = false;
        }
        self.reader = readers.pop();
        Ok(MysqlReaders {
            readers: std::sync::Mutex::new(readers),
            shared: Arc::clone(&self.shared),
        })
    }

    async fn verify(
        &mut self,
        target: &mut PgConnection,
        planned: &[Planned],
    ) -> Result<Compared, Error> {
        let Some(conn) = self.reader.as_mut() else {
            return Err(Error::Runtime(
                "the copy's verification found no MySQL reader; this is a bug in datamig".into(),
            ));
        };
        let mut source = Converted {
            conn,
            shared: &self.shared,
        };
        compare_rows(&mut source, target, planned).await
    }

    async fn close(self) -> Result<(), Error> {
        if let Some(reader) = self.reader {
            let _ = reader.close().await;
        }
        let _ = self.main.close().await;
        Ok(())
    }

    /// A MySQL source's values are converted into binary `COPY`.
    fn binary(_p: &Planned) -> bool {
        true
    }

    fn target_range(p: &Planned, chunk: &Chunk) -> Predicate {
        target_range(p, chunk)
    }
}

/// A reader and what converts each table's rows, for a comparison.
struct Converted<'a> {
    conn: &'a mut MySqlConnection,
    shared: &'a Shared,
}

impl StreamAll for Converted<'_> {
    async fn stream_all(
        &mut self,
        _table: usize,
        p: &Planned,
        copy_in: &mut PgCopyIn<&mut PgConnection>,
    ) -> Result<(), Error> {
        let reading = self
            .shared
            .reading(p, &Chunk::whole())
            .map_err(Error::Config)?;
        rows::stream_all(self.conn, &reading, copy_in).await
    }
}

impl Readers for MysqlReaders {
    type Reader = MysqlReader;

    async fn open(&self) -> Result<MysqlReader, Error> {
        let conn = self.readers.lock().expect("readers lock").pop();
        let Some(conn) = conn else {
            return Err(Error::Runtime(
                "a copy worker found no MySQL reader; this is a bug in datamig".into(),
            ));
        };
        Ok(MysqlReader {
            conn,
            shared: Arc::clone(&self.shared),
        })
    }

    /// The same reader: a failed read leaves its snapshot as it was (sqlx drains the rest
    /// of the rows on its next use).
    async fn recover(&self, reader: MysqlReader) -> Result<MysqlReader, Error> {
        Ok(reader)
    }
}

impl Reader for MysqlReader {
    async fn stream(
        &mut self,
        p: &Planned,
        table: usize,
        chunk: &Chunk,
        copy_in: &mut PgCopyIn<&mut PgConnection>,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<u64, Failure> {
        let reading = self
            .shared
            .reading(p, chunk)
            .map_err(|why| Failure::SourceText(table, why))?;
        rows::stream(&mut self.conn, &reading, table, copy_in, progress).await
    }

    async fn count(&mut self, p: &Planned, table: usize, chunk: &Chunk) -> Result<u64, Failure> {
        let reading = self
            .shared
            .reading(p, chunk)
            .map_err(|why| Failure::SourceText(table, why))?;
        rows::count(&mut self.conn, &reading, table).await
    }

    async fn close(self) {
        let _ = self.conn.close().await;
    }
}

/// The columns that name a row in messages: the key the copy orders by, else the
/// source's own primary key (when the two databases' keys differ), else none.
pub(super) fn naming_key(p: &Planned) -> &[String] {
    if p.plan.key.is_empty() {
        &p.source.primary_key
    } else {
        &p.plan.key
    }
}

/// Whether a table splits in key ranges: a primary key whose first column is an integer
/// on both sides (the ranges are of that column: the rows sharing one of its values are
/// in one chunk).
fn integer_key(p: &Planned, types: &SourceTypes) -> bool {
    p.plan.key.first().is_some_and(|first| {
        matches!(
            types.get(&(display(&p.source.name), first.clone())),
            Some(Ok(SourceType::Int { .. }))
        ) && p.target.column(first).is_some_and(|c| {
            matches!(
                c.sql_type.as_str(),
                "smallint" | "integer" | "bigint" | "numeric"
            )
        })
    })
}

/// The key ranges of a table: even ranges between its key's first (integer) column's least
/// and greatest value, as many as its rows (the server's estimate, else the key's span) need chunks of
/// `chunk_rows`; otherwise one chunk.
async fn split(
    conn: &mut MySqlConnection,
    p: &Planned,
    types: &SourceTypes,
    local: &str,
    chunk_rows: u64,
) -> Result<Vec<Chunk>, sqlx::Error> {
    if p.plan.whole.is_some() || !integer_key(p, types) {
        return Ok(vec![Chunk::whole()]);
    }
    let key = quote(p.source.local_column(&p.plan.key[0]));
    let row = sqlx::raw_sql(AssertSqlSafe(format!(
        "SELECT CAST(MIN({key}) AS CHAR), CAST(MAX({key}) AS CHAR) FROM {}",
        quote(local)
    )))
    .fetch_one(&mut *conn)
    .await?;
    let bound = |i: usize| -> Option<i128> {
        let raw: Option<&[u8]> = row.try_get_unchecked(i).ok().flatten();
        std::str::from_utf8(raw?).ok()?.parse().ok()
    };
    let (Some(min), Some(max)) = (bound(0), bound(1)) else {
        return Ok(vec![Chunk::whole()]);
    };
    let span = max - min + 1;
    let estimate = u64::try_from(p.plan.estimated_rows).unwrap_or(0);
    let rows = if estimate == 0 {
        u64::try_from(span).unwrap_or(u64::MAX)
    } else {
        estimate
    };
    if rows <= chunk_rows {
        return Ok(vec![Chunk::whole()]);
    }
    let n = i128::from(rows.div_ceil(chunk_rows)).min(span).max(1);
    let bounds = (1..n)
        .map(|i| vec![(min + span * i / n - 1).to_string()])
        .collect();
    Ok(Chunk::between(bounds))
}

/// ` AND` a chunk's range of the key's first column over the target's (aliased `c`), its
/// integer bounds bound and cast to the column's type: exact, as integers order alike.
fn target_range(p: &Planned, chunk: &Chunk) -> Predicate {
    let mut out = Predicate {
        exact: true,
        ..Predicate::default()
    };
    let Some(key) = p.plan.key.first() else {
        return out;
    };
    let sql_type = p
        .target
        .column(key)
        .map_or("bigint".to_string(), |c| c.sql_type.clone());
    let column = format!("c.{}", quote_ident(key));
    for (bound, op) in [(&chunk.lower, ">"), (&chunk.upper, "<=")] {
        let Some(bound) = bound else { continue };
        let value = bound.first().cloned().unwrap_or_default();
        let mark = out.bind(&value);
        out.and(&format!("{column} {op} {mark}::{sql_type}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_offset;

    #[test]
    fn fixed_time_zones_are_read_and_named_ones_are_not() {
        assert_eq!(parse_offset("+00:00"), Some(0));
        assert_eq!(parse_offset("-05:30"), Some(-19800));
        assert_eq!(parse_offset("UTC"), Some(0));
        assert_eq!(parse_offset("Europe/Paris"), None);
        assert_eq!(parse_offset("CET"), None);
    }
}
