//! A migration's descriptor: its id, description, checksum and code.

use std::fmt;
use std::time::Duration;

#[cfg(feature = "postgres")]
use crate::Postgres;
#[cfg(feature = "sqlite")]
use crate::Sqlite;
use std::future::Future;
use std::pin::Pin;

use crate::ctx::Ctx;

/// A boxed, sendable future: the type of a migration body once registered.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The code of a migration for one backend: the body written by the migration's author,
/// boxed so that it can be stored in a `static`.
pub type MigrationFn<DB> = for<'a, 'c> fn(&'a mut Ctx<'c, DB>) -> BoxFuture<'a, anyhow::Result<()>>;

/// The code of a batched migration for one backend: called once per batch of keys.
pub type BatchFn<DB> =
    for<'a, 'c> fn(&'a mut Ctx<'c, DB>, Batch) -> BoxFuture<'a, anyhow::Result<()>>;

/// A migration's code for one backend.
pub enum Code<DB: sqlx::Database> {
    /// Runs once, in one transaction.
    Once(MigrationFn<DB>),
    /// Runs batch by batch, each batch in its own transaction with its checkpoint.
    Batched(BatchFn<DB>),
}

impl<DB: sqlx::Database> Clone for Code<DB> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<DB: sqlx::Database> Copy for Code<DB> {}

/// One batch of a batched migration: the keys in `(after, last]`.
///
/// The body processes the rows whose key is in the range, e.g.
/// `WHERE id > $1 AND id <= $2` bound to `batch.after()` and `batch.last()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    after: Option<i64>,
    last: i64,
    number: u64,
    keys: u64,
}

impl Batch {
    pub(crate) fn new(after: Option<i64>, last: i64, number: u64, keys: u64) -> Self {
        Batch {
            after,
            last,
            number,
            keys,
        }
    }

    /// The last key of the previous batch (exclusive lower bound), or `i64::MIN` for the
    /// first batch.
    pub fn after(&self) -> i64 {
        self.after.unwrap_or(i64::MIN)
    }

    /// The last key of this batch (inclusive upper bound).
    pub fn last(&self) -> i64 {
        self.last
    }

    /// The batch's number, from 1, counted over the whole migration (resumes included).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// How many keys the batch holds.
    pub fn keys(&self) -> u64 {
        self.keys
    }
}

/// How a batched migration walks its table: by a `bigint` key, in key order (keyset
/// pagination, never `OFFSET`), `size` keys at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSpec {
    table: &'static str,
    key: &'static str,
    size: u32,
    pause: Option<Duration>,
    retries: u32,
}

impl BatchSpec {
    /// The table walked.
    pub fn table(&self) -> &'static str {
        self.table
    }

    /// The key column: a unique `bigint` (or `integer`) column, usually the primary key.
    pub fn key(&self) -> &'static str {
        self.key
    }

    /// Keys per batch.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// A pause between batches, to leave room for the application.
    pub fn pause(&self) -> Option<Duration> {
        self.pause
    }

    /// How many times a batch that hit its lock timeout is retried (with backoff) before
    /// the migration fails.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    #[doc(hidden)]
    pub const fn __new(table: &'static str, key: &'static str, size: u32) -> Self {
        BatchSpec {
            table,
            key,
            size,
            pause: None,
            retries: 5,
        }
    }

    #[doc(hidden)]
    pub const fn __pause(mut self, pause: Option<Duration>) -> Self {
        self.pause = pause;
        self
    }

    #[doc(hidden)]
    pub const fn __retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }
}

/// Where a migration is defined in the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The source file, as `file!()` gives it.
    pub file: &'static str,
    /// The line of the `#[migration]` attribute's function.
    pub line: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A registered data migration.
///
/// Values are made by the [`#[migration]`](crate::migration) attribute, which places one
/// in a `static` named `MIGRATION` inside a module named after the function:
/// `backfill_notification_settings::MIGRATION`. Pass such references to
/// [`Migrator::migrations`](crate::Migrator::migrations) to run an explicit list.
pub struct Migration {
    id: &'static str,
    description: &'static str,
    checksum: &'static str,
    location: Location,
    revision: u32,
    rerun_on_change: bool,
    lock_timeout: Option<Duration>,
    statement_timeout: Option<Duration>,
    batch: Option<BatchSpec>,
    requires_schema: Option<i64>,
    #[cfg(feature = "postgres")]
    postgres: Option<Code<Postgres>>,
    #[cfg(feature = "sqlite")]
    sqlite: Option<Code<Sqlite>>,
}

