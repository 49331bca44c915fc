//! Row structs and their mapping to and from the domain types.
//!
//! Storage encodings: instants are BIGINT Unix milliseconds ([`fib_flow_domain::time`]),
//! durations `*_ms` BIGINT, enums their `as_str` strings, JSON as [`JsonText`] (the column is
//! `jsonb` on PostgreSQL, text elsewhere; see [`crate::json_column`]). `payload` is never NULL
//! (JSON `null` is stored as the text `null`); `result` is NULL when there is no result, so a
//! stored JSON `null` result (`'null'`) stays distinct from "no result".

use diesel::prelude::*;
use fib_flow_domain::time::{duration_millis, from_millis, millis_duration, to_millis};
use fib_flow_domain::{
    AttemptOutcome, ChildFailurePolicy, ChildResult, NewAttempt, NewEvent, NewTask, RetryBackoff,
    Task, TaskAttempt, TaskEvent, TaskId, TaskStatus, TaskType, Worker, WorkerStatus,
};
use serde_json::Value;

use crate::json_column::JsonText;
use crate::schema::{
    fib_flow_task_attempts, fib_flow_task_events, fib_flow_tasks, fib_flow_workers,
};

/// A stored value that does not decode into the domain (a malformed enum string, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

fn parse<T: std::str::FromStr>(value: &str, what: &str, id: i64) -> Result<T, DecodeError> {
    value
        .parse()
        .map_err(|_| DecodeError(format!("row {id}: stored {what} `{value}` is not valid")))
}

/// JSON text → value. Text that does not parse (not JSON, or nested deeper than serde_json's
/// recursion limit) is a [`DecodeError`] naming the row and column: turning it into a JSON
/// string, as the reference did, silently handed callers a different value than was stored.
/// Writes are checked against [`fib_flow_domain::limits`] so fib-flow itself never stores
/// such text.
pub fn json_from_text(text: &str, what: &str, id: i64) -> Result<Value, DecodeError> {
    serde_json::from_str(text).map_err(|error| {
        DecodeError(format!(
            "row {id}: stored {what} is not readable JSON ({error})"
        ))
    })
}

/// Checks tasks about to be inserted ([`NewTask::validate`]: name, tag, payload) so every
/// backend refuses the same input with the same typed error ([`fib_flow_ports::PortError::Rejected`])
/// instead of leaving it to column types: SQLite would store what PostgreSQL and MySQL reject.
/// The engine checks submissions already; this also covers children and direct store users.
pub fn check_new_tasks(tasks: &[NewTask]) -> Result<(), fib_flow_ports::PortError> {
    tasks
        .iter()
        .try_for_each(NewTask::validate)
        .map_err(fib_flow_ports::PortError::Rejected)
}

/// Value → JSON text (`null` for `Value::Null`).
pub fn json_to_text(value: &Value) -> JsonText {
    // Serialising a `Value` cannot fail (its map keys are strings).
    JsonText(serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned()))
}

/// A full `fib_flow_tasks` row as read.
#[derive(Debug, Clone, PartialEq, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = fib_flow_tasks)]
#[allow(missing_docs)]
pub struct TaskRow {
    pub id: i64,
    pub name: String,
    pub task_type: String,
    pub status: String,
    pub priority: i32,
    pub payload: JsonText,
    pub created_at: i64,
    pub tag: Option<String>,
    pub next_run_time: i64,
    pub last_active_time: Option<i64>,
    pub last_event_time: Option<i64>,
    pub last_event_type: Option<String>,
    pub result: Option<JsonText>,
    pub error: Option<String>,
    pub current_stage_name: Option<String>,
    pub progress_text: Option<String>,
    pub progress_percent: Option<f64>,
    pub stage: i32,
    pub timeout_ms: Option<i64>,
    pub retry_count: i32,
    pub max_retries: i32,
    pub retry_interval_ms: i64,
    pub retry_backoff: String,
    pub cron_expr: Option<String>,
    pub timezone: Option<String>,
    pub root_id: Option<i64>,
    pub parent_id: Option<i64>,
    pub parent_round: Option<i32>,
    pub total_children: i32,
    pub completed_children: i32,
    pub child_failure_policy: String,
    pub worker_id: Option<String>,
    pub start_time: Option<i64>,
    pub deadline: Option<i64>,
    pub attempt: i32,
    pub context: Option<Vec<u8>>,
    pub suspend_reason: Option<String>,
    pub suspend_metadata: Option<JsonText>,
    pub cron_key: Option<String>,
    pub unique_key: Option<String>,
}

