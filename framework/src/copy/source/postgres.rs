//! A PostgreSQL source: one connection exports a snapshot that every reader imports, so
//! that all of them read one state of the database while it takes writes; tables split in
//! primary-key ranges; each chunk streamed as `COPY .. TO STDOUT` into the target's
//! `COPY .. FROM STDIN` without parsing a row: in binary where every column's binary form
//! means the same in the target, in text otherwise (a type without binary send and
//! receive, one of the database's own types, a type that names objects by OID).
//!
//! A chunk's bounds are bound wherever a statement takes parameters. `COPY` takes none: its
//! bounds are first bound to a `SELECT` that casts each to its key column's type and
//! returns it quoted by the server, and only that literal is written into the `COPY`.

use std::collections::BTreeMap;

use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgCopyIn};
use sqlx::{AssertSqlSafe, Connection, Row};

use super::{Compared, Opened, Reader, Readers, Source};
use crate::backend::postgres::{query, query_scalar};
use crate::copy::catalog::{self, Table, TableName};
use crate::copy::chunk::Chunk;
use crate::copy::connect::{SESSION, connect};
use crate::copy::context::During;
use crate::copy::copier::Copier;
use crate::copy::failure::Failure;
use crate::copy::fingerprint::{Encoding, Side, fingerprint, server_encoding};
use crate::copy::options::Purpose;
use crate::copy::pipe::{Buffers, SEND_BYTES};
use crate::copy::plan::{self, ColumnAction, ColumnPlan, Planned};
use crate::copy::sql::{Predicate, source_from};
use crate::error::Error;
use crate::sql::quote_ident;

/// A PostgreSQL source, opened: its connection holds the read transaction whose snapshot
/// the readers import.
pub(in crate::copy) struct PostgresSource {
    conn: PgConnection,
    options: PgConnectOptions,
    snapshot: String,
}

/// Opens readers in the source's exported snapshot.
pub(in crate::copy) struct PostgresReaders {
    options: PgConnectOptions,
    snapshot: String,
}

/// A reader: a connection in a read transaction of the run's snapshot.
pub(in crate::copy) struct PostgresReader {
    conn: PgConnection,
}

impl Source for PostgresSource {
    type Options = PgConnectOptions;
    type Readers = PostgresReaders;
    type Reader = PostgresReader;

    const KIND: &'static str = "postgres";

