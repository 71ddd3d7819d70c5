//! SQLite's ledger: its DDL, whether it exists, and the schema migrations of
//! `sqlx migrate`; its rows and the run history are written once for every backend
//! (`shared.rs`).

use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Sqlite};

use super::sql::table_exists;
use crate::backend::shared::Shared;
use crate::backend::steps::LedgerSteps;
use crate::ledger::{Attempt, LAYOUT, LastRun, LedgerConfig, LedgerEntry, Pause};
use crate::sql::quote_ident;

impl LedgerSteps for Sqlite {
    async fn ensure_ledger(
        conn: &mut SqliteConnection,
        config: &LedgerConfig,
    ) -> Result<(), sqlx::Error> {
        let ledger = config.ledger_ident();
        let runs = config.runs_ident();
        let layout = config.layout_ident();
        // An index is created in the schema of its table, named without it.
        let index = match config.schema_name() {
            Some(schema) => format!(
                "{}.{}",
                quote_ident(schema),
                quote_ident(&format!("{}_by_migration", config.runs_table_name()))
            ),
            None => quote_ident(&format!("{}_by_migration", config.runs_table_name())),
        };
        let runs_table = quote_ident(config.runs_table_name());
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {ledger} (
                id            TEXT PRIMARY KEY NOT NULL,
                checksum      TEXT NOT NULL,
                revision      INTEGER NOT NULL,
                description   TEXT NOT NULL,
                started_at    TEXT NOT NULL,
                finished_at   TEXT NOT NULL,
                duration_ms   INTEGER NOT NULL,
                rows_affected INTEGER NOT NULL,
                notes         TEXT,
                applied_by    TEXT NOT NULL,
                host          TEXT NOT NULL,
                app_version   TEXT,
                run_count     INTEGER NOT NULL DEFAULT 1,
                status        TEXT NOT NULL DEFAULT 'applied',
                checkpoint    TEXT,
                batches       INTEGER NOT NULL DEFAULT 0
            );
            CREATE TABLE IF NOT EXISTS {runs} (
                run_id        INTEGER PRIMARY KEY AUTOINCREMENT,
                migration_id  TEXT NOT NULL,
                action        TEXT NOT NULL,
                outcome       TEXT NOT NULL,
                checksum      TEXT NOT NULL,
                revision      INTEGER NOT NULL,
                started_at    TEXT NOT NULL,
                finished_at   TEXT NOT NULL,
                duration_ms   INTEGER NOT NULL,
                rows_affected INTEGER NOT NULL,
                error         TEXT,
                reason        TEXT,
                db_user       TEXT NOT NULL,
                host          TEXT NOT NULL,
                app_version   TEXT
            );
            CREATE INDEX IF NOT EXISTS {index} ON {runs_table} (migration_id, run_id);
            CREATE TABLE IF NOT EXISTS {layout} (
                version     INTEGER NOT NULL,
                upgraded_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
            );
            DELETE FROM {layout};
            INSERT INTO {layout} (version) VALUES ({LAYOUT});"
        );
        sqlx::raw_sql(AssertSqlSafe(ddl)).execute(conn).await?;
        Ok(())
    }

    async fn ledger_exists(
        conn: &mut SqliteConnection,
        config: &LedgerConfig,
    ) -> Result<bool, sqlx::Error> {
        table_exists(conn, config.schema_name(), config.ledger_table_name()).await
    }

    async fn read_ledger(
        conn: &mut SqliteConnection,
        config: &LedgerConfig,
    ) -> Result<Vec<LedgerEntry>, sqlx::Error> {
        Shared::<Self>::read_ledger(conn, config).await
    }

    async fn write_ledger(
        conn: &mut SqliteConnection,
        config: &LedgerConfig,
        a: &Attempt,
    ) -> Result<bool, sqlx::Error> {
        Shared::<Self>::write_ledger(conn, config, a).await
    }

    async fn record_run(
        conn: &mut SqliteConnection,
        config: &LedgerConfig,
        a: &Attempt,
        error: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        Shared::<Self>::record_run(conn, config, a, error).await
    }

    async fn last_runs(
        conn: &mut SqliteConnection,
        config: &LedgerConfig,
    ) -> Result<Vec<LastRun>, sqlx::Error> {
        Shared::<Self>::last_runs(conn, config).await
    }

    async fn pause_state(
        conn: &mut SqliteConnection,
        config: &LedgerConfig,
        id: Option<&str>,
    ) -> Result<Vec<Pause>, sqlx::Error> {
        Shared::<Self>::pause_state(conn, config, id).await
    }

    async fn cancel_state(
        conn: &mut SqliteConnection,
        config: &LedgerConfig,
        id: Option<&str>,
    ) -> Result<Vec<Pause>, sqlx::Error> {
        Shared::<Self>::cancel_state(conn, config, id).await
    }

    async fn schema_version_applied(
        conn: &mut SqliteConnection,
        version: i64,
    ) -> Result<bool, sqlx::Error> {
        if !table_exists(conn, None, "_sqlx_migrations").await? {
            return Ok(false);
        }
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $1 AND success)",
        )
        .bind(version)
        .fetch_one(conn)
        .await
    }
}
