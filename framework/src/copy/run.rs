//! One copy, plan or comparison from start to end, its phases in order: the catalogs of
//! both sides (the source opened in the state every reader sees), the checked plan, what
//! earlier runs recorded (from this source only), the chunks, the plan recorded in the
//! target, the load by the workers, what follows it, and the verification; or, where
//! tables failed, the list of those not finished.

use std::sync::Arc;
use std::time::Instant;

use sqlx::Connection;
use tracing::Instrument;

use super::catalog;
use super::check::{self, Checked};
use super::chunk::Chunk;
use super::connect::{connect, target_session};
use super::copier::{Copier, SourceOptions};
use super::event::{CopyEvent, emit};
use super::finish;
use super::follow;
use super::options::{CopyMode, Purpose};
use super::progress;
use super::report::{CopyPlan, CopyReport, empty_report};
#[cfg(feature = "mysql")]
use super::source::mysql::MysqlSource;
use super::source::postgres::PostgresSource;
#[cfg(feature = "sqlite")]
use super::source::sqlite::SqliteSource;
use super::source::{Opened, Source};
use super::verify::verify;
use super::workers::{Loaded, copy_chunks};
use crate::error::Error;

/// One copy (or plan, or comparison), from the source the copier names.
pub(super) async fn run(copier: &Copier, purpose: Purpose) -> Result<CopyReport, Error> {
    match &copier.source {
        SourceOptions::Postgres(options) => {
            traced::<PostgresSource>(copier, options, purpose).await
        }
        #[cfg(feature = "sqlite")]
        SourceOptions::Sqlite(options) => traced::<SqliteSource>(copier, options, purpose).await,
        #[cfg(feature = "mysql")]
        SourceOptions::Mysql(options) => traced::<MysqlSource>(copier, options, purpose).await,
    }
}

