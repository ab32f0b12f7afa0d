//! Exponential backoff with a cap and jitter, computed from a `RetryPolicy`. Shared by the
//! relay (reconnecting, re-publishing) and the consumer (re-delivering).

use std::time::Duration;

use rand::RngExt;
use tokio_util::sync::CancellationToken;

use crate::api::retry_policy::{Jitter, RetryPolicySpec};

/// The waits of one retry sequence.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    multiplier: f64,
    max: Duration,
    jitter: Jitter,
    attempt: u32,
    previous: Duration,
}

impl Backoff {
    pub fn new(policy: &RetryPolicySpec) -> Self {
        Self {
            initial: policy.initial_backoff.as_std(),
            multiplier: policy.multiplier.max(1.0),
            max: policy
                .max_backoff
                .as_std()
                .max(policy.initial_backoff.as_std()),
            jitter: policy.jitter,
            attempt: 0,
            previous: Duration::ZERO,
        }
    }

    /// The computed (un-jittered) backoff before retry number `retry` (1 = the first retry):
    /// `initial * multiplier^(retry-1)`, capped at `max`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = self
            .multiplier
            .powi(retry.saturating_sub(1).min(1000) as i32);
        let seconds = (self.initial.as_secs_f64() * factor).min(self.max.as_secs_f64());
        Duration::from_secs_f64(seconds)
    }

    /// The wait before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self.ceiling(self.attempt);
        let mut rng = rand::rng();
        let delay = match self.jitter {
            Jitter::None => ceiling,
            Jitter::Full => ceiling.mul_f64(rng.random_range(0.0..=1.0)),
            Jitter::Equal => ceiling / 2 + (ceiling / 2).mul_f64(rng.random_range(0.0..=1.0)),
            Jitter::Decorrelated => {
                let low = self.initial.as_secs_f64();
                let high = (self.previous.as_secs_f64() * 3.0).max(low);
                Duration::from_secs_f64(rng.random_range(low..=high)).min(self.max)
            }
        };
        self.previous = delay;
        delay
    }

    /// The wait before retry number `retry` (1 = the first retry) of a message whose earlier
    /// waits are not known here (they were spent at the broker, maybe by another replica): for
    /// decorrelated jitter the previous wait is taken as the previous ceiling.
    pub fn delay_for(&self, retry: u32) -> Duration {
        let mut backoff = self.clone();
        backoff.attempt = retry.saturating_sub(1);
        backoff.previous = if retry > 1 {
            self.ceiling(retry - 1)
        } else {
            Duration::ZERO
        };
        backoff.next_delay()
    }

    /// The longest wait this policy allows.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// Retries so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.previous = Duration::ZERO;
    }
}

/// Sleeps for a backoff (or a poll interval); `false` when `shutdown` came first.
pub async fn sleep_or_stop(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = shutdown.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Duration as ApiDuration;

    fn policy(jitter: Jitter) -> RetryPolicySpec {
        RetryPolicySpec {
            initial_backoff: ApiDuration::from_millis(100),
            multiplier: 2.0,
            max_backoff: ApiDuration::from_secs(1),
            jitter,
            ..RetryPolicySpec::default()
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_without_jitter() {
        let mut backoff = Backoff::new(&policy(Jitter::None));
        let delays: Vec<u128> = (0..6).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn delays_for_a_given_retry_follow_the_same_bounds() {
        let backoff = Backoff::new(&policy(Jitter::None));
        let delays: Vec<u128> = (1..=6)
            .map(|retry| backoff.delay_for(retry).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        let equal = Backoff::new(&policy(Jitter::Equal));
        for retry in 1..=10 {
            let (delay, ceiling) = (equal.delay_for(retry), equal.ceiling(retry));
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{retry}: {delay:?}"
            );
        }
    }

    #[test]
    fn jittered_delays_stay_within_their_bounds() {
        for jitter in [Jitter::Full, Jitter::Equal, Jitter::Decorrelated] {
            let mut backoff = Backoff::new(&policy(jitter));
            for retry in 1..=50 {
                let ceiling = backoff.ceiling(retry);
                let delay = backoff.next_delay();
                match jitter {
                    Jitter::Full => assert!(delay <= ceiling, "{jitter:?} {delay:?} > {ceiling:?}"),
                    Jitter::Equal => assert!(
                        delay >= ceiling / 2 && delay <= ceiling,
                        "{jitter:?} {delay:?}"
                    ),
                    _ => assert!(
                        delay >= Duration::from_millis(100) && delay <= Duration::from_secs(1),
                        "{jitter:?} {delay:?}"
                    ),
                }
            }
        }
    }
}
