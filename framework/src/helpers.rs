//! The SQL helpers of [`Ctx`] written once over [`Backend`]: statements counted for the
//! ledger, a batch's bounds bound, sequences reset and statistics refreshed after a load.
//! (The upsert builder has a file of its own, `upsert.rs`.)

use sqlx::SqlSafeStr;

use crate::backend::Backend;
use crate::bulk::SequenceReset;
use crate::ctx::Ctx;
use crate::error::Error;
use crate::migration::Batch;
use crate::sql::check_name;

impl<DB: Backend> Ctx<'_, DB> {
    /// The backend this run is on, `"postgres"` or `"sqlite"`: for the rare statement of a
    /// migration generic over the backend that must be written in each dialect.
    pub fn backend(&self) -> &'static str {
        DB::ID
    }

    /// Executes one statement in the migration's transaction and adds the rows it affected
    /// to the ledger's count. Returns that number of rows.
    ///
    /// The SQL must be a `&'static str` or wrapped in [`sqlx::AssertSqlSafe`]; bind values
    /// with `sqlx::query(..).bind(..)` through [`Ctx::tx`] instead of formatting them in.
    /// In a migration generic over the backend, write SQL both databases accept
    /// (`lower`, `trim`, `coalesce`, `ON CONFLICT .. DO NOTHING`, `$1` parameters).
    pub async fn execute(&mut self, sql: impl SqlSafeStr) -> Result<u64, sqlx::Error> {
        let rows = DB::execute(self.conn(), sql.into_sql_str())
            .await
            .inspect_err(|_| self.spoil_rest())?;
        self.add_rows_affected(rows);
        Ok(rows)
    }

    /// Runs a query whose first column is an integer (`SELECT count(*) ..`,
    /// `SELECT max(id) ..`) in the migration's transaction and returns its first row's
    /// value: `None` without a row or for `NULL`. For the checks of a migration generic
    /// over the backend, where `sqlx::query` would need the backend's own bounds.
    ///
    /// ```no_run
    /// # use datamig::prelude::*;
    /// # async fn body<DB: Backend>(ctx: &mut Ctx<'_, DB>) -> anyhow::Result<()> {
    /// let missing = ctx
    ///     .fetch_i64("SELECT count(*) FROM users WHERE email IS NULL")
    ///     .await?
    ///     .unwrap_or(0);
    /// anyhow::ensure!(missing == 0, "{missing} users have no email; fix them first");
    /// # Ok(()) }
    /// ```
    pub async fn fetch_i64(&mut self, sql: impl SqlSafeStr) -> Result<Option<i64>, sqlx::Error> {
        DB::fetch_i64(self.conn(), sql.into_sql_str())
            .await
            .inspect_err(|_| self.spoil_rest())
    }

    /// Executes one statement for the rows of a batch and adds the rows it affected to
    /// the ledger's count. Returns that number of rows.
    ///
    /// Write `{batch}` where the batch's rows are named: datamig replaces it with the
    /// predicate over the key columns and the migration's scope, and binds the bounds with
    /// their types, for any key (see [`Batch`]). `{batch:u}` qualifies the key columns with
    /// `u`, for a statement that aliases the table or joins another.
    ///
    /// ```no_run
    /// # use datamig::prelude::*;
    /// # async fn body<DB: Backend>(ctx: &mut Ctx<'_, DB>, batch: Batch) -> anyhow::Result<()> {
    /// ctx.execute_batch(
    ///     "UPDATE users SET email = lower(email) WHERE {batch} AND email <> lower(email)",
    ///     &batch,
    /// )
    /// .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// On PostgreSQL and MariaDB, after a batch that changed nothing, datamig checks every
    /// key left in one statement: the body runs with `{batch}` rendered as the scope, and
    /// the statement stops on the first row it would change (PostgreSQL: a guard that
    /// fails it; MariaDB: `LIMIT 1` after it), so the check rolls back at once where work
    /// is left (see the backfills guide).
    /// A statement that changes rows only where they need it
    /// (`.. AND email <> lower(email)`) is what lets that check find nothing to do.
    ///
    /// Without the marker, for a key of one integer column, `$1` is bound to
    /// [`Batch::after`] and `$2` to [`Batch::last`]:
    /// `UPDATE users SET .. WHERE id > $1 AND id <= $2` (the scope is then the
    /// statement's to repeat).
    ///
    /// # Errors
    ///
    /// The database's error; and, for a statement without `{batch}` when the key is not
    /// one integer column, a [`sqlx::Error::Configuration`] that says to write it.
    pub async fn execute_batch(
        &mut self,
        sql: impl SqlSafeStr,
        batch: &Batch,
    ) -> Result<u64, sqlx::Error> {
        let sql = sql.into_sql_str();
        let guard = self.rest_guard().cloned();
        let rendered = crate::key::render_marker(
            sql.as_str(),
            batch.shape(),
            batch.lower().is_some(),
            guard.as_ref(),
        );
        let rows = match rendered {
            Some(rendered) => {
                // A rest check binds nothing: its `{batch}` is the scope and the guard.
                let bounds = if guard.is_some() {
                    Vec::new()
                } else {
                    batch.bounds()
                };
                DB::execute_keyed(
                    self.conn(),
                    sqlx::AssertSqlSafe(rendered).into_sql_str(),
                    &bounds,
                )
                .await
                .inspect_err(|_| self.spoil_rest())?
            }
            None if guard.is_some() => {
                // `$1`/`$2` name the rows without a marker to guard: such a statement
                // must never run over all the rest at once.
                self.spoil_rest();
                return Err(sqlx::Error::Configuration(
                    "datamig checks the rest of a batched migration only through \
                         statements that name their rows with {batch}"
                        .into(),
                ));
            }
            None => match (batch.after(), batch.last()) {
                (Some(after), Some(last)) => {
                    let bounds = [
                        crate::key::KeyValue::Integer(after),
                        crate::key::KeyValue::Integer(last),
                    ];
                    DB::execute_keyed(self.conn(), sql, &bounds).await?
                }
                _ => {
                    return Err(sqlx::Error::Configuration(
                        format!(
                            "this migration's batches walk the key {}, which is not one integer \
                             column: write {{batch}} in the statement where the batch's rows are \
                             named (`UPDATE .. WHERE {{batch}} AND ..`), and datamig binds its bounds",
                            batch.shape().names()
                        )
                        .into(),
                    ));
                }
            },
        };
        self.add_rows_affected(rows);
        Ok(rows)
    }
}