/// One copy (or plan, or comparison) in the span `copy` (see [`crate::trace`]).
async fn traced<S: Source>(
    copier: &Copier,
    options: &S::Options,
    purpose: Purpose,
) -> Result<CopyReport, Error> {
    let span = tracing::info_span!(
        "copy",
        source = S::KIND,
        purpose = ?purpose,
        mode = copier.mode.name(),
        jobs = copier.jobs,
        tables = tracing::field::Empty,
        rows = tracing::field::Empty,
        bytes = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    let started = Instant::now();
    let result = copy::<S>(copier, options, purpose)
        .instrument(span.clone())
        .await;
    let duration_ms = crate::trace::millis(started.elapsed());
    span.record("duration_ms", duration_ms);
    match &result {
        Ok(report) => {
            span.record("tables", report.tables.len());
            span.record("rows", report.rows);
            span.record("bytes", report.bytes);
            span.record(
                "outcome",
                if report.already_copied {
                    "already_copied"
                } else {
                    "ok"
                },
            );
            tracing::info!(
                parent: &span,
                tables = report.tables.len(),
                rows = report.rows,
                bytes = report.bytes,
                duration_ms,
                "copy finished"
            );
        }
        Err(err) => {
            span.record("outcome", crate::trace::outcome(err));
            tracing::error!(parent: &span, error = %err, duration_ms, "copy failed");
        }
    }
    result
}

/// The checked plan of a copy from a PostgreSQL source, with its catalog entries, the
/// copy's name, and the target's identity: what a follow publishes and applies by. Nothing
/// is written.
pub(super) async fn checked(
    copier: &Copier,
    options: &sqlx::postgres::PgConnectOptions,
) -> Result<(String, Vec<super::plan::Planned>, String), Error> {
    let mut dst = connect(&copier.target, "target").await?;
    target_session(&mut dst, copier).await?;
    let target_tables = catalog::read(&mut dst, "target").await?;
    let (_, target) = catalog::copy_name(&mut dst)
        .await
        .map_err(|error| Error::CopyDatabase {
            during: "reading the target's system identifier".into(),
            error,
        })?;
    let Opened {
        mut source,
        tables: source_tables,
        name,
        ..
    } = PostgresSource::open(options, copier, &mut dst, &target_tables, Purpose::Plan).await?;
    let Checked { planned, .. } = check::plan(
        copier,
        Purpose::Plan,
        &mut source,
        &source_tables,
        &mut dst,
        target_tables,
    )
    .await?;
    source.close().await?;
    let _ = dst.close().await;
    Ok((name, planned, target))
}

/// The phases of one copy from a source of kind `S`.
async fn copy<S: Source>(
    copier: &Copier,
    options: &S::Options,
    purpose: Purpose,
) -> Result<CopyReport, Error> {
    let started = Instant::now();

    // 1. The catalogs: the target's, then the source's and the name the copy goes by, read
    //    in the state every reader of this run sees (an exported snapshot, or a SQLite
    //    file's write lock).
    let mut dst = connect(&copier.target, "target").await?;
    target_session(&mut dst, copier).await?;
    let target_tables = catalog::read(&mut dst, "target").await?;
    let Opened {
        mut source,
        tables: source_tables,
        name,
        identity,
        version,
        xids,
    } = S::open(options, copier, &mut dst, &target_tables, purpose).await?;

    // 2. The plan, checked against both databases; the triggers decided.
    let Checked {
        mut planned,
        left_out,
        copier,
    } = check::plan(
        copier,
        purpose,
        &mut source,
        &source_tables,
        &mut dst,
        target_tables,
    )
    .await?;
    let copier = &copier;
    let triggers_off = planned.iter().all(|p| p.triggers.off);
    let from_sqlite = S::KIND == "sqlite";

    if purpose == Purpose::Cutover {
        // The end of a follow: every change applied; the sequences, the statistics and
        // the comparison, as a copy's end has them.
        let plan = CopyPlan {
            copy: name,
            mode: copier.mode,
            tables: planned.iter().map(|p| p.plan.clone()).collect(),
            left_out,
            resumed: true,
            from_sqlite,
            converted: S::KIND != "postgres",
            triggers_off,
            unconvertible: Vec::new(),
            unconvertible_total: 0,
        };
        let mut report = empty_report(plan, &planned);
        if copier.sequences {
            report.sequences = finish::set_sequences(&mut dst, &planned, &copier.on_event).await?;
        }
        if copier.analyze {
            let every: Vec<_> = report
                .tables
                .iter()
                .cloned()
                .map(|mut t| {
                    t.rows = t.rows.max(1);
                    t
                })
                .collect();
            finish::analyze(
                &mut dst,
                &planned,
                &every,
                &mut report.analyzed,
                &copier.on_event,
            )
            .await?;
        }
        finish::flush(&mut dst).await?;
        if copier.verify {
            report.verification = Some(verify(&mut source, &mut dst, &planned).await?);
        }
        source.close().await?;
        let _ = dst.close().await;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    if purpose == Purpose::Compare {
        let verification = verify(&mut source, &mut dst, &planned).await?;
        let plan = CopyPlan {
            copy: name,
            mode: copier.mode,
            tables: planned.iter().map(|p| p.plan.clone()).collect(),
            left_out,
            resumed: false,
            from_sqlite,
            converted: S::KIND != "postgres",
            triggers_off,
            unconvertible: Vec::new(),
            unconvertible_total: 0,
        };
        let mut report = empty_report(plan, &planned);
        report.verification = Some(verification);
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    // 3. What earlier runs of this copy recorded: kept, or forgotten by a restart (a
    //    truncating copy, a new merge pass). Chunks recorded from another source of the
    //    same name, and a target holding rows this copy did not write, are refused.
    let copy_id = match copier.mode {
        CopyMode::Merge => format!("{name} merge"),
        _ => name,
    };
    let progress = progress::table(copier.progress_schema.as_deref());
    let progress_exists = progress::exists(&mut dst, &progress).await?;
    if progress_exists && purpose == Purpose::Run {
        progress::upgrade(&mut dst, &progress).await?;
    }
    let mut recorded = if progress_exists {
        progress::read(&mut dst, &progress, &copy_id).await?
    } else {
        progress::Recorded::default()
    };
    let finished_pass =
        !recorded.chunks.is_empty() && recorded.chunks.values().flatten().all(|c| c.done);
    let restart = copier.mode == CopyMode::DangerouslyTruncate
        || (copier.mode == CopyMode::Merge && finished_pass);
    if restart {
        recorded = progress::Recorded::default();
    }
    progress::refuse_other_source(&recorded, &identity, &copy_id, &progress)?;
    let recorded = recorded.chunks;
    if let Some(xids) = &xids {
        // A followed copy: its first snapshot, recorded before any row moves.
        let follow = follow::state::table(copier.progress_schema.as_deref());
        follow::state::record_snapshot(&mut dst, &follow, &copy_id, xids).await?;
    }
    if copier.mode == CopyMode::Empty {
        check::refuse_occupied(&mut dst, &planned, &recorded).await?;
    }

    // 4. The chunks: those recorded, or the source's split of each table (at least one
    //    per job for a table big enough where the jobs would idle, see `spread`).
    let spread_out = spread_tables(copier, &planned);
    let mut chunks: Vec<Vec<Chunk>> = Vec::new();
    for (p, spread_out) in planned.iter_mut().zip(spread_out) {
        let rows = if spread_out {
            spread(copier, p)
        } else {
            copier.chunk_rows
        };
        let table_chunks = match recorded.get(&p.plan.table) {
            Some(existing) if !existing.is_empty() => existing.clone(),
            _ => source.split(p, rows).await?,
        };
        p.plan.chunks = table_chunks.len();
        p.plan.chunks_done = table_chunks.iter().filter(|c| c.done).count();
        chunks.push(table_chunks);
    }
    let mut plan = CopyPlan {
        copy: copy_id.clone(),
        mode: copier.mode,
        tables: planned.iter().map(|p| p.plan.clone()).collect(),
        left_out,
        resumed: planned.iter().any(|p| p.plan.chunks_done > 0),
        from_sqlite,
        converted: S::KIND != "postgres",
        triggers_off,
        unconvertible: Vec::new(),
        unconvertible_total: 0,
    };
    if purpose == Purpose::Plan {
        let (found, total) = source.unconvertible(&planned, 1000).await?;
        plan.unconvertible = found;
        plan.unconvertible_total = total;
        let mut report = empty_report(plan, &planned);
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    let mut report = empty_report(plan.clone(), &planned);

    // 5. The plan recorded in the target, under the copy's lock, before any row moves.
    if !progress_exists {
        progress::create(&mut dst, &progress, copier.progress_schema.as_deref()).await?;
    }
    progress::lock(&mut dst, &copy_id).await?;
    progress::record(
        &mut dst, copier, &progress, &copy_id, &identity, &planned, &chunks, restart,
    )
    .await?;
    emit(&copier.on_event, &CopyEvent::Planned { plan: plan.clone() });

    // 6. The load: the workers' readers, in the state the source was opened in, and the
    //    workers streaming the chunks left.
    let readers = source.readers(copier.jobs).await?;
    let pending: usize = chunks.iter().flatten().filter(|c| !c.done).count();
    report.already_copied = pending == 0;
    let planned = Arc::new(planned);
    let mut failures = Vec::new();
    if pending > 0 {
        let loaded: Loaded = copy_chunks::<S>(
            copier,
            readers,
            &progress,
            (&copy_id, &version),
            &planned,
            chunks,
        )
        .await?;
        report.tables = loaded.reports;
        report.analyzed = loaded
            .analyzed
            .into_iter()
            .map(|t| planned[t].plan.table.clone())
            .collect();
        report.rows = report.tables.iter().map(|t| t.rows).sum();
        report.bytes = report.tables.iter().map(|t| t.bytes).sum();
        failures = loaded.failures;
    }

    // 7. Afterwards: sequences, ANALYZE, and one durable commit.
    if copier.sequences {
        report.sequences = finish::set_sequences(&mut dst, &planned, &copier.on_event).await?;
    }
    if copier.analyze {
        finish::analyze(
            &mut dst,
            &planned,
            &report.tables,
            &mut report.analyzed,
            &copier.on_event,
        )
        .await?;
    }
    if pending > 0 {
        finish::flush(&mut dst).await?;
    }
    if !failures.is_empty() {
        // What committed stays (flushed above); the tables not finished are listed, and the
        // same copy run again resumes just those.
        let _ = source.close().await;
        let _ = dst.close().await;
        let failed: Vec<&str> = failures.iter().map(|f| f.table.as_str()).collect();
        let copied = planned
            .iter()
            .filter(|p| !failed.contains(&p.plan.table.as_str()))
            .count();
        return Err(Error::CopyIncomplete {
            failed: failures,
            copied,
        });
    }

    // 8. The verification.
    if copier.verify {
        report.verification = Some(verify(&mut source, &mut dst, &planned).await?);
    }
    source.close().await?;
    let _ = dst.close().await;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The fewest rows a chunk is made smaller to (`spread`): below, a commit more costs more
/// than the job it keeps busy gains.
const SPREAD_ROWS: u64 = 50_000;

/// The chunk size a table is split by when it is spread: `chunk_rows`, or smaller, so that
/// a table (by the source's estimate of its rows) has a chunk for each job, none under
/// [`SPREAD_ROWS`]. Without an estimate, `chunk_rows`.
fn spread(copier: &Copier, p: &super::plan::Planned) -> u64 {
    let jobs = u64::try_from(copier.jobs.max(1)).unwrap_or(1);
    let estimate = u64::try_from(p.plan.estimated_rows).unwrap_or(0);
    if estimate == 0 {
        return copier.chunk_rows;
    }
    copier
        .chunk_rows
        .min(estimate.div_ceil(jobs).max(SPREAD_ROWS))
}

/// Which tables are spread over the jobs (see [`spread`]): every table when the copy
/// holds fewer chunks of `chunk_rows` than jobs (the jobs would idle), else only a table
/// that a table loaded with the target's checks references (that table cannot start
/// before its parents commit; one whose keys the copy checks starts beside them, see
/// `schedule.rs`). Elsewhere a chunk more costs the target CPU: one more pass over each
/// parent for its foreign-key check, and two loads into one table's B-trees.
fn spread_tables(copier: &Copier, planned: &[super::plan::Planned]) -> Vec<bool> {
    let chunks: u64 = planned
        .iter()
        .map(|p| {
            u64::try_from(p.plan.estimated_rows)
                .unwrap_or(0)
                .div_ceil(copier.chunk_rows.max(1))
                .max(1)
        })
        .sum();
    if chunks < u64::try_from(copier.jobs.max(1)).unwrap_or(1) {
        return vec![true; planned.len()];
    }
    let parents = super::schedule::parents(planned);
    let mut waited_for = vec![false; planned.len()];
    for (child, of) in parents.iter().enumerate() {
        if !planned[child].triggers.off {
            for &parent in of {
                waited_for[parent] = true;
            }
        }
    }
    waited_for
}
