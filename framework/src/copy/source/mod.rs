//! Where a copy reads: the [`Source`] trait, which each kind of source database implements
//! (`postgres.rs`, `sqlite/`), and the readers a source hands its workers.
//!
//! What differs from one source to another is here and nowhere else: opening it in one
//! state that every reader of the run sees, reading its catalog, planning its columns,
//! splitting a table into chunks, streaming a chunk's rows into the target's `COPY`, and
//! its side of a verification. The phases of a copy are written once over these.

use std::collections::BTreeMap;
use std::future::Future;

use sqlx::postgres::{PgConnection, PgCopyIn};

use super::catalog::{Table, TableName};
use super::chunk::Chunk;
use super::copier::Copier;
use super::failure::Failure;
use super::options::Purpose;
use super::plan::{ColumnPlan, Planned};
use super::report::RowDifference;
use super::sql::Predicate;
use crate::error::{Error, UnconvertibleValue};
use crate::fingerprint::Fingerprint;

#[cfg_attr(not(any(feature = "sqlite", feature = "mysql")), allow(dead_code))]
pub(super) mod compare;
#[cfg(feature = "mysql")]
pub(super) mod mysql;
pub(super) mod postgres;
#[cfg(feature = "sqlite")]
pub(super) mod sqlite;

/// The target's name for a name of a source whose names are not PostgreSQL's (SQLite,
/// MySQL): the same; else the only one equal to it ignoring case; else, where none is,
/// the only one equal ignoring case and underscores (`InvoiceLine` for `invoice_line`, as
/// a schema written in snake case names it). `None` where none fits, or several do.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(super) fn fit<'a, T>(local: &str, names: impl Iterator<Item = (&'a str, T)>) -> Option<T> {
    let squash = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let ours = squash(local);
    let mut folded = Vec::new();
    let mut squashed = Vec::new();
    for (name, item) in names {
        if name == local {
            return Some(item);
        }
        if name.eq_ignore_ascii_case(local) {
            folded.push(item);
        } else if squash(name) == ours {
            squashed.push(item);
        }
    }
    match (folded.len(), squashed.len()) {
        (1, _) => folded.pop(),
        (0, 1) => squashed.pop(),
        _ => None,
    }
}

/// A source opened for one run, with what it read in the state every reader of the run
/// sees.
pub(super) struct Opened<S> {
    pub(super) source: S,
    /// Its tables, named as the target names them.
    pub(super) tables: BTreeMap<TableName, Table>,
    /// The name the copy goes by in the target's progress table.
    pub(super) name: String,
    /// Who the source is, recorded with the copy's chunks: a copy of the same name from
    /// another source is refused.
    pub(super) identity: String,
    /// The state of the source this run reads, recorded with each chunk it copies.
    pub(super) version: String,
    /// A followed copy's snapshot of a PostgreSQL source as `pg_current_snapshot()` writes
    /// it (which transactions the copied rows hold).
    pub(super) xids: Option<String>,
}

/// Both sides of a verification, as a source compares them.
pub(super) struct Compared {
    /// The source's fingerprint (of its rows converted, for a converting source).
    pub(super) source: Fingerprint,
    /// The target's fingerprint.
    pub(super) target: Fingerprint,
    /// The first rows that differ (a source compared row by row on the target).
    pub(super) rows: Vec<RowDifference>,
}

