//! Bits of PostgreSQL SQL a copy writes on either side: a table to read from, literals.

use super::catalog::Table;

/// `ONLY "s"."t"` for a plain table (its inheritance children are tables of their own),
/// the table itself for a partitioned one (read through its partitions).
pub(super) fn source_from(table: &Table) -> String {
    if table.kind == "p" {
        table.ident()
    } else {
        format!("ONLY {}", table.ident())
    }
}

/// `value` as a literal of `sql_type`.
pub(super) fn literal(value: &str, sql_type: &str) -> String {
    format!("'{}'::{sql_type}", value.replace('\'', "''"))
}

/// `'text'` as an SQL string literal.
pub(super) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
