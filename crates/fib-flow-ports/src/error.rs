//! The ports' one error type.

use chrono::{DateTime, Utc};
use fib_flow_domain::{DomainError, TaskId};

/// Errors crossing the port boundary.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// No task with this id.
    #[error("task {0} not found")]
    NotFound(TaskId),
    /// A fenced write by an attempt that no longer owns the task (timed out, recovered,
    /// paused, cancelled or re-claimed meanwhile).
    #[error("task {task_id}: attempt {attempt} no longer owns the task; the write was rejected")]
    Stale {
        /// The task.
        task_id: TaskId,
        /// The stale attempt.
        attempt: i32,
    },
    /// The domain rejected the input or the transition.
    #[error(transparent)]
    Rejected(#[from] DomainError),
    /// The attempt's deadline has passed (`check_timeout`).
    #[error("task {task_id}: task execution timeout (deadline {deadline})")]
    DeadlineExceeded {
        /// The task.
        task_id: TaskId,
        /// The attempt's deadline.
        deadline: DateTime<Utc>,
    },
    /// The database could not be reached or the operation hit a transient fault (connection
    /// lost, pool timeout, deadlock, serialization failure); retrying may succeed.
    #[error("{backend}: transient database fault: {message}")]
    Unavailable {
        /// Backend name.
        backend: &'static str,
        /// The backend's error text.
        message: String,
    },
    /// Any other database error.
    #[error("{backend}: database error: {message}")]
    Database {
        /// Backend name.
        backend: &'static str,
        /// The backend's error text.
        message: String,
    },
    /// The store was misconfigured (bad URL, failed migration).
    #[error("storage configuration: {0}")]
    Config(String),
}

impl PortError {
    /// Whether retrying the same call may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, PortError::Unavailable { .. })
    }
}
