//! Which unit of work a free worker takes next: units whose parents are loaded, first of
//! a table no other worker is loading (two loads into one B-tree cost the target more CPU
//! than two into two), then in key order; where none is, a unit whose foreign keys the
//! copy checks itself and whose parents' chunks are all being loaded (it streams its rows
//! now and checks them once its parents have committed, see `Shared::parents_committed`);
//! and what is left when a table fails (its chunks, and those of the tables that
//! reference it, are not started). Pure and unit-tested.
//!
//! A unit started early never waits for a chunk nobody has taken: every chunk it waits
//! for is running on a worker of its own, and waits, if at all, only for chunks running
//! likewise, so the load always moves on.

use std::collections::BTreeMap;

use super::chunk::Chunk;
use super::plan::Planned;

/// One transaction on the target: a chunk, or the chunks of a cycle's tables.
pub(super) struct Unit {
    pub(super) parts: Vec<(usize, Chunk)>,
}

impl Unit {
    /// The tables of this unit, each once.
    pub(super) fn tables(&self) -> Vec<usize> {
        let mut tables: Vec<usize> = self.parts.iter().map(|(t, _)| *t).collect();
        tables.sort_unstable();
        tables.dedup();
        tables
    }
}

/// What a free worker gets.
pub(super) enum Take {
    /// The unit to load.
    Unit(Unit),
    /// None is ready yet: wait for a unit to commit.
    Wait,
    /// None is left, or the copy stops.
    Done,
    /// Nothing runs and nothing can start: the order is wrong (a bug, reported as such).
    Stuck,
}

/// The units left to load, and what is loading.
pub(super) struct Schedule {
    pub(super) queue: Vec<Unit>,
    /// Chunks not yet committed, per table.
    pub(super) left: Vec<usize>,
    /// Chunks committed, by any run.
    pub(super) committed: usize,
    /// Units taken and not yet finished.
    pub(super) running: usize,
    /// Units taken and not yet finished, per table.
    pub(super) loading: Vec<usize>,
    /// Tables loaded by one unit at a time (their triggers are disabled within each
    /// chunk's transaction, which locks the table).
    pub(super) exclusive: Vec<bool>,
    /// Tables whose foreign keys the copy checks itself before each chunk commits (loaded
    /// with triggers off): their units may start while their parents' last chunks load.
    pub(super) checked_late: Vec<bool>,
    /// Tables that failed, or reference one that did: none of their units starts.
    pub(super) failed: Vec<bool>,
    pub(super) stop: bool,
}

/// The tables each table waits for: those it references, except those of its own cycle
/// (they load with it, with deferred constraints, or in any order with triggers off).
pub(super) fn parents(planned: &[Planned]) -> Vec<Vec<usize>> {
    let index: BTreeMap<&str, usize> = planned
        .iter()
        .enumerate()
        .map(|(i, p)| (p.plan.table.as_str(), i))
        .collect();
    planned
        .iter()
        .map(|p| {
            p.plan
                .after
                .iter()
                .filter(|t| !p.plan.cycle.contains(t))
                .filter_map(|t| index.get(t.as_str()).copied())
                .collect()
        })
        .collect()
}

impl Schedule {
    /// The units of the chunks not yet done, in load order; the chunks of a cycle's tables
    /// in one unit.
    pub(super) fn new(planned: &[Planned], chunks: Vec<Vec<Chunk>>) -> Schedule {
        let left: Vec<usize> = chunks
            .iter()
            .map(|c| c.iter().filter(|c| !c.done).count())
            .collect();
        let committed = chunks.iter().flatten().filter(|c| c.done).count();
        let mut queue: Vec<Unit> = Vec::new();
        let mut grouped: BTreeMap<Vec<String>, usize> = BTreeMap::new();
        for (table, table_chunks) in chunks.into_iter().enumerate() {
            let p = &planned[table];
            for chunk in table_chunks.into_iter().filter(|c| !c.done) {
                if !p.plan.cycle.is_empty() && p.plan.whole.is_some() {
                    let mut members = p.plan.cycle.clone();
                    members.push(p.plan.table.clone());
                    members.sort();
                    if let Some(&at) = grouped.get(&members) {
                        queue[at].parts.push((table, chunk));
                        continue;
                    }
                    grouped.insert(members, queue.len());
                }
                queue.push(Unit {
                    parts: vec![(table, chunk)],
                });
            }
        }
        Schedule {
            queue,
            left,
            committed,
            running: 0,
            loading: vec![0; planned.len()],
            exclusive: planned
                .iter()
                .map(|p| !p.triggers.disable.is_empty())
                .collect(),
            checked_late: planned.iter().map(|p| p.triggers.off).collect(),
            failed: vec![false; planned.len()],
            stop: false,
        }
    }

