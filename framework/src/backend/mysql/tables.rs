//! MySQL's steps on whole tables: columns and keys from `information_schema`, fingerprints
//! hashed in the client as the rows stream in, rows written from InnoDB's own count of the
//! transaction's, the `AUTO_INCREMENT` counter, `ANALYZE TABLE`.

use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};
use sqlx::mysql::MySqlConnection;
use sqlx::{AssertSqlSafe, Connection, MySql, Row};

use super::sql::{ident, query_as, query_scalar};
use crate::backend::steps::TableSteps;
use crate::backend::values::hex;
use crate::bulk::SequenceReset;
use crate::error::Error;

impl TableSteps for MySql {
    async fn table_columns(
        conn: &mut MySqlConnection,
        schema: Option<&str>,
        table: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        query_scalar(
            "SELECT CAST(COLUMN_NAME AS char) FROM information_schema.COLUMNS
             WHERE TABLE_SCHEMA = coalesce($1, DATABASE()) AND TABLE_NAME = $2
             ORDER BY ORDINAL_POSITION",
        )
        .bind(schema)
        .bind(table)
        .fetch_all(conn)
        .await
    }

    async fn user_tables(conn: &mut MySqlConnection) -> Result<Vec<(String, String)>, sqlx::Error> {
        query_as(
            "SELECT CAST(TABLE_SCHEMA AS char), CAST(TABLE_NAME AS char)
             FROM information_schema.TABLES
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE'
             ORDER BY TABLE_NAME",
        )
        .fetch_all(conn)
        .await
    }

    async fn primary_key(
        conn: &mut MySqlConnection,
        schema: &str,
        table: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        query_scalar(
            "SELECT CAST(COLUMN_NAME AS char) FROM information_schema.KEY_COLUMN_USAGE
             WHERE TABLE_SCHEMA = $1 AND TABLE_NAME = $2 AND CONSTRAINT_NAME = 'PRIMARY'
             ORDER BY ORDINAL_POSITION",
        )
        .bind(schema)
        .bind(table)
        .fetch_all(conn)
        .await
    }

    async fn table_fingerprint(
        conn: &mut MySqlConnection,
        schema: &str,
        table: &str,
        key: &[String],
    ) -> Result<(i64, String), sqlx::Error> {
        let text = row_text(conn, schema, table).await?;
        let order = if key.is_empty() {
            "1".to_string()
        } else {
            key.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ")
        };
        let sql = format!(
            "SELECT {text} FROM {}.{} ORDER BY {order}",
            ident(schema),
            ident(table)
        );
        // The scheme of the other backends: each row's text hashed, the row hashes hashed
        // in key order, in the client. The rows stream through; only the digest is kept.
        let mut all = Sha256::new();
        let mut rows = 0_i64;
        let mut stream = sqlx::query_scalar::<_, Vec<u8>>(AssertSqlSafe(sql)).fetch(&mut *conn);
        while let Some(row) = stream.try_next().await? {
            all.update(Sha256::digest(&row));
            rows += 1;
        }
        Ok((rows, hex(&all.finalize())))
    }

    async fn rows_missing_from(
        conn: &mut MySqlConnection,
        schema: &str,
        table: &str,
        left: &str,
        right: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        let text = row_text(conn, schema, table).await?;
        let rows: Vec<Vec<u8>> = query_scalar(AssertSqlSafe(format!(
            "SELECT r FROM (SELECT {text} AS r FROM {left} EXCEPT ALL SELECT {text} FROM {right})
             AS diff ORDER BY r LIMIT 5"
        )))
        .fetch_all(conn)
        .await?;
        Ok(rows
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect())
    }

    async fn table_rows(
        conn: &mut MySqlConnection,
        schema: &str,
        table: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        let text = row_text(conn, schema, table).await?;
        let rows: Vec<Vec<u8>> = query_scalar(AssertSqlSafe(format!(
            "SELECT {text} FROM {}.{}",
            ident(schema),
            ident(table)
        )))
        .fetch_all(conn)
        .await?;
        Ok(rows
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect())
    }

    /// The undo log entries of this transaction: 0 before it writes.
    const WRITE_COUNT_OF_TRANSACTION: bool = true;

