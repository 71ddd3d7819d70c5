//! What the CLI prints: text for people, JSON for machines, on stdout. A progress bar for
//! batched migrations goes to stderr, and only on a terminal.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use datamig::copy::{ColumnAction, CopyEvent, CopyPlan, CopyReport, RowDifference};
use datamig::{
    CheckReport, Doctor, Drift, Fingerprint, IdempotencyCheck, MigrationStatus, Pause, Progress,
    RunReport, SessionInfo, State, TableDifference,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::Failure;
use crate::opt::Format;

/// Whether the log goes to stderr (`--log`, `RUST_LOG`): progress bars are not drawn there
/// then, so that the log's lines stay whole.
pub(crate) static LOGGING: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Where progress bars are drawn: stderr on a terminal, nowhere while the log goes there.
pub(crate) fn bar_target() -> ProgressDrawTarget {
    if LOGGING.load(std::sync::atomic::Ordering::Relaxed) {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    }
}

/// Prints results in the chosen format.
pub(crate) struct Output {
    format: Format,
}

impl Output {
    pub(crate) fn new(format: Format) -> Self {
        Output { format }
    }

    fn json(&self, value: &serde_json::Value) -> Result<(), Failure> {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, value).map_err(|e| {
            Failure::new(crate::exit::UNEXPECTED, format!("cannot write JSON: {e}"))
        })?;
        writeln!(out)?;
        Ok(())
    }

    fn value<T: serde::Serialize>(value: &T) -> serde_json::Value {
        serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
    }

    pub(crate) fn run(&self, report: &RunReport) -> Result<(), Failure> {
        if self.format == Format::Json {
            let mut value = Self::value(report);
            value["type"] = json!("result");
            return self.json(&value);
        }
        let mut out = std::io::stdout().lock();
        for applied in &report.applied {
            let verb = match (report.dry_run, applied.rerun) {
                (true, _) => "would apply",
                (false, true) => "re-ran",
                (false, false) => "applied",
            };
            let batches = match (applied.batches, applied.workers) {
                (0, _) => String::new(),
                (n, 0 | 1) => format!("  {n} batches"),
                (n, workers) => format!("  {n} batches by {workers} workers"),
            };
            let paced = match applied.paced_ms {
                0 => String::new(),
                ms => format!(
                    "  ({} paused for other sessions)",
                    humantime::format_duration(Duration::from_millis(ms))
                ),
            };
            writeln!(
                out,
                "{verb} {}  {} rows  {}{batches}{paced}",
                applied.id,
                applied.rows_affected,
                humantime::format_duration(Duration::from_millis(applied.duration_ms))
            )?;
            if let (Some(keys), Some(ms)) = (applied.estimated_keys, applied.estimated_ms) {
                writeln!(
                    out,
                    "  estimate: about {keys} keys, {} rows a batch in the {} batches tried; \
                     the whole migration would take about {} on this database now",
                    applied.rows_affected / applied.batches.max(1),
                    applied.batches,
                    humantime::format_duration(Duration::from_secs(ms.div_ceil(1000)))
                )?;
            }
            for note in &applied.notes {
                writeln!(out, "  {note}")?;
            }
        }
        for joined in &report.joined {
            writeln!(
                out,
                "joined {} as {} worker(s) while another runner held the lock: {} batches, {} rows, {}",
                joined.id,
                joined.workers,
                joined.batches,
                joined.rows_affected,
                humantime::format_duration(Duration::from_millis(joined.duration_ms))
            )?;
        }
        for id in &report.not_for_backend {
            writeln!(out, "skipped {id}: not for this backend")?;
        }
        for pause in &report.paused {
            writeln!(
                out,
                "paused {}: {}; `datamig resume {}` lets the next run go on",
                pause.migration_id,
                describe_pause(pause),
                pause.migration_id
            )?;
        }
        for cancel in &report.cancelled {
            writeln!(
                out,
                "cancelled {}: by {} on {} at {}{}; not applied, `datamig run --restart` starts \
                 it again from its first key",
                cancel.migration_id,
                cancel.by,
                cancel.host,
                cancel.at.format("%Y-%m-%d %H:%M:%S UTC"),
                cancel
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )?;
        }
        if report.dry_run {
            writeln!(
                out,
                "dry run: every change was rolled back, nothing was recorded"
            )?;
        }
        let paused = match report.paused.len() {
            0 => String::new(),
            n => format!(", {n} paused"),
        };
        writeln!(
            out,
            "{} {}, {} pending{paused}, {} already applied",
            report.applied.len(),
            if report.dry_run {
                "would apply"
            } else {
                "applied"
            },
            report.pending.len(),
            report.already_applied.len()
        )?;
        Ok(())
    }

    pub(crate) fn schema_applied(&self, dir: &Path, applied: usize) -> Result<(), Failure> {
        if self.format == Format::Json {
            return self.json(
                &json!({"type": "schema", "dir": dir.display().to_string(), "applied": applied}),
            );
        }
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "schema: {applied} schema migrations applied from {}",
            dir.display()
        )?;
        Ok(())
    }

    pub(crate) fn status(&self, statuses: &[MigrationStatus]) -> Result<(), Failure> {
        if self.format == Format::Json {
            return self.json(&Self::value(&statuses));
        }
        let mut out = std::io::stdout().lock();
        let width = statuses
            .iter()
            .map(|s| s.id.len())
            .max()
            .unwrap_or(2)
            .max(2);
        writeln!(
            out,
            "{:<width$}  {:<8}  {:<19}  {:>9}  {:>10}  DESCRIPTION",
            "ID", "STATE", "APPLIED AT", "TOOK", "ROWS"
        )?;
        for s in statuses {
            let (at, took, rows) = match &s.ledger {
                Some(e) => (
                    e.finished_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    format!("{}ms", e.duration_ms),
                    e.rows_affected.to_string(),
                ),
                None => ("-".to_string(), "-".to_string(), "-".to_string()),
            };
            let description = s.description.lines().next().unwrap_or("");
            writeln!(
                out,
                "{:<width$}  {:<8}  {at:<19}  {took:>9}  {rows:>10}  {description}",
                s.id,
                state_name(s.state)
            )?;
            if !s.ranges.is_empty() {
                let done = s.ranges.iter().filter(|r| r.done).count();
                let batches: i64 = s.ranges.iter().map(|r| r.batches).sum();
                let keys: i64 = s.ranges.iter().map(|r| r.keys_done).sum();
                let held = s.ranges.iter().filter(|r| r.held).count();
                writeln!(
                    out,
                    "{:<width$}  {done} of {} ranges done, {batches} batches, {keys} keys; {held} being worked:",
                    "",
                    s.ranges.len()
                )?;
                for range in &s.ranges {
                    writeln!(out, "{:<width$}    {}", "", describe_range(range))?;
                }
            } else if let Some(entry) = s.ledger.as_ref().filter(|e| e.is_running()) {
                writeln!(
                    out,
                    "{:<width$}  {} batches done, checkpoint {}",
                    "",
                    entry.batches,
                    entry
                        .checkpoint
                        .as_deref()
                        .map_or_else(|| "-".to_string(), datamig::__private::describe_checkpoint)
                )?;
            }
            if let Some(pause) = &s.paused {
                writeln!(out, "{:<width$}  {}", "", describe_pause(pause))?;
            }
            if let Some(run) = s.last_run.as_ref().filter(|r| r.outcome == "failed") {
                writeln!(
                    out,
                    "{:<width$}  last attempt failed: {}",
                    "",
                    run.error.as_deref().unwrap_or("?")
                )?;
            }
        }
        writeln!(out, "{}", summary(statuses))?;
        Ok(())
    }

    pub(crate) fn check(&self, report: &CheckReport) -> Result<(), Failure> {
        if self.format == Format::Json {
            return self.json(&Self::value(report));
        }
        let mut out = std::io::stdout().lock();
        for id in &report.drifted {
            writeln!(out, "drifted {id}")?;
        }
        for id in &report.pending {
            if report.paused.contains(id) {
                writeln!(out, "paused {id}")?;
            } else {
                writeln!(out, "pending {id}")?;
            }
        }
        let paused = match report.paused.len() {
            0 => String::new(),
            n => format!(" ({n} paused)"),
        };
        writeln!(
            out,
            "{} pending{paused}, {} drifted",
            report.pending.len(),
            report.drifted.len()
        )?;
        Ok(())
    }

    pub(crate) fn verify(
        &self,
        report: &CheckReport,
        statuses: &[MigrationStatus],
    ) -> Result<(), Failure> {
        let drifts: Vec<serde_json::Value> = statuses
            .iter()
            .filter(|s| s.state == State::Drifted)
            .filter_map(|s| {
                let entry = s.ledger.as_ref()?;
                Some(json!({"id": s.id, "applied_checksum": entry.checksum, "applied_revision": entry.revision}))
            })
            .collect();
        if self.format == Format::Json {
            return self.json(&json!({"drifted": drifts, "unknown": report.unknown}));
        }
        let mut out = std::io::stdout().lock();
        for s in statuses.iter().filter(|s| s.state == State::Drifted) {
            let entry = s.ledger.as_ref();
            writeln!(
                out,
                "drifted {}: the ledger has checksum {} revision {}, the code differs",
                s.id,
                entry.map_or("?", |e| e.checksum.as_str()),
                entry.map_or(0, |e| e.revision)
            )?;
        }
        for id in &report.unknown {
            writeln!(
                out,
                "unknown {id}: in the ledger, but no migration of this build has the id"
            )?;
        }
        writeln!(
            out,
            "{} drifted, {} unknown",
            report.drifted.len(),
            report.unknown.len()
        )?;
        Ok(())
    }

    /// `verify` without the migrations' code: every ledger row, with the checksum and
    /// revision it was applied with, when, where and by which release.
    pub(crate) fn ledger(&self, statuses: &[MigrationStatus]) -> Result<(), Failure> {
        let rows: Vec<&datamig::LedgerEntry> =
            statuses.iter().filter_map(|s| s.ledger.as_ref()).collect();
        if self.format == Format::Json {
            return self.json(&json!({ "ledger": rows }));
        }
        let mut out = std::io::stdout().lock();
        for e in &rows {
            writeln!(
                out,
                "{}  {}  checksum {} revision {}  at {} on {}{}  runs {}",
                e.id,
                e.status,
                e.checksum,
                e.revision,
                e.finished_at.format("%Y-%m-%d %H:%M:%S"),
                e.host,
                e.app_version
                    .as_deref()
                    .map(|v| format!(" (version {v})"))
                    .unwrap_or_default(),
                e.run_count
            )?;
        }
        writeln!(
            out,
            "{} ledger rows; checksums are compared with the code by the application's own binary",
            rows.len()
        )?;
        Ok(())
    }

    /// A pause set or lifted.
    pub(crate) fn paused(&self, pause: &Pause, verb: &str) -> Result<(), Failure> {
        if self.format == Format::Json {
            let mut value = Self::value(pause);
            value["type"] = json!(verb);
            return self.json(&value);
        }
        let line = match verb {
            "paused" => format!(
                "{} is {}; a run in progress stops it after the batch in progress commits, and \
                 runs skip it until `datamig resume {}`",
                pause.migration_id,
                describe_pause(pause),
                pause.migration_id
            ),
            "cancelled" => format!(
                "{} is cancelled by {} on {} at {}{}; a run in progress stops it after the batch \
                 in progress commits, and runs leave it alone until `datamig run --restart`, \
                 which starts it again from its first key",
                pause.migration_id,
                pause.by,
                pause.host,
                pause.at.format("%Y-%m-%d %H:%M:%S UTC"),
                pause
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
            _ => format!(
                "resumed {} (it was {}); the next run continues it from its checkpoint",
                pause.migration_id,
                describe_pause(pause)
            ),
        };
        writeln!(std::io::stdout().lock(), "{line}")?;
        Ok(())
    }

    /// A one-line confirmation (`done` with the id in JSON).
    pub(crate) fn done(&self, message: &str, id: &str) -> Result<(), Failure> {
        if self.format == Format::Json {
            return self.json(&json!({"message": message, "id": id}));
        }
        writeln!(std::io::stdout().lock(), "{message}")?;
        Ok(())
    }

    pub(crate) fn repaired(&self, drift: &Drift, reason: &str) -> Result<(), Failure> {
        if self.format == Format::Json {
            let mut value = Self::value(drift);
            value["reason"] = json!(reason);
            return self.json(&value);
        }
        writeln!(
            std::io::stdout().lock(),
            "repaired {}: the ledger now holds checksum {} revision {} (was {} revision {}): {reason}",
            drift.id,
            drift.code_checksum,
            drift.code_revision,
            drift.applied_checksum,
            drift.applied_revision
        )?;
        Ok(())
    }

    pub(crate) fn doctor(&self, doctor: &Doctor) -> Result<(), Failure> {
        if self.format == Format::Json {
            return self.json(&Self::value(doctor));
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "connection: ok ({})", doctor.server_version)?;
        match (&doctor.ledger_problem, doctor.ledger_exists) {
            (Some(problem), _) => writeln!(out, "ledger: cannot be read: {problem}")?,
            (None, false) => writeln!(out, "ledger: not created yet (the first `run` creates it)")?,
            (None, true) => {
                writeln!(out, "ledger: ok ({})", summary(&doctor.migrations))?;
            }
        }
        for s in &doctor.migrations {
            if let Some(run) = s.last_run.as_ref().filter(|r| r.outcome == "failed") {
                writeln!(
                    out,
                    "  {} failed last time: {}",
                    s.id,
                    run.error.as_deref().unwrap_or("?")
                )?;
            }
        }
        match doctor.lock_holders.as_slice() {
            [] => writeln!(out, "runner lock: free")?,
            holders => {
                for h in holders {
                    if h.lease {
                        writeln!(
                            out,
                            "runner lock: lease held by {} (user {}); it {}",
                            h.application_name,
                            h.user.as_deref().unwrap_or("?"),
                            h.state.as_deref().unwrap_or("?")
                        )?;
                    } else {
                        writeln!(out, "runner lock: held by {}", describe_session(h))?;
                    }
                }
            }
        }
        if doctor.blocking_sessions.is_empty() {
            writeln!(out, "blocking sessions: none")?;
        } else {
            writeln!(out, "sessions that would block or slow a migration:")?;
            for s in &doctor.blocking_sessions {
                writeln!(out, "  {}", describe_session(s))?;
                if let Some(query) = &s.query {
                    writeln!(
                        out,
                        "    query: {}",
                        query.split_whitespace().collect::<Vec<_>>().join(" ")
                    )?;
                }
            }
        }
        Ok(())
    }

    pub(crate) fn idempotency(&self, checks: &[IdempotencyCheck]) -> Result<(), Failure> {
        if self.format == Format::Json {
            return self.json(&json!({"checks": checks, "committed": false}));
        }
        let mut out = std::io::stdout().lock();
        for check in checks {
            if check.is_idempotent() {
                writeln!(
                    out,
                    "idempotent {}  (first run {} rows, second run 0)",
                    check.id, check.first_run_rows
                )?;
            } else if let Err(err) = check.clone().into_result() {
                writeln!(out, "NOT idempotent {}: {err}", check.id)?;
            }
        }
        let failed = checks.iter().filter(|c| !c.is_idempotent()).count();
        writeln!(
            out,
            "{} checked, {failed} not idempotent; everything was rolled back, nothing was committed",
            checks.len()
        )?;
        Ok(())
    }

    pub(crate) fn fingerprint(&self, fingerprint: &Fingerprint) -> Result<(), Failure> {
        if self.format == Format::Json {
            return self.json(&Self::value(fingerprint));
        }
        let mut out = std::io::stdout().lock();
        let width = fingerprint
            .tables
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(out, "{:<width$}  {:>10}  SHA-256", "TABLE", "ROWS")?;
        for (table, f) in &fingerprint.tables {
            writeln!(out, "{table:<width$}  {:>10}  {}", f.rows, f.sha256)?;
        }
        Ok(())
    }

    pub(crate) fn comparison(
        &self,
        source: &Fingerprint,
        target: &Fingerprint,
        differences: &[TableDifference],
        rows: &[RowDifference],
    ) -> Result<(), Failure> {
        if self.format == Format::Json {
            let mut value = json!({"source": source, "target": target, "differences": differences});
            if !rows.is_empty() {
                value["rows"] = json!(rows);
            }
            return self.json(&value);
        }
        let mut out = std::io::stdout().lock();
        let mut names: Vec<&String> = source.tables.keys().chain(target.tables.keys()).collect();
        names.sort();
        names.dedup();
        let width = names.iter().map(|n| n.len()).max().unwrap_or(5).max(5);
        for name in names {
            let rows = |f: &Fingerprint| {
                f.tables
                    .get(name)
                    .map_or("-".to_string(), |t| t.rows.to_string())
            };
            let verdict = if differences.iter().any(|d| &d.table == name) {
                "DIFFERS"
            } else {
                "same"
            };
            writeln!(
                out,
                "{name:<width$}  source {:>10} rows  target {:>10} rows  {verdict}",
                rows(source),
                rows(target)
            )?;
        }
        for row in rows {
            writeln!(out, "  {} {}: {}", row.table, row.key, row.difference)?;
        }
        writeln!(out, "{} tables differ", differences.len())?;
        Ok(())
    }

    /// A copy's plan (`copy --dry-run`).
    pub(crate) fn copy_plan(&self, plan: &CopyPlan) -> Result<(), Failure> {
        if self.format == Format::Json {
            return self.json(&json!({"type": "copy_plan", "plan": plan}));
        }
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "copy {} ({}): {} table(s) in load order{}",
            plan.copy,
            plan.mode.name(),
            plan.tables.len(),
            if plan.resumed {
                ", resuming an earlier run"
            } else {
                ""
            }
        )?;
        let kept = plan.tables.iter().filter(|t| !t.triggers_off).count();
        writeln!(
            out,
            "foreign keys: {}",
            if plan.triggers_off {
                "checked by the copy, one anti-join per key over each chunk (triggers off)"
                    .to_string()
            } else if kept == plan.tables.len() {
                "checked by the server, row by row (triggers on)".to_string()
            } else {
                format!(
                    "checked by the copy, one anti-join per key over each chunk (triggers off), except for the {kept} table(s) that keep their triggers"
                )
            }
        )?;
        for (i, t) in plan.tables.iter().enumerate() {
            let mut notes = Vec::new();
            if !t.after.is_empty() {
                notes.push(format!("after {}", t.after.join(", ")));
            }
            if !t.cycle.is_empty() {
                notes.push(format!("in a cycle with {}", t.cycle.join(", ")));
            }
            if let Some(why) = &t.whole {
                notes.push(format!("whole: {why}"));
            }
            if let Some(why) = &t.triggers {
                notes.push(format!(
                    "{}: {why}",
                    if t.triggers_off {
                        "triggers off"
                    } else {
                        "keeps its triggers"
                    }
                ));
            }
            writeln!(
                out,
                "{:>3}. {}{}  ~{} rows, {} chunk(s){}{}",
                i + 1,
                t.table,
                t.source_table
                    .as_deref()
                    .map(|theirs| format!(" (source: {theirs})"))
                    .unwrap_or_default(),
                t.estimated_rows,
                t.chunks,
                if t.chunks_done > 0 {
                    format!(" ({} done)", t.chunks_done)
                } else {
                    String::new()
                },
                if notes.is_empty() {
                    String::new()
                } else {
                    format!("; {}", notes.join("; "))
                }
            )?;
            for c in &t.columns {
                let what = match c.action {
                    ColumnAction::Copy => continue,
                    ColumnAction::Widen => format!(
                        "{} -> {}",
                        c.source_type.as_deref().unwrap_or("?"),
                        c.target_type
                    ),
                    ColumnAction::TargetFills => {
                        format!("not in the source: the target fills it ({})", c.target_type)
                    }
                    ColumnAction::Generated => "generated: not written".to_string(),
                    ColumnAction::Convert => format!(
                        "{} -> {}: {}",
                        c.source_type
                            .as_deref()
                            .filter(|t| !t.is_empty())
                            .unwrap_or("(no declared type)"),
                        c.target_type,
                        c.conversion.as_deref().unwrap_or("converted")
                    ),
                    _ => format!("{:?}", c.action),
                };
                match &c.source_name {
                    Some(theirs) => writeln!(out, "       {} (source: {theirs}): {what}", c.name)?,
                    None => writeln!(out, "       {}: {what}", c.name)?,
                }
            }
        }
        if !plan.left_out.is_empty() {
            writeln!(
                out,
                "left out (name them in --tables to copy them): {}",
                plan.left_out.join(", ")
            )?;
        }
        if plan.unconvertible_total > 0 {
            writeln!(
                out,
                "{} value(s) would not convert (every row was read):",
                plan.unconvertible_total
            )?;
            // The first few in full, then how many per column (JSON lists the first 1,000).
            const SHOWN: usize = 20;
            for bad in plan.unconvertible.iter().take(SHOWN) {
                writeln!(out, "  - {bad}")?;
            }
            if plan.unconvertible_total > SHOWN as u64 {
                let mut per_column: std::collections::BTreeMap<(&str, &str), u64> =
                    std::collections::BTreeMap::new();
                for bad in &plan.unconvertible {
                    *per_column.entry((&bad.table, &bad.column)).or_default() += 1;
                }
                let counted = plan.unconvertible.len() as u64;
                writeln!(
                    out,
                    "  ... {} more; of the first {counted}, per column:",
                    plan.unconvertible_total - SHOWN as u64
                )?;
                for ((table, column), n) in per_column {
                    writeln!(out, "      {table}.{column}: {n}")?;
                }
            }
        } else if plan.converted {
            writeln!(out, "every value converts (every row was read)")?;
        }
        writeln!(out, "dry run: nothing was written")?;
        Ok(())
    }

    /// A copy's summary: per table, then sequences, analysis and verification.
    /// A follow's state (`cutover --status`, `--abandon`).
    pub(crate) fn follow_status(
        &self,
        status: &datamig::copy::FollowStatus,
    ) -> Result<(), Failure> {
        if self.format == Format::Json {
            return self.json(&json!({"type": "follow_status", "status": status}));
        }
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "copy {}: {}{}",
            status.copy,
            status.status,
            status
                .message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        )?;
        writeln!(
            out,
            "  slot {} (publication {}), applied up to {}: {} rows in {} source transactions",
            status.slot, status.publication, status.applied, status.rows, status.transactions
        )?;
        if let (Some(bytes), Some(seconds)) = (status.lag_bytes, status.lag_seconds) {
            writeln!(
                out,
                "  lag {:.1} s, {} of WAL retained by the slot, {:.0} rows/s; recorded {:.0} s ago",
                seconds,
                indicatif::HumanBytes(u64::try_from(bytes).unwrap_or(0)),
                status.rows_per_second.unwrap_or(0.0),
                status.updated_seconds_ago
            )?;
        }
        Ok(())
    }

    /// What a cut-over waits for (stderr: stdout holds the report).
    pub(crate) fn cutover_started(&self) {
        if self.format != Format::Json {
            eprintln!(
                "cut-over: the application's writes to the source must be stopped now; what commits after the position taken is not in the target"
            );
        }
    }

    /// What a cut-over did.
    pub(crate) fn cutover_report(
        &self,
        report: &datamig::copy::CutoverReport,
    ) -> Result<(), Failure> {
        if self.format == Format::Json {
            return self.json(&json!({"type": "cutover_report", "report": report}));
        }
        let mut out = std::io::stdout().lock();
        for w in &report.writers {
            writeln!(
                out,
                "warning: transaction of pid {} ({} from {}, {}, open {:.1} s) was writing on the source at the cut-over: what it commits later is not in the target ({})",
                w.pid, w.user, w.client, w.application, w.seconds, w.query
            )?;
        }
        writeln!(
            out,
            "cut over copy {} at source position {} in {:.1} s: {} sequence(s) set, {} table(s) analyzed, {} table(s) verified{}",
            report.copy,
            report.position,
            report.seconds,
            report.sequences,
            report.analyzed,
            report.tables,
            if report.differences.is_empty() {
                ", all equal".to_string()
            } else {
                format!("; DIFFERENT: {}", report.differences.join(", "))
            }
        )?;
        writeln!(
            out,
            "the slot and the publication are dropped from the source"
        )?;
        Ok(())
    }

    pub(crate) fn copy_report(&self, report: &CopyReport) -> Result<(), Failure> {
        if self.format == Format::Json {
            return self.json(&json!({"type": "copy_report", "report": report}));
        }
        let mut out = std::io::stdout().lock();
        if report.already_copied {
            writeln!(
                out,
                "nothing to copy: every chunk of copy {} was committed by an earlier run",
                report.plan.copy
            )?;
        } else {
            let width = report
                .tables
                .iter()
                .map(|t| t.table.len())
                .max()
                .unwrap_or(5)
                .max(5);
            writeln!(
                out,
                "{:<width$}  {:>12}  {:>10}  {:>8}  CHUNKS",
                "TABLE", "ROWS", "MB", "SECONDS"
            )?;
            for t in &report.tables {
                let mut chunks = format!("{}", t.chunks);
                if t.chunks_skipped > 0 {
                    chunks.push_str(&format!(" (+{} earlier)", t.chunks_skipped));
                }
                if t.inserted + t.updated > 0 {
                    chunks.push_str(&format!("  {} inserted, {} updated", t.inserted, t.updated));
                }
                writeln!(
                    out,
                    "{:<width$}  {:>12}  {:>10.1}  {:>8.1}  {chunks}",
                    t.table,
                    t.rows,
                    t.bytes as f64 / 1e6,
                    t.seconds
                )?;
            }
            writeln!(
                out,
                "copied {} rows ({:.1} MB) in {:.1} s, {:.1} MB/s",
                report.rows,
                report.bytes as f64 / 1e6,
                report.seconds,
                report.bytes as f64 / 1e6 / report.seconds.max(0.001)
            )?;
        }
        for s in &report.sequences {
            writeln!(
                out,
                "sequence {} ({}.{}): {} -> {}",
                s.sequence,
                s.table,
                s.column,
                s.from.map_or("unused".to_string(), |v| v.to_string()),
                s.to
            )?;
        }
        if !report.analyzed.is_empty() {
            writeln!(out, "analyzed {} table(s)", report.analyzed.len())?;
        }
        drop(out);
        if let Some(v) = &report.verification {
            self.comparison(&v.source, &v.target, &v.differences, &v.rows)?;
        }
        Ok(())
    }

    /// Progress of a copy: bars per table and overall on a terminal, JSON lines in JSON mode.
    pub(crate) fn copy_progress(&self) -> CopyProgress {
        CopyProgress {
            json: self.format == Format::Json,
            bars: indicatif::MultiProgress::with_draw_target(bar_target()),
            state: Mutex::new(CopyBars::default()),
        }
    }

    /// Progress of batched migrations: a bar on a terminal, JSON lines in JSON mode.
    pub(crate) fn progress(&self) -> ProgressOutput {
        ProgressOutput {
            json: self.format == Format::Json,
            bar: Mutex::new(None),
            last_wait: Mutex::new(None),
        }
    }
}