    /// The next unit for a free worker; `parents[t]`: the tables table `t` waits for.
    pub(super) fn take(&mut self, parents: &[Vec<usize>]) -> Take {
        if self.stop || self.queue.is_empty() {
            return Take::Done;
        }
        // Of the units whose parents are loaded, the first of a table the fewest workers
        // are loading: two loads into one table contend for its indexes' pages (only one
        // of them appends at the right edge of a B-tree), two loads into two tables don't.
        // Where none is ready, the same of those that may start early.
        let ready = self
            .queue
            .iter()
            .enumerate()
            .filter_map(|(i, unit)| self.readiness(unit, parents).map(|early| (i, unit, early)))
            .min_by_key(|(i, unit, early)| {
                let loading = unit
                    .parts
                    .iter()
                    .map(|(t, _)| self.loading[*t])
                    .max()
                    .unwrap_or(0);
                (*early, loading, *i)
            })
            .map(|(i, _, _)| i);
        match ready {
            Some(i) => {
                self.running += 1;
                let unit = self.queue.remove(i);
                for table in unit.tables() {
                    self.loading[table] += 1;
                }
                Take::Unit(unit)
            }
            None if self.running == 0 => Take::Stuck,
            None => Take::Wait,
        }
    }

    /// Whether `unit` may start: `Some(false)` when its parents are loaded, `Some(true)`
    /// when it may start early (its foreign keys checked late, each parent's chunks left
    /// all taken by workers), `None` when it must wait.
    fn readiness(&self, unit: &Unit, parents: &[Vec<usize>]) -> Option<bool> {
        // A unit waits for its parents before its check only where the copy checks every
        // one of its tables (a table the target checks would check during the load).
        let checked_late = unit.parts.iter().all(|(t, _)| self.checked_late[*t]);
        let mut early = false;
        for (table, _) in &unit.parts {
            if self.exclusive[*table] && self.loading[*table] > 0 {
                return None;
            }
            for parent in &parents[*table] {
                if self.left[*parent] == 0 || unit.parts.iter().any(|(t, _)| t == parent) {
                    continue;
                }
                let taken = !self
                    .queue
                    .iter()
                    .any(|u| u.parts.iter().any(|(t, _)| t == parent));
                if !(checked_late && taken && !self.failed[*parent]) {
                    return None;
                }
                early = true;
            }
        }
        Some(early)
    }

    /// Whether the parents of `unit`'s tables (outside the unit) have all committed:
    /// `Some(true)` when they have, `Some(false)` while some still load, `None` when one of
    /// them failed meanwhile (it will not finish) or the copy stops. A chunk of the unit's
    /// own table refused meanwhile does not stop it: its chunks running still commit.
    pub(super) fn parents_committed(&self, unit: &Unit, parents: &[Vec<usize>]) -> Option<bool> {
        if self.stop {
            return None;
        }
        let mut committed = true;
        for (table, _) in &unit.parts {
            for parent in &parents[*table] {
                if self.left[*parent] == 0 || unit.parts.iter().any(|(t, _)| t == parent) {
                    continue;
                }
                if self.failed[*parent] {
                    return None;
                }
                committed = false;
            }
        }
        Some(committed)
    }

    /// A unit taken was rolled back: its tables failed (see [`Schedule::fail`]).
    pub(super) fn rolled_back(&mut self, unit: &Unit) {
        self.running -= 1;
        for table in unit.tables() {
            self.loading[table] -= 1;
        }
    }

