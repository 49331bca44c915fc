//! The fib-flow engine.
//!
//! Owns: the handler registry (hot reload: a running attempt keeps the handler it started
//! with), task submission (`enqueue`, `enqueue_many`, `cron`, with option resolution instance >
//! handler > global), the claim loop (pause gate, global and per-handler concurrency, batched
//! claims, idle polling cut short by wake-ups, back-off on store errors), executions (each
//! handler in its own tokio task; panics, deadlines and cancellation turned into fenced
//! outcome writes), maintenance (heartbeats, the expiry sweep, automatic retention), task
//! control (`pause_task`, `resume_task`, `cancel_task`, `retry_task`), the change signal
//! status waiters listen to (`Engine::task_changes`) and graceful `stop` (drain, then
//! release). It also provides the two clocks ([`clock::SystemClock`], [`clock::ManualClock`]).
//!
//! Must not: depend on a storage adapter or a database crate — only on the ports
//! (`fib-flow-ports`) and the domain (`fib-flow-domain`); decide state transitions (the
//! domain's state machine does, the store persists them); read the system time or sleep
//! outside [`clock::SystemClock`] (every instant and timed wait goes through the
//! [`fib_flow_ports::Clock`] port, so tests drive time by hand; the one exception is the
//! back-off after store faults, on the wall clock on purpose so that recovery never waits for
//! scheduling time to move); print (logs go through `tracing`).

mod cancel;
mod claim_loop;
pub mod clock;
mod control;
mod engine;
mod error;
mod execution;
mod handlers;
mod lease;
mod lifecycle;
mod maintenance;
pub mod metrics;
mod registry;
mod slot;
mod store_faults;
mod submit;
mod wakeups;
mod writer;

pub use engine::{Engine, ManagerState};
pub use error::RuntimeError;
pub use handlers::TaskInfo;
pub use maintenance::SweepReport;

#[cfg(test)]
mod tests;
