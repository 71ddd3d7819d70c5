//! A table's fingerprint in PostgreSQL, on either side, for the copy's verification: its
//! row count and a checksum of its copied columns, both computed in the server in one
//! pass over the table, in no order: the sum of a 64-bit hash of each row's text
//! (`hashtextextended(ROW(..)::text, 0)`), so that a parallel sequential scan can read it
//! and nothing is sorted or sent row by row. No column's values are compared or ordered
//! (a type may have no ordering or equality, `box`, `json`, `xml`); a table without a key,
//! whose rows may repeat, is a multiset and sums the same way.
//!
//! The hash is of the text in the database's encoding: where the two databases' encodings
//! differ, each row's text is first converted to UTF-8 and hashed as its MD5 (slower, and
//! the same on both sides). The hash is PostgreSQL's own and the same on servers of the
//! same byte order; two servers of different byte orders report every non-empty table as
//! different, never the same when they are not.

use sha2::{Digest, Sha256};
use sqlx::AssertSqlSafe;
use sqlx::postgres::PgConnection;

use super::catalog::display;
use super::context::During;
use super::plan::Planned;
use super::sql::source_from;
use crate::backend::hex;
use crate::backend::postgres::query_as;
use crate::error::Error;
use crate::fingerprint::{Fingerprint, TableFingerprint};
use crate::sql::quote_ident;

/// Which side of a planned table a fingerprint reads.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Side {
    Source,
    Target,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Target => "target",
        }
    }
}

/// How the rows' text is hashed: as it is (both databases of one encoding), or converted
/// to UTF-8 first.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Encoding {
    Same,
    Differs,
}

/// The database's server encoding, to compare the two sides' before they are hashed.
pub(super) async fn server_encoding(conn: &mut PgConnection, side: Side) -> Result<String, Error> {
    crate::backend::postgres::query_scalar::<String>("SELECT current_setting('server_encoding')")
        .fetch_one(conn)
        .await
        .during(|| format!("reading the {}'s encoding", side.name()))
}

/// The fingerprint of the copied columns of every planned table on one side.
pub(super) async fn fingerprint(
    conn: &mut PgConnection,
    planned: &[Planned],
    side: Side,
    encoding: Encoding,
) -> Result<Fingerprint, Error> {
    let mut out = Fingerprint::default();
    for p in planned {
        let table = if side == Side::Source {
            &p.source
        } else {
            &p.target
        };
        let (rows, checksum) = sum_rows(conn, &fingerprint_sql(p, &source_from(table), encoding))
            .await
            .during(|| format!("fingerprinting {} on the {}", p.plan.table, side.name()))?;
        out.tables.insert(
            display(&p.source.name),
            TableFingerprint {
                rows,
                sha256: checksum,
                key: p.plan.key.clone(),
            },
        );
    }
    Ok(out)
}

/// Runs a statement of [`fingerprint_sql`]: the row count, and the SHA-256 (hex) of the
/// sum's text, so that the checksum reads as the other fingerprints do.
pub(super) async fn sum_rows(
    conn: &mut PgConnection,
    sql: &str,
) -> Result<(i64, String), sqlx::Error> {
    let (rows, sum): (i64, String) = query_as(AssertSqlSafe(sql.to_owned()))
        .fetch_one(conn)
        .await?;
    Ok((rows, checksum(&sum)))
}

/// The checksum shown for a table whose rows' hashes sum to `sum`.
fn checksum(sum: &str) -> String {
    hex(&Sha256::digest(sum.as_bytes()))
}

/// The row count and the sum of the rows' hashes of `from` (shaped as the plan's copied
/// columns), in one aggregate a parallel scan can compute.
pub(super) fn fingerprint_sql(p: &Planned, from: &str, encoding: Encoding) -> String {
    let row = format!(
        "ROW({})::text",
        p.plan
            .copied()
            .map(|c| format!("t.{}", quote_ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let text = match encoding {
        Encoding::Same => format!("{row} COLLATE \"C\""),
        Encoding::Differs => format!("md5(convert_to({row}, 'UTF8'))"),
    };
    format!("SELECT count(*), COALESCE(sum(hashtextextended({text}, 0)), 0)::text FROM {from} AS t")
}

#[cfg(test)]
mod tests {
    use super::checksum;

    #[test]
    fn the_checksum_is_the_sha256_of_the_sum() {
        assert_eq!(
            checksum("0"),
            "5feceb66ffc86f38d952786c6d696c79c2dbc239dd4e91b46729d73a27fb57e9"
        );
    }
}
