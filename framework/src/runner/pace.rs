//! Self-pacing: the size of a batched migration's next batch and the pause before it,
//! decided from what the database shows about everyone else (a pure function of the
//! signals, unit-tested here; the signals are read by the backend, `LoadSample`).
//!
//! Why these signals: a backfill disturbs an application through the CPU and the disk it
//! takes and through the row locks it holds until its batch commits. Other sessions of
//! the database that run (or ran within the last second) a statement, their commits, the
//! sessions waiting for a lock this backfill holds, and the backfill's own batches taking
//! longer per key than they did on an idle database each say someone else is there. With
//! none of them, batches grow back to back towards [`IDLE_TARGET`], where a batch's fixed
//! cost (its transaction, its checkpoint, its commit's flush) is a few per cent; with any,
//! batches shrink to [`BUSY_TARGET`] and the runner pauses after each, longer the more the
//! signals say, so the application gets the machine most of the time.

use std::time::Duration;

use crate::backend::LoadSample;

/// The duration a batch grows towards on a database nobody else uses.
pub(super) const IDLE_TARGET: Duration = Duration::from_millis(300);

/// The duration a batch shrinks to while other sessions are busy.
pub(super) const BUSY_TARGET: Duration = Duration::from_millis(10);

/// The size of the first batch, before anything was measured.
pub(super) const FIRST_SIZE: u32 = 1_000;

/// The shortest pause while the database is busy.
const MIN_PAUSE: Duration = Duration::from_millis(5);

/// The longest pause after one batch.
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// Others' commits a second above which the database counts as busy (a few a second are
/// monitoring, or a pool's health checks).
const BUSY_COMMITS: f64 = 5.0;

/// How much slower per key than on the idle database a batch may run before the slowdown
/// alone counts as load (a batch's time varies by a few tens of per cent by itself).
const SLOW_FACTOR: f64 = 2.5;

/// The weight of the latest idle batch in the idle baseline (a moving average: one fast
/// batch does not set it, nor one slow one).
const BASELINE_WEIGHT: f64 = 0.2;

/// Calm samples in a row after which the pacing goes back to full speed (one quiet
/// instant between an application's transactions is not an idle database).
const CALM_SAMPLES: u32 = 3;

/// What the pacing decided for the next batch.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Decision {
    /// Keys in the next batch.
    pub(crate) size: u32,
    /// How long to wait before it.
    pub(crate) pause: Duration,
    /// What the pacing is doing and why, as people read it ("pausing 12 ms: 3 application
    /// sessions active").
    pub(crate) reason: String,
    /// Whether it slowed down for someone else (the time spent so counts as paced).
    pub(crate) paced: bool,
}

/// The pacing of one walk: what it measured so far, and the bounds of the migration.
#[derive(Clone, Debug)]
pub(crate) struct Pacer {
    size: u32,
    min: u32,
    max: u32,
    /// The time per key measured while the database was idle (a moving average), in
    /// seconds.
    baseline: Option<f64>,
    /// Calm samples in a row.
    calm: u32,
    /// Whether the last decision was paced.
    busy: bool,
    /// The last commit counter read, and when (for the commit rate).
    commits: Option<(i64, f64)>,
    /// This walk's own commits since then.
    own_commits: i64,
}

/// One batch as the pacing sees it: its keys, how long it took, and what the database
/// showed while it ran (`None` where the backend shows nothing, SQLite).
#[derive(Clone, Debug)]
pub(crate) struct Observed {
    pub(crate) keys: u64,
    pub(crate) took: Duration,
    pub(crate) sample: Option<LoadSample>,
    /// Commits of this walk since the last sample (its batches and its own reads), left
    /// out of the commit rate.
    pub(crate) own_commits: i64,
}

impl Pacer {
    /// A pacer for sizes between `min` and `max`.
    pub(crate) fn new(min: u32, max: u32) -> Self {
        let (min, max) = (min.max(1), max.max(min.max(1)));
        Pacer {
            size: FIRST_SIZE.clamp(min, max),
            min,
            max,
            baseline: None,
            calm: CALM_SAMPLES,
            busy: false,
            commits: None,
            own_commits: 0,
        }
    }

    /// The size of the first batch.
    pub(crate) fn first_size(&self) -> u32 {
        self.size
    }

