//! MySQL's side of several workers on one batched migration: the ranges table
//! (`<ledger>_ranges`, InnoDB), claims (a `GET_LOCK` per range on the worker's own
//! session, or a lease in the range's row where `GET_LOCK` does not serialise, each range
//! row taken with `FOR UPDATE SKIP LOCKED`), each batch's hold on its range, and the commit
//! of the last range, which applies the migration.
//!
//! A range claimed by a session has its token set and no expiry: it is held while its
//! `GET_LOCK` is (the server frees it when the session ends, so a worker killed at any
//! instant gives its range back at once). A leased range has an expiry, renewed by every
//! batch.

use std::time::Duration;

use sqlx::mysql::MySqlConnection;
use sqlx::{AssertSqlSafe, MySql, Row};

use super::ledger::{TABLE_OPTIONS, table_exists};
use super::sql::{bind_keyed, keyed, query, query_as, query_scalar};
use super::walk::{read_key, select_list};
use crate::backend::steps::{ConnectionSteps, RangeSteps};
use crate::error::Error;
use crate::key::{Key, KeyShape, KeyValue};
use crate::ledger::{Attempt, Claim, LedgerConfig, RangeMark, RangeStep, WorkRange};
use crate::sql::quote_ident;

/// The `GET_LOCK` name of a range, as SQL over the ledger's database (`$1`, `NULL` for
/// the connection's), the ledger table (`$2`), the migration (`$3`) and the range's number
/// (`$4`): names are server-wide and at most 64 characters, so they are hashed:
/// `datamig:r:` and 40 hex digits.
const RANGE_LOCK: &str = "CONCAT('datamig:r:', LEFT(SHA2(CONCAT(coalesce($1, DATABASE()), '.', \
                          $2, ':', $3, ':', $4), 256), 40))";

impl RangeSteps for MySql {
    const WORKERS: bool = true;

    async fn ensure_ranges(conn: &mut MySqlConnection, config: &LedgerConfig) -> Result<(), Error> {
        self::ensure(conn, config).await
    }

    async fn read_ranges(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
        id: Option<&str>,
    ) -> Result<Vec<WorkRange>, sqlx::Error> {
        self::read(conn, config, id).await
    }

    async fn range_marks(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
        id: &str,
    ) -> Result<Vec<RangeMark>, sqlx::Error> {
        if !table_exists(
            &mut *conn,
            config.schema_name(),
            &config.ranges_table_name(),
        )
        .await?
        {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT range_no, batches, updated_at FROM {}
             WHERE migration_id = $1 AND NOT done ORDER BY range_no",
            config.ranges_ident()
        );
        query_as(AssertSqlSafe(sql)).bind(id).fetch_all(conn).await
    }

    async fn replace_ranges(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
        id: &str,
        bounds: &[(Option<String>, Option<String>)],
    ) -> Result<(), Error> {
        Ok(self::replace(conn, config, id, bounds).await?)
    }

    async fn claim_range(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
        id: &str,
        claim: &Claim,
    ) -> Result<Option<i32>, Error> {
        Ok(self::claim(conn, config, id, claim).await?)
    }

    async fn release_range(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
        id: &str,
        number: i32,
        claim: &Claim,
    ) -> Result<(), Error> {
        Ok(self::release(conn, config, id, number, claim).await?)
    }

    async fn hold_range(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
        id: &str,
        number: i32,
        token: &str,
    ) -> Result<Option<(Option<String>, Option<String>, i64)>, sqlx::Error> {
        self::hold(conn, config, id, number, token).await
    }

    async fn advance_range(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
        id: &str,
        number: i32,
        claim: &Claim,
        step: &RangeStep,
    ) -> Result<(), sqlx::Error> {
        self::advance(conn, config, id, number, claim, step).await
    }

    async fn finish_ranges(
        conn: &mut MySqlConnection,
        config: &LedgerConfig,
        attempt: &Attempt,
    ) -> Result<bool, sqlx::Error> {
        self::finish(conn, config, attempt).await
    }

    async fn split_keys(
        conn: &mut MySqlConnection,
        shape: &KeyShape,
        after: Option<&Key>,
        pieces: usize,
    ) -> Result<Vec<Key>, Error> {
        Ok(self::split(conn, shape, after, pieces).await?)
    }
}

