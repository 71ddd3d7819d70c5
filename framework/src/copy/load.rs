//! A copy's run: connections and the shared snapshot, the plan's checks against the
//! databases, chunks, the workers that stream them, and what follows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tracing::Instrument;

use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection, Row};
use tokio::sync::Notify;
use tokio::sync::mpsc::{Receiver, Sender};

use super::catalog::{self, Table, TableName, display};
use super::convert::Conversion;
use super::plan::{self, Planned};
use super::{
    Copier, CopyEvent, CopyMode, CopyPlan, CopyReport, EventSink, SequenceSet, Source, TableReport,
    Triggers, UnconvertibleValue, Verification,
};
#[cfg(feature = "sqlite")]
use super::{RowDifference, sqlite};
use crate::backend::postgres::{
    SESSION_COLUMNS, hash_rows, query, query_as, query_scalar, session_info,
};
use crate::error::Error;
use crate::fingerprint::{Fingerprint, TableFingerprint};
use crate::sql::quote_ident;

const PROGRESS_TABLE: &str = "datamig_copy_progress";
/// Bytes of `COPY` data gathered before they are sent on: rows arrive one message each.
pub(super) const SEND_BYTES: usize = 1 << 20;
/// Buffers of [`SEND_BYTES`] in flight between reading the source and writing the target.
const BUFFERS: usize = 3;
/// How long a connection may take to open.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A key position: each key column's value as text; `None` is the open end.
type Bound = Option<Vec<String>>;

/// One chunk of a table: the keys in `(lower, upper]`.
#[derive(Clone, Debug)]
pub(super) struct Chunk {
    pub(super) number: usize,
    pub(super) lower: Bound,
    pub(super) upper: Bound,
    pub(super) done: bool,
    pub(super) rows: u64,
}

impl Chunk {
    /// The whole table, in one chunk.
    pub(super) fn whole() -> Chunk {
        Chunk {
            number: 1,
            lower: None,
            upper: None,
            done: false,
            rows: 0,
        }
    }

    /// The chunks between these bounds, in order (the first and last open-ended).
    pub(super) fn between(bounds: Vec<Vec<String>>) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        let mut lower: Bound = None;
        for (i, bound) in bounds.into_iter().map(Some).chain([None]).enumerate() {
            chunks.push(Chunk {
                number: i + 1,
                lower: lower.clone(),
                upper: bound.clone(),
                done: false,
                rows: 0,
            });
            lower = bound;
        }
        chunks
    }
}

/// What a run is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Purpose {
    /// The copy.
    Run,
    /// The plan only (a SQLite source's rows are read and checked): nothing written.
    Plan,
    /// The plan, then the comparison of both sides: nothing written.
    Compare,
}

/// A connection to the source.
pub(super) enum Reader {
    Postgres(PgConnection),
    #[cfg(feature = "sqlite")]
    /// A reader of a SQLite file (taken by its blocking thread while it reads).
    Sqlite(Option<rusqlite::Connection>),
}

