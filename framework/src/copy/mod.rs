//! `datamig copy`: the rows of one PostgreSQL database into another whose schema already
//! exists, data only, resumable and verified.
//!
//! ```no_run
//! # async fn example(source: sqlx::PgPool, target: sqlx::PgPool) -> Result<(), datamig::Error> {
//! use datamig::copy::{Copier, CopyMode};
//!
//! let report = Copier::new(&source, &target)
//!     .exclude(["audit_log"])
//!     .mode(CopyMode::Empty)
//!     .jobs(2)
//!     .verify(true)
//!     .run()
//!     .await?;
//! println!("{} rows in {:.1} s", report.rows, report.seconds);
//! # Ok(()) }
//! ```
//!
//! What a run does, in order:
//!
//! 1. **Plan**, before any row moves ([`Copier::plan`] stops here and writes nothing): the
//!    tables of the source (schema tools' and datamig's bookkeeping tables left out unless
//!    named; a partitioned table through its root, a partition only when named, never
//!    both; inheritance children as tables of their own, each parent read `ONLY`), each
//!    matched by schema and name in the target, columns by name; a source column the
//!    target lacks, a target column the source lacks that is `NOT NULL` without a default,
//!    types that differ (other than a lossless widening such as `integer` into `bigint`),
//!    an enum, composite, domain or range defined differently, a type whose input refuses
//!    every value (`pg_node_tree`), row-level security that would hide rows from the
//!    source role or refuse the target role's writes (naming the policies), a missing
//!    privilege, a cycle of foreign keys that cannot be loaded: each is named, and nothing
//!    is written. Generated columns are never written; a table with no column to copy
//!    (every column dropped) has its rows counted and inserted. Tables load parents first
//!    by the target's foreign keys; a table that references itself loads in one statement
//!    (its references are checked when all its rows are in); tables in a cycle of
//!    `DEFERRABLE` keys load together in one transaction with the constraints deferred.
//!    Each table loads with the target's triggers on or off by itself, the plan saying why
//!    ([`TablePlan::triggers`]): with [`Triggers::Auto`], off where the role may and that
//!    changes nothing but the speed (no trigger of its own that replica mode would skip or
//!    start, no `MATCH FULL` key); off, its transactions run in `session_replication_role
//!    = replica` (no row-by-row foreign-key checks by the server) and the copy checks each
//!    foreign key itself, set-based over exactly the rows each chunk wrote, before it
//!    commits. [`Triggers::Off`] turns every table's off, and disables the triggers that
//!    fire in the replica role too (`ALWAYS`, `REPLICA`) within each chunk's transaction,
//!    as `pg_dump --disable-triggers` does; [`Triggers::On`] never.
//! 2. **Refuse a target that holds rows** this copy did not write ([`CopyMode::Empty`], the
//!    default), naming the tables; [`CopyMode::Merge`] inserts missing rows and updates
//!    changed ones by primary key (never deletes); [`CopyMode::DangerouslyTruncate`]
//!    empties the selected target tables first.
//! 3. **Copy** from one snapshot of the source, exported by the first connection and shared
//!    by every worker (`--jobs`), so rows related by foreign keys agree while the source
//!    takes writes. Each table is split in key ranges of its primary key (chunks of about
//!    [`Copier::chunk_rows`] rows, or fewer, down to 50,000, where that gives each job a
//!    chunk and the jobs would idle otherwise); each chunk streams `COPY .. TO STDOUT` from the source
//!    into `COPY .. FROM STDIN` on the target, without parsing a row (in binary where
//!    every column's binary form means the same in the target, in text otherwise: a type
//!    without binary I/O, the database's own types, types naming objects by OID), and
//!    commits in one transaction with its row in the target's `datamig_copy_progress`
//!    table. A worker
//!    free for the next chunk takes one of a table no other worker is loading where one is
//!    ready (parents loaded), then the chunks of a shared table in key order: two loads
//!    into one table contend for its indexes' pages, and only one of them can append at
//!    the right edge of each B-tree. A copy killed
//!    at any instant keeps the chunks that committed and nothing of the others; the same
//!    command run again copies only the chunks left, and a finished copy run again copies
//!    nothing and says so. A chunk whose rows the target rejects (a constraint, a trigger,
//!    a value of the wrong type) is rolled back and stops its table (and the tables that
//!    reference it) at the last committed chunk; every other table goes on, and the run
//!    ends with [`Error::CopyIncomplete`] listing each table not finished
//!    ([`Copier::fail_fast`] stops at the first instead). The progress table records the
//!    source each chunk came from (a PostgreSQL cluster's system identifier and the
//!    database's OID, a SQLite file's identity): chunks of another source of the same name
//!    are refused, not taken as done.
//! 4. **Afterwards**: the sequences of serial and identity columns are set past the copied
//!    values (the source's position or the highest value copied, never moved backwards);
//!    every table that received rows is analyzed (as soon as its last chunk commits,
//!    beside the first chunks of the tables that reference it, which need not wait for
//!    it); with [`Copier::verify`] both sides are fingerprinted at once, table by table
//!    (row count and the sum of a 64-bit hash of each row's copied columns, computed in
//!    each server in one aggregate, in no order: no column is sorted or compared, whatever
//!    its type; shown as the SHA-256 of the sum), and the differences returned.
//!
//! **What a resumed run reads.** A run reads one snapshot; a resumed run takes a new one,
//! so the chunks it copies show the source as it is then, while the chunks committed
//! before show it as it was. For an exact copy of a source that takes writes, copy while it
//! runs, then stop the writes for a short window and run the same copy with
//! [`CopyMode::Merge`]: it reads a fresh snapshot and inserts or updates every row that
//! changed (rows deleted from the source stay in the target), then `--verify` proves the
//! two equal.
//!
//! Both sides need direct connections (not a transaction pooler): the snapshot is shared
//! through `pg_export_snapshot()`, which lives in one server session.
//!
//! # Online copy (follow)
//!
//! With [`Copier::follow`], [`Copier::run`] copies, then applies every change the source
//! commits, until [`Cutover::run`] from another process ends it: the follower applies
//! everything committed up to the cut-over's position, sets the sequences, analyzes,
//! verifies and drops its replication slot, and `run` returns the report. The changes are
//! read by logical decoding (`pgoutput`, a publication of the copied tables, a slot made
//! before the copy's snapshot; the source needs `wal_level = logical`), each source
//! transaction the snapshot already showed skipped; they are applied many source
//! transactions per target transaction, set-based, with the position in the target's
//! `datamig_copy_follow` committed alongside: a follower killed at any instant and run
//! again resumes there. See the guide [`crate::guides::online_copy`].
//!
//! # From SQLite
//!
//! [`Copier::from_sqlite`] reads a SQLite file instead, with everything above, and converts
//! each value by its **target column's type**, checked and never guessed: integers into
//! `smallint`/`integer`/`bigint` (range-checked) and, as `0`/`1`, into `boolean`; text into
//! `text`/`varchar(n)`/`char(n)` (length-checked), `uuid` (or 16-byte blobs), `json`/`jsonb`
//! (parsed), `numeric(p,s)` (never rounded), `date`/`time`/`timestamp`/`timestamptz` (ISO
//! 8601; UTC without an offset; integers only with [`Copier::unix_time`]); reals into
//! `real`/`double precision`/`numeric`; blobs into `bytea`; `NULL` stays `NULL`. Any other
//! target type is refused by the plan. [`Copier::plan`] reads every row and lists each value
//! that would not convert ([`CopyPlan::unconvertible`]); a copy stops at the first, with
//! [`Error::CopyUnconvertible`] naming table, key, column, value and type, keeping the
//! chunks before it. Tables match by name in the target's first schema. Its readers start
//! their read transactions while the copy holds the file's write lock, so they all read
//! one state of it. datamig's ledger comes along ([`Copier::ledger`]), so migrations
//! applied on SQLite count as applied on PostgreSQL. [`Copier::verify`] and
//! [`Copier::compare`] convert the SQLite rows the same way into temporary tables on the
//! target and compare them row by row, naming the first rows that differ.
//!
//! # From MySQL or MariaDB
//!
//! `Copier::from_mysql` (feature `mysql`) reads the tables of a MySQL or MariaDB database
//! instead, with everything above, converting each value by its target column's type:
//! `tinyint(1)`/`bit(1)` into `boolean`, integers (unsigned too) range-checked, `decimal`
//! exactly, `float`/`double` bit-exactly, `datetime` as the local time it is and
//! `timestamp` as UTC, `enum`/`set` into text, a PostgreSQL enum or an array, text of any
//! character set decoded into UTF-8 (invalid bytes and `\0` named), blobs into `bytea`,
//! `json` checked. Zero dates are refused by name unless `Copier::zero_dates` maps them.
//! Its readers start their snapshots while the copy holds `FLUSH TABLES WITH READ LOCK`,
//! so they all read one moment of the source. The copying guide has the whole table.

