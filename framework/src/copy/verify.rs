//! Both sides compared: the source's fingerprint as the source computes it (in its own
//! server, at the same time as the target's; or, for a converting source, its rows
//! converted and fingerprinted on the target), the target's fingerprint of the copied
//! columns, and the tables that differ.

use sqlx::postgres::PgConnection;

use super::plan::Planned;
use super::report::Verification;
use super::source::{Compared, Source};
use crate::error::Error;

/// Both sides compared: fingerprints of the copied columns (and, for a converting source,
/// the first rows that differ, compared in the target's types).
pub(super) async fn verify<S: Source>(
    src: &mut S,
    dst: &mut PgConnection,
    planned: &[Planned],
) -> Result<Verification, Error> {
    let Compared {
        source,
        target,
        rows,
    } = src.verify(dst, planned).await?;
    let differences = source.differences(&target);
    Ok(Verification {
        source,
        target,
        differences,
        rows,
    })
}
