//! A chunk of a table: a range of its primary key, the unit a copy commits. Each source
//! writes its bounds in its own SQL (see `source/`), binding the values it reads back from
//! the progress table, never splicing them.

/// A key position: each key column's value as text; `None` is the open end.
pub(super) type Bound = Option<Vec<String>>;

/// One chunk of a table: the keys in `(lower, upper]`, or the rows whose key holds a
/// `NULL` (a SQLite key may: such rows fall in no range).
#[derive(Clone, Debug)]
pub(super) struct Chunk {
    pub(super) number: usize,
    pub(super) lower: Bound,
    pub(super) upper: Bound,
    /// The rows with a `NULL` in their key, instead of a range.
    pub(super) null_keys: bool,
    pub(super) done: bool,
    pub(super) rows: u64,
}

impl Chunk {
    /// The whole table, in one chunk.
    pub(super) fn whole() -> Chunk {
        Chunk {
            number: 1,
            lower: None,
            upper: None,
            null_keys: false,
            done: false,
            rows: 0,
        }
    }

    /// The chunks between these bounds, in order (the first and last open-ended).
    pub(super) fn between(bounds: Vec<Vec<String>>) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        let mut lower: Bound = None;
        for (i, bound) in bounds.into_iter().map(Some).chain([None]).enumerate() {
            chunks.push(Chunk {
                number: i + 1,
                lower: lower.clone(),
                upper: bound.clone(),
                null_keys: false,
                done: false,
                rows: 0,
            });
            lower = bound;
        }
        chunks
    }

    /// A chunk of the rows whose key holds a `NULL`, numbered after `chunks`.
    #[cfg(feature = "sqlite")]
    pub(super) fn null_keys(after: &[Chunk]) -> Chunk {
        Chunk {
            number: after.len() + 1,
            lower: None,
            upper: None,
            null_keys: true,
            done: false,
            rows: 0,
        }
    }

    /// The bounds as the progress table records them: a chunk of `NULL` keys as two empty
    /// arrays (no key has zero columns, so no range is written so).
    pub(super) fn recorded(&self) -> (Bound, Bound) {
        if self.null_keys {
            (Some(Vec::new()), Some(Vec::new()))
        } else {
            (self.lower.clone(), self.upper.clone())
        }
    }

    /// A chunk as the progress table records it.
    pub(super) fn from_recorded(
        number: usize,
        lower: Bound,
        upper: Bound,
        done: bool,
        rows: u64,
    ) -> Chunk {
        let null_keys =
            lower.as_ref().is_some_and(Vec::is_empty) && upper.as_ref().is_some_and(Vec::is_empty);
        Chunk {
            number,
            lower: if null_keys { None } else { lower },
            upper: if null_keys { None } else { upper },
            null_keys,
            done,
            rows,
        }
    }
}
