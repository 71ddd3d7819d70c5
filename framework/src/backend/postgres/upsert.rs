//! PostgreSQL's upsert: one statement from the source (a query, or Rust rows streamed into
//! a temporary table by `COPY`), counting inserted and updated rows apart.

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Executor, Postgres, Row, SqlSafeStr};

use super::sql::query;
use crate::backend::steps::UpsertSteps;
use crate::copy_text::RowSink;
use crate::error::Error;
use crate::merge::{NextRow, Plan, Source, UpsertReport, UpsertRequest, stage_name};

impl UpsertSteps for Postgres {
    async fn upsert(
        conn: &mut PgConnection,
        request: UpsertRequest<'_>,
    ) -> Result<(UpsertReport, u64), Error> {
        // Staging tables are temporary, which `write_count` leaves out.
        Ok((upsert(conn, request).await?, 0))
    }
}

/// The counts an upsert's statement returns: source rows, inserted, updated.
const COUNT_RETURNED: &str =
    "count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM ins";

/// One statement: the source, the `INSERT .. ON CONFLICT .. RETURNING (xmax = 0)` and the
/// counts (`xmax = 0` tells an inserted row from an updated one).
async fn upsert(
    conn: &mut PgConnection,
    request: UpsertRequest<'_>,
) -> Result<UpsertReport, Error> {
    let distinct =
        |current: &str, incoming: &str| format!("ROW({current}) IS DISTINCT FROM ROW({incoming})");
    match &request.source {
        Source::Missing => unreachable!("checked by the builder"),
        Source::Query(sql) => {
            let columns = query_columns(conn, sql).await?;
            let plan = Plan::new(&request, &columns, distinct)?;
            let counted = format!(
                "WITH src AS MATERIALIZED ({sql}), ins AS ({} RETURNING (xmax = 0) AS inserted)
                 SELECT (SELECT count(*) FROM src), {COUNT_RETURNED}",
                plan.insert_from("SELECT * FROM src"),
            );
            run_counted(conn, &request.table, counted).await
        }
        Source::Rows { columns, .. } => {
            let plan = Plan::new(&request, columns, distinct)?;
            let UpsertRequest {
                source,
                table,
                target,
                ..
            } = request;
            let Source::Rows { next, .. } = source else {
                unreachable!("matched above")
            };
            let stage = stage_rows(conn, &target, &plan.column_list, next).await?;
            let counted = format!(
                "WITH ins AS ({} RETURNING (xmax = 0) AS inserted)
                 SELECT (SELECT count(*) FROM {stage}), {COUNT_RETURNED}",
                plan.insert_from(&format!("SELECT * FROM {stage}")),
            );
            // On failure the transaction is aborted and `ON COMMIT DROP` (or the rollback)
            // removes the staging table; only a successful upsert drops it now, so that a
            // migration can stage again.
            let report = run_counted(conn, &table, counted).await?;
            query(AssertSqlSafe(format!("DROP TABLE {stage}")))
                .execute(&mut *conn)
                .await?;
            Ok(report)
        }
    }
}

async fn run_counted(
    conn: &mut PgConnection,
    table: &str,
    sql: String,
) -> Result<UpsertReport, Error> {
    let row = query(AssertSqlSafe(sql))
        .fetch_one(conn)
        .await
        .map_err(|err| explain_upsert_error(table, err))?;
    let total: i64 = row.try_get(0)?;
    let inserted: i64 = row.try_get(1)?;
    let updated: i64 = row.try_get(2)?;
    let as_u64 = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(UpsertReport {
        inserted: as_u64(inserted),
        updated: as_u64(updated),
        unchanged: as_u64(total - inserted - updated),
    })
}

fn explain_upsert_error(table: &str, err: sqlx::Error) -> Error {
    let code = err
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    match code.as_deref() {
        // "ON CONFLICT DO UPDATE command cannot affect row a second time"
        Some("21000") => Error::Config(format!(
            "the rows for the upsert into {table} hold the same key more than once; each key may appear once"
        )),
        // "there is no unique or exclusion constraint matching the ON CONFLICT specification"
        Some("42P10") => Error::Config(format!(
            "the upsert key of {table} is not a primary key or unique index of the table"
        )),
        _ => Error::Database(err),
    }
}

/// The column names of a query's result, from the server's description of it.
async fn query_columns(conn: &mut PgConnection, sql: &str) -> Result<Vec<String>, Error> {
    use sqlx::{Column, Statement};
    let statement = (&mut *conn)
        .prepare(AssertSqlSafe(sql.to_string()).into_sql_str())
        .await?;
    Ok(statement
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect())
}

/// Streams rows into a temporary staging table shaped like the target's columns; returns its
/// quoted name. The table is dropped at the end of the transaction at the latest.
async fn stage_rows(
    conn: &mut PgConnection,
    target: &str,
    columns: &str,
    mut next: NextRow<'_>,
) -> Result<String, Error> {
    let stage = stage_name("stage");
    query(AssertSqlSafe(format!(
        "CREATE TEMPORARY TABLE {stage} ON COMMIT DROP AS SELECT {columns} FROM {target} WITH NO DATA"
    )))
    .execute(&mut *conn)
    .await?;

    let mut copy = conn
        .copy_in_raw(&format!("COPY {stage} ({columns}) FROM STDIN"))
        .await?;
    let mut buf = Vec::with_capacity(1 << 20);
    loop {
        let more = next(RowSink::Copy(&mut buf));
        if buf.len() >= 1 << 20 || (!more && !buf.is_empty()) {
            copy.send(std::mem::take(&mut buf)).await?;
            buf.reserve(1 << 20);
        }
        if !more {
            break;
        }
    }
    copy.finish().await?;
    Ok(stage)
}
