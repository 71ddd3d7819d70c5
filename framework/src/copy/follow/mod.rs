//! The online copy: `datamig copy --follow` ([`Copier::follow`]) copies, then applies the
//! changes the source commits until a cut-over ([`Cutover`]) stops it. Laid out by phase:
//! the source's publication and slot (`slot.rs`), the copy's snapshot (`snapshot.rs`), the
//! messages of `pgoutput` (`pgoutput.rs`), the net changes written to the target
//! (`apply.rs`), the follower's loop (`stream.rs`) and its row in the target
//! (`state.rs`). This file holds the flow and the cut-over.

pub(super) mod apply;
pub(super) mod pgoutput;
pub(super) mod slot;
pub(super) mod snapshot;
pub(super) mod state;
pub(super) mod stream;

use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};

use super::connect::{SESSION, connect, target_session};
use super::copier::{Copier, SourceOptions};
use super::options::{CopyMode, Purpose};
use super::report::CopyReport;
use super::run;
use crate::error::Error;
pub use slot::Writer;
use snapshot::Snapshot;

/// A copy, then the follow until a cut-over: see [`Copier::follow`].
pub(super) async fn run(copier: &Copier) -> Result<CopyReport, Error> {
    #[cfg_attr(
        not(any(feature = "sqlite", feature = "mysql")),
        allow(irrefutable_let_patterns)
    )]
    let SourceOptions::Postgres(options) = &copier.source else {
        return Err(Error::Config(
            "--follow reads a PostgreSQL source's changes by logical decoding; a SQLite, MySQL or MariaDB source is copied without --follow (stop its writes for the copy)".into(),
        ));
    };
    if copier.mode == CopyMode::Merge {
        return Err(Error::Config(
            "--follow copies into an empty target (or --mode dangerously-truncate) and then applies every change; --mode merge does not go with it".into(),
        ));
    }
    if !copier.selection.exclude_columns.is_empty() {
        return Err(Error::Config(format!(
            "--follow applies each change with every column the source sends, so it does not leave columns out: drop --exclude-columns ({}), or add the columns to the target",
            copier.selection.exclude_columns.join(", ")
        )));
    }
    // 1. The plan, checked, and refused where the change stream cannot carry a table.
    let (copy_id, planned, target_identity) = run::checked(copier, options).await?;
    let mut src = connect(options, "source").await?;
    source_session(&mut src).await?;
    slot::check_source(&mut src).await?;
    let problems = slot::refuse_unkeyed(&mut src, &planned).await?;
    if !problems.is_empty() {
        return Err(Error::CopyPlan { problems });
    }

    // 2. The publication and the slot, before the copy's snapshot: every transaction
    //    committing after the slot's consistent point is in its stream, and the snapshot
    //    taken after it shows every one committed before.
    let mut dst = connect(&copier.target, "target").await?;
    target_session(&mut dst, copier).await?;
    let follow = state::table(copier.progress_schema.as_deref());
    state::create(&mut dst, &follow).await?;
    // One follower per copy and target: its lock, held until it ends.
    lock(&mut dst, &copy_id).await?;
    let name = slot::name(&copy_id, &target_identity);
    let recorded = state::read(&mut dst, &follow, &copy_id).await?;
    let finished = recorded
        .as_ref()
        .is_some_and(|r| r.status == "cut over" || r.status == "abandoned");
    if finished && copier.mode != CopyMode::DangerouslyTruncate {
        return Err(Error::CopyRefused(format!(
            "copy {copy_id} into this target was {} already: a new follow would miss the changes made since. Copy into an empty target, or again with --mode dangerously-truncate",
            recorded.map(|r| r.status).unwrap_or_default()
        )));
    }
    // A follow killed during its initial copy starts that copy over, from a new slot: the
    // chunks committed so far came from a snapshot that is gone, and rows copied from two
    // snapshots can break the target's unique and foreign keys before the changes between
    // them are applied.
    let interrupted = recorded.as_ref().is_some_and(|r| r.status == "copying");
    match &recorded {
        Some(r) if !finished && !interrupted => {
            slot::take_over(&mut src, &r.slot).await?;
            if !slot::exists(&mut src, &r.slot).await? {
                return Err(Error::FollowStopped(format!(
                    "replication slot {} of copy {copy_id} is gone from the source (dropped, or invalidated by max_slot_wal_keep_size): the changes made since are lost to it. Abandon the follow (datamig cutover --abandon) and copy again with --mode dangerously-truncate",
                    r.slot
                )));
            }
        }
        _ => {
            // A slot recorded nowhere is a copy's killed while creating it: never read.
            slot::take_over(&mut src, &name).await?;
            slot::remove(&mut src, &name).await?;
            slot::create(&mut src, &name, &planned).await?;
            slot::settle(&mut src).await?;
            if finished {
                // A new follow after one that ended: no cut-over of the old one applies.
                state::insert(&mut dst, &follow, &copy_id, &name, &name).await?;
                state::clear_cutover(&mut dst, &follow, &copy_id).await?;
            } else {
                state::insert(&mut dst, &follow, &copy_id, &name, &name).await?;
            }
        }
    }

    // 3. The copy, from a snapshot taken now (its first one recorded).
    let mut initial = copier.clone().verify(false).sequences(false);
    if interrupted {
        initial = initial.mode(CopyMode::DangerouslyTruncate);
    }
    let mut report = run::run(&initial, Purpose::Run).await?;
    state::set_status(&mut dst, &follow, &copy_id, "following", None).await?;
    let recorded = state::read(&mut dst, &follow, &copy_id)
        .await?
        .ok_or_else(|| Error::Runtime(format!("copy {copy_id}'s row in {follow} is gone")))?;
    let snapshot = recorded
        .snapshot
        .as_deref()
        .and_then(Snapshot::parse)
        .ok_or_else(|| {
            Error::Runtime(format!(
                "copy {copy_id} recorded no snapshot in {follow}; this is a bug in datamig"
            ))
        })?;

    // 4. The follow, until a cut-over's position is applied.
    let replica =
        sqlx::raw_sql("SET session_replication_role = replica; RESET session_replication_role")
            .execute(&mut dst)
            .await
            .is_ok();
    let mut peek = connect(options, "source").await?;
    source_session(&mut peek).await?;
    let mut follower = stream::Follower::new(
        copier,
        &planned,
        copy_id.clone(),
        follow.clone(),
        recorded.slot.clone(),
        snapshot,
        (peek, src, dst),
        replica,
        recorded.applied_lsn,
    );
    let outcome = follower.run().await;
    let (mut src, mut dst) = follower.into_connections();
    if let Err(err) = &outcome {
        let _ = state::set_status(
            &mut dst,
            &follow,
            &copy_id,
            "stopped",
            Some(&err.to_string()),
        )
        .await;
        return Err(outcome.unwrap_err());
    }

    // 5. The cut-over: sequences, statistics, the comparison, the slot and publication
    //    dropped.
    state::set_status(&mut dst, &follow, &copy_id, "cutting over", None).await?;
    // The tables followed, by name: a table the selection left out may be gone by now.
    let mut end = copier.clone().verify(true);
    end.selection.tables = planned.iter().map(|p| p.plan.table.clone()).collect();
    end.selection.exclude.clear();
    let finished = run::run(&end, Purpose::Cutover).await;
    let finished = match finished {
        Ok(finished) => finished,
        Err(err) => {
            let _ = state::set_status(
                &mut dst,
                &follow,
                &copy_id,
                "stopped",
                Some(&err.to_string()),
            )
            .await;
            return Err(err);
        }
    };
    slot::remove(&mut src, &recorded.slot).await?;
    let outcome = Outcome {
        sequences: finished.sequences.len(),
        analyzed: finished.analyzed.len(),
        tables: finished
            .verification
            .as_ref()
            .map_or(0, |v| v.source.tables.len()),
        differences: finished
            .verification
            .as_ref()
            .map(|v| v.differences.iter().map(|d| d.table.clone()).collect())
            .unwrap_or_default(),
    };
    let message = serde_json::to_string(&outcome).unwrap_or_default();
    state::set_status(&mut dst, &follow, &copy_id, "cut over", Some(&message)).await?;
    report.sequences = finished.sequences;
    report.analyzed.extend(finished.analyzed);
    report.verification = finished.verification;
    Ok(report)
}

