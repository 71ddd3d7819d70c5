//! MySQL's and MariaDB's values, as their binary protocol sends them, converted by the
//! target column's type into binary `COPY`: each conversion decided in the plan (or refused
//! there, naming both types) and each value checked, or refused with the reason.

use std::borrow::Cow;

use crate::copy::convert::{
    Kind, POSTGRES_EPOCH, decimal_digits, inet_binary, numeric_binary, parse_inet, parse_uuid,
};
use crate::copy::options::ZeroDates;

/// A character set of the source, as its text is decoded into UTF-8.
#[derive(Clone, Copy, Debug)]
pub(super) enum Charset {
    /// `utf8mb4`, `utf8mb3`: checked.
    Utf8,
    /// `ascii`: checked.
    Ascii,
    /// `utf32`: four bytes per character, big-endian.
    Utf32,
    /// Any other set that has a decoder (`latin1` as Windows-1252, which MySQL's is).
    Decoded(&'static encoding_rs::Encoding),
}

impl Charset {
    /// The decoder of a MySQL character set, if it has one.
    pub(super) fn of(name: &str) -> Option<Charset> {
        use encoding_rs as e;
        Some(match name {
            "utf8mb4" | "utf8mb3" | "utf8" => Charset::Utf8,
            "ascii" => Charset::Ascii,
            "utf32" => Charset::Utf32,
            other => Charset::Decoded(match other {
                "latin1" => e::WINDOWS_1252,
                "latin2" => e::ISO_8859_2,
                "latin5" => e::WINDOWS_1254,
                "latin7" => e::ISO_8859_13,
                "cp1250" => e::WINDOWS_1250,
                "cp1251" => e::WINDOWS_1251,
                "cp1256" => e::WINDOWS_1256,
                "cp1257" => e::WINDOWS_1257,
                "cp866" => e::IBM866,
                "greek" => e::ISO_8859_7,
                "hebrew" => e::ISO_8859_8,
                "koi8r" => e::KOI8_R,
                "koi8u" => e::KOI8_U,
                "macroman" => e::MACINTOSH,
                "tis620" => e::WINDOWS_874,
                "big5" => e::BIG5,
                "euckr" => e::EUC_KR,
                "gb2312" | "gbk" => e::GBK,
                "gb18030" => e::GB18030,
                "sjis" | "cp932" => e::SHIFT_JIS,
                "ujis" | "eucjpms" => e::EUC_JP,
                "utf16" | "ucs2" => e::UTF_16BE,
                "utf16le" => e::UTF_16LE,
                _ => return None,
            }),
        })
    }

    /// The text in UTF-8, or why it is not text of this set.
    fn decode<'a>(self, bytes: &'a [u8], name: &str) -> Result<Cow<'a, str>, String> {
        let invalid = |at: usize| {
            let shown: String = bytes[at..]
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect();
            format!(
                "bytes that are not {name} text at byte {} (x'{shown}')",
                at + 1
            )
        };
        match self {
            Charset::Utf8 => std::str::from_utf8(bytes)
                .map(Cow::Borrowed)
                .map_err(|e| invalid(e.valid_up_to())),
            Charset::Ascii => match bytes.iter().position(|b| !b.is_ascii()) {
                Some(at) => Err(invalid(at)),
                None => Ok(Cow::Borrowed(
                    std::str::from_utf8(bytes).map_err(|e| invalid(e.valid_up_to()))?,
                )),
            },
            Charset::Utf32 => {
                if !bytes.len().is_multiple_of(4) {
                    return Err(invalid(bytes.len() - bytes.len() % 4));
                }
                let mut out = String::with_capacity(bytes.len() / 4);
                for (i, c) in bytes.chunks(4).enumerate() {
                    let code = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
                    out.push(char::from_u32(code).ok_or_else(|| invalid(i * 4))?);
                }
                Ok(Cow::Owned(out))
            }
            Charset::Decoded(encoding) => {
                if bytes.is_ascii() && encoding.is_ascii_compatible() {
                    return Ok(Cow::Borrowed(
                        std::str::from_utf8(bytes).map_err(|e| invalid(e.valid_up_to()))?,
                    ));
                }
                encoding
                    .decode_without_bom_handling_and_without_replacement(bytes)
                    .ok_or_else(|| {
                        // Where: the longest prefix that decodes.
                        let mut good = 0;
                        let mut decoder = encoding.new_decoder_without_bom_handling();
                        let mut scratch = String::with_capacity(bytes.len() * 4 + 16);
                        let (result, read) =
                            decoder.decode_to_string_without_replacement(bytes, &mut scratch, true);
                        if let encoding_rs::DecoderResult::Malformed(bad, _) = result {
                            good = read.saturating_sub(usize::from(bad));
                        }
                        invalid(good)
                    })
            }
        }
    }
}

