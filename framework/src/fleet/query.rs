//! Targets read from a query: a `tenants` table, say, on one database.

use super::connect::FleetBackend;
use super::target::Targets;
use crate::error::Error;

impl Targets {
    /// Reads targets from a query on the database at `database_url` (a `tenants` table,
    /// say): its first column is a target's URL, its second, if any, the tenant's schema
    /// (`NULL` for none). A row whose URL is `NULL` names a schema of the database at
    /// `database_url` itself. Rows are numbered from 1 in messages, as lines are.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), datamig::Error> {
    /// use datamig::{Postgres, Targets};
    ///
    /// let targets = Targets::query::<Postgres>(
    ///     "postgres://deploy@db1/shop",
    ///     "SELECT NULL, schema_name FROM tenants WHERE active ORDER BY id",
    /// )
    /// .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Unreachable`] when the database cannot be reached; [`Error::Config`] when
    /// the query fails or its columns are not text; as [`Targets::parse`] for the rows.
    pub async fn query<DB: FleetBackend>(database_url: &str, sql: &str) -> Result<Self, Error> {
        let rows = DB::query_targets(database_url, sql).await?;
        let mut entries = Vec::with_capacity(rows.len());
        for (index, (url, schema)) in rows.into_iter().enumerate() {
            let row = index + 1;
            let url = url.unwrap_or_else(|| database_url.to_string());
            let url = url.trim();
            if url.is_empty() {
                return Err(Error::BadTarget {
                    line: row,
                    reason: "the query's first column (the URL) is empty".to_string(),
                });
            }
            let schema = schema
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
            entries.push((row, url.to_string(), schema));
        }
        Self::from_entries(entries)
    }
}
