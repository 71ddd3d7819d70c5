//! What a copy needs to know of one PostgreSQL database: its tables, their columns, keys,
//! foreign keys and sequences, and what the connected role may do with them. Read in a
//! handful of catalog queries, whatever the number of tables.

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::postgres::PgConnection;

use crate::backend::postgres::{query, query_scalar};

/// A table's name: schema and table.
pub(crate) type TableName = (String, String);

/// One column.
#[derive(Clone, Debug)]
pub(crate) struct Column {
    pub(crate) name: String,
    /// As `format_type` writes it (`integer`, `character varying(20)`, `public.mood`).
    pub(crate) sql_type: String,
    pub(crate) not_null: bool,
    pub(crate) has_default: bool,
    /// A generated (computed) column: never written.
    pub(crate) generated: bool,
    /// `a` for `GENERATED ALWAYS AS IDENTITY`, `d` for `BY DEFAULT`, empty otherwise.
    pub(crate) identity: String,
    /// A type of PostgreSQL itself (not an enum, domain or composite of the database's):
    /// its binary `COPY` form is the same in every database.
    pub(crate) builtin_type: bool,
}

/// A foreign key of a table.
#[derive(Clone, Debug)]
pub(crate) struct ForeignKey {
    pub(crate) name: String,
    pub(crate) columns: Vec<String>,
    pub(crate) references: TableName,
    /// The referenced table's columns, in the order of `columns`.
    pub(crate) referenced: Vec<String>,
    pub(crate) deferrable: bool,
}

/// A sequence a column takes its values from (`serial`, identity, or a `nextval` default).
#[derive(Clone, Debug)]
pub(crate) struct ColumnSequence {
    pub(crate) column: String,
    /// The sequence, schema-qualified and quoted.
    pub(crate) sequence: String,
    /// The sequence's `last_value` when it has been used (`is_called`), from
    /// `pg_sequences`; `None` when never used or not readable.
    pub(crate) last_value: Option<i64>,
    /// Whether the role may `setval` it.
    pub(crate) can_update: bool,
}

/// One table.
#[derive(Clone, Debug)]
pub(crate) struct Table {
    pub(crate) name: TableName,
    /// `p` for a partitioned table (read through its partitions), `r` otherwise.
    pub(crate) kind: String,
    /// The planner's estimate of its rows (summed over partitions), 0 when never analyzed.
    pub(crate) estimated_rows: i64,
    /// Owned by an extension (`CREATE EXTENSION` made it): its rows are the extension's.
    pub(crate) extension: bool,
    pub(crate) columns: Vec<Column>,
    pub(crate) primary_key: Vec<String>,
    pub(crate) foreign_keys: Vec<ForeignKey>,
    pub(crate) sequences: Vec<ColumnSequence>,
    pub(crate) can_select: bool,
    pub(crate) can_insert: bool,
    pub(crate) can_update: bool,
    pub(crate) can_truncate: bool,
}

impl Table {
    /// `"schema"."table"`.
    pub(crate) fn ident(&self) -> String {
        ident(&self.name)
    }

