//! The follower: reads the slot's changes, applies those the copy's snapshot does not show
//! in target transactions that end at source commit boundaries, records the position in
//! the same transactions, confirms it to the source afterwards, and reports the lag, until
//! a cut-over asks it to stop.
//!
//! Why each step is where it is:
//!
//! - The changes are *peeked*, never consumed by reading: the slot moves only when
//!   `pg_replication_slot_advance` confirms a position, after the target committed
//!   everything before it. A follower killed at any instant reads again from the last
//!   confirmed position, and skips what the target recorded as applied (a source commit
//!   LSN at or below the recorded one): nothing is applied twice, nothing lost.
//! - A peek returns whole transactions; rows are streamed, and the batch is written out
//!   every [`FLUSH_CHANGES`] changes even inside one source transaction, whose target
//!   transaction commits only at its end: memory stays bounded whatever a transaction's
//!   size.
//! - When a batch's set-based statements break a constraint that applying the changes one
//!   by one, in order, would not (two rows swapping a unique value), the target rolls the
//!   batch back and the same changes are read again and applied row by row, one target
//!   transaction per source transaction.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Row};

use super::apply::{self, Batch, TableShape};
use super::pgoutput::{self, Message, Relation, Value};
use super::slot;
use super::snapshot::Snapshot;
use super::state;
use crate::copy::context::During;
use crate::copy::copier::Copier;
use crate::copy::event::{CopyEvent, emit};
use crate::copy::plan::Planned;
use crate::error::Error;

/// Changes a peek asks for (it returns whole transactions, so possibly more).
const PEEK_CHANGES: i32 = 20_000;
/// Changes held in a batch before it is written out.
const FLUSH_CHANGES: usize = 10_000;
/// A target transaction commits at the first source commit after this many changes...
const COMMIT_CHANGES: usize = 20_000;
/// ... or after this long.
const COMMIT_AFTER: Duration = Duration::from_millis(500);

/// How the follower reports.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// A follower's connections and what it knows.
pub(super) struct Follower<'a> {
    pub(super) copier: &'a Copier,
    pub(super) planned: &'a [Planned],
    pub(super) copy_id: String,
    pub(super) follow: String,
    pub(super) slot: String,
    pub(super) snapshot: Snapshot,
    /// Reads the slot (taken while a peek streams from it).
    peek: Option<PgConnection>,
    /// The source's catalog, position and slot confirmations.
    pub(super) src: PgConnection,
    pub(super) dst: PgConnection,
    /// The target role may set `session_replication_role`.
    pub(super) replica: bool,
    pub(super) applied_lsn: u64,
    pub(super) poll: Duration,
    shapes: Vec<Option<TableShape>>,
    relations: HashMap<u32, usize>,
    types: HashMap<(u32, i32), String>,
    rows_total: u64,
    txns_total: u64,
    window: (Instant, u64),
    reported: Option<Instant>,
    last_commit_time: Option<i64>,
}

/// What one peek did.
#[derive(Default)]
struct Peeked {
    /// Messages read.
    messages: usize,
    /// Source transactions applied.
    applied: u64,
    /// The end of the last transaction seen: everything before it is applied or skipped.
    confirm: Option<u64>,
    /// A constraint error of the batched path: read again and apply one by one.
    conflict: bool,
}

/// A source transaction being read.
struct Txn {
    lsn: u64,
    time: i64,
    skip: bool,
}

