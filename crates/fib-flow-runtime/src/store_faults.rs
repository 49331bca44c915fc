//! Back-off after store faults, built on `backon`: one doubling schedule, used in two ways.
//!
//! - [`retry_transient`] retries one call (an execution's fenced writes, the outcome writer's
//!   batches) from [`CALL_FIRST_BACKOFF`] up to [`CALL_MAX_BACKOFF`], for as long as the
//!   attempts involved can still be ours (`task_heartbeat_timeout`: after that any live
//!   worker's sweep may expire them), never a fixed number of tries.
//! - [`LoopBackoff`] spaces the rounds of the claim and lease loops after consecutive
//!   failures, from `min(interval, LOOP_FIRST_BACKOFF)` up to [`LOOP_MAX_BACKOFF`]; those
//!   loops never give up.
//!
//! Every back-off waits on the wall clock on purpose: recovering from a database fault must not
//! depend on the injected scheduling clock moving (a manual clock in tests, or one that stands
//! still).

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder, Retryable};
use fib_flow_ports::PortError;

/// First back-off of a call after a transient fault.
const CALL_FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest back-off between two tries of a call.
const CALL_MAX_BACKOFF: Duration = Duration::from_secs(2);
/// First back-off of a loop after a fault, when its own interval is longer.
const LOOP_FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest back-off of a loop.
const LOOP_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Delays doubling from `first` up to `max`, without jitter and without end.
fn doubling(first: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(max)
        .with_factor(2.0)
        .without_max_times()
}

/// Calls `call` until it succeeds, fails permanently, or has failed transiently for
/// `give_up_after`; returns the last result. `what` names the call in the logs.
pub(crate) async fn retry_transient<T, F, Fut>(
    what: &str,
    give_up_after: Duration,
    call: F,
) -> Result<T, PortError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, PortError>>,
{
    let started = tokio::time::Instant::now();
    let mut tries: u32 = 1;
    call.retry(doubling(CALL_FIRST_BACKOFF, CALL_MAX_BACKOFF))
        .sleep(tokio::time::sleep)
        .when(|error: &PortError| error.is_transient() && started.elapsed() < give_up_after)
        .notify(|error: &PortError, backoff: Duration| {
            tracing::warn!(
                %error,
                tries,
                retry_in_ms = backoff.as_millis() as u64,
                "transient store error on {what}; retrying"
            );
            tries += 1;
        })
        .await
}

/// The back-off of a loop that keeps going after store faults: [`LoopBackoff::after_failure`]
/// gives the next wait, [`LoopBackoff::reset`] starts over after a success.
///
/// The first wait is `min(interval, 250 ms)`, not `interval` itself: that is the idle cadence,
/// and a worker that polls rarely (or relies on NOTIFY) must still come back within seconds
/// after a database restart.
pub(crate) struct LoopBackoff {
    schedule: ExponentialBuilder,
    current: Option<ExponentialBackoff>,
}

impl LoopBackoff {
    /// The back-off of a loop whose normal cadence is `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        LoopBackoff {
            schedule: doubling(interval.min(LOOP_FIRST_BACKOFF), LOOP_MAX_BACKOFF),
            current: None,
        }
    }

    /// The wait after one more consecutive failure.
    pub(crate) fn after_failure(&mut self) -> Duration {
        let schedule = self.schedule;
        self.current
            .get_or_insert_with(|| schedule.build())
            .next()
            .unwrap_or(LOOP_MAX_BACKOFF)
    }

    /// A success: the next failure waits the first back-off again.
    pub(crate) fn reset(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waits(backoff: &mut LoopBackoff, failures: usize) -> Vec<Duration> {
        (0..failures).map(|_| backoff.after_failure()).collect()
    }

    /// Whole milliseconds: the schedule multiplies in floating point.
    fn millis(waits: &[Duration]) -> Vec<u128> {
        waits
            .iter()
            .map(|wait| wait.as_micros().div_ceil(1000))
            .collect()
    }

    #[test]
    fn the_loop_back_off_doubles_from_the_poll_interval_and_caps() {
        let mut backoff = LoopBackoff::new(Duration::from_millis(100));
        let first = waits(&mut backoff, 4);
        assert_eq!(millis(&first), [100, 200, 400, 800]);
        let later = waits(&mut backoff, 40);
        assert_eq!(later.last(), Some(&LOOP_MAX_BACKOFF));
        assert!(later.iter().all(|wait| *wait <= LOOP_MAX_BACKOFF));
    }

    #[test]
    fn a_slow_poll_does_not_slow_fault_recovery() {
        let mut backoff = LoopBackoff::new(Duration::from_secs(120));
        assert_eq!(millis(&waits(&mut backoff, 3)), [250, 500, 1000]);
    }

    #[test]
    fn a_success_starts_the_loop_back_off_over() {
        let mut backoff = LoopBackoff::new(Duration::from_millis(100));
        waits(&mut backoff, 5);
        backoff.reset();
        assert_eq!(millis(&waits(&mut backoff, 2)), [100, 200]);
    }

    fn unavailable() -> PortError {
        PortError::Unavailable {
            backend: "test",
            message: "connection refused".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_fault_is_retried_until_the_call_succeeds() {
        let mut calls = 0;
        let result = retry_transient("a test call", Duration::from_secs(30), || {
            calls += 1;
            let outcome = if calls < 4 {
                Err(unavailable())
            } else {
                Ok(calls)
            };
            async move { outcome }
        })
        .await;
        assert_eq!(result.ok(), Some(4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_fault_is_returned_at_once() {
        let mut calls = 0;
        let result: Result<(), PortError> =
            retry_transient("a test call", Duration::from_secs(30), || {
                calls += 1;
                async { Err(PortError::Config("bad credentials".into())) }
            })
            .await;
        assert!(matches!(result, Err(PortError::Config(_))));
        assert_eq!(calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_faults_are_given_up_on_after_the_limit() {
        let started = tokio::time::Instant::now();
        let mut calls = 0;
        let result: Result<(), PortError> =
            retry_transient("a test call", Duration::from_secs(5), || {
                calls += 1;
                async { Err(unavailable()) }
            })
            .await;
        assert!(matches!(result, Err(PortError::Unavailable { .. })));
        // 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 2 s of back-off pass the 5 s limit.
        assert_eq!(calls, 7);
        assert!(started.elapsed() >= Duration::from_secs(5));
    }
}
