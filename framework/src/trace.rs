//! What datamig tells the `tracing` crate: the names and fields of its spans, and the
//! helpers that fill them. The spans (target `datamig::...`, level INFO):
//!
//! | span | fields |
//! |---|---|
//! | `run` | `backend`, `mode` (`run`, `rerun`), `dry_run`; when it ends `applied`, `already_applied`, `paused`, `duration_ms`, `outcome` |
//! | `migration` | `id`, `action` (`apply`, `resume`, `rerun`), `batched`; when it ends `rows`, `batches`, `workers`, `duration_ms`, `outcome` |
//! | `batch` | `id`, `batch` (its number), `size`, `worker` and `range` (with workers); `bounds` in a single walk's batches (`ahead`: its keys read on another connection while the batch before ran, on MySQL; `read`: by the batch itself) and `begun` (`chained`: its transaction begun in the round trip of the commit of the batch before, on MariaDB; `own`: by the batch itself); when it ends `keys`, `rows`, `duration_ms`, `outcome` |
//! | `copy` | `source` (`postgres`, `sqlite`), `mode`, `jobs`; when it ends `tables`, `rows`, `bytes`, `duration_ms`, `outcome` |
//! | `copy_chunk` | `tables`, `chunks`; when it ends `rows`, `bytes`, `duration_ms`, `outcome` |
//! | `fleet` | `backend`, `command` (`run`, `status`, `check`, `pause`, `resume`, `each`), `targets`, `concurrency`, `canary`; when it ends `applied`, `already_applied`, `done`, `failed`, `not_reached`, `duration_ms`, `outcome` |
//! | `target` | `target` (its name: the URL without its password, and its schema); when it ends `outcome`, `duration_ms` |
//!
//! A fleet's `target` spans sit inside its `fleet` span, and each holds that target's `run`
//! span (or the span of the command).
//!
//! Each ends with an event carrying the same figures (`run finished`, `migration applied`,
//! `batch committed`, `copy finished`, `chunk copied`, `target finished`, `fleet finished`,
//! or what failed, at WARN or ERROR).

use std::time::Duration;

use crate::error::Error;

/// A duration in whole milliseconds, as the spans' `duration_ms` fields carry it.
pub(crate) fn millis(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// The `outcome` field of a span that ended with `err`.
pub(crate) fn outcome(err: &Error) -> &'static str {
    match err {
        Error::LockTimeout { .. } | Error::RangesHeld { .. } | Error::CopyBlocked { .. } => {
            "lock_timeout"
        }
        Error::Drift { .. } => "drift",
        Error::MigrationFailed { .. } => "failed",
        Error::Interrupted { .. } => "interrupted",
        Error::Stopped { .. } => "stopped",
        Error::CopyRejected { .. } | Error::CopyUnconvertible { .. } => "rejected",
        Error::CopyIncomplete { .. } => "incomplete",
        Error::CopyPlan { .. } | Error::CopyRefused(_) => "refused",
        Error::Config(_)
        | Error::UnknownId { .. }
        | Error::DuplicateId { .. }
        | Error::BadTarget { .. }
        | Error::DuplicateTarget { .. }
        | Error::SchemaMissing { .. } => "config",
        Error::Unreachable { .. } => "unreachable",
        Error::SchemaNotReady { .. } => "schema_not_ready",
        _ => "error",
    }
}
