//! A MySQL or MariaDB database's tables (those of the URL's database), named as the target
//! names them, and how each copied column's values convert into the target's type.

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::mysql::MySqlConnection;
use sqlx::postgres::PgConnection;

use super::types::{Conversion, DatetimeOffset, SourceType, Target, describe};
use crate::backend::postgres::query;
use crate::copy::catalog::{Column, Table, TableName, display};
use crate::copy::convert::Kind;
use crate::copy::options::ZeroDates;
use crate::copy::plan::{ColumnAction, ColumnPlan, Planned};
use crate::copy::source::fit;

/// What the source knows of a column beyond the catalog's [`Column`]: its type, read.
pub(super) type SourceTypes = BTreeMap<(String, String), Result<SourceType, String>>;

/// A text column of `information_schema`, whatever its declared type.
fn text(row: &sqlx::mysql::MySqlRow, i: usize) -> Result<Option<String>, sqlx::Error> {
    let raw: Option<&[u8]> = row.try_get_unchecked(i)?;
    Ok(raw.map(|b| String::from_utf8_lossy(b).into_owned()))
}

/// The tables of the source database, each placed in `schema` (the target's first) and
/// named as the target names them: exactly, or else ignoring case when only one target
/// name fits. Returns them with each column's source type.
pub(super) async fn catalog(
    conn: &mut MySqlConnection,
    schema: &str,
    target: &BTreeMap<TableName, Table>,
) -> Result<(BTreeMap<TableName, Table>, SourceTypes), sqlx::Error> {
    let tables = sqlx::query(
        "SELECT TABLE_NAME, COALESCE(TABLE_ROWS, 0) FROM information_schema.TABLES
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED')
         ORDER BY TABLE_NAME",
    )
    .fetch_all(&mut *conn)
    .await?;
    let columns = sqlx::query(
        "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT IS NOT NULL,
                EXTRA, CHARACTER_SET_NAME
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
         ORDER BY TABLE_NAME, ORDINAL_POSITION",
    )
    .fetch_all(&mut *conn)
    .await?;
    let keys = sqlx::query(
        "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE
         WHERE TABLE_SCHEMA = DATABASE() AND CONSTRAINT_NAME = 'PRIMARY'
         ORDER BY TABLE_NAME, ORDINAL_POSITION",
    )
    .fetch_all(&mut *conn)
    .await?;
    let in_schema: Vec<&Table> = target.values().filter(|t| t.name.0 == schema).collect();
    let mut out = BTreeMap::new();
    let mut types = SourceTypes::new();
    let mut local_names: BTreeMap<String, TableName> = BTreeMap::new();
    for row in tables {
        let local = text(&row, 0)?.unwrap_or_default();
        let estimated_rows: i64 = text(&row, 1)?.and_then(|n| n.parse().ok()).unwrap_or(0);
        let theirs = fit(&local, in_schema.iter().map(|t| (t.name.1.as_str(), *t)));
        let name = (
            schema.to_string(),
            theirs.map_or(local.clone(), |t| t.name.1.clone()),
        );
        local_names.insert(local.clone(), name.clone());
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
                can_select: true,
                ..Table::default()
            },
        );
    }
    for row in columns {
        let local_table = text(&row, 0)?.unwrap_or_default();
        let Some(name) = local_names.get(&local_table) else {
            continue;
        };
        let theirs = target.get(name);
        let local = text(&row, 1)?.unwrap_or_default();
        let column_name = theirs
            .and_then(|t| fit(&local, t.columns.iter().map(|c| (c.name.as_str(), c))))
            .map_or(local.clone(), |c| c.name.clone());
        let source_name = if column_name == local {
            String::new()
        } else {
            local
        };
        let data_type = text(&row, 2)?.unwrap_or_default();
        // As the server writes it: an enum's labels keep their case.
        let column_type = text(&row, 3)?.unwrap_or_default();
        let extra = text(&row, 6)?.unwrap_or_default().to_ascii_lowercase();
        let charset = text(&row, 7)?;
        let has_default = text(&row, 5)?.as_deref() == Some("1");
        let table = out.get_mut(name).expect("the table was read");
        types.insert(
            (display(name), column_name.clone()),
            SourceType::of(&data_type, &column_type, charset.as_deref()),
        );
        let shown = match &charset {
            Some(cs) if !cs.starts_with("utf8") && cs != "binary" => {
                format!("{column_type} character set {cs}")
            }
            _ => column_type,
        };
        table.columns.push(Column {
            name: column_name,
            source_name,
            sql_type: shown,
            not_null: text(&row, 4)?.as_deref() == Some("NO"),
            has_default,
            // Not MySQL 8's DEFAULT_GENERATED: a column whose default is an expression.
            generated: extra.contains("virtual generated") || extra.contains("stored generated"),
            identity: if extra.contains("auto_increment") {
                "d".into()
            } else {
                String::new()
            },
            ..Column::default()
        });
    }
    for row in keys {
        let local_table = text(&row, 0)?.unwrap_or_default();
        let Some(name) = local_names.get(&local_table) else {
            continue;
        };
        let local = text(&row, 1)?.unwrap_or_default();
        let table = out.get_mut(name).expect("the table was read");
        let column = fit(&local, table.columns.iter().map(|c| (c.name.as_str(), c)))
            .map_or(local, |c| c.name.clone());
        table.primary_key.push(column);
    }
    Ok((out, types))
}