/// Where a copy's events go.
pub(crate) struct CopyProgress {
    json: bool,
    bars: indicatif::MultiProgress,
    state: Mutex<CopyBars>,
}

#[derive(Default)]
struct CopyBars {
    overall: Option<ProgressBar>,
    tables: std::collections::BTreeMap<String, ProgressBar>,
    /// The follow's lag, once following.
    follow: Option<ProgressBar>,
    /// When each table's last progress line was printed (JSON: at most one a second).
    printed: std::collections::BTreeMap<String, std::time::Instant>,
}

impl CopyProgress {
    pub(crate) fn update(&self, event: &CopyEvent) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if self.json {
            if let CopyEvent::Progress { table, .. } = event {
                let now = std::time::Instant::now();
                if state
                    .printed
                    .get(table)
                    .is_some_and(|at| now.duration_since(*at) < Duration::from_secs(1))
                {
                    return;
                }
                state.printed.insert(table.clone(), now);
            }
            let mut value = serde_json::to_value(event).unwrap_or(serde_json::Value::Null);
            value["type"] = json!("copy_event");
            let mut out = std::io::stdout().lock();
            let _ = serde_json::to_writer(&mut out, &value);
            let _ = writeln!(out);
            return;
        }
        let style = |template: &str| {
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ")
        };
        match event {
            CopyEvent::Planned { plan } => {
                let total: i64 = plan.tables.iter().map(|t| t.estimated_rows).sum();
                let bar = self
                    .bars
                    .add(ProgressBar::new(u64::try_from(total).unwrap_or(0)));
                bar.set_style(style(
                    "overall [{bar:30}] {pos}/{len} rows, {msg}, eta {eta}",
                ));
                state.overall = Some(bar);
            }
            CopyEvent::Progress {
                table,
                rows,
                bytes,
                estimated_rows,
                total_rows,
                total_bytes,
                ..
            } => {
                let bar = state.tables.entry(table.clone()).or_insert_with(|| {
                    let bar = self.bars.add(ProgressBar::new(*estimated_rows));
                    bar.set_style(style(
                        "{prefix} [{bar:30}] {pos}/{len} rows, {msg}, eta {eta}",
                    ));
                    bar.set_prefix(table.clone());
                    bar
                });
                bar.set_length((*estimated_rows).max(*rows));
                bar.set_position(*rows);
                bar.set_message(format!(
                    "{:.1} MB, {}/s",
                    *bytes as f64 / 1e6,
                    indicatif::HumanBytes(rate(bar, *bytes))
                ));
                if let Some(overall) = &state.overall {
                    overall.set_length(overall.length().unwrap_or(0).max(*total_rows));
                    overall.set_position(*total_rows);
                    overall.set_message(format!(
                        "{:.1} MB, {}/s",
                        *total_bytes as f64 / 1e6,
                        indicatif::HumanBytes(rate(overall, *total_bytes))
                    ));
                }
            }
            CopyEvent::TableCopied { table, .. } => {
                if let Some(bar) = state.tables.remove(table) {
                    bar.finish_and_clear();
                }
            }
            CopyEvent::Following {
                applied_lsn,
                lag_bytes,
                lag_seconds,
                rows_per_second,
                rows,
                transactions,
            } => {
                if let Some(overall) = state.overall.take() {
                    overall.finish_and_clear();
                }
                let bar = state.follow.get_or_insert_with(|| {
                    let bar = self.bars.add(ProgressBar::new_spinner());
                    bar.set_style(style("following {spinner} {msg}"));
                    bar
                });
                bar.tick();
                bar.set_message(format!(
                    "lag {lag_seconds:.1} s, {} behind, {rows_per_second:.0} rows/s; {rows} rows in {transactions} transactions applied, up to {applied_lsn}",
                    indicatif::HumanBytes(*lag_bytes)
                ));
            }
            CopyEvent::TableFailed { failure } => {
                if let Some(bar) = state.tables.remove(&failure.table) {
                    bar.finish_and_clear();
                }
                let _ = self.bars.println(format!("not finished: {failure}"));
            }
            _ => {}
        }
    }

    pub(crate) fn finish(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (_, bar) in std::mem::take(&mut state.tables) {
            bar.finish_and_clear();
        }
        if let Some(bar) = state.overall.take() {
            bar.finish_and_clear();
        }
        if let Some(bar) = state.follow.take() {
            bar.finish_and_clear();
        }
    }
}