/// What the follower did at the cut-over, recorded for the `cutover` command.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Outcome {
    sequences: usize,
    analyzed: usize,
    tables: usize,
    differences: Vec<String>,
}

/// Takes the follow's lock of `copy_id` in this target (a session lock), waiting at most
/// the lock timeout (the session of a follower just killed ends once the server notices),
/// or refuses: another follower of the copy runs.
async fn lock(conn: &mut PgConnection, copy_id: &str) -> Result<(), Error> {
    let locked = sqlx::query("SELECT pg_advisory_lock(hashtext('datamig follow'), hashtext($1))")
        .bind(copy_id)
        .execute(conn)
        .await;
    match locked {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("55P03") => {
            Err(Error::CopyRefused(format!(
                "another follower of copy {copy_id} into this target is running; stop it first (or cut over)"
            )))
        }
        Err(error) => Err(Error::CopyDatabase {
            during: format!("taking the follow lock of copy {copy_id} on the target"),
            error,
        }),
    }
}

/// The source's session for a follow.
async fn source_session(conn: &mut PgConnection) -> Result<(), Error> {
    sqlx::raw_sql(SESSION)
        .execute(conn)
        .await
        .map_err(|error| Error::CopyDatabase {
            during: "setting up the source's session".into(),
            error,
        })?;
    Ok(())
}

