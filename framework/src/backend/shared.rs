//! The statements every backend runs alike, written once over the backend: the ledger's
//! writes (the exactly-once statements) and reads, the run history, pauses, and the plain
//! statements of a migration's helpers and of the walk. Where the databases differ, the
//! difference is data ([`Dialect`](super::dialect::Dialect)), not a second copy of the
//! statement.
//!
//! Each backend's step calls the function here in one line. The functions are generic over
//! the backend with the bounds sqlx needs to run a statement and bind and read its values
//! (written once, on the `impl` block); each backend meets them with its own types.

use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use sqlx::database::HasStatementCache;
use sqlx::query::Query;
use sqlx::{
    AssertSqlSafe, ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, SqlSafeStr, SqlStr,
    Type,
};

use super::dialect::Syntax;
use super::steps::ConnectionSteps;
use super::values::bind_key_value;
use crate::key::{Key, KeyShape, KeyValue};
use crate::ledger::{Attempt, LastRun, LedgerConfig, LedgerEntry, LedgerWrite, Pause};

/// The statements both backends run alike, for backend `DB`.
pub(crate) struct Shared<DB>(PhantomData<DB>);

#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
impl<DB> Shared<DB>
where
    DB: ConnectionSteps + HasStatementCache,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    usize: ColumnIndex<DB::Row>,
    &'static str: ColumnIndex<DB::Row>,
    for<'t> i32: Encode<'t, DB> + Type<DB>,
    for<'t> Option<i32>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> f64: Encode<'t, DB> + Type<DB>,
    for<'t, 'v> &'v str: Encode<'t, DB> + Type<DB>,
    for<'t> Option<String>: Encode<'t, DB> + Type<DB>,
    for<'t, 'v> &'v [u8]: Encode<'t, DB> + Type<DB>,
    for<'t> DateTime<Utc>: Encode<'t, DB> + Type<DB>,
    for<'r> bool: Decode<'r, DB> + Type<DB>,
    for<'r> i32: Decode<'r, DB>,
    for<'r> i64: Decode<'r, DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> DateTime<Utc>: Decode<'r, DB>,
{
    /// A statement of this backend: prepared once and kept, or unnamed, as its dialect says.
    fn query<'q>(sql: impl SqlSafeStr) -> Query<'q, DB, DB::Arguments> {
        let mut sql = sql.into_sql_str();
        if DB::DIALECT.syntax != Syntax::Standard {
            sql = AssertSqlSafe(DB::DIALECT.render(sql.as_str())).into_sql_str();
        }
        sqlx::query(sql).persistent(DB::DIALECT.persistent)
    }

    /// Executes one statement; returns the rows it affected.
    pub(crate) async fn execute(
        conn: &mut DB::Connection,
        sql: SqlStr,
    ) -> Result<u64, sqlx::Error> {
        Ok(DB::rows_affected(&Self::query(sql).execute(conn).await?))
    }

    /// The first column of the first row of a query, as an integer (`None` without a row or
    /// for `NULL`).
    pub(crate) async fn fetch_i64(
        conn: &mut DB::Connection,
        sql: SqlStr,
    ) -> Result<Option<i64>, sqlx::Error> {
        match Self::query(sql).fetch_optional(conn).await? {
            Some(row) => row.try_get::<Option<i64>, _>(0),
            None => Ok(None),
        }
    }

    /// Executes one statement with `$1`, `$2`.. bound to `values`.
    pub(crate) async fn execute_keyed(
        conn: &mut DB::Connection,
        sql: SqlStr,
        values: &[KeyValue],
    ) -> Result<u64, sqlx::Error> {
        let mut query = Self::query(sql);
        for value in values {
            query = bind_key_value(query, value);
        }
        Ok(DB::rows_affected(&query.execute(conn).await?))
    }

    /// Fails with the database's own error when `scope` is not a valid condition on `table`.
    pub(crate) async fn check_scope(
        conn: &mut DB::Connection,
        table: &str,
        scope: &str,
    ) -> Result<(), sqlx::Error> {
        Self::query(AssertSqlSafe(format!(
            "SELECT 1 FROM {} WHERE ({scope}) LIMIT 0",
            crate::sql::quote_ident(table)
        )))
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Whether any key of the scope is after `after` (and at or before `upper`).
    pub(crate) async fn has_keys_after(
        conn: &mut DB::Connection,
        shape: &KeyShape,
        after: &Key,
        upper: Option<&Key>,
    ) -> Result<bool, sqlx::Error> {
        let mut query = Self::query(AssertSqlSafe(shape.has_keys_after_sql(upper.is_some())));
        for value in after
            .values()
            .iter()
            .chain(upper.map(|k| k.values()).unwrap_or_default())
        {
            query = bind_key_value(query, value);
        }
        query.fetch_one(conn).await?.try_get(0)
    }

    /// The pauses in force (of one migration, or of all).
    pub(crate) async fn pause_state(
        conn: &mut DB::Connection,
        config: &LedgerConfig,
        id: Option<&str>,
    ) -> Result<Vec<Pause>, sqlx::Error> {
        // A migration is paused when its latest pause or unpause in the run history is
        // a pause (an index scan of (migration_id, run_id) per migration).
        Self::marks_in_force(conn, config, id, ("pause", "unpause")).await
    }

    /// The cancellations in force (of one migration, or of all): a migration is
    /// cancelled when its latest cancel or restart in the run history is a cancel.
    pub(crate) async fn cancel_state(
        conn: &mut DB::Connection,
        config: &LedgerConfig,
        id: Option<&str>,
    ) -> Result<Vec<Pause>, sqlx::Error> {
        Self::marks_in_force(conn, config, id, ("cancel", "restart")).await
    }

    /// The marks an operator set (`on`) and did not lift since (`off`), in the run
    /// history: pauses, cancellations. The actions are constants of this file.
    async fn marks_in_force(
        conn: &mut DB::Connection,
        config: &LedgerConfig,
        id: Option<&str>,
        (on, off): (&'static str, &'static str),
    ) -> Result<Vec<Pause>, sqlx::Error> {
        let runs = config.runs_ident();
        let sql = format!(
            "SELECT migration_id, db_user, host, finished_at, reason FROM {runs} AS r
             WHERE action = '{on}' AND ($1 IS NULL OR migration_id = $1)
               AND run_id = (SELECT max(run_id) FROM {runs}
                             WHERE migration_id = r.migration_id
                               AND action IN ('{on}', '{off}'))
             ORDER BY migration_id"
        );
        let rows = Self::query(AssertSqlSafe(sql))
            .bind(id.map(str::to_string))
            .fetch_all(conn)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Pause {
                    migration_id: row.try_get("migration_id")?,
                    by: row.try_get("db_user")?,
                    host: row.try_get("host")?,
                    at: row.try_get("finished_at")?,
                    reason: row.try_get("reason")?,
                })
            })
            .collect()
    }

    /// Every ledger row, by id.
    pub(crate) async fn read_ledger(
        conn: &mut DB::Connection,
        config: &LedgerConfig,
    ) -> Result<Vec<LedgerEntry>, sqlx::Error> {
        let sql = format!(
            "SELECT id, checksum, revision, description, started_at, finished_at, duration_ms,
                    rows_affected, notes, applied_by, host, app_version, run_count,
                    status, checkpoint, batches
             FROM {} ORDER BY id",
            config.ledger_ident()
        );
        let rows = Self::query(AssertSqlSafe(sql)).fetch_all(conn).await?;
        rows.iter().map(Self::ledger_entry).collect()
    }

    /// A ledger row, from the columns `read_ledger` selects.
    fn ledger_entry(row: &DB::Row) -> Result<LedgerEntry, sqlx::Error> {
        let revision: i32 = row.try_get("revision")?;
        Ok(LedgerEntry {
            id: row.try_get("id")?,
            checksum: row.try_get("checksum")?,
            revision: u32::try_from(revision).unwrap_or(0),
            description: row.try_get("description")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            duration_ms: row.try_get("duration_ms")?,
            rows_affected: row.try_get("rows_affected")?,
            notes: row.try_get("notes")?,
            applied_by: row.try_get("applied_by")?,
            host: row.try_get("host")?,
            app_version: row.try_get("app_version")?,
            run_count: row.try_get("run_count")?,
            status: row.try_get("status")?,
            checkpoint: row.try_get("checkpoint")?,
            batches: row.try_get("batches")?,
        })
    }

    /// Writes the ledger row of an attempt, as its `write` says, inside the migration's (or
    /// the batch's) transaction; `false` when no row, or the row no longer as the attempt
    /// expects it, was written.
    ///
    /// Where the two backends' copies of these statements differed, and how they are one:
    ///
    /// - Who applied it: PostgreSQL set `applied_by = current_user` (on insert, the
    ///   column's default, `current_user`), SQLite bound the operating-system user as `$16`
    ///   and the run count of a re-run as `$17`. Now the run count is `$16` on both, and
    ///   who applied it is the dialect's [`Actor`](super::dialect::Actor): `current_user`,
    ///   or the bound user at `$17`.
    /// - A batch's checkpoint: `checkpoint IS NOT DISTINCT FROM $15` on PostgreSQL,
    ///   `checkpoint IS $15` on SQLite, the same null-safe comparison; SQLite (3.39 on,
    ///   the one sqlx bundles) reads the first form too, which both now run.
    /// - The revision: bound as an `integer` clamped at `i32::MAX` (PostgreSQL) or as an
    ///   `i64` (SQLite); now as the clamped integer on both, the type both columns hold and
    ///   `read_ledger` reads back.
    ///
    /// The exactly-once logic is as it was on both: an insert relies on the primary key to
    /// refuse a second application; a re-run updates the row only while it holds the
    /// checksum and run count the run planned from (`$15`, `$16`), and counts itself; a batch
    /// updates it only while it is `running` at the checkpoint the runner started from
    /// (`$15`); and the write counts only when exactly one row was written.
    pub(crate) async fn write_ledger(
        conn: &mut DB::Connection,
        config: &LedgerConfig,
        a: &Attempt,
    ) -> Result<bool, sqlx::Error> {
        let ledger = config.ledger_ident();
        let revision = i32::try_from(a.revision).unwrap_or(i32::MAX);
        if a.write == LedgerWrite::Accept {
            let sql = format!(
                "UPDATE {ledger} SET checksum = $2, revision = $3, description = $4 WHERE id = $1"
            );
            let done = Self::query(AssertSqlSafe(sql))
                .bind(a.id.as_ref())
                .bind(a.checksum.as_ref())
                .bind(revision)
                .bind(a.description.as_ref())
                .execute(conn)
                .await?;
            return Ok(DB::rows_affected(&done) == 1);
        }
        let applied_by = DB::DIALECT.actor_sql(17);
        let sql = match &a.write {
            LedgerWrite::Insert => format!(
                "INSERT INTO {ledger} (id, checksum, revision, description, started_at, finished_at,
                     duration_ms, rows_affected, notes, host, app_version, status, checkpoint, batches,
                     applied_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, {applied_by})"
            ),
            LedgerWrite::Rerun { .. } => format!(
                "UPDATE {ledger} SET checksum = $2, revision = $3, description = $4,
                     started_at = $5, finished_at = $6, duration_ms = $7, rows_affected = $8,
                     notes = $9, host = $10, app_version = $11, status = $12, checkpoint = $13,
                     batches = $14, applied_by = {applied_by}, run_count = run_count + 1
                 WHERE id = $1 AND checksum = $15 AND run_count = $16"
            ),
            LedgerWrite::Accept => unreachable!("handled above"),
            LedgerWrite::Continue { .. } => format!(
                "UPDATE {ledger} SET checksum = $2, revision = $3, description = $4,
                     started_at = $5, finished_at = $6, duration_ms = $7, rows_affected = $8,
                     notes = $9, host = $10, app_version = $11, status = $12, checkpoint = $13,
                     batches = $14, applied_by = {applied_by}
                 WHERE id = $1 AND status = 'running' AND checkpoint IS NOT DISTINCT FROM $15"
            ),
        };
        // `$15` is what the row must hold: the checkpoint of a batch, the checksum of a
        // re-run (whose run count is bound next).
        let (expected, run_count) = a.write.expected();
        let mut query = Self::query(AssertSqlSafe(sql))
            .bind(a.id.as_ref())
            .bind(a.checksum.as_ref())
            .bind(revision)
            .bind(a.description.as_ref())
            .bind(a.first_started_at)
            .bind(a.finished_at)
            .bind(a.total_duration_ms())
            .bind(a.total_rows_i64())
            .bind(a.notes_text())
            .bind(a.host.as_str())
            .bind(&a.app_version)
            .bind(a.status)
            .bind(&a.checkpoint)
            .bind(i64::try_from(a.batches).unwrap_or(i64::MAX))
            .bind(expected)
            .bind(run_count);
        if let Some(user) = DB::DIALECT.actor_value() {
            query = query.bind(user.as_str());
        }
        let done = query.execute(conn).await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    /// Appends an attempt to the run history, with its error if it failed.
    ///
    /// The backends' copies differed in who did it (PostgreSQL: the column's default,
    /// `current_user`; SQLite: the operating-system user bound as `$14`), now the dialect's
    /// [`Actor`](super::dialect::Actor), and in the revision's type (see `write_ledger`).
    pub(crate) async fn record_run(
        conn: &mut DB::Connection,
        config: &LedgerConfig,
        a: &Attempt,
        error: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO {} (migration_id, action, outcome, checksum, revision, started_at,
                 finished_at, duration_ms, rows_affected, error, host, app_version, reason, db_user)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, {})",
            config.runs_ident(),
            DB::DIALECT.actor_sql(14)
        );
        let mut query = Self::query(AssertSqlSafe(sql))
            .bind(a.id.as_ref())
            .bind(a.action.as_str())
            .bind(if a.cancelled {
                "cancelled"
            } else if error.is_some() {
                "failed"
            } else {
                "succeeded"
            })
            .bind(a.checksum.as_ref())
            .bind(i32::try_from(a.revision).unwrap_or(i32::MAX))
            .bind(a.started_at)
            .bind(a.finished_at)
            .bind(a.duration_ms())
            .bind(a.rows_i64())
            .bind(error.map(str::to_string))
            .bind(a.host.as_str())
            .bind(&a.app_version)
            .bind(&a.reason);
        if let Some(user) = DB::DIALECT.actor_value() {
            query = query.bind(user.as_str());
        }
        query.execute(conn).await?;
        Ok(())
    }

    /// The last recorded attempt of each migration (pauses and unpauses left out).
    ///
    /// PostgreSQL had its own statement (`SELECT DISTINCT ON (migration_id) .. ORDER BY
    /// migration_id, run_id DESC`), which SQLite lacks; both now run SQLite's, which picks
    /// the same rows: each migration's latest attempt by `run_id`, an index scan of
    /// (migration_id, run_id) per row, as `pause_state` does.
    pub(crate) async fn last_runs(
        conn: &mut DB::Connection,
        config: &LedgerConfig,
    ) -> Result<Vec<LastRun>, sqlx::Error> {
        let runs = config.runs_ident();
        let sql = format!(
            "SELECT migration_id, outcome, error, finished_at FROM {runs} AS r
             WHERE run_id = (SELECT max(run_id) FROM {runs} WHERE migration_id = r.migration_id
                             AND action NOT IN ('pause', 'unpause', 'cancel', 'restart'))
             ORDER BY migration_id"
        );
        let rows = Self::query(AssertSqlSafe(sql)).fetch_all(conn).await?;
        rows.iter()
            .map(|row| {
                Ok(LastRun {
                    migration_id: row.try_get("migration_id")?,
                    outcome: row.try_get("outcome")?,
                    error: row.try_get("error")?,
                    finished_at: row.try_get("finished_at")?,
                })
            })
            .collect()
    }
}
