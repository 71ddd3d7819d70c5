//! The rollout: which target starts when. At most `concurrency` targets at once, in the
//! order given; the first `canary` targets first, and nothing else if one of them fails;
//! after a failure, either no new target starts (`stop`: the ones running finish their
//! run) or every target is still tried (`continue`). A raised stop signal starts nothing
//! more. Independent of what a target's work is, and of databases (unit-tested here).

use std::future::Future;

use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::error::Error;
use crate::runner::StopSignal;

/// What a fleet does once a target has failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OnFailure {
    /// No new target starts; the targets already running finish their run (each target
    /// ends migrated, untouched, or failed, never part-way by the fleet's choice). The
    /// targets left are reported not reached. The default.
    #[default]
    Stop,
    /// Every target is tried; each failure is reported.
    Continue,
}

/// Why a fleet left targets unreached.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
#[non_exhaustive]
pub enum Halted {
    /// A canary target failed: no target after the canaries started.
    Canary {
        /// The failed canary's name.
        target: String,
    },
    /// A target failed, and the fleet stops on failure ([`OnFailure::Stop`]).
    Failure {
        /// The failed target's name.
        target: String,
    },
    /// The fleet was asked to stop ([`Fleet::stop_on`](super::Fleet::stop_on)).
    Stopped,
}

impl std::fmt::Display for Halted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Halted::Canary { target } => write!(
                f,
                "canary target {target} failed, so no target after the canaries was started"
            ),
            Halted::Failure { target } => write!(
                f,
                "target {target} failed and the fleet stops on failure, so no other target was \
                 started (the ones running finished)"
            ),
            Halted::Stopped => write!(f, "stopped on request: no other target was started"),
        }
    }
}

/// How targets are started.
#[derive(Clone, Copy, Debug)]
pub(super) struct Rollout {
    pub(super) concurrency: usize,
    pub(super) canary: usize,
    pub(super) on_failure: OnFailure,
}

impl Rollout {
    /// Every target, `concurrency` at once, whatever fails: for commands that read.
    pub(super) fn every(concurrency: usize) -> Self {
        Rollout {
            concurrency,
            canary: 0,
            on_failure: OnFailure::Continue,
        }
    }
}

