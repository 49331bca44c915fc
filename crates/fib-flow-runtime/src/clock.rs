//! The two clocks: [`SystemClock`] for production and [`ManualClock`] for tests.
//!
//! The engine reads every instant and performs every timed wait through the
//! [`Clock`] port; these are the only places in the crate that touch real time.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fib_flow_domain::time;
use fib_flow_ports::Clock;
use tokio::sync::watch;

/// The wall clock: `Utc::now()` and tokio timers.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    async fn sleep_until(&self, deadline: DateTime<Utc>) {
        // Re-check after each sleep: a wall-clock adjustment can make the first sleep end
        // early, and the contract is "resolves once now() has reached the deadline".
        loop {
            let remaining = deadline - Utc::now();
            match remaining.to_std() {
                Ok(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
                _ => return,
            }
        }
    }
}

/// A clock that only moves when told to (`advance`, `set`).
///
/// `sleep_until` resolves as soon as the manual time reaches the deadline, so tests drive
/// deadlines, retries, polling and maintenance cadences without wall-clock sleeps.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock {
            now: watch::Sender::new(start),
        }
    }

    /// The current manual time (also available through [`Clock::now`]; inherent so callers
    /// need not import the trait).
    pub fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    /// Moves time forward by `by`, waking every sleeper whose deadline is reached.
    pub fn advance(&self, by: Duration) {
        self.now.send_modify(|now| *now = time::add(*now, by));
    }

    /// Sets the time (forwards or backwards), waking every sleeper whose deadline is reached.
    pub fn set(&self, instant: DateTime<Utc>) {
        self.now.send_replace(instant);
    }

    /// How many `sleep_until` calls are currently waiting. Tests use it to know that the
    /// engine has reached a timed wait before they move time.
    pub fn sleepers(&self) -> usize {
        self.now.receiver_count()
    }
}

impl Default for ManualClock {
    /// A clock reading the Unix epoch.
    fn default() -> Self {
        ManualClock::new(DateTime::<Utc>::UNIX_EPOCH)
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        ManualClock::now(self)
    }

    async fn sleep_until(&self, deadline: DateTime<Utc>) {
        let mut receiver = self.now.subscribe();
        // The sender lives as long as `self`, which outlives this borrow, so `wait_for` can
        // only fail if the clock is dropped mid-wait; either way there is nothing to wait for.
        let _ = receiver.wait_for(|now| *now >= deadline).await;
    }
}
