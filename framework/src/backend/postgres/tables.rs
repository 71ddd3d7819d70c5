//! PostgreSQL's steps on whole tables: columns and keys from the catalog, fingerprints
//! hashed in the server, rows written, sequences, `ANALYZE`.

use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Postgres, Row};

use super::sql::{query, query_as, query_scalar};
use crate::backend::steps::TableSteps;
use crate::backend::values::hex;
use crate::bulk::SequenceReset;
use crate::error::Error;
use crate::sql::quote_ident;

impl TableSteps for Postgres {
    async fn table_columns(
        conn: &mut PgConnection,
        schema: Option<&str>,
        table: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        let ident = match schema {
            Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(table)),
            None => quote_ident(table),
        };
        query_scalar(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
        )
        .bind(ident)
        .fetch_all(conn)
        .await
    }

    async fn user_tables(conn: &mut PgConnection) -> Result<Vec<(String, String)>, sqlx::Error> {
        // Ordinary and partitioned tables outside the system schemas.
        query_as(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
             ORDER BY 1, 2",
        )
        .fetch_all(conn)
        .await
    }

    async fn primary_key(
        conn: &mut PgConnection,
        schema: &str,
        table: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        query_scalar(
            "SELECT a.attname::text FROM pg_index i
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
             WHERE i.indrelid = $1::regclass AND i.indisprimary
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
        )
        .bind(format!("{}.{}", quote_ident(schema), quote_ident(table)))
        .fetch_all(conn)
        .await
    }

    async fn table_fingerprint(
        conn: &mut PgConnection,
        schema: &str,
        table: &str,
        key: &[String],
    ) -> Result<(i64, String), sqlx::Error> {
        let ident = format!("{}.{}", quote_ident(schema), quote_ident(table));
        let order = if key.is_empty() {
            "t::text".to_string()
        } else {
            key.iter()
                .map(|c| format!("t.{}", quote_ident(c)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Each row's text is hashed in the server, and the row hashes (32 bytes each)
        // stream to this process in key order, where they are hashed as they arrive: no
        // value grows with the table (aggregating them in the server fails past 1 GB), and
        // the result is the SHA-256 of the row hashes concatenated, as before.
        hash_rows(
            conn,
            format!(
                "SELECT sha256(convert_to(t::text, 'UTF8')) FROM {ident} AS t ORDER BY {order}"
            ),
        )
        .await
    }

    async fn rows_missing_from(
        conn: &mut PgConnection,
        _schema: &str,
        _table: &str,
        left: &str,
        right: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        query_scalar(AssertSqlSafe(format!(
            "SELECT r FROM (SELECT l::text FROM {left} AS l EXCEPT ALL SELECT r::text FROM {right} AS r)
             AS diff (r) ORDER BY r LIMIT 5"
        )))
        .fetch_all(conn)
        .await
    }

    async fn table_rows(
        conn: &mut PgConnection,
        schema: &str,
        table: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        query_scalar(AssertSqlSafe(format!(
            "SELECT t::text FROM {}.{} AS t",
            quote_ident(schema),
            quote_ident(table)
        )))
        .fetch_all(conn)
        .await
    }

    async fn write_count(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
        let n: i64 = query_scalar(
            "SELECT COALESCE(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint
             FROM pg_stat_xact_user_tables WHERE schemaname NOT LIKE 'pg\\_temp\\_%'",
        )
        .fetch_one(conn)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn reset_sequences(
        conn: &mut PgConnection,
        table: &str,
    ) -> Result<Vec<SequenceReset>, Error> {
        let mut resets = Vec::new();
        let quoted = quote_ident(table);
        let exists: bool = query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&quoted)
            .fetch_one(&mut *conn)
            .await?;
        if !exists {
            return Err(Error::Config(format!(
                "cannot reset the sequences of {table}: no such table"
            )));
        }
        let columns = query(
            "SELECT a.attname::text AS column_name, pg_get_serial_sequence($1, a.attname) AS sequence
             FROM pg_attribute a
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
               AND pg_get_serial_sequence($1, a.attname) IS NOT NULL
             ORDER BY a.attnum",
        )
        .bind(&quoted)
        .fetch_all(&mut *conn)
        .await?;
        for row in columns {
            let column: String = row.try_get("column_name")?;
            let sequence: String = row.try_get("sequence")?;
            let col = quote_ident(&column);
            // Never backwards, also while the application inserts: the sequence moves only
            // when the column's maximum has reached the value it would hand out next, and
            // then to that maximum; reading the sequence and moving it happen in one
            // expression. Descending sequences are left as they are.
            let sql = format!(
                "WITH seq AS (
                     SELECT pg_sequence_last_value($1::regclass) AS last,
                            s.seqstart AS start, s.seqincrement AS inc
                     FROM pg_sequence s WHERE s.seqrelid = $1::regclass),
                 m AS (SELECT max({col})::bigint AS max FROM {quoted})
                 SELECT CASE
                     WHEN seq.inc > 0 AND m.max IS NOT NULL AND m.max >= COALESCE(seq.last + seq.inc, seq.start)
                     THEN setval($1::regclass, m.max, true) + seq.inc
                     ELSE COALESCE(seq.last + seq.inc, seq.start) END
                 FROM seq, m"
            );
            let next_value: i64 = query_scalar(AssertSqlSafe(sql))
                .bind(&sequence)
                .fetch_one(&mut *conn)
                .await?;
            resets.push(SequenceReset {
                table: table.to_string(),
                column,
                sequence,
                next_value,
            });
        }
        Ok(resets)
    }

    async fn analyze(conn: &mut PgConnection, table: &str) -> Result<(), Error> {
        let quoted = quote_ident(table);
        let allowed: Option<(bool, String)> = query_as(
            "SELECT pg_has_role(current_user, c.relowner, 'USAGE')
                    OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
                    pg_get_userbyid(c.relowner)::text
             FROM pg_class c WHERE c.oid = to_regclass($1)",
        )
        .bind(&quoted)
        .fetch_optional(&mut *conn)
        .await?;
        match allowed {
            None => {
                return Err(Error::Config(format!(
                    "cannot analyze {table}: no such table"
                )));
            }
            Some((false, owner)) => {
                return Err(Error::Config(format!(
                    "cannot analyze {table}: only its owner ({owner}) or a superuser may, and this \
                     migration runs as another role; run ANALYZE as {owner}, or grant that role to this one"
                )));
            }
            Some((true, _)) => {}
        }
        query(AssertSqlSafe(format!("ANALYZE {quoted}")))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

/// Runs `sql`, a query of one `bytea` column (each row's SHA-256), and returns the number of
/// rows and the SHA-256 (hex) of their hashes concatenated, hashed as they stream in.
pub(crate) async fn hash_rows(
    conn: &mut PgConnection,
    sql: String,
) -> Result<(i64, String), sqlx::Error> {
    let mut all = Sha256::new();
    let mut rows = 0_i64;
    let mut stream = query_scalar::<Vec<u8>>(AssertSqlSafe(sql)).fetch(&mut *conn);
    while let Some(hash) = stream.try_next().await? {
        all.update(&hash);
        rows += 1;
    }
    Ok((rows, hex(&all.finalize())))
}