    /// Decides the next batch after `batch`.
    pub(crate) fn next(&mut self, batch: &Observed) -> Decision {
        let per_key =
            (batch.keys > 0).then(|| batch.took.as_secs_f64().max(1e-6) / batch.keys as f64);
        let mut reasons: Vec<String> = Vec::new();
        let mut weight = 0.0f64;
        self.own_commits += batch.own_commits;
        if let Some(sample) = &batch.sample {
            if sample.lock_waits > 0 {
                reasons.push(format!(
                    "{} session{} waited for rows this backfill locked",
                    sample.lock_waits,
                    plural(sample.lock_waits)
                ));
                weight += 4.0;
            }
            let busy_sessions = sample.active.max(sample.recent);
            if busy_sessions > 0 {
                reasons.push(format!(
                    "{busy_sessions} application session{} active",
                    plural(busy_sessions)
                ));
                weight += 1.0 + f64::from(sample.active.min(8)) * 0.25;
            }
            if let Some(commits) = sample.commits {
                if let Some((before, at)) = self.commits {
                    let span = sample.at - at;
                    if span >= 0.5 {
                        let others = (commits - before - self.own_commits).max(0) as f64 / span;
                        if others > BUSY_COMMITS && busy_sessions == 0 {
                            reasons.push(format!("{others:.0} commits a second by others"));
                            weight += 1.0;
                        }
                        self.commits = Some((commits, sample.at));
                        self.own_commits = 0;
                    }
                } else {
                    self.commits = Some((commits, sample.at));
                    self.own_commits = 0;
                }
            }
        }
        if let (Some(per_key), Some(baseline)) = (per_key, self.baseline) {
            let slower = per_key / baseline;
            if slower > SLOW_FACTOR && batch.keys >= u64::from(self.min) {
                reasons.push(format!(
                    "batches {slower:.1}x slower than on the idle database"
                ));
                weight += (slower - 1.0).min(4.0) * 0.5;
            }
        }
        let loaded = !reasons.is_empty();
        if loaded {
            self.calm = 0;
        } else {
            self.calm = self.calm.saturating_add(1);
            if let Some(per_key) = per_key
                && batch.keys >= u64::from(self.min.max(100).min(self.size))
            {
                // The idle baseline: batches measured with nobody else there.
                self.baseline = Some(
                    self.baseline
                        .map_or(per_key, |b| b + (per_key - b) * BASELINE_WEIGHT),
                );
            }
        }
        let busy = loaded || self.calm < CALM_SAMPLES;
        self.busy = busy;
        let target = if busy { BUSY_TARGET } else { IDLE_TARGET };
        let current = f64::from(self.size);
        // Busy, the size is what takes the target on the idle database: a batch slowed by
        // contention keeps its size (its fixed cost stays small) and the pause after it,
        // measured on its real time, gives the application the time it took.
        let cost = match (busy, self.baseline) {
            (true, Some(baseline)) => Some(baseline),
            _ => per_key,
        };
        let next = match cost {
            Some(per_key) => {
                let ideal = target.as_secs_f64() / per_key;
                // Down at once (a long batch holds its locks long), up at most twofold.
                ideal.min(current * 2.0)
            }
            None => current,
        };
        self.size = next.clamp(f64::from(self.min), f64::from(self.max)).round() as u32;
        if !busy {
            return Decision {
                size: self.size,
                pause: Duration::ZERO,
                reason: "full speed: no other session active".to_string(),
                paced: false,
            };
        }
        // Pause in proportion to the batch the application just shared the machine with:
        // one batch's time for plain activity, more as the signals add up.
        let expected = per_key.map_or(BUSY_TARGET.as_secs_f64(), |p| p * f64::from(self.size));
        let pause = Duration::from_secs_f64(expected * weight.max(1.0)).clamp(MIN_PAUSE, MAX_PAUSE);
        let why = if reasons.is_empty() {
            "the database was busy a moment ago".to_string()
        } else {
            reasons.join(", ")
        };
        Decision {
            size: self.size,
            pause,
            reason: format!("pausing {} ms: {why}", pause.as_millis()),
            paced: true,
        }
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(active: u32, recent: u32, lock_waits: u32) -> Option<LoadSample> {
        Some(LoadSample {
            active,
            recent,
            lock_waits,
            commits: None,
            at: 0.0,
        })
    }

    fn batch(keys: u64, ms: u64, sample: Option<LoadSample>) -> Observed {
        Observed {
            keys,
            took: Duration::from_millis(ms),
            sample,
            own_commits: 0,
        }
    }

    #[test]
    fn an_idle_database_gets_growing_batches_back_to_back() {
        let mut pacer = Pacer::new(1, u32::MAX);
        assert_eq!(pacer.first_size(), FIRST_SIZE);
        // 1,000 keys in 10 ms: 10 µs a key; the idle target fits 30,000, reached by doubling.
        let mut sizes = Vec::new();
        let mut keys = u64::from(pacer.first_size());
        for _ in 0..8 {
            let decision = pacer.next(&batch(keys, keys / 100, sample(0, 0, 0)));
            assert_eq!(decision.pause, Duration::ZERO);
            assert!(!decision.paced);
            assert_eq!(decision.reason, "full speed: no other session active");
            sizes.push(decision.size);
            keys = u64::from(decision.size);
        }
        assert_eq!(&sizes[..5], &[2_000, 4_000, 8_000, 16_000, 30_000]);
        assert!(sizes[5..].iter().all(|s| *s == 30_000));
    }

    #[test]
    fn application_sessions_shrink_the_batch_and_pause() {
        let mut pacer = Pacer::new(1, u32::MAX);
        pacer.next(&batch(1_000, 10, sample(0, 0, 0)));
        let decision = pacer.next(&batch(2_000, 20, sample(1, 3, 0)));
        assert!(decision.paced);
        // 10 µs a key: a 10 ms batch holds 1,000 keys.
        assert_eq!(decision.size, 1_000);
        assert!(decision.pause >= Duration::from_millis(10), "{decision:?}");
        assert!(
            decision.reason.starts_with("pausing ")
                && decision
                    .reason
                    .ends_with("ms: 3 application sessions active"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn lock_waiters_pause_longer_than_activity_alone() {
        let mut a = Pacer::new(1, u32::MAX);
        let mut b = Pacer::new(1, u32::MAX);
        let active = a.next(&batch(1_000, 10, sample(1, 1, 0)));
        let waiting = b.next(&batch(1_000, 10, sample(1, 1, 2)));
        assert!(waiting.pause > active.pause, "{active:?} {waiting:?}");
        assert!(
            waiting
                .reason
                .contains("2 sessions waited for rows this backfill locked"),
            "{}",
            waiting.reason
        );
    }

    #[test]
    fn full_speed_returns_only_after_several_calm_samples() {
        let mut pacer = Pacer::new(1, u32::MAX);
        pacer.next(&batch(1_000, 10, sample(2, 2, 0)));
        for _ in 0..CALM_SAMPLES - 1 {
            let decision = pacer.next(&batch(1_000, 10, sample(0, 0, 0)));
            assert!(decision.paced, "{decision:?}");
            assert!(
                decision.reason.contains("busy a moment ago"),
                "{}",
                decision.reason
            );
        }
        let decision = pacer.next(&batch(1_000, 10, sample(0, 0, 0)));
        assert!(!decision.paced, "{decision:?}");
    }

    #[test]
    fn batches_slower_than_the_idle_baseline_count_as_load() {
        // SQLite shows no sessions: the batches' own time is the signal.
        let mut pacer = Pacer::new(1, u32::MAX);
        pacer.next(&batch(1_000, 10, None));
        let decision = pacer.next(&batch(2_000, 100, None));
        assert!(decision.paced, "{decision:?}");
        assert!(
            decision
                .reason
                .contains("5.0x slower than on the idle database"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn others_commits_count_ours_do_not() {
        let mut pacer = Pacer::new(1, u32::MAX);
        let at = |commits, at| {
            Some(LoadSample {
                active: 0,
                recent: 0,
                lock_waits: 0,
                commits: Some(commits),
                at,
            })
        };
        pacer.next(&batch(1_000, 10, at(100, 0.0)));
        // 50 commits in a second, all this walk's own.
        let mut ours = batch(1_000, 10, at(150, 1.0));
        ours.own_commits = 50;
        assert!(!pacer.next(&ours).paced);
        // Ours over several batches within a window: all left out.
        for (commits, at_s) in [(160, 1.2), (170, 1.4)] {
            let mut ours = batch(1_000, 10, at(commits, at_s));
            ours.own_commits = 10;
            assert!(!pacer.next(&ours).paced);
        }
        let mut ours = batch(1_000, 10, at(180, 1.6));
        ours.own_commits = 10;
        assert!(!pacer.next(&ours).paced);
        // 200 in the next 0.6 s, 10 of them ours.
        let mut theirs = batch(1_000, 10, at(380, 2.2));
        theirs.own_commits = 10;
        let decision = pacer.next(&theirs);
        assert!(decision.paced, "{decision:?}");
        assert!(
            decision.reason.contains("317 commits a second by others"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn sizes_stay_within_the_bounds() {
        let mut pacer = Pacer::new(500, 800);
        assert_eq!(pacer.first_size(), 800);
        let decision = pacer.next(&batch(800, 1, sample(0, 0, 0)));
        assert_eq!(decision.size, 800);
        let decision = pacer.next(&batch(800, 800, sample(3, 3, 0)));
        assert!((500..=800).contains(&decision.size), "{decision:?}");
        assert!(decision.pause <= MAX_PAUSE);
        let mut tiny = Pacer::new(500, 800);
        let decision = tiny.next(&batch(800, 800, sample(3, 3, 0)));
        assert_eq!(decision.size, 500);
    }

    #[test]
    fn a_batch_slowed_by_contention_keeps_its_idle_size_and_the_pause_follows_its_time() {
        let mut pacer = Pacer::new(1, u32::MAX);
        // Idle: 10 µs a key.
        pacer.next(&batch(1_000, 10, sample(0, 0, 0)));
        // Beside the application the same keys take 4 times as long.
        let decision = pacer.next(&batch(1_000, 40, sample(1, 2, 0)));
        assert!(decision.paced);
        // 10 ms on the idle database: 1,000 keys, whatever they take now.
        assert_eq!(decision.size, 1_000);
        // Paused at least as long as such a batch takes now (40 ms).
        assert!(decision.pause >= Duration::from_millis(40), "{decision:?}");
        assert!(
            decision.reason.contains("4.0x slower"),
            "{}",
            decision.reason
        );
    }
}
