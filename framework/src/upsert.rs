//! The upsert builder: rows from Rust values or from a query, merged into a table by key,
//! in one set-based statement, with counts of what changed.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Executor, Postgres, Row, SqlSafeStr};

use crate::copy::{CopyRow, write_row};
use crate::ctx::Ctx;
use crate::error::Error;
use crate::sql::{check_name, quote_ident};

/// What happens to a row whose key is already in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpsertMode {
    /// `ON CONFLICT DO NOTHING`: only missing keys are inserted.
    InsertMissing,
    /// `ON CONFLICT DO UPDATE`: existing rows are overwritten, even with equal values.
    Overwrite,
    /// `ON CONFLICT DO UPDATE .. WHERE (cols) IS DISTINCT FROM (excluded cols)`: existing rows
    /// are updated only where a value differs, so a re-run rewrites no row.
    UpdateIfChanged,
}

/// What an upsert did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct UpsertReport {
    /// Rows inserted (their key was missing).
    pub inserted: u64,
    /// Rows updated (their key existed; for [`UpsertMode::UpdateIfChanged`], a value differed).
    pub updated: u64,
    /// Source rows that changed nothing (key present and, depending on the mode, not
    /// overwritten or equal).
    pub unchanged: u64,
}

type NextRow<'u> = Box<dyn FnMut(&mut Vec<u8>) -> bool + Send + 'u>;

enum Source<'u> {
    Missing,
    Query(String),
    Rows {
        columns: Vec<String>,
        width: usize,
        next: NextRow<'u>,
    },
}

/// Builds an upsert; made by [`Ctx::upsert`].
///
/// # Examples
///
/// ```no_run
/// # use datamig::prelude::*;
/// # async fn body(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
/// // From a query: every user without settings gets the defaults.
/// let report = ctx
///     .upsert("notification_settings")
///     .key(["user_id"])
///     .from_query("SELECT id AS user_id, true AS email_enabled, true AS push_enabled FROM users")
///     .insert_missing()
///     .execute()
///     .await?;
///
/// // From Rust values, streamed through COPY: any number of rows.
/// let plans = vec![(1_i64, "free"), (2, "pro")];
/// ctx.upsert("plans")
///     .key(["user_id"])
///     .rows(["user_id", "plan"], plans)
///     .update_if_changed()
///     .execute()
///     .await?;
/// # Ok(()) }
/// ```
pub struct Upsert<'u, 'c> {
    ctx: &'u mut Ctx<'c, Postgres>,
    schema: Option<String>,
    table: String,
    key: Vec<String>,
    source: Source<'u>,
    mode: UpsertMode,
}

impl<'c> Ctx<'c, Postgres> {
    /// Starts an upsert into `table` (one identifier, quoted: any name works and none can
    /// inject SQL). Set the key, the rows and the mode, then [`Upsert::execute`].
    pub fn upsert<'u>(&'u mut self, table: impl Into<String>) -> Upsert<'u, 'c> {
        Upsert {
            ctx: self,
            schema: None,
            table: table.into(),
            key: Vec::new(),
            source: Source::Missing,
            mode: UpsertMode::InsertMissing,
        }
    }
}

impl<'u, 'c> Upsert<'u, 'c> {
    /// The table's schema, when it is not the search path's first.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// The conflict key: columns with a unique index or the primary key.
    pub fn key<S: Into<String>>(mut self, columns: impl IntoIterator<Item = S>) -> Self {
        self.key = columns.into_iter().map(Into::into).collect();
        self
    }

    /// Rows from a query, executed in the database. Its column names are the target's
    /// column names (alias them: `SELECT id AS user_id ..`). Values are never spliced into
    /// SQL by the builder; the query is the caller's own SQL.
    pub fn from_query(mut self, sql: impl Into<String>) -> Self {
        self.source = Source::Query(sql.into());
        self
    }

