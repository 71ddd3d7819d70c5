//! Changes applied to the target: the net effect of many source transactions per table
//! and key (the last row image wins; a value an update left unchanged, TOASTed and not
//! sent, keeps the earlier image's or the target's; a key that changed is a delete of the
//! old key and the new row), written set-based, one statement per table and kind: a
//! `DELETE .. USING unnest(..)`, an `INSERT .. SELECT FROM unnest(..) ON CONFLICT DO
//! UPDATE`, an `UPDATE .. FROM unnest(..)` per set of unchanged columns. Every value is
//! bound as text (as `pgoutput` sends it) and cast in SQL to its target column's type.
//!
//! Applying a row image or deleting by key converges: applied again, in order, it leaves
//! the same rows. That is what makes a change applied over rows that already hold it
//! (a copy resumed from a later snapshot) harmless.

use std::collections::HashMap;

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Postgres};

use super::pgoutput::Value;
use crate::copy::plan::Planned;
use crate::copy::sql::source_from;
use crate::sql::quote_ident;

/// How one target table is written: its columns in the order the source's relation sends
/// them, with their target types, and which are the key.
#[derive(Clone, Debug)]
pub(super) struct TableShape {
    /// `schema.table`, for messages.
    pub(super) table: String,
    /// The table, for `INSERT`.
    pub(super) ident: String,
    /// The table for `UPDATE`/`DELETE`/`TRUNCATE` (`ONLY` for a plain table).
    pub(super) only: String,
    pub(super) columns: Vec<String>,
    pub(super) types: Vec<String>,
    /// Positions of the primary key's columns in `columns` (none: a table without a key,
    /// followed with `REPLICA IDENTITY FULL`, its rows matched by all their values).
    pub(super) key: Vec<usize>,
}

