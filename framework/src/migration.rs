//! A migration's descriptor: its id, description, checksum and code.

use std::fmt;
use std::time::Duration;

#[cfg(feature = "mysql")]
use crate::MySql;
#[cfg(feature = "postgres")]
use crate::Postgres;
#[cfg(feature = "sqlite")]
use crate::Sqlite;
use std::future::Future;
use std::pin::Pin;

use crate::ctx::Ctx;
use crate::key::{Key, KeyShape, KeyValue};
use std::sync::Arc;

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

/// One batch of a batched migration: the keys after the previous batch's last key, up to
/// and including this batch's last key, in key order.
///
/// The body names its rows with the marker `{batch}` in the statement it passes to
/// [`Ctx::execute_batch`](crate::Ctx::execute_batch): datamig replaces it with the batch's
/// predicate over the key columns (and the migration's scope), and binds the bounds with
/// their types. It works for every key:
///
/// ```text
/// key = "id" (bigint, uuid, text, date, timestamp..):  "id" > $1 AND "id" <= $2
/// key = "tenant_id, id":  ("tenant_id", "id") > ($1, $2) AND ("tenant_id", "id") <= ($3, $4)
/// ```
///
/// `{batch:u}` qualifies the columns with `u`, for a statement that aliases the table or
/// joins another. For a key of one integer column, the form that binds `$1` to
/// [`Batch::after`] and `$2` to [`Batch::last`] works too (each `Some` for such a key, and
/// `None` for any other).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    lower: Option<Key>,
    upper: Key,
    number: u64,
    keys: u64,
    shape: Arc<KeyShape>,
}

impl Batch {
    pub(crate) fn new(
        lower: Option<Key>,
        upper: Key,
        number: u64,
        keys: u64,
        shape: Arc<KeyShape>,
    ) -> Self {
        Batch {
            lower,
            upper,
            number,
            keys,
            shape,
        }
    }

    /// For a key of one integer column: `Some` of the last key of the previous batch (the
    /// exclusive lower bound), or `Some(i64::MIN)` for the first batch, so that `id > $1`
    /// holds for each of its keys.
    ///
    /// `None` for any other key (a UUID, text, a date or timestamp, a numeric, a key of
    /// several columns), whose bounds are [`Batch::lower`] and [`Batch::upper`]; for those,
    /// write `{batch}` in the statement and datamig binds the bounds.
    pub fn after(&self) -> Option<i64> {
        if !self.shape.is_single_integer() {
            return None;
        }
        match &self.lower {
            None => Some(i64::MIN),
            Some(key) => key.as_i64(),
        }
    }

    /// For a key of one integer column: `Some` of the last key of this batch (the
    /// inclusive upper bound). `None` for any other key; see [`Batch::after`].
    pub fn last(&self) -> Option<i64> {
        if !self.shape.is_single_integer() {
            return None;
        }
        self.upper.as_i64()
    }

    /// The last key of the previous batch (exclusive lower bound), for every kind of key:
    /// one [`KeyValue`] per key column, an integer as [`KeyValue::Integer`] and a UUID,
    /// text, date or numeric in the database's text form. `None` for the first batch,
    /// which starts at the smallest key.
    pub fn lower(&self) -> Option<&Key> {
        self.lower.as_ref()
    }

    /// The last key of this batch (inclusive upper bound), for every kind of key; see
    /// [`Batch::lower`].
    pub fn upper(&self) -> &Key {
        &self.upper
    }

    /// The batch's predicate over the key columns (and the scope), with parameters
    /// numbered from `$1`: bind [`Batch::bounds`] to them in order. [`Ctx::execute_batch`]
    /// does both; this is for statements run through [`Ctx::tx`](crate::Ctx::tx).
    ///
    /// [`Ctx::execute_batch`]: crate::Ctx::execute_batch
    pub fn predicate(&self) -> String {
        self.shape.range(self.lower.is_some(), true, 1, None).0
    }

    /// The values the predicate's parameters take, in order: the lower bound's (if any),
    /// then the upper bound's.
    pub fn bounds(&self) -> Vec<KeyValue> {
        self.lower
            .iter()
            .flat_map(|k| k.values().iter().cloned())
            .chain(self.upper.values().iter().cloned())
            .collect()
    }

    pub(crate) fn shape(&self) -> &KeyShape {
        &self.shape
    }

