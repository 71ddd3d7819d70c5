//! The plan of a copy, derived from the two catalogs alone (pure, unit-tested): which
//! tables, which columns, in which order, and every reason the copy cannot start.

use std::collections::{BTreeMap, BTreeSet};

use super::catalog::{Table, TableName, display};
use super::options::{CopyMode, Selection};
use super::shapes;
use super::triggers::TriggerChoice;

/// The tables of datamig's ledger that a copy from SQLite brings along (see
/// [`Copier::ledger`](super::Copier::ledger)).
pub(crate) const LEDGER_TABLES: &[&str] = &["datamig_ledger", "datamig_runs"];

/// Tables of schema tools and of datamig itself, left out unless named in `--tables`: their
/// rows describe the schema of their own database, which the target's tools created.
pub const BOOKKEEPING_TABLES: &[&str] = &[
    "_sqlx_migrations",
    "datamig_ledger",
    "datamig_runs",
    "datamig_ledger_runs",
    "datamig_ledger_lock",
    "datamig_ledger_lease",
    "datamig_ledger_layout",
    "datamig_copy_progress",
    "schema_migrations",
    "ar_internal_metadata",
    "flyway_schema_history",
    "schema_version",
    "alembic_version",
    "__diesel_schema_migrations",
    "refinery_schema_history",
    "goose_db_version",
    "django_migrations",
    "knex_migrations",
    "knex_migrations_lock",
    "__EFMigrationsHistory",
    "SequelizeMeta",
    "gorp_migrations",
    "databasechangelog",
    "databasechangeloglock",
    "seaql_migrations",
];

/// What happens to one column of a table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ColumnAction {
    /// Copied as it is (the same type on both sides).
    Copy,
    /// Copied into a wider type (`integer` into `bigint`, `varchar(20)` into `text`).
    Widen,
    /// Not in the source (or left out): the target fills it (its default, identity, a
    /// `BEFORE INSERT` trigger, or `NULL`).
    TargetFills,
    /// Generated on the target (or only generated on the source): never written.
    Generated,
    /// Converted from SQLite's values into the target's type, value by value, checked
    /// ([`ColumnPlan::conversion`] says how).
    Convert,
}

/// One column of a planned table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ColumnPlan {
    /// Its name.
    pub name: String,
    /// Its type in the source (`None`: not there).
    pub source_type: Option<String>,
    /// Its name in a SQLite or MySQL source, where the target names it otherwise
    /// (`UnitPrice` for `unit_price`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_name: Option<String>,
    /// Its type in the target.
    pub target_type: String,
    /// What the copy does with it.
    pub action: ColumnAction,
    /// How its values are converted (a SQLite source), for example "integers 0/1 (or text
    /// true/false, t/f)" for a `boolean`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversion: Option<String>,
}

/// One table of a plan, in load order.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct TablePlan {
    /// `schema.table`.
    pub table: String,
    /// Its name in a SQLite or MySQL source, where the target names it otherwise
    /// (`InvoiceLine` for `invoice_line`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_table: Option<String>,
    /// Its columns as the target has them, and what the copy does with each.
    pub columns: Vec<ColumnPlan>,
    /// The primary key that orders and splits it (empty: none; it is copied whole).
    pub key: Vec<String>,
    /// The source's estimate of its rows.
    pub estimated_rows: i64,
    /// The tables it references, loaded before it.
    pub after: Vec<String>,
    /// Tables whose foreign keys form a cycle with it: loaded together in one transaction
    /// with the constraints deferred.
    pub cycle: Vec<String>,
    /// Why it is copied in one piece rather than split in key ranges, if it must be.
    pub whole: Option<String>,
    /// How many chunks it is copied in (known once the source has been measured).
    pub chunks: usize,
    /// Chunks an earlier run of this copy committed.
    pub chunks_done: usize,
    /// It loads with the target's triggers off (`session_replication_role = replica`),
    /// its foreign keys checked by the copy, set-based over each chunk; otherwise the
    /// server checks them row by row and its triggers fire.
    pub triggers_off: bool,
    /// Why it keeps its triggers (a trigger of its own that would not fire, a `MATCH FULL`
    /// key, a role that may not turn them off), or what turning them off does to triggers
    /// that fire in the replica role too.
    pub triggers: Option<String>,
}

impl TablePlan {
    /// The columns the copy writes.
    pub(crate) fn copied(&self) -> impl Iterator<Item = &ColumnPlan> {
        self.columns.iter().filter(|c| {
            matches!(
                c.action,
                ColumnAction::Copy | ColumnAction::Widen | ColumnAction::Convert
            )
        })
    }
}

