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