    /// The batch's number, from 1, counted over the whole migration (resumes included).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// How many keys the batch holds (for the check of all the keys left in one
    /// statement, see the backfills guide, the planner's estimate).
    pub fn keys(&self) -> u64 {
        self.keys
    }
}

/// How a batched migration walks its table: by a key of one column or several, in key
/// order (keyset pagination on the key's index, never `OFFSET`), optionally only the rows
/// of a scope, `size` keys at a time, or as many as fit a target duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSpec {
    table: &'static str,
    key: &'static str,
    size: u32,
    pause: Option<Duration>,
    retries: u32,
    scope: Option<&'static str>,
    target: Option<Duration>,
    min_size: u32,
    max_size: u32,
    scan_without_index: bool,
    workers: u32,
    pace: bool,
}

impl BatchSpec {
    /// The table walked.
    pub fn table(&self) -> &'static str {
        self.table
    }

    /// The key as written: one column (`"id"`) or several separated by commas
    /// (`"tenant_id, id"`). Its columns must be `NOT NULL` and, together, unique, usually
    /// the primary key.
    pub fn key(&self) -> &'static str {
        self.key
    }

    /// The key's columns.
    pub fn key_columns(&self) -> Vec<&'static str> {
        self.key
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect()
    }

    /// Keys per batch (the first batch's size, with a target duration).
    pub fn size(&self) -> u32 {
        self.size
    }

    /// A pause between batches, to leave room for the application.
    pub fn pause(&self) -> Option<Duration> {
        self.pause
    }

    /// How many times one batch is retried (with backoff) after a lock timeout, or split
    /// in halves after a statement timeout, before the migration fails.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// The condition a row must meet to be walked (`deleted_at IS NULL`), if any.
    pub fn scope(&self) -> Option<&'static str> {
        self.scope
    }

    /// The duration a batch should take (`target = "200ms"`): the size then grows and
    /// shrinks between [`BatchSpec::min_size`] and [`BatchSpec::max_size`] to meet it.
    pub fn target(&self) -> Option<Duration> {
        self.target
    }

    /// The smallest size a target duration or the pacing may choose, and the smallest
    /// half a batch that hit its statement timeout is split into.
    pub fn min_size(&self) -> u32 {
        self.min_size
    }

    /// The largest size a target duration or the pacing may choose.
    pub fn max_size(&self) -> u32 {
        self.max_size
    }

    /// Whether the migration runs even when no index serves its key
    /// (`dangerously_scan_without_index = true`): then every batch reads the table.
    pub fn scans_without_index(&self) -> bool {
        self.scan_without_index
    }

    /// How many workers walk the key at once (`workers = 4`; 1 by default): the key space
    /// is split into ranges recorded in the database, each worked by one worker at a time
    /// on a connection of its own. PostgreSQL and MySQL; `run --workers N` overrides it. See
    /// [`Migrator::workers`](crate::Migrator::workers).
    pub fn workers(&self) -> u32 {
        self.workers
    }

    /// Whether datamig paces the batches itself (the default when none of `size`, `target`
    /// and `pause` is written; `pace = false` turns it off): back-to-back batches of a
    /// size near the most efficient one while nobody else uses the database, short
    /// batches with pauses while other sessions are busy. See the backfills guide.
    pub fn paces(&self) -> bool {
        self.pace
    }

    #[doc(hidden)]
    pub const fn __pace(mut self, pace: bool) -> Self {
        self.pace = pace;
        self
    }

    #[doc(hidden)]
    pub const fn __new(table: &'static str, key: &'static str, size: u32) -> Self {
        BatchSpec {
            table,
            key,
            size,
            pause: None,
            retries: 5,
            scope: None,
            target: None,
            min_size: 1,
            max_size: u32::MAX,
            scan_without_index: false,
            workers: 1,
            pace: false,
        }
    }

    #[doc(hidden)]
    pub const fn __workers(mut self, workers: u32) -> Self {
        self.workers = workers;
        self
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

    #[doc(hidden)]
    pub const fn __scope(mut self, scope: Option<&'static str>) -> Self {
        self.scope = scope;
        self
    }

    #[doc(hidden)]
    pub const fn __target(mut self, target: Option<Duration>, min: u32, max: u32) -> Self {
        self.target = target;
        self.min_size = min;
        self.max_size = max;
        self
    }

    #[doc(hidden)]
    pub const fn __scan_without_index(mut self, yes: bool) -> Self {
        self.scan_without_index = yes;
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
    #[cfg(feature = "mysql")]
    mysql: Option<Code<MySql>>,
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
        #[cfg(feature = "mysql")]
        if self.mysql.is_some() {
            names.push("mysql");
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

    #[cfg(feature = "mysql")]
    pub(crate) fn mysql_code(&self) -> Option<Code<MySql>> {
        self.mysql
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
            #[cfg(feature = "mysql")]
            mysql: None,
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

    #[doc(hidden)]
    #[cfg(feature = "mysql")]
    pub const fn mysql(mut self, run: MigrationFn<MySql>) -> Self {
        self.mysql = Some(Code::Once(run));
        self
    }

    #[doc(hidden)]
    #[cfg(feature = "mysql")]
    pub const fn mysql_batched(mut self, run: BatchFn<MySql>, spec: BatchSpec) -> Self {
        self.mysql = Some(Code::Batched(run));
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::Batch;
    use crate::key::{Key, KeyKind, KeyPart, KeyShape, KeyValue};

    fn batch(columns: &[(&str, &str, KeyKind)], lower: Option<Key>, upper: Key) -> Batch {
        let shape = KeyShape {
            table: "t".into(),
            parts: columns
                .iter()
                .map(|(name, sql_type, kind)| KeyPart {
                    name: name.to_string(),
                    sql_type: sql_type.to_string(),
                    kind: *kind,
                })
                .collect(),
            scope: None,
            casts: true,
        };
        Batch::new(lower, upper, 1, 100, Arc::new(shape))
    }

    fn text(value: &str) -> KeyValue {
        KeyValue::Text(value.to_string())
    }

    #[test]
    fn an_integer_key_gives_its_bounds_and_the_first_batch_starts_below_every_key() {
        let id = [("id", "bigint", KeyKind::Integer)];
        let first = batch(&id, None, Key(vec![KeyValue::Integer(100)]));
        assert_eq!((first.after(), first.last()), (Some(i64::MIN), Some(100)));
        let next = batch(
            &id,
            Some(Key(vec![KeyValue::Integer(100)])),
            Key(vec![KeyValue::Integer(200)]),
        );
        assert_eq!((next.after(), next.last()), (Some(100), Some(200)));
    }

    #[test]
    fn a_uuid_key_has_no_integer_bounds_and_keeps_its_typed_ones() {
        let id = [("id", "uuid", KeyKind::Other)];
        let lower = Key(vec![text("0b5e0d52-9f5a-4a44-9b1f-3f5e4b2a0c01")]);
        let upper = Key(vec![text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")]);
        let first = batch(&id, None, upper.clone());
        assert_eq!((first.after(), first.last()), (None, None));
        let next = batch(&id, Some(lower.clone()), upper.clone());
        assert_eq!((next.after(), next.last()), (None, None));
        assert_eq!((next.lower(), next.upper()), (Some(&lower), &upper));
    }

    #[test]
    fn a_text_key_has_no_integer_bounds_even_when_its_values_read_as_numbers() {
        let code = [("code", "text", KeyKind::Other)];
        let next = batch(&code, Some(Key(vec![text("10")])), Key(vec![text("42")]));
        assert_eq!((next.after(), next.last()), (None, None));
        assert_eq!(next.bounds(), vec![text("10"), text("42")]);
    }

    #[test]
    fn a_composite_key_has_no_integer_bounds_even_when_every_column_is_an_integer() {
        let columns = [
            ("tenant_id", "bigint", KeyKind::Integer),
            ("id", "bigint", KeyKind::Integer),
        ];
        let upper = Key(vec![KeyValue::Integer(7), KeyValue::Integer(3)]);
        let first = batch(&columns, None, upper.clone());
        assert_eq!((first.after(), first.last()), (None, None));
        let next = batch(
            &columns,
            Some(Key(vec![KeyValue::Integer(7), KeyValue::Integer(1)])),
            upper.clone(),
        );
        assert_eq!((next.after(), next.last()), (None, None));
        assert_eq!(next.upper(), &upper);
        assert_eq!(next.lower().map(Key::values).map(<[_]>::len), Some(2));
    }
}
