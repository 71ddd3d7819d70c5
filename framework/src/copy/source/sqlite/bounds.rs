//! A SQLite chunk's bounds: written by SQLite's `quote()` when the table is split, read back
//! from the target's progress table as values (an integer, a real, text, a blob), and bound
//! wherever they are used, in SQLite and in the target, never spliced into SQL.

use rusqlite::types::Value;

use crate::copy::chunk::Chunk;
use crate::copy::plan::Planned;
use crate::copy::sql::Predicate;
use crate::sql::quote_ident;

/// A bound as `quote()` wrote it, parsed back into its value; `Err` says why it is none.
pub(super) fn parse(literal: &str) -> Result<Value, String> {
    let refuse = || {
        format!(
            "{literal:?} is not a value SQLite's quote() writes (an integer, a real, 'text' or X'blob')"
        )
    };
    if let Some(inner) = literal
        .strip_prefix('\'')
        .and_then(|rest| rest.strip_suffix('\''))
    {
        // Inside, every quote is doubled.
        if inner.replace("''", "").contains('\'') {
            return Err(refuse());
        }
        return Ok(Value::Text(inner.replace("''", "'")));
    }
    if let Some(hex) = literal
        .strip_prefix("X'")
        .or_else(|| literal.strip_prefix("x'"))
        .and_then(|rest| rest.strip_suffix('\''))
    {
        if hex.len() % 2 != 0 {
            return Err(refuse());
        }
        return (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| refuse()))
            .collect::<Result<Vec<u8>, String>>()
            .map(Value::Blob);
    }
    if let Ok(i) = literal.parse::<i64>() {
        return Ok(Value::Integer(i));
    }
    match literal.parse::<f64>() {
        Ok(f)
            if literal
                .bytes()
                .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
        {
            Ok(Value::Real(f))
        }
        _ => Err(refuse()),
    }
}

/// The columns of a table's key as SQLite names them, quoted.
pub(super) fn quoted_key(p: &Planned) -> Vec<String> {
    p.plan
        .key
        .iter()
        .map(|k| quote_ident(p.source.local_column(k)))
        .collect()
}

/// ` WHERE ..` over the SQLite table's key for a chunk, with `?n` for each value, and the
/// values; `Err` names a bound that is not a SQLite value.
pub(super) fn sqlite_range(p: &Planned, chunk: &Chunk) -> Result<(String, Vec<Value>), String> {
    let columns = quoted_key(p);
    if chunk.null_keys {
        let any_null: Vec<String> = columns.iter().map(|c| format!("{c} IS NULL")).collect();
        return Ok((format!(" WHERE {}", any_null.join(" OR ")), Vec::new()));
    }
    let tuple = columns.join(", ");
    let mut values = Vec::new();
    let mut conditions = Vec::new();
    for (bound, op) in [(&chunk.lower, ">"), (&chunk.upper, "<=")] {
        if let Some(bound) = bound {
            let mut marks = Vec::new();
            for literal in bound {
                values.push(parse(literal)?);
                marks.push(format!("?{}", values.len()));
            }
            conditions.push(format!("({tuple}) {op} ({})", marks.join(", ")));
        }
    }
    let sql = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    Ok((sql, values))
}

/// ` AND ..` over the target's key columns (aliased `c`) for a chunk, its bounds bound and
/// cast to the target columns' types. A bound that is not a SQLite value selects nothing
/// (the copy refused it when it read the chunk). Exact for integer keys only: SQLite orders
/// text by its bytes and values by their storage class, which the target's types and
/// collations may not.
pub(super) fn target_range(p: &Planned, chunk: &Chunk) -> Predicate {
    let keys: Vec<(String, String)> = p
        .plan
        .key
        .iter()
        .map(|k| {
            (
                format!("c.{}", quote_ident(k)),
                p.target
                    .column(k)
                    .map_or("text".to_string(), |c| c.sql_type.clone()),
            )
        })
        .collect();
    let exact = keys
        .iter()
        .all(|(_, t)| matches!(t.as_str(), "smallint" | "integer" | "bigint"));
    let mut out = Predicate {
        exact,
        ..Predicate::default()
    };
    if chunk.null_keys {
        let any_null: Vec<String> = keys.iter().map(|(c, _)| format!("{c} IS NULL")).collect();
        out.and(&format!("({})", any_null.join(" OR ")));
        return out;
    }
    let tuple = keys
        .iter()
        .map(|(c, _)| c.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    for (bound, op) in [(&chunk.lower, ">"), (&chunk.upper, "<=")] {
        let Some(bound) = bound else { continue };
        let mut marks = Vec::new();
        for (literal, (_, sql_type)) in bound.iter().zip(&keys) {
            let mark = match parse(literal) {
                Ok(Value::Integer(i)) => format!("{}::{sql_type}", out.bind(&i.to_string())),
                Ok(Value::Real(f)) => format!("{}::{sql_type}", out.bind(&f.to_string())),
                Ok(Value::Text(t)) => format!("{}::{sql_type}", out.bind(&t)),
                Ok(Value::Blob(b)) => {
                    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                    if sql_type == "uuid" {
                        format!("{}::uuid", out.bind(&hex))
                    } else {
                        format!("decode({}, 'hex')", out.bind(&hex))
                    }
                }
                Ok(Value::Null) | Err(_) => "NULL".to_string(),
            };
            marks.push(mark);
        }
        out.and(&format!("({tuple}) {op} ({})", marks.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_parse_back_and_anything_else_is_refused() {
        assert_eq!(parse("42"), Ok(Value::Integer(42)));
        assert_eq!(parse("-1.5e+3"), Ok(Value::Real(-1500.0)));
        assert_eq!(parse("'it''s'"), Ok(Value::Text("it's".into())));
        assert_eq!(parse("X'00FF'"), Ok(Value::Blob(vec![0, 255])));
        for bad in [
            "1) OR (1=1",
            "'a' OR 'b'",
            "'unterminated",
            "X'0'",
            "NULL",
            "abs(1)",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
