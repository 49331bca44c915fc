//! The rules behind [`crate::machine::apply`].
//!
//! Each command works on a mutable copy of the task; events are emitted from that copy at the
//! point in the rule where the row would be in the state the event describes, so an event's
//! stage, error and retry count are those of the row at that moment (a failure event carries
//! the failed attempt's stage, the retry event that follows it the reset stage).

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use crate::cron::CronSchedule;
use crate::error::DomainError;
use crate::event::{AttemptChange, AttemptClose, EventType, NewAttempt, NewEvent};
use crate::limits;
use crate::machine::{ChildSettlement, Command, ExpiryKind, Guard, ParentEffect, Transition};
use crate::model::{AttemptOutcome, ChildFailurePolicy, Task, TaskStatus, TaskType};

/// The suspension reason of a parent waiting for the children of its current round (the
/// attempt that returned `next()`).
const AWAITING_SUBTASKS: &str = "awaiting_subtasks";

/// Longest snooze a handler may ask for (a year): beyond it, an instant is more likely a
/// unit mistake than a plan.
pub(crate) const MAX_SNOOZE: Duration = Duration::from_secs(365 * 24 * 3600);

pub(crate) fn apply(
    task: &Task,
    command: Command,
    now: DateTime<Utc>,
) -> Result<Transition, DomainError> {
    let name = command.name();
    let mut step = Step::new(task, now);
    match command {
        Command::Claim { worker_id } => step.claim(name, worker_id)?,
        Command::Complete { attempt, result } => {
            step.fence(attempt)?;
            // A result that could not be read back (too deep) or written (too large) must not
            // be stored: the attempt fails with the reason instead, like any handler error, so
            // it is never silently corrupted or left running.
            match limits::check_json("result", &result, limits::MAX_JSON_DEPTH) {
                Ok(()) => step.complete(result)?,
                Err(error) => {
                    step.fail(format!("Task result not stored: {error}"), false, None, 0.0)
                }
            }
        }
        Command::Fail {
            attempt,
            error,
            timed_out,
            jitter,
        } => {
            step.fence(attempt)?;
            step.fail(error, timed_out, None, jitter);
        }
        Command::FailPermanently { attempt, error } => {
            step.fence(attempt)?;
            step.fail_permanently(error);
        }
        Command::Snooze { attempt, delay } => {
            step.fence(attempt)?;
            step.snooze(delay)?;
        }
        Command::Retry { reason } => step.retry(name, reason)?,
        Command::Expire {
            attempt,
            kind,
            jitter,
        } => {
            step.fence(attempt)?;
            let error = match kind {
                ExpiryKind::Deadline => "Task exceeded total timeout limit",
                ExpiryKind::Heartbeat => "Task heartbeat timed out",
            };
            step.fail(error.to_owned(), true, Some(kind), jitter);
        }
        Command::AwaitChildren {
            attempt,
            child_ids,
            child_names,
            context,
            policy,
        } => {
            step.fence(attempt)?;
            step.await_children(child_ids, child_names, context, policy)?;
        }
        Command::Suspend {
            attempt,
            reason,
            metadata,
            context,
        } => {
            step.fence(attempt)?;
            step.suspend(&reason, metadata, context)?;
        }
        Command::Release { attempt, reason } => {
            step.fence(attempt)?;
            step.release(Release::Worker { reason });
        }
        Command::Recover {
            attempt,
            by_worker_id,
            by_pod_id,
        } => {
            step.fence(attempt)?;
            step.release(Release::Recovery {
                by_worker_id,
                by_pod_id,
            });
        }
        Command::Pause => step.pause(name)?,
        Command::Resume {
            reason,
            outstanding_children,
        } => step.resume(name, reason, outstanding_children)?,
        Command::Cancel { reason } => step.cancel(name, reason)?,
        Command::ChildSettled(settlement) => step.child_settled(settlement),
    }
    Ok(step.finish())
}

