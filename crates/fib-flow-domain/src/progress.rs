//! Handler audit helpers: checkpoints (`task.audit`) and progress (`task.progress`), validated
//! and turned into the event they write.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::DomainError;
use crate::event::{EventType, NewEvent};
use crate::limits;
use crate::model::{TaskId, TaskStatus};

fn trimmed(field: &'static str, value: &str) -> Result<String, DomainError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(DomainError::InvalidOption {
            field,
            reason: "must not be empty".into(),
        });
    }
    Ok(value.to_owned())
}

fn object(field: &'static str, value: Option<Value>) -> Result<Map<String, Value>, DomainError> {
    match value {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => {
            // The user's keys become the event metadata object's keys: same depth, so the
            // whole limit applies.
            let value = Value::Object(map);
            limits::check_json(field, &value, limits::MAX_JSON_DEPTH)?;
            Ok(match value {
                Value::Object(map) => map,
                _ => Map::new(),
            })
        }
        Some(_) => Err(DomainError::InvalidOption {
            field,
            reason: "must be a JSON object".into(),
        }),
    }
}

/// A checkpoint a handler records (`task_checkpoint` event).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Identifier, lowercase snake_case recommended; trimmed, non-empty.
    pub code: String,
    /// Display text; trimmed, non-empty when given.
    pub message: Option<String>,
    /// Structured details; a JSON object when given.
    pub metadata: Option<Value>,
}

impl Checkpoint {
    /// A checkpoint with a code.
    pub fn new(code: impl Into<String>) -> Self {
        Checkpoint {
            code: code.into(),
            ..Checkpoint::default()
        }
    }
    /// Sets the message.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
    /// Sets the metadata.
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }
}

/// A progress update a handler records (`task_progress` event plus snapshot fields).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Stage name, lowercase snake_case recommended.
    pub stage_name: Option<String>,
    /// Short user-facing text.
    pub progress_text: Option<String>,
    /// Coarse percent, 0..=100.
    pub progress_percent: Option<f64>,
    /// Display text of the event.
    pub message: Option<String>,
    /// Structured details; a JSON object when given.
    pub metadata: Option<Value>,
}

impl Progress {
    /// Progress given as text (the reference's string form).
    pub fn text(text: impl Into<String>) -> Self {
        Progress {
            progress_text: Some(text.into()),
            ..Progress::default()
        }
    }
    /// Progress given as a percentage (the reference's `setProgress`).
    pub fn percent(percent: f64) -> Self {
        Progress {
            progress_percent: Some(percent),
            ..Progress::default()
        }
    }
    /// Sets the stage name.
    pub fn stage_name(mut self, stage_name: impl Into<String>) -> Self {
        self.stage_name = Some(stage_name.into());
        self
    }
    /// Sets the percentage.
    pub fn with_percent(mut self, percent: f64) -> Self {
        self.progress_percent = Some(percent);
        self
    }
    /// Sets the message.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
    /// Sets the metadata.
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }
}

/// A validated handler record: what to write to the event table and the task snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct HandlerRecord {
    /// The event to insert.
    pub event: NewEvent,
    /// Snapshot `current_stage_name` to set (progress only).
    pub stage_name: Option<String>,
    /// Snapshot `progress_text` to set (progress only).
    pub progress_text: Option<String>,
    /// Snapshot `progress_percent` to set (progress only).
    pub progress_percent: Option<f64>,
}

/// Who records: the running attempt a record is fenced by.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordContext {
    /// The task.
    pub task_id: TaskId,
    /// Its workflow root.
    pub root_id: TaskId,
    /// Its parent.
    pub parent_id: Option<TaskId>,
    /// Its stage.
    pub stage: i32,
    /// The executing worker.
    pub worker_id: String,
    /// The running attempt.
    pub attempt: i32,
}

