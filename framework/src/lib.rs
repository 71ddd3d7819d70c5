//! # datamig
//!
//! Idempotent business data migrations, written in Rust: the code that changes the rows of
//! a live database when a feature ships (a backfill, a normalisation), run exactly once by
//! every deploy, recorded in a checksummed ledger, and proven harmless to run twice.
//!
//! Backends: PostgreSQL and SQLite, each a cargo feature (`postgres`, `sqlite`, both on by
//! default). A migration is written for one (`Ctx<'_, Postgres>`, `Ctx<'_, Sqlite>`) or,
//! generic over [`Backend`], once for every backend compiled in.
//!
//! ```no_run
//! use datamig::prelude::*;
//!
//! /// Give every existing user the default notification settings.
//! #[datamig::migration(id = "20241114_0930_backfill_notification_settings")]
//! async fn backfill_notification_settings(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
//!     let inserted = ctx
//!         .execute(
//!             "INSERT INTO notification_settings (user_id, email_enabled, push_enabled)
//!              SELECT id, true, true FROM users
//!              ON CONFLICT (user_id) DO NOTHING",
//!         )
//!         .await?;
//!     ctx.note(format!("{inserted} users got defaults"));
//!     Ok(())
//! }
//!
//! # async fn deploy(pool: sqlx::PgPool) -> Result<(), datamig::Error> {
//! // In the deploy step: apply what is pending, each migration exactly once.
//! let report = Migrator::new(pool).run().await?;
//! println!("{} applied", report.applied.len());
//! # Ok(()) }
//! # fn main() {}
//! ```
//!
//! ## The contract
//!
//! - **Exactly once.** A migration's effects and its ledger row commit in one transaction;
//!   concurrent runners serialise on a lock, and the loser finds the ledger row and skips.
//! - **Drift is visible.** The ledger stores a SHA-256 of each migration's code tokens; an
//!   applied migration whose code changed stops `run` ([`Error::Drift`]) unless it is marked
//!   `rerun_on_change`.
//! - **Failures leave nothing.** A migration that returns an error or panics is rolled back,
//!   recorded in the run history, and named in [`Error::MigrationFailed`].
//!
//! ## Linking the crate that holds the migrations
//!
//! Migrations register themselves through `inventory` when their crate is linked, and rustc
//! does not link a crate that nothing refers to. Give the crate a `pub fn link()` that calls
//! [`link_marker`] and call it from every binary (see [`registry`]).

#![cfg_attr(docsrs, feature(doc_cfg))]

// Three layers, each importing only from itself and the layers before it, never from this
// root (which only declares and re-exports), and no two modules importing each other:
// `tests/layers.rs` checks both; its `LAYERS` table is this list.
//
// 1. Data, no database code: `bulk`, `copy_text`, `ctx`, `error`, `idempotency_check`,
//    `key`, `ledger`, `merge`, `migration`, `session`, `sql`, `table_change`, `trace`.
// 2. The per-database steps: `backend`.
// 3. What is written once over those steps: `admin`, `copy`, `fingerprint`, `fleet`,
//    `helpers`, `idempotency`, `portable`, `registry`, `runner`, `testing`, `upsert`.
mod bulk;
mod copy_text;
mod ctx;
mod error;
mod idempotency_check;
mod key;
mod ledger;
mod merge;
mod migration;
mod session;
mod sql;
mod table_change;
mod trace;

mod backend;

mod admin;
#[cfg(feature = "postgres")]
pub mod copy;
mod fingerprint;
mod fleet;
mod helpers;
mod idempotency;
mod portable;
pub mod registry;
mod runner;
#[cfg(feature = "testing")]
pub mod testing;
mod upsert;

pub use admin::{CheckReport, Doctor};
pub use backend::Backend;
pub use bulk::SequenceReset;
pub use copy_text::{BindValue, CopyRow, CopyValue};
pub use ctx::Ctx;
pub use error::{Drift, Error, UnconvertibleValue};
pub use fingerprint::{
    Fingerprint, FingerprintOptions, TableDifference, TableFingerprint, fingerprint, fingerprint_on,
};
pub use fleet::{
    Fleet, FleetBackend, FleetEvent, FleetReport, Halted, OnFailure, Outcome, Target, TargetReport,
    Targets,
};
pub use idempotency_check::IdempotencyCheck;
pub use key::{Key, KeyValue};
pub use ledger::{LastRun, LedgerConfig, LedgerEntry, Pause, WorkRange};
pub use merge::{UpsertMode, UpsertReport};
pub use migration::{Batch, BatchSpec, Location, Migration};
pub use registry::link_marker;
pub use runner::{
    AppliedMigration, Health, MigrationStatus, Migrator, Progress, RunReport, RunnerLock, State,
    StopSignal,
};
pub use session::SessionInfo;
#[cfg(feature = "mysql")]
pub use sqlx::MySql;
#[cfg(feature = "postgres")]
pub use sqlx::Postgres;
#[cfg(feature = "sqlite")]
pub use sqlx::Sqlite;
pub use table_change::TableChange;
pub use upsert::Upsert;

