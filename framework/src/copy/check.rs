//! The plan checked against both databases before any row moves: datamig's ledger brought
//! along, each table's triggers on or off, what only the source can check, the privileges
//! the copy needs, and target tables that hold rows this copy did not write.

use std::collections::BTreeMap;

use sqlx::AssertSqlSafe;
use sqlx::postgres::PgConnection;

use super::catalog::{self, Table, TableName};
use super::chunk::Chunk;
use super::context::{During, statement};
use super::copier::Copier;
use super::options::Purpose;
use super::plan::{self, Planned};
use super::source::Source;
use super::sql::source_from;
use super::triggers::{self, may_disable_triggers};
use crate::backend::postgres::query_scalar;
use crate::error::Error;

/// A plan every check passed.
pub(super) struct Checked {
    /// The tables in load order.
    pub(super) planned: Vec<Planned>,
    /// The tables left out, and why.
    pub(super) left_out: Vec<String>,
    /// The copier.
    pub(super) copier: Copier,
}

/// Plans the copy of `source_tables` into `target_tables` and checks the plan; datamig's
/// ledger, when it comes along, is created in the target first where it is missing (when
/// the copy runs; a plan leaves it out and says so).
pub(super) async fn plan<S: Source>(
    copier: &Copier,
    purpose: Purpose,
    source: &mut S,
    source_tables: &BTreeMap<TableName, Table>,
    dst: &mut PgConnection,
    mut target_tables: BTreeMap<TableName, Table>,
) -> Result<Checked, Error> {
    let mut selection = copier.selection.clone();
    let mut left_out_extra = Vec::new();
    let source_has_ledger = source_tables
        .keys()
        .any(|t| plan::LEDGER_TABLES.contains(&t.1.as_str()));
    if selection.ledger && source_has_ledger {
        let missing = plan::LEDGER_TABLES.iter().any(|l| {
            !target_tables
                .keys()
                .any(|t| t.1 == *l && source_tables.contains_key(t))
        });
        if missing && purpose == Purpose::Run {
            ensure_target_ledger(dst).await?;
            target_tables = catalog::read(dst, "target").await?;
        } else if missing {
            selection.ledger = false;
            left_out_extra.push(format!(
                "{} (datamig's ledger: created in the target and copied when the copy runs)",
                plan::LEDGER_TABLES.join(", ")
            ));
        }
    }
    // Each table's triggers off where the role may and that changes nothing but the speed
    // (auto), or as asked.
    let may_turn_off = may_disable_triggers(dst).await?;
    let (planned, mut left_out) = plan::plan(
        source_tables,
        &target_tables,
        &selection,
        copier.mode,
        |target| triggers::choose(copier.triggers, copier.mode, may_turn_off, target),
        |theirs, ours, problems| source.columns(theirs, ours, problems),
    )
    .map_err(|problems| Error::CopyPlan { problems })?;
    let copier = copier.clone();
    left_out.extend(left_out_extra);

    let mut problems = Vec::new();
    source.check(&planned, &mut problems);
    let choices: Vec<(String, &Table, &triggers::TriggerChoice)> = planned
        .iter()
        .map(|p| (p.plan.table.clone(), &p.target, &p.triggers))
        .collect();
    triggers::check(copier.triggers, may_turn_off, &choices, &mut problems);
    if copier.sequences && purpose == Purpose::Run {
        for p in &planned {
            for s in p.target.sequences.iter().filter(|s| !s.can_update) {
                problems.push(format!(
                    "the target role may not read and set sequence {} (of {}.{}), which the copy moves past the copied values: GRANT SELECT, UPDATE ON SEQUENCE {} TO it, or copy with --no-sequences",
                    s.sequence, p.plan.table, s.column, s.sequence
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::CopyPlan { problems });
    }
    Ok(Checked {
        planned,
        left_out,
        copier,
    })
}

/// Creates datamig's ledger in the target, as `datamig run` would on PostgreSQL.
async fn ensure_target_ledger(dst: &mut PgConnection) -> Result<(), Error> {
    use crate::backend::steps::LedgerSteps;
    crate::Postgres::ensure_ledger(dst, &crate::LedgerConfig::default())
        .await
        .map_err(|err| {
            Error::CopyRefused(format!(
                "the copy brings datamig's ledger along and the target has none, which the target role may not create ({}): create it with `datamig status` as a role that may, or copy with --no-ledger",
                crate::error::describe_sqlx(&err)
            ))
        })
}

/// Refuses a target table that holds rows this copy did not write (`recorded`: the chunks
/// earlier runs of this copy recorded), naming every such table.
pub(super) async fn refuse_occupied(
    dst: &mut PgConnection,
    planned: &[Planned],
    recorded: &BTreeMap<String, Vec<Chunk>>,
) -> Result<(), Error> {
    let mut occupied = Vec::new();
    for p in planned {
        let ours = recorded
            .get(&p.plan.table)
            .is_some_and(|chunks| chunks.iter().any(|c| c.done));
        if !ours && has_rows(dst, &p.target).await? {
            occupied.push(p.plan.table.clone());
        }
    }
    if !occupied.is_empty() {
        return Err(Error::CopyRefused(format!(
            "target table(s) {} already hold rows this copy did not write; nothing was written. Empty them, copy with --mode merge to insert missing rows and update changed ones by primary key, or with --mode dangerously-truncate to empty them first",
            occupied.join(", ")
        )));
    }
    Ok(())
}

/// Whether the table holds a row (of its own: an inheritance parent's children are tables
/// of their own).
async fn has_rows(conn: &mut PgConnection, table: &Table) -> Result<bool, Error> {
    let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", source_from(table));
    query_scalar(AssertSqlSafe(sql.clone()))
        .fetch_one(conn)
        .await
        .during(|| {
            format!(
                "reading whether target table {} holds rows ({})",
                catalog::display(&table.name),
                statement(&sql)
            )
        })
}