/// How a running attempt gives up ownership without failing.
enum Release {
    /// The owning worker hands it back (graceful stop, missing handler).
    Worker { reason: String },
    /// Another worker takes it from a dead or superseded one.
    Recovery {
        by_worker_id: String,
        by_pod_id: Option<String>,
    },
}

/// A transition being built.
struct Step<'a> {
    before: &'a Task,
    now: DateTime<Utc>,
    task: Task,
    attempt: Option<AttemptChange>,
    events: Vec<NewEvent>,
    parent: Option<ParentEffect>,
}

impl<'a> Step<'a> {
    fn new(before: &'a Task, now: DateTime<Utc>) -> Self {
        Step {
            before,
            now,
            task: before.clone(),
            attempt: None,
            events: Vec::new(),
            parent: None,
        }
    }

    fn finish(mut self) -> Transition {
        if self.task.status != self.before.status {
            self.task.last_active_time = Some(self.now);
        }
        if let Some(last) = self.events.last() {
            self.task.last_event_time = Some(self.now);
            self.task.last_event_type = Some(last.event_type.as_str().to_owned());
        }
        Transition {
            guard: Guard {
                status: self.before.status,
                attempt: self.before.attempt,
            },
            task: self.task,
            attempt: self.attempt,
            events: self.events,
            parent: self.parent,
        }
    }

    // ---- shared pieces -------------------------------------------------------------------

    /// A write about attempt `attempt` is only valid while that attempt still runs.
    fn fence(&self, attempt: i32) -> Result<(), DomainError> {
        if self.before.status == TaskStatus::Running && self.before.attempt == attempt {
            Ok(())
        } else {
            Err(DomainError::StaleAttempt {
                task_id: self.before.id,
                attempt,
                current_attempt: self.before.attempt,
                status: self.before.status,
            })
        }
    }

    fn illegal(&self, command: &'static str) -> DomainError {
        DomainError::IllegalTransition {
            task_id: self.before.id,
            from: self.before.status,
            command,
        }
    }

    /// The attempt an admin command's events belong to: the running one, if any.
    fn admin_attempt(&self) -> Option<i32> {
        (self.before.status == TaskStatus::Running).then_some(self.before.attempt)
    }

    /// Closes the attempt the input task was running.
    fn close(&mut self, outcome: AttemptOutcome, error: Option<String>, timeout_flag: bool) {
        self.attempt = Some(AttemptChange::Close(AttemptClose {
            task_id: self.before.id,
            attempt: self.before.attempt,
            ended_at: self.now,
            outcome,
            error,
            timeout_flag,
        }));
    }

    /// Closes the running attempt when there is one (admin commands work on any status).
    fn close_if_running(&mut self, outcome: AttemptOutcome, error: Option<String>) {
        if self.before.status == TaskStatus::Running {
            self.close(outcome, error, false);
        }
    }

    /// The parent bookkeeping a child's settlement triggers, if the task is a child.
    fn settle_in_parent(&mut self, failed: bool) {
        self.parent = self.task.parent_id.map(|parent_id| ParentEffect {
            parent_id,
            child_id: self.task.id,
            round: self.task.parent_round.unwrap_or(0),
            failed,
        });
    }

    fn emit(
        &mut self,
        event_type: EventType,
        (from, to): (TaskStatus, TaskStatus),
        worker_id: Option<String>,
        attempt: Option<i32>,
        message: String,
        metadata: Map<String, Value>,
    ) {
        self.events.push(NewEvent {
            task_id: self.task.id,
            root_id: self.task.workflow_root(),
            parent_id: self.task.parent_id,
            event_type,
            from_status: Some(from),
            to_status: Some(to),
            stage: self.task.stage,
            worker_id,
            attempt,
            event_time: self.now,
            message: Some(message),
            metadata: Value::Object(metadata),
        });
    }

