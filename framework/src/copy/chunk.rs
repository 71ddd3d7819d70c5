//! A chunk of a table: a range of its primary key, the unit a copy commits. Each source
//! writes its bounds in its own SQL (see `source/`).

/// A key position: each key column's value as text; `None` is the open end.
pub(super) type Bound = Option<Vec<String>>;

/// One chunk of a table: the keys in `(lower, upper]`.
#[derive(Clone, Debug)]
pub(super) struct Chunk {
    pub(super) number: usize,
    pub(super) lower: Bound,
    pub(super) upper: Bound,
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
                done: false,
                rows: 0,
            });
            lower = bound;
        }
        chunks
    }
}