// Three layers, each importing only from the ones before it (no two files import each
// other). First the data and what both sides share: the options and the builder, the
// catalogs, the plan, chunks, the schedule, failures, reports, connections, fingerprints.
mod catalog;
mod chunk;
mod connect;
mod context;
mod convert;
mod copier;
mod event;
mod failure;
mod fingerprint;
mod options;
mod pipe;
mod plan;
mod report;
mod schedule;
mod shapes;
mod sql;
mod triggers;

// Where a copy reads: the `Source` trait and its implementations.
mod source;

// Then the phases, written once over `Source`, and `run`: the flow of one copy through
// them. This file only declares them, re-exports the public types and holds the entry
// points.
mod check;
mod explain;
mod finish;
mod follow;
mod foreign_keys;
mod load;
mod merge;
mod progress;
mod run;
mod shared;
mod verify;
mod workers;

pub use convert::UnixTime;
pub use copier::{Copier, DEFAULT_CHUNK_ROWS, default_jobs};
pub use event::{CopyEvent, EventSink};
pub use follow::{Cutover, CutoverReport, FollowStatus, Writer};
pub use options::{CopyMode, Triggers, ZeroDates};
pub use plan::{BOOKKEEPING_TABLES, ColumnAction, ColumnPlan, TablePlan};
pub use report::{CopyPlan, CopyReport, RowDifference, SequenceSet, TableReport, Verification};