/// Every column but `id`: the values of an insert, and of a full guarded row write.
///
/// `treat_none_as_null` makes an update write NULL for `None` (a cleared error must be cleared
/// in the row); `treat_none_as_default_value = false` lets SQLite take a multi-row insert.
#[derive(Debug, Clone, PartialEq, Insertable, AsChangeset)]
#[diesel(table_name = fib_flow_tasks, treat_none_as_null = true, treat_none_as_default_value = false)]
#[allow(missing_docs)]
pub struct TaskValues {
    pub name: String,
    pub task_type: String,
    pub status: String,
    pub priority: i32,
    pub payload: JsonText,
    pub created_at: i64,
    pub tag: Option<String>,
    pub next_run_time: i64,
    pub last_active_time: Option<i64>,
    pub last_event_time: Option<i64>,
    pub last_event_type: Option<String>,
    pub result: Option<JsonText>,
    pub error: Option<String>,
    pub current_stage_name: Option<String>,
    pub progress_text: Option<String>,
    pub progress_percent: Option<f64>,
    pub stage: i32,
    pub timeout_ms: Option<i64>,
    pub retry_count: i32,
    pub max_retries: i32,
    pub retry_interval_ms: i64,
    pub retry_backoff: String,
    pub cron_expr: Option<String>,
    pub timezone: Option<String>,
    pub root_id: Option<i64>,
    pub parent_id: Option<i64>,
    pub parent_round: Option<i32>,
    pub total_children: i32,
    pub completed_children: i32,
    pub child_failure_policy: String,
    pub worker_id: Option<String>,
    pub start_time: Option<i64>,
    pub deadline: Option<i64>,
    pub attempt: i32,
    pub context: Option<Vec<u8>>,
    pub suspend_reason: Option<String>,
    pub suspend_metadata: Option<JsonText>,
}

impl TaskRow {
    /// Decodes the row; a malformed enum string is an error naming the row and column.
    pub fn into_task(self) -> Result<Task, DecodeError> {
        let id = self.id;
        Ok(Task {
            id: TaskId(id),
            task_type: parse::<TaskType>(&self.task_type, "type", id)?,
            status: parse::<TaskStatus>(&self.status, "status", id)?,
            retry_backoff: parse::<RetryBackoff>(&self.retry_backoff, "retry_backoff", id)?,
            child_failure_policy: parse::<ChildFailurePolicy>(
                &self.child_failure_policy,
                "child_failure_policy",
                id,
            )?,
            name: self.name,
            priority: self.priority,
            payload: json_from_text(self.payload.as_str(), "payload", id)?,
            created_at: from_millis(self.created_at),
            tag: self.tag,
            next_run_time: from_millis(self.next_run_time),
            last_active_time: self.last_active_time.map(from_millis),
            last_event_time: self.last_event_time.map(from_millis),
            last_event_type: self.last_event_type,
            result: self
                .result
                .as_ref()
                .map(|text| json_from_text(text.as_str(), "result", id))
                .transpose()?,
            error: self.error,
            current_stage_name: self.current_stage_name,
            progress_text: self.progress_text,
            progress_percent: self.progress_percent,
            stage: self.stage,
            timeout: self.timeout_ms.map(millis_duration),
            retry_count: self.retry_count,
            max_retries: self.max_retries,
            retry_interval: millis_duration(self.retry_interval_ms),
            cron_expr: self.cron_expr,
            timezone: self.timezone,
            root_id: self.root_id.map(TaskId),
            parent_id: self.parent_id.map(TaskId),
            parent_round: self.parent_round,
            total_children: self.total_children,
            completed_children: self.completed_children,
            worker_id: self.worker_id,
            start_time: self.start_time.map(from_millis),
            deadline: self.deadline.map(from_millis),
            attempt: self.attempt,
            context: self.context,
            suspend_reason: self.suspend_reason,
            suspend_metadata: self
                .suspend_metadata
                .as_ref()
                .map(|text| json_from_text(text.as_str(), "suspend_metadata", id))
                .transpose()?,
            cron_key: self.cron_key,
            unique_key: self.unique_key,
        })
    }
}