impl RecordContext {
    fn event(
        &self,
        event_type: EventType,
        now: DateTime<Utc>,
        message: String,
        metadata: Map<String, Value>,
    ) -> NewEvent {
        NewEvent {
            task_id: self.task_id,
            root_id: self.root_id,
            parent_id: self.parent_id,
            event_type,
            from_status: Some(TaskStatus::Running),
            to_status: Some(TaskStatus::Running),
            stage: self.stage,
            worker_id: Some(self.worker_id.clone()),
            attempt: Some(self.attempt),
            event_time: now,
            message: Some(message),
            metadata: Value::Object(metadata),
        }
    }
}

/// Validates a checkpoint and builds its `task_checkpoint` event.
pub fn checkpoint_record(
    ctx: &RecordContext,
    checkpoint: Checkpoint,
    now: DateTime<Utc>,
) -> Result<HandlerRecord, DomainError> {
    let code = trimmed("checkpoint.code", &checkpoint.code)?;
    let message = checkpoint
        .message
        .as_deref()
        .map(|message| trimmed("checkpoint.message", message))
        .transpose()?;
    let user = object("checkpoint.metadata", checkpoint.metadata)?;
    let mut metadata = Map::new();
    metadata.insert("code".into(), Value::String(code.clone()));
    metadata.extend(user);
    Ok(HandlerRecord {
        event: ctx.event(
            EventType::TaskCheckpoint,
            now,
            message.unwrap_or(code),
            metadata,
        ),
        stage_name: None,
        progress_text: None,
        progress_percent: None,
    })
}

/// Validates a progress update and builds its `task_progress` event and snapshot fields.
pub fn progress_record(
    ctx: &RecordContext,
    progress: Progress,
    now: DateTime<Utc>,
) -> Result<HandlerRecord, DomainError> {
    let stage_name = progress
        .stage_name
        .as_deref()
        .map(|value| trimmed("progress.stage_name", value))
        .transpose()?;
    if let Some(stage_name) = &stage_name {
        // Stored in the VARCHAR(255) `current_stage_name` column.
        limits::check_len("progress.stage_name", stage_name, limits::MAX_NAME_BYTES)?;
    }
    let progress_text = progress
        .progress_text
        .as_deref()
        .map(|value| trimmed("progress.progress_text", value))
        .transpose()?;
    let message = progress
        .message
        .as_deref()
        .map(|value| trimmed("progress.message", value))
        .transpose()?;
    if let Some(percent) = progress.progress_percent
        && !(percent.is_finite() && (0.0..=100.0).contains(&percent))
    {
        return Err(DomainError::InvalidOption {
            field: "progress.progress_percent",
            reason: format!("must be a number between 0 and 100, got {percent}"),
        });
    }
    if stage_name.is_none() && progress_text.is_none() && progress.progress_percent.is_none() {
        return Err(DomainError::InvalidOption {
            field: "progress",
            reason: "requires stage_name, progress_text, or progress_percent".into(),
        });
    }
    let user = object("progress.metadata", progress.metadata)?;
    let mut metadata = Map::new();
    if let Some(stage_name) = &stage_name {
        metadata.insert("stage_name".into(), Value::String(stage_name.clone()));
    }
    if let Some(text) = &progress_text {
        metadata.insert("progress_text".into(), Value::String(text.clone()));
    }
    if let Some(percent) = progress.progress_percent {
        metadata.insert("progress_percent".into(), Value::from(percent));
    }
    metadata.extend(user);
    let message = message
        .or_else(|| progress_text.clone())
        .or_else(|| stage_name.clone())
        .unwrap_or_else(|| "task progress updated".into());
    Ok(HandlerRecord {
        event: ctx.event(EventType::TaskProgress, now, message, metadata),
        stage_name,
        progress_text,
        progress_percent: progress.progress_percent,
    })
}

impl From<&str> for Checkpoint {
    fn from(code: &str) -> Self {
        Checkpoint::new(code)
    }
}

impl From<String> for Checkpoint {
    fn from(code: String) -> Self {
        Checkpoint::new(code)
    }
}

impl From<&str> for Progress {
    fn from(text: &str) -> Self {
        Progress::text(text)
    }
}

impl From<String> for Progress {
    fn from(text: String) -> Self {
        Progress::text(text)
    }
}
