//! The plan of a run: what to do with each migration, derived from the migrations and the
//! ledger alone (no database), so it is unit-tested.

use std::collections::BTreeMap;

use crate::error::{Drift, Error};
use crate::ledger::{Action, LedgerEntry, LedgerWrite};
use crate::migration::Migration;

/// What a run must do, derived from the migrations and the ledger.
pub(super) struct Plan {
    /// The migrations to run, by id.
    pub(super) steps: BTreeMap<String, Step>,
    /// Applied migrations whose code changed and that may not re-run on change.
    pub(super) drifted: Vec<Drift>,
    /// Ledger rows no migration of this build has.
    pub(super) unknown: Vec<String>,
    /// Pending migrations that have no code for the connected backend: skipped.
    pub(super) not_for_backend: Vec<String>,
}

/// What a run applies.
pub(super) enum Mode {
    /// Every pending migration.
    Pending,
    /// One applied migration, again.
    Rerun(String),
}

/// What to do with one migration.
#[derive(Debug)]
pub(super) struct Step {
    pub(super) action: Action,
    /// For a batched migration part-way through: its ledger row (checkpoint, counts).
    pub(super) resume: Option<LedgerEntry>,
    /// For a re-run: the ledger row it replaces. The ledger write checks the row is still
    /// this one, as a batch checks its checkpoint.
    pub(super) replaces: Option<LedgerEntry>,
    /// A cancelled migration started again (`run --restart`): from its first key, whatever
    /// its checkpoint.
    pub(super) restart: bool,
}

impl Step {
    /// How the first write of this step's ledger row is made.
    pub(super) fn ledger_write(&self) -> LedgerWrite {
        match (&self.action, &self.replaces) {
            (Action::Rerun, Some(row)) => LedgerWrite::Rerun {
                checksum: row.checksum.clone(),
                run_count: row.run_count,
            },
            _ => LedgerWrite::Insert,
        }
    }

    fn new(action: Action) -> Self {
        Step {
            action,
            resume: None,
            replaces: None,
            restart: false,
        }
    }
}

impl Plan {
    /// The plan of a run of every pending migration. Each migration comes with whether it
    /// has code for the connected backend.
    pub(super) fn new<'m>(
        migrations: impl IntoIterator<Item = (&'m Migration, bool)>,
        ledger: Vec<LedgerEntry>,
    ) -> Self {
        let mut entries: BTreeMap<String, LedgerEntry> =
            ledger.into_iter().map(|e| (e.id.clone(), e)).collect();
        let mut plan = Plan {
            steps: BTreeMap::new(),
            drifted: Vec::new(),
            unknown: Vec::new(),
            not_for_backend: Vec::new(),
        };
        for (m, runs_here) in migrations {
            let step = match entries.remove(m.id()) {
                None => Step::new(Action::Apply),
                Some(e) if e.checksum != m.checksum() || e.revision != m.revision() => {
                    if m.reruns_on_change() && runs_here {
                        // A changed migration that may re-run starts over, batched or not.
                        Step {
                            replaces: Some(e),
                            ..Step::new(Action::Rerun)
                        }
                    } else if m.reruns_on_change() {
                        // It would re-run, but not here: the backend that has its code does.
                        continue;
                    } else {
                        plan.drifted.push(Drift {
                            id: e.id,
                            applied_checksum: e.checksum,
                            code_checksum: m.checksum().to_string(),
                            applied_revision: e.revision,
                            code_revision: m.revision(),
                        });
                        continue;
                    }
                }
                Some(e) if e.is_running() => Step {
                    resume: Some(e),
                    ..Step::new(Action::Resume)
                },
                Some(_) => continue,
            };
            if runs_here {
                plan.steps.insert(m.id().to_string(), step);
            } else {
                // One crate may hold migrations for several backends: a migration written
                // for another one is reported and skipped, not a failure of the run.
                plan.not_for_backend.push(m.id().to_string());
            }
        }
        // A row no registered migration has was written by another build (often a newer
        // release): it is reported, never deleted.
        plan.unknown = entries.into_keys().collect();
        plan
    }