    async fn open(
        options: &PgConnectOptions,
        copier: &Copier,
        target: &mut PgConnection,
        _target_tables: &BTreeMap<TableName, Table>,
        purpose: Purpose,
    ) -> Result<Opened<Self>, Error> {
        let mut conn = connect(options, "source").await?;
        source_session(&mut conn).await?;
        let ours = catalog::identity(&mut conn)
            .await
            .during(|| "reading which database the source is".into())?;
        let theirs = catalog::identity(target)
            .await
            .during(|| "reading which database the target is".into())?;
        if ours == theirs {
            return Err(Error::CopyRefused(
                "the source and the target are the same database: a copy needs two databases; check the two URLs".into(),
            ));
        }
        sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut conn)
            .await
            .during(|| "beginning the source's read transaction".into())?;
        let snapshot: String = query_scalar("SELECT pg_export_snapshot()")
            .fetch_one(&mut conn)
            .await
            .during(|| "exporting the source's snapshot (pg_export_snapshot())".into())?;
        // A followed copy records which source transactions its rows hold: the change
        // stream applies only the others.
        let xids = if copier.follow && purpose == Purpose::Run {
            Some(
                query_scalar::<String>("SELECT pg_current_snapshot()::text")
                    .fetch_one(&mut conn)
                    .await
                    .during(|| "reading the source's snapshot (pg_current_snapshot())".into())?,
            )
        } else {
            None
        };
        let tables = catalog::read(&mut conn, "source").await?;
        let (name, identity) = catalog::copy_name(&mut conn)
            .await
            .during(|| "reading the source's name and system identifier".into())?;
        Ok(Opened {
            source: PostgresSource {
                conn,
                options: options.clone(),
                snapshot: snapshot.clone(),
            },
            tables,
            name,
            identity,
            version: format!("snapshot {snapshot}"),
            xids,
        })
    }

    fn columns(
        &self,
        source: &Table,
        target: &Table,
        problems: &mut Vec<String>,
    ) -> Vec<ColumnPlan> {
        plan::match_columns(source, target, problems)
    }

    async fn split(&mut self, p: &mut Planned, chunk_rows: u64) -> Result<Vec<Chunk>, Error> {
        split(&mut self.conn, p, chunk_rows).await
    }

    async fn readers(&mut self, _jobs: usize) -> Result<PostgresReaders, Error> {
        Ok(PostgresReaders {
            options: self.options.clone(),
            snapshot: self.snapshot.clone(),
        })
    }

    /// Both servers fingerprint at once, each in one aggregate over each table.
    async fn verify(
        &mut self,
        target: &mut PgConnection,
        planned: &[Planned],
    ) -> Result<Compared, Error> {
        let encoding = if server_encoding(&mut self.conn, Side::Source).await?
            == server_encoding(target, Side::Target).await?
        {
            Encoding::Same
        } else {
            Encoding::Differs
        };
        let (source, target) = tokio::try_join!(
            fingerprint(&mut self.conn, planned, Side::Source, encoding),
            fingerprint(target, planned, Side::Target, encoding),
        )?;
        Ok(Compared {
            source,
            target,
            rows: Vec::new(),
        })
    }

    async fn close(mut self) -> Result<(), Error> {
        sqlx::raw_sql("COMMIT")
            .execute(&mut self.conn)
            .await
            .during(|| "ending the source's read transaction".into())?;
        let _ = self.conn.close().await;
        Ok(())
    }

    /// Binary `COPY`, which neither server has to write as text or parse back, where every
    /// column is of the same type on both sides and its binary form means the same in
    /// both databases; text otherwise.
    fn binary(p: &Planned) -> bool {
        p.plan.copied().all(|c| {
            c.action == ColumnAction::Copy
                && p.target.column(&c.name).is_some_and(|t| t.binary)
                && p.source.column(&c.name).is_some_and(|s| s.binary)
        })
    }

    fn target_range(p: &Planned, chunk: &Chunk) -> Predicate {
        range(p, chunk, &p.target, "c.")
    }
}

impl Readers for PostgresReaders {
    type Reader = PostgresReader;

    async fn open(&self) -> Result<PostgresReader, Error> {
        let mut conn = connect(&self.options, "source").await?;
        source_session(&mut conn).await?;
        // The snapshot's name comes from the source's own pg_export_snapshot().
        sqlx::raw_sql(AssertSqlSafe(format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
            self.snapshot.replace('\'', "''")
        )))
        .execute(&mut conn)
        .await
        .during(|| {
            format!(
                "importing the source's snapshot {} into a reader",
                self.snapshot
            )
        })?;
        Ok(PostgresReader { conn })
    }

    /// A new reader in the run's snapshot: the old one may be mid-`COPY`.
    async fn recover(&self, reader: PostgresReader) -> Result<PostgresReader, Error> {
        let _ = reader.conn.close().await;
        self.open().await
    }
}

impl Reader for PostgresReader {
    async fn stream(
        &mut self,
        p: &Planned,
        table: usize,
        chunk: &Chunk,
        copy_in: &mut PgCopyIn<&mut PgConnection>,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<u64, Failure> {
        let list = p
            .plan
            .copied()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let format = if PostgresSource::binary(p) {
            " (FORMAT binary)"
        } else {
            ""
        };
        let range = copy_range(&mut self.conn, p, chunk)
            .await
            .map_err(|e| Failure::Source(table, e))?;
        let select = format!(
            "COPY (SELECT {list} FROM {}{range}) TO STDOUT{format}",
            source_from(&p.source),
        );
        stream(&mut self.conn, &select, table, copy_in, progress).await
    }

    async fn count(&mut self, p: &Planned, table: usize, chunk: &Chunk) -> Result<u64, Failure> {
        let range = range(p, chunk, &p.source, "");
        let sql = format!(
            "SELECT count(*) FROM {} WHERE true{}",
            source_from(&p.source),
            range.sql
        );
        let rows: i64 = range
            .apply(query(AssertSqlSafe(sql)))
            .fetch_one(&mut self.conn)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|e| Failure::Source(table, e))?;
        Ok(u64::try_from(rows).unwrap_or(0))
    }

