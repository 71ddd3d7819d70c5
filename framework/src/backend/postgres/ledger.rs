//! PostgreSQL's ledger: its DDL, whether it exists, and the schema migrations of
//! `sqlx migrate`; its rows and the run history are written once for every backend
//! (`shared.rs`).

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Postgres};

use super::sql::query_scalar;
use crate::backend::shared::Shared;
use crate::backend::steps::LedgerSteps;
use crate::ledger::{Attempt, LAYOUT, LastRun, LedgerConfig, LedgerEntry, Pause};
use crate::sql::quote_ident;

impl LedgerSteps for Postgres {
    async fn ensure_ledger(
        conn: &mut PgConnection,
        config: &LedgerConfig,
    ) -> Result<(), sqlx::Error> {
        let ledger = config.ledger_ident();
        let runs = config.runs_ident();
        let layout = config.layout_ident();
        let index = quote_ident(&format!("{}_by_migration", config.runs_table_name()));
        let schema = match config.schema_name() {
            Some(schema) => format!("CREATE SCHEMA IF NOT EXISTS {};", quote_ident(schema)),
            None => String::new(),
        };
        let ddl = format!(
            "{schema}
            CREATE TABLE IF NOT EXISTS {ledger} (
                id            text PRIMARY KEY,
                checksum      text NOT NULL,
                revision      integer NOT NULL,
                description   text NOT NULL,
                started_at    timestamptz NOT NULL,
                finished_at   timestamptz NOT NULL,
                duration_ms   bigint NOT NULL,
                rows_affected bigint NOT NULL,
                notes         text,
                applied_by    text NOT NULL DEFAULT current_user,
                host          text NOT NULL,
                app_version   text,
                run_count     integer NOT NULL DEFAULT 1,
                status        text NOT NULL DEFAULT 'applied',
                checkpoint    text,
                batches       bigint NOT NULL DEFAULT 0
            );
            CREATE TABLE IF NOT EXISTS {runs} (
                run_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                migration_id  text NOT NULL,
                action        text NOT NULL,
                outcome       text NOT NULL,
                checksum      text NOT NULL,
                revision      integer NOT NULL,
                started_at    timestamptz NOT NULL,
                finished_at   timestamptz NOT NULL,
                duration_ms   bigint NOT NULL,
                rows_affected bigint NOT NULL,
                error         text,
                reason        text,
                db_user       text NOT NULL DEFAULT current_user,
                host          text NOT NULL,
                app_version   text
            );
            CREATE INDEX IF NOT EXISTS {index} ON {runs} (migration_id, run_id);
            CREATE TABLE IF NOT EXISTS {layout} (
                version     integer NOT NULL,
                upgraded_at timestamptz NOT NULL DEFAULT now()
            );
            DELETE FROM {layout};
            INSERT INTO {layout} (version) VALUES ({LAYOUT});"
        );
        sqlx::raw_sql(AssertSqlSafe(ddl)).execute(conn).await?;
        Ok(())
    }

    async fn ledger_exists(
        conn: &mut PgConnection,
        config: &LedgerConfig,
    ) -> Result<bool, sqlx::Error> {
        query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(config.ledger_ident())
            .fetch_one(conn)
            .await
    }

    async fn read_ledger(
        conn: &mut PgConnection,
        config: &LedgerConfig,
    ) -> Result<Vec<LedgerEntry>, sqlx::Error> {
        Shared::<Self>::read_ledger(conn, config).await
    }

    async fn write_ledger(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        a: &Attempt,
    ) -> Result<bool, sqlx::Error> {
        Shared::<Self>::write_ledger(conn, config, a).await
    }

    async fn record_run(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        a: &Attempt,
        error: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        Shared::<Self>::record_run(conn, config, a, error).await
    }

    async fn last_runs(
        conn: &mut PgConnection,
        config: &LedgerConfig,
    ) -> Result<Vec<LastRun>, sqlx::Error> {
        Shared::<Self>::last_runs(conn, config).await
    }

    async fn pause_state(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        id: Option<&str>,
    ) -> Result<Vec<Pause>, sqlx::Error> {
        Shared::<Self>::pause_state(conn, config, id).await
    }

    async fn cancel_state(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        id: Option<&str>,
    ) -> Result<Vec<Pause>, sqlx::Error> {
        Shared::<Self>::cancel_state(conn, config, id).await
    }

    async fn schema_version_applied(
        conn: &mut PgConnection,
        version: i64,
    ) -> Result<bool, sqlx::Error> {
        let exists: bool = query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
        if !exists {
            return Ok(false);
        }
        query_scalar(
            "SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $1 AND success)",
        )
        .bind(version)
        .fetch_one(conn)
        .await
    }
}
