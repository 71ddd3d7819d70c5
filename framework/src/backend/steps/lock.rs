//! The runner lock's steps: the lock, the lease that stands in for it through a transaction
//! pooler, the evidence of a pooler, and the sessions that hold the lock or block a
//! migration.

use std::future::Future;
use std::time::Duration;

use super::connection::ConnectionSteps;
use crate::backend::lock_token::LockToken;
use crate::error::Error;
use crate::ledger::LedgerConfig;
use crate::session::SessionInfo;

/// The runner lock's steps.
pub trait LockSteps: ConnectionSteps {
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

    /// Evidence that `conn` reaches the database through a transaction pooler: a second
    /// connection made with `options` served by the same server session, or `conn`'s
    /// server session changing between two statements. `None` when there is none.
    fn pooler_evidence(
        conn: &mut Self::Connection,
        options: &<Self::Connection as sqlx::Connection>::Options,
    ) -> impl Future<Output = Result<Option<String>, sqlx::Error>> + Send;

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
}
