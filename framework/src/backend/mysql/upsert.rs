//! MySQL's upsert: the rows staged in a temporary table (Rust values in multi-row
//! `INSERT`s sized under the protocol's 65,535 parameters), then one
//! `INSERT .. SELECT .. ON DUPLICATE KEY UPDATE`, counted from the staged rows and the
//! statement's affected rows.
//!
//! MySQL never writes a row whose values do not change: an update to equal values is
//! counted as found, not changed, and a second run rewrites nothing, whichever mode.

use sqlx::mysql::MySqlConnection;
use sqlx::{AssertSqlSafe, Executor, MySql, SqlSafeStr};

use super::server::Server;
use super::sql::{ident, query_scalar};
use crate::backend::steps::UpsertSteps;
use crate::copy_text::{BindValue as Value, RowSink};
use crate::error::Error;
use crate::merge::{Plan, Source, UpsertMode, UpsertReport, UpsertRequest, stage_name};
use crate::sql::quote_ident;

/// The most parameters one MySQL prepared statement takes (the protocol counts them in
/// two bytes).
const MAX_PARAMETERS: usize = 65_535;

impl UpsertSteps for MySql {
    async fn upsert(
        conn: &mut MySqlConnection,
        request: UpsertRequest<'_>,
    ) -> Result<(UpsertReport, u64), Error> {
        upsert(conn, request).await
    }
}

async fn upsert(
    conn: &mut MySqlConnection,
    request: UpsertRequest<'_>,
) -> Result<(UpsertReport, u64), Error> {
    let stage = super::sql::ident(stage_name("stage").trim_matches('"'));
    // The plan checks the columns and the key; its SQL is PostgreSQL's and SQLite's.
    let no_distinct = |_: &str, _: &str| String::new();
    let columns = match &request.source {
        Source::Missing => unreachable!("checked by the builder"),
        Source::Query(sql) => {
            // `CREATE TEMPORARY TABLE` commits nothing (unlike `CREATE TABLE`).
            sqlx::query(AssertSqlSafe(format!(
                "CREATE TEMPORARY TABLE {stage} AS SELECT * FROM ({}) AS source",
                super::sql::render(sql)
            )))
            .execute(&mut *conn)
            .await?;
            let described = (&mut *conn)
                .describe(AssertSqlSafe(format!("SELECT * FROM {stage}")).into_sql_str())
                .await?;
            described
                .columns()
                .iter()
                .map(|c| sqlx::Column::name(c).to_string())
                .collect::<Vec<_>>()
        }
        Source::Rows { columns, .. } => columns.clone(),
    };
    let result = match Plan::new(&request, &columns, no_distinct) {
        Ok(_) => merge(conn, request, &columns, &stage).await,
        Err(err) => Err(err),
    };
    // The staging table goes whatever happened, so that the migration can stage again.
    sqlx::query(AssertSqlSafe(format!(
        "DROP TEMPORARY TABLE IF EXISTS {stage}"
    )))
    .execute(&mut *conn)
    .await?;
    result
}

