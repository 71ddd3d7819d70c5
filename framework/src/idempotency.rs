//! Proving migrations idempotent: run one twice and compare the data's fingerprints.
//!
//! [`Migrator::check_idempotency`] does it on a real database without keeping anything:
//! each pending migration runs twice inside one transaction, which is rolled back.

use sqlx::{AssertSqlSafe, SqlSafeStr};

use crate::backend::{Backend, pinned};
use crate::ctx::Ctx;
use crate::error::Error;
use crate::fingerprint::{FingerprintOptions, TableDifference, fingerprint_on, tables};
use crate::idempotency_check::IdempotencyCheck;
use crate::merge::stage_name;
use crate::migration::{Batch, Code, Migration};
use crate::runner::{BodyFailure, Migrator, run_caught, writes_since};
use crate::sql::quote_ident;
use crate::table_change::TableChange;

/// Copies of the tables, in temporary tables of one session, to show which rows changed.
pub(crate) struct Snapshot {
    /// (schema, table, quoted table, quoted copy)
    tables: Vec<(String, String, String, String)>,
}

/// Copies every covered table into a temporary table of this session.
pub(crate) async fn snapshot<DB: Backend>(
    conn: &mut DB::Connection,
    options: &FingerprintOptions,
) -> Result<Snapshot, Error> {
    let mut snapshot = Snapshot { tables: Vec::new() };
    for (schema, table) in tables::<DB>(conn, options).await? {
        let ident = format!("{}.{}", quote_ident(&schema), quote_ident(&table));
        let copy = stage_name("snapshot");
        DB::execute(
            conn,
            AssertSqlSafe(format!(
                "CREATE TEMPORARY TABLE {copy} AS SELECT * FROM {ident}"
            ))
            .into_sql_str(),
        )
        .await?;
        snapshot.tables.push((schema, table, ident, copy));
    }
    Ok(snapshot)
}

/// The changed tables, with a few rows on each side, then drops the snapshot.
pub(crate) async fn changes<DB: Backend>(
    conn: &mut DB::Connection,
    snapshot: Snapshot,
    differences: &[TableDifference],
) -> Result<Vec<TableChange>, Error> {
    let mut changes = Vec::new();
    for difference in differences {
        let rows_before = difference.left.as_ref().map_or(0, |f| f.rows);
        let rows_after = difference.right.as_ref().map_or(0, |f| f.rows);
        let found = snapshot
            .tables
            .iter()
            .find(|(schema, table, _, _)| format!("{schema}.{table}") == difference.table);
        let (only_before, only_after) = match found {
            Some((schema, table, ident, copy)) => (
                DB::rows_missing_from(conn, schema, table, copy, ident).await?,
                DB::rows_missing_from(conn, schema, table, ident, copy).await?,
            ),
            None => (Vec::new(), Vec::new()),
        };
        changes.push(TableChange {
            table: difference.table.clone(),
            rows_before,
            rows_after,
            only_before,
            only_after,
        });
    }
    for (_, _, _, copy) in snapshot.tables {
        DB::execute(
            conn,
            AssertSqlSafe(format!("DROP TABLE IF EXISTS {copy}")).into_sql_str(),
        )
        .await?;
    }
    Ok(changes)
}

#[cfg(feature = "testing")]
/// The rows of every covered table, held in memory: a snapshot that, unlike temporary
/// tables, survives statements served by different server sessions (a transaction
/// pooler) and holds no lock while other connections write. For test databases.
pub(crate) struct RowsSnapshot {
    /// `schema.table` to its rows as text, sorted.
    tables: std::collections::BTreeMap<String, Vec<String>>,
}

#[cfg(feature = "testing")]
/// Reads every covered table's rows, in one transaction.
pub(crate) async fn snapshot_rows<DB: Backend>(
    conn: &mut DB::Connection,
    options: &FingerprintOptions,
) -> Result<RowsSnapshot, Error> {
    pinned::<DB, _>(conn, async |conn| {
        let mut snapshot = RowsSnapshot {
            tables: std::collections::BTreeMap::new(),
        };
        for (schema, table) in tables::<DB>(conn, options).await? {
            let mut rows = DB::table_rows(conn, &schema, &table).await?;
            rows.sort_unstable();
            snapshot.tables.insert(format!("{schema}.{table}"), rows);
        }
        Ok(snapshot)
    })
    .await
}

#[cfg(feature = "testing")]
/// The changed tables between two snapshots, with up to five rows on each side.
pub(crate) fn changes_between(
    before: &RowsSnapshot,
    after: &RowsSnapshot,
    differences: &[TableDifference],
) -> Vec<TableChange> {
    let empty = Vec::new();
    differences
        .iter()
        .map(|difference| {
            let old = before.tables.get(&difference.table).unwrap_or(&empty);
            let new = after.tables.get(&difference.table).unwrap_or(&empty);
            let (only_before, only_after) = sorted_difference(old, new);
            TableChange {
                table: difference.table.clone(),
                rows_before: difference.left.as_ref().map_or(0, |f| f.rows),
                rows_after: difference.right.as_ref().map_or(0, |f| f.rows),
                only_before,
                only_after,
            }
        })
        .collect()
}

