//! The one error type of the library.

use std::time::Duration;

/// A migration whose code differs from what the ledger recorded when it was applied.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Drift {
    /// The migration's id.
    pub id: String,
    /// The checksum recorded in the ledger.
    pub applied_checksum: String,
    /// The checksum of the code in this build.
    pub code_checksum: String,
    /// The revision recorded in the ledger.
    pub applied_revision: u32,
    /// The revision in this build.
    pub code_revision: u32,
}

/// Everything that can go wrong in datamig.
///
/// Messages are lowercase and start with what failed; ids are kept as data so that a caller
/// (the CLI, a test) can act on them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database returned an error, or the connection failed.
    #[error("database error: {}", describe_sqlx(.0))]
    Database(#[from] sqlx::Error),

    /// Another runner held the migration lock for longer than the configured timeout.
    #[error(
        "could not acquire the migration lock within {}: another runner holds it; \
         wait for it to finish or raise the lock timeout", humantime(*.timeout)
    )]
    LockTimeout {
        /// How long the runner waited.
        timeout: Duration,
    },

    /// A worker of migration `id` found every range of keys left held by other workers
    /// (of this runner or another), and those ranges made no progress for `waited`: their
    /// workers are stopped, frozen or cut off while their sessions still hold the ranges.
    /// What the workers committed stays; the next run resumes every range.
    #[error(
        "a worker of migration {id} waited {} for ranges of keys that other workers hold and \
         that made no progress meanwhile: {}. Stop or end the process that holds them (its \
         sessions keep the ranges until they end), then run again: every range resumes from \
         its checkpoint",
        humantime(*.waited),
        .ranges.join("; ")
    )]
    RangesHeld {
        /// The migration's id.
        id: String,
        /// Each range left, in words: its number, its holder and when it last moved.
        ranges: Vec<String>,
        /// How long the worker waited without progress.
        waited: Duration,
    },

    /// The runner's lease on the lock ([`crate::RunnerLock::Lease`]) ran out before a
    /// transaction of migration `id` committed: the runner was frozen, paused or cut off
    /// for longer than the lease, and another runner may have taken over. That transaction
    /// was rolled back (fencing): nothing of it was committed, and nothing stopped here ran
    /// twice.
    #[error(
        "the runner lost its lease on the migration lock before migration {id} could commit \
         ({reason}): its transaction was rolled back and nothing of it was kept; another runner \
         may have taken over. Run `datamig status` to see where things stand, and consider a \
         longer lease if this runner was only slow"
    )]
    LeaseLost {
        /// The migration whose transaction was rolled back.
        id: String,
        /// What was found: the lease expired, or another runner holds it.
        reason: String,
    },

    /// The run is connected through a transaction pooler (PgBouncer in `transaction` mode,
    /// a hosted service's pooler) while the session advisory lock is selected: that lock
    /// belongs to a server session, which a transaction pooler shares between clients, so
    /// it would not keep two runners apart. Nothing ran.
    #[error(
        "datamig is connected to PostgreSQL through a transaction pooler ({evidence}): the \
         session advisory lock does not hold there, so nothing ran. Use the lease lock: \
         `datamig run --lock lease` (or `Migrator::runner_lock(RunnerLock::lease())`), or \
         connect to the server directly"
    )]
    BehindPooler {
        /// What showed the pooler.
        evidence: String,
    },

    /// Applied migrations whose code changed since they were applied.
    #[error(
        "{} applied migration(s) changed since they were applied: {}; restore the code, \
         mark the migration `rerun_on_change` if re-running it is safe, or accept the change \
         with a recorded reason",
        .drifted.len(),
        .drifted.iter().map(|d| d.id.as_str()).collect::<Vec<_>>().join(", ")
    )]
    Drift {
        /// Each drifted migration.
        drifted: Vec<Drift>,
    },

    /// A migration returned an error or panicked; its transaction was rolled back.
    ///
    /// The error the body returned is this error's [`source`](std::error::Error::source),
    /// with its own causes after it: walk them to find a `sqlx::Error` (its SQLSTATE, for
    /// one) with `downcast_ref`.
    #[error("migration {id} {}: {message}; its changes were rolled back", if *.panicked { "panicked" } else { "failed" })]
    MigrationFailed {
        /// The migration's id.
        id: String,
        /// The error, with its chain of causes, or the panic message.
        message: String,
        /// Whether the migration panicked rather than returned an error.
        panicked: bool,
        /// The migrations this run applied before the failure (they stay applied).
        applied_before: Vec<String>,
        /// The error the body returned, or the database's error that ended its
        /// transaction; `None` for a panic, and for a failure the runner found (a ledger
        /// row another runner moved, a health check that failed).
        #[source]
        source: Option<BoxError>,
    },

    /// A batched migration was stopped on purpose after some batches (fault injection in
    /// tests, [`Migrator::interrupt_after_batches`](crate::Migrator::interrupt_after_batches)).
    /// Its committed batches stay, with its checkpoint; the next run resumes it.
    #[error(
        "migration {id} was interrupted after {batches} batches; the next run resumes it from its checkpoint"
    )]
    Interrupted {
        /// The migration's id.
        id: String,
        /// Batches committed in all.
        batches: u64,
    },

    /// The run was asked to stop ([`Migrator::stop_on`](crate::Migrator::stop_on)) and did,
    /// at a transaction boundary.
    #[error("stopped: {after}; nothing is half-applied")]
    Stopped {
        /// What committed last.
        after: String,
        /// The migrations this run applied before it stopped.
        applied: Vec<String>,
    },

    /// The `COMMIT` of a migration (or of a batch) returned an error, so whether it
    /// committed was unknown until the ledger was read again.
    #[error("{}", commit_outcome(.id, *.batch, .error, *.applied))]
    CommitOutcome {
        /// The migration's id.
        id: String,
        /// The error the `COMMIT` returned.
        error: String,
        /// Whether the ledger, read again, shows it applied, or with `batch`, that batch
        /// committed (`None`: it could not be read).
        applied: Option<bool>,
        /// The batch whose `COMMIT` failed (from 1), in a batched migration's walk; `None`
        /// for the `COMMIT` of a whole migration (or of a worker's batch, whose outcome is
        /// the migration's).
        batch: Option<u64>,
    },

    /// A data migration needs a schema migration that has not been applied.
    #[error(
        "migration {id} needs schema migration {version}, which is not applied \
         (_sqlx_migrations): run the schema migrations first (`datamig run --schema DIR`); nothing ran"
    )]
    SchemaNotReady {
        /// The data migration.
        id: String,
        /// The `sqlx` schema migration version it needs.
        version: i64,
    },

    /// A second run of a migration changed data, or reported rows inserted or updated.
    #[error("{}", not_idempotent(.id, .changes, *.second_run_rows, *.second_run_writes))]
    NotIdempotent {
        /// The migration's id.
        id: String,
        /// The tables the second run changed, with sample rows.
        changes: Vec<crate::table_change::TableChange>,
        /// Rows the second run reported as inserted or updated.
        second_run_rows: u64,
        /// Rows the second run wrote, as the database counted them.
        second_run_writes: u64,
    },

    /// A batched migration interrupted and resumed did not end where an uninterrupted run
    /// of it does.
    #[error(
        "migration {id}, interrupted after {batches} batches and resumed, does not end where an \
         uninterrupted run ends: tables {} differ", .tables.join(", ")
    )]
    Diverged {
        /// The migration's id.
        id: String,
        /// Batches before the interruption.
        batches: u64,
        /// The tables whose fingerprints differ.
        tables: Vec<String>,
    },

    /// Two migrations share an id.
    #[error(
        "duplicate migration id {id}: defined at {first} and at {second}; give each migration its own id"
    )]
    DuplicateId {
        /// The shared id.
        id: String,
        /// Where the first definition is.
        first: String,
        /// Where the second definition is.
        second: String,
    },

    /// An id named by the caller is not a registered migration.
    #[error("unknown migration id {id}: no registered migration has it")]
    UnknownId {
        /// The id.
        id: String,
    },

    /// A migration has no code for the database being migrated.
    #[error("migration {id} has no code for {backend}: it was written for {available}")]
    UnsupportedBackend {
        /// The migration's id.
        id: String,
        /// The backend being migrated.
        backend: &'static str,
        /// The backends the migration has code for.
        available: String,
    },

    /// A step the backend cannot take: SQLite runs a batched migration with one worker (it
    /// takes one writer at a time) and cannot check a migration's keys left in one
    /// statement. The runner asks a backend only for what it can do, so this names a step
    /// asked of the wrong backend; nothing of it ran.
    #[error("{backend} cannot {step}")]
    Unsupported {
        /// The backend (`sqlite`).
        backend: &'static str,
        /// What it cannot do.
        step: &'static str,
    },

    /// A ledger table exists but is not shaped as datamig's (another tool's table of the
    /// same name, or an edited one).
    #[error(
        "the table {table} is not a datamig ledger: it lacks the columns {}; use another table name \
         (--ledger-table, --runs-table) or restore it",
        .missing.join(", ")
    )]
    LedgerShape {
        /// The table.
        table: String,
        /// The columns datamig needs that it lacks.
        missing: Vec<String>,
    },

    /// A copy's plan found problems before any row moved: each names the table, the column
    /// and both types where it matters. Nothing was written.
    #[error(
        "the copy cannot start: {} problem(s), nothing was written:\n  - {}",
        .problems.len(),
        .problems.join("\n  - ")
    )]
    CopyPlan {
        /// Every problem found.
        problems: Vec<String>,
    },

    /// A copy refused to start (or to go on) for the reason given; nothing of it was
    /// written that is not recorded as committed.
    #[error("the copy was refused: {0}")]
    CopyRefused(String),

    /// The target rejected a row of a copy. That chunk was rolled back; the chunks committed
    /// before it are kept, and running the same copy again resumes after them.
    #[error(
        "the target rejected a row of {table} (chunk {chunk} of {chunks}): {message}. That chunk \
         was rolled back; the {kept} chunk(s) committed before it are kept. Fix the row in the \
         source (or the target's constraint) and run the same copy again: it resumes"
    )]
    CopyRejected {
        /// `schema.table`.
        table: String,
        /// The chunk's number (from 1).
        chunk: usize,
        /// The table's chunks.
        chunks: usize,
        /// Chunks committed (by this run and earlier ones), kept.
        kept: usize,
        /// The database's words: the constraint, and the key or row it names.
        message: String,
    },

    /// A value of a copy's SQLite source does not convert into its target column's type.
    /// That chunk was rolled back; the chunks committed before it are kept.
    #[error(
        "a value does not convert: {value} (chunk {chunk} of {chunks}). That chunk was rolled \
         back; the {kept} chunk(s) committed before it are kept. Fix the value in the source \
         and run the same copy again: it resumes"
    )]
    CopyUnconvertible {
        /// The chunk's number (from 1).
        chunk: usize,
        /// The table's chunks.
        chunks: usize,
        /// Chunks committed (by this run and earlier ones), kept.
        kept: usize,
        /// The value, where it is, and why it does not convert.
        value: Box<UnconvertibleValue>,
    },

    /// A copy waited for a lock on the target longer than its lock timeout. The chunk was
    /// rolled back; the chunks before it are kept.
    #[error(
        "loading {table} waited for a lock longer than {}{}; the chunk was rolled back and the \
         copy stopped. End or wait for those sessions, then run the same copy again: it resumes",
        humantime(*.timeout),
        describe_sessions(.sessions)
    )]
    CopyBlocked {
        /// `schema.table`.
        table: String,
        /// The lock timeout.
        timeout: Duration,
        /// The sessions holding a conflicting lock or idle in a transaction.
        sessions: Vec<crate::SessionInfo>,
    },

    /// Some tables of a copy failed (the target rejected a row, a value did not convert)
    /// and were rolled back to their last committed chunk, with the tables that reference
    /// them left for later; every other table was copied. Running the same copy again
    /// resumes just those.
    #[error("{}", copy_incomplete(.failed, *.copied))]
    CopyIncomplete {
        /// Each table not finished, and why.
        failed: Vec<TableFailure>,
        /// How many tables were copied in full.
        copied: usize,
    },

    /// A database error during a copy, with what the copy was doing: the table, the chunk
    /// and the statement where it had them.
    #[error("{during}: {}", describe_sqlx(.error))]
    CopyDatabase {
        /// What the copy was doing (`loading chunk 3 of 12 of public.orders`).
        during: String,
        /// The database's error.
        #[source]
        error: sqlx::Error,
    },

    /// A followed copy ([`Copier::follow`](crate::copy::Copier::follow)) stopped following
    /// the source: the reason (a schema change on the source, a change the target refused,
    /// the slot gone), with what was applied. Every source transaction before the position
    /// it names is in the target.
    #[error("the follow stopped: {0}")]
    FollowStopped(String),

    /// A configuration value is invalid, or the caller asked for what cannot be done (a
    /// command the ledger's state does not allow, a migration declared wrong). The message
    /// says what to change.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Something failed while datamig worked that is neither the caller's configuration nor
    /// a migration's own failure: a state of the ledger datamig did not expect, a test server
    /// that would not start. The message names what failed and what to do.
    #[error("{0}")]
    Runtime(String),

    /// A line of a fleet's targets (or a row of its targets query) is not a target. Nothing
    /// ran on any target.
    #[error("targets, line {line}: {reason}; nothing ran")]
    BadTarget {
        /// The line of the file, or the row of the query's result, from 1.
        line: usize,
        /// What is wrong with it (its URL shown without the password).
        reason: String,
    },

    /// A fleet's targets name one target twice (the same database, and the same schema).
    /// Nothing ran on any target.
    #[error(
        "targets, line {line}: {target} is already the target of line {first_line}; each \
         target may appear once; nothing ran"
    )]
    DuplicateTarget {
        /// The target's name (never its password).
        target: String,
        /// The line naming it again.
        line: usize,
        /// The line naming it first.
        first_line: usize,
    },

    /// A fleet's target could not be reached: nothing ran on it.
    #[error("cannot connect to target {target}: {reason}; nothing ran there")]
    Unreachable {
        /// The target's name (never its password).
        target: String,
        /// Why, in the driver's or the server's words.
        reason: String,
    },

    /// A fleet's target names a schema its database does not have: nothing ran on it.
    #[error(
        "target {target}: schema {schema} does not exist in that database; nothing ran there \
         (create it, or take the target out)"
    )]
    SchemaMissing {
        /// The target's name (never its password).
        target: String,
        /// The schema.
        schema: String,
    },
}