/// A planned table with the catalog entries it came from.
#[derive(Clone, Debug)]
pub(crate) struct Planned {
    pub(crate) plan: TablePlan,
    pub(crate) source: Table,
    pub(crate) target: Table,
    /// How it loads: triggers on or off, and the triggers disabled while it does.
    pub(crate) triggers: TriggerChoice,
}

/// Whether `given` (`table.column` or `schema.table.column`) names `column` of the source
/// table `table`: by the target's names, or by the source's own.
pub(crate) fn names_column(given: &str, table: &Table, column: &str) -> bool {
    given.rsplit_once('.').is_some_and(|(t, c)| {
        (c == column || c == table.local_column(column))
            && (names(t, &table.name) || t == table.local_name())
    })
}

/// Whether `name` (`table` or `schema.table`) names the table.
pub(crate) fn names(name: &str, table: &TableName) -> bool {
    name == table.1 || name == display(table)
}

/// The plan, or every problem found (each naming table, column and both types). `columns`
/// plans the columns of one table as the source reads them; `triggers` says how a target
/// table loads.
pub(crate) fn plan(
    source: &BTreeMap<TableName, Table>,
    target: &BTreeMap<TableName, Table>,
    selection: &Selection,
    mode: CopyMode,
    triggers: impl Fn(&Table) -> TriggerChoice,
    columns: impl Fn(&Table, &Table, &mut Vec<String>) -> Vec<ColumnPlan>,
) -> Result<(Vec<Planned>, Vec<String>), Vec<String>> {
    let mut problems = Vec::new();
    let mut left_out = Vec::new();
    for name in selection.tables.iter().chain(&selection.exclude) {
        if !source.keys().any(|t| names(name, t)) && !target.keys().any(|t| names(name, t)) {
            problems.push(format!("table {name} exists in neither database"));
        }
    }
    let mut selected: Vec<&Table> = Vec::new();
    let mut excluded: Vec<&Table> = Vec::new();
    for (name, table) in source {
        let named = selection.tables.iter().any(|n| names(n, name))
            || (selection.ledger && LEDGER_TABLES.contains(&name.1.as_str()));
        if selection.exclude.iter().any(|n| names(n, name)) {
            excluded.push(table);
            continue;
        }
        if !selection.tables.is_empty() && !named {
            continue;
        }
        // A partition is read through its root, unless it is named.
        if !table.ancestors.is_empty() && !named {
            continue;
        }
        if !named && (BOOKKEEPING_TABLES.contains(&name.1.as_str()) || table.extension) {
            left_out.push(display(name));
            continue;
        }
        selected.push(table);
    }
    shapes::partitions(&selected, &excluded, &mut problems);
    let chosen: BTreeSet<&TableName> = selected.iter().map(|t| &t.name).collect();

    let mut planned = Vec::new();
    let mut named_columns = BTreeSet::new();
    for table in &selected {
        let trimmed = leave_out(
            table,
            &selection.exclude_columns,
            &mut named_columns,
            &mut problems,
        );
        let table = &&trimmed;
        let Some(theirs) = target.get(&table.name) else {
            problems.push(format!(
                "table {} is in the source but not in the target: create it with the application's schema migrations, or leave it out with --exclude",
                display(&table.name)
            ));
            continue;
        };
        let before = problems.len();
        let choice = triggers(theirs);
        not_in_target(table, theirs, &mut problems);
        let columns = columns(table, theirs, &mut problems);
        unfilled(table, theirs, &columns, &choice, &mut problems);
        check_privileges(table, theirs, mode, &mut problems);
        let copied: Vec<&str> = columns
            .iter()
            .filter(|c| {
                matches!(
                    c.action,
                    ColumnAction::Copy | ColumnAction::Widen | ColumnAction::Convert
                )
            })
            .map(|c| c.name.as_str())
            .collect();
        let same_type: Vec<&str> = columns
            .iter()
            .filter(|c| c.action == ColumnAction::Copy)
            .map(|c| c.name.as_str())
            .collect();
        shapes::check(table, theirs, (&copied, &same_type), mode, &mut problems);
        if mode == CopyMode::Merge && theirs.primary_key.is_empty() {
            problems.push(format!(
                "table {} has no primary key in the target: --mode merge matches rows by primary key",
                display(&table.name)
            ));
        }
        if problems.len() > before {
            continue;
        }
        let after: BTreeSet<String> = theirs
            .foreign_keys
            .iter()
            .filter(|fk| fk.references != table.name && chosen.contains(&fk.references))
            .map(|fk| display(&fk.references))
            .collect();
        let key = if theirs.primary_key == table.primary_key {
            theirs.primary_key.clone()
        } else {
            Vec::new()
        };
        let self_reference = theirs
            .foreign_keys
            .iter()
            .any(|fk| fk.references == table.name);
        let whole = if key.is_empty() {
            Some("it has no primary key (the same in both databases) to split it by".to_string())
        } else if self_reference {
            Some("it references itself: one statement loads it, so the references are checked once all its rows are in".to_string())
        } else {
            None
        };
        planned.push(Planned {
            plan: TablePlan {
                table: display(&table.name),
                source_table: (!table.source_name.is_empty()).then(|| table.source_name.clone()),
                columns,
                key,
                estimated_rows: table.estimated_rows,
                after: after.into_iter().collect(),
                cycle: Vec::new(),
                whole,
                chunks: 0,
                chunks_done: 0,
                triggers_off: choice.off,
                triggers: choice.why.clone(),
            },
            source: (*table).clone(),
            target: theirs.clone(),
            triggers: choice,
        });
    }
    for given in &selection.exclude_columns {
        if !named_columns.contains(given) {
            problems.push(format!(
                "--exclude-columns names {given}, which is no column of a copied source table: write it table.column or schema.table.column"
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let planned = order(planned)?;
    Ok((planned, left_out))
}

/// `table` without the columns `--exclude-columns` names (`table.column` or
/// `schema.table.column`), each name found recorded in `found`; a primary key's column is
/// refused (the copy orders, splits and matches rows by it).
fn leave_out(
    table: &Table,
    excluded: &[String],
    found: &mut BTreeSet<String>,
    problems: &mut Vec<String>,
) -> Table {
    let mut trimmed = table.clone();
    if excluded.is_empty() {
        return trimmed;
    }
    trimmed.columns.retain(|column| {
        let named: Vec<&String> = excluded
            .iter()
            .filter(|given| names_column(given, table, &column.name))
            .collect();
        if named.is_empty() {
            return true;
        }
        found.extend(named.iter().map(|n| n.to_string()));
        if table.primary_key.contains(&column.name) {
            problems.push(format!(
                "column {}.{} is in the primary key, which the copy orders, splits and matches rows by: it cannot be left out with --exclude-columns",
                display(&table.name),
                column.name
            ));
            return true;
        }
        false
    });
    trimmed
}

/// Each source column the target table lacks (a generated one aside: the target computes
/// its own): its values would be lost.
fn not_in_target(source: &Table, target: &Table, problems: &mut Vec<String>) {
    let table = display(&source.name);
    for column in &source.columns {
        if !column.generated && target.column(&column.name).is_none() {
            problems.push(format!(
                "column {table}.{} ({}) is in the source but not in the target, so its values would be lost: add it to the target, leave it out with --exclude-columns {table}.{}, or leave the table out with --exclude",
                column.name,
                if column.sql_type.is_empty() {
                    "no declared type"
                } else {
                    &column.sql_type
                },
                column.name,
            ));
        }
    }
}

/// Each target column the copy leaves to the target that nothing fills: `NOT NULL`, with
/// no default, no identity and no `BEFORE INSERT` row trigger firing during the load.
fn unfilled(
    source: &Table,
    target: &Table,
    columns: &[ColumnPlan],
    choice: &TriggerChoice,
    problems: &mut Vec<String>,
) {
    let table = display(&source.name);
    let filled_by_trigger = target
        .triggers
        .iter()
        .any(|t| t.before_insert_row && choice.fires(t));
    for plan in columns
        .iter()
        .filter(|c| c.action == ColumnAction::TargetFills)
    {
        let Some(column) = target.column(&plan.name) else {
            continue;
        };
        if !column.not_null
            || column.has_default
            || !column.identity.is_empty()
            || filled_by_trigger
        {
            continue;
        }
        let triggers_off = if choice.off
            && target
                .triggers
                .iter()
                .any(|t| t.before_insert_row && t.on == target.name)
        {
            " (its BEFORE INSERT triggers do not fire while the table loads with triggers off: --triggers on fires them)"
        } else {
            ""
        };
        problems.push(format!(
            "column {table}.{} ({}) is NOT NULL without a default in the target, and the source has no such column{triggers_off}: give it a default, allow NULL, or leave the table out with --exclude",
            column.name, column.sql_type,
        ));
    }
}

/// The columns of a table read from a source whose types are PostgreSQL's: matched by name,
/// each of the same type or a lossless widening.
pub(crate) fn match_columns(
    source: &Table,
    target: &Table,
    problems: &mut Vec<String>,
) -> Vec<ColumnPlan> {
    let table = display(&source.name);
    let mut plans = Vec::new();
    for column in &target.columns {
        // A column the source computes gives its values to a target column that stores
        // them (a generated target column computes its own).
        let ours = source.column(&column.name);
        let action = if column.generated {
            ColumnAction::Generated
        } else if let Some(ours) = ours {
            if ours.sql_type == column.sql_type {
                ColumnAction::Copy
            } else if ours.base() == column.base() || widens(ours.base(), column.base()) {
                // Through text: a domain's text is its base type's, and the target checks
                // its own domain's constraints.
                ColumnAction::Widen
            } else {
                problems.push(format!(
                    "column {table}.{} is {} in the source and {} in the target: the types are not compatible",
                    column.name, ours.sql_type, column.sql_type
                ));
                continue;
            }
        } else {
            ColumnAction::TargetFills
        };
        plans.push(ColumnPlan {
            name: column.name.clone(),
            source_type: ours.map(|c| c.sql_type.clone()),
            source_name: ours
                .filter(|c| !c.source_name.is_empty())
                .map(|c| c.source_name.clone()),
            target_type: column.sql_type.clone(),
            action,
            conversion: None,
        });
    }
    plans
}

fn check_privileges(source: &Table, target: &Table, mode: CopyMode, problems: &mut Vec<String>) {
    let table = display(&source.name);
    if !source.can_select {
        problems.push(format!(
            "the source role may not SELECT from {table}: GRANT SELECT ON {} TO it",
            source.ident()
        ));
    }
    let mut need = vec![("INSERT", target.can_insert)];
    match mode {
        CopyMode::Merge => need.push(("UPDATE", target.can_update)),
        CopyMode::DangerouslyTruncate => need.push(("TRUNCATE", target.can_truncate)),
        CopyMode::Empty => {}
    }
    for (privilege, held) in need {
        if !held {
            problems.push(format!(
                "the target role may not {privilege} into {table}, which {} needs: GRANT {privilege} ON {} TO it",
                mode.option(),
                target.ident()
            ));
        }
    }
}

/// Whether every value of `from` is a value of `to`, written the same way in `COPY` text.
pub(crate) fn widens(from: &str, to: &str) -> bool {
    let integer_rank = |t: &str| match t {
        "smallint" => Some(1),
        "integer" => Some(2),
        "bigint" => Some(3),
        _ => None,
    };
    if let (Some(a), Some(b)) = (integer_rank(from), integer_rank(to)) {
        return a <= b;
    }
    if integer_rank(from).is_some() && to == "numeric" {
        return true;
    }
    let varchar_len = |t: &str| -> Option<Option<u64>> {
        if t == "character varying" || t == "text" {
            return Some(None);
        }
        t.strip_prefix("character varying(")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|n| n.parse().ok())
            .map(Some)
    };
    if let (Some(a), Some(b)) = (varchar_len(from), varchar_len(to)) {
        return match (a, b) {
            (_, None) => true,
            (Some(a), Some(b)) => a <= b,
            (None, Some(_)) => false,
        };
    }
    let numeric = |t: &str| -> Option<Option<(u32, u32)>> {
        if t == "numeric" {
            return Some(None);
        }
        let inner = t.strip_prefix("numeric(")?.strip_suffix(')')?;
        let (p, s) = inner.split_once(',')?;
        Some(Some((p.trim().parse().ok()?, s.trim().parse().ok()?)))
    };
    if let (Some(a), Some(b)) = (numeric(from), numeric(to)) {
        return match (a, b) {
            (_, None) => true,
            (Some((p1, s1)), Some((p2, s2))) => s1 == s2 && p1 <= p2,
            (None, Some(_)) => false,
        };
    }
    (from.starts_with("timestamp(")
        && from.ends_with(") without time zone")
        && to == "timestamp without time zone")
        || (from.starts_with("timestamp(")
            && from.ends_with(") with time zone")
            && to == "timestamp with time zone")
}

/// Parents before children; tables in a cycle of foreign keys together (when every key of
/// the cycle is deferrable, or every table of it loads with triggers off), else the cycle
/// is refused by name.
fn order(planned: Vec<Planned>) -> Result<Vec<Planned>, Vec<String>> {
    let index: BTreeMap<String, usize> = planned
        .iter()
        .enumerate()
        .map(|(i, p)| (p.plan.table.clone(), i))
        .collect();
    let edges: Vec<Vec<usize>> = planned
        .iter()
        .map(|p| {
            p.plan
                .after
                .iter()
                .filter_map(|t| index.get(t).copied())
                .collect()
        })
        .collect();
    let components = strongly_connected(&edges);
    let mut problems = Vec::new();
    for members in &components {
        if members.len() < 2 || members.iter().all(|&m| planned[m].triggers.off) {
            continue;
        }
        let inside: BTreeSet<&str> = members
            .iter()
            .map(|&m| planned[m].plan.table.as_str())
            .collect();
        let mut rigid: Vec<String> = Vec::new();
        for &m in members {
            let p = &planned[m];
            for fk in &p.target.foreign_keys {
                if inside.contains(display(&fk.references).as_str()) && !fk.deferrable {
                    rigid.push(format!("{} on {}", fk.name, p.plan.table));
                }
            }
        }
        if !rigid.is_empty() {
            problems.push(format!(
                "the foreign keys of tables {} form a cycle, and {} {} not DEFERRABLE: make {} DEFERRABLE, or copy with --triggers off as a role that may set session_replication_role (a table of the cycle keeps its triggers otherwise)",
                inside.iter().copied().collect::<Vec<_>>().join(", "),
                rigid.join(", "),
                if rigid.len() == 1 { "is" } else { "are" },
                if rigid.len() == 1 { "it" } else { "them" },
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    // Components come out of Tarjan's algorithm with every component after the ones it
    // references: parents first.
    let mut slots: Vec<Option<Planned>> = planned.into_iter().map(Some).collect();
    let mut ordered = Vec::new();
    for members in &components {
        let mut group: Vec<Planned> = members.iter().filter_map(|&m| slots[m].take()).collect();
        group.sort_by(|a, b| a.plan.table.cmp(&b.plan.table));
        if group.len() > 1 {
            let names: Vec<String> = group.iter().map(|p| p.plan.table.clone()).collect();
            let disable_triggers = group.iter().all(|p| p.triggers.off);
            for p in &mut group {
                p.plan.cycle = names
                    .iter()
                    .filter(|n| **n != p.plan.table)
                    .cloned()
                    .collect();
                p.plan.whole = Some(if disable_triggers {
                    "its foreign keys form a cycle: the tables of the cycle load in one transaction, their references checked once all their rows are in".to_string()
                } else {
                    "its foreign keys form a cycle: the tables of the cycle load in one transaction with the constraints deferred".to_string()
                });
            }
        }
        ordered.extend(group);
    }
    Ok(ordered)
}

/// Tarjan's strongly connected components of `edges` (i → j: i references j), each
/// component listed after every component it references.
fn strongly_connected(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        edges: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State<'_>, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &s.edges[v] {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(i) if s.on_stack[w] => s.low[v] = s.low[v].min(i),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let n = edges.len();
    let mut s = State {
        edges,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::catalog::Column;

    #[test]
    fn a_column_is_named_by_the_target_or_by_the_source() {
        let table = Table {
            name: ("public".into(), "invoice_line".into()),
            source_name: "InvoiceLine".into(),
            columns: vec![Column {
                name: "unit_price".into(),
                source_name: "UnitPrice".into(),
                ..Column::default()
            }],
            ..Table::default()
        };
        for given in [
            "invoice_line.unit_price",
            "public.invoice_line.unit_price",
            "InvoiceLine.UnitPrice",
        ] {
            assert!(names_column(given, &table, "unit_price"), "{given}");
        }
        for given in ["invoice_line.UnitPrice2", "unit_price", "other.unit_price"] {
            assert!(!names_column(given, &table, "unit_price"), "{given}");
        }
    }

    #[test]
    fn widening_is_lossless_only() {
        assert!(widens("integer", "bigint"));
        assert!(widens("smallint", "numeric"));
        assert!(!widens("bigint", "integer"));
        assert!(widens("character varying(20)", "text"));
        assert!(widens("character varying(20)", "character varying(30)"));
        assert!(!widens("character varying(30)", "character varying(20)"));
        assert!(!widens("text", "character varying(20)"));
        assert!(widens("numeric(10,2)", "numeric(12,2)"));
        assert!(!widens("numeric(10,2)", "numeric(12,3)"));
        assert!(!widens("real", "double precision"), "its text form changes");
        assert!(!widens(
            "timestamp without time zone",
            "timestamp with time zone"
        ));
        assert!(!widens("text", "integer"));
    }

    #[test]
    fn components_come_parents_first() {
        // 0 → 1 → 2, 3 ↔ 4, 4 → 2
        let edges = vec![vec![1], vec![2], vec![], vec![4], vec![3, 2]];
        let components = strongly_connected(&edges);
        let position = |v: usize| components.iter().position(|c| c.contains(&v)).unwrap();
        assert!(position(2) < position(1) && position(1) < position(0));
        assert!(position(2) < position(3));
        assert_eq!(position(3), position(4));
        assert_eq!(components.len(), 4);
    }
}
