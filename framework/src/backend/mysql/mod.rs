//! MySQL and MariaDB: `GET_LOCK` runner lock, InnoDB ledger, session timeouts, several
//! workers (`ranges.rs`: a `GET_LOCK` per range, rows taken `FOR UPDATE SKIP LOCKED`).
//!
//! A file per concern, as the step traits are grouped: `ledger.rs`, `lock.rs` (`GET_LOCK`,
//! the lease, sessions), `walk.rs`, `tables.rs`, `upsert.rs`, `ranges.rs`; `sql.rs` holds
//! how every statement here is written and sent, `server.rs` what differs between MariaDB
//! and MySQL 8.
//!
//! What MySQL cannot do: roll DDL back. `CREATE`, `ALTER`, `DROP`, `TRUNCATE`, `RENAME`
//! commit the transaction they run in (an implicit commit), so a migration whose body runs
//! one is not atomic with its ledger row. The runner checks, before it writes the ledger
//! row, that the migration's transaction is still the one it began, and refuses the run
//! otherwise (see `ledger.rs`).

mod ledger;
mod lock;
mod ranges;
mod server;
mod sql;
mod tables;
mod upsert;
mod walk;

#[cfg(feature = "testing")]
pub(crate) use self::sql::{bind_keyed, keyed};
#[cfg(feature = "testing")]
pub(crate) use self::walk::{full_batch_sql, next_batch_sql};

use std::time::Duration;

use sqlx::mysql::MySqlConnection;
use sqlx::{Connection, MySql, SqlStr};

use self::server::Server;
use self::sql::query;
use crate::backend::Backend;
use crate::backend::dialect::{Actor, Dialect, Syntax};
use crate::backend::shared::Shared;
use crate::backend::steps::ConnectionSteps;
use crate::error::Error;
use crate::key::KeyValue;
use crate::migration::{Code, Migration};

impl Backend for MySql {}

impl ConnectionSteps for MySql {
    const ID: &'static str = "mysql";
    // `GET_LOCK` belongs to the session, and sqlx's MySQL pool does not reset a session
    // it takes back: a runner's connection holding the lock must never return to the pool.
    const CLOSE_RUNNER_CONNECTION: bool = true;
    const PIN_IN_TRANSACTION: bool = false;

    const DIALECT: Dialect = Dialect {
        actor: Actor::DatabaseUser,
        persistent: true,
        syntax: Syntax::MySql,
    };

    fn code(migration: &Migration) -> Option<Code<Self>> {
        migration.mysql_code()
    }

    async fn begin(
        conn: &mut MySqlConnection,
        _lock_timeout: Option<Duration>,
    ) -> Result<sqlx::Transaction<'_, MySql>, sqlx::Error> {
        if conn.is_in_transaction() {
            return conn.begin().await;
        }
        // READ COMMITTED, as on PostgreSQL, whatever the server's default (REPEATABLE
        // READ): each statement sees what committed before it, and two workers finishing
        // the last ranges at once see each other's. `SET TRANSACTION` applies to the next
        // transaction only.
        query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .execute(&mut *conn)
            .await?;
        // With a consistent snapshot InnoDB starts the transaction at once: on MySQL, whose
        // only sign of an open transaction is InnoDB's list of them, the check before the
        // ledger row is written (`ledger.rs`) then finds it even when the body only read.
        conn.begin_with("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .await
    }

    async fn execute(conn: &mut MySqlConnection, sql: SqlStr) -> Result<u64, sqlx::Error> {
        if conn.is_in_transaction()
            && let Some(kind) = implicit_commit(sql.as_str())
        {
            return Err(sqlx::Error::Configuration(Box::new(Error::Config(
                format!(
                    "{kind} commits the transaction it runs in on MySQL and MariaDB, so it was not \
                 sent: inside a migration it would commit the writes before it without the \
                 ledger row, and no rollback could undo it. Run it in a schema migration \
                 before this data migration (statement: {})",
                    statement_head(sql.as_str())
                ),
            ))));
        }
        Shared::<Self>::execute(conn, sql).await
    }

    async fn fetch_i64(
        conn: &mut MySqlConnection,
        sql: SqlStr,
    ) -> Result<Option<i64>, sqlx::Error> {
        Shared::<Self>::fetch_i64(conn, sql).await
    }