impl<DB: Backend> Ctx<'_, DB> {
    /// Moves the key generator of every generated key column of each table past the
    /// column's maximum, so the next insert gets `max + 1` (or the start on an empty
    /// table): on PostgreSQL the sequences behind `serial` and identity columns, on SQLite
    /// the `AUTOINCREMENT` counter. Tables are single identifiers, quoted.
    ///
    /// ```no_run
    /// # use datamig::prelude::*;
    /// # async fn body(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
    /// // After copying users and orders with their ids:
    /// ctx.reset_sequences(["users", "orders"]).await?;
    /// ctx.analyze(["users", "orders"]).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a table that does not exist; [`Error::Database`] otherwise
    /// (for instance without `UPDATE` on a sequence).
    pub async fn reset_sequences<S: AsRef<str>>(
        &mut self,
        tables: impl IntoIterator<Item = S>,
    ) -> Result<Vec<SequenceReset>, Error> {
        let mut resets = Vec::new();
        for table in tables {
            let table = table.as_ref();
            check_name("table", table)?;
            resets.extend(DB::reset_sequences(self.conn(), table).await?);
        }
        Ok(resets)
    }

    /// Runs `ANALYZE` on each table, so the planner sees the data just loaded.
    ///
    /// PostgreSQL lets only a table's owner (or a superuser) analyse it, and for anyone else
    /// it only warns and skips the table: this helper checks first and fails instead.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a table that does not exist or that the current role may not
    /// analyse; [`Error::Database`] otherwise.
    pub async fn analyze<S: AsRef<str>>(
        &mut self,
        tables: impl IntoIterator<Item = S>,
    ) -> Result<(), Error> {
        for table in tables {
            let table = table.as_ref();
            check_name("table", table)?;
            DB::analyze(self.conn(), table).await?;
        }
        Ok(())
    }
}

#[cfg(feature = "mysql")]
impl Ctx<'_, crate::MySql> {
    /// Runs one DDL statement (`ALTER TABLE`, `CREATE INDEX`, ..) inside a migration on
    /// MySQL or MariaDB, which commit DDL implicitly: the migration is then **not atomic**.
    ///
    /// # Warning
    ///
    /// MySQL commits the migration's transaction when it runs DDL: what the body wrote
    /// before this call is committed at once, before the ledger row, and no rollback can
    /// undo it or the DDL. Should the run fail or be killed after it, the migration stays
    /// pending with those writes done, and runs again from the start: write such a body so
    /// that it converges (`CREATE TABLE IF NOT EXISTS`, updates that find nothing left to
    /// do). After the statement a new transaction begins, in which the rest of the body and
    /// the ledger row commit together; the ledger row's notes say that the run was not
    /// atomic and which statement made it so.
    ///
    /// Without this method, DDL in a body is refused before it is sent (through
    /// [`Ctx::execute`]) or found by its implicit commit before the ledger row is written
    /// (through [`Ctx::tx`]), and the run fails naming it. Prefer a schema migration that
    /// runs before the data migration.
    ///
    /// ```no_run
    /// # use datamig::prelude::*;
    /// # async fn body(ctx: &mut Ctx<'_, MySql>) -> anyhow::Result<()> {
    /// ctx.dangerously_execute_non_atomic_ddl(
    ///     "CREATE TABLE IF NOT EXISTS user_settings (user_id bigint PRIMARY KEY)",
    /// )
    /// .await?;
    /// ctx.execute("INSERT IGNORE INTO user_settings (user_id) SELECT id FROM users")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Config`] in a dry run (DDL cannot be rolled back, so it cannot be tried);
    /// [`Error::Database`] when the statement fails: MySQL commits before it runs a DDL
    /// statement, so what the body wrote before it is committed even then.
    pub async fn dangerously_execute_non_atomic_ddl(
        &mut self,
        sql: impl SqlSafeStr,
    ) -> Result<(), Error> {
        let sql = sql.into_sql_str();
        if self.is_dry_run() {
            return Err(Error::Config(format!(
                "migration {} runs DDL, which MySQL cannot roll back, so it cannot run in a dry \
                 run: {}",
                self.id(),
                sql.as_str()
            )));
        }
        crate::backend::mysql::execute_non_atomic_ddl(self.tx(), sql.as_str()).await?;
        let flat = sql
            .as_str()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        self.note(format!(
            "not atomic: MySQL committed the migration's transaction at: {flat}"
        ));
        Ok(())
    }
}
