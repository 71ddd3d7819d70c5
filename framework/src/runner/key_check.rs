//! The checks of a batched migration's key and scope before its first batch.

use std::sync::Arc;

use crate::backend::Backend;
use crate::error::{Error, describe_sqlx};
use crate::key::{KeyKind, KeyPart, KeyShape};
use crate::migration::BatchSpec;

/// The key types batching walks on MySQL and MariaDB, for the refusal of another.
const MYSQL_KEY_TYPES: &str = "integer types, char, varchar, text, binary, varbinary, blob, \
                               date, datetime, timestamp, time, year, and composites of these";

/// The key types batching walks on PostgreSQL, for messages.
const POSTGRES_KEY_TYPES: &str = "smallint, integer, bigint, uuid, text, varchar, char, citext, \
                                  numeric, bytea, date, timestamp, timestamptz";

/// Checks a batched migration's key and scope before its first batch, and returns the
/// key's shape (and a warning to record, for a key no index serves that the migration
/// allowed): the table and the columns exist, each column is `NOT NULL` and of a type
/// batching walks, the scope is a valid condition, and an index serves the key. On a fresh
/// start of a key of one integer column, the smallest key must be reachable by the first
/// batch's `$1` too. Nothing is written: a refusal leaves the database as it was.
pub(crate) async fn batch_key<DB: Backend>(
    conn: &mut DB::Connection,
    id: &str,
    spec: &BatchSpec,
    fresh_start: bool,
) -> Result<(Arc<KeyShape>, Option<String>), Error> {
    let table = spec.table();
    let refuse = |why: String| {
        Err(Error::Config(format!(
            "batched migration {id}: {why}; nothing ran"
        )))
    };
    let names = spec.key_columns();
    if names.is_empty() {
        return refuse(format!(
            "its key {:?} names no column; write key = \"id\" or key = \"tenant_id, id\"",
            spec.key()
        ));
    }
    let Some(found) = DB::key_columns(conn, table, &names).await? else {
        return refuse(format!("its table {table} does not exist"));
    };
    let mut columns = Vec::with_capacity(found.len());
    for (name, column) in names.iter().zip(found) {
        let Some(column) = column else {
            return refuse(format!(
                "table {table} has no column {name:?}, which its batch key names; check the spelling"
            ));
        };
        if column.kind.is_none() {
            let walks = if DB::ID == "mysql" {
                MYSQL_KEY_TYPES
            } else {
                POSTGRES_KEY_TYPES
            };
            return refuse(format!(
                "its key column {table}.{name} is of type {}, which batching does not walk \
                 (it walks {walks}); key the batches by another unique column",
                column.sql_type
            ));
        }
        if !column.not_null {
            return refuse(format!(
                "its key column {table}.{name} is nullable, and a row whose key is NULL is \
                 never reached by any batch; make it NOT NULL first \
                 (ALTER TABLE {table} ALTER COLUMN {name} SET NOT NULL), or key the batches \
                 by another column"
            ));
        }
        if column.not_integers > 0 {
            return refuse(format!(
                "{} row(s) of {table} hold a {name} that is not an integer in an integer column, \
                 which batches cannot reach; convert them first",
                column.not_integers
            ));
        }
        columns.push(column);
    }
    if let Some(scope) = spec.scope()
        && let Err(err) = DB::check_scope(conn, table, scope).await
    {
        return refuse(format!(
            "its scope {scope:?} is not a valid condition on table {table}: {}",
            describe_sqlx(&err)
        ));
    }
    let shape = Arc::new(KeyShape {
        table: table.to_string(),
        parts: columns
            .iter()
            .map(|c| KeyPart {
                name: c.name.clone(),
                sql_type: c.sql_type.clone(),
                kind: c.kind.unwrap_or(KeyKind::Other),
            })
            .collect(),
        scope: spec.scope().map(str::to_string),
        casts: DB::ID == "postgres",
    });
    let mut warning = None;
    if DB::key_index(conn, table, &columns).await?.is_none() {
        let list = names.join(", ");
        let create = format!(
            "CREATE INDEX CONCURRENTLY {} ON {table} ({list})",
            crate::sql::quote_ident(&format!("{table}_{}_idx", names.join("_")))
        );
        if !spec.scans_without_index() {
            return refuse(format!(
                "no index of {table} serves its key ({list}): every batch would read the whole \
                 table. Create one first (on PostgreSQL: {create}), or, for a small table only, \
                 set dangerously_scan_without_index = true in batch(..)"
            ));
        }
        warning = Some(format!(
            "no index serves the key ({list}) of {table}: every batch read the whole table \
             (dangerously_scan_without_index); {create} would make each an index range scan"
        ));
    }
    if fresh_start && shape.is_single_integer() {
        let sql = format!(
            "SELECT CAST(min({}) AS bigint) FROM {}",
            crate::sql::quote_ident(names[0]),
            crate::sql::quote_ident(table)
        );
        let smallest = DB::fetch_i64(
            conn,
            sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(sql)),
        )
        .await?;
        if smallest == Some(i64::MIN) {
            return refuse(format!(
                "{table} holds the key {} (the smallest bigint), which the form `{} > $1` of a \
                 first batch cannot include; renumber that row first",
                i64::MIN,
                names[0]
            ));
        }
    }
    Ok((shape, warning))
}