/// The end of an online copy, from another process than its follower: waits until the
/// follower applied everything the source committed up to now, then lets it set the
/// sequences, analyze, compare both sides and drop the slot and publication
/// ([`Cutover::run`]); or drops a follow for good ([`Cutover::abandon`]).
///
/// ```no_run
/// # async fn example(source: sqlx::postgres::PgConnectOptions, target: sqlx::postgres::PgConnectOptions) -> Result<(), datamig::Error> {
/// use std::time::Duration;
/// use datamig::copy::Cutover;
///
/// let report = Cutover::new(source, target)
///     .max_lag(Duration::from_secs(1))
///     .run()
///     .await?;
/// assert!(report.differences.is_empty());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Cutover {
    source: PgConnectOptions,
    target: PgConnectOptions,
    progress_schema: Option<String>,
    max_lag: Option<Duration>,
    timeout: Duration,
}

/// What a cut-over did.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct CutoverReport {
    /// The copy's name.
    pub copy: String,
    /// The transactions that were writing on the source when the cut-over took its position:
    /// their changes commit after it and are not in the target.
    pub writers: Vec<Writer>,
    /// The source's WAL position every commit before which is applied.
    pub position: String,
    /// Sequences set from the source's.
    pub sequences: usize,
    /// Tables analyzed.
    pub analyzed: usize,
    /// Tables compared.
    pub tables: usize,
    /// The tables whose row count or checksum differ (empty: the target equals the source).
    pub differences: Vec<String>,
    /// From the cut-over's start to its end.
    pub seconds: f64,
}

/// A follow's state, as its follower last recorded it.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct FollowStatus {
    /// The copy's name.
    pub copy: String,
    /// `copying`, `following`, `cutting over`, `cut over`, `stopped` or `abandoned`.
    pub status: String,
    /// Why it stopped, or the cut-over's outcome.
    pub message: Option<String>,
    /// The replication slot on the source.
    pub slot: String,
    /// The publication of the copied tables on the source.
    pub publication: String,
    /// The source commit position last applied.
    pub applied: String,
    /// WAL bytes of the source not yet confirmed by the follower (the slot retains them).
    pub lag_bytes: Option<i64>,
    /// Seconds behind the source.
    pub lag_seconds: Option<f64>,
    /// Rows applied a second, lately.
    pub rows_per_second: Option<f64>,
    /// Rows and source transactions applied.
    pub rows: i64,
    /// Source transactions applied.
    pub transactions: i64,
    /// Seconds since the follower last recorded its state.
    pub updated_seconds_ago: f64,
}

impl Cutover {
    /// A cut-over of the follow from the database of `source` into that of `target`.
    pub fn new(source: PgConnectOptions, target: PgConnectOptions) -> Self {
        Cutover {
            source,
            target,
            progress_schema: None,
            max_lag: None,
            timeout: Duration::from_secs(600),
        }
    }

    /// Waits first until the follower is less than `lag` behind the source.
    pub fn max_lag(mut self, lag: Duration) -> Self {
        self.max_lag = Some(lag);
        self
    }

    /// Gives up after this long (default 10 minutes); the follow goes on.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The schema of the target's progress and follow tables, as the copy was given it.
    pub fn progress_schema(mut self, schema: impl Into<String>) -> Self {
        self.progress_schema = Some(schema.into());
        self
    }

    async fn open(&self) -> Result<(PgConnection, PgConnection, String, String), Error> {
        let mut src = connect(&self.source, "source").await?;
        source_session(&mut src).await?;
        let mut dst = connect(&self.target, "target").await?;
        sqlx::raw_sql(SESSION)
            .execute(&mut dst)
            .await
            .map_err(|error| Error::CopyDatabase {
                during: "setting up the target's session".into(),
                error,
            })?;
        let (copy_id, _) =
            super::catalog::copy_name(&mut src)
                .await
                .map_err(|error| Error::CopyDatabase {
                    during: "reading the source's name".into(),
                    error,
                })?;
        let follow = state::table(self.progress_schema.as_deref());
        Ok((src, dst, copy_id, follow))
    }

