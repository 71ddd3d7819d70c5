//! Where a chunk failed, as the worker that copied it saw it, and what the explanation
//! (`explain.rs`) makes of it: a failure that stops the copy, or a table whose rows were
//! refused, which the other tables go on without.

use crate::error::{Error, TableFailure, UnconvertibleValue};

/// Where a chunk failed; each names its table (its index in the plan).
pub(super) enum Failure {
    /// Reading the source.
    Source(usize, sqlx::Error),
    /// Reading the source, as its driver described it.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    SourceText(usize, String),
    /// Writing the target (the chunk's transaction is rolled back).
    Target(usize, sqlx::Error),
    /// A row the copy's own checks reject (the chunk is rolled back).
    Rejected(usize, String),
    /// A value of a SQLite source that does not convert (the chunk is rolled back).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    Value(usize, Box<UnconvertibleValue>),
    /// A unit started before its parents committed, rolled back because one of them
    /// did not finish (its tables are already recorded as left behind).
    ParentFailed,
    /// Anything else.
    Other(Error),
}

/// A table's rows refused by the target (a constraint, a trigger, a type), by the copy's
/// own check, or by a conversion; or a table the source could not read. Its chunk was
/// rolled back.
pub(super) struct Rejection {
    /// The table (its index in the plan).
    pub(super) table: usize,
    /// The row, where it is known.
    pub(super) row: Option<String>,
    pub(super) column: Option<String>,
    pub(super) constraint: Option<String>,
    pub(super) trigger: Option<String>,
    /// The database's words, with its detail and context.
    pub(super) message: String,
    /// A value of a SQLite source that does not convert.
    pub(super) value: Option<Box<UnconvertibleValue>>,
}

/// What a chunk's failure means for the copy.
pub(super) enum Explained {
    /// The copy stops: a lost connection, a lock wait, a bug.
    Stop(Error),
    /// Its table stops at its last committed chunk; the others go on (or, with
    /// `fail_fast`, the copy stops with it).
    Table(Rejection),
}

/// Where a rejected chunk stands: the table's name, the chunk's number, the table's
/// chunks, and the chunks committed (the table's, for a failure the copy goes on past;
/// every table's, for one that stops it).
pub(super) struct Place {
    pub(super) table: String,
    pub(super) chunk: usize,
    pub(super) chunks: usize,
    pub(super) kept: usize,
}

impl Rejection {
    /// The error that stops the copy (`fail_fast`), as a copy has always reported it.
    pub(super) fn into_error(self, place: Place) -> Error {
        match self.value {
            Some(value) => Error::CopyUnconvertible {
                chunk: place.chunk,
                chunks: place.chunks,
                kept: place.kept,
                value,
            },
            None => Error::CopyRejected {
                table: place.table,
                chunk: place.chunk,
                chunks: place.chunks,
                kept: place.kept,
                message: self.message,
            },
        }
    }

    /// The table's entry in the copy's list of tables not finished.
    pub(super) fn into_table_failure(self, place: Place) -> TableFailure {
        let (row, column, message) = match &self.value {
            Some(value) => (
                Some(value.key.clone()),
                Some(value.column.clone()),
                format!(
                    "{} is not {} {}: {}",
                    value.value,
                    crate::error::article(&value.target_type),
                    value.target_type,
                    value.reason
                ),
            ),
            None => (self.row, self.column, self.message),
        };
        TableFailure {
            table: place.table,
            chunk: Some(place.chunk),
            chunks: place.chunks,
            kept: place.kept,
            row,
            column,
            constraint: self.constraint,
            trigger: self.trigger,
            message,
        }
    }
}
