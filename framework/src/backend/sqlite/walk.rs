//! SQLite's walk over a batched migration's key: the key's columns (their storage classes
//! checked) and index, the next batch, a count for progress. No rest check: the trait's
//! defaults.

use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Row, Sqlite};

use super::sql::table_exists;
use crate::backend::shared::Shared;
use crate::backend::steps::{KeyColumn, WalkSteps};
use crate::backend::values::bind_key_value;
use crate::key::{Key, KeyKind, KeyShape, KeyValue};
use crate::sql::quote_ident;

impl WalkSteps for Sqlite {
    async fn key_columns(
        conn: &mut SqliteConnection,
        table: &str,
        names: &[&str],
    ) -> Result<Option<Vec<Option<KeyColumn>>>, sqlx::Error> {
        if !table_exists(conn, None, table).await? {
            return Ok(None);
        }
        // Looked up by name: in SQL, a double-quoted name that matches no column would be
        // read as a string literal, and every comparison with it would quietly succeed.
        let info: Vec<(String, String, bool, i64)> =
            sqlx::query_as("SELECT name, type, \"notnull\", pk FROM pragma_table_info($1)")
                .bind(table)
                .fetch_all(&mut *conn)
                .await?;
        let primary: Vec<&(String, String, bool, i64)> =
            info.iter().filter(|(.., pk)| *pk > 0).collect();
        let mut columns = Vec::with_capacity(names.len());
        for name in names {
            let Some((_, data_type, not_null, pk)) = info.iter().find(|(n, ..)| n == name) else {
                columns.push(None);
                continue;
            };
            // SQLite's integer affinity: a declared type containing INT.
            let integer = data_type.to_ascii_uppercase().contains("INT");
            // `INTEGER PRIMARY KEY` is the rowid, which is never NULL.
            let rowid = *pk > 0 && primary.len() == 1 && data_type.eq_ignore_ascii_case("INTEGER");
            let not_integers = if integer {
                let key = quote_ident(name);
                sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT count(*) FROM {} WHERE {key} IS NOT NULL AND typeof({key}) <> 'integer'",
                    quote_ident(table)
                )))
                .fetch_one(&mut *conn)
                .await?
            } else {
                0
            };
            columns.push(Some(KeyColumn {
                name: name.to_string(),
                sql_type: data_type.clone(),
                kind: Some(if integer {
                    KeyKind::Integer
                } else {
                    KeyKind::Other
                }),
                not_null: *not_null || rowid,
                not_integers,
                number: 0,
                collation: 0,
            }));
        }
        Ok(Some(columns))
    }

    async fn key_index(
        conn: &mut SqliteConnection,
        table: &str,
        columns: &[KeyColumn],
    ) -> Result<Option<String>, sqlx::Error> {
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        // The rowid (`INTEGER PRIMARY KEY`) is the table's own order.
        let rowid: Option<String> = sqlx::query_scalar(
            "SELECT name FROM pragma_table_info($1) WHERE pk = 1 AND upper(type) = 'INTEGER'
               AND (SELECT count(*) FROM pragma_table_info($1) WHERE pk > 0) = 1",
        )
        .bind(table)
        .fetch_optional(&mut *conn)
        .await?;
        if names.len() == 1 && rowid.as_deref() == Some(names[0]) {
            return Ok(Some("the rowid".to_string()));
        }
        let indexes: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_index_list($1) WHERE partial = 0")
                .bind(table)
                .fetch_all(&mut *conn)
                .await?;
        for index in indexes {
            let leading: Vec<Option<String>> =
                sqlx::query_scalar("SELECT name FROM pragma_index_info($1) ORDER BY seqno")
                    .bind(&index)
                    .fetch_all(&mut *conn)
                    .await?;
            if leading.len() >= names.len()
                && leading
                    .iter()
                    .zip(&names)
                    .all(|(have, want)| have.as_deref() == Some(*want))
            {
                return Ok(Some(index));
            }
        }
        Ok(None)
    }

    async fn check_scope(
        conn: &mut SqliteConnection,
        table: &str,
        scope: &str,
    ) -> Result<(), sqlx::Error> {
        Shared::<Self>::check_scope(conn, table, scope).await
    }

    async fn next_batch(
        conn: &mut SqliteConnection,
        shape: &KeyShape,
        after: Option<&Key>,
        upper: Option<&Key>,
        size: u32,
    ) -> Result<Option<(Key, u64)>, sqlx::Error> {
        let sql = shape.next_batch_sql(after.is_some(), upper.is_some());
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for value in after
            .map(Key::values)
            .unwrap_or_default()
            .iter()
            .chain(upper.map(Key::values).unwrap_or_default())
        {
            q = bind_key_value(q, value);
        }
        let Some(row) = q.bind(i64::from(size)).fetch_optional(conn).await? else {
            return Ok(None);
        };
        let mut values = Vec::with_capacity(shape.parts.len());
        for i in 0..shape.parts.len() {
            let class: String = row.try_get(2 * i + 1)?;
            values.push(match class.as_str() {
                "integer" => KeyValue::Integer(row.try_get(2 * i)?),
                "real" => KeyValue::Real(row.try_get(2 * i)?),
                "blob" => KeyValue::Bytes(row.try_get(2 * i)?),
                _ => KeyValue::Text(row.try_get(2 * i)?),
            });
        }
        let keys: i64 = row.try_get(2 * shape.parts.len())?;
        Ok(Some((Key(values), u64::try_from(keys).unwrap_or(0))))
    }

    async fn has_keys_after(
        conn: &mut SqliteConnection,
        shape: &KeyShape,
        after: &Key,
        upper: Option<&Key>,
    ) -> Result<bool, sqlx::Error> {
        Shared::<Self>::has_keys_after(conn, shape, after, upper).await
    }

    async fn estimate_rows(
        conn: &mut SqliteConnection,
        shape: &KeyShape,
        after: Option<&Key>,
        upper: Option<&Key>,
    ) -> Result<Option<u64>, sqlx::Error> {
        // SQLite keeps no row estimate; counting walks the key's index, once per run.
        let mut q = sqlx::query(AssertSqlSafe(format!(
            "SELECT count(*) FROM ({})",
            shape.rows_after_sql(after.is_some(), upper.is_some())
        )));
        for value in after
            .map(Key::values)
            .unwrap_or_default()
            .iter()
            .chain(upper.map(Key::values).unwrap_or_default())
        {
            q = bind_key_value(q, value);
        }
        let rows: i64 = q.fetch_one(conn).await?.try_get(0)?;
        Ok(u64::try_from(rows).ok())
    }
}
