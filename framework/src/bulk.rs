//! After a bulk load: sequences reset to the data, statistics refreshed.
//!
//! Copying rows with their ids (a data copy between databases, a restore) leaves the
//! sequences behind `serial` and identity columns where they were, and the next insert
//! collides with a copied id. The planner's statistics are stale too.

use sqlx::{AssertSqlSafe, Postgres, Row};

use crate::ctx::Ctx;
use crate::error::Error;
use crate::sql::{check_name, quote_ident};

/// One sequence moved by [`Ctx::reset_sequences`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SequenceReset {
    /// The table.
    pub table: String,
    /// The `serial` or identity column.
    pub column: String,
    /// The sequence behind it.
    pub sequence: String,
    /// The value the next insert gets.
    pub next_value: i64,
}

impl Ctx<'_, Postgres> {
    /// Sets the sequence behind every `serial` and identity column of each table to the
    /// column's maximum, so the next insert gets `max + 1` (or the sequence's start on an
    /// empty table). Tables are single identifiers, quoted.
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
            let quoted = quote_ident(table);
            let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(&quoted)
                .fetch_one(self.tx())
                .await?;
            if !exists {
                return Err(Error::Config(format!(
                    "cannot reset the sequences of {table}: no such table"
                )));
            }
            let columns = sqlx::query(
                "SELECT a.attname::text AS column_name, pg_get_serial_sequence($1, a.attname) AS sequence
                 FROM pg_attribute a
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
                   AND pg_get_serial_sequence($1, a.attname) IS NOT NULL
                 ORDER BY a.attnum",
            )
            .bind(&quoted)
            .fetch_all(self.tx())
            .await?;
            for row in columns {
                let column: String = row.try_get("column_name")?;
                let sequence: String = row.try_get("sequence")?;
                let col = quote_ident(&column);
                // The next insert gets max + increment, or the sequence's start when empty.
                let sql = format!(
                    "SELECT setval($1::regclass, COALESCE(m.max, seq.seqstart), m.max IS NOT NULL),
                            m.max IS NOT NULL, seq.seqincrement
                     FROM pg_sequence seq, (SELECT max({col})::bigint AS max FROM {quoted}) AS m
                     WHERE seq.seqrelid = $1::regclass"
                );
                let (set, called, increment): (i64, bool, i64) = sqlx::query_as(AssertSqlSafe(sql))
                    .bind(&sequence)
                    .fetch_one(self.tx())
                    .await?;
                let next_value = if called { set + increment } else { set };
                resets.push(SequenceReset {
                    table: table.to_string(),
                    column,
                    sequence,
                    next_value,
                });
            }
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
            let quoted = quote_ident(table);
            let allowed: Option<(bool, String)> = sqlx::query_as(
                "SELECT pg_has_role(current_user, c.relowner, 'USAGE')
                        OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
                        pg_get_userbyid(c.relowner)::text
                 FROM pg_class c WHERE c.oid = to_regclass($1)",
            )
            .bind(&quoted)
            .fetch_optional(self.tx())
            .await?;
            match allowed {
                None => {
                    return Err(Error::Config(format!(
                        "cannot analyze {table}: no such table"
                    )));
                }
                Some((false, owner)) => {
                    return Err(Error::Config(format!(
                        "cannot analyze {table}: only its owner ({owner}) or a superuser may, and this \
                         migration runs as another role; run ANALYZE as {owner}, or grant that role to this one"
                    )));
                }
                Some((true, _)) => {}
            }
            sqlx::query(AssertSqlSafe(format!("ANALYZE {quoted}")))
                .execute(self.tx())
                .await?;
        }
        Ok(())
    }
}
