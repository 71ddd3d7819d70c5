//! A chunk's failure turned into what the copy reports: a table whose rows were refused
//! (with the row, the column, the constraint or trigger and the database's words, where
//! it has them), or a failure that stops the copy (a lock wait with the sessions holding
//! the lock, a lost connection), each naming its table and chunk.

use sqlx::AssertSqlSafe;
use sqlx::postgres::PgConnection;

use super::catalog::Table;
use super::failure::{Explained, Failure, Rejection};
use super::schedule::Unit;
use super::shared::Shared;
use super::source::{Reader, Source};
use crate::backend::postgres::{SESSION_COLUMNS, query, session_info};
use crate::error::Error;

/// Whether a database error (its SQLSTATE) is about the copy's surroundings (a connection,
/// the server's resources, an operator, the server itself) rather than the table's rows:
/// such an error stops the copy, whichever table it happened on.
fn stops_the_copy(code: &str) -> bool {
    ["08", "53", "57", "58", "XX", "72"]
        .iter()
        .any(|class| code.starts_with(class))
}

/// Turns a chunk's failure into what the copy reports.
pub(super) async fn explain<S: Source>(
    shared: &Shared<S>,
    src: &mut S::Reader,
    dst: &mut PgConnection,
    unit: &Unit,
    failure: Failure,
) -> Explained {
    let locate = |table: usize| {
        unit.parts
            .iter()
            .find(|(t, _)| *t == table)
            .map_or((1, 1), |(t, c)| (c.number, shared.chunk_counts[*t]))
    };
    let doing = |table: usize, what: &str| {
        let (chunk, chunks) = locate(table);
        format!(
            "{what} chunk {chunk} of {chunks} of {}",
            shared.planned[table].plan.table
        )
    };
    let kept = || shared.schedule.lock().expect("schedule lock").committed;
    let plain = |table: usize, message: String| Rejection {
        table,
        row: None,
        column: None,
        constraint: None,
        trigger: None,
        message,
        value: None,
    };
    let (table, err) = match failure {
        Failure::Other(err) => return Explained::Stop(err),
        Failure::ParentFailed => {
            return Explained::Stop(Error::Runtime(
                "a chunk started before the tables it references were loaded was rolled back, one of them having failed; this is handled before it is explained, a bug in datamig: please report it".into(),
            ));
        }
        Failure::Value(table, bad) => {
            return Explained::Table(Rejection {
                value: Some(bad),
                ..plain(table, String::new())
            });
        }
        Failure::Rejected(table, message) => return Explained::Table(plain(table, message)),
        Failure::SourceText(table, message) => {
            return Explained::Stop(Error::Config(format!(
                "{} failed: {message}; the chunk was rolled back, the {} chunk(s) committed before it are kept: run the copy again to resume",
                doing(table, "reading"),
                kept()
            )));
        }
        Failure::Source(table, err) => {
            let code = err
                .as_database_error()
                .and_then(|db| db.code().map(|c| c.into_owned()));
            return match code {
                // The source refused this table's rows (a type it cannot send, a privilege):
                // the table stops, the others go on.
                Some(code) if !stops_the_copy(&code) => Explained::Table(plain(
                    table,
                    format!(
                        "the source could not read it: {}",
                        crate::error::describe_sqlx(&err)
                    ),
                )),
                _ => Explained::Stop(Error::Runtime(format!(
                    "{} from the source failed: {}; the chunk was rolled back, the {} chunk(s) committed before it are kept: run the copy again to resume",
                    doing(table, "reading"),
                    crate::error::describe_sqlx(&err),
                    kept()
                ))),
            };
        }
        Failure::Target(table, err) => (table, err),
    };
    let name = shared.planned[table].plan.table.clone();
    let Some(db) = err.as_database_error() else {
        return Explained::Stop(Error::CopyDatabase {
            during: doing(table, "loading"),
            error: err,
        });
    };
    let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
    let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
    if code == "55P03" {
        let sessions = blocking(dst, &shared.planned[table].target)
            .await
            .unwrap_or_default();
        return Explained::Stop(Error::CopyBlocked {
            table: name,
            timeout: shared.copier.lock_timeout,
            sessions,
        });
    }
    if stops_the_copy(&code) {
        return Explained::Stop(Error::CopyDatabase {
            during: doing(table, "loading"),
            error: err,
        });
    }
    let mut rejection = plain(table, db.message().to_string());
    if let Some(pg) = pg {
        rejection.constraint = pg.constraint().map(str::to_string);
        rejection.column = pg.column().map(str::to_string);
        if let Some(detail) = pg.detail() {
            rejection.message.push_str(&format!(" ({detail})"));
            rejection.row = row_in_detail(detail);
        }
        if let Some(context) = pg.r#where() {
            if let Some(line) = context
                .lines()
                .find(|l| l.starts_with("COPY "))
                .map(str::to_string)
            {
                rejection.message.push_str(&format!("; at {line}"));
                if rejection.row.is_none() {
                    rejection.row = copy_line(&line);
                }
                if rejection.column.is_none() {
                    rejection.column = copy_column(&line);
                }
            }
            rejection.trigger = trigger_of(&shared.planned[table].target, context);
        }
        if code == "23503"
            && let (Some(constraint), Some(detail)) = (pg.constraint(), pg.detail())
            && let Some((_, chunk)) = unit.parts.iter().find(|(t, _)| *t == table)
            && let Some(key) = src
                .referencing_row(&shared.planned[table], chunk, constraint, detail)
                .await
        {
            rejection
                .message
                .push_str(&format!("; the row with {key} holds it"));
            rejection.row = Some(key);
        }
    }
    Explained::Table(rejection)
}

