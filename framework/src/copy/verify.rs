//! Both sides compared: the source's side as the source computes it (its fingerprint, or
//! a SQLite source's rows converted and compared on the target), and the target's
//! fingerprint of the copied columns.

use sqlx::postgres::PgConnection;

use super::fingerprint::{Side, fingerprint};
use super::plan::Planned;
use super::report::Verification;
use super::source::Source;
use crate::error::Error;

/// Both sides compared: fingerprints of the copied columns (and, for a SQLite source, the
/// first rows that differ, compared in the target's types).
pub(super) async fn verify<S: Source>(
    src: &mut S,
    dst: &mut PgConnection,
    planned: &[Planned],
) -> Result<Verification, Error> {
    let (source, rows) = src.verify(dst, planned).await?;
    let target = fingerprint(dst, planned, Side::Target).await?;
    let differences = source.differences(&target);
    Ok(Verification {
        source,
        target,
        differences,
        rows,
    })
}
