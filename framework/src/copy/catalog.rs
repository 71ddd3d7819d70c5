//! What a copy needs to know of one PostgreSQL database: its tables (partitions with
//! their ancestors), their columns with what their types allow, keys, foreign keys,
//! sequences, triggers, row security, and what the connected role may do with them. Read
//! in a handful of catalog queries, whatever the number of tables.

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::context::During;
use crate::backend::postgres::{query, query_scalar};
use crate::error::Error;

/// A table's name: schema and table.
pub(crate) type TableName = (String, String);

/// One column.
#[derive(Clone, Debug, Default)]
pub(crate) struct Column {
    pub(crate) name: String,
    /// As `format_type` writes it (`integer`, `character varying(20)`, `public.mood`).
    pub(crate) sql_type: String,
    /// A SQLite or MySQL source's own name for it, where the target names it otherwise
    /// (`name` is the target's); empty otherwise. See [`Table::local_column`].
    pub(crate) source_name: String,
    /// For a column of a domain (a domain over a domain too), the type under it, as
    /// `format_type` writes it with the domain's modifier (`integer` under `year`); empty
    /// otherwise, or where it was not read (a SQLite or MySQL source). See [`Column::base`].
    pub(crate) base_type: String,
    pub(crate) not_null: bool,
    pub(crate) has_default: bool,
    /// A generated (computed) column: never written.
    pub(crate) generated: bool,
    /// `a` for `GENERATED ALWAYS AS IDENTITY`, `d` for `BY DEFAULT`, empty otherwise.
    pub(crate) identity: String,
    /// Its binary `COPY` form means the same in every database: every type it is made of
    /// (elements, base types, members, subtypes) is PostgreSQL's own, has binary send and
    /// receive functions, and names no object by OID (`regclass`, `regtype`, ...).
    pub(crate) binary: bool,
    /// Its type has a collation: its order (and a key range over it) depends on it.
    pub(crate) collatable: bool,
    /// The database's own types it is made of (enums, composites, domains, ranges, base
    /// types of extensions), each as `name: definition`, to compare with the other side.
    pub(crate) user_types: Vec<String>,
    /// The types it is made of whose input refuses every value (`pg_node_tree`, planner
    /// statistics): no copy can write them.
    pub(crate) unwritable: Vec<String>,
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
    /// `MATCH FULL` (the copy's own check follows `MATCH SIMPLE`).
    pub(crate) match_full: bool,
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

/// A trigger of a table's own (not one a constraint made).
#[derive(Clone, Debug)]
pub(crate) struct Trigger {
    pub(crate) name: String,
    /// The table it is defined on (a partition's, for a partitioned table).
    pub(crate) on: TableName,
    /// `O` fires in the origin role (the default), `R` only in the replica role, `A`
    /// always, `D` never.
    pub(crate) enabled: String,
    /// Its function, as `schema.name`.
    pub(crate) function: String,
    /// A `BEFORE INSERT .. FOR EACH ROW` trigger: it may fill a row's columns.
    pub(crate) before_insert_row: bool,
    /// It fires on `INSERT` (a copy's `COPY` too).
    pub(crate) on_insert: bool,
    /// It fires on `UPDATE` (a `--mode merge` copy's `INSERT .. ON CONFLICT DO UPDATE`).
    pub(crate) on_update: bool,
}

/// One table.
#[derive(Clone, Debug, Default)]
pub(crate) struct Table {
    pub(crate) name: TableName,
    /// A SQLite or MySQL source's own name for it, where the target names it otherwise
    /// (`name` is the target's); empty otherwise. See [`Table::local_name`].
    pub(crate) source_name: String,
    /// `p` for a partitioned table (read through its partitions), `r` otherwise.
    pub(crate) kind: String,
    /// For a partition, its partitioned ancestors, nearest first.
    pub(crate) ancestors: Vec<TableName>,
    /// The planner's estimate of its rows (summed over partitions), 0 when never analyzed.
    pub(crate) estimated_rows: i64,
    /// Owned by an extension (`CREATE EXTENSION` made it): its rows are the extension's.
    pub(crate) extension: bool,
    pub(crate) columns: Vec<Column>,
    pub(crate) primary_key: Vec<String>,
    pub(crate) foreign_keys: Vec<ForeignKey>,
    pub(crate) sequences: Vec<ColumnSequence>,
    /// Its own triggers and, for a partitioned table, its partitions'.
    pub(crate) triggers: Vec<Trigger>,
    /// Row-level security that applies to the connected role: the table's policies (empty:
    /// none, so every row is hidden). `None`: the role sees and writes every row.
    pub(crate) row_security: Option<Vec<String>>,
    pub(crate) can_select: bool,
    pub(crate) can_insert: bool,
    pub(crate) can_update: bool,
    pub(crate) can_truncate: bool,
    /// The role may alter the table (it owns it, or is a superuser).
    pub(crate) owned: bool,
}

impl Column {
    /// The type its values are of: the type under its domain, or its own.
    pub(crate) fn base(&self) -> &str {
        if self.base_type.is_empty() {
            &self.sql_type
        } else {
            &self.base_type
        }
    }
}

impl Table {
    /// The table's name in its own database: a SQLite or MySQL source's, else `name`'s.
    pub(crate) fn local_name(&self) -> &str {
        if self.source_name.is_empty() {
            &self.name.1
        } else {
            &self.source_name
        }
    }