    /// A batch's statement: its row-value comparisons written out and its values bound at
    /// each `$n`, repeated as the written-out form repeats them (see [`sql::keyed`]).
    async fn execute_keyed(
        conn: &mut MySqlConnection,
        sql: SqlStr,
        values: &[KeyValue],
    ) -> Result<u64, sqlx::Error> {
        let (text, params) = sql::keyed(sql.as_str());
        let values: Vec<&KeyValue> = values.iter().collect();
        let done = sql::bind_keyed(sqlx::query(sqlx::AssertSqlSafe(text)), &params, &values)
            .execute(conn)
            .await?;
        Ok(done.rows_affected())
    }

    fn rows_affected(result: &<Self as sqlx::Database>::QueryResult) -> u64 {
        result.rows_affected()
    }

    /// MySQL has no `SET LOCAL`: the session's values are set, and the runner's
    /// connection, which never returns to the pool, ends with them.
    ///
    /// - `lock_timeout` is `innodb_lock_wait_timeout` (a row lock, in whole seconds, at
    ///   least one) and `lock_wait_timeout` (a table's metadata lock, which DDL and
    ///   `LOCK TABLES` take).
    /// - `statement_timeout` is `max_statement_time` (MariaDB, seconds) or
    ///   `max_execution_time` (MySQL 8, milliseconds, read-only `SELECT`s only: MySQL has
    ///   no limit on a writing statement).
    /// - `idle_in_transaction` has no MySQL counterpart bound to a transaction;
    ///   `wait_timeout` ends an idle session, which rolls its transaction back.
    async fn set_local_timeouts(
        conn: &mut MySqlConnection,
        lock_timeout: Option<Duration>,
        statement_timeout: Option<Duration>,
        idle_in_transaction: Option<Duration>,
    ) -> Result<(), sqlx::Error> {
        let seconds = |d: Duration| d.as_secs().max(1);
        if let Some(lock) = lock_timeout {
            query("SET SESSION innodb_lock_wait_timeout = ?, SESSION lock_wait_timeout = ?")
                .bind(seconds(lock))
                .bind(seconds(lock))
                .execute(&mut *conn)
                .await?;
        }
        if let Some(statement) = statement_timeout {
            match Server::of(conn).await? {
                Server::MariaDb => {
                    query("SET SESSION max_statement_time = ?")
                        .bind(statement.as_secs_f64().max(0.001))
                        .execute(&mut *conn)
                        .await?
                }
                Server::MySql => {
                    query("SET SESSION max_execution_time = ?")
                        .bind(
                            u64::try_from(statement.as_millis())
                                .unwrap_or(u64::MAX)
                                .max(1),
                        )
                        .execute(&mut *conn)
                        .await?
                }
            };
        }
        if let Some(idle) = idle_in_transaction {
            query("SET SESSION wait_timeout = ?")
                .bind(seconds(idle))
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// One round trip where it can: the isolation level, the lock timeouts and the
    /// `START TRANSACTION` sent together as one text query. With a statement timeout (its
    /// variable depends on the server) or inside a transaction, as the steps one by one.
    async fn begin_with_timeouts(
        conn: &mut MySqlConnection,
        lock_timeout: Option<Duration>,
        statement_timeout: Option<Duration>,
        idle_in_transaction: Option<Duration>,
    ) -> Result<sqlx::Transaction<'_, MySql>, sqlx::Error> {
        if conn.is_in_transaction() || statement_timeout.is_some() {
            let mut tx = Self::begin(conn, lock_timeout).await?;
            Self::set_local_timeouts(
                &mut tx,
                lock_timeout,
                statement_timeout,
                idle_in_transaction,
            )
            .await?;
            return Ok(tx);
        }
        let sql = begin_sql(None, lock_timeout, idle_in_transaction);
        conn.begin_with(sqlx::AssertSqlSafe(sql)).await
    }

    fn is_lock_timeout(err: &sqlx::Error) -> bool {
        // 1205 ER_LOCK_WAIT_TIMEOUT (a row lock, `innodb_lock_wait_timeout`, and a
        // metadata lock, `lock_wait_timeout`).
        server::error_number(err) == Some(1205)
    }

    async fn server_version(conn: &mut MySqlConnection) -> Result<String, sqlx::Error> {
        sqlx::query_scalar("SELECT CONCAT(VERSION(), ' (', @@version_comment, ')')")
            .fetch_one(conn)
            .await
    }
}

/// The text query that begins a batch's transaction in one round trip: `first` (a
/// statement to run before the transaction, if any), then the isolation level and the
/// lock and idle timeouts, then `START TRANSACTION`. A statement that fails stops the
/// rest: nothing after it runs.
pub(super) fn begin_sql(
    first: Option<&str>,
    lock_timeout: Option<Duration>,
    idle_in_transaction: Option<Duration>,
) -> String {
    let seconds = |d: Duration| d.as_secs().max(1);
    let mut sql = first.map(|s| format!("{s}; ")).unwrap_or_default();
    sql.push_str("SET TRANSACTION ISOLATION LEVEL READ COMMITTED;");
    if let Some(lock) = lock_timeout {
        let lock = seconds(lock);
        sql.push_str(&format!(
            " SET SESSION innodb_lock_wait_timeout = {lock}, SESSION lock_wait_timeout = {lock};"
        ));
    }
    if let Some(idle) = idle_in_transaction {
        sql.push_str(&format!(" SET SESSION wait_timeout = {};", seconds(idle)));
    }
    sql.push_str(" START TRANSACTION WITH CONSISTENT SNAPSHOT");
    sql
}

/// Runs `sql`, a statement MySQL commits implicitly, in the middle of a migration's
/// transaction, then begins a new transaction (as [`ConnectionSteps::begin`] does) in which
/// the rest of the body and the ledger row commit together. What the body wrote before it
/// is committed with it: the run is not atomic.
pub(crate) async fn execute_non_atomic_ddl(
    conn: &mut MySqlConnection,
    sql: &str,
) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut *conn)
        .await?;
    // `COMMIT` first: a statement that does not commit (a typo of DDL) must not leave the
    // old transaction open under the new one. Then the new transaction, which sqlx's
    // `Transaction` commits or rolls back at the end as it would have the first.
    for statement in [
        "COMMIT",
        "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
        "START TRANSACTION WITH CONSISTENT SNAPSHOT",
    ] {
        sqlx::raw_sql(statement).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The kind of statement `sql` is, when MySQL commits the transaction it runs in
/// (an implicit commit): DDL (`CREATE`, `ALTER`, `DROP`, `RENAME`, `TRUNCATE`; not on
/// temporary tables), `LOCK TABLES`, a new `BEGIN`, the table maintenance statements
/// (`ANALYZE`, `OPTIMIZE`, `REPAIR`), privileges, `FLUSH`. Told by its first words, before
/// it is sent.
pub(crate) fn implicit_commit(sql: &str) -> Option<String> {
    let words: Vec<String> = sql
        .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .filter(|w| !w.is_empty())
        .take(3)
        .map(str::to_ascii_uppercase)
        .collect();
    let first = words.first()?.as_str();
    let second = words.get(1).map_or("", String::as_str);
    let commits = match first {
        "CREATE" | "DROP" => second != "TEMPORARY",
        "ALTER" | "RENAME" | "TRUNCATE" | "GRANT" | "REVOKE" | "LOCK" | "UNLOCK" | "BEGIN"
        | "ANALYZE" | "OPTIMIZE" | "REPAIR" | "FLUSH" => true,
        "START" => second == "TRANSACTION",
        _ => false,
    };
    commits.then(|| words.iter().take(2).cloned().collect::<Vec<_>>().join(" "))
}

/// The start of a statement, for a message.
fn statement_head(sql: &str) -> String {
    let flat: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(100) {
        Some((cut, _)) => format!("{}..", &flat[..cut]),
        None => flat,
    }
}

#[cfg(test)]
mod tests {
    use super::implicit_commit;

    #[test]
    fn ddl_is_told_from_writes_by_its_first_words() {
        assert_eq!(
            implicit_commit("create table t (id int)").as_deref(),
            Some("CREATE TABLE")
        );
        assert_eq!(
            implicit_commit("  ALTER TABLE t ADD c int").as_deref(),
            Some("ALTER TABLE")
        );
        assert_eq!(implicit_commit("TRUNCATE t").as_deref(), Some("TRUNCATE T"));
        assert_eq!(implicit_commit("CREATE TEMPORARY TABLE s (id int)"), None);
        assert_eq!(implicit_commit("UPDATE t SET a = 1"), None);
        assert_eq!(implicit_commit("INSERT INTO t SELECT * FROM s"), None);
    }
}