    async fn referencing_row(
        &mut self,
        p: &Planned,
        chunk: &Chunk,
        constraint: &str,
        detail: &str,
    ) -> Option<String> {
        referencing_row(&mut self.conn, p, chunk, constraint, detail).await
    }

    async fn close(mut self) {
        let _ = sqlx::raw_sql("COMMIT").execute(&mut self.conn).await;
        let _ = self.conn.close().await;
    }
}

/// The source's session: no timeouts, every row or an error (never rows hidden by
/// row-level security), and values written as `COPY` reads them back in any database
/// (floats to the last digit, dates and intervals in one style, `money` in one locale).
pub(super) async fn source_session(conn: &mut PgConnection) -> Result<(), Error> {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "{SESSION}; SET extra_float_digits = 3; SET bytea_output = hex"
    )))
    .execute(conn)
    .await
    .during(|| "setting up the source's session".into())?;
    Ok(())
}

/// The key ranges a table is copied in, measured in the run's snapshot.
async fn split(
    src: &mut PgConnection,
    p: &mut Planned,
    chunk_rows: u64,
) -> Result<Vec<Chunk>, Error> {
    let one = || vec![Chunk::whole()];
    let from = source_from(&p.source);
    let during = || format!("splitting {} into chunks", p.plan.table);
    if p.plan.estimated_rows <= 0 {
        p.plan.estimated_rows = query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {from}")))
            .fetch_one(&mut *src)
            .await
            .during(during)?;
    }
    let estimate = u64::try_from(p.plan.estimated_rows).unwrap_or(0);
    if p.plan.whole.is_some() || estimate <= chunk_rows {
        return Ok(one());
    }
    let n = estimate.div_ceil(chunk_rows);
    let key = &p.plan.key;
    let types: Vec<&str> = key
        .iter()
        .map(|k| p.source.column(k).map_or("text", |c| c.sql_type.as_str()))
        .collect();
    let columns: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
    let mut bounds: Vec<Vec<String>> = Vec::new();
    if key.len() == 1 && matches!(types[0], "smallint" | "integer" | "bigint") {
        let row = query(AssertSqlSafe(format!(
            "SELECT min({c})::int8, max({c})::int8 FROM {from}",
            c = columns[0]
        )))
        .fetch_one(&mut *src)
        .await
        .during(during)?;
        let (Some(min), Some(max)): (Option<i64>, Option<i64>) = (
            row.try_get(0).during(during)?,
            row.try_get(1).during(during)?,
        ) else {
            return Ok(one());
        };
        let span = i128::from(max) - i128::from(min) + 1;
        let n = i128::from(n).min(span).max(1);
        for i in 1..n {
            let bound = i128::from(min) + span * i / n - 1;
            bounds.push(vec![bound.to_string()]);
        }
    } else {
        // A sample of the keys, sorted in the index's order; its quantiles bound the chunks.
        // The order names the table's columns through an alias: bare, `"id"` would name the
        // select list's `"id"::text` and sort the keys as text (`10` before `9`), and the
        // quantiles of that order bound overlapping chunks.
        let wanted = n * 64;
        let percent = (100.0 * wanted as f64 / estimate as f64).min(100.0);
        let list = columns
            .iter()
            .map(|c| format!("{c}::text"))
            .collect::<Vec<_>>()
            .join(", ");
        let order = columns
            .iter()
            .map(|c| format!("datamig_sample.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = query(AssertSqlSafe(format!(
            "SELECT {list} FROM {from} AS datamig_sample TABLESAMPLE SYSTEM ({percent}) ORDER BY {order}"
        )))
        .fetch_all(&mut *src)
        .await
        .during(during)?;
        let sample: Vec<Vec<String>> = rows
            .iter()
            .map(|row| {
                (0..key.len())
                    .map(|i| row.try_get::<String, _>(i))
                    .collect()
            })
            .collect::<Result<_, _>>()
            .during(during)?;
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        for i in 1..n {
            if let Some(bound) = sample.get(sample.len() * i / n)
                && bounds.last() != Some(bound)
            {
                bounds.push(bound.clone());
            }
        }
    }
    Ok(Chunk::between(bounds))
}

