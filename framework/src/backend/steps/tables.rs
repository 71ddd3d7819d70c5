//! The steps on a table as a whole: its columns and key, its fingerprint and rows, the
//! rows written to it, its sequences, and its statistics.

use std::future::Future;

use super::connection::ConnectionSteps;
use crate::bulk::SequenceReset;
use crate::error::Error;

/// The steps on tables.
pub trait TableSteps: ConnectionSteps {
    /// The columns of a table (empty when it does not exist), to check the ledger's shape.
    fn table_columns(
        conn: &mut Self::Connection,
        schema: Option<&str>,
        table: &str,
    ) -> impl Future<Output = Result<Vec<String>, sqlx::Error>> + Send;

    /// The user tables, as `(schema, table)`, sorted.
    fn user_tables(
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<Vec<(String, String)>, sqlx::Error>> + Send;

    /// The primary key's columns, in key order (empty without one).
    fn primary_key(
        conn: &mut Self::Connection,
        schema: &str,
        table: &str,
    ) -> impl Future<Output = Result<Vec<String>, sqlx::Error>> + Send;

    /// The row count and SHA-256 (hex) of a table: each row's text hashed, the row
    /// hashes hashed in the order of `order_by` (the key's columns; the row text
    /// without one).
    fn table_fingerprint(
        conn: &mut Self::Connection,
        schema: &str,
        table: &str,
        key: &[String],
    ) -> impl Future<Output = Result<(i64, String), sqlx::Error>> + Send;

    /// Up to five rows (as text) of table `left` that are not in table `right` (both
    /// quoted idents with the columns of `schema.table`).
    fn rows_missing_from(
        conn: &mut Self::Connection,
        schema: &str,
        table: &str,
        left: &str,
        right: &str,
    ) -> impl Future<Output = Result<Vec<String>, sqlx::Error>> + Send;

    /// Every row of `schema.table` as text (in the form [`Self::rows_missing_from`]
    /// shows), in no particular order.
    fn table_rows(
        conn: &mut Self::Connection,
        schema: &str,
        table: &str,
    ) -> impl Future<Output = Result<Vec<String>, sqlx::Error>> + Send;

    /// Whether [`Self::write_count`] counts the current transaction's writes only, so that
    /// it reads 0 in a transaction that has written nothing yet (the runner then does not
    /// read it before the body of such a transaction).
    const WRITE_COUNT_OF_TRANSACTION: bool = false;

    /// Rows written (inserted, updated, deleted) so far by this session's transaction
    /// (PostgreSQL: `pg_stat_xact_user_tables`, temporary tables left out) or connection
    /// (SQLite: `total_changes()`), as the database itself counts them: a difference
    /// of two readings is what ran in between wrote, including rows rewritten with
    /// equal values.
    fn write_count(
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// Moves the key generators of `table` (sequences, `AUTOINCREMENT`) past its rows.
    fn reset_sequences(
        conn: &mut Self::Connection,
        table: &str,
    ) -> impl Future<Output = Result<Vec<SequenceReset>, Error>> + Send;

    /// Refreshes the planner's statistics of `table`.
    fn analyze(
        conn: &mut Self::Connection,
        table: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}
