//! PostgreSQL's side of several workers on one batched migration: the ranges table
//! (`<ledger>_ranges`), claims (a session advisory lock per range on a direct connection,
//! or a lease in the range's row through a transaction pooler, taken with
//! `FOR UPDATE SKIP LOCKED`), each batch's hold on its range, and the commit of the last
//! range, which applies the migration.

use std::collections::HashSet;

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Postgres, Row};

use super::sql::{millis, query, query_as, query_scalar};
use crate::backend::isolation::begin_read_committed;
use crate::backend::steps::RangeSteps;
use crate::backend::values::bind_key_value;
use crate::error::Error;
use crate::key::{Key, KeyKind, KeyShape, KeyValue};
use crate::ledger::{Attempt, Claim, LedgerConfig, RangeMark, RangeStep, WorkRange};
use crate::sql::quote_ident;

/// The most rows a heap page of 8 kB holds (PostgreSQL's `MaxHeapTuplesPerPage`).
const MAX_ROWS_PER_PAGE: f64 = 291.0;

impl RangeSteps for Postgres {
    const WORKERS: bool = true;

    async fn ensure_ranges(conn: &mut PgConnection, config: &LedgerConfig) -> Result<(), Error> {
        self::ensure(conn, config).await
    }

    async fn read_ranges(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        id: Option<&str>,
    ) -> Result<Vec<WorkRange>, sqlx::Error> {
        self::read(conn, config, id).await
    }

    async fn range_marks(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        id: &str,
    ) -> Result<Vec<RangeMark>, sqlx::Error> {
        let sql = format!(
            "SELECT range_no, batches, updated_at FROM {}
             WHERE migration_id = $1 AND NOT done ORDER BY range_no",
            config.ranges_ident()
        );
        query_as(AssertSqlSafe(sql)).bind(id).fetch_all(conn).await
    }

    async fn replace_ranges(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        id: &str,
        bounds: &[(Option<String>, Option<String>)],
    ) -> Result<(), Error> {
        Ok(self::replace(conn, config, id, bounds).await?)
    }

    async fn claim_range(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        id: &str,
        claim: &Claim,
    ) -> Result<Option<i32>, Error> {
        Ok(self::claim(conn, config, id, claim).await?)
    }

    async fn release_range(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        id: &str,
        number: i32,
        claim: &Claim,
    ) -> Result<(), Error> {
        Ok(self::release(conn, config, id, number, claim).await?)
    }

    async fn hold_range(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        id: &str,
        number: i32,
        token: &str,
    ) -> Result<Option<(Option<String>, Option<String>, i64)>, sqlx::Error> {
        self::hold(conn, config, id, number, token).await
    }

    async fn advance_range(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        id: &str,
        number: i32,
        claim: &Claim,
        step: &RangeStep,
    ) -> Result<(), sqlx::Error> {
        self::advance(conn, config, id, number, claim, step).await
    }

    async fn finish_ranges(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        attempt: &Attempt,
    ) -> Result<bool, sqlx::Error> {
        self::finish(conn, config, attempt).await
    }

    async fn split_keys(
        conn: &mut PgConnection,
        shape: &KeyShape,
        after: Option<&Key>,
        pieces: usize,
    ) -> Result<Vec<Key>, Error> {
        Ok(self::split(conn, shape, after, pieces).await?)
    }
}

/// Whether the ranges table exists.
pub(crate) async fn exists(
    conn: &mut PgConnection,
    config: &LedgerConfig,
) -> Result<bool, sqlx::Error> {
    query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(config.ranges_ident())
        .fetch_one(conn)
        .await
}

/// Creates the ranges table where it is missing (the runner holds the runner lock). A
/// role without `CREATE` gets an error naming what to do.
pub(crate) async fn ensure(conn: &mut PgConnection, config: &LedgerConfig) -> Result<(), Error> {
    let ranges = config.ranges_ident();
    let mut tx = begin_read_committed(conn).await?;
    if exists(&mut tx, config).await? {
        return Ok(());
    }
    let ddl = format!(
        "CREATE TABLE IF NOT EXISTS {ranges} (
            migration_id  text NOT NULL,
            range_no      integer NOT NULL,
            lower_key     text,
            upper_key     text,
            checkpoint    text,
            done          boolean NOT NULL DEFAULT false,
            batches       bigint NOT NULL DEFAULT 0,
            keys_done     bigint NOT NULL DEFAULT 0,
            rows_affected bigint NOT NULL DEFAULT 0,
            token         text,
            worker        text,
            claimed_at    timestamptz,
            expires_at    timestamptz,
            updated_at    timestamptz,
            PRIMARY KEY (migration_id, range_no)
        )"
    );
    if let Err(err) = sqlx::raw_sql(AssertSqlSafe(ddl)).execute(&mut *tx).await {
        if err
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|c| c == "42501")
        {
            return Err(Error::Config(format!(
                "the table {ranges}, where several workers record their ranges of keys, does \
                 not exist, and this role may not create it ({}): run the migration once with \
                 workers as the owner of the schema (or a role with CREATE on it), or with one \
                 worker; then this role needs SELECT, INSERT, UPDATE, DELETE on {ranges}",
                crate::error::describe_sqlx(&err)
            )));
        }
        return Err(err.into());
    }
    tx.commit().await?;
    Ok(())
}

