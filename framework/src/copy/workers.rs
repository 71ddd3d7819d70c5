//! The worker pool: each worker a task with its own reader of the source and its own
//! target connection, taking units from the schedule until none is left. A unit whose
//! rows are refused stops its tables (and those that reference them) and the worker goes
//! on with fresh connections; anything else (or any refusal, with `fail_fast`) stops the
//! copy.

use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use sqlx::{AssertSqlSafe, Connection};
use tracing::Instrument;

use super::chunk::Chunk;
use super::connect::{connect, target_session};
use super::context::During;
use super::copier::Copier;
use super::event::CopyEvent;
use super::explain::explain;
use super::failure::{Explained, Failure, Place, Rejection};
use super::load::load;
use super::plan::Planned;
use super::report::TableReport;
use super::schedule::Unit;
use super::shared::Shared;
use super::source::{Reader, Readers, Source};
use crate::error::{Error, TableFailure};

/// What the workers did: per table, the tables analyzed as soon as their last chunk
/// committed, and the tables not finished.
pub(super) struct Loaded {
    pub(super) reports: Vec<TableReport>,
    pub(super) analyzed: Vec<usize>,
    pub(super) failures: Vec<TableFailure>,
}

/// Copies the chunks not yet done with up to `copier.jobs` workers.
pub(super) async fn copy_chunks<S: Source>(
    copier: &Copier,
    readers: S::Readers,
    progress: &str,
    copy: (&str, &str),
    planned: &Arc<Vec<Planned>>,
    chunks: Vec<Vec<Chunk>>,
) -> Result<Loaded, Error> {
    let shared = Arc::new(Shared::new(
        copier.clone(),
        readers,
        progress,
        copy,
        Arc::clone(planned),
        chunks,
    ));
    let workers = shared.workers;
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
                "a copy worker stopped unexpectedly ({err}); the chunks it was loading were rolled back: run the copy again to resume"
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
    Ok(Loaded {
        reports: shared.reports.lock().expect("reports lock").clone(),
        analyzed: shared.analyzed.lock().expect("analyzed lock").clone(),
        failures: shared.failures.lock().expect("failures lock").clone(),
    })
}

/// One worker: its own reader and target connection; for each unit it takes, the load in
/// a span `copy_chunk`, the tables the unit completes analyzed, the reports and events.
async fn worker<S: Source>(shared: &Shared<S>) -> Result<(), Error> {
    let mut src = shared.readers.open().await?;
    let mut dst = connect(&shared.copier.target, "target").await?;
    target_session(&mut dst, &shared.copier).await?;
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
        // A panic while loading is a bug; it is reported naming the unit's tables.
        let outcome = std::panic::AssertUnwindSafe(
            load::<S>(shared, &mut src, &mut dst, &unit).instrument(span.clone()),
        )
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(Failure::Other(Error::Config(format!(
                "loading {}: the copy worker panicked ({why}); this is a bug in datamig: please report it. The chunk was rolled back; run the copy again to resume",
                unit.parts
                    .iter()
                    .map(|(t, c)| format!(
                        "chunk {} of {} of {}",
                        c.number, shared.chunk_counts[*t], shared.planned[*t].plan.table
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))))
        });
        let ms = crate::trace::millis(started.elapsed());
        span.record("duration_ms", ms);
        let done = match outcome {
            Ok(done) => done,
            Err(Failure::ParentFailed) => {
                // Its tables are recorded as left behind by the parent that failed; the
                // transaction rolls back as it is dropped, and its rows were all read.
                span.record("outcome", "not started");
                shared
                    .schedule
                    .lock()
                    .expect("schedule lock")
                    .rolled_back(&unit);
                shared.notify.notify_waiters();
                continue;
            }
            Err(failure) => {
                let rejection = match explain(shared, &mut src, &mut dst, &unit, failure).await {
                    Explained::Stop(err) => {
                        span.record("outcome", crate::trace::outcome(&err));
                        tracing::error!(parent: &span, error = %err, duration_ms = ms, "chunk failed");
                        return Err(err);
                    }
                    Explained::Table(rejection) => rejection,
                };
                if shared.copier.fail_fast {
                    let place = place(shared, &unit, rejection.table, true);
                    let err = rejection.into_error(place);
                    span.record("outcome", crate::trace::outcome(&err));
                    tracing::error!(parent: &span, error = %err, duration_ms = ms, "chunk failed");
                    return Err(err);
                }
                span.record("outcome", "rejected");
                fail_tables(shared, &unit, rejection);
                // The reader may be mid-`COPY` and the target's transaction is aborted:
                // the next unit starts on fresh connections.
                src = shared.readers.recover(src).await?;
                let _ = dst.close().await;
                dst = connect(&shared.copier.target, "target").await?;
                target_session(&mut dst, &shared.copier).await?;
                continue;
            }
        };
        let (rows, bytes) = done
            .iter()
            .fold((0, 0), |(r, b), c| (r + c.rows, b + c.bytes));
        span.record("rows", rows);
        span.record("bytes", bytes);
        span.record("outcome", "committed");
        tracing::info!(parent: &span, rows, bytes, duration_ms = ms, "chunk copied");
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
            for (table, rows) in &finished {
                sink(&CopyEvent::TableCopied {
                    table: shared.planned[*table].plan.table.clone(),
                    rows: *rows,
                });
            }
        }
        // A table this unit completes is analyzed once the tables that reference it may
        // start: its ANALYZE runs beside their first chunks instead of before them (their
        // foreign-key checks are planned from its size in pages, and the statistics are
        // there for the application when the copy ends).
        if shared.copier.analyze {
            for (table, _) in &finished {
                let p = &shared.planned[*table];
                sqlx::raw_sql(AssertSqlSafe(format!("ANALYZE {}", p.target.ident())))
                    .execute(&mut dst)
                    .await
                    .during(|| format!("analyzing target table {}", p.plan.table))?;
                shared.analyzed.lock().expect("analyzed lock").push(*table);
                if let Some(sink) = &shared.copier.on_event {
                    sink(&CopyEvent::Analyzed {
                        table: p.plan.table.clone(),
                    });
                }
            }
        }
    }
    src.close().await;
    let _ = dst.close().await;
    Ok(())
}

