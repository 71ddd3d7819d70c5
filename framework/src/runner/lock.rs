//! The runner lock: one connection of its own, a try-lock polled until the timeout. Either
//! PostgreSQL's session advisory lock, or a lease renewed in the background and checked
//! inside every transaction that commits (fencing).

use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::pool::PoolConnection;

use super::Migrator;
use crate::backend::{Backend, LockToken};
use crate::error::Error;
use crate::ledger::LedgerConfig;
use crate::migration::{Code, Migration};

use super::report::AppliedMigration;

/// Which lock keeps two runners of one ledger apart.
///
/// # Examples
///
/// Through PgBouncer in `transaction` mode:
///
/// ```no_run
/// # async fn demo() -> Result<(), datamig::Error> {
/// use std::str::FromStr;
/// use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
///
/// let options = datamig::pooler_safe(PgConnectOptions::from_str("postgres://app@pgbouncer:6432/app")?);
/// let pool = PgPoolOptions::new().connect_with(options).await?;
/// datamig::Migrator::new(pool)
///     .runner_lock(datamig::RunnerLock::lease())
///     .run()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunnerLock {
    /// PostgreSQL's session advisory lock (the default): it dies with the runner's
    /// session, so a runner that is killed cannot leave it behind. It needs a direct
    /// connection (or a pooler in `session` mode): a run that finds itself behind a
    /// transaction pooler refuses with [`Error::BehindPooler`]. On SQLite, the lock row.
    #[default]
    Advisory,
    /// A lease: one row in the table `<ledger>_lease` naming the holder (host, process,
    /// a random token) with an expiry, which the runner renews every third of `ttl` on a
    /// connection of its own while it works. A holder that dies leaves a lease that
    /// expires on its own after `ttl`. Every migration and batch transaction checks,
    /// inside itself and just before it commits, that its runner still holds the lease: a
    /// runner frozen past its lease fails with [`Error::LeaseLost`] instead of committing.
    /// It holds through transaction poolers. On SQLite, the lock row (the same as
    /// `Advisory`).
    Lease {
        /// How long a lease lasts without renewal (at least one second).
        ttl: Duration,
    },
}

impl RunnerLock {
    /// The default lease length: 30 seconds.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

    /// A lease of [`RunnerLock::DEFAULT_LEASE`].
    pub fn lease() -> Self {
        RunnerLock::Lease {
            ttl: Self::DEFAULT_LEASE,
        }
    }

    /// A lease of `ttl` (raised to one second if shorter).
    pub fn lease_for(ttl: Duration) -> Self {
        RunnerLock::Lease {
            ttl: ttl.max(Duration::from_secs(1)),
        }
    }
}

/// What a transaction checks before it commits while the runner holds a lease.
#[derive(Clone, Debug)]
pub(crate) struct Fence {
    token: String,
}

tokio::task_local! {
    /// The lease the current run holds, if it runs under a lease.
    static FENCE: Fence;
}