impl TaskValues {
    /// The row of a snapshot (everything but its id).
    pub fn from_task(task: &Task) -> Self {
        TaskValues {
            name: task.name.clone(),
            task_type: task.task_type.as_str().to_owned(),
            status: task.status.as_str().to_owned(),
            priority: task.priority,
            payload: json_to_text(&task.payload),
            created_at: to_millis(task.created_at),
            tag: task.tag.clone(),
            next_run_time: to_millis(task.next_run_time),
            last_active_time: task.last_active_time.map(to_millis),
            last_event_time: task.last_event_time.map(to_millis),
            last_event_type: task.last_event_type.clone(),
            result: task.result.as_ref().map(json_to_text),
            error: task.error.clone(),
            current_stage_name: task.current_stage_name.clone(),
            progress_text: task.progress_text.clone(),
            progress_percent: task.progress_percent,
            stage: task.stage,
            timeout_ms: task.timeout.map(duration_millis),
            retry_count: task.retry_count,
            max_retries: task.max_retries,
            retry_interval_ms: duration_millis(task.retry_interval),
            retry_backoff: task.retry_backoff.as_str().to_owned(),
            cron_expr: task.cron_expr.clone(),
            timezone: task.timezone.clone(),
            root_id: task.root_id.map(|id| id.0),
            parent_id: task.parent_id.map(|id| id.0),
            parent_round: task.parent_round,
            total_children: task.total_children,
            completed_children: task.completed_children,
            child_failure_policy: task.child_failure_policy.as_str().to_owned(),
            worker_id: task.worker_id.clone(),
            start_time: task.start_time.map(to_millis),
            deadline: task.deadline.map(to_millis),
            attempt: task.attempt,
            context: task.context.clone(),
            suspend_reason: task.suspend_reason.clone(),
            suspend_metadata: task.suspend_metadata.as_ref().map(json_to_text),
        }
    }

    /// The row of a new task: pending, attempt 0, with its `task_created` event cached as the
    /// last event.
    pub fn from_new(task: &NewTask) -> Self {
        TaskValues {
            name: task.name.clone(),
            task_type: task.task_type.as_str().to_owned(),
            status: TaskStatus::Pending.as_str().to_owned(),
            priority: task.priority,
            payload: json_to_text(&task.payload),
            created_at: to_millis(task.created_at),
            tag: task.tag.clone(),
            next_run_time: to_millis(task.next_run_time),
            last_active_time: None,
            last_event_time: Some(to_millis(task.created_at)),
            last_event_type: Some(fib_flow_domain::EventType::TaskCreated.as_str().to_owned()),
            result: None,
            error: None,
            current_stage_name: None,
            progress_text: None,
            progress_percent: None,
            stage: 0,
            timeout_ms: task.timeout.map(duration_millis),
            retry_count: 0,
            max_retries: task.max_retries,
            retry_interval_ms: duration_millis(task.retry_interval),
            retry_backoff: task.retry_backoff.as_str().to_owned(),
            cron_expr: task.cron_expr.clone(),
            timezone: task.timezone.clone(),
            root_id: task.root_id.map(|id| id.0),
            parent_id: task.parent_id.map(|id| id.0),
            parent_round: task.parent_round,
            total_children: 0,
            completed_children: 0,
            child_failure_policy: ChildFailurePolicy::Resume.as_str().to_owned(),
            worker_id: None,
            start_time: None,
            deadline: None,
            attempt: 0,
            context: None,
            suspend_reason: None,
            suspend_metadata: None,
        }
    }
}

/// What the store returns for a snapshot it wrote: the snapshot as it reads back (instants
/// truncated to milliseconds), so a write's result equals a later `get_task`.
pub fn normalized(task: &Task) -> Task {
    let values = TaskValues::from_task(task);
    let mut task = task.clone();
    task.created_at = from_millis(values.created_at);
    task.next_run_time = from_millis(values.next_run_time);
    task.last_active_time = values.last_active_time.map(from_millis);
    task.last_event_time = values.last_event_time.map(from_millis);
    task.start_time = values.start_time.map(from_millis);
    task.deadline = values.deadline.map(from_millis);
    task.timeout = values.timeout_ms.map(millis_duration);
    task.retry_interval = millis_duration(values.retry_interval_ms);
    task
}