/// The ranges of one migration, or of all, by migration and number; empty when the table
/// does not exist.
pub(crate) async fn read(
    conn: &mut PgConnection,
    config: &LedgerConfig,
    id: Option<&str>,
) -> Result<Vec<WorkRange>, sqlx::Error> {
    if !exists(&mut *conn, config).await? {
        return Ok(Vec::new());
    }
    // The advisory locks held now: a range claimed by a session is held while its
    // session holds the range's lock (pg_locks shows a bigint key as two halves).
    let held_keys: HashSet<i64> = query_scalar(
        "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks
         WHERE locktype = 'advisory' AND objsubid = 1 AND granted",
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let sql = format!(
        "SELECT migration_id, range_no, lower_key, upper_key, checkpoint, done, batches,
                keys_done, rows_affected, worker, claimed_at, updated_at,
                token IS NOT NULL AS claimed, expires_at = 'infinity' AS by_session,
                COALESCE(expires_at > clock_timestamp(), false) AS unexpired
         FROM {} WHERE $1::text IS NULL OR migration_id = $1
         ORDER BY migration_id, range_no",
        config.ranges_ident()
    );
    let rows = query(AssertSqlSafe(sql)).bind(id).fetch_all(conn).await?;
    rows.iter()
        .map(|row| {
            let migration_id: String = row.try_get("migration_id")?;
            let number: i32 = row.try_get("range_no")?;
            let claimed: bool = row.try_get("claimed")?;
            let by_session: Option<bool> = row.try_get("by_session")?;
            let unexpired: bool = row.try_get("unexpired")?;
            let held = claimed
                && if by_session == Some(true) {
                    held_keys.contains(&config.range_key(&migration_id, number))
                } else {
                    unexpired
                };
            Ok(WorkRange {
                number,
                lower: row.try_get("lower_key")?,
                upper: row.try_get("upper_key")?,
                checkpoint: row.try_get("checkpoint")?,
                done: row.try_get("done")?,
                batches: row.try_get("batches")?,
                keys_done: row.try_get("keys_done")?,
                rows_affected: row.try_get("rows_affected")?,
                worker: row.try_get("worker")?,
                held,
                claimed_at: row.try_get("claimed_at")?,
                updated_at: row.try_get("updated_at")?,
                migration_id,
            })
        })
        .collect()
}

/// Replaces the ranges of migration `id` by `bounds` (each `(lower, upper]`, encoded as
/// checkpoints), inside the transaction that records the migration as running.
pub(crate) async fn replace(
    conn: &mut PgConnection,
    config: &LedgerConfig,
    id: &str,
    bounds: &[(Option<String>, Option<String>)],
) -> Result<(), sqlx::Error> {
    let ranges = config.ranges_ident();
    query(AssertSqlSafe(format!(
        "DELETE FROM {ranges} WHERE migration_id = $1"
    )))
    .bind(id)
    .execute(&mut *conn)
    .await?;
    let (lowers, uppers): (Vec<Option<String>>, Vec<Option<String>>) =
        bounds.iter().cloned().unzip();
    let sql = format!(
        "INSERT INTO {ranges} (migration_id, range_no, lower_key, upper_key)
         SELECT $1, (n - 1)::integer, lower_key, upper_key
         FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS b(lower_key, upper_key, n)"
    );
    query(AssertSqlSafe(sql))
        .bind(id)
        .bind(lowers)
        .bind(uppers)
        .execute(conn)
        .await?;
    Ok(())
}

/// Claims a range of migration `id` that no live worker holds and that has keys left;
/// `None` when there is none. A direct connection claims with the range's session advisory
/// lock (released by the server when the session ends: a worker killed at any instant
/// gives its range back at once); a lease claims the row itself, `FOR UPDATE SKIP LOCKED`,
/// when it is unclaimed or its lease expired.
pub(crate) async fn claim(
    conn: &mut PgConnection,
    config: &LedgerConfig,
    id: &str,
    claim: &Claim,
) -> Result<Option<i32>, sqlx::Error> {
    let ranges = config.ranges_ident();
    // The ranges belong to the run the ledger row records: only a worker of that run's
    // code takes one (see `Claim::code`).
    let ledger = config.ledger_ident();
    let same_run = |n: usize| {
        format!(
            "EXISTS (SELECT 1 FROM {ledger} WHERE id = $1 AND checksum = ${n} AND revision = ${})",
            n + 1
        )
    };
    let (checksum, revision) = (
        &claim.code.0,
        i32::try_from(claim.code.1).unwrap_or(i32::MAX),
    );
    if let Some(ttl) = claim.lease {
        let mut tx = begin_read_committed(conn).await?;
        let sql = format!(
            "UPDATE {ranges} SET token = $2, worker = $3, claimed_at = clock_timestamp(),
                 expires_at = clock_timestamp() + $4 * interval '1 millisecond'
             WHERE (migration_id, range_no) IN (
                 SELECT migration_id, range_no FROM {ranges}
                 WHERE migration_id = $1 AND NOT done
                   AND (expires_at IS NULL OR expires_at <= clock_timestamp())
                   AND {}
                 ORDER BY range_no LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING range_no",
            same_run(5)
        );
        let taken: Option<i32> = query_scalar(AssertSqlSafe(sql))
            .bind(id)
            .bind(&claim.token)
            .bind(&claim.worker)
            .bind(millis(ttl))
            .bind(checksum)
            .bind(revision)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        return Ok(taken);
    }
    let sql = format!(
        "SELECT range_no FROM {ranges}
         WHERE migration_id = $1 AND NOT done
           AND (expires_at IS NULL OR expires_at = 'infinity' OR expires_at <= clock_timestamp())
           AND {}
         ORDER BY range_no",
        same_run(2)
    );
    let candidates: Vec<i32> = query_scalar(AssertSqlSafe(sql))
        .bind(id)
        .bind(checksum)
        .bind(revision)
        .fetch_all(&mut *conn)
        .await?;
    for number in candidates {
        let key = config.range_key(id, number);
        // One statement per range, never a lock taken in a query's filter: the planner
        // may evaluate a filter on rows it then throws away, leaving locks behind.
        let locked: bool = query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        if !locked {
            continue;
        }
        let sql = format!(
            "UPDATE {ranges} SET token = $3, worker = $4, claimed_at = clock_timestamp(),
                 expires_at = 'infinity'
             WHERE migration_id = $1 AND range_no = $2 AND NOT done
               AND (expires_at IS NULL OR expires_at = 'infinity' OR expires_at <= clock_timestamp())
               AND {}",
            same_run(5)
        );
        let done = query(AssertSqlSafe(sql))
            .bind(id)
            .bind(number)
            .bind(&claim.token)
            .bind(&claim.worker)
            .bind(checksum)
            .bind(revision)
            .execute(&mut *conn)
            .await?;
        if done.rows_affected() == 1 {
            return Ok(Some(number));
        }
        // Finished, leased, or replaced by a run of other code since the list was read.
        query("SELECT pg_advisory_unlock($1)")
            .bind(key)
            .execute(&mut *conn)
            .await?;
    }
    Ok(None)
}

/// Gives range `number` back: its token cleared (it stays named after its last worker),
/// its advisory lock released.
pub(crate) async fn release(
    conn: &mut PgConnection,
    config: &LedgerConfig,
    id: &str,
    number: i32,
    claim: &Claim,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "UPDATE {} SET token = NULL, expires_at = NULL
         WHERE migration_id = $1 AND range_no = $2 AND token = $3",
        config.ranges_ident()
    );
    let mut tx = begin_read_committed(conn).await?;
    query(AssertSqlSafe(sql))
        .bind(id)
        .bind(number)
        .bind(&claim.token)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    if claim.lease.is_none() {
        query("SELECT pg_advisory_unlock($1)")
            .bind(config.range_key(id, number))
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Inside a batch's transaction: locks range `number`'s row and returns where its next
/// batch starts after (its checkpoint, or its lower bound before its first batch), its
/// upper bound and its batches so far, if `token` still holds it (a lease: unexpired)
/// and it has keys left; `None` otherwise (the batch must not run).
pub(crate) async fn hold(
    conn: &mut PgConnection,
    config: &LedgerConfig,
    id: &str,
    number: i32,
    token: &str,
) -> Result<Option<(Option<String>, Option<String>, i64)>, sqlx::Error> {
    let sql = format!(
        "SELECT COALESCE(checkpoint, lower_key), upper_key, batches FROM {}
         WHERE migration_id = $1 AND range_no = $2 AND token = $3 AND NOT done
           AND (expires_at = 'infinity' OR expires_at > clock_timestamp())
         FOR UPDATE",
        config.ranges_ident()
    );
    query_as(AssertSqlSafe(sql))
        .bind(id)
        .bind(number)
        .bind(token)
        .fetch_optional(conn)
        .await
}

/// Inside a batch's transaction: records what the batch did in its range (a lease is
/// renewed).
pub(crate) async fn advance(
    conn: &mut PgConnection,
    config: &LedgerConfig,
    id: &str,
    number: i32,
    claim: &Claim,
    step: &RangeStep,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "UPDATE {} SET checkpoint = COALESCE($4, checkpoint), batches = batches + $5,
             keys_done = keys_done + $6, rows_affected = rows_affected + $7, done = $8,
             updated_at = clock_timestamp(),
             expires_at = CASE WHEN expires_at = 'infinity' THEN expires_at
                               ELSE clock_timestamp() + $9 * interval '1 millisecond' END
         WHERE migration_id = $1 AND range_no = $2 AND token = $3",
        config.ranges_ident()
    );
    query(AssertSqlSafe(sql))
        .bind(id)
        .bind(number)
        .bind(&claim.token)
        .bind(&step.checkpoint)
        .bind(i64::from(step.checkpoint.is_some()))
        .bind(i64::try_from(step.keys).unwrap_or(i64::MAX))
        .bind(i64::try_from(step.rows).unwrap_or(i64::MAX))
        .bind(step.done)
        .bind(claim.lease.map_or(0, millis))
        .execute(conn)
        .await?;
    Ok(())
}

/// Inside the transaction of a batch that finished its range: when no range of the
/// migration has keys left, records it applied (its ledger row takes the ranges' batches
/// and rows) and removes its ranges; `true` then. The ledger row is locked first, so of
/// two workers finishing the last two ranges at once, the second sees the first's commit
/// and exactly one applies the migration.
pub(crate) async fn finish(
    conn: &mut PgConnection,
    config: &LedgerConfig,
    a: &Attempt,
) -> Result<bool, sqlx::Error> {
    let ledger = config.ledger_ident();
    let ranges = config.ranges_ident();
    let running: Option<i32> = query_scalar(AssertSqlSafe(format!(
        "SELECT 1 FROM {ledger} WHERE id = $1 AND status = 'running' FOR UPDATE"
    )))
    .bind(a.id.as_ref())
    .fetch_optional(&mut *conn)
    .await?;
    if running.is_none() {
        return Ok(false);
    }
    let (left, batches, rows): (i64, i64, i64) = query_as(AssertSqlSafe(format!(
        "SELECT count(*) FILTER (WHERE NOT done), COALESCE(sum(batches), 0)::bigint,
                COALESCE(sum(rows_affected), 0)::bigint
         FROM {ranges} WHERE migration_id = $1"
    )))
    .bind(a.id.as_ref())
    .fetch_one(&mut *conn)
    .await?;
    if left > 0 {
        return Ok(false);
    }
    query(AssertSqlSafe(format!(
        "UPDATE {ledger} SET status = 'applied', finished_at = $2,
             duration_ms = (extract(epoch FROM $2 - started_at) * 1000)::bigint,
             rows_affected = rows_affected + $3, batches = batches + $4, host = $5,
             app_version = $6, notes = COALESCE($7, notes), applied_by = current_user
         WHERE id = $1 AND status = 'running'"
    )))
    .bind(a.id.as_ref())
    .bind(a.finished_at)
    .bind(rows)
    .bind(batches)
    .bind(&a.host)
    .bind(&a.app_version)
    .bind(a.notes_text())
    .execute(&mut *conn)
    .await?;
    query(AssertSqlSafe(format!(
        "DELETE FROM {ranges} WHERE migration_id = $1"
    )))
    .bind(a.id.as_ref())
    .execute(conn)
    .await?;
    Ok(true)
}

/// Keys that split the keys of the scope after `after` into about `pieces` ranges of
/// similar size, in key order. An integer key is split evenly between its smallest and
/// largest key; any other key at the quantiles of a sample (`TABLESAMPLE SYSTEM`, or every
/// key of a small table). Fewer keys (none) when the table holds too few.
pub(crate) async fn split(
    conn: &mut PgConnection,
    shape: &KeyShape,
    after: Option<&Key>,
    pieces: usize,
) -> Result<Vec<Key>, sqlx::Error> {
    if pieces < 2 {
        return Ok(Vec::new());
    }
    let bind_after =
        |mut q: sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>| {
            for value in after.map(Key::values).unwrap_or_default() {
                q = bind_key_value(q, value);
            }
            q
        };
    let (range, _) = shape.range(after.is_some(), false, 1, None);
    let table = quote_ident(&shape.table);
    if shape.is_single_integer() {
        let column = quote_ident(&shape.parts[0].name);
        let sql = format!(
            "SELECT (SELECT CAST({column} AS bigint) FROM {table} WHERE {range} ORDER BY {column} LIMIT 1),
                    (SELECT CAST({column} AS bigint) FROM {table} WHERE {range} ORDER BY {column} DESC LIMIT 1)"
        );
        let row = bind_after(query(AssertSqlSafe(sql)))
            .fetch_one(&mut *conn)
            .await?;
        let (Some(low), Some(high)) = (
            row.try_get::<Option<i64>, _>(0)?,
            row.try_get::<Option<i64>, _>(1)?,
        ) else {
            return Ok(Vec::new());
        };
        let span = i128::from(high) - i128::from(low);
        let mut points: Vec<i64> = (1..pieces)
            .filter_map(|i| i64::try_from(i128::from(low) + span * i as i128 / pieces as i128).ok())
            .filter(|p| *p >= low && *p < high)
            .collect();
        points.dedup();
        return Ok(points
            .into_iter()
            .map(|p| Key(vec![KeyValue::Integer(p)]))
            .collect());
    }
    // How many rows the table holds, from its size now rather than its statistics, which
    // may be missing or stale (a table filled since its last ANALYZE): its pages times the
    // rows a page holds by the statistics, or, without them, the most a page can hold. So a
    // table of millions of rows is never taken for a small one and read whole.
    let (pages, density): (f64, Option<f64>) = query_as(
        "SELECT pg_relation_size(c.oid)::float8 / current_setting('block_size')::float8,
                CASE WHEN c.relpages > 0 AND c.reltuples > 0
                     THEN c.reltuples::float8 / c.relpages END
         FROM pg_class c WHERE c.oid = to_regclass($1)",
    )
    .bind(&table)
    .fetch_optional(&mut *conn)
    .await?
    .unwrap_or((0.0, None));
    let estimate = pages * density.unwrap_or(MAX_ROWS_PER_PAGE);
    // About 200 sampled keys a range: quantiles within a few percent. Whatever the
    // estimate, at most `cap` keys are read: a sample that reaches it is taken again, four
    // times sparser (a cut-short sample would hold only the table's first pages).
    let wanted = (pieces * 200) as f64;
    let cap = (wanted * 20.0) as i64;
    let mut percent = if estimate > wanted * 20.0 {
        Some((100.0 * wanted * 4.0 / estimate).clamp(0.0001, 100.0))
    } else {
        None
    };
    let rows = loop {
        let sample = percent.map_or_else(String::new, |p| format!(" TABLESAMPLE SYSTEM ({p})"));
        let sql = format!(
            "SELECT {} FROM (SELECT {} FROM {table}{sample} WHERE {range} LIMIT {}) AS sample \
             ORDER BY {}",
            shape.key_select_list(),
            shape.order_by(false),
            cap + 1,
            shape.order_by_in(false, Some("sample"))
        );
        let rows = bind_after(query(AssertSqlSafe(sql)))
            .fetch_all(&mut *conn)
            .await?;
        if (rows.len() as i64) <= cap {
            break rows;
        }
        percent = Some(percent.map_or(100.0 * wanted * 4.0 / rows.len() as f64, |p| p / 4.0));
    };
    let mut keys = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut values = Vec::with_capacity(shape.parts.len());
        for (i, part) in shape.parts.iter().enumerate() {
            values.push(match part.kind {
                KeyKind::Integer => KeyValue::Integer(row.try_get(i)?),
                _ => KeyValue::Text(row.try_get(i)?),
            });
        }
        keys.push(Key(values));
    }
    let mut points: Vec<Key> = Vec::with_capacity(pieces);
    if keys.len() < pieces {
        return Ok(points);
    }
    for i in 1..pieces {
        let key = &keys[keys.len() * i / pieces];
        if points.last() != Some(key) {
            points.push(key.clone());
        }
    }
    // The last key sampled would leave the last range empty when the sample is the table.
    if points.last() == keys.last() {
        points.pop();
    }
    Ok(points)
}
