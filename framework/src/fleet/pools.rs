//! The connections of a fleet: one pool a database, shared by its targets (the tenant
//! schemas of one database reuse each other's sessions, each reset for the target it
//! serves), opened when the first of them starts and closed once the last has ended.
//!
//! Why: a new PostgreSQL session costs the server a process, the authentication and cold
//! caches, a few milliseconds of CPU, which is most of what a tenant with nothing pending
//! costs. What holds for a whole database is checked once, when its pool opens (whether
//! its server answers at all, and whether a transaction pooler stands in between), not
//! once a tenant.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use sqlx::Pool;
use tokio::sync::OnceCell;

use crate::error::Error;

use super::connect::FleetBackend;
use super::target::Target;

/// The pools of a fleet's databases.
pub(super) struct Pools<DB: FleetBackend> {
    databases: Mutex<HashMap<String, Database<DB>>>,
}

/// One database: its pool once opened, and how many of its targets have not ended.
struct Database<DB: FleetBackend> {
    pool: Arc<OnceCell<Pool<DB>>>,
    left: usize,
}

impl<DB: FleetBackend> Pools<DB> {
    /// No pool open yet, for `targets`.
    pub(super) fn new<'t>(targets: impl IntoIterator<Item = &'t Target>) -> Self {
        let mut databases: HashMap<String, Database<DB>> = HashMap::new();
        for target in targets {
            databases
                .entry(target.database().to_string())
                .or_insert_with(|| Database {
                    pool: Arc::new(OnceCell::new()),
                    left: 0,
                })
                .left += 1;
        }
        Pools {
            databases: Mutex::new(databases),
        }
    }

    /// The pool of `target`'s database: opened by `open` for the first of its targets
    /// (the others wait for it); opened again by the next one if that failed.
    pub(super) async fn get<F: Future<Output = Result<Pool<DB>, Error>>>(
        &self,
        target: &Target,
        open: impl FnOnce() -> F,
    ) -> Result<Pool<DB>, Error> {
        let cell = self
            .databases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(target.database())
            .map(|d| Arc::clone(&d.pool))
            .ok_or_else(|| {
                Error::Config(format!("target {} is not in this fleet", target.name()))
            })?;
        cell.get_or_try_init(open).await.cloned()
    }

    /// `target` has ended: its database's pool closes if it was the last of them.
    pub(super) async fn done(&self, target: &Target) {
        let closing = {
            let mut databases = self.databases.lock().unwrap_or_else(|p| p.into_inner());
            databases.get_mut(target.database()).and_then(|d| {
                d.left = d.left.saturating_sub(1);
                (d.left == 0).then(|| d.pool.get().cloned()).flatten()
            })
        };
        if let Some(pool) = closing {
            pool.close().await;
        }
    }

    /// Closes every pool still open (of databases with targets not reached).
    pub(super) async fn close_all(&self) {
        let open: Vec<Pool<DB>> = self
            .databases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(|d| d.pool.get().cloned())
            .collect();
        for pool in open {
            pool.close().await;
        }
    }
}
