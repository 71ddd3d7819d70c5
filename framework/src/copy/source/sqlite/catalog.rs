//! A SQLite file's tables, named as the target names them, and how each copied column's
//! values convert into the target's type.

use std::collections::BTreeMap;

use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Row};

use crate::copy::catalog::{Column, Table, TableName, display};
use crate::copy::convert::{Conversion, Kind, UnixTime};
use crate::copy::plan::{ColumnAction, ColumnPlan, Planned, names_column};
use crate::copy::source::fit;
use crate::sql::quote_ident;

/// The tables of the SQLite database (its `main` schema), named as the target names them:
/// SQLite's names match regardless of case, so a table or column is matched exactly, or
/// else case-insensitively when only one target name fits. Each table is placed in
/// `schema`, the target's first schema.
pub(super) async fn catalog(
    conn: &mut SqliteConnection,
    schema: &str,
    target: &BTreeMap<TableName, Table>,
) -> Result<BTreeMap<TableName, Table>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT name, type FROM pragma_table_list WHERE schema = 'main' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND type <> 'view' ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?;
    let in_schema: Vec<&Table> = target.values().filter(|t| t.name.0 == schema).collect();
    let mut out = BTreeMap::new();
    for row in rows {
        let local: String = row.try_get("name")?;
        let kind: String = row.try_get("type")?;
        let theirs = fit(&local, in_schema.iter().map(|t| (t.name.1.as_str(), *t)));
        let name = (
            schema.to_string(),
            theirs.map_or(local.clone(), |t| t.name.1.clone()),
        );
        let columns = sqlx::query(
            "SELECT name, type, \"notnull\", dflt_value IS NOT NULL AS has_default, pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid",
        )
        .bind(&local)
        .fetch_all(&mut *conn)
        .await?;
        let mut table_columns = Vec::new();
        let mut key: Vec<(i64, String)> = Vec::new();
        for c in columns {
            let local: String = c.try_get("name")?;
            let column_name = theirs
                .and_then(|t| fit(&local, t.columns.iter().map(|c| (c.name.as_str(), c))))
                .map_or(local.clone(), |c| c.name.clone());
            let source_name = if column_name == local {
                String::new()
            } else {
                local
            };
            let hidden: i64 = c.try_get("hidden")?;
            let pk: i64 = c.try_get("pk")?;
            if pk > 0 {
                key.push((pk, column_name.clone()));
            }
            table_columns.push(Column {
                name: column_name,
                source_name,
                sql_type: c.try_get("type")?,
                not_null: c.try_get::<i64, _>("notnull")? != 0,
                has_default: c.try_get("has_default")?,
                generated: hidden >= 2,
                identity: String::new(),
                ..Column::default()
            });
        }
        key.sort();
        let estimated_rows: i64 = if kind == "table" {
            sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT count(*) FROM {}",
                quote_ident(&local)
            )))
            .fetch_one(&mut *conn)
            .await?
        } else {
            0
        };
        out.insert(
            name.clone(),
            Table {
                source_name: if name.1 == local {
                    String::new()
                } else {
                    local.clone()
                },
                name,
                kind: "r".into(),
                estimated_rows,
                // Virtual tables and their shadow tables belong to their module (FTS, R*Tree).
                extension: kind != "table",
                columns: table_columns,
                primary_key: key.into_iter().map(|(_, k)| k).collect(),
                foreign_keys: Vec::new(),
                sequences: Vec::new(),
                can_select: true,
                ..Table::default()
            },
        );
    }
    Ok(out)
}

/// The columns of a table read from SQLite: each source column converted by the target
/// column's type, which must be one SQLite's values convert into.
pub(super) fn convert_columns(
    source: &Table,
    target: &Table,
    unix: &BTreeMap<String, UnixTime>,
    problems: &mut Vec<String>,
) -> Vec<ColumnPlan> {
    let table = display(&source.name);
    let mut plans = Vec::new();
    for column in &target.columns {
        // A column the source computes gives its values to a target column that stores
        // them (a generated target column computes its own).
        let ours = source.column(&column.name);
        let unit = unix_unit(unix, source, &column.name);
        let (action, conversion) = if column.generated {
            (ColumnAction::Generated, None)
        } else if ours.is_some() {
            match Kind::of(column.base()) {
                Some(kind) => {
                    if unit.is_some() && !kind.takes_unix_time() {
                        problems.push(format!(
                            "column {table}.{} is {} in the target: Unix time applies to date, timestamp and timestamptz columns only",
                            column.name, column.sql_type
                        ));
                    }
                    (ColumnAction::Convert, Some(kind.describe(unit)))
                }
                None => {
                    problems.push(format!(
                        "column {table}.{} is {} in the target, which SQLite values are not converted into (boolean, smallint, integer, bigint, text, varchar(n), char(n), uuid, inet, json, jsonb, numeric, real, double precision, bytea, date, time, timestamp, timestamptz): change the column's type, leave the column out with --exclude-columns {table}.{} (the target fills it), or leave the table out with --exclude",
                        column.name, column.sql_type, column.name
                    ));
                    continue;
                }
            }
        } else {
            (ColumnAction::TargetFills, None)
        };
        plans.push(ColumnPlan {
            name: column.name.clone(),
            source_type: ours.map(|c| c.sql_type.clone()),
            source_name: ours
                .filter(|c| !c.source_name.is_empty())
                .map(|c| c.source_name.clone()),
            target_type: column.sql_type.clone(),
            action,
            conversion,
        });
    }
    plans
}

/// The unit of Unix time given for a column (`table.column` or `schema.table.column`).
fn unix_unit(unix: &BTreeMap<String, UnixTime>, table: &Table, column: &str) -> Option<UnixTime> {
    unix.iter()
        .find(|(name, _)| names_column(name, table, column))
        .map(|(_, unit)| *unit)
}

/// The conversion of each copied column of a planned table.
pub(super) fn conversions(p: &Planned, unix: &BTreeMap<String, UnixTime>) -> Vec<Conversion> {
    p.plan
        .copied()
        .map(|c| {
            let target = p.target.column(&c.name);
            Conversion {
                kind: target
                    .and_then(|t| Kind::of(t.base()))
                    .unwrap_or(Kind::Text(None)),
                not_null: target.is_some_and(|t| t.not_null),
                unix: unix_unit(unix, &p.source, &c.name),
            }
        })
        .collect()
}