/// The target's enums and array element types, by name as `format_type` writes them.
#[derive(Clone, Debug, Default)]
pub(super) struct TargetTypes {
    enums: BTreeMap<String, Vec<String>>,
    /// Element types' OIDs, by the element's name.
    oids: BTreeMap<String, u32>,
}

impl TargetTypes {
    /// Reads the target's enums (with their labels) and the element types of its arrays.
    pub(super) async fn read(target: &mut PgConnection) -> Result<TargetTypes, sqlx::Error> {
        let mut types = TargetTypes::default();
        for row in query(
            "SELECT format_type(t.oid, NULL), array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
             FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.oid",
        )
        .fetch_all(&mut *target)
        .await?
        {
            types.enums.insert(row.try_get(0)?, row.try_get(1)?);
        }
        for row in query(
            "SELECT format_type(e.oid, NULL), e.oid::int8 FROM pg_type a JOIN pg_type e ON e.oid = a.typelem
             WHERE a.typcategory = 'A' AND a.typlen = -1 AND (e.typtype = 'e' OR e.oid IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype))",
        )
        .fetch_all(&mut *target)
        .await?
        {
            let oid: i64 = row.try_get(1)?;
            types.oids.insert(row.try_get(0)?, oid as u32);
        }
        Ok(types)
    }

    /// What a target column is written as, if the copy writes it: by its type, else by
    /// the type under its domain (the target checks the domain's constraints).
    pub(super) fn of(&self, column: &Column) -> Option<Target> {
        self.target(&column.sql_type).or_else(|| {
            (!column.base_type.is_empty())
                .then(|| self.target(&column.base_type))
                .flatten()
        })
    }

    /// What a column of this target type is written as, if the copy writes it.
    pub(super) fn target(&self, sql_type: &str) -> Option<Target> {
        if let Some(element) = sql_type.strip_suffix("[]") {
            let base = element.split('(').next().unwrap_or(element);
            let oid = *self.oids.get(element).or_else(|| self.oids.get(base))?;
            let inner = self.target(element)?;
            return Some(Target::Array(oid, Box::new(inner)));
        }
        if let Some(labels) = self.enums.get(sql_type) {
            return Some(Target::Enum(labels.clone()));
        }
        if sql_type == "interval" {
            return Some(Target::Interval);
        }
        if sql_type == "geometry" || sql_type.starts_with("geometry(") {
            return Some(Target::Geometry);
        }
        Kind::of(sql_type).map(Target::Kind)
    }
}

