//! Values written alike on every backend: a key value bound with its storage class, bytes
//! as hex.

use sqlx::query::Query;
use sqlx::{Database, Encode, Type};

use crate::key::KeyValue;

/// Binds one key value with its storage class: integers as `bigint`, the rest as their
/// text, real number or bytes.
pub(crate) fn bind_key_value<'q, DB>(
    q: Query<'q, DB, DB::Arguments>,
    value: &KeyValue,
) -> Query<'q, DB, DB::Arguments>
where
    DB: Database,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> f64: Encode<'t, DB> + Type<DB>,
    for<'t, 'v> &'v str: Encode<'t, DB> + Type<DB>,
    for<'t, 'v> &'v [u8]: Encode<'t, DB> + Type<DB>,
{
    match value {
        KeyValue::Integer(n) => q.bind(*n),
        KeyValue::Text(t) => q.bind(t.as_str()),
        KeyValue::Real(x) => q.bind(*x),
        KeyValue::Bytes(b) => q.bind(b.as_slice()),
    }
}

/// Bytes as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