/// Streams one `COPY .. TO STDOUT` into the open `COPY .. FROM STDIN`, in sends of about
/// [`SEND_BYTES`]; returns the bytes streamed.
async fn stream(
    src: &mut PgConnection,
    select: &str,
    table: usize,
    copy_in: &mut PgCopyIn<&mut PgConnection>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<u64, Failure> {
    let mut out = src
        .copy_out_raw(select)
        .await
        .map_err(|e| Failure::Source(table, e))?;
    // The reader fills buffers while the writer sends the previous one, so that both
    // servers work at once; a few buffers in flight keep memory constant.
    let Buffers {
        full_tx,
        mut full_rx,
        empty_tx,
        mut empty_rx,
    } = Buffers::new();
    let read = async move {
        let mut buf = empty_rx.recv().await.unwrap_or_default();
        // The server sends each row in a message of its own (a binary copy's header rides
        // with the first row, its trailer comes alone).
        let mut rows = 0_u64;
        loop {
            let data = out
                .try_next()
                .await
                .map_err(|e| Failure::Source(table, e))?;
            let end = data.is_none();
            if let Some(data) = &data {
                buf.extend_from_slice(data);
                rows += 1;
            }
            if buf.len() >= SEND_BYTES || (end && !buf.is_empty()) {
                if full_tx
                    .send((buf, std::mem::take(&mut rows)))
                    .await
                    .is_err()
                {
                    // The writer failed; its error is the one to report.
                    return Ok(());
                }
                buf = empty_rx.recv().await.unwrap_or_default();
            }
            if end {
                return Ok::<(), Failure>(());
            }
        }
    };
    let write = async move {
        let mut total = 0_u64;
        while let Some((mut buf, rows)) = full_rx.recv().await {
            copy_in
                .send(buf.as_slice())
                .await
                .map_err(|e| Failure::Target(table, e))?;
            total += buf.len() as u64;
            progress(rows, buf.len() as u64);
            buf.clear();
            let _ = empty_tx.send(buf).await;
        }
        Ok::<u64, Failure>(total)
    };
    let (read, write) = tokio::join!(read, write);
    let total = write?;
    read?;
    Ok(total)
}

/// For a foreign key of one column that a chunk's row violates, that row's primary key (as
/// `id = 42`), found in the source within the chunk.
async fn referencing_row(
    src: &mut PgConnection,
    p: &Planned,
    chunk: &Chunk,
    constraint: &str,
    detail: &str,
) -> Option<String> {
    let fk = p
        .target
        .foreign_keys
        .iter()
        .find(|fk| fk.name == constraint)?;
    let [column] = fk.columns.as_slice() else {
        return None;
    };
    let rest = detail.strip_prefix(&format!("Key ({column})=("))?;
    let value = &rest[..rest.rfind(") is not present")?];
    let sql_type = &p.source.column(column)?.sql_type;
    if p.plan.key.is_empty() {
        return None;
    }
    let keys: Vec<String> = p
        .plan
        .key
        .iter()
        .map(|k| format!("{}::text", quote_ident(k)))
        .collect();
    let mut filter = range(p, chunk, &p.source, "");
    let value = filter.bind(value);
    filter.and(&format!("{} = {value}::{sql_type}", quote_ident(column)));
    let sql = format!(
        "SELECT {} FROM {} WHERE true{} LIMIT 1",
        keys.join(", "),
        source_from(&p.source),
        filter.sql
    );
    let row = filter
        .apply(query(AssertSqlSafe(sql)))
        .fetch_optional(src)
        .await
        .ok()??;
    let parts: Vec<String> = p
        .plan
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{k} = {}", row.try_get::<String, _>(i).unwrap_or_default()))
        .collect();
    Some(parts.join(", "))
}

/// The key columns of a chunk's range with their types in `table` (the source's or the
/// target's).
fn key_types<'a>(p: &'a Planned, table: &'a Table) -> Vec<(String, &'a str)> {
    p.plan
        .key
        .iter()
        .map(|k| {
            (
                quote_ident(k),
                table.column(k).map_or("text", |c| c.sql_type.as_str()),
            )
        })
        .collect()
}

