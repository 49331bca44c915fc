//! The task model: ids, statuses, types, the task snapshot and what creates a task.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DomainError;
use crate::retry::RetryPolicy;
use crate::serde_units;

/// A task's id: the integer primary key of `fib_flow_tasks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub i64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<i64> for TaskId {
    fn from(value: i64) -> Self {
        TaskId(value)
    }
}

/// The eight task statuses, with the reference's exact strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting to be claimed once `next_run_time` is due.
    Pending,
    /// Claimed by a worker; an attempt is open.
    Running,
    /// An async task finished successfully (terminal).
    Completed,
    /// The attempt failed; recorded as a transition, resolved in the same transaction.
    Failed,
    /// The attempt overran its deadline or lost its heartbeat; resolved like `Failed`.
    Timeout,
    /// An async task exhausted its attempts or was cancelled (terminal).
    PermanentlyFailed,
    /// Paused by hand, or a cron task that exhausted its attempts; resumed only by hand.
    Paused,
    /// Waiting for child tasks or for a human (explicit suspension).
    Suspended,
}

impl TaskStatus {
    /// Every status, in declaration order.
    pub const ALL: [TaskStatus; 8] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Timeout,
        TaskStatus::PermanentlyFailed,
        TaskStatus::Paused,
        TaskStatus::Suspended,
    ];

    /// The reference's string for this status.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Timeout => "timeout",
            TaskStatus::PermanentlyFailed => "permanently_failed",
            TaskStatus::Paused => "paused",
            TaskStatus::Suspended => "suspended",
        }
    }

    /// Parses a status, naming `field` in the error.
    pub fn parse_field(value: &str, field: &'static str) -> Result<Self, DomainError> {
        TaskStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == value)
            .ok_or_else(|| DomainError::InvalidStatus {
                field,
                value: value.to_owned(),
            })
    }

    /// `completed` and `permanently_failed`: nothing moves a task out of these.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::PermanentlyFailed)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = DomainError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        TaskStatus::parse_field(value, "status")
    }
}

/// One-off (`async`) or recurring (`cron`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskType {
    /// Runs once (plus retries).
    Async,
    /// Runs on a cron schedule, rescheduled after each success.
    Cron,
}

impl TaskType {
    /// The reference's string.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::Async => "async",
            TaskType::Cron => "cron",
        }
    }
}

impl fmt::Display for TaskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskType {
    type Err = DomainError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "async" => Ok(TaskType::Async),
            "cron" => Ok(TaskType::Cron),
            other => Err(DomainError::InvalidTaskType {
                value: other.to_owned(),
            }),
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The handler returned a value (async completion or cron reschedule).
    Completed,
    /// The handler returned an error or panicked.
    Failed,
    /// The attempt's deadline passed or its heartbeat lapsed.
    Timeout,
    /// The handler suspended the task (children or explicit suspension).
    Suspended,
    /// `pause_task` on a running task.
    Paused,
    /// `resume_task` on a running task.
    Pending,
    /// Ownership was released (graceful stop, missing handler, worker recovery).
    Interrupted,
    /// `cancel_task` on a running task.
    Cancelled,
}

impl AttemptOutcome {
    /// Every outcome.
    pub const ALL: [AttemptOutcome; 8] = [
        AttemptOutcome::Completed,
        AttemptOutcome::Failed,
        AttemptOutcome::Timeout,
        AttemptOutcome::Suspended,
        AttemptOutcome::Paused,
        AttemptOutcome::Pending,
        AttemptOutcome::Interrupted,
        AttemptOutcome::Cancelled,
    ];

    /// The stored string.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Completed => "completed",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::Suspended => "suspended",
            AttemptOutcome::Paused => "paused",
            AttemptOutcome::Pending => "pending",
            AttemptOutcome::Interrupted => "interrupted",
            AttemptOutcome::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AttemptOutcome {
    type Err = DomainError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        AttemptOutcome::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == value)
            .ok_or_else(|| DomainError::InvalidOption {
                field: "outcome",
                reason: format!(
                    "`{value}` is not an attempt outcome; allowed values are completed, failed, timeout, suspended, paused, pending, interrupted, cancelled"
                ),
            })
    }
}

/// What a parent does when one of its children fails permanently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildFailurePolicy {
    /// The parent resumes once the round settles and sees the failure in `child_results`.
    #[default]
    Resume,
    /// The parent fails as soon as a child fails permanently (async → permanently_failed,
    /// cron → paused).
    FailParent,
}

