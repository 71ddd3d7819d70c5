//! The upsert builder: rows from Rust values or from a query, merged into a table by key,
//! in one set-based statement, with counts of what changed.

use crate::backend::Backend;
use crate::copy::{CopyRow, RowSink};
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

/// Writes the next row into the sink; `false` when no row is left.
pub(crate) type NextRow<'u> = Box<dyn FnMut(RowSink<'_>) -> bool + Send + 'u>;

pub(crate) enum Source<'u> {
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
/// // From Rust values (streamed through COPY on PostgreSQL, bound in chunks on SQLite):
/// // any number of rows.
/// let plans = vec![(1_i64, "free"), (2, "pro")];
/// ctx.upsert("plans")
///     .key(["user_id"])
///     .rows(["user_id", "plan"], plans)
///     .update_if_changed()
///     .execute()
///     .await?;
/// # Ok(()) }
/// ```
pub struct Upsert<'u, 'c, DB: Backend> {
    ctx: &'u mut Ctx<'c, DB>,
    schema: Option<String>,
    table: String,
    key: Vec<String>,
    source: Source<'u>,
    mode: UpsertMode,
}

impl<'c, DB: Backend> Ctx<'c, DB> {
    /// Starts an upsert into `table` (one identifier, quoted: any name works and none can
    /// inject SQL). Set the key, the rows and the mode, then [`Upsert::execute`].
    ///
    /// One statement does the merge on every backend: PostgreSQL's and SQLite's
    /// `INSERT .. ON CONFLICT (key) DO UPDATE SET .. WHERE ..`.
    pub fn upsert<'u>(&'u mut self, table: impl Into<String>) -> Upsert<'u, 'c, DB> {
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

impl<'u, 'c, DB: Backend> Upsert<'u, 'c, DB> {
    /// The table's schema, when it is not the search path's first (on SQLite: the attached
    /// database).
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

    /// Rows from Rust values: tuples with one value per named column, never spliced into
    /// SQL: streamed with `COPY` on PostgreSQL, bound in chunks on SQLite, so any number of
    /// rows works in constant memory.
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
            next: Box::new(move |sink| match iter.next() {
                Some(row) => {
                    sink.write(&row);
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
        if matches!(source, Source::Missing) {
            return Err(Error::Config(format!(
                "the upsert into {table} has no rows: call .rows(..) or .from_query(..)"
            )));
        }
        if let Source::Rows { columns, width, .. } = &source
            && columns.len() != *width
        {
            return Err(Error::Config(format!(
                "the upsert into {table} names {} columns but its rows hold {width} values",
                columns.len()
            )));
        }
        let request = UpsertRequest {
            target,
            table,
            key,
            source,
            mode,
        };
        let report = DB::upsert(ctx.tx(), request).await?;
        ctx.add_rows_affected(report.inserted + report.updated);
        Ok(report)
    }
}

/// An upsert, checked, for a backend to run.
pub struct UpsertRequest<'u> {
    /// The quoted, qualified target table.
    pub(crate) target: String,
    /// The table's name, for messages.
    pub(crate) table: String,
    pub(crate) key: Vec<String>,
    pub(crate) source: Source<'u>,
    pub(crate) mode: UpsertMode,
}

/// The `INSERT .. ON CONFLICT` statement of one upsert, in the syntax PostgreSQL and SQLite
/// share.
pub(crate) struct Plan {
    /// `INSERT INTO target AS t (cols) %SOURCE% ON CONFLICT (key) DO ..`.
    insert: String,
    /// The quoted key columns, joined.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) key_list: String,
    /// The quoted columns, joined.
    pub(crate) column_list: String,
}

impl Plan {
    /// `distinct` compares the row of current values with the incoming one:
    /// `|current, incoming| ..` (PostgreSQL: `ROW(..) IS DISTINCT FROM ROW(..)`, SQLite:
    /// `(..) IS NOT (..)`).
    pub(crate) fn new(
        request: &UpsertRequest<'_>,
        columns: &[String],
        distinct: impl Fn(&str, &str) -> String,
    ) -> Result<Self, Error> {
        let (key, table, mode) = (&request.key, &request.table, request.mode);
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
                    .map(|c| format!("{c} = excluded.{c}"))
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
                        .map(|c| format!("excluded.{c}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    clause.push_str(&format!(" WHERE {}", distinct(&current, &incoming)));
                }
                clause
            }
        };
        let column_list = quoted.join(", ");
        let insert = format!(
            "INSERT INTO {} AS t ({column_list}) %SOURCE% ON CONFLICT ({key_list}) {conflict}",
            request.target
        );
        Ok(Plan {
            insert,
            key_list,
            column_list,
        })
    }

    /// The statement, reading its rows from `source` (a `SELECT`).
    pub(crate) fn insert_from(&self, source: &str) -> String {
        self.insert.replace("%SOURCE%", source)
    }
}

/// A name for a temporary staging table, unique in this process.
pub(crate) fn stage_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STAGES: AtomicU64 = AtomicU64::new(0);
    quote_ident(&format!(
        "datamig_{prefix}_{}",
        STAGES.fetch_add(1, Ordering::Relaxed)
    ))
}
