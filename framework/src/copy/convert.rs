//! SQLite's loose values into PostgreSQL's strict types, by the target column's type:
//! each value is checked and written in binary `COPY`, or refused with the reason. Pure and
//! unit-tested; the copy's SQLite source calls it for every value it reads.
#![cfg_attr(not(feature = "sqlite"), allow(dead_code))]

use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

/// How integers stored in a date or timestamp column count time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum UnixTime {
    /// Seconds since 1970-01-01 00:00:00 UTC.
    Seconds,
    /// Milliseconds since 1970-01-01 00:00:00 UTC.
    Milliseconds,
}

impl UnixTime {
    /// The name of the unit (`seconds`, `milliseconds`).
    pub fn name(self) -> &'static str {
        match self {
            UnixTime::Seconds => "seconds",
            UnixTime::Milliseconds => "milliseconds",
        }
    }
}

impl std::str::FromStr for UnixTime {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "s" | "seconds" => Ok(UnixTime::Seconds),
            "ms" | "milliseconds" => Ok(UnixTime::Milliseconds),
            other => Err(format!(
                "unknown unit of Unix time {other:?}: use seconds or milliseconds"
            )),
        }
    }
}

/// The PostgreSQL types SQLite values are converted into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Boolean,
    /// An integer type with its range.
    Int(i64, i64),
    /// `text`, `varchar(n)`, `char(n)`: at most so many characters.
    Text(Option<usize>),
    Uuid,
    /// `inet`: an IPv4 or IPv6 address, with its netmask's bits.
    Inet,
    Json,
    Jsonb,
    /// `numeric(p, s)`, or unconstrained.
    Numeric(Option<(u32, u32)>),
    Real,
    Double,
    Bytea,
    Date,
    Time,
    Timestamp,
    Timestamptz,
}

impl Kind {
    /// The kind a column of this type (as `format_type` writes it) takes, if SQLite values
    /// can be converted into it.
    pub(crate) fn of(sql_type: &str) -> Option<Kind> {
        let sized = |prefix: &str| -> Option<usize> {
            sql_type
                .strip_prefix(prefix)?
                .strip_prefix('(')?
                .strip_suffix(')')?
                .parse()
                .ok()
        };
        Some(match sql_type {
            "boolean" => Kind::Boolean,
            "smallint" => Kind::Int(i64::from(i16::MIN), i64::from(i16::MAX)),
            "integer" => Kind::Int(i64::from(i32::MIN), i64::from(i32::MAX)),
            "bigint" => Kind::Int(i64::MIN, i64::MAX),
            "text" | "character varying" => Kind::Text(None),
            "uuid" => Kind::Uuid,
            "inet" => Kind::Inet,
            "json" => Kind::Json,
            "jsonb" => Kind::Jsonb,
            "numeric" => Kind::Numeric(None),
            "real" => Kind::Real,
            "double precision" => Kind::Double,
            "bytea" => Kind::Bytea,
            "date" => Kind::Date,
            "time without time zone" => Kind::Time,
            "timestamp without time zone" => Kind::Timestamp,
            "timestamp with time zone" => Kind::Timestamptz,
            _ => {
                if let Some(n) = sized("character varying").or_else(|| sized("character")) {
                    Kind::Text(Some(n))
                } else if let Some(inner) = sql_type
                    .strip_prefix("numeric(")
                    .and_then(|s| s.strip_suffix(')'))
                {
                    let (p, s) = inner.split_once(',')?;
                    Kind::Numeric(Some((p.trim().parse().ok()?, s.trim().parse().ok()?)))
                } else if let Some(p) = sql_type
                    .strip_prefix("timestamp(")
                    .and_then(|s| s.strip_suffix(") without time zone"))
                {
                    p.parse::<u8>().ok()?;
                    Kind::Timestamp
                } else if let Some(p) = sql_type
                    .strip_prefix("timestamp(")
                    .and_then(|s| s.strip_suffix(") with time zone"))
                {
                    p.parse::<u8>().ok()?;
                    Kind::Timestamptz
                } else {
                    return None;
                }
            }
        })
    }

