//! The target's `datamig_copy_follow` table, beside the progress table: one row per
//! followed copy, holding the source's replication slot and publication, the copy's
//! snapshot (which source transactions the copied rows hold), the last source commit
//! applied (written in the transaction that applies it), the lag, and a cut-over's request
//! and outcome.

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Row};

use crate::backend::postgres::query;
use crate::copy::context::During;
use crate::error::Error;
use crate::sql::quote_ident;

const FOLLOW_TABLE: &str = "datamig_copy_follow";

/// The follow table, in `schema` or else unqualified.
pub(in crate::copy) fn table(schema: Option<&str>) -> String {
    match schema {
        Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(FOLLOW_TABLE)),
        None => quote_ident(FOLLOW_TABLE),
    }
}

/// A followed copy's row.
#[derive(Clone, Debug, Default)]
pub(in crate::copy) struct Follow {
    pub(in crate::copy) slot: String,
    pub(in crate::copy) publication: String,
    /// The copy's snapshot (`xmin:xmax:xip,..`), once taken.
    pub(in crate::copy) snapshot: Option<String>,
    /// The commit LSN of the last source transaction applied.
    pub(in crate::copy) applied_lsn: u64,
    /// Where a cut-over asked the follow to stop: every commit before it applied.
    pub(in crate::copy) cutover_lsn: Option<u64>,
    /// `copying`, `following`, `cut over`, `abandoned`, `stopped`.
    pub(in crate::copy) status: String,
    /// What the status says more (the reason the follow stopped; the cut-over's outcome).
    pub(in crate::copy) message: Option<String>,
    pub(in crate::copy) lag_bytes: Option<i64>,
    pub(in crate::copy) lag_seconds: Option<f64>,
    pub(in crate::copy) rows_per_second: Option<f64>,
    pub(in crate::copy) rows: i64,
    pub(in crate::copy) transactions: i64,
    /// Seconds since the follower last wrote its row.
    pub(in crate::copy) age_seconds: f64,
}

/// Creates the follow table where missing.
pub(in crate::copy) async fn create(conn: &mut PgConnection, follow: &str) -> Result<(), Error> {
    let ddl = format!(
        "CREATE TABLE IF NOT EXISTS {follow} (
             copy_name      text PRIMARY KEY,
             slot           text NOT NULL,
             publication    text NOT NULL,
             snapshot       text,
             applied_lsn    pg_lsn NOT NULL DEFAULT '0/0',
             applied_at     timestamptz,
             cutover_lsn    pg_lsn,
             status         text NOT NULL,
             message        text,
             lag_bytes      bigint,
             lag_seconds    double precision,
             rows_per_second double precision,
             rows           bigint NOT NULL DEFAULT 0,
             transactions   bigint NOT NULL DEFAULT 0,
             updated_at     timestamptz NOT NULL DEFAULT clock_timestamp()
         )"
    );
    sqlx::raw_sql(AssertSqlSafe(ddl)).execute(conn).await.map_err(|err| {
        Error::CopyRefused(format!(
            "a followed copy keeps its position in table {FOLLOW_TABLE} on the target, and the target role may not create it ({}): GRANT CREATE ON SCHEMA to the role, or choose a schema it may create in with --progress-schema",
            crate::error::describe_sqlx(&err)
        ))
    })?;
    Ok(())
}

/// The row of `copy_id`, if there is one (none when the table does not exist).
pub(in crate::copy) async fn read(
    conn: &mut PgConnection,
    follow: &str,
    copy_id: &str,
) -> Result<Option<Follow>, Error> {
    let during = || format!("reading copy {copy_id}'s follow state from {follow}");
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(follow)
        .fetch_one(&mut *conn)
        .await
        .during(during)?;
    if !exists {
        return Ok(None);
    }
    let row = query(AssertSqlSafe(format!(
        "SELECT slot, publication, snapshot, (applied_lsn - '0/0')::text AS applied,
                (cutover_lsn - '0/0')::text AS cutover, status, message, lag_bytes, lag_seconds,
                rows_per_second, rows, transactions,
                extract(epoch FROM clock_timestamp() - updated_at)::float8 AS age
         FROM {follow} WHERE copy_name = $1"
    )))
    .bind(copy_id)
    .fetch_optional(&mut *conn)
    .await
    .during(during)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let read = || -> Result<Follow, sqlx::Error> {
        let lsn = |s: Option<String>| s.and_then(|s| s.parse::<u64>().ok());
        Ok(Follow {
            slot: row.try_get("slot")?,
            publication: row.try_get("publication")?,
            snapshot: row.try_get("snapshot")?,
            applied_lsn: lsn(row.try_get("applied")?).unwrap_or(0),
            cutover_lsn: lsn(row.try_get("cutover")?),
            status: row.try_get("status")?,
            message: row.try_get("message")?,
            lag_bytes: row.try_get("lag_bytes")?,
            lag_seconds: row.try_get("lag_seconds")?,
            rows_per_second: row.try_get("rows_per_second")?,
            rows: row.try_get("rows")?,
            transactions: row.try_get("transactions")?,
            age_seconds: row.try_get("age")?,
        })
    };
    Ok(Some(read().during(during)?))
}

