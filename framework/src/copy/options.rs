//! How a copy is asked to run: the mode for target rows, the triggers, the tables it
//! selects, and what a run is for. Plain values, read by every phase.

/// How a copy treats target tables that already hold rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum CopyMode {
    /// The default: a target table holding rows this copy did not write is refused (by
    /// name), and nothing is written.
    #[default]
    Empty,
    /// Rows missing from the target are inserted and rows that differ are updated, by
    /// primary key; nothing is deleted. Each merge is a pass over every row; an interrupted
    /// pass resumes where it stopped.
    Merge,
    /// Every selected target table is emptied (`TRUNCATE`, in one transaction with the reset
    /// of this copy's progress) before the copy starts. Rows in the target are lost.
    DangerouslyTruncate,
}

impl CopyMode {
    /// The CLI's name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            CopyMode::Empty => "empty",
            CopyMode::Merge => "merge",
            CopyMode::DangerouslyTruncate => "dangerously-truncate",
        }
    }

    pub(crate) fn option(self) -> String {
        format!("--mode {}", self.name())
    }
}

/// Which tables a copy selects.
#[derive(Clone, Debug, Default)]
pub(crate) struct Selection {
    pub(crate) tables: Vec<String>,
    pub(crate) exclude: Vec<String>,
    /// datamig's own ledger comes along (a copy from SQLite).
    pub(crate) ledger: bool,
}

/// Whether the target's triggers fire while a copy loads ([`Copier::triggers`](crate::copy::Copier::triggers)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Triggers {
    /// Table by table, off when that changes nothing but the speed: the target role may
    /// set `session_replication_role` (a superuser or, from PostgreSQL 15, `GRANT SET ON
    /// PARAMETER`), and the table has no trigger of its own that replica mode would skip
    /// or start, nor a `MATCH FULL` foreign key; its foreign keys are then checked by the
    /// copy, set-based. On otherwise. The plan says which, and why a table keeps its
    /// triggers ([`TablePlan::triggers`](crate::copy::TablePlan::triggers)).
    #[default]
    Auto,
    /// On: user triggers fire, and the server checks each foreign key row by row.
    On,
    /// Off for every table whatever its triggers, as `pg_dump --disable-triggers`: no
    /// trigger fires (those enabled `ALWAYS` or `REPLICA`, which the replica role would
    /// not stop, are disabled within each chunk's transaction and enabled again before it
    /// commits, which needs the table's owner or a superuser). Refused before any row
    /// moves where the role may not set `session_replication_role`.
    Off,
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
    /// The end of a follow: the plan, the sequences set, every table analyzed, both sides
    /// compared; no row copied.
    Cutover,
}
