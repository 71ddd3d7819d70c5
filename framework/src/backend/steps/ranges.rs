//! The steps of several workers on one batched migration: the ranges of its keys, each
//! claimed by one worker at a time. PostgreSQL's; elsewhere they fail.

use std::future::Future;

use super::ConnectionSteps;
use crate::error::Error;
use crate::key::{Key, KeyShape};
use crate::ledger::{Attempt, Claim, LedgerConfig, RangeStep, WorkRange};

/// The steps of several workers.
pub trait RangeSteps: ConnectionSteps {
    /// Whether batched migrations may have more than one worker here (PostgreSQL). The
    /// range steps below are only called where they may; elsewhere they fail.
    const WORKERS: bool = false;

    /// Creates the ranges table (`<ledger>_ranges`) where it is missing.
    fn ensure_ranges(
        _conn: &mut Self::Connection,
        _config: &LedgerConfig,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        async { Err(one_worker_only(Self::ID)) }
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

    /// Replaces the ranges of migration `id` by `bounds` (`(lower, upper]`, encoded).
    fn replace_ranges(
        _conn: &mut Self::Connection,
        _config: &LedgerConfig,
        _id: &str,
        _bounds: &[(Option<String>, Option<String>)],
    ) -> impl Future<Output = Result<(), Error>> + Send {
        async { Err(one_worker_only(Self::ID)) }
    }

    /// Claims a range of migration `id` no live worker holds; `None` when none is left.
    fn claim_range(
        _conn: &mut Self::Connection,
        _config: &LedgerConfig,
        _id: &str,
        _claim: &Claim,
    ) -> impl Future<Output = Result<Option<i32>, Error>> + Send {
        async { Err(one_worker_only(Self::ID)) }
    }

    /// Gives range `number` back.
    fn release_range(
        _conn: &mut Self::Connection,
        _config: &LedgerConfig,
        _id: &str,
        _number: i32,
        _claim: &Claim,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        async { Err(one_worker_only(Self::ID)) }
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
        async { Err(sqlx::Error::Protocol(one_worker_only(Self::ID).to_string())) }
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
        async { Err(sqlx::Error::Protocol(one_worker_only(Self::ID).to_string())) }
    }

    /// In the transaction of a batch that finished its range: applies the migration
    /// when no range has keys left (`true`).
    fn finish_ranges(
        _conn: &mut Self::Connection,
        _config: &LedgerConfig,
        _attempt: &Attempt,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send {
        async { Err(sqlx::Error::Protocol(one_worker_only(Self::ID).to_string())) }
    }

    /// Keys splitting the scope after `after` into about `pieces` ranges.
    fn split_keys(
        _conn: &mut Self::Connection,
        _shape: &KeyShape,
        _after: Option<&Key>,
        _pieces: usize,
    ) -> impl Future<Output = Result<Vec<Key>, Error>> + Send {
        async { Err(one_worker_only(Self::ID)) }
    }
}

/// The error of a range step on a backend that runs one worker only.
fn one_worker_only(backend: &str) -> Error {
    Error::Config(format!(
        "{backend} runs a batched migration with one worker only: it takes one writer at a time"
    ))
}
