//! What the workers of a copy share: the plan, the schedule, the readers of the source,
//! the counts behind the progress events and the report, and the tables that failed.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

use super::chunk::Chunk;
use super::copier::Copier;
use super::event::CopyEvent;
use super::plan::Planned;
use super::report::{TableReport, empty_reports};
use super::schedule::{Schedule, Take, Unit, parents};
use super::source::Source;
use crate::error::{Error, TableFailure};

/// What the workers share.
pub(super) struct Shared<S: Source> {
    pub(super) copier: Copier,
    /// The progress table.
    pub(super) progress: String,
    /// The name of the copy in the progress table.
    pub(super) copy_id: String,
    /// The state of the source this run reads, recorded with each chunk.
    pub(super) source_version: String,
    pub(super) planned: Arc<Vec<Planned>>,
    /// What hands each worker its reader of the source.
    pub(super) readers: S::Readers,
    /// Per table, the tables it waits for.
    pub(super) parents: Vec<Vec<usize>>,
    /// Per table, its chunks (of every run).
    pub(super) chunk_counts: Vec<usize>,
    pub(super) schedule: Mutex<Schedule>,
    /// The workers loading units: `--jobs`, or fewer where fewer units are left.
    pub(super) workers: usize,
    /// Wakes the workers waiting for a unit to become ready.
    pub(super) notify: Notify,
    /// Rows and bytes per table (rows include chunks committed before this run).
    rows: Vec<AtomicU64>,
    bytes: Vec<AtomicU64>,
    total_estimate: u64,
    /// What this run did, per table.
    pub(super) reports: Mutex<Vec<TableReport>>,
    /// Tables analyzed as soon as their last chunk committed.
    pub(super) analyzed: Mutex<Vec<usize>>,
    /// Tables not finished, and why, in the order they failed.
    pub(super) failures: Mutex<Vec<TableFailure>>,
}

impl<S: Source> Shared<S> {
    /// The state of a load of `chunks` (per planned table, done or not).
    pub(super) fn new(
        copier: Copier,
        readers: S::Readers,
        progress: &str,
        (copy_id, source_version): (&str, &str),
        planned: Arc<Vec<Planned>>,
        chunks: Vec<Vec<Chunk>>,
    ) -> Shared<S> {
        let rows: Vec<AtomicU64> = chunks
            .iter()
            .map(|c| AtomicU64::new(c.iter().filter(|c| c.done).map(|c| c.rows).sum()))
            .collect();
        let chunk_counts = chunks.iter().map(Vec::len).collect();
        let parents = parents(&planned);
        let schedule = Schedule::new(&planned, chunks);
        let workers = copier.jobs.min(schedule.queue.len()).max(1);
        Shared {
            workers,
            progress: progress.to_string(),
            copy_id: copy_id.to_string(),
            source_version: source_version.to_string(),
            readers,
            parents,
            chunk_counts,
            schedule: Mutex::new(schedule),
            notify: Notify::new(),
            rows,
            bytes: planned.iter().map(|_| AtomicU64::new(0)).collect(),
            total_estimate: planned
                .iter()
                .map(|p| u64::try_from(p.plan.estimated_rows).unwrap_or(0))
                .sum(),
            reports: Mutex::new(empty_reports(&planned)),
            analyzed: Mutex::new(Vec::new()),
            failures: Mutex::new(Vec::new()),
            planned,
            copier,
        }
    }

    /// The workers with nothing left to take: none while a unit waits in the queue, else
    /// those not loading one (they are done, or about to be).
    pub(super) fn idle_workers(&self) -> usize {
        let schedule = self.schedule.lock().expect("schedule lock");
        if schedule.queue.is_empty() {
            self.workers.saturating_sub(schedule.running)
        } else {
            0
        }
    }

    /// The next unit for this worker, waiting while none is ready; `None` when all are
    /// taken or the copy stops.
    pub(super) async fn next(&self) -> Result<Option<Unit>, Error> {
        self.wait_for(|schedule, parents| match schedule.take(parents) {
            Take::Unit(unit) => Some(Ok(Some(unit))),
            Take::Done => Some(Ok(None)),
            Take::Stuck => Some(Err(Error::Runtime(
                "the copy's load order left chunks that can never start; this is a bug in datamig: please report it with the plan (--dry-run)".into(),
            ))),
            Take::Wait => None,
        })
        .await
    }

    /// Waits until the tables `unit` references (outside it) have committed their last
    /// chunks: `false` when one of them failed meanwhile (it will not finish) or the copy
    /// stops. A unit started early (see `schedule.rs`) waits here
    /// before its foreign-key checks.
    pub(super) async fn parents_committed(&self, unit: &Unit) -> bool {
        self.wait_for(
            |schedule, parents| match schedule.parents_committed(unit, parents) {
                Some(true) => Some(true),
                None => Some(false),
                Some(false) => None,
            },
        )
        .await
    }

    /// Asks `answer` of the schedule (with each table's parents) until it answers, again
    /// each time a unit commits or fails or the copy stops.
    async fn wait_for<T>(
        &self,
        mut answer: impl FnMut(&mut Schedule, &[Vec<usize>]) -> Option<T>,
    ) -> T {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let answered = answer(
                &mut self.schedule.lock().expect("schedule lock"),
                &self.parents,
            );
            if let Some(answered) = answered {
                return answered;
            }
            notified.await;
        }
    }

    /// Stops the workers: none takes another unit.
    pub(super) fn stop(&self) {
        self.schedule.lock().expect("schedule lock").stop = true;
        self.notify.notify_waiters();
    }

    /// Rows and bytes of `table` streamed: a progress event.
    pub(super) fn progress(&self, table: usize, rows: u64, bytes: u64) {
        let table_rows = self.rows[table].fetch_add(rows, Ordering::Relaxed) + rows;
        let table_bytes = self.bytes[table].fetch_add(bytes, Ordering::Relaxed) + bytes;
        if let Some(sink) = &self.copier.on_event {
            sink(&CopyEvent::Progress {
                table: self.planned[table].plan.table.clone(),
                rows: table_rows,
                bytes: table_bytes,
                estimated_rows: u64::try_from(self.planned[table].plan.estimated_rows).unwrap_or(0),
                total_rows: self.rows.iter().map(|r| r.load(Ordering::Relaxed)).sum(),
                total_bytes: self.bytes.iter().map(|b| b.load(Ordering::Relaxed)).sum(),
                total_estimated_rows: self.total_estimate,
            });
        }
    }
}
