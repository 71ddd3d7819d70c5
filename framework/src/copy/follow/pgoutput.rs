//! The messages of PostgreSQL's built-in `pgoutput` plugin, protocol version 1, as
//! `pg_logical_slot_peek_binary_changes` returns them: one message a row. Only what the
//! follow needs is parsed; the layout is the one of PostgreSQL's "Logical Replication
//! Message Formats" (chapter 55.9 of the PostgreSQL 15 documentation).

/// One column's value in a row image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Value {
    /// SQL `NULL`.
    Null,
    /// A TOASTed value the update left unchanged: `pgoutput` does not send it ('u').
    Unchanged,
    /// The value in its type's text output form.
    Text(String),
}

/// A relation as the source's catalog has it at the change's position in the WAL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Relation {
    pub(super) oid: u32,
    pub(super) schema: String,
    pub(super) name: String,
    /// `d` default (the primary key), `f` full, `i` an index, `n` nothing.
    pub(super) identity: u8,
    /// Its columns (generated and dropped ones are not sent).
    pub(super) columns: Vec<RelationColumn>,
}

/// A column of a [`Relation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RelationColumn {
    pub(super) name: String,
    /// Its type's OID and modifier (`-1`: none).
    pub(super) type_oid: u32,
    pub(super) typmod: i32,
}

/// One message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Message {
    /// A source transaction begins: its commit's LSN, commit time (microseconds since
    /// 2000-01-01) and top-level transaction id.
    Begin { lsn: u64, time: i64, xid: u32 },
    /// The transaction commits: its commit LSN and the end of the commit record.
    Commit { lsn: u64, end: u64 },
    /// A relation's description, sent before its first change in a session and again after
    /// it changed.
    Relation(Relation),
    /// A new row.
    Insert { oid: u32, new: Vec<Value> },
    /// A changed row: `old` is the old key ('K', only when the key changed) or the old row
    /// (`O`, replica identity full).
    Update {
        oid: u32,
        old: Option<Vec<Value>>,
        new: Vec<Value>,
    },
    /// A deleted row, by its old key or old row.
    Delete { oid: u32, old: Vec<Value> },
    /// Tables emptied, in one statement.
    Truncate { oids: Vec<u32>, cascade: bool },
    /// Anything else (origin, type): nothing to apply.
    Other,
}

/// Why a message did not parse.
#[derive(Debug)]
pub(super) struct Malformed(pub(super) String);

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Malformed> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.data.len());
        let Some(end) = end else {
            return Err(Malformed(format!(
                "a message of {} bytes ends before byte {}",
                self.data.len(),
                self.at + n
            )));
        };
        let out = &self.data[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, Malformed> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn string(&mut self) -> Result<String, Malformed> {
        let rest = &self.data[self.at..];
        let Some(nul) = rest.iter().position(|b| *b == 0) else {
            return Err(Malformed(
                "a string without its terminating zero byte".into(),
            ));
        };
        let s = String::from_utf8_lossy(&rest[..nul]).into_owned();
        self.at += nul + 1;
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Value>, Malformed> {
        let n = self.u16()?;
        let mut values = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            values.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    Value::Text(String::from_utf8_lossy(self.take(len)?).into_owned())
                }
                other => {
                    return Err(Malformed(format!(
                        "a column value of kind {:?} (only text, null and unchanged are asked for)",
                        char::from(other)
                    )));
                }
            });
        }
        Ok(values)
    }
}

/// Parses one message.
pub(super) fn parse(data: &[u8]) -> Result<Message, Malformed> {
    let mut r = Reader { data, at: 0 };
    Ok(match r.u8()? {
        b'B' => Message::Begin {
            lsn: r.u64()?,
            time: r.u64()? as i64,
            xid: r.u32()?,
        },
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit {
                lsn: r.u64()?,
                end: r.u64()?,
            }
        }
        b'R' => {
            let oid = r.u32()?;
            let schema = r.string()?;
            let name = r.string()?;
            let identity = r.u8()?;
            let n = r.u16()?;
            let mut columns = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                let _flags = r.u8()?;
                let name = r.string()?;
                let type_oid = r.u32()?;
                let typmod = r.u32()? as i32;
                columns.push(RelationColumn {
                    name,
                    type_oid,
                    typmod,
                });
            }
            Message::Relation(Relation {
                oid,
                schema,
                name,
                identity,
                columns,
            })
        }
        b'I' => {
            let oid = r.u32()?;
            let _n = r.u8()?;
            Message::Insert {
                oid,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let oid = r.u32()?;
            let mut old = None;
            let mut kind = r.u8()?;
            if kind == b'K' || kind == b'O' {
                old = Some(r.tuple()?);
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(Malformed(format!(
                    "an update whose new row is marked {:?}",
                    char::from(kind)
                )));
            }
            Message::Update {
                oid,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let oid = r.u32()?;
            let _kind = r.u8()?;
            Message::Delete {
                oid,
                old: r.tuple()?,
            }
        }
        b'T' => {
            let n = r.u32()?;
            let options = r.u8()?;
            let mut oids = Vec::with_capacity(n as usize);
            for _ in 0..n {
                oids.push(r.u32()?);
            }
            Message::Truncate {
                oids,
                cascade: options & 1 == 1,
            }
        }
        _ => Message::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_update_with_its_old_key_and_an_unchanged_value() {
        let mut m = vec![b'U'];
        m.extend(16384u32.to_be_bytes());
        m.push(b'K');
        m.extend(3u16.to_be_bytes());
        m.push(b't');
        m.extend(1u32.to_be_bytes());
        m.push(b'1');
        m.push(b'n');
        m.push(b'n');
        m.push(b'N');
        m.extend(3u16.to_be_bytes());
        m.push(b't');
        m.extend(1u32.to_be_bytes());
        m.push(b'2');
        m.push(b'u');
        m.push(b'n');
        assert_eq!(
            parse(&m).unwrap(),
            Message::Update {
                oid: 16384,
                old: Some(vec![Value::Text("1".into()), Value::Null, Value::Null]),
                new: vec![Value::Text("2".into()), Value::Unchanged, Value::Null],
            }
        );
    }

    #[test]
    fn a_truncated_message_is_malformed_not_a_panic() {
        assert!(parse(&[b'B', 0, 0]).is_err());
        assert!(parse(&[b'I', 0, 0, 0, 1, b'N', 0, 1, b't', 0, 0, 0, 9, b'x']).is_err());
    }
}