    /// Whether integers in the column are Unix time, which needs a unit.
    pub(crate) fn takes_unix_time(self) -> bool {
        matches!(self, Kind::Date | Kind::Timestamp | Kind::Timestamptz)
    }

    /// What the plan says of the conversion.
    pub(crate) fn describe(self, unix: Option<UnixTime>) -> String {
        let unix = |what: &str| match unix {
            Some(unit) => format!("{what}; integers as Unix {}", unit.name()),
            None => what.to_string(),
        };
        match self {
            Kind::Boolean => "integers 0/1 (or text true/false, t/f)".into(),
            Kind::Int(lo, hi) => format!("integers, range-checked ({lo} to {hi})"),
            Kind::Text(Some(n)) => format!("text, at most {n} characters"),
            Kind::Text(None) => "text (integers and reals as written)".into(),
            Kind::Uuid => "text uuids (any case, hyphens optional) or 16-byte blobs".into(),
            Kind::Inet => "text IPv4 and IPv6 addresses, an optional /bits".into(),
            Kind::Json | Kind::Jsonb => "text checked as JSON, numbers as JSON numbers".into(),
            Kind::Numeric(Some((p, s))) => format!(
                "integers, reals and decimal text, at most {} digits before the point and {s} after (never rounded)",
                p - s
            ),
            Kind::Numeric(None) => "integers, reals and decimal text".into(),
            Kind::Real => "reals and integers, within real's range and precision".into(),
            Kind::Double => "reals and integers (exact up to 2^53)".into(),
            Kind::Bytea => "blobs (text as its UTF-8 bytes)".into(),
            Kind::Date => unix("ISO 8601 text (YYYY-MM-DD)"),
            Kind::Time => "ISO 8601 text (HH:MM[:SS[.f]]), to the microsecond".into(),
            Kind::Timestamp => {
                unix("ISO 8601 text, to the microsecond; an offset is converted to UTC")
            }
            Kind::Timestamptz => unix("ISO 8601 text, to the microsecond; without an offset, UTC"),
        }
    }
}

/// One SQLite value, by its storage class.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Value<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl Value<'_> {
    /// The value as a message shows it (long values shortened).
    pub(crate) fn show(&self) -> String {
        const MAX: usize = 60;
        match self {
            Value::Null => "NULL".into(),
            Value::Integer(i) => format!("integer {i}"),
            Value::Real(r) => format!("real {r}"),
            Value::Text(t) => {
                let shown: String = t.chars().take(MAX).collect();
                let more = if t.chars().count() > MAX { "..." } else { "" };
                format!("text '{}{more}'", shown.replace('\'', "''"))
            }
            Value::Blob(b) => {
                let mut hex = String::new();
                for byte in b.iter().take(MAX / 2) {
                    let _ = write!(hex, "{byte:02x}");
                }
                let more = if b.len() > MAX / 2 { "..." } else { "" };
                format!("blob x'{hex}{more}' ({} bytes)", b.len())
            }
        }
    }
}

/// A column's conversion: its kind, whether it takes `NULL`, and the unit of Unix time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conversion {
    pub(crate) kind: Kind,
    pub(crate) not_null: bool,
    pub(crate) unix: Option<UnixTime>,
}