/// Bytes per second since the bar started.
fn rate(bar: &ProgressBar, bytes: u64) -> u64 {
    let seconds = bar.elapsed().as_secs_f64().max(0.001);
    (bytes as f64 / seconds) as u64
}

/// One range of a migration walked by workers, for `status`:
/// `range 2 (id > 250000, up to id = 375000): worked by web-1/4121/2, 31 batches, checkpoint id = 281000`.
fn describe_range(range: &datamig::WorkRange) -> String {
    let bound = |b: &Option<String>| b.as_deref().map(datamig::__private::describe_checkpoint);
    let keys = match (bound(&range.lower), bound(&range.upper)) {
        (None, None) => "every key".to_string(),
        (Some(lower), None) => format!("after {lower}"),
        (None, Some(upper)) => format!("up to {upper}"),
        (Some(lower), Some(upper)) => format!("after {lower}, up to {upper}"),
    };
    let who = match (&range.worker, range.held, range.done) {
        (_, _, true) => "done".to_string(),
        (Some(worker), true, false) => format!("worked by {worker}"),
        (Some(worker), false, false) => format!("waiting (last worked by {worker})"),
        (None, _, false) => "waiting".to_string(),
    };
    let at = match (&range.checkpoint, range.done) {
        (Some(checkpoint), false) => {
            format!(
                ", checkpoint {}",
                datamig::__private::describe_checkpoint(checkpoint)
            )
        }
        _ => String::new(),
    };
    format!(
        "range {} ({keys}): {who}, {} batches, {} keys{at}",
        range.number, range.batches, range.keys_done
    )
}

