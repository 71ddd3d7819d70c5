//! PostgreSQL's walk over a batched migration's key: the key's columns and index, the next
//! batch, the planner's estimate, and the rest check (every key left checked in one
//! statement, guarded to fail on the first row it would change).

use std::time::Duration;

use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row};

use super::sql::{explained_rows, query, query_as, query_scalar};
use crate::backend::shared::Shared;
use crate::backend::steps::{KeyColumn, LoadSample, WalkSteps};
use crate::backend::values::bind_key_value;
use crate::key::{Key, KeyKind, KeyShape, KeyValue, RestGuard};
use crate::sql::quote_ident;

impl WalkSteps for Postgres {
    async fn key_columns(
        conn: &mut PgConnection,
        table: &str,
        names: &[&str],
    ) -> Result<Option<Vec<Option<KeyColumn>>>, sqlx::Error> {
        let table_ident = quote_ident(table);
        let exists: bool = query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&table_ident)
            .fetch_one(&mut *conn)
            .await?;
        if !exists {
            return Ok(None);
        }
        let mut columns = Vec::with_capacity(names.len());
        for name in names {
            // A domain is walked as its base type.
            let column: Option<(i64, String, String, bool, i64)> = query_as(
                "SELECT a.attnum::bigint, format_type(a.atttypid, a.atttypmod),
                        coalesce(bt.typname, t.typname)::text, a.attnotnull, a.attcollation::bigint
                 FROM pg_attribute a
                 JOIN pg_type t ON t.oid = a.atttypid
                 LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
                 WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND a.attnum > 0
                   AND NOT a.attisdropped",
            )
            .bind(&table_ident)
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
            columns.push(
                column.map(|(number, sql_type, base, not_null, collation)| KeyColumn {
                    name: name.to_string(),
                    sql_type,
                    kind: match base.as_str() {
                        "int2" | "int4" | "int8" => Some(KeyKind::Integer),
                        "date" | "timestamp" | "timestamptz" => Some(KeyKind::Temporal),
                        "uuid" | "text" | "varchar" | "bpchar" | "citext" | "numeric" | "bytea" => {
                            Some(KeyKind::Other)
                        }
                        _ => None,
                    },
                    not_null,
                    not_integers: 0,
                    number,
                    collation,
                }),
            );
        }
        Ok(Some(columns))
    }

    async fn key_index(
        conn: &mut PgConnection,
        table: &str,
        columns: &[KeyColumn],
    ) -> Result<Option<String>, sqlx::Error> {
        // A valid, complete (not partial) B-tree index whose leading columns are the key's,
        // in order, in the columns' own collations and default operator classes, all in one
        // direction: the one shape that serves `ORDER BY key` and `(key) > (..)` together.
        type Candidate = (String, Vec<i16>, Vec<i64>, Vec<bool>, Vec<i16>);
        let candidates: Vec<Candidate> = query_as(
            "SELECT c.relname::text,
                    ARRAY(SELECT x FROM unnest(i.indkey::int2[]) WITH ORDINALITY u(x, n) ORDER BY n),
                    ARRAY(SELECT x::bigint FROM unnest(i.indcollation::oid[]) WITH ORDINALITY u(x, n) ORDER BY n),
                    ARRAY(SELECT o.opcdefault FROM unnest(i.indclass::oid[]) WITH ORDINALITY u(x, n)
                          JOIN pg_opclass o ON o.oid = u.x ORDER BY n),
                    ARRAY(SELECT x FROM unnest(i.indoption::int2[]) WITH ORDINALITY u(x, n) ORDER BY n)
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indexrelid
             JOIN pg_am am ON am.oid = c.relam
             WHERE i.indrelid = to_regclass($1) AND am.amname = 'btree' AND i.indisvalid
               AND i.indpred IS NULL
             ORDER BY i.indisprimary DESC, i.indnkeyatts, c.relname",
        )
        .bind(quote_ident(table))
        .fetch_all(conn)
        .await?;
        let n = columns.len();
        Ok(candidates
            .into_iter()
            .find(|(_, keys, collations, defaults, options)| {
                keys.len() >= n
                    && collations.len() >= n
                    && defaults.len() >= n
                    && options.len() >= n
                    && columns.iter().enumerate().all(|(i, c)| {
                        i64::from(keys[i]) == c.number && collations[i] == c.collation
                    })
                    && defaults[..n].iter().all(|d| *d)
                    && options[..n].iter().all(|o| (o & 1) == (options[0] & 1))
            })
            .map(|(name, ..)| name))
    }

    async fn check_scope(
        conn: &mut PgConnection,
        table: &str,
        scope: &str,
    ) -> Result<(), sqlx::Error> {
        Shared::<Self>::check_scope(conn, table, scope).await
    }

    async fn next_batch(
        conn: &mut PgConnection,
        shape: &KeyShape,
        after: Option<&Key>,
        upper: Option<&Key>,
        size: u32,
    ) -> Result<Option<(Key, u64)>, sqlx::Error> {
        let sql = shape.next_batch_sql(after.is_some(), upper.is_some());
        let mut q = query(AssertSqlSafe(sql));
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
        let keys: i64 = row.try_get(shape.parts.len())?;
        Ok(Some((
            key_of_row(shape, &row)?,
            u64::try_from(keys).unwrap_or(0),
        )))
    }

    async fn has_keys_after(
        conn: &mut PgConnection,
        shape: &KeyShape,
        after: &Key,
        upper: Option<&Key>,
    ) -> Result<bool, sqlx::Error> {
        Shared::<Self>::has_keys_after(conn, shape, after, upper).await
    }

    async fn estimate_rows(
        conn: &mut PgConnection,
        shape: &KeyShape,
        after: Option<&Key>,
        upper: Option<&Key>,
    ) -> Result<Option<u64>, sqlx::Error> {
        // The planner's estimate: free, and close enough for a progress bar.
        let mut q = query(AssertSqlSafe(format!(
            "EXPLAIN {}",
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
        let first: String = match q.fetch_optional(conn).await? {
            Some(row) => row.try_get(0)?,
            None => String::new(),
        };
        Ok(explained_rows(&first))
    }

    async fn load_sample(
        conn: &mut PgConnection,
        own: &[i32],
    ) -> Result<Option<LoadSample>, sqlx::Error> {
        // Client sessions of this database only, not datamig's (its runners tag theirs
        // `datamig/<host>/<pid>`; `own` are this walk's workers). A session of another role
        // shows its state only to members of pg_read_all_stats: then it counts through the
        // commit counter alone. `pg_blocking_pids` runs only for a session waiting on a
        // lock (it takes the lock manager's locks).
        let row: (i32, i32, i32, Option<i64>, f64) = query_as(
            "SELECT count(*) FILTER (WHERE a.state = 'active')::int4,
                    count(*) FILTER (WHERE a.state IS DISTINCT FROM 'active'
                        AND a.state_change > clock_timestamp() - interval '1 second')::int4,
                    count(*) FILTER (WHERE CASE WHEN a.wait_event_type = 'Lock'
                        THEN pg_backend_pid() = ANY (pg_blocking_pids(a.pid))
                        ELSE false END)::int4,
                    (SELECT d.xact_commit FROM pg_stat_database d
                     WHERE d.datname = current_database())::int8,
                    EXTRACT(epoch FROM clock_timestamp())::float8
             FROM pg_stat_activity a
             WHERE a.datname = current_database() AND a.backend_type = 'client backend'
               AND a.pid <> pg_backend_pid() AND NOT (a.pid = ANY ($1))
               AND coalesce(a.application_name, '') NOT LIKE 'datamig/%'",
        )
        .bind(own)
        .fetch_one(conn)
        .await?;
        let count = |n: i32| u32::try_from(n).unwrap_or(0);
        Ok(Some(LoadSample {
            active: count(row.0),
            recent: count(row.1),
            lock_waits: count(row.2),
            commits: row.3,
            at: row.4,
        }))
    }

    async fn session_id(conn: &mut PgConnection) -> Result<Option<i32>, sqlx::Error> {
        Ok(Some(
            query_scalar("SELECT pg_backend_pid()")
                .fetch_one(conn)
                .await?,
        ))
    }

    const CHECKS_REST: bool = true;

    async fn begin_rest_check(
        conn: &mut PgConnection,
        limit: Duration,
    ) -> Result<RestGuard, sqlx::Error> {
        // One statement reads the whole scope: a custom plan for it (a generic one would
        // not see that the bounds cover most of the table), and no JIT, whose compilation
        // the guard's cost would trigger. The guard's cost sorts it after the statement's
        // own conditions, so it is called only for a row the statement would change.
        query(AssertSqlSafe(format!(
            "SELECT set_config('plan_cache_mode', 'force_custom_plan', true),
                    set_config('jit', 'off', true),
                    set_config('statement_timeout', '{}ms', true)",
            limit.as_millis().max(1)
        )))
        .execute(&mut *conn)
        .await?;
        query(
            "CREATE OR REPLACE FUNCTION pg_temp.datamig_rest_has_work() RETURNS boolean
             LANGUAGE plpgsql VOLATILE COST 1000 AS $$
             BEGIN
                 RAISE EXCEPTION USING ERRCODE = 'DMR01',
                     MESSAGE = 'datamig: a row after the checkpoint still needs work';
             END $$",
        )
        .execute(&mut *conn)
        .await?;
        Ok(RestGuard {
            predicate: Some("pg_temp.datamig_rest_has_work()"),
            ..RestGuard::default()
        })
    }

    async fn end_rest_check(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        query("DROP FUNCTION pg_temp.datamig_rest_has_work()")
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn last_key(
        conn: &mut PgConnection,
        shape: &KeyShape,
        after: Option<&Key>,
    ) -> Result<Option<Key>, sqlx::Error> {
        let mut q = query(AssertSqlSafe(shape.last_key_sql(after.is_some())));
        for value in after.map(Key::values).unwrap_or_default() {
            q = bind_key_value(q, value);
        }
        match q.fetch_optional(conn).await? {
            Some(row) => key_of_row(shape, &row).map(Some),
            None => Ok(None),
        }
    }
}

/// The key in the first columns of a row of `KeyShape::select_list`.
fn key_of_row(shape: &KeyShape, row: &PgRow) -> Result<Key, sqlx::Error> {
    let mut values = Vec::with_capacity(shape.parts.len());
    for (i, part) in shape.parts.iter().enumerate() {
        values.push(match part.kind {
            KeyKind::Integer => KeyValue::Integer(row.try_get(i)?),
            _ => KeyValue::Text(row.try_get(i)?),
        });
    }
    Ok(Key(values))
}
