//! What the statements written once (`shared.rs`) need to know about a database: the few
//! ways the backends differ there, as data.

/// The differences between the backends' SQL that the shared statements take into account.
/// (Public only to the sealed backend steps; not reachable from outside the crate.)
#[derive(Debug, Clone, Copy)]
pub struct Dialect {
    /// Who a ledger row (`applied_by`) and a run-history row (`db_user`) name as having
    /// done it.
    pub(crate) actor: Actor,
    /// Whether a statement stays prepared on its connection, under a name, for the next
    /// time (sqlx's `persistent`). PostgreSQL's are all unnamed: through a transaction
    /// pooler a named statement may be met, or missed, by another client's session.
    pub(crate) persistent: bool,
}

/// Who did what a ledger or run-history row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Actor {
    /// The database's own user, `current_user` in the statement (PostgreSQL).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    DatabaseUser,
    /// The operating-system user running datamig, bound as a parameter (SQLite, which has
    /// no users of its own).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    OsUser,
}

impl Dialect {
    /// The SQL naming who did it, where the statement's next free parameter is `$n`.
    pub(crate) fn actor_sql(&self, n: usize) -> String {
        match self.actor {
            Actor::DatabaseUser => "current_user".to_string(),
            Actor::OsUser => format!("${n}"),
        }
    }

    /// The value bound at that parameter, where there is one.
    pub(crate) fn actor_value(&self) -> Option<String> {
        match self.actor {
            Actor::DatabaseUser => None,
            Actor::OsUser => Some(os_user()),
        }
    }
}

/// The operating-system user running datamig, recorded as `applied_by` where the database
/// has no users of its own (SQLite).
fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::{Actor, Dialect};

    #[test]
    fn the_actor_is_current_user_or_a_bound_parameter() {
        let postgres = Dialect {
            actor: Actor::DatabaseUser,
            persistent: false,
        };
        let sqlite = Dialect {
            actor: Actor::OsUser,
            persistent: true,
        };
        assert_eq!(postgres.actor_sql(17), "current_user");
        assert_eq!(postgres.actor_value(), None);
        assert_eq!(sqlite.actor_sql(17), "$17");
        assert!(sqlite.actor_value().is_some());
    }
}
