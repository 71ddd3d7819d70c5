//! MySQL's walk over a batched migration's key. Not yet taken on MySQL: each step fails
//! with [`Error::Unsupported`](crate::Error::Unsupported), and a batched migration is
//! refused before it writes anything.

use sqlx::MySql;
use sqlx::mysql::MySqlConnection;

use crate::backend::steps::{KeyColumn, WalkSteps};
use crate::key::{Key, KeyShape};

/// What the walk's steps cannot do yet on MySQL.
const BATCHES: &str = "walk the key of a batched migration (batched migrations are not yet available on MySQL and MariaDB; write the migration as one that runs once)";

fn unsupported() -> sqlx::Error {
    sqlx::Error::Configuration(Box::new(crate::error::Error::Unsupported {
        backend: "mysql",
        step: BATCHES,
    }))
}

impl WalkSteps for MySql {
    async fn key_columns(
        _conn: &mut MySqlConnection,
        _table: &str,
        _names: &[&str],
    ) -> Result<Option<Vec<Option<KeyColumn>>>, sqlx::Error> {
        Err(unsupported())
    }

    async fn key_index(
        _conn: &mut MySqlConnection,
        _table: &str,
        _columns: &[KeyColumn],
    ) -> Result<Option<String>, sqlx::Error> {
        Err(unsupported())
    }

    async fn check_scope(
        _conn: &mut MySqlConnection,
        _table: &str,
        _scope: &str,
    ) -> Result<(), sqlx::Error> {
        Err(unsupported())
    }

    async fn next_batch(
        _conn: &mut MySqlConnection,
        _shape: &KeyShape,
        _after: Option<&Key>,
        _upper: Option<&Key>,
        _size: u32,
    ) -> Result<Option<(Key, u64)>, sqlx::Error> {
        Err(unsupported())
    }

    async fn has_keys_after(
        _conn: &mut MySqlConnection,
        _shape: &KeyShape,
        _after: &Key,
        _upper: Option<&Key>,
    ) -> Result<bool, sqlx::Error> {
        Err(unsupported())
    }

    async fn estimate_rows(
        _conn: &mut MySqlConnection,
        _shape: &KeyShape,
        _after: Option<&Key>,
        _upper: Option<&Key>,
    ) -> Result<Option<u64>, sqlx::Error> {
        Err(unsupported())
    }
}