    /// An event attributed to the task's worker, with the reference's generic metadata and
    /// message plus `extra` keys.
    fn emit_generic(
        &mut self,
        event_type: EventType,
        from: TaskStatus,
        attempt: Option<i32>,
        extra: Map<String, Value>,
    ) {
        let to = self.task.status;
        let mut metadata = self.generic_metadata();
        metadata.extend(extra);
        let message = format!("Task {} status changed from {from} to {to}", self.task.name);
        let worker_id = self.task.worker_id.clone();
        self.emit(
            event_type,
            (from, to),
            worker_id,
            attempt,
            message,
            metadata,
        );
    }

    /// `{error, retry_count, next_run_time}` of the current snapshot; `next_run_time` only
    /// means something for a pending task, so it is null otherwise.
    fn generic_metadata(&self) -> Map<String, Value> {
        let next_run_time = if self.task.status == TaskStatus::Pending {
            Value::String(rfc3339(self.task.next_run_time))
        } else {
            Value::Null
        };
        object([
            ("error", json!(self.task.error)),
            ("retry_count", json!(self.task.retry_count)),
            ("next_run_time", next_run_time),
        ])
    }

    /// Leaving `running` ends the attempt's deadline.
    fn leave_running(&mut self, status: TaskStatus) {
        self.task.status = status;
        self.task.deadline = None;
    }

    // ---- commands ------------------------------------------------------------------------

    fn claim(&mut self, command: &'static str, worker_id: String) -> Result<(), DomainError> {
        if self.before.status != TaskStatus::Pending || self.before.next_run_time > self.now {
            return Err(self.illegal(command));
        }
        let attempt = self.before.attempt.saturating_add(1);
        let task = &mut self.task;
        task.status = TaskStatus::Running;
        task.attempt = attempt;
        task.worker_id = Some(worker_id.clone());
        task.start_time = Some(self.now);
        task.deadline = task.timeout.map(|limit| crate::time::add(self.now, limit));
        // The progress snapshot describes one attempt; a new attempt starts without one.
        task.current_stage_name = None;
        task.progress_text = None;
        task.progress_percent = None;
        self.attempt = Some(AttemptChange::Open(NewAttempt {
            task_id: self.before.id,
            attempt,
            worker_id: worker_id.clone(),
            started_at: self.now,
        }));

        let name = self.task.name.clone();
        let retry_count = self.task.retry_count;
        let (from, to) = (TaskStatus::Pending, TaskStatus::Running);
        let worker = Some(worker_id.clone());
        self.emit(
            EventType::TaskClaimed,
            (from, to),
            worker.clone(),
            Some(attempt),
            format!("Task {name} claimed by {worker_id}"),
            object([("name", json!(name))]),
        );
        self.emit(
            EventType::TaskStarted,
            (from, to),
            worker.clone(),
            Some(attempt),
            format!("Task {name} started by {worker_id}"),
            object([("name", json!(name)), ("retry_count", json!(retry_count))]),
        );
        if retry_count > 0 {
            self.emit(
                EventType::TaskRetryStarted,
                (from, to),
                worker,
                Some(attempt),
                format!("Task {name} retry attempt {retry_count} started by {worker_id}"),
                object([("name", json!(name)), ("retry_count", json!(retry_count))]),
            );
        }
        Ok(())
    }

    fn complete(&mut self, result: Value) -> Result<(), DomainError> {
        let attempt = Some(self.before.attempt);
        match self.before.task_type {
            TaskType::Async => {
                self.leave_running(TaskStatus::Completed);
                self.task.result = Some(result);
                self.task.error = None;
                self.close(AttemptOutcome::Completed, None, false);
                self.emit_generic(
                    EventType::TaskCompleted,
                    TaskStatus::Running,
                    attempt,
                    Map::new(),
                );
                self.settle_in_parent(false);
            }
            TaskType::Cron => {
                // Computed first: a schedule that cannot produce a next run must not leave
                // half a transition behind.
                let next_run_time = self.next_cron_run()?;
                self.leave_running(TaskStatus::Pending);
                let task = &mut self.task;
                task.stage = 0;
                task.retry_count = 0;
                task.result = Some(result);
                task.error = None;
                task.context = None;
                task.next_run_time = next_run_time;
                self.close(AttemptOutcome::Completed, None, false);
                self.emit_generic(
                    EventType::TaskStatusChanged,
                    TaskStatus::Running,
                    attempt,
                    Map::new(),
                );
            }
        }
        Ok(())
    }

