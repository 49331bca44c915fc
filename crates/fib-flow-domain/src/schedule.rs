//! Registering a cron schedule again under its key: what changed, and the audit event that
//! says so. Ours (issue 11): the reference inserts a new row at every registration.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::event::{EventType, NewEvent};
use crate::model::{NewTask, Task, TaskStatus};

/// What a registration changes in a stored schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct CronRedefinition {
    /// The definition fields that differ, by their reference names.
    pub changed: Vec<&'static str>,
    /// Whether the new first occurrence replaces `next_run_time`: only while the schedule
    /// waits for its next run (`pending`). A running one reschedules from its new expression
    /// when it completes; a paused or suspended one keeps waiting for its resume.
    pub reschedule: bool,
    /// The `task_schedule_updated` event.
    pub event: NewEvent,
}

/// Compares a stored cron task with a new registration of the same key; `None` when they
/// define the same schedule (the registration changes nothing).
pub fn redefine_cron(
    current: &Task,
    new: &NewTask,
    now: DateTime<Utc>,
) -> Option<CronRedefinition> {
    let mut changed = Vec::new();
    let mut differs = |field: &'static str, same: bool| {
        if !same {
            changed.push(field);
        }
    };
    differs("name", current.name == new.name);
    differs("cron_expr", current.cron_expr == new.cron_expr);
    differs("timezone", current.timezone == new.timezone);
    differs("payload", current.payload == new.payload);
    differs("priority", current.priority == new.priority);
    differs("timeout", current.timeout == new.timeout);
    differs("max_retries", current.max_retries == new.max_retries);
    differs(
        "retry_interval",
        current.retry_interval == new.retry_interval,
    );
    differs("retry_backoff", current.retry_backoff == new.retry_backoff);
    differs("tag", current.tag == new.tag);
    if changed.is_empty() {
        return None;
    }
    let reschedule = current.status == TaskStatus::Pending;
    let mut metadata = Map::new();
    metadata.insert("changed".to_owned(), json!(changed));
    metadata.insert("cron_expr".to_owned(), json!(new.cron_expr));
    metadata.insert("previous_cron_expr".to_owned(), json!(current.cron_expr));
    if reschedule {
        metadata.insert(
            "next_run_time".to_owned(),
            json!(crate::time::to_millis(new.next_run_time)),
        );
    }
    let event = NewEvent {
        task_id: current.id,
        root_id: current.workflow_root(),
        parent_id: current.parent_id,
        event_type: EventType::TaskScheduleUpdated,
        from_status: Some(current.status),
        to_status: Some(current.status),
        stage: current.stage,
        worker_id: None,
        attempt: None,
        event_time: now,
        message: Some(format!(
            "Cron schedule {} updated ({})",
            current.cron_key.as_deref().unwrap_or(&current.name),
            changed.join(", ")
        )),
        metadata: Value::Object(metadata),
    };
    Some(CronRedefinition {
        changed,
        reschedule,
        event,
    })
}
