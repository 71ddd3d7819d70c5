//! How every PostgreSQL statement of datamig's own is sent, and a bound value several
//! concerns share.

use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::{Postgres, SqlSafeStr};

// Every statement of this backend is prepared unnamed (`persistent(false)`): it then lives
// only until the next one, on the server session that runs it. A named statement
// (`sqlx_s_N`) stays in its server session, where through a transaction pooler another
// client may meet it ("prepared statement \"sqlx_s_1\" already exists"), or miss it.

pub(crate) fn query<'q>(
    sql: impl SqlSafeStr,
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql).persistent(false)
}

pub(crate) fn query_scalar<'q, O>(
    sql: impl SqlSafeStr,
) -> sqlx::query::QueryScalar<'q, Postgres, O, sqlx::postgres::PgArguments>
where
    (O,): for<'r> sqlx::FromRow<'r, PgRow>,
{
    sqlx::query_scalar(sql).persistent(false)
}

pub(crate) fn query_as<'q, O>(
    sql: impl SqlSafeStr,
) -> sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments>
where
    O: for<'r> sqlx::FromRow<'r, PgRow>,
{
    sqlx::query_as(sql).persistent(false)
}

/// A duration in whole milliseconds, for `$n * interval '1 millisecond'`.
pub(super) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
