//! Batch keys: the columns a batched migration walks, the values of a position in their
//! order, the predicate that selects one batch, and the checkpoint stored in the ledger.
//!
//! A key is one column or several (a composite key, compared as a row value:
//! `(tenant_id, id) > ($1, $2)`), of any type with a total order the database can index:
//! integers, UUIDs, text (in the column's collation), dates and timestamps, numerics.
//! Values travel as [`KeyValue`]s: integers as `i64`, everything else on PostgreSQL as the
//! database's own text form, cast back to the column's type where it is bound, so that the
//! comparison is the column's own (and its index serves it).

use std::fmt;

use crate::sql::quote_ident;

/// One value of one key column.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum KeyValue {
    /// An integer: any integer column, and SQLite's `INTEGER` values.
    Integer(i64),
    /// Any other value in the database's text form: a UUID, text, a date or a timestamp
    /// (ISO 8601), a numeric. On PostgreSQL it is cast back to the column's type where it
    /// is bound.
    Text(String),
    /// A SQLite `REAL` value.
    Real(f64),
    /// A SQLite `BLOB` value.
    Bytes(Vec<u8>),
}

impl fmt::Display for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyValue::Integer(n) => write!(f, "{n}"),
            KeyValue::Text(text) => write!(f, "'{}'", text.replace('\'', "''")),
            KeyValue::Real(x) => write!(f, "{x}"),
            KeyValue::Bytes(bytes) => write!(f, "x'{}'", hex(bytes)),
        }
    }
}

/// A position in key order: one value per key column, in the key's column order.
#[derive(Clone, Debug, PartialEq)]
pub struct Key(pub(crate) Vec<KeyValue>);

impl Key {
    /// The values, one per key column.
    pub fn values(&self) -> &[KeyValue] {
        &self.0
    }

    /// The value of a key of one integer column.
    pub fn as_i64(&self) -> Option<i64> {
        match self.0.as_slice() {
            [KeyValue::Integer(n)] => Some(*n),
            _ => None,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            many => {
                f.write_str("(")?;
                for (i, value) in many.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{value}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// How the runner treats a key column's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// Read and bound as `i64`.
    Integer,
    /// A date or timestamp: read in ISO 8601 whatever the session's `DateStyle`.
    /// (PostgreSQL only: SQLite has no such types.)
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Temporal,
    /// Read in the database's text form (PostgreSQL), or as stored (SQLite).
    Other,
}

/// One key column, as the runner found it in the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyPart {
    pub(crate) name: String,
    /// The column's type, as the database writes it (`uuid`, `character varying(20)`).
    pub(crate) sql_type: String,
    pub(crate) kind: KeyKind,
}

/// The key a batched migration walks, and how the SQL that walks it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyShape {
    pub(crate) table: String,
    pub(crate) parts: Vec<KeyPart>,
    pub(crate) scope: Option<String>,
    /// Whether bound values are cast to the column's type (PostgreSQL, where text is bound).
    pub(crate) casts: bool,
}

impl KeyShape {
    /// The key columns, quoted, optionally qualified: `"id"` or `("tenant_id", "id")`.
    pub(crate) fn columns(&self, qualifier: Option<&str>) -> String {
        let names: Vec<String> = self
            .parts
            .iter()
            .map(|p| match qualifier {
                Some(q) => format!("{}.{}", quote_ident(q), quote_ident(&p.name)),
                None => quote_ident(&p.name),
            })
            .collect();
        if names.len() == 1 {
            names.into_iter().next().unwrap_or_default()
        } else {
            format!("({})", names.join(", "))
        }
    }

    /// The key's columns by name, for messages: `id` or `(tenant_id, id)`.
    pub(crate) fn names(&self) -> String {
        let names: Vec<&str> = self.parts.iter().map(|p| p.name.as_str()).collect();
        if names.len() == 1 {
            names[0].to_string()
        } else {
            format!("({})", names.join(", "))
        }
    }

