//! Audit rows: events (`fib_flow_task_events`) and attempts (`fib_flow_task_attempts`).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DomainError;
use crate::model::{AttemptOutcome, TaskId, TaskStatus};

/// The reference's event type strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A task row was inserted.
    TaskCreated,
    /// A parent created children.
    TaskSubtasksCreated,
    /// A generic status change (parent suspended for/resumed after children, cron reschedule,
    /// resume from paused/failed/timeout/running).
    TaskStatusChanged,
    /// A worker claimed the task.
    TaskClaimed,
    /// An attempt started.
    TaskStarted,
    /// An attempt started with `retry_count > 0`.
    TaskRetryStarted,
    /// An async task completed.
    TaskCompleted,
    /// An attempt failed.
    TaskFailed,
    /// An attempt timed out.
    TaskTimedOut,
    /// The task was paused.
    TaskPaused,
    /// The task failed for good.
    TaskPermanentlyFailed,
    /// The task was explicitly suspended.
    TaskSuspended,
    /// A suspended task was resumed by hand.
    TaskResumed,
    /// A retry was scheduled.
    TaskRetryScheduled,
    /// A running task was released from a dead or stopping worker.
    TaskRecovered,
    /// `progress()` from a handler.
    TaskProgress,
    /// `audit()` from a handler.
    TaskCheckpoint,
    /// A handler asked to run again later (`Outcome::Snooze`); no retry used. Ours.
    TaskSnoozed,
    /// `retry_task` brought a dead task back with a fresh retry budget. Ours.
    TaskRetried,
    /// A cron schedule registered again under its key with a different definition. Ours.
    TaskScheduleUpdated,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 20] = [
        EventType::TaskCreated,
        EventType::TaskSubtasksCreated,
        EventType::TaskStatusChanged,
        EventType::TaskClaimed,
        EventType::TaskStarted,
        EventType::TaskRetryStarted,
        EventType::TaskCompleted,
        EventType::TaskFailed,
        EventType::TaskTimedOut,
        EventType::TaskPaused,
        EventType::TaskPermanentlyFailed,
        EventType::TaskSuspended,
        EventType::TaskResumed,
        EventType::TaskRetryScheduled,
        EventType::TaskRecovered,
        EventType::TaskProgress,
        EventType::TaskCheckpoint,
        EventType::TaskSnoozed,
        EventType::TaskRetried,
        EventType::TaskScheduleUpdated,
    ];

    /// The stored string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::TaskCreated => "task_created",
            EventType::TaskSubtasksCreated => "task_subtasks_created",
            EventType::TaskStatusChanged => "task_status_changed",
            EventType::TaskClaimed => "task_claimed",
            EventType::TaskStarted => "task_started",
            EventType::TaskRetryStarted => "task_retry_started",
            EventType::TaskCompleted => "task_completed",
            EventType::TaskFailed => "task_failed",
            EventType::TaskTimedOut => "task_timed_out",
            EventType::TaskPaused => "task_paused",
            EventType::TaskPermanentlyFailed => "task_permanently_failed",
            EventType::TaskSuspended => "task_suspended",
            EventType::TaskResumed => "task_resumed",
            EventType::TaskRetryScheduled => "task_retry_scheduled",
            EventType::TaskRecovered => "task_recovered",
            EventType::TaskProgress => "task_progress",
            EventType::TaskCheckpoint => "task_checkpoint",
            EventType::TaskSnoozed => "task_snoozed",
            EventType::TaskRetried => "task_retried",
            EventType::TaskScheduleUpdated => "task_schedule_updated",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = DomainError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|event_type| event_type.as_str() == value)
            .ok_or_else(|| DomainError::InvalidOption {
                field: "event_type",
                reason: format!(
                    "`{value}` is not an event type; allowed values are {}",
                    EventType::ALL.map(EventType::as_str).join(", ")
                ),
            })
    }
}

/// An event about to be written. `task_id`, `root_id` and `parent_id` are the task's.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The task the event is about.
    pub task_id: TaskId,
    /// The workflow root (the task itself for a root task).
    pub root_id: TaskId,
    /// The task's parent.
    pub parent_id: Option<TaskId>,
    /// Type.
    pub event_type: EventType,
    /// Status before (`None` for `task_created`).
    pub from_status: Option<TaskStatus>,
    /// Status after.
    pub to_status: Option<TaskStatus>,
    /// The task's stage the event belongs to.
    pub stage: i32,
    /// The worker the event is attributed to.
    pub worker_id: Option<String>,
    /// The execution round, for every event tied to one.
    pub attempt: Option<i32>,
    /// When it happened.
    pub event_time: DateTime<Utc>,
    /// Display text.
    pub message: Option<String>,
    /// Structured details (a JSON object).
    pub metadata: Value,
}

/// A persisted event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// Primary key.
    pub id: i64,
    /// The task.
    pub task_id: TaskId,
    /// The workflow root.
    pub root_id: TaskId,
    /// The task's parent.
    pub parent_id: Option<TaskId>,
    /// Type string.
    pub event_type: String,
    /// Status before.
    pub from_status: Option<TaskStatus>,
    /// Status after.
    pub to_status: Option<TaskStatus>,
    /// Stage.
    pub stage: Option<i32>,
    /// Worker.
    pub worker_id: Option<String>,
    /// Attempt number.
    pub attempt: Option<i32>,
    /// When.
    pub event_time: DateTime<Utc>,
    /// Display text.
    pub message: Option<String>,
    /// Structured details.
    pub metadata: Value,
}

/// An attempt opened by a claim.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAttempt {
    /// The task.
    pub task_id: TaskId,
    /// 1-based attempt number.
    pub attempt: i32,
    /// The claiming worker.
    pub worker_id: String,
    /// Claim instant.
    pub started_at: DateTime<Utc>,
}

/// Closing the open attempt `attempt` of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptClose {
    /// The task.
    pub task_id: TaskId,
    /// Which attempt.
    pub attempt: i32,
    /// End instant.
    pub ended_at: DateTime<Utc>,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// Error text for failed/timed-out/interrupted attempts.
    pub error: Option<String>,
    /// Whether the attempt ended by timing out.
    pub timeout_flag: bool,
}

/// What a transition does to the attempts table.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptChange {
    /// A claim opens a new attempt.
    Open(NewAttempt),
    /// A transition out of `running` closes the open attempt.
    Close(AttemptClose),
}

/// A persisted attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAttempt {
    /// Primary key.
    pub id: i64,
    /// The task.
    pub task_id: TaskId,
    /// 1-based number.
    pub attempt: i32,
    /// Claiming worker.
    pub worker_id: Option<String>,
    /// Claim instant.
    pub started_at: DateTime<Utc>,
    /// End instant (`None` while open).
    pub ended_at: Option<DateTime<Utc>>,
    /// Outcome (`None` while open).
    pub outcome: Option<AttemptOutcome>,
    /// Error text.
    pub error: Option<String>,
    /// Timed out.
    pub timeout_flag: bool,
}
