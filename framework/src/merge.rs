//! The statement of an upsert, as the backends run it: the request the builder checked,
//! and the `INSERT .. ON CONFLICT` both databases share, built from its parts.

use crate::copy_text::RowSink;
use crate::error::Error;
use crate::sql::{check_name, quote_ident};

/// What happens to a row whose key is already in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpsertMode {
    /// `ON CONFLICT DO NOTHING`: only missing keys are inserted.
    InsertMissing,
    /// `ON CONFLICT DO UPDATE`: existing rows are overwritten, even with equal values.
    Overwrite,
    /// `ON CONFLICT DO UPDATE .. WHERE (cols) IS DISTINCT FROM (excluded cols)`: existing rows
    /// are updated only where a value differs, so a re-run rewrites no row.
    UpdateIfChanged,
}

/// What an upsert did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct UpsertReport {
    /// Rows inserted (their key was missing).
    pub inserted: u64,
    /// Rows updated (their key existed; for [`UpsertMode::UpdateIfChanged`], a value differed).
    pub updated: u64,
    /// Source rows that changed nothing (key present and, depending on the mode, not
    /// overwritten or equal).
    pub unchanged: u64,
}

/// Writes the next row into the sink; `false` when no row is left.
pub(crate) type NextRow<'u> = Box<dyn FnMut(RowSink<'_>) -> bool + Send + 'u>;

/// Where an upsert's rows come from.
pub(crate) enum Source<'u> {
    Missing,
    Query(String),
    Rows {
        columns: Vec<String>,
        width: usize,
        next: NextRow<'u>,
    },
}

/// An upsert, checked, for a backend to run.
pub struct UpsertRequest<'u> {
    /// The quoted, qualified target table.
    pub(crate) target: String,
    /// The table's name, for messages.
    pub(crate) table: String,
    pub(crate) key: Vec<String>,
    pub(crate) source: Source<'u>,
    pub(crate) mode: UpsertMode,
}

/// The `INSERT .. ON CONFLICT` statement of one upsert, in the syntax PostgreSQL and SQLite
/// share.
#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
pub(crate) struct Plan {
    /// `INSERT INTO target AS t (cols)`: what comes before the source.
    insert_into: String,
    /// `ON CONFLICT (key) DO ..`: what comes after it.
    on_conflict: String,
    /// The quoted key columns, joined.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) key_list: String,
    /// The quoted columns, joined.
    pub(crate) column_list: String,
}

impl Plan {
    /// `distinct` compares the row of current values with the incoming one:
    /// `|current, incoming| ..` (PostgreSQL: `ROW(..) IS DISTINCT FROM ROW(..)`, SQLite:
    /// `(..) IS NOT (..)`).
    pub(crate) fn new(
        request: &UpsertRequest<'_>,
        columns: &[String],
        distinct: impl Fn(&str, &str) -> String,
    ) -> Result<Self, Error> {
        let (key, table, mode) = (&request.key, &request.table, request.mode);
        for column in columns {
            check_name("column", column)?;
        }
        if let Some(missing) = key.iter().find(|k| !columns.contains(k)) {
            return Err(Error::Config(format!(
                "the upsert into {table} has key column {missing:?} but its rows have no such column \
                 (they have {})",
                columns.join(", ")
            )));
        }
        let quoted: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        let key_list = key
            .iter()
            .map(|k| quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ");
        let others: Vec<&String> = quoted
            .iter()
            .zip(columns)
            .filter(|(_, c)| !key.contains(c))
            .map(|(q, _)| q)
            .collect();
        let conflict = match mode {
            _ if others.is_empty() => "DO NOTHING".to_string(),
            UpsertMode::InsertMissing => "DO NOTHING".to_string(),
            UpsertMode::Overwrite | UpsertMode::UpdateIfChanged => {
                let set = others
                    .iter()
                    .map(|c| format!("{c} = excluded.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut clause = format!("DO UPDATE SET {set}");
                if mode == UpsertMode::UpdateIfChanged {
                    let current = others
                        .iter()
                        .map(|c| format!("t.{c}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let incoming = others
                        .iter()
                        .map(|c| format!("excluded.{c}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    clause.push_str(&format!(" WHERE {}", distinct(&current, &incoming)));
                }
                clause
            }
        };
        let column_list = quoted.join(", ");
        // The statement is assembled from its parts when the source is known; no text is
        // substituted into it afterwards, so no identifier can be mistaken for a marker.
        let insert_into = format!("INSERT INTO {} AS t ({column_list})", request.target);
        let on_conflict = format!("ON CONFLICT ({key_list}) {conflict}");
        Ok(Plan {
            insert_into,
            on_conflict,
            key_list,
            column_list,
        })
    }

    /// The statement, reading its rows from `source` (a `SELECT`).
    #[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
    pub(crate) fn insert_from(&self, source: &str) -> String {
        format!("{} {source} {}", self.insert_into, self.on_conflict)
    }
}

/// A name for a temporary staging table, unique in this process.
pub(crate) fn stage_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STAGES: AtomicU64 = AtomicU64::new(0);
    quote_ident(&format!(
        "datamig_{prefix}_{}",
        STAGES.fetch_add(1, Ordering::Relaxed)
    ))
}
