//! The source's side of a follow, all through ordinary SQL on an ordinary connection: the
//! publication of the copied tables, the logical replication slot (plugin `pgoutput`),
//! reading its changes without consuming them (`pg_logical_slot_peek_binary_changes`),
//! confirming what the target committed (`pg_replication_slot_advance`), the WAL position,
//! the transactions writing now, and dropping both at the end.

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Row};

use crate::backend::postgres::{query, query_scalar};
use crate::copy::context::During;
use crate::copy::plan::Planned;
use crate::copy::sql::source_from;
use crate::error::Error;
use crate::sql::quote_ident;

/// The slot's and the publication's name for the copy `copy_id` into the target
/// `target` (its identity): `datamig_` and 16 hex digits of their SHA-256, so that two
/// copies of one source into two targets each have their own.
pub(in crate::copy) fn name(copy_id: &str, target: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{copy_id}\n{target}").as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("datamig_{hex}")
}

/// Tables of the plan the change stream cannot carry exactly: a replica identity other
/// than the primary key (the same in both databases) or the full row, on the table or,
/// for a partitioned one, a partition. A table without a primary key is followed with
/// `REPLICA IDENTITY FULL` (its rows matched by all their values), else refused.
pub(in crate::copy) async fn refuse_unkeyed(
    conn: &mut PgConnection,
    planned: &[Planned],
) -> Result<Vec<String>, Error> {
    let mut problems = Vec::new();
    for p in planned {
        let table = &p.plan.table;
        for c in p.plan.copied() {
            if p.source.column(&c.name).is_some_and(|s| s.generated) {
                problems.push(format!(
                    "column {table}.{} is generated in the source and stored in the target: the source's change stream does not carry generated columns, so --follow could not keep it current: make it a generated column in the target too, copy without --follow, or leave the table out (--exclude {table})",
                    c.name
                ));
            }
        }
        let rows = query(
            "SELECT format('%I.%I', c.relnamespace::regnamespace, c.relname) AS rel, c.relreplident::text AS ident,
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) AS keyed
             FROM pg_class c
             WHERE (c.oid = $1::regclass AND c.relkind = 'r')
                OR c.oid IN (SELECT relid FROM pg_partition_tree($1::regclass) WHERE isleaf)",
        )
        .bind(p.source.ident())
        .fetch_all(&mut *conn)
        .await
        .during(|| format!("reading the replica identity of source table {table}"))?;
        for row in rows {
            let rel: String = row.try_get("rel").during(|| table.clone())?;
            let ident: String = row.try_get("ident").during(|| table.clone())?;
            let keyed: bool = row.try_get("keyed").during(|| table.clone())?;
            if p.plan.key.is_empty() {
                if ident != "f" {
                    problems.push(format!(
                        "table {table} has no primary key (the same in both databases) and source table {rel} no REPLICA IDENTITY FULL: its updates and deletes would not say which row they change. Run ALTER TABLE {rel} REPLICA IDENTITY FULL on the source (rows are then matched by all their values), or add a primary key to both (ALTER TABLE {table} ADD PRIMARY KEY (..)), or leave the table out (--exclude {table})"
                    ));
                }
                continue;
            }
            let fine = ident == "f" || (ident == "d" && keyed);
            if !fine {
                let what = match ident.as_str() {
                    "n" => "replica identity NOTHING",
                    "i" => "a replica identity of another index than its primary key",
                    _ => "no primary key on the source to identify its rows by",
                };
                problems.push(format!(
                    "source table {rel} has {what}: its updates and deletes would not carry the key --follow applies them by. Run ALTER TABLE {rel} REPLICA IDENTITY DEFAULT (with a primary key) or ALTER TABLE {rel} REPLICA IDENTITY FULL on the source, or leave {table} out (--exclude {table})"
                ));
            }
        }
    }
    Ok(problems)
}

/// Whether logical decoding is possible on the source, or what to change.
pub(in crate::copy) async fn check_source(conn: &mut PgConnection) -> Result<(), Error> {
    let level: String = query_scalar("SELECT current_setting('wal_level')")
        .fetch_one(&mut *conn)
        .await
        .during(|| "reading the source's wal_level".into())?;
    if level != "logical" {
        return Err(Error::CopyRefused(format!(
            "--follow reads the source's changes by logical decoding, and the source's wal_level is {level}: set wal_level = logical on the source (ALTER SYSTEM SET wal_level = logical, then restart it); nothing was written"
        )));
    }
    Ok(())
}

