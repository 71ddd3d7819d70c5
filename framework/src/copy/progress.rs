//! The target's `datamig_copy_progress` table: one row per chunk of each copy, written
//! before any row moves and marked in the transaction that commits the chunk.
//!
//! Why the progress lives in the target: a chunk and the record of it commit together or
//! not at all, so a rerun after a kill neither skips nor repeats rows.
//!
//! Each row also records the source it was planned from (`source_id`: a PostgreSQL
//! cluster's system identifier and the database's OID, a SQLite file's identity) and the
//! state of the source a chunk was copied from (`source_version`): a copy of the same
//! name from another source is refused instead of taking that source's chunks as done.
//! The values read back are bound where they are used, never spliced into SQL.

use std::collections::BTreeMap;

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Row};

use super::chunk::Chunk;
use super::context::During;
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
    query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(progress)
        .fetch_one(conn)
        .await
        .during(|| format!("looking for the progress table {progress} in the target"))
}

/// What earlier runs of a copy recorded.
#[derive(Default)]
pub(super) struct Recorded {
    /// The chunks, by table.
    pub(super) chunks: BTreeMap<String, Vec<Chunk>>,
    /// The sources they were planned from (none recorded by a datamig that kept none).
    pub(super) sources: Vec<String>,
}

/// This copy's chunks recorded in the target, by table, and the sources they came from (a
/// table an older datamig created, not yet given its `source_id` column, reads as none).
pub(super) async fn read(
    conn: &mut PgConnection,
    progress: &str,
    copy_id: &str,
) -> Result<Recorded, Error> {
    let during = || format!("reading copy {copy_id}'s chunks from the progress table {progress}");
    let mut out = Recorded::default();
    let rows = query(AssertSqlSafe(format!(
        "SELECT table_name, chunk, lower_key, upper_key, copied_at IS NOT NULL AS done, COALESCE(rows, 0) AS rows,
                to_jsonb(p) ->> 'source_id' AS source_id
         FROM {progress} AS p WHERE copy_name = $1 ORDER BY table_name, chunk"
    )))
    .bind(copy_id)
    .fetch_all(&mut *conn)
    .await
    .during(during)?;
    for row in rows {
        let read = || -> Result<_, sqlx::Error> {
            let table: String = row.try_get("table_name")?;
            let number: i32 = row.try_get("chunk")?;
            let rows: i64 = row.try_get("rows")?;
            let source: Option<String> = row.try_get("source_id")?;
            let chunk = Chunk::from_recorded(
                usize::try_from(number).unwrap_or(0),
                row.try_get("lower_key")?,
                row.try_get("upper_key")?,
                row.try_get("done")?,
                u64::try_from(rows).unwrap_or(0),
            );
            Ok((table, chunk, source))
        };
        let (table, chunk, source) = read().during(during)?;
        out.chunks.entry(table).or_default().push(chunk);
        if let Some(source) = source
            && !out.sources.contains(&source)
        {
            out.sources.push(source);
        }
    }
    Ok(out)
}

/// Refuses to go on with chunks recorded from another source than `source` (a database or
/// file of the same name): their rows are not this source's.
pub(super) fn refuse_other_source(
    recorded: &Recorded,
    source: &str,
    copy_id: &str,
    progress: &str,
) -> Result<(), Error> {
    let others: Vec<&String> = recorded.sources.iter().filter(|s| *s != source).collect();
    if others.is_empty() {
        return Ok(());
    }
    Err(Error::CopyRefused(format!(
        "the target's progress table {progress} holds chunks of copy {copy_id} from another source ({}), and this source is {source}: they are not this source's rows, so nothing was written. Copy into another target, empty the tables and delete that copy's rows from {progress} (DELETE FROM {progress} WHERE copy_name = '{}'), or copy with --mode dangerously-truncate",
        others
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("; "),
        copy_id.replace('\'', "''")
    )))
}

/// Creates the progress table, or says why the target role may not; adds the columns an
/// older datamig's table lacks.
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
             source_id  text,
             source_version text,
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

