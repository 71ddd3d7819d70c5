//! A SQLite source: the copy's own connection reads the catalog and measures the chunks;
//! readers of their own (read-only, one per worker and one for verification) start their
//! read transactions while that connection holds the file's write lock, so that they all
//! read one state of it. Each value is converted by its target column's type. A key that
//! allows `NULL` (SQLite permits it outside `INTEGER PRIMARY KEY`) gets a chunk of its own
//! for the rows holding one, which no key range selects. A copy is identified by the
//! file's identity (its device and inode), and records the file's change counter with
//! each chunk.

use std::collections::BTreeMap;
use std::sync::Mutex;

use sqlx::postgres::{PgConnection, PgCopyIn};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, Connection, Row};

use super::{Compared, Opened, Reader, Readers, Source};
use crate::backend::postgres::query_scalar;
use crate::copy::catalog::{Table, TableName};
use crate::copy::chunk::Chunk;
use crate::copy::context::During;
use crate::copy::convert::UnixTime;
use crate::copy::copier::Copier;
use crate::copy::failure::Failure;
use crate::copy::options::Purpose;
use crate::copy::plan::{self, ColumnPlan, Planned};
use crate::copy::sql::Predicate;
use crate::error::{Error, UnconvertibleValue};
use crate::sql::quote_ident;

mod bounds;
mod catalog;
mod compare;
mod rows;

/// A SQLite source, opened.
pub(in crate::copy) struct SqliteSource {
    options: SqliteConnectOptions,
    unix_time: BTreeMap<String, UnixTime>,
    /// The copy's own connection: the catalog, the chunks, and the write lock held while
    /// the readers start.
    main: SqliteConnection,
    /// The reader of a plan or a comparison, or a run's reader for its verification
    /// (taken by its blocking thread while it reads).
    reader: Option<rusqlite::Connection>,
}

/// The workers' readers, opened while the write lock was held.
pub(in crate::copy) struct SqliteReaders {
    readers: Mutex<Vec<rusqlite::Connection>>,
    unix_time: BTreeMap<String, UnixTime>,
}

/// A worker's reader of the SQLite file (taken by its blocking thread while it reads).
pub(in crate::copy) struct SqliteReader {
    conn: Option<rusqlite::Connection>,
    unix_time: BTreeMap<String, UnixTime>,
}

impl Source for SqliteSource {
    type Options = SqliteConnectOptions;
    type Readers = SqliteReaders;
    type Reader = SqliteReader;

    const KIND: &'static str = "sqlite";

