//! MySQL's upsert: not yet available; fails with a typed error before writing anything.

use sqlx::MySql;
use sqlx::mysql::MySqlConnection;

use crate::backend::steps::UpsertSteps;
use crate::error::Error;
use crate::merge::{UpsertReport, UpsertRequest};

impl UpsertSteps for MySql {
    async fn upsert(
        _conn: &mut MySqlConnection,
        _request: UpsertRequest<'_>,
    ) -> Result<(UpsertReport, u64), Error> {
        Err(Error::Unsupported {
            backend: "mysql",
            step: "run an upsert (Ctx::upsert is not yet available on MySQL and MariaDB; write \
                   INSERT .. ON DUPLICATE KEY UPDATE with ctx.execute)",
        })
    }
}
