//! The handler contract: what a handler receives ([`TaskHandle`]) and returns ([`Outcome`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fib_flow_domain::progress::{
    Checkpoint, Progress, RecordContext, checkpoint_record, progress_record,
};
use fib_flow_domain::{ChildFailurePolicy, ChildResult, ChildSpec, Task, TaskId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::error::PortError;
use crate::store::TaskStore;

/// Any error a handler returns; `?` converts every `std::error::Error`, `String` and `&str`.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a handler returns.
pub type HandlerResult = Result<Outcome, HandlerError>;

/// A handler error that no retry can fix (an invalid e-mail address, a record that no longer
/// exists): the task skips its remaining attempts and goes straight to `permanently_failed`
/// (`paused` for a cron task). Build one with [`permanent`]; its text is the inner error's.
#[derive(Debug)]
pub struct Permanent(pub HandlerError);

impl std::fmt::Display for Permanent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Permanent {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Marks a handler error as permanent: `Err(permanent("invalid address"))?`.
pub fn permanent(error: impl Into<HandlerError>) -> HandlerError {
    Box::new(Permanent(error.into()))
}

/// Whether a handler error (or any error in its source chain) was marked [`permanent`].
pub fn is_permanent(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<Permanent>() {
            return true;
        }
        current = error.source();
    }
    false
}

/// A task handler. Closures `Fn(TaskHandle) -> impl Future<Output = Result<impl Into<Outcome>,
/// impl Into<HandlerError>>>` are adapted by the runtime's `register`.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait TaskHandler: Send + Sync {
    /// Runs one attempt of a task.
    async fn run(&self, task: TaskHandle) -> HandlerResult;
}

/// A typed job: its handler name, its payload (the implementing type itself, stored as JSON)
/// and what a run does. Register it with `register_job::<J>()`, submit it with
/// `enqueue_job(job, options)`; a stored payload that does not deserialize into `J` fails the
/// task permanently (no retry can fix it), naming the type.
///
/// ```
/// use fib_flow_ports::{HandlerError, Job, TaskHandle};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Welcome { email: String }
///
/// impl Job for Welcome {
///     const NAME: &'static str = "welcome_email";
///     type Output = String;
///     async fn run(self, _task: TaskHandle) -> Result<String, HandlerError> {
///         Ok(format!("sent to {}", self.email))
///     }
/// }
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The handler name its tasks are registered and enqueued under.
    const NAME: &'static str;
    /// What a run returns, stored as the task's result.
    type Output: Serialize + Send;
    /// Runs one attempt with the deserialized payload.
    fn run(
        self,
        task: TaskHandle,
    ) -> impl std::future::Future<Output = Result<Self::Output, HandlerError>> + Send;
}

/// How an attempt ended successfully.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A result: an async task completes, a cron task is rescheduled.
    Complete(Value),
    /// Create children and wait for them (`next`).
    Spawn(Spawn),
    /// Wait for a human (`suspend`).
    Suspend(Suspension),
    /// Not yet: run again after this delay, at the same stage with the same context, without
    /// using up an attempt of the retry budget (at most a year).
    Snooze(std::time::Duration),
}

impl Outcome {
    /// A result value.
    pub fn done(result: impl Into<Value>) -> Self {
        Outcome::Complete(result.into())
    }

    /// Run again after `delay` (see [`Outcome::Snooze`]).
    pub fn snooze(delay: std::time::Duration) -> Self {
        Outcome::Snooze(delay)
    }
}

impl From<Value> for Outcome {
    fn from(value: Value) -> Self {
        Outcome::Complete(value)
    }
}

impl From<()> for Outcome {
    fn from((): ()) -> Self {
        Outcome::Complete(Value::Null)
    }
}

impl From<Spawn> for Outcome {
    fn from(spawn: Spawn) -> Self {
        Outcome::Spawn(spawn)
    }
}

impl From<Suspension> for Outcome {
    fn from(suspension: Suspension) -> Self {
        Outcome::Suspend(suspension)
    }
}

/// Children to create; the parent is suspended until every one of them settles.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Spawn {
    /// The children (at least one).
    pub children: Vec<ChildSpec>,
    /// Context bytes stored on the parent (not inherited by children).
    pub context: Option<Vec<u8>>,
    /// What a child's permanent failure does to the parent.
    pub policy: ChildFailurePolicy,
}

impl Spawn {
    /// Children to create.
    pub fn new(children: Vec<ChildSpec>) -> Self {
        Spawn {
            children,
            ..Spawn::default()
        }
    }

    /// Stores context bytes on the parent with the suspension.
    pub fn context(mut self, context: impl Into<Vec<u8>>) -> Self {
        self.context = Some(context.into());
        self
    }

    /// Fails the parent as soon as a child fails permanently (async → permanently_failed,
    /// cron → paused) instead of resuming it with the error.
    pub fn fail_on_child_failure(mut self) -> Self {
        self.policy = ChildFailurePolicy::FailParent;
        self
    }
}

/// An explicit suspension (human in the loop).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Suspension {
    /// Why; must be non-empty after trimming.
    pub reason: String,
    /// Structured metadata stored on the row until resume.
    pub metadata: Option<Value>,
    /// Context bytes stored on the row.
    pub context: Option<Vec<u8>>,
}