/// Adds the columns recording the source to a progress table an older datamig created.
pub(super) async fn upgrade(conn: &mut PgConnection, progress: &str) -> Result<(), Error> {
    let current: bool = query_scalar(
        "SELECT count(*) = 2 FROM pg_attribute
         WHERE attrelid = to_regclass($1) AND attname IN ('source_id', 'source_version') AND NOT attisdropped",
    )
    .bind(progress)
    .fetch_one(&mut *conn)
    .await
    .during(|| format!("reading the columns of the progress table {progress}"))?;
    if current {
        return Ok(());
    }
    sqlx::raw_sql(AssertSqlSafe(format!(
        "ALTER TABLE {progress} ADD COLUMN IF NOT EXISTS source_id text, ADD COLUMN IF NOT EXISTS source_version text"
    )))
    .execute(conn)
    .await
    .map_err(|err| {
        Error::CopyRefused(format!(
            "the progress table {progress} was created by an older datamig and lacks the columns that record the source (source_id, source_version), which the target role may not add ({}): add them as the table's owner (ALTER TABLE {progress} ADD COLUMN source_id text, ADD COLUMN source_version text)",
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
            .await
            .during(|| format!("taking the lock of copy {copy_id} on the target"))?;
    if !locked {
        return Err(Error::CopyRefused(format!(
            "another copy ({copy_id}) into this target is running; wait for it to finish"
        )));
    }
    Ok(())
}

/// Writes the chunks of tables not yet recorded, with the source they are planned from;
/// for a restart (a truncating copy, a new merge pass), first empties the tables
/// (truncate) and forgets the earlier chunks, in the same transaction.
#[allow(clippy::too_many_arguments)]
pub(super) async fn record(
    conn: &mut PgConnection,
    copier: &Copier,
    progress: &str,
    copy_id: &str,
    source: &str,
    planned: &[Planned],
    chunks: &[Vec<Chunk>],
    restart: bool,
) -> Result<(), Error> {
    let during = || format!("recording copy {copy_id}'s chunks in the progress table {progress}");
    let mut tx = crate::backend::isolation::begin_read_committed(conn)
        .await
        .during(during)?;
    if copier.mode == CopyMode::DangerouslyTruncate && !planned.is_empty() {
        // An inheritance parent's children are tables of their own: emptied only when
        // selected themselves.
        let tables: Vec<String> = planned
            .iter()
            .map(|p| super::sql::source_from(&p.target))
            .collect();
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
        .await
        .during(during)?;
    }
    let insert = format!(
        "INSERT INTO {progress} (copy_name, table_name, chunk, chunks, lower_key, upper_key, source_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"
    );
    for (p, table_chunks) in planned.iter().zip(chunks) {
        for chunk in table_chunks {
            let (lower, upper) = chunk.recorded();
            query(AssertSqlSafe(insert.clone()))
                .bind(copy_id)
                .bind(&p.plan.table)
                .bind(i32::try_from(chunk.number).unwrap_or(i32::MAX))
                .bind(i32::try_from(table_chunks.len()).unwrap_or(i32::MAX))
                .bind(lower)
                .bind(upper)
                .bind(source)
                .execute(&mut *tx)
                .await
                .during(during)?;
        }
    }
    // Chunks an older datamig recorded without their source: this one's, from now on.
    query(AssertSqlSafe(format!(
        "UPDATE {progress} SET source_id = $1 WHERE copy_name = $2 AND source_id IS NULL"
    )))
    .bind(source)
    .bind(copy_id)
    .execute(&mut *tx)
    .await
    .during(during)?;
    tx.commit().await.during(during)?;
    Ok(())
}

/// Marks a chunk copied from the source's state `version`, in the transaction that
/// loaded it; the rows it marked (1, or 0 when another copy committed it meanwhile).
#[allow(clippy::too_many_arguments)]
pub(super) async fn mark(
    conn: &mut PgConnection,
    progress: &str,
    copy_id: &str,
    table: &str,
    chunk: usize,
    rows: u64,
    bytes: u64,
    version: &str,
) -> Result<u64, sqlx::Error> {
    let marked = query(AssertSqlSafe(format!(
        "UPDATE {progress} SET copied_at = clock_timestamp(), rows = $1, bytes = $2, copied_by = $3,
                source_version = $7
         WHERE copy_name = $4 AND table_name = $5 AND chunk = $6 AND copied_at IS NULL"
    )))
    .bind(i64::try_from(rows).unwrap_or(i64::MAX))
    .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
    .bind(crate::session::runner_tag())
    .bind(copy_id)
    .bind(table)
    .bind(i32::try_from(chunk).unwrap_or(i32::MAX))
    .bind(version)
    .execute(conn)
    .await?;
    Ok(marked.rows_affected())
}
