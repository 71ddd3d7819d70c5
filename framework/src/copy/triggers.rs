//! Whether each table loads with the target's triggers on or off, and why (pure, but for
//! the one question the target answers: whether the role may set
//! `session_replication_role`).
//!
//! Off is `session_replication_role = replica` for the table's transactions: the server
//! then checks no foreign key row by row (the copy checks each one itself, set-based over
//! each chunk) and no trigger of the table's own fires, except those enabled `ALWAYS` or
//! `REPLICA`: with `--triggers off` those are disabled within each chunk's transaction
//! and enabled again before it commits, so that, as with `pg_dump --disable-triggers`, no
//! trigger fires.

use sqlx::postgres::PgConnection;

use super::catalog::{Table, Trigger, display};
use super::context::During;
use super::options::{CopyMode, Triggers};
use crate::backend::postgres::query_scalar;
use crate::error::Error;

/// How one table loads.
#[derive(Clone, Debug, Default)]
pub(crate) struct TriggerChoice {
    /// In `session_replication_role = replica`, its foreign keys checked by the copy.
    pub(crate) off: bool,
    /// Why it keeps its triggers, or what turning them off does beyond the replica role.
    pub(crate) why: Option<String>,
    /// Triggers that fire in the replica role too (`ALWAYS`, `REPLICA`), disabled within
    /// each chunk's transaction (`--triggers off`).
    pub(crate) disable: Vec<Trigger>,
}

impl TriggerChoice {
    /// Whether `trigger` fires while the table loads: in the origin role (triggers on)
    /// those enabled `ORIGIN` or `ALWAYS`; in the replica role those enabled `REPLICA` or
    /// `ALWAYS`, unless disabled for the load.
    pub(crate) fn fires(&self, trigger: &Trigger) -> bool {
        if self.off {
            matches!(trigger.enabled.as_str(), "A" | "R")
                && !self
                    .disable
                    .iter()
                    .any(|d| d.name == trigger.name && d.on == trigger.on)
        } else {
            matches!(trigger.enabled.as_str(), "O" | "A")
        }
    }
}

/// Whether the target role may set `session_replication_role`.
pub(crate) async fn may_disable_triggers(conn: &mut PgConnection) -> Result<bool, Error> {
    query_scalar(
        "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
             OR (current_setting('server_version_num')::int >= 150000
                 AND has_parameter_privilege('session_replication_role', 'SET'))",
    )
    .fetch_one(conn)
    .await
    .during(|| "asking the target whether its role may set session_replication_role".into())
}

/// How `target` loads under `triggers` in `mode`, the role being allowed to set
/// `session_replication_role` or not (`may`). `auto` weighs only the triggers the load's
/// statements fire: those on `INSERT`, and with `--mode merge` those on `UPDATE` too.
pub(crate) fn choose(
    triggers: Triggers,
    mode: CopyMode,
    may: bool,
    target: &Table,
) -> TriggerChoice {
    let fired = |t: &&Trigger| t.on_insert || (mode == CopyMode::Merge && t.on_update);
    let described = |t: &Trigger| {
        let on = if t.on == target.name {
            String::new()
        } else {
            format!(" on partition {}", display(&t.on))
        };
        format!("trigger {}{on} (function {})", t.name, t.function)
    };
    match triggers {
        Triggers::On => TriggerChoice {
            off: false,
            why: Some("--triggers on".into()),
            disable: Vec::new(),
        },
        Triggers::Off => {
            let disable: Vec<Trigger> = target
                .triggers
                .iter()
                .filter(|t| t.enabled == "A" || t.enabled == "R")
                .cloned()
                .collect();
            let why = (!disable.is_empty()).then(|| {
                format!(
                    "{} fire{} in the replica role too: disabled within each chunk's transaction and enabled again before it commits, as pg_dump --disable-triggers does",
                    disable.iter().map(described).collect::<Vec<_>>().join(", "),
                    if disable.len() == 1 { "s" } else { "" }
                )
            });
            TriggerChoice {
                off: true,
                why,
                disable,
            }
        }
        Triggers::Auto => {
            let keep = |why: String| TriggerChoice {
                off: false,
                why: Some(why),
                disable: Vec::new(),
            };
            if !may {
                return keep("the target role may not set session_replication_role (a superuser may, or a role granted SET ON PARAMETER session_replication_role): the server checks its foreign keys row by row".into());
            }
            if let Some(t) = target
                .triggers
                .iter()
                .filter(fired)
                .find(|t| t.enabled == "O")
            {
                return keep(format!(
                    "{} would not fire with triggers off: it keeps its triggers, and the server checks its foreign keys row by row (--triggers off skips the trigger)",
                    described(t)
                ));
            }
            if let Some(t) = target
                .triggers
                .iter()
                .filter(fired)
                .find(|t| t.enabled == "R")
            {
                return keep(format!(
                    "{} fires only in the replica role and would start firing with triggers off: it keeps its triggers",
                    described(t)
                ));
            }
            if let Some(fk) = target.foreign_keys.iter().find(|fk| fk.match_full) {
                return keep(format!(
                    "foreign key {} is MATCH FULL, which the copy's own check does not follow: the server checks it row by row",
                    fk.name
                ));
            }
            TriggerChoice {
                off: true,
                why: None,
                disable: Vec::new(),
            }
        }
    }
}

