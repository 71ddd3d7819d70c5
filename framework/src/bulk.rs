//! After a bulk load: sequences reset to the data, statistics refreshed.
//!
//! Copying rows with their ids (a data copy between databases, a restore) leaves the
//! sequences behind `serial` and identity columns where they were, and the next insert
//! collides with a copied id. The planner's statistics are stale too.
//!
//! Each backend has its own key generators: PostgreSQL's sequences behind `serial` and
//! identity columns, SQLite's `AUTOINCREMENT` counters (`sqlite_sequence`; a plain
//! `INTEGER PRIMARY KEY` needs nothing, it always takes the largest rowid + 1).

use crate::backend::Backend;
use crate::ctx::Ctx;
use crate::error::Error;
use crate::sql::check_name;

/// One sequence moved by [`Ctx::reset_sequences`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SequenceReset {
    /// The table.
    pub table: String,
    /// The `serial` or identity column.
    pub column: String,
    /// The sequence behind it (`sqlite_sequence` on SQLite).
    pub sequence: String,
    /// The value the next insert gets.
    pub next_value: i64,
}

impl<DB: Backend> Ctx<'_, DB> {
    /// Moves the key generator of every generated key column of each table past the
    /// column's maximum, so the next insert gets `max + 1` (or the start on an empty
    /// table): on PostgreSQL the sequences behind `serial` and identity columns, on SQLite
    /// the `AUTOINCREMENT` counter. Tables are single identifiers, quoted.
    ///
    /// ```no_run
    /// # use datamig::prelude::*;
    /// # async fn body(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    /// // After copying users and orders with their ids:
    /// ctx.reset_sequences(["users", "orders"]).await?;
    /// ctx.analyze(["users", "orders"]).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a table that does not exist; [`Error::Database`] otherwise
    /// (for instance without `UPDATE` on a sequence).
    pub async fn reset_sequences<S: AsRef<str>>(
        &mut self,
        tables: impl IntoIterator<Item = S>,
    ) -> Result<Vec<SequenceReset>, Error> {
        let mut resets = Vec::new();
        for table in tables {
            let table = table.as_ref();
            check_name("table", table)?;
            resets.extend(DB::reset_sequences(self.tx(), table).await?);
        }
        Ok(resets)
    }

    /// Runs `ANALYZE` on each table, so the planner sees the data just loaded.
    ///
    /// PostgreSQL lets only a table's owner (or a superuser) analyse it, and for anyone else
    /// it only warns and skips the table: this helper checks first and fails instead.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a table that does not exist or that the current role may not
    /// analyse; [`Error::Database`] otherwise.
    pub async fn analyze<S: AsRef<str>>(
        &mut self,
        tables: impl IntoIterator<Item = S>,
    ) -> Result<(), Error> {
        for table in tables {
            let table = table.as_ref();
            check_name("table", table)?;
            DB::analyze(self.tx(), table).await?;
        }
        Ok(())
    }
}