/// An error of any type, kept as the source of an [`Error`]: what a migration body returned.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Formats a duration for people: `500ms`, `5s`, `2.5s`.
pub(crate) fn humantime(d: Duration) -> String {
    if d.as_millis() < 1_000 {
        format!("{}ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// A sqlx error in words. For a database error: the server's message and its SQLSTATE
/// (sqlx's own `Display` adds the line of the server's C source, which only misleads).
pub(crate) fn describe_sqlx(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_string(),
        },
        other => other.to_string(),
    }
}

/// An error and its causes, joined by `: `, without repeating a cause its parent already
/// quotes, and with sqlx errors described by [`describe_sqlx`].
pub(crate) fn describe_chain(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let sqlx_err = cause.downcast_ref::<sqlx::Error>();
        let text = sqlx_err.map_or_else(|| cause.to_string(), describe_sqlx);
        if !parts.last().is_some_and(|parent| parent.contains(&text)) {
            parts.push(text);
        }
        if sqlx_err.is_some() {
            // Its sources are the database's own error, already described.
            break;
        }
    }
    parts.join(": ")
}

/// The message of [`Error::CommitOutcome`].
fn commit_outcome(id: &str, batch: Option<u64>, error: &str, applied: Option<bool>) -> String {
    let (what, shows) = match (batch, applied) {
        (None, Some(true)) => (
            format!("migration {id}"),
            "applied: it committed, and nothing needs doing".to_string(),
        ),
        (None, Some(false)) => (
            format!("migration {id}"),
            "not applied: it was rolled back, and the next run applies it".to_string(),
        ),
        (Some(n), Some(true)) => (
            format!("batch {n} of migration {id}"),
            "the batch committed: nothing of it is lost, and the next run goes on after it \
             (`datamig status` shows where the migration stands)"
                .to_string(),
        ),
        (Some(n), Some(false)) => (
            format!("batch {n} of migration {id}"),
            "the batch rolled back: the next run does it again".to_string(),
        ),
        (None, None) => (
            format!("migration {id}"),
            "nothing, because it could not be read: run `datamig status` to see whether it is \
             applied"
                .to_string(),
        ),
        (Some(n), None) => (
            format!("batch {n} of migration {id}"),
            "nothing, because it could not be read: run `datamig status` to see where the \
             migration stands"
                .to_string(),
        ),
    };
    format!(
        "the COMMIT of {what} failed ({error}), so its outcome was unknown; the ledger, read \
         again, shows {}{shows}",
        if shows.starts_with("the batch") || shows.starts_with("nothing") {
            ""
        } else {
            "it "
        }
    )
}

