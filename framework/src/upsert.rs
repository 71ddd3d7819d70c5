//! The upsert builder: rows from Rust values or from a query, merged into a table by key,
//! in one set-based statement, with counts of what changed.

use crate::backend::Backend;
use crate::copy_text::CopyRow;
use crate::ctx::Ctx;
use crate::error::Error;
use crate::merge::{Source, UpsertMode, UpsertReport, UpsertRequest};
use crate::sql::{check_name, quote_ident};

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
        // Rows built in Rust: nothing a batched migration's rest check could guard.
        ctx.mark_unguarded();
        let (report, staged) = DB::upsert(ctx.conn(), request).await?;
        ctx.add_uncounted_writes(staged);
        ctx.add_rows_affected(report.inserted + report.updated);
        Ok(report)
    }
}
