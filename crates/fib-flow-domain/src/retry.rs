//! The task retry policy: how many attempts a task gets in all and how long it waits before
//! each retry. One value for what the options `max_retries`, `retry_interval` and
//! `retry_backoff` say together; option resolution produces it and the state machine applies
//! it when an attempt fails.

use std::time::Duration;

use crate::model::RetryBackoff;

/// How a task is retried after a failed attempt.
///
/// ```
/// use std::time::Duration;
/// use fib_flow_domain::retry::RetryPolicy;
///
/// let policy = RetryPolicy::exponential(5, Duration::from_secs(2));
/// assert!(policy.retries_after(3)); // the 4th attempt (retry_count 3) may fail and be retried
/// assert!(!policy.retries_after(4)); // the 5th is the last
/// assert_eq!(policy.delay(1, 0.0), Duration::from_secs(2));
/// assert_eq!(policy.delay(3, 0.0), Duration::from_secs(8));
/// assert_eq!(policy.delay(3, 0.5), Duration::from_secs(6)); // jitter takes off up to half
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first included (the `max_retries` option); 0 behaves like 1.
    pub max_attempts: u32,
    /// The delay before a retry (`retry_interval`): every retry's with
    /// [`RetryBackoff::Fixed`], the first one's with [`RetryBackoff::Exponential`] (zero there
    /// means [`RetryPolicy::DEFAULT_EXPONENTIAL_BASE`]).
    pub interval: Duration,
    /// Whether the delay stays fixed or doubles with each retry.
    pub backoff: RetryBackoff,
}

impl Default for RetryPolicy {
    /// The reference's defaults: 3 attempts, retried at once (`retry_interval` 0), fixed.
    fn default() -> Self {
        RetryPolicy::fixed(3, Duration::ZERO)
    }
}

impl RetryPolicy {
    /// Longest delay exponential back-off reaches.
    pub const MAX_EXPONENTIAL_DELAY: Duration = Duration::from_secs(3600);

    /// The base of exponential back-off when `interval` is zero (its default): 5 s, 10 s,
    /// 20 s, … Without it, exponential back-off with no interval would retry at once, every
    /// time.
    pub const DEFAULT_EXPONENTIAL_BASE: Duration = Duration::from_secs(5);

    /// `max_attempts` in all, each retry `interval` after the failure.
    pub fn fixed(max_attempts: u32, interval: Duration) -> Self {
        RetryPolicy {
            max_attempts,
            interval,
            backoff: RetryBackoff::Fixed,
        }
    }

    /// `max_attempts` in all, retry n waiting `base × 2^(n−1)` (capped at
    /// [`RetryPolicy::MAX_EXPONENTIAL_DELAY`]) minus up to half of it as jitter.
    pub fn exponential(max_attempts: u32, base: Duration) -> Self {
        RetryPolicy {
            max_attempts,
            interval: base,
            backoff: RetryBackoff::Exponential,
        }
    }

    /// Whether a failure of the attempt with this `retry_count` (0 for the first attempt,
    /// 1 for the first retry, …) is followed by a retry: while `retry_count + 1 <
    /// max_attempts`.
    pub fn retries_after(&self, retry_count: u32) -> bool {
        u64::from(retry_count) + 1 < u64::from(self.max_attempts)
    }

