//! The shapes of tables a copy takes, checked table by table before any row moves (pure):
//! partitions read through their root or named alone (never both), row-level security
//! that would hide or refuse rows, tables with no column to copy, and the database's own
//! types (enums, composites, domains, ranges) defined alike on both sides.

use std::collections::BTreeSet;

use super::catalog::{Table, TableName, display};
use super::options::CopyMode;

/// Problems of the selection: a partition selected with one of its ancestors (its rows
/// would be copied twice), or excluded while its root is copied (its rows would come
/// along all the same).
pub(crate) fn partitions(selected: &[&Table], excluded: &[&Table], problems: &mut Vec<String>) {
    let chosen: BTreeSet<&TableName> = selected.iter().map(|t| &t.name).collect();
    for table in selected {
        if let Some(ancestor) = table.ancestors.iter().find(|a| chosen.contains(a)) {
            problems.push(format!(
                "table {} is a partition of {}, and both are selected: its rows would be copied twice. Name the partitions to copy with --tables, or copy {} alone",
                display(&table.name),
                display(ancestor),
                display(ancestor)
            ));
        }
    }
    for table in excluded {
        if let Some(ancestor) = table.ancestors.iter().find(|a| chosen.contains(a)) {
            problems.push(format!(
                "--exclude names {}, a partition of {}, which the copy reads through {}: its rows would be copied all the same. Exclude {} and name the partitions to copy with --tables",
                display(&table.name),
                display(ancestor),
                display(ancestor),
                display(ancestor)
            ));
        }
    }
}

/// Problems of one table's shape: row-level security on either side, a merge with no
/// column to match, the database's own types defined differently, values no copy can
/// write. `copied`: the columns the copy writes; `same_type`: those of them copied as they
/// are (the same type on both sides).
pub(crate) fn check(
    source: &Table,
    target: &Table,
    (copied, same_type): (&[&str], &[&str]),
    mode: CopyMode,
    problems: &mut Vec<String>,
) {
    let table = display(&source.name);
    let policies = |list: &[String]| {
        if list.is_empty() {
            "no policy, so every row is hidden".to_string()
        } else {
            format!("policy {}", list.join(", "))
        }
    };
    if let Some(list) = &source.row_security {
        problems.push(format!(
            "the source role is subject to row-level security on {table} ({}): the copy would not read every row. Copy as the table's owner (unless the table forces row security), a superuser, or a role with BYPASSRLS (ALTER ROLE .. BYPASSRLS)",
            policies(list)
        ));
    }
    if let Some(list) = &target.row_security {
        problems.push(format!(
            "the target role is subject to row-level security on {table} ({}): COPY cannot write through it. Copy as the table's owner (unless the table forces row security), a superuser, or a role with BYPASSRLS (ALTER ROLE .. BYPASSRLS)",
            policies(list)
        ));
    }
    if copied.is_empty() && mode == CopyMode::Merge {
        problems.push(format!(
            "table {table} has no column to copy: --mode merge matches rows by their primary key's values"
        ));
    }
    for name in same_type {
        let (Some(ours), Some(theirs)) = (source.column(name), target.column(name)) else {
            continue;
        };
        if !theirs.unwritable.is_empty() {
            problems.push(format!(
                "column {table}.{name} is of type {}, whose input refuses every value (the server fills it itself): no copy can write it, pg_dump's included. Leave the table out with --exclude",
                theirs.unwritable.join(", ")
            ));
        }
        for difference in type_differences(&ours.user_types, &theirs.user_types) {
            problems.push(format!("column {table}.{name}: {difference}"));
        }
    }
}

/// How the database's own types a column is made of differ between the source
/// (`ours`) and the target (`theirs`), each `name: definition`: an enum's labels need only
/// be in the target, every other definition must be the same.
pub(crate) fn type_differences(ours: &[String], theirs: &[String]) -> Vec<String> {
    let split = |t: &String| {
        t.split_once(": ")
            .map(|(n, d)| (n.to_string(), d.to_string()))
            .unwrap_or_else(|| (t.clone(), String::new()))
    };
    let theirs: Vec<(String, String)> = theirs.iter().map(split).collect();
    let mut out = Vec::new();
    for (name, definition) in ours.iter().map(split) {
        let Some((_, other)) = theirs.iter().find(|(n, _)| *n == name) else {
            out.push(format!(
                "type {name} ({definition}) of the source is not part of the target column's type"
            ));
            continue;
        };
        if let (Some(mine), Some(target)) = (labels(&definition), labels(other)) {
            let missing: Vec<&str> = mine
                .iter()
                .filter(|l| !target.contains(l))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                out.push(format!(
                    "enum {name} lacks {} in the target, which the source has: add {} to the target's type (ALTER TYPE .. ADD VALUE)",
                    missing.join(", "),
                    if missing.len() == 1 { "it" } else { "them" }
                ));
            }
        } else if definition != *other {
            out.push(format!(
                "type {name} is {definition} in the source and {other} in the target: define it alike on both sides"
            ));
        }
    }
    out
}

/// An enum's labels, quoted as the catalog writes them.
fn labels(definition: &str) -> Option<Vec<String>> {
    let inner = definition.strip_prefix("enum (")?.strip_suffix(')')?;
    let mut labels = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' if quoted && chars.peek() == Some(&'\'') => {
                current.push_str("''");
                chars.next();
            }
            '\'' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => {
                labels.push(current.trim().to_string());
                current.clear();
            }
            _ => current.push(c),
        }
    }
    if !current.trim().is_empty() {
        labels.push(current.trim().to_string());
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enum_may_have_more_labels_in_the_target_only() {
        let ours = vec!["public.mood: enum ('sad', 'o''k', 'happy')".to_string()];
        let more = vec!["public.mood: enum ('sad', 'o''k', 'happy', 'ecstatic')".to_string()];
        assert!(type_differences(&ours, &more).is_empty());
        let fewer = vec!["public.mood: enum ('sad', 'happy')".to_string()];
        let found = type_differences(&ours, &fewer);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("lacks 'o''k'"), "{found:?}");
    }

    #[test]
    fn other_definitions_must_match() {
        let ours = vec!["public.pair: composite (a integer, b text)".to_string()];
        let theirs = vec!["public.pair: composite (a integer, b character varying)".to_string()];
        assert_eq!(type_differences(&ours, &theirs).len(), 1);
        assert!(type_differences(&ours, &ours).is_empty());
    }
}