impl<'a> Follower<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        copier: &'a Copier,
        planned: &'a [Planned],
        copy_id: String,
        follow: String,
        slot: String,
        snapshot: Snapshot,
        (peek, src, dst): (PgConnection, PgConnection, PgConnection),
        replica: bool,
        applied_lsn: u64,
    ) -> Self {
        Follower {
            copier,
            planned,
            copy_id,
            follow,
            slot,
            snapshot,
            peek: Some(peek),
            src,
            dst,
            replica,
            applied_lsn,
            poll: copier.follow_poll,
            shapes: vec![None; planned.len()],
            relations: HashMap::new(),
            types: HashMap::new(),
            rows_total: 0,
            txns_total: 0,
            window: (Instant::now(), 0),
            reported: None,
            last_commit_time: None,
        }
    }

    /// Follows until a cut-over's position is reached: every source commit before it is
    /// applied. Returns with the slot still there.
    pub(super) async fn run(&mut self) -> Result<(), Error> {
        let mut one_by_one = false;
        loop {
            let recorded = state::read(&mut self.dst, &self.follow, &self.copy_id)
                .await?
                .ok_or_else(|| {
                    Error::FollowStopped(format!(
                        "the row of copy {} in {} is gone from the target: the follow cannot record its position",
                        self.copy_id, self.follow
                    ))
                })?;
            if recorded.status == "abandoned" {
                return Err(Error::FollowStopped(format!(
                    "copy {} was abandoned (datamig cutover --abandon) while following",
                    self.copy_id
                )));
            }
            let upto = recorded.cutover_lsn;
            let (wal, next) = slot::position(&mut self.src).await?;
            let peeked = self.peek_once(upto, next, one_by_one).await?;
            if peeked.conflict {
                one_by_one = true;
                continue;
            }
            one_by_one = false;
            let drained = peeked.messages < PEEK_CHANGES as usize;
            // A drained peek read every transaction committed before the WAL position
            // taken ahead of it (up to the cut-over's, if asked), and the target committed
            // what it applied of them: the slot may let go of the WAL before that, which
            // else it would decode again at every peek (other databases' WAL included).
            let mut confirm = peeked.confirm;
            if drained {
                let reached = upto.map_or(wal, |u| u.min(wal));
                confirm = Some(confirm.map_or(reached, |c| c.max(reached)));
            }
            if let Some(end) = confirm {
                slot::advance(&mut self.src, &self.slot, end).await?;
            }
            self.report(drained && peeked.applied == 0, peeked.confirm)
                .await?;
            if upto.is_some() && drained {
                return Ok(());
            }
            if drained {
                tokio::time::sleep(self.poll).await;
            }
        }
    }

    /// Reports the lag: bytes of WAL not yet confirmed, seconds since the last applied
    /// transaction committed on the source (0 when caught up), rows applied a second.
    async fn report(&mut self, caught_up: bool, confirmed: Option<u64>) -> Result<(), Error> {
        let now = Instant::now();
        if self
            .reported
            .is_some_and(|at| now.duration_since(at) < REPORT_EVERY)
        {
            return Ok(());
        }
        self.reported = Some(now);
        let (source_now, lsn): (i64, String) = sqlx::query_as(
            "SELECT (extract(epoch FROM clock_timestamp() - '2000-01-01 00:00:00+00'::timestamptz) * 1e6)::int8,
                    (pg_current_wal_lsn() - confirmed_flush_lsn)::text
             FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&self.slot)
        .fetch_one(&mut self.src)
        .await
        .during(|| format!("reading the lag of replication slot {}", self.slot))?;
        let _ = confirmed;
        let bytes = lsn.parse::<f64>().unwrap_or(0.0).max(0.0) as u64;
        let seconds = match (caught_up, self.last_commit_time) {
            (false, Some(t)) => ((source_now - t) as f64 / 1e6).max(0.0),
            _ => 0.0,
        };
        let elapsed = now.duration_since(self.window.0).as_secs_f64().max(1e-3);
        let rate = (self.rows_total - self.window.1) as f64 / elapsed;
        self.window = (now, self.rows_total);
        state::lag(
            &mut self.dst,
            &self.follow,
            &self.copy_id,
            (bytes, seconds, rate),
        )
        .await?;
        emit(
            &self.copier.on_event,
            &CopyEvent::Following {
                applied_lsn: slot::lsn_text(self.applied_lsn),
                lag_bytes: bytes,
                lag_seconds: seconds,
                rows_per_second: rate,
                rows: self.rows_total,
                transactions: self.txns_total,
            },
        );
        Ok(())
    }

    /// A table's shape for a relation the stream describes, or the follow stops: the
    /// source's table changed since the plan (DDL while following).
    async fn relation(&mut self, r: Relation) -> Result<(), Error> {
        let name = (r.schema.clone(), r.name.clone());
        let Some(t) = self.planned.iter().position(|p| p.source.name == name) else {
            return Err(Error::FollowStopped(format!(
                "the source's change stream names table {}.{}, which the copy did not plan; it stopped with everything before applied",
                r.schema, r.name
            )));
        };
        let p = &self.planned[t];
        let columns: Vec<String> = r.columns.iter().map(|c| c.name.clone()).collect();
        let mut problem = TableShape::new(p, &columns).err();
        if problem.is_none() {
            for c in &r.columns {
                let key = (c.type_oid, c.typmod);
                if !self.types.contains_key(&key) {
                    let t: String = sqlx::query_scalar("SELECT format_type($1::oid, $2)")
                        .bind(i64::from(c.type_oid))
                        .bind(c.typmod)
                        .fetch_one(&mut self.src)
                        .await
                        .during(|| {
                            format!("reading the type of column {} of {}", c.name, p.plan.table)
                        })?;
                    self.types.insert(key, t);
                }
                let sent = &self.types[&key];
                let planned = p
                    .plan
                    .copied()
                    .find(|x| x.name == c.name)
                    .and_then(|x| x.source_type.clone());
                if planned.as_deref().is_some_and(|t| t != sent) {
                    problem = Some(format!(
                        "column {} is of type {sent}, planned as {}",
                        c.name,
                        planned.unwrap_or_default()
                    ));
                    break;
                }
            }
        }
        let keyless = p.plan.key.is_empty();
        if problem.is_none() && !(r.identity == b'f' || (r.identity == b'd' && !keyless)) {
            problem = Some(format!(
                "its replica identity is now {:?} (the follow needs {})",
                char::from(r.identity),
                if keyless {
                    "the full row: the table has no primary key"
                } else {
                    "the primary key or the full row"
                }
            ));
        }
        if let Some(problem) = problem {
            return Err(Error::FollowStopped(format!(
                "source table {} changed while followed ({problem}): a schema change on the source during the follow. Every change before it is applied to the target (position {}); the follow cannot apply the rest. Abandon it (datamig cutover --abandon) and copy again after changing the target alike",
                p.plan.table,
                slot::lsn_text(self.applied_lsn)
            )));
        }
        self.shapes[t] = Some(TableShape::new(p, &columns).map_err(Error::Runtime)?);
        self.relations.insert(r.oid, t);
        Ok(())
    }

    fn table_of(&self, oid: u32) -> Result<usize, Error> {
        self.relations.get(&oid).copied().ok_or_else(|| {
            Error::Runtime(format!(
                "the change stream sent a change of relation {oid} before describing it; this is a bug in datamig"
            ))
        })
    }

    async fn begin(&mut self) -> Result<(), Error> {
        let sql = if self.replica {
            "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL session_replication_role = replica"
        } else {
            "BEGIN ISOLATION LEVEL READ COMMITTED"
        };
        sqlx::raw_sql(sql)
            .execute(&mut self.dst)
            .await
            .during(|| "beginning a target transaction of the follow".into())?;
        Ok(())
    }

    /// One peek of the slot: every transaction in it applied (or skipped), the target
    /// committed.
    async fn peek_once(
        &mut self,
        upto: Option<u64>,
        next: u64,
        one_by_one: bool,
    ) -> Result<Peeked, Error> {
        let mut out = Peeked::default();
        let mut batch = Batch::default();
        let mut open = false;
        let mut txn: Option<Txn> = None;
        // What the open target transaction holds.
        let mut tx_changes = 0usize;
        let mut tx_rows = 0u64;
        let mut tx_txns = 0u64;
        let mut tx_lsn = 0u64;
        let mut tx_started = Instant::now();
        let mut tx_time = None;
        // Changes of the source transaction being read.
        let mut cur_changes = 0usize;

        let peek_sql = slot::peek_sql();
        let upto_text = upto.map(|l| l.to_string());
        // The peek runs on its own connection; the stream borrows it alone.
        let Some(mut peek) = self.peek.take() else {
            return Err(Error::Runtime(
                "the follower's source connection is gone; this is a bug in datamig".into(),
            ));
        };
        let result: Result<(), Failure> = async {
            let mut rows = sqlx::query(AssertSqlSafe(peek_sql))
                .bind(&self.slot)
                .bind(upto_text.as_deref())
                .bind(PEEK_CHANGES)
                .fetch(&mut peek);
            while let Some(row) = rows
                .try_next()
                .await
                .during(|| format!("reading the changes of replication slot {}", self.slot))?
            {
                out.messages += 1;
                let data: Vec<u8> = row.try_get(0).during(|| "reading a change".into())?;
                let message = pgoutput::parse(&data).map_err(|m| {
                    Error::Runtime(format!(
                        "a message of replication slot {} did not parse ({}); this is a bug in datamig",
                        self.slot, m.0
                    ))
                })?;
                match message {
                    Message::Begin { lsn, time, xid } => {
                        let skip = lsn <= self.applied_lsn || self.snapshot.shows(xid, next);
                        if !skip && !open {
                            self.begin().await?;
                            open = true;
                            tx_started = Instant::now();
                        }
                        txn = Some(Txn { lsn, time, skip });
                        cur_changes = 0;
                    }
                    Message::Relation(r) => {
                        if let Err(err) = self.relation(r).await {
                            // The transactions read before the change of schema are
                            // applied and kept; the one it is in is not.
                            if open && cur_changes == 0 && tx_txns > 0 {
                                tx_rows += self.write(&mut batch).await?;
                                self.commit(tx_lsn, tx_rows, tx_txns).await?;
                                open = false;
                            }
                            return Err(err.into());
                        }
                    }
                    Message::Insert { oid, new } => {
                        if txn.as_ref().is_some_and(|t| !t.skip) {
                            let t = self.table_of(oid)?;
                            if self.keyless(t) {
                                batch.count(t, &new, 1);
                            } else {
                                let key = self.key(t, &new)?;
                                batch.insert(t, key, new);
                            }
                            tx_changes += 1;
                            cur_changes += 1;
                        }
                    }
                    Message::Update { oid, old, new } if self.keyless_of(oid) => {
                        if txn.as_ref().is_some_and(|t| !t.skip) {
                            let t = self.table_of(oid)?;
                            let old = self.whole(t, old)?;
                            batch.replace(t, &old, new);
                            tx_changes += 1;
                            cur_changes += 1;
                        }
                    }
                    Message::Update { oid, old, new } => {
                        if txn.as_ref().is_some_and(|t| !t.skip) {
                            let t = self.table_of(oid)?;
                            let new_key = self.key(t, &new)?;
                            let old_key = match &old {
                                Some(old) => Some(self.key(t, old)?),
                                None => None,
                            };
                            tx_changes += 1;
                            cur_changes += 1;
                            if let Some(direct) = batch.update(t, old_key, new_key, new) {
                                tx_rows += self.write(&mut batch).await?;
                                let shape = self.shapes[t].as_ref().expect("described");
                                apply::apply_direct(&mut self.dst, shape, direct)
                                    .await
                                    .map_err(failed)?;
                                tx_rows += 1;
                            }
                        }
                    }
                    Message::Delete { oid, old } => {
                        if txn.as_ref().is_some_and(|t| !t.skip) {
                            let t = self.table_of(oid)?;
                            if self.keyless(t) {
                                let old = self.whole(t, Some(old))?;
                                batch.count(t, &old, -1);
                            } else {
                                let key = self.key(t, &old)?;
                                batch.delete(t, key);
                            }
                            tx_changes += 1;
                            cur_changes += 1;
                        }
                    }
                    Message::Truncate { oids, .. } => {
                        if txn.as_ref().is_some_and(|t| !t.skip) {
                            tx_rows += self.write(&mut batch).await?;
                            let mut tables = Vec::new();
                            for oid in oids {
                                tables.push(self.table_of(oid)?);
                            }
                            let shapes: Vec<&TableShape> = tables
                                .iter()
                                .filter_map(|t| self.shapes[*t].as_ref())
                                .collect();
                            apply::truncate(&mut self.dst, &shapes).await.map_err(failed)?;
                            tx_changes += 1;
                            cur_changes += 1;
                        }
                    }
                    Message::Commit { lsn: _, end } => {
                        let Some(done) = txn.take() else { continue };
                        out.confirm = Some(end);
                        if done.skip {
                            continue;
                        }
                        tx_txns += 1;
                        tx_lsn = done.lsn;
                        tx_time = Some(done.time);
                        if one_by_one
                            || tx_changes >= COMMIT_CHANGES
                            || tx_started.elapsed() >= COMMIT_AFTER
                        {
                            tx_rows += self.write(&mut batch).await?;
                            self.commit(tx_lsn, tx_rows, tx_txns).await?;
                            open = false;
                            out.applied += tx_txns;
                            self.last_commit_time = tx_time;
                            (tx_changes, tx_rows, tx_txns) = (0, 0, 0);
                        }
                        continue;
                    }
                    Message::Other => {}
                }
                if one_by_one || batch.changes >= FLUSH_CHANGES {
                    tx_rows += self.write(&mut batch).await?;
                }
            }
            drop(rows);
            if open {
                tx_rows += self.write(&mut batch).await?;
                if tx_txns > 0 {
                    self.commit(tx_lsn, tx_rows, tx_txns).await?;
                    out.applied += tx_txns;
                    self.last_commit_time = tx_time;
                } else {
                    rollback(&mut self.dst).await;
                }
                open = false;
            }
            Ok(())
        }
        .await;
        self.peek = Some(peek);
        match result {
            Ok(()) => Ok(out),
            Err(Failure::Conflict(what, err)) if !one_by_one => {
                let _ = open;
                rollback(&mut self.dst).await;
                tracing::warn!(error = %crate::error::describe_sqlx(&err), during = %what, "a batch broke a constraint; applying it again change by change");
                Ok(Peeked {
                    conflict: true,
                    ..Peeked::default()
                })
            }
            Err(Failure::Conflict(what, err)) => {
                rollback(&mut self.dst).await;
                Err(Error::FollowStopped(format!(
                    "the target refused a change of the source while {what}: {}. Every source transaction before it is applied (position {}); fix the target (or the source row) and start the follow again: it resumes there",
                    crate::error::describe_sqlx(&err),
                    slot::lsn_text(self.applied_lsn)
                )))
            }
            Err(Failure::Error(err)) => {
                rollback(&mut self.dst).await;
                Err(err)
            }
        }
    }

    /// Whether table `t` has no key: its rows are matched by all their values.
    fn keyless(&self, t: usize) -> bool {
        self.shapes[t].as_ref().is_some_and(|s| s.key.is_empty())
    }

    /// Whether the relation `oid` is a table without a key.
    fn keyless_of(&self, oid: u32) -> bool {
        self.relations.get(&oid).is_some_and(|t| self.keyless(*t))
    }

    /// The whole old row of a change of a table without a key, as `REPLICA IDENTITY FULL`
    /// sends it.
    fn whole(&self, t: usize, old: Option<Vec<Value>>) -> Result<Vec<Value>, Error> {
        let shape = self.shapes[t].as_ref().expect("described");
        match old {
            Some(old) if old.len() == shape.columns.len() && !old.contains(&Value::Unchanged) => {
                Ok(old)
            }
            _ => Err(Error::FollowStopped(format!(
                "a change of source table {}, which has no primary key, came without its whole old row; it needs REPLICA IDENTITY FULL on the source",
                shape.table
            ))),
        }
    }

    fn key(&self, t: usize, row: &[Value]) -> Result<Vec<String>, Error> {
        let shape = self.shapes[t].as_ref().expect("described");
        shape.key_of(row).ok_or_else(|| {
            Error::FollowStopped(format!(
                "a change of source table {} came without its key; check its replica identity",
                shape.table
            ))
        })
    }

    async fn write(&mut self, batch: &mut Batch) -> Result<u64, Failure> {
        if batch.is_empty() {
            batch.changes = 0;
            return Ok(0);
        }
        batch
            .write(&mut self.dst, &self.shapes)
            .await
            .map_err(failed)
    }

    /// Commits the target transaction with the position of its last source commit.
    async fn commit(&mut self, lsn: u64, rows: u64, txns: u64) -> Result<(), Error> {
        let during = || {
            format!(
                "committing source transactions up to {} on the target",
                slot::lsn_text(lsn)
            )
        };
        state::applied(&mut self.dst, &self.follow, &self.copy_id, lsn, rows, txns)
            .await
            .during(during)?;
        sqlx::raw_sql("COMMIT")
            .execute(&mut self.dst)
            .await
            .during(during)?;
        self.applied_lsn = lsn;
        self.rows_total += rows;
        self.txns_total += txns;
        Ok(())
    }

    /// Hands back the source's connection for the slot and the target's.
    pub(super) fn into_connections(self) -> (PgConnection, PgConnection) {
        (self.src, self.dst)
    }
}

/// Why applying stopped.
enum Failure {
    /// The target refused a statement (what was being written, the error).
    Conflict(String, sqlx::Error),
    Error(Error),
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        Failure::Error(err)
    }
}

/// A refused statement: a constraint's error may be the batch's own doing (applied change
/// by change it would pass), anything else is the database's.
fn failed((what, err): (String, sqlx::Error)) -> Failure {
    let constraint =
        matches!(&err, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("23")));
    if constraint {
        Failure::Conflict(what, err)
    } else {
        Failure::Error(Error::CopyDatabase {
            during: what,
            error: err,
        })
    }
}

async fn rollback(conn: &mut PgConnection) {
    let _ = sqlx::raw_sql("ROLLBACK").execute(conn).await;
}
