//! The connections a copy opens, and the sessions it sets on them.

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection};

use super::copier::Copier;
use super::options::Triggers;
use crate::error::Error;

/// How long a connection may take to open.
pub(super) const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A connection to one side (`side` names it in messages), opened within [`CONNECT_TIMEOUT`].
pub(super) async fn connect(options: &PgConnectOptions, side: &str) -> Result<PgConnection, Error> {
    let options = options.clone().application_name("datamig-copy");
    let connecting = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options));
    let Ok(connected) = connecting.await else {
        return Err(Error::Config(format!(
            "cannot connect to the {side} database: no answer within {} s; check the host and port of its URL",
            CONNECT_TIMEOUT.as_secs()
        )));
    };
    connected.map_err(|err| match err {
        sqlx::Error::Database(_)
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Configuration(_) => Error::Config(format!(
            "cannot connect to the {side} database: {}",
            crate::error::describe_sqlx(&err)
        )),
        other => Error::Database(other),
    })
}

/// The target's session: a lost commit loses a chunk and its progress row together, so
/// `synchronous_commit` need not wait for the disk; locks wait at most the lock timeout.
pub(super) async fn target_session(
    conn: &mut PgConnection,
    copier: &Copier,
    load: bool,
) -> Result<(), Error> {
    let mut sql = format!(
        "SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0; \
         SET standard_conforming_strings = on; SET synchronous_commit = off; SET lock_timeout = '{}ms'",
        copier.lock_timeout.as_millis().max(1)
    );
    if load && copier.triggers == Triggers::Off {
        sql.push_str("; SET session_replication_role = replica");
    }
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await?;
    Ok(())
}