/// The `task_created` event of a freshly inserted task.
pub fn created_event(task: &NewTask, id: TaskId) -> NewEventRow {
    let metadata = serde_json::json!({
        "name": task.name,
        "type": task.task_type.as_str(),
        "tag": task.tag,
    });
    NewEventRow {
        task_id: id.0,
        root_id: task.root_id.unwrap_or(id).0,
        parent_id: task.parent_id.map(|id| id.0),
        event_type: fib_flow_domain::EventType::TaskCreated.as_str().to_owned(),
        from_status: None,
        to_status: Some(TaskStatus::Pending.as_str().to_owned()),
        stage: Some(0),
        worker_id: None,
        attempt: None,
        event_time: to_millis(task.created_at),
        message: Some(format!("Task {} created", task.name)),
        metadata: json_to_text(&metadata),
    }
}

/// A full `fib_flow_task_events` row.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = fib_flow_task_events)]
#[allow(missing_docs)]
pub struct EventRow {
    pub id: i64,
    pub task_id: i64,
    pub root_id: i64,
    pub parent_id: Option<i64>,
    pub event_type: String,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub stage: Option<i32>,
    pub worker_id: Option<String>,
    pub attempt: Option<i32>,
    pub event_time: i64,
    pub message: Option<String>,
    pub metadata: JsonText,
}

/// An event to insert.
#[derive(Debug, Clone, PartialEq, Insertable)]
#[diesel(table_name = fib_flow_task_events, treat_none_as_default_value = false)]
#[allow(missing_docs)]
pub struct NewEventRow {
    pub task_id: i64,
    pub root_id: i64,
    pub parent_id: Option<i64>,
    pub event_type: String,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub stage: Option<i32>,
    pub worker_id: Option<String>,
    pub attempt: Option<i32>,
    pub event_time: i64,
    pub message: Option<String>,
    pub metadata: JsonText,
}

impl From<&NewEvent> for NewEventRow {
    fn from(event: &NewEvent) -> Self {
        NewEventRow {
            task_id: event.task_id.0,
            root_id: event.root_id.0,
            parent_id: event.parent_id.map(|id| id.0),
            event_type: event.event_type.as_str().to_owned(),
            from_status: event.from_status.map(|s| s.as_str().to_owned()),
            to_status: event.to_status.map(|s| s.as_str().to_owned()),
            stage: Some(event.stage),
            worker_id: event.worker_id.clone(),
            attempt: event.attempt,
            event_time: to_millis(event.event_time),
            message: event.message.clone(),
            metadata: json_to_text(&event.metadata),
        }
    }
}

impl EventRow {
    /// Decodes the row.
    pub fn into_event(self) -> Result<TaskEvent, DecodeError> {
        let id = self.id;
        let status = |value: Option<String>, what: &str| {
            value
                .map(|value| parse::<TaskStatus>(&value, what, id))
                .transpose()
        };
        Ok(TaskEvent {
            id,
            task_id: TaskId(self.task_id),
            root_id: TaskId(self.root_id),
            parent_id: self.parent_id.map(TaskId),
            from_status: status(self.from_status, "event from_status")?,
            to_status: status(self.to_status, "event to_status")?,
            event_type: self.event_type,
            stage: self.stage,
            worker_id: self.worker_id,
            attempt: self.attempt,
            event_time: from_millis(self.event_time),
            message: self.message,
            metadata: json_from_text(self.metadata.as_str(), "event metadata", id)?,
        })
    }
}

/// A full `fib_flow_task_attempts` row.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = fib_flow_task_attempts)]
#[allow(missing_docs)]
pub struct AttemptRow {
    pub id: i64,
    pub task_id: i64,
    pub attempt: i32,
    pub worker_id: Option<String>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub outcome: Option<String>,
    pub error: Option<String>,
    pub timeout_flag: bool,
}

impl AttemptRow {
    /// Decodes the row.
    pub fn into_attempt(self) -> Result<TaskAttempt, DecodeError> {
        let id = self.id;
        Ok(TaskAttempt {
            id,
            task_id: TaskId(self.task_id),
            attempt: self.attempt,
            worker_id: self.worker_id,
            started_at: from_millis(self.started_at),
            ended_at: self.ended_at.map(from_millis),
            outcome: self
                .outcome
                .map(|value| parse::<AttemptOutcome>(&value, "attempt outcome", id))
                .transpose()?,
            error: self.error,
            timeout_flag: self.timeout_flag,
        })
    }
}

