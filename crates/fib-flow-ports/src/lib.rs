//! The ports of fib-flow: the async traits the runtime is written against.
//!
//! Owns: [`TaskStore`] (everything persisted: tasks, attempts, events, claims, guarded
//! transitions, queries, retention, the worker registry), [`Clock`] (the current instant and timed waits, so tests can
//! drive time by hand), the handler contract ([`TaskHandler`], [`TaskHandle`], [`Outcome`]) and
//! [`PortError`]. Mocks of the traits (mockall) are behind the `mocks` feature.
//!
//! Must not: implement storage or scheduling. Adapters (fib-flow-sql and its backend crates) implement the store;
//! the runtime drives it. Depends only on the domain crate.

mod clock;
mod error;
mod handle;
mod store;

pub use clock::Clock;
pub use error::{ConnectErrorKind, PortError};
pub use handle::{
    HandlerError, HandlerResult, Job, Outcome, Permanent, Spawn, Suspension, TaskHandle,
    TaskHandler, is_permanent, permanent,
};
pub use store::{
    BatchCommand, ClaimName, ClaimRequest, CronChange, Enqueued, Expiry, QueueCap, Recovery,
    RetentionReport, RetentionRun, RetiredWorkers, SpawnRequest, TaskStore, WorkerRegistration,
};

#[cfg(feature = "mocks")]
pub use clock::MockClock;
#[cfg(feature = "mocks")]
pub use handle::MockTaskHandler;
#[cfg(feature = "mocks")]
pub use store::MockTaskStore;