/// `paused by app on web-1 at 2026-11-21 10:00:00 UTC: replica lag`.
pub(crate) fn describe_pause(pause: &Pause) -> String {
    format!(
        "paused by {} on {} at {}{}",
        pause.by,
        pause.host,
        pause.at.format("%Y-%m-%d %H:%M:%S UTC"),
        pause
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    )
}

/// `2 applied, 1 pending, 0 running, 0 drifted, 0 unknown` (`, 1 paused` when one is).
fn summary(statuses: &[MigrationStatus]) -> String {
    let count = |state| statuses.iter().filter(|s| s.state == state).count();
    let mut line = format!(
        "{} applied, {} pending, {} running, {} drifted, {} unknown",
        count(State::Applied),
        count(State::Pending),
        count(State::Running),
        count(State::Drifted),
        count(State::Unknown)
    );
    let paused = count(State::Paused);
    if paused > 0 {
        line.push_str(&format!(", {paused} paused"));
    }
    let cancelled = count(State::Cancelled);
    if cancelled > 0 {
        line.push_str(&format!(", {cancelled} cancelled"));
    }
    let other = count(State::NotForBackend);
    if other > 0 {
        line.push_str(&format!(", {other} not for this backend"));
    }
    line
}

pub(crate) fn state_name(state: State) -> &'static str {
    match state {
        State::Applied => "applied",
        State::Pending => "pending",
        State::Running => "running",
        State::Drifted => "drifted",
        State::Unknown => "unknown",
        State::NotForBackend => "not for this backend",
        State::Paused => "paused",
        State::Cancelled => "cancelled",
        _ => "other",
    }
}

