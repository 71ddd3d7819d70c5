//! A PostgreSQL source: one connection exports a snapshot that every reader imports, so
//! that all of them read one state of the database while it takes writes; tables split in
//! primary-key ranges; each chunk streamed as `COPY .. TO STDOUT` into the target's
//! `COPY .. FROM STDIN` without parsing a row.

use std::collections::BTreeMap;

use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgCopyIn};
use sqlx::{AssertSqlSafe, Connection, Row};

use super::{Opened, Reader, Readers, Source};
use crate::backend::postgres::{query, query_scalar};
use crate::copy::catalog::{self, Table, TableName};
use crate::copy::chunk::Chunk;
use crate::copy::connect::connect;
use crate::copy::copier::Copier;
use crate::copy::failure::Failure;
use crate::copy::fingerprint::{Side, fingerprint};
use crate::copy::options::Purpose;
use crate::copy::pipe::{Buffers, SEND_BYTES};
use crate::copy::plan::{self, ColumnAction, ColumnPlan, Planned};
use crate::copy::report::RowDifference;
use crate::copy::sql::{literal, source_from};
use crate::error::Error;
use crate::fingerprint::Fingerprint;
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
        _copier: &Copier,
        target: &mut PgConnection,
        _target_tables: &BTreeMap<TableName, Table>,
        _purpose: Purpose,
    ) -> Result<Opened<Self>, Error> {
        let mut conn = connect(options, "source").await?;
        source_session(&mut conn).await?;
        if catalog::identity(&mut conn).await? == catalog::identity(target).await? {
            return Err(Error::CopyRefused(
                "the source and the target are the same database: a copy needs two databases; check the two URLs".into(),
            ));
        }
        sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut conn)
            .await?;
        let snapshot = query_scalar("SELECT pg_export_snapshot()")
            .fetch_one(&mut conn)
            .await?;
        let tables = catalog::read(&mut conn).await?;
        let name = catalog::copy_name(&mut conn).await?;
        Ok(Opened {
            source: PostgresSource {
                conn,
                options: options.clone(),
                snapshot,
            },
            tables,
            name,
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

    async fn verify(
        &mut self,
        _target: &mut PgConnection,
        planned: &[Planned],
    ) -> Result<(Fingerprint, Vec<RowDifference>), Error> {
        Ok((
            fingerprint(&mut self.conn, planned, Side::Source).await?,
            Vec::new(),
        ))
    }

    async fn close(mut self) -> Result<(), Error> {
        sqlx::raw_sql("COMMIT").execute(&mut self.conn).await?;
        let _ = self.conn.close().await;
        Ok(())
    }

    /// The same built-in type on both sides: binary `COPY`, which neither server has to
    /// write as text or parse back.
    fn binary(p: &Planned) -> bool {
        p.plan.copied().all(|c| {
            c.action == ColumnAction::Copy
                && p.target.column(&c.name).is_some_and(|t| t.builtin_type)
                && p.source.column(&c.name).is_some_and(|s| s.builtin_type)
        })
    }

    fn target_range(p: &Planned, chunk: &Chunk) -> String {
        let range = range_predicate(p, chunk);
        range
            .strip_prefix(" WHERE ")
            .map_or(String::new(), |r| format!(" AND {r}"))
    }
}

impl Readers for PostgresReaders {
    type Reader = PostgresReader;

    async fn open(&self) -> Result<PostgresReader, Error> {
        let mut conn = connect(&self.options, "source").await?;
        source_session(&mut conn).await?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
            self.snapshot.replace('\'', "''")
        )))
        .execute(&mut conn)
        .await?;
        Ok(PostgresReader { conn })
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
        let select = format!(
            "COPY (SELECT {list} FROM {}{}) TO STDOUT{format}",
            source_from(&p.source),
            range_predicate(p, chunk)
        );
        stream(
            &mut self.conn,
            &select,
            &p.plan.table,
            table,
            copy_in,
            progress,
        )
        .await
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

/// The source's session: no timeouts, and values written as `COPY` reads them back.
pub(super) async fn source_session(conn: &mut PgConnection) -> Result<(), Error> {
    sqlx::raw_sql(
        "SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0; \
         SET standard_conforming_strings = on; SET extra_float_digits = 3",
    )
    .execute(conn)
    .await?;
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
    if p.plan.estimated_rows <= 0 {
        p.plan.estimated_rows = query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {from}")))
            .fetch_one(&mut *src)
            .await?;
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
        .await?;
        let (Some(min), Some(max)): (Option<i64>, Option<i64>) = (row.try_get(0)?, row.try_get(1)?)
        else {
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
        let wanted = n * 64;
        let percent = (100.0 * wanted as f64 / estimate as f64).min(100.0);
        let list = columns
            .iter()
            .map(|c| format!("{c}::text"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = query(AssertSqlSafe(format!(
            "SELECT {list} FROM {from} TABLESAMPLE SYSTEM ({percent}) ORDER BY {}",
            columns.join(", ")
        )))
        .fetch_all(&mut *src)
        .await?;
        let sample: Vec<Vec<String>> = rows
            .iter()
            .map(|row| {
                (0..key.len())
                    .map(|i| row.try_get::<String, _>(i))
                    .collect()
            })
            .collect::<Result<_, _>>()?;
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
    name: &str,
    table: usize,
    copy_in: &mut PgCopyIn<&mut PgConnection>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<u64, Failure> {
    let mut out = src
        .copy_out_raw(select)
        .await
        .map_err(|e| Failure::Source(name.to_string(), e))?;
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
                .map_err(|e| Failure::Source(name.to_string(), e))?;
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
    let range = range_predicate(p, chunk);
    let condition = format!("{} = {}", quote_ident(column), literal(value, sql_type));
    let filter = if range.is_empty() {
        format!(" WHERE {condition}")
    } else {
        format!("{range} AND {condition}")
    };
    let row = query(AssertSqlSafe(format!(
        "SELECT {} FROM {}{filter} LIMIT 1",
        keys.join(", "),
        source_from(&p.source)
    )))
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

/// `WHERE (k1, k2) > (..) AND (k1, k2) <= (..)` for a chunk (its bounds cast to the key
/// columns' types), empty for a whole table.
fn range_predicate(p: &Planned, chunk: &Chunk) -> String {
    let columns: Vec<String> = p.plan.key.iter().map(|k| quote_ident(k)).collect();
    let tuple = format!("({})", columns.join(", "));
    let types: Vec<&str> = p
        .plan
        .key
        .iter()
        .map(|k| p.source.column(k).map_or("text", |c| c.sql_type.as_str()))
        .collect();
    let values = |bound: &[String]| {
        let literals: Vec<String> = bound
            .iter()
            .zip(&types)
            .map(|(v, t)| literal(v, t))
            .collect();
        format!("({})", literals.join(", "))
    };
    let mut conditions = Vec::new();
    if let Some(lower) = &chunk.lower {
        conditions.push(format!("{tuple} > {}", values(lower)));
    }
    if let Some(upper) = &chunk.upper {
        conditions.push(format!("{tuple} <= {}", values(upper)));
    }
    if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    }
}
