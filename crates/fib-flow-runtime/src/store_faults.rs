//! Retrying transient store faults, for executions and the outcome writer alike: a back-off
//! doubling from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`], for as long as the attempts involved can
//! still be ours (`task_heartbeat_timeout`: after that any live worker's sweep may expire them),
//! never a fixed number of tries.
//!
//! The back-off waits on the wall clock on purpose, like the claim loop's fault back-off:
//! recovering from a database fault must not depend on the injected scheduling clock moving.

use std::future::Future;
use std::time::Duration;

use fib_flow_ports::PortError;

/// First back-off after a transient fault.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest back-off between two tries.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Calls `call` until it succeeds, fails permanently, or has failed transiently for
/// `give_up_after`; returns the last result. `what` names the call in the logs.
pub(crate) async fn retry_transient<T, F, Fut>(
    what: &str,
    give_up_after: Duration,
    mut call: F,
) -> Result<T, PortError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, PortError>>,
{
    let started = tokio::time::Instant::now();
    let mut backoff = FIRST_BACKOFF;
    let mut tries: u32 = 1;
    loop {
        match call().await {
            Err(error) if error.is_transient() && started.elapsed() < give_up_after => {
                tracing::warn!(
                    %error,
                    tries,
                    retry_in_ms = backoff.as_millis() as u64,
                    "transient store error on {what}; retrying"
                );
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
                tries += 1;
            }
            other => return other,
        }
    }
}
