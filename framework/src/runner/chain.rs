//! A batch's transaction: begun by the batch, or by the commit of the batch before it.
//!
//! Where the backend can (`LedgerSteps::commit_and_begin`, MariaDB), a batch's checkpoint,
//! its `COMMIT` and the next batch's begin go to the server as one text: two round trips a
//! batch fewer. The next batch's transaction is then open on the runner's connection
//! before that batch runs, with sqlx's transaction depth still counting it. [`Link`] (the
//! runner's connection during a walk) holds it until the next batch takes it as its
//! [`BatchTx`], and rolls it back where no batch comes: before the connection serves
//! anything else, or, dropped, as sqlx's own `Transaction` does (the `ROLLBACK` queued, sent
//! before the connection's next statement).

use std::ops::{Deref, DerefMut};

use sqlx::pool::PoolConnection;
use sqlx_core::transaction::TransactionManager;

use crate::backend::Backend;

/// The transaction manager of `DB` (sqlx's): begins, commits and rolls back, and counts
/// the depth sqlx checks.
type Manager<DB> = <DB as sqlx::Database>::TransactionManager;

/// The runner's connection during a batched walk, and whether the last batch's commit
/// began the next batch's transaction on it.
pub(super) struct Link<'c, DB: Backend> {
    conn: &'c mut PoolConnection<DB>,
    next: bool,
}

impl<'c, DB: Backend> Link<'c, DB> {
    /// The runner's connection, with no transaction open.
    pub(super) fn new(conn: &'c mut PoolConnection<DB>) -> Self {
        Link { conn, next: false }
    }

    /// Whether the last batch's commit began the next batch's transaction.
    pub(super) fn has_next(&self) -> bool {
        self.next
    }

    /// The connection with no transaction open: a transaction begun for a batch that does
    /// not come is rolled back first.
    pub(super) async fn idle(&mut self) -> &mut PoolConnection<DB> {
        if std::mem::take(&mut self.next)
            && let Err(err) = Manager::<DB>::rollback(&mut **self.conn).await
        {
            // A connection gone, most likely: what uses it next says so. Should it still
            // answer, the `ROLLBACK` goes before its next statement.
            tracing::debug!(error = %err, "the next batch's transaction did not roll back");
            Manager::<DB>::start_rollback(&mut **self.conn);
        }
        &mut *self.conn
    }

    /// The connection as it is, for a batch to begin its own transaction on (there is no
    /// next one: see [`Self::has_next`]).
    pub(super) fn conn(&mut self) -> &mut PoolConnection<DB> {
        debug_assert!(
            !self.next,
            "a batch began its own transaction over the next one"
        );
        &mut *self.conn
    }

    /// The transaction the last batch's commit began (see [`Self::has_next`]), for the
    /// batch it was begun for.
    pub(super) fn take_next(&mut self) -> BatchTx<'_, DB> {
        debug_assert!(self.next, "no batch's commit began a transaction to take");
        self.next = false;
        BatchTx::Next(Next {
            conn: &mut **self.conn,
            open: true,
        })
    }

    /// The batch's commit began the next batch's transaction: it is this link's now.
    pub(super) fn hold_next(&mut self) {
        self.next = true;
    }
}

impl<DB: Backend> Drop for Link<'_, DB> {
    fn drop(&mut self) {
        if self.next {
            Manager::<DB>::start_rollback(&mut **self.conn);
        }
    }
}

/// A batch's transaction: its own (sqlx's), or the one the batch before began for it.
pub(super) enum BatchTx<'c, DB: Backend> {
    /// Begun by the batch.
    Own(sqlx::Transaction<'c, DB>),
    /// Begun by the commit of the batch before.
    Next(Next<'c, DB>),
}

/// A transaction begun by a batch's commit for the next batch: rolled back if dropped
/// open, as sqlx's `Transaction` is.
pub(super) struct Next<'c, DB: Backend> {
    conn: &'c mut DB::Connection,
    open: bool,
}

impl<DB: Backend> Drop for Next<'_, DB> {
    fn drop(&mut self) {
        if self.open {
            Manager::<DB>::start_rollback(self.conn);
        }
    }
}

impl<DB: Backend> BatchTx<'_, DB> {
    /// Commits.
    pub(super) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            BatchTx::Own(tx) => tx.commit().await,
            BatchTx::Next(mut next) => {
                Manager::<DB>::commit(next.conn).await?;
                next.open = false;
                Ok(())
            }
        }
    }

    /// Rolls back.
    pub(super) async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            BatchTx::Own(tx) => tx.rollback().await,
            BatchTx::Next(mut next) => {
                Manager::<DB>::rollback(next.conn).await?;
                next.open = false;
                Ok(())
            }
        }
    }

    /// The transaction committed, and the one open now on its connection is the next
    /// batch's (`Chained::Committed`): this handle goes without a word to the server, and
    /// sqlx's depth keeps counting the open one. [`Link::hold_next`] takes it.
    pub(super) fn hand_on(self) {
        match self {
            // Nothing to free: the transaction only borrows the connection.
            BatchTx::Own(tx) => std::mem::forget(tx),
            BatchTx::Next(mut next) => next.open = false,
        }
    }
}

impl<DB: Backend> Deref for BatchTx<'_, DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        match self {
            BatchTx::Own(tx) => tx,
            BatchTx::Next(next) => next.conn,
        }
    }
}

impl<DB: Backend> DerefMut for BatchTx<'_, DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        match self {
            BatchTx::Own(tx) => tx,
            BatchTx::Next(next) => next.conn,
        }
    }
}