/// A value checked against its column's type, before it is written in either of
/// `COPY`'s formats.
pub(crate) enum Typed<'a> {
    Null,
    Boolean(bool),
    Int(i64),
    Text(std::borrow::Cow<'a, str>),
    Uuid([u8; 16]),
    /// An address and its netmask's bits.
    Inet(std::net::IpAddr, u8),
    /// JSON text (or a number), checked.
    Json(std::borrow::Cow<'a, str>),
    /// A plain decimal number (`-12.50`), checked against the column's precision.
    Numeric(std::borrow::Cow<'a, str>),
    Float(f64),
    Bytes(&'a [u8]),
    Time(NaiveTime),
    Date(NaiveDate),
    Timestamp(NaiveDateTime),
}

impl Conversion {
    /// Appends the value as `COPY` text (escaped, no delimiter) to `out`, or says why it
    /// does not convert (`out` is then unchanged): the readable form the unit tests
    /// compare; the copy writes [`Conversion::write_binary`], which the copy's tests check
    /// against a real server.
    #[cfg(test)]
    pub(crate) fn write(&self, value: Value<'_>, out: &mut Vec<u8>) -> Result<(), String> {
        match self.check(value)? {
            Typed::Null => out.extend_from_slice(b"\\N"),
            Typed::Boolean(b) => out.push(if b { b't' } else { b'f' }),
            Typed::Int(i) => {
                let _ = write!(Bytes(out), "{i}");
            }
            Typed::Text(text) | Typed::Json(text) => escape(text.as_bytes(), out),
            Typed::Uuid(bytes) => {
                for (i, byte) in bytes.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        out.push(b'-');
                    }
                    let _ = write!(Bytes(out), "{byte:02x}");
                }
            }
            Typed::Inet(addr, bits) => {
                let _ = write!(Bytes(out), "{addr}");
                if bits != inet_max_bits(addr) {
                    let _ = write!(Bytes(out), "/{bits}");
                }
            }
            Typed::Numeric(text) => out.extend_from_slice(text.as_bytes()),
            Typed::Float(f) => {
                if f.is_nan() {
                    out.extend_from_slice(b"NaN");
                } else if f.is_infinite() {
                    out.extend_from_slice(if f > 0.0 { b"Infinity" } else { b"-Infinity" });
                } else if self.kind == Kind::Real {
                    let _ = write!(Bytes(out), "{:e}", f as f32);
                } else {
                    let _ = write!(Bytes(out), "{f:e}");
                }
            }
            Typed::Bytes(bytes) => {
                out.reserve(3 + 2 * bytes.len());
                out.extend_from_slice(b"\\\\x");
                const HEX: &[u8; 16] = b"0123456789abcdef";
                for byte in bytes {
                    out.push(HEX[usize::from(byte >> 4)]);
                    out.push(HEX[usize::from(byte & 15)]);
                }
            }
            Typed::Time(time) => write_time(time, out),
            Typed::Date(date) => write_date(date, out),
            Typed::Timestamp(at) => {
                write_date(at.date(), out);
                out.push(b' ');
                write_time(at.time(), out);
                if self.kind == Kind::Timestamptz {
                    out.extend_from_slice(b"+00");
                }
            }
        }
        Ok(())
    }

    /// Appends the value as one field of binary `COPY` (its length, then PostgreSQL's
    /// binary form of the column's type) to `out`, or says why it does not convert
    /// (`out` is then unchanged).
    pub(crate) fn write_binary(&self, value: Value<'_>, out: &mut Vec<u8>) -> Result<(), String> {
        let field = |out: &mut Vec<u8>, bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
            out.extend_from_slice(bytes);
        };
        match self.check(value)? {
            Typed::Null => out.extend_from_slice(&(-1_i32).to_be_bytes()),
            Typed::Boolean(b) => field(out, &[u8::from(b)]),
            Typed::Int(i) => match self.kind {
                Kind::Int(lo, _) if lo >= i64::from(i16::MIN) => {
                    field(out, &(i as i16).to_be_bytes());
                }
                Kind::Int(lo, _) if lo >= i64::from(i32::MIN) => {
                    field(out, &(i as i32).to_be_bytes());
                }
                _ => field(out, &i.to_be_bytes()),
            },
            Typed::Text(text) => field(out, text.as_bytes()),
            Typed::Json(text) if self.kind == Kind::Jsonb => {
                out.extend_from_slice(&(text.len() as i32 + 1).to_be_bytes());
                out.push(1);
                out.extend_from_slice(text.as_bytes());
            }
            Typed::Json(text) => field(out, text.as_bytes()),
            Typed::Uuid(bytes) => field(out, &bytes),
            Typed::Inet(addr, bits) => inet_binary(addr, bits, out),
            Typed::Numeric(text) => {
                let start = out.len();
                out.extend_from_slice(&0_i32.to_be_bytes());
                numeric_binary(&text, out);
                let len = (out.len() - start - 4) as i32;
                out[start..start + 4].copy_from_slice(&len.to_be_bytes());
            }
            Typed::Float(f) if self.kind == Kind::Real => field(out, &(f as f32).to_be_bytes()),
            Typed::Float(f) => field(out, &f.to_be_bytes()),
            Typed::Bytes(bytes) => field(out, bytes),
            Typed::Time(time) => field(out, &micros_of_day(time).to_be_bytes()),
            Typed::Date(date) => {
                let days = (date - POSTGRES_EPOCH).num_days() as i32;
                field(out, &days.to_be_bytes());
            }
            Typed::Timestamp(at) => {
                let days = (at.date() - POSTGRES_EPOCH).num_days();
                let micros = days * 86_400_000_000 + micros_of_day(at.time());
                field(out, &micros.to_be_bytes());
            }
        }
        Ok(())
    }

    /// The value checked against the column's type, or why it does not convert.
    pub(crate) fn check<'a>(&self, value: Value<'a>) -> Result<Typed<'a>, String> {
        Ok(match (self.kind, value) {
            (_, Value::Null) if self.not_null => {
                return Err("NULL does not go into a NOT NULL column".into());
            }
            (_, Value::Null) => Typed::Null,
            (Kind::Boolean, v) => Typed::Boolean(match v {
                Value::Integer(0) => false,
                Value::Integer(1) => true,
                Value::Text(t) => match t.to_ascii_lowercase().as_str() {
                    "0" | "f" | "false" => false,
                    "1" | "t" | "true" => true,
                    _ => return Err("a boolean is 0 or 1 (or text true/false, t/f)".into()),
                },
                _ => return Err("a boolean is 0 or 1 (or text true/false, t/f)".into()),
            }),
            (Kind::Int(lo, hi), v) => {
                let i = match v {
                    Value::Integer(i) => i,
                    Value::Real(r) if r.fract() == 0.0 && r.abs() < 9.2e18 => r as i64,
                    Value::Text(t) => t.parse::<i64>().map_err(|_| "not an integer".to_string())?,
                    _ => return Err("not an integer".into()),
                };
                if i < lo || i > hi {
                    return Err(format!("out of range ({lo} to {hi})"));
                }
                Typed::Int(i)
            }
            (Kind::Text(max), v) => {
                let text: std::borrow::Cow<'_, str> = match v {
                    Value::Text(t) => t.into(),
                    Value::Integer(i) => i.to_string().into(),
                    Value::Real(r) => r.to_string().into(),
                    Value::Blob(b) => std::str::from_utf8(b)
                        .map_err(|_| "a blob that is not UTF-8 text".to_string())?
                        .into(),
                    Value::Null => unreachable!("handled above"),
                };
                if text.contains('\0') {
                    return Err("PostgreSQL text cannot hold the NUL character".into());
                }
                if let Some(max) = max
                    && text.chars().count() > max
                {
                    return Err(format!(
                        "{} characters, longer than {max}",
                        text.chars().count()
                    ));
                }
                Typed::Text(text)
            }
            (Kind::Uuid, v) => Typed::Uuid(match v {
                Value::Text(t) => parse_uuid(t).ok_or("not a uuid")?,
                Value::Blob(b) if b.len() == 16 => b.try_into().expect("16 bytes"),
                _ => return Err("a uuid is text or a 16-byte blob".into()),
            }),
            (Kind::Inet, Value::Text(t)) => {
                let (addr, bits) = parse_inet(t).ok_or("not an IPv4 or IPv6 address")?;
                Typed::Inet(addr, bits)
            }
            (Kind::Inet, _) => return Err("an address is text".into()),
            (Kind::Json | Kind::Jsonb, v) => Typed::Json(match v {
                Value::Text(t) => {
                    serde_json::from_str::<serde::de::IgnoredAny>(t)
                        .map_err(|e| format!("not JSON ({e})"))?;
                    if self.kind == Kind::Jsonb && t.contains("\\u0000") {
                        return Err("jsonb cannot hold \\u0000".into());
                    }
                    t.into()
                }
                Value::Integer(i) => i.to_string().into(),
                Value::Real(r) if r.is_finite() => r.to_string().into(),
                _ => return Err("JSON is text (or a number)".into()),
            }),
            (Kind::Numeric(limits), v) => {
                let text: std::borrow::Cow<'_, str> = match v {
                    Value::Integer(i) => i.to_string().into(),
                    Value::Real(r) if r.is_finite() => r.to_string().into(),
                    Value::Text(t) => t.into(),
                    _ => return Err("not a number".into()),
                };
                let (whole, fraction) =
                    decimal_digits(&text).ok_or_else(|| "not a decimal number".to_string())?;
                if let Some((p, s)) = limits {
                    let before = u32::try_from(whole).unwrap_or(u32::MAX);
                    let after = u32::try_from(fraction).unwrap_or(u32::MAX);
                    if before > p - s {
                        return Err(format!(
                            "{before} digits before the point, more than numeric({p},{s}) holds ({})",
                            p - s
                        ));
                    }
                    if after > s {
                        return Err(format!(
                            "{after} digits after the point, more than numeric({p},{s}) keeps ({s}): it would be rounded"
                        ));
                    }
                }
                Typed::Numeric(text)
            }
            (Kind::Real | Kind::Double, v) => {
                let f = match v {
                    Value::Real(r) => r,
                    Value::Integer(i) => {
                        let exact = if self.kind == Kind::Real {
                            (i as f32) as i64 == i && i.unsigned_abs() <= 1 << 24
                        } else {
                            (i as f64) as i64 == i && i.unsigned_abs() <= 1 << 53
                        };
                        if !exact {
                            return Err(
                                "an integer the floating-point type cannot hold exactly".into()
                            );
                        }
                        i as f64
                    }
                    Value::Text(t) => t
                        .trim()
                        .parse::<f64>()
                        .map_err(|_| "not a number".to_string())?,
                    _ => return Err("not a number".into()),
                };
                if self.kind == Kind::Real && f.is_finite() {
                    let g = f as f32;
                    if g.is_infinite() || (g == 0.0 && f != 0.0) {
                        return Err("out of range for real".into());
                    }
                }
                Typed::Float(f)
            }
            (Kind::Bytea, v) => Typed::Bytes(match v {
                Value::Blob(b) => b,
                Value::Text(t) => t.as_bytes(),
                _ => return Err("bytea takes blobs (or text)".into()),
            }),
            (Kind::Time, v) => {
                let Value::Text(t) = v else {
                    return Err("a time is ISO 8601 text (HH:MM:SS)".into());
                };
                let time = parse_time(t.as_bytes())
                    .and_then(|(time, rest)| rest.is_empty().then_some(time))
                    .ok_or("not an ISO 8601 time (HH:MM[:SS[.ffffff]])")?;
                // Rounded to the microsecond; a time that would round past midnight is cut.
                let day = NaiveDate::MIN;
                let rounded = round_micros(day.and_time(time));
                Typed::Time(if rounded.date() == day {
                    rounded.time()
                } else {
                    time.with_nanosecond(time.nanosecond() / 1000 * 1000)
                        .unwrap_or(time)
                })
            }
            (Kind::Date | Kind::Timestamp | Kind::Timestamptz, v) => {
                let moment = match v {
                    Value::Text(t) => parse_datetime(t)?,
                    Value::Integer(i) => Moment::Utc(unix(Ok(i), self.unix)?),
                    Value::Real(r) if self.unix == Some(UnixTime::Seconds) => {
                        Moment::Utc(unix(Err(r), self.unix)?)
                    }
                    _ => {
                        return Err(
                            "a date or timestamp is ISO 8601 text (or Unix time with a unit)"
                                .into(),
                        );
                    }
                };
                let at = round_micros(match moment {
                    Moment::Local(at) => at,
                    Moment::Utc(at) => at,
                });
                if self.kind == Kind::Date {
                    if at.time() != NaiveTime::MIN {
                        return Err("a date with a time of day: it would be truncated".into());
                    }
                    Typed::Date(at.date())
                } else {
                    Typed::Timestamp(at)
                }
            }
        })
    }
}

