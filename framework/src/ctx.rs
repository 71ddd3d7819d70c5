//! What a migration body receives: its transaction, and a place to report what it did.

use sqlx::SqlSafeStr;

use crate::backend::Backend;
use crate::migration::Batch;

/// The context of one migration run.
///
/// It holds the migration's transaction: every query run through [`Ctx::tx`] commits
/// together with the migration's ledger row, or not at all.
///
/// # Examples
///
/// ```no_run
/// use datamig::prelude::*;
///
/// /// Give every existing user the default notification settings.
/// #[datamig::migration(id = "20241114_0930_backfill_notification_settings")]
/// async fn backfill(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
///     let inserted = ctx
///         .execute(
///             "INSERT INTO notification_settings (user_id) SELECT id FROM users \
///              ON CONFLICT (user_id) DO NOTHING",
///         )
///         .await?;
///     ctx.note(format!("{inserted} users got defaults"));
///     Ok(())
/// }
/// # fn main() {}
/// ```
pub struct Ctx<'c, DB: sqlx::Database> {
    conn: &'c mut DB::Connection,
    id: &'static str,
    dry_run: bool,
    rows_affected: u64,
    notes: Vec<String>,
}

impl<'c, DB: sqlx::Database> Ctx<'c, DB> {
    pub(crate) fn new(conn: &'c mut DB::Connection, id: &'static str, dry_run: bool) -> Self {
        Ctx {
            conn,
            id,
            dry_run,
            rows_affected: 0,
            notes: Vec::new(),
        }
    }

    /// The migration's transaction, for any sqlx query:
    /// `sqlx::query("..").execute(ctx.tx()).await?`.
    ///
    /// Rows changed through it are not counted automatically; report them with
    /// [`Ctx::add_rows_affected`], or run statements with [`Ctx::execute`], which does.
    pub fn tx(&mut self) -> &mut DB::Connection {
        self.conn
    }

    /// The id of the running migration.
    pub fn id(&self) -> &'static str {
        self.id
    }

    /// Whether this is a dry run: the transaction will be rolled back whatever happens.
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    /// Records a note for the ledger and the run report (e.g. "1000 users got defaults").
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Adds `rows` to the count of rows affected recorded in the ledger.
    pub fn add_rows_affected(&mut self, rows: u64) {
        self.rows_affected = self.rows_affected.saturating_add(rows);
    }

    /// The rows affected so far.
    pub fn rows_affected(&self) -> u64 {
        self.rows_affected
    }

    /// The notes recorded so far.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}

impl<DB: Backend> Ctx<'_, DB> {
    /// The backend this run is on, `"postgres"` or `"sqlite"`: for the rare statement of a
    /// migration generic over the backend that must be written in each dialect.
    pub fn backend(&self) -> &'static str {
        DB::ID
    }

    /// Executes one statement in the migration's transaction and adds the rows it affected
    /// to the ledger's count. Returns that number of rows.
    ///
    /// The SQL must be a `&'static str` or wrapped in [`sqlx::AssertSqlSafe`]; bind values
    /// with `sqlx::query(..).bind(..)` through [`Ctx::tx`] instead of formatting them in.
    /// In a migration generic over the backend, write SQL both databases accept
    /// (`lower`, `trim`, `coalesce`, `ON CONFLICT .. DO NOTHING`, `$1` parameters).
    pub async fn execute(&mut self, sql: impl SqlSafeStr) -> Result<u64, sqlx::Error> {
        let rows = DB::execute(self.conn, sql.into_sql_str()).await?;
        self.add_rows_affected(rows);
        Ok(rows)
    }

    /// Runs a query whose first column is an integer (`SELECT count(*) ..`,
    /// `SELECT max(id) ..`) in the migration's transaction and returns its first row's
    /// value: `None` without a row or for `NULL`. For the checks of a migration generic
    /// over the backend, where `sqlx::query` would need the backend's own bounds.
    ///
    /// ```no_run
    /// # use datamig::prelude::*;
    /// # async fn body<DB: Backend>(ctx: &mut Ctx<'_, DB>) -> anyhow::Result<()> {
    /// let missing = ctx
    ///     .fetch_i64("SELECT count(*) FROM users WHERE email IS NULL")
    ///     .await?
    ///     .unwrap_or(0);
    /// anyhow::ensure!(missing == 0, "{missing} users have no email; fix them first");
    /// # Ok(()) }
    /// ```
    pub async fn fetch_i64(&mut self, sql: impl SqlSafeStr) -> Result<Option<i64>, sqlx::Error> {
        DB::fetch_i64(self.conn, sql.into_sql_str()).await
    }

    /// Executes one statement for the keys of a batch, with `$1` bound to
    /// [`Batch::after`] and `$2` to [`Batch::last`], and adds the rows it affected to the
    /// ledger's count. Returns that number of rows.
    ///
    /// ```no_run
    /// # use datamig::prelude::*;
    /// # async fn body<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    /// ctx.execute_batch(
    ///     "UPDATE users SET email = lower(email) WHERE id > $1 AND id <= $2 AND email <> lower(email)",
    ///     &batch,
    /// )
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn execute_batch(
        &mut self,
        sql: impl SqlSafeStr,
        batch: &Batch,
    ) -> Result<u64, sqlx::Error> {
        let rows =
            DB::execute_batch(self.conn, sql.into_sql_str(), batch.after(), batch.last()).await?;
        self.add_rows_affected(rows);
        Ok(rows)
    }
}
