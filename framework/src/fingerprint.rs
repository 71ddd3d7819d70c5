//! A fingerprint of a database's data: per table, the row count and a SHA-256 of its rows
//! in key order. On PostgreSQL it is computed in the server (a million rows do not travel
//! to the client); SQLite, in-process, hashes each row's text as it reads it.
//!
//! It proves a migration idempotent (the data after a second run has the fingerprint of the
//! data after the first), and verifies a data copy (source and target, table by table).

use std::collections::BTreeMap;

use sqlx::Pool;

use crate::backend::{Backend, pinned};
use crate::error::Error;
use crate::ledger::LedgerConfig;

/// One table's fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct TableFingerprint {
    /// Rows in the table.
    pub rows: i64,
    /// SHA-256 (hex) over the SHA-256 of each row's text, in key order. In a copy's
    /// verification (`copy::Verification`): the SHA-256 (hex) of the sum of a
    /// 64-bit hash of each row's text, computed in the server in no order.
    pub sha256: String,
    /// The columns that order the rows: the primary key, or empty for full-row order.
    pub key: Vec<String>,
}

/// The fingerprint of every table, by `schema.table`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Fingerprint {
    /// Each table's fingerprint.
    pub tables: BTreeMap<String, TableFingerprint>,
}

/// A table whose fingerprint differs between two fingerprints.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct TableDifference {
    /// `schema.table`.
    pub table: String,
    /// Its fingerprint on the first side (`None`: no such table there).
    pub left: Option<TableFingerprint>,
    /// Its fingerprint on the second side.
    pub right: Option<TableFingerprint>,
}

impl Fingerprint {
    /// The tables whose row count or checksum differ, or that only one side has.
    pub fn differences(&self, other: &Fingerprint) -> Vec<TableDifference> {
        let mut names: Vec<&String> = self.tables.keys().chain(other.tables.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| {
                let (left, right) = (self.tables.get(name), other.tables.get(name));
                let same = matches!((left, right), (Some(l), Some(r)) if l.rows == r.rows && l.sha256 == r.sha256);
                (!same).then(|| TableDifference { table: name.clone(), left: left.cloned(), right: right.cloned() })
            })
            .collect()
    }
}

/// Which tables a fingerprint covers.
#[derive(Clone, Debug, Default)]
pub struct FingerprintOptions {
    only: Option<Vec<String>>,
    exclude: Vec<String>,
}

impl FingerprintOptions {
    /// Every table but datamig's own ledger and run history (default names).
    pub fn new() -> Self {
        FingerprintOptions::default()
    }

    /// Only these tables (`table` or `schema.table`).
    pub fn only<S: Into<String>>(mut self, tables: impl IntoIterator<Item = S>) -> Self {
        self.only = Some(tables.into_iter().map(Into::into).collect());
        self
    }

    /// Leaves these tables out (`table` or `schema.table`).
    pub fn exclude<S: Into<String>>(mut self, tables: impl IntoIterator<Item = S>) -> Self {
        self.exclude.extend(tables.into_iter().map(Into::into));
        self
    }

    /// Leaves out the tables of a ledger configured with other names.
    pub fn ledger(mut self, config: &LedgerConfig) -> Self {
        self.exclude.push(config.ledger_table_name().to_string());
        self.exclude.push(config.runs_table_name().to_string());
        self.exclude.push(config.lock_table_name());
        self.exclude.push(config.layout_table_name());
        self
    }

    fn matches(names: &[String], schema: &str, table: &str) -> bool {
        names
            .iter()
            .any(|n| n == table || *n == format!("{schema}.{table}"))
    }

    fn covers(&self, schema: &str, table: &str) -> bool {
        let defaults = LedgerConfig::default();
        if table == defaults.ledger_table_name()
            || table == defaults.runs_table_name()
            || table == defaults.lock_table_name()
            || table == defaults.layout_table_name()
        {
            return false;
        }
        if Self::matches(&self.exclude, schema, table) {
            return false;
        }
        self.only
            .as_ref()
            .is_none_or(|only| Self::matches(only, schema, table))
    }
}

/// The fingerprint of every table (datamig's ledger excluded) on one connection.
///
/// # Errors
///
/// [`Error::Database`]; [`Error::Config`] when `only` names a table that does not exist.
pub async fn fingerprint_on<DB: Backend>(
    conn: &mut DB::Connection,
    options: &FingerprintOptions,
) -> Result<Fingerprint, Error> {
    let mut fingerprint = Fingerprint::default();
    // One transaction: through a transaction pooler, one server session.
    pinned::<DB, _>(conn, async |conn| {
        for (schema, table) in tables::<DB>(conn, options).await? {
            let key = DB::primary_key(conn, &schema, &table).await?;
            let (rows, sha256) = DB::table_fingerprint(conn, &schema, &table, &key).await?;
            fingerprint.tables.insert(
                format!("{schema}.{table}"),
                TableFingerprint { rows, sha256, key },
            );
        }
        Ok(())
    })
    .await?;
    if let Some(only) = &options.only {
        for name in only {
            let found = fingerprint
                .tables
                .keys()
                .any(|k| k == name || k.rsplit_once('.').is_some_and(|(_, t)| t == name));
            if !found {
                return Err(Error::Config(format!("table {name} does not exist")));
            }
        }
    }
    Ok(fingerprint)
}

/// The fingerprint of every table of the pool's database (datamig's ledger excluded).
///
/// # Errors
///
/// [`Error::Database`].
pub async fn fingerprint<DB: Backend>(pool: &Pool<DB>) -> Result<Fingerprint, Error> {
    let mut conn = pool.acquire().await?;
    fingerprint_on::<DB>(&mut conn, &FingerprintOptions::new()).await
}

/// The user tables the options cover, as `(schema, table)`.
pub(crate) async fn tables<DB: Backend>(
    conn: &mut DB::Connection,
    options: &FingerprintOptions,
) -> Result<Vec<(String, String)>, Error> {
    Ok(DB::user_tables(conn)
        .await?
        .into_iter()
        .filter(|(schema, table)| options.covers(schema, table))
        .collect())
}
