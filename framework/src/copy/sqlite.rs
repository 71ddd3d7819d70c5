//! A copy's SQLite source: its catalog, its chunks, and its rows read and converted into
//! the target's types as `COPY` text, value by value (see [`super::convert`]).

use std::collections::BTreeMap;

use futures_util::TryStreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteRow};
use sqlx::{AssertSqlSafe, Connection, Row, TypeInfo, ValueRef};

use super::UnconvertibleValue;
use super::catalog::{Column, Table, TableName};
use super::convert::{Conversion, Kind, UnixTime, Value};
use super::load::{BUFFERS, Chunk, Failure, SEND_BYTES, Shared};
use super::plan::{Planned, unix_unit};
use crate::error::Error;
use crate::sql::quote_ident;

/// Opens the SQLite file (never creating it).
pub(super) async fn open(options: &SqliteConnectOptions) -> Result<SqliteConnection, Error> {
    let options = options.clone().create_if_missing(false);
    SqliteConnection::connect_with(&options)
        .await
        .map_err(|err| {
            Error::Config(format!(
                "cannot open the source SQLite database {}: {}",
                options.get_filename().display(),
                crate::error::describe_sqlx(&err)
            ))
        })
}

/// The name the copy goes by in the target's progress table.
pub(super) fn copy_name(options: &SqliteConnectOptions) -> String {
    let file = options.get_filename();
    let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    format!("sqlite:{}", file.display())
}

/// Takes the write lock, so that no writer commits while the copy's readers start their
/// read transactions: they all see one state of the file. `false` for a file the copy may
/// not write (opened read-only), which no one writes through it.
pub(super) async fn hold_writers(conn: &mut SqliteConnection) -> Result<bool, Error> {
    match sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await {
        Ok(_) => Ok(true),
        Err(err) if is_read_only(&err) => {
            sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
            Ok(false)
        }
        Err(err) => Err(Error::Config(format!(
            "cannot take the source SQLite database's write lock, which the copy holds while its readers start so that they all read one state of the file: {}; stop the application's writes, or run the copy again",
            crate::error::describe_sqlx(&err)
        ))),
    }
}

fn is_read_only(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "8" || code.starts_with("8"))
}

/// A reader for a worker: its own connection in a read transaction, started while the
/// main connection holds the write lock.
pub(super) async fn reader(options: &SqliteConnectOptions) -> Result<SqliteConnection, Error> {
    let mut conn = open(options).await?;
    sqlx::raw_sql("BEGIN; SELECT count(*) FROM sqlite_schema")
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

/// The tables of the SQLite database (its `main` schema), named as the target names them:
/// SQLite's names match regardless of case, so a table or column is matched exactly, or
/// else case-insensitively when only one target name fits. Each table is placed in
/// `schema`, the target's first schema.
pub(super) async fn catalog(
    conn: &mut SqliteConnection,
    schema: &str,
    target: &BTreeMap<TableName, Table>,
) -> Result<BTreeMap<TableName, Table>, Error> {
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
                .map_or(local, |c| c.name.clone());
            let hidden: i64 = c.try_get("hidden")?;
            let pk: i64 = c.try_get("pk")?;
            if pk > 0 {
                key.push((pk, column_name.clone()));
            }
            table_columns.push(Column {
                name: column_name,
                sql_type: c.try_get("type")?,
                not_null: c.try_get::<i64, _>("notnull")? != 0,
                has_default: c.try_get("has_default")?,
                generated: hidden >= 2,
                identity: String::new(),
                builtin_type: false,
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
                can_insert: false,
                can_update: false,
                can_truncate: false,
            },
        );
    }
    Ok(out)
}

/// The target's name for a SQLite name: the same, or else the one that matches it
/// ignoring case, when only one does.
fn fit<'a, T>(local: &str, names: impl Iterator<Item = (&'a str, T)>) -> Option<T> {
    let mut folded = Vec::new();
    for (name, item) in names {
        if name == local {
            return Some(item);
        }
        if name.eq_ignore_ascii_case(local) {
            folded.push(item);
        }
    }
    (folded.len() == 1).then(|| folded.pop()).flatten()
}

