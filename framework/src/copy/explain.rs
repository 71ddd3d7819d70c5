//! A chunk's failure turned into the error the copy reports: a rejected row with its
//! constraint and key, a lock wait with the sessions holding the lock, a source that failed
//! mid-read with the chunks kept.

use sqlx::AssertSqlSafe;
use sqlx::postgres::PgConnection;

use super::catalog::Table;
use super::failure::Failure;
use super::schedule::Unit;
use super::shared::Shared;
use super::source::{Reader, Source};
use crate::backend::postgres::{SESSION_COLUMNS, query, session_info};
use crate::error::Error;

/// Turns a chunk's failure into the error to report: a rejected row with its constraint and
/// key, a lock wait with the sessions holding the lock.
pub(super) async fn explain<S: Source>(
    shared: &Shared<S>,
    src: &mut S::Reader,
    dst: &mut PgConnection,
    unit: &Unit,
    failure: Failure,
) -> Error {
    let kept = shared.schedule.lock().expect("schedule lock").committed;
    let locate = |table: usize| {
        unit.parts
            .iter()
            .find(|(t, _)| *t == table)
            .map_or((1, 1), |(t, c)| (c.number, shared.chunk_counts[*t]))
    };
    let (table, err) = match failure {
        Failure::Other(err) => return err,
        Failure::Value(table, bad) => {
            let (chunk, chunks) = locate(table);
            return Error::CopyUnconvertible {
                chunk,
                chunks,
                kept,
                value: bad,
            };
        }
        Failure::Source(table, err) => {
            return Error::Runtime(format!(
                "reading {table} from the source failed: {}; the chunk was rolled back, the {kept} chunk(s) committed before it are kept: run the copy again to resume",
                crate::error::describe_sqlx(&err)
            ));
        }
        Failure::Rejected(table, message) => {
            let (chunk, chunks) = locate(table);
            return Error::CopyRejected {
                table: shared.planned[table].plan.table.clone(),
                chunk,
                chunks,
                kept,
                message,
            };
        }
        Failure::SourceText(table, message) => {
            return Error::Runtime(format!(
                "reading {table} from the source failed: {message}; the chunk was rolled back, the {kept} chunk(s) committed before it are kept: run the copy again to resume"
            ));
        }
        Failure::Target(table, err) => (table, err),
    };
    let name = shared.planned[table].plan.table.clone();
    let (number, chunks) = locate(table);
    let Some(db) = err.as_database_error() else {
        return Error::Database(err);
    };
    let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
    let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
    if code == "55P03" {
        let sessions = blocking(dst, &shared.planned[table].target)
            .await
            .unwrap_or_default();
        return Error::CopyBlocked {
            table: name,
            timeout: shared.copier.lock_timeout,
            sessions,
        };
    }
    let rejected = code.starts_with("22") || code.starts_with("23") || code == "P0001";
    if !rejected {
        return Error::Database(err);
    }
    let mut message = db.message().to_string();
    if let Some(pg) = pg {
        if let Some(detail) = pg.detail() {
            message.push_str(&format!(" ({detail})"));
        }
        if let Some(context) = pg.r#where()
            && context.starts_with("COPY ")
        {
            message.push_str(&format!("; at {context}"));
        }
        if code == "23503"
            && let (Some(constraint), Some(detail)) = (pg.constraint(), pg.detail())
            && let Some((_, chunk)) = unit.parts.iter().find(|(t, _)| *t == table)
            && let Some(key) = src
                .referencing_row(&shared.planned[table], chunk, constraint, detail)
                .await
        {
            message.push_str(&format!("; the row with {key} holds it"));
        }
    }
    Error::CopyRejected {
        table: name,
        chunk: number,
        chunks,
        kept,
        message,
    }
}

/// Sessions on the target that hold a lock conflicting with loading `table`, or sit idle in
/// a transaction.
async fn blocking(
    dst: &mut PgConnection,
    table: &Table,
) -> Result<Vec<crate::SessionInfo>, sqlx::Error> {
    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *dst).await;
    let sql = format!(
        "{SESSION_COLUMNS} FROM pg_stat_activity a
         WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'
           AND (a.pid IN (SELECT l.pid FROM pg_locks l WHERE l.relation = to_regclass($1) AND l.granted
                            AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock'))
                OR a.state IN ('idle in transaction', 'idle in transaction (aborted)'))
         ORDER BY a.xact_start NULLS LAST"
    );
    let rows = query(AssertSqlSafe(sql))
        .bind(table.ident())
        .fetch_all(dst)
        .await?;
    rows.iter().map(session_info).collect()
}