/// Where a refused unit's table stands: its chunk, its chunks, and the chunks kept (every
/// table's when the copy stops, `all`, else the table's own).
fn place<S: Source>(shared: &Shared<S>, unit: &Unit, table: usize, all: bool) -> Place {
    let schedule = shared.schedule.lock().expect("schedule lock");
    let chunks = shared.chunk_counts[table];
    Place {
        table: shared.planned[table].plan.table.clone(),
        chunk: unit
            .parts
            .iter()
            .find(|(t, _)| *t == table)
            .map_or(1, |(_, c)| c.number),
        chunks,
        kept: if all {
            schedule.committed
        } else {
            chunks - schedule.left[table]
        },
    }
}

/// Records a refused unit: its tables stop at their last committed chunk, and so do the
/// tables that reference them (not started); each is reported, and the other workers
/// go on.
fn fail_tables<S: Source>(shared: &Shared<S>, unit: &Unit, rejection: Rejection) {
    let rejected = rejection.table;
    let tables = unit.tables();
    let behind = {
        let mut schedule = shared.schedule.lock().expect("schedule lock");
        schedule.rolled_back(unit);
        schedule.fail(&tables, &shared.parents)
    };
    let mut failures = vec![rejection.into_table_failure(place(shared, unit, rejected, false))];
    let name = |t: usize| shared.planned[t].plan.table.clone();
    for &t in tables.iter().filter(|t| **t != rejected) {
        let place = place(shared, unit, t, false);
        failures.push(TableFailure {
            table: place.table,
            chunk: Some(place.chunk),
            chunks: place.chunks,
            kept: place.kept,
            message: format!(
                "rolled back with {}, which it loads with in one transaction (their foreign keys form a cycle)",
                name(rejected)
            ),
            ..TableFailure::default()
        });
    }
    for (t, parent) in behind {
        let schedule = shared.schedule.lock().expect("schedule lock");
        failures.push(TableFailure {
            table: name(t),
            chunk: None,
            chunks: shared.chunk_counts[t],
            kept: shared.chunk_counts[t] - schedule.left[t],
            message: format!(
                "not started: it references {}, which did not finish",
                name(parent)
            ),
            ..TableFailure::default()
        });
    }
    shared.notify.notify_waiters();
    for failure in &failures {
        tracing::error!(table = %failure.table, failure = %failure, "table failed");
        if let Some(sink) = &shared.copier.on_event {
            sink(&CopyEvent::TableFailed {
                failure: failure.clone(),
            });
        }
    }
    shared
        .failures
        .lock()
        .expect("failures lock")
        .extend(failures);
}
