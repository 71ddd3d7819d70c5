//! A source that converts its values, compared with the target in the target's types.

use std::future::Future;

use sqlx::postgres::{PgConnection, PgCopyIn};
use sqlx::{AssertSqlSafe, Row};

use crate::backend::postgres::query;
use crate::copy::catalog::display;
use crate::copy::context::During;
use crate::copy::fingerprint::{Encoding, Side, fingerprint, fingerprint_sql, sum_rows};
use crate::copy::plan::Planned;
use crate::copy::report::RowDifference;
use crate::copy::source::Compared;
use crate::copy::sql::{quote_literal, source_from};
use crate::error::Error;
use crate::fingerprint::{Fingerprint, TableFingerprint};
use crate::sql::quote_ident;

/// A source that streams a planned table's rows, converted as a copy converts them, into
/// binary `COPY .. FROM STDIN`.
pub(super) trait StreamAll: Send {
    /// Streams every row of `p` (the plan's `table`th) into `copy_in`.
    fn stream_all(
        &mut self,
        table: usize,
        p: &Planned,
        copy_in: &mut PgCopyIn<&mut PgConnection>,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// A source compared with the target in the target's types: each table's rows are
/// converted as the copy converts them into a temporary table on the target (rolled back,
/// nothing kept), fingerprinted like the target's, and joined with it by key to name the
/// first rows that differ; then the target's own fingerprint.
pub(super) async fn compare_rows(
    reader: &mut impl StreamAll,
    dst: &mut PgConnection,
    planned: &[Planned],
) -> Result<Compared, Error> {
    let mut source = Fingerprint::default();
    let mut differences = Vec::new();
    let mut tx = crate::backend::isolation::begin_read_committed(dst)
        .await
        .during(|| "beginning the comparison's transaction on the target".into())?;
    for (i, p) in planned.iter().enumerate() {
        let during = || format!("comparing {} with the target", p.plan.table);
        let stage = format!("datamig_compare_{i}");
        let columns: Vec<String> = p.plan.copied().map(|c| quote_ident(&c.name)).collect();
        let list = columns.join(", ");
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE TEMPORARY TABLE {stage} ON COMMIT DROP AS SELECT {list} FROM {} WITH NO DATA",
            p.target.ident()
        )))
        .execute(&mut *tx)
        .await
        .during(during)?;
        {
            let mut copy_in = tx
                .copy_in_raw(&format!("COPY {stage} ({list}) FROM STDIN (FORMAT binary)"))
                .await
                .during(during)?;
            if let Err(err) = reader.stream_all(i, p, &mut copy_in).await {
                let _ = copy_in.abort("the comparison stopped").await;
                return Err(err);
            }
            copy_in.finish().await.during(during)?;
        }
        let (rows, sha256) = sum_rows(&mut tx, &fingerprint_sql(p, &stage, Encoding::Same))
            .await
            .during(during)?;
        source.tables.insert(
            display(&p.source.name),
            TableFingerprint {
                rows,
                sha256,
                key: p.plan.key.clone(),
            },
        );
        let row = |side: &str| {
            format!(
                "ROW({})::text",
                columns
                    .iter()
                    .map(|c| format!("{side}.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let target = source_from(&p.target);
        let sql = if p.plan.key.is_empty() {
            format!(
                "(SELECT r, 'only in the source' FROM (SELECT {s} AS r FROM {stage} s EXCEPT ALL SELECT {t} FROM {target} t) x LIMIT 10)
                 UNION ALL
                 (SELECT r, 'only in the target' FROM (SELECT {t} AS r FROM {target} t EXCEPT ALL SELECT {s} FROM {stage} s) y LIMIT 10)",
                s = row("s"),
                t = row("t")
            )
        } else {
            let keys: Vec<String> = p.plan.key.iter().map(|k| quote_ident(k)).collect();
            let first = &keys[0];
            let shown: Vec<String> = p
                .plan
                .key
                .iter()
                .zip(&keys)
                .map(|(name, k)| {
                    format!(
                        "{} || ' = ' || COALESCE(s.{k}, t.{k})::text",
                        quote_literal(name)
                    )
                })
                .collect();
            let on: Vec<String> = keys.iter().map(|k| format!("s.{k} = t.{k}")).collect();
            format!(
                "SELECT {}, CASE WHEN s.{first} IS NULL THEN 'only in the target'
                                 WHEN t.{first} IS NULL THEN 'only in the source' ELSE 'differs' END
                 FROM {stage} s FULL JOIN {target} t ON {}
                 WHERE s.{first} IS NULL OR t.{first} IS NULL OR {} IS DISTINCT FROM {}
                 ORDER BY {} LIMIT 10",
                shown.join(" || ', ' || "),
                on.join(" AND "),
                row("s"),
                row("t"),
                keys.iter()
                    .map(|k| format!("COALESCE(s.{k}, t.{k})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let found = query(AssertSqlSafe(sql))
            .fetch_all(&mut *tx)
            .await
            .during(during)?;
        for r in found {
            differences.push(RowDifference {
                table: p.plan.table.clone(),
                key: r.try_get(0).during(during)?,
                difference: r.try_get(1).during(during)?,
            });
        }
    }
    tx.rollback()
        .await
        .during(|| "ending the comparison's transaction on the target".into())?;
    let target = fingerprint(dst, planned, Side::Target, Encoding::Same).await?;
    Ok(Compared {
        source,
        target,
        rows: differences,
    })
}