    /// A column's name in the table's own database, given the name the plan knows it by
    /// (the target's).
    pub(crate) fn local_column<'a>(&'a self, name: &'a str) -> &'a str {
        match self.column(name) {
            Some(c) if !c.source_name.is_empty() => &c.source_name,
            _ => name,
        }
    }

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

/// The types that name a database object by its OID: their binary form is that number,
/// which means another object (or nothing) in another database; their text form is the
/// object's name.
const OID_NAMING_TYPES: &str = "'regproc'::regtype, 'regprocedure'::regtype, 'regoper'::regtype, 'regoperator'::regtype, 'regclass'::regtype, 'regcollation'::regtype, 'regtype'::regtype, 'regrole'::regtype, 'regnamespace'::regtype, 'regconfig'::regtype, 'regdictionary'::regtype";

/// The types whose input function refuses every value: the server fills them itself
/// (expression trees, planner statistics, index summaries).
const UNWRITABLE_TYPES: &str = "'pg_node_tree'::regtype, 'pg_ndistinct'::regtype, 'pg_dependencies'::regtype, 'pg_mcv_list'::regtype, 'pg_brin_bloom_summary'::regtype, 'pg_brin_minmax_multi_summary'::regtype, 'gtsvector'::regtype";

/// Every user table of the database, partitions included (each with its ancestors: a
/// partitioned table is read and written through its root unless a partition is named);
/// system schemas and temporary tables left out. `side` names the database in messages.
pub(crate) async fn read(
    conn: &mut PgConnection,
    side: &str,
) -> Result<BTreeMap<TableName, Table>, Error> {
    let during = || format!("reading the catalog of the {side} database");
    // The catalog queries are cheap, but their estimates are not: compiling them (JIT)
    // would cost more than running them.
    sqlx::raw_sql("SET jit = off")
        .execute(&mut *conn)
        .await
        .during(during)?;
    let tables = read_tables(conn).await.during(during)?;
    sqlx::raw_sql("RESET jit")
        .execute(&mut *conn)
        .await
        .during(during)?;
    Ok(tables)
}

async fn read_tables(conn: &mut PgConnection) -> Result<BTreeMap<TableName, Table>, sqlx::Error> {
    let rows = query(
        "SELECT c.oid::int8 AS oid, n.nspname::text AS schema, c.relname::text AS name, c.relkind::text AS kind,
                CASE WHEN c.relkind = 'p'
                     THEN (SELECT COALESCE(sum(greatest(p.reltuples, 0)), 0) FROM pg_partition_tree(c.oid) t
                           JOIN pg_class p ON p.oid = t.relid WHERE p.relkind = 'r')
                     ELSE greatest(c.reltuples, 0) END::int8 AS estimated_rows,
                EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                          AND d.deptype = 'e') AS extension,
                ARRAY(SELECT an.nspname::text FROM pg_partition_ancestors(c.oid) WITH ORDINALITY AS x (relid, ord)
                      JOIN pg_class ac ON ac.oid = x.relid JOIN pg_namespace an ON an.oid = ac.relnamespace
                      WHERE x.relid <> c.oid ORDER BY x.ord) AS ancestor_schemas,
                ARRAY(SELECT ac.relname::text FROM pg_partition_ancestors(c.oid) WITH ORDINALITY AS x (relid, ord)
                      JOIN pg_class ac ON ac.oid = x.relid
                      WHERE x.relid <> c.oid ORDER BY x.ord) AS ancestor_names,
                row_security_active(c.oid) AS row_security,
                ARRAY(SELECT p.polname::text FROM pg_policy p WHERE p.polrelid = c.oid ORDER BY 1) AS policies,
                has_table_privilege(c.oid, 'SELECT') AS can_select,
                has_table_privilege(c.oid, 'INSERT') AS can_insert,
                has_table_privilege(c.oid, 'UPDATE') AS can_update,
                has_table_privilege(c.oid, 'TRUNCATE') AS can_truncate,
                pg_has_role(c.relowner, 'USAGE') AS owned
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p')
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
        let schemas: Vec<String> = row.try_get("ancestor_schemas")?;
        let names: Vec<String> = row.try_get("ancestor_names")?;
        let policies: Vec<String> = row.try_get("policies")?;
        let row_security: bool = row.try_get("row_security")?;
        by_oid.insert(
            oid,
            Table {
                name,
                kind: row.try_get("kind")?,
                ancestors: schemas.into_iter().zip(names).collect(),
                estimated_rows: row.try_get("estimated_rows")?,
                extension: row.try_get("extension")?,
                row_security: row_security.then_some(policies),
                can_select: row.try_get("can_select")?,
                can_insert: row.try_get("can_insert")?,
                can_update: row.try_get("can_update")?,
                can_truncate: row.try_get("can_truncate")?,
                owned: row.try_get("owned")?,
                ..Table::default()
            },
        );
    }
    let oids: Vec<i64> = by_oid.keys().copied().collect();

