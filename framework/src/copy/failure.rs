//! Where a chunk failed, as the worker that copied it saw it: the explanation
//! (`explain.rs`) turns it into the error the copy reports.

use crate::error::{Error, UnconvertibleValue};

/// Where a chunk failed.
pub(super) enum Failure {
    /// Reading the source.
    Source(String, sqlx::Error),
    /// Reading the source, as its driver described it.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    SourceText(String, String),
    /// Writing the target (the chunk's transaction is rolled back).
    Target(usize, sqlx::Error),
    /// A row the copy's own checks reject (the chunk is rolled back).
    Rejected(usize, String),
    /// A value of a SQLite source that does not convert (the chunk is rolled back).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    Value(usize, Box<UnconvertibleValue>),
    /// Anything else.
    Other(Error),
}

impl From<sqlx::Error> for Failure {
    fn from(err: sqlx::Error) -> Self {
        Failure::Other(Error::Database(err))
    }
}
