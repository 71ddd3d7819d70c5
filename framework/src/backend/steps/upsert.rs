//! The upsert's step.

use std::future::Future;

use super::connection::ConnectionSteps;
use crate::error::Error;
use crate::merge::{UpsertReport, UpsertRequest};

/// The upsert's step: the statement is built once (`merge.rs`); how rows reach it and how
/// its counts come back differ by database.
pub trait UpsertSteps: ConnectionSteps {
    /// Runs an upsert built by [`crate::Upsert`]. Returns what it did, and how many rows
    /// it wrote to temporary staging tables where
    /// [`TableSteps::write_count`](super::tables::TableSteps::write_count) counts those.
    fn upsert(
        conn: &mut Self::Connection,
        request: UpsertRequest<'_>,
    ) -> impl Future<Output = Result<(UpsertReport, u64), Error>> + Send;
}