    // Each column's type with everything it is made of (array elements, domains' base
    // types, composites' members, ranges' subtypes, multiranges' ranges): whether binary
    // `COPY` means the same in another database, and the database's own types among them.
    let columns = format!(
        "WITH RECURSIVE closure (root, t) AS (
             SELECT DISTINCT a.atttypid, a.atttypid FROM pg_attribute a
             WHERE a.attrelid::int8 = ANY ($1) AND a.attnum > 0 AND NOT a.attisdropped
             UNION
             SELECT c.root, d.dep FROM closure c JOIN pg_type ty ON ty.oid = c.t
             CROSS JOIN LATERAL (
                 SELECT ty.typelem WHERE ty.typelem <> 0
                 UNION ALL SELECT ty.typbasetype WHERE ty.typbasetype <> 0
                 UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = ty.oid
                 UNION ALL SELECT r.rngtypid FROM pg_range r WHERE r.rngmultitypid = ty.oid
                 UNION ALL SELECT m.atttypid FROM pg_attribute m
                           WHERE ty.typrelid <> 0 AND m.attrelid = ty.typrelid AND m.attnum > 0 AND NOT m.attisdropped
             ) AS d (dep)
         ),
         facts AS (
             SELECT c.root,
                    bool_and(ty.oid < 16384 AND ty.typsend <> 0 AND ty.typreceive <> 0
                             AND ty.oid NOT IN ({OID_NAMING_TYPES})) AS binary,
                    COALESCE(array_agg(format_type(ty.oid, NULL) || ': ' || CASE ty.typtype
                        WHEN 'e' THEN 'enum (' || COALESCE((SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
                                                            FROM pg_enum e WHERE e.enumtypid = ty.oid), '') || ')'
                        WHEN 'c' THEN 'composite (' || COALESCE((SELECT string_agg(quote_ident(m.attname) || ' ' || format_type(m.atttypid, m.atttypmod), ', ' ORDER BY m.attnum)
                                                                 FROM pg_attribute m WHERE m.attrelid = ty.typrelid AND m.attnum > 0 AND NOT m.attisdropped), '') || ')'
                        WHEN 'd' THEN 'domain over ' || format_type(ty.typbasetype, ty.typtypmod)
                        WHEN 'r' THEN 'range of ' || (SELECT format_type(r.rngsubtype, NULL) FROM pg_range r WHERE r.rngtypid = ty.oid)
                        WHEN 'm' THEN 'multirange'
                        ELSE 'base type' END ORDER BY ty.oid)
                        FILTER (WHERE ty.oid >= 16384 AND ty.typcategory <> 'A'), '{{}}') AS user_types,
                    COALESCE(array_agg(format_type(ty.oid, NULL) ORDER BY ty.oid)
                        FILTER (WHERE ty.oid IN ({UNWRITABLE_TYPES})), '{{}}') AS unwritable
             FROM closure c JOIN pg_type ty ON ty.oid = c.t
             GROUP BY c.root
         )
         SELECT a.attrelid::int8 AS oid, a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS sql_type,
                COALESCE((WITH RECURSIVE under (t, m, depth) AS (
                              SELECT a.atttypid, a.atttypmod, 0
                              UNION ALL
                              SELECT ty.typbasetype, ty.typtypmod, u.depth + 1
                              FROM under u JOIN pg_type ty ON ty.oid = u.t WHERE ty.typtype = 'd')
                          SELECT format_type(u.t, u.m) FROM under u WHERE u.depth > 0
                          ORDER BY u.depth DESC LIMIT 1), '') AS base_type,
                a.attnotnull AS not_null, a.atthasdef AS has_default, a.attgenerated <> '' AS generated,
                a.attidentity::text AS identity, COALESCE(f.binary, false) AS binary,
                a.attcollation <> 0 AS collatable, COALESCE(f.user_types, '{{}}') AS user_types,
                COALESCE(f.unwritable, '{{}}') AS unwritable
         FROM pg_attribute a LEFT JOIN facts f ON f.root = a.atttypid
         WHERE a.attrelid::int8 = ANY ($1) AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY a.attrelid, a.attnum"
    );
    for row in query(sqlx::AssertSqlSafe(columns))
        .bind(&oids)
        .fetch_all(&mut *conn)
        .await?
    {
        let oid: i64 = row.try_get("oid")?;
        if let Some(table) = by_oid.get_mut(&oid) {
            table.columns.push(Column {
                name: row.try_get("name")?,
                sql_type: row.try_get("sql_type")?,
                source_name: String::new(),
                base_type: row.try_get("base_type")?,
                not_null: row.try_get("not_null")?,
                has_default: row.try_get("has_default")?,
                generated: row.try_get("generated")?,
                identity: row.try_get("identity")?,
                binary: row.try_get("binary")?,
                collatable: row.try_get("collatable")?,
                user_types: row.try_get("user_types")?,
                unwritable: row.try_get("unwritable")?,
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
                con.confmatchtype = 'f' AS match_full,
                ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
                      JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
                      ORDER BY k.ord) AS columns,
                ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY AS k(attnum, ord)
                      JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
                      ORDER BY k.ord) AS referenced
         FROM pg_constraint con
         JOIN pg_class rc ON rc.oid = con.confrelid
         JOIN pg_namespace rn ON rn.oid = rc.relnamespace
         WHERE con.contype = 'f' AND con.conrelid::int8 = ANY ($1)
           -- A partition's copy of its parent's key counts (a partition may be copied
           -- alone); the copies a key makes for each partition of the table it references
           -- do not (the key itself references the partitioned table).
           AND (con.conparentid = 0
                OR (SELECT parent.conrelid FROM pg_constraint parent WHERE parent.oid = con.conparentid)
                   <> con.conrelid)
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
                match_full: row.try_get("match_full")?,
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

    let mut triggers: Vec<(i64, Trigger)> = Vec::new();
    for row in query(
        "SELECT t.tgrelid::int8 AS oid, t.tgname::text AS name, t.tgenabled::text AS enabled,
                pn.nspname::text || '.' || p.proname::text AS function,
                (t.tgtype & 7) = 7 AS before_insert_row,
                (t.tgtype & 4) <> 0 AS on_insert, (t.tgtype & 16) <> 0 AS on_update
         FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace pn ON pn.oid = p.pronamespace
         WHERE NOT t.tgisinternal AND t.tgrelid::int8 = ANY ($1)
         ORDER BY 1, 2",
    )
    .bind(&oids)
    .fetch_all(&mut *conn)
    .await?
    {
        let oid: i64 = row.try_get("oid")?;
        if let Some(table) = by_oid.get(&oid) {
            triggers.push((
                oid,
                Trigger {
                    name: row.try_get("name")?,
                    on: table.name.clone(),
                    enabled: row.try_get("enabled")?,
                    function: row.try_get("function")?,
                    before_insert_row: row.try_get("before_insert_row")?,
                    on_insert: row.try_get("on_insert")?,
                    on_update: row.try_get("on_update")?,
                },
            ));
        }
    }
    let mut tables: BTreeMap<TableName, Table> = by_oid
        .into_values()
        .map(|table| (table.name.clone(), table))
        .collect();
    // A partitioned table's rows are written into its partitions: their triggers fire.
    for (_, trigger) in triggers {
        let mut owners = vec![trigger.on.clone()];
        if let Some(table) = tables.get(&trigger.on) {
            owners.extend(table.ancestors.iter().cloned());
        }
        for owner in owners {
            if let Some(table) = tables.get_mut(&owner) {
                table.triggers.push(trigger.clone());
            }
        }
    }
    Ok(tables)
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

/// The name a copy from this database goes by in the target's progress table (the
/// database's name and, where the role may read it, the cluster's system identifier), and
/// the source's identity stored with its chunks: the cluster's system identifier (the
/// same across restarts, different for every cluster) and the database's OID.
pub(crate) async fn copy_name(conn: &mut PgConnection) -> Result<(String, String), sqlx::Error> {
    let (database, oid): (String, i64) =
        sqlx::query_as("SELECT current_database()::text, d.oid::int8 FROM pg_database d WHERE d.datname = current_database()")
            .persistent(false)
            .fetch_one(&mut *conn)
            .await?;
    let readable: bool =
        query_scalar("SELECT has_function_privilege('pg_control_system()', 'EXECUTE')")
            .fetch_one(&mut *conn)
            .await?;
    if !readable {
        return Ok((
            database.clone(),
            format!(
                "postgres database {database} (oid {oid}) of a cluster whose system identifier the role may not read"
            ),
        ));
    }
    let system: i64 = query_scalar("SELECT system_identifier FROM pg_control_system()")
        .fetch_one(&mut *conn)
        .await?;
    Ok((
        format!("{database}@{system}"),
        format!("postgres system {system} database oid {oid}"),
    ))
}
