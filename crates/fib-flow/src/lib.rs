//! # fib-flow
//!
//! A durable, database-backed task scheduler and workflow engine. Register handlers by name,
//! submit one-off (`enqueue`) and recurring (`cron`) tasks, and let any number of worker
//! processes — one laptop with embedded SQLite, or a fleet sharing PostgreSQL or MySQL — claim
//! and run them with priorities, delays, retries, timeouts, heartbeats, parent/child workflows,
//! human-in-the-loop suspension and a persisted audit trail.
//!
//! ```
//! use fib_flow::{json, ManagerOptions, TaskManager, TaskOptions, TaskStatus};
//!
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), fib_flow::Error> {
//! let manager = TaskManager::new(ManagerOptions::new("sqlite::memory:")).await?;
//! manager.setup().await?; // runs the embedded migrations (idempotent)
//! manager.register("greet", |task: fib_flow::TaskHandle| async move {
//!     let who = task.payload()["who"].as_str().unwrap_or("world").to_owned();
//!     Ok::<fib_flow::Outcome, fib_flow::HandlerError>(json!({ "greeting": format!("hello {who}") }).into())
//! })?;
//! let id = manager.enqueue("greet", json!({ "who": "rust" }), TaskOptions::default()).await?;
//! manager.start().await?;
//! let task = manager.wait_for_status(id, &[TaskStatus::Completed], std::time::Duration::from_secs(10)).await?;
//! assert_eq!(task.result, Some(json!({ "greeting": "hello rust" })));
//! manager.stop().await?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Cargo features
//! - `sqlite` (default): embedded SQLite (`sqlite::memory:`, `sqlite:PATH`, `sqlite://PATH`).
//! - `postgres`: PostgreSQL (`postgres://`, `postgresql://`, `psql://`), with LISTEN/NOTIFY wake-ups.
//! - `mysql`: MySQL 8 / MariaDB ≥ 10.6 (`mysql://`).
//!
//! This crate owns the user-facing `TaskManager` and re-exports; it holds no scheduling logic
//! (fib-flow-runtime), no SQL (fib-flow-sql and the backend crates) and no audit aggregation
//! (fib-flow-audit). It is the one place that maps a database URL to a backend crate.

mod caller;
mod connect;
pub mod error;
mod manager;
pub mod testing;

/// The README's code blocks, compiled (and the quick start type-checked) by `cargo test`.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeSnippets;

/// What a service that runs tasks usually needs: `use fib_flow::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Error, ErrorKind, HandlerError, HandlerOptions, Job, ManagerOptions, Outcome, RetryPolicy,
        TaskHandle, TaskId, TaskManager, TaskOptions, TaskStatus, Value, json, permanent,
    };
}

pub use caller::CallerConnection;
pub use error::{Error, ErrorKind, Result};
pub use manager::TaskManager;

pub use fib_flow_audit::{
    Audit, TaskAudit, TaskAuditOptions, WorkflowAudit, WorkflowAuditOptions, WorkflowSummary,
};
pub use fib_flow_domain::progress::{Checkpoint, Progress};
pub use fib_flow_domain::query::{
    AttemptQuery, DeleteFilter, EventQuery, Order, Page, PageRequest, TagStat, TaskQuery,
};
pub use fib_flow_domain::{
    AttemptOutcome, ChildFailurePolicy, ChildResult, ChildSpec, EventType, HandlerOptions,
    ManagerOptions, RetentionConfig, RetentionPolicy, RetryBackoff, RetryPolicy, Task, TaskAttempt,
    TaskEvent, TaskId, TaskOptions, TaskStatus, TaskType, Worker, WorkerQuery, WorkerStatus,
};
pub use fib_flow_ports::{
    Clock, CronChange, Enqueued, HandlerError, HandlerResult, Job, Outcome, Permanent,
    RetentionReport, Spawn, Suspension, TaskHandle, TaskHandler, is_permanent, permanent,
};
pub use fib_flow_runtime::clock::{ManualClock, SystemClock};
pub use fib_flow_runtime::{ManagerState, SweepReport, TaskInfo};
pub use serde_json::{Value, json};

/// Resolves on the first SIGTERM (Unix) or ctrl-c: the signals a deployment stops a process
/// with. [`TaskManager::run_until_shutdown`] waits on it; use it directly to stop other parts
/// of a service on the same signal.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for ctrl-c; waiting for SIGTERM only");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; waiting for ctrl-c only");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// The adapter-author API: the storage port ([`TaskStore`](storage::TaskStore)) and its error,
/// opening a store from a URL (for [`TaskManager::from_store`]), and database creation for
/// isolated test runs. A service that only runs tasks needs none of it.
pub mod storage {
    pub use crate::connect::{connect, create_database, drop_database};
    pub use fib_flow_ports::{ConnectErrorKind, PortError, TaskStore};
    pub use fib_flow_sql::StoreConfig;
}