    fn next_cron_run(&self) -> Result<DateTime<Utc>, DomainError> {
        let expr = self
            .before
            .cron_expr
            .as_deref()
            .ok_or_else(|| DomainError::InvalidCron {
                expr: String::new(),
                reason: format!("cron task {} has no cron expression", self.before.id),
            })?;
        CronSchedule::parse(expr, self.before.timezone.as_deref())?.next_after(self.now)
    }

    /// Records the failure of the running attempt, then resolves it in the same transition:
    /// a retry while attempts remain, otherwise the type's exhausted state.
    fn fail(&mut self, error: String, timed_out: bool, expiry: Option<ExpiryKind>, jitter: f64) {
        self.resolve_failure(error, timed_out, expiry, Some(jitter));
    }

    /// A failure no retry can fix: recorded like any failure, then the exhausted state at once
    /// (`permanently_failed`, or `paused` for cron), with `retry_skipped` in the event.
    fn fail_permanently(&mut self, error: String) {
        self.resolve_failure(error, false, None, None);
    }

    /// `jitter: None` means the error is not retryable.
    fn resolve_failure(
        &mut self,
        error: String,
        timed_out: bool,
        expiry: Option<ExpiryKind>,
        jitter: Option<f64>,
    ) {
        let attempt = Some(self.before.attempt);
        let (failed_status, event_type, outcome) = if timed_out {
            (
                TaskStatus::Timeout,
                EventType::TaskTimedOut,
                AttemptOutcome::Timeout,
            )
        } else {
            (
                TaskStatus::Failed,
                EventType::TaskFailed,
                AttemptOutcome::Failed,
            )
        };
        self.leave_running(failed_status);
        self.task.error = Some(error.clone());
        self.close(outcome, Some(error.clone()), timed_out);
        match expiry {
            None => self.emit_generic(event_type, TaskStatus::Running, attempt, Map::new()),
            Some(kind) => {
                let (timeout_type, message) = match kind {
                    ExpiryKind::Deadline => (
                        "total",
                        format!("Task {} exceeded total timeout", self.task.name),
                    ),
                    ExpiryKind::Heartbeat => (
                        "heartbeat",
                        format!("Task {} lost heartbeat", self.task.name),
                    ),
                };
                let mut metadata = self.generic_metadata();
                metadata.insert("timeout_type".to_owned(), json!(timeout_type));
                let worker_id = self.task.worker_id.clone();
                self.emit(
                    event_type,
                    (TaskStatus::Running, failed_status),
                    worker_id,
                    attempt,
                    message,
                    metadata,
                );
            }
        }

        let worker_id = self.task.worker_id.clone();
        let name = self.task.name.clone();
        let policy = self.task.retry_policy();
        let retries_left = policy.retries_after(u32::try_from(self.task.retry_count).unwrap_or(0));
        if let Some(jitter) = jitter.filter(|_| retries_left) {
            let retry_count = self.task.retry_count.saturating_add(1);
            let delay = policy.delay(u32::try_from(retry_count).unwrap_or(0), jitter);
            let task = &mut self.task;
            task.status = TaskStatus::Pending;
            task.retry_count = retry_count;
            task.stage = 0;
            task.context = None;
            task.next_run_time = crate::time::add(self.now, delay);
            let metadata = object([
                ("retry_count", json!(retry_count)),
                ("previous_status", json!(failed_status.as_str())),
                ("next_run_time", json!(rfc3339(task.next_run_time))),
            ]);
            self.emit(
                EventType::TaskRetryScheduled,
                (failed_status, TaskStatus::Pending),
                worker_id,
                attempt,
                format!("Task {name} scheduled for retry"),
                metadata,
            );
            return;
        }
        match self.task.task_type {
            TaskType::Async => {
                self.task.status = TaskStatus::PermanentlyFailed;
                self.emit(
                    EventType::TaskPermanentlyFailed,
                    (failed_status, TaskStatus::PermanentlyFailed),
                    worker_id,
                    attempt,
                    match jitter {
                        Some(_) => format!("Task {name} permanently failed after retry exhaustion"),
                        None => {
                            format!("Task {name} permanently failed: the error is not retryable")
                        }
                    },
                    match jitter {
                        Some(_) => {
                            object([("error", json!(error)), ("retry_exhausted", json!(true))])
                        }
                        None => object([("error", json!(error)), ("retry_skipped", json!(true))]),
                    },
                );
                self.settle_in_parent(true);
            }
            TaskType::Cron => {
                self.task.status = TaskStatus::Paused;
                self.emit(
                    EventType::TaskPaused,
                    (failed_status, TaskStatus::Paused),
                    worker_id,
                    attempt,
                    match jitter {
                        Some(_) => format!("Cron task {name} paused after retry exhaustion"),
                        None => format!("Cron task {name} paused: the error is not retryable"),
                    },
                    match jitter {
                        Some(_) => object([("retry_exhausted", json!(true))]),
                        None => object([("error", json!(error)), ("retry_skipped", json!(true))]),
                    },
                );
            }
        }
    }