/// Day zero of PostgreSQL's binary dates and timestamps.
pub(crate) const POSTGRES_EPOCH: NaiveDate = NaiveDate::from_ymd_opt(2000, 1, 1).expect("a date");

pub(crate) fn micros_of_day(time: NaiveTime) -> i64 {
    i64::from(time.num_seconds_from_midnight()) * 1_000_000 + i64::from(time.nanosecond() / 1000)
}

/// A plain decimal number (as [`decimal_digits`] accepts it) in `numeric`'s binary form:
/// the count of base-10,000 digits, the weight of the first, the sign, the display scale,
/// then the digits (leading and trailing zero digits left out).
pub(crate) fn numeric_binary(text: &str, out: &mut Vec<u8>) {
    let negative = text.starts_with('-');
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let whole = whole.trim_start_matches('0');
    // Whole digits padded on the left and fraction digits on the right to groups of four.
    let lead = (4 - whole.len() % 4) % 4;
    let mut decimal: Vec<u8> = Vec::with_capacity(lead + whole.len() + fraction.len() + 3);
    decimal.resize(lead, 0);
    decimal.extend(whole.bytes().map(|c| c - b'0'));
    decimal.extend(fraction.bytes().map(|c| c - b'0'));
    decimal.resize(decimal.len().div_ceil(4) * 4, 0);
    let mut groups: Vec<i16> = decimal
        .chunks(4)
        .map(|g| g.iter().fold(0_i16, |n, &d| n * 10 + i16::from(d)))
        .collect();
    let mut weight = ((lead + whole.len()) / 4) as i16 - 1;
    let leading = groups.iter().take_while(|&&g| g == 0).count();
    groups.drain(..leading);
    weight -= leading as i16;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    let sign: u16 = if negative && !groups.is_empty() {
        0x4000
    } else {
        0
    };
    out.extend_from_slice(&(groups.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&(fraction.len() as i16).to_be_bytes());
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
}

/// A point in time read from text: with an offset (converted to UTC) or without one.
enum Moment {
    Local(NaiveDateTime),
    Utc(NaiveDateTime),
}

/// Unix time: an integer (`Ok`) or a real (`Err`, seconds only) in the column's unit.
fn unix(value: Result<i64, f64>, unit: Option<UnixTime>) -> Result<NaiveDateTime, String> {
    let at = match (unit, value) {
        (None, _) => {
            return Err(
                "an integer in a date or timestamp column: say whether it is Unix seconds or milliseconds (--unix-time TABLE.COLUMN=seconds)".into(),
            );
        }
        (Some(UnixTime::Milliseconds), Ok(ms)) => DateTime::from_timestamp_millis(ms),
        (Some(UnixTime::Seconds), Ok(s)) => DateTime::from_timestamp(s, 0),
        (Some(UnixTime::Seconds), Err(r)) => {
            let micros = (r * 1e6).round();
            if !micros.is_finite() || micros.abs() > 9.2e18 {
                None
            } else {
                DateTime::from_timestamp_micros(micros as i64)
            }
        }
        (Some(UnixTime::Milliseconds), Err(_)) => None,
    };
    at.map(|at| at.naive_utc())
        .filter(|at| (1..=9999).contains(&chrono::Datelike::year(at)))
        .ok_or_else(|| "Unix time out of range (years 1 to 9999)".into())
}

/// `YYYY-MM-DD`, then optionally `T` or a space and a time, then optionally `Z` or an
/// offset (`+HH`, `+HH:MM`, `+HHMM`), as ISO 8601 and SQLite's date functions write them.
fn parse_datetime(text: &str) -> Result<Moment, String> {
    const EXPECTED: &str = "not ISO 8601 (YYYY-MM-DD[ HH:MM[:SS[.ffffff]]][Z|+HH:MM])";
    let b = text.as_bytes();
    let digits = |s: &[u8]| -> Option<u32> {
        s.iter()
            .all(u8::is_ascii_digit)
            .then(|| std::str::from_utf8(s).ok()?.parse().ok())?
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(EXPECTED.into());
    }
    let (Some(y), Some(m), Some(d)) = (digits(&b[0..4]), digits(&b[5..7]), digits(&b[8..10]))
    else {
        return Err(EXPECTED.into());
    };
    let date = NaiveDate::from_ymd_opt(i32::try_from(y).unwrap_or(0), m, d)
        .filter(|_| y >= 1)
        .ok_or("not a date of the calendar")?;
    let mut rest = &b[10..];
    let mut time = NaiveTime::MIN;
    if let [b'T' | b't' | b' ', after @ ..] = rest
        && after.first().is_some_and(u8::is_ascii_digit)
    {
        let (t, r) = parse_time(after).ok_or(EXPECTED)?;
        time = t;
        rest = r;
    }
    let at = date.and_time(time);
    if rest.is_empty() {
        return Ok(Moment::Local(at));
    }
    if let [b' ', r @ ..] = rest {
        rest = r;
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), zone @ ..] => {
            let (h, m) = match zone {
                [h1, h2] => (digits(&[*h1, *h2]), Some(0)),
                [h1, h2, b':', m1, m2] | [h1, h2, m1, m2] => {
                    (digits(&[*h1, *h2]), digits(&[*m1, *m2]))
                }
                _ => (None, None),
            };
            let (Some(h), Some(m)) = (h, m) else {
                return Err(EXPECTED.into());
            };
            if h > 15 || m > 59 {
                return Err("an offset out of range".into());
            }
            let seconds = i64::from(h * 3600 + m * 60);
            if *sign == b'-' { -seconds } else { seconds }
        }
        _ => return Err(EXPECTED.into()),
    };
    Ok(Moment::Utc(at - chrono::TimeDelta::seconds(offset)))
}