    /// The delay before retry number `retry` (1 for the first retry; 0 is read as 1).
    ///
    /// `jitter` is a number in `[0, 1)` drawn per failure; exponential back-off takes
    /// `jitter × 50 %` off the delay so that a burst of failures does not retry in lockstep
    /// (fixed back-off ignores it). A value outside `[0, 1]`, or not a number, is clamped
    /// rather than trusted, so the delay stays within half and all of the un-jittered one.
    ///
    /// Rounded up to whole milliseconds, the precision storage keeps, so a scheduled instant
    /// survives a round trip unchanged.
    pub fn delay(&self, retry: u32, jitter: f64) -> Duration {
        let delay = match self.backoff {
            RetryBackoff::Fixed => self.interval,
            RetryBackoff::Exponential => {
                let mut grown = if self.interval.is_zero() {
                    Self::DEFAULT_EXPONENTIAL_BASE
                } else {
                    self.interval
                };
                for _ in 1..retry.max(1) {
                    if grown >= Self::MAX_EXPONENTIAL_DELAY {
                        break;
                    }
                    grown = grown.saturating_mul(2);
                }
                let capped = grown.min(Self::MAX_EXPONENTIAL_DELAY);
                let jitter = if jitter.is_finite() {
                    jitter.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let factor = 1.0 - 0.5 * jitter;
                Duration::try_from_secs_f64(capped.as_secs_f64() * factor).unwrap_or(capped)
            }
        };
        crate::time::millis_duration(crate::time::duration_millis(delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_default_is_the_references() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.max_attempts, 3);
        assert_eq!(policy.interval, Duration::ZERO);
        assert_eq!(policy.backoff, RetryBackoff::Fixed);
        assert_eq!(policy.delay(1, 0.7), Duration::ZERO);
    }

    #[test]
    fn max_attempts_counts_the_first_attempt() {
        let three = RetryPolicy::fixed(3, Duration::ZERO);
        assert!(three.retries_after(0));
        assert!(three.retries_after(1));
        assert!(!three.retries_after(2), "the third failure is final");
        for one in [0, 1] {
            assert!(
                !RetryPolicy::fixed(one, Duration::ZERO).retries_after(0),
                "max_attempts {one} means exactly one attempt"
            );
        }
        assert!(RetryPolicy::fixed(u32::MAX, Duration::ZERO).retries_after(u32::MAX - 2));
        assert!(!RetryPolicy::fixed(u32::MAX, Duration::ZERO).retries_after(u32::MAX - 1));
    }

    #[test]
    fn fixed_back_off_waits_the_interval_every_time() {
        let policy = RetryPolicy::fixed(10, Duration::from_millis(1500));
        for retry in [0, 1, 2, 9, u32::MAX] {
            assert_eq!(policy.delay(retry, 0.9), Duration::from_millis(1500));
        }
    }

    #[test]
    fn exponential_back_off_doubles_from_its_base_and_caps_at_an_hour() {
        let policy = RetryPolicy::exponential(10, Duration::from_secs(1));
        assert_eq!(policy.delay(0, 0.0), Duration::from_secs(1));
        assert_eq!(policy.delay(1, 0.0), Duration::from_secs(1));
        assert_eq!(policy.delay(2, 0.0), Duration::from_secs(2));
        assert_eq!(policy.delay(5, 0.0), Duration::from_secs(16));
        assert_eq!(policy.delay(13, 0.0), RetryPolicy::MAX_EXPONENTIAL_DELAY);
        assert_eq!(
            policy.delay(u32::MAX, 0.0),
            RetryPolicy::MAX_EXPONENTIAL_DELAY
        );
    }

    #[test]
    fn exponential_back_off_without_an_interval_starts_at_five_seconds() {
        let policy = RetryPolicy::exponential(10, Duration::ZERO);
        assert_eq!(policy.delay(1, 0.0), Duration::from_secs(5));
        assert_eq!(policy.delay(2, 0.0), Duration::from_secs(10));
    }

    #[test]
    fn jitter_takes_off_up_to_half_and_out_of_range_jitter_is_clamped() {
        let policy = RetryPolicy::exponential(10, Duration::from_secs(10));
        assert_eq!(policy.delay(1, 0.5), Duration::from_millis(7500));
        assert_eq!(policy.delay(1, 1.0), Duration::from_secs(5));
        assert_eq!(policy.delay(1, 7.0), Duration::from_secs(5));
        assert_eq!(policy.delay(1, -3.0), Duration::from_secs(10));
        assert_eq!(policy.delay(1, f64::NAN), Duration::from_secs(10));
        assert_eq!(policy.delay(1, f64::INFINITY), Duration::from_secs(10));
    }

    #[test]
    fn delays_are_rounded_up_to_whole_milliseconds() {
        let policy = RetryPolicy::fixed(2, Duration::from_micros(2_500));
        assert_eq!(policy.delay(1, 0.0), Duration::from_millis(3));
        let policy = RetryPolicy::exponential(2, Duration::from_millis(10));
        assert_eq!(
            policy.delay(1, 0.33),
            Duration::from_millis(9),
            "8.35 ms stored as 9"
        );
    }

    proptest! {
        #[test]
        fn exponential_delays_grow_stay_capped_and_lose_at_most_half_to_jitter(
            base_ms in 0u64..7_200_000,
            retry in 0u32..64,
            jitter in 0.0f64..1.0,
        ) {
            let policy = RetryPolicy::exponential(100, Duration::from_millis(base_ms));
            let plain = policy.delay(retry, 0.0);
            let next = policy.delay(retry.saturating_add(1), 0.0);
            prop_assert!(plain <= next);
            prop_assert!(next <= RetryPolicy::MAX_EXPONENTIAL_DELAY);
            let base = if base_ms == 0 {
                RetryPolicy::DEFAULT_EXPONENTIAL_BASE
            } else {
                Duration::from_millis(base_ms)
            };
            prop_assert!(plain >= base.min(RetryPolicy::MAX_EXPONENTIAL_DELAY));
            let jittered = policy.delay(retry, jitter);
            prop_assert!(jittered <= plain);
            // Half the delay, give or take the millisecond rounding.
            prop_assert!(jittered + Duration::from_millis(1) >= plain / 2);
            prop_assert_eq!(jittered.subsec_nanos() % 1_000_000, 0);
        }

        #[test]
        fn fixed_delays_ignore_the_retry_number_and_the_jitter(
            interval_ms in 0u64..86_400_000,
            retry in any::<u32>(),
            jitter in any::<f64>(),
        ) {
            let interval = Duration::from_millis(interval_ms);
            prop_assert_eq!(RetryPolicy::fixed(3, interval).delay(retry, jitter), interval);
        }

        #[test]
        fn a_retry_follows_exactly_while_attempts_remain(
            max_attempts in any::<u32>(),
            retry_count in any::<u32>(),
        ) {
            let policy = RetryPolicy::fixed(max_attempts, Duration::ZERO);
            let attempt_number = u64::from(retry_count) + 1;
            prop_assert_eq!(
                policy.retries_after(retry_count),
                attempt_number < u64::from(max_attempts.max(1))
            );
        }
    }
}
