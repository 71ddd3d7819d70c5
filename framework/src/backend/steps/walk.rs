//! The steps of a batched migration's walk over its key: the key's columns and index, its
//! scope, the next batch, and the check of every key left in one statement.

use std::future::Future;
use std::time::Duration;

use super::connection::ConnectionSteps;
use super::unsupported::{REST_CHECK, unsupported_sqlx};
use crate::key::{Key, KeyKind, KeyShape, RestGuard};

/// The walk's steps. The rest check is PostgreSQL's: elsewhere its steps fail.
pub trait WalkSteps: ConnectionSteps {
    /// The key columns `names` of `table`: `None` when the table does not exist;
    /// otherwise each column (`None` when it does not exist) with its type.
    fn key_columns(
        conn: &mut Self::Connection,
        table: &str,
        names: &[&str],
    ) -> impl Future<Output = Result<Option<Vec<Option<KeyColumn>>>, sqlx::Error>> + Send;

    /// The name of an index whose leading columns are the key's, in order, that can
    /// serve the key's range scans in its order; `None` when there is none.
    fn key_index(
        conn: &mut Self::Connection,
        table: &str,
        columns: &[KeyColumn],
    ) -> impl Future<Output = Result<Option<String>, sqlx::Error>> + Send;

    /// Fails with the database's own error when `scope` is not a valid condition on
    /// `table`.
    fn check_scope(
        conn: &mut Self::Connection,
        table: &str,
        scope: &str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// The next batch of keys after `after` (from the first key when `None`) and up to
    /// `upper` (a worker's range; to the last key when `None`), at most `size`: its last
    /// key and how many keys it holds; `None` when no key is left. Keyset pagination:
    /// an index range scan from the checkpoint, never `OFFSET`.
    fn next_batch(
        conn: &mut Self::Connection,
        shape: &KeyShape,
        after: Option<&Key>,
        upper: Option<&Key>,
        size: u32,
    ) -> impl Future<Output = Result<Option<(Key, u64)>, sqlx::Error>> + Send;

    /// Whether any key of the scope is after `after` (and at or before `upper`).
    fn has_keys_after(
        conn: &mut Self::Connection,
        shape: &KeyShape,
        after: &Key,
        upper: Option<&Key>,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

    /// An estimate of the rows of the scope after `after` (all, when `None`) and up to
    /// `upper`, for progress.
    fn estimate_rows(
        conn: &mut Self::Connection,
        shape: &KeyShape,
        after: Option<&Key>,
        upper: Option<&Key>,
    ) -> impl Future<Output = Result<Option<u64>, sqlx::Error>> + Send;

    /// Whether a batched migration of one batch size reads the next batch's bounds on a
    /// pooled connection of its own while a batch's body runs (MySQL: its `OFFSET` scan of
    /// the key's index costs about a seventh of a batch's `UPDATE`).
    const READS_AHEAD: bool = false;

    /// Whether a batched migration whose batch changed nothing may check all its
    /// remaining keys in one statement (PostgreSQL and MySQL; see `Ctx::checking_rest`).
    /// The rest-check steps below are only called where it may; elsewhere they fail with
    /// [`Error::Unsupported`](crate::Error::Unsupported).
    const CHECKS_REST: bool = false;

    /// Prepares the transaction of a rest check and returns how its statements are
    /// written (see [`RestGuard`]): each stops on the first row it would change, and runs
    /// for at most `limit`. Fails where the check cannot run here (no guard may be
    /// created, no statement limit): the walk then goes on batch by batch.
    fn begin_rest_check(
        _conn: &mut Self::Connection,
        _limit: Duration,
    ) -> impl Future<Output = Result<RestGuard, sqlx::Error>> + Send {
        async { Err(unsupported_sqlx(Self::ID, REST_CHECK)) }
    }

    /// Ends a rest check that held, before its transaction commits (drops a guard).
    fn end_rest_check(
        _conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        async { Err(unsupported_sqlx(Self::ID, REST_CHECK)) }
    }

    /// The last key of the scope after `after` (in all of it, without `after`).
    fn last_key(
        _conn: &mut Self::Connection,
        _shape: &KeyShape,
        _after: Option<&Key>,
    ) -> impl Future<Output = Result<Option<Key>, sqlx::Error>> + Send {
        async { Err(unsupported_sqlx(Self::ID, REST_CHECK)) }
    }

    /// What the database shows about everyone else while a batch of this walk runs
    /// (called inside the batch's transaction, after its body): the pacing's signals.
    /// `None` where the database shows no other session (SQLite): the pacing then goes by
    /// the batches' own time. `own` are the other sessions of this walk (its workers),
    /// left out with this one.
    fn load_sample(
        _conn: &mut Self::Connection,
        _own: &[i32],
    ) -> impl Future<Output = Result<Option<LoadSample>, sqlx::Error>> + Send {
        async { Ok(None) }
    }

    /// This session's id on the server (PostgreSQL's backend pid), to tell a walk's own
    /// sessions from the application's; `None` where there is none.
    fn session_id(
        _conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<Option<i32>, sqlx::Error>> + Send {
        async { Ok(None) }
    }
}

/// What the database showed about its other sessions at one instant, for the pacing of a
/// batched migration (see [`WalkSteps::load_sample`]). Sessions of datamig (its runners'
/// `datamig/..` sessions, the walk's own) and of other databases are left out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadSample {
    /// Other sessions running a statement now.
    pub(crate) active: u32,
    /// Other sessions that ran one within the last second (an application's pooled
    /// connections between two transactions).
    pub(crate) recent: u32,
    /// Other sessions waiting for a lock this session holds.
    pub(crate) lock_waits: u32,
    /// The database's commit counter (everyone's, this walk's included), when readable.
    pub(crate) commits: Option<i64>,
    /// The server's clock, in seconds.
    pub(crate) at: f64,
}

/// One column of a batched migration's key, as [`WalkSteps::key_columns`] finds it.
/// (Public only to the sealed backend steps; not reachable from outside the crate.)
#[derive(Debug, Clone)]
pub struct KeyColumn {
    pub(crate) name: String,
    /// Its type, as the database writes it.
    pub(crate) sql_type: String,
    /// How batching reads and binds it; `None` for a type batching does not walk.
    pub(crate) kind: Option<KeyKind>,
    /// Whether the column is `NOT NULL` (or otherwise cannot hold a `NULL`).
    pub(crate) not_null: bool,
    /// Rows whose key is not an integer in an integer column (SQLite, whose columns take
    /// any value).
    pub(crate) not_integers: i64,
    /// Its number in the table (PostgreSQL's `attnum`), for matching indexes.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) number: i64,
    /// Its collation (PostgreSQL's `attcollation`), for matching indexes.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) collation: i64,
}
