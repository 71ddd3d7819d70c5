//! What differs between MariaDB and MySQL 8, told by the server's version, and the
//! server's error numbers.

use sqlx::mysql::{MySqlConnection, MySqlDatabaseError};

/// The server behind a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Server {
    /// MariaDB (10.x, 11.x): `max_statement_time`, `VALUES()` in an upsert,
    /// `@@in_transaction`.
    MariaDb,
    /// MySQL (8.0 on): `max_execution_time`, the row alias in an upsert.
    MySql,
}

impl Server {
    /// The server behind `conn`, from its version string (MariaDB's says so).
    pub(super) async fn of(conn: &mut MySqlConnection) -> Result<Server, sqlx::Error> {
        let version: String = sqlx::query_scalar("SELECT VERSION()")
            .fetch_one(conn)
            .await?;
        Ok(Self::from_version(&version))
    }

    /// The server a version string names.
    pub(super) fn from_version(version: &str) -> Server {
        if version.to_ascii_lowercase().contains("mariadb") {
            Server::MariaDb
        } else {
            Server::MySql
        }
    }
}

/// The server's error number of a database error (`1205` for a lock wait timeout).
pub(super) fn error_number(err: &sqlx::Error) -> Option<u16> {
    err.as_database_error()
        .and_then(|e| e.try_downcast_ref::<MySqlDatabaseError>())
        .map(MySqlDatabaseError::number)
}

#[cfg(test)]
mod tests {
    use super::Server;

    #[test]
    fn mariadb_says_so_in_its_version_and_mysql_does_not() {
        assert_eq!(
            Server::from_version("10.11.6-MariaDB-0+deb12u1"),
            Server::MariaDb
        );
        assert_eq!(Server::from_version("8.0.36"), Server::MySql);
    }
}