fn not_idempotent(
    id: &str,
    changes: &[crate::table_change::TableChange],
    second_run_rows: u64,
    second_run_writes: u64,
) -> String {
    let mut message = format!("migration {id} is not idempotent: its second run");
    let mut parts = Vec::new();
    for change in changes {
        let mut part = format!(
            " changed table {} ({} rows before, {} after",
            change.table, change.rows_before, change.rows_after
        );
        if !change.only_before.is_empty() {
            part.push_str(&format!("; before: {}", change.only_before.join(" ")));
        }
        if !change.only_after.is_empty() {
            part.push_str(&format!("; after: {}", change.only_after.join(" ")));
        }
        part.push(')');
        parts.push(part);
    }
    if second_run_rows > 0 {
        parts.push(format!(
            " reported {second_run_rows} rows inserted or updated (0 expected)"
        ));
    }
    if second_run_writes > 0 && changes.is_empty() {
        parts.push(format!(
            " wrote {second_run_writes} rows, as the database counted them, though the data \
             ended equal: it rewrites rows with equal values (now(), an unconditional UPDATE, \
             writes through ctx.tx()); guard its writes so that a second run writes nothing"
        ));
    }
    message.push_str(&parts.join(", and"));
    message
}

fn describe_sessions(sessions: &[crate::SessionInfo]) -> String {
    if sessions.is_empty() {
        return ": no session holds it any more".to_string();
    }
    let described: Vec<String> = sessions
        .iter()
        .map(|s| {
            let mut text = format!("pid {}", s.pid);
            if let Some(state) = &s.state {
                text.push_str(&format!(" ({state}"));
                if let Some(ms) = s.transaction_age_ms {
                    text.push_str(&format!(", transaction open {} s", ms / 1000));
                }
                text.push(')');
            }
            if let Some(user) = &s.user {
                text.push_str(&format!(" user {user}"));
            }
            if !s.application_name.is_empty() {
                text.push_str(&format!(" application {}", s.application_name));
            }
            if let Some(query) = &s.query {
                text.push_str(&format!(" last query: {}", query.replace('\n', " ")));
            }
            text
        })
        .collect();
    format!(", held by: {}", described.join("; "))
}

