//! A table that the second run of a migration changed: what [`Error::NotIdempotent`]
//! and an idempotency check report.
//!
//! [`Error::NotIdempotent`]: crate::Error::NotIdempotent

/// A table a second run changed, with a few rows that differ.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct TableChange {
    /// `schema.table`.
    pub table: String,
    /// Rows before the second run.
    pub rows_before: i64,
    /// Rows after the second run.
    pub rows_after: i64,
    /// Up to five rows (as text) that were there before and are not after.
    pub only_before: Vec<String>,
    /// Up to five rows (as text) that are there after and were not before.
    pub only_after: Vec<String>,
}
