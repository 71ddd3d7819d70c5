//! What a migration body receives: its transaction, and a place to report what it did.

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
    uncounted_writes: u64,
    notes: Vec<String>,
}

impl<'c, DB: sqlx::Database> Ctx<'c, DB> {
    pub(crate) fn new(conn: &'c mut DB::Connection, id: &'static str, dry_run: bool) -> Self {
        Ctx {
            conn,
            id,
            dry_run,
            rows_affected: 0,
            uncounted_writes: 0,
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

    /// Rows the helpers wrote to their own staging tables where the database's write
    /// counter sees them (SQLite): left out of the rows a run wrote.
    pub(crate) fn add_uncounted_writes(&mut self, rows: u64) {
        self.uncounted_writes = self.uncounted_writes.saturating_add(rows);
    }

    pub(crate) fn uncounted_writes(&self) -> u64 {
        self.uncounted_writes
    }

    /// The notes recorded so far.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}
