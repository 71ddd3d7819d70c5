//! SQLite's steps on whole tables: columns and keys from `pragma_table_info`, fingerprints
//! hashed as the rows stream in, rows written, the `AUTOINCREMENT` counter, `ANALYZE`.

use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};
use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Sqlite};

use crate::backend::steps::TableSteps;
use crate::backend::values::hex;
use crate::bulk::SequenceReset;
use crate::error::Error;
use crate::sql::quote_ident;

impl TableSteps for Sqlite {
    async fn table_columns(
        conn: &mut SqliteConnection,
        schema: Option<&str>,
        table: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT name FROM pragma_table_info($1, $2) ORDER BY cid")
            .bind(table)
            .bind(schema.unwrap_or("main"))
            .fetch_all(conn)
            .await
    }

    async fn user_tables(
        conn: &mut SqliteConnection,
    ) -> Result<Vec<(String, String)>, sqlx::Error> {
        // The main database's tables; SQLite's own (`sqlite_%`) are left out.
        sqlx::query_as(
            "SELECT 'main', name FROM sqlite_master
             WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
             ORDER BY name",
        )
        .fetch_all(conn)
        .await
    }

    async fn primary_key(
        conn: &mut SqliteConnection,
        schema: &str,
        table: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT name FROM pragma_table_info($1, $2) WHERE pk > 0 ORDER BY pk")
            .bind(table)
            .bind(schema)
            .fetch_all(conn)
            .await
    }

    async fn table_fingerprint(
        conn: &mut SqliteConnection,
        schema: &str,
        table: &str,
        key: &[String],
    ) -> Result<(i64, String), sqlx::Error> {
        let text = row_text(conn, schema, table).await?;
        let order = if key.is_empty() {
            "1".to_string()
        } else {
            key.iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let ident = format!("{}.{}", quote_ident(schema), quote_ident(table));
        let sql = format!("SELECT {text} FROM {ident} ORDER BY {order}");
        // The same scheme as PostgreSQL's: each row's text hashed, the row hashes hashed in
        // key order. The rows stream through; only the running digest is kept.
        let mut all = Sha256::new();
        let mut rows = 0_i64;
        let mut stream = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql)).fetch(&mut *conn);
        while let Some(row) = stream.try_next().await? {
            all.update(Sha256::digest(row.as_bytes()));
            rows += 1;
        }
        Ok((rows, hex(&all.finalize())))
    }

    async fn rows_missing_from(
        conn: &mut SqliteConnection,
        schema: &str,
        table: &str,
        left: &str,
        right: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        let text = row_text(conn, schema, table).await?;
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT {text} FROM {left} EXCEPT SELECT {text} FROM {right} ORDER BY 1 LIMIT 5"
        )))
        .fetch_all(conn)
        .await
    }

    async fn table_rows(
        conn: &mut SqliteConnection,
        schema: &str,
        table: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        let text = row_text(conn, schema, table).await?;
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT {text} FROM {}.{}",
            quote_ident(schema),
            quote_ident(table)
        )))
        .fetch_all(conn)
        .await
    }

    async fn write_count(conn: &mut SqliteConnection) -> Result<u64, sqlx::Error> {
        let n: i64 = sqlx::query_scalar("SELECT total_changes()")
            .fetch_one(conn)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn reset_sequences(
        conn: &mut SqliteConnection,
        table: &str,
    ) -> Result<Vec<SequenceReset>, Error> {
        let sql: Option<String> =
            sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = $1")
                .bind(table)
                .fetch_optional(&mut *conn)
                .await?;
        let Some(sql) = sql else {
            return Err(Error::Config(format!(
                "cannot reset the sequences of {table}: no such table"
            )));
        };
        // Only an AUTOINCREMENT key has a counter; a plain INTEGER PRIMARY KEY always takes
        // the largest rowid + 1 and needs nothing.
        if !sql.to_ascii_uppercase().contains("AUTOINCREMENT") {
            return Ok(Vec::new());
        }
        let column: String =
            sqlx::query_scalar("SELECT name FROM pragma_table_info($1) WHERE pk = 1")
                .bind(table)
                .fetch_one(&mut *conn)
                .await?;
        let max: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT coalesce(max(rowid), 0) FROM {}",
            quote_ident(table)
        )))
        .fetch_one(&mut *conn)
        .await?;
        // Never backwards: the counter keeps its value when it is already past the rows.
        let updated = sqlx::query("UPDATE sqlite_sequence SET seq = max(seq, $2) WHERE name = $1")
            .bind(table)
            .bind(max)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        if updated == 0 {
            sqlx::query("INSERT INTO sqlite_sequence (name, seq) VALUES ($1, $2)")
                .bind(table)
                .bind(max)
                .execute(&mut *conn)
                .await?;
        }
        let seq: i64 = sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = $1")
            .bind(table)
            .fetch_one(&mut *conn)
            .await?;
        Ok(vec![SequenceReset {
            table: table.to_string(),
            column,
            sequence: "sqlite_sequence".to_string(),
            next_value: seq + 1,
        }])
    }

    async fn analyze(conn: &mut SqliteConnection, table: &str) -> Result<(), Error> {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1)",
        )
        .bind(table)
        .fetch_one(&mut *conn)
        .await?;
        if !exists {
            return Err(Error::Config(format!(
                "cannot analyze {table}: no such table"
            )));
        }
        sqlx::query(AssertSqlSafe(format!("ANALYZE {}", quote_ident(table))))
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// Each row as one text: its values `quote()`d and joined by commas.
async fn row_text(
    conn: &mut SqliteConnection,
    schema: &str,
    table: &str,
) -> Result<String, sqlx::Error> {
    let columns: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pragma_table_info($1, $2) ORDER BY cid")
            .bind(table)
            .bind(schema)
            .fetch_all(conn)
            .await?;
    if columns.is_empty() {
        return Ok("''".to_string());
    }
    Ok(columns
        .iter()
        .map(|c| format!("quote({})", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(" || ',' || "))
}
