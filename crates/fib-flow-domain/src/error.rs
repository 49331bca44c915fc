//! The domain's one error type.

use crate::model::{TaskId, TaskStatus};

/// Every way domain input or a requested transition can be rejected.
///
/// Variants name the offending field and, where there is a closed set, the allowed values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DomainError {
    /// An option or argument is out of range or malformed.
    #[error("invalid option `{field}`: {reason}")]
    InvalidOption {
        /// The option's reference name (e.g. `max_concurrent_tasks`).
        field: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// A text or value is longer than fib-flow stores (identically on every backend; see
    /// [`crate::limits`]).
    #[error("`{field}` is {len} bytes long; at most {max} bytes are allowed")]
    TooLong {
        /// The field (e.g. `name`, `tag`, `worker_id`, `payload`, `result`).
        field: &'static str,
        /// Its length in bytes (serialized length for JSON).
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A JSON value is nested deeper than can be read back (serde_json's recursion limit).
    #[error(
        "`{field}` is nested {depth} levels deep; at most {max} levels of arrays/objects can be stored and read back"
    )]
    JsonTooDeep {
        /// The field (`payload`, `result`, `suspension.metadata`, …).
        field: &'static str,
        /// The value's nesting depth.
        depth: usize,
        /// The deepest nesting allowed for this field.
        max: usize,
    },
    /// A status string is not one of the eight statuses.
    #[error(
        "invalid status `{value}` for `{field}`: allowed values are pending, running, completed, failed, timeout, permanently_failed, paused, suspended"
    )]
    InvalidStatus {
        /// The field that carried the value.
        field: &'static str,
        /// The rejected value.
        value: String,
    },
    /// A task type string is neither `async` nor `cron`.
    #[error("invalid task type `{value}`: allowed values are async, cron")]
    InvalidTaskType {
        /// The rejected value.
        value: String,
    },
    /// A cron expression did not parse.
    #[error("invalid cron expression `{expr}`: {reason}")]
    InvalidCron {
        /// The rejected expression.
        expr: String,
        /// The parser's explanation.
        reason: String,
    },
    /// A time zone name is not an IANA zone.
    #[error("invalid option `timezone`: `{value}` is not an IANA time zone name")]
    InvalidTimezone {
        /// The rejected name.
        value: String,
    },
    /// The command is not allowed from the task's current status.
    #[error("task {task_id}: `{command}` is not allowed from status {from}")]
    IllegalTransition {
        /// The task.
        task_id: TaskId,
        /// The task's status when the command was applied.
        from: TaskStatus,
        /// The command's name.
        command: &'static str,
    },
    /// A fenced write names an attempt that is no longer the task's running attempt.
    #[error(
        "task {task_id}: attempt {attempt} no longer owns the task (current attempt {current_attempt}, status {status})"
    )]
    StaleAttempt {
        /// The task.
        task_id: TaskId,
        /// The attempt the writer holds.
        attempt: i32,
        /// The attempt the row holds.
        current_attempt: i32,
        /// The row's status.
        status: TaskStatus,
    },
    /// `resume_task` on a parent that still waits for its children.
    #[error(
        "task {task_id} is waiting for {outstanding} child task(s) and cannot be resumed by hand"
    )]
    AwaitingChildren {
        /// The parent task.
        task_id: TaskId,
        /// Children of the current round that have not settled.
        outstanding: i32,
    },
}