impl TableShape {
    /// The shape of `p` for a relation sending `columns`, or the columns the plan does not
    /// know (a column added to the source) and those it lacks (one dropped).
    pub(super) fn new(p: &Planned, columns: &[String]) -> Result<TableShape, String> {
        let mut types = Vec::new();
        let mut unknown = Vec::new();
        for c in columns {
            match p.plan.copied().find(|x| &x.name == c) {
                Some(x) => types.push(x.target_type.clone()),
                None => unknown.push(c.clone()),
            }
        }
        let missing: Vec<String> = p
            .plan
            .copied()
            .filter(|x| !columns.contains(&x.name))
            .map(|x| x.name.clone())
            .collect();
        if !unknown.is_empty() || !missing.is_empty() {
            let mut parts = Vec::new();
            if !unknown.is_empty() {
                parts.push(format!("column(s) {} not in the plan", unknown.join(", ")));
            }
            if !missing.is_empty() {
                parts.push(format!("planned column(s) {} gone", missing.join(", ")));
            }
            return Err(parts.join("; "));
        }
        let key = p
            .plan
            .key
            .iter()
            .map(|k| columns.iter().position(|c| c == k))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| {
                format!(
                    "its primary key ({}) is not sent whole",
                    p.plan.key.join(", ")
                )
            })?;
        Ok(TableShape {
            table: p.plan.table.clone(),
            ident: p.target.ident(),
            only: source_from(&p.target),
            columns: columns.to_vec(),
            types,
            key,
        })
    }

    /// The key of a row image, or `None` where a key column is missing.
    pub(super) fn key_of(&self, row: &[Value]) -> Option<Vec<String>> {
        self.key
            .iter()
            .map(|i| match row.get(*i) {
                Some(Value::Text(t)) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    fn column(&self, i: usize) -> String {
        quote_ident(&self.columns[i])
    }

    fn key_list(&self) -> String {
        self.key
            .iter()
            .map(|i| self.column(*i))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `t.k = u.ck::type AND ..`.
    fn key_match(&self) -> String {
        self.key
            .iter()
            .map(|i| format!("t.{} = u.c{i}::{}", self.column(*i), self.types[*i]))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// `unnest($1::text[], ..) AS u(c0, ..)` over the columns `which`.
    fn unnest(which: &[usize]) -> String {
        let arrays: Vec<String> = (1..=which.len()).map(|n| format!("${n}::text[]")).collect();
        let names: Vec<String> = which.iter().map(|i| format!("c{i}")).collect();
        format!("unnest({}) AS u({})", arrays.join(", "), names.join(", "))
    }
}

/// One key's net change within a batch.
#[derive(Clone, Debug)]
enum Op {
    /// The row's image (some values possibly unchanged, not sent).
    Row(Vec<Value>),
    Delete,
}

/// What a change needs that the batch cannot give it.
#[derive(Debug)]
pub(super) enum Direct {
    /// A row's key changed and a value it kept was not sent: the old row's value is read
    /// from the target, after the batch is written.
    Move { old: Vec<String>, new: Vec<Value> },
}

/// The pending net changes of one table.
#[derive(Default)]
struct Pending {
    ops: HashMap<Vec<String>, Op>,
    /// A table without a key (`REPLICA IDENTITY FULL`): how many more (or, below zero,
    /// fewer) times each row, all its values, is there. Its rows may repeat; a multiset's
    /// net change does not depend on the order of the changes.
    counts: HashMap<Vec<Option<String>>, i64>,
}

/// The net changes of a batch, per table (by the follow's table number).
#[derive(Default)]
pub(super) struct Batch {
    tables: HashMap<usize, Pending>,
    /// Changes taken since the last write.
    pub(super) changes: usize,
}

/// Fills the values `new` left unchanged from `old`.
fn fill(new: &mut [Value], old: &[Value]) {
    for (n, o) in new.iter_mut().zip(old) {
        if *n == Value::Unchanged {
            *n = o.clone();
        }
    }
}

impl Batch {
    /// Whether nothing is pending.
    pub(super) fn is_empty(&self) -> bool {
        self.tables
            .values()
            .all(|p| p.ops.is_empty() && p.counts.values().all(|n| *n == 0))
    }

    /// A row of a table without a key added (`delta` 1) or removed (-1), by all its values;
    /// an update is the old row removed and the new one added, its unchanged values (not
    /// sent) filled from the old row, which `REPLICA IDENTITY FULL` sends whole.
    pub(super) fn count(&mut self, table: usize, row: &[Value], delta: i64) {
        self.changes += 1;
        let values: Vec<Option<String>> = row.iter().map(text).collect();
        *self
            .tables
            .entry(table)
            .or_default()
            .counts
            .entry(values)
            .or_default() += delta;
    }

    /// An update of a table without a key, from the whole `old` row to `new`.
    pub(super) fn replace(&mut self, table: usize, old: &[Value], mut new: Vec<Value>) {
        fill(&mut new, old);
        self.count(table, old, -1);
        self.count(table, &new, 1);
        self.changes -= 1;
    }

    /// A new row.
    pub(super) fn insert(&mut self, table: usize, key: Vec<String>, row: Vec<Value>) {
        self.changes += 1;
        self.tables
            .entry(table)
            .or_default()
            .ops
            .insert(key, Op::Row(row));
    }

    /// A deleted row.
    pub(super) fn delete(&mut self, table: usize, key: Vec<String>) {
        self.changes += 1;
        self.tables
            .entry(table)
            .or_default()
            .ops
            .insert(key, Op::Delete);
    }

    /// A changed row, from `old` (its key before, when it changed) to `new`.
    pub(super) fn update(
        &mut self,
        table: usize,
        old: Option<Vec<String>>,
        new_key: Vec<String>,
        mut new: Vec<Value>,
    ) -> Option<Direct> {
        self.changes += 1;
        let pending = self.tables.entry(table).or_default();
        match old.filter(|o| *o != new_key) {
            Some(old) => {
                if let Some(Op::Row(before)) = pending.ops.get(&old) {
                    fill(&mut new, before);
                }
                if new.contains(&Value::Unchanged) {
                    return Some(Direct::Move { old, new });
                }
                pending.ops.insert(old, Op::Delete);
                pending.ops.insert(new_key, Op::Row(new));
            }
            None => {
                if let Some(Op::Row(before)) = pending.ops.get(&new_key) {
                    fill(&mut new, before);
                }
                pending.ops.insert(new_key, Op::Row(new));
            }
        }
        None
    }

    /// Writes every pending change, in the target transaction open on `conn`; the batch is
    /// empty afterwards. The error names the table and the statement's kind.
    pub(super) async fn write(
        &mut self,
        conn: &mut PgConnection,
        shapes: &[Option<TableShape>],
    ) -> Result<u64, (String, sqlx::Error)> {
        let mut rows = 0;
        let mut tables: Vec<(usize, Pending)> = self.tables.drain().collect();
        tables.sort_by_key(|(t, _)| *t);
        self.changes = 0;
        for (t, pending) in tables {
            let Some(shape) = shapes.get(t).and_then(Option::as_ref) else {
                continue;
            };
            rows += write_table(conn, shape, pending)
                .await
                .map_err(|(what, e)| (format!("{what} {}", shape.table), e))?;
        }
        Ok(rows)
    }
}

type Columns = Vec<Vec<Option<String>>>;

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Text(t) => Some(t.clone()),
        _ => None,
    }
}

async fn execute(
    conn: &mut PgConnection,
    sql: String,
    columns: Columns,
) -> Result<u64, sqlx::Error> {
    let mut q = sqlx::query::<Postgres>(AssertSqlSafe(sql));
    for c in columns {
        q = q.bind(c);
    }
    Ok(q.execute(conn).await?.rows_affected())
}

/// The net changes of one table: deletes, then whole rows, then rows with unchanged
/// values (grouped by which values they lack).
async fn write_table(
    conn: &mut PgConnection,
    shape: &TableShape,
    pending: Pending,
) -> Result<u64, (&'static str, sqlx::Error)> {
    if shape.key.is_empty() {
        return write_counts(conn, shape, pending.counts).await;
    }
    let n = shape.columns.len();
    let mut deletes: Columns = vec![Vec::new(); shape.key.len()];
    let mut whole: Columns = vec![Vec::new(); n];
    let mut partial: HashMap<Vec<bool>, Columns> = HashMap::new();
    let mut rows = 0;
    for (key, op) in pending.ops {
        rows += 1;
        match op {
            Op::Delete => {
                for (i, k) in key.into_iter().enumerate() {
                    deletes[i].push(Some(k));
                }
            }
            Op::Row(row) => {
                let mask: Vec<bool> = row.iter().map(|v| *v == Value::Unchanged).collect();
                let target = if mask.iter().any(|m| *m) {
                    partial.entry(mask).or_insert_with(|| vec![Vec::new(); n])
                } else {
                    &mut whole
                };
                for (i, v) in row.iter().enumerate().take(n) {
                    target[i].push(text(v));
                }
            }
        }
    }
    if !deletes[0].is_empty() {
        let sql = format!(
            "DELETE FROM {} t USING {} WHERE {}",
            shape.only,
            TableShape::unnest(&shape.key),
            shape.key_match()
        );
        execute(conn, sql, deletes)
            .await
            .map_err(|e| ("deleting rows of", e))?;
    }
    if !whole[0].is_empty() {
        let all: Vec<usize> = (0..n).collect();
        execute(conn, upsert_sql(shape, &all), whole)
            .await
            .map_err(|e| ("writing rows of", e))?;
    }
    for (mask, values) in partial {
        let sent: Vec<usize> = (0..n).filter(|i| !mask[*i]).collect();
        let sets: Vec<String> = sent
            .iter()
            .filter(|i| !shape.key.contains(i))
            .map(|i| format!("{} = u.c{i}::{}", shape.column(*i), shape.types[*i]))
            .collect();
        if sets.is_empty() {
            continue;
        }
        let values: Columns = values
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !mask[*i])
            .map(|(_, v)| v)
            .collect();
        let sql = format!(
            "UPDATE {} t SET {} FROM {} WHERE {}",
            shape.only,
            sets.join(", "),
            TableShape::unnest(&sent),
            shape.key_match()
        );
        execute(conn, sql, values)
            .await
            .map_err(|e| ("updating rows of", e))?;
    }
    Ok(rows)
}

/// The net changes of a table without a key: each row removed as many times as it went
/// (rows matched by the text of all their values, which every type has, however it
/// compares), then each row added as many times as it came. A row the target lacks is
/// named in the log; the cut-over's verification would then name the table.
async fn write_counts(
    conn: &mut PgConnection,
    shape: &TableShape,
    counts: HashMap<Vec<Option<String>>, i64>,
) -> Result<u64, (&'static str, sqlx::Error)> {
    let n = shape.columns.len();
    let mut gone: Columns = vec![Vec::new(); n];
    let mut gone_n: Vec<i64> = Vec::new();
    let mut come: Columns = vec![Vec::new(); n];
    let mut come_n: Vec<i64> = Vec::new();
    for (row, delta) in counts {
        let (columns, times) = match delta.cmp(&0) {
            std::cmp::Ordering::Less => (&mut gone, &mut gone_n),
            std::cmp::Ordering::Greater => (&mut come, &mut come_n),
            std::cmp::Ordering::Equal => continue,
        };
        for (i, v) in row.into_iter().enumerate().take(n) {
            columns[i].push(v);
        }
        times.push(delta.abs());
    }
    let all: Vec<usize> = (0..n).collect();
    let arrays = |times: usize| {
        let mut a: Vec<String> = (1..=n).map(|i| format!("${i}::text[]")).collect();
        a.push(format!("${times}::int8[]"));
        a.join(", ")
    };
    let names: Vec<String> = all.iter().map(|i| format!("c{i}")).collect();
    let casts: Vec<String> = all
        .iter()
        .map(|i| format!("u.c{i}::{}", shape.types[*i]))
        .collect();
    let mut rows = 0;
    if !gone_n.is_empty() {
        let expected: i64 = gone_n.iter().sum();
        let target_row: Vec<String> = all
            .iter()
            .map(|i| format!("t.{}", shape.column(*i)))
            .collect();
        let sql = format!(
            "WITH u AS (SELECT ROW({casts})::text AS r, u.n FROM unnest({arrays}) AS u({names}, n)),
                  m AS (SELECT t.tableoid AS rel, t.ctid AS id, u.n,
                               row_number() OVER (PARTITION BY u.r ORDER BY t.tableoid, t.ctid) AS rn
                        FROM {only} t JOIN u ON ROW({target_row})::text = u.r)
             DELETE FROM {only} t USING m WHERE t.tableoid = m.rel AND t.ctid = m.id AND m.rn <= m.n",
            casts = casts.join(", "),
            arrays = arrays(n + 1),
            names = names.join(", "),
            only = shape.only,
            target_row = target_row.join(", "),
        );
        let mut q = sqlx::query::<Postgres>(AssertSqlSafe(sql));
        for c in gone {
            q = q.bind(c);
        }
        let deleted = q
            .bind(gone_n)
            .execute(&mut *conn)
            .await
            .map_err(|e| ("deleting rows of", e))?
            .rows_affected();
        if i64::try_from(deleted).unwrap_or(i64::MAX) != expected {
            tracing::warn!(
                table = %shape.table,
                expected,
                deleted,
                "the target lacked rows the source deleted or updated in a table without a key; the cut-over's verification will name the table"
            );
        }
        rows += deleted;
    }
    if !come_n.is_empty() {
        let columns: Vec<String> = all.iter().map(|i| shape.column(*i)).collect();
        let sql = format!(
            "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM unnest({}) AS u({}, n), generate_series(1, u.n)",
            shape.ident,
            columns.join(", "),
            casts.join(", "),
            arrays(n + 1),
            names.join(", "),
        );
        let mut q = sqlx::query::<Postgres>(AssertSqlSafe(sql));
        for c in come {
            q = q.bind(c);
        }
        rows += q
            .bind(come_n)
            .execute(&mut *conn)
            .await
            .map_err(|e| ("writing rows of", e))?
            .rows_affected();
    }
    Ok(rows)
}

/// `INSERT .. SELECT FROM unnest(..) ON CONFLICT (key) DO UPDATE` of the columns `which`
/// (all of them).
fn upsert_sql(shape: &TableShape, which: &[usize]) -> String {
    let names: Vec<String> = which.iter().map(|i| shape.column(*i)).collect();
    let casts: Vec<String> = which
        .iter()
        .map(|i| format!("u.c{i}::{}", shape.types[*i]))
        .collect();
    let sets: Vec<String> = which
        .iter()
        .filter(|i| !shape.key.contains(i))
        .map(|i| format!("{0} = EXCLUDED.{0}", shape.column(*i)))
        .collect();
    let conflict = if sets.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", sets.join(", "))
    };
    format!(
        "INSERT INTO {} AS t ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {} ON CONFLICT ({}) {conflict}",
        shape.ident,
        names.join(", "),
        casts.join(", "),
        TableShape::unnest(which),
        shape.key_list()
    )
}

