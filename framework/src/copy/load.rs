//! One unit of work loaded into the target in one transaction: each of its chunks streamed
//! from the source's reader into `COPY .. FROM STDIN` (or into a stage, merged; or, for a
//! table with no column to copy, its rows counted and inserted as they are), marked in
//! the progress table, and, for a unit loaded with triggers off, its foreign keys checked
//! before it commits.

use sqlx::AssertSqlSafe;
use sqlx::postgres::PgConnection;

use super::catalog::{Trigger, ident};
use super::failure::Failure;
use super::foreign_keys::dangling_reference;
use super::merge;
use super::options::CopyMode;
use super::progress;
use super::schedule::Unit;
use super::shared::Shared;
use super::source::{Reader, Source};
use crate::backend::postgres::query;
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
    // Triggers off for this transaction when every table of the unit loads so; triggers
    // that fire in the replica role too are disabled until it commits (`--triggers off`).
    let off = unit
        .parts
        .iter()
        .all(|(t, _)| shared.planned[*t].triggers.off);
    let mut setup = Vec::new();
    if unit.parts.len() > 1 {
        setup.push("SET CONSTRAINTS ALL DEFERRED".to_string());
    }
    if off {
        setup.push("SET LOCAL session_replication_role = replica".to_string());
        for table in unit.tables() {
            for trigger in &shared.planned[table].triggers.disable {
                setup.push(switch(trigger, false));
            }
        }
    }
    if !setup.is_empty() {
        sqlx::raw_sql(AssertSqlSafe(setup.join("; ")))
            .execute(&mut *tx)
            .await
            .map_err(|e| Failure::Target(first, e))?;
    }
    let mut done = Vec::new();
    for (stage, (table, chunk)) in unit.parts.iter().enumerate() {
        let p = &shared.planned[*table];
        let columns: Vec<String> = p.plan.copied().map(|c| quote_ident(&c.name)).collect();
        let mut counts = Counts::default();
        if columns.is_empty() {
            // No column to copy (every column dropped, or generated): the rows still count.
            let rows = src.count(p, *table, chunk).await?;
            query(AssertSqlSafe(format!(
                "INSERT INTO {} SELECT FROM generate_series(1, $1)",
                p.target.ident()
            )))
            .bind(i64::try_from(rows).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .map_err(|e| Failure::Target(*table, e))?;
            counts.rows = rows;
            shared.progress(*table, rows, 0);
        } else {
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
        }
        let marked = progress::mark(
            &mut tx,
            &shared.progress,
            &shared.copy_id,
            &p.plan.table,
            chunk.number,
            counts.rows,
            counts.bytes,
            &shared.source_version,
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
    if off {
        // The foreign keys are checked here, set-based, over exactly the rows this
        // transaction wrote, before it commits (as the target's own checks would have,
        // row by row); a unit started early first waits for its parents to commit.
        if !shared.parents_committed(unit).await {
            return Err(Failure::ParentFailed);
        }
        let merge = shared.copier.mode == CopyMode::Merge;
        for ((table, chunk), counts) in unit.parts.iter().zip(&done) {
            let p = &shared.planned[*table];
            let written = if merge {
                counts.inserted + counts.updated
            } else {
                counts.rows
            };
            if let Some(message) = dangling_reference(
                &mut tx,
                p,
                &S::target_range(p, chunk),
                written,
                &shared.planned,
                shared.idle_workers(),
            )
            .await
            .map_err(|e| Failure::Target(*table, e))?
            {
                return Err(Failure::Rejected(*table, message));
            }
        }
        let mut restore = Vec::new();
        for table in unit.tables() {
            for trigger in &shared.planned[table].triggers.disable {
                restore.push(switch(trigger, true));
            }
        }
        if !restore.is_empty() {
            sqlx::raw_sql(AssertSqlSafe(restore.join("; ")))
                .execute(&mut *tx)
                .await
                .map_err(|e| Failure::Target(first, e))?;
        }
    }
    tx.commit().await.map_err(|e| Failure::Target(first, e))?;
    Ok(done)
}

/// `ALTER TABLE .. DISABLE TRIGGER ..`, or the statement that enables it again as it was
/// (`ALWAYS` or `REPLICA`).
fn switch(trigger: &Trigger, enable: bool) -> String {
    let how = match (enable, trigger.enabled.as_str()) {
        (false, _) => "DISABLE",
        (true, "R") => "ENABLE REPLICA",
        (true, _) => "ENABLE ALWAYS",
    };
    format!(
        "ALTER TABLE {} {how} TRIGGER {}",
        ident(&trigger.on),
        quote_ident(&trigger.name)
    )
}
