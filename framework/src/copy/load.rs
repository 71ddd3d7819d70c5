//! One unit of work loaded into the target in one transaction: each of its chunks streamed
//! from the source's reader into `COPY .. FROM STDIN` (or into a stage, merged), marked in
//! the progress table, and, with triggers off, its foreign keys checked before it commits.

use sqlx::postgres::PgConnection;

use super::failure::Failure;
use super::foreign_keys::dangling_reference;
use super::merge;
use super::options::{CopyMode, Triggers};
use super::progress;
use super::schedule::Unit;
use super::shared::Shared;
use super::source::{Reader, Source};
use crate::error::Error;
use crate::sql::quote_ident;

/// What a chunk wrote.
#[derive(Default)]
pub(super) struct Counts {
    pub(super) rows: u64,
    pub(super) bytes: u64,
    pub(super) inserted: u64,
    pub(super) updated: u64,
}

/// Loads `unit` in one transaction on `dst`, reading its rows with `src`; what each of its
/// chunks wrote.
pub(super) async fn load<S: Source>(
    shared: &Shared<S>,
    src: &mut S::Reader,
    dst: &mut PgConnection,
    unit: &Unit,
) -> Result<Vec<Counts>, Failure> {
    let first = unit.parts[0].0;
    let mut tx = crate::backend::isolation::begin_read_committed(dst)
        .await
        .map_err(|e| Failure::Target(first, e))?;
    if unit.parts.len() > 1 {
        sqlx::raw_sql("SET CONSTRAINTS ALL DEFERRED")
            .execute(&mut *tx)
            .await
            .map_err(|e| Failure::Target(first, e))?;
    }
    let mut done = Vec::new();
    for (stage, (table, chunk)) in unit.parts.iter().enumerate() {
        let p = &shared.planned[*table];
        let columns: Vec<String> = p.plan.copied().map(|c| quote_ident(&c.name)).collect();
        let list = columns.join(", ");
        let merge = shared.copier.mode == CopyMode::Merge;
        let format = if S::binary(p) { " (FORMAT binary)" } else { "" };
        let into = if merge {
            merge::stage(&mut tx, stage, p, &list)
                .await
                .map_err(|e| Failure::Target(*table, e))?
        } else {
            p.target.ident()
        };
        let mut counts = Counts::default();
        {
            let mut copy_in = tx
                .copy_in_raw(&format!("COPY {into} ({list}) FROM STDIN{format}"))
                .await
                .map_err(|e| Failure::Target(*table, e))?;
            let progress = |rows, bytes| shared.progress(*table, rows, bytes);
            let streamed = src.stream(p, *table, chunk, &mut copy_in, &progress).await;
            match streamed {
                Ok(bytes) => counts.bytes = bytes,
                Err(failure) => {
                    let _ = copy_in.abort("the copy stopped").await;
                    return Err(failure);
                }
            }
            counts.rows = copy_in
                .finish()
                .await
                .map_err(|e| Failure::Target(*table, e))?;
        }
        if merge {
            let (inserted, updated) = merge::merge(&mut tx, p, &into, &columns)
                .await
                .map_err(|e| Failure::Target(*table, e))?;
            counts.inserted = inserted;
            counts.updated = updated;
        }
        let marked = progress::mark(
            &mut tx,
            &shared.progress,
            &shared.copy_id,
            &p.plan.table,
            chunk.number,
            counts.rows,
            counts.bytes,
        )
        .await
        .map_err(|e| Failure::Target(*table, e))?;
        if marked != 1 {
            return Err(Failure::Other(Error::CopyRefused(format!(
                "chunk {} of {} was committed by another copy meanwhile; this chunk was rolled back: run the copy again to go on",
                chunk.number, p.plan.table
            ))));
        }
        done.push(counts);
    }
    // Triggers off: the foreign keys are checked here, set-based, for the rows of this
    // unit, before it commits (as the target's own checks would have, row by row).
    if shared.copier.triggers == Triggers::Off {
        for (table, chunk) in &unit.parts {
            let p = &shared.planned[*table];
            if let Some(message) = dangling_reference(&mut tx, p, &S::target_range(p, chunk))
                .await
                .map_err(|e| Failure::Target(*table, e))?
            {
                return Err(Failure::Rejected(*table, message));
            }
        }
    }
    tx.commit().await.map_err(|e| Failure::Target(first, e))?;
    Ok(done)
}