/// `HH:MM[:SS[.f{1,9}]]` at the start of `b`; returns the time (to the nanosecond) and
/// what follows.
fn parse_time(b: &[u8]) -> Option<(NaiveTime, &[u8])> {
    let two = |s: &[u8]| -> Option<u32> {
        match s {
            [a, b] if a.is_ascii_digit() && b.is_ascii_digit() => {
                Some(u32::from(a - b'0') * 10 + u32::from(b - b'0'))
            }
            _ => None,
        }
    };
    if b.len() < 5 || b[2] != b':' {
        return None;
    }
    let (h, m) = (two(&b[0..2])?, two(&b[3..5])?);
    let mut rest = &b[5..];
    let (mut s, mut nanos) = (0, 0);
    if let [b':', s1, s2, after @ ..] = rest {
        s = two(&[*s1, *s2])?;
        rest = after;
        if let [b'.', after @ ..] = rest {
            let n = after.iter().take_while(|c| c.is_ascii_digit()).count();
            if n == 0 || n > 9 {
                return None;
            }
            let mut value: u32 = std::str::from_utf8(&after[..n]).ok()?.parse().ok()?;
            for _ in n..9 {
                value *= 10;
            }
            nanos = value;
            rest = &after[n..];
        }
    }
    Some((NaiveTime::from_hms_nano_opt(h, m, s, nanos)?, rest))
}

