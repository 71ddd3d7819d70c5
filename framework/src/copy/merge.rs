//! `--mode merge`: a chunk is copied into a temporary table, then inserted where its key is
//! missing and updated where its copied columns differ, by primary key; nothing is deleted.

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Row};

use super::plan::Planned;
use crate::backend::postgres::query;
use crate::sql::quote_ident;

/// Creates the temporary table the `n`th chunk of a unit is copied into (dropped at the
/// latest when the unit commits), shaped as the target's columns `list`; returns its name.
pub(super) async fn stage(
    conn: &mut PgConnection,
    n: usize,
    p: &Planned,
    list: &str,
) -> Result<String, sqlx::Error> {
    let stage = format!("datamig_copy_stage_{n}");
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TEMPORARY TABLE {stage} ON COMMIT DROP AS SELECT {list} FROM {} WITH NO DATA",
        p.target.ident()
    )))
    .execute(conn)
    .await?;
    Ok(stage)
}

/// Merges the staged rows into the target table and drops the stage; returns (inserted,
/// updated).
pub(super) async fn merge(
    conn: &mut PgConnection,
    p: &Planned,
    stage: &str,
    columns: &[String],
) -> Result<(u64, u64), sqlx::Error> {
    let counts = upsert(&mut *conn, p, stage, columns).await?;
    sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE {stage}")))
        .execute(conn)
        .await?;
    Ok(counts)
}

/// Inserts the staged rows, and updates the rows whose copied columns differ, by primary
/// key; returns (inserted, updated).
async fn upsert(
    conn: &mut PgConnection,
    p: &Planned,
    stage: &str,
    columns: &[String],
) -> Result<(u64, u64), sqlx::Error> {
    let list = columns.join(", ");
    let key: Vec<String> = p
        .target
        .primary_key
        .iter()
        .map(|k| quote_ident(k))
        .collect();
    let always: Vec<&str> = p
        .target
        .columns
        .iter()
        .filter(|c| c.identity == "a")
        .map(|c| c.name.as_str())
        .collect();
    let updatable: Vec<String> = p
        .plan
        .copied()
        .filter(|c| !p.target.primary_key.contains(&c.name) && !always.contains(&c.name.as_str()))
        .map(|c| quote_ident(&c.name))
        .collect();
    let overriding = if p.plan.copied().any(|c| always.contains(&c.name.as_str())) {
        " OVERRIDING SYSTEM VALUE"
    } else {
        ""
    };
    let action = if updatable.is_empty() {
        "DO NOTHING".to_string()
    } else {
        let set: Vec<String> = updatable
            .iter()
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        let mine: Vec<String> = updatable.iter().map(|c| format!("current.{c}")).collect();
        let theirs: Vec<String> = updatable.iter().map(|c| format!("EXCLUDED.{c}")).collect();
        // Compared as text: every type has a text form, not every type an equality.
        format!(
            "DO UPDATE SET {} WHERE ROW({})::text IS DISTINCT FROM ROW({})::text",
            set.join(", "),
            mine.join(", "),
            theirs.join(", ")
        )
    };
    let sql = format!(
        "WITH written AS (
             INSERT INTO {} AS current ({list}){overriding} SELECT {list} FROM {stage}
             ON CONFLICT ({}) {action}
             RETURNING (xmax = 0) AS inserted)
         SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written",
        p.target.ident(),
        key.join(", ")
    );
    let row = query(AssertSqlSafe(sql)).fetch_one(conn).await?;
    let inserted: i64 = row.try_get(0)?;
    let updated: i64 = row.try_get(1)?;
    Ok((
        u64::try_from(inserted).unwrap_or(0),
        u64::try_from(updated).unwrap_or(0),
    ))
}
