//! MySQL's upsert. Rust rows on one integer key go straight into multi-row
//! `INSERT .. VALUES .. ON DUPLICATE KEY UPDATE`s, counted by the statements (`Direct`).
//! Other rows are staged in a temporary table by the same multi-row `INSERT`s, then merged
//! by one `INSERT .. SELECT .. ON DUPLICATE KEY UPDATE`, counted from the staged rows and
//! the statement's affected rows. Each multi-row statement is prepared once and executed
//! for every whole chunk.
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

/// The parameters of one multi-row statement (under [`MAX_PARAMETERS`]): a few hundred rows. Measured on MariaDB
/// 10.11 (1M rows of 3 values into one table, see BENCHMARKS.md): 500 rows a statement,
/// prepared once, took 1.75 s; 100 rows 2.6 s, 1,000 rows 3.0 s; 21,845 rows (the most
/// the limit allows) prepared for each statement 7.4 s.
const STATEMENT_PARAMETERS: usize = 1_500;

const _: () = assert!(STATEMENT_PARAMETERS <= MAX_PARAMETERS);

/// The rows of one multi-row statement of `per_row` values each.
fn chunk_rows(per_row: usize) -> usize {
    // A table has at most 4,096 columns: a row's values never pass the limit.
    (STATEMENT_PARAMETERS / per_row.max(1)).max(1)
}

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
    let server = Server::of(conn).await?;
    let others: Vec<String> = columns
        .iter()
        .filter(|c| !key.contains(c))
        .map(|c| ident(c))
        .collect();
    let update = |alias: &str| on_duplicate(server, &target, &key, &others, mode, alias);
    if let Source::Rows { mut next, .. } = source {
        let per_row = columns.len().max(1);
        let chunk_rows = chunk_rows(per_row);
        let mut values = Vec::with_capacity(chunk_rows * per_row);
        // The first row, read ahead: whether its key is an integer chooses the way.
        let mut more = next(RowSink::Values(&mut values));
        if let [one] = key.as_slice()
            && more
            && integer_column(conn, &table, one).await?
        {
            let position = columns.iter().position(|c| c == one).unwrap_or(0);
            if matches!(values.get(position), Some(Value::Int(_) | Value::Null)) {
                let direct = Direct {
                    table: &table,
                    key: one,
                    position,
                    target: &target,
                    column_list: &column_list,
                    per_row,
                    // MySQL 8 names the incoming row by an alias; MariaDB has `VALUES()`.
                    alias: matches!(server, Server::MySql),
                };
                let rows = Rows { next, values };
                return direct.run(conn, rows, &update("source"), mode).await;
            }
        }
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TEMPORARY TABLE {stage} AS SELECT {column_list} FROM {target} WHERE FALSE"
        )))
        .execute(&mut *conn)
        .await?;
        loop {
            let rows = values.len() / per_row;
            if rows > 0 && (rows >= chunk_rows || !more) {
                stage_chunk(conn, stage, &column_list, per_row, &mut values).await?;
            }
            if !more {
                break;
            }
            more = next(RowSink::Values(&mut values));
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
    let statement = format!(
        "INSERT INTO {target} ({column_list})
         SELECT {column_list} FROM (SELECT {column_list} FROM {stage}) AS source
         ON DUPLICATE KEY UPDATE {}",
        update("source").plain()
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

/// The `ON DUPLICATE KEY UPDATE` list: each non-key column from the incoming row (the
/// mode says which), and first, where `hits` is set, `@datamig_upsert_hits` counted up
/// once for each row whose key already existed.
fn on_duplicate(
    server: Server,
    target: &str,
    key: &[String],
    others: &[String],
    mode: UpsertMode,
    alias: &str,
) -> OnDuplicate {
    let incoming = |c: &str| match server {
        // MariaDB: `VALUES(col)`, the value the row would have inserted.
        Server::MariaDb => format!("VALUES({c})"),
        // MySQL 8: the source's own column, through its alias (`VALUES()` is deprecated).
        Server::MySql => format!("{alias}.{c}"),
    };
    let mut set: Vec<(String, String)> = match mode {
        UpsertMode::InsertMissing => Vec::new(),
        UpsertMode::Overwrite | UpsertMode::UpdateIfChanged => {
            others.iter().map(|c| (c.clone(), incoming(c))).collect()
        }
    };
    if set.is_empty() {
        // An existing key with nothing to update: a no-op assignment, which writes nothing
        // (`INSERT IGNORE` would also turn other errors into warnings).
        let first_key = format!("{target}.{}", ident(&key[0]));
        set.push((first_key.clone(), first_key));
    }
    OnDuplicate { set }
}

/// The assignments of an `ON DUPLICATE KEY UPDATE`, column and value.
struct OnDuplicate {
    set: Vec<(String, String)>,
}

impl OnDuplicate {
    /// The plain list.
    fn plain(&self) -> String {
        self.set
            .iter()
            .map(|(c, v)| format!("{c} = {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The list whose first assignment also counts the row in `@datamig_upsert_hits`:
    /// MySQL evaluates the assignments once for each row whose key exists.
    fn counted(&self) -> String {
        self.set
            .iter()
            .enumerate()
            .map(|(i, (c, v))| {
                if i == 0 {
                    format!(
                        "{c} = IF((@datamig_upsert_hits := @datamig_upsert_hits + 1) > 0, {v}, {c})"
                    )
                } else {
                    format!("{c} = {v}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Whether `column` of `table` has an integer type (`tinyint` .. `bigint`, signed or not).
async fn integer_column(
    conn: &mut MySqlConnection,
    table: &str,
    column: &str,
) -> Result<bool, Error> {
    let name = table.rsplit('.').next().unwrap_or(table).trim_matches('"');
    let data_type: Option<String> = query_scalar(
        "SELECT CAST(DATA_TYPE AS char) FROM information_schema.COLUMNS
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ?",
    )
    .bind(name)
    .bind(column)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(matches!(
        data_type.as_deref(),
        Some("tinyint" | "smallint" | "mediumint" | "int" | "bigint")
    ))
}

/// The integer keys an upsert's rows gave so far, to refuse one given twice. While they
/// ascend (rows built from a range, or read in key order) a key after the last is new and
/// is only appended; a key out of order is looked up among them (they are sorted), and
/// from the first new one out of order on they are kept in a hash set.
#[derive(Debug)]
enum SeenKeys {
    Ascending(Vec<i64>),
    Any(std::collections::HashSet<i64>),
}

impl Default for SeenKeys {
    fn default() -> Self {
        Self::Ascending(Vec::new())
    }
}

impl SeenKeys {
    /// Adds `key`; `false` if it was there already.
    fn insert(&mut self, key: i64) -> bool {
        match self {
            Self::Ascending(keys) => {
                if keys.last().is_none_or(|last| key > *last) {
                    keys.push(key);
                    return true;
                }
                if keys.binary_search(&key).is_ok() {
                    return false;
                }
                let mut set: std::collections::HashSet<i64> = keys.drain(..).collect();
                set.insert(key);
                *self = Self::Any(set);
                true
            }
            Self::Any(set) => set.insert(key),
        }
    }
}

/// The Rust rows of an upsert: what is left of them, and the first, read ahead.
struct Rows<'a> {
    next: crate::merge::NextRow<'a>,
    values: Vec<Value>,
}

/// The upsert of Rust rows on a single integer key: each chunk of rows goes straight into
/// `INSERT .. VALUES .. ON DUPLICATE KEY UPDATE`, with no staging table. A key given twice
/// is refused from the keys seen so far (integers compare in the client exactly as the
/// server compares them); the rows whose key existed are counted by the statement itself.
struct Direct<'a> {
    table: &'a str,
    key: &'a str,
    position: usize,
    target: &'a str,
    column_list: &'a str,
    per_row: usize,
    alias: bool,
}

impl Direct<'_> {
    async fn run(
        &self,
        conn: &mut MySqlConnection,
        rows: Rows<'_>,
        update: &OnDuplicate,
        mode: UpsertMode,
    ) -> Result<(UpsertReport, u64), Error> {
        let Rows {
            mut next,
            mut values,
        } = rows;
        sqlx::query("SET @datamig_upsert_hits = 0")
            .execute(&mut *conn)
            .await?;
        let chunk_rows = chunk_rows(self.per_row);
        let mut seen = SeenKeys::default();
        let (mut total, mut affected) = (0u64, 0u64);
        // The first row is in `values` already.
        self.check_key(&values, &mut seen, 1)?;
        let mut more = self.fill(&mut next, &mut values, &mut seen, 0, chunk_rows)?;
        loop {
            let rows = values.len() / self.per_row;
            if rows == 0 {
                break;
            }
            let statement = self.statement(update, &mut values);
            total += rows as u64;
            if more {
                // The next chunk's rows are made while the server writes this one: the
                // statement is sent on the first poll, then the rows are read, then its
                // answer is awaited.
                let (done, filled) = tokio::join!(statement.execute(&mut *conn), async {
                    self.fill(&mut next, &mut values, &mut seen, total, chunk_rows)
                });
                affected += done?.rows_affected();
                more = filled?;
            } else {
                affected += statement.execute(&mut *conn).await?.rows_affected();
            }
        }
        let hits: i64 = query_scalar("SELECT CAST(coalesce(@datamig_upsert_hits, 0) AS signed)")
            .fetch_one(&mut *conn)
            .await?;
        let hits = u64::try_from(hits).unwrap_or(0).min(total);
        let updated = if matches!(mode, UpsertMode::InsertMissing) {
            0
        } else {
            // Found rows: an inserted row counts 1, a changed row 2, an unchanged one 1.
            affected.saturating_sub(total).min(hits)
        };
        let report = UpsertReport {
            inserted: total - hits,
            updated,
            unchanged: hits - updated,
        };
        // Nothing was written to a staging table.
        Ok((report, 0))
    }

    /// Checks the key of `row`, the `number`-th: an integer not seen before, or NULL
    /// (which matches no key: MySQL inserts the row, as it would any other).
    fn check_key(&self, row: &[Value], seen: &mut SeenKeys, number: u64) -> Result<(), Error> {
        match &row[self.position] {
            Value::Int(k) if !seen.insert(*k) => Err(Error::Config(format!(
                "the rows for the upsert into {} hold the same key more than once ({} = {k}); each key may appear once",
                self.table,
                quote_ident(self.key)
            ))),
            Value::Int(_) | Value::Null => Ok(()),
            other => Err(Error::Config(format!(
                "the upsert into {} has an integer key {} and its first row gave an integer, but row {number} gives it {}; give every row's key the same type",
                self.table,
                quote_ident(self.key),
                match other {
                    Value::Bool(_) => "a boolean",
                    Value::Float(_) => "a floating-point number",
                    _ => "text",
                }
            ))),
        }
    }

    /// Reads rows into `values` until it holds a whole chunk or the rows end, checking each
    /// row's key (`before`: the rows read before `values`' first). Returns whether the
    /// rows may go on.
    fn fill(
        &self,
        next: &mut crate::merge::NextRow<'_>,
        values: &mut Vec<Value>,
        seen: &mut SeenKeys,
        before: u64,
        chunk_rows: usize,
    ) -> Result<bool, Error> {
        loop {
            if values.len() / self.per_row >= chunk_rows {
                return Ok(true);
            }
            if !next(RowSink::Values(values)) {
                return Ok(false);
            }
            let rows = values.len() / self.per_row;
            self.check_key(
                &values[(rows - 1) * self.per_row..],
                seen,
                before + rows as u64,
            )?;
        }
    }

    /// One multi-row statement of the values (whole rows), which it takes, emptying
    /// `values`.
    fn statement(
        &self,
        update: &OnDuplicate,
        values: &mut Vec<Value>,
    ) -> sqlx::query::Query<'static, MySql, sqlx::mysql::MySqlArguments> {
        let rows = values.len() / self.per_row;
        let row = format!("({})", vec!["?"; self.per_row].join(", "));
        let sql = format!(
            "INSERT INTO {} ({}) VALUES {}{} ON DUPLICATE KEY UPDATE {}",
            self.target,
            self.column_list,
            vec![row.as_str(); rows].join(", "),
            if self.alias { " AS source" } else { "" },
            update.counted()
        );
        // A whole chunk's statement is prepared once, for every whole chunk.
        let whole = rows == chunk_rows(self.per_row);
        bind_all(sqlx::query(AssertSqlSafe(sql)).persistent(whole), values)
    }
}

/// Binds every value, in order, emptying `values`.
fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments>,
    values: &mut Vec<Value>,
) -> sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments> {
    for value in values.drain(..) {
        query = match value {
            Value::Null => query.bind(None::<i64>),
            Value::Bool(b) => query.bind(b),
            Value::Int(i) => query.bind(i),
            Value::Float(f) => query.bind(f),
            Value::Text(t) => query.bind(t),
        };
    }
    query
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
    // A whole chunk's statement is prepared once, for every whole chunk.
    let whole = rows == chunk_rows(per_row);
    let query = bind_all(sqlx::query(AssertSqlSafe(sql)).persistent(whole), values);
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

#[cfg(test)]
mod tests {
    use super::SeenKeys;

    #[test]
    fn a_key_given_twice_is_found_in_order_and_out_of_order() {
        let mut seen = SeenKeys::default();
        assert!((1..=1000).all(|k| seen.insert(k)));
        assert!(
            matches!(seen, SeenKeys::Ascending(_)),
            "ascending keys are only appended"
        );
        assert!(!seen.insert(500), "a key before the last, seen");
        assert!(!seen.insert(1000));
        assert!(matches!(seen, SeenKeys::Ascending(_)));
        assert!(seen.insert(-3), "a new key out of order");
        assert!(matches!(seen, SeenKeys::Any(_)));
        assert!(!seen.insert(-3) && !seen.insert(1) && !seen.insert(999));
        assert!(seen.insert(1001));
    }

    #[test]
    fn it_answers_as_a_hash_set_whatever_the_order() {
        // Keys in runs up and down, with repeats: each answer is a hash set's.
        let mut seen = SeenKeys::default();
        let mut set = std::collections::HashSet::new();
        let mut x: i64 = 7;
        for i in 0..5000 {
            x = (x * 1_103_515_245 + 12_345).rem_euclid(1 << 31);
            let key = if i < 2000 { i } else { x % 3000 };
            assert_eq!(seen.insert(key), set.insert(key), "key {key} at {i}");
        }
    }
}
