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

/// The rows the planner expects of the top node of an `EXPLAIN`'s first line
/// (`Seq Scan on t  (cost=0.00..6541.00 rows=400000 width=0)`); `None` without one.
pub(crate) fn explained_rows(line: &str) -> Option<u64> {
    line.split(" rows=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// A duration in whole milliseconds, for `$n * interval '1 millisecond'`.
pub(super) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::explained_rows;

    #[test]
    fn the_rows_of_a_plan_line_are_read() {
        assert_eq!(
            explained_rows("Seq Scan on orders r  (cost=0.00..6541.00 rows=400000 width=0)"),
            Some(400_000)
        );
        assert_eq!(
            explained_rows("Append  (cost=0.00..1.10 rows=7 width=0)"),
            Some(7)
        );
        assert_eq!(explained_rows("Result  (cost=0.00..0.01 width=0)"), None);
    }
}
