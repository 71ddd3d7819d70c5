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
    /// Source columns left out (`table.column` or `schema.table.column`).
    pub(crate) exclude_columns: Vec<String>,
    /// datamig's own ledger comes along (a copy from SQLite).
    pub(crate) ledger: bool,
}

/// Whether the target's triggers fire while a copy loads ([`Copier::triggers`](crate::copy::Copier::triggers)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Triggers {
    /// Table by table, off when that changes nothing but the speed: the target role may
    /// set `session_replication_role` (a superuser or, from PostgreSQL 15, `GRANT SET ON
    /// PARAMETER`), and the table has no trigger of its own that the load fires (on
    /// `INSERT`; on `UPDATE` too with [`CopyMode::Merge`]) and replica mode would skip or
    /// start, nor a `MATCH FULL` foreign key; its foreign keys are then checked by the
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

/// What a copy from MySQL or MariaDB does with a zero date (`0000-00-00`) or a date with a
/// zero part (`2024-00-15`), which PostgreSQL has no value for ([`Copier::zero_dates`](crate::copy::Copier::zero_dates)).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ZeroDates {
    /// The default: the value is refused, naming its table, row and column.
    #[default]
    Refuse,
    /// Written as `NULL` (refused in a `NOT NULL` column).
    Null,
    /// Written as this date or timestamp (`1970-01-01`, `1970-01-01 00:00:00`), as
    /// PostgreSQL reads it into the column's type.
    Value(String),
}

impl std::str::FromStr for ZeroDates {
    type Err = String;

    /// `refuse`, `null`, or an ISO 8601 date or timestamp (`YYYY-MM-DD[ HH:MM:SS[.f]]`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "refuse" => Ok(ZeroDates::Refuse),
            "null" | "NULL" => Ok(ZeroDates::Null),
            other => {
                let date = chrono::NaiveDate::parse_from_str(other, "%Y-%m-%d").is_ok();
                let at = chrono::NaiveDateTime::parse_from_str(other, "%Y-%m-%d %H:%M:%S%.f")
                    .or_else(|_| {
                        chrono::NaiveDateTime::parse_from_str(other, "%Y-%m-%dT%H:%M:%S%.f")
                    })
                    .is_ok();
                if date || at {
                    Ok(ZeroDates::Value(other.replace('T', " ")))
                } else {
                    Err(format!(
                        "{other:?} is neither refuse, null nor a date (YYYY-MM-DD) or timestamp (YYYY-MM-DD HH:MM:SS)"
                    ))
                }
            }
        }
    }
}