    fn await_children(
        &mut self,
        child_ids: Vec<crate::model::TaskId>,
        child_names: Vec<String>,
        context: Option<Vec<u8>>,
        policy: ChildFailurePolicy,
    ) -> Result<(), DomainError> {
        if child_ids.is_empty() {
            return Err(DomainError::InvalidOption {
                field: "children",
                reason: "next() needs at least one child".to_owned(),
            });
        }
        if let Some(context) = &context {
            limits::check_bytes("next.context", context)?;
        }
        if child_names.len() != child_ids.len() {
            return Err(DomainError::InvalidOption {
                field: "children",
                reason: format!(
                    "{} child ids but {} child names",
                    child_ids.len(),
                    child_names.len()
                ),
            });
        }
        let count = i32::try_from(child_ids.len()).unwrap_or(i32::MAX);
        let attempt = Some(self.before.attempt);
        self.leave_running(TaskStatus::Suspended);
        let task = &mut self.task;
        task.suspend_reason = Some(AWAITING_SUBTASKS.to_owned());
        task.suspend_metadata = None;
        task.total_children = task.total_children.saturating_add(count);
        task.child_failure_policy = policy;
        if let Some(context) = context {
            task.context = Some(context);
        }
        self.close(AttemptOutcome::Suspended, None, false);

        let name = self.task.name.clone();
        let worker_id = self.task.worker_id.clone();
        let (from, to) = (TaskStatus::Running, TaskStatus::Suspended);
        self.emit(
            EventType::TaskSubtasksCreated,
            (from, to),
            worker_id.clone(),
            attempt,
            format!("Task {name} created {count} subtasks"),
            object([
                ("child_task_ids", json!(child_ids)),
                ("child_task_names", json!(child_names)),
                ("child_count", json!(count)),
            ]),
        );
        self.emit(
            EventType::TaskStatusChanged,
            (from, to),
            worker_id,
            attempt,
            format!("Task {name} suspended while waiting for child tasks"),
            object([
                ("suspend_reason", json!(AWAITING_SUBTASKS)),
                ("child_count", json!(count)),
                ("child_task_ids", json!(child_ids)),
            ]),
        );
        Ok(())
    }