    /// Tables that failed: none of their units left starts, nor any of the tables that
    /// reference them (directly or not), which would wait for them forever. Returns those
    /// tables left behind because a table they reference failed, each with that table.
    pub(super) fn fail(&mut self, tables: &[usize], parents: &[Vec<usize>]) -> Vec<(usize, usize)> {
        for &t in tables {
            self.failed[t] = true;
        }
        let mut behind = Vec::new();
        loop {
            let found = (0..parents.len()).find_map(|t| {
                if self.failed[t] || self.left[t] == 0 {
                    return None;
                }
                parents[t]
                    .iter()
                    .find(|p| self.failed[**p])
                    .map(|p| (t, *p))
            });
            let Some((t, parent)) = found else { break };
            self.failed[t] = true;
            behind.push((t, parent));
        }
        let failed = &self.failed;
        self.queue
            .retain(|unit| !unit.parts.iter().any(|(t, _)| failed[*t]));
        behind
    }

    /// A unit taken has committed.
    pub(super) fn finished(&mut self, unit: &Unit) {
        self.running -= 1;
        for table in unit.tables() {
            self.loading[table] -= 1;
        }
        for (table, _) in &unit.parts {
            self.left[*table] -= 1;
            self.committed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(chunks: &[usize]) -> Schedule {
        let mut queue = Vec::new();
        for (table, n) in chunks.iter().enumerate() {
            for chunk in Chunk::between((1..*n).map(|b| vec![b.to_string()]).collect()) {
                queue.push(Unit {
                    parts: vec![(table, chunk)],
                });
            }
        }
        Schedule {
            queue,
            left: chunks.to_vec(),
            committed: 0,
            running: 0,
            loading: vec![0; chunks.len()],
            exclusive: vec![false; chunks.len()],
            checked_late: vec![false; chunks.len()],
            failed: vec![false; chunks.len()],
            stop: false,
        }
    }

    fn taken(take: Take) -> (usize, usize) {
        match take {
            Take::Unit(unit) => (unit.parts[0].0, unit.parts[0].1.number),
            Take::Wait => panic!("waits"),
            Take::Done => panic!("done"),
            Take::Stuck => panic!("stuck"),
        }
    }

    #[test]
    fn a_second_worker_takes_a_table_nobody_is_loading() {
        let mut s = schedule(&[3, 2]);
        let parents = vec![vec![], vec![]];
        assert_eq!(taken(s.take(&parents)), (0, 1));
        assert_eq!(taken(s.take(&parents)), (1, 1));
        // Both tables are being loaded: the queue's order decides, the chunks in order.
        assert_eq!(taken(s.take(&parents)), (0, 2));
        assert_eq!(s.loading, vec![2, 1]);
    }

    #[test]
    fn a_busy_table_is_shared_when_nothing_else_is_ready() {
        let mut s = schedule(&[3, 1]);
        // Table 1 references table 0: it waits for all of table 0's chunks.
        let parents = vec![vec![], vec![0]];
        let first = Unit {
            parts: vec![(0, s.queue[0].parts[0].1.clone())],
        };
        assert_eq!(taken(s.take(&parents)), (0, 1));
        assert_eq!(taken(s.take(&parents)), (0, 2));
        s.finished(&first);
        assert_eq!(taken(s.take(&parents)), (0, 3));
        assert!(matches!(s.take(&parents), Take::Wait));
        s.finished(&first);
        s.finished(&first);
        assert_eq!(s.left, vec![0, 1]);
        assert_eq!(s.loading, vec![0, 0]);
        assert_eq!(taken(s.take(&parents)), (1, 1));
        assert!(matches!(s.take(&parents), Take::Done));
    }

    #[test]
    fn a_failed_table_leaves_its_children_behind_and_the_others_go_on() {
        // Table 1 references table 0, table 2 references table 1; table 3 stands alone.
        let mut s = schedule(&[2, 1, 1, 2]);
        let parents = vec![vec![], vec![0], vec![1], vec![]];
        let first = Unit {
            parts: vec![(0, s.queue[0].parts[0].1.clone())],
        };
        assert_eq!(taken(s.take(&parents)), (0, 1));
        s.rolled_back(&first);
        assert_eq!(s.fail(&[0], &parents), vec![(1, 0), (2, 1)]);
        assert_eq!(taken(s.take(&parents)), (3, 1));
        assert_eq!(taken(s.take(&parents)), (3, 2));
        assert!(matches!(s.take(&parents), Take::Done));
        assert_eq!(s.loading, vec![0, 0, 0, 2]);
    }

    #[test]
    fn a_child_checked_late_starts_once_its_parents_chunks_are_all_taken() {
        // Table 1 references table 0 and checks its foreign keys itself.
        let mut s = schedule(&[2, 2]);
        s.checked_late[1] = true;
        let parents = vec![vec![], vec![0]];
        let unit = |s: &Schedule, i: usize| Unit {
            parts: vec![s.queue[i].parts[0].clone()],
        };
        let first = unit(&s, 0);
        let second = unit(&s, 1);
        assert_eq!(taken(s.take(&parents)), (0, 1));
        // A chunk of table 0 is not taken yet: table 1 may not start, the second worker
        // takes it.
        assert_eq!(taken(s.take(&parents)), (0, 2));
        // Both of table 0's chunks load: table 1's first chunk starts early, and waits
        // for them before its checks.
        let child = unit(&s, 0);
        assert_eq!(taken(s.take(&parents)), (1, 1));
        assert_eq!(s.parents_committed(&child, &parents), Some(false));
        s.finished(&first);
        assert_eq!(s.parents_committed(&child, &parents), Some(false));
        s.finished(&second);
        assert_eq!(s.parents_committed(&child, &parents), Some(true));
    }

    #[test]
    fn a_child_checked_by_the_target_waits_for_its_parents_to_commit() {
        let mut s = schedule(&[1, 1]);
        let parents = vec![vec![], vec![0]];
        assert_eq!(taken(s.take(&parents)), (0, 1));
        assert!(matches!(s.take(&parents), Take::Wait));
    }

    #[test]
    fn a_unit_ready_now_goes_before_one_that_would_start_early() {
        // Table 1 references table 0; table 2 stands alone, queued after table 1.
        let mut s = schedule(&[1, 1, 1]);
        s.checked_late[1] = true;
        let parents = vec![vec![], vec![0], vec![]];
        assert_eq!(taken(s.take(&parents)), (0, 1));
        assert_eq!(taken(s.take(&parents)), (2, 1));
        assert_eq!(taken(s.take(&parents)), (1, 1));
    }

    #[test]
    fn a_unit_holding_a_table_the_target_checks_waits_for_its_parents() {
        // Tables 1 and 2 load in one unit (a cycle's); table 1 references table 0 and is
        // checked by the copy, table 2 by the target, during the load.
        let mut s = schedule(&[1, 1, 1]);
        s.checked_late[1] = true;
        let parents = vec![vec![], vec![0], vec![]];
        let second = s.queue.remove(2);
        s.queue[1].parts.extend(second.parts);
        assert_eq!(taken(s.take(&parents)), (0, 1));
        assert!(matches!(s.take(&parents), Take::Wait));
    }

    #[test]
    fn a_child_started_early_learns_that_its_parent_failed() {
        let mut s = schedule(&[1, 1]);
        s.checked_late[1] = true;
        let parents = vec![vec![], vec![0]];
        let parent = Unit {
            parts: vec![s.queue[0].parts[0].clone()],
        };
        let child = Unit {
            parts: vec![s.queue[1].parts[0].clone()],
        };
        assert_eq!(taken(s.take(&parents)), (0, 1));
        assert_eq!(taken(s.take(&parents)), (1, 1));
        s.rolled_back(&parent);
        assert_eq!(s.fail(&[0], &parents), vec![(1, 0)]);
        assert_eq!(s.parents_committed(&child, &parents), None);
        // A unit of the failed table itself, its parents loaded, still commits.
        assert_eq!(s.parents_committed(&parent, &parents), Some(true));
        s.rolled_back(&child);
        assert_eq!(s.running, 0);
        assert!(matches!(s.take(&parents), Take::Done));
    }

    #[test]
    fn an_exclusive_table_loads_one_unit_at_a_time() {
        let mut s = schedule(&[2]);
        s.exclusive[0] = true;
        let parents = vec![vec![]];
        assert_eq!(taken(s.take(&parents)), (0, 1));
        assert!(matches!(s.take(&parents), Take::Wait));
    }
}
