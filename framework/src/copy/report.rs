//! What a copy returns: the checked plan, per-table reports, the sequences it moved, and
//! both sides' fingerprints.

use super::options::CopyMode;
use super::plan::{Planned, TablePlan};
use crate::error::UnconvertibleValue;
use crate::fingerprint::{Fingerprint, TableDifference};

/// The checked plan of a copy.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct CopyPlan {
    /// The name the copy goes by in the target's progress table (the source's database
    /// name and, where readable, its cluster's system identifier; `merge` passes add
    /// ` merge`).
    pub copy: String,
    /// How target rows are treated.
    pub mode: CopyMode,
    /// The tables in load order.
    pub tables: Vec<TablePlan>,
    /// Bookkeeping tables of schema tools and extensions' tables, left out (name them in
    /// `tables` to copy them).
    pub left_out: Vec<String>,
    /// Whether an earlier run of this copy committed chunks this run keeps.
    pub resumed: bool,
    /// The source is a SQLite database: its values are converted column by column.
    pub from_sqlite: bool,
    /// The source's values are converted column by column into the target's types (a
    /// SQLite, MySQL or MariaDB source), and a plan reads every row to check them.
    pub converted: bool,
    /// Every table loads with the target's triggers off (`session_replication_role =
    /// replica`) and the copy checks every foreign key itself, set-based over each chunk;
    /// otherwise some or all keep their triggers and the server checks their keys row by
    /// row ([`TablePlan::triggers_off`](crate::copy::TablePlan::triggers_off) says which).
    /// See [`Triggers`](crate::copy::Triggers).
    pub triggers_off: bool,
    /// Values of a SQLite source that would not convert: [`Copier::plan`](crate::copy::Copier::plan) reads every row
    /// and lists the first 1,000 here ([`CopyPlan::unconvertible_total`] counts them all).
    pub unconvertible: Vec<UnconvertibleValue>,
    /// How many values would not convert.
    pub unconvertible_total: u64,
}

/// A row that differs between the two sides of a verification or comparison.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RowDifference {
    /// `schema.table`.
    pub table: String,
    /// The row's key (`id = 42`); for a table without a primary key, the row itself.
    pub key: String,
    /// `only in the source`, `only in the target`, or `differs`.
    pub difference: String,
}

/// A sequence moved forward after the copy.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SequenceSet {
    /// The sequence, schema-qualified.
    pub sequence: String,
    /// `schema.table` of the column it serves.
    pub table: String,
    /// The column.
    pub column: String,
    /// Its last value before (`None`: never used).
    pub from: Option<i64>,
    /// Its last value now: the next value it gives is after this one.
    pub to: i64,
}

/// What a copy did to one table.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct TableReport {
    /// `schema.table`.
    pub table: String,
    /// Rows this run wrote (merge: rows read from the source).
    pub rows: u64,
    /// Rows a merge inserted.
    pub inserted: u64,
    /// Rows a merge updated.
    pub updated: u64,
    /// Bytes of `COPY` data this run streamed.
    pub bytes: u64,
    /// Chunks this run committed.
    pub chunks: usize,
    /// Chunks committed by earlier runs, skipped.
    pub chunks_skipped: usize,
    /// Seconds spent on its chunks (summed over workers).
    pub seconds: f64,
}

/// Both sides' fingerprints of the copied tables and columns.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct Verification {
    /// The source's, read in the run's snapshot.
    pub source: Fingerprint,
    /// The target's, after the copy.
    pub target: Fingerprint,
    /// The tables that differ (empty: an exact copy).
    pub differences: Vec<TableDifference>,
    /// The first rows that differ, by key (a SQLite source, whose rows are compared one by
    /// one in the target's types; up to 10 per table).
    pub rows: Vec<RowDifference>,
}

/// What a copy did.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct CopyReport {
    /// The plan it followed.
    pub plan: CopyPlan,
    /// Per table, in load order.
    pub tables: Vec<TableReport>,
    /// Rows written by this run.
    pub rows: u64,
    /// Bytes of `COPY` data streamed by this run.
    pub bytes: u64,
    /// Seconds, start to end.
    pub seconds: f64,
    /// Every chunk had been committed by earlier runs: this run copied nothing.
    pub already_copied: bool,
    /// Sequences moved forward.
    pub sequences: Vec<SequenceSet>,
    /// Tables analyzed.
    pub analyzed: Vec<String>,
    /// The fingerprints, when verification was asked for.
    pub verification: Option<Verification>,
}

/// The report of a run that copied nothing (yet).
pub(super) fn empty_report(plan: CopyPlan, planned: &[Planned]) -> CopyReport {
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

/// A report per planned table, before this run copied anything.
pub(super) fn empty_reports(planned: &[Planned]) -> Vec<TableReport> {
    planned
        .iter()
        .map(|p| TableReport {
            table: p.plan.table.clone(),
            chunks_skipped: p.plan.chunks_done,
            ..TableReport::default()
        })
        .collect()
}
