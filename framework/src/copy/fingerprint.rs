//! A table's fingerprint in PostgreSQL, on either side: its row count and a SHA-256 of its
//! copied columns in key order, or, for a table without a key, in the order of the rows'
//! own hashes: no column's values are sorted or compared (a type may have no ordering or
//! equality, `box`, `json`, `xml`), only keys and the hashes of the rows' text.

use sqlx::postgres::PgConnection;

use super::catalog::{Table, display};
use super::context::During;
use super::plan::Planned;
use super::sql::source_from;
use crate::backend::postgres::hash_rows;
use crate::error::Error;
use crate::fingerprint::{Fingerprint, TableFingerprint};
use crate::sql::quote_ident;

/// Which side of a planned table a fingerprint reads.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Side {
    Source,
    Target,
}

/// The fingerprint of the copied columns of every planned table, in key order (text keys
/// in byte order, so that two databases of different collations agree).
pub(super) async fn fingerprint(
    conn: &mut PgConnection,
    planned: &[Planned],
    side: Side,
) -> Result<Fingerprint, Error> {
    let mut out = Fingerprint::default();
    for p in planned {
        let table = if side == Side::Source {
            &p.source
        } else {
            &p.target
        };
        let (rows, sha256) = hash_rows(conn, fingerprint_sql(p, table, &source_from(table)))
            .await
            .during(|| {
                format!(
                    "fingerprinting {} on the {}",
                    p.plan.table,
                    if side == Side::Source {
                        "source"
                    } else {
                        "target"
                    }
                )
            })?;
        out.tables.insert(
            display(&p.source.name),
            TableFingerprint {
                rows,
                sha256,
                key: p.plan.key.clone(),
            },
        );
    }
    Ok(out)
}

/// The rows of `from` (shaped as `table`) hashed one by one, in key order (a collatable
/// key in byte order, so that two databases of different collations agree), or in the
/// order of the hashes for a table without a key.
pub(super) fn fingerprint_sql(p: &Planned, table: &Table, from: &str) -> String {
    let row = format!(
        "ROW({})::text",
        p.plan
            .copied()
            .map(|c| format!("t.{}", quote_ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let hash = format!("sha256(convert_to({row}, 'UTF8'))");
    if p.plan.key.is_empty() {
        return format!("SELECT {hash} AS h FROM {from} AS t ORDER BY h");
    }
    let order = p
        .plan
        .key
        .iter()
        .map(|k| {
            let column = format!("t.{}", quote_ident(k));
            if table.column(k).is_some_and(|c| c.collatable) {
                format!("{column} COLLATE \"C\"")
            } else {
                column
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("SELECT {hash} FROM {from} AS t ORDER BY {order}")
}