#[cfg(test)]
mod tests {
    use super::{article, describe_chain};

    #[test]
    fn a_type_takes_the_article_it_is_said_with() {
        for (name, said) in [
            ("integer", "an"),
            ("interval", "an"),
            ("xml", "an"),
            ("public.enum_kind", "an"),
            ("uuid", "a"),
            ("date", "a"),
            ("timestamp with time zone", "a"),
        ] {
            assert_eq!(article(name), said, "{name}");
        }
    }

    #[test]
    fn causes_are_joined_once() {
        let err = anyhow::anyhow!("the disk is full").context("boom");
        assert_eq!(describe_chain(&err), "boom: the disk is full");
        let io = std::io::Error::other("connection reset");
        let err = anyhow::Error::new(sqlx::Error::Io(io)).context("loading users");
        assert_eq!(
            describe_chain(&err),
            "loading users: error communicating with database: connection reset"
        );
    }
}

/// A value of a copy's SQLite source that does not convert into its target column's type
/// ([`Error::CopyUnconvertible`], and the list a copy's plan reads every row for).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct UnconvertibleValue {
    /// `schema.table` in the target.
    pub table: String,
    /// The row's key, as `id = 42` (`rowid = 7` for a table without a primary key).
    pub key: String,
    /// The column.
    pub column: String,
    /// The value, as SQLite stores it (`text 'yesterday'`, `integer 2`).
    pub value: String,
    /// The target column's type.
    pub target_type: String,
    /// Why it does not convert.
    pub reason: String,
}