impl ChildFailurePolicy {
    /// The stored string.
    pub fn as_str(self) -> &'static str {
        match self {
            ChildFailurePolicy::Resume => "resume",
            ChildFailurePolicy::FailParent => "fail_parent",
        }
    }
}

impl FromStr for ChildFailurePolicy {
    type Err = DomainError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "resume" => Ok(ChildFailurePolicy::Resume),
            "fail_parent" => Ok(ChildFailurePolicy::FailParent),
            other => Err(DomainError::InvalidOption {
                field: "child_failure_policy",
                reason: format!("`{other}` is not allowed; allowed values are resume, fail_parent"),
            }),
        }
    }
}

/// How the delay before a retry grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryBackoff {
    /// Every retry waits `retry_interval` (the reference's behavior).
    #[default]
    Fixed,
    /// Retry n waits `retry_interval × 2^(n-1)`, capped at one hour, with up to 50 % jitter
    /// subtracted so that a burst of failures does not retry in lockstep.
    Exponential,
}

impl RetryBackoff {
    /// The stored string.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryBackoff::Fixed => "fixed",
            RetryBackoff::Exponential => "exponential",
        }
    }
}

impl FromStr for RetryBackoff {
    type Err = DomainError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "fixed" => Ok(RetryBackoff::Fixed),
            "exponential" => Ok(RetryBackoff::Exponential),
            other => Err(DomainError::InvalidOption {
                field: "retry_backoff",
                reason: format!("`{other}` is not allowed; allowed values are fixed, exponential"),
            }),
        }
    }
}

/// The persisted snapshot of one task (a row of `fib_flow_tasks`).
///
/// Field names are the reference's; serialising a `Task` yields the reference's object shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Primary key.
    pub id: TaskId,
    /// Handler name.
    pub name: String,
    /// `async` or `cron`.
    #[serde(rename = "type")]
    pub task_type: TaskType,
    /// Current status.
    pub status: TaskStatus,
    /// Higher runs first.
    pub priority: i32,
    /// JSON payload given at submission (`null` when none).
    pub payload: Value,
    /// Creation instant.
    pub created_at: DateTime<Utc>,
    /// Free-form category.
    pub tag: Option<String>,
    /// Earliest instant the task may be claimed.
    pub next_run_time: DateTime<Utc>,
    /// Last claim, heartbeat, progress or status change.
    pub last_active_time: Option<DateTime<Utc>>,
    /// Time of the latest audit event (cache).
    pub last_event_time: Option<DateTime<Utc>>,
    /// Type of the latest audit event (cache).
    pub last_event_type: Option<String>,
    /// The handler's result: `None` when no attempt completed; `Some(Value::Null)` for a JSON null.
    pub result: Option<Value>,
    /// Error text of the latest failure; cleared by a later success.
    pub error: Option<String>,
    /// Progress snapshot: stage name (cache).
    pub current_stage_name: Option<String>,
    /// Progress snapshot: text (cache).
    pub progress_text: Option<String>,
    /// Progress snapshot: percent 0..=100 (cache).
    pub progress_percent: Option<f64>,
    /// Workflow step counter, starts at 0.
    pub stage: i32,
    /// Time limit of one attempt; `None` means no limit.
    #[serde(with = "serde_units::opt_secs")]
    pub timeout: Option<Duration>,
    /// Retries scheduled so far in this run.
    pub retry_count: i32,
    /// Total attempts allowed, the first included.
    pub max_retries: i32,
    /// Delay before a retry.
    #[serde(with = "serde_units::secs")]
    pub retry_interval: Duration,
    /// How the retry delay grows.
    pub retry_backoff: RetryBackoff,
    /// Cron expression (cron tasks).
    pub cron_expr: Option<String>,
    /// IANA time zone of the cron schedule; `None` means UTC.
    pub timezone: Option<String>,
    /// Workflow root (`None` for a root task).
    pub root_id: Option<TaskId>,
    /// Parent task (`None` for a root task).
    pub parent_id: Option<TaskId>,
    /// The parent's attempt number when it created this child: the round it belongs to.
    pub parent_round: Option<i32>,
    /// Children created over the task's life.
    pub total_children: i32,
    /// Children settled (completed or permanently failed) over the task's life.
    pub completed_children: i32,
    /// What a child's permanent failure does to this parent in the current round.
    pub child_failure_policy: ChildFailurePolicy,
    /// Worker that claimed the task last.
    pub worker_id: Option<String>,
    /// Start of the current or last attempt.
    pub start_time: Option<DateTime<Utc>>,
    /// `start_time + timeout` of the running attempt.
    pub deadline: Option<DateTime<Utc>>,
    /// Number of the current or last attempt (0 before the first claim).
    pub attempt: i32,
    /// Binary context kept across stages.
    pub context: Option<Vec<u8>>,
    /// Why the task is suspended (`awaiting_subtasks` for parents); cleared on resume.
    pub suspend_reason: Option<String>,
    /// Metadata given with an explicit suspension; cleared on resume.
    pub suspend_metadata: Option<Value>,
    /// A cron schedule's key (its name unless `TaskOptions::cron_key` set one): one row per
    /// key, so registering the schedule again updates it. Ours.
    pub cron_key: Option<String>,
    /// `TaskOptions::unique_key`: at most one unfinished task per key. Ours.
    pub unique_key: Option<String>,
}