    /// Bound parameters from `$first`, one per key column, as a value or a row value.
    fn params(&self, first: usize) -> String {
        let params: Vec<String> = self
            .parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let n = first + i;
                if self.casts {
                    format!("CAST(${n} AS {})", part.sql_type)
                } else {
                    format!("${n}")
                }
            })
            .collect();
        if params.len() == 1 {
            params.into_iter().next().unwrap_or_default()
        } else {
            format!("({})", params.join(", "))
        }
    }

    /// The predicate of the keys in `(lower, upper]` (open below when `lower` is `None`,
    /// open above when `upper` is `None`), with the scope, its parameters numbered from
    /// `first`; and how many parameters it uses.
    pub(crate) fn range(
        &self,
        lower: bool,
        upper: bool,
        first: usize,
        qualifier: Option<&str>,
    ) -> (String, usize) {
        let columns = self.columns(qualifier);
        let width = self.parts.len();
        let mut terms = Vec::new();
        let mut next = first;
        if lower {
            terms.push(format!("{columns} > {}", self.params(next)));
            next += width;
        }
        if upper {
            terms.push(format!("{columns} <= {}", self.params(next)));
            next += width;
        }
        if let Some(scope) = &self.scope {
            terms.push(format!("({scope})"));
        }
        if terms.is_empty() {
            terms.push("TRUE".to_string());
        }
        (terms.join(" AND "), next - first)
    }

    /// The key columns in key order (`ASC`), or reversed.
    pub(crate) fn order_by(&self, descending: bool) -> String {
        self.order_by_in(descending, None)
    }

    /// The key columns in key order, qualified by `qualifier`: an outer query that selects
    /// the key as text must order by the columns, and an unqualified name that is also an
    /// output column's (`CAST("id" AS text)` is named `id`) would order by the text.
    pub(crate) fn order_by_in(&self, descending: bool, qualifier: Option<&str>) -> String {
        self.parts
            .iter()
            .map(|p| {
                let name = match qualifier {
                    Some(q) => format!("{}.{}", quote_ident(q), quote_ident(&p.name)),
                    None => quote_ident(&p.name),
                };
                if descending {
                    format!("{name} DESC")
                } else {
                    name
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The key columns as a select list (see `select_list`), for the backends' own queries.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn key_select_list(&self) -> String {
        self.select_list()
    }

    /// The key columns as a select list: on PostgreSQL each as the text (or `bigint`) the
    /// runner reads; on SQLite each with its storage class (`typeof`).
    fn select_list(&self) -> String {
        self.parts
            .iter()
            .map(|p| {
                let name = quote_ident(&p.name);
                match (self.casts, p.kind) {
                    (true, KeyKind::Integer) => format!("CAST({name} AS bigint)"),
                    // ISO 8601 whatever the session's DateStyle: the checkpoint reads back
                    // the same in any session.
                    (true, KeyKind::Temporal) => format!("to_json({name}) #>> '{{}}'"),
                    (true, KeyKind::Other) => format!("CAST({name} AS text)"),
                    (false, _) => format!("{name}, typeof({name})"),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The statement that finds the next batch: the last key of the first `$N` keys after
    /// the checkpoint (`after`), up to and including the range's last key (`upper`, with
    /// several workers), and how many there are. The inner query is an index range scan in
    /// key order; the outer sorts at most one batch of keys.
    #[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
    pub(crate) fn next_batch_sql(&self, after: bool, upper: bool) -> String {
        let (range, params) = self.range(after, upper, 1, None);
        format!(
            "SELECT {}, count(*) OVER () FROM
                 (SELECT {} FROM {} WHERE {range} ORDER BY {} LIMIT ${}) AS batch
             ORDER BY {} LIMIT 1",
            self.select_list(),
            self.order_by(false),
            quote_ident(&self.table),
            self.order_by(false),
            params + 1,
            self.order_by_in(true, Some("batch")),
        )
    }

    /// The statement that finds the scope's last key after `$1..` (all, without `after`):
    /// one backward step of the key's index. The order names the table's columns through
    /// an alias: bare, `"id"` would name the select list's `CAST("id" AS text)`, and sort
    /// by it, reading the whole table.
    #[cfg(feature = "postgres")]
    pub(crate) fn last_key_sql(&self, after: bool) -> String {
        let (range, _) = self.range(after, false, 1, None);
        format!(
            "SELECT {} FROM {} AS datamig_key WHERE {range} ORDER BY {} LIMIT 1",
            self.select_list(),
            quote_ident(&self.table),
            self.order_by_in(true, Some("datamig_key")),
        )
    }

    /// The statement that tells whether a key of the scope is after `$1..` (and, with
    /// `upper`, at or before the next parameters: the end of a worker's range).
    pub(crate) fn has_keys_after_sql(&self, upper: bool) -> String {
        let (range, _) = self.range(true, upper, 1, None);
        format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE {range})",
            quote_ident(&self.table)
        )
    }

    /// `SELECT 1` of the rows of the scope after the checkpoint (`after`), up to `upper`.
    #[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
    pub(crate) fn rows_after_sql(&self, after: bool, upper: bool) -> String {
        let (range, _) = self.range(after, upper, 1, None);
        format!("SELECT 1 FROM {} WHERE {range}", quote_ident(&self.table))
    }

    /// Whether the key is one integer column (the form `$1`/`$2` binds as `bigint`).
    pub(crate) fn is_single_integer(&self) -> bool {
        matches!(self.parts.as_slice(), [part] if part.kind == KeyKind::Integer)
    }

    /// The checkpoint of `key` as the ledger stores it: a key of one integer column as its
    /// number (the form every datamig wrote); any other key as JSON naming each column, its
    /// type and its value, so that the ledger says what the checkpoint is.
    pub(crate) fn encode(&self, key: &Key) -> String {
        if self.is_single_integer()
            && let Some(n) = key.as_i64()
        {
            return n.to_string();
        }
        let parts: Vec<serde_json::Value> = self
            .parts
            .iter()
            .zip(&key.0)
            .map(|(part, value)| {
                serde_json::json!({
                    "column": part.name,
                    "type": part.sql_type,
                    "value": match value {
                        KeyValue::Integer(n) => serde_json::json!(n),
                        KeyValue::Text(t) => serde_json::json!(t),
                        KeyValue::Real(x) => serde_json::json!({ "real": x }),
                        KeyValue::Bytes(b) => serde_json::json!({ "hex": hex(b) }),
                    },
                })
            })
            .collect();
        serde_json::Value::Array(parts).to_string()
    }

    /// Reads a checkpoint the ledger holds back into a key of this shape; the error says
    /// what does not match.
    pub(crate) fn decode(&self, text: &str) -> Result<Key, String> {
        if self.is_single_integer()
            && let Ok(n) = text.trim().parse::<i64>()
        {
            return Ok(Key(vec![KeyValue::Integer(n)]));
        }
        let parts = parse_checkpoint(text)?;
        let names: Vec<&str> = parts.iter().map(|(name, _, _)| name.as_str()).collect();
        let expected: Vec<&str> = self.parts.iter().map(|p| p.name.as_str()).collect();
        if names != expected {
            return Err(format!(
                "it is a position in the key ({}), and the migration walks the key {}",
                names.join(", "),
                self.names()
            ));
        }
        let mut values = Vec::with_capacity(parts.len());
        for ((_, _, value), part) in parts.into_iter().zip(&self.parts) {
            values.push(match (value, part.kind) {
                (KeyValue::Text(t), KeyKind::Integer) => KeyValue::Integer(
                    t.parse()
                        .map_err(|_| format!("{:?} is not an integer", t))?,
                ),
                (value, _) => value,
            });
        }
        Ok(Key(values))
    }
}

/// The columns, types and values of a checkpoint in the ledger's JSON form.
fn parse_checkpoint(text: &str) -> Result<Vec<(String, String, KeyValue)>, String> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|_| "it is neither a number nor a key".to_string())?;
    let Some(items) = json.as_array() else {
        return Err("it is not a list of key columns".to_string());
    };
    items
        .iter()
        .map(|item| {
            let column = item["column"].as_str().ok_or("a part names no column")?;
            let sql_type = item["type"].as_str().unwrap_or_default();
            let value = match &item["value"] {
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => KeyValue::Integer(i),
                    None => KeyValue::Real(n.as_f64().unwrap_or_default()),
                },
                serde_json::Value::String(s) => KeyValue::Text(s.clone()),
                serde_json::Value::Object(o) if o.contains_key("real") => {
                    KeyValue::Real(o["real"].as_f64().ok_or("a real value is not a number")?)
                }
                serde_json::Value::Object(o) if o.contains_key("hex") => KeyValue::Bytes(
                    unhex(o["hex"].as_str().unwrap_or_default()).ok_or("a blob is not hex")?,
                ),
                _ => return Err(format!("the value of {column} is not one datamig writes")),
            };
            Ok((column.to_string(), sql_type.to_string(), value))
        })
        .collect()
}

/// A checkpoint from the ledger, as people read it: `41200` for an integer key,
/// `tenant_id = 7, id = 'a0ee…'` for any other.
pub fn describe_checkpoint(text: &str) -> String {
    if text.trim().parse::<i64>().is_ok() {
        return text.trim().to_string();
    }
    match parse_checkpoint(text) {
        Ok(parts) => parts
            .iter()
            .map(|(column, _, value)| format!("{column} = {value}"))
            .collect::<Vec<_>>()
            .join(", "),
        Err(_) => text.to_string(),
    }
}

/// Replaces each `{batch}` (or `{batch:alias}`, whose columns are qualified by `alias`) in
/// `sql` with the batch's predicate (its parameters from `$1`); `None` when `sql` has no
/// such marker.
///
/// With `guard`, the predicate is the scope alone (followed by the guard's call, where it
/// has one), binds nothing, and the statement is written as the guard says: it then reads
/// every row of the scope and stops on the first row it would change (see
/// `Ctx::checking_rest`).
pub(crate) fn render_marker(
    sql: &str,
    shape: &KeyShape,
    lower: bool,
    guard: Option<&RestGuard>,
) -> Option<String> {
    const MARKER: &str = "{batch";
    if !sql.contains(MARKER) {
        return None;
    }
    let mut out = String::with_capacity(sql.len() + 64);
    let mut rest = sql;
    while let Some(start) = rest.find(MARKER) {
        let after = &rest[start + MARKER.len()..];
        // `}` closes a plain marker; `:alias}` one that qualifies the columns.
        let marker = match after.strip_prefix(':') {
            Some(tail) => tail
                .find('}')
                .map(|end| (Some(tail[..end].trim()), end + 2)),
            None => after.starts_with('}').then_some((None, 1)),
        };
        let Some((qualifier, len)) = marker else {
            // Not a marker (`{batches}`, an unclosed `{batch:`): kept as written.
            out.push_str(&rest[..start + MARKER.len()]);
            rest = after;
            continue;
        };
        out.push_str(&rest[..start]);
        out.push('(');
        match guard {
            None => out.push_str(&shape.range(lower, true, 1, qualifier).0),
            Some(guard) => {
                out.push_str(&shape.range(false, false, 1, qualifier).0);
                if let Some(call) = guard.predicate {
                    out.push_str(" AND ");
                    out.push_str(call);
                }
            }
        }
        out.push(')');
        rest = &after[len..];
    }
    out.push_str(rest);
    Some(match guard {
        Some(guard) => guard.statement(out),
        None => out,
    })
}

/// How a check of the rest of a batched migration's keys writes each statement that names
/// its rows with `{batch}` (see `Ctx::checking_rest`), so the statement stops on the first
/// row it would change instead of changing them all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestGuard {
    /// A call appended (with `AND`) to the scope in place of `{batch}`, which fails the
    /// statement on the first row that reaches it: PostgreSQL's temporary function, which
    /// the planner calls after the statement's own conditions.
    pub(crate) predicate: Option<&'static str>,
    /// Written before the statement: MariaDB's `SET STATEMENT max_statement_time = .. FOR `,
    /// the check's time limit for that statement alone.
    pub(crate) prefix: String,
    /// Written after the statement: `LIMIT 1` on MySQL, where the statement stops at the
    /// first row it matches, so rows matched or written tell that work is left.
    pub(crate) suffix: &'static str,
}