/// Creates the ranges table where it is missing (DDL, which MySQL commits implicitly:
/// outside any transaction; the runner holds the runner lock). A user without `CREATE`
/// gets an error naming what to do.
async fn ensure(conn: &mut MySqlConnection, config: &LedgerConfig) -> Result<(), Error> {
    if table_exists(
        &mut *conn,
        config.schema_name(),
        &config.ranges_table_name(),
    )
    .await?
    {
        return Ok(());
    }
    let ranges = config.ranges_ident();
    // DATETIME(6), in UTC as the ledger's. `expires_at` is a lease's end; NULL with a
    // token: the range is held by its worker's session (`GET_LOCK`).
    let ddl = format!(
        "CREATE TABLE IF NOT EXISTS {ranges} (
            migration_id  varchar(255) NOT NULL,
            range_no      int NOT NULL,
            lower_key     text,
            upper_key     text,
            checkpoint    text,
            done          boolean NOT NULL DEFAULT false,
            batches       bigint NOT NULL DEFAULT 0,
            keys_done     bigint NOT NULL DEFAULT 0,
            rows_affected bigint NOT NULL DEFAULT 0,
            token         varchar(64),
            worker        varchar(300),
            claimed_at    datetime(6),
            expires_at    datetime(6),
            updated_at    datetime(6),
            PRIMARY KEY (migration_id, range_no)
        ) {TABLE_OPTIONS}"
    );
    if let Err(err) = query(AssertSqlSafe(ddl)).execute(&mut *conn).await {
        // 1142 ER_TABLEACCESS_DENIED_ERROR, 1044 ER_DBACCESS_DENIED_ERROR.
        if matches!(super::server::error_number(&err), Some(1142 | 1044)) {
            let ranges = super::sql::render(&ranges);
            return Err(Error::Config(format!(
                "the table {ranges}, where several workers record their ranges of keys, does \
                 not exist, and this user may not create it ({}): run the migration once with \
                 workers as a user with CREATE on the ledger's database, or with one worker; \
                 then this user needs SELECT, INSERT, UPDATE, DELETE on {ranges}",
                crate::error::describe_sqlx(&err)
            )));
        }
        return Err(err.into());
    }
    Ok(())
}

/// A range's row as [`read`] selects it.
type RangeRow = (
    String,
    i32,
    Option<String>,
    Option<String>,
    Option<String>,
    bool,
    i64,
    i64,
    i64,
    Option<String>,
    Option<chrono::DateTime<chrono::Utc>>,
    Option<chrono::DateTime<chrono::Utc>>,
    bool,
);

/// The ranges of one migration, or of all, by migration and number; empty when the table
/// does not exist. A range is held while its session's `GET_LOCK` is (`IS_USED_LOCK`), or
/// its lease has not expired.
async fn read(
    conn: &mut MySqlConnection,
    config: &LedgerConfig,
    id: Option<&str>,
) -> Result<Vec<WorkRange>, sqlx::Error> {
    if !table_exists(
        &mut *conn,
        config.schema_name(),
        &config.ranges_table_name(),
    )
    .await?
    {
        return Ok(Vec::new());
    }
    let lock = RANGE_LOCK
        .replace("$3", "migration_id")
        .replace("$4", "range_no");
    let sql = format!(
        "SELECT migration_id, range_no, lower_key, upper_key, checkpoint, done, batches,
                keys_done, rows_affected, worker, claimed_at, updated_at,
                token IS NOT NULL AND CASE WHEN expires_at IS NULL
                                           THEN IS_USED_LOCK({lock}) IS NOT NULL
                                           ELSE expires_at > NOW(6) END
         FROM {} WHERE migration_id = coalesce($3, migration_id)
         ORDER BY migration_id, range_no",
        config.ranges_ident()
    );
    let rows: Vec<RangeRow> = query_as(AssertSqlSafe(sql))
        .bind(config.schema_name())
        .bind(config.ledger_table_name())
        .bind(id)
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(
                migration_id,
                number,
                lower,
                upper,
                checkpoint,
                done,
                batches,
                keys_done,
                rows_affected,
                worker,
                claimed_at,
                updated_at,
                held,
            )| WorkRange {
                migration_id,
                number,
                lower,
                upper,
                checkpoint,
                done,
                batches,
                keys_done,
                rows_affected,
                worker,
                held,
                claimed_at,
                updated_at,
            },
        )
        .collect())
}

