//! The copy's snapshot of the source as `pg_current_snapshot()` writes it
//! (`xmin:xmax:xip,..`, 64-bit transaction ids), and which source transactions it shows.
//!
//! The follow applies a transaction of the change stream only when the copy's snapshot
//! does not show it: those it shows are in the copied rows already.

/// A snapshot: transactions below `xmin` are visible, from `xmax` on not, between them
/// visible unless in `running`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Snapshot {
    pub(super) xmin: u64,
    pub(super) xmax: u64,
    pub(super) running: Vec<u64>,
}

impl Snapshot {
    /// Parses `xmin:xmax:xip,..`.
    pub(super) fn parse(text: &str) -> Option<Snapshot> {
        let mut parts = text.trim().splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let running = match parts.next() {
            Some("") | None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<Vec<u64>>>()?,
        };
        Some(Snapshot {
            xmin,
            xmax,
            running,
        })
    }

    /// Whether the snapshot shows the (committed) transaction `xid`, whose 32 bits
    /// `pgoutput` sends: widened to the 64-bit id with those low bits nearest to `next`
    /// (the source's next transaction id about when the change was read).
    pub(super) fn shows(&self, xid: u32, next: u64) -> bool {
        let full = widen(xid, next);
        full < self.xmin || (full < self.xmax && !self.running.contains(&full))
    }
}

/// The 64-bit transaction id with low bits `xid` nearest to `next` (within 2^31 either
/// side, as PostgreSQL compares 32-bit ids).
pub(super) fn widen(xid: u32, next: u64) -> u64 {
    const EPOCH: u64 = 1 << 32;
    const HALF: u64 = 1 << 31;
    let candidate = (next & !(EPOCH - 1)) | u64::from(xid);
    if candidate > next.saturating_add(HALF) && candidate >= EPOCH {
        candidate - EPOCH
    } else if candidate.saturating_add(HALF) < next {
        candidate + EPOCH
    } else {
        candidate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_what_committed_before_it_and_not_what_ran_or_came_after() {
        let s = Snapshot::parse("100:105:101,103").unwrap();
        let next = 200;
        assert!(s.shows(99, next));
        assert!(s.shows(100, next));
        assert!(!s.shows(101, next));
        assert!(s.shows(102, next));
        assert!(!s.shows(103, next));
        assert!(s.shows(104, next));
        assert!(!s.shows(105, next));
        assert!(!s.shows(150, next));
        assert_eq!(Snapshot::parse("7:7:").unwrap().running, Vec::<u64>::new());
    }

    #[test]
    fn widens_across_an_epoch() {
        let next = (1u64 << 32) + 10;
        assert_eq!(widen(5, next), (1u64 << 32) + 5);
        assert_eq!(widen(u32::MAX, next), u64::from(u32::MAX));
        // A transaction that began just after `next` was read.
        assert_eq!(widen(12, next), (1u64 << 32) + 12);
        assert_eq!(widen(3, u64::from(u32::MAX) - 2), (1u64 << 32) + 3);
        let s = Snapshot::parse(&format!("{}:{}:", (1u64 << 32) - 5, (1u64 << 32) + 2)).unwrap();
        assert!(s.shows(u32::MAX - 1, next));
        assert!(s.shows(1, next));
        assert!(!s.shows(3, next));
    }
}