impl Task {
    /// The workflow this task belongs to: its root, or itself for a root task.
    pub fn workflow_root(&self) -> TaskId {
        self.root_id.unwrap_or(self.id)
    }

    /// The retry policy stored with the task (`max_retries`, `retry_interval`,
    /// `retry_backoff`).
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: u32::try_from(self.max_retries).unwrap_or(0),
            interval: self.retry_interval,
            backoff: self.retry_backoff,
        }
    }
}

/// A task about to be inserted: everything resolved, nothing defaulted by storage.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// Handler name.
    pub name: String,
    /// `async` or `cron`.
    pub task_type: TaskType,
    /// Priority.
    pub priority: i32,
    /// Payload.
    pub payload: Value,
    /// Tag.
    pub tag: Option<String>,
    /// First due instant.
    pub next_run_time: DateTime<Utc>,
    /// Per-attempt limit (`None`: unlimited).
    pub timeout: Option<Duration>,
    /// Total attempts allowed.
    pub max_retries: i32,
    /// Retry delay.
    pub retry_interval: Duration,
    /// Retry growth.
    pub retry_backoff: RetryBackoff,
    /// Cron expression (cron tasks).
    pub cron_expr: Option<String>,
    /// Cron time zone.
    pub timezone: Option<String>,
    /// Workflow root for children.
    pub root_id: Option<TaskId>,
    /// Parent for children.
    pub parent_id: Option<TaskId>,
    /// The parent's attempt number when it created this child: the round it belongs to.
    pub parent_round: Option<i32>,
    /// Creation instant.
    pub created_at: DateTime<Utc>,
}

impl NewTask {
    /// Checks what the database would otherwise check differently per backend (or not at all):
    /// the name (non-empty, at most [`crate::limits::MAX_NAME_BYTES`]), the tag (same, when
    /// given), the cron expression's length, and that the payload can be stored and read back
    /// ([`crate::limits::check_json`]). The first problem is returned, naming the field.
    pub fn validate(&self) -> Result<(), DomainError> {
        use crate::limits::{MAX_JSON_DEPTH, MAX_NAME_BYTES, check_json, check_len, check_name};
        check_name("name", &self.name)?;
        if let Some(tag) = &self.tag {
            check_name("tag", tag)?;
        }
        if let Some(expr) = &self.cron_expr {
            check_len("cron_expr", expr, MAX_NAME_BYTES)?;
        }
        check_json("payload", &self.payload, MAX_JSON_DEPTH)
    }
}

/// A child task requested by a handler through `next`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChildSpec {
    /// Handler name of the child; must be registered when the parent returns.
    pub name: String,
    /// Payload.
    #[serde(default)]
    pub payload: Value,
    /// Priority; defaults to the child handler's, then the parent's.
    #[serde(default)]
    pub priority: Option<i32>,
    /// Tag (not inherited).
    #[serde(default)]
    pub tag: Option<String>,
    /// Per-attempt limit; `Some(None)` means unlimited.
    #[serde(default, with = "serde_units::opt_opt_secs")]
    pub timeout: Option<Option<Duration>>,
    /// Total attempts.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Retry delay.
    #[serde(default, with = "serde_units::opt_secs")]
    pub retry_interval: Option<Duration>,
    /// Delay before the child is due.
    #[serde(default, with = "serde_units::opt_secs")]
    pub delay: Option<Duration>,
}

impl ChildSpec {
    /// A child with a name and payload, everything else defaulted.
    pub fn new(name: impl Into<String>, payload: Value) -> Self {
        ChildSpec {
            name: name.into(),
            payload,
            ..ChildSpec::default()
        }
    }
}

/// The outcome of one child of a round, as the resumed parent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildResult {
    /// The child.
    pub task_id: TaskId,
    /// The child's handler name.
    pub name: String,
    /// The child's status (`completed` or `permanently_failed`).
    pub status: TaskStatus,
    /// The child's result when it completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The child's error when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