/// A database a copy reads from, opened for one run (its own session: the catalog, the
/// chunks, the verification).
pub(super) trait Source: Sized + Send + 'static {
    /// How to reach it.
    type Options: Sync;
    /// What hands each worker its reader.
    type Readers: Readers<Reader = Self::Reader>;
    /// A worker's connection, reading one chunk at a time.
    type Reader: Reader;

    /// The kind of database, as the `copy` span's `source` field names it.
    const KIND: &'static str;

    /// Opens the source in the state every reader of this run will see (an exported
    /// snapshot, a SQLite file's write lock), and reads its tables and the copy's name in
    /// it. `target` is the target's connection, `target_tables` its tables.
    fn open(
        options: &Self::Options,
        copier: &Copier,
        target: &mut PgConnection,
        target_tables: &BTreeMap<TableName, Table>,
        purpose: Purpose,
    ) -> impl Future<Output = Result<Opened<Self>, Error>> + Send;

    /// The columns of a table as the target has them and what the copy does with each,
    /// pushing every mismatch onto `problems`.
    fn columns(
        &self,
        source: &Table,
        target: &Table,
        problems: &mut Vec<String>,
    ) -> Vec<ColumnPlan>;

    /// Problems of a plan that only this kind of source has (options that name no copied
    /// column, ...).
    fn check(&self, planned: &[Planned], problems: &mut Vec<String>) {
        let _ = (planned, problems);
    }

    /// The key ranges a table is copied in, measured in the run's state; may fill in the
    /// table's estimated rows.
    fn split(
        &mut self,
        p: &mut Planned,
        chunk_rows: u64,
    ) -> impl Future<Output = Result<Vec<Chunk>, Error>> + Send;

    /// The values of the planned tables that would not convert into the target's types
    /// (the first `limit` of them) and how many there are: none where values are not
    /// converted.
    fn unconvertible(
        &mut self,
        planned: &[Planned],
        limit: usize,
    ) -> impl Future<Output = Result<(Vec<UnconvertibleValue>, u64), Error>> + Send {
        let _ = (planned, limit);
        async { Ok((Vec::new(), 0)) }
    }

    /// What hands out the readers of up to `jobs` workers, all in the run's state.
    fn readers(&mut self, jobs: usize)
    -> impl Future<Output = Result<Self::Readers, Error>> + Send;

    /// A verification: both sides' fingerprints of the planned tables (the two computed at
    /// once where the source is a server of its own) and, where the source compares row
    /// by row on the target, the first rows that differ.
    fn verify(
        &mut self,
        target: &mut PgConnection,
        planned: &[Planned],
    ) -> impl Future<Output = Result<Compared, Error>> + Send;

    /// Ends the source's session.
    fn close(self) -> impl Future<Output = Result<(), Error>> + Send;

    /// Whether a table's rows stream in binary `COPY` (else in text).
    fn binary(p: &Planned) -> bool;

    /// ` AND` a chunk's key range over the target's columns (aliased `c`), empty for a
    /// whole table: its bounds, as this source writes them, bound and cast to the target
    /// columns' types.
    fn target_range(p: &Planned, chunk: &Chunk) -> Predicate;
}

/// What hands each worker a reader of the run's state; shared by the workers.
pub(super) trait Readers: Send + Sync + 'static {
    /// The reader handed out.
    type Reader: Reader;

    /// A reader for one worker.
    fn open(&self) -> impl Future<Output = Result<Self::Reader, Error>> + Send;

    /// A reader to go on with after a chunk failed mid-read: the same, or a new one in the
    /// run's state.
    fn recover(
        &self,
        reader: Self::Reader,
    ) -> impl Future<Output = Result<Self::Reader, Error>> + Send;
}

/// A worker's connection to the source.
pub(super) trait Reader: Send + 'static {
    /// Streams the rows of a chunk of table `p` (the plan's `table`th) into the open
    /// `COPY .. FROM STDIN`, calling `progress` with the rows and bytes of each send;
    /// returns the bytes streamed.
    fn stream(
        &mut self,
        p: &Planned,
        table: usize,
        chunk: &Chunk,
        copy_in: &mut PgCopyIn<&mut PgConnection>,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> impl Future<Output = Result<u64, Failure>> + Send;

    /// The rows of a chunk of table `p` (the plan's `table`th), for a table with no column
    /// to copy.
    fn count(
        &mut self,
        p: &Planned,
        table: usize,
        chunk: &Chunk,
    ) -> impl Future<Output = Result<u64, Failure>> + Send;

    /// For a foreign key of one column that a row of the chunk violates (the target's
    /// `detail` names the missing key), that row's primary key (`id = 42`), where the source
    /// can find it.
    fn referencing_row(
        &mut self,
        p: &Planned,
        chunk: &Chunk,
        constraint: &str,
        detail: &str,
    ) -> impl Future<Output = Option<String>> + Send {
        let _ = (p, chunk, constraint, detail);
        async { None }
    }

    /// Ends the reader's session.
    fn close(self) -> impl Future<Output = ()> + Send;
}

#[cfg(all(test, any(feature = "sqlite", feature = "mysql")))]
mod tests {
    use super::fit;

    #[test]
    fn a_name_fits_exactly_then_ignoring_case_then_ignoring_underscores() {
        let names = ["invoice_line", "invoiceline", "media_type", "a_bc", "ab_c"];
        let find = |local: &str| fit(local, names.iter().map(|n| (*n, *n)));
        assert_eq!(find("invoice_line"), Some("invoice_line"));
        assert_eq!(
            find("InvoiceLine"),
            Some("invoiceline"),
            "case before underscores"
        );
        assert_eq!(find("MediaType"), Some("media_type"));
        assert_eq!(find("ABC"), None, "two fit: none is chosen");
        assert_eq!(find("Track"), None);
    }
}
