//! A SQLite source compared with the target in the target's types (see `source/compare.rs`).

use sqlx::postgres::{PgConnection, PgCopyIn};

use super::rows::stream_all;
use crate::copy::convert::Conversion;
use crate::copy::plan::Planned;
use crate::copy::source::Compared;
use crate::copy::source::compare::StreamAll;
use crate::error::Error;

/// The SQLite reader and each table's conversions.
struct Converted<'a> {
    conn: &'a mut Option<rusqlite::Connection>,
    conversions: &'a [Vec<Conversion>],
}

impl StreamAll for Converted<'_> {
    async fn stream_all(
        &mut self,
        table: usize,
        p: &Planned,
        copy_in: &mut PgCopyIn<&mut PgConnection>,
    ) -> Result<(), Error> {
        stream_all(self.conn, p, &self.conversions[table], copy_in).await
    }
}

/// A SQLite source compared with the target in the target's types, row by row.
pub(super) async fn compare_rows(
    conn: &mut Option<rusqlite::Connection>,
    dst: &mut PgConnection,
    planned: &[Planned],
    conversions: &[Vec<Conversion>],
) -> Result<Compared, Error> {
    let mut source = Converted { conn, conversions };
    crate::copy::source::compare::compare_rows(&mut source, dst, planned).await
}