    async fn open(
        options: &SqliteConnectOptions,
        copier: &Copier,
        target: &mut PgConnection,
        target_tables: &BTreeMap<TableName, Table>,
        purpose: Purpose,
    ) -> Result<Opened<Self>, Error> {
        let mut main = open(options).await?;
        if purpose == Purpose::Run {
            hold_writers(&mut main).await?;
        } else {
            sqlx::raw_sql("BEGIN")
                .execute(&mut main)
                .await
                .during(|| "beginning the source SQLite database's read transaction".into())?;
        }
        let schema: String = query_scalar("SELECT current_schema()::text")
            .fetch_one(&mut *target)
            .await
            .during(|| "reading the target's first schema (current_schema())".into())?;
        let tables = catalog::catalog(&mut main, &schema, target_tables)
            .await
            .during(|| "reading the catalog of the source SQLite database".into())?;
        let name = copy_name(options);
        let (identity, version) = identity(options)?;
        let reader = if purpose == Purpose::Run {
            None
        } else {
            Some(reader(options)?)
        };
        Ok(Opened {
            source: SqliteSource {
                options: options.clone(),
                unix_time: copier.unix_time.clone(),
                main,
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
        catalog::convert_columns(source, target, &self.unix_time, problems)
    }

    fn check(&self, planned: &[Planned], problems: &mut Vec<String>) {
        for column in self.unix_time.keys() {
            let known = planned.iter().any(|p| {
                p.plan
                    .copied()
                    .any(|x| plan::names_column(column, &p.source, &x.name))
            });
            if !known {
                problems.push(format!(
                    "--unix-time names {column}, which is no copied column (write TABLE.COLUMN)"
                ));
            }
        }
    }

    async fn split(&mut self, p: &mut Planned, chunk_rows: u64) -> Result<Vec<Chunk>, Error> {
        split(&mut self.main, p, chunk_rows).await
    }

    async fn unconvertible(
        &mut self,
        planned: &[Planned],
        limit: usize,
    ) -> Result<(Vec<UnconvertibleValue>, u64), Error> {
        let conversions: Vec<_> = planned
            .iter()
            .map(|p| catalog::conversions(p, &self.unix_time))
            .collect();
        rows::scan(&mut self.reader, planned, &conversions, limit).await
    }

    /// The workers' readers (and one for verification) start their read transactions
    /// while the copy's connection holds the write lock, then it lets writers go.
    async fn readers(&mut self, jobs: usize) -> Result<SqliteReaders, Error> {
        let mut readers = Vec::new();
        for _ in 0..=jobs {
            readers.push(reader(&self.options)?);
        }
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut self.main)
            .await
            .during(|| "letting the source SQLite database's writers go".into())?;
        if let Some(verifier) = readers.pop() {
            self.reader = Some(verifier);
        }
        Ok(SqliteReaders {
            readers: Mutex::new(readers),
            unix_time: self.unix_time.clone(),
        })
    }

    async fn verify(
        &mut self,
        target: &mut PgConnection,
        planned: &[Planned],
    ) -> Result<Compared, Error> {
        let conversions: Vec<_> = planned
            .iter()
            .map(|p| catalog::conversions(p, &self.unix_time))
            .collect();
        compare::compare_rows(&mut self.reader, target, planned, &conversions).await
    }

    async fn close(self) -> Result<(), Error> {
        let _ = self.main.close().await;
        Ok(())
    }

    /// A SQLite source's values are converted into binary `COPY`.
    fn binary(_p: &Planned) -> bool {
        true
    }

    fn target_range(p: &Planned, chunk: &Chunk) -> Predicate {
        bounds::target_range(p, chunk)
    }
}

impl Readers for SqliteReaders {
    type Reader = SqliteReader;

    async fn open(&self) -> Result<SqliteReader, Error> {
        let conn = self.readers.lock().expect("readers lock").pop();
        if conn.is_none() {
            return Err(Error::Runtime(
                "a copy worker found no SQLite reader; this is a bug in datamig".into(),
            ));
        }
        Ok(SqliteReader {
            conn,
            unix_time: self.unix_time.clone(),
        })
    }

    /// The same reader: its connection is back from the thread that read (its read
    /// transaction, and the state it reads, unchanged).
    async fn recover(&self, reader: SqliteReader) -> Result<SqliteReader, Error> {
        Ok(reader)
    }
}

impl Reader for SqliteReader {
    async fn stream(
        &mut self,
        p: &Planned,
        table: usize,
        chunk: &Chunk,
        copy_in: &mut PgCopyIn<&mut PgConnection>,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<u64, Failure> {
        let conversions = catalog::conversions(p, &self.unix_time);
        rows::stream(
            p,
            &conversions,
            table,
            &mut self.conn,
            chunk,
            copy_in,
            progress,
        )
        .await
    }

    async fn count(&mut self, p: &Planned, table: usize, chunk: &Chunk) -> Result<u64, Failure> {
        rows::count(&mut self.conn, p, table, chunk).await
    }

    async fn close(self) {}
}

/// Opens the SQLite file (never creating it).
async fn open(options: &SqliteConnectOptions) -> Result<SqliteConnection, Error> {
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

/// The file's identity (recorded with the copy's chunks: another file of the same name is
/// refused) and its content version (its header's change counter, recorded with each
/// chunk copied).
fn identity(options: &SqliteConnectOptions) -> Result<(String, String), Error> {
    let file = options.get_filename();
    let unreadable = |err: std::io::Error| {
        Error::Config(format!(
            "cannot read the source SQLite database {}: {err}",
            file.display()
        ))
    };
    let meta = std::fs::metadata(file).map_err(unreadable)?;
    #[cfg(unix)]
    let identity = {
        use std::os::unix::fs::MetadataExt;
        format!("sqlite file device {} inode {}", meta.dev(), meta.ino())
    };
    #[cfg(not(unix))]
    let identity = format!(
        "sqlite file created {:?}",
        meta.created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
    );
    let mut header = [0_u8; 28];
    let version = match std::fs::File::open(file)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
    {
        Ok(()) => format!(
            "change counter {}",
            u32::from_be_bytes([header[24], header[25], header[26], header[27]])
        ),
        Err(_) => "change counter unknown".to_string(),
    };
    Ok((identity, version))
}

/// The name the copy goes by in the target's progress table.
fn copy_name(options: &SqliteConnectOptions) -> String {
    let file = options.get_filename();
    let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    format!("sqlite:{}", file.display())
}

/// Takes the write lock, so that no writer commits while the copy's readers start their
/// read transactions: they all see one state of the file. `false` for a file the copy may
/// not write (opened read-only), which no one writes through it.
async fn hold_writers(conn: &mut SqliteConnection) -> Result<bool, Error> {
    match sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await {
        Ok(_) => Ok(true),
        Err(err) if is_read_only(&err) => {
            sqlx::raw_sql("BEGIN")
                .execute(&mut *conn)
                .await
                .during(|| "beginning the source SQLite database's read transaction".into())?;
            Ok(false)
        }
        Err(err) => Err(Error::Runtime(format!(
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
fn reader(options: &SqliteConnectOptions) -> Result<rusqlite::Connection, Error> {
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

/// The key ranges a table is copied in: even ranges of an integer key, else ranges of
/// `chunk_rows` rows in the key's order; and, where the key allows `NULL`, a chunk of the
/// rows holding one. Bounds are SQLite literals (`quote()`).
async fn split(
    conn: &mut SqliteConnection,
    p: &Planned,
    chunk_rows: u64,
) -> Result<Vec<Chunk>, Error> {
    let estimate = u64::try_from(p.plan.estimated_rows).unwrap_or(0);
    if p.plan.whole.is_some() || estimate <= chunk_rows {
        return Ok(vec![Chunk::whole()]);
    }
    let mut chunks = split_ranges(conn, p, chunk_rows, estimate)
        .await
        .during(|| format!("splitting {} into chunks", p.plan.table))?;
    if key_allows_null(p) {
        chunks.push(Chunk::null_keys(&chunks));
    }
    Ok(chunks)
}

/// Whether a row's key may hold a `NULL`: a key column not declared `NOT NULL`, other than
/// an `INTEGER PRIMARY KEY` (the rowid, never `NULL`).
fn key_allows_null(p: &Planned) -> bool {
    let rowid = p.plan.key.len() == 1
        && p.source
            .column(&p.plan.key[0])
            .is_some_and(|c| c.sql_type.eq_ignore_ascii_case("integer"));
    !rowid
        && p.plan
            .key
            .iter()
            .any(|k| p.source.column(k).is_some_and(|c| !c.not_null))
}

/// The key ranges of a table (rows whose key holds a `NULL` are in none).
async fn split_ranges(
    conn: &mut SqliteConnection,
    p: &Planned,
    chunk_rows: u64,
    estimate: u64,
) -> Result<Vec<Chunk>, sqlx::Error> {
    let table = quote_ident(p.source.local_name());
    let columns = bounds::quoted_key(p);
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
    let present: Vec<String> = columns.iter().map(|c| format!("{c} IS NOT NULL")).collect();
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {} FROM (SELECT {}, row_number() OVER (ORDER BY {}) AS n FROM {table} WHERE {}) WHERE n % ?1 = 0",
        quoted.join(", "),
        columns.join(", "),
        columns.join(", "),
        present.join(" AND ")
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
