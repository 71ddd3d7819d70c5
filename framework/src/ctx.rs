//! What a migration body receives: its transaction, and a place to report what it did.

use crate::key::RestGuard;

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
    /// Whether the body reached the transaction itself (through [`Ctx::tx`] or a helper
    /// that moves rows built in Rust), where a rest check could not guard its statements.
    unguarded: bool,
    /// Set while the body runs as a check of the rest of a batched migration's keys.
    rest: Option<RestCheck>,
}

/// A batched migration's check of all its remaining keys in one statement: each `{batch}`
/// becomes the scope, and its statement is written as `guard` says, so it stops on the
/// first row it would change (PostgreSQL: a call that fails it; MariaDB: `LIMIT 1`, the
/// row then counted). The check holds when the body ran to its end with nothing spoiling
/// it and no row changed.
#[derive(Debug)]
pub(crate) struct RestCheck {
    guard: RestGuard,
    /// A statement failed (the guard, or anything else), changed rows, or could not be
    /// guarded: the rest must be walked batch by batch.
    spoiled: bool,
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
            unguarded: false,
            rest: None,
        }
    }

    /// This context runs the body as a check of the rest of a batched migration's keys
    /// (see [`RestCheck`]).
    pub(crate) fn checking_rest(mut self, guard: RestGuard) -> Self {
        self.rest = Some(RestCheck {
            guard,
            spoiled: false,
        });
        self
    }

    /// The guard of a rest check in progress.
    pub(crate) fn rest_guard(&self) -> Option<&RestGuard> {
        self.rest.as_ref().map(|r| &r.guard)
    }

    /// A statement of a rest check failed or could not be guarded.
    pub(crate) fn spoil_rest(&mut self) {
        if let Some(rest) = &mut self.rest {
            rest.spoiled = true;
        }
    }

    /// Whether a rest check holds so far: every statement guarded, none failed, no row
    /// changed.
    pub(crate) fn rest_holds(&self) -> bool {
        self.rest.as_ref().is_some_and(|r| !r.spoiled) && !self.unguarded && self.rows_affected == 0
    }

    /// Whether every statement of the body went through the helpers that name a batch's
    /// rows with `{batch}`, count rows, or read one value: what a rest check can guard.
    pub(crate) fn guarded_only(&self) -> bool {
        !self.unguarded
    }

    /// The body moves rows a rest check cannot guard.
    pub(crate) fn mark_unguarded(&mut self) {
        self.unguarded = true;
    }

    /// The transaction, for datamig's own statements.
    pub(crate) fn conn(&mut self) -> &mut DB::Connection {
        self.conn
    }

    /// The migration's transaction, for any sqlx query:
    /// `sqlx::query("..").execute(ctx.tx()).await?`.
    ///
    /// Rows changed through it are not counted automatically; report them with
    /// [`Ctx::add_rows_affected`], or run statements with [`Ctx::execute`], which does.
    pub fn tx(&mut self) -> &mut DB::Connection {
        self.unguarded = true;
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