impl Migration {
    /// The unique id, e.g. `20241114_0930_backfill_notification_settings`. Migrations run
    /// in the lexicographic order of their ids.
    pub fn id(&self) -> &'static str {
        self.id
    }

    /// The function's doc comment.
    pub fn description(&self) -> &'static str {
        self.description
    }

    /// SHA-256 (lowercase hex) of the migration's code tokens, computed at compile time.
    pub fn checksum(&self) -> &'static str {
        self.checksum
    }

    /// The author's revision number (`revision = N`, 0 by default): raise it when code the
    /// body calls changed in a way that should count as a change of the migration.
    pub fn revision(&self) -> u32 {
        self.revision
    }

    /// Where the migration is defined.
    pub fn location(&self) -> Location {
        self.location
    }

    /// Whether a change of code re-runs the migration instead of stopping `run` with a drift
    /// error (`rerun_on_change`). Only for migrations whose effect converges.
    pub fn reruns_on_change(&self) -> bool {
        self.rerun_on_change
    }

    /// The migration's own `lock_timeout`, overriding the migrator's.
    pub fn lock_timeout(&self) -> Option<Duration> {
        self.lock_timeout
    }

    /// The migration's own `statement_timeout`, overriding the migrator's.
    pub fn statement_timeout(&self) -> Option<Duration> {
        self.statement_timeout
    }

    /// How a batched migration walks its table; `None` for a migration that runs once in
    /// one transaction.
    pub fn batch(&self) -> Option<&BatchSpec> {
        self.batch.as_ref()
    }

    /// The `sqlx` schema migration version this migration needs (`requires_schema = N`):
    /// `run` refuses to apply it before that version is in `_sqlx_migrations`.
    pub fn requires_schema(&self) -> Option<i64> {
        self.requires_schema
    }

    /// The names of the backends this migration has code for.
    pub fn backends(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        #[cfg(feature = "postgres")]
        if self.postgres.is_some() {
            names.push("postgres");
        }
        #[cfg(feature = "sqlite")]
        if self.sqlite.is_some() {
            names.push("sqlite");
        }
        names
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn postgres_code(&self) -> Option<Code<Postgres>> {
        self.postgres
    }

    #[cfg(feature = "sqlite")]
    pub(crate) fn sqlite_code(&self) -> Option<Code<Sqlite>> {
        self.sqlite
    }

    #[doc(hidden)]
    pub const fn __new(
        id: &'static str,
        description: &'static str,
        checksum: &'static str,
        file: &'static str,
        line: u32,
    ) -> Self {
        Migration {
            id,
            description,
            checksum,
            location: Location { file, line },
            revision: 0,
            rerun_on_change: false,
            lock_timeout: None,
            statement_timeout: None,
            batch: None,
            requires_schema: None,
            #[cfg(feature = "postgres")]
            postgres: None,
            #[cfg(feature = "sqlite")]
            sqlite: None,
        }
    }

    #[doc(hidden)]
    pub const fn __requires_schema(mut self, version: Option<i64>) -> Self {
        self.requires_schema = version;
        self
    }

    #[doc(hidden)]
    pub const fn __revision(mut self, revision: u32) -> Self {
        self.revision = revision;
        self
    }

    #[doc(hidden)]
    pub const fn __rerun_on_change(mut self, rerun: bool) -> Self {
        self.rerun_on_change = rerun;
        self
    }

    #[doc(hidden)]
    pub const fn __lock_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.lock_timeout = timeout;
        self
    }

    #[doc(hidden)]
    pub const fn __statement_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.statement_timeout = timeout;
        self
    }

    #[doc(hidden)]
    #[cfg(feature = "postgres")]
    pub const fn postgres(mut self, run: MigrationFn<Postgres>) -> Self {
        self.postgres = Some(Code::Once(run));
        self
    }

    #[doc(hidden)]
    #[cfg(feature = "postgres")]
    pub const fn postgres_batched(mut self, run: BatchFn<Postgres>, spec: BatchSpec) -> Self {
        self.postgres = Some(Code::Batched(run));
        self.batch = Some(spec);
        self
    }

    #[doc(hidden)]
    #[cfg(feature = "sqlite")]
    pub const fn sqlite(mut self, run: MigrationFn<Sqlite>) -> Self {
        self.sqlite = Some(Code::Once(run));
        self
    }

    #[doc(hidden)]
    #[cfg(feature = "sqlite")]
    pub const fn sqlite_batched(mut self, run: BatchFn<Sqlite>, spec: BatchSpec) -> Self {
        self.sqlite = Some(Code::Batched(run));
        self.batch = Some(spec);
        self
    }

    /// Records the batch specification of a batched migration.
    pub(crate) const fn with_batch(mut self, spec: BatchSpec) -> Self {
        self.batch = Some(spec);
        self
    }
}

impl fmt::Debug for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("id", &self.id)
            .field("checksum", &self.checksum)
            .field("revision", &self.revision)
            .field("location", &self.location)
            .field("batch", &self.batch)
            .field("backends", &self.backends())
            .finish_non_exhaustive()
    }
}