/// Records a new follow of `copy_id` (its slot and publication just created), replacing
/// a row left by a follow that was cut over or abandoned, or whose initial copy starts
/// over. A cut-over already asked for is kept: the new copy's snapshot comes after its
/// position, so the follow then has nothing to apply before it.
pub(in crate::copy) async fn insert(
    conn: &mut PgConnection,
    follow: &str,
    copy_id: &str,
    slot: &str,
    publication: &str,
) -> Result<(), Error> {
    query(AssertSqlSafe(format!(
        "INSERT INTO {follow} (copy_name, slot, publication, status) VALUES ($1, $2, $3, 'copying')
         ON CONFLICT (copy_name) DO UPDATE SET slot = EXCLUDED.slot, publication = EXCLUDED.publication,
             snapshot = NULL, applied_lsn = '0/0', applied_at = NULL, status = 'copying',
             message = NULL, lag_bytes = NULL, lag_seconds = NULL, rows_per_second = NULL, rows = 0,
             transactions = 0, updated_at = clock_timestamp()"
    )))
    .bind(copy_id)
    .bind(slot)
    .bind(publication)
    .execute(conn)
    .await
    .during(|| format!("recording copy {copy_id}'s replication slot {slot} in {follow}"))?;
    Ok(())
}

/// Records the copy's snapshot, unless one is recorded: the first snapshot is the one the
/// change stream is filtered by (a resumed copy's later snapshot shows more, and the
/// changes it holds already are applied again, converging on the same rows).
pub(in crate::copy) async fn record_snapshot(
    conn: &mut PgConnection,
    follow: &str,
    copy_id: &str,
    snapshot: &str,
) -> Result<(), Error> {
    query(AssertSqlSafe(format!(
        "UPDATE {follow} SET snapshot = $2, updated_at = clock_timestamp()
         WHERE copy_name = $1 AND snapshot IS NULL"
    )))
    .bind(copy_id)
    .bind(snapshot)
    .execute(conn)
    .await
    .during(|| format!("recording copy {copy_id}'s snapshot {snapshot} in {follow}"))?;
    Ok(())
}

/// Sets the status (and its message).
pub(in crate::copy) async fn set_status(
    conn: &mut PgConnection,
    follow: &str,
    copy_id: &str,
    status: &str,
    message: Option<&str>,
) -> Result<(), Error> {
    query(AssertSqlSafe(format!(
        "UPDATE {follow} SET status = $2, message = $3, updated_at = clock_timestamp() WHERE copy_name = $1"
    )))
    .bind(copy_id)
    .bind(status)
    .bind(message)
    .execute(conn)
    .await
    .during(|| format!("setting copy {copy_id}'s follow status to {status} in {follow}"))?;
    Ok(())
}

/// Records the source transactions applied, in the target transaction that applied them:
/// the last one's commit LSN, and the counts.
pub(in crate::copy) async fn applied(
    conn: &mut PgConnection,
    follow: &str,
    copy_id: &str,
    lsn: u64,
    rows: u64,
    transactions: u64,
) -> Result<(), sqlx::Error> {
    query(AssertSqlSafe(format!(
        "UPDATE {follow} SET applied_lsn = '0/0'::pg_lsn + $2::numeric, applied_at = clock_timestamp(),
             rows = rows + $3, transactions = transactions + $4, updated_at = clock_timestamp()
         WHERE copy_name = $1"
    )))
    .bind(copy_id)
    .bind(lsn.to_string())
    .bind(i64::try_from(rows).unwrap_or(i64::MAX))
    .bind(i64::try_from(transactions).unwrap_or(i64::MAX))
    .execute(conn)
    .await?;
    Ok(())
}

/// Records the lag the follower measured.
pub(in crate::copy) async fn lag(
    conn: &mut PgConnection,
    follow: &str,
    copy_id: &str,
    (bytes, seconds, rate): (u64, f64, f64),
) -> Result<(), Error> {
    query(AssertSqlSafe(format!(
        "UPDATE {follow} SET lag_bytes = $2, lag_seconds = $3, rows_per_second = $4,
             status = CASE WHEN status = 'copying' THEN 'following' ELSE status END,
             updated_at = clock_timestamp()
         WHERE copy_name = $1"
    )))
    .bind(copy_id)
    .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
    .bind(seconds)
    .bind(rate)
    .execute(conn)
    .await
    .during(|| format!("recording copy {copy_id}'s lag in {follow}"))?;
    Ok(())
}

/// Forgets a cut-over asked of an earlier follow.
pub(in crate::copy) async fn clear_cutover(
    conn: &mut PgConnection,
    follow: &str,
    copy_id: &str,
) -> Result<(), Error> {
    query(AssertSqlSafe(format!(
        "UPDATE {follow} SET cutover_lsn = NULL WHERE copy_name = $1"
    )))
    .bind(copy_id)
    .execute(conn)
    .await
    .during(|| format!("resetting copy {copy_id}'s follow in {follow}"))?;
    Ok(())
}

/// Asks the follower to cut over once it applied every commit before `lsn`.
pub(in crate::copy) async fn request_cutover(
    conn: &mut PgConnection,
    follow: &str,
    copy_id: &str,
    lsn: u64,
) -> Result<(), Error> {
    query(AssertSqlSafe(format!(
        "UPDATE {follow} SET cutover_lsn = '0/0'::pg_lsn + $2::numeric, updated_at = clock_timestamp()
         WHERE copy_name = $1"
    )))
    .bind(copy_id)
    .bind(lsn.to_string())
    .execute(conn)
    .await
    .during(|| format!("asking copy {copy_id}'s follower to cut over in {follow}"))?;
    Ok(())
}