/// The conversion of each copied column of a planned table.
pub(super) fn conversions(p: &Planned, unix: &BTreeMap<String, UnixTime>) -> Vec<Conversion> {
    p.plan
        .copied()
        .map(|c| {
            let target = p.target.column(&c.name);
            Conversion {
                kind: Kind::of(&c.target_type).unwrap_or(Kind::Text(None)),
                not_null: target.is_some_and(|t| t.not_null),
                unix: unix_unit(unix, &p.source.name, &c.name),
            }
        })
        .collect()
}

/// The key ranges a table is copied in: even ranges of an integer key, else ranges of
/// `chunk_rows` rows in the key's order. Bounds are SQLite literals (`quote()`).
pub(super) async fn split(
    conn: &mut SqliteConnection,
    p: &Planned,
    chunk_rows: u64,
) -> Result<Vec<Chunk>, Error> {
    let estimate = u64::try_from(p.plan.estimated_rows).unwrap_or(0);
    if p.plan.whole.is_some() || estimate <= chunk_rows {
        return Ok(vec![Chunk::whole()]);
    }
    let table = quote_ident(&p.source.name.1);
    let columns: Vec<String> = p.plan.key.iter().map(|k| quote_ident(k)).collect();
    let mut bounds: Vec<Vec<String>> = Vec::new();
    let integer_key = p.plan.key.len() == 1
        && p.source
            .column(&p.plan.key[0])
            .is_some_and(|c| c.sql_type.eq_ignore_ascii_case("integer"));
    if integer_key {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT min({c}), max({c}), typeof(min({c})), typeof(max({c})) FROM {table}",
            c = columns[0]
        )))
        .fetch_one(&mut *conn)
        .await?;
        let kinds: (String, String) = (row.try_get(2)?, row.try_get(3)?);
        if kinds.0 == "integer" && kinds.1 == "integer" {
            let (min, max): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
            let span = i128::from(max) - i128::from(min) + 1;
            let n = i128::from(estimate.div_ceil(chunk_rows)).min(span).max(1);
            for i in 1..n {
                bounds.push(vec![(i128::from(min) + span * i / n - 1).to_string()]);
            }
            return Ok(Chunk::between(bounds));
        }
    }
    let quoted: Vec<String> = columns.iter().map(|c| format!("quote({c})")).collect();
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {} FROM (SELECT {}, row_number() OVER (ORDER BY {}) AS n FROM {table}) WHERE n % ?1 = 0",
        quoted.join(", "),
        columns.join(", "),
        columns.join(", ")
    )))
    .bind(i64::try_from(chunk_rows).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        bounds.push(
            (0..columns.len())
                .map(|i| row.try_get::<String, _>(i))
                .collect::<Result<_, _>>()?,
        );
    }
    Ok(Chunk::between(bounds))
}