impl std::fmt::Display for UnconvertibleValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, row with {}, column {}: {} is not {} {}: {}",
            self.table,
            self.key,
            self.column,
            self.value,
            article(&self.target_type),
            self.target_type,
            self.reason
        )
    }
}

/// The article before a type's name as it is said: `an integer`, `an xml`, `a uuid`.
pub(crate) fn article(type_name: &str) -> &'static str {
    let name = type_name.rsplit('.').next().unwrap_or(type_name);
    let said_with_vowel = name.starts_with(['a', 'e', 'i', 'o', 'x'])
        || (name.starts_with('u') && !name.starts_with("uu") && !name.starts_with("uni"));
    if said_with_vowel { "an" } else { "a" }
}

/// A table a copy did not finish ([`Error::CopyIncomplete`]): where it stopped and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct TableFailure {
    /// `schema.table`.
    pub table: String,
    /// The chunk that was rolled back (from 1); `None` for a table that never started.
    pub chunk: Option<usize>,
    /// The table's chunks.
    pub chunks: usize,
    /// Its chunks committed (by this run and earlier ones), kept.
    pub kept: usize,
    /// The row, where it is known (`id = 42`, or the target's words for it).
    pub row: Option<String>,
    /// The column, where it is known.
    pub column: Option<String>,
    /// The constraint that rejected the row, where one did.
    pub constraint: Option<String>,
    /// The trigger that rejected the row, where one did.
    pub trigger: Option<String>,
    /// What happened, in the database's words (or why the table did not start).
    pub message: String,
}

impl std::fmt::Display for TableFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.table)?;
        if let Some(chunk) = self.chunk {
            write!(f, " (chunk {chunk} of {}", self.chunks)?;
            if let Some(row) = &self.row {
                write!(f, ", row with {row}")?;
            }
            if let Some(column) = &self.column {
                write!(f, ", column {column}")?;
            }
            if let Some(constraint) = &self.constraint {
                write!(f, ", constraint {constraint}")?;
            }
            if let Some(trigger) = &self.trigger {
                write!(f, ", trigger {trigger}")?;
            }
            write!(f, "; {} chunk(s) kept)", self.kept)?;
        }
        write!(f, ": {}", self.message)
    }
}

fn copy_incomplete(failed: &[TableFailure], copied: usize) -> String {
    format!(
        "the copy did not finish {} table(s) ({copied} copied in full):\n  - {}\nEach was rolled back to its last committed chunk. Fix the rows in the source (or the target's constraints or triggers) and run the same copy again: it resumes just those",
        failed.len(),
        failed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n  - ")
    )
}