fn describe_session(s: &SessionInfo) -> String {
    let age = |ms: Option<i64>| {
        ms.map_or("-".to_string(), |ms| {
            humantime::format_duration(Duration::from_secs(u64::try_from(ms / 1000).unwrap_or(0)))
                .to_string()
        })
    };
    format!(
        "session {} ({}, user {}, {}{}{}), transaction open for {}",
        s.pid,
        if s.application_name.is_empty() {
            "no application name"
        } else {
            &s.application_name
        },
        s.user.as_deref().unwrap_or("?"),
        s.state.as_deref().unwrap_or("?"),
        s.wait_event_type
            .as_deref()
            .map(|w| format!(", waiting for {w}"))
            .unwrap_or_default(),
        if s.blocked_by.is_empty() {
            String::new()
        } else {
            format!(", blocked by {:?}", s.blocked_by)
        },
        age(s.transaction_age_ms)
    )
}

/// Where progress events go.
pub(crate) struct ProgressOutput {
    json: bool,
    bar: Mutex<Option<(String, ProgressBar)>>,
    last_wait: Mutex<Option<String>>,
}

impl ProgressOutput {
    pub(crate) fn update(&self, event: &Progress) {
        if self.json {
            let mut value = serde_json::to_value(event).unwrap_or(serde_json::Value::Null);
            value["type"] = json!("progress");
            let mut out = std::io::stdout().lock();
            let _ = serde_json::to_writer(&mut out, &value);
            let _ = writeln!(out);
            return;
        }
        let mut slot = self.bar.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_none_or(|(id, _)| id != &event.id) {
            if let Some((_, old)) = slot.take() {
                old.finish_and_clear();
            }
            // Drawn on stderr, and not at all when stderr is not a terminal.
            let bar = ProgressBar::with_draw_target(event.estimated_total, bar_target());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} keys, {msg}, eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(event.id.clone());
            *slot = Some((event.id.clone(), bar));
        }
        if let Some((_, bar)) = slot.as_ref() {
            if let Some(total) = event.estimated_total {
                bar.set_length(total.max(event.keys_done));
            }
            bar.set_position(event.keys_done);
            let pacing = event
                .pacing
                .as_ref()
                .map(|p| format!("; {p}"))
                .unwrap_or_default();
            match &event.waiting {
                Some(why) => bar.set_message(format!("waiting: {why}")),
                None if event.workers > 1 => bar.set_message(format!(
                    "{:.0} keys/s by {} workers, batch of {} in {}ms{pacing}",
                    event.keys_per_second, event.workers, event.batch_keys, event.batch_ms
                )),
                None => bar.set_message(format!(
                    "{:.0} keys/s, batch of {} in {}ms{pacing}",
                    event.keys_per_second, event.batch_keys, event.batch_ms
                )),
            }
        }
        drop(slot);
        // Without a terminal the bar is not drawn: say why the run waits, once per reason.
        if let Some(why) = &event.waiting
            && !std::io::IsTerminal::is_terminal(&std::io::stderr())
        {
            let mut last = self.last_wait.lock().unwrap_or_else(|p| p.into_inner());
            if last.as_deref() != Some(why.as_str()) {
                eprintln!("{}: waiting before the next batch: {why}", event.id);
                *last = Some(why.clone());
            }
        }
    }

    /// Runs `print` with the bar hidden.
    pub(crate) fn suspend(&self, print: impl FnOnce()) {
        let slot = self.bar.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some((_, bar)) => bar.suspend(print),
            None => print(),
        }
    }

    pub(crate) fn finish(&self) {
        if let Some((_, bar)) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            bar.finish_and_clear();
        }
    }
}
