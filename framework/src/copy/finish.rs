//! What follows the load: sequences moved past the copied values, the tables that received
//! rows analyzed, and one durable commit that flushes every chunk's.

use sqlx::AssertSqlSafe;
use sqlx::postgres::PgConnection;

use super::context::During;
use super::event::{CopyEvent, EventSink, emit};
use super::plan::Planned;
use super::report::{SequenceSet, TableReport};
use crate::backend::postgres::{query, query_scalar};
use crate::error::Error;
use crate::sql::quote_ident;

/// Moves each copied table's sequences past the copied values: to the source's position or
/// the column's highest value, whichever is greater, and never backwards.
pub(super) async fn set_sequences(
    dst: &mut PgConnection,
    planned: &[Planned],
    sink: &Option<EventSink>,
) -> Result<Vec<SequenceSet>, Error> {
    let mut set = Vec::new();
    for p in planned {
        for s in &p.target.sequences {
            let source = p
                .source
                .sequences
                .iter()
                .find(|x| x.column == s.column)
                .and_then(|x| x.last_value);
            let integer = p.target.column(&s.column).is_some_and(|c| {
                matches!(
                    c.sql_type.as_str(),
                    "smallint" | "integer" | "bigint" | "numeric"
                )
            });
            let during = || {
                format!(
                    "moving sequence {} of {}.{} past the copied values",
                    s.sequence, p.plan.table, s.column
                )
            };
            let highest: Option<i64> = if integer {
                query_scalar(AssertSqlSafe(format!(
                    "SELECT max({})::int8 FROM {}",
                    quote_ident(&s.column),
                    p.target.ident()
                )))
                .fetch_one(&mut *dst)
                .await
                .during(during)?
            } else {
                None
            };
            let Some(wanted) = source.max(highest) else {
                continue;
            };
            let current: Option<i64> = query_scalar(AssertSqlSafe(format!(
                "SELECT CASE WHEN is_called THEN last_value END FROM {}",
                s.sequence
            )))
            .fetch_one(&mut *dst)
            .await
            .during(during)?;
            if current.is_some_and(|c| c >= wanted) {
                continue;
            }
            query("SELECT setval($1::regclass, $2, true)")
                .bind(&s.sequence)
                .bind(wanted)
                .execute(&mut *dst)
                .await
                .during(during)?;
            let moved = SequenceSet {
                sequence: s.sequence.clone(),
                table: p.plan.table.clone(),
                column: s.column.clone(),
                from: current,
                to: wanted,
            };
            if let Some(sink) = sink {
                sink(&CopyEvent::SequenceSet(moved.clone()));
            }
            set.push(moved);
        }
    }
    Ok(set)
}

/// Analyzes each table that received rows and was not analyzed as its last chunk committed
/// (`analyzed`, to which each is added).
pub(super) async fn analyze(
    dst: &mut PgConnection,
    planned: &[Planned],
    tables: &[TableReport],
    analyzed: &mut Vec<String>,
    sink: &Option<EventSink>,
) -> Result<(), Error> {
    for (p, t) in planned.iter().zip(tables) {
        if t.rows > 0 && !analyzed.contains(&p.plan.table) {
            sqlx::raw_sql(AssertSqlSafe(format!("ANALYZE {}", p.target.ident())))
                .execute(&mut *dst)
                .await
                .during(|| format!("analyzing target table {}", p.plan.table))?;
            analyzed.push(p.plan.table.clone());
            emit(
                sink,
                &CopyEvent::Analyzed {
                    table: p.plan.table.clone(),
                },
            );
        }
    }
    Ok(())
}

/// Makes the chunks durable. They committed with `synchronous_commit = off`: one
/// transaction that commits durably flushes the WAL up to its own commit, every chunk's
/// included, before the copy says it is done.
pub(super) async fn flush(dst: &mut PgConnection) -> Result<(), Error> {
    sqlx::raw_sql(
        "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL synchronous_commit = on;
         SELECT txid_current(); COMMIT",
    )
    .execute(dst)
    .await
    .during(|| "the durable commit that flushes the copied chunks on the target".into())?;
    Ok(())
}
