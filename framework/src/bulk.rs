//! After a bulk load: sequences reset to the data, statistics refreshed.
//!
//! Copying rows with their ids (a data copy between databases, a restore) leaves the
//! sequences behind `serial` and identity columns where they were, and the next insert
//! collides with a copied id. The planner's statistics are stale too.
//!
//! Each backend has its own key generators: PostgreSQL's sequences behind `serial` and
//! identity columns, SQLite's `AUTOINCREMENT` counters (`sqlite_sequence`; a plain
//! `INTEGER PRIMARY KEY` needs nothing, it always takes the largest rowid + 1).

/// One sequence moved by [`Ctx::reset_sequences`](crate::Ctx::reset_sequences).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
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
