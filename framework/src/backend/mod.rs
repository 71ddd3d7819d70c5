//! The per-database steps. The algorithm (`runner/`) is written once over [`Backend`];
//! each database implements only the small steps whose SQL differs.
//!
//! - `steps/`: the step traits [`Backend`] requires, one per concern: the connection, the
//!   ledger, the runner lock, the walk of a batched migration's keys, tables, the upsert,
//!   the ranges of several workers.
//! - `postgres/`, `sqlite/` and `mysql/`: each database's steps, a file per concern.
//! - `shared.rs`: the statements every database runs alike, written once, with their
//!   differences as data (`dialect.rs`); `values.rs`: key values bound alike.
//! - `lock_token.rs`: a holding of the runner lock by this process.

use crate::error::Error;

mod dialect;
#[cfg(feature = "postgres")]
pub(crate) mod isolation;
mod lock_token;
#[cfg(feature = "mysql")]
pub(crate) mod mysql;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
mod shared;
#[cfg(feature = "sqlite")]
mod sqlite;
pub(crate) mod steps;
mod values;

pub use lock_token::LockToken;
pub(crate) use steps::{Chained, LoadSample};
use steps::{
    ConnectionSteps, LedgerSteps, LockSteps, RangeSteps, TableSteps, UpsertSteps, WalkSteps,
};
#[cfg(feature = "testing")]
pub(crate) use values::bind_key_value;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) use values::hex;

/// A database datamig can migrate: [`Postgres`](crate::Postgres) and
/// [`Sqlite`](crate::Sqlite), each behind the cargo feature of the same name (both on by
/// default), and `MySql` (MySQL and MariaDB, feature `mysql`).
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
pub trait Backend:
    sqlx::Database
    + ConnectionSteps
    + LedgerSteps
    + LockSteps
    + WalkSteps
    + TableSteps
    + UpsertSteps
    + RangeSteps
{
}

/// Runs `work` on `conn` inside a short transaction of its own where the backend asks for
/// it ([`ConnectionSteps::PIN_IN_TRANSACTION`]) and `conn` is not in a transaction already.
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
    // The backend's own beginning: on PostgreSQL it states the isolation level.
    let mut tx = DB::begin(conn, None).await?;
    let out = work(&mut tx).await?;
    tx.commit().await?;
    Ok(out)
}