    /// Rows from Rust values: tuples with one value per named column, streamed to the
    /// database with `COPY` (never spliced into SQL), so any number of rows works in
    /// constant memory.
    pub fn rows<R, I, S>(mut self, columns: impl IntoIterator<Item = S>, rows: I) -> Self
    where
        R: CopyRow,
        I: IntoIterator<Item = R>,
        I::IntoIter: Send + 'u,
        S: Into<String>,
    {
        let mut iter = rows.into_iter();
        self.source = Source::Rows {
            columns: columns.into_iter().map(Into::into).collect(),
            width: R::WIDTH,
            next: Box::new(move |buf| match iter.next() {
                Some(row) => {
                    write_row(&row, buf);
                    true
                }
                None => false,
            }),
        };
        self
    }

    /// Inserts missing keys only (`ON CONFLICT DO NOTHING`). The default.
    pub fn insert_missing(mut self) -> Self {
        self.mode = UpsertMode::InsertMissing;
        self
    }

    /// Overwrites existing rows (`ON CONFLICT DO UPDATE`), even where nothing differs.
    /// Prefer [`Upsert::update_if_changed`] in migrations: it rewrites no row on a re-run.
    pub fn overwrite(mut self) -> Self {
        self.mode = UpsertMode::Overwrite;
        self
    }

    /// Updates existing rows only where a value differs, so a re-run rewrites no row.
    pub fn update_if_changed(mut self) -> Self {
        self.mode = UpsertMode::UpdateIfChanged;
        self
    }

    /// Sets the mode.
    pub fn mode(mut self, mode: UpsertMode) -> Self {
        self.mode = mode;
        self
    }

    /// Runs the upsert in the migration's transaction and adds inserted and updated rows to
    /// the ledger's count.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a missing key or rows, a row width that does not match the
    /// columns, or source rows holding one key twice; [`Error::Database`] otherwise.
    pub async fn execute(self) -> Result<UpsertReport, Error> {
        let Upsert {
            ctx,
            schema,
            table,
            key,
            source,
            mode,
        } = self;
        if let Some(schema) = &schema {
            check_name("schema", schema)?;
        }
        check_name("table", &table)?;
        if key.is_empty() {
            return Err(Error::Config(format!(
                "the upsert into {table} has no key: call .key([..])"
            )));
        }
        for column in &key {
            check_name("key column", column)?;
        }
        let target = match &schema {
            Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(&table)),
            None => quote_ident(&table),
        };
        let conn: &mut PgConnection = ctx.tx();
        let report = match source {
            Source::Missing => {
                return Err(Error::Config(format!(
                    "the upsert into {table} has no rows: call .rows(..) or .from_query(..)"
                )));
            }
            Source::Query(sql) => {
                let columns = query_columns(conn, &sql).await?;
                let plan = Plan::new(&target, &table, &key, &columns, mode)?;
                let counted = format!(
                    "WITH src AS MATERIALIZED ({sql}), {} SELECT (SELECT count(*) FROM src), {}",
                    plan.cte("SELECT * FROM src"),
                    COUNT_RETURNED,
                );
                plan.run(conn, counted).await?
            }
            Source::Rows {
                columns,
                width,
                next,
            } => {
                if columns.len() != width {
                    return Err(Error::Config(format!(
                        "the upsert into {table} names {} columns but its rows hold {width} values",
                        columns.len()
                    )));
                }
                let plan = Plan::new(&target, &table, &key, &columns, mode)?;
                let stage = stage_rows(conn, &target, &columns, next).await?;
                let counted = format!(
                    "WITH {} SELECT (SELECT count(*) FROM {stage}), {}",
                    plan.cte(&format!("SELECT * FROM {stage}")),
                    COUNT_RETURNED,
                );
                // On failure the transaction is aborted and `ON COMMIT DROP` (or the rollback)
                // removes the staging table; only a successful upsert drops it now, so that a
                // migration can stage again.
                let report = plan.run(conn, counted).await?;
                sqlx::query(AssertSqlSafe(format!("DROP TABLE {stage}")))
                    .execute(&mut *conn)
                    .await?;
                report
            }
        };
        ctx.add_rows_affected(report.inserted + report.updated);
        Ok(report)
    }
}