/// Runs `start(i)` for targets `0..total` as `rollout` says; `done(i, &result)` is called
/// as each ends. Returns each target's result (`None`: not reached) and why targets were
/// left, if they were.
pub(super) async fn roll<T, Fut>(
    total: usize,
    rollout: Rollout,
    stop: Option<&StopSignal>,
    mut start: impl FnMut(usize) -> Fut,
    mut done: impl FnMut(usize, &Result<T, Error>),
    name: impl Fn(usize) -> String,
) -> (Vec<Option<Result<T, Error>>>, Option<Halted>)
where
    Fut: Future<Output = Result<T, Error>>,
{
    let mut results: Vec<Option<Result<T, Error>>> = (0..total).map(|_| None).collect();
    let mut halted = None;
    let concurrency = rollout.concurrency.max(1);
    let canary = rollout.canary.min(total);
    // The canaries, then the rest: the second phase starts only once every canary ended.
    for (from, to, is_canary) in [(0, canary, true), (canary, total, false)] {
        let mut next = from;
        let mut running = FuturesUnordered::new();
        loop {
            if halted.is_none() && stop.is_some_and(StopSignal::is_stopped) {
                halted = Some(Halted::Stopped);
            }
            while halted.is_none() && next < to && running.len() < concurrency {
                let index = next;
                let work = start(index);
                running.push(async move { (index, work.await) });
                next += 1;
            }
            let Some((index, result)) = running.next().await else {
                break;
            };
            done(index, &result);
            if result.is_err() && halted.is_none() {
                if is_canary {
                    halted = Some(Halted::Canary {
                        target: name(index),
                    });
                } else if rollout.on_failure == OnFailure::Stop {
                    halted = Some(Halted::Failure {
                        target: name(index),
                    });
                }
            }
            results[index] = Some(result);
        }
        if halted.is_some() {
            break;
        }
    }
    if halted.is_none() && results.iter().any(Option::is_none) {
        halted = Some(Halted::Stopped);
    }
    (results, halted)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    /// Rolls out 10 targets; target `i` works `millis[i]` ms and fails when it is in
    /// `failing`. Returns which started (in start order), which ended ok, failed or were
    /// not reached, the most running at once, and why the rollout halted.
    async fn simulate(
        rollout: Rollout,
        millis: [u64; 10],
        failing: &[usize],
        stop_after: Option<usize>,
    ) -> (Vec<usize>, Vec<Option<bool>>, usize, Option<Halted>) {
        let started = Mutex::new(Vec::new());
        let running = Mutex::new((0usize, 0usize));
        let stop = StopSignal::new();
        let (results, halted) = roll(
            10,
            rollout,
            Some(&stop),
            |i| {
                let count = {
                    let mut started = started.lock().unwrap();
                    started.push(i);
                    started.len()
                };
                if stop_after.is_some_and(|n| count >= n) {
                    stop.stop();
                }
                let running = &running;
                async move {
                    {
                        let mut r = running.lock().unwrap();
                        r.0 += 1;
                        r.1 = r.1.max(r.0);
                    }
                    tokio::time::sleep(Duration::from_millis(millis[i])).await;
                    running.lock().unwrap().0 -= 1;
                    if failing.contains(&i) {
                        Err(Error::Config(format!("target {i} failed")))
                    } else {
                        Ok(i)
                    }
                }
            },
            |_, _| {},
            |i| format!("t{i}"),
        )
        .await;
        let shape = results
            .iter()
            .map(|r| r.as_ref().map(Result::is_ok))
            .collect();
        let most = running.lock().unwrap().1;
        (started.into_inner().unwrap(), shape, most, halted)
    }

    const EVEN: [u64; 10] = [10; 10];

    #[tokio::test]
    async fn at_most_concurrency_targets_run_at_once_and_every_one_is_reached() {
        let (started, shape, most, halted) = simulate(Rollout::every(3), EVEN, &[4], None).await;
        assert_eq!(started, (0..10).collect::<Vec<_>>(), "in the order given");
        assert_eq!(most, 3);
        assert!(
            shape.iter().all(Option::is_some),
            "continue tries every target"
        );
        assert_eq!(shape[4], Some(false));
        assert_eq!(halted, None);
    }

    #[tokio::test]
    async fn stop_starts_nothing_after_a_failure_and_lets_the_running_finish() {
        let rollout = Rollout {
            concurrency: 2,
            canary: 0,
            on_failure: OnFailure::Stop,
        };
        // Target 1 ends first, target 2 starts and fails at once while 0 still runs.
        let millis = [60, 5, 1, 1, 1, 1, 1, 1, 1, 1];
        let (started, shape, _, halted) = simulate(rollout, millis, &[2], None).await;
        assert_eq!(started, [0, 1, 2]);
        assert_eq!(
            shape[..3],
            [Some(true), Some(true), Some(false)],
            "0 finished"
        );
        assert!(
            shape[3..].iter().all(Option::is_none),
            "nothing more started"
        );
        assert_eq!(
            halted,
            Some(Halted::Failure {
                target: "t2".into()
            })
        );
    }

    #[tokio::test]
    async fn a_failed_canary_stops_the_fleet_even_when_it_continues_on_failure() {
        let rollout = Rollout {
            concurrency: 4,
            canary: 2,
            on_failure: OnFailure::Continue,
        };
        let (started, shape, _, halted) = simulate(rollout, EVEN, &[1], None).await;
        assert_eq!(started, [0, 1], "only the canaries");
        assert_eq!(shape[..2], [Some(true), Some(false)]);
        assert_eq!(
            halted,
            Some(Halted::Canary {
                target: "t1".into()
            })
        );
        // Healthy canaries: the rest follow, every failure after them tried past.
        let (started, shape, _, halted) = simulate(rollout, EVEN, &[5, 7], None).await;
        assert_eq!(started.len(), 10);
        assert_eq!(shape.iter().filter(|r| **r == Some(false)).count(), 2);
        assert_eq!(halted, None);
    }

    #[tokio::test]
    async fn a_stop_signal_starts_nothing_more() {
        let (started, shape, _, halted) = simulate(Rollout::every(2), EVEN, &[], Some(3)).await;
        assert_eq!(started, [0, 1, 2]);
        assert!(shape[..3].iter().all(|r| *r == Some(true)));
        assert!(shape[3..].iter().all(Option::is_none));
        assert_eq!(halted, Some(Halted::Stopped));
    }
}
