//! Rust values for the upsert builder, which never splices a value into SQL: written in
//! PostgreSQL's `COPY .. FROM STDIN` text format, or bound as parameters (SQLite).

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone};

/// A value the upsert builder can send: in a PostgreSQL `COPY` text row, or bound as a
/// parameter.
///
/// Implemented for integers, floats, `bool`, strings, `chrono` dates and times (as ISO 8601
/// text on SQLite, as sqlx stores them), JSON as `String`, and `Option<T>` (`None` is
/// `NULL`).
pub trait CopyValue {
    /// Appends the value, escaped for the `COPY` text format.
    fn write_copy(&self, out: &mut Vec<u8>);

    /// The value, to bind as a parameter.
    fn to_value(&self) -> BindValue;
}

/// A value bound as a parameter (see [`CopyValue::to_value`]).
#[derive(Clone, Debug, PartialEq)]
pub enum BindValue {
    /// `NULL`.
    Null,
    /// A boolean (an integer 0 or 1 on SQLite).
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// Text.
    Text(String),
}

/// Where the upsert builder writes a row: `COPY` text, or values to bind.
pub(crate) enum RowSink<'a> {
    /// Appends the row and its line end in `COPY` text format.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Copy(&'a mut Vec<u8>),
    /// Appends the row's values.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    Values(&'a mut Vec<BindValue>),
}

impl RowSink<'_> {
    pub(crate) fn write<R: CopyRow>(self, row: &R) {
        match self {
            RowSink::Copy(out) => write_row(row, out),
            RowSink::Values(out) => row.push_values(out),
        }
    }
}

/// A row of values for `COPY`: tuples of one to twelve [`CopyValue`]s.
pub trait CopyRow {
    /// The number of values in the row.
    const WIDTH: usize;
    /// Appends the values separated by tabs (no line end).
    fn write_values(&self, out: &mut Vec<u8>);

    /// Appends the values, to bind.
    fn push_values(&self, out: &mut Vec<BindValue>);
}

/// Appends one row and its line end.
pub(crate) fn write_row<R: CopyRow>(row: &R, out: &mut Vec<u8>) {
    row.write_values(out);
    out.push(b'\n');
}

/// Appends text escaped for the `COPY` text format: backslash, tab, newline and carriage
/// return are the only characters with a meaning there.
fn write_escaped(text: &str, out: &mut Vec<u8>) {
    for byte in text.bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            other => out.push(other),
        }
    }
}

macro_rules! copy_display {
    ($($t:ty),*) => {$(
        impl CopyValue for $t {
            fn write_copy(&self, out: &mut Vec<u8>) {
                use std::io::Write;
                let _ = write!(out, "{}", self);
            }

            fn to_value(&self) -> BindValue {
                BindValue::Int(i64::from(*self))
            }
        }
    )*};
}
copy_display!(i8, i16, i32, i64, u8, u16, u32);

impl CopyValue for bool {
    fn write_copy(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if *self { b"true" } else { b"false" });
    }

    fn to_value(&self) -> BindValue {
        BindValue::Bool(*self)
    }
}

impl CopyValue for f32 {
    fn write_copy(&self, out: &mut Vec<u8>) {
        f64::from(*self).write_copy(out);
    }

    fn to_value(&self) -> BindValue {
        BindValue::Float(f64::from(*self))
    }
}

impl CopyValue for f64 {
    fn write_copy(&self, out: &mut Vec<u8>) {
        let text = if self.is_nan() {
            "NaN".to_string()
        } else if self.is_infinite() {
            if *self > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
        } else {
            format!("{self:?}")
        };
        out.extend_from_slice(text.as_bytes());
    }

    fn to_value(&self) -> BindValue {
        BindValue::Float(*self)
    }
}

impl CopyValue for str {
    fn write_copy(&self, out: &mut Vec<u8>) {
        write_escaped(self, out);
    }

    fn to_value(&self) -> BindValue {
        BindValue::Text(self.to_string())
    }
}