use crate::error::Error;
pub use crate::error::{TableFailure, UnconvertibleValue};
use options::Purpose;

impl Copier {
    /// Checks everything a run checks before any row moves and returns the plan, with the
    /// chunks each table would be split in: nothing is written to either database.
    ///
    /// # Errors
    ///
    /// [`Error::CopyPlan`] naming every mismatch and every shape the copy cannot take,
    /// [`Error::CopyRefused`] (the same database on both sides, a target holding rows, a
    /// missing privilege, chunks recorded from another source of the same name),
    /// [`Error::CopyDatabase`] saying what the copy was doing when the database failed.
    pub async fn plan(&self) -> Result<CopyPlan, Error> {
        run::run(self, Purpose::Plan)
            .await
            .map(|report| report.plan)
    }

    /// Compares the selected tables of both databases row by row, writing nothing: for a
    /// SQLite source each row is converted into the target's types as a copy would, and the
    /// first rows that differ are named ([`Verification::rows`]); between two PostgreSQL
    /// databases the tables' fingerprints are compared.
    ///
    /// # Errors
    ///
    /// As [`Copier::plan`].
    pub async fn compare(&self) -> Result<Verification, Error> {
        let report = run::run(self, Purpose::Compare).await?;
        report.verification.ok_or_else(|| {
            Error::Runtime(
                "the comparison produced no verification; this is a bug in datamig".into(),
            )
        })
    }

    /// Runs the copy. See the [module docs](self) for what it does, and the errors of
    /// [`Copier::plan`] for what stops it before any row moves.
    ///
    /// # Errors
    ///
    /// As [`Copier::plan`], and: [`Error::CopyIncomplete`] when the target rejected rows of
    /// some tables (each stopped at its last committed chunk, the tables referencing it not
    /// started, every other table copied; run the copy again to resume just those), or
    /// with [`Copier::fail_fast`], [`Error::CopyRejected`] or [`Error::CopyUnconvertible`]
    /// at the first such row; [`Error::CopyBlocked`] when a lock wait on the target
    /// outlasts the lock timeout (naming the sessions holding it);
    /// [`Error::CopyDatabase`] (naming the table and chunk) or [`Error::Config`] when a
    /// connection fails (run the copy again to resume).
    pub async fn run(&self) -> Result<CopyReport, Error> {
        if self.follow {
            return follow::run(self).await;
        }
        run::run(self, Purpose::Run).await
    }
}
