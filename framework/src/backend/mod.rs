//! The per-database steps. The algorithm (`runner.rs`) is written once over [`Backend`];
//! each database implements only the small steps whose SQL differs.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;

use sqlx::SqlStr;

use crate::bulk::SequenceReset;
use crate::error::Error;
use crate::key::{Key, KeyKind, KeyShape, KeyValue};
use crate::ledger::{
    Attempt, Claim, LastRun, LedgerConfig, LedgerEntry, Pause, RangeStep, WorkRange,
};
use crate::merge::{UpsertReport, UpsertRequest};
use crate::migration::{Code, Migration};
use crate::session::SessionInfo;

#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "postgres")]
mod ranges;
#[cfg(feature = "testing")]
pub(crate) use shared::bind_key_value;
mod dialect;
mod shared;
#[cfg(feature = "sqlite")]
mod sqlite;

/// A database datamig can migrate: [`Postgres`](crate::Postgres) and
/// [`Sqlite`](crate::Sqlite), each behind the cargo feature of the same name (both on by
/// default).
///
/// A migration generic over it runs on every backend compiled in:
///
/// ```no_run
/// use datamig::prelude::*;
///
/// /// Store every email address trimmed and in lower case.
/// #[datamig::migration(id = "20241120_1200_normalize_user_emails")]
/// async fn normalize<DB: Backend>(ctx: &mut Ctx<'_, DB>) -> anyhow::Result<()> {
///     ctx.execute("UPDATE users SET email = lower(trim(email)) WHERE email <> lower(trim(email))")
///         .await?;
///     Ok(())
/// }
/// # fn main() {}
/// ```
///
/// The trait is sealed: its steps are internal to datamig.
pub trait Backend: sqlx::Database + steps::Steps {}

pub(crate) mod steps {
    use super::*;

    /// The steps the runner composes. Every method runs on the runner's connection.
    pub trait Steps: sqlx::Database + Sized {
        /// The backend's short name, as users see it (`postgres`).
        const ID: &'static str;

        /// Whether the runner's connection is closed after a run instead of going back to
        /// the pool: where the runner lock belongs to the session (PostgreSQL), a dropped
        /// run must not hand a locked session to the pool. SQLite's lock is a row, and
        /// closing the last connection to an in-memory database would delete it.
        const CLOSE_RUNNER_CONNECTION: bool;

        /// Whether datamig runs each statement it sends outside a migration's transaction
        /// inside a short transaction of its own (see [`super::pinned`]): on PostgreSQL,
        /// where a transaction pooler hands each transaction, and each statement outside
        /// one, to whichever server session is free.
        const PIN_IN_TRANSACTION: bool;

        /// How this backend's SQL differs where the statements are written once
        /// (`shared.rs`).
        const DIALECT: super::dialect::Dialect;

        /// The rows a statement affected, from its result (sqlx's results have no common
        /// trait for it).
        fn rows_affected(result: &Self::QueryResult) -> u64;

        /// This backend's code of a migration, if it has any.
        fn code(migration: &Migration) -> Option<Code<Self>>;

