//! The exit codes of the CLI, one per kind of outcome, for deploy pipelines to act on.
//!
//! With `--targets` (a fleet), the exit code is the worst outcome over the targets, in the
//! order of [`worst`]: 130, 1, 4, 9, 12, 3, 2, 5, 13, 10, 11, 8, 7, 6, 0. A target that
//! could not be reached or names a missing schema counts as 2; targets left unreached count
//! as the failure that stopped the fleet (130 when it was interrupted).

/// Success.
pub const OK: u8 = 0;
/// An unexpected failure (a database error in the middle of a run, a bug).
pub const UNEXPECTED: u8 = 1;
/// Bad usage or configuration: an unknown option, a bad or unreachable database URL, a
/// wrong password, a missing database, duplicate migration ids.
pub const USAGE: u8 = 2;
/// An applied migration's code changed (drift); nothing ran.
pub const DRIFT: u8 = 3;
/// A migration failed or panicked; it was rolled back and recorded in the run history.
pub const MIGRATION_FAILED: u8 = 4;
/// The runner lock was not acquired in time; nothing ran.
pub const LOCK_TIMEOUT: u8 = 5;
/// A check found pending migrations.
pub const PENDING: u8 = 6;
/// The run was interrupted (Ctrl-C or SIGTERM): it stopped at a transaction boundary, or abandoned the
/// transaction in progress (rolled back). The shell's convention for SIGINT.
pub const INTERRUPTED: u8 = 130;
/// `check-idempotency` found a migration whose second run changed data.
pub const NOT_IDEMPOTENT: u8 = 7;
/// `compare` found tables that differ between the two databases.
pub const DIFFERENT: u8 = 8;
/// The runner lost its lease (`--lock lease`) before a transaction could commit: it was
/// frozen or cut off for longer than the lease. That transaction was rolled back; another
/// runner may have taken over.
pub const LEASE_LOST: u8 = 9;
/// `copy`: the target rejected a row (a constraint, a value). That chunk was rolled back;
/// the chunks committed before it are kept, and the same command run again resumes.
/// (With `--fail-fast`; without it, such a table is reported with [`COPY_INCOMPLETE`].)
pub const COPY_FAILED: u8 = 10;
/// `copy`: some tables were not finished (the target rejected a row of each, or they
/// reference one that was not): each was rolled back to its last committed chunk and is
/// listed; every other table was copied. The same command run again resumes just those.
pub const COPY_INCOMPLETE: u8 = 11;
/// `copy --follow` or `cutover`: the follow stopped (a schema change on the source, a change
/// the target refused, the slot gone, a cut-over that timed out). Every source transaction
/// before the position named is applied; the message says what to do.
pub const FOLLOW_STOPPED: u8 = 12;
/// `run`: a migration an operator cancelled (`datamig cancel`) was stopped after the batch
/// in progress committed, or left alone: it is not applied, and `run --restart` starts it
/// again from its first key. Everything else the run had to do was done.
pub const CANCELLED: u8 = 13;

/// The worse of two exit codes, for a fleet's exit code over its targets. From the worst:
/// [`INTERRUPTED`] (the fleet did not finish), [`UNEXPECTED`], [`MIGRATION_FAILED`],
/// [`LEASE_LOST`], [`FOLLOW_STOPPED`], [`DRIFT`], [`USAGE`] (a target unreachable, a schema
/// missing), [`LOCK_TIMEOUT`], [`CANCELLED`], [`COPY_FAILED`], [`COPY_INCOMPLETE`],
/// [`DIFFERENT`], [`NOT_IDEMPOTENT`], [`PENDING`], [`OK`].
pub fn worst(a: u8, b: u8) -> u8 {
    const ORDER: [u8; 15] = [
        INTERRUPTED,
        UNEXPECTED,
        MIGRATION_FAILED,
        LEASE_LOST,
        FOLLOW_STOPPED,
        DRIFT,
        USAGE,
        LOCK_TIMEOUT,
        CANCELLED,
        COPY_FAILED,
        COPY_INCOMPLETE,
        DIFFERENT,
        NOT_IDEMPOTENT,
        PENDING,
        OK,
    ];
    // A code not in the list ranks first: nothing unknown is hidden behind a known one.
    let rank = |code| ORDER.iter().position(|c| *c == code).unwrap_or(0);
    if rank(b) < rank(a) { b } else { a }
}
