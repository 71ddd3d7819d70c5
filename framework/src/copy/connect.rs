//! The connections a copy opens, and the sessions it sets on them.

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection};

use super::context::During;
use super::copier::Copier;
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
        other => Error::CopyDatabase {
            during: format!("connecting to the {side} database"),
            error: other,
        },
    })
}

/// What both sides' sessions set: no timeouts; every row or an error (never rows hidden by
/// row-level security); values in text `COPY` written and read alike in any database
/// (dates and intervals in one style, `money` in one locale, XML as content).
pub(super) const SESSION: &str = "SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0; \
     SET standard_conforming_strings = on; SET row_security = off; SET DateStyle = ISO; \
     SET IntervalStyle = postgres; SET lc_monetary = 'C'; SET xmloption = content";

/// The target's session: a lost commit loses a chunk and its progress row together, so
/// `synchronous_commit` need not wait for the disk; locks wait at most the lock timeout.
/// (Triggers are turned off per transaction, for the tables that load so.)
pub(super) async fn target_session(conn: &mut PgConnection, copier: &Copier) -> Result<(), Error> {
    let sql = format!(
        "{SESSION}; SET synchronous_commit = off; SET lock_timeout = '{}ms'",
        copier.lock_timeout.as_millis().max(1)
    );
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(conn)
        .await
        .during(|| "setting up the target's session".into())?;
    Ok(())
}