        /// Creates the ledger, run-history and layout tables where they are missing and
        /// records the current layout: the DDL of a new ledger, and the upgrade of an older
        /// one. The runner calls it only when the ledger is missing or older, so a role
        /// without DDL privileges works on a current ledger.
        fn ensure_ledger(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

        /// The columns of a table (empty when it does not exist), to check the ledger's shape.
        fn table_columns(
            conn: &mut Self::Connection,
            schema: Option<&str>,
            table: &str,
        ) -> impl Future<Output = Result<Vec<String>, sqlx::Error>> + Send;

        /// Begins a transaction that will write: on SQLite it takes the write lock at once
        /// (`BEGIN IMMEDIATE`), waiting at most `lock_timeout` for it, so two writers queue
        /// instead of failing part-way.
        fn begin(
            conn: &mut Self::Connection,
            lock_timeout: Option<Duration>,
        ) -> impl Future<Output = Result<sqlx::Transaction<'_, Self>, sqlx::Error>> + Send;

        /// Executes one statement; returns the rows it affected.
        fn execute(
            conn: &mut Self::Connection,
            sql: SqlStr,
        ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

        /// The first column of the first row of a query, as an integer (`None` without a
        /// row or for `NULL`).
        fn fetch_i64(
            conn: &mut Self::Connection,
            sql: SqlStr,
        ) -> impl Future<Output = Result<Option<i64>, sqlx::Error>> + Send;

        /// Executes one statement with `$1`, `$2`.. bound to `values`.
        fn execute_keyed(
            conn: &mut Self::Connection,
            sql: SqlStr,
            values: &[KeyValue],
        ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

        /// The pauses in force (of one migration, or of all): for each paused migration,
        /// its latest pause in the run history.
        fn pause_state(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
            id: Option<&str>,
        ) -> impl Future<Output = Result<Vec<Pause>, sqlx::Error>> + Send;

        /// Runs an upsert built by [`crate::Upsert`]. Returns what it did, and how many rows
        /// it wrote to temporary staging tables where [`Self::write_count`] counts those.
        fn upsert(
            conn: &mut Self::Connection,
            request: UpsertRequest<'_>,
        ) -> impl Future<Output = Result<(UpsertReport, u64), Error>> + Send;

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

        /// Whether the ledger table exists (read-only commands do not create it).
        fn ledger_exists(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
        ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

        /// Every ledger row, by id.
        fn read_ledger(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
        ) -> impl Future<Output = Result<Vec<LedgerEntry>, sqlx::Error>> + Send;

        /// The last recorded attempt of each migration.
        fn last_runs(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
        ) -> impl Future<Output = Result<Vec<LastRun>, sqlx::Error>> + Send;

        /// Tries once to take the runner lock; `true` if this session now holds it.
        fn try_lock(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
            token: &LockToken,
        ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

        /// Releases the runner lock held by this session.
        fn unlock(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
            token: &LockToken,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

        /// At the start of a migration's transaction through a transaction pooler: forgets
        /// this connection's cached prepared statements and drops every named prepared
        /// statement of the server session (`DEALLOCATE ALL`), which may have been left by
        /// another client of the pooler. A body's own named statements then neither collide
        /// with those nor outlive the transaction. (SQLite: nothing.)
        fn reset_statements(
            conn: &mut Self::Connection,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

        /// Tries once to take the lease lock for `ttl`: a row naming this runner (host,
        /// process, `token`), taken when missing or expired; `true` if this runner now
        /// holds it. Creates the lease table where it is missing. (SQLite: its lock row,
        /// as [`Self::try_lock`].)
        fn try_lease(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
            token: &LockToken,
            ttl: Duration,
        ) -> impl Future<Output = Result<bool, Error>> + Send;

        /// Extends the lease of `token` to `ttl` from now; `false` when it has expired or
        /// another runner holds it.
        fn renew_lease(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
            token: &str,
            ttl: Duration,
        ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

        /// Gives the lease of `token` up.
        fn release_lease(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
            token: &LockToken,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

        /// Inside a migration's transaction, just before its ledger row is written: `None`
        /// while `token` holds an unexpired lease, otherwise what was found instead.
        fn lease_lost(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
            token: &str,
        ) -> impl Future<Output = Result<Option<String>, sqlx::Error>> + Send;

        /// Evidence that `conn` reaches the database through a transaction pooler: a second
        /// connection made with `options` served by the same server session, or `conn`'s
        /// server session changing between two statements. `None` when there is none.
        fn pooler_evidence(
            conn: &mut Self::Connection,
            options: &<Self::Connection as sqlx::Connection>::Options,
        ) -> impl Future<Output = Result<Option<String>, sqlx::Error>> + Send;

        /// Sets the lock, statement and idle-in-transaction timeouts for the current
        /// transaction only.
        fn set_local_timeouts(
            conn: &mut Self::Connection,
            lock_timeout: Option<Duration>,
            statement_timeout: Option<Duration>,
            idle_in_transaction: Option<Duration>,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

        /// Writes the ledger row of an attempt, as its `write` says. Runs inside the
        /// migration's (or the batch's) transaction. `false` when a `Continue` found the row
        /// no longer at the expected checkpoint.
        fn write_ledger(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
            attempt: &Attempt,
        ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

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

        /// Names this session, so that others can see who holds the runner lock.
        fn tag_session(
            conn: &mut Self::Connection,
            name: &str,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

        /// The sessions holding the runner lock.
        fn lock_holders(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
        ) -> impl Future<Output = Result<Vec<SessionInfo>, sqlx::Error>> + Send;

        /// Takes the runner lock away from holder `pid` (as [`Self::lock_holders`] names
        /// it): PostgreSQL ends that session (its transaction rolls back); SQLite removes
        /// the holder's lock row (its transaction died with its process).
        fn release_lock_holder(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
            pid: i32,
        ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

        /// Sessions that would block or slow a migration: idle in a transaction, waiting
        /// for a lock, or in a long transaction.
        fn blocking_sessions(
            conn: &mut Self::Connection,
        ) -> impl Future<Output = Result<Vec<SessionInfo>, sqlx::Error>> + Send;

        /// Whether the schema migration `version` of `sqlx migrate` has been applied
        /// (`_sqlx_migrations`).
        fn schema_version_applied(
            conn: &mut Self::Connection,
            version: i64,
        ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

        /// The server's version string.
        fn server_version(
            conn: &mut Self::Connection,
        ) -> impl Future<Output = Result<String, sqlx::Error>> + Send;

        /// Whether an error is a lock timeout (worth retrying after a pause).
        fn is_lock_timeout(err: &sqlx::Error) -> bool;

        /// Whether a batched migration whose batch changed nothing may check all its
        /// remaining keys in one statement (PostgreSQL; see `Ctx::checking_rest`). The
        /// rest-check steps below are only called where it may; elsewhere they fail.
        const CHECKS_REST: bool = false;

        /// The call a rest check appends to each `{batch}`: it fails the statement, with an
        /// error [`Steps::is_rest_work`] recognises, on the first row it would change.
        const REST_GUARD: &'static str = "";

        /// Prepares the transaction of a rest check: creates the guard (a temporary
        /// function, gone at the end of the transaction) and bounds the check's statements
        /// to `limit`.
        fn begin_rest_check(
            _conn: &mut Self::Connection,
            _limit: Duration,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
            async {
                Err(sqlx::Error::Configuration(
                    "no rest check on this backend".into(),
                ))
            }
        }

        /// Drops the guard, before the check's transaction commits.
        fn end_rest_check(
            _conn: &mut Self::Connection,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
            async {
                Err(sqlx::Error::Configuration(
                    "no rest check on this backend".into(),
                ))
            }
        }

        /// Whether an error is the guard's: a row after the checkpoint still needs work.
        fn is_rest_work(_err: &sqlx::Error) -> bool {
            false
        }

        /// The last key of the scope after `after` (in all of it, without `after`).
        fn last_key(
            _conn: &mut Self::Connection,
            _shape: &KeyShape,
            _after: Option<&Key>,
        ) -> impl Future<Output = Result<Option<Key>, sqlx::Error>> + Send {
            async {
                Err(sqlx::Error::Configuration(
                    "no rest check on this backend".into(),
                ))
            }
        }

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
        ) -> impl Future<
            Output = Result<Option<(Option<String>, Option<String>, i64)>, sqlx::Error>,
        > + Send {
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

        /// Appends an attempt to the run history, with its error if it failed.
        fn record_run(
            conn: &mut Self::Connection,
            config: &LedgerConfig,
            attempt: &Attempt,
            error: Option<&str>,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    }
}

/// The error of a range step on a backend that runs one worker only.
fn one_worker_only(backend: &str) -> Error {
    Error::Config(format!(
        "{backend} runs a batched migration with one worker only: it takes one writer at a time"
    ))
}

/// Runs `work` on `conn` inside a short transaction of its own where the backend asks for
/// it ([`steps::Steps::PIN_IN_TRANSACTION`]) and `conn` is not in a transaction already.
///
/// A transaction pooler (PgBouncer in `transaction` mode) keeps a client on one server
/// session for the length of a transaction only. sqlx sends a statement with parameters as
/// two exchanges (prepare, then bind and execute), and outside a transaction the pooler may
/// hand the second to another server session, where the statement does not exist. Inside
/// a transaction both reach the same session.
pub(crate) async fn pinned<DB: Backend, T>(
    conn: &mut DB::Connection,
    work: impl AsyncFnOnce(&mut DB::Connection) -> Result<T, Error>,
) -> Result<T, Error> {
    use sqlx::Connection;
    if !DB::PIN_IN_TRANSACTION || conn.is_in_transaction() {
        return work(conn).await;
    }
    let mut tx = conn.begin().await?;
    let out = work(&mut tx).await?;
    tx.commit().await?;
    Ok(out)
}

/// One column of a batched migration's key, as [`steps::Steps::key_columns`] finds it.
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

/// One holding of the runner lock by this process, live from its creation to its drop.
///
/// A backend whose lock is a row (SQLite) stores the token in it: a row of this process
/// whose token is no longer live was left by a run that was dropped half-way (a timeout, a
/// cancelled task), and is stale.
#[derive(Debug)]
pub struct LockToken(String);

static LIVE_TOKENS: Mutex<Option<HashSet<String>>> = Mutex::new(None);

impl LockToken {
    pub(crate) fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // Random too: a lease token names its holder across machines, where process ids
        // and clocks repeat.
        let mut random = [0u8; 8];
        let _ = getrandom::fill(&mut random);
        let token = format!(
            "{}:{}:{}:{}",
            std::process::id(),
            Utc::now().timestamp_micros(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            hex(&random)
        );
        if let Ok(mut live) = LIVE_TOKENS.lock() {
            live.get_or_insert_with(HashSet::new).insert(token.clone());
        }
        LockToken(token)
    }

    /// The token's text.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a token of this process is still held.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn is_live(token: &str) -> bool {
        LIVE_TOKENS
            .lock()
            .map(|live| live.as_ref().is_some_and(|set| set.contains(token)))
            .unwrap_or(true)
    }
}

impl Drop for LockToken {
    fn drop(&mut self) {
        if let Ok(mut live) = LIVE_TOKENS.lock()
            && let Some(set) = live.as_mut()
        {
            set.remove(&self.0);
        }
    }
}

/// Bytes as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