/// A row whose key changed and that kept a value not sent: the new row from the values
/// sent and the old row's others, then the old row deleted.
pub(super) async fn apply_direct(
    conn: &mut PgConnection,
    shape: &TableShape,
    direct: Direct,
) -> Result<(), (String, sqlx::Error)> {
    let Direct::Move { old, new } = direct;
    let n = shape.columns.len();
    let mut binds: Vec<Option<String>> = Vec::new();
    let mut select = Vec::new();
    for (i, v) in new.iter().enumerate().take(n) {
        match v {
            Value::Unchanged => select.push(format!("t.{}", shape.column(i))),
            other => {
                binds.push(text(other));
                select.push(format!("${}::{}", binds.len(), shape.types[i]));
            }
        }
    }
    let mut matches = Vec::new();
    for (j, i) in shape.key.iter().enumerate() {
        binds.push(old.get(j).cloned());
        matches.push(format!(
            "t.{} = ${}::{}",
            shape.column(*i),
            binds.len(),
            shape.types[*i]
        ));
    }
    let names: Vec<String> = (0..n).map(|i| shape.column(i)).collect();
    let sets: Vec<String> = (0..n)
        .filter(|i| !shape.key.contains(i))
        .map(|i| format!("{0} = EXCLUDED.{0}", shape.column(i)))
        .collect();
    let conflict = if sets.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", sets.join(", "))
    };
    // One statement: the old row deleted, its values taken into the new one (a unique
    // value it keeps does not meet itself).
    let sql = format!(
        "WITH t AS (DELETE FROM {} t WHERE {} RETURNING t.*)
         INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM t ON CONFLICT ({}) {conflict}",
        shape.only,
        matches.join(" AND "),
        shape.ident,
        names.join(", "),
        select.join(", "),
        shape.key_list()
    );
    let mut q = sqlx::query::<Postgres>(AssertSqlSafe(sql));
    for b in &binds {
        q = q.bind(b.clone());
    }
    q.execute(&mut *conn)
        .await
        .map_err(|e| (format!("moving a row of {} to its new key", shape.table), e))?;
    Ok(())
}

/// Empties target tables as the source's `TRUNCATE` did.
pub(super) async fn truncate(
    conn: &mut PgConnection,
    shapes: &[&TableShape],
) -> Result<(), (String, sqlx::Error)> {
    let tables: Vec<&str> = shapes.iter().map(|s| s.only.as_str()).collect();
    let names: Vec<&str> = shapes.iter().map(|s| s.table.as_str()).collect();
    sqlx::raw_sql(AssertSqlSafe(format!("TRUNCATE {}", tables.join(", "))))
        .execute(conn)
        .await
        .map_err(|e| (format!("truncating {}", names.join(", ")), e))?;
    Ok(())
}
