//! Fixtures shared by the state machine tests.

#![allow(dead_code)]

use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use fib_flow_domain::{
    ChildFailurePolicy, DomainError, EventType, RetryBackoff, Task, TaskId, TaskStatus, TaskType,
    Transition,
};
use serde_json::{Value, json};

/// Thu 2026-01-01 00:00:00 UTC.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("valid instant")
}

/// `t0() + secs`.
pub fn at(secs: i64) -> DateTime<Utc> {
    t0() + TimeDelta::seconds(secs)
}

/// A due pending async root task that has never run: 3 attempts, 10 s fixed retry delay, 60 s
/// timeout.
pub fn async_task() -> Task {
    Task {
        id: TaskId(7),
        name: "job".to_owned(),
        task_type: TaskType::Async,
        status: TaskStatus::Pending,
        priority: 0,
        payload: json!({"n": 1}),
        created_at: t0(),
        tag: None,
        next_run_time: t0(),
        last_active_time: None,
        last_event_time: None,
        last_event_type: None,
        result: None,
        error: None,
        current_stage_name: None,
        progress_text: None,
        progress_percent: None,
        stage: 0,
        timeout: Some(Duration::from_secs(60)),
        retry_count: 0,
        max_retries: 3,
        retry_interval: Duration::from_secs(10),
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

/// The same as [`async_task`], as an hourly cron task.
pub fn cron_task() -> Task {
    Task {
        name: "tick".to_owned(),
        task_type: TaskType::Cron,
        cron_expr: Some("0 * * * *".to_owned()),
        ..async_task()
    }
}

/// A child (id 8) of task 7 in workflow 1, created in parent round 2 (the parent's attempt 2).
pub fn child_task() -> Task {
    Task {
        id: TaskId(8),
        name: "child".to_owned(),
        root_id: Some(TaskId(1)),
        parent_id: Some(TaskId(7)),
        parent_round: Some(2),
        ..async_task()
    }
}

/// `task` as claimed by `worker-a` at `at(0)` for attempt `attempt`.
pub fn running(task: Task, attempt: i32) -> Task {
    Task {
        status: TaskStatus::Running,
        attempt,
        worker_id: Some("worker-a".to_owned()),
        start_time: Some(t0()),
        deadline: task
            .timeout
            .map(|limit| t0() + TimeDelta::from_std(limit).expect("small")),
        last_active_time: Some(t0()),
        ..task
    }
}

/// `task` suspended waiting for `total` children of its round: its attempt number (at least 1),
/// the attempt that returned `next()`.
pub fn awaiting(task: Task, total: i32) -> Task {
    Task {
        status: TaskStatus::Suspended,
        suspend_reason: Some("awaiting_subtasks".to_owned()),
        total_children: total,
        attempt: task.attempt.max(1),
        worker_id: Some("worker-a".to_owned()),
        ..task
    }
}

/// The event types of a transition, in order.
pub fn event_types(transition: &Transition) -> Vec<EventType> {
    transition.events.iter().map(|e| e.event_type).collect()
}

/// The `(from, to)` pairs of a transition's events.
pub fn links(transition: &Transition) -> Vec<(Option<TaskStatus>, Option<TaskStatus>)> {
    transition
        .events
        .iter()
        .map(|e| (e.from_status, e.to_status))
        .collect()
}

/// A metadata key of event `index`.
pub fn meta<'a>(transition: &'a Transition, index: usize, key: &str) -> &'a Value {
    transition.events[index]
        .metadata
        .get(key)
        .unwrap_or_else(|| panic!("event {index} has no metadata key {key}"))
}

/// Whether `err` is the stale-attempt rejection.
pub fn is_stale(err: &DomainError) -> bool {
    matches!(err, DomainError::StaleAttempt { .. })
}

/// Whether `err` is the illegal-transition rejection.
pub fn is_illegal(err: &DomainError) -> bool {
    matches!(err, DomainError::IllegalTransition { .. })
}