impl<DB: Backend> Migrator<DB> {
    /// Takes the runner lock on a connection of its own, runs `work` on it, releases the
    /// lock. On PostgreSQL the connection is closed afterwards, never returned to the pool:
    /// should this future be dropped half-way (a timeout, Ctrl-C), the session ends and the
    /// server releases an advisory lock and rolls back what was in progress (a lease then
    /// expires on its own). On SQLite the dropped transaction rolls back, and the lock
    /// row's token dies with this future, so the next runner finds the row stale.
    pub(crate) async fn with_lock<T>(
        &self,
        work: impl AsyncFnOnce(&mut PoolConnection<DB>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.with_lock_or_join(None, async |conn, _| work(conn).await)
            .await
    }

    /// [`Migrator::with_lock`], and while another runner holds the lock, joins the batched
    /// migrations of `code` it walks with workers (see `join_running`); `work` gets what
    /// this run did in them.
    pub(crate) async fn with_lock_or_join<T>(
        &self,
        code: Option<&[(&'static Migration, Code<DB>)]>,
        work: impl AsyncFnOnce(&mut PoolConnection<DB>, Vec<AppliedMigration>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.ledger.validate()?;
        let mut runner = RunnerConnection {
            conn: self.pool.acquire().await?,
            close: DB::CLOSE_RUNNER_CONNECTION,
        };
        let conn = &mut runner.conn;
        let token = LockToken::new();
        match self.runner_lock {
            RunnerLock::Advisory => {
                if !self.pooler_checked
                    && let Some(evidence) =
                        DB::pooler_evidence(conn, &self.pool.connect_options()).await?
                {
                    return Err(Error::BehindPooler { evidence });
                }
                DB::tag_session(conn, &crate::session::runner_tag()).await?;
                let joined = self.acquire_lock(conn, &token, None, code).await?;
                let result = work(conn, joined).await;
                // Closing the connection releases PostgreSQL's lock too; unlocking
                // explicitly is prompt, and SQLite's lock row needs it (should this future
                // be dropped instead, the token dies with it and the next runner finds the
                // row stale).
                let unlocked = DB::unlock(conn, &self.ledger, &token).await;
                // A fleet's next target may have a session that holds no lock any more.
                if unlocked.is_ok() && self.reuse_runner_connection {
                    runner.close = false;
                }
                result
            }
            RunnerLock::Lease { ttl } => {
                let joined = self.acquire_lock(conn, &token, Some(ttl), code).await?;
                let renewal = Renewal::start::<DB>(&self.pool, &self.ledger, &token, ttl);
                let fence = Fence {
                    token: token.as_str().to_string(),
                };
                let result = FENCE.scope(fence, work(conn, joined)).await;
                drop(renewal);
                let _ = DB::release_lease(conn, &self.ledger, &token).await;
                result
            }
        }
    }

    /// Polls the runner lock until it is taken or the timeout passes. With `code`, while
    /// another runner holds it, joins the batched migrations it walks with workers; the
    /// timeout starts again after each join. Returns what the joins did.
    pub(super) async fn acquire_lock(
        &self,
        conn: &mut PoolConnection<DB>,
        token: &LockToken,
        lease: Option<Duration>,
        code: Option<&[(&'static Migration, Code<DB>)]>,
    ) -> Result<Vec<AppliedMigration>, Error> {
        let mut started = Instant::now();
        let mut pause = Duration::from_millis(25);
        let mut joined = Vec::new();
        loop {
            let taken = match lease {
                None => DB::try_lock(conn, &self.ledger, token).await?,
                Some(ttl) => DB::try_lease(conn, &self.ledger, token, ttl).await?,
            };
            if taken {
                return Ok(joined);
            }
            if let Some(code) = code {
                let done = self.join_running(conn, code).await?;
                if !done.is_empty() {
                    joined.extend(done);
                    started = Instant::now();
                    continue;
                }
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

    /// Begins a migration's (or a batch's) transaction: under a lease, which is what runs
    /// through a transaction pooler, the server session's named prepared statements are
    /// reset first (see `Steps::reset_statements`).
    pub(crate) async fn begin<'c>(
        &self,
        conn: &'c mut DB::Connection,
        lock_timeout: Option<Duration>,
    ) -> Result<sqlx::Transaction<'c, DB>, sqlx::Error> {
        let mut tx = DB::begin(conn, lock_timeout).await?;
        if self.leased() {
            DB::reset_statements(&mut tx).await?;
        }
        Ok(tx)
    }

    /// Whether this run holds the lease lock (not the advisory lock).
    pub(super) fn leased(&self) -> bool {
        matches!(self.runner_lock, RunnerLock::Lease { .. })
    }

    /// Under a lease, how long a migration's transaction may sit idle before the server
    /// ends it: the lease's length, so that a runner frozen inside a transaction (stopped,
    /// paused in a debugger) does not keep its row locks from the runner that takes over.
    pub(super) fn idle_limit(&self) -> Option<Duration> {
        match self.runner_lock {
            RunnerLock::Advisory => None,
            RunnerLock::Lease { ttl } => Some(ttl),
        }
    }

    /// Under a lease, [`Error::LeaseLost`] if this run holds it no longer (asked on a
    /// connection of its own); `None` when it still does, under the advisory lock, or when
    /// the database cannot tell.
    pub(super) async fn lost_lease(&self, id: &str) -> Option<Error> {
        let token = FENCE.try_with(|fence| fence.token.clone()).ok()?;
        let mut conn = self.pool.acquire().await.ok()?;
        let reason = crate::backend::pinned::<DB, _>(&mut conn, async |c| {
            Ok(DB::lease_lost(c, &self.ledger, &token).await?)
        })
        .await
        .ok()??;
        Some(Error::LeaseLost {
            id: id.to_string(),
            reason,
        })
    }

    /// Inside the transaction of migration `id`, just before its ledger row is written:
    /// fails with [`Error::LeaseLost`] when the run holds a lease no longer. Nothing to
    /// check under the advisory lock, which the session holds until it ends.
    ///
    /// Under a lease, a transaction that finds no lease in its task (code of the run moved
    /// into a task of its own, where the task-local is not set) fails closed: it cannot
    /// prove it holds the lease, so it does not commit.
    pub(crate) async fn fence(&self, conn: &mut DB::Connection, id: &str) -> Result<(), Error> {
        let token = match (
            &self.runner_lock,
            FENCE.try_with(|fence| fence.token.clone()),
        ) {
            (_, Ok(token)) => token,
            (RunnerLock::Advisory, Err(_)) => return Ok(()),
            (RunnerLock::Lease { .. }, Err(_)) => {
                return Err(Error::LeaseLost {
                    id: id.to_string(),
                    reason: "this transaction runs outside the task that holds the lease, so \
                             it cannot check it (a bug in datamig: please report it)"
                        .to_string(),
                });
            }
        };
        match DB::lease_lost(conn, &self.ledger, &token).await? {
            None => Ok(()),
            Some(reason) => Err(Error::LeaseLost {
                id: id.to_string(),
                reason,
            }),
        }
    }
}

/// The runner's connection: closed when dropped where the runner lock belongs to the
/// session (PostgreSQL), so that a run dropped half-way (a timeout, Ctrl-C) never hands a
/// locked session to the pool; handed back to the pool only by a run that unlocked it and
/// was asked to (`Migrator::reuse_runner_connection`).
struct RunnerConnection<DB: Backend> {
    conn: PoolConnection<DB>,
    close: bool,
}

impl<DB: Backend> Drop for RunnerConnection<DB> {
    fn drop(&mut self) {
        if self.close {
            self.conn.close_on_drop();
        }
    }
}

/// The background task that renews a lease every third of its length, on a connection of
/// its own (not the pool's, which may have no connection to spare). It stops when dropped,
/// or once the lease is found lost; the transactions' fence is what keeps a late commit
/// out, this only keeps the lease alive.
struct Renewal {
    task: tokio::task::JoinHandle<()>,
}

impl Renewal {
    fn start<DB: Backend>(
        pool: &sqlx::Pool<DB>,
        ledger: &LedgerConfig,
        token: &LockToken,
        ttl: Duration,
    ) -> Self {
        let options = pool.connect_options();
        let ledger = ledger.clone();
        let token = token.as_str().to_string();
        let task = tokio::spawn(async move {
            let mut conn: Option<DB::Connection> = None;
            loop {
                tokio::time::sleep(ttl / 3).await;
                if conn.is_none() {
                    conn = DB::Connection::connect_with(&options).await.ok();
                }
                let Some(c) = conn.as_mut() else { continue };
                match DB::renew_lease(c, &ledger, &token, ttl).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    // A lost connection is made again at the next renewal.
                    Err(_) => conn = None,
                }
            }
            if let Some(c) = conn {
                let _ = c.close().await;
            }
        });
        Renewal { task }
    }
}

impl Drop for Renewal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_transaction_outside_the_task_holding_the_lease_fails_closed() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let under_lease = Migrator::new(pool.clone()).runner_lock(RunnerLock::lease());
        let mut conn = pool.acquire().await.unwrap();
        // The run's task holds the lease; a task spawned from it does not see it.
        let outside =
            tokio::spawn(
                async move { under_lease.fence(&mut conn, "20250101_0000_spawned").await },
            )
            .await
            .unwrap();
        match outside {
            Err(Error::LeaseLost { id, reason }) => {
                assert_eq!(id, "20250101_0000_spawned");
                assert!(reason.contains("outside the task"), "{reason}");
            }
            other => panic!("a fence outside the lease's task passed: {other:?}"),
        }
        // Under the advisory lock there is no lease to check.
        let advisory = Migrator::new(pool.clone());
        let mut conn = pool.acquire().await.unwrap();
        advisory
            .fence(&mut conn, "20250101_0000_spawned")
            .await
            .unwrap();
    }
}
