//! Bits of PostgreSQL SQL a copy writes on either side: a table to read from, literals of
//! names, and conditions whose values are bound.

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

/// `'text'` as an SQL string literal (for names the copy writes itself, never for values
/// read back from a database).
pub(super) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A condition whose values are bound, never spliced: `sql` refers to them as `$1`, `$2`,
/// .. in order (text, each cast in `sql` to its column's type).
#[derive(Clone, Debug, Default)]
pub(super) struct Predicate {
    /// ` AND ..` conditions, empty for none.
    pub(super) sql: String,
    pub(super) binds: Vec<String>,
    /// It selects in the target exactly the rows it selects in the source: the same
    /// order on both sides (no collation, no conversion between them).
    pub(super) exact: bool,
}

impl Predicate {
    /// `$n` for a new value, bound in order.
    pub(super) fn bind(&mut self, value: &str) -> String {
        self.binds.push(value.to_string());
        format!("${}", self.binds.len())
    }

    /// Adds ` AND condition`.
    pub(super) fn and(&mut self, condition: &str) {
        self.sql.push_str(" AND ");
        self.sql.push_str(condition);
    }

    /// Binds the values to a query of this predicate.
    pub(super) fn apply<'q>(
        &'q self,
        mut q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        for value in &self.binds {
            q = q.bind(value.as_str());
        }
        q
    }
}