    /// The plan of a forced re-run of `id`, which must be in the ledger.
    pub(super) fn rerun(id: &str, ledger: Vec<LedgerEntry>) -> Result<Self, Error> {
        let Some(entry) = ledger.into_iter().find(|e| e.id == id) else {
            return Err(Error::Config(format!(
                "migration {id} is not applied yet, so it cannot be re-run: apply it with `run`"
            )));
        };
        let mut steps = BTreeMap::new();
        steps.insert(
            id.to_string(),
            Step {
                replaces: Some(entry),
                ..Step::new(Action::Rerun)
            },
        );
        Ok(Plan {
            steps,
            drifted: Vec::new(),
            unknown: Vec::new(),
            not_for_backend: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    static A: Migration = Migration::__new("20240101_0000_a", "a", "sum-a", "a.rs", 1);
    static B: Migration = Migration::__new("20240101_0001_b", "b", "sum-b", "b.rs", 1);
    static C: Migration =
        Migration::__new("20240101_0002_c", "c", "sum-c", "c.rs", 1).__rerun_on_change(true);

    fn entry(id: &str, checksum: &str, status: &str) -> LedgerEntry {
        LedgerEntry {
            id: id.to_string(),
            checksum: checksum.to_string(),
            revision: 0,
            description: String::new(),
            started_at: Utc::now(),
            finished_at: Utc::now(),
            duration_ms: 0,
            rows_affected: 0,
            notes: None,
            applied_by: "me".to_string(),
            host: "here".to_string(),
            app_version: None,
            run_count: 1,
            status: status.to_string(),
            checkpoint: None,
            batches: 0,
        }
    }

    #[test]
    fn an_empty_ledger_applies_everything() {
        let plan = Plan::new([(&A, true), (&B, true)], Vec::new());
        let ids: Vec<&String> = plan.steps.keys().collect();
        assert_eq!(ids, ["20240101_0000_a", "20240101_0001_b"]);
        assert!(plan.steps.values().all(|s| s.action == Action::Apply));
        assert!(plan.drifted.is_empty() && plan.unknown.is_empty());
    }

    #[test]
    fn applied_migrations_are_left_and_unknown_rows_reported() {
        let plan = Plan::new(
            [(&A, true)],
            vec![
                entry(A.id(), "sum-a", "applied"),
                entry("20990101_0000_newer", "x", "applied"),
            ],
        );
        assert!(plan.steps.is_empty());
        assert_eq!(plan.unknown, ["20990101_0000_newer"]);
    }

    #[test]
    fn a_changed_checksum_is_drift_unless_the_migration_reruns_on_change() {
        let plan = Plan::new(
            [(&A, true), (&C, true)],
            vec![
                entry(A.id(), "old", "applied"),
                entry(C.id(), "old", "applied"),
            ],
        );
        assert_eq!(plan.drifted.len(), 1);
        assert_eq!(plan.drifted[0].id, A.id());
        let rerun = &plan.steps[C.id()];
        assert_eq!(rerun.action, Action::Rerun);
        assert_eq!(
            rerun.replaces.as_ref().map(|e| e.checksum.as_str()),
            Some("old")
        );
    }

    #[test]
    fn a_running_batched_migration_resumes() {
        let plan = Plan::new([(&A, true)], vec![entry(A.id(), "sum-a", "running")]);
        let step = &plan.steps[A.id()];
        assert_eq!(step.action, Action::Resume);
        assert!(step.resume.is_some());
    }

    #[test]
    fn a_migration_for_another_backend_is_skipped_not_unknown() {
        let plan = Plan::new(
            [(&A, false), (&B, false)],
            vec![entry(B.id(), "sum-b", "applied")],
        );
        assert!(plan.steps.is_empty());
        assert_eq!(plan.not_for_backend, [A.id()]);
        assert!(plan.unknown.is_empty(), "its ledger row is known");
    }

    #[test]
    fn a_rerun_needs_a_ledger_row_and_expects_it() {
        assert!(Plan::rerun(A.id(), Vec::new()).is_err());
        let plan = Plan::rerun(A.id(), vec![entry(A.id(), "sum-a", "applied")]).unwrap();
        let step = &plan.steps[A.id()];
        assert_eq!(step.action, Action::Rerun);
        assert_eq!(step.replaces.as_ref().map(|e| e.run_count), Some(1));
    }
}