    fn suspend(
        &mut self,
        reason: &str,
        metadata: Option<Value>,
        context: Option<Vec<u8>>,
    ) -> Result<(), DomainError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(DomainError::InvalidOption {
                field: "suspension.reason",
                reason: "must be a non-empty string after trimming".to_owned(),
            });
        }
        limits::check_len("suspension.reason", reason, limits::MAX_NAME_BYTES)?;
        if let Some(metadata) = &metadata {
            // One level less: the metadata is also stored inside the event's metadata object.
            limits::check_json("suspension.metadata", metadata, limits::MAX_JSON_DEPTH - 1)?;
        }
        if let Some(context) = &context {
            limits::check_bytes("suspension.context", context)?;
        }
        self.leave_running(TaskStatus::Suspended);
        self.task.suspend_reason = Some(reason.to_owned());
        self.task.suspend_metadata = metadata.clone();
        if let Some(context) = context {
            self.task.context = Some(context);
        }
        self.close(AttemptOutcome::Suspended, None, false);
        let mut extra = object([("suspend_reason", json!(reason))]);
        if let Some(metadata) = metadata {
            extra.insert("suspend_metadata".to_owned(), metadata);
        }
        self.emit_generic(
            EventType::TaskSuspended,
            TaskStatus::Running,
            Some(self.before.attempt),
            extra,
        );
        Ok(())
    }

    fn release(&mut self, how: Release) {
        let old_worker = self.before.worker_id.clone();
        self.leave_running(TaskStatus::Pending);
        let task = &mut self.task;
        task.stage = 0;
        task.context = None;
        task.next_run_time = self.now;
        task.start_time = None;
        task.worker_id = None;
        let (error, event_worker, message, metadata) = match how {
            Release::Worker { reason } => (
                format!("Task released: {reason}"),
                old_worker.clone(),
                format!(
                    "Task {} released by worker {}: {reason}",
                    self.task.name,
                    old_worker.as_deref().unwrap_or("unknown")
                ),
                object([
                    ("recovery_reason", json!(reason)),
                    ("recovered_from_worker_id", json!(old_worker)),
                ]),
            ),
            Release::Recovery {
                by_worker_id,
                by_pod_id,
            } => (
                "Task ownership recovered after worker became unavailable".to_owned(),
                Some(by_worker_id.clone()),
                format!(
                    "Task {} recovered from worker {}",
                    self.task.id,
                    old_worker.as_deref().unwrap_or("unknown")
                ),
                object([
                    ("recovery_reason", json!("worker_unavailable")),
                    ("recovered_from_worker_id", json!(old_worker)),
                    ("recovered_by_worker_id", json!(by_worker_id)),
                    ("recovered_by_pod_id", json!(by_pod_id)),
                ]),
            ),
        };
        self.close(AttemptOutcome::Interrupted, Some(error), false);
        self.emit(
            EventType::TaskRecovered,
            (TaskStatus::Running, TaskStatus::Pending),
            event_worker,
            Some(self.before.attempt),
            message,
            metadata,
        );
    }

    fn pause(&mut self, command: &'static str) -> Result<(), DomainError> {
        let from = self.before.status;
        if !matches!(
            from,
            TaskStatus::Running | TaskStatus::Pending | TaskStatus::Failed | TaskStatus::Timeout
        ) {
            return Err(self.illegal(command));
        }
        self.leave_running(TaskStatus::Paused);
        self.close_if_running(AttemptOutcome::Paused, None);
        let attempt = self.admin_attempt();
        self.emit_generic(EventType::TaskPaused, from, attempt, Map::new());
        Ok(())
    }

    fn resume(
        &mut self,
        command: &'static str,
        reason: Option<String>,
        outstanding_children: i32,
    ) -> Result<(), DomainError> {
        let from = self.before.status;
        match from {
            TaskStatus::Suspended => {
                if self.before.suspend_reason.as_deref() == Some(AWAITING_SUBTASKS)
                    && outstanding_children > 0
                {
                    return Err(DomainError::AwaitingChildren {
                        task_id: self.before.id,
                        outstanding: outstanding_children,
                    });
                }
                let task = &mut self.task;
                task.status = TaskStatus::Pending;
                task.stage = task.stage.saturating_add(1);
                task.retry_count = 0;
                task.next_run_time = self.now;
                task.suspend_reason = None;
                task.suspend_metadata = None;
                let reason = reason
                    .filter(|reason| !reason.trim().is_empty())
                    .unwrap_or_else(|| "manual".to_owned());
                self.emit_generic(
                    EventType::TaskResumed,
                    from,
                    None,
                    object([("resume_reason", json!(reason))]),
                );
            }
            TaskStatus::Paused | TaskStatus::Failed | TaskStatus::Timeout | TaskStatus::Running => {
                self.leave_running(TaskStatus::Pending);
                let task = &mut self.task;
                task.stage = 0;
                task.retry_count = 0;
                task.next_run_time = self.now;
                task.context = None;
                self.close_if_running(AttemptOutcome::Pending, None);
                let attempt = self.admin_attempt();
                self.emit_generic(EventType::TaskStatusChanged, from, attempt, Map::new());
            }
            TaskStatus::Pending | TaskStatus::Completed | TaskStatus::PermanentlyFailed => {
                return Err(self.illegal(command));
            }
        }
        Ok(())
    }

    /// Back to `pending` at `now + delay`, keeping stage, context and retry count: the
    /// attempt ends with outcome `pending` and nothing is charged.
    fn snooze(&mut self, delay: Duration) -> Result<(), DomainError> {
        if delay > MAX_SNOOZE {
            return Err(DomainError::InvalidOption {
                field: "snooze",
                reason: format!(
                    "a snooze of {} s is longer than the maximum of {} s",
                    delay.as_secs(),
                    MAX_SNOOZE.as_secs()
                ),
            });
        }
        let attempt = self.before.attempt;
        let worker_id = self.before.worker_id.clone();
        self.leave_running(TaskStatus::Pending);
        let task = &mut self.task;
        task.next_run_time = crate::time::add(self.now, delay);
        task.start_time = None;
        task.worker_id = None;
        let next_run_time = task.next_run_time;
        self.close(AttemptOutcome::Pending, None, false);
        let delay_ms = crate::time::duration_millis(delay);
        self.emit(
            EventType::TaskSnoozed,
            (TaskStatus::Running, TaskStatus::Pending),
            worker_id,
            Some(attempt),
            format!("Task {} snoozed for {delay_ms} ms", self.task.name),
            object([
                ("snooze_ms", json!(delay_ms)),
                ("next_run_time", json!(rfc3339(next_run_time))),
            ]),
        );
        Ok(())
    }

    /// `retry_task`: a dead task (`permanently_failed`, or `paused` after exhaustion or by
    /// hand) runs again now from stage 0 with its whole retry budget. Its error stays until a
    /// success clears it; the history stays in the audit.
    fn retry(&mut self, command: &'static str, reason: Option<String>) -> Result<(), DomainError> {
        let from = self.before.status;
        if !matches!(from, TaskStatus::PermanentlyFailed | TaskStatus::Paused) {
            return Err(self.illegal(command));
        }
        let previous_retry_count = self.before.retry_count;
        let task = &mut self.task;
        task.status = TaskStatus::Pending;
        task.retry_count = 0;
        task.stage = 0;
        task.context = None;
        task.next_run_time = self.now;
        task.worker_id = None;
        task.start_time = None;
        task.deadline = None;
        task.suspend_reason = None;
        task.suspend_metadata = None;
        let reason = reason
            .filter(|reason| !reason.trim().is_empty())
            .unwrap_or_else(|| "manual".to_owned());
        self.emit(
            EventType::TaskRetried,
            (from, TaskStatus::Pending),
            None,
            None,
            format!("Task {} retried from {from}", self.task.name),
            object([
                ("retry_reason", json!(reason)),
                ("previous_status", json!(from.as_str())),
                ("previous_retry_count", json!(previous_retry_count)),
            ]),
        );
        Ok(())
    }

    fn cancel(&mut self, command: &'static str, reason: Option<String>) -> Result<(), DomainError> {
        let from = self.before.status;
        if from.is_terminal() {
            return Err(self.illegal(command));
        }
        let reason = reason.filter(|reason| !reason.trim().is_empty());
        let error = reason
            .clone()
            .unwrap_or_else(|| "Task cancelled".to_owned());
        self.leave_running(TaskStatus::PermanentlyFailed);
        let task = &mut self.task;
        task.error = Some(error.clone());
        task.suspend_reason = None;
        task.suspend_metadata = None;
        self.close_if_running(AttemptOutcome::Cancelled, Some(error));
        let attempt = self.admin_attempt();
        self.emit_generic(
            EventType::TaskPermanentlyFailed,
            from,
            attempt,
            object([("cancel_reason", json!(reason))]),
        );
        self.settle_in_parent(true);
        Ok(())
    }

    fn child_settled(&mut self, settlement: ChildSettlement) {
        let ChildSettlement {
            child_id,
            round,
            failed,
            outstanding,
        } = settlement;
        // A settlement only counts for the round the parent is waiting on; anything else is
        // a late or repeated report, and ignoring it is what makes accounting exactly-once.
        // The round is the attempt that returned `next()`: only a claim changes the attempt
        // number, so it stays put while the parent waits and never repeats, whereas the stage
        // goes back to 0 on retry, release and restart and would let an old round's children
        // count toward a new one.
        let waiting = self.before.status == TaskStatus::Suspended
            && self.before.suspend_reason.as_deref() == Some(AWAITING_SUBTASKS)
            && self.before.attempt == round;
        if !waiting {
            return;
        }
        self.task.completed_children = self.task.completed_children.saturating_add(1);
        let from = TaskStatus::Suspended;
        let name = self.task.name.clone();
        let worker_id = self.task.worker_id.clone();
        if failed && self.before.child_failure_policy == ChildFailurePolicy::FailParent {
            self.task.suspend_reason = None;
            self.task.suspend_metadata = None;
            let metadata = object([
                ("child_task_id", json!(child_id)),
                ("reason", json!("child_failed")),
            ]);
            match self.task.task_type {
                TaskType::Async => {
                    self.task.status = TaskStatus::PermanentlyFailed;
                    self.task.error = Some(format!("Child task {child_id} failed"));
                    self.emit(
                        EventType::TaskPermanentlyFailed,
                        (from, TaskStatus::PermanentlyFailed),
                        worker_id,
                        None,
                        format!(
                            "Task {name} permanently failed because child task {child_id} failed"
                        ),
                        metadata,
                    );
                    self.settle_in_parent(true);
                }
                TaskType::Cron => {
                    self.task.status = TaskStatus::Paused;
                    self.task.error = Some(format!("Child task {child_id} failed"));
                    self.emit(
                        EventType::TaskPaused,
                        (from, TaskStatus::Paused),
                        worker_id,
                        None,
                        format!("Cron task {name} paused because child task {child_id} failed"),
                        metadata,
                    );
                }
            }
        } else if outstanding <= 0 {
            self.task.status = TaskStatus::Pending;
            self.task.stage = self.task.stage.saturating_add(1);
            self.task.suspend_reason = None;
            self.task.suspend_metadata = None;
            self.emit(
                EventType::TaskStatusChanged,
                (from, TaskStatus::Pending),
                worker_id,
                None,
                format!("Parent task {name} resumed after child completion"),
                object([("resume_reason", json!("children_completed"))]),
            );
        }
    }
}

fn rfc3339(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn object<const N: usize>(entries: [(&str, Value); N]) -> Map<String, Value> {
    entries
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
}