/// Problems of the choices: `--triggers off` where the role may not set
/// `session_replication_role`, or may not disable a trigger that fires in the replica
/// role too.
pub(crate) fn check(
    triggers: Triggers,
    may: bool,
    planned: &[(String, &Table, &TriggerChoice)],
    problems: &mut Vec<String>,
) {
    if triggers == Triggers::Off && !may {
        problems.push(
            "--triggers off sets session_replication_role, which the target role may not: copy as a superuser, GRANT SET ON PARAMETER session_replication_role TO the role (PostgreSQL 15 and later), or copy with --triggers on".to_string(),
        );
    }
    for (table, target, choice) in planned {
        if !choice.disable.is_empty() && !target.owned {
            problems.push(format!(
                "{}: --triggers off disables {} within each chunk's transaction (they fire in the replica role too), which only the table's owner or a superuser may: copy as one, or with --triggers auto",
                table,
                choice
                    .disable
                    .iter()
                    .map(|t| format!("trigger {} on {}", t.name, display(&t.on)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(triggers: &[(&str, &str)]) -> Table {
        let name = ("public".to_string(), "orders".to_string());
        Table {
            name: name.clone(),
            triggers: triggers
                .iter()
                .map(|(n, e)| Trigger {
                    name: n.to_string(),
                    on: name.clone(),
                    enabled: e.to_string(),
                    function: "public.f".into(),
                    before_insert_row: true,
                    on_insert: true,
                    on_update: true,
                })
                .collect(),
            ..Table::default()
        }
    }

    #[test]
    fn auto_turns_off_only_what_changes_nothing_but_the_speed() {
        assert!(choose(Triggers::Auto, CopyMode::Empty, true, &table(&[])).off);
        assert!(
            choose(
                Triggers::Auto,
                CopyMode::Empty,
                true,
                &table(&[("a", "A"), ("d", "D")])
            )
            .off
        );
        let kept = choose(
            Triggers::Auto,
            CopyMode::Empty,
            true,
            &table(&[("audited", "O")]),
        );
        assert!(!kept.off);
        assert!(kept.why.unwrap().contains("trigger audited"));
        assert!(!choose(Triggers::Auto, CopyMode::Empty, true, &table(&[("r", "R")])).off);
        assert!(!choose(Triggers::Auto, CopyMode::Empty, false, &table(&[])).off);
    }

    #[test]
    fn off_disables_what_fires_in_the_replica_role_too() {
        let off = choose(
            Triggers::Off,
            CopyMode::Empty,
            true,
            &table(&[("a", "A"), ("o", "O"), ("r", "R")]),
        );
        assert!(off.off);
        let names: Vec<&str> = off.disable.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "r"]);
    }

    #[test]
    fn auto_weighs_only_the_triggers_the_load_fires() {
        let mut t = table(&[("touch_updated_at", "O")]);
        t.triggers[0].on_insert = false;
        t.triggers[0].before_insert_row = false;
        assert!(choose(Triggers::Auto, CopyMode::Empty, true, &t).off);
        assert!(choose(Triggers::Auto, CopyMode::DangerouslyTruncate, true, &t).off);
        let merge = choose(Triggers::Auto, CopyMode::Merge, true, &t);
        assert!(!merge.off, "a merge updates rows");
        assert!(merge.why.unwrap().contains("touch_updated_at"));
    }

    #[test]
    fn what_fires_while_a_table_loads() {
        let t = table(&[("a", "A"), ("o", "O"), ("r", "R"), ("d", "D")]);
        let firing = |choice: TriggerChoice| -> Vec<String> {
            t.triggers
                .iter()
                .filter(|x| choice.fires(x))
                .map(|x| x.name.clone())
                .collect()
        };
        assert_eq!(
            firing(choose(Triggers::On, CopyMode::Empty, true, &t)),
            ["a", "o"]
        );
        assert!(firing(choose(Triggers::Off, CopyMode::Empty, true, &t)).is_empty());
        let replica = TriggerChoice {
            off: true,
            ..TriggerChoice::default()
        };
        assert_eq!(firing(replica), ["a", "r"]);
    }
}
