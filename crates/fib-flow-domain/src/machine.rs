//! The task state machine: `apply(task, command, now)` → a [`Transition`] (new snapshot, the
//! attempt row it opens or closes, the audit events it writes, and what it means for a parent),
//! or a typed error for an illegal transition.
//!
//! Storage adapters persist a transition in one transaction, guarded by [`Transition::guard`]
//! (the row must still have the status and attempt number it had when it was read), so the
//! rules live here once and every backend enforces them identically.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::error::DomainError;
use crate::event::{AttemptChange, NewEvent};
use crate::model::{ChildFailurePolicy, Task, TaskId, TaskStatus};

/// Why a sweep expires a running attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryKind {
    /// `deadline` (start + timeout) passed: `timeout_type: total`.
    Deadline,
    /// No heartbeat within `task_heartbeat_timeout`: `timeout_type: heartbeat`.
    Heartbeat,
}

/// A child of a parent's round reached a settled state (completed or permanently failed).
///
/// A round is identified by the parent's attempt number when it returned `next()`: unique and
/// increasing (only a claim changes it), unlike the stage, which goes back to 0 on retry,
/// release and restart.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildSettlement {
    /// The child.
    pub child_id: TaskId,
    /// The round the child belongs to: the parent's attempt number when it returned `next()`
    /// (the child's `parent_round`). The settlement counts only while the parent is suspended
    /// awaiting children and its attempt is still this one; otherwise it is a no-op.
    pub round: i32,
    /// Whether the child failed permanently.
    pub failed: bool,
    /// Children of that round not yet settled, this one excluded.
    pub outstanding: i32,
}

/// Something that may change a task's state.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A worker claims a due pending task.
    Claim {
        /// The claiming worker.
        worker_id: String,
    },
    /// The handler of attempt `attempt` returned a value.
    Complete {
        /// Fence: the attempt that produced the result.
        attempt: i32,
        /// The result, stored as given (JSON null, 0, false and "" survive).
        result: Value,
    },
    /// The handler of attempt `attempt` failed.
    Fail {
        /// Fence.
        attempt: i32,
        /// Error text.
        error: String,
        /// The attempt failed because its deadline passed (local enforcement or `check_timeout`).
        timed_out: bool,
        /// A number in `[0, 1)` used for exponential back-off jitter.
        jitter: f64,
    },
    /// The handler of attempt `attempt` failed with an error that no retry can fix
    /// (`fib_flow::permanent`): straight to the exhausted state, whatever attempts remain.
    FailPermanently {
        /// Fence.
        attempt: i32,
        /// Error text.
        error: String,
    },
    /// The handler of attempt `attempt` asked to run again after `delay`: back to `pending`
    /// at `now + delay`, stage and context kept, no retry used.
    Snooze {
        /// Fence.
        attempt: i32,
        /// How long to wait.
        delay: std::time::Duration,
    },
    /// `retry_task`: a `permanently_failed` or `paused` task back to `pending` now, with a
    /// fresh retry budget, from stage 0.
    Retry {
        /// Reason recorded in the event.
        reason: Option<String>,
    },
    /// A sweep found attempt `attempt` past its deadline or without heartbeat.
    Expire {
        /// Fence.
        attempt: i32,
        /// Which limit was exceeded.
        kind: ExpiryKind,
        /// Jitter as in `Fail`.
        jitter: f64,
    },
    /// The handler returned `next(children)`: the children (already inserted) are listed.
    AwaitChildren {
        /// Fence.
        attempt: i32,
        /// Ids of the children just inserted, in spec order.
        child_ids: Vec<TaskId>,
        /// Their names, in spec order.
        child_names: Vec<String>,
        /// New context bytes (`None` keeps the current context).
        context: Option<Vec<u8>>,
        /// What a child failure does to this parent.
        policy: ChildFailurePolicy,
    },
    /// The handler returned an explicit suspension.
    Suspend {
        /// Fence.
        attempt: i32,
        /// Why (non-empty after trimming).
        reason: String,
        /// Optional structured metadata.
        metadata: Option<Value>,
        /// New context bytes (`None` keeps the current context).
        context: Option<Vec<u8>>,
    },
    /// The worker gives the running attempt back (graceful stop, missing handler).
    Release {
        /// Fence.
        attempt: i32,
        /// Why, recorded as `recovery_reason` (e.g. `worker_stopping`, `handler_missing`).
        reason: String,
    },
    /// Another worker reclaims the attempt of a dead or superseded worker.
    Recover {
        /// Fence.
        attempt: i32,
        /// The recovering worker.
        by_worker_id: String,
        /// The recovering worker's pod.
        by_pod_id: Option<String>,
    },
    /// `pause_task`.
    Pause,
    /// `resume_task`.
    Resume {
        /// Reason recorded in the event.
        reason: Option<String>,
        /// For a parent awaiting children: children of its round (those whose `parent_round`
        /// is the parent's current attempt number) not yet settled.
        outstanding_children: i32,
    },
    /// `cancel_task`.
    Cancel {
        /// Reason, stored as the error (default `Task cancelled`).
        reason: Option<String>,
    },
    /// A child of this parent settled.
    ChildSettled(ChildSettlement),
}

impl Command {
    /// The command's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Claim { .. } => "claim",
            Command::Complete { .. } => "complete",
            Command::Fail { .. } => "fail",
            Command::FailPermanently { .. } => "fail_permanently",
            Command::Snooze { .. } => "snooze",
            Command::Retry { .. } => "retry_task",
            Command::Expire { .. } => "expire",
            Command::AwaitChildren { .. } => "await_children",
            Command::Suspend { .. } => "suspend",
            Command::Release { .. } => "release",
            Command::Recover { .. } => "recover",
            Command::Pause => "pause",
            Command::Resume { .. } => "resume",
            Command::Cancel { .. } => "cancel",
            Command::ChildSettled(_) => "child_settled",
        }
    }
}

/// The condition a guarded write checks: the row still has this status and attempt number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    /// Status when read.
    pub status: TaskStatus,
    /// Attempt number when read.
    pub attempt: i32,
}

/// A settled child to report to its parent in the same transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentEffect {
    /// The parent.
    pub parent_id: TaskId,
    /// The child.
    pub child_id: TaskId,
    /// The round the child belongs to: its `parent_round` (the parent's attempt number when
    /// it created the child), 0 when unset.
    pub round: i32,
    /// Whether the child failed permanently.
    pub failed: bool,
}

/// The result of applying a command.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// What the stored row must still match.
    pub guard: Guard,
    /// The new snapshot to write.
    pub task: Task,
    /// The attempt row to open or close.
    pub attempt: Option<AttemptChange>,
    /// Events to insert, in order.
    pub events: Vec<NewEvent>,
    /// A child settlement to apply to the parent, in the same transaction.
    pub parent: Option<ParentEffect>,
}

impl Transition {
    /// Whether nothing needs writing (e.g. a child settling against a parent that moved on).
    pub fn is_noop(&self, before: &Task) -> bool {
        self.attempt.is_none() && self.events.is_empty() && self.task == *before
    }
}

/// Applies `command` to `task` at `now`.
pub fn apply(task: &Task, command: Command, now: DateTime<Utc>) -> Result<Transition, DomainError> {
    crate::machine_rules::apply(task, command, now)
}
