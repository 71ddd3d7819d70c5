//! What the copy was doing when the database failed: every database error a copy reports
//! names its table (and chunk, column or statement where it has them), never a bare
//! `database error`.

use crate::error::Error;

/// Attaches what the copy was doing to a database error.
pub(super) trait During<T> {
    /// The error as [`Error::CopyDatabase`], `during` saying what was being done (`reading
    /// the catalog of the source`, `splitting public.orders into chunks`).
    fn during(self, during: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> During<T> for Result<T, sqlx::Error> {
    fn during(self, during: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|error| Error::CopyDatabase {
            during: during(),
            error,
        })
    }
}

/// A statement as a message quotes it: on one line, and cut short past 300 characters.
pub(super) fn statement(sql: &str) -> String {
    let line: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(300) {
        Some((at, _)) => format!("{} ...", &line[..at]),
        None => line,
    }
}