impl CopyValue for String {
    fn write_copy(&self, out: &mut Vec<u8>) {
        write_escaped(self, out);
    }

    fn to_value(&self) -> BindValue {
        BindValue::Text(self.clone())
    }
}

impl<T: CopyValue + ?Sized> CopyValue for &T {
    fn write_copy(&self, out: &mut Vec<u8>) {
        (**self).write_copy(out);
    }

    fn to_value(&self) -> BindValue {
        (**self).to_value()
    }
}

impl<T: CopyValue> CopyValue for Option<T> {
    fn write_copy(&self, out: &mut Vec<u8>) {
        match self {
            Some(value) => value.write_copy(out),
            None => out.extend_from_slice(b"\\N"),
        }
    }

    fn to_value(&self) -> BindValue {
        self.as_ref().map_or(BindValue::Null, CopyValue::to_value)
    }
}

impl CopyValue for NaiveDate {
    fn write_copy(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.format("%Y-%m-%d").to_string().as_bytes());
    }

    fn to_value(&self) -> BindValue {
        BindValue::Text(self.format("%Y-%m-%d").to_string())
    }
}

impl CopyValue for NaiveDateTime {
    fn write_copy(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.format("%Y-%m-%d %H:%M:%S%.f").to_string().as_bytes());
    }

    fn to_value(&self) -> BindValue {
        BindValue::Text(self.format("%Y-%m-%d %H:%M:%S%.f").to_string())
    }
}

impl<Tz: TimeZone> CopyValue for DateTime<Tz> {
    fn write_copy(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_rfc3339().as_bytes());
    }

    fn to_value(&self) -> BindValue {
        BindValue::Text(self.to_rfc3339())
    }
}

macro_rules! copy_tuple {
    ($width:expr; $first:ident $(, $rest:ident)*) => {
        impl<$first: CopyValue, $($rest: CopyValue),*> CopyRow for ($first, $($rest,)*) {
            const WIDTH: usize = $width;
            #[allow(non_snake_case)]
            fn write_values(&self, out: &mut Vec<u8>) {
                let ($first, $($rest,)*) = self;
                $first.write_copy(out);
                $(
                    out.push(b'\t');
                    $rest.write_copy(out);
                )*
            }

            #[allow(non_snake_case)]
            fn push_values(&self, out: &mut Vec<BindValue>) {
                let ($first, $($rest,)*) = self;
                out.push($first.to_value());
                $(out.push($rest.to_value());)*
            }
        }
    };
}
copy_tuple!(1; A);
copy_tuple!(2; A, B);
copy_tuple!(3; A, B, C);
copy_tuple!(4; A, B, C, D);
copy_tuple!(5; A, B, C, D, E);
copy_tuple!(6; A, B, C, D, E, F);
copy_tuple!(7; A, B, C, D, E, F, G);
copy_tuple!(8; A, B, C, D, E, F, G, H);
copy_tuple!(9; A, B, C, D, E, F, G, H, I);
copy_tuple!(10; A, B, C, D, E, F, G, H, I, J);
copy_tuple!(11; A, B, C, D, E, F, G, H, I, J, K);
copy_tuple!(12; A, B, C, D, E, F, G, H, I, J, K, L);

#[cfg(test)]
mod tests {
    use super::*;

    fn row<R: CopyRow>(r: R) -> String {
        let mut out = Vec::new();
        write_row(&r, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_is_escaped_and_none_is_null() {
        assert_eq!(
            row((1_i64, "a\tb\\c\nd\re", None::<i32>)),
            "1\ta\\tb\\\\c\\nd\\re\t\\N\n"
        );
        assert_eq!(row((true, Some("x".to_string()))), "true\tx\n");
    }

    #[test]
    fn floats_round_trip() {
        assert_eq!(
            row((0.1_f64, f64::NAN, f64::NEG_INFINITY)),
            "0.1\tNaN\t-Infinity\n"
        );
    }
}