const COUNT_RETURNED: &str =
    "count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM ins";

/// The statement of one upsert.
struct Plan {
    insert: String,
    table: String,
}

impl Plan {
    fn new(
        target: &str,
        table: &str,
        key: &[String],
        columns: &[String],
        mode: UpsertMode,
    ) -> Result<Self, Error> {
        for column in columns {
            check_name("column", column)?;
        }
        if let Some(missing) = key.iter().find(|k| !columns.contains(k)) {
            return Err(Error::Config(format!(
                "the upsert into {table} has key column {missing:?} but its rows have no such column \
                 (they have {})",
                columns.join(", ")
            )));
        }
        let quoted: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        let key_list = key
            .iter()
            .map(|k| quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ");
        let others: Vec<&String> = quoted
            .iter()
            .zip(columns)
            .filter(|(_, c)| !key.contains(c))
            .map(|(q, _)| q)
            .collect();
        let conflict = match mode {
            _ if others.is_empty() => "DO NOTHING".to_string(),
            UpsertMode::InsertMissing => "DO NOTHING".to_string(),
            UpsertMode::Overwrite | UpsertMode::UpdateIfChanged => {
                let set = others
                    .iter()
                    .map(|c| format!("{c} = EXCLUDED.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut clause = format!("DO UPDATE SET {set}");
                if mode == UpsertMode::UpdateIfChanged {
                    let current = others
                        .iter()
                        .map(|c| format!("t.{c}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let incoming = others
                        .iter()
                        .map(|c| format!("EXCLUDED.{c}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    clause.push_str(&format!(
                        " WHERE ROW({current}) IS DISTINCT FROM ROW({incoming})"
                    ));
                }
                clause
            }
        };
        let insert = format!(
            "INSERT INTO {target} AS t ({}) %SOURCE% ON CONFLICT ({key_list}) {conflict} RETURNING (xmax = 0) AS inserted",
            quoted.join(", ")
        );
        Ok(Plan {
            insert,
            table: table.to_string(),
        })
    }

    /// `ins AS (INSERT .. RETURNING ..)`, reading from `source`.
    fn cte(&self, source: &str) -> String {
        format!("ins AS ({})", self.insert.replace("%SOURCE%", source))
    }

    async fn run(&self, conn: &mut PgConnection, sql: String) -> Result<UpsertReport, Error> {
        let row = sqlx::query(AssertSqlSafe(sql))
            .fetch_one(conn)
            .await
            .map_err(|err| self.explain(err))?;
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

    fn explain(&self, err: sqlx::Error) -> Error {
        let code = err
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        match code.as_deref() {
            // "ON CONFLICT DO UPDATE command cannot affect row a second time"
            Some("21000") => Error::Config(format!(
                "the rows for the upsert into {} hold the same key more than once; each key may appear once",
                self.table
            )),
            // "there is no unique or exclusion constraint matching the ON CONFLICT specification"
            Some("42P10") => Error::Config(format!(
                "the upsert key of {} is not a primary key or unique index of the table",
                self.table
            )),
            _ => Error::Database(err),
        }
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
    columns: &[String],
    mut next: NextRow<'_>,
) -> Result<String, Error> {
    static STAGES: AtomicU64 = AtomicU64::new(0);
    let stage = quote_ident(&format!(
        "datamig_stage_{}",
        STAGES.fetch_add(1, Ordering::Relaxed)
    ));
    let quoted = columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TEMPORARY TABLE {stage} ON COMMIT DROP AS SELECT {quoted} FROM {target} WITH NO DATA"
    )))
    .execute(&mut *conn)
    .await?;

    let mut copy = conn
        .copy_in_raw(&format!("COPY {stage} ({quoted}) FROM STDIN"))
        .await?;
    let mut buf = Vec::with_capacity(1 << 20);
    loop {
        let more = next(&mut buf);
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