/// A column's type in the source.
#[derive(Clone, Debug)]
pub(super) enum SourceType {
    /// `tinyint` .. `bigint`: its width in bytes on the wire (1, 2, 4, 8), whether
    /// unsigned, and whether it is `tinyint(1)`.
    Int {
        width: u8,
        unsigned: bool,
        boolean: bool,
    },
    /// `bit(n)`.
    Bit(u32),
    Float,
    Double,
    Decimal,
    Year,
    Date,
    DateTime,
    Timestamp,
    Time,
    /// Character strings, with their set's name and decoder.
    Text(String, Charset),
    /// `enum(..)`, its labels.
    Enum(Vec<String>, String, Charset),
    /// `set(..)`, its members.
    Set(Vec<String>, String, Charset),
    /// `binary`, `varbinary`, the blobs.
    Binary,
    /// MySQL's `json` (MariaDB's is `longtext`).
    Json,
    /// `geometry`, `point`, ..: an SRID then WKB.
    Spatial,
}

impl SourceType {
    /// The type of a column from `information_schema.COLUMNS` (`DATA_TYPE`, `COLUMN_TYPE`,
    /// `CHARACTER_SET_NAME`), or why the copy cannot read it. `column_type` as the server
    /// writes it: an enum's or a set's labels keep their case.
    pub(super) fn of(
        data_type: &str,
        column_type: &str,
        charset: Option<&str>,
    ) -> Result<SourceType, String> {
        let data_type = data_type.to_ascii_lowercase();
        let lowered = column_type.to_ascii_lowercase();
        let unsigned = lowered.contains("unsigned");
        let int = |width| SourceType::Int {
            width,
            unsigned,
            boolean: false,
        };
        let text = || {
            let name = charset.unwrap_or("utf8mb4");
            Charset::of(name).map(|c| (name.to_string(), c)).ok_or_else(|| {
                format!(
                    "its character set {name} has no decoder in datamig: convert the column to utf8mb4 in the source (ALTER TABLE .. CONVERT TO CHARACTER SET utf8mb4), or leave the table out with --exclude"
                )
            })
        };
        Ok(match data_type.as_str() {
            "tinyint" => SourceType::Int {
                width: 1,
                unsigned,
                boolean: lowered.starts_with("tinyint(1)"),
            },
            "smallint" => int(2),
            "mediumint" | "int" | "integer" => int(4),
            "bigint" => int(8),
            "year" => SourceType::Year,
            "bit" => SourceType::Bit(
                lowered
                    .strip_prefix("bit(")
                    .and_then(|s| s.strip_suffix(')'))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1),
            ),
            "float" => SourceType::Float,
            "double" | "real" => SourceType::Double,
            "decimal" | "numeric" => SourceType::Decimal,
            "date" => SourceType::Date,
            "datetime" => SourceType::DateTime,
            "timestamp" => SourceType::Timestamp,
            "time" => SourceType::Time,
            // MariaDB's uuid, inet4 and inet6 (10.5 on) reach clients as their text.
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "uuid"
            | "inet4" | "inet6" => {
                let (name, c) = text()?;
                SourceType::Text(name, c)
            }
            "enum" | "set" => {
                let (name, c) = text()?;
                let labels = labels(column_type);
                if data_type == "enum" {
                    SourceType::Enum(labels, name, c)
                } else {
                    SourceType::Set(labels, name, c)
                }
            }
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
                SourceType::Binary
            }
            "json" => SourceType::Json,
            "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
            | "multipolygon" | "geometrycollection" | "geomcollection" => SourceType::Spatial,
            other => return Err(format!("its type {other} is not one the copy reads")),
        })
    }
}

/// The labels of `enum('a','b''c')` or `set(..)`, as `COLUMN_TYPE` writes them.
fn labels(column_type: &str) -> Vec<String> {
    let inner = column_type
        .split_once('(')
        .map_or("", |(_, rest)| rest.strip_suffix(')').unwrap_or(rest));
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut label = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    label.push('\'');
                }
                '\'' => break,
                '\\' => {
                    if let Some(next) = chars.next() {
                        label.push(next);
                    }
                }
                other => label.push(other),
            }
        }
        out.push(label);
    }
    out
}

/// What a column is written as in the target.
#[derive(Clone, Debug)]
pub(super) enum Target {
    /// One of the types the copy converts into (see `convert.rs`).
    Kind(Kind),
    /// A PostgreSQL enum: its labels.
    Enum(Vec<String>),
    /// A one-dimensional array: its element's type OID and what an element is written as.
    Array(u32, Box<Target>),
    /// `interval`.
    Interval,
    /// PostGIS `geometry`.
    Geometry,
}

/// How `datetime` values go into `timestamptz`: the source's time zone, as a fixed
/// offset from UTC in seconds (`None`: the zone has no fixed offset, so they do not).
pub(super) type DatetimeOffset = Option<i32>;

/// A column's conversion: the source type, the target, whether it takes `NULL`, what a
/// zero date becomes, and the source's fixed time zone for `datetime` into `timestamptz`.
#[derive(Clone, Debug)]
pub(super) struct Conversion {
    pub(super) source: SourceType,
    pub(super) target: Target,
    pub(super) not_null: bool,
    pub(super) zero_dates: ZeroDates,
    pub(super) offset: DatetimeOffset,
}

