//! A chunk of a table (a range of its primary key, the unit a copy commits) and its
//! predicate in PostgreSQL's SQL.

use super::plan::Planned;
use super::sql::literal;
use crate::sql::quote_ident;

/// A key position: each key column's value as text; `None` is the open end.
pub(super) type Bound = Option<Vec<String>>;

/// One chunk of a table: the keys in `(lower, upper]`.
#[derive(Clone, Debug)]
pub(super) struct Chunk {
    pub(super) number: usize,
    pub(super) lower: Bound,
    pub(super) upper: Bound,
    pub(super) done: bool,
    pub(super) rows: u64,
}

impl Chunk {
    /// The whole table, in one chunk.
    pub(super) fn whole() -> Chunk {
        Chunk {
            number: 1,
            lower: None,
            upper: None,
            done: false,
            rows: 0,
        }
    }

    /// The chunks between these bounds, in order (the first and last open-ended).
    pub(super) fn between(bounds: Vec<Vec<String>>) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        let mut lower: Bound = None;
        for (i, bound) in bounds.into_iter().map(Some).chain([None]).enumerate() {
            chunks.push(Chunk {
                number: i + 1,
                lower: lower.clone(),
                upper: bound.clone(),
                done: false,
                rows: 0,
            });
            lower = bound;
        }
        chunks
    }
}

/// `WHERE (k1, k2) > (..) AND (k1, k2) <= (..)` for a chunk, empty for a whole table.
pub(super) fn range_predicate(p: &Planned, chunk: &Chunk) -> String {
    let columns: Vec<String> = p.plan.key.iter().map(|k| quote_ident(k)).collect();
    let tuple = format!("({})", columns.join(", "));
    let types: Vec<&str> = p
        .plan
        .key
        .iter()
        .map(|k| p.source.column(k).map_or("text", |c| c.sql_type.as_str()))
        .collect();
    let values = |bound: &[String]| {
        let literals: Vec<String> = bound
            .iter()
            .zip(&types)
            .map(|(v, t)| literal(v, t))
            .collect();
        format!("({})", literals.join(", "))
    };
    let mut conditions = Vec::new();
    if let Some(lower) = &chunk.lower {
        conditions.push(format!("{tuple} > {}", values(lower)));
    }
    if let Some(upper) = &chunk.upper {
        conditions.push(format!("{tuple} <= {}", values(upper)));
    }
    if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    }
}