    /// The follow's state, as its follower last recorded it.
    ///
    /// # Errors
    ///
    /// [`Error::CopyRefused`] when the target holds no follow of this source.
    pub async fn status(&self) -> Result<FollowStatus, Error> {
        let (_, mut dst, copy_id, follow) = self.open().await?;
        let r = read(&mut dst, &follow, &copy_id).await?;
        Ok(FollowStatus {
            copy: copy_id,
            status: r.status,
            message: r.message,
            slot: r.slot,
            publication: r.publication,
            applied: slot::lsn_text(r.applied_lsn),
            lag_bytes: r.lag_bytes,
            lag_seconds: r.lag_seconds,
            rows_per_second: r.rows_per_second,
            rows: r.rows,
            transactions: r.transactions,
            updated_seconds_ago: r.age_seconds,
        })
    }

    /// Cuts over: (with [`Cutover::max_lag`], once the follower is that close) names the
    /// transactions writing on the source, takes the source's WAL position, and waits
    /// until the follower applied every commit before it, set the sequences, analyzed and
    /// compared both sides and dropped the slot and the publication. Stop the
    /// application's writes to the source first: what commits after the position is not
    /// in the target.
    ///
    /// # Errors
    ///
    /// [`Error::CopyRefused`] when the target holds no follow of this source or it is not
    /// following; [`Error::FollowStopped`] when the follower stopped (its reason) or did
    /// not finish within the timeout.
    pub async fn run(&self) -> Result<CutoverReport, Error> {
        let started = Instant::now();
        let (mut src, mut dst, copy_id, follow) = self.open().await?;
        let deadline = started + self.timeout;
        let r = read(&mut dst, &follow, &copy_id).await?;
        if r.status != "copying" && r.status != "following" && r.status != "cutting over" {
            return Err(Error::CopyRefused(format!(
                "copy {copy_id}'s follow is {}{}: there is nothing to cut over",
                r.status,
                r.message.map(|m| format!(" ({m})")).unwrap_or_default()
            )));
        }
        if let Some(max) = self.max_lag {
            loop {
                let r = read(&mut dst, &follow, &copy_id).await?;
                let fresh = r.age_seconds < 5.0 && r.status == "following";
                if fresh && r.lag_seconds.is_some_and(|l| l <= max.as_secs_f64()) {
                    break;
                }
                give_up(deadline, &copy_id, "to come within the --max-lag")?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let writers = slot::writers(&mut src).await?;
        let (position, _) = slot::position(&mut src).await?;
        state::request_cutover(&mut dst, &follow, &copy_id, position).await?;
        let r = loop {
            let r = read(&mut dst, &follow, &copy_id).await?;
            match r.status.as_str() {
                "cut over" => break r,
                "stopped" | "abandoned" => {
                    return Err(Error::FollowStopped(format!(
                        "copy {copy_id}'s follower stopped before the cut-over finished: {}",
                        r.message.unwrap_or_else(|| r.status.clone())
                    )));
                }
                _ => {}
            }
            give_up(deadline, &copy_id, "to apply every change and finish")?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let outcome: Outcome = r
            .message
            .as_deref()
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_default();
        Ok(CutoverReport {
            copy: copy_id,
            writers,
            position: slot::lsn_text(position),
            sequences: outcome.sequences,
            analyzed: outcome.analyzed,
            tables: outcome.tables,
            differences: outcome.differences,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Drops the follow for good: its slot (the WAL it retains on the source is freed) and
    /// publication on the source; its row in the target says `abandoned`. The target
    /// keeps what was applied.
    ///
    /// # Errors
    ///
    /// [`Error::CopyRefused`] when the target holds no follow of this source, or its
    /// follower is still reading the slot (stop it first).
    pub async fn abandon(&self) -> Result<FollowStatus, Error> {
        let (mut src, mut dst, copy_id, follow) = self.open().await?;
        let r = read(&mut dst, &follow, &copy_id).await?;
        slot::remove(&mut src, &r.slot).await?;
        state::set_status(&mut dst, &follow, &copy_id, "abandoned", None).await?;
        self.status().await
    }
}

/// The follow's row, or the refusal naming what is missing.
async fn read(dst: &mut PgConnection, follow: &str, copy_id: &str) -> Result<state::Follow, Error> {
    state::read(dst, follow, copy_id).await?.ok_or_else(|| {
        Error::CopyRefused(format!(
            "the target holds no follow of copy {copy_id} (in {follow}): start one with datamig copy --follow, or give the --progress-schema the copy was given"
        ))
    })
}

fn give_up(deadline: Instant, copy_id: &str, what: &str) -> Result<(), Error> {
    if Instant::now() >= deadline {
        return Err(Error::FollowStopped(format!(
            "the cut-over of copy {copy_id} timed out waiting for the follower {what}; the follow goes on. Check that its follower runs (datamig copy --follow), then run the cut-over again"
        )));
    }
    Ok(())
}