/// The `SELECT` of a chunk: the copied columns, then the key columns (or `_rowid_`) that
/// name a row in messages; and the positions of those.
fn select(p: &Planned, chunk: &Chunk) -> (String, Vec<(String, usize)>) {
    let mut list: Vec<String> = p.plan.copied().map(|c| c.name.clone()).collect();
    let mut key = Vec::new();
    let key_columns: Vec<String> = if p.plan.key.is_empty() {
        vec!["_rowid_".to_string()]
    } else {
        p.plan.key.clone()
    };
    for k in &key_columns {
        let at = match list.iter().position(|c| c == k) {
            Some(at) => at,
            None => {
                list.push(k.clone());
                list.len() - 1
            }
        };
        key.push((
            if k == "_rowid_" {
                "rowid".into()
            } else {
                k.clone()
            },
            at,
        ));
    }
    let quoted: Vec<String> = list
        .iter()
        .map(|c| {
            if c == "_rowid_" {
                c.clone()
            } else {
                quote_ident(c)
            }
        })
        .collect();
    let tuple = format!(
        "({})",
        p.plan
            .key
            .iter()
            .map(|k| quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut conditions = Vec::new();
    if let Some(lower) = &chunk.lower {
        conditions.push(format!("{tuple} > ({})", lower.join(", ")));
    }
    if let Some(upper) = &chunk.upper {
        conditions.push(format!("{tuple} <= ({})", upper.join(", ")));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    let order = if p.plan.key.is_empty() {
        String::new()
    } else {
        format!(" ORDER BY {}", &tuple[1..tuple.len() - 1])
    };
    (
        format!(
            "SELECT {} FROM {}{filter}{order}",
            quoted.join(", "),
            quote_ident(&p.source.name.1)
        ),
        key,
    )
}

/// The value of column `i` of a row, by its storage class.
fn value(row: &SqliteRow, i: usize) -> Result<Value<'_>, sqlx::Error> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let class = raw.type_info().name().to_string();
    Ok(match class.as_str() {
        "INTEGER" => Value::Integer(row.try_get_unchecked(i)?),
        "REAL" => Value::Real(row.try_get_unchecked(i)?),
        "BLOB" => Value::Blob(row.try_get_unchecked(i)?),
        _ => match row.try_get_unchecked::<&str, _>(i) {
            Ok(text) => Value::Text(text),
            // Text that is not UTF-8: shown and refused as the bytes it is.
            Err(_) => Value::Blob(row.try_get_unchecked(i)?),
        },
    })
}

/// The row's key as messages name it: `id = 42`, `tenant_id = 1, code = 'a'`.
fn key_of(row: &SqliteRow, key: &[(String, usize)]) -> String {
    key.iter()
        .map(|(name, at)| {
            let shown = match value(row, *at) {
                Ok(Value::Integer(i)) => i.to_string(),
                Ok(Value::Real(r)) => r.to_string(),
                Ok(Value::Text(t)) => format!("'{}'", t.replace('\'', "''")),
                Ok(other) => other.show(),
                Err(_) => "?".into(),
            };
            format!("{name} = {shown}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Converts one row into a line of `COPY` text appended to `out`; on a value that does not
/// convert, `out` is restored and the value described.
fn convert_row(
    p: &Planned,
    conversions: &[Conversion],
    key: &[(String, usize)],
    row: &SqliteRow,
    out: &mut Vec<u8>,
) -> Result<(), Box<UnconvertibleValue>> {
    let start = out.len();
    for (i, (conversion, column)) in conversions.iter().zip(p.plan.copied()).enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        let failure = match value(row, i) {
            Ok(v) => conversion
                .write(v, out)
                .err()
                .map(|reason| (v.show(), reason)),
            Err(err) => Some(("a value SQLite cannot read".to_string(), err.to_string())),
        };
        if let Some((shown, reason)) = failure {
            out.truncate(start);
            return Err(Box::new(UnconvertibleValue {
                table: p.plan.table.clone(),
                key: key_of(row, key),
                column: column.name.clone(),
                value: shown,
                target_type: column.target_type.clone(),
                reason,
            }));
        }
    }
    out.push(b'\n');
    Ok(())
}

/// Streams a chunk's rows, converted, into the open `COPY .. FROM STDIN`; returns the
/// bytes streamed. The first value that does not convert stops it.
pub(super) async fn stream(
    shared: &Shared,
    table: usize,
    conn: &mut SqliteConnection,
    chunk: &Chunk,
    copy_in: &mut sqlx::postgres::PgCopyIn<&mut sqlx::postgres::PgConnection>,
) -> Result<u64, Failure> {
    let p = &shared.planned[table];
    let conversions = &shared.conversions[table];
    let (sql, key) = select(p, chunk);
    let name = p.plan.table.clone();
    let (full_tx, mut full_rx) = tokio::sync::mpsc::channel::<(Vec<u8>, u64)>(BUFFERS);
    let (empty_tx, mut empty_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(BUFFERS + 1);
    for _ in 0..BUFFERS {
        let _ = empty_tx.try_send(Vec::with_capacity(SEND_BYTES + (64 << 10)));
    }
    let read = async move {
        let mut rows_stream = sqlx::query(AssertSqlSafe(sql)).fetch(&mut *conn);
        let mut buf = empty_rx.recv().await.unwrap_or_default();
        let mut rows = 0_u64;
        loop {
            let row = rows_stream
                .try_next()
                .await
                .map_err(|e| Failure::Source(name.clone(), e))?;
            let end = row.is_none();
            if let Some(row) = &row {
                convert_row(p, conversions, &key, row, &mut buf)
                    .map_err(|bad| Failure::Value(table, bad))?;
                rows += 1;
            }
            if buf.len() >= SEND_BYTES || (end && !buf.is_empty()) {
                if full_tx
                    .send((buf, std::mem::take(&mut rows)))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                buf = empty_rx.recv().await.unwrap_or_default();
            }
            if end {
                return Ok::<(), Failure>(());
            }
        }
    };
    let write = async move {
        let mut total = 0_u64;
        while let Some((mut buf, rows)) = full_rx.recv().await {
            copy_in
                .send(buf.as_slice())
                .await
                .map_err(|e| Failure::Target(table, e))?;
            total += buf.len() as u64;
            shared.progress(table, rows, buf.len() as u64);
            buf.clear();
            let _ = empty_tx.send(buf).await;
        }
        Ok::<u64, Failure>(total)
    };
    let (read, write) = tokio::join!(read, write);
    // A value that does not convert is the error to report, even if the target then
    // complained of the copy's abrupt end.
    read?;
    write
}

/// Reads every row of the planned tables and lists the values that would not convert (the
/// first `limit` of them); returns the list and how many there are in all.
pub(super) async fn scan(
    conn: &mut SqliteConnection,
    planned: &[Planned],
    conversions: &[Vec<Conversion>],
    limit: usize,
) -> Result<(Vec<UnconvertibleValue>, u64), Error> {
    let mut found = Vec::new();
    let mut total = 0_u64;
    let mut line = Vec::new();
    for (p, conversions) in planned.iter().zip(conversions) {
        let (sql, key) = select(p, &Chunk::whole());
        let mut rows = sqlx::query(AssertSqlSafe(sql)).fetch(&mut *conn);
        while let Some(row) = rows.try_next().await? {
            line.clear();
            // A row may hold several values that do not convert: each is reported.
            for (i, (conversion, column)) in conversions.iter().zip(p.plan.copied()).enumerate() {
                let v = value(&row, i)?;
                if let Err(reason) = conversion.write(v, &mut line) {
                    total += 1;
                    if found.len() < limit {
                        found.push(UnconvertibleValue {
                            table: p.plan.table.clone(),
                            key: key_of(&row, &key),
                            column: column.name.clone(),
                            value: v.show(),
                            target_type: column.target_type.clone(),
                            reason,
                        });
                    }
                }
            }
        }
    }
    Ok((found, total))
}

/// Streams every row of a table, converted, into `COPY .. FROM STDIN` of a temporary
/// table on the target (for a comparison in the target's types).
pub(super) async fn stream_all(
    conn: &mut SqliteConnection,
    p: &Planned,
    conversions: &[Conversion],
    copy_in: &mut sqlx::postgres::PgCopyIn<&mut sqlx::postgres::PgConnection>,
) -> Result<(), Error> {
    let (sql, key) = select(p, &Chunk::whole());
    let mut rows = sqlx::query(AssertSqlSafe(sql)).fetch(&mut *conn);
    let mut buf = Vec::with_capacity(SEND_BYTES + (64 << 10));
    while let Some(row) = rows.try_next().await? {
        if let Err(bad) = convert_row(p, conversions, &key, &row, &mut buf) {
            return Err(Error::CopyRefused(format!(
                "{bad}: the comparison converts every row as a copy would; fix the value in the source"
            )));
        }
        if buf.len() >= SEND_BYTES {
            copy_in.send(buf.as_slice()).await?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        copy_in.send(buf.as_slice()).await?;
    }
    Ok(())
}
