//! Throttling: before each batch the runner asks its health checks whether the database
//! is under stress, and waits while one says it is.

use std::sync::Arc;
use std::time::Duration;

use super::apply::Failure;
use super::report::Progress;
use super::walk::Position;
use super::{Migrator, StopSignal};
use crate::backend::{Backend, pinned};
use crate::error::Error;
use crate::migration::{BoxFuture, Migration};

/// What a health check says about the database before a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Go on.
    Healthy,
    /// Wait: the database is under stress, for this reason (shown in the progress output
    /// and the JSON events).
    Stressed(String),
}

/// A health check: an async function of a connection (the runner's own, outside any
/// migration transaction) that says whether the database can take the next batch.
pub(crate) type HealthCheck<DB> = Arc<
    dyn for<'c> Fn(
            &'c mut <DB as sqlx::Database>::Connection,
        ) -> BoxFuture<'c, anyhow::Result<Health>>
        + Send
        + Sync,
>;

impl<DB: Backend> Migrator<DB> {
    /// Adds a health check, consulted before every batch of a batched migration: while it
    /// answers [`Health::Stressed`], the runner waits (polling every
    /// [`Migrator::throttle_interval`]) and reports why in its progress events. A check
    /// that fails (returns an error) fails the migration, which the next run resumes.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), datamig::Error> {
    /// use datamig::Health;
    ///
    /// datamig::Migrator::new(pool)
    ///     .health_check(|conn| {
    ///         Box::pin(async move {
    ///             let active: i64 = sqlx::query_scalar(
    ///                 "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'",
    ///             )
    ///             .fetch_one(conn)
    ///             .await?;
    ///             Ok(if active > 40 {
    ///                 Health::Stressed(format!("{active} active sessions"))
    ///             } else {
    ///                 Health::Healthy
    ///             })
    ///         })
    ///     })
    ///     .run()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn health_check<F>(mut self, check: F) -> Self
    where
        F: for<'c> Fn(&'c mut DB::Connection) -> BoxFuture<'c, anyhow::Result<Health>>
            + Send
            + Sync
            + 'static,
    {
        self.health_checks.push(Arc::new(check));
        self
    }

    /// How often a throttled runner asks its health checks again (default 1 s).
    pub fn throttle_interval(mut self, interval: Duration) -> Self {
        self.throttle_interval = interval;
        self
    }

    /// Waits until every health check says the database is healthy. Stops early, as the
    /// batch loop would, when the run is asked to stop or the migration is paused.
    pub(super) async fn wait_until_healthy(
        &self,
        conn: &mut DB::Connection,
        migration: &'static Migration,
        position: &Position,
    ) -> Result<(), Failure> {
        if self.health_checks.is_empty() {
            return Ok(());
        }
        loop {
            let mut reasons = Vec::new();
            for check in &self.health_checks {
                let health = pinned::<DB, _>(conn, async |c| {
                    check(c)
                        .await
                        .map_err(|err| Error::Config(format!("its health check failed: {err:#}")))
                })
                .await;
                match health {
                    Ok(Health::Healthy) => {}
                    Ok(Health::Stressed(why)) => reasons.push(why),
                    Err(Error::Config(message)) => {
                        return Err(Failure::Migration {
                            message,
                            panicked: false,
                            source: None,
                        });
                    }
                    Err(err) => {
                        return Err(Failure::Migration {
                            message: format!("its health check failed: {err}"),
                            panicked: false,
                            source: Some(Box::new(err)),
                        });
                    }
                }
            }
            if reasons.is_empty() {
                return Ok(());
            }
            if let Some(report) = &self.progress {
                let mut event = Progress::waiting(migration.id(), reasons.join("; "));
                event.batches = position.batches;
                event.keys_done = position.keys;
                event.checkpoint = position.checkpoint.clone();
                report(&event);
            }
            if self.stop.as_ref().is_some_and(StopSignal::is_stopped) {
                return Err(Failure::Stopped {
                    batches: position.batches,
                    checkpoint: position.checkpoint.clone(),
                });
            }
            let paused = pinned::<DB, _>(conn, async |c| {
                Ok(DB::pause_state(c, &self.ledger, Some(migration.id())).await?)
            })
            .await
            .map_err(Failure::Other)?;
            if let Some(pause) = paused.into_iter().next() {
                return Err(Failure::Paused(pause));
            }
            tokio::time::sleep(self.throttle_interval).await;
        }
    }
}

#[cfg(feature = "postgres")]
impl Migrator<crate::Postgres> {
    /// Throttles batches on replication: before each batch, waits while any standby
    /// streaming from this server replays more than `max` behind
    /// (`pg_stat_replication.replay_lag`).
    ///
    /// The runner's role must see the lag: a superuser, or a member of `pg_monitor`
    /// (`GRANT pg_monitor TO app`); otherwise the check fails instead of never throttling.
    pub fn max_replay_lag(self, max: Duration) -> Self {
        self.health_check(move |conn| Box::pin(replay_lag(conn, max)))
    }
}

/// The built-in check of [`Migrator::max_replay_lag`].
#[cfg(feature = "postgres")]
async fn replay_lag(conn: &mut sqlx::PgConnection, max: Duration) -> anyhow::Result<Health> {
    /// A standby's name, address, state and replay lag in seconds.
    type Standby = (Option<String>, Option<String>, Option<String>, Option<f64>);
    let standbys: Vec<Standby> = sqlx::query_as(
        "SELECT application_name, client_addr::text, state,
                    EXTRACT(epoch FROM replay_lag)::float8
             FROM pg_stat_replication",
    )
    .persistent(false)
    .fetch_all(conn)
    .await?;
    let mut behind = Vec::new();
    for (name, addr, state, lag) in standbys {
        if state.is_none() {
            anyhow::bail!(
                "this role cannot see the replication lag of standbys (pg_stat_replication \
                 shows it to superusers and members of pg_monitor only): GRANT pg_monitor TO \
                 the role datamig runs as, or drop the replay-lag limit"
            );
        }
        let lag = lag.unwrap_or(0.0);
        if lag > max.as_secs_f64() {
            behind.push(format!(
                "standby {}{} replays {lag:.1}s behind (limit {:.1}s)",
                name.unwrap_or_default(),
                addr.map(|a| format!(" ({a})")).unwrap_or_default(),
                max.as_secs_f64()
            ));
        }
    }
    Ok(if behind.is_empty() {
        Health::Healthy
    } else {
        Health::Stressed(behind.join("; "))
    })
}