#[cfg(feature = "postgres")]
pub use session::pooler_safe;

/// The sqlx this datamig is built with, so that an application need not match its version
/// by hand: `datamig::sqlx::query(..)`.
pub use sqlx;

/// Registers an `async fn` as a data migration.
///
/// ```no_run
/// use datamig::prelude::*;
///
/// /// Lower-case and trim every email address.
/// #[datamig::migration(id = "20241120_1200_normalize_user_emails", lock_timeout = "5s")]
/// async fn normalize_user_emails(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {
///     ctx.execute("UPDATE users SET email = lower(btrim(email)) WHERE email <> lower(btrim(email))")
///         .await?;
///     Ok(())
/// }
/// # fn main() {}
/// ```
///
/// The function must be `async fn name(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()>`
/// (`Ctx<'_, Sqlite>` for SQLite), or generic over the backend,
/// `async fn name<DB: Backend>(ctx: &mut Ctx<'_, DB>) -> anyhow::Result<()>`, to be
/// registered for every backend compiled in; defined at module level. Its doc comment
/// becomes the description `status` shows.
///
/// Arguments:
///
/// - `id = "YYYYMMDD_HHMM_name"` (required): unique; migrations run in id order. A
///   malformed id is a compile error.
/// - `revision = N`: raise it when code the body calls changed, so that the change counts
///   as drift (the checksum covers only the body's own tokens).
/// - `rerun_on_change`: when the code of an applied migration changes, re-run it instead of
///   stopping with a drift error. Only for migrations that converge.
/// - `lock_timeout = "5s"`, `statement_timeout = "10min"`: this migration's own timeouts
///   (units `ms`, `s`, `min`, `h`).
///
/// The attribute keeps the function as written and adds, beside it, a module of the same
/// name holding `MIGRATION`, the [`Migration`] descriptor; pass `&name::MIGRATION` to
/// [`Migrator::migrations`] to run an explicit list.
///
/// The checksum is SHA-256 of the body's tokens: reformatting and comments do not change
/// it, any edit does.
pub use datamig_macros::migration;

/// Guides: how to do the jobs datamig is for, each a page with examples that compile.
///
/// - [backfills](guides::backfills): a migration for existing rows, small or big, on any key, on a busy
///   database.
/// - [deploy](guides::deploy): running pending migrations from a deploy pipeline, the exit codes, the
///   ledger, logs and traces.
/// - [cli](guides::cli): the command line: its two builds, every command, its output.
/// - [testing](guides::testing): proving each migration idempotent against a real database in CI.
/// - [copying](guides::copying): moving the data of one database into another whose schema exists.
/// - [poolers](guides::poolers): running through PgBouncer in transaction mode.
/// - [fleets](guides::fleets): one deploy across many databases and tenant schemas.
pub mod guides {
    #[cfg(feature = "postgres")]
    #[doc = include_str!("../docs/backfills.md")]
    pub mod backfills {}
    #[cfg(feature = "postgres")]
    #[doc = include_str!("../docs/deploy.md")]
    pub mod deploy {}
    #[cfg(feature = "postgres")]
    #[doc = include_str!("../docs/cli.md")]
    pub mod cli {}
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    #[doc = include_str!("../docs/testing.md")]
    pub mod testing {}
    #[cfg(all(feature = "postgres", feature = "sqlite"))]
    #[doc = include_str!("../docs/copying.md")]
    pub mod copying {}
    #[cfg(feature = "postgres")]
    #[doc = include_str!("../docs/poolers.md")]
    pub mod poolers {}
    #[cfg(feature = "postgres")]
    #[doc = include_str!("../docs/fleets.md")]
    pub mod fleets {}
}

/// The names a migration module usually needs.
pub mod prelude {
    pub use crate::{Backend, Batch, Ctx, Migrator, migration};
    #[cfg(feature = "mysql")]
    pub use sqlx::MySql;
    #[cfg(feature = "postgres")]
    pub use sqlx::Postgres;
    #[cfg(feature = "sqlite")]
    pub use sqlx::Sqlite;
}

/// What the `#[migration]` attribute's code and the `datamig` command line use, and tests
/// look at: no part of the API, and no promise of stability.
#[doc(hidden)]
pub mod __private {
    pub use crate::key::describe_checkpoint;
    pub use crate::migration::BoxFuture;
    pub use crate::portable::{Portable, PortableBatched};
    pub use crate::registry::Registered;
    pub use crate::session::{host_name, local_process_alive};
    pub use anyhow;
    pub use inventory;
}