/// To the microsecond, as PostgreSQL keeps it (rounded half up).
fn round_micros(at: NaiveDateTime) -> NaiveDateTime {
    let rounded = at + chrono::TimeDelta::nanoseconds(500);
    rounded
        .with_nanosecond(rounded.nanosecond() / 1000 * 1000)
        .unwrap_or(at)
}

#[cfg(test)]
fn write_date(date: NaiveDate, out: &mut Vec<u8>) {
    use chrono::Datelike;
    let _ = write!(
        Bytes(out),
        "{:04}-{:02}-{:02}",
        date.year(),
        date.month(),
        date.day()
    );
}

#[cfg(test)]
fn write_time(time: NaiveTime, out: &mut Vec<u8>) {
    let _ = write!(
        Bytes(out),
        "{:02}:{:02}:{:02}",
        time.hour(),
        time.minute(),
        time.second()
    );
    let micros = time.nanosecond() / 1000;
    if micros > 0 {
        let _ = write!(Bytes(out), ".{micros:06}");
    }
}

/// Digits before and after the point of a plain decimal number (`-12.50`, `.5`, `3.`),
/// leading zeros not counted before it; `None` when it is not one.
pub(crate) fn decimal_digits(text: &str) -> Option<(usize, usize)> {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole.bytes().all(|c| c.is_ascii_digit())
        || !fraction.bytes().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    Some((whole.trim_start_matches('0').len(), fraction.len()))
}

