//! One holding of the runner lock by this process.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;

use super::values::hex;

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