/// Frees the slot from a server process still reading it for a follower that is gone
/// (killed: the server notices only when its function returns): the caller holds the
/// follow's lock, so no live follower of this copy reads it. Waits until it is free.
pub(in crate::copy) async fn take_over(conn: &mut PgConnection, name: &str) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let active: Option<Option<i32>> =
            query_scalar("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1")
                .bind(name)
                .fetch_optional(&mut *conn)
                .await
                .during(|| format!("looking for replication slot {name} on the source"))?;
        let Some(Some(pid)) = active else {
            return Ok(());
        };
        let _ = query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&mut *conn)
            .await;
        if std::time::Instant::now() >= deadline {
            return Err(Error::CopyRefused(format!(
                "replication slot {name} on the source is held by server process {pid}, left by a follower of this copy that is gone, and the source role may not end it: end it (SELECT pg_terminate_backend({pid})) and run the copy again"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Drops the slot and the publication where they exist (a follow recorded nowhere, left
/// by a copy killed while creating them; or the end of a follow).
pub(in crate::copy) async fn remove(conn: &mut PgConnection, name: &str) -> Result<(), Error> {
    let active: Option<Option<i32>> =
        query_scalar("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await
            .during(|| format!("looking for replication slot {name} on the source"))?;
    if let Some(pid) = active {
        if let Some(pid) = pid {
            return Err(Error::CopyRefused(format!(
                "replication slot {name} on the source is in use by server process {pid} (a follower of this copy reading it): stop that follower first"
            )));
        }
        query("SELECT pg_drop_replication_slot($1)")
            .bind(name)
            .execute(&mut *conn)
            .await
            .during(|| format!("dropping replication slot {name} on the source"))?;
    }
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP PUBLICATION IF EXISTS {}",
        quote_ident(name)
    )))
    .execute(&mut *conn)
    .await
    .during(|| format!("dropping publication {name} on the source"))?;
    Ok(())
}

/// Creates the publication of the planned tables, then the slot; returns the slot's
/// consistent point. In that order: `pgoutput` reads the publication through the catalog
/// as it was at each change, so the publication must exist before the first change the
/// slot decodes. `pg_create_logical_replication_slot` returns once the slot is
/// consistent: every transaction committing after that point is in its stream.
pub(in crate::copy) async fn create(
    conn: &mut PgConnection,
    name: &str,
    planned: &[Planned],
) -> Result<u64, Error> {
    let tables: Vec<String> = planned.iter().map(|p| source_from(&p.source)).collect();
    let sql = format!(
        "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)",
        quote_ident(name),
        tables.join(", ")
    );
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *conn).await.map_err(|err| {
        Error::CopyRefused(format!(
            "--follow publishes the copied tables on the source, and creating publication {name} failed ({}): the source role needs CREATE on the database and to own the tables (or be a superuser); nothing was written",
            crate::error::describe_sqlx(&err)
        ))
    })?;
    let lsn: Result<String, sqlx::Error> = query_scalar(
        "SELECT (lsn - '0/0')::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
    )
    .bind(name)
    .fetch_one(&mut *conn)
    .await;
    let lsn = match lsn {
        Ok(lsn) => lsn,
        Err(err) => {
            let _ = remove(conn, name).await;
            return Err(Error::CopyRefused(format!(
                "--follow creates a logical replication slot on the source, and creating slot {name} failed ({}): the source role needs the REPLICATION attribute (or to be a superuser) and the source a free slot (max_replication_slots); nothing was written",
                crate::error::describe_sqlx(&err)
            )));
        }
    };
    Ok(lsn.parse().unwrap_or(0))
}

/// Waits until every transaction running just after the slot was created has left the
/// server's list of running transactions.
///
/// Why: a transaction writes its commit record before it leaves that list. One whose
/// commit record precedes the slot's consistent point is not in the slot's stream; were it
/// still listed when the copy's snapshot is taken, the snapshot would not show it either,
/// and its changes would be in neither. Every such transaction is listed in a snapshot
/// taken now (after the slot returned); once none of those is listed any more, a snapshot
/// taken afterwards shows each of them that committed.
pub(in crate::copy) async fn settle(conn: &mut PgConnection) -> Result<(), Error> {
    let first: String = query_scalar("SELECT pg_current_snapshot()::text")
        .fetch_one(&mut *conn)
        .await
        .during(|| "reading the source's running transactions".into())?;
    let Some(first) = super::snapshot::Snapshot::parse(&first) else {
        return Ok(());
    };
    loop {
        let now: String = query_scalar("SELECT pg_current_snapshot()::text")
            .fetch_one(&mut *conn)
            .await
            .during(|| "reading the source's running transactions".into())?;
        let Some(now) = super::snapshot::Snapshot::parse(&now) else {
            return Ok(());
        };
        if !first.running.iter().any(|x| now.running.contains(x)) {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Whether the slot exists.
pub(in crate::copy) async fn exists(conn: &mut PgConnection, name: &str) -> Result<bool, Error> {
    query_scalar("SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)")
        .bind(name)
        .fetch_one(conn)
        .await
        .during(|| format!("looking for replication slot {name} on the source"))
}

/// The source's WAL position now, and its next transaction id.
pub(in crate::copy) async fn position(conn: &mut PgConnection) -> Result<(u64, u64), Error> {
    let (lsn, next): (String, String) = sqlx::query_as(
        "SELECT (pg_current_wal_lsn() - '0/0')::text, pg_snapshot_xmax(pg_current_snapshot())::text",
    )
    .fetch_one(conn)
    .await
    .during(|| "reading the source's WAL position".into())?;
    Ok((lsn.parse().unwrap_or(0), next.parse().unwrap_or(0)))
}

/// Confirms to the source that everything before `lsn` is applied: the slot's WAL before
/// it may go.
pub(in crate::copy) async fn advance(
    conn: &mut PgConnection,
    name: &str,
    lsn: u64,
) -> Result<(), Error> {
    // Never backwards (the slot refuses): a cut-over's position may lie before what an
    // earlier peek confirmed.
    query(
        "SELECT pg_replication_slot_advance(slot_name, '0/0'::pg_lsn + $2::numeric)
         FROM pg_replication_slots
         WHERE slot_name = $1 AND confirmed_flush_lsn < '0/0'::pg_lsn + $2::numeric",
    )
    .bind(name)
    .bind(lsn.to_string())
    .execute(conn)
    .await
    .during(|| {
        format!(
            "confirming position {} to replication slot {name}",
            lsn_text(lsn)
        )
    })?;
    Ok(())
}

/// The peek of at most about `changes` changes (whole transactions) up to `upto`.
pub(in crate::copy) fn peek_sql() -> &'static str {
    "SELECT data FROM pg_logical_slot_peek_binary_changes($1, CASE WHEN $2::text IS NULL THEN NULL ELSE '0/0'::pg_lsn + $2::numeric END, $3,
         'proto_version', '1', 'publication_names', $1)"
}

/// A transaction writing on the source now.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Writer {
    /// Its server process.
    pub pid: i32,
    /// Its role.
    pub user: String,
    /// Its `application_name`.
    pub application: String,
    /// Its client's address.
    pub client: String,
    /// Seconds since its transaction began.
    pub seconds: f64,
    /// The start of its current statement.
    pub query: String,
}

/// The transactions writing on the source's database now (each holds a transaction id),
/// other than this session.
pub(in crate::copy) async fn writers(conn: &mut PgConnection) -> Result<Vec<Writer>, Error> {
    let rows = query(
        "SELECT pid, COALESCE(usename::text, '') AS usename, COALESCE(application_name, '') AS app,
                COALESCE(client_addr::text, 'local') AS client,
                COALESCE(extract(epoch FROM clock_timestamp() - xact_start), 0)::float8 AS seconds,
                left(COALESCE(query, ''), 120) AS query
         FROM pg_stat_activity
         WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() AND datname = current_database()
         ORDER BY xact_start",
    )
    .fetch_all(conn)
    .await
    .during(|| "reading the source's write transactions (pg_stat_activity)".into())?;
    rows.iter()
        .map(|r| {
            Ok(Writer {
                pid: r.try_get("pid")?,
                user: r.try_get("usename")?,
                application: r.try_get("app")?,
                client: r.try_get("client")?,
                seconds: r.try_get("seconds")?,
                query: r.try_get("query")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .during(|| "reading the source's write transactions (pg_stat_activity)".into())
}

/// An LSN as PostgreSQL writes it (`16/B374D848`).
pub(in crate::copy) fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}
