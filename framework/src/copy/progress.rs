//! The target's `datamig_copy_progress` table: one row per chunk of each copy, written
//! before any row moves and marked in the transaction that commits the chunk.
//!
//! Why the progress lives in the target: a chunk and the record of it commit together or
//! not at all, so a rerun after a kill neither skips nor repeats rows.

use std::collections::BTreeMap;

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Row};

use super::chunk::Chunk;
use super::copier::Copier;
use super::options::CopyMode;
use super::plan::Planned;
use crate::backend::postgres::{query, query_scalar};
use crate::error::Error;
use crate::sql::quote_ident;

const PROGRESS_TABLE: &str = "datamig_copy_progress";

/// The progress table, in `schema` or else unqualified (the target role's first schema).
pub(super) fn table(schema: Option<&str>) -> String {
    match schema {
        Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(PROGRESS_TABLE)),
        None => quote_ident(PROGRESS_TABLE),
    }
}

/// Whether the progress table exists.
pub(super) async fn exists(conn: &mut PgConnection, progress: &str) -> Result<bool, Error> {
    Ok(query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(progress)
        .fetch_one(conn)
        .await?)
}

/// This copy's chunks recorded in the target, by table.
pub(super) async fn read(
    conn: &mut PgConnection,
    progress: &str,
    copy_id: &str,
) -> Result<BTreeMap<String, Vec<Chunk>>, Error> {
    let mut out: BTreeMap<String, Vec<Chunk>> = BTreeMap::new();
    let rows = query(AssertSqlSafe(format!(
        "SELECT table_name, chunk, lower_key, upper_key, copied_at IS NOT NULL AS done, COALESCE(rows, 0) AS rows
         FROM {progress} WHERE copy_name = $1 ORDER BY table_name, chunk"
    )))
    .bind(copy_id)
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        let table: String = row.try_get("table_name")?;
        let number: i32 = row.try_get("chunk")?;
        let rows: i64 = row.try_get("rows")?;
        out.entry(table).or_default().push(Chunk {
            number: usize::try_from(number).unwrap_or(0),
            lower: row.try_get("lower_key")?,
            upper: row.try_get("upper_key")?,
            done: row.try_get("done")?,
            rows: u64::try_from(rows).unwrap_or(0),
        });
    }
    Ok(out)
}

/// Creates the progress table, or says why the target role may not.
pub(super) async fn create(
    conn: &mut PgConnection,
    progress: &str,
    schema: Option<&str>,
) -> Result<(), Error> {
    let ddl = format!(
        "CREATE TABLE IF NOT EXISTS {progress} (
             copy_name  text NOT NULL,
             table_name text NOT NULL,
             chunk      integer NOT NULL,
             chunks     integer NOT NULL,
             lower_key  text[],
             upper_key  text[],
             rows       bigint,
             bytes      bigint,
             copied_at  timestamptz,
             copied_by  text,
             PRIMARY KEY (copy_name, table_name, chunk)
         )"
    );
    sqlx::raw_sql(AssertSqlSafe(ddl)).execute(conn).await.map_err(|err| {
        Error::CopyRefused(format!(
            "the copy keeps its progress in table {PROGRESS_TABLE} on the target{}, and the target role may not create it ({}): GRANT CREATE ON SCHEMA to the role, create the table as its owner, or choose a schema it may create in with --progress-schema",
            schema.map(|s| format!(" (schema {s})")).unwrap_or_default(),
            crate::error::describe_sqlx(&err)
        ))
    })?;
    Ok(())
}

/// Takes the lock of the copy `copy_id` into this target (a session lock, gone with the
/// connection), or refuses: another copy of the same name is running.
pub(super) async fn lock(conn: &mut PgConnection, copy_id: &str) -> Result<(), Error> {
    let locked: bool =
        query_scalar("SELECT pg_try_advisory_lock(hashtext('datamig copy'), hashtext($1))")
            .bind(copy_id)
            .fetch_one(conn)
            .await?;
    if !locked {
        return Err(Error::CopyRefused(format!(
            "another copy ({copy_id}) into this target is running; wait for it to finish"
        )));
    }
    Ok(())
}

/// Writes the chunks of tables not yet recorded; for a restart (a truncating copy, a new
/// merge pass), first empties the tables (truncate) and forgets the earlier chunks, in the
/// same transaction.
pub(super) async fn record(
    conn: &mut PgConnection,
    copier: &Copier,
    progress: &str,
    copy_id: &str,
    planned: &[Planned],
    chunks: &[Vec<Chunk>],
    restart: bool,
) -> Result<(), Error> {
    let mut tx = crate::backend::isolation::begin_read_committed(conn).await?;
    if copier.mode == CopyMode::DangerouslyTruncate && !planned.is_empty() {
        let tables: Vec<String> = planned.iter().map(|p| p.target.ident()).collect();
        query(AssertSqlSafe(format!("TRUNCATE {}", tables.join(", "))))
            .execute(&mut *tx)
            .await
            .map_err(|err| Error::CopyRefused(format!(
                "--mode dangerously-truncate could not empty the target tables ({}); nothing was written",
                crate::error::describe_sqlx(&err)
            )))?;
    }
    if restart {
        query(AssertSqlSafe(format!(
            "DELETE FROM {progress} WHERE copy_name = $1"
        )))
        .bind(copy_id)
        .execute(&mut *tx)
        .await?;
    }
    let insert = format!(
        "INSERT INTO {progress} (copy_name, table_name, chunk, chunks, lower_key, upper_key)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
    );
    for (p, table_chunks) in planned.iter().zip(chunks) {
        for chunk in table_chunks {
            query(AssertSqlSafe(insert.clone()))
                .bind(copy_id)
                .bind(&p.plan.table)
                .bind(i32::try_from(chunk.number).unwrap_or(i32::MAX))
                .bind(i32::try_from(table_chunks.len()).unwrap_or(i32::MAX))
                .bind(&chunk.lower)
                .bind(&chunk.upper)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Marks a chunk copied, in the transaction that loaded it; the rows it marked (1, or 0
/// when another copy committed it meanwhile).
pub(super) async fn mark(
    conn: &mut PgConnection,
    progress: &str,
    copy_id: &str,
    table: &str,
    chunk: usize,
    rows: u64,
    bytes: u64,
) -> Result<u64, sqlx::Error> {
    let marked = query(AssertSqlSafe(format!(
        "UPDATE {progress} SET copied_at = clock_timestamp(), rows = $1, bytes = $2, copied_by = $3
         WHERE copy_name = $4 AND table_name = $5 AND chunk = $6 AND copied_at IS NULL"
    )))
    .bind(i64::try_from(rows).unwrap_or(i64::MAX))
    .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
    .bind(crate::session::runner_tag())
    .bind(copy_id)
    .bind(table)
    .bind(i32::try_from(chunk).unwrap_or(i32::MAX))
    .execute(conn)
    .await?;
    Ok(marked.rows_affected())
}
