//! What a fleet reports: each target's outcome (with its report, or its error), the counts,
//! why targets were left unreached; and the events sent while it works.

use serde::ser::{SerializeStruct, Serializer};

use crate::error::Error;
use crate::runner::RunReport;

use super::rollout::Halted;

/// How one target of a fleet ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// `run`: this run applied at least one migration there (in a dry run: would have).
    Applied,
    /// `run`: nothing was pending there; every migration was already applied (or paused,
    /// or not for its backend).
    AlreadyApplied,
    /// Another command than `run` did its work there.
    Done,
    /// It failed there; the report holds the error.
    Failed,
    /// The fleet never started it: a canary or another target failed and the fleet stops
    /// on failure, or the fleet was stopped. A re-run starts it.
    NotReached,
}

impl Outcome {
    /// Every outcome, in the order reports count them.
    pub const ALL: [Outcome; 5] = [
        Outcome::Applied,
        Outcome::AlreadyApplied,
        Outcome::Done,
        Outcome::Failed,
        Outcome::NotReached,
    ];

    /// Its name in reports and JSON (`already_applied`).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::AlreadyApplied => "already_applied",
            Outcome::Done => "done",
            Outcome::Failed => "failed",
            Outcome::NotReached => "not_reached",
        }
    }

    /// The outcome of a target whose `run` returned `report`.
    pub(super) fn of_run(report: &RunReport) -> Self {
        if report.applied.is_empty() && report.joined.is_empty() {
            Outcome::AlreadyApplied
        } else {
            Outcome::Applied
        }
    }
}

/// One target of a fleet: its name, how it ended, and what its command returned.
#[derive(Debug)]
#[non_exhaustive]
pub struct TargetReport<T> {
    /// The target's name (its URL without the password, and its schema).
    pub target: String,
    /// Its line in the targets (or row of the query), from 1.
    pub line: usize,
    /// How it ended.
    pub outcome: Outcome,
    /// What the command returned there, when it succeeded.
    pub report: Option<T>,
    /// Why it failed, when it did.
    pub error: Option<Error>,
    /// How long it took, in milliseconds (0 when not reached).
    pub duration_ms: u64,
}

/// What a fleet did: every target in the order given, and why some were not reached.
///
/// Serialized (JSON) as `targets` (each with `target`, `line`, `outcome`, `duration_ms`,
/// `error` as text, `report`), `counts` (per outcome), `halted` and `duration_ms`.
#[derive(Debug)]
#[non_exhaustive]
pub struct FleetReport<T> {
    /// Every target, in the order given.
    pub targets: Vec<TargetReport<T>>,
    /// Why targets were left unreached, if they were.
    pub halted: Option<Halted>,
    /// How long the fleet took, in milliseconds.
    pub duration_ms: u64,
}

impl<T> FleetReport<T> {
    /// How many targets ended with `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.targets.iter().filter(|t| t.outcome == outcome).count()
    }

    /// Whether every target was reached and none failed.
    pub fn is_success(&self) -> bool {
        self.targets
            .iter()
            .all(|t| !matches!(t.outcome, Outcome::Failed | Outcome::NotReached))
    }

    /// The targets that failed, each with its error.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &Error)> {
        self.targets
            .iter()
            .filter_map(|t| t.error.as_ref().map(|e| (t.target.as_str(), e)))
    }
}

impl<T: serde::Serialize> serde::Serialize for TargetReport<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("TargetReport", 6)?;
        s.serialize_field("target", &self.target)?;
        s.serialize_field("line", &self.line)?;
        s.serialize_field("outcome", &self.outcome)?;
        s.serialize_field("duration_ms", &self.duration_ms)?;
        s.serialize_field("error", &self.error.as_ref().map(ToString::to_string))?;
        s.serialize_field("report", &self.report)?;
        s.end()
    }
}

impl<T: serde::Serialize> serde::Serialize for FleetReport<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let counts: std::collections::BTreeMap<&str, usize> = Outcome::ALL
            .iter()
            .map(|o| (o.as_str(), self.count(*o)))
            .collect();
        let mut s = serializer.serialize_struct("FleetReport", 4)?;
        s.serialize_field("targets", &self.targets)?;
        s.serialize_field("counts", &counts)?;
        s.serialize_field("halted", &self.halted)?;
        s.serialize_field("duration_ms", &self.duration_ms)?;
        s.end()
    }
}

/// What a fleet tells [`Fleet::on_event`](super::Fleet::on_event) while it works: a target
/// started, a target ended. For progress (targets done of total, the ones in progress).
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
#[non_exhaustive]
pub enum FleetEvent {
    /// A target started.
    Started {
        /// Its name.
        target: String,
        /// Its index in the targets, from 0.
        index: usize,
        /// Targets in all.
        total: usize,
    },
    /// A target ended.
    Finished {
        /// Its name.
        target: String,
        /// Its index in the targets, from 0.
        index: usize,
        /// How it ended.
        outcome: Outcome,
        /// Its error, in words, when it failed.
        error: Option<String>,
        /// Targets ended so far, this one included.
        done: usize,
        /// Targets in all.
        total: usize,
    },
}