#[cfg(feature = "testing")]
/// The first five rows of each side that the other lacks (as `EXCEPT ALL`), of two sorted
/// lists.
fn sorted_difference(left: &[String], right: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut only_left, mut only_right) = (Vec::new(), Vec::new());
    let (mut l, mut r) = (left.iter().peekable(), right.iter().peekable());
    loop {
        match (l.peek(), r.peek()) {
            (None, None) => break,
            (Some(a), Some(b)) if a == b => {
                l.next();
                r.next();
            }
            (Some(a), Some(b)) if a < b => only_left.push(l.next().cloned().unwrap_or_default()),
            (Some(_), None) => only_left.push(l.next().cloned().unwrap_or_default()),
            (_, Some(_)) => only_right.push(r.next().cloned().unwrap_or_default()),
        }
    }
    only_left.truncate(5);
    only_right.truncate(5);
    (only_left, only_right)
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::sorted_difference;

    #[test]
    fn sorted_difference_is_except_all_both_ways() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let (left, right) = sorted_difference(&s(&["a", "b", "b", "d"]), &s(&["b", "c", "d", "e"]));
        assert_eq!(left, s(&["a", "b"]));
        assert_eq!(right, s(&["c", "e"]));
        assert_eq!(sorted_difference(&[], &[]), (vec![], vec![]));
    }
}

impl<DB: Backend> Migrator<DB> {
    /// Runs each pending migration twice inside one transaction and compares the data's
    /// fingerprints after each run, then rolls everything back: nothing is committed, the
    /// ledger included. For a staging copy of production, before a deploy.
    ///
    /// # Errors
    ///
    /// [`Error::MigrationFailed`] when a run fails (everything is rolled back); as
    /// [`Migrator::run`] for the lock and the database.
    pub async fn check_idempotency(&self) -> Result<Vec<IdempotencyCheck>, Error> {
        self.needs_code("the idempotency check")?;
        let migrations = self.load()?;
        if let Some(only) = self.only_id()
            && !migrations.iter().any(|m| m.id() == only)
        {
            return Err(Error::UnknownId {
                id: only.to_string(),
            });
        }
        self.with_lock(async |conn| {
            let applied: Vec<String> = pinned::<DB, _>(conn, async |conn| {
                Ok(if DB::ledger_exists(conn, self.ledger_config()).await? {
                    DB::read_ledger(conn, self.ledger_config())
                        .await?
                        .into_iter()
                        .filter(|e| !e.is_running())
                        .map(|e| e.id)
                        .collect()
                } else {
                    Vec::new()
                })
            })
            .await?;
            let pending: Vec<&'static Migration> = migrations
                .into_iter()
                .filter(|m| !applied.iter().any(|id| id == m.id()))
                .filter(|m| self.only_id().is_none_or(|only| only == m.id()))
                .collect();
            let options = FingerprintOptions::new().ledger(self.ledger_config());
            let mut tx = self.begin(conn, None).await?;
            let mut checks = Vec::new();
            for migration in pending {
                let (first_run_rows, _) = run_in::<DB>(&mut tx, migration).await?;
                let before = fingerprint_on::<DB>(&mut tx, &options).await?;
                let copy = snapshot::<DB>(&mut tx, &options).await?;
                // Both passes share one transaction, so `now()` is equal in both and a
                // rewrite with equal values leaves the fingerprint as it was: the database's
                // own write counter sees it.
                let (second_run_rows, second_run_writes) = run_in::<DB>(&mut tx, migration).await?;
                let after = fingerprint_on::<DB>(&mut tx, &options).await?;
                let changes = changes::<DB>(&mut tx, copy, &before.differences(&after)).await?;
                checks.push(IdempotencyCheck::new(
                    migration.id(),
                    first_run_rows,
                    second_run_rows,
                    second_run_writes,
                    changes,
                ));
            }
            // Nothing of this is kept.
            tx.rollback().await?;
            Ok(checks)
        })
        .await
    }
}

/// Runs a migration's whole body (every batch, for a batched one) on `conn`, inside the
/// caller's transaction; returns the rows it reported and the rows it wrote, as the
/// database counted them.
async fn run_in<DB: Backend>(
    conn: &mut DB::Connection,
    migration: &'static Migration,
) -> Result<(u64, u64), Error> {
    let before = DB::write_count(&mut *conn).await?;
    let code = DB::code(migration).ok_or_else(|| Error::UnsupportedBackend {
        id: migration.id().to_string(),
        backend: DB::ID,
        available: migration.backends().join(", "),
    })?;
    let mut ctx = Ctx::new(&mut *conn, migration.id(), false);
    let failed = |failure: BodyFailure, batch: Option<u64>| Error::MigrationFailed {
        id: migration.id().to_string(),
        message: match batch {
            Some(number) => format!("batch {number}: {}", failure.message),
            None => failure.message,
        },
        panicked: failure.panicked,
        applied_before: Vec::new(),
        source: failure.source,
    };
    match (code, migration.batch()) {
        (Code::Once(run), _) => {
            run_caught::<DB>(run(&mut ctx))
                .await
                .map_err(|f| failed(f, None))?;
            let written = writes_since(&mut ctx, before).await?;
            Ok((ctx.rows_affected(), written))
        }
        (Code::Batched(run), Some(spec)) => {
            let (shape, _) =
                crate::runner::batch_key::<DB>(ctx.conn(), migration.id(), spec, true).await?;
            let sizer = crate::runner::Sizer::new(spec);
            let (mut after, mut number) = (None, 0);
            while let Some((last, keys)) =
                DB::next_batch(ctx.conn(), &shape, after.as_ref(), None, sizer.size()).await?
            {
                number += 1;
                let batch = Batch::new(after.clone(), last.clone(), number, keys, shape.clone());
                run_caught::<DB>(run(&mut ctx, batch))
                    .await
                    .map_err(|f| failed(f, Some(number)))?;
                after = Some(last);
            }
            let written = writes_since(&mut ctx, before).await?;
            Ok((ctx.rows_affected(), written))
        }
        (Code::Batched(_), None) => Err(Error::Runtime(format!(
            "migration {} is batched but has no batch specification: its descriptor was not \
             built by #[migration]; declare it with the attribute",
            migration.id()
        ))),
    }
}