/// The most bits of an address's netmask: 32 for IPv4, 128 for IPv6.
fn inet_max_bits(addr: std::net::IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// An `inet` value as PostgreSQL's input takes it: an IPv4 or IPv6 address, optionally
/// `/bits` (at most the address's own), surrounding spaces ignored.
pub(crate) fn parse_inet(text: &str) -> Option<(std::net::IpAddr, u8)> {
    let text = text.trim();
    let (addr, bits) = match text.split_once('/') {
        Some((addr, bits)) => (addr, Some(bits)),
        None => (text, None),
    };
    let addr: std::net::IpAddr = addr.parse().ok()?;
    let max = inet_max_bits(addr);
    let bits = match bits {
        Some(b) if !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()) => b.parse().ok()?,
        Some(_) => return None,
        None => max,
    };
    (bits <= max).then_some((addr, bits))
}

/// One binary `COPY` field of PostgreSQL's `inet`: its family (2 for IPv4, 3 for IPv6),
/// netmask bits, 0 (not `cidr`), the address's length and bytes.
pub(crate) fn inet_binary(addr: std::net::IpAddr, bits: u8, out: &mut Vec<u8>) {
    let (family, bytes): (u8, Vec<u8>) = match addr {
        std::net::IpAddr::V4(a) => (2, a.octets().to_vec()),
        std::net::IpAddr::V6(a) => (3, a.octets().to_vec()),
    };
    out.extend_from_slice(&(4 + bytes.len() as i32).to_be_bytes());
    out.extend_from_slice(&[family, bits, 0, bytes.len() as u8]);
    out.extend_from_slice(&bytes);
}

pub(crate) fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(text);
    let hex: Vec<u8> = inner.bytes().filter(|&c| c != b'-').collect();
    let hyphens = inner.len() - hex.len();
    if hex.len() != 32 || !(hyphens == 0 || hyphens == 4 && is_hyphenated(inner.as_bytes())) {
        return None;
    }
    let mut out = [0_u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

fn is_hyphenated(b: &[u8]) -> bool {
    b.len() == 36 && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
}

/// Appends text with `COPY`'s escapes (backslash, newline, carriage return, tab).
#[cfg(test)]
fn escape(bytes: &[u8], out: &mut Vec<u8>) {
    if !bytes
        .iter()
        .any(|b| matches!(b, b'\\' | b'\n' | b'\r' | b'\t'))
    {
        out.extend_from_slice(bytes);
        return;
    }
    for &b in bytes {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            other => out.push(other),
        }
    }
}

/// `write!` into a byte buffer.
#[cfg(test)]
struct Bytes<'a>(&'a mut Vec<u8>);

#[cfg(test)]
impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests;