/// An attempt to open.
#[derive(Debug, Clone, PartialEq, Insertable)]
#[diesel(table_name = fib_flow_task_attempts, treat_none_as_default_value = false)]
#[allow(missing_docs)]
pub struct NewAttemptRow {
    pub task_id: i64,
    pub attempt: i32,
    pub worker_id: Option<String>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub outcome: Option<String>,
    pub error: Option<String>,
    pub timeout_flag: bool,
}

impl From<&NewAttempt> for NewAttemptRow {
    fn from(attempt: &NewAttempt) -> Self {
        NewAttemptRow {
            task_id: attempt.task_id.0,
            attempt: attempt.attempt,
            worker_id: Some(attempt.worker_id.clone()),
            started_at: to_millis(attempt.started_at),
            ended_at: None,
            outcome: None,
            error: None,
            timeout_flag: false,
        }
    }
}

/// The columns `child_results` reads.
pub type ChildRow = (i64, String, String, Option<JsonText>, Option<String>);

/// Decodes a child outcome: the result for a completed child, the error for a failed one.
pub fn child_result(row: ChildRow) -> Result<ChildResult, DecodeError> {
    let (id, name, status, result, error) = row;
    let status = parse::<TaskStatus>(&status, "status", id)?;
    let completed = status == TaskStatus::Completed;
    Ok(ChildResult {
        task_id: TaskId(id),
        name,
        status,
        result: if completed {
            result
                .as_ref()
                .map(|text| json_from_text(text.as_str(), "result", id))
                .transpose()?
        } else {
            None
        },
        error: if completed { None } else { error },
    })
}

/// Decodes a status string read by a grouped query.
pub fn status_from_text(value: &str) -> Result<TaskStatus, DecodeError> {
    value
        .parse()
        .map_err(|_| DecodeError(format!("stored status `{value}` is not valid")))
}

/// What `record` writes to the task row: the activity clocks always, the progress snapshot
/// fields only when given (`None` leaves the column alone).
#[derive(Debug, Clone, PartialEq, AsChangeset)]
#[diesel(table_name = fib_flow_tasks)]
#[allow(missing_docs)]
pub struct RecordChanges {
    pub last_active_time: i64,
    pub last_event_time: i64,
    pub last_event_type: String,
    pub current_stage_name: Option<String>,
    pub progress_text: Option<String>,
    pub progress_percent: Option<f64>,
}

/// A `fib_flow_workers` row, as read and as inserted.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = fib_flow_workers)]
#[allow(missing_docs)]
pub struct WorkerRow {
    pub worker_id: String,
    pub pod_id: String,
    pub status: String,
    pub registered_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
    pub superseded_at: Option<i64>,
    pub dead_at: Option<i64>,
    pub meta: Option<JsonText>,
}

impl WorkerRow {
    /// A fresh `active` row for a registration.
    pub fn registered(registration: &fib_flow_ports::WorkerRegistration) -> WorkerRow {
        let now = to_millis(registration.now);
        WorkerRow {
            worker_id: registration.worker_id.clone(),
            pod_id: registration.pod_id.clone(),
            status: WorkerStatus::Active.as_str().to_owned(),
            registered_at: now,
            last_seen_at: now,
            expires_at: now.saturating_add(duration_millis(registration.ttl)),
            superseded_at: None,
            dead_at: None,
            meta: Some(json_to_text(&registration.meta)),
        }
    }

    /// Decodes the row; a malformed status or meta is an error naming the worker.
    pub fn into_worker(self) -> Result<Worker, DecodeError> {
        let status = WorkerStatus::parse_field(&self.status, "status").map_err(|_| {
            DecodeError(format!(
                "worker {}: stored status `{}` is not valid",
                self.worker_id, self.status
            ))
        })?;
        let meta = match self.meta.as_ref() {
            None => None,
            Some(text) => Some(serde_json::from_str(text.as_str()).map_err(|error| {
                DecodeError(format!(
                    "worker {}: stored meta is not readable JSON ({error})",
                    self.worker_id
                ))
            })?),
        };
        Ok(Worker {
            worker_id: self.worker_id,
            pod_id: self.pod_id,
            status,
            registered_at: from_millis(self.registered_at),
            last_seen_at: from_millis(self.last_seen_at),
            expires_at: from_millis(self.expires_at),
            superseded_at: self.superseded_at.map(from_millis),
            dead_at: self.dead_at.map(from_millis),
            meta,
        })
    }
}
