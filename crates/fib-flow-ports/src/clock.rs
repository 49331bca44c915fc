//! The clock port: every instant and every timed wait of the runtime goes through it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// Source of the current instant and of timed waits.
///
/// The runtime never reads the system time or sleeps directly, so tests can use a manual clock
/// and move time forward explicitly.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;

    /// Resolves once [`Clock::now`] has reached `deadline` (at once if it already has).
    async fn sleep_until(&self, deadline: DateTime<Utc>);
}