/// ` AND (k1, k2) > (..) AND (k1, k2) <= (..)` for a chunk, over the columns of `table`
/// prefixed with `alias` (`c.`), each bound value written by `value` (from the value and
/// its column's type); empty for a whole table.
fn range_with(
    p: &Planned,
    chunk: &Chunk,
    table: &Table,
    alias: &str,
    value: &mut dyn FnMut(&str, &str) -> String,
) -> String {
    let keys = key_types(p, table);
    if chunk.null_keys {
        let any_null: Vec<String> = keys
            .iter()
            .map(|(k, _)| format!("{alias}{k} IS NULL"))
            .collect();
        return format!(" AND ({})", any_null.join(" OR "));
    }
    let tuple = format!(
        "({})",
        keys.iter()
            .map(|(k, _)| format!("{alias}{k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut out = String::new();
    for (bound, op) in [(&chunk.lower, ">"), (&chunk.upper, "<=")] {
        if let Some(bound) = bound {
            let values: Vec<String> = bound
                .iter()
                .zip(&keys)
                .map(|(v, (_, t))| value(v, t))
                .collect();
            out.push_str(&format!(" AND {tuple} {op} ({})", values.join(", ")));
        }
    }
    out
}

/// A chunk's range (see [`range_with`]), its bounds bound and cast to the columns' types.
fn range(p: &Planned, chunk: &Chunk, table: &Table, alias: &str) -> Predicate {
    let mut binds = Vec::new();
    let sql = range_with(p, chunk, table, alias, &mut |v, t| {
        binds.push(v.to_string());
        format!("${}::{t}", binds.len())
    });
    // A collatable key may order differently in the target's collation.
    let exact = !p.plan.key.iter().any(|k| {
        p.source.column(k).is_some_and(|c| c.collatable)
            || table.column(k).is_some_and(|c| c.collatable)
    });
    Predicate { sql, binds, exact }
}

/// ` WHERE (k1, k2) > (..) AND (k1, k2) <= (..)` for a chunk's `COPY .. TO STDOUT`, which
/// takes no parameters: its bounds bound to a `SELECT` that casts each to its key column's
/// type and quotes it, and only the server's literals written here. Empty for a whole
/// table.
async fn copy_range(
    src: &mut PgConnection,
    p: &Planned,
    chunk: &Chunk,
) -> Result<String, sqlx::Error> {
    let mut typed: Vec<(String, String)> = Vec::new();
    let shape = range_with(p, chunk, &p.source, "", &mut |v, t| {
        typed.push((v.to_string(), t.to_string()));
        String::new()
    });
    let condition = if typed.is_empty() {
        shape
    } else {
        let quoting: Vec<String> = typed
            .iter()
            .enumerate()
            .map(|(i, (_, t))| format!("quote_literal(${}::{t})", i + 1))
            .collect();
        let sql = format!("SELECT ARRAY[{}]::text[]", quoting.join(", "));
        let mut q = query(AssertSqlSafe(sql));
        for (v, _) in &typed {
            q = q.bind(v.as_str());
        }
        let literals: Vec<String> = q.fetch_one(&mut *src).await?.try_get(0)?;
        let mut literals = literals.into_iter();
        range_with(p, chunk, &p.source, "", &mut |_, t| {
            format!("{}::{t}", literals.next().unwrap_or_default())
        })
    };
    Ok(condition
        .strip_prefix(" AND ")
        .map_or(String::new(), |c| format!(" WHERE {c}")))
}