/// The row a detail names: `Key (id)=(5) ...` as `id = 5`, `Failing row contains (..)`
/// as the row.
fn row_in_detail(detail: &str) -> Option<String> {
    if let Some(rest) = detail.strip_prefix("Key (") {
        let (columns, rest) = rest.split_once(")=(")?;
        let end = rest.rfind(')')?;
        return Some(format!("{columns} = {}", &rest[..end]));
    }
    detail
        .strip_prefix("Failing row contains ")
        .map(|row| row.trim_end_matches('.').to_string())
}

/// `line N` of a `COPY` context (`COPY orders, line 7, column total: "x"`).
fn copy_line(context: &str) -> Option<String> {
    let rest = &context[context.find(", line ")? + 2..];
    let end = rest.find([',', ':']).unwrap_or(rest.len());
    Some(format!("{} of the chunk's COPY", &rest[..end]))
}

/// The column a `COPY` context names (`.., column total: ..`).
fn copy_column(context: &str) -> Option<String> {
    let rest = &context[context.find(", column ")? + 9..];
    let end = rest.find(':').unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

/// The table's triggers whose function the error's context names (`PL/pgSQL function
/// audit_order() line 3 at RAISE`).
fn trigger_of(table: &Table, context: &str) -> Option<String> {
    let named: Vec<&str> = table
        .triggers
        .iter()
        .filter(|t| {
            let function = t.function.rsplit('.').next().unwrap_or(&t.function);
            context.contains(&format!("function {function}("))
                || context.contains(&format!("function {}(", t.function))
        })
        .map(|t| t.name.as_str())
        .collect();
    (!named.is_empty()).then(|| named.join(", "))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_and_column_come_from_the_servers_words() {
        assert_eq!(
            row_in_detail("Key (id)=(5) already exists.").as_deref(),
            Some("id = 5")
        );
        assert_eq!(
            row_in_detail("Failing row contains (7777, 5000.00).").as_deref(),
            Some("(7777, 5000.00)")
        );
        let context = "COPY orders, line 7, column total: \"x\"";
        assert_eq!(
            copy_line(context).as_deref(),
            Some("line 7 of the chunk's COPY")
        );
        assert_eq!(copy_column(context).as_deref(), Some("total"));
        assert_eq!(
            copy_line("COPY orders, line 12").as_deref(),
            Some("line 12 of the chunk's COPY")
        );
        assert!(stops_the_copy("08006") && stops_the_copy("57014"));
        assert!(!stops_the_copy("23505") && !stops_the_copy("P0001") && !stops_the_copy("42501"));
    }
}
