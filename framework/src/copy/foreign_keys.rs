//! The copy's own check of each foreign key, for the tables loaded with the target's
//! triggers off (see `triggers.rs`): one anti-join per key over exactly the rows the
//! chunk's transaction wrote, before it commits.
//!
//! Why: where the target role may set `session_replication_role` and a table has no
//! trigger of its own, the load runs in replica mode and each key is checked set-based,
//! instead of the server's row-by-row checks: the same guarantee at a third of the time,
//! with no DDL on the target's tables.
//!
//! Exactly the rows written: those of the chunk's key range (its bounds bound, and cast to
//! the target's types) whose `xmin` is the transaction's own. Where the two sides may order
//! the key differently (a collatable column, whose collations may differ; a SQLite source,
//! which orders by storage class and bytes), the source's bounds may not select in the
//! target the rows they selected in the source: the rows of the range written by this
//! transaction are then counted, and if they are fewer than the transaction wrote, every
//! row it wrote is checked (a scan of the table) instead of the range.
//!
//! How: the planner estimates the rows a transaction wrote (`xmin = ..`) at a fraction of a
//! percent of the range, so it probes the parent's index once a row (a nested loop), even
//! for a chunk of 250,000 rows, where one pass over the parent into a hash costs a third of
//! that. Where the chunk wrote more than an eighth of the parent's rows (by the larger of
//! the source's and the planner's estimate of the parent), nested loops are off for the
//! check.
//!
//! The transaction's id is written into the check as a literal: the server's
//! `pg_current_xact_id()` is parallel-unsafe, and with a literal the planner may hash the
//! parent in parallel workers. It may only where the copy's jobs would idle otherwise (the
//! last table's check, when no chunk is left to take): one worker for each idle job, never
//! more than the server's `max_parallel_workers_per_gather`.

use sqlx::AssertSqlSafe;
use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::catalog::{self, display};
use super::plan::Planned;
use super::sql::{Predicate, quote_literal, source_from};
use crate::backend::postgres::{explained_rows, query};
use crate::sql::quote_ident;

/// A chunk that wrote at least one row for this many of the parent's is checked without
/// nested loops: an index probe a row costs several times a row of a pass over the parent.
const ROWS_A_PROBE_PAYS_FOR: f64 = 8.0;

/// The first row of a chunk whose foreign key names a row the target does not hold, as
/// a message naming the constraint, the row and the missing key; `None` when every
/// reference holds. `range` is the chunk's key range over the target's columns (aliased
/// `c`), `written` the rows the transaction wrote into the table, `copied` the tables this
/// copy loads (for their source's estimates), `helpers` the parallel workers the check may
/// use.
pub(super) async fn dangling_reference(
    conn: &mut PgConnection,
    p: &Planned,
    range: &Predicate,
    written: u64,
    copied: &[Planned],
    helpers: usize,
) -> Result<Option<String>, sqlx::Error> {
    if p.target.foreign_keys.is_empty() || written == 0 {
        return Ok(None);
    }
    // The rows this transaction wrote, and the workers the check may use (this
    // transaction only).
    let xid: i64 = query(
        "SELECT pg_current_xact_id()::xid::text::int8, set_config('max_parallel_workers_per_gather',
           least(current_setting('max_parallel_workers_per_gather')::int, $1)::text, true)",
    )
    .bind(i32::try_from(helpers).unwrap_or(i32::MAX))
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    let written_here = format!("c.xmin = '{xid}'::xid");
    let from = source_from(&p.target);
    let mut scope = range.clone();
    if !range.sql.is_empty() && !range.exact {
        let sql = format!(
            "SELECT count(*) FROM {from} AS c WHERE {written_here}{}",
            range.sql
        );
        let in_range: i64 = range
            .apply(query(AssertSqlSafe(sql)))
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
        if u64::try_from(in_range).unwrap_or(0) != written {
            scope = Predicate::default();
        }
    }
    for fk in &p.target.foreign_keys {
        if fk.referenced.len() != fk.columns.len() {
            continue;
        }
        let parent = catalog::ident(&fk.references);
        let present: Vec<String> = fk
            .columns
            .iter()
            .map(|c| format!("c.{} IS NOT NULL", quote_ident(c)))
            .collect();
        let matched: Vec<String> = fk
            .columns
            .iter()
            .zip(&fk.referenced)
            .map(|(c, r)| format!("r.{} = c.{}", quote_ident(r), quote_ident(c)))
            .collect();
        let shown: Vec<String> = fk
            .columns
            .iter()
            .map(|c| format!("c.{}::text", quote_ident(c)))
            .collect();
        let key: Vec<String> = p
            .plan
            .key
            .iter()
            .map(|k| {
                format!(
                    "{} || ' = ' || c.{}::text",
                    quote_literal(k),
                    quote_ident(k)
                )
            })
            .collect();
        let key = if key.is_empty() {
            "'ctid = ' || c.ctid::text".to_string()
        } else {
            key.join(" || ', ' || ")
        };
        // The source's estimate of a parent the copy loads: the planner's, for a table
        // never analyzed, can be a fifth of its rows.
        let estimate = copied
            .iter()
            .find(|c| c.target.name == fk.references)
            .map(|c| c.plan.estimated_rows as f64);
        let hashed = joins_the_parent_whole(conn, &parent, estimate, written).await?;
        let sql = format!(
            "SELECT {key}, concat_ws(', ', {}) FROM {from} AS c
             WHERE {written_here} AND {}{} AND NOT EXISTS (SELECT 1 FROM {parent} AS r WHERE {})
             LIMIT 1",
            shown.join(", "),
            present.join(" AND "),
            scope.sql,
            matched.join(" AND ")
        );
        let found = scope
            .apply(query(AssertSqlSafe(sql)))
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(nestloop) = hashed {
            query("SELECT set_config('enable_nestloop', $1, true)")
                .bind(nestloop)
                .execute(&mut *conn)
                .await?;
        }
        if let Some(row) = found {
            let (row_key, values): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            return Ok(Some(format!(
                "foreign key {} of the row with {row_key}: ({}) = ({values}) is not present in table {} (checked by the copy: triggers are off)",
                fk.name,
                fk.columns.join(", "),
                display(&fk.references)
            )));
        }
    }
    Ok(None)
}

/// Turns nested loops off for this transaction when the chunk wrote at least one row for
/// [`ROWS_A_PROBE_PAYS_FOR`] rows of `parent` (the larger of `estimate`, the source's, and
/// the planner's estimate of a scan of it), and returns the setting to put back; `None`
/// when the check keeps the planner's choice.
async fn joins_the_parent_whole(
    conn: &mut PgConnection,
    parent: &str,
    estimate: Option<f64>,
    written: u64,
) -> Result<Option<String>, sqlx::Error> {
    let enough = (written as f64) * ROWS_A_PROBE_PAYS_FOR;
    if estimate.is_some_and(|rows| rows > enough) {
        // The source's estimate alone decides: probes.
        return Ok(None);
    }
    let first: Option<String> = query(AssertSqlSafe(format!("EXPLAIN SELECT FROM {parent}")))
        .fetch_optional(&mut *conn)
        .await?
        .map(|row| row.try_get(0))
        .transpose()?;
    let Some(parent_rows) = first.as_deref().and_then(explained_rows) else {
        return Ok(None);
    };
    let parent_rows = (parent_rows as f64).max(estimate.unwrap_or(0.0));
    if enough < parent_rows {
        return Ok(None);
    }
    let previous: String = query(
        "SELECT current_setting('enable_nestloop'), set_config('enable_nestloop', 'off', true)",
    )
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    Ok(Some(previous))
}