/// Replaces the ranges of migration `id` by `bounds` (each `(lower, upper]`, encoded as
/// checkpoints), inside the transaction that records the migration as running.
async fn replace(
    conn: &mut MySqlConnection,
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
    // A few dozen ranges (four a worker): a statement of as many rows.
    let mut sql =
        format!("INSERT INTO {ranges} (migration_id, range_no, lower_key, upper_key) VALUES ");
    let mut n = 0;
    for i in 0..bounds.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("(${}, ${}, ${}, ${})", n + 1, n + 2, n + 3, n + 4));
        n += 4;
    }
    let mut q = query(AssertSqlSafe(sql));
    for (number, (lower, upper)) in bounds.iter().enumerate() {
        q = q
            .bind(id)
            .bind(i32::try_from(number).unwrap_or(i32::MAX))
            .bind(lower.clone())
            .bind(upper.clone());
    }
    q.execute(conn).await?;
    Ok(())
}

/// Whether migration `id`'s ledger row records the claimer's code: the ranges belong to
/// the run the ledger row records, and only a worker of that run's code takes one (see
/// `Claim::code`).
async fn same_run(
    conn: &mut MySqlConnection,
    config: &LedgerConfig,
    id: &str,
    claim: &Claim,
) -> Result<bool, sqlx::Error> {
    query_scalar(AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM {} WHERE id = $1 AND checksum = $2 AND revision = $3)",
        config.ledger_ident()
    )))
    .bind(id)
    .bind(&claim.code.0)
    .bind(i32::try_from(claim.code.1).unwrap_or(i32::MAX))
    .fetch_one(conn)
    .await
}

