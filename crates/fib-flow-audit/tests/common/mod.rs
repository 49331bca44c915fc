//! Row builders shared by the audit tests.

#![allow(dead_code)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use fib_flow_domain::{
    AttemptOutcome, ChildFailurePolicy, EventType, RetryBackoff, Task, TaskAttempt, TaskEvent,
    TaskId, TaskStatus, TaskType,
};
use serde_json::{Value, json};

/// An arbitrary fixed origin, so tests read in milliseconds after it.
pub const BASE_MILLIS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// `ms` milliseconds after [`BASE_MILLIS`].
pub fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(BASE_MILLIS + ms).expect("timestamp in range")
}

/// A root task created at `at(id)`.
pub fn task(id: i64, name: &str, status: TaskStatus) -> Task {
    Task {
        id: TaskId(id),
        name: name.to_owned(),
        task_type: TaskType::Async,
        status,
        priority: 0,
        payload: Value::Null,
        created_at: at(id),
        tag: None,
        next_run_time: at(id),
        last_active_time: None,
        last_event_time: None,
        last_event_type: None,
        result: None,
        error: None,
        current_stage_name: None,
        progress_text: None,
        progress_percent: None,
        stage: 0,
        timeout: None,
        retry_count: 0,
        max_retries: 3,
        retry_interval: Duration::from_secs(0),
        retry_backoff: RetryBackoff::Fixed,
        cron_expr: None,
        timezone: None,
        root_id: None,
        parent_id: None,
        parent_round: None,
        total_children: 0,
        completed_children: 0,
        child_failure_policy: ChildFailurePolicy::Resume,
        worker_id: None,
        start_time: None,
        deadline: None,
        attempt: 0,
        context: None,
        suspend_reason: None,
        suspend_metadata: None,
        cron_key: None,
        unique_key: None,
    }
}

/// A child of `parent` (in workflow `root`) created by round `round`: the parent's attempt
/// number that returned `next(children)`.
pub fn child(id: i64, name: &str, status: TaskStatus, root: i64, parent: i64, round: i32) -> Task {
    Task {
        root_id: Some(TaskId(root)),
        parent_id: Some(TaskId(parent)),
        parent_round: Some(round),
        ..task(id, name, status)
    }
}

/// Attempt `n` of `task_id`, from `start` to `end` milliseconds (open when `end` is `None`).
pub fn attempt(
    id: i64,
    task_id: i64,
    n: i32,
    start: i64,
    end: Option<i64>,
    outcome: Option<AttemptOutcome>,
) -> TaskAttempt {
    TaskAttempt {
        id,
        task_id: TaskId(task_id),
        attempt: n,
        worker_id: Some("worker-a".to_owned()),
        started_at: at(start),
        ended_at: end.map(at),
        outcome,
        error: None,
        timeout_flag: outcome == Some(AttemptOutcome::Timeout),
    }
}

/// A finished attempt.
pub fn done(
    id: i64,
    task_id: i64,
    n: i32,
    start: i64,
    end: i64,
    outcome: AttemptOutcome,
) -> TaskAttempt {
    attempt(id, task_id, n, start, Some(end), Some(outcome))
}

/// An event of `event_type` for `task_id` in workflow `root`.
pub fn event(id: i64, task_id: i64, root: i64, event_type: EventType, time: i64) -> TaskEvent {
    TaskEvent {
        id,
        task_id: TaskId(task_id),
        root_id: TaskId(root),
        parent_id: None,
        event_type: event_type.as_str().to_owned(),
        from_status: None,
        to_status: None,
        stage: Some(0),
        worker_id: None,
        attempt: None,
        event_time: at(time),
        message: None,
        metadata: json!({}),
    }
}

/// The start event of attempt `n` (at stage `stage`) of `task_id`.
pub fn started(id: i64, task_id: i64, root: i64, n: i32, stage: i32, time: i64) -> TaskEvent {
    let event_type = if n == 1 {
        EventType::TaskStarted
    } else {
        EventType::TaskRetryStarted
    };
    TaskEvent {
        stage: Some(stage),
        attempt: Some(n),
        from_status: Some(TaskStatus::Pending),
        to_status: Some(TaskStatus::Running),
        worker_id: Some("worker-a".to_owned()),
        ..event(id, task_id, root, event_type, time)
    }
}
