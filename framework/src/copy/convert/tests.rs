//! The unit tests of the conversions: each kind of value, its edges, and every refusal.

use super::*;

fn convert(sql_type: &str, value: Value<'_>) -> Result<String, String> {
    convert_with(sql_type, value, None, false)
}

fn convert_with(
    sql_type: &str,
    value: Value<'_>,
    unix: Option<UnixTime>,
    not_null: bool,
) -> Result<String, String> {
    let kind = Kind::of(sql_type).unwrap_or_else(|| panic!("{sql_type} has a kind"));
    let mut out = Vec::new();
    Conversion {
        kind,
        not_null,
        unix,
    }
    .write(value, &mut out)?;
    Ok(String::from_utf8(out).expect("utf-8"))
}

fn binary(sql_type: &str, value: Value<'_>) -> Vec<u8> {
    let kind = Kind::of(sql_type).unwrap_or_else(|| panic!("{sql_type} has a kind"));
    let mut out = Vec::new();
    Conversion {
        kind,
        not_null: false,
        unix: None,
    }
    .write_binary(value, &mut out)
    .expect("converts");
    let (len, body) = out.split_at(4);
    let len = i32::from_be_bytes(len.try_into().expect("4 bytes"));
    if len >= 0 {
        assert_eq!(len as usize, body.len(), "the field's length");
    }
    body.to_vec()
}

/// `numeric`'s binary form as (digit count, weight, sign, scale, digits).
fn numeric(text: &str) -> (i16, i16, u16, i16, Vec<i16>) {
    let b = binary("numeric", Value::Text(text));
    let word = |i: usize| i16::from_be_bytes([b[2 * i], b[2 * i + 1]]);
    let n = word(0);
    let digits = (0..n as usize).map(|i| word(4 + i)).collect();
    (n, word(1), word(2) as u16, word(3), digits)
}

#[test]
fn numbers_are_written_in_binary_as_postgresql_reads_them() {
    assert_eq!(numeric("12345.67"), (3, 1, 0, 2, vec![1, 2345, 6700]));
    assert_eq!(numeric("-0.00001"), (1, -2, 0x4000, 5, vec![1000]));
    assert_eq!(numeric("0.5"), (1, -1, 0, 1, vec![5000]));
    assert_eq!(numeric("+007"), (1, 0, 0, 0, vec![7]));
    assert_eq!(numeric("10000"), (1, 1, 0, 0, vec![1]));
    assert_eq!(numeric("-0.00"), (0, 0, 0, 2, vec![]));
    assert_eq!(numeric("3."), (1, 0, 0, 0, vec![3]));
    assert_eq!(binary("smallint", Value::Integer(-2)), vec![0xff, 0xfe]);
    assert_eq!(binary("integer", Value::Integer(258)), vec![0, 0, 1, 2]);
    assert_eq!(binary("bigint", Value::Integer(1)), 1_i64.to_be_bytes());
    assert_eq!(binary("boolean", Value::Integer(1)), vec![1]);
    assert_eq!(
        binary("double precision", Value::Real(0.5)),
        0.5_f64.to_be_bytes()
    );
    assert_eq!(binary("real", Value::Integer(3)), 3.0_f32.to_be_bytes());
}

#[test]
fn times_text_and_nulls_are_written_in_binary() {
    // Days and microseconds since 2000-01-01, the offset taken off.
    assert_eq!(
        binary("date", Value::Text("2000-01-02")),
        1_i32.to_be_bytes()
    );
    assert_eq!(
        binary("date", Value::Text("1999-12-31")),
        (-1_i32).to_be_bytes()
    );
    assert_eq!(
        binary(
            "timestamp with time zone",
            Value::Text("2000-01-01T01:00:00.5+01:00")
        ),
        500_000_i64.to_be_bytes()
    );
    assert_eq!(
        binary("time without time zone", Value::Text("00:00:01.25")),
        1_250_000_i64.to_be_bytes()
    );
    assert_eq!(binary("jsonb", Value::Text("{}")), b"\x01{}");
    assert_eq!(binary("json", Value::Text("{}")), b"{}");
    assert_eq!(
        binary("character varying(5)", Value::Text("tab\t")),
        b"tab\t"
    );
    assert_eq!(
        binary("uuid", Value::Text("00112233-4455-6677-8899-aabbccddeeff")),
        (0..16).map(|i| i * 0x11).collect::<Vec<u8>>()
    );
    assert_eq!(binary("bytea", Value::Blob(&[0, 255])), vec![0, 255]);
    let mut null = Vec::new();
    Conversion {
        kind: Kind::Text(None),
        not_null: false,
        unix: None,
    }
    .write_binary(Value::Null, &mut null)
    .expect("converts");
    assert_eq!(null, (-1_i32).to_be_bytes());
}

