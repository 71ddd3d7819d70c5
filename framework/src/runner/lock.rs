//! The runner lock: one connection of its own, a try-lock polled until the timeout.

use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;

use super::Migrator;
use crate::backend::{Backend, LockToken};
use crate::error::Error;

impl<DB: Backend> Migrator<DB> {
    /// Takes the runner lock on a connection of its own, runs `work` on it, releases the
    /// lock. On PostgreSQL the connection is closed afterwards, never returned to the pool:
    /// should this future be dropped half-way (a timeout, Ctrl-C), the session ends and the
    /// server releases the lock and rolls back what was in progress. On SQLite the dropped
    /// transaction rolls back, and the lock row's token dies with this future, so the next
    /// runner finds the row stale.
    pub(crate) async fn with_lock<T>(
        &self,
        work: impl AsyncFnOnce(&mut PoolConnection<DB>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.ledger.validate()?;
        let mut conn = self.pool.acquire().await?;
        if DB::CLOSE_RUNNER_CONNECTION {
            conn.close_on_drop();
        }
        DB::tag_session(&mut conn, &crate::session::runner_tag()).await?;
        let token = LockToken::new();
        self.acquire_lock(&mut conn, &token).await?;
        let result = work(&mut conn).await;
        // Closing the connection releases PostgreSQL's lock too; unlocking explicitly is
        // prompt, and SQLite's lock row needs it (should this future be dropped instead,
        // the token dies with it and the next runner finds the row stale).
        let _ = DB::unlock(&mut conn, &self.ledger, &token).await;
        result
    }

    pub(super) async fn acquire_lock(
        &self,
        conn: &mut PoolConnection<DB>,
        token: &LockToken,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(25);
        loop {
            if DB::try_lock(conn, &self.ledger, token).await? {
                return Ok(());
            }
            let waited = started.elapsed();
            if waited >= self.runner_lock_timeout {
                return Err(Error::LockTimeout {
                    timeout: self.runner_lock_timeout,
                });
            }
            tokio::time::sleep(pause.min(self.runner_lock_timeout - waited)).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}