impl Suspension {
    /// A suspension for `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Suspension {
            reason: reason.into(),
            ..Suspension::default()
        }
    }

    /// Adds metadata.
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Stores context bytes.
    pub fn context(mut self, context: impl Into<Vec<u8>>) -> Self {
        self.context = Some(context.into());
        self
    }
}

/// What a handler receives: the claimed task and the services of its running attempt.
#[derive(Clone)]
pub struct TaskHandle {
    task: Arc<Task>,
    child_results: Arc<Vec<ChildResult>>,
    worker_id: Arc<str>,
    store: Arc<dyn TaskStore>,
    clock: Arc<dyn Clock>,
    cancellation: CancellationToken,
    deadline_hit: Arc<AtomicBool>,
}

impl std::fmt::Debug for TaskHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskHandle")
            .field("task", &self.task)
            .field("child_results", &self.child_results)
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

impl TaskHandle {
    /// Built by the runtime for each attempt.
    pub fn new(
        task: Task,
        child_results: Vec<ChildResult>,
        worker_id: impl Into<Arc<str>>,
        store: Arc<dyn TaskStore>,
        clock: Arc<dyn Clock>,
        cancellation: CancellationToken,
    ) -> Self {
        TaskHandle {
            task: Arc::new(task),
            child_results: Arc::new(child_results),
            worker_id: worker_id.into(),
            store,
            clock,
            cancellation,
            deadline_hit: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The task snapshot as claimed.
    pub fn task(&self) -> &Task {
        &self.task
    }
    /// Task id.
    pub fn id(&self) -> TaskId {
        self.task.id
    }
    /// Handler name.
    pub fn name(&self) -> &str {
        &self.task.name
    }
    /// Payload as JSON.
    pub fn payload(&self) -> &Value {
        &self.task.payload
    }
    /// Payload deserialised into `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.task.payload)
    }
    /// Workflow stage (0 on the first run, +1 after each resume from suspension).
    pub fn stage(&self) -> i32 {
        self.task.stage
    }
    /// Attempt number (1-based).
    pub fn attempt(&self) -> i32 {
        self.task.attempt
    }
    /// Parent id, for children.
    pub fn parent_id(&self) -> Option<TaskId> {
        self.task.parent_id
    }
    /// Context bytes stored by an earlier `next`/`suspend`.
    pub fn context(&self) -> Option<&[u8]> {
        self.task.context.as_deref()
    }
    /// Outcomes of the children of the previous round, in child id order (empty at stage 0).
    pub fn child_results(&self) -> &[ChildResult] {
        &self.child_results
    }
    /// The reference's `task.result` for a resumed parent: the same list as `child_results`.
    pub fn result(&self) -> &[ChildResult] {
        self.child_results()
    }
    /// The executing worker.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }
    /// The attempt's deadline (`start_time + timeout`), if it has one.
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        self.task.deadline
    }
    /// Fails with [`PortError::DeadlineExceeded`] once the deadline has passed; an attempt
    /// that returns an error after this fired ends as `timeout`.
    pub fn check_timeout(&self) -> Result<(), PortError> {
        match self.task.deadline {
            Some(deadline) if self.clock.now() >= deadline => {
                self.deadline_hit.store(true, Ordering::SeqCst);
                Err(PortError::DeadlineExceeded {
                    task_id: self.task.id,
                    deadline,
                })
            }
            _ => Ok(()),
        }
    }
    /// Whether `check_timeout` reported the deadline.
    pub fn deadline_reported(&self) -> bool {
        self.deadline_hit.load(Ordering::SeqCst)
    }
    /// Cancelled when the attempt is cancelled, timed out, paused or the worker stops.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancellation
    }
    /// Whether the attempt has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled()
    }

    fn record_context(&self) -> RecordContext {
        RecordContext {
            task_id: self.task.id,
            root_id: self.task.workflow_root(),
            parent_id: self.task.parent_id,
            stage: self.task.stage,
            worker_id: self.worker_id.to_string(),
            attempt: self.task.attempt,
        }
    }

    /// Writes a `task_checkpoint` event (`task.audit`). Returns the event id.
    pub async fn audit(&self, checkpoint: impl Into<Checkpoint>) -> Result<i64, PortError> {
        let record =
            checkpoint_record(&self.record_context(), checkpoint.into(), self.clock.now())?;
        self.store.record(record).await
    }

    /// Writes a `task_progress` event and the progress snapshot (`task.progress`).
    pub async fn progress(&self, progress: impl Into<Progress>) -> Result<i64, PortError> {
        let record = progress_record(&self.record_context(), progress.into(), self.clock.now())?;
        self.store.record(record).await
    }

    /// The reference's `setProgress(percent)`.
    pub async fn set_progress(&self, percent: f64) -> Result<i64, PortError> {
        self.progress(Progress::percent(percent)).await
    }

    /// Builds the `next(children)` outcome.
    pub fn next(&self, children: Vec<ChildSpec>) -> Spawn {
        Spawn::new(children)
    }

    /// Builds an explicit suspension outcome.
    pub fn suspend(&self, reason: impl Into<String>) -> Suspension {
        Suspension::new(reason)
    }
}
