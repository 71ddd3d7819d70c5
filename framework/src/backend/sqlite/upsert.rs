//! SQLite's upsert: the rows staged in a temporary table, then one `INSERT .. SELECT ..
//! ON CONFLICT`, counted from the staged rows.

use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Sqlite};

use crate::backend::steps::UpsertSteps;
use crate::copy_text::{BindValue as Value, RowSink};
use crate::error::Error;
use crate::merge::{Plan, Source, UpsertMode, UpsertReport, UpsertRequest, stage_name};
use crate::sql::quote_ident;

/// Rows per `INSERT` when staging Rust values (SQLite binds at most 32766 values a
/// statement).
const STAGE_CHUNK_VALUES: usize = 30_000;

impl UpsertSteps for Sqlite {
    async fn upsert(
        conn: &mut SqliteConnection,
        request: UpsertRequest<'_>,
    ) -> Result<(UpsertReport, u64), Error> {
        upsert(conn, request).await
    }
}

/// The upsert on SQLite: the rows staged in a temporary table, then one
/// `INSERT .. SELECT .. ON CONFLICT (key) DO UPDATE SET .. WHERE (..) IS NOT (..)`.
///
/// SQLite's `RETURNING` cannot tell an inserted row from an updated one, so the counts come
/// from the staged rows: those whose key already existed could only be updated.
async fn upsert(
    conn: &mut SqliteConnection,
    request: UpsertRequest<'_>,
) -> Result<(UpsertReport, u64), Error> {
    let distinct = |current: &str, incoming: &str| format!("({current}) IS NOT ({incoming})");
    let stage = stage_name("stage");
    let plan = match &request.source {
        Source::Missing => unreachable!("checked by the builder"),
        Source::Query(sql) => {
            sqlx::query(AssertSqlSafe(format!(
                "CREATE TEMP TABLE {stage} AS SELECT * FROM ({sql})"
            )))
            .execute(&mut *conn)
            .await?;
            let columns: Vec<String> =
                sqlx::query_scalar("SELECT name FROM pragma_table_info($1, 'temp') ORDER BY cid")
                    .bind(stage.trim_matches('"'))
                    .fetch_all(&mut *conn)
                    .await?;
            Plan::new(&request, &columns, distinct)
        }
        Source::Rows { columns, .. } => {
            let plan = Plan::new(&request, columns, distinct)?;
            sqlx::query(AssertSqlSafe(format!(
                "CREATE TEMP TABLE {stage} AS SELECT {} FROM {} WHERE 0",
                plan.column_list, request.target
            )))
            .execute(&mut *conn)
            .await?;
            Ok(plan)
        }
    };
    let result = match plan {
        Ok(plan) => merge(conn, request, &plan, &stage).await,
        Err(err) => Err(err),
    };
    // The staging table goes whatever happened, so that the migration can stage again.
    sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS temp.{stage}")))
        .execute(&mut *conn)
        .await?;
    result
}

/// Stages the Rust rows (if any), checks the keys, merges, counts.
async fn merge(
    conn: &mut SqliteConnection,
    request: UpsertRequest<'_>,
    plan: &Plan,
    stage: &str,
) -> Result<(UpsertReport, u64), Error> {
    let UpsertRequest {
        target,
        table,
        key,
        source,
        mode,
    } = request;
    let staged_rows = matches!(source, Source::Rows { .. });
    if let Source::Rows {
        columns, mut next, ..
    } = source
    {
        let per_row = columns.len().max(1);
        let chunk_rows = (STAGE_CHUNK_VALUES / per_row).max(1);
        let mut values = Vec::with_capacity(chunk_rows * per_row);
        loop {
            let more = next(RowSink::Values(&mut values));
            let rows = values.len() / per_row;
            if rows > 0 && (rows >= chunk_rows || !more) {
                stage_chunk(conn, stage, &plan.column_list, per_row, &mut values).await?;
            }
            if !more {
                break;
            }
        }
    }
    let updates = matches!(mode, UpsertMode::Overwrite | UpsertMode::UpdateIfChanged);
    if updates {
        // PostgreSQL refuses to update one row twice in a statement; SQLite would quietly
        // let the last source row win. Both fail here instead.
        let repeated: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM (SELECT 1 FROM {stage} GROUP BY {} HAVING count(*) > 1)",
            plan.key_list
        )))
        .fetch_one(&mut *conn)
        .await?;
        if repeated > 0 {
            return Err(Error::Config(format!(
                "the rows for the upsert into {table} hold the same key more than once; each key may appear once"
            )));
        }
    }
    let matching = key
        .iter()
        .map(|k| format!("t.{0} = s.{0}", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let (total, existing): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT count(*), coalesce(sum(EXISTS (SELECT 1 FROM {target} AS t WHERE {matching})), 0)
         FROM {stage} AS s"
    )))
    .fetch_one(&mut *conn)
    .await?;
    // `WHERE true` keeps SQLite from reading `ON CONFLICT` as a join's `ON`.
    let statement = plan.insert_from(&format!(
        "SELECT {} FROM {stage} WHERE true",
        plan.column_list
    ));
    let changed = sqlx::query(AssertSqlSafe(statement))
        .execute(&mut *conn)
        .await
        .map_err(|err| explain_upsert_error(&table, err))?
        .rows_affected();
    let as_u64 = |n: i64| u64::try_from(n).unwrap_or(0);
    let (total, existing) = (as_u64(total), as_u64(existing));
    let (inserted, updated) = if updates {
        let inserted = total.saturating_sub(existing);
        (inserted, changed.saturating_sub(inserted))
    } else {
        (changed, 0)
    };
    let report = UpsertReport {
        inserted,
        updated,
        unchanged: total.saturating_sub(inserted + updated),
    };
    // Rust values were staged with `INSERT`s, which `total_changes()` counts; rows of a
    // query were staged by `CREATE TABLE .. AS`, which it does not.
    let staged = if staged_rows { total } else { 0 };
    Ok((report, staged))
}

/// Inserts the staged values (whole rows of `per_row` values) into the staging table.
async fn stage_chunk(
    conn: &mut SqliteConnection,
    stage: &str,
    columns: &str,
    per_row: usize,
    values: &mut Vec<Value>,
) -> Result<(), Error> {
    let rows = values.len() / per_row;
    let row = format!("({})", vec!["?"; per_row].join(", "));
    let sql = format!(
        "INSERT INTO {stage} ({columns}) VALUES {}",
        vec![row.as_str(); rows].join(", ")
    );
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for value in values.drain(..) {
        query = match value {
            Value::Null => query.bind(None::<i64>),
            Value::Bool(b) => query.bind(b),
            Value::Int(i) => query.bind(i),
            Value::Float(f) => query.bind(f),
            Value::Text(t) => query.bind(t),
        };
    }
    query.execute(conn).await?;
    Ok(())
}

fn explain_upsert_error(table: &str, err: sqlx::Error) -> Error {
    let message = err
        .as_database_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    if message.contains("ON CONFLICT clause does not match") {
        Error::Config(format!(
            "the upsert key of {table} is not a primary key or unique index of the table"
        ))
    } else {
        Error::Database(err)
    }
}
