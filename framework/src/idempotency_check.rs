//! What proving a migration idempotent finds for each migration: what its second run
//! reported and wrote, and the tables it changed. The proof itself, which runs the
//! migration twice, is in `idempotency.rs`.

use crate::error::Error;
use crate::table_change::TableChange;

/// The result of running one migration twice.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct IdempotencyCheck {
    /// The migration's id.
    pub id: String,
    /// Rows the first run reported as affected.
    pub first_run_rows: u64,
    /// Rows the second run reported as affected (inserted or updated): 0 when idempotent.
    pub second_run_rows: u64,
    /// Rows the second run wrote, as the database counted them (PostgreSQL's
    /// `pg_stat_xact_user_tables`, SQLite's `total_changes()`): 0 when idempotent. A second
    /// run that rewrites rows with equal values (`now()` in one transaction, writes through
    /// `ctx.tx()` the helpers do not count) shows here although the data is unchanged.
    pub second_run_writes: u64,
    /// Tables the second run changed: none when idempotent.
    pub changes: Vec<TableChange>,
}

impl IdempotencyCheck {
    pub(crate) fn new(
        id: &str,
        first_run_rows: u64,
        second_run_rows: u64,
        second_run_writes: u64,
        changes: Vec<TableChange>,
    ) -> Self {
        IdempotencyCheck {
            id: id.to_string(),
            first_run_rows,
            second_run_rows,
            second_run_writes,
            changes,
        }
    }

    /// Whether the second run changed nothing, reported no row inserted or updated, and
    /// wrote no row.
    pub fn is_idempotent(&self) -> bool {
        self.changes.is_empty() && self.second_run_rows == 0 && self.second_run_writes == 0
    }

    /// The failure this check is, if it is one.
    pub fn into_result(self) -> Result<(), Error> {
        if self.is_idempotent() {
            Ok(())
        } else {
            Err(Error::NotIdempotent {
                id: self.id,
                changes: self.changes,
                second_run_rows: self.second_run_rows,
                second_run_writes: self.second_run_writes,
            })
        }
    }
}