/// One copy (or plan, or comparison) in the span `copy` (see [`crate::trace`]).
pub(super) async fn run(copier: &Copier, purpose: Purpose) -> Result<CopyReport, Error> {
    let span = tracing::info_span!(
        "copy",
        source = copier.source.kind(),
        purpose = ?purpose,
        mode = copier.mode.name(),
        jobs = copier.jobs,
        tables = tracing::field::Empty,
        rows = tracing::field::Empty,
        bytes = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    let started = Instant::now();
    let result = run_traced(copier, purpose).instrument(span.clone()).await;
    let duration_ms = crate::trace::millis(started.elapsed());
    span.record("duration_ms", duration_ms);
    match &result {
        Ok(report) => {
            span.record("tables", report.tables.len());
            span.record("rows", report.rows);
            span.record("bytes", report.bytes);
            span.record(
                "outcome",
                if report.already_copied {
                    "already_copied"
                } else {
                    "ok"
                },
            );
            tracing::info!(
                parent: &span,
                tables = report.tables.len(),
                rows = report.rows,
                bytes = report.bytes,
                duration_ms,
                "copy finished"
            );
        }
        Err(err) => {
            span.record("outcome", crate::trace::outcome(err));
            tracing::error!(parent: &span, error = %err, duration_ms, "copy failed");
        }
    }
    result
}

async fn run_traced(copier: &Copier, purpose: Purpose) -> Result<CopyReport, Error> {
    let started = Instant::now();
    let mut dst = connect(&copier.target, "target").await?;
    target_session(&mut dst, copier, false).await?;
    let mut target_tables = catalog::read(&mut dst).await?;

    // The source: its catalog and the name the copy goes by, read in the state every
    // reader of this run sees (an exported snapshot, or a SQLite file's write lock).
    let mut src;
    // A SQLite source's own connection: the catalog, the chunks, and the write lock held
    // while the readers start.
    #[cfg(feature = "sqlite")]
    let mut sqlite_main: Option<sqlx::sqlite::SqliteConnection> = None;
    let snapshot: String;
    let source_tables;
    let name;
    match &copier.source {
        Source::Postgres(options) => {
            let mut conn = connect(options, "source").await?;
            source_session(&mut conn).await?;
            if catalog::identity(&mut conn).await? == catalog::identity(&mut dst).await? {
                return Err(Error::CopyRefused(
                    "the source and the target are the same database: a copy needs two databases; check the two URLs".into(),
                ));
            }
            sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut conn)
                .await?;
            snapshot = query_scalar("SELECT pg_export_snapshot()")
                .fetch_one(&mut conn)
                .await?;
            source_tables = catalog::read(&mut conn).await?;
            name = catalog::copy_name(&mut conn).await?;
            src = Reader::Postgres(conn);
        }
        #[cfg(feature = "sqlite")]
        Source::Sqlite(options) => {
            let mut conn = sqlite::open(options).await?;
            if purpose == Purpose::Run {
                sqlite::hold_writers(&mut conn).await?;
            } else {
                sqlx::raw_sql("BEGIN").execute(&mut conn).await?;
            }
            let schema: String = query_scalar("SELECT current_schema()::text")
                .fetch_one(&mut dst)
                .await?;
            source_tables = sqlite::catalog(&mut conn, &schema, &target_tables).await?;
            name = sqlite::copy_name(options);
            snapshot = String::new();
            sqlite_main = Some(conn);
            src = Reader::Sqlite(if purpose == Purpose::Run {
                None
            } else {
                Some(sqlite::reader(options)?)
            });
        }
    }
    let from_sqlite = !matches!(src, Reader::Postgres(_));

    // datamig's ledger comes along from SQLite: created in the target where it is missing
    // (when the copy runs; a plan leaves it out and says so).
    let mut selection = copier.selection.clone();
    let mut left_out_extra = Vec::new();
    let source_has_ledger = source_tables
        .keys()
        .any(|t| plan::LEDGER_TABLES.contains(&t.1.as_str()));
    if selection.ledger && source_has_ledger {
        let missing = plan::LEDGER_TABLES.iter().any(|l| {
            !target_tables
                .keys()
                .any(|t| t.1 == *l && source_tables.contains_key(t))
        });
        if missing && purpose == Purpose::Run {
            ensure_target_ledger(&mut dst).await?;
            target_tables = catalog::read(&mut dst).await?;
        } else if missing {
            selection.ledger = false;
            left_out_extra.push(format!(
                "{} (datamig's ledger: created in the target and copied when the copy runs)",
                plan::LEDGER_TABLES.join(", ")
            ));
        }
    }
    // Triggers off where the role may and that changes nothing but the speed.
    let may_turn_off = may_disable_triggers(&mut dst).await?;
    let mut triggers_off = match copier.triggers {
        Triggers::On => false,
        Triggers::Off => true,
        Triggers::Auto => may_turn_off,
    };
    let plan_with = |off: bool| {
        plan::plan(
            &source_tables,
            &target_tables,
            &selection,
            copier.mode,
            off,
            from_sqlite.then_some(&copier.unix_time),
        )
        .map_err(|problems| Error::CopyPlan { problems })
    };
    let (mut planned, mut left_out) = plan_with(triggers_off)?;
    if copier.triggers == Triggers::Auto && triggers_off {
        let kept = tables_keeping_triggers(&mut dst).await?;
        if planned.iter().any(|p| kept.contains(&p.target.name)) {
            triggers_off = false;
            (planned, left_out) = plan_with(false)?;
        }
    }
    let resolved = Copier {
        triggers: if triggers_off {
            Triggers::Off
        } else {
            Triggers::On
        },
        ..copier.clone()
    };
    let copier = &resolved;
    left_out.extend(left_out_extra);

    let mut problems = Vec::new();
    if from_sqlite {
        for column in copier.unix_time.keys() {
            let known = planned.iter().any(|p| {
                column.rsplit_once('.').is_some_and(|(t, c)| {
                    plan::names(t, &p.source.name) && p.plan.copied().any(|x| x.name == c)
                })
            });
            if !known {
                problems.push(format!(
                    "--unix-time names {column}, which is no copied column (write TABLE.COLUMN)"
                ));
            }
        }
    }
    if triggers_off && !may_turn_off {
        problems.push(
            "--triggers off sets session_replication_role, which the target role may not: copy as a superuser, GRANT SET ON PARAMETER session_replication_role TO the role (PostgreSQL 15 and later), or copy with --triggers on".to_string(),
        );
    }
    if copier.sequences && purpose == Purpose::Run {
        for p in &planned {
            for s in p.target.sequences.iter().filter(|s| !s.can_update) {
                problems.push(format!(
                    "the target role may not read and set sequence {} (of {}.{}), which the copy moves past the copied values: GRANT SELECT, UPDATE ON SEQUENCE {} TO it, or copy with --no-sequences",
                    s.sequence, p.plan.table, s.column, s.sequence
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::CopyPlan { problems });
    }
    #[cfg(feature = "sqlite")]
    let conversions: Vec<Vec<Conversion>> = planned
        .iter()
        .map(|p| {
            if from_sqlite {
                sqlite::conversions(p, &copier.unix_time)
            } else {
                Vec::new()
            }
        })
        .collect();
    #[cfg(not(feature = "sqlite"))]
    let conversions: Vec<Vec<Conversion>> = vec![Vec::new(); planned.len()];

    if purpose == Purpose::Compare {
        let verification = verify(&mut src, &mut dst, &planned, &conversions).await?;
        let plan = CopyPlan {
            copy: name,
            mode: copier.mode,
            tables: planned.iter().map(|p| p.plan.clone()).collect(),
            left_out,
            resumed: false,
            from_sqlite,
            triggers_off,
            unconvertible: Vec::new(),
            unconvertible_total: 0,
        };
        let mut report = empty_report(plan, &planned);
        report.verification = Some(verification);
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    let copy_id = match copier.mode {
        CopyMode::Merge => format!("{name} merge"),
        _ => name,
    };
    let progress = match &copier.progress_schema {
        Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(PROGRESS_TABLE)),
        None => quote_ident(PROGRESS_TABLE),
    };
    let progress_exists: bool = query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&progress)
        .fetch_one(&mut dst)
        .await?;
    let mut recorded = if progress_exists {
        read_progress(&mut dst, &progress, &copy_id).await?
    } else {
        BTreeMap::new()
    };
    let finished_pass = !recorded.is_empty() && recorded.values().flatten().all(|c| c.done);
    let restart = copier.mode == CopyMode::DangerouslyTruncate
        || (copier.mode == CopyMode::Merge && finished_pass);
    if restart {
        recorded.clear();
    }

    if copier.mode == CopyMode::Empty {
        let mut occupied = Vec::new();
        for p in &planned {
            let ours = recorded
                .get(&p.plan.table)
                .is_some_and(|chunks| chunks.iter().any(|c| c.done));
            if !ours && has_rows(&mut dst, &p.target).await? {
                occupied.push(p.plan.table.clone());
            }
        }
        if !occupied.is_empty() {
            return Err(Error::CopyRefused(format!(
                "target table(s) {} already hold rows this copy did not write; nothing was written. Empty them, copy with --mode merge to insert missing rows and update changed ones by primary key, or with --mode dangerously-truncate to empty them first",
                occupied.join(", ")
            )));
        }
    }

    let mut chunks: Vec<Vec<Chunk>> = Vec::new();
    for p in &mut planned {
        let table_chunks = match recorded.get(&p.plan.table) {
            Some(existing) if !existing.is_empty() => existing.clone(),
            _ => match &mut src {
                Reader::Postgres(conn) => split(conn, p, copier.chunk_rows).await?,
                #[cfg(feature = "sqlite")]
                Reader::Sqlite(_) => match sqlite_main.as_mut() {
                    Some(conn) => sqlite::split(conn, p, copier.chunk_rows).await?,
                    None => Vec::new(),
                },
            },
        };
        p.plan.chunks = table_chunks.len();
        p.plan.chunks_done = table_chunks.iter().filter(|c| c.done).count();
        chunks.push(table_chunks);
    }
    #[cfg_attr(not(feature = "sqlite"), allow(unused_mut))]
    let mut plan = CopyPlan {
        copy: copy_id.clone(),
        mode: copier.mode,
        tables: planned.iter().map(|p| p.plan.clone()).collect(),
        left_out,
        resumed: planned.iter().any(|p| p.plan.chunks_done > 0),
        from_sqlite,
        triggers_off,
        unconvertible: Vec::new(),
        unconvertible_total: 0,
    };
    if purpose == Purpose::Plan {
        #[cfg(feature = "sqlite")]
        if let Reader::Sqlite(conn) = &mut src {
            let (found, total) = sqlite::scan(conn, &planned, &conversions, 1000).await?;
            plan.unconvertible = found;
            plan.unconvertible_total = total;
        }
        let mut report = empty_report(plan, &planned);
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    let mut report = empty_report(plan.clone(), &planned);

    if !progress_exists {
        create_progress_table(&mut dst, &progress, copier.progress_schema.as_deref()).await?;
    }
    let locked: bool =
        query_scalar("SELECT pg_try_advisory_lock(hashtext('datamig copy'), hashtext($1))")
            .bind(&copy_id)
            .fetch_one(&mut dst)
            .await?;
    if !locked {
        return Err(Error::CopyRefused(format!(
            "another copy ({copy_id}) into this target is running; wait for it to finish"
        )));
    }
    record_plan(
        &mut dst, copier, &progress, &copy_id, &planned, &chunks, restart,
    )
    .await?;
    emit(&copier.on_event, &CopyEvent::Planned { plan: plan.clone() });

    // A SQLite source: the workers' readers (and one for verification) start their read
    // transactions while this connection holds the write lock, then it lets writers go.
    #[cfg_attr(not(feature = "sqlite"), allow(unused_mut))]
    let mut readers = Vec::new();
    #[cfg(feature = "sqlite")]
    if let (Source::Sqlite(options), Some(conn)) = (&copier.source, sqlite_main.as_mut()) {
        for _ in 0..=copier.jobs {
            readers.push(Reader::Sqlite(Some(sqlite::reader(options)?)));
        }
        sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
        if let Some(verifier) = readers.pop() {
            src = verifier;
        }
    }

    let pending: usize = chunks.iter().flatten().filter(|c| !c.done).count();
    report.already_copied = pending == 0;
    let planned = Arc::new(planned);
    if pending > 0 {
        let work = Work {
            chunks,
            conversions: conversions.clone(),
            readers,
        };
        let (outcome, analyzed) =
            copy_chunks(copier, &snapshot, &progress, &copy_id, &planned, work).await?;
        report.tables = outcome;
        report.analyzed = analyzed
            .into_iter()
            .map(|t| planned[t].plan.table.clone())
            .collect();
        report.rows = report.tables.iter().map(|t| t.rows).sum();
        report.bytes = report.tables.iter().map(|t| t.bytes).sum();
    }

    if copier.sequences {
        report.sequences = set_sequences(&mut dst, &planned, &copier.on_event).await?;
    }
    if copier.analyze {
        for (p, t) in planned.iter().zip(&report.tables) {
            if t.rows > 0 && !report.analyzed.contains(&p.plan.table) {
                sqlx::raw_sql(AssertSqlSafe(format!("ANALYZE {}", p.target.ident())))
                    .execute(&mut dst)
                    .await?;
                report.analyzed.push(p.plan.table.clone());
                emit(
                    &copier.on_event,
                    &CopyEvent::Analyzed {
                        table: p.plan.table.clone(),
                    },
                );
            }
        }
    }
    if pending > 0 {
        // The chunks committed with `synchronous_commit = off`: one transaction that
        // commits durably flushes the WAL up to its own commit, every chunk's included,
        // before the copy says it is done.
        sqlx::raw_sql("BEGIN; SET LOCAL synchronous_commit = on; SELECT txid_current(); COMMIT")
            .execute(&mut dst)
            .await?;
    }
    if copier.verify {
        report.verification = Some(verify(&mut src, &mut dst, &planned, &conversions).await?);
    }
    match src {
        Reader::Postgres(mut conn) => {
            sqlx::raw_sql("COMMIT").execute(&mut conn).await?;
            let _ = conn.close().await;
        }
        #[cfg(feature = "sqlite")]
        Reader::Sqlite(_) => {}
    }
    #[cfg(feature = "sqlite")]
    if let Some(conn) = sqlite_main {
        let _ = conn.close().await;
    }
    let _ = dst.close().await;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// `'text'` as an SQL string literal.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Creates datamig's ledger in the target, as `datamig run` would on PostgreSQL.
async fn ensure_target_ledger(dst: &mut PgConnection) -> Result<(), Error> {
    use crate::backend::steps::LedgerSteps;
    crate::Postgres::ensure_ledger(dst, &crate::LedgerConfig::default())
        .await
        .map_err(|err| {
            Error::CopyRefused(format!(
                "the copy brings datamig's ledger along and the target has none, which the target role may not create ({}): create it with `datamig status` as a role that may, or copy with --no-ledger",
                crate::error::describe_sqlx(&err)
            ))
        })
}

/// The report of a run that copied nothing (yet).
fn empty_report(plan: CopyPlan, planned: &[Planned]) -> CopyReport {
    CopyReport {
        plan,
        tables: empty_reports(planned),
        rows: 0,
        bytes: 0,
        seconds: 0.0,
        already_copied: false,
        sequences: Vec::new(),
        analyzed: Vec::new(),
        verification: None,
    }
}

/// Both sides compared: fingerprints of the copied columns (and, for a SQLite source, the
/// first rows that differ, compared in the target's types).
async fn verify(
    src: &mut Reader,
    dst: &mut PgConnection,
    planned: &[Planned],
    conversions: &[Vec<Conversion>],
) -> Result<Verification, Error> {
    let (source, rows) = match src {
        Reader::Postgres(conn) => (fingerprint(conn, planned, Side::Source).await?, Vec::new()),
        #[cfg(feature = "sqlite")]
        Reader::Sqlite(conn) => compare_rows(conn, dst, planned, conversions).await?,
    };
    let _ = conversions;
    let target = fingerprint(dst, planned, Side::Target).await?;
    let differences = source.differences(&target);
    Ok(Verification {
        source,
        target,
        differences,
        rows,
    })
}

/// A report per planned table, before this run copied anything.
fn empty_reports(planned: &[Planned]) -> Vec<TableReport> {
    planned
        .iter()
        .map(|p| TableReport {
            table: p.plan.table.clone(),
            chunks_skipped: p.plan.chunks_done,
            ..TableReport::default()
        })
        .collect()
}

fn emit(sink: &Option<EventSink>, event: &CopyEvent) {
    if let Some(sink) = sink {
        sink(event);
    }
}

async fn connect(options: &PgConnectOptions, side: &str) -> Result<PgConnection, Error> {
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

async fn source_session(conn: &mut PgConnection) -> Result<(), Error> {
    sqlx::raw_sql(
        "SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0; \
         SET standard_conforming_strings = on; SET extra_float_digits = 3",
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The target's session: a lost commit loses a chunk and its progress row together, so
/// `synchronous_commit` need not wait for the disk; locks wait at most the lock timeout.
async fn target_session(conn: &mut PgConnection, copier: &Copier, load: bool) -> Result<(), Error> {
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

/// The target's tables (partitioned ones through their partitions) whose load would
/// change with triggers off: a trigger of their own that fires in the origin or replica
/// role, or a `MATCH FULL` foreign key (the copy's own check follows `MATCH SIMPLE`).
async fn tables_keeping_triggers(conn: &mut PgConnection) -> Result<BTreeSet<TableName>, Error> {
    let rows: Vec<(String, String)> = query_as(
        "SELECT DISTINCT n.nspname::text, c.relname::text
         FROM (SELECT tgrelid AS rel FROM pg_trigger
               WHERE NOT tgisinternal AND tgenabled IN ('O', 'R')
               UNION SELECT conrelid FROM pg_constraint
               WHERE contype = 'f' AND confmatchtype = 'f') AS x
         CROSS JOIN LATERAL (SELECT x.rel UNION SELECT relid FROM pg_partition_ancestors(x.rel))
             AS a (relid)
         JOIN pg_class c ON c.oid = a.relid
         JOIN pg_namespace n ON n.oid = c.relnamespace",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

async fn may_disable_triggers(conn: &mut PgConnection) -> Result<bool, Error> {
    Ok(query_scalar(
        "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
             OR (current_setting('server_version_num')::int >= 150000
                 AND has_parameter_privilege('session_replication_role', 'SET'))",
    )
    .fetch_one(conn)
    .await?)
}

async fn has_rows(conn: &mut PgConnection, table: &Table) -> Result<bool, Error> {
    Ok(query_scalar(AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM {})",
        table.ident()
    )))
    .fetch_one(conn)
    .await?)
}

/// This copy's chunks recorded in the target, by table.
async fn read_progress(
    conn: &mut PgConnection,
    progress: &str,
    copy_id: &str,
) -> Result<BTreeMap<String, Vec<Chunk>>, Error> {
    let mut out: BTreeMap<String, Vec<Chunk>> = BTreeMap::new();
    let rows = query(AssertSqlSafe(format!(
        "SELECT table_name, chunk, lower_key, upper_key, copied_at IS NOT NULL AS done, COALESCE(rows, 0) AS rows
         FROM {progress} WHERE copy_name = $1 ORDER BY table_name, chunk"
    )))
    .bind(copy_id)
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        let table: String = row.try_get("table_name")?;
        let number: i32 = row.try_get("chunk")?;
        let rows: i64 = row.try_get("rows")?;
        out.entry(table).or_default().push(Chunk {
            number: usize::try_from(number).unwrap_or(0),
            lower: row.try_get("lower_key")?,
            upper: row.try_get("upper_key")?,
            done: row.try_get("done")?,
            rows: u64::try_from(rows).unwrap_or(0),
        });
    }
    Ok(out)
}

async fn create_progress_table(
    conn: &mut PgConnection,
    progress: &str,
    schema: Option<&str>,
) -> Result<(), Error> {
    let ddl = format!(
        "CREATE TABLE IF NOT EXISTS {progress} (
             copy_name  text NOT NULL,
             table_name text NOT NULL,
             chunk      integer NOT NULL,
             chunks     integer NOT NULL,
             lower_key  text[],
             upper_key  text[],
             rows       bigint,
             bytes      bigint,
             copied_at  timestamptz,
             copied_by  text,
             PRIMARY KEY (copy_name, table_name, chunk)
         )"
    );
    sqlx::raw_sql(AssertSqlSafe(ddl)).execute(conn).await.map_err(|err| {
        Error::CopyRefused(format!(
            "the copy keeps its progress in table {PROGRESS_TABLE} on the target{}, and the target role may not create it ({}): GRANT CREATE ON SCHEMA to the role, create the table as its owner, or choose a schema it may create in with --progress-schema",
            schema.map(|s| format!(" (schema {s})")).unwrap_or_default(),
            crate::error::describe_sqlx(&err)
        ))
    })?;
    Ok(())
}

/// Writes the chunks of tables not yet recorded; for a restart (a truncating copy, a new
/// merge pass), first empties the tables (truncate) and forgets the earlier chunks, in the
/// same transaction.
async fn record_plan(
    conn: &mut PgConnection,
    copier: &Copier,
    progress: &str,
    copy_id: &str,
    planned: &[Planned],
    chunks: &[Vec<Chunk>],
    restart: bool,
) -> Result<(), Error> {
    let mut tx = conn.begin().await?;
    if copier.mode == CopyMode::DangerouslyTruncate && !planned.is_empty() {
        let tables: Vec<String> = planned.iter().map(|p| p.target.ident()).collect();
        query(AssertSqlSafe(format!("TRUNCATE {}", tables.join(", "))))
            .execute(&mut *tx)
            .await
            .map_err(|err| Error::CopyRefused(format!(
                "--mode dangerously-truncate could not empty the target tables ({}); nothing was written",
                crate::error::describe_sqlx(&err)
            )))?;
    }
    if restart {
        query(AssertSqlSafe(format!(
            "DELETE FROM {progress} WHERE copy_name = $1"
        )))
        .bind(copy_id)
        .execute(&mut *tx)
        .await?;
    }
    let insert = format!(
        "INSERT INTO {progress} (copy_name, table_name, chunk, chunks, lower_key, upper_key)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
    );
    for (p, table_chunks) in planned.iter().zip(chunks) {
        for chunk in table_chunks {
            query(AssertSqlSafe(insert.clone()))
                .bind(copy_id)
                .bind(&p.plan.table)
                .bind(i32::try_from(chunk.number).unwrap_or(i32::MAX))
                .bind(i32::try_from(table_chunks.len()).unwrap_or(i32::MAX))
                .bind(&chunk.lower)
                .bind(&chunk.upper)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// The key ranges a table is copied in, measured in the run's snapshot.
async fn split(
    src: &mut PgConnection,
    p: &mut Planned,
    chunk_rows: u64,
) -> Result<Vec<Chunk>, Error> {
    let one = || vec![Chunk::whole()];
    let from = source_from(&p.source);
    if p.plan.estimated_rows <= 0 {
        p.plan.estimated_rows = query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {from}")))
            .fetch_one(&mut *src)
            .await?;
    }
    let estimate = u64::try_from(p.plan.estimated_rows).unwrap_or(0);
    if p.plan.whole.is_some() || estimate <= chunk_rows {
        return Ok(one());
    }
    let n = estimate.div_ceil(chunk_rows);
    let key = &p.plan.key;
    let types: Vec<&str> = key
        .iter()
        .map(|k| p.source.column(k).map_or("text", |c| c.sql_type.as_str()))
        .collect();
    let columns: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
    let mut bounds: Vec<Vec<String>> = Vec::new();
    if key.len() == 1 && matches!(types[0], "smallint" | "integer" | "bigint") {
        let row = query(AssertSqlSafe(format!(
            "SELECT min({c})::int8, max({c})::int8 FROM {from}",
            c = columns[0]
        )))
        .fetch_one(&mut *src)
        .await?;
        let (Some(min), Some(max)): (Option<i64>, Option<i64>) = (row.try_get(0)?, row.try_get(1)?)
        else {
            return Ok(one());
        };
        let span = i128::from(max) - i128::from(min) + 1;
        let n = i128::from(n).min(span).max(1);
        for i in 1..n {
            let bound = i128::from(min) + span * i / n - 1;
            bounds.push(vec![bound.to_string()]);
        }
    } else {
        // A sample of the keys, sorted in the index's order; its quantiles bound the chunks.
        let wanted = n * 64;
        let percent = (100.0 * wanted as f64 / estimate as f64).min(100.0);
        let list = columns
            .iter()
            .map(|c| format!("{c}::text"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = query(AssertSqlSafe(format!(
            "SELECT {list} FROM {from} TABLESAMPLE SYSTEM ({percent}) ORDER BY {}",
            columns.join(", ")
        )))
        .fetch_all(&mut *src)
        .await?;
        let sample: Vec<Vec<String>> = rows
            .iter()
            .map(|row| {
                (0..key.len())
                    .map(|i| row.try_get::<String, _>(i))
                    .collect()
            })
            .collect::<Result<_, _>>()?;
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        for i in 1..n {
            if let Some(bound) = sample.get(sample.len() * i / n)
                && bounds.last() != Some(bound)
            {
                bounds.push(bound.clone());
            }
        }
    }
    Ok(Chunk::between(bounds))
}

/// `ONLY "s"."t"` for a plain table (its inheritance children are tables of their own),
/// the table itself for a partitioned one (read through its partitions).
fn source_from(table: &Table) -> String {
    if table.kind == "p" {
        table.ident()
    } else {
        format!("ONLY {}", table.ident())
    }
}

fn literal(value: &str, sql_type: &str) -> String {
    format!("'{}'::{sql_type}", value.replace('\'', "''"))
}

/// `WHERE (k1, k2) > (..) AND (k1, k2) <= (..)` for a chunk, empty for a whole table.
fn range_predicate(p: &Planned, chunk: &Chunk) -> String {
    let columns: Vec<String> = p.plan.key.iter().map(|k| quote_ident(k)).collect();
    let tuple = format!("({})", columns.join(", "));
    let types: Vec<&str> = p
        .plan
        .key
        .iter()
        .map(|k| p.source.column(k).map_or("text", |c| c.sql_type.as_str()))
        .collect();
    let values = |bound: &[String]| {
        let literals: Vec<String> = bound
            .iter()
            .zip(&types)
            .map(|(v, t)| literal(v, t))
            .collect();
        format!("({})", literals.join(", "))
    };
    let mut conditions = Vec::new();
    if let Some(lower) = &chunk.lower {
        conditions.push(format!("{tuple} > {}", values(lower)));
    }
    if let Some(upper) = &chunk.upper {
        conditions.push(format!("{tuple} <= {}", values(upper)));
    }
    if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    }
}

/// One transaction on the target: a chunk, or the chunks of a cycle's tables.
struct Unit {
    parts: Vec<(usize, Chunk)>,
}

impl Unit {
    /// The tables of this unit, each once.
    fn tables(&self) -> Vec<usize> {
        let mut tables: Vec<usize> = self.parts.iter().map(|(t, _)| *t).collect();
        tables.sort_unstable();
        tables.dedup();
        tables
    }
}

enum Take {
    Unit(Unit),
    Wait,
    Done,
    /// Nothing runs and nothing can start: the order is wrong (a bug, reported as such).
    Stuck,
}

struct Schedule {
    queue: Vec<Unit>,
    /// Chunks not yet committed, per table.
    left: Vec<usize>,
    /// Chunks committed, by any run.
    committed: usize,
    /// Units taken and not yet finished.
    running: usize,
    /// Units taken and not yet finished, per table.
    loading: Vec<usize>,
    stop: bool,
}

impl Schedule {
    fn take(&mut self, parents: &[Vec<usize>]) -> Take {
        if self.stop || self.queue.is_empty() {
            return Take::Done;
        }
        // Of the units whose parents are loaded, the first of a table the fewest workers
        // are loading: two loads into one table contend for its indexes' pages (only one
        // of them appends at the right edge of a B-tree), two loads into two tables don't.
        let ready = self
            .queue
            .iter()
            .enumerate()
            .filter(|(_, unit)| {
                unit.parts.iter().all(|(table, _)| {
                    parents[*table].iter().all(|parent| {
                        self.left[*parent] == 0 || unit.parts.iter().any(|(t, _)| t == parent)
                    })
                })
            })
            .min_by_key(|(i, unit)| {
                let loading = unit
                    .parts
                    .iter()
                    .map(|(t, _)| self.loading[*t])
                    .max()
                    .unwrap_or(0);
                (loading, *i)
            })
            .map(|(i, _)| i);
        match ready {
            Some(i) => {
                self.running += 1;
                let unit = self.queue.remove(i);
                for table in unit.tables() {
                    self.loading[table] += 1;
                }
                Take::Unit(unit)
            }
            None if self.running == 0 => Take::Stuck,
            None => Take::Wait,
        }
    }

    /// A unit taken has committed.
    fn finished(&mut self, unit: &Unit) {
        self.running -= 1;
        for table in unit.tables() {
            self.loading[table] -= 1;
        }
        for (table, _) in &unit.parts {
            self.left[*table] -= 1;
            self.committed += 1;
        }
    }
}

/// What the workers share.
pub(super) struct Shared {
    copier: Copier,
    snapshot: String,
    progress: String,
    copy_id: String,
    pub(super) planned: Arc<Vec<Planned>>,
    /// Per table, each copied column's conversion (a SQLite source).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(super) conversions: Vec<Vec<Conversion>>,
    /// Readers opened before the workers start (a SQLite source: in one state of the file).
    readers: Mutex<Vec<Reader>>,
    parents: Vec<Vec<usize>>,
    chunk_counts: Vec<usize>,
    schedule: Mutex<Schedule>,
    notify: Notify,
    /// Rows and bytes per table (rows include chunks committed before this run).
    rows: Vec<AtomicU64>,
    bytes: Vec<AtomicU64>,
    total_estimate: u64,
    reports: Mutex<Vec<TableReport>>,
    /// Tables analyzed as soon as their last chunk committed.
    analyzed: Mutex<Vec<usize>>,
}

impl Shared {
    async fn next(&self) -> Result<Option<Unit>, Error> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self
                .schedule
                .lock()
                .expect("schedule lock")
                .take(&self.parents)
            {
                Take::Unit(unit) => return Ok(Some(unit)),
                Take::Done => return Ok(None),
                Take::Stuck => {
                    return Err(Error::Config(
                        "the copy's load order left chunks that can never start; this is a bug in datamig: please report it with the plan (--dry-run)".into(),
                    ));
                }
                Take::Wait => {}
            }
            notified.await;
        }
    }

    fn stop(&self) {
        self.schedule.lock().expect("schedule lock").stop = true;
        self.notify.notify_waiters();
    }

    pub(super) fn progress(&self, table: usize, rows: u64, bytes: u64) {
        let table_rows = self.rows[table].fetch_add(rows, Ordering::Relaxed) + rows;
        let table_bytes = self.bytes[table].fetch_add(bytes, Ordering::Relaxed) + bytes;
        if let Some(sink) = &self.copier.on_event {
            sink(&CopyEvent::Progress {
                table: self.planned[table].plan.table.clone(),
                rows: table_rows,
                bytes: table_bytes,
                estimated_rows: u64::try_from(self.planned[table].plan.estimated_rows).unwrap_or(0),
                total_rows: self.rows.iter().map(|r| r.load(Ordering::Relaxed)).sum(),
                total_bytes: self.bytes.iter().map(|b| b.load(Ordering::Relaxed)).sum(),
                total_estimated_rows: self.total_estimate,
            });
        }
    }
}

/// The chunks to copy, each table's conversions, and readers opened in advance.
struct Work {
    chunks: Vec<Vec<Chunk>>,
    conversions: Vec<Vec<Conversion>>,
    readers: Vec<Reader>,
}

async fn copy_chunks(
    copier: &Copier,
    snapshot: &str,
    progress: &str,
    copy_id: &str,
    planned: &Arc<Vec<Planned>>,
    work: Work,
) -> Result<(Vec<TableReport>, Vec<usize>), Error> {
    let Work {
        chunks,
        conversions,
        readers,
    } = work;
    let index: BTreeMap<&str, usize> = planned
        .iter()
        .enumerate()
        .map(|(i, p)| (p.plan.table.as_str(), i))
        .collect();
    // A table waits for the tables it references, except those of its own cycle: they load
    // with it (deferred constraints) or in any order (triggers off).
    let parents: Vec<Vec<usize>> = planned
        .iter()
        .map(|p| {
            p.plan
                .after
                .iter()
                .filter(|t| !p.plan.cycle.contains(t))
                .filter_map(|t| index.get(t.as_str()).copied())
                .collect()
        })
        .collect();
    let left: Vec<usize> = chunks
        .iter()
        .map(|c| c.iter().filter(|c| !c.done).count())
        .collect();
    let committed = chunks.iter().flatten().filter(|c| c.done).count();
    let rows: Vec<AtomicU64> = chunks
        .iter()
        .map(|c| AtomicU64::new(c.iter().filter(|c| c.done).map(|c| c.rows).sum()))
        .collect();
    let chunk_counts = chunks.iter().map(Vec::len).collect();
    // Units in load order; the chunks of a cycle's tables in one unit.
    let mut queue: Vec<Unit> = Vec::new();
    let mut grouped: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    for (table, table_chunks) in chunks.into_iter().enumerate() {
        let p = &planned[table];
        for chunk in table_chunks.into_iter().filter(|c| !c.done) {
            if !p.plan.cycle.is_empty() && p.plan.whole.is_some() {
                let mut members = p.plan.cycle.clone();
                members.push(p.plan.table.clone());
                members.sort();
                if let Some(&at) = grouped.get(&members) {
                    queue[at].parts.push((table, chunk));
                    continue;
                }
                grouped.insert(members, queue.len());
            }
            queue.push(Unit {
                parts: vec![(table, chunk)],
            });
        }
    }
    let workers = copier.jobs.min(queue.len()).max(1);
    let shared = Arc::new(Shared {
        copier: copier.clone(),
        snapshot: snapshot.to_string(),
        progress: progress.to_string(),
        copy_id: copy_id.to_string(),
        planned: Arc::clone(planned),
        conversions,
        readers: Mutex::new(readers),
        parents,
        chunk_counts,
        schedule: Mutex::new(Schedule {
            queue,
            left,
            committed,
            running: 0,
            loading: vec![0; planned.len()],
            stop: false,
        }),
        notify: Notify::new(),
        rows,
        bytes: planned.iter().map(|_| AtomicU64::new(0)).collect(),
        total_estimate: planned
            .iter()
            .map(|p| u64::try_from(p.plan.estimated_rows).unwrap_or(0))
            .sum(),
        reports: Mutex::new(empty_reports(planned)),
        analyzed: Mutex::new(Vec::new()),
    });
    // Each worker is a task with its own pair of connections. The first failure stops the
    // others at once: their chunk in progress is rolled back when its connection closes.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let shared = Arc::clone(&shared);
        // The chunks' spans are children of the copy's span.
        tasks.spawn(async move { worker(&shared).await }.in_current_span());
    }
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.unwrap_or_else(|err| {
            Err(Error::Config(format!(
                "a copy worker stopped unexpectedly: {err}"
            )))
        });
        if let Err(err) = result {
            shared.stop();
            tasks.abort_all();
            failure.get_or_insert(err);
        }
    }
    if let Some(err) = failure {
        return Err(err);
    }
    let reports = shared.reports.lock().expect("reports lock").clone();
    let analyzed = shared.analyzed.lock().expect("analyzed lock").clone();
    Ok((reports, analyzed))
}

async fn worker(shared: &Shared) -> Result<(), Error> {
    let opened = shared.readers.lock().expect("readers lock").pop();
    let mut src = match (opened, &shared.copier.source) {
        (Some(reader), _) => reader,
        (None, Source::Postgres(options)) => {
            let mut conn = connect(options, "source").await?;
            source_session(&mut conn).await?;
            sqlx::raw_sql(AssertSqlSafe(format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
                shared.snapshot.replace('\'', "''")
            )))
            .execute(&mut conn)
            .await?;
            Reader::Postgres(conn)
        }
        #[cfg(feature = "sqlite")]
        (None, Source::Sqlite(_)) => {
            return Err(Error::Config(
                "a copy worker found no SQLite reader; this is a bug in datamig".into(),
            ));
        }
    };
    let mut dst = connect(&shared.copier.target, "target").await?;
    target_session(&mut dst, &shared.copier, true).await?;
    while let Some(unit) = shared.next().await? {
        let started = Instant::now();
        let span = tracing::info_span!(
            "copy_chunk",
            tables = %unit
                .parts
                .iter()
                .map(|(t, _)| shared.planned[*t].plan.table.as_str())
                .collect::<Vec<_>>()
                .join(","),
            chunks = %unit
                .parts
                .iter()
                .map(|(_, c)| c.number.to_string())
                .collect::<Vec<_>>()
                .join(","),
            rows = tracing::field::Empty,
            bytes = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let outcome = copy_unit(shared, &mut src, &mut dst, &unit)
            .instrument(span.clone())
            .await;
        let ms = crate::trace::millis(started.elapsed());
        span.record("duration_ms", ms);
        let done = match outcome {
            Ok(done) => done,
            Err(failure) => {
                let err = explain(shared, &mut src, &mut dst, &unit, failure).await;
                span.record("outcome", crate::trace::outcome(&err));
                tracing::error!(parent: &span, error = %err, duration_ms = ms, "chunk failed");
                return Err(err);
            }
        };
        let (rows, bytes) = done
            .iter()
            .fold((0, 0), |(r, b), c| (r + c.rows, b + c.bytes));
        span.record("rows", rows);
        span.record("bytes", bytes);
        span.record("outcome", "committed");
        tracing::info!(parent: &span, rows, bytes, duration_ms = ms, "chunk copied");
        // A table this unit completes is analyzed before the tables that reference it may
        // start: their foreign-key checks are planned with its statistics, not an empty
        // table's.
        if shared.copier.analyze {
            let completes: Vec<usize> = {
                let schedule = shared.schedule.lock().expect("schedule lock");
                unit.tables()
                    .into_iter()
                    .filter(|t| {
                        schedule.left[*t] == unit.parts.iter().filter(|(x, _)| x == t).count()
                    })
                    .collect()
            };
            for table in completes {
                let p = &shared.planned[table];
                sqlx::raw_sql(AssertSqlSafe(format!("ANALYZE {}", p.target.ident())))
                    .execute(&mut dst)
                    .await?;
                shared.analyzed.lock().expect("analyzed lock").push(table);
                if let Some(sink) = &shared.copier.on_event {
                    sink(&CopyEvent::Analyzed {
                        table: p.plan.table.clone(),
                    });
                }
            }
        }
        let mut finished = Vec::new();
        {
            let mut schedule = shared.schedule.lock().expect("schedule lock");
            let mut reports = shared.reports.lock().expect("reports lock");
            schedule.finished(&unit);
            for ((table, _), counts) in unit.parts.iter().zip(&done) {
                let report = &mut reports[*table];
                report.rows += counts.rows;
                report.inserted += counts.inserted;
                report.updated += counts.updated;
                report.bytes += counts.bytes;
                report.chunks += 1;
                report.seconds += started.elapsed().as_secs_f64() / unit.parts.len() as f64;
                if schedule.left[*table] == 0 {
                    finished.push((*table, report.rows));
                }
            }
        }
        shared.notify.notify_waiters();
        if let Some(sink) = &shared.copier.on_event {
            for ((table, chunk), counts) in unit.parts.iter().zip(&done) {
                sink(&CopyEvent::ChunkCopied {
                    table: shared.planned[*table].plan.table.clone(),
                    chunk: chunk.number,
                    chunks: shared.chunk_counts[*table],
                    rows: counts.rows,
                    bytes: counts.bytes,
                    ms,
                });
            }
            for (table, rows) in finished {
                sink(&CopyEvent::TableCopied {
                    table: shared.planned[table].plan.table.clone(),
                    rows,
                });
            }
        }
    }
    match src {
        Reader::Postgres(mut conn) => {
            let _ = sqlx::raw_sql("COMMIT").execute(&mut conn).await;
            let _ = conn.close().await;
        }
        #[cfg(feature = "sqlite")]
        Reader::Sqlite(_) => {}
    }
    let _ = dst.close().await;
    Ok(())
}

#[derive(Default)]
struct Counts {
    rows: u64,
    bytes: u64,
    inserted: u64,
    updated: u64,
}

/// Where a chunk failed.
pub(super) enum Failure {
    /// Reading the source.
    Source(String, sqlx::Error),
    /// Reading the source, as its driver described it.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    SourceText(String, String),
    /// Writing the target (the chunk's transaction is rolled back).
    Target(usize, sqlx::Error),
    /// A row the copy's own checks reject (the chunk is rolled back).
    Rejected(usize, String),
    /// A value of a SQLite source that does not convert (the chunk is rolled back).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    Value(usize, Box<UnconvertibleValue>),
    /// Anything else.
    Other(Error),
}

impl From<sqlx::Error> for Failure {
    fn from(err: sqlx::Error) -> Self {
        Failure::Other(Error::Database(err))
    }
}

async fn copy_unit(
    shared: &Shared,
    src: &mut Reader,
    dst: &mut PgConnection,
    unit: &Unit,
) -> Result<Vec<Counts>, Failure> {
    let first = unit.parts[0].0;
    let mut tx = dst.begin().await.map_err(|e| Failure::Target(first, e))?;
    if unit.parts.len() > 1 {
        sqlx::raw_sql("SET CONSTRAINTS ALL DEFERRED")
            .execute(&mut *tx)
            .await
            .map_err(|e| Failure::Target(first, e))?;
    }
    let mut done = Vec::new();
    for (stage, (table, chunk)) in unit.parts.iter().enumerate() {
        let p = &shared.planned[*table];
        let columns: Vec<String> = p.plan.copied().map(|c| quote_ident(&c.name)).collect();
        let list = columns.join(", ");
        let select = format!(
            "COPY (SELECT {list} FROM {}{}) TO STDOUT",
            source_from(&p.source),
            range_predicate(p, chunk)
        );
        let target = p.target.ident();
        let merge = shared.copier.mode == CopyMode::Merge;
        // The same built-in type on both sides: binary `COPY`, which neither server has to
        // write as text or parse back.
        // A SQLite source's values are converted into binary `COPY` (see `sqlite::stream`).
        let binary = !shared.conversions[*table].is_empty()
            || p.plan.copied().all(|c| {
                c.action == crate::copy::ColumnAction::Copy
                    && p.target.column(&c.name).is_some_and(|t| t.builtin_type)
                    && p.source.column(&c.name).is_some_and(|s| s.builtin_type)
            });
        let format = if binary { " (FORMAT binary)" } else { "" };
        let select = format!("{select}{format}");
        let into = if merge {
            let stage = format!("datamig_copy_stage_{stage}");
            sqlx::raw_sql(AssertSqlSafe(format!(
                "CREATE TEMPORARY TABLE {stage} ON COMMIT DROP AS SELECT {list} FROM {target} WITH NO DATA"
            )))
            .execute(&mut *tx)
            .await
            .map_err(|e| Failure::Target(*table, e))?;
            stage
        } else {
            target.clone()
        };
        let mut counts = Counts::default();
        {
            let mut copy_in = tx
                .copy_in_raw(&format!("COPY {into} ({list}) FROM STDIN{format}"))
                .await
                .map_err(|e| Failure::Target(*table, e))?;
            let streamed = match &mut *src {
                Reader::Postgres(conn) => stream(shared, *table, conn, &mut copy_in, &select).await,
                #[cfg(feature = "sqlite")]
                Reader::Sqlite(conn) => {
                    sqlite::stream(shared, *table, conn, chunk, &mut copy_in).await
                }
            };
            match streamed {
                Ok(bytes) => counts.bytes = bytes,
                Err(failure) => {
                    let _ = copy_in.abort("the copy stopped").await;
                    return Err(failure);
                }
            }
            counts.rows = copy_in
                .finish()
                .await
                .map_err(|e| Failure::Target(*table, e))?;
        }
        if merge {
            let (inserted, updated) = upsert(&mut tx, p, &into, &columns)
                .await
                .map_err(|e| Failure::Target(*table, e))?;
            counts.inserted = inserted;
            counts.updated = updated;
            sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE {into}")))
                .execute(&mut *tx)
                .await
                .map_err(|e| Failure::Target(*table, e))?;
        }
        let marked = query(AssertSqlSafe(format!(
            "UPDATE {} SET copied_at = clock_timestamp(), rows = $1, bytes = $2, copied_by = $3
             WHERE copy_name = $4 AND table_name = $5 AND chunk = $6 AND copied_at IS NULL",
            &shared.progress
        )))
        .bind(i64::try_from(counts.rows).unwrap_or(i64::MAX))
        .bind(i64::try_from(counts.bytes).unwrap_or(i64::MAX))
        .bind(crate::session::runner_tag())
        .bind(&shared.copy_id)
        .bind(&p.plan.table)
        .bind(i32::try_from(chunk.number).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await
        .map_err(|e| Failure::Target(*table, e))?;
        if marked.rows_affected() != 1 {
            return Err(Failure::Other(Error::CopyRefused(format!(
                "chunk {} of {} was committed by another copy meanwhile; this chunk was rolled back: run the copy again to go on",
                chunk.number, p.plan.table
            ))));
        }
        done.push(counts);
    }
    // Triggers off: the foreign keys are checked here, set-based, for the rows of this
    // unit, before it commits (as the target's own checks would have, row by row).
    if shared.copier.triggers == Triggers::Off {
        for (table, chunk) in &unit.parts {
            if let Some(message) = dangling_reference(&mut tx, shared, *table, chunk)
                .await
                .map_err(|e| Failure::Target(*table, e))?
            {
                return Err(Failure::Rejected(*table, message));
            }
        }
    }
    tx.commit().await.map_err(|e| Failure::Target(first, e))?;
    Ok(done)
}

/// The first row of a chunk whose foreign key names a row the target does not hold, as
/// a message naming the constraint, the row and the missing key; `None` when every
/// reference holds. Each key is one anti-join over the chunk's key range.
async fn dangling_reference(
    conn: &mut PgConnection,
    shared: &Shared,
    table: usize,
    chunk: &Chunk,
) -> Result<Option<String>, sqlx::Error> {
    let p = &shared.planned[table];
    let range = target_range(p, chunk, !shared.conversions[table].is_empty());
    for fk in &p.target.foreign_keys {
        if fk.referenced.len() != fk.columns.len() {
            continue;
        }
        let parent = catalog::ident(&fk.references);
        let present: Vec<String> = fk
            .columns
            .iter()
            .map(|c| format!("c.{} IS NOT NULL", quote_ident(c)))
            .collect();
        let matched: Vec<String> = fk
            .columns
            .iter()
            .zip(&fk.referenced)
            .map(|(c, r)| format!("r.{} = c.{}", quote_ident(r), quote_ident(c)))
            .collect();
        let shown: Vec<String> = fk
            .columns
            .iter()
            .map(|c| format!("c.{}::text", quote_ident(c)))
            .collect();
        let key: Vec<String> = p
            .plan
            .key
            .iter()
            .map(|k| {
                format!(
                    "{} || ' = ' || c.{}::text",
                    quote_literal(k),
                    quote_ident(k)
                )
            })
            .collect();
        let key = if key.is_empty() {
            "'ctid = ' || c.ctid::text".to_string()
        } else {
            key.join(" || ', ' || ")
        };
        let sql = format!(
            "SELECT {key}, concat_ws(', ', {}) FROM ONLY {} AS c
             WHERE {}{range} AND NOT EXISTS (SELECT 1 FROM {parent} AS r WHERE {})
             LIMIT 1",
            shown.join(", "),
            p.target.ident(),
            present.join(" AND "),
            matched.join(" AND ")
        );
        if let Some(row) = query(AssertSqlSafe(sql)).fetch_optional(&mut *conn).await? {
            let (row_key, values): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            return Ok(Some(format!(
                "foreign key {} of the row with {row_key}: ({}) = ({values}) is not present in table {} (checked by the copy: triggers are off)",
                fk.name,
                fk.columns.join(", "),
                display(&fk.references)
            )));
        }
    }
    Ok(None)
}

/// ` AND` the chunk's key range over the target's columns (empty for a whole table):
/// bounds of a SQLite source are SQLite literals, compared in byte order as SQLite does.
fn target_range(p: &Planned, chunk: &Chunk, from_sqlite: bool) -> String {
    if !from_sqlite {
        let range = range_predicate(p, chunk);
        return range
            .strip_prefix(" WHERE ")
            .map_or(String::new(), |r| format!(" AND {r}"));
    }
    let columns: Vec<(String, String, bool)> = p
        .plan
        .key
        .iter()
        .map(|k| {
            let sql_type = p
                .target
                .column(k)
                .map_or("text".to_string(), |c| c.sql_type.clone());
            let text = sql_type == "text" || sql_type.starts_with("character");
            (quote_ident(k), sql_type, text)
        })
        .collect();
    let tuple = columns
        .iter()
        .map(|(c, _, text)| {
            if *text {
                format!("c.{c} COLLATE \"C\"")
            } else {
                format!("c.{c}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let values = |bound: &[String]| {
        bound
            .iter()
            .zip(&columns)
            .map(|(v, (_, sql_type, text))| {
                let literal = match v.strip_prefix("X'").or_else(|| v.strip_prefix("x'")) {
                    Some(hex) => format!("'\\x{hex}::bytea"),
                    None if v.starts_with('\'') => format!("{v}::{sql_type}"),
                    None => v.clone(),
                };
                if *text {
                    format!("{literal} COLLATE \"C\"")
                } else {
                    literal
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::new();
    if let Some(lower) = &chunk.lower {
        out.push_str(&format!(" AND ({tuple}) > ({})", values(lower)));
    }
    if let Some(upper) = &chunk.upper {
        out.push_str(&format!(" AND ({tuple}) <= ({})", values(upper)));
    }
    out
}

/// A buffer of `COPY` data and the rows in it.
pub(super) type Filled = (Vec<u8>, u64);

/// Full buffers of `COPY` data (with their row counts) going from a reader to a writer,
/// and [`BUFFERS`] empty ones of about [`SEND_BYTES`] coming back to be filled again.
pub(super) struct Buffers {
    pub(super) full_tx: Sender<Filled>,
    pub(super) full_rx: Receiver<Filled>,
    pub(super) empty_tx: Sender<Vec<u8>>,
    pub(super) empty_rx: Receiver<Vec<u8>>,
}

impl Buffers {
    pub(super) fn new() -> Buffers {
        let (full_tx, full_rx) = tokio::sync::mpsc::channel(BUFFERS);
        let (empty_tx, empty_rx) = tokio::sync::mpsc::channel(BUFFERS + 1);
        for _ in 0..BUFFERS {
            let _ = empty_tx.try_send(Vec::with_capacity(SEND_BYTES + (64 << 10)));
        }
        Buffers {
            full_tx,
            full_rx,
            empty_tx,
            empty_rx,
        }
    }
}

/// Streams one `COPY .. TO STDOUT` into the open `COPY .. FROM STDIN`, in sends of about
/// [`SEND_BYTES`]; returns the bytes streamed.
async fn stream(
    shared: &Shared,
    table: usize,
    src: &mut PgConnection,
    copy_in: &mut sqlx::postgres::PgCopyIn<&mut PgConnection>,
    select: &str,
) -> Result<u64, Failure> {
    let name = &shared.planned[table].plan.table;
    let mut out = src
        .copy_out_raw(select)
        .await
        .map_err(|e| Failure::Source(name.clone(), e))?;
    // The reader fills buffers while the writer sends the previous one, so that both
    // servers work at once; a few buffers in flight keep memory constant.
    let Buffers {
        full_tx,
        mut full_rx,
        empty_tx,
        mut empty_rx,
    } = Buffers::new();
    let read = async move {
        let mut buf = empty_rx.recv().await.unwrap_or_default();
        // The server sends each row in a message of its own (a binary copy's header rides
        // with the first row, its trailer comes alone).
        let mut rows = 0_u64;
        loop {
            let data = out
                .try_next()
                .await
                .map_err(|e| Failure::Source(name.clone(), e))?;
            let end = data.is_none();
            if let Some(data) = &data {
                buf.extend_from_slice(data);
                rows += 1;
            }
            if buf.len() >= SEND_BYTES || (end && !buf.is_empty()) {
                if full_tx
                    .send((buf, std::mem::take(&mut rows)))
                    .await
                    .is_err()
                {
                    // The writer failed; its error is the one to report.
                    return Ok(());
                }
                buf = empty_rx.recv().await.unwrap_or_default();
            }
            if end {
                return Ok::<(), Failure>(());
            }
        }
    };
    let write = async move {
        let mut total = 0_u64;
        while let Some((mut buf, rows)) = full_rx.recv().await {
            copy_in
                .send(buf.as_slice())
                .await
                .map_err(|e| Failure::Target(table, e))?;
            total += buf.len() as u64;
            shared.progress(table, rows, buf.len() as u64);
            buf.clear();
            let _ = empty_tx.send(buf).await;
        }
        Ok::<u64, Failure>(total)
    };
    let (read, write) = tokio::join!(read, write);
    let total = write?;
    read?;
    Ok(total)
}

/// Inserts the staged rows, and updates the rows whose copied columns differ, by primary
/// key; returns (inserted, updated).
async fn upsert(
    conn: &mut PgConnection,
    p: &Planned,
    stage: &str,
    columns: &[String],
) -> Result<(u64, u64), sqlx::Error> {
    let list = columns.join(", ");
    let key: Vec<String> = p
        .target
        .primary_key
        .iter()
        .map(|k| quote_ident(k))
        .collect();
    let always: Vec<&str> = p
        .target
        .columns
        .iter()
        .filter(|c| c.identity == "a")
        .map(|c| c.name.as_str())
        .collect();
    let updatable: Vec<String> = p
        .plan
        .copied()
        .filter(|c| !p.target.primary_key.contains(&c.name) && !always.contains(&c.name.as_str()))
        .map(|c| quote_ident(&c.name))
        .collect();
    let overriding = if p.plan.copied().any(|c| always.contains(&c.name.as_str())) {
        " OVERRIDING SYSTEM VALUE"
    } else {
        ""
    };
    let action = if updatable.is_empty() {
        "DO NOTHING".to_string()
    } else {
        let set: Vec<String> = updatable
            .iter()
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        let mine: Vec<String> = updatable.iter().map(|c| format!("current.{c}")).collect();
        let theirs: Vec<String> = updatable.iter().map(|c| format!("EXCLUDED.{c}")).collect();
        // Compared as text: every type has a text form, not every type an equality.
        format!(
            "DO UPDATE SET {} WHERE ROW({})::text IS DISTINCT FROM ROW({})::text",
            set.join(", "),
            mine.join(", "),
            theirs.join(", ")
        )
    };
    let sql = format!(
        "WITH written AS (
             INSERT INTO {} AS current ({list}){overriding} SELECT {list} FROM {stage}
             ON CONFLICT ({}) {action}
             RETURNING (xmax = 0) AS inserted)
         SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written",
        p.target.ident(),
        key.join(", ")
    );
    let row = query(AssertSqlSafe(sql)).fetch_one(conn).await?;
    let inserted: i64 = row.try_get(0)?;
    let updated: i64 = row.try_get(1)?;
    Ok((
        u64::try_from(inserted).unwrap_or(0),
        u64::try_from(updated).unwrap_or(0),
    ))
}

/// Turns a chunk's failure into the error to report: a rejected row with its constraint and
/// key, a lock wait with the sessions holding the lock.
async fn explain(
    shared: &Shared,
    src: &mut Reader,
    dst: &mut PgConnection,
    unit: &Unit,
    failure: Failure,
) -> Error {
    let kept = shared.schedule.lock().expect("schedule lock").committed;
    let locate = |table: usize| {
        unit.parts
            .iter()
            .find(|(t, _)| *t == table)
            .map_or((1, 1), |(t, c)| (c.number, shared.chunk_counts[*t]))
    };
    let (table, err) = match failure {
        Failure::Other(err) => return err,
        Failure::Value(table, bad) => {
            let (chunk, chunks) = locate(table);
            return Error::CopyUnconvertible {
                chunk,
                chunks,
                kept,
                value: bad,
            };
        }
        Failure::Source(table, err) => {
            return Error::Config(format!(
                "reading {table} from the source failed: {}; the chunk was rolled back, the {kept} chunk(s) committed before it are kept: run the copy again to resume",
                crate::error::describe_sqlx(&err)
            ));
        }
        Failure::Rejected(table, message) => {
            let (chunk, chunks) = locate(table);
            return Error::CopyRejected {
                table: shared.planned[table].plan.table.clone(),
                chunk,
                chunks,
                kept,
                message,
            };
        }
        Failure::SourceText(table, message) => {
            return Error::Config(format!(
                "reading {table} from the source failed: {message}; the chunk was rolled back, the {kept} chunk(s) committed before it are kept: run the copy again to resume"
            ));
        }
        Failure::Target(table, err) => (table, err),
    };
    let name = shared.planned[table].plan.table.clone();
    let (number, chunks) = locate(table);
    let Some(db) = err.as_database_error() else {
        return Error::Database(err);
    };
    let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
    let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
    if code == "55P03" {
        let sessions = blocking(dst, &shared.planned[table].target)
            .await
            .unwrap_or_default();
        return Error::CopyBlocked {
            table: name,
            timeout: shared.copier.lock_timeout,
            sessions,
        };
    }
    let rejected = code.starts_with("22") || code.starts_with("23") || code == "P0001";
    if !rejected {
        return Error::Database(err);
    }
    let mut message = db.message().to_string();
    if let Some(pg) = pg {
        if let Some(detail) = pg.detail() {
            message.push_str(&format!(" ({detail})"));
        }
        if let Some(context) = pg.r#where()
            && context.starts_with("COPY ")
        {
            message.push_str(&format!("; at {context}"));
        }
        if code == "23503"
            && let (Some(constraint), Some(detail)) = (pg.constraint(), pg.detail())
            && let Some((_, chunk)) = unit.parts.iter().find(|(t, _)| *t == table)
            && let Reader::Postgres(src) = src
            && let Some(key) =
                referencing_row(src, &shared.planned[table], chunk, constraint, detail).await
        {
            message.push_str(&format!("; the row with {key} holds it"));
        }
    }
    Error::CopyRejected {
        table: name,
        chunk: number,
        chunks,
        kept,
        message,
    }
}

/// For a foreign key of one column that a chunk's row violates, that row's primary key (as
/// `id = 42`), found in the source within the chunk.
async fn referencing_row(
    src: &mut PgConnection,
    p: &Planned,
    chunk: &Chunk,
    constraint: &str,
    detail: &str,
) -> Option<String> {
    let fk = p
        .target
        .foreign_keys
        .iter()
        .find(|fk| fk.name == constraint)?;
    let [column] = fk.columns.as_slice() else {
        return None;
    };
    let rest = detail.strip_prefix(&format!("Key ({column})=("))?;
    let value = &rest[..rest.rfind(") is not present")?];
    let sql_type = &p.source.column(column)?.sql_type;
    if p.plan.key.is_empty() {
        return None;
    }
    let keys: Vec<String> = p
        .plan
        .key
        .iter()
        .map(|k| format!("{}::text", quote_ident(k)))
        .collect();
    let range = range_predicate(p, chunk);
    let condition = format!("{} = {}", quote_ident(column), literal(value, sql_type));
    let filter = if range.is_empty() {
        format!(" WHERE {condition}")
    } else {
        format!("{range} AND {condition}")
    };
    let row = query(AssertSqlSafe(format!(
        "SELECT {} FROM {}{filter} LIMIT 1",
        keys.join(", "),
        source_from(&p.source)
    )))
    .fetch_optional(src)
    .await
    .ok()??;
    let parts: Vec<String> = p
        .plan
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{k} = {}", row.try_get::<String, _>(i).unwrap_or_default()))
        .collect();
    Some(parts.join(", "))
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

/// Moves each copied table's sequences past the copied values: to the source's position or
/// the column's highest value, whichever is greater, and never backwards.
async fn set_sequences(
    dst: &mut PgConnection,
    planned: &[Planned],
    sink: &Option<EventSink>,
) -> Result<Vec<SequenceSet>, Error> {
    let mut set = Vec::new();
    for p in planned {
        for s in &p.target.sequences {
            let source = p
                .source
                .sequences
                .iter()
                .find(|x| x.column == s.column)
                .and_then(|x| x.last_value);
            let integer = p.target.column(&s.column).is_some_and(|c| {
                matches!(
                    c.sql_type.as_str(),
                    "smallint" | "integer" | "bigint" | "numeric"
                )
            });
            let highest: Option<i64> = if integer {
                query_scalar(AssertSqlSafe(format!(
                    "SELECT max({})::int8 FROM {}",
                    quote_ident(&s.column),
                    p.target.ident()
                )))
                .fetch_one(&mut *dst)
                .await?
            } else {
                None
            };
            let Some(wanted) = source.max(highest) else {
                continue;
            };
            let current: Option<i64> = query_scalar(AssertSqlSafe(format!(
                "SELECT CASE WHEN is_called THEN last_value END FROM {}",
                s.sequence
            )))
            .fetch_one(&mut *dst)
            .await?;
            if current.is_some_and(|c| c >= wanted) {
                continue;
            }
            query("SELECT setval($1::regclass, $2, true)")
                .bind(&s.sequence)
                .bind(wanted)
                .execute(&mut *dst)
                .await?;
            let moved = SequenceSet {
                sequence: s.sequence.clone(),
                table: p.plan.table.clone(),
                column: s.column.clone(),
                from: current,
                to: wanted,
            };
            if let Some(sink) = sink {
                sink(&CopyEvent::SequenceSet(moved.clone()));
            }
            set.push(moved);
        }
    }
    Ok(set)
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Source,
    Target,
}

/// The fingerprint of the copied columns of every planned table, in key order (text keys
/// in byte order, so that two databases of different collations agree).
async fn fingerprint(
    conn: &mut PgConnection,
    planned: &[Planned],
    side: Side,
) -> Result<Fingerprint, Error> {
    let mut out = Fingerprint::default();
    for p in planned {
        let table = if side == Side::Source {
            &p.source
        } else {
            &p.target
        };
        let (rows, sha256) =
            hash_rows(conn, fingerprint_sql(p, table, &source_from(table))).await?;
        out.tables.insert(
            display(&p.source.name),
            TableFingerprint {
                rows,
                sha256,
                key: p.plan.key.clone(),
            },
        );
    }
    Ok(out)
}

/// The rows of `from` (shaped as `table`) hashed one by one, in key order.
fn fingerprint_sql(p: &Planned, table: &Table, from: &str) -> String {
    let row = format!(
        "ROW({})::text",
        p.plan
            .copied()
            .map(|c| format!("t.{}", quote_ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let order = if p.plan.key.is_empty() {
        format!("{row} COLLATE \"C\"")
    } else {
        p.plan
            .key
            .iter()
            .map(|k| {
                let collatable = table
                    .column(k)
                    .is_some_and(|c| c.sql_type == "text" || c.sql_type.starts_with("character"));
                let column = format!("t.{}", quote_ident(k));
                if collatable {
                    format!("{column} COLLATE \"C\"")
                } else {
                    column
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("SELECT sha256(convert_to({row}, 'UTF8')) FROM {from} AS t ORDER BY {order}")
}

/// A SQLite source compared with the target in the target's types: each table's rows are
/// converted as the copy converts them into a temporary table on the target (rolled back,
/// nothing kept), fingerprinted like the target's, and joined with it by key to name the
/// first rows that differ.
#[cfg(feature = "sqlite")]
async fn compare_rows(
    conn: &mut Option<rusqlite::Connection>,
    dst: &mut PgConnection,
    planned: &[Planned],
    conversions: &[Vec<Conversion>],
) -> Result<(Fingerprint, Vec<RowDifference>), Error> {
    let mut source = Fingerprint::default();
    let mut differences = Vec::new();
    let mut tx = dst.begin().await?;
    for (i, (p, conversions)) in planned.iter().zip(conversions).enumerate() {
        let stage = format!("datamig_compare_{i}");
        let columns: Vec<String> = p.plan.copied().map(|c| quote_ident(&c.name)).collect();
        let list = columns.join(", ");
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE TEMPORARY TABLE {stage} ON COMMIT DROP AS SELECT {list} FROM {} WITH NO DATA",
            p.target.ident()
        )))
        .execute(&mut *tx)
        .await?;
        {
            let mut copy_in = tx
                .copy_in_raw(&format!("COPY {stage} ({list}) FROM STDIN (FORMAT binary)"))
                .await?;
            if let Err(err) = sqlite::stream_all(conn, p, conversions, &mut copy_in).await {
                let _ = copy_in.abort("the comparison stopped").await;
                return Err(err);
            }
            copy_in.finish().await?;
        }
        let (rows, sha256) = hash_rows(&mut tx, fingerprint_sql(p, &p.target, &stage)).await?;
        source.tables.insert(
            display(&p.source.name),
            TableFingerprint {
                rows,
                sha256,
                key: p.plan.key.clone(),
            },
        );
        let row = |side: &str| {
            format!(
                "ROW({})::text",
                columns
                    .iter()
                    .map(|c| format!("{side}.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let target = source_from(&p.target);
        let sql = if p.plan.key.is_empty() {
            format!(
                "(SELECT r, 'only in the source' FROM (SELECT {s} AS r FROM {stage} s EXCEPT ALL SELECT {t} FROM {target} t) x LIMIT 10)
                 UNION ALL
                 (SELECT r, 'only in the target' FROM (SELECT {t} AS r FROM {target} t EXCEPT ALL SELECT {s} FROM {stage} s) y LIMIT 10)",
                s = row("s"),
                t = row("t")
            )
        } else {
            let keys: Vec<String> = p.plan.key.iter().map(|k| quote_ident(k)).collect();
            let first = &keys[0];
            let shown: Vec<String> = p
                .plan
                .key
                .iter()
                .zip(&keys)
                .map(|(name, k)| {
                    format!(
                        "{} || ' = ' || COALESCE(s.{k}, t.{k})::text",
                        quote_literal(name)
                    )
                })
                .collect();
            let on: Vec<String> = keys.iter().map(|k| format!("s.{k} = t.{k}")).collect();
            format!(
                "SELECT {}, CASE WHEN s.{first} IS NULL THEN 'only in the target'
                                 WHEN t.{first} IS NULL THEN 'only in the source' ELSE 'differs' END
                 FROM {stage} s FULL JOIN {target} t ON {}
                 WHERE s.{first} IS NULL OR t.{first} IS NULL OR {} IS DISTINCT FROM {}
                 ORDER BY {} LIMIT 10",
                shown.join(" || ', ' || "),
                on.join(" AND "),
                row("s"),
                row("t"),
                keys.iter()
                    .map(|k| format!("COALESCE(s.{k}, t.{k})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let found = query(AssertSqlSafe(sql)).fetch_all(&mut *tx).await?;
        for r in found {
            differences.push(RowDifference {
                table: p.plan.table.clone(),
                key: r.try_get(0)?,
                difference: r.try_get(1)?,
            });
        }
    }
    tx.rollback().await?;
    Ok((source, differences))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(chunks: &[usize]) -> Schedule {
        let mut queue = Vec::new();
        for (table, n) in chunks.iter().enumerate() {
            for chunk in Chunk::between((1..*n).map(|b| vec![b.to_string()]).collect()) {
                queue.push(Unit {
                    parts: vec![(table, chunk)],
                });
            }
        }
        Schedule {
            queue,
            left: chunks.to_vec(),
            committed: 0,
            running: 0,
            loading: vec![0; chunks.len()],
            stop: false,
        }
    }

    fn taken(take: Take) -> (usize, usize) {
        match take {
            Take::Unit(unit) => (unit.parts[0].0, unit.parts[0].1.number),
            Take::Wait => panic!("waits"),
            Take::Done => panic!("done"),
            Take::Stuck => panic!("stuck"),
        }
    }

    #[test]
    fn a_second_worker_takes_a_table_nobody_is_loading() {
        let mut s = schedule(&[3, 2]);
        let parents = vec![vec![], vec![]];
        assert_eq!(taken(s.take(&parents)), (0, 1));
        assert_eq!(taken(s.take(&parents)), (1, 1));
        // Both tables are being loaded: the queue's order decides, the chunks in order.
        assert_eq!(taken(s.take(&parents)), (0, 2));
        assert_eq!(s.loading, vec![2, 1]);
    }

    #[test]
    fn a_busy_table_is_shared_when_nothing_else_is_ready() {
        let mut s = schedule(&[3, 1]);
        // Table 1 references table 0: it waits for all of table 0's chunks.
        let parents = vec![vec![], vec![0]];
        let first = Unit {
            parts: vec![(0, s.queue[0].parts[0].1.clone())],
        };
        assert_eq!(taken(s.take(&parents)), (0, 1));
        assert_eq!(taken(s.take(&parents)), (0, 2));
        s.finished(&first);
        assert_eq!(taken(s.take(&parents)), (0, 3));
        assert!(matches!(s.take(&parents), Take::Wait));
        s.finished(&first);
        s.finished(&first);
        assert_eq!(s.left, vec![0, 1]);
        assert_eq!(s.loading, vec![0, 0]);
        assert_eq!(taken(s.take(&parents)), (1, 1));
        assert!(matches!(s.take(&parents), Take::Done));
    }
}
