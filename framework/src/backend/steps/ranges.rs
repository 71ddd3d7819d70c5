//! The steps of several workers on one batched migration: the ranges of its keys, each
//! claimed by one worker at a time. PostgreSQL's and MySQL's; elsewhere they fail.

use std::future::Future;

use super::connection::ConnectionSteps;
use super::unsupported::{WORKERS, unsupported, unsupported_sqlx};
use crate::error::Error;
use crate::key::{Key, KeyShape};
use crate::ledger::{Attempt, Claim, LedgerConfig, RangeMark, RangeStep, WorkRange};

/// The steps of several workers.
pub trait RangeSteps: ConnectionSteps {
    /// Whether batched migrations may have more than one worker here (PostgreSQL, MySQL). The
    /// range steps below are only called where they may; elsewhere they fail with
    /// [`Error::Unsupported`](crate::Error::Unsupported) (the ranges read: none).
    const WORKERS: bool = false;

    /// Creates the ranges table (`<ledger>_ranges`) where it is missing.
    fn ensure_ranges(
        _conn: &mut Self::Connection,
        _config: &LedgerConfig,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        async { Err(unsupported(Self::ID, WORKERS)) }
    }

    /// The ranges of migration `id` (of all, when `None`), by migration and number;
    /// empty where there is no ranges table.
    fn read_ranges(
        _conn: &mut Self::Connection,
        _config: &LedgerConfig,
        _id: Option<&str>,
    ) -> impl Future<Output = Result<Vec<WorkRange>, sqlx::Error>> + Send {
        async { Ok(Vec::new()) }
    }

    /// How each range of migration `id` that is not done stands: its number, its batches
    /// and when its last batch committed. One read of the ranges table alone (no look at
    /// the server's locks): what a worker waiting for ranges others hold polls.
    fn range_marks(
        _conn: &mut Self::Connection,
        _config: &LedgerConfig,
        _id: &str,
    ) -> impl Future<Output = Result<Vec<RangeMark>, sqlx::Error>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Replaces the ranges of migration `id` by `bounds` (`(lower, upper]`, encoded).
    fn replace_ranges(
        _conn: &mut Self::Connection,
        _config: &LedgerConfig,
        _id: &str,
        _bounds: &[(Option<String>, Option<String>)],
    ) -> impl Future<Output = Result<(), Error>> + Send {
        async { Err(unsupported(Self::ID, WORKERS)) }
    }

    /// Claims a range of migration `id` no live worker holds; `None` when none is left.
    fn claim_range(
        _conn: &mut Self::Connection,
        _config: &LedgerConfig,
        _id: &str,
        _claim: &Claim,
    ) -> impl Future<Output = Result<Option<i32>, Error>> + Send {
        async { Err(unsupported(Self::ID, WORKERS)) }
    }

    /// Gives range `number` back.
    fn release_range(
        _conn: &mut Self::Connection,
        _config: &LedgerConfig,
        _id: &str,
        _number: i32,
        _claim: &Claim,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        async { Err(unsupported(Self::ID, WORKERS)) }
    }

    /// In a batch's transaction: locks range `number` if `token` holds it and it has
    /// keys left; its checkpoint, upper bound and batches.
    #[allow(clippy::type_complexity)]
    fn hold_range(
        _conn: &mut Self::Connection,
        _config: &LedgerConfig,
        _id: &str,
        _number: i32,
        _token: &str,
    ) -> impl Future<Output = Result<Option<(Option<String>, Option<String>, i64)>, sqlx::Error>> + Send
    {
        async { Err(unsupported_sqlx(Self::ID, WORKERS)) }
    }

    /// In a batch's transaction: records what it did in its range.
    fn advance_range(
        _conn: &mut Self::Connection,
        _config: &LedgerConfig,
        _id: &str,
        _number: i32,
        _claim: &Claim,
        _step: &RangeStep,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        async { Err(unsupported_sqlx(Self::ID, WORKERS)) }
    }

    /// In the transaction of a batch that finished its range: applies the migration
    /// when no range has keys left (`true`).
    fn finish_ranges(
        _conn: &mut Self::Connection,
        _config: &LedgerConfig,
        _attempt: &Attempt,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send {
        async { Err(unsupported_sqlx(Self::ID, WORKERS)) }
    }

    /// Keys splitting the scope after `after` into about `pieces` ranges.
    fn split_keys(
        _conn: &mut Self::Connection,
        _shape: &KeyShape,
        _after: Option<&Key>,
        _pieces: usize,
    ) -> impl Future<Output = Result<Vec<Key>, Error>> + Send {
        async { Err(unsupported(Self::ID, WORKERS)) }
    }
}
