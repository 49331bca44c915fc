//! The pure domain of fib-flow.
//!
//! Owns: the task model and its statuses, the task state machine (a pure function from a task
//! snapshot, a command and the current instant to a new snapshot plus the attempt and audit rows
//! the transition produces), option resolution and validation, the task retry policy, query filter shapes, handler
//! audit/progress validation, cron schedules and the size limits every backend shares.
//!
//! Must not: perform I/O, depend on an async runtime, a database crate, or any other fib-flow
//! crate. Every other crate depends on this one; it depends on none of ours.

pub mod cron;
pub mod error;
pub mod event;
pub mod limits;
pub mod machine;
mod machine_rules;
pub mod model;
pub mod options;
pub mod progress;
pub mod query;
pub mod retry;
pub mod schedule;
pub mod serde_units;
pub mod time;
pub mod worker;

pub use cron::CronSchedule;
pub use error::DomainError;
pub use event::{
    AttemptChange, AttemptClose, EventType, NewAttempt, NewEvent, TaskAttempt, TaskEvent,
};
pub use machine::{ChildSettlement, Command, ExpiryKind, ParentEffect, Transition, apply};
pub use model::{
    AttemptOutcome, ChildFailurePolicy, ChildResult, ChildSpec, NewTask, RetryBackoff, Task,
    TaskId, TaskStatus, TaskType,
};
pub use options::{
    HandlerOptions, ManagerOptions, RetentionConfig, RetentionPolicy, TaskDefaults, TaskOptions,
};
pub use retry::RetryPolicy;
pub use worker::{Worker, WorkerQuery, WorkerStatus};
