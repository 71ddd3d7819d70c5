//! Foreign keys with the target's triggers off: whether the role may turn them off, which
//! tables must keep them on, and the copy's own check of each key over each chunk.
//!
//! Why: where the target role may set `session_replication_role` and no selected table has
//! triggers of its own, the load runs in replica mode and each key is checked with one
//! anti-join over each chunk before it commits, instead of the server's row-by-row checks:
//! the same guarantee at a third of the time, with no DDL on the target's tables.

use std::collections::BTreeSet;

use sqlx::AssertSqlSafe;
use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::catalog::{self, TableName, display};
use super::plan::Planned;
use super::sql::quote_literal;
use crate::backend::postgres::{query, query_as, query_scalar};
use crate::error::Error;
use crate::sql::quote_ident;

/// Whether the target role may set `session_replication_role`.
pub(super) async fn may_disable_triggers(conn: &mut PgConnection) -> Result<bool, Error> {
    Ok(query_scalar(
        "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
             OR (current_setting('server_version_num')::int >= 150000
                 AND has_parameter_privilege('session_replication_role', 'SET'))",
    )
    .fetch_one(conn)
    .await?)
}

/// The target's tables (partitioned ones through their partitions) whose load would
/// change with triggers off: a trigger of their own that fires in the origin or replica
/// role, or a `MATCH FULL` foreign key (the copy's own check follows `MATCH SIMPLE`).
pub(super) async fn tables_keeping_triggers(
    conn: &mut PgConnection,
) -> Result<BTreeSet<TableName>, Error> {
    let rows: Vec<(String, String)> = query_as(
        "SELECT DISTINCT n.nspname::text, c.relname::text
         FROM (SELECT tgrelid AS rel FROM pg_trigger
               WHERE NOT tgisinternal AND tgenabled IN ('O', 'R')
               UNION SELECT conrelid FROM pg_constraint
               WHERE contype = 'f' AND confmatchtype = 'f') AS x
         CROSS JOIN LATERAL (SELECT x.rel UNION SELECT relid FROM pg_partition_ancestors(x.rel))
             AS a (relid)
         JOIN pg_class c ON c.oid = a.relid
         JOIN pg_namespace n ON n.oid = c.relnamespace",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The first row of a chunk whose foreign key names a row the target does not hold, as
/// a message naming the constraint, the row and the missing key; `None` when every
/// reference holds. Each key is one anti-join over the chunk's key range (`range`, over the
/// target's columns aliased `c`).
pub(super) async fn dangling_reference(
    conn: &mut PgConnection,
    p: &Planned,
    range: &str,
) -> Result<Option<String>, sqlx::Error> {
    for fk in &p.target.foreign_keys {
        if fk.referenced.len() != fk.columns.len() {
            continue;
        }
        let parent = catalog::ident(&fk.references);
        let present: Vec<String> = fk
            .columns
            .iter()
            .map(|c| format!("c.{} IS NOT NULL", quote_ident(c)))
            .collect();
        let matched: Vec<String> = fk
            .columns
            .iter()
            .zip(&fk.referenced)
            .map(|(c, r)| format!("r.{} = c.{}", quote_ident(r), quote_ident(c)))
            .collect();
        let shown: Vec<String> = fk
            .columns
            .iter()
            .map(|c| format!("c.{}::text", quote_ident(c)))
            .collect();
        let key: Vec<String> = p
            .plan
            .key
            .iter()
            .map(|k| {
                format!(
                    "{} || ' = ' || c.{}::text",
                    quote_literal(k),
                    quote_ident(k)
                )
            })
            .collect();
        let key = if key.is_empty() {
            "'ctid = ' || c.ctid::text".to_string()
        } else {
            key.join(" || ', ' || ")
        };
        let sql = format!(
            "SELECT {key}, concat_ws(', ', {}) FROM ONLY {} AS c
             WHERE {}{range} AND NOT EXISTS (SELECT 1 FROM {parent} AS r WHERE {})
             LIMIT 1",
            shown.join(", "),
            p.target.ident(),
            present.join(" AND "),
            matched.join(" AND ")
        );
        if let Some(row) = query(AssertSqlSafe(sql)).fetch_optional(&mut *conn).await? {
            let (row_key, values): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            return Ok(Some(format!(
                "foreign key {} of the row with {row_key}: ({}) = ({values}) is not present in table {} (checked by the copy: triggers are off)",
                fk.name,
                fk.columns.join(", "),
                display(&fk.references)
            )));
        }
    }
    Ok(None)
}
