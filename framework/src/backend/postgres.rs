//! PostgreSQL: session advisory lock, `set_config(.., true)` timeouts, ledger DDL.

use std::time::Duration;

use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{AssertSqlSafe, Connection, Executor, Postgres, Row, SqlSafeStr, SqlStr};

use super::dialect::{Actor, Dialect};
use super::shared::Shared;
pub(crate) use super::shared::bind_key_value;
use super::steps::Steps;
use super::{Backend, KeyColumn, LockToken, hex};
use crate::bulk::SequenceReset;
use crate::copy_text::RowSink;
use crate::error::Error;
use crate::key::{Key, KeyKind, KeyShape, KeyValue};
use crate::ledger::{
    Attempt, Claim, LAYOUT, LastRun, LedgerConfig, LedgerEntry, Pause, RangeStep, WorkRange,
};
use crate::merge::{NextRow, Plan, Source, UpsertReport, UpsertRequest, stage_name};
use crate::migration::{Code, Migration};
use crate::session::SessionInfo;
use crate::sql::quote_ident;

impl Backend for Postgres {}

impl Steps for Postgres {
    const ID: &'static str = "postgres";
    const CLOSE_RUNNER_CONNECTION: bool = true;
    const PIN_IN_TRANSACTION: bool = true;

    const DIALECT: Dialect = Dialect {
        actor: Actor::DatabaseUser,
        persistent: false,
    };

    fn rows_affected(result: &<Self as sqlx::Database>::QueryResult) -> u64 {
        result.rows_affected()
    }

    async fn execute(conn: &mut PgConnection, sql: SqlStr) -> Result<u64, sqlx::Error> {
        Shared::<Self>::execute(conn, sql).await
    }

    async fn fetch_i64(conn: &mut PgConnection, sql: SqlStr) -> Result<Option<i64>, sqlx::Error> {
        Shared::<Self>::fetch_i64(conn, sql).await
    }

    async fn execute_keyed(
        conn: &mut PgConnection,
        sql: SqlStr,
        values: &[KeyValue],
    ) -> Result<u64, sqlx::Error> {
        Shared::<Self>::execute_keyed(conn, sql, values).await
    }

    async fn check_scope(
        conn: &mut PgConnection,
        table: &str,
        scope: &str,
    ) -> Result<(), sqlx::Error> {
        Shared::<Self>::check_scope(conn, table, scope).await
    }

    async fn has_keys_after(
        conn: &mut PgConnection,
        shape: &KeyShape,
        after: &Key,
        upper: Option<&Key>,
    ) -> Result<bool, sqlx::Error> {
        Shared::<Self>::has_keys_after(conn, shape, after, upper).await
    }

    async fn pause_state(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        id: Option<&str>,
    ) -> Result<Vec<Pause>, sqlx::Error> {
        Shared::<Self>::pause_state(conn, config, id).await
    }

    async fn read_ledger(
        conn: &mut PgConnection,
        config: &LedgerConfig,
    ) -> Result<Vec<LedgerEntry>, sqlx::Error> {
        Shared::<Self>::read_ledger(conn, config).await
    }

    fn code(migration: &Migration) -> Option<Code<Self>> {
        migration.postgres_code()
    }

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