impl RestGuard {
    /// `sql` (its `{batch}` already rendered) as the check runs it. A trailing `;` goes
    /// first, and the suffix starts a line, so a trailing `--` comment cannot swallow it.
    pub(crate) fn statement(&self, sql: String) -> String {
        if self.prefix.is_empty() && self.suffix.is_empty() {
            return sql;
        }
        let body = sql.trim_end().trim_end_matches(';').trim_end();
        let mut out = String::with_capacity(self.prefix.len() + body.len() + 16);
        out.push_str(&self.prefix);
        out.push_str(body);
        if !self.suffix.is_empty() {
            out.push('\n');
            out.push_str(self.suffix);
        }
        out
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(parts: &[(&str, &str, KeyKind)], casts: bool) -> KeyShape {
        KeyShape {
            table: "t".into(),
            parts: parts
                .iter()
                .map(|(n, t, k)| KeyPart {
                    name: n.to_string(),
                    sql_type: t.to_string(),
                    kind: *k,
                })
                .collect(),
            scope: None,
            casts,
        }
    }

    #[test]
    fn a_composite_range_is_a_row_comparison_with_typed_parameters() {
        let s = shape(
            &[
                ("tenant_id", "bigint", KeyKind::Integer),
                ("id", "uuid", KeyKind::Other),
            ],
            true,
        );
        let (sql, n) = s.range(true, true, 1, None);
        assert_eq!(
            sql,
            "(\"tenant_id\", \"id\") > (CAST($1 AS bigint), CAST($2 AS uuid)) AND \
             (\"tenant_id\", \"id\") <= (CAST($3 AS bigint), CAST($4 AS uuid))"
        );
        assert_eq!(n, 4);
        let (first, n) = s.range(false, true, 1, Some("u"));
        assert_eq!(
            first,
            "(\"u\".\"tenant_id\", \"u\".\"id\") <= (CAST($1 AS bigint), CAST($2 AS uuid))"
        );
        assert_eq!(n, 2);
    }

    #[test]
    fn checkpoints_round_trip_and_read_plainly() {
        let int = shape(&[("id", "bigint", KeyKind::Integer)], true);
        let key = Key(vec![KeyValue::Integer(-5)]);
        assert_eq!(int.encode(&key), "-5");
        assert_eq!(int.decode("-5").unwrap(), key);

        let s = shape(
            &[
                ("tenant_id", "integer", KeyKind::Integer),
                ("name", "text", KeyKind::Other),
            ],
            false,
        );
        let key = Key(vec![
            KeyValue::Integer(7),
            KeyValue::Text("O'Brien \"x\"".into()),
        ]);
        let text = s.encode(&key);
        assert_eq!(s.decode(&text).unwrap(), key);
        assert_eq!(
            describe_checkpoint(&text),
            "tenant_id = 7, name = 'O''Brien \"x\"'"
        );
        let blob = shape(&[("k", "BLOB", KeyKind::Other)], false);
        let key = Key(vec![KeyValue::Bytes(vec![0, 255, 16])]);
        assert_eq!(blob.decode(&blob.encode(&key)).unwrap(), key);
        let err = int.decode(&text).unwrap_err();
        assert!(err.contains("walks the key id"), "{err}");
    }

    #[test]
    fn markers_are_replaced_and_text_without_one_is_left_alone() {
        let mut s = shape(&[("id", "uuid", KeyKind::Other)], true);
        s.scope = Some("deleted_at IS NULL".into());
        assert!(render_marker("UPDATE t SET a = 1 WHERE id > $1", &s, true, None).is_none());
        let sql = render_marker(
            "UPDATE t x SET a = 1 WHERE {batch:x} AND a <> 1",
            &s,
            false,
            None,
        )
        .unwrap();
        assert_eq!(
            sql,
            "UPDATE t x SET a = 1 WHERE (\"x\".\"id\" <= CAST($1 AS uuid) AND (deleted_at IS NULL)) AND a <> 1"
        );
        // Checking the rest: the scope and the guard, no bound to bind.
        let call = RestGuard {
            predicate: Some("g()"),
            ..RestGuard::default()
        };
        let sql = render_marker(
            "UPDATE t SET a = 1 WHERE {batch} AND a <> 1",
            &s,
            true,
            Some(&call),
        )
        .unwrap();
        assert_eq!(
            sql,
            "UPDATE t SET a = 1 WHERE ((deleted_at IS NULL) AND g()) AND a <> 1"
        );
        s.scope = None;
        let sql = render_marker("UPDATE t SET a = 1 WHERE {batch}", &s, true, Some(&call)).unwrap();
        assert_eq!(sql, "UPDATE t SET a = 1 WHERE (TRUE AND g())");
        // MySQL's form: no call; the statement limited, stopped at its first row.
        let limited = RestGuard {
            predicate: None,
            prefix: "SET STATEMENT max_statement_time = 10 FOR ".into(),
            suffix: "LIMIT 1",
        };
        let sql = render_marker(
            "UPDATE t SET a = 1 WHERE {batch} AND a <> 1 -- note ;\n ; ",
            &s,
            true,
            Some(&limited),
        )
        .unwrap();
        assert_eq!(
            sql,
            "SET STATEMENT max_statement_time = 10 FOR \
             UPDATE t SET a = 1 WHERE (TRUE) AND a <> 1 -- note ;\nLIMIT 1"
        );
    }
}