#[test]
fn integers_are_range_checked() {
    assert_eq!(convert("smallint", Value::Integer(32767)).unwrap(), "32767");
    assert!(
        convert("smallint", Value::Integer(32768))
            .unwrap_err()
            .contains("out of range")
    );
    assert_eq!(
        convert("integer", Value::Integer(-2147483648)).unwrap(),
        "-2147483648"
    );
    assert!(convert("integer", Value::Integer(2147483648)).is_err());
    assert_eq!(
        convert("bigint", Value::Integer(i64::MAX)).unwrap(),
        i64::MAX.to_string()
    );
    assert_eq!(convert("bigint", Value::Text("42")).unwrap(), "42");
    assert_eq!(convert("bigint", Value::Real(3.0)).unwrap(), "3");
    assert!(
        convert("bigint", Value::Real(3.5))
            .unwrap_err()
            .contains("not an integer")
    );
    assert!(convert("bigint", Value::Text("4 2")).is_err());
    assert!(convert("integer", Value::Blob(b"\x01")).is_err());
}

#[test]
fn booleans_are_zero_or_one() {
    assert_eq!(convert("boolean", Value::Integer(0)).unwrap(), "f");
    assert_eq!(convert("boolean", Value::Integer(1)).unwrap(), "t");
    assert_eq!(convert("boolean", Value::Text("TRUE")).unwrap(), "t");
    assert_eq!(convert("boolean", Value::Text("f")).unwrap(), "f");
    assert!(
        convert("boolean", Value::Integer(2))
            .unwrap_err()
            .contains("0 or 1")
    );
    assert!(convert("boolean", Value::Text("yes please")).is_err());
    assert!(convert("boolean", Value::Real(1.0)).is_err());
}

#[test]
fn text_is_escaped_and_length_checked() {
    assert_eq!(
        convert("text", Value::Text("a\tb\nc\\d\re")).unwrap(),
        "a\\tb\\nc\\\\d\\re"
    );
    assert_eq!(
        convert("character varying(5)", Value::Text("héllo")).unwrap(),
        "héllo"
    );
    assert!(
        convert("character varying(4)", Value::Text("héllo"))
            .unwrap_err()
            .contains("5 characters, longer than 4")
    );
    assert!(convert("character(2)", Value::Text("abc")).is_err());
    assert_eq!(convert("text", Value::Integer(7)).unwrap(), "7");
    assert_eq!(convert("text", Value::Real(1.5)).unwrap(), "1.5");
    assert_eq!(convert("text", Value::Blob("ü".as_bytes())).unwrap(), "ü");
    assert!(
        convert("text", Value::Blob(b"\xff"))
            .unwrap_err()
            .contains("UTF-8")
    );
    assert!(
        convert("text", Value::Text("a\0b"))
            .unwrap_err()
            .contains("NUL")
    );
}

#[test]
fn uuids_from_text_and_blobs() {
    let canonical = "0191e4c5-7a8b-7c3d-9e0f-a1b2c3d4e5f6";
    assert_eq!(convert("uuid", Value::Text(canonical)).unwrap(), canonical);
    assert_eq!(
        convert("uuid", Value::Text("{0191E4C57A8B7C3D9E0FA1B2C3D4E5F6}")).unwrap(),
        canonical
    );
    let bytes = [
        0x01, 0x91, 0xe4, 0xc5, 0x7a, 0x8b, 0x7c, 0x3d, 0x9e, 0x0f, 0xa1, 0xb2, 0xc3, 0xd4, 0xe5,
        0xf6,
    ];
    assert_eq!(convert("uuid", Value::Blob(&bytes)).unwrap(), canonical);
    assert!(
        convert("uuid", Value::Text("0191e4c5-7a8b"))
            .unwrap_err()
            .contains("uuid")
    );
    assert!(convert("uuid", Value::Text("0191e4c57-a8b-7c3d-9e0f-a1b2c3d4e5f6")).is_err());
    assert!(convert("uuid", Value::Blob(&bytes[..15])).is_err());
    assert!(convert("uuid", Value::Integer(1)).is_err());
}

