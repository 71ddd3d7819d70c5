//! The plan checked against both databases before any row moves: datamig's ledger brought
//! along, the target's triggers on or off, what only the source can check, the privileges
//! the copy needs, and target tables that hold rows this copy did not write.

use std::collections::BTreeMap;

use sqlx::AssertSqlSafe;
use sqlx::postgres::PgConnection;

use super::catalog::{self, Table, TableName};
use super::chunk::Chunk;
use super::copier::Copier;
use super::foreign_keys::{may_disable_triggers, tables_keeping_triggers};
use super::options::{Purpose, Triggers};
use super::plan::{self, Planned};
use super::source::Source;
use crate::backend::postgres::query_scalar;
use crate::error::Error;

/// A plan every check passed.
pub(super) struct Checked {
    /// The tables in load order.
    pub(super) planned: Vec<Planned>,
    /// The tables left out, and why.
    pub(super) left_out: Vec<String>,
    /// The copier with its triggers decided: [`Triggers::On`] or [`Triggers::Off`].
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
            target_tables = catalog::read(dst).await?;
        } else if missing {
            selection.ledger = false;
            left_out_extra.push(format!(
                "{} (datamig's ledger: created in the target and copied when the copy runs)",
                plan::LEDGER_TABLES.join(", ")
            ));
        }
    }
    // Triggers off where the role may and that changes nothing but the speed.
    let may_turn_off = may_disable_triggers(dst).await?;
    let mut triggers_off = match copier.triggers {
        Triggers::On => false,
        Triggers::Off => true,
        Triggers::Auto => may_turn_off,
    };
    let plan_with = |source: &S, off: bool| {
        plan::plan(
            source_tables,
            &target_tables,
            &selection,
            copier.mode,
            off,
            |theirs, ours, problems| source.columns(theirs, ours, problems),
        )
        .map_err(|problems| Error::CopyPlan { problems })
    };
    let (mut planned, mut left_out) = plan_with(source, triggers_off)?;
    if copier.triggers == Triggers::Auto && triggers_off {
        let kept = tables_keeping_triggers(dst).await?;
        if planned.iter().any(|p| kept.contains(&p.target.name)) {
            triggers_off = false;
            (planned, left_out) = plan_with(source, false)?;
        }
    }
    let copier = Copier {
        triggers: if triggers_off {
            Triggers::Off
        } else {
            Triggers::On
        },
        ..copier.clone()
    };
    left_out.extend(left_out_extra);

    let mut problems = Vec::new();
    source.check(&planned, &mut problems);
    if triggers_off && !may_turn_off {
        problems.push(
            "--triggers off sets session_replication_role, which the target role may not: copy as a superuser, GRANT SET ON PARAMETER session_replication_role TO the role (PostgreSQL 15 and later), or copy with --triggers on".to_string(),
        );
    }
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

/// Whether the table holds a row.
async fn has_rows(conn: &mut PgConnection, table: &Table) -> Result<bool, Error> {
    Ok(query_scalar(AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM {})",
        table.ident()
    )))
    .fetch_one(conn)
    .await?)
}