/// Stages the Rust rows (if any), checks the keys, merges, counts.
async fn merge(
    conn: &mut MySqlConnection,
    request: UpsertRequest<'_>,
    columns: &[String],
    stage: &str,
) -> Result<(UpsertReport, u64), Error> {
    let UpsertRequest {
        target,
        table,
        key,
        source,
        mode,
    } = request;
    let target = super::sql::render(&target);
    check_unique_key(conn, &table, &key).await?;
    let column_list = columns
        .iter()
        .map(|c| ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let key_list = key.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
    if let Source::Rows { mut next, .. } = source {
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TEMPORARY TABLE {stage} AS SELECT {column_list} FROM {target} WHERE FALSE"
        )))
        .execute(&mut *conn)
        .await?;
        let per_row = columns.len().max(1);
        let chunk_rows = (MAX_PARAMETERS / per_row).max(1);
        let mut values = Vec::with_capacity(chunk_rows * per_row);
        loop {
            let more = next(RowSink::Values(&mut values));
            let rows = values.len() / per_row;
            if rows > 0 && (rows >= chunk_rows || !more) {
                stage_chunk(conn, stage, &column_list, per_row, &mut values).await?;
            }
            if !more {
                break;
            }
        }
    }
    // MySQL would let the last of two source rows with one key win; the other backends
    // refuse, and so does this one.
    let repeated: i64 = query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM (SELECT 1 FROM {stage} GROUP BY {key_list} HAVING count(*) > 1) AS d"
    )))
    .fetch_one(&mut *conn)
    .await?;
    if repeated > 0 {
        return Err(Error::Config(format!(
            "the rows for the upsert into {table} hold the same key more than once; each key may appear once"
        )));
    }
    let matching = key
        .iter()
        .map(|k| format!("t.{0} = s.{0}", ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let (total, existing): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT count(*), CAST(coalesce(sum(EXISTS (SELECT 1 FROM {target} AS t WHERE {matching})), 0) AS signed)
         FROM {stage} AS s"
    )))
    .fetch_one(&mut *conn)
    .await?;
    let others: Vec<String> = columns
        .iter()
        .filter(|c| !key.contains(c))
        .map(|c| ident(c))
        .collect();
    let server = Server::of(conn).await?;
    let incoming = |c: &str| match server {
        // MariaDB: `VALUES(col)`, the value the row would have inserted.
        Server::MariaDb => format!("VALUES({c})"),
        // MySQL 8: the source's own column, through its alias (`VALUES()` is deprecated).
        Server::MySql => format!("source.{c}"),
    };
    let update = match mode {
        UpsertMode::InsertMissing => None,
        _ if others.is_empty() => None,
        UpsertMode::Overwrite | UpsertMode::UpdateIfChanged => Some(
            others
                .iter()
                .map(|c| format!("{c} = {}", incoming(c)))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    };
    // An existing key with nothing to update: a no-op assignment, which writes nothing
    // (`INSERT IGNORE` would also turn other errors into warnings).
    let first_key = format!("{target}.{}", ident(&key[0]));
    let update = update.unwrap_or_else(|| format!("{first_key} = {first_key}"));
    let statement = format!(
        "INSERT INTO {target} ({column_list})
         SELECT {column_list} FROM (SELECT {column_list} FROM {stage}) AS source
         ON DUPLICATE KEY UPDATE {update}"
    );
    let affected = sqlx::query(AssertSqlSafe(statement))
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let as_u64 = |n: i64| u64::try_from(n).unwrap_or(0);
    let (total, existing) = (as_u64(total), as_u64(existing));
    let inserted = total.saturating_sub(existing);
    // sqlx asks for found rows: each inserted row counts 1, each changed row 2, each
    // existing row left as it was 1. So what is beyond one per source row was changed.
    let updated = if matches!(mode, UpsertMode::InsertMissing) {
        0
    } else {
        affected.saturating_sub(total)
    };
    let report = UpsertReport {
        inserted,
        updated,
        unchanged: total.saturating_sub(inserted + updated),
    };
    // Every staged row was written to an InnoDB temporary table, which the transaction's
    // rows-modified count (`write_count`) includes: the runner takes them off.
    Ok((report, total))
}

/// Inserts the staged values (whole rows of `per_row` values) into the staging table.
async fn stage_chunk(
    conn: &mut MySqlConnection,
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
    let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(false);
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

/// `ON DUPLICATE KEY UPDATE` fires on any unique key of the table: the upsert's key must
/// be its primary key or a unique index of exactly those columns, or rows would be matched
/// by another key.
async fn check_unique_key(
    conn: &mut MySqlConnection,
    table: &str,
    key: &[String],
) -> Result<(), Error> {
    let name = table.rsplit('.').next().unwrap_or(table).trim_matches('"');
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT CAST(INDEX_NAME AS char), CAST(COLUMN_NAME AS char)
         FROM information_schema.STATISTICS
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND NON_UNIQUE = 0
         ORDER BY INDEX_NAME, SEQ_IN_INDEX",
    )
    .bind(name)
    .fetch_all(&mut *conn)
    .await?;
    let mut indexes: Vec<(&str, Vec<&str>)> = Vec::new();
    for (index, column) in &rows {
        match indexes.last_mut() {
            Some((name, columns)) if *name == index.as_str() => columns.push(column),
            _ => indexes.push((index, vec![column])),
        }
    }
    let mut wanted: Vec<&str> = key.iter().map(String::as_str).collect();
    wanted.sort_unstable();
    let matches = indexes.iter().any(|(_, columns)| {
        let mut columns = columns.clone();
        columns.sort_unstable();
        columns == wanted
    });
    if matches {
        return Ok(());
    }
    Err(Error::Config(format!(
        "the upsert key ({}) of {table} is not a primary key or unique index of the table (ON DUPLICATE KEY UPDATE would match rows by another key)",
        key.iter()
            .map(|k| quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ")
    )))
}
