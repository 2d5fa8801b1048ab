//! The restart policy at work: the immediate first restart after a served run, backoff
//! delays (backon's exponential builder with jitter) for crashes in a row, their reset
//! after a stable period, and the restart intensity limit.

use std::{collections::VecDeque, time::Duration};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;

use crate::config::RestartPolicy;

/// What to do after a worker crashed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// Start a new worker after `delay`; this is restart number `attempt`.
    Restart { attempt: u32, delay: Duration },
    /// Too many restarts: stop trying.
    GiveUp { reason: String },
}

/// Tracks restarts against a [`RestartPolicy`].
#[derive(Debug)]
pub(crate) struct RestartTracker {
    policy: RestartPolicy,
    backoff: ExponentialBackoff,
    /// Restarts since the last reset (numbers `Restarting` events).
    attempt: u32,
    /// When recent restarts happened, for the intensity limit.
    recent: VecDeque<Instant>,
}

impl RestartTracker {
    pub(crate) fn new(policy: RestartPolicy) -> Self {
        RestartTracker {
            backoff: Self::builder(&policy).build(),
            policy,
            attempt: 0,
            recent: VecDeque::new(),
        }
    }

    fn builder(policy: &RestartPolicy) -> ExponentialBuilder {
        let builder = ExponentialBuilder::default()
            .with_min_delay(policy.initial_delay)
            .with_max_delay(policy.max_delay)
            .with_factor(policy.factor)
            .without_max_times();
        if policy.jitter {
            builder.with_jitter()
        } else {
            builder
        }
    }

    /// Decides what follows a crash. `served_for` is how long the worker had been ready
    /// (`None` if it never became ready): a long enough run resets the backoff. The first
    /// restart since the last reset is immediate when the worker had served (and the
    /// policy says so); it does not use up a backoff step, so the next crash in a row
    /// waits `initial_delay`.
    pub(crate) fn on_crash(&mut self, served_for: Option<Duration>) -> Decision {
        let now = Instant::now();
        if served_for.is_some_and(|served| served >= self.policy.reset_after) {
            self.backoff = Self::builder(&self.policy).build();
            self.attempt = 0;
        }
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.within)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.policy.max_restarts as usize {
            return Decision::GiveUp {
                reason: format!(
                    "the worker crashed again after {} restart(s) within {:?} (limit: {} restart(s) within {:?})",
                    self.recent.len(),
                    self.policy.within,
                    self.policy.max_restarts,
                    self.policy.within
                ),
            };
        }
        self.recent.push_back(now);
        let immediate =
            self.policy.immediate_first_restart && self.attempt == 0 && served_for.is_some();
        self.attempt += 1;
        let delay = if immediate {
            Duration::ZERO
        } else {
            self.backoff.next().unwrap_or(self.policy.max_delay)
        };
        Decision::Restart {
            attempt: self.attempt,
            delay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
            factor: 2.0,
            jitter: false,
            reset_after: Duration::from_secs(60),
            max_restarts: 4,
            within: Duration::from_secs(30),
            immediate_first_restart: false,
        }
    }

    fn immediate() -> RestartPolicy {
        RestartPolicy {
            immediate_first_restart: true,
            ..policy()
        }
    }

    /// The delay in whole milliseconds (backon multiplies in floating point).
    fn delay(d: Decision) -> Option<u128> {
        match d {
            Decision::Restart { delay, .. } => Some(delay.as_millis()),
            Decision::GiveUp { .. } => None,
        }
    }

    #[test]
    fn delays_grow_to_the_cap_then_give_up() {
        let mut t = RestartTracker::new(policy());
        let ms = Some;
        assert_eq!(delay(t.on_crash(None)), ms(100));
        assert_eq!(delay(t.on_crash(None)), ms(200));
        assert_eq!(delay(t.on_crash(None)), ms(350));
        assert_eq!(delay(t.on_crash(None)), ms(350));
        assert!(matches!(t.on_crash(None), Decision::GiveUp { .. }));
    }

    #[test]
    fn a_stable_run_resets_the_delay() {
        let mut t = RestartTracker::new(policy());
        assert_eq!(delay(t.on_crash(None)), Some(100));
        assert_eq!(delay(t.on_crash(None)), Some(200));
        let d = t.on_crash(Some(Duration::from_secs(61)));
        assert_eq!(
            d,
            Decision::Restart {
                attempt: 1,
                delay: Duration::from_millis(100)
            }
        );
    }

    #[test]
    fn jitter_stays_within_one_delay() {
        let mut p = policy();
        p.jitter = true;
        let mut t = RestartTracker::new(p);
        let first = delay(t.on_crash(None)).unwrap_or_default();
        assert!((100..200).contains(&first), "{first}");
    }

    #[test]
    fn first_restart_after_serving_is_immediate_then_backs_off() {
        let mut t = RestartTracker::new(immediate());
        let served = Some(Duration::from_secs(1));
        assert_eq!(
            t.on_crash(served),
            Decision::Restart {
                attempt: 1,
                delay: Duration::ZERO
            }
        );
        // Crashes in a row back off from initial_delay, as without the immediate restart.
        assert_eq!(delay(t.on_crash(served)), Some(100));
        assert_eq!(delay(t.on_crash(None)), Some(200));
        assert_eq!(delay(t.on_crash(served)), Some(350));
    }

    #[test]
    fn a_stable_run_makes_the_next_restart_immediate_again() {
        let mut t = RestartTracker::new(immediate());
        assert_eq!(delay(t.on_crash(Some(Duration::ZERO))), Some(0));
        assert_eq!(delay(t.on_crash(Some(Duration::ZERO))), Some(100));
        assert_eq!(delay(t.on_crash(Some(Duration::from_secs(61)))), Some(0));
        assert_eq!(delay(t.on_crash(Some(Duration::ZERO))), Some(100));
    }

    #[test]
    fn a_worker_that_never_served_is_never_restarted_at_once() {
        let mut t = RestartTracker::new(immediate());
        assert_eq!(delay(t.on_crash(None)), Some(100));
        assert_eq!(delay(t.on_crash(None)), Some(200));
        // A crash loop at start-up keeps backing off, then hits the intensity limit.
        assert_eq!(delay(t.on_crash(None)), Some(350));
        assert_eq!(delay(t.on_crash(None)), Some(350));
        assert!(matches!(t.on_crash(None), Decision::GiveUp { .. }));
    }

    #[test]
    fn immediate_restarts_count_against_the_intensity_limit() {
        let mut t = RestartTracker::new(RestartPolicy {
            max_restarts: 1,
            ..immediate()
        });
        assert_eq!(delay(t.on_crash(Some(Duration::from_secs(61)))), Some(0));
        assert!(matches!(
            t.on_crash(Some(Duration::from_secs(61))),
            Decision::GiveUp { .. }
        ));
    }

    #[test]
    fn the_default_policy_restarts_a_served_worker_at_once() {
        let mut t = RestartTracker::new(RestartPolicy::default());
        assert_eq!(delay(t.on_crash(Some(Duration::from_secs(1)))), Some(0));
        let second = delay(t.on_crash(Some(Duration::from_secs(1)))).unwrap_or_default();
        assert!((100..200).contains(&second), "{second}");
    }

    #[test]
    fn never_gives_up_at_once() {
        let mut t = RestartTracker::new(RestartPolicy::never());
        assert!(matches!(t.on_crash(None), Decision::GiveUp { .. }));
    }
}