/// The columns of a table read from MySQL: each source column converted by the target
/// column's type, which must be one its values convert into.
pub(super) fn convert_columns(
    source: &Table,
    target: &Table,
    types: &SourceTypes,
    target_types: &TargetTypes,
    offset: DatetimeOffset,
    problems: &mut Vec<String>,
) -> Vec<ColumnPlan> {
    let table = display(&source.name);
    let mut plans = Vec::new();
    for column in &target.columns {
        // A column the source computes gives its values to a target column that stores
        // them (a generated target column computes its own).
        let ours = source.column(&column.name);
        let (action, conversion) = if column.generated {
            (ColumnAction::Generated, None)
        } else if let Some(ours) = ours {
            let source_type = types.get(&(table.clone(), column.name.clone()));
            let described = match source_type {
                Some(Ok(st)) => match target_types.of(column) {
                    Some(t) => describe(st, &t, offset).map_err(|why| {
                        if why.is_empty() {
                            refused(st, &column.sql_type, &format!("{table}.{}", column.name))
                        } else {
                            why
                        }
                    }),
                    None => Err(refused(
                        st,
                        &column.sql_type,
                        &format!("{table}.{}", column.name),
                    )),
                },
                Some(Err(why)) => Err(why.clone()),
                None => Err("its type was not read".into()),
            };
            match described {
                Ok(how) => (ColumnAction::Convert, Some(how)),
                Err(why) => {
                    problems.push(format!(
                        "column {table}.{} is {} in the source and {} in the target: {why}",
                        column.name, ours.sql_type, column.sql_type
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

/// Why a source type does not go into a target type, for the column `named`
/// (`table.column`, as `--exclude-columns` takes it).
fn refused(source: &SourceType, target: &str, named: &str) -> String {
    if matches!(source, SourceType::Spatial) {
        return format!(
            "spatial values go into PostGIS's geometry only, which the target column ({target}) is not: install PostGIS in the target and make the column geometry, leave the column out with --exclude-columns {named} (the target fills it), or leave the table out with --exclude"
        );
    }
    let into = match source {
        SourceType::Int { .. } => {
            "boolean, smallint, integer, bigint, numeric, real, double precision, text"
        }
        SourceType::Bit(_) => "boolean (bit(1)), smallint, integer, bigint, bytea",
        SourceType::Float => "real, double precision",
        SourceType::Double => "double precision",
        SourceType::Decimal => "numeric, an integer type, text",
        SourceType::Year => "smallint, integer, bigint, numeric, text",
        SourceType::Date => "date, timestamp, text",
        SourceType::DateTime => {
            "timestamp, timestamptz (a source time zone of fixed offset), date, text"
        }
        SourceType::Timestamp => "timestamptz, timestamp, date, text",
        SourceType::Time => "time, interval",
        SourceType::Text(..) => {
            "text, varchar(n), char(n), json, jsonb, uuid, inet, bytea, an enum"
        }
        SourceType::Enum(..) => "text, varchar(n), an enum with its labels",
        SourceType::Set(..) => "text, varchar(n), text[], varchar[], an array of an enum",
        SourceType::Binary => "bytea, uuid (16 bytes), text (UTF-8)",
        SourceType::Json => "json, jsonb, text",
        SourceType::Spatial => "geometry",
    };
    format!(
        "the copy does not convert it into {target} (it converts it into {into}): change the target column's type, leave the column out with --exclude-columns {named} (the target fills it), or leave the table out with --exclude"
    )
}

/// The conversion of each copied column of a planned table, and the name of each.
pub(super) fn conversions(
    p: &Planned,
    types: &SourceTypes,
    target_types: &TargetTypes,
    zero_dates: &ZeroDates,
    offset: DatetimeOffset,
) -> Vec<Conversion> {
    let table = display(&p.source.name);
    p.plan
        .copied()
        .map(|c| Conversion {
            source: types
                .get(&(table.clone(), c.name.clone()))
                .and_then(|t| t.as_ref().ok())
                .cloned()
                .unwrap_or(SourceType::Binary),
            target: p
                .target
                .column(&c.name)
                .and_then(|t| target_types.of(t))
                .unwrap_or(Target::Kind(Kind::Bytea)),
            not_null: p.target.column(&c.name).is_some_and(|t| t.not_null),
            zero_dates: zero_dates.clone(),
            offset,
        })
        .collect()
}
