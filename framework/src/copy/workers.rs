//! The worker pool: each worker a task with its own reader of the source and its own
//! target connection, taking units from the schedule until none is left or one fails.

use std::sync::Arc;
use std::time::Instant;

use sqlx::{AssertSqlSafe, Connection};
use tracing::Instrument;

use super::chunk::Chunk;
use super::connect::{connect, target_session};
use super::copier::Copier;
use super::event::CopyEvent;
use super::explain::explain;
use super::load::load;
use super::plan::Planned;
use super::report::TableReport;
use super::shared::Shared;
use super::source::{Reader, Readers, Source};
use crate::error::Error;

/// Copies the chunks not yet done with up to `copier.jobs` workers; the reports per table
/// and the tables analyzed as soon as their last chunk committed.
pub(super) async fn copy_chunks<S: Source>(
    copier: &Copier,
    readers: S::Readers,
    progress: &str,
    copy_id: &str,
    planned: &Arc<Vec<Planned>>,
    chunks: Vec<Vec<Chunk>>,
) -> Result<(Vec<TableReport>, Vec<usize>), Error> {
    let shared = Arc::new(Shared::new(
        copier.clone(),
        readers,
        progress,
        copy_id,
        Arc::clone(planned),
        chunks,
    ));
    let workers = copier.jobs.min(shared.units()).max(1);
    // Each worker is a task with its own pair of connections. The first failure stops the
    // others at once: their chunk in progress is rolled back when its connection closes.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let shared = Arc::clone(&shared);
        // The chunks' spans are children of the copy's span.
        tasks.spawn(async move { worker::<S>(&shared).await }.in_current_span());
    }
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.unwrap_or_else(|err| {
            Err(Error::Runtime(format!(
                "a copy worker stopped unexpectedly: {err}"
            )))
        });
        if let Err(err) = result {
            shared.stop();
            tasks.abort_all();
            failure.get_or_insert(err);
        }
    }
    if let Some(err) = failure {
        return Err(err);
    }
    let reports = shared.reports.lock().expect("reports lock").clone();
    let analyzed = shared.analyzed.lock().expect("analyzed lock").clone();
    Ok((reports, analyzed))
}

/// One worker: its own reader and target connection; for each unit it takes, the load in
/// a span `copy_chunk`, the tables the unit completes analyzed, the reports and events.
async fn worker<S: Source>(shared: &Shared<S>) -> Result<(), Error> {
    let mut src = shared.readers.open().await?;
    let mut dst = connect(&shared.copier.target, "target").await?;
    target_session(&mut dst, &shared.copier, true).await?;
    while let Some(unit) = shared.next().await? {
        let started = Instant::now();
        let span = tracing::info_span!(
            "copy_chunk",
            tables = %unit
                .parts
                .iter()
                .map(|(t, _)| shared.planned[*t].plan.table.as_str())
                .collect::<Vec<_>>()
                .join(","),
            chunks = %unit
                .parts
                .iter()
                .map(|(_, c)| c.number.to_string())
                .collect::<Vec<_>>()
                .join(","),
            rows = tracing::field::Empty,
            bytes = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let outcome = load::<S>(shared, &mut src, &mut dst, &unit)
            .instrument(span.clone())
            .await;
        let ms = crate::trace::millis(started.elapsed());
        span.record("duration_ms", ms);
        let done = match outcome {
            Ok(done) => done,
            Err(failure) => {
                let err = explain(shared, &mut src, &mut dst, &unit, failure).await;
                span.record("outcome", crate::trace::outcome(&err));
                tracing::error!(parent: &span, error = %err, duration_ms = ms, "chunk failed");
                return Err(err);
            }
        };
        let (rows, bytes) = done
            .iter()
            .fold((0, 0), |(r, b), c| (r + c.rows, b + c.bytes));
        span.record("rows", rows);
        span.record("bytes", bytes);
        span.record("outcome", "committed");
        tracing::info!(parent: &span, rows, bytes, duration_ms = ms, "chunk copied");
        // A table this unit completes is analyzed before the tables that reference it may
        // start: their foreign-key checks are planned with its statistics, not an empty
        // table's.
        if shared.copier.analyze {
            let completes: Vec<usize> = {
                let schedule = shared.schedule.lock().expect("schedule lock");
                unit.tables()
                    .into_iter()
                    .filter(|t| {
                        schedule.left[*t] == unit.parts.iter().filter(|(x, _)| x == t).count()
                    })
                    .collect()
            };
            for table in completes {
                let p = &shared.planned[table];
                sqlx::raw_sql(AssertSqlSafe(format!("ANALYZE {}", p.target.ident())))
                    .execute(&mut dst)
                    .await?;
                shared.analyzed.lock().expect("analyzed lock").push(table);
                if let Some(sink) = &shared.copier.on_event {
                    sink(&CopyEvent::Analyzed {
                        table: p.plan.table.clone(),
                    });
                }
            }
        }
        let mut finished = Vec::new();
        {
            let mut schedule = shared.schedule.lock().expect("schedule lock");
            let mut reports = shared.reports.lock().expect("reports lock");
            schedule.finished(&unit);
            for ((table, _), counts) in unit.parts.iter().zip(&done) {
                let report = &mut reports[*table];
                report.rows += counts.rows;
                report.inserted += counts.inserted;
                report.updated += counts.updated;
                report.bytes += counts.bytes;
                report.chunks += 1;
                report.seconds += started.elapsed().as_secs_f64() / unit.parts.len() as f64;
                if schedule.left[*table] == 0 {
                    finished.push((*table, report.rows));
                }
            }
        }
        shared.notify.notify_waiters();
        if let Some(sink) = &shared.copier.on_event {
            for ((table, chunk), counts) in unit.parts.iter().zip(&done) {
                sink(&CopyEvent::ChunkCopied {
                    table: shared.planned[*table].plan.table.clone(),
                    chunk: chunk.number,
                    chunks: shared.chunk_counts[*table],
                    rows: counts.rows,
                    bytes: counts.bytes,
                    ms,
                });
            }
            for (table, rows) in finished {
                sink(&CopyEvent::TableCopied {
                    table: shared.planned[table].plan.table.clone(),
                    rows,
                });
            }
        }
    }
    src.close().await;
    let _ = dst.close().await;
    Ok(())
}