/// Names the source's time zone in the plan.
pub(super) fn zone_name(offset: i32) -> String {
    let sign = if offset < 0 { '-' } else { '+' };
    let abs = offset.unsigned_abs();
    format!("{sign}{:02}:{:02}", abs / 3600, abs % 3600 / 60)
}

/// What the plan says of a conversion, or why it is refused.
pub(super) fn describe(
    source: &SourceType,
    target: &Target,
    offset: DatetimeOffset,
) -> Result<String, String> {
    use SourceType as S;
    let refuse = || Err(String::new());
    let kind = match target {
        Target::Kind(kind) => *kind,
        Target::Enum(labels) => {
            return match source {
                S::Enum(ours, ..) => {
                    let missing: Vec<&String> =
                        ours.iter().filter(|l| !labels.contains(l)).collect();
                    if missing.is_empty() {
                        Ok("enum labels, by name".into())
                    } else {
                        Err(format!(
                            "the target enum has no label {}: add them to the enum (ALTER TYPE .. ADD VALUE)",
                            missing
                                .iter()
                                .map(|l| format!("'{l}'"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    }
                }
                S::Text(..) => Ok("text, each value one of the enum's labels".into()),
                _ => refuse(),
            };
        }
        Target::Array(_, element) => {
            return match (source, element.as_ref()) {
                (S::Set(..), Target::Kind(Kind::Text(_)) | Target::Enum(_)) => {
                    if let (S::Set(ours, ..), Target::Enum(labels)) = (source, element.as_ref())
                        && let Some(l) = ours.iter().find(|l| !labels.contains(l))
                    {
                        return Err(format!(
                            "the target enum has no label '{l}': add it to the enum (ALTER TYPE .. ADD VALUE)"
                        ));
                    }
                    Ok("set members, in the set's order, as an array".into())
                }
                _ => refuse(),
            };
        }
        Target::Interval => {
            return match source {
                S::Time => {
                    Ok("time values (-838:59:59 to 838:59:59) as an interval, exactly".into())
                }
                _ => refuse(),
            };
        }
        Target::Geometry => {
            return match source {
                S::Spatial => Ok("geometry, with its SRID, as EWKB".into()),
                _ => refuse(),
            };
        }
    };
    Ok(match (source, kind) {
        (S::Int { boolean: true, .. } | S::Bit(1), Kind::Boolean) => {
            "0 as false, 1 as true; any other value refused".into()
        }
        (S::Int { .. }, Kind::Boolean) => "0 as false, 1 as true; any other value refused".into(),
        (S::Int { width, unsigned, .. }, Kind::Int(lo, hi)) => {
            let (min, max) = int_range(*width, *unsigned);
            if min >= i128::from(lo) && max <= i128::from(hi) {
                "integers, exactly".into()
            } else {
                format!("integers, range-checked ({lo} to {hi})")
            }
        }
        (S::Int { .. } | S::Year, Kind::Numeric(_)) => "integers, exactly".into(),
        (S::Int { .. }, Kind::Real | Kind::Double) => {
            "integers the floating-point type holds exactly; others refused".into()
        }
        (S::Int { .. } | S::Year | S::Decimal, Kind::Text(_)) => "decimal text".into(),
        (S::Bit(_), Kind::Int(lo, hi)) => {
            format!("bits as an unsigned integer, range-checked ({lo} to {hi})")
        }
        (S::Bit(_), Kind::Bytea) => "bits as bytes, most significant first".into(),
        (S::Float, Kind::Real) => "float, bit-exact (-0.0 kept)".into(),
        (S::Float, Kind::Double) => "float widened to double, exactly".into(),
        (S::Double, Kind::Double) => "double, bit-exact (-0.0 kept)".into(),
        (S::Decimal, Kind::Numeric(Some((p, s)))) => format!(
            "decimal, exactly: at most {} digits before the point and {s} after (never rounded)",
            p - s
        ),
        (S::Decimal, Kind::Numeric(None)) => "decimal, exactly".into(),
        (S::Decimal, Kind::Int(lo, hi)) => {
            format!("decimals without a fraction, range-checked ({lo} to {hi})")
        }
        (S::Year, Kind::Int(..)) => "the year as an integer (0000 as a zero date)".into(),
        (S::Date, Kind::Date) => "dates; zero dates and zero parts as --zero-dates says".into(),
        (S::Date, Kind::Timestamp) => "dates at midnight; zero dates as --zero-dates says".into(),
        (S::DateTime, Kind::Timestamp) => {
            "datetime as the local time it is, never shifted; zero dates as --zero-dates says"
                .into()
        }
        (S::DateTime, Kind::Timestamptz) => match offset {
            Some(offset) => format!(
                "datetime as a local time in the source's time zone ({}); zero dates as --zero-dates says",
                zone_name(offset)
            ),
            None => {
                return Err(
                    "datetime is a local time and the source's time zone has no fixed offset to read it in: make the target column timestamp (without time zone), or set the source server's time_zone to an offset such as '+00:00'"
                        .into(),
                );
            }
        },
        (S::DateTime | S::Timestamp, Kind::Date) => {
            "the date, where the time of day is midnight; others refused".into()
        }
        (S::Timestamp, Kind::Timestamptz) => {
            "timestamp as UTC (read in the session time zone +00:00); zero dates as --zero-dates says"
                .into()
        }
        (S::Timestamp, Kind::Timestamp) => {
            "timestamp as UTC time (read in the session time zone +00:00); zero dates as --zero-dates says"
                .into()
        }
        (S::Time, Kind::Time) => {
            "times of day (00:00:00 to 23:59:59.999999); negative or longer times refused".into()
        }
        (S::Text(cs, _) | S::Enum(_, cs, _) | S::Set(_, cs, _), Kind::Text(max)) => format!(
            "{cs} text into UTF-8{}; bytes not {cs} and \\0 refused",
            max.map_or(String::new(), |n| format!(", at most {n} characters"))
        ),
        (S::Text(cs, _), Kind::Json | Kind::Jsonb) => {
            format!("{cs} text checked as JSON")
        }
        (S::Json, Kind::Json | Kind::Jsonb) => "JSON, checked".into(),
        (S::Json, Kind::Text(None)) => "JSON text".into(),
        (S::Text(cs, _), Kind::Uuid) => format!("{cs} text uuids"),
        (S::Text(cs, _), Kind::Inet) => format!("{cs} text IPv4 and IPv6 addresses, checked"),
        (S::Binary, Kind::Uuid) => "16-byte binary uuids".into(),
        (S::Binary, Kind::Bytea) => "bytes, exactly".into(),
        (S::Binary, Kind::Text(_)) => "bytes that must be UTF-8 text".into(),
        (S::Text(cs, _), Kind::Bytea) => format!("{cs} text as its UTF-8 bytes"),
        _ => return refuse(),
    })
}

/// The range of an integer of the source.
fn int_range(width: u8, unsigned: bool) -> (i128, i128) {
    let bits = u32::from(width) * 8;
    if unsigned {
        (0, (1_i128 << bits) - 1)
    } else {
        (-(1_i128 << (bits - 1)), (1_i128 << (bits - 1)) - 1)
    }
}

/// A date and time as the binary protocol sends them (zero parts kept).
#[derive(Clone, Copy, Debug, Default)]
struct Wire {
    year: u16,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    micros: u32,
}

impl Wire {
    /// `[length, year (2), month, day, hour, minute, second, microseconds (4)]`, the
    /// length 0, 4, 7 or 11.
    fn read(raw: &[u8]) -> Option<Wire> {
        let (len, rest) = raw.split_first()?;
        let len = usize::from(*len);
        if rest.len() < len || ![0, 4, 7, 11].contains(&len) {
            return None;
        }
        let mut w = Wire::default();
        if len >= 4 {
            w.year = u16::from_le_bytes([rest[0], rest[1]]);
            w.month = rest[2];
            w.day = rest[3];
        }
        if len >= 7 {
            w.hour = rest[4];
            w.minute = rest[5];
            w.second = rest[6];
        }
        if len == 11 {
            w.micros = u32::from_le_bytes([rest[7], rest[8], rest[9], rest[10]]);
        }
        Some(w)
    }

    fn show(&self, time: bool) -> String {
        let date = format!("{:04}-{:02}-{:02}", self.year, self.month, self.day);
        if !time {
            return date;
        }
        let mut out = format!(
            "{date} {:02}:{:02}:{:02}",
            self.hour, self.minute, self.second
        );
        if self.micros > 0 {
            out.push_str(&format!(".{:06}", self.micros));
        }
        out
    }

    /// Whether it has a zero year, month or day.
    fn zero(&self) -> bool {
        self.year == 0 || self.month == 0 || self.day == 0
    }

    fn at(&self) -> Option<chrono::NaiveDateTime> {
        chrono::NaiveDate::from_ymd_opt(
            i32::from(self.year),
            u32::from(self.month),
            u32::from(self.day),
        )?
        .and_hms_micro_opt(
            u32::from(self.hour),
            u32::from(self.minute),
            u32::from(self.second),
            self.micros,
        )
    }
}

/// A value that does not convert: the value as a message shows it, and why.
pub(super) type Refused = (String, String);

/// Appends a binary `COPY` field.
fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn timestamp_micros(at: chrono::NaiveDateTime) -> i64 {
    let days = (at.date() - POSTGRES_EPOCH).num_days();
    days * 86_400_000_000 + crate::copy::convert::micros_of_day(at.time())
}

impl Conversion {
    /// Appends the value (`None`: `NULL`; else its bytes as the binary protocol sends
    /// them) as one field of binary `COPY` to `out`, or says why it does not convert
    /// (`out` is then unchanged).
    pub(super) fn write(&self, raw: Option<&[u8]>, out: &mut Vec<u8>) -> Result<(), Refused> {
        let start = out.len();
        let result = self.write_inner(raw, out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn null(&self, shown: impl FnOnce() -> String, out: &mut Vec<u8>) -> Result<(), Refused> {
        if self.not_null {
            return Err((shown(), "NULL does not go into a NOT NULL column".into()));
        }
        out.extend_from_slice(&(-1_i32).to_be_bytes());
        Ok(())
    }

    fn write_inner(&self, raw: Option<&[u8]>, out: &mut Vec<u8>) -> Result<(), Refused> {
        use SourceType as S;
        let Some(raw) = raw else {
            return self.null(|| "NULL".into(), out);
        };
        let malformed = || {
            (
                format!("{} bytes", raw.len()),
                "a value the server sent malformed".to_string(),
            )
        };
        match &self.source {
            S::Int {
                width, unsigned, ..
            } => {
                let n: i128 = match (width, unsigned) {
                    (1, false) => i128::from(*raw.first().ok_or_else(malformed)? as i8),
                    (1, true) => i128::from(*raw.first().ok_or_else(malformed)?),
                    (2, _) => {
                        let b: [u8; 2] = raw
                            .get(..2)
                            .and_then(|b| b.try_into().ok())
                            .ok_or_else(malformed)?;
                        if *unsigned {
                            i128::from(u16::from_le_bytes(b))
                        } else {
                            i128::from(i16::from_le_bytes(b))
                        }
                    }
                    (4, _) => {
                        let b: [u8; 4] = raw
                            .get(..4)
                            .and_then(|b| b.try_into().ok())
                            .ok_or_else(malformed)?;
                        if *unsigned {
                            i128::from(u32::from_le_bytes(b))
                        } else {
                            i128::from(i32::from_le_bytes(b))
                        }
                    }
                    _ => {
                        let b: [u8; 8] = raw
                            .get(..8)
                            .and_then(|b| b.try_into().ok())
                            .ok_or_else(malformed)?;
                        if *unsigned {
                            i128::from(u64::from_le_bytes(b))
                        } else {
                            i128::from(i64::from_le_bytes(b))
                        }
                    }
                };
                let name = if *unsigned {
                    "unsigned integer"
                } else {
                    "integer"
                };
                self.write_integer(n, name, out)
            }
            S::Year => {
                let b: [u8; 2] = raw
                    .get(..2)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(malformed)?;
                let year = u16::from_le_bytes(b);
                if year == 0 {
                    return self.zero_date(&format!("year {year:04}"), out);
                }
                self.write_integer(i128::from(year), "year", out)
            }
            S::Bit(_) => {
                let shown = || {
                    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                    format!("bit x'{hex}'")
                };
                match &self.target {
                    Target::Kind(Kind::Bytea) => {
                        field(out, raw);
                        Ok(())
                    }
                    _ => {
                        let n = raw.iter().fold(0_i128, |n, b| (n << 8) | i128::from(*b));
                        self.write_integer(n, "bit", out)
                            .map_err(|(_, why)| (shown(), why))
                    }
                }
            }
            S::Float => {
                let b: [u8; 4] = raw
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(malformed)?;
                let f = f32::from_le_bytes(b);
                match &self.target {
                    Target::Kind(Kind::Real) => field(out, &f.to_be_bytes()),
                    _ => field(out, &f64::from(f).to_be_bytes()),
                }
                Ok(())
            }
            S::Double => {
                let b: [u8; 8] = raw
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(malformed)?;
                field(out, &f64::from_le_bytes(b).to_be_bytes());
                Ok(())
            }
            S::Decimal => {
                let text = std::str::from_utf8(raw).map_err(|_| malformed())?;
                let shown = || format!("decimal {text}");
                match &self.target {
                    Target::Kind(Kind::Numeric(limits)) => {
                        let (whole, fraction) = decimal_digits(text)
                            .ok_or_else(|| (shown(), "not a decimal number".into()))?;
                        if let Some((p, s)) = limits {
                            let (before, after) = (whole as u32, fraction as u32);
                            if before > p - s {
                                return Err((
                                    shown(),
                                    format!(
                                        "{before} digits before the point, more than numeric({p},{s}) holds ({})",
                                        p - s
                                    ),
                                ));
                            }
                            if after > *s {
                                return Err((
                                    shown(),
                                    format!(
                                        "{after} digits after the point, more than numeric({p},{s}) keeps ({s}): it would be rounded"
                                    ),
                                ));
                            }
                        }
                        let at = out.len();
                        out.extend_from_slice(&0_i32.to_be_bytes());
                        numeric_binary(text, out);
                        let len = (out.len() - at - 4) as i32;
                        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
                        Ok(())
                    }
                    Target::Kind(Kind::Int(..)) => {
                        let (int, fraction) = text.split_once('.').unwrap_or((text, ""));
                        if fraction.bytes().any(|b| b != b'0') {
                            return Err((
                                shown(),
                                "a fraction, which an integer column would lose".into(),
                            ));
                        }
                        let n: i128 = int
                            .parse()
                            .map_err(|_| (shown(), "not an integer".to_string()))?;
                        self.write_integer(n, "decimal", out)
                    }
                    _ => {
                        field(out, text.as_bytes());
                        Ok(())
                    }
                }
            }
            S::Date | S::DateTime | S::Timestamp => {
                let w = Wire::read(raw).ok_or_else(malformed)?;
                let time = !matches!(self.source, S::Date);
                let shown = || {
                    let name = match self.source {
                        S::Date => "date",
                        S::DateTime => "datetime",
                        _ => "timestamp",
                    };
                    format!("{name} '{}'", w.show(time))
                };
                if w.zero() {
                    return self.zero_date(&shown(), out);
                }
                let at = w
                    .at()
                    .ok_or_else(|| (shown(), "not a date of the calendar".to_string()))?;
                self.write_moment(at, out).map_err(|why| (shown(), why))
            }
            S::Time => self.write_time(raw, out),
            S::Text(cs, charset) | S::Enum(_, cs, charset) | S::Set(_, cs, charset) => {
                let text = charset
                    .decode(raw, cs)
                    .map_err(|why| (bytes_shown(raw), why))?;
                self.write_text(&text, out)
            }
            S::Json => {
                let text = Charset::Utf8
                    .decode(raw, "utf8mb4")
                    .map_err(|why| (bytes_shown(raw), why))?;
                self.write_text(&text, out)
            }
            S::Binary => match &self.target {
                Target::Kind(Kind::Uuid) => {
                    if raw.len() != 16 {
                        return Err((bytes_shown(raw), "a uuid is 16 bytes".into()));
                    }
                    field(out, raw);
                    Ok(())
                }
                Target::Kind(Kind::Text(_)) => {
                    let text = Charset::Utf8
                        .decode(raw, "UTF-8")
                        .map_err(|why| (bytes_shown(raw), why))?;
                    self.write_text(&text, out)
                }
                _ => {
                    field(out, raw);
                    Ok(())
                }
            },
            S::Spatial => {
                let ewkb = ewkb(raw).ok_or_else(|| {
                    (
                        bytes_shown(raw),
                        "not a geometry (an SRID, then WKB)".to_string(),
                    )
                })?;
                field(out, &ewkb);
                Ok(())
            }
        }
    }

    /// An integer (of any source type) into the target's type.
    fn write_integer(&self, n: i128, name: &str, out: &mut Vec<u8>) -> Result<(), Refused> {
        let shown = || format!("{name} {n}");
        match &self.target {
            Target::Kind(Kind::Boolean) => match n {
                0 | 1 => {
                    field(out, &[n as u8]);
                    Ok(())
                }
                _ => Err((shown(), "a boolean is 0 or 1".into())),
            },
            Target::Kind(Kind::Int(lo, hi)) => {
                if n < i128::from(*lo) || n > i128::from(*hi) {
                    return Err((shown(), format!("out of range ({lo} to {hi})")));
                }
                if *lo >= i64::from(i16::MIN) {
                    field(out, &(n as i16).to_be_bytes());
                } else if *lo >= i64::from(i32::MIN) {
                    field(out, &(n as i32).to_be_bytes());
                } else {
                    field(out, &(n as i64).to_be_bytes());
                }
                Ok(())
            }
            Target::Kind(Kind::Numeric(limits)) => {
                let text = n.to_string();
                if let Some((p, s)) = limits {
                    let digits = text.trim_start_matches('-').len() as u32;
                    if n != 0 && digits > p - s {
                        return Err((
                            shown(),
                            format!(
                                "{digits} digits, more than numeric({p},{s}) holds before the point ({})",
                                p - s
                            ),
                        ));
                    }
                }
                let at = out.len();
                out.extend_from_slice(&0_i32.to_be_bytes());
                numeric_binary(&text, out);
                let len = (out.len() - at - 4) as i32;
                out[at..at + 4].copy_from_slice(&len.to_be_bytes());
                Ok(())
            }
            Target::Kind(Kind::Real) => {
                if n.unsigned_abs() > 1 << 24 {
                    return Err((shown(), "an integer real cannot hold exactly".into()));
                }
                field(out, &(n as f32).to_be_bytes());
                Ok(())
            }
            Target::Kind(Kind::Double) => {
                if n.unsigned_abs() > 1 << 53 {
                    return Err((
                        shown(),
                        "an integer double precision cannot hold exactly".into(),
                    ));
                }
                field(out, &(n as f64).to_be_bytes());
                Ok(())
            }
            _ => {
                field(out, n.to_string().as_bytes());
                Ok(())
            }
        }
    }

    /// A zero date (or one with a zero part), as `--zero-dates` says.
    fn zero_date(&self, shown: &str, out: &mut Vec<u8>) -> Result<(), Refused> {
        match &self.zero_dates {
            ZeroDates::Refuse => Err((
                shown.to_string(),
                "a zero date (or a date with a zero part), which PostgreSQL has no value for: choose what it becomes with --zero-dates null or --zero-dates 1970-01-01, or fix the row in the source".into(),
            )),
            ZeroDates::Null => self.null(|| shown.to_string(), out).map_err(|(s, _)| {
                (s, "a zero date, which --zero-dates null makes NULL, in a NOT NULL column: choose a value with --zero-dates 1970-01-01".into())
            }),
            ZeroDates::Value(value) => {
                let at = chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S%.f")
                    .or_else(|_| {
                        chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d")
                            .map(|d| d.and_time(chrono::NaiveTime::MIN))
                    })
                    .map_err(|_| (shown.to_string(), format!("--zero-dates {value} is not a date")))?;
                if matches!(self.source, SourceType::Year) {
                    return self.write_integer(i128::from(chrono::Datelike::year(&at)), "year", out);
                }
                self.write_moment(at, out).map_err(|why| {
                    (shown.to_string(), format!("its replacement {value} (--zero-dates): {why}"))
                })
            }
        }
    }

    /// A date and time into a date, timestamp or timestamptz column (or text).
    fn write_moment(&self, at: chrono::NaiveDateTime, out: &mut Vec<u8>) -> Result<(), String> {
        match &self.target {
            Target::Kind(Kind::Date) => {
                if at.time() != chrono::NaiveTime::MIN {
                    return Err("a time of day, which a date column would lose".into());
                }
                let days = (at.date() - POSTGRES_EPOCH).num_days() as i32;
                field(out, &days.to_be_bytes());
            }
            Target::Kind(Kind::Timestamp) => field(out, &timestamp_micros(at).to_be_bytes()),
            Target::Kind(Kind::Timestamptz) => {
                let offset = match self.source {
                    SourceType::DateTime | SourceType::Date => self.offset.unwrap_or(0),
                    _ => 0,
                };
                let utc = at - chrono::TimeDelta::seconds(i64::from(offset));
                field(out, &timestamp_micros(utc).to_be_bytes());
            }
            _ => {
                let text = if matches!(self.source, SourceType::Date) {
                    at.format("%Y-%m-%d").to_string()
                } else {
                    at.format("%Y-%m-%d %H:%M:%S%.f").to_string()
                };
                field(out, text.as_bytes());
            }
        }
        Ok(())
    }

    /// `[length, negative, days (4), hour, minute, second, microseconds (4)]`.
    fn write_time(&self, raw: &[u8], out: &mut Vec<u8>) -> Result<(), Refused> {
        let (len, rest) = raw
            .split_first()
            .ok_or_else(|| (String::new(), "an empty time".to_string()))?;
        let len = usize::from(*len);
        let (mut negative, mut days, mut h, mut m, mut s, mut us) =
            (false, 0_u32, 0_u8, 0_u8, 0_u8, 0_u32);
        if len >= 8 && rest.len() >= 8 {
            negative = rest[0] == 1;
            days = u32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]);
            h = rest[5];
            m = rest[6];
            s = rest[7];
        }
        if len == 12 && rest.len() >= 12 {
            us = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]);
        }
        let hours = days * 24 + u32::from(h);
        let micros = ((i64::from(hours) * 60 + i64::from(m)) * 60 + i64::from(s)) * 1_000_000
            + i64::from(us);
        let micros = if negative { -micros } else { micros };
        let shown = || {
            let mut t = format!(
                "time '{}{hours:02}:{m:02}:{s:02}",
                if negative { "-" } else { "" }
            );
            if us > 0 {
                t.push_str(&format!(".{us:06}"));
            }
            t.push('\'');
            t
        };
        match &self.target {
            Target::Interval => {
                out.extend_from_slice(&16_i32.to_be_bytes());
                out.extend_from_slice(&micros.to_be_bytes());
                out.extend_from_slice(&0_i32.to_be_bytes());
                out.extend_from_slice(&0_i32.to_be_bytes());
                Ok(())
            }
            _ => {
                if !(0..86_400_000_000).contains(&micros) {
                    return Err((shown(), "not a time of day (00:00:00 to 23:59:59.999999): make the target column interval".into()));
                }
                field(out, &micros.to_be_bytes());
                Ok(())
            }
        }
    }

    /// Text (decoded into UTF-8) into the target's type.
    fn write_text(&self, text: &str, out: &mut Vec<u8>) -> Result<(), Refused> {
        let shown = || {
            let cut: String = text.chars().take(60).collect();
            let more = if text.chars().nth(60).is_some() {
                "..."
            } else {
                ""
            };
            format!(
                "text '{}{more}'",
                cut.replace('\0', "\\0").replace('\'', "''")
            )
        };
        if let Some(at) = text.find('\0') {
            return Err((
                shown(),
                format!(
                    "a \\0 (NUL) at character {}, which PostgreSQL text cannot hold: remove it in the source",
                    text[..at].chars().count() + 1
                ),
            ));
        }
        match &self.target {
            Target::Kind(Kind::Text(max)) => {
                if let Some(max) = max
                    && text.len() > *max
                    && text.chars().count() > *max
                {
                    return Err((shown(), format!("longer than {max} characters")));
                }
                field(out, text.as_bytes());
            }
            Target::Kind(kind @ (Kind::Json | Kind::Jsonb)) => {
                if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
                    return Err((shown(), "not JSON".into()));
                }
                if *kind == Kind::Jsonb {
                    if text.contains("\\u0000") {
                        return Err((
                            shown(),
                            "JSON holding \\u0000, which jsonb cannot: make the column json".into(),
                        ));
                    }
                    out.extend_from_slice(&(text.len() as i32 + 1).to_be_bytes());
                    out.push(1);
                    out.extend_from_slice(text.as_bytes());
                } else {
                    field(out, text.as_bytes());
                }
            }
            Target::Kind(Kind::Uuid) => {
                let uuid = parse_uuid(text).ok_or_else(|| (shown(), "not a uuid".to_string()))?;
                field(out, &uuid);
            }
            Target::Kind(Kind::Inet) => {
                let (addr, bits) = parse_inet(text)
                    .ok_or_else(|| (shown(), "not an IPv4 or IPv6 address".to_string()))?;
                inet_binary(addr, bits, out);
            }
            Target::Enum(labels) => {
                if !labels.iter().any(|l| l == text) {
                    return Err((shown(), "not a label of the target's enum".into()));
                }
                field(out, text.as_bytes());
            }
            Target::Array(oid, element) => {
                let members: Vec<&str> = if text.is_empty() {
                    Vec::new()
                } else {
                    text.split(',').collect()
                };
                let at = out.len();
                out.extend_from_slice(&0_i32.to_be_bytes());
                if members.is_empty() {
                    out.extend_from_slice(&0_i32.to_be_bytes());
                    out.extend_from_slice(&0_i32.to_be_bytes());
                    out.extend_from_slice(&oid.to_be_bytes());
                } else {
                    out.extend_from_slice(&1_i32.to_be_bytes());
                    out.extend_from_slice(&0_i32.to_be_bytes());
                    out.extend_from_slice(&oid.to_be_bytes());
                    out.extend_from_slice(&(members.len() as i32).to_be_bytes());
                    out.extend_from_slice(&1_i32.to_be_bytes());
                    for m in members {
                        match element.as_ref() {
                            Target::Enum(labels) if !labels.iter().any(|l| l == m) => {
                                return Err((
                                    shown(),
                                    format!("'{m}' is not a label of the target's enum"),
                                ));
                            }
                            Target::Kind(Kind::Text(Some(max))) if m.chars().count() > *max => {
                                return Err((
                                    shown(),
                                    format!("'{m}' is longer than {max} characters"),
                                ));
                            }
                            _ => field(out, m.as_bytes()),
                        }
                    }
                }
                let len = (out.len() - at - 4) as i32;
                out[at..at + 4].copy_from_slice(&len.to_be_bytes());
            }
            _ => field(out, text.as_bytes()),
        }
        Ok(())
    }
}

/// Bytes as a message shows them.
fn bytes_shown(raw: &[u8]) -> String {
    let hex: String = raw.iter().take(30).map(|b| format!("{b:02x}")).collect();
    let more = if raw.len() > 30 { "..." } else { "" };
    format!("bytes x'{hex}{more}' ({} bytes)", raw.len())
}

/// MySQL's geometry (a little-endian SRID, then WKB) as PostGIS's EWKB (the SRID flag set
/// in the type, the SRID after it).
fn ewkb(raw: &[u8]) -> Option<Vec<u8>> {
    let srid = u32::from_le_bytes(raw.get(..4)?.try_into().ok()?);
    let wkb = &raw[4..];
    let order = *wkb.first()?;
    let kind: [u8; 4] = wkb.get(1..5)?.try_into().ok()?;
    let mut out = Vec::with_capacity(raw.len() + 4);
    out.push(order);
    let (kind, srid) = if order == 1 {
        (
            (u32::from_le_bytes(kind) | 0x2000_0000).to_le_bytes(),
            srid.to_le_bytes(),
        )
    } else {
        (
            (u32::from_be_bytes(kind) | 0x2000_0000).to_be_bytes(),
            srid.to_be_bytes(),
        )
    };
    out.extend_from_slice(&kind);
    out.extend_from_slice(&srid);
    out.extend_from_slice(&wkb[5..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_labels_are_read_with_their_quotes() {
        assert_eq!(labels("enum('a','it''s','b,c')"), vec!["a", "it's", "b,c"]);
        assert_eq!(labels("set('x')"), vec!["x"]);
    }

    #[test]
    fn latin1_is_windows_1252_and_invalid_utf8_is_named() {
        let latin1 = Charset::of("latin1").unwrap();
        assert_eq!(latin1.decode(b"caf\xe9 \x80", "latin1").unwrap(), "café €");
        let err = Charset::Utf8.decode(b"ab\xff", "utf8mb4").unwrap_err();
        assert!(err.contains("at byte 3 (x'ff')"), "{err}");
    }
}