/// A duration in whole microseconds, for `INTERVAL $n MICROSECOND`.
fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Claims a range of migration `id` that no live worker holds and that has keys left;
/// `None` when there is none.
///
/// Each claim is one short transaction: the range's row is locked `FOR UPDATE SKIP
/// LOCKED` (a row a batch or another claim holds now is passed over, never waited for),
/// the ledger row is read to hold the claimer's checksum and revision (a run of other code
/// that replaced the ranges committed its ledger row with them, so the claimer sees both
/// or neither), and the row takes the claimer's token. A lease claims a range that is
/// unclaimed or whose lease expired; a session claims one whose `GET_LOCK` it takes (free
/// when no live session holds the range).
async fn claim(
    conn: &mut MySqlConnection,
    config: &LedgerConfig,
    id: &str,
    claim: &Claim,
) -> Result<Option<i32>, sqlx::Error> {
    let ranges = config.ranges_ident();
    if let Some(ttl) = claim.lease {
        let mut tx = MySql::begin(conn, None).await?;
        let sql = format!(
            "SELECT range_no FROM {ranges}
             WHERE migration_id = $1 AND NOT done
               AND (token IS NULL OR expires_at <= NOW(6))
             ORDER BY range_no LIMIT 1 FOR UPDATE SKIP LOCKED"
        );
        let Some(number) = query_scalar::<i32>(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            tx.commit().await?;
            return Ok(None);
        };
        if !same_run(&mut tx, config, id, claim).await? {
            tx.commit().await?;
            return Ok(None);
        }
        let sql = format!(
            "UPDATE {ranges} SET token = $1, worker = $2, claimed_at = NOW(6),
                 expires_at = NOW(6) + INTERVAL $3 MICROSECOND
             WHERE migration_id = $4 AND range_no = $5"
        );
        query(AssertSqlSafe(sql))
            .bind(&claim.token)
            .bind(&claim.worker)
            .bind(micros(ttl))
            .bind(id)
            .bind(number)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        return Ok(Some(number));
    }
    let sql = format!(
        "SELECT range_no FROM {ranges}
         WHERE migration_id = $1 AND NOT done AND (expires_at IS NULL OR expires_at <= NOW(6))
         ORDER BY range_no"
    );
    let candidates: Vec<i32> = query_scalar(AssertSqlSafe(sql))
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
    for number in candidates {
        // Timeout 0: one try, never a wait for a live worker's range.
        let locked: Option<i64> =
            query_scalar(AssertSqlSafe(format!("SELECT GET_LOCK({RANGE_LOCK}, 0)")))
                .bind(config.schema_name())
                .bind(config.ledger_table_name())
                .bind(id)
                .bind(number)
                .fetch_one(&mut *conn)
                .await?;
        if locked != Some(1) {
            continue;
        }
        let mut tx = MySql::begin(conn, None).await?;
        let sql = format!(
            "SELECT range_no FROM {ranges}
             WHERE migration_id = $1 AND range_no = $2 AND NOT done
               AND (expires_at IS NULL OR expires_at <= NOW(6))
             FOR UPDATE SKIP LOCKED"
        );
        let row: Option<i32> = query_scalar(AssertSqlSafe(sql))
            .bind(id)
            .bind(number)
            .fetch_optional(&mut *tx)
            .await?;
        let taken = row.is_some() && same_run(&mut tx, config, id, claim).await?;
        if taken {
            let sql = format!(
                "UPDATE {ranges} SET token = $1, worker = $2, claimed_at = NOW(6),
                     expires_at = NULL
                 WHERE migration_id = $3 AND range_no = $4"
            );
            query(AssertSqlSafe(sql))
                .bind(&claim.token)
                .bind(&claim.worker)
                .bind(id)
                .bind(number)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        if taken {
            return Ok(Some(number));
        }
        // Finished, leased, replaced by a run of other code, or locked by a batch of a
        // worker whose session is ending, since the list was read.
        unlock(conn, config, id, number).await?;
    }
    Ok(None)
}

/// Releases range `number`'s `GET_LOCK`.
async fn unlock(
    conn: &mut MySqlConnection,
    config: &LedgerConfig,
    id: &str,
    number: i32,
) -> Result<(), sqlx::Error> {
    query(AssertSqlSafe(format!("SELECT RELEASE_LOCK({RANGE_LOCK})")))
        .bind(config.schema_name())
        .bind(config.ledger_table_name())
        .bind(id)
        .bind(number)
        .execute(conn)
        .await?;
    Ok(())
}

/// Gives range `number` back: its token cleared (it stays named after its last worker),
/// its `GET_LOCK` released.
async fn release(
    conn: &mut MySqlConnection,
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
    query(AssertSqlSafe(sql))
        .bind(id)
        .bind(number)
        .bind(&claim.token)
        .execute(&mut *conn)
        .await?;
    if claim.lease.is_none() {
        unlock(conn, config, id, number).await?;
    }
    Ok(())
}

/// Inside a batch's transaction: locks range `number`'s row and returns where its next
/// batch starts after (its checkpoint, or its lower bound before its first batch), its
/// upper bound and its batches so far, if `token` still holds it (a lease: unexpired)
/// and it has keys left; `None` otherwise (the batch must not run).
async fn hold(
    conn: &mut MySqlConnection,
    config: &LedgerConfig,
    id: &str,
    number: i32,
    token: &str,
) -> Result<Option<(Option<String>, Option<String>, i64)>, sqlx::Error> {
    let sql = format!(
        "SELECT COALESCE(checkpoint, lower_key), upper_key, batches FROM {}
         WHERE migration_id = $1 AND range_no = $2 AND token = $3 AND NOT done
           AND (expires_at IS NULL OR expires_at > NOW(6))
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
async fn advance(
    conn: &mut MySqlConnection,
    config: &LedgerConfig,
    id: &str,
    number: i32,
    claim: &Claim,
    step: &RangeStep,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "UPDATE {} SET checkpoint = COALESCE($1, checkpoint), batches = batches + $2,
             keys_done = keys_done + $3, rows_affected = rows_affected + $4, done = $5,
             updated_at = NOW(6),
             expires_at = CASE WHEN expires_at IS NULL THEN NULL
                               ELSE NOW(6) + INTERVAL $6 MICROSECOND END
         WHERE migration_id = $7 AND range_no = $8 AND token = $9",
        config.ranges_ident()
    );
    query(AssertSqlSafe(sql))
        .bind(&step.checkpoint)
        .bind(i64::from(step.checkpoint.is_some()))
        .bind(i64::try_from(step.keys).unwrap_or(i64::MAX))
        .bind(i64::try_from(step.rows).unwrap_or(i64::MAX))
        .bind(step.done)
        .bind(claim.lease.map_or(0, micros))
        .bind(id)
        .bind(number)
        .bind(&claim.token)
        .execute(conn)
        .await?;
    Ok(())
}

/// Inside the transaction of a batch that finished its range: when no range of the
/// migration has keys left, records it applied (its ledger row takes the ranges' batches
/// and rows) and removes its ranges; `true` then. The ledger row is locked first, so of
/// two workers finishing the last two ranges at once, the second waits for the first's
/// commit, then (READ COMMITTED: each statement reads what committed before it) sees it,
/// and exactly one applies the migration.
async fn finish(
    conn: &mut MySqlConnection,
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
        "SELECT CAST(COALESCE(SUM(NOT done), 0) AS signed),
                CAST(COALESCE(SUM(batches), 0) AS signed),
                CAST(COALESCE(SUM(rows_affected), 0) AS signed)
         FROM {ranges} WHERE migration_id = $1"
    )))
    .bind(a.id.as_ref())
    .fetch_one(&mut *conn)
    .await?;
    if left > 0 {
        return Ok(false);
    }
    query(AssertSqlSafe(format!(
        "UPDATE {ledger} SET status = 'applied', finished_at = $1,
             duration_ms = TIMESTAMPDIFF(MICROSECOND, started_at, $2) DIV 1000,
             rows_affected = rows_affected + $3, batches = batches + $4, host = $5,
             app_version = $6, notes = COALESCE($7, notes), applied_by = CURRENT_USER()
         WHERE id = $8 AND status = 'running'"
    )))
    .bind(a.finished_at)
    .bind(a.finished_at)
    .bind(rows)
    .bind(batches)
    .bind(&a.host)
    .bind(&a.app_version)
    .bind(a.notes_text())
    .bind(a.id.as_ref())
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
/// largest key (two index lookups); any other key at the quantiles of a sample of its
/// keys. Fewer keys (none) when the table holds too few.
///
/// MySQL has no `TABLESAMPLE`: the sample is the keys of the index read in order where
/// `RAND()` passes at a rate set from the table's estimated rows (`information_schema`,
/// InnoDB's statistics, which may be stale), and every read stops at a bounded number of
/// keys: a sample that reaches the bound (its rate too high for the table) is taken again
/// four times sparser, one that comes out too thin for the ranges four times denser.
async fn split(
    conn: &mut MySqlConnection,
    shape: &KeyShape,
    after: Option<&Key>,
    pieces: usize,
) -> Result<Vec<Key>, sqlx::Error> {
    if pieces < 2 {
        return Ok(Vec::new());
    }
    let values: Vec<&KeyValue> = after.map(Key::values).unwrap_or_default().iter().collect();
    let (range, _) = shape.range(after.is_some(), false, 1, None);
    let table = quote_ident(&shape.table);
    if shape.is_single_integer() {
        let column = quote_ident(&shape.parts[0].name);
        let sql = format!(
            "SELECT (SELECT CAST({column} AS signed) FROM {table} WHERE {range} ORDER BY {column} LIMIT 1),
                    (SELECT CAST({column} AS signed) FROM {table} WHERE {range} ORDER BY {column} DESC LIMIT 1)"
        );
        let (text, numbers) = keyed(&sql);
        let row = bind_keyed(sqlx::query(AssertSqlSafe(text)), &numbers, &values)
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
    let estimate: Option<i64> = query_scalar(
        "SELECT CAST(TABLE_ROWS AS signed) FROM information_schema.TABLES
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = $1",
    )
    .bind(&shape.table)
    .fetch_optional(&mut *conn)
    .await?
    .flatten();
    let estimate = estimate.unwrap_or(0).max(0) as f64;
    // About 200 sampled keys a range: quantiles within a few percent. Whatever the
    // estimate, at most `cap` keys are read.
    let wanted = (pieces * 200) as f64;
    let cap = (wanted * 20.0) as usize;
    let mut rate = (estimate > wanted * 20.0).then(|| (wanted * 4.0 / estimate).clamp(1e-6, 1.0));
    let mut keys = Vec::new();
    for _ in 0..8 {
        let sample = rate.map_or_else(String::new, |r| format!(" AND RAND() < {r}"));
        let sql = format!(
            "SELECT {} FROM (SELECT {} FROM {table} WHERE {range}{sample} ORDER BY {} LIMIT {})
                 AS sample
             ORDER BY {}",
            select_list(shape, "sample"),
            shape.columns(None),
            shape.order_by(false),
            cap + 1,
            shape.order_by_in(false, Some("sample"))
        );
        let (text, numbers) = keyed(&sql);
        let rows = bind_keyed(sqlx::query(AssertSqlSafe(text)), &numbers, &values)
            .fetch_all(&mut *conn)
            .await?;
        if rows.len() > cap {
            // The rate is too high for the table: a cut-short sample would hold only the
            // first keys.
            rate = Some(rate.map_or(wanted * 4.0 / rows.len() as f64, |r| r / 4.0));
            continue;
        }
        keys = rows
            .iter()
            .map(|row| read_key(row, shape))
            .collect::<Result<Vec<_>, _>>()?;
        match rate {
            // Too thin for the ranges (the statistics said more rows than there are).
            Some(r) if (keys.len() as f64) < wanted / 4.0 && r < 1.0 => {
                rate = Some((r * 4.0).min(1.0));
            }
            _ => break,
        }
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