#[test]
fn addresses_from_text() {
    assert_eq!(
        convert("inet", Value::Text("10.0.0.1")).unwrap(),
        "10.0.0.1"
    );
    assert_eq!(
        convert("inet", Value::Text(" 10.0.0.0/8 ")).unwrap(),
        "10.0.0.0/8"
    );
    assert_eq!(convert("inet", Value::Text("::1")).unwrap(), "::1");
    assert_eq!(
        convert("inet", Value::Text("2001:DB8::FF00:42:8329/64")).unwrap(),
        "2001:db8::ff00:42:8329/64"
    );
    assert_eq!(
        binary("inet", Value::Text("192.168.1.1")),
        [2, 32, 0, 4, 192, 168, 1, 1]
    );
    let v6 = binary("inet", Value::Text("::1/120"));
    assert_eq!(&v6[..4], [3, 120, 0, 16]);
    assert_eq!(v6[4..], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    for bad in [
        "10.0.0.256",
        "10.0.0.1/33",
        "::1/129",
        "10.0.0.1/",
        "10.0.0.1/x",
        "host",
    ] {
        assert!(
            convert("inet", Value::Text(bad))
                .unwrap_err()
                .contains("not an IPv4 or IPv6 address"),
            "{bad}"
        );
    }
    assert!(convert("inet", Value::Integer(167772161)).is_err());
}

#[test]
fn json_is_checked() {
    assert_eq!(
        convert("jsonb", Value::Text("{\"a\": [1, 2]}")).unwrap(),
        "{\"a\": [1, 2]}"
    );
    assert_eq!(
        convert("json", Value::Text("\"x\\ny\"")).unwrap(),
        "\"x\\\\ny\""
    );
    assert_eq!(convert("json", Value::Integer(3)).unwrap(), "3");
    assert!(
        convert("jsonb", Value::Text("{a: 1}"))
            .unwrap_err()
            .contains("not JSON")
    );
    assert!(
        convert("jsonb", Value::Text("\"\\u0000\""))
            .unwrap_err()
            .contains("\\u0000")
    );
    assert!(convert("json", Value::Text("\"\\u0000\"")).is_ok());
    assert!(convert("json", Value::Blob(b"{}")).is_err());
}

#[test]
fn numerics_are_never_rounded() {
    assert_eq!(
        convert("numeric(12,2)", Value::Real(19.99)).unwrap(),
        "19.99"
    );
    assert_eq!(convert("numeric(12,2)", Value::Integer(5)).unwrap(), "5");
    assert_eq!(
        convert("numeric(12,2)", Value::Text("-0012.5")).unwrap(),
        "-0012.5"
    );
    assert!(
        convert("numeric(12,2)", Value::Real(1.555))
            .unwrap_err()
            .contains("would be rounded")
    );
    assert!(
        convert("numeric(4,2)", Value::Integer(123))
            .unwrap_err()
            .contains("3 digits before the point")
    );
    assert_eq!(
        convert("numeric", Value::Text("123456789.123456789")).unwrap(),
        "123456789.123456789"
    );
    assert!(
        convert("numeric", Value::Text("12abc"))
            .unwrap_err()
            .contains("decimal")
    );
    assert!(convert("numeric", Value::Real(f64::INFINITY)).is_err());
    assert!(convert("numeric", Value::Blob(b"1")).is_err());
}

#[test]
fn floats_keep_every_digit() {
    assert_eq!(
        convert("double precision", Value::Real(0.1 + 0.2)).unwrap(),
        "3.0000000000000004e-1"
    );
    assert_eq!(
        convert("double precision", Value::Integer(3)).unwrap(),
        "3e0"
    );
    assert_eq!(
        convert("double precision", Value::Real(f64::NEG_INFINITY)).unwrap(),
        "-Infinity"
    );
    assert_eq!(
        convert("double precision", Value::Text("2.5")).unwrap(),
        "2.5e0"
    );
    assert!(convert("double precision", Value::Integer((1 << 53) + 1)).is_err());
    assert_eq!(convert("real", Value::Real(1.5)).unwrap(), "1.5e0");
    assert!(
        convert("real", Value::Real(1e39))
            .unwrap_err()
            .contains("out of range")
    );
    assert!(convert("real", Value::Real(1e-50)).is_err());
    assert!(convert("real", Value::Integer(16_777_217)).is_err());
    assert!(convert("real", Value::Text("abc")).is_err());
}

#[test]
fn blobs_become_bytea() {
    assert_eq!(
        convert("bytea", Value::Blob(&[0, 0xab, 0xff])).unwrap(),
        "\\\\x00abff"
    );
    assert_eq!(convert("bytea", Value::Text("A")).unwrap(), "\\\\x41");
    assert!(convert("bytea", Value::Integer(1)).is_err());
}

#[test]
fn dates_and_times_from_iso_text() {
    assert_eq!(
        convert("date", Value::Text("2024-02-29")).unwrap(),
        "2024-02-29"
    );
    assert_eq!(
        convert("date", Value::Text("2024-02-29 00:00:00")).unwrap(),
        "2024-02-29"
    );
    assert!(
        convert("date", Value::Text("2023-02-29"))
            .unwrap_err()
            .contains("calendar")
    );
    assert!(
        convert("date", Value::Text("2024-02-29 10:00"))
            .unwrap_err()
            .contains("truncated")
    );
    assert!(
        convert("date", Value::Text("29/02/2024"))
            .unwrap_err()
            .contains("ISO 8601")
    );
    assert_eq!(
        convert("time without time zone", Value::Text("13:45")).unwrap(),
        "13:45:00"
    );
    assert_eq!(
        convert("time without time zone", Value::Text("13:45:01.5")).unwrap(),
        "13:45:01.500000"
    );
    assert!(convert("time without time zone", Value::Text("25:00")).is_err());
    assert_eq!(
        convert(
            "timestamp without time zone",
            Value::Text("2024-05-01T12:30:00")
        )
        .unwrap(),
        "2024-05-01 12:30:00"
    );
    assert_eq!(
        convert(
            "timestamp without time zone",
            Value::Text("2024-05-01 12:30:00+02:00")
        )
        .unwrap(),
        "2024-05-01 10:30:00"
    );
    assert_eq!(
        convert(
            "timestamp with time zone",
            Value::Text("2024-05-01T12:30:00.123Z")
        )
        .unwrap(),
        "2024-05-01 12:30:00.123000+00"
    );
    assert_eq!(
        convert(
            "timestamp with time zone",
            Value::Text("2024-05-01 00:30:00-0130")
        )
        .unwrap(),
        "2024-05-01 02:00:00+00"
    );
    assert_eq!(
        convert("timestamp(3) with time zone", Value::Text("2024-05-01")).unwrap(),
        "2024-05-01 00:00:00+00"
    );
    assert!(convert("timestamp with time zone", Value::Text("yesterday")).is_err());
    assert_eq!(
        convert(
            "timestamp with time zone",
            Value::Text("2024-05-01T12:30:59.999999733+00:00")
        )
        .unwrap(),
        "2024-05-01 12:31:00+00"
    );
    assert_eq!(
        convert(
            "timestamp with time zone",
            Value::Text("2024-05-01 12:30:00.1234564")
        )
        .unwrap(),
        "2024-05-01 12:30:00.123456+00"
    );
    assert!(
        convert(
            "timestamp with time zone",
            Value::Text("2024-05-01 12:30:00.1234567891")
        )
        .is_err()
    );
    assert!(
        convert(
            "timestamp with time zone",
            Value::Text("2024-05-01 12:30+25")
        )
        .is_err()
    );
}

#[test]
fn unix_time_needs_its_unit() {
    let err = convert("timestamp with time zone", Value::Integer(1_700_000_000)).unwrap_err();
    assert!(err.contains("--unix-time"), "{err}");
    let seconds = Some(UnixTime::Seconds);
    let millis = Some(UnixTime::Milliseconds);
    assert_eq!(
        convert_with(
            "timestamp with time zone",
            Value::Integer(1_700_000_000),
            seconds,
            false
        )
        .unwrap(),
        "2023-11-14 22:13:20+00"
    );
    assert_eq!(
        convert_with(
            "timestamp without time zone",
            Value::Integer(1_700_000_000_123),
            millis,
            false
        )
        .unwrap(),
        "2023-11-14 22:13:20.123000"
    );
    assert_eq!(
        convert_with("timestamp with time zone", Value::Real(1.5), seconds, false).unwrap(),
        "1970-01-01 00:00:01.500000+00"
    );
    assert_eq!(
        convert_with("date", Value::Integer(86_400), seconds, false).unwrap(),
        "1970-01-02"
    );
    assert!(convert_with("date", Value::Integer(86_401), seconds, false).is_err());
    assert!(
        convert_with(
            "timestamp with time zone",
            Value::Integer(i64::MAX),
            seconds,
            false
        )
        .is_err()
    );
    assert!(convert_with("timestamp with time zone", Value::Real(1.5), millis, false).is_err());
}

#[test]
fn null_stays_null_unless_the_column_refuses_it() {
    assert_eq!(convert("integer", Value::Null).unwrap(), "\\N");
    assert_eq!(convert("jsonb", Value::Null).unwrap(), "\\N");
    assert!(
        convert_with("integer", Value::Null, None, true)
            .unwrap_err()
            .contains("NOT NULL")
    );
}

#[test]
fn kinds_of_types() {
    assert_eq!(
        Kind::of("character varying(20)"),
        Some(Kind::Text(Some(20)))
    );
    assert_eq!(Kind::of("character(3)"), Some(Kind::Text(Some(3))));
    assert_eq!(
        Kind::of("numeric(10,2)"),
        Some(Kind::Numeric(Some((10, 2))))
    );
    assert_eq!(
        Kind::of("timestamp(3) without time zone"),
        Some(Kind::Timestamp)
    );
    assert_eq!(Kind::of("inet"), Some(Kind::Inet));
    assert_eq!(Kind::of("cidr"), None);
    assert_eq!(Kind::of("public.mood"), None);
}