    async fn begin(
        conn: &mut PgConnection,
        _lock_timeout: Option<Duration>,
    ) -> Result<sqlx::Transaction<'_, Postgres>, sqlx::Error> {
        conn.begin().await
    }

    async fn upsert(
        conn: &mut PgConnection,
        request: UpsertRequest<'_>,
    ) -> Result<(UpsertReport, u64), Error> {
        // Staging tables are temporary, which `write_count` leaves out.
        Ok((upsert(conn, request).await?, 0))
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

    async fn ledger_exists(
        conn: &mut PgConnection,
        config: &LedgerConfig,
    ) -> Result<bool, sqlx::Error> {
        query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(config.ledger_ident())
            .fetch_one(conn)
            .await
    }

    async fn last_runs(
        conn: &mut PgConnection,
        config: &LedgerConfig,
    ) -> Result<Vec<LastRun>, sqlx::Error> {
        Shared::<Self>::last_runs(conn, config).await
    }

    async fn try_lock(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        _token: &LockToken,
    ) -> Result<bool, sqlx::Error> {
        // A session-level advisory lock: it dies with the session, so a runner that is
        // killed cannot leave it behind.
        let key = lock_key(&mut *conn, config).await?;
        let taken: bool = query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        // Runners of one ledger with the other lock (during a move to a pooler) must keep
        // out too: a live lease holds the ledger. (A lease is taken under the same key as a
        // transaction-level lock, so no lease can appear between these two statements.)
        if taken && lease_holder(&mut *conn, config).await?.is_some() {
            query("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .execute(conn)
                .await?;
            return Ok(false);
        }
        Ok(taken)
    }

    async fn unlock(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        _token: &LockToken,
    ) -> Result<(), sqlx::Error> {
        let key = lock_key(&mut *conn, config).await?;
        query("SELECT pg_advisory_unlock($1)")
            .bind(key)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn reset_statements(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        conn.clear_cached_statements().await?;
        sqlx::raw_sql(AssertSqlSafe("DEALLOCATE ALL".to_string()))
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn try_lease(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<bool, Error> {
        let key = lock_key(&mut *conn, config).await?;
        match ensure_lease_table(conn, config, key).await {
            // An advisory holder of this ledger runs: poll again.
            Err(Error::Database(err)) if Self::is_lock_timeout(&err) => return Ok(false),
            other => other?,
        }
        let mut tx = conn.begin().await?;
        // A runner of this ledger holding the advisory lock (connected directly, during a
        // move to a pooler) keeps leases out: this transaction-level lock on the same key
        // is not granted while it holds it, and it sees the lease once this commits.
        let clear: bool = query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
        if !clear {
            return Ok(false);
        }
        // A holder's renewal in flight holds the row for a moment; never queue behind it.
        query("SELECT set_config('lock_timeout', '2s', true)")
            .execute(&mut *tx)
            .await?;
        // Taken when missing or expired, in one statement: two runners racing for an
        // expired lease queue on its row, and the second finds it taken. Times are the
        // server's, so the runners' clocks do not matter.
        let sql = format!(
            "INSERT INTO {lease} AS l (id, token, host, pid, acquired_at, renewed_at, expires_at)
             VALUES (1, $1, $2, $3, clock_timestamp(), clock_timestamp(),
                     clock_timestamp() + $4 * interval '1 millisecond')
             ON CONFLICT (id) DO UPDATE SET token = excluded.token, host = excluded.host,
                 pid = excluded.pid, db_user = current_user, acquired_at = excluded.acquired_at,
                 renewed_at = excluded.renewed_at, expires_at = excluded.expires_at
             WHERE l.expires_at <= clock_timestamp()
             RETURNING token",
            lease = config.lease_ident()
        );
        let taken: Result<Option<String>, sqlx::Error> = query_scalar(AssertSqlSafe(sql))
            .bind(token.as_str())
            .bind(crate::session::host_name())
            .bind(i64::from(std::process::id()))
            .bind(millis(ttl))
            .fetch_optional(&mut *tx)
            .await;
        match taken {
            Ok(taken) => {
                tx.commit().await?;
                Ok(taken.is_some())
            }
            Err(err) if Self::is_lock_timeout(&err) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    async fn renew_lease(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = conn.begin().await?;
        let sql = format!(
            "UPDATE {} SET renewed_at = clock_timestamp(),
                 expires_at = clock_timestamp() + $2 * interval '1 millisecond'
             WHERE id = 1 AND token = $1 AND expires_at > clock_timestamp()",
            config.lease_ident()
        );
        let done = query(AssertSqlSafe(sql))
            .bind(token)
            .bind(millis(ttl))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_lease(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        token: &LockToken,
    ) -> Result<(), sqlx::Error> {
        let mut tx = conn.begin().await?;
        query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE id = 1 AND token = $1",
            config.lease_ident()
        )))
        .bind(token.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    async fn lease_lost(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        token: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        let sql = format!(
            "SELECT token = $1, expires_at > clock_timestamp(), host, pid, expires_at::text
             FROM {} WHERE id = 1",
            config.lease_ident()
        );
        let row: Option<(bool, bool, String, i64, String)> = query_as(AssertSqlSafe(sql))
            .bind(token)
            .fetch_optional(conn)
            .await?;
        Ok(match row {
            None => Some("the lease was released: `datamig unlock` removed it".to_string()),
            Some((true, true, ..)) => None,
            Some((true, false, _, _, expires_at)) => Some(format!(
                "the lease expired at {expires_at}, not renewed in time"
            )),
            Some((false, _, host, pid, _)) => Some(format!(
                "the lease expired and datamig process {pid} on {host} holds it now"
            )),
        })
    }

    async fn pooler_evidence(
        conn: &mut PgConnection,
        options: &sqlx::postgres::PgConnectOptions,
    ) -> Result<Option<String>, sqlx::Error> {
        // Plain-text queries only: they pass any pooler in one exchange.
        let first = backend_pid(conn).await?;
        let mut other = PgConnection::connect_with(options).await?;
        let second = backend_pid(&mut other).await;
        let again = backend_pid(conn).await;
        let _ = other.close().await;
        let (second, again) = (second?, again?);
        Ok(if second == first {
            Some(format!(
                "two connections were served by one server session, process {first}"
            ))
        } else if again != first {
            Some(format!(
                "the server session changed from process {first} to {again} between two statements"
            ))
        } else {
            None
        })
    }

    async fn set_local_timeouts(
        conn: &mut PgConnection,
        lock_timeout: Option<Duration>,
        statement_timeout: Option<Duration>,
        idle_in_transaction: Option<Duration>,
    ) -> Result<(), sqlx::Error> {
        // `set_config(.., true)` is `SET LOCAL` with a bound value: it ends with the transaction.
        for (name, value) in [
            ("lock_timeout", lock_timeout),
            ("statement_timeout", statement_timeout),
            ("idle_in_transaction_session_timeout", idle_in_transaction),
        ] {
            if let Some(value) = value {
                query("SELECT set_config($1, $2, true)")
                    .bind(name)
                    .bind(format!("{}ms", value.as_millis().max(1)))
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(())
    }

    async fn write_ledger(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        a: &Attempt,
    ) -> Result<bool, sqlx::Error> {
        Shared::<Self>::write_ledger(conn, config, a).await
    }

    async fn key_columns(
        conn: &mut PgConnection,
        table: &str,
        names: &[&str],
    ) -> Result<Option<Vec<Option<KeyColumn>>>, sqlx::Error> {
        let table_ident = quote_ident(table);
        let exists: bool = query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&table_ident)
            .fetch_one(&mut *conn)
            .await?;
        if !exists {
            return Ok(None);
        }
        let mut columns = Vec::with_capacity(names.len());
        for name in names {
            // A domain is walked as its base type.
            let column: Option<(i64, String, String, bool, i64)> = query_as(
                "SELECT a.attnum::bigint, format_type(a.atttypid, a.atttypmod),
                        coalesce(bt.typname, t.typname)::text, a.attnotnull, a.attcollation::bigint
                 FROM pg_attribute a
                 JOIN pg_type t ON t.oid = a.atttypid
                 LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
                 WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND a.attnum > 0
                   AND NOT a.attisdropped",
            )
            .bind(&table_ident)
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
            columns.push(
                column.map(|(number, sql_type, base, not_null, collation)| KeyColumn {
                    name: name.to_string(),
                    sql_type,
                    kind: match base.as_str() {
                        "int2" | "int4" | "int8" => Some(KeyKind::Integer),
                        "date" | "timestamp" | "timestamptz" => Some(KeyKind::Temporal),
                        "uuid" | "text" | "varchar" | "bpchar" | "citext" | "numeric" | "bytea" => {
                            Some(KeyKind::Other)
                        }
                        _ => None,
                    },
                    not_null,
                    not_integers: 0,
                    number,
                    collation,
                }),
            );
        }
        Ok(Some(columns))
    }

    async fn key_index(
        conn: &mut PgConnection,
        table: &str,
        columns: &[KeyColumn],
    ) -> Result<Option<String>, sqlx::Error> {
        // A valid, complete (not partial) B-tree index whose leading columns are the key's,
        // in order, in the columns' own collations and default operator classes, all in one
        // direction: the one shape that serves `ORDER BY key` and `(key) > (..)` together.
        type Candidate = (String, Vec<i16>, Vec<i64>, Vec<bool>, Vec<i16>);
        let candidates: Vec<Candidate> = query_as(
            "SELECT c.relname::text,
                    ARRAY(SELECT x FROM unnest(i.indkey::int2[]) WITH ORDINALITY u(x, n) ORDER BY n),
                    ARRAY(SELECT x::bigint FROM unnest(i.indcollation::oid[]) WITH ORDINALITY u(x, n) ORDER BY n),
                    ARRAY(SELECT o.opcdefault FROM unnest(i.indclass::oid[]) WITH ORDINALITY u(x, n)
                          JOIN pg_opclass o ON o.oid = u.x ORDER BY n),
                    ARRAY(SELECT x FROM unnest(i.indoption::int2[]) WITH ORDINALITY u(x, n) ORDER BY n)
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indexrelid
             JOIN pg_am am ON am.oid = c.relam
             WHERE i.indrelid = to_regclass($1) AND am.amname = 'btree' AND i.indisvalid
               AND i.indpred IS NULL
             ORDER BY i.indisprimary DESC, i.indnkeyatts, c.relname",
        )
        .bind(quote_ident(table))
        .fetch_all(conn)
        .await?;
        let n = columns.len();
        Ok(candidates
            .into_iter()
            .find(|(_, keys, collations, defaults, options)| {
                keys.len() >= n
                    && collations.len() >= n
                    && defaults.len() >= n
                    && options.len() >= n
                    && columns.iter().enumerate().all(|(i, c)| {
                        i64::from(keys[i]) == c.number && collations[i] == c.collation
                    })
                    && defaults[..n].iter().all(|d| *d)
                    && options[..n].iter().all(|o| (o & 1) == (options[0] & 1))
            })
            .map(|(name, ..)| name))
    }

    async fn next_batch(
        conn: &mut PgConnection,
        shape: &KeyShape,
        after: Option<&Key>,
        upper: Option<&Key>,
        size: u32,
    ) -> Result<Option<(Key, u64)>, sqlx::Error> {
        let sql = shape.next_batch_sql(after.is_some(), upper.is_some());
        let mut q = query(AssertSqlSafe(sql));
        for value in after
            .map(Key::values)
            .unwrap_or_default()
            .iter()
            .chain(upper.map(Key::values).unwrap_or_default())
        {
            q = bind_key_value(q, value);
        }
        let Some(row) = q.bind(i64::from(size)).fetch_optional(conn).await? else {
            return Ok(None);
        };
        let keys: i64 = row.try_get(shape.parts.len())?;
        Ok(Some((
            key_of_row(shape, &row)?,
            u64::try_from(keys).unwrap_or(0),
        )))
    }

    async fn estimate_rows(
        conn: &mut PgConnection,
        shape: &KeyShape,
        after: Option<&Key>,
        upper: Option<&Key>,
    ) -> Result<Option<u64>, sqlx::Error> {
        // The planner's estimate: free, and close enough for a progress bar.
        let mut q = query(AssertSqlSafe(format!(
            "EXPLAIN {}",
            shape.rows_after_sql(after.is_some(), upper.is_some())
        )));
        for value in after
            .map(Key::values)
            .unwrap_or_default()
            .iter()
            .chain(upper.map(Key::values).unwrap_or_default())
        {
            q = bind_key_value(q, value);
        }
        let first: String = match q.fetch_optional(conn).await? {
            Some(row) => row.try_get(0)?,
            None => String::new(),
        };
        Ok(first
            .split("rows=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok()))
    }

    async fn tag_session(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
        query("SELECT set_config('application_name', $1, false)")
            .bind(name)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn lock_holders(
        conn: &mut PgConnection,
        config: &LedgerConfig,
    ) -> Result<Vec<SessionInfo>, sqlx::Error> {
        let key = lock_key(&mut *conn, config).await?;
        // A bigint advisory key is stored as two 32-bit halves.
        let sql = format!(
            "{SESSION_COLUMNS} FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.classid::bigint = (($1::bigint >> 32) & 4294967295) AND l.objid::bigint = ($1::bigint & 4294967295)
               AND l.objsubid = 1"
        );
        let rows = query(AssertSqlSafe(sql))
            .bind(key)
            .fetch_all(&mut *conn)
            .await?;
        let mut holders = rows
            .iter()
            .map(session_info)
            .collect::<Result<Vec<_>, _>>()?;
        holders.extend(lease_holder(conn, config).await?);
        Ok(holders)
    }

    async fn release_lock_holder(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        pid: i32,
    ) -> Result<bool, sqlx::Error> {
        // A lease names its runner's process; an advisory lock, its server session.
        if lease_holder(conn, config)
            .await?
            .is_some_and(|h| h.pid == pid)
        {
            let done = query(AssertSqlSafe(format!(
                "DELETE FROM {} WHERE id = 1 AND pid = $1",
                config.lease_ident()
            )))
            .bind(i64::from(pid))
            .execute(conn)
            .await?;
            return Ok(done.rows_affected() == 1);
        }
        query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(conn)
            .await
    }

    async fn blocking_sessions(conn: &mut PgConnection) -> Result<Vec<SessionInfo>, sqlx::Error> {
        let sql = format!(
            "{SESSION_COLUMNS} FROM pg_stat_activity a
             WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'
               AND (a.state IN ('idle in transaction', 'idle in transaction (aborted)')
                    OR a.wait_event_type = 'Lock'
                    OR cardinality(pg_blocking_pids(a.pid)) > 0
                    OR (a.state = 'active' AND a.xact_start < now() - interval '1 minute'))
             ORDER BY a.xact_start NULLS LAST"
        );
        let rows = query(AssertSqlSafe(sql)).fetch_all(conn).await?;
        rows.iter().map(session_info).collect()
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

    async fn server_version(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
        query_scalar("SELECT version()").fetch_one(conn).await
    }

    fn is_lock_timeout(err: &sqlx::Error) -> bool {
        // 55P03 lock_not_available: raised when lock_timeout expires.
        err.as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|c| c == "55P03")
    }

    const CHECKS_REST: bool = true;

    const REST_GUARD: &'static str = "pg_temp.datamig_rest_has_work()";

    async fn begin_rest_check(conn: &mut PgConnection, limit: Duration) -> Result<(), sqlx::Error> {
        // One statement reads the whole scope: a custom plan for it (a generic one would
        // not see that the bounds cover most of the table), and no JIT, whose compilation
        // the guard's cost would trigger. The guard's cost sorts it after the statement's
        // own conditions, so it is called only for a row the statement would change.
        query(AssertSqlSafe(format!(
            "SELECT set_config('plan_cache_mode', 'force_custom_plan', true),
                    set_config('jit', 'off', true),
                    set_config('statement_timeout', '{}ms', true)",
            limit.as_millis().max(1)
        )))
        .execute(&mut *conn)
        .await?;
        query(
            "CREATE OR REPLACE FUNCTION pg_temp.datamig_rest_has_work() RETURNS boolean
             LANGUAGE plpgsql VOLATILE COST 1000 AS $$
             BEGIN
                 RAISE EXCEPTION USING ERRCODE = 'DMR01',
                     MESSAGE = 'datamig: a row after the checkpoint still needs work';
             END $$",
        )
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn end_rest_check(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        query("DROP FUNCTION pg_temp.datamig_rest_has_work()")
            .execute(conn)
            .await?;
        Ok(())
    }

    fn is_rest_work(err: &sqlx::Error) -> bool {
        err.as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|c| c == "DMR01")
    }

    async fn last_key(
        conn: &mut PgConnection,
        shape: &KeyShape,
        after: Option<&Key>,
    ) -> Result<Option<Key>, sqlx::Error> {
        let mut q = query(AssertSqlSafe(shape.last_key_sql(after.is_some())));
        for value in after.map(Key::values).unwrap_or_default() {
            q = bind_key_value(q, value);
        }
        match q.fetch_optional(conn).await? {
            Some(row) => key_of_row(shape, &row).map(Some),
            None => Ok(None),
        }
    }

    const WORKERS: bool = true;

    async fn ensure_ranges(conn: &mut PgConnection, config: &LedgerConfig) -> Result<(), Error> {
        super::ranges::ensure(conn, config).await
    }

    async fn read_ranges(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        id: Option<&str>,
    ) -> Result<Vec<WorkRange>, sqlx::Error> {
        super::ranges::read(conn, config, id).await
    }

    async fn replace_ranges(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        id: &str,
        bounds: &[(Option<String>, Option<String>)],
    ) -> Result<(), Error> {
        Ok(super::ranges::replace(conn, config, id, bounds).await?)
    }

    async fn claim_range(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        id: &str,
        claim: &Claim,
    ) -> Result<Option<i32>, Error> {
        Ok(super::ranges::claim(conn, config, id, claim).await?)
    }

    async fn release_range(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        id: &str,
        number: i32,
        claim: &Claim,
    ) -> Result<(), Error> {
        Ok(super::ranges::release(conn, config, id, number, claim).await?)
    }

    async fn hold_range(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        id: &str,
        number: i32,
        token: &str,
    ) -> Result<Option<(Option<String>, Option<String>, i64)>, sqlx::Error> {
        super::ranges::hold(conn, config, id, number, token).await
    }

    async fn advance_range(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        id: &str,
        number: i32,
        claim: &Claim,
        step: &RangeStep,
    ) -> Result<(), sqlx::Error> {
        super::ranges::advance(conn, config, id, number, claim, step).await
    }

    async fn finish_ranges(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        attempt: &Attempt,
    ) -> Result<bool, sqlx::Error> {
        super::ranges::finish(conn, config, attempt).await
    }

    async fn split_keys(
        conn: &mut PgConnection,
        shape: &KeyShape,
        after: Option<&Key>,
        pieces: usize,
    ) -> Result<Vec<Key>, Error> {
        Ok(super::ranges::split(conn, shape, after, pieces).await?)
    }

    async fn record_run(
        conn: &mut PgConnection,
        config: &LedgerConfig,
        a: &Attempt,
        error: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        Shared::<Self>::record_run(conn, config, a, error).await
    }
}

// Every statement of this backend is prepared unnamed (`persistent(false)`): it then lives
// only until the next one, on the server session that runs it. A named statement
// (`sqlx_s_N`) stays in its server session, where through a transaction pooler another
// client may meet it ("prepared statement \"sqlx_s_1\" already exists"), or miss it.

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

pub(crate) fn query<'q>(
    sql: impl SqlSafeStr,
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql).persistent(false)
}

pub(crate) fn query_scalar<'q, O>(
    sql: impl SqlSafeStr,
) -> sqlx::query::QueryScalar<'q, Postgres, O, sqlx::postgres::PgArguments>
where
    (O,): for<'r> sqlx::FromRow<'r, PgRow>,
{
    sqlx::query_scalar(sql).persistent(false)
}

pub(crate) fn query_as<'q, O>(
    sql: impl SqlSafeStr,
) -> sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments>
where
    O: for<'r> sqlx::FromRow<'r, PgRow>,
{
    sqlx::query_as(sql).persistent(false)
}

/// A duration in whole milliseconds, for `$n * interval '1 millisecond'`.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The server process serving this session, asked in plain text (one exchange).
async fn backend_pid(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
    let row = sqlx::raw_sql(AssertSqlSafe("SELECT pg_backend_pid()::text".to_string()))
        .fetch_one(conn)
        .await?;
    row.try_get(0)
}

/// Creates the lease table where it is missing, under a transaction-level advisory lock
/// (which, unlike a session's, holds through a transaction pooler): concurrent
/// `CREATE TABLE IF NOT EXISTS` can collide. A role without `CREATE` gets a clear error.
async fn ensure_lease_table(
    conn: &mut PgConnection,
    config: &LedgerConfig,
    key: i64,
) -> Result<(), Error> {
    let lease = config.lease_ident();
    let mut tx = conn.begin().await?;
    let exists: bool = query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&lease)
        .fetch_one(&mut *tx)
        .await?;
    if exists {
        return Ok(());
    }
    query("SELECT set_config('lock_timeout', '2s', true)")
        .execute(&mut *tx)
        .await?;
    query("SELECT pg_advisory_xact_lock($1)")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    let schema = match config.schema_name() {
        Some(schema) => format!("CREATE SCHEMA IF NOT EXISTS {};", quote_ident(schema)),
        None => String::new(),
    };
    let ddl = format!(
        "{schema}
        CREATE TABLE IF NOT EXISTS {lease} (
            id          integer PRIMARY KEY CHECK (id = 1),
            token       text NOT NULL,
            host        text NOT NULL,
            pid         bigint NOT NULL,
            db_user     text NOT NULL DEFAULT current_user,
            acquired_at timestamptz NOT NULL,
            renewed_at  timestamptz NOT NULL,
            expires_at  timestamptz NOT NULL
        )"
    );
    if let Err(err) = sqlx::raw_sql(AssertSqlSafe(ddl)).execute(&mut *tx).await {
        if err
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|c| c == "42501")
        {
            return Err(Error::Config(format!(
                "the lease table {lease} of the lease lock does not exist, and this role may not \
                 create it ({}): run `datamig run --lock lease` once as the owner of the schema \
                 (or a role with CREATE on it), then this role needs SELECT, INSERT, UPDATE, \
                 DELETE on {lease}",
                crate::error::describe_sqlx(&err)
            )));
        }
        return Err(err.into());
    }
    tx.commit().await?;
    Ok(())
}

/// The holder of an unexpired lease, as a session: its runner's process id and name.
async fn lease_holder(
    conn: &mut PgConnection,
    config: &LedgerConfig,
) -> Result<Option<SessionInfo>, sqlx::Error> {
    let exists: bool = query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(config.lease_ident())
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(None);
    }
    let sql = format!(
        "SELECT host, pid, db_user, expires_at::text,
                (extract(epoch FROM clock_timestamp() - acquired_at) * 1000)::bigint,
                (extract(epoch FROM clock_timestamp() - renewed_at) * 1000)::bigint
         FROM {} WHERE id = 1 AND expires_at > clock_timestamp()",
        config.lease_ident()
    );
    let row: Option<(String, i64, String, String, i64, i64)> =
        query_as(AssertSqlSafe(sql)).fetch_optional(conn).await?;
    Ok(row.map(
        |(host, pid, user, expires_at, held_ms, renewed_ms)| SessionInfo {
            pid: i32::try_from(pid).unwrap_or(i32::MAX),
            user: Some(user),
            application_name: format!("datamig/{host}/{pid}"),
            client_addr: None,
            state: Some(format!(
                "holds the lease until {expires_at} (renewed {renewed_ms} ms ago)"
            )),
            transaction_age_ms: None,
            state_age_ms: Some(held_ms),
            wait_event_type: None,
            blocked_by: Vec::new(),
            query: None,
            lease: true,
        },
    ))
}

/// The runner lock's key, with the ledger's schema resolved against this session's
/// `current_schema()` (asked only when a schema is configured).
async fn lock_key(conn: &mut PgConnection, config: &LedgerConfig) -> Result<i64, sqlx::Error> {
    if config.schema_name().is_none() {
        return Ok(config.lock_key());
    }
    let current: Option<String> = query_scalar("SELECT current_schema()::text")
        .fetch_one(conn)
        .await?;
    Ok(match current {
        Some(current) => config.lock_key_in(&current),
        None => config.lock_key(),
    })
}

pub(crate) const SESSION_COLUMNS: &str = "SELECT a.pid, a.usename::text AS db_user, COALESCE(a.application_name, '') AS application_name,
        a.client_addr::text AS client_addr, a.state,
        (extract(epoch FROM now() - a.xact_start) * 1000)::bigint AS transaction_age_ms,
        (extract(epoch FROM now() - a.state_change) * 1000)::bigint AS state_age_ms,
        a.wait_event_type, pg_blocking_pids(a.pid) AS blocked_by, left(a.query, 500) AS query";

pub(crate) fn session_info(row: &PgRow) -> Result<SessionInfo, sqlx::Error> {
    Ok(SessionInfo {
        pid: row.try_get("pid")?,
        user: row.try_get("db_user")?,
        application_name: row.try_get("application_name")?,
        client_addr: row.try_get("client_addr")?,
        state: row.try_get("state")?,
        transaction_age_ms: row.try_get("transaction_age_ms")?,
        state_age_ms: row.try_get("state_age_ms")?,
        wait_event_type: row.try_get("wait_event_type")?,
        blocked_by: row.try_get("blocked_by")?,
        query: row.try_get("query")?,
        lease: false,
    })
}

/// The counts an upsert's statement returns: source rows, inserted, updated.
const COUNT_RETURNED: &str =
    "count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM ins";

/// One statement: the source, the `INSERT .. ON CONFLICT .. RETURNING (xmax = 0)` and the
/// counts (`xmax = 0` tells an inserted row from an updated one).
async fn upsert(
    conn: &mut PgConnection,
    request: UpsertRequest<'_>,
) -> Result<UpsertReport, Error> {
    let distinct =
        |current: &str, incoming: &str| format!("ROW({current}) IS DISTINCT FROM ROW({incoming})");
    match &request.source {
        Source::Missing => unreachable!("checked by the builder"),
        Source::Query(sql) => {
            let columns = query_columns(conn, sql).await?;
            let plan = Plan::new(&request, &columns, distinct)?;
            let counted = format!(
                "WITH src AS MATERIALIZED ({sql}), ins AS ({} RETURNING (xmax = 0) AS inserted)
                 SELECT (SELECT count(*) FROM src), {COUNT_RETURNED}",
                plan.insert_from("SELECT * FROM src"),
            );
            run_counted(conn, &request.table, counted).await
        }
        Source::Rows { columns, .. } => {
            let plan = Plan::new(&request, columns, distinct)?;
            let UpsertRequest {
                source,
                table,
                target,
                ..
            } = request;
            let Source::Rows { next, .. } = source else {
                unreachable!("matched above")
            };
            let stage = stage_rows(conn, &target, &plan.column_list, next).await?;
            let counted = format!(
                "WITH ins AS ({} RETURNING (xmax = 0) AS inserted)
                 SELECT (SELECT count(*) FROM {stage}), {COUNT_RETURNED}",
                plan.insert_from(&format!("SELECT * FROM {stage}")),
            );
            // On failure the transaction is aborted and `ON COMMIT DROP` (or the rollback)
            // removes the staging table; only a successful upsert drops it now, so that a
            // migration can stage again.
            let report = run_counted(conn, &table, counted).await?;
            query(AssertSqlSafe(format!("DROP TABLE {stage}")))
                .execute(&mut *conn)
                .await?;
            Ok(report)
        }
    }
}

async fn run_counted(
    conn: &mut PgConnection,
    table: &str,
    sql: String,
) -> Result<UpsertReport, Error> {
    let row = query(AssertSqlSafe(sql))
        .fetch_one(conn)
        .await
        .map_err(|err| explain_upsert_error(table, err))?;
    let total: i64 = row.try_get(0)?;
    let inserted: i64 = row.try_get(1)?;
    let updated: i64 = row.try_get(2)?;
    let as_u64 = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(UpsertReport {
        inserted: as_u64(inserted),
        updated: as_u64(updated),
        unchanged: as_u64(total - inserted - updated),
    })
}

fn explain_upsert_error(table: &str, err: sqlx::Error) -> Error {
    let code = err
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    match code.as_deref() {
        // "ON CONFLICT DO UPDATE command cannot affect row a second time"
        Some("21000") => Error::Config(format!(
            "the rows for the upsert into {table} hold the same key more than once; each key may appear once"
        )),
        // "there is no unique or exclusion constraint matching the ON CONFLICT specification"
        Some("42P10") => Error::Config(format!(
            "the upsert key of {table} is not a primary key or unique index of the table"
        )),
        _ => Error::Database(err),
    }
}

/// The column names of a query's result, from the server's description of it.
async fn query_columns(conn: &mut PgConnection, sql: &str) -> Result<Vec<String>, Error> {
    use sqlx::{Column, Statement};
    let statement = (&mut *conn)
        .prepare(AssertSqlSafe(sql.to_string()).into_sql_str())
        .await?;
    Ok(statement
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect())
}

/// Streams rows into a temporary staging table shaped like the target's columns; returns its
/// quoted name. The table is dropped at the end of the transaction at the latest.
async fn stage_rows(
    conn: &mut PgConnection,
    target: &str,
    columns: &str,
    mut next: NextRow<'_>,
) -> Result<String, Error> {
    let stage = stage_name("stage");
    query(AssertSqlSafe(format!(
        "CREATE TEMPORARY TABLE {stage} ON COMMIT DROP AS SELECT {columns} FROM {target} WITH NO DATA"
    )))
    .execute(&mut *conn)
    .await?;

    let mut copy = conn
        .copy_in_raw(&format!("COPY {stage} ({columns}) FROM STDIN"))
        .await?;
    let mut buf = Vec::with_capacity(1 << 20);
    loop {
        let more = next(RowSink::Copy(&mut buf));
        if buf.len() >= 1 << 20 || (!more && !buf.is_empty()) {
            copy.send(std::mem::take(&mut buf)).await?;
            buf.reserve(1 << 20);
        }
        if !more {
            break;
        }
    }
    copy.finish().await?;
    Ok(stage)
}

/// The key in the first columns of a row of `KeyShape::select_list`.
fn key_of_row(shape: &KeyShape, row: &PgRow) -> Result<Key, sqlx::Error> {
    let mut values = Vec::with_capacity(shape.parts.len());
    for (i, part) in shape.parts.iter().enumerate() {
        values.push(match part.kind {
            KeyKind::Integer => KeyValue::Integer(row.try_get(i)?),
            _ => KeyValue::Text(row.try_get(i)?),
        });
    }
    Ok(Key(values))
}
