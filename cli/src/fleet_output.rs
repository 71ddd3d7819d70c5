//! What a command across targets prints: one line a target and a summary (text), or one
//! JSON document; each target's exit code, and the worst of them. Progress goes to stderr:
//! a bar of targets done of total with the ones in progress (text), or a JSON line on
//! stdout as each target ends.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Mutex;

use datamig::{
    CheckReport, FleetEvent, FleetReport, Halted, MigrationStatus, Outcome, Pause, RunReport,
    State, TargetReport,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::opt::Format;
use crate::output::{bar_target, describe_pause, state_name};
use crate::{Failure, exit};

/// One target, ready to print: what it ended as, its exit code and its error.
struct Row<T> {
    target: String,
    line: usize,
    outcome: Outcome,
    code: u8,
    error: Option<String>,
    duration_ms: u64,
    report: Option<T>,
}

/// A fleet's report as rows (each failure mapped to its exit code as a single run maps
/// it), with why targets were left and the exit code, the worst over the targets.
struct Rows<T> {
    rows: Vec<Row<T>>,
    halted: Option<Halted>,
    code: u8,
    duration_ms: u64,
}

impl<T> Rows<T> {
    fn new(report: FleetReport<T>, code_of: impl Fn(&T) -> u8) -> Self {
        let not_reached = match report.halted {
            Some(Halted::Stopped) => exit::INTERRUPTED,
            _ => exit::OK,
        };
        let rows: Vec<Row<T>> = report
            .targets
            .into_iter()
            .map(|t: TargetReport<T>| {
                let (code, error) = match t.error {
                    Some(err) => {
                        let failure = Failure::from(err);
                        (failure.code, Some(failure.message))
                    }
                    None => match &t.report {
                        Some(report) => (code_of(report), None),
                        None => (not_reached, None),
                    },
                };
                Row {
                    target: t.target,
                    line: t.line,
                    outcome: t.outcome,
                    code,
                    error,
                    duration_ms: t.duration_ms,
                    report: t.report,
                }
            })
            .collect();
        let code = rows
            .iter()
            .fold(exit::OK, |worst, r| exit::worst(worst, r.code));
        Rows {
            rows,
            halted: report.halted,
            code,
            duration_ms: report.duration_ms,
        }
    }

    fn count(&self, outcome: Outcome) -> usize {
        self.rows.iter().filter(|r| r.outcome == outcome).count()
    }

    fn width(&self) -> usize {
        self.rows
            .iter()
            .map(|r| r.target.len())
            .max()
            .unwrap_or(6)
            .max(6)
    }
}

/// Prints a command's result across targets.
pub(crate) struct FleetOutput {
    format: Format,
    command: &'static str,
}

impl FleetOutput {
    pub(crate) fn new(format: Format, command: &'static str) -> Self {
        FleetOutput { format, command }
    }

    /// The JSON document: every target with its outcome, exit code, error and report
    /// (`report_json` of what the command returned), the counts, why targets were left,
    /// and the exit code.
    fn json<T>(&self, rows: &Rows<T>, report_json: impl Fn(&T) -> Value) -> Result<(), Failure> {
        let targets: Vec<Value> = rows
            .rows
            .iter()
            .map(|r| {
                json!({
                    "target": r.target,
                    "line": r.line,
                    "outcome": r.outcome,
                    "exit_code": r.code,
                    "duration_ms": r.duration_ms,
                    "error": r.error,
                    "report": r.report.as_ref().map(&report_json),
                })
            })
            .collect();
        let counts: BTreeMap<&str, usize> = Outcome::ALL
            .iter()
            .map(|o| (o.as_str(), rows.count(*o)))
            .collect();
        let value = json!({
            "type": "fleet",
            "command": self.command,
            "targets": targets,
            "counts": counts,
            "halted": rows.halted.as_ref().map(ToString::to_string),
            "exit_code": rows.code,
            "duration_ms": rows.duration_ms,
        });
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, &value)
            .map_err(|e| Failure::new(exit::UNEXPECTED, format!("cannot write JSON: {e}")))?;
        writeln!(out)?;
        Ok(())
    }

    /// The summary line (`48 targets: 40 applied, ...`) and why targets were left.
    fn summary<T>(
        out: &mut impl Write,
        rows: &Rows<T>,
        counted: &[(Outcome, &str)],
    ) -> Result<(), Failure> {
        let mut parts: Vec<String> = counted
            .iter()
            .map(|(outcome, words)| format!("{} {words}", rows.count(*outcome)))
            .collect();
        for (outcome, words) in [
            (Outcome::Failed, "failed"),
            (Outcome::NotReached, "not reached"),
        ] {
            parts.push(format!("{} {words}", rows.count(outcome)));
        }
        writeln!(out, "{} targets: {}", rows.rows.len(), parts.join(", "))?;
        if let Some(halted) = &rows.halted {
            writeln!(out, "not reached: {halted}; a re-run starts them")?;
        }
        Ok(())
    }

    /// A failed or unreached target's line; `None` for one that succeeded.
    fn unsuccessful<T>(row: &Row<T>, width: usize) -> Option<String> {
        match row.outcome {
            Outcome::Failed => Some(format!(
                "{:<16} {:<width$}  {}",
                "failed",
                row.target,
                row.error.as_deref().unwrap_or("?").replace('\n', "\n    ")
            )),
            Outcome::NotReached => Some(format!("{:<16} {}", "not reached", row.target)),
            _ => None,
        }
    }

    pub(crate) fn run(&self, report: FleetReport<RunReport>) -> Result<u8, Failure> {
        let rows = Rows::new(report, |_| exit::OK);
        if self.format == Format::Json {
            self.json(&rows, |r| serde_json::to_value(r).unwrap_or(Value::Null))?;
            return Ok(rows.code);
        }
        let dry_run = rows
            .rows
            .iter()
            .any(|r| r.report.as_ref().is_some_and(|r| r.dry_run));
        let applied = if dry_run { "would apply" } else { "applied" };
        let width = rows.width();
        let mut out = std::io::stdout().lock();
        for row in &rows.rows {
            if let Some(line) = Self::unsuccessful(row, width) {
                writeln!(out, "{line}")?;
                continue;
            }
            let Some(report) = &row.report else { continue };
            let mut detail = if report.applied.is_empty() {
                String::new()
            } else {
                let ids: Vec<&str> = report.applied.iter().map(|a| a.id.as_str()).collect();
                format!("{} {applied}: {}", ids.len(), ids.join(", "))
            };
            if !report.paused.is_empty() {
                let ids: Vec<&str> = report
                    .paused
                    .iter()
                    .map(|p| p.migration_id.as_str())
                    .collect();
                detail.push_str(&format!("; paused: {}", ids.join(", ")));
            }
            let label = match row.outcome {
                Outcome::Applied => applied,
                _ => "already applied",
            };
            let line = format!("{label:<16} {:<width$}  {detail}", row.target);
            writeln!(out, "{}", line.trim_end())?;
        }
        if dry_run {
            writeln!(
                out,
                "dry run: every change was rolled back, nothing was recorded"
            )?;
        }
        Self::summary(
            &mut out,
            &rows,
            &[
                (Outcome::Applied, applied),
                (Outcome::AlreadyApplied, "already applied"),
            ],
        )?;
        Ok(rows.code)
    }

    /// `status`: a matrix of targets × the migrations not applied on every target.
    pub(crate) fn status(&self, report: FleetReport<Vec<MigrationStatus>>) -> Result<u8, Failure> {
        let rows = Rows::new(report, |_| exit::OK);
        if self.format == Format::Json {
            self.json(&rows, |r| serde_json::to_value(r).unwrap_or(Value::Null))?;
            return Ok(rows.code);
        }
        let columns: BTreeSet<&str> = rows
            .rows
            .iter()
            .flat_map(|r| r.report.iter().flatten())
            .filter(|s| s.state != State::Applied)
            .map(|s| s.id.as_str())
            .collect();
        let width = rows.width();
        let mut out = std::io::stdout().lock();
        if columns.is_empty() {
            writeln!(out, "every migration is applied on every target read")?;
        } else {
            writeln!(out, "migrations not applied on every target:")?;
            for (n, id) in columns.iter().enumerate() {
                writeln!(out, "  [{}] {id}", n + 1)?;
            }
        }
        let cell = 9;
        let header: String = (1..=columns.len())
            .map(|n| format!("  {:<cell$}", format!("[{n}]")))
            .collect();
        writeln!(out, "{:<width$}{header}", "TARGET")?;
        let mut behind = 0;
        for row in &rows.rows {
            let Some(statuses) = &row.report else {
                let why = match row.outcome {
                    Outcome::Failed => format!("failed: {}", row.error.as_deref().unwrap_or("?")),
                    _ => "not reached".to_string(),
                };
                writeln!(out, "{:<width$}  {why}", row.target)?;
                continue;
            };
            let states: BTreeMap<&str, State> =
                statuses.iter().map(|s| (s.id.as_str(), s.state)).collect();
            if statuses.iter().any(|s| s.state != State::Applied) {
                behind += 1;
            }
            let cells: String = columns
                .iter()
                .map(|id| {
                    let state = states.get(id).map_or("-", |s| state_name(*s));
                    format!("  {state:<cell$}")
                })
                .collect();
            writeln!(out, "{:<width$}{}", row.target, cells.trim_end())?;
        }
        writeln!(
            out,
            "{} targets: {} up to date, {behind} with migrations not applied, {} failed",
            rows.rows.len(),
            rows.count(Outcome::Done) - behind,
            rows.count(Outcome::Failed)
        )?;
        Ok(rows.code)
    }

    /// `check`: the targets with something pending or drifted. Exit 3 on drift anywhere,
    /// else 6 when anything is pending anywhere.
    pub(crate) fn check(&self, report: FleetReport<CheckReport>) -> Result<u8, Failure> {
        let rows = Rows::new(report, |r| {
            if !r.drifted.is_empty() {
                exit::DRIFT
            } else if !r.pending.is_empty() {
                exit::PENDING
            } else {
                exit::OK
            }
        });
        if self.format == Format::Json {
            self.json(&rows, |r| serde_json::to_value(r).unwrap_or(Value::Null))?;
            return Ok(rows.code);
        }
        let width = rows.width();
        let mut out = std::io::stdout().lock();
        let (mut pending, mut drifted) = (0, 0);
        for row in &rows.rows {
            if let Some(line) = Self::unsuccessful(row, width) {
                writeln!(out, "{line}")?;
                continue;
            }
            let Some(report) = &row.report else { continue };
            let mut parts = Vec::new();
            if !report.drifted.is_empty() {
                drifted += 1;
                parts.push(format!("drifted: {}", report.drifted.join(", ")));
            }
            if !report.pending.is_empty() {
                pending += 1;
                parts.push(format!("pending: {}", report.pending.join(", ")));
            }
            if !parts.is_empty() {
                writeln!(out, "{:<width$}  {}", row.target, parts.join("; "))?;
            }
        }
        writeln!(
            out,
            "{} targets: {pending} with pending migrations, {drifted} drifted, {} failed",
            rows.rows.len(),
            rows.count(Outcome::Failed)
        )?;
        Ok(rows.code)
    }

    /// `verify`: each target's drifted and unknown migrations. Exit 3 on drift anywhere.
    pub(crate) fn verify(
        &self,
        report: FleetReport<(CheckReport, Vec<MigrationStatus>)>,
    ) -> Result<u8, Failure> {
        let rows = Rows::new(report, |(check, _)| {
            if check.drifted.is_empty() {
                exit::OK
            } else {
                exit::DRIFT
            }
        });
        if self.format == Format::Json {
            self.json(
                &rows,
                |(check, _)| json!({"drifted": check.drifted, "unknown": check.unknown}),
            )?;
            return Ok(rows.code);
        }
        let width = rows.width();
        let mut out = std::io::stdout().lock();
        let mut drifted = 0;
        for row in &rows.rows {
            if let Some(line) = Self::unsuccessful(row, width) {
                writeln!(out, "{line}")?;
                continue;
            }
            let Some((check, _)) = &row.report else {
                continue;
            };
            if !check.drifted.is_empty() {
                drifted += 1;
                writeln!(
                    out,
                    "{:<width$}  drifted: {}",
                    row.target,
                    check.drifted.join(", ")
                )?;
            }
            if !check.unknown.is_empty() {
                writeln!(
                    out,
                    "{:<width$}  unknown to this build: {}",
                    row.target,
                    check.unknown.join(", ")
                )?;
            }
        }
        writeln!(
            out,
            "{} targets: {drifted} drifted, {} failed",
            rows.rows.len(),
            rows.count(Outcome::Failed)
        )?;
        Ok(rows.code)
    }

    /// `pause` or `resume` of migration `id` on every target.
    pub(crate) fn paused(
        &self,
        report: FleetReport<Option<Pause>>,
        id: &str,
        verb: &str,
    ) -> Result<u8, Failure> {
        let rows = Rows::new(report, |_| exit::OK);
        if self.format == Format::Json {
            self.json(&rows, |r| serde_json::to_value(r).unwrap_or(Value::Null))?;
            return Ok(rows.code);
        }
        let width = rows.width();
        let mut out = std::io::stdout().lock();
        let mut changed = 0;
        for row in &rows.rows {
            if let Some(line) = Self::unsuccessful(row, width) {
                writeln!(out, "{line}")?;
                continue;
            }
            let detail = match (&row.report, verb) {
                (Some(Some(pause)), "paused") => {
                    changed += 1;
                    format!("{verb} {id}: {}", describe_pause(pause))
                }
                (Some(Some(pause)), _) => {
                    changed += 1;
                    format!("{verb} {id} (it was {})", describe_pause(pause))
                }
                (_, "paused") => format!("{id} is applied there: nothing to pause"),
                _ => format!("{id} is not paused there: nothing to resume"),
            };
            writeln!(out, "{:<width$}  {detail}", row.target)?;
        }
        writeln!(
            out,
            "{} targets: {changed} {verb}, {} failed",
            rows.rows.len(),
            rows.count(Outcome::Failed)
        )?;
        Ok(rows.code)
    }

    /// Progress of a fleet's `run`.
    pub(crate) fn progress(&self, total: usize) -> FleetProgress {
        let bar = ProgressBar::with_draw_target(Some(total as u64), bar_target());
        bar.set_style(
            ProgressStyle::with_template("[{bar:30}] {pos}/{len} targets, {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        FleetProgress {
            json: self.format == Format::Json,
            bar,
            running: Mutex::new(BTreeMap::new()),
        }
    }
}

/// Where a fleet's events go: the bar (targets done of total, the ones in progress), or a
/// JSON line a target as it ends.
pub(crate) struct FleetProgress {
    json: bool,
    bar: ProgressBar,
    running: Mutex<BTreeMap<usize, String>>,
}

impl FleetProgress {
    pub(crate) fn update(&self, event: &FleetEvent) {
        if self.json {
            if let FleetEvent::Finished { .. } = event {
                let mut value = serde_json::to_value(event).unwrap_or(Value::Null);
                value["type"] = json!("target");
                let mut out = std::io::stdout().lock();
                let _ = serde_json::to_writer(&mut out, &value);
                let _ = writeln!(out);
            }
            return;
        }
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            FleetEvent::Started { target, index, .. } => {
                running.insert(*index, target.clone());
            }
            FleetEvent::Finished { index, done, .. } => {
                running.remove(index);
                self.bar.set_position(*done as u64);
            }
            _ => {}
        }
        let mut now = running.values();
        self.bar.set_message(match (now.next(), running.len()) {
            (None, _) => "none in progress".to_string(),
            (Some(first), 1) => format!("now {first}"),
            (Some(first), n) => format!("now {first} (+{} more)", n - 1),
        });
    }

    /// Runs `print` with the bar hidden.
    pub(crate) fn suspend(&self, print: impl FnOnce()) {
        self.bar.suspend(print);
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
