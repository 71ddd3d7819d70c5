//! What a copy reports as it goes ([`CopyEvent`]) and where it reports it.

use std::sync::Arc;

use super::report::{CopyPlan, SequenceSet};
use crate::error::TableFailure;

/// What a copy reports as it goes, to [`Copier::on_event`](crate::copy::Copier::on_event).
#[derive(Clone, Debug, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CopyEvent {
    /// The plan is checked and the chunks are known; rows are about to move.
    Planned {
        /// The plan.
        plan: CopyPlan,
    },
    /// Rows of a table arrived in the target (not yet committed).
    Progress {
        /// `schema.table`.
        table: String,
        /// Rows of the table copied so far, including chunks committed by earlier runs.
        rows: u64,
        /// Bytes of `COPY` data of the table streamed by this run.
        bytes: u64,
        /// The source's estimate of the table's rows.
        estimated_rows: u64,
        /// Rows of every table copied so far.
        total_rows: u64,
        /// Bytes streamed by this run, all tables.
        total_bytes: u64,
        /// The estimate of every table's rows.
        total_estimated_rows: u64,
    },
    /// A chunk committed with its progress row.
    ChunkCopied {
        /// `schema.table`.
        table: String,
        /// Its number (from 1).
        chunk: usize,
        /// The table's chunks.
        chunks: usize,
        /// Rows it wrote (merge: rows read from the source).
        rows: u64,
        /// Bytes of `COPY` data.
        bytes: u64,
        /// How long it took.
        ms: u64,
    },
    /// Every chunk of a table is committed.
    TableCopied {
        /// `schema.table`.
        table: String,
        /// Rows of the table copied by this run.
        rows: u64,
    },
    /// A table stopped at its last committed chunk: the target rejected a row of it (or
    /// it references a table that failed, and was not started). The other tables go on.
    TableFailed {
        /// Where it stopped and why.
        failure: TableFailure,
    },
    /// A sequence was moved forward.
    SequenceSet(SequenceSet),
    /// A table was analyzed.
    Analyzed {
        /// `schema.table`.
        table: String,
    },
    /// The follow's lag, about once a second ([`Copier::follow`](crate::copy::Copier::follow)).
    Following {
        /// The source's commit position last applied.
        applied_lsn: String,
        /// WAL bytes of the source the follower has not confirmed (the slot retains them).
        lag_bytes: u64,
        /// Seconds between the last applied transaction's commit on the source and now (0
        /// when nothing is waiting).
        lag_seconds: f64,
        /// Rows applied a second since the last event.
        rows_per_second: f64,
        /// Rows applied by this follower.
        rows: u64,
        /// Source transactions applied by this follower.
        transactions: u64,
    },
}

/// Receives [`CopyEvent`]s, from whichever worker produced them.
pub type EventSink = Arc<dyn Fn(&CopyEvent) + Send + Sync>;

/// Sends `event` to the sink, if there is one.
pub(super) fn emit(sink: &Option<EventSink>, event: &CopyEvent) {
    if let Some(sink) = sink {
        sink(event);
    }
}
