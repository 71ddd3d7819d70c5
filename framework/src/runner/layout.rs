//! The ledger's tables: looked at before anything is created, created or upgraded in place
//! only when they are missing or older than this datamig's layout.
//!
//! Looking first matters for least privilege: once an owner (a DBA, the first deploy) has
//! created the ledger, an application role with `SELECT, INSERT, UPDATE` on its tables and
//! no `CREATE` on the schema runs every command, because nothing issues DDL.

use super::Migrator;
use crate::backend::Backend;
use crate::error::{Error, describe_sqlx};
use crate::ledger::{LAYOUT, LEDGER_COLUMNS, RUNS_COLUMNS};

/// What the ledger's tables are now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// No ledger table: a first run creates it.
    Missing,
    /// A ledger at this layout version (1 for one created before layouts were recorded; 0
    /// for a ledger whose run history is missing).
    Version(i64),
}

impl<DB: Backend> Migrator<DB> {
    /// Makes the ledger ready to be written: nothing when it is at this datamig's layout;
    /// created when missing; upgraded in place when older. Fails on a ledger of a newer
    /// datamig, on tables that are not a datamig ledger, and, naming what to do, when this
    /// role may not create or upgrade it.
    pub(crate) async fn prepare_ledger(&self, conn: &mut DB::Connection) -> Result<(), Error> {
        let layout = self.ledger_layout(conn).await?;
        match layout {
            Layout::Version(LAYOUT) => return Ok(()),
            Layout::Version(newer) if newer > LAYOUT => {
                return Err(Error::Config(format!(
                    "the ledger {} has layout {newer}, written by a newer datamig than this one \
                     (which knows layout {LAYOUT}): run a datamig at least as new as the one that wrote it",
                    self.ledger.ledger_ident()
                )));
            }
            _ => {}
        }
        // Created under the runner lock: concurrent `CREATE TABLE IF NOT EXISTS` can collide.
        if let Err(err) = DB::ensure_ledger(conn, &self.ledger).await {
            let denied = err
                .as_database_error()
                .and_then(|e| e.code())
                .is_some_and(|c| c == "42501");
            if !denied {
                return Err(Error::Database(err));
            }
            let what = match layout {
                Layout::Missing => "does not exist yet".to_string(),
                Layout::Version(v) => {
                    format!("has layout {v} and this datamig needs layout {LAYOUT}")
                }
            };
            return Err(Error::Config(format!(
                "the ledger {} {what}, and this role may not create or alter it ({}): run \
                 `datamig run` once as the owner of the schema (or a role with CREATE on it), \
                 then this role needs SELECT, INSERT, UPDATE on {}, {} and {}",
                self.ledger.ledger_ident(),
                describe_sqlx(&err),
                self.ledger.ledger_ident(),
                self.ledger.runs_ident(),
                self.ledger.layout_ident(),
            )));
        }
        self.ledger_layout(conn).await.map(|_| ())
    }

    /// The ledger's layout, read without writing anything. Fails with
    /// [`Error::LedgerShape`] when a ledger table lacks datamig's columns (another tool's
    /// table of the same name).
    pub(crate) async fn ledger_layout(&self, conn: &mut DB::Connection) -> Result<Layout, Error> {
        let schema = self.ledger.schema_name();
        let mut present = Vec::new();
        for (name, table, expected) in [
            (
                self.ledger.ledger_table_name().to_string(),
                self.ledger.ledger_ident(),
                LEDGER_COLUMNS,
            ),
            (
                self.ledger.runs_table_name().to_string(),
                self.ledger.runs_ident(),
                RUNS_COLUMNS,
            ),
        ] {
            let columns = DB::table_columns(conn, schema, &name).await?;
            present.push(!columns.is_empty());
            if columns.is_empty() {
                continue;
            }
            let missing: Vec<String> = expected
                .iter()
                .filter(|c| !columns.iter().any(|have| have == *c))
                .map(|c| c.to_string())
                .collect();
            if !missing.is_empty() {
                return Err(Error::LedgerShape { table, missing });
            }
        }
        if !present[0] {
            return Ok(Layout::Missing);
        }
        if !present[1] {
            return Ok(Layout::Version(0));
        }
        let layout_table = self.ledger.layout_table_name();
        if DB::table_columns(conn, schema, &layout_table)
            .await?
            .is_empty()
        {
            return Ok(Layout::Version(1));
        }
        let sql = format!(
            "SELECT CAST(max(version) AS bigint) FROM {}",
            self.ledger.layout_ident()
        );
        let version = DB::fetch_i64(
            conn,
            sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(sql)),
        )
        .await?;
        Ok(Layout::Version(version.unwrap_or(1)))
    }
}
