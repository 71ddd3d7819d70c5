//! How every MySQL statement of datamig's own is written and sent: in standard SQL
//! (`"name"`, `$1`), rendered for MySQL (backticks, `?`) by the dialect.

use sqlx::mysql::{MySqlArguments, MySqlRow};
use sqlx::{AssertSqlSafe, MySql, SqlSafeStr};

use crate::backend::dialect::to_mysql;

/// A statement written in standard SQL, as MySQL reads it.
pub(crate) fn query<'q>(sql: impl SqlSafeStr) -> sqlx::query::Query<'q, MySql, MySqlArguments> {
    sqlx::query(AssertSqlSafe(to_mysql(sql.into_sql_str().as_str())))
}

/// [`query`], for one value.
pub(crate) fn query_scalar<'q, O>(
    sql: impl SqlSafeStr,
) -> sqlx::query::QueryScalar<'q, MySql, O, MySqlArguments>
where
    (O,): for<'r> sqlx::FromRow<'r, MySqlRow>,
{
    sqlx::query_scalar(AssertSqlSafe(to_mysql(sql.into_sql_str().as_str())))
}

/// [`query`], for a row as a tuple.
pub(crate) fn query_as<'q, O>(
    sql: impl SqlSafeStr,
) -> sqlx::query::QueryAs<'q, MySql, O, MySqlArguments>
where
    O: for<'r> sqlx::FromRow<'r, MySqlRow>,
{
    sqlx::query_as(AssertSqlSafe(to_mysql(sql.into_sql_str().as_str())))
}

/// A name quoted for MySQL (backticks).
pub(crate) fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A statement of a batched migration's key (standard SQL, `$n` parameters), as MySQL
/// reads it, with the number of the parameter each `?` stands for (see [`bind_keyed`]).
///
/// Each row-value comparison of the key, `("a", "b") > ($1, $2)`, is written out:
/// `("a" >= $1 AND ("a" > $1 OR ("a" = $1 AND "b" > $2)))`. MySQL compares row values
/// correctly but its optimiser reads no index range from them, and every batch would scan
/// the table; the written-out form is an index range on the leading column, narrowed by
/// the next.
pub(crate) fn keyed(sql: &str) -> (String, Vec<usize>) {
    crate::backend::dialect::to_mysql_params(&expand_row_comparisons(sql))
}

/// The values of a keyed statement bound at its `?`s: `values[n - 1]` for each number.
pub(crate) fn bind_keyed<'q>(
    mut q: sqlx::query::Query<'q, MySql, MySqlArguments>,
    params: &[usize],
    values: &[&crate::key::KeyValue],
) -> sqlx::query::Query<'q, MySql, MySqlArguments> {
    for n in params {
        if let Some(value) = values.get(n.wrapping_sub(1)) {
            q = crate::backend::values::bind_key_value(q, value);
        }
    }
    q
}

/// Writes out each row-value comparison `(c1, c2, ..) > ($i, $j, ..)` (or `<=`) of quoted,
/// possibly qualified, column names and numbered parameters.
fn expand_row_comparisons(sql: &str) -> String {
    use std::sync::LazyLock;
    static ROW: LazyLock<regex::Regex> = LazyLock::new(|| {
        let name = r#""(?:[^"]|"")*"(?:\."(?:[^"]|"")*")?"#;
        let param = r"\$\d+";
        regex::Regex::new(&format!(
            r"\(({name}(?:, {name})+)\) (>|<=) \(({param}(?:, {param})+)\)"
        ))
        .expect("a valid pattern")
    });
    static NAME: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r#""(?:[^"]|"")*"(?:\."(?:[^"]|"")*")?"#).expect("a valid pattern")
    });
    ROW.replace_all(sql, |caps: &regex::Captures<'_>| {
        let columns: Vec<&str> = NAME.find_iter(&caps[1]).map(|m| m.as_str()).collect();
        let params: Vec<&str> = caps[3].split(", ").collect();
        if columns.len() != params.len() {
            return caps[0].to_string();
        }
        let lower = &caps[2] == ">";
        // From the last column outwards: `c_n > $n`, then `c_i > $i OR (c_i = $i AND ..)`.
        let last = columns.len() - 1;
        let mut expr = format!("{} {} {}", columns[last], &caps[2], params[last]);
        for i in (0..last).rev() {
            let strict = if lower { ">" } else { "<" };
            expr = format!(
                "{c} {strict} {p} OR ({c} = {p} AND {expr})",
                c = columns[i],
                p = params[i]
            );
            expr = format!("({expr})");
        }
        let bound = if lower { ">=" } else { "<=" };
        format!("({} {bound} {} AND {expr})", columns[0], params[0])
    })
    .into_owned()
}

/// Text written in standard SQL (`"name"`), as MySQL reads it; for text without
/// parameters.
pub(crate) fn render(sql: &str) -> String {
    crate::backend::dialect::to_mysql(sql)
}

#[cfg(test)]
mod tests {
    use super::keyed;

    #[test]
    fn row_value_comparisons_are_written_out_for_the_index() {
        let (sql, params) =
            keyed(r#"("t", "id") > ($1, $2) AND ("t", "id") <= ($3, $4) AND (x = 1)"#);
        assert_eq!(
            sql,
            "(`t` >= ? AND (`t` > ? OR (`t` = ? AND `id` > ?))) AND \
             (`t` <= ? AND (`t` < ? OR (`t` = ? AND `id` <= ?))) AND (x = 1)"
        );
        assert_eq!(params, [1, 1, 1, 2, 3, 3, 3, 4]);
        let (sql, params) = keyed(r#""id" > $1 AND "id" <= $2"#);
        assert_eq!(sql, "`id` > ? AND `id` <= ?");
        assert_eq!(params, [1, 2]);
        let (sql, _) = keyed(r#"("u"."a", "u"."b", "u"."c") > ($1, $2, $3)"#);
        assert_eq!(
            sql,
            "(`u`.`a` >= ? AND (`u`.`a` > ? OR (`u`.`a` = ? AND (`u`.`b` > ? OR (`u`.`b` = ? AND `u`.`c` > ?)))))"
        );
    }
}