    pub(crate) fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// `"schema"."table"`.
pub(crate) fn ident(name: &TableName) -> String {
    format!(
        "{}.{}",
        crate::sql::quote_ident(&name.0),
        crate::sql::quote_ident(&name.1)
    )
}

/// `schema.table`, as messages and events name a table.
pub(crate) fn display(name: &TableName) -> String {
    format!("{}.{}", name.0, name.1)
}

/// Every user table of the database (system schemas, partitions and temporary tables left
/// out: a partitioned table is read and written through its parent).
pub(crate) async fn read(
    conn: &mut PgConnection,
) -> Result<BTreeMap<TableName, Table>, sqlx::Error> {
    let rows = query(
        "SELECT c.oid::int8 AS oid, n.nspname::text AS schema, c.relname::text AS name, c.relkind::text AS kind,
                CASE WHEN c.relkind = 'p'
                     THEN (SELECT COALESCE(sum(greatest(p.reltuples, 0)), 0) FROM pg_partition_tree(c.oid) t
                           JOIN pg_class p ON p.oid = t.relid WHERE p.relkind = 'r')
                     ELSE greatest(c.reltuples, 0) END::int8 AS estimated_rows,
                EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                          AND d.deptype = 'e') AS extension,
                has_table_privilege(c.oid, 'SELECT') AS can_select,
                has_table_privilege(c.oid, 'INSERT') AS can_insert,
                has_table_privilege(c.oid, 'UPDATE') AS can_update,
                has_table_privilege(c.oid, 'TRUNCATE') AS can_truncate
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
         ORDER BY 2, 3",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut by_oid = BTreeMap::new();
    for row in &rows {
        let oid: i64 = row.try_get("oid")?;
        let name: TableName = (row.try_get("schema")?, row.try_get("name")?);
        by_oid.insert(
            oid,
            Table {
                name,
                kind: row.try_get("kind")?,
                estimated_rows: row.try_get("estimated_rows")?,
                extension: row.try_get("extension")?,
                columns: Vec::new(),
                primary_key: Vec::new(),
                foreign_keys: Vec::new(),
                sequences: Vec::new(),
                can_select: row.try_get("can_select")?,
                can_insert: row.try_get("can_insert")?,
                can_update: row.try_get("can_update")?,
                can_truncate: row.try_get("can_truncate")?,
            },
        );
    }
    let oids: Vec<i64> = by_oid.keys().copied().collect();

    for row in query(
        "SELECT a.attrelid::int8 AS oid, a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS sql_type,
                a.attnotnull AS not_null, a.atthasdef AS has_default, a.attgenerated <> '' AS generated,
                a.attidentity::text AS identity, a.atttypid::int8 < 16384 AS builtin_type
         FROM pg_attribute a
         WHERE a.attrelid::int8 = ANY ($1) AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY a.attrelid, a.attnum",
    )
    .bind(&oids)
    .fetch_all(&mut *conn)
    .await?
    {
        let oid: i64 = row.try_get("oid")?;
        if let Some(table) = by_oid.get_mut(&oid) {
            table.columns.push(Column {
                name: row.try_get("name")?,
                sql_type: row.try_get("sql_type")?,
                not_null: row.try_get("not_null")?,
                has_default: row.try_get("has_default")?,
                generated: row.try_get("generated")?,
                identity: row.try_get("identity")?,
                builtin_type: row.try_get("builtin_type")?,
            });
        }
    }

    for row in query(
        "SELECT i.indrelid::int8 AS oid,
                array_agg(a.attname::text ORDER BY k.ord) AS columns
         FROM pg_index i
         CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indisprimary AND i.indrelid::int8 = ANY ($1)
         GROUP BY i.indrelid",
    )
    .bind(&oids)
    .fetch_all(&mut *conn)
    .await?
    {
        let oid: i64 = row.try_get("oid")?;
        if let Some(table) = by_oid.get_mut(&oid) {
            table.primary_key = row.try_get("columns")?;
        }
    }

    for row in query(
        "SELECT con.conrelid::int8 AS oid, con.conname::text AS name, rn.nspname::text AS ref_schema,
                rc.relname::text AS ref_table, con.condeferrable AS deferrable,
                ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
                      JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
                      ORDER BY k.ord) AS columns,
                ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY AS k(attnum, ord)
                      JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
                      ORDER BY k.ord) AS referenced
         FROM pg_constraint con
         JOIN pg_class rc ON rc.oid = con.confrelid
         JOIN pg_namespace rn ON rn.oid = rc.relnamespace
         WHERE con.contype = 'f' AND con.conparentid = 0 AND con.conrelid::int8 = ANY ($1)
         ORDER BY con.conname",
    )
    .bind(&oids)
    .fetch_all(&mut *conn)
    .await?
    {
        let oid: i64 = row.try_get("oid")?;
        if let Some(table) = by_oid.get_mut(&oid) {
            table.foreign_keys.push(ForeignKey {
                name: row.try_get("name")?,
                columns: row.try_get("columns")?,
                references: (row.try_get("ref_schema")?, row.try_get("ref_table")?),
                referenced: row.try_get("referenced")?,
                deferrable: row.try_get("deferrable")?,
            });
        }
    }

    // A column's sequence: owned by it (serial, identity) or named in its default.
    for row in query(
        "WITH used AS (
             SELECT d.refobjid AS rel, d.refobjsubid AS attnum, d.objid AS seq
             FROM pg_depend d
             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
               AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0
             UNION
             SELECT ad.adrelid, ad.adnum, d.refobjid
             FROM pg_attrdef ad
             JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
                             AND d.refclassid = 'pg_class'::regclass
         )
         SELECT u.rel::int8 AS oid, a.attname::text AS column_name,
                quote_ident(sn.nspname) || '.' || quote_ident(s.relname) AS sequence,
                ps.last_value, has_sequence_privilege(s.oid, 'UPDATE') AS can_update
         FROM used u
         JOIN pg_class s ON s.oid = u.seq AND s.relkind = 'S'
         JOIN pg_namespace sn ON sn.oid = s.relnamespace
         JOIN pg_attribute a ON a.attrelid = u.rel AND a.attnum = u.attnum
         LEFT JOIN pg_sequences ps ON ps.schemaname = sn.nspname AND ps.sequencename = s.relname
         WHERE u.rel::int8 = ANY ($1)
         ORDER BY 1, 2, 3",
    )
    .bind(&oids)
    .fetch_all(&mut *conn)
    .await?
    {
        let oid: i64 = row.try_get("oid")?;
        if let Some(table) = by_oid.get_mut(&oid) {
            table.sequences.push(ColumnSequence {
                column: row.try_get("column_name")?,
                sequence: row.try_get("sequence")?,
                last_value: row.try_get("last_value")?,
                can_update: row.try_get("can_update")?,
            });
        }
    }

    Ok(by_oid
        .into_values()
        .map(|table| (table.name.clone(), table))
        .collect())
}

/// Who this database is: the same value on two connections means the same database.
pub(crate) async fn identity(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
    query_scalar(
        "SELECT pg_postmaster_start_time()::text || '/' || d.oid::text || '/' || d.datname
         FROM pg_database d WHERE d.datname = current_database()",
    )
    .fetch_one(conn)
    .await
}

/// The name a copy from this database goes by in the target's progress table: the
/// database's name and, where the role may read it, the cluster's system identifier (the
/// same across restarts, different for every cluster).
pub(crate) async fn copy_name(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
    let database: String = query_scalar("SELECT current_database()::text")
        .fetch_one(&mut *conn)
        .await?;
    let readable: bool =
        query_scalar("SELECT has_function_privilege('pg_control_system()', 'EXECUTE')")
            .fetch_one(&mut *conn)
            .await?;
    if !readable {
        return Ok(database);
    }
    let system: i64 = query_scalar("SELECT system_identifier FROM pg_control_system()")
        .fetch_one(&mut *conn)
        .await?;
    Ok(format!("{database}@{system}"))
}