    /// InnoDB's count of the rows this session's transaction has modified: inserted,
    /// updated and deleted, rows rewritten with equal values left out (MySQL does not write
    /// a row whose values do not change), rows of temporary tables counted. 0 outside a
    /// transaction.
    ///
    /// Read from the transaction's `undo log entries` in `SHOW ENGINE INNODB STATUS`, the
    /// number `information_schema.INNODB_TRX` shows as `trx_rows_modified`: that view is a
    /// cache InnoDB refreshes at most every 100 ms, and a reading right after a statement
    /// would miss it. Both need the `PROCESS` privilege; only the proof
    /// (`check-idempotency`, a re-run) reads it.
    async fn write_count(conn: &mut MySqlConnection) -> Result<u64, sqlx::Error> {
        // Both in one round trip: a text query of two statements, two result sets.
        let rows =
            sqlx::raw_sql("SELECT CAST(CONNECTION_ID() AS signed); SHOW ENGINE INNODB STATUS")
                .fetch_all(conn)
                .await?;
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Err(sqlx::Error::Protocol(
                "SELECT CONNECTION_ID(); SHOW ENGINE INNODB STATUS returned no row".into(),
            ));
        };
        let id: i64 = first.try_get(0)?;
        let status: String = last.try_get(2)?;
        Ok(undo_entries(&status, id))
    }

    /// InnoDB moves a table's `AUTO_INCREMENT` counter past every key inserted with an
    /// explicit value, in the same statement: there is nothing to move, unlike a
    /// PostgreSQL sequence. Reports the counter as it stands.
    async fn reset_sequences(
        conn: &mut MySqlConnection,
        table: &str,
    ) -> Result<Vec<SequenceReset>, Error> {
        let column: Option<String> = query_scalar(
            "SELECT CAST(COLUMN_NAME AS char) FROM information_schema.COLUMNS
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = $1
               AND EXTRA LIKE '%auto_increment%'",
        )
        .bind(table)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(column) = column else {
            return Ok(Vec::new());
        };
        // `information_schema.TABLES.AUTO_INCREMENT` may be cached (MySQL 8's
        // `information_schema_stats_expiry`); the next value is past the largest key in
        // any case.
        let next: Option<i64> = query_scalar(AssertSqlSafe(format!(
            "SELECT CAST(coalesce(max({}), 0) + 1 AS signed) FROM {}",
            ident(&column),
            ident(table)
        )))
        .fetch_one(&mut *conn)
        .await?;
        Ok(vec![SequenceReset {
            table: table.to_string(),
            column,
            sequence: "AUTO_INCREMENT".to_string(),
            next_value: next.unwrap_or(1),
        }])
    }

    /// `ANALYZE TABLE`, which MySQL commits implicitly: refused inside a migration's
    /// transaction, where it would commit the migration's writes without its ledger row.
    async fn analyze(conn: &mut MySqlConnection, table: &str) -> Result<(), Error> {
        if conn.is_in_transaction() {
            return Err(Error::Config(format!(
                "ANALYZE TABLE {table} commits the transaction it runs in on MySQL, and would \
                 commit the migration's writes before its ledger row: run it after the \
                 migration (outside its transaction), or rely on InnoDB's automatic statistics"
            )));
        }
        // `ANALYZE TABLE` answers with a result set of its messages.
        let rows: Vec<(String, String, String, String)> =
            query_as(AssertSqlSafe(format!("ANALYZE TABLE {}", ident(table))))
                .fetch_all(conn)
                .await?;
        if let Some((_, _, _, text)) = rows.iter().find(|(_, kind, ..)| kind == "Error") {
            return Err(Error::Config(format!(
                "ANALYZE TABLE {table} failed: {text}"
            )));
        }
        Ok(())
    }
}

/// Each row as one text: its values `QUOTE()`d (strings quoted and escaped, numbers as
/// they print, `NULL` bare) and joined by commas, as bytes (a binary column's bytes are
/// not text).
async fn row_text(
    conn: &mut MySqlConnection,
    schema: &str,
    table: &str,
) -> Result<String, sqlx::Error> {
    let columns: Vec<String> = query_scalar(
        "SELECT CAST(COLUMN_NAME AS char) FROM information_schema.COLUMNS
         WHERE TABLE_SCHEMA = $1 AND TABLE_NAME = $2 ORDER BY ORDINAL_POSITION",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    if columns.is_empty() {
        return Ok("CAST('' AS binary)".to_string());
    }
    Ok(format!(
        "CAST(CONCAT_WS(',', {}) AS binary)",
        columns
            .iter()
            .map(|c| format!("QUOTE({})", ident(c)))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// The undo log entries of the transaction of session `id` in the text of
/// `SHOW ENGINE INNODB STATUS` (0 without one: no transaction, or nothing written).
fn undo_entries(status: &str, id: i64) -> u64 {
    // MariaDB writes "MariaDB thread id N,", MySQL "MySQL thread id N,".
    let session = format!(" thread id {id},");
    status
        .split("---TRANSACTION ")
        .find(|block| block.contains(&session))
        .and_then(|block| {
            let rest = &block[block.find("undo log entries ")? + "undo log entries ".len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::undo_entries;

    #[test]
    fn the_undo_entries_of_this_sessions_transaction_are_read_from_the_status() {
        let status = "LIST OF TRANSACTIONS FOR EACH SESSION:
---TRANSACTION 61, ACTIVE 2 sec
2 lock struct(s), heap size 1128, 1 row lock(s), undo log entries 7
MariaDB thread id 110, OS thread handle 1, query id 9 localhost root
---TRANSACTION 58, ACTIVE 0 sec
1 lock struct(s), heap size 1128, 0 row lock(s), undo log entries 2
MySQL thread id 10, OS thread handle 1, query id 69 localhost root starting
---TRANSACTION 421, not started
MariaDB thread id 11, OS thread handle 1, query id 70 localhost root
--------
FILE I/O";
        assert_eq!(undo_entries(status, 10), 2);
        assert_eq!(undo_entries(status, 110), 7);
        assert_eq!(undo_entries(status, 11), 0);
        assert_eq!(undo_entries(status, 12), 0);
    }
}
