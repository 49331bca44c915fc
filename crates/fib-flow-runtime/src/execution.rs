//! One execution: snapshot the handler, run it in its own task, race it against the deadline
//! and the cancellation token, and write the outcome through the fenced store commands.

use std::sync::Arc;

use fib_flow_domain::options::{self, TaskDefaults};
use fib_flow_domain::{
    ChildSpec, Command, DomainError, NewTask, Task, TaskId, TaskOptions, TaskType, time,
};
use fib_flow_ports::{
    HandlerResult, Outcome, PortError, Spawn, SpawnRequest, TaskHandle, is_permanent,
};
use tokio::task::JoinError;
use tracing::Instrument;

use crate::cancel::{Cancel, CancelReason};
use crate::engine::Inner;
use crate::metrics;
use crate::slot::Slot;
use crate::store_faults::retry_transient;

/// Message of a failure written when the local deadline cancels a handler.
pub(crate) const TIMEOUT_MESSAGE: &str = "Task execution timeout";

/// How the race between the handler, its deadline and its token ended.
enum Ended {
    Returned(Result<HandlerResult, JoinError>),
    Deadline,
    Cancelled(CancelReason),
}

/// What became of a fenced write.
#[derive(Debug)]
pub(crate) enum Written<T> {
    Done(T),
    /// The attempt no longer owns the task; logged and dropped.
    Stale,
    /// The domain refused the command (invalid suspension, bad child, illegal transition).
    Rejected(DomainError),
    /// The store kept failing; logged.
    Failed,
}

impl Inner {
    /// Runs one claimed task to its written outcome.
    pub(crate) async fn execute(self: &Arc<Self>, task: Task, cancel: Cancel, slot: &Slot) {
        let id = task.id;
        let attempt = task.attempt;
        // Hot reload: the attempt runs the handler registered now, whatever happens later.
        let Some(entry) = self.registry.get(&task.name) else {
            tracing::warn!(task_id = %id, attempt, name = %task.name, "handler missing at execution start; releasing the task");
            let release = Command::Release {
                attempt,
                reason: "handler_missing".into(),
            };
            self.write(id, attempt, "release", release).await;
            return;
        };
        let child_results = if task.stage > 0 && task.total_children > 0 {
            // The previous round is the attempt that returned `next()`. A suspended parent is
            // never claimed, so the attempt resuming it is exactly the next one; a restart
            // from stage 0 (retry, release, recovery) never gets here.
            let round = task.attempt - 1;
            match self
                .retrying("child results", id, attempt, || {
                    self.store.child_results(id, round)
                })
                .await
            {
                Ok(results) => results,
                Err(error) => {
                    let message = format!("could not load child results of round {round}: {error}");
                    self.fail(id, attempt, message, false).await;
                    return;
                }
            }
        } else {
            Vec::new()
        };
        let handle = TaskHandle::new(
            task.clone(),
            child_results,
            self.worker_id.clone(),
            self.store.clone(),
            self.clock.clone(),
            // A child token: the handler sees every cancellation of ours, but cancelling it
            // from inside the handler cannot masquerade as one (no reason, no grace period).
            cancel.token.child_token(),
        );
        let probe = handle.clone();
        let handler = entry.handler;
        let handler_started = self.clock.now();
        // Its own task: a panic is caught as a JoinError, and aborting drops the future.
        let mut join = tokio::spawn(
            async move { handler.run(handle).await }.instrument(tracing::Span::current()),
        );
        let deadline = task.deadline;
        let deadline_passed = || async move {
            match deadline {
                Some(deadline) => self.clock.sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };

        let mut ended = tokio::select! {
            biased;
            result = &mut join => Ended::Returned(result),
            () = deadline_passed() => Ended::Deadline,
            () = cancel.token.cancelled() => Ended::Cancelled(cancel.reason()),
        };
        if let Ended::Cancelled(CancelReason::Admin) = ended {
            // The row already moved (cancel/pause/resume); give a cooperative handler the
            // chance to see its token and return, but never hold the slot for longer than
            // `stop_timeout` or past the deadline.
            let grace = time::add(self.clock.now(), self.options.stop_timeout);
            ended = tokio::select! {
                biased;
                result = &mut join => Ended::Returned(result),
                () = deadline_passed() => Ended::Cancelled(CancelReason::Admin),
                () = self.clock.sleep_until(grace) => Ended::Cancelled(CancelReason::Admin),
            };
        }

        if let Ended::Returned(_) = ended {
            slot.end_handler();
        }
        // A handler that noticed `stop()` cancelling it and gave up (an error, a panic) was
        // interrupted, not failed: release the task as a stop does, charging no retry. A
        // result it still returned is kept.
        let stopping = cancel.token.is_cancelled() && cancel.reason() == CancelReason::Stopping;
        count_outcome(&task.name, &ended, stopping);
        if let Ok(ran) = (self.clock.now() - handler_started).to_std() {
            metrics::seconds(metrics::EXECUTION_SECONDS, &task.name, ran);
        }
        match ended {
            Ended::Returned(result) if stopping && !matches!(result, Ok(Ok(_))) => {
                tracing::debug!(task_id = %id, attempt, "handler gave up on stop; releasing the task");
                let release = Command::Release {
                    attempt,
                    reason: "worker_stopping".into(),
                };
                self.write(id, attempt, "release", release).await;
            }
            Ended::Returned(Ok(result)) => self.record(&task, &probe, result).await,
            Ended::Returned(Err(error)) => {
                let message = if error.is_panic() {
                    format!(
                        "Task handler panicked: {}",
                        panic_message(error.into_panic())
                    )
                } else {
                    format!("Task handler was aborted: {error}")
                };
                tracing::warn!(task_id = %id, attempt, %message, "handler did not return");
                self.fail(id, attempt, message, probe.deadline_reported())
                    .await;
            }
            Ended::Deadline => {
                cancel.cancel(CancelReason::Deadline);
                join.abort();
                let _ = join.await;
                slot.end_handler();
                tracing::warn!(task_id = %id, attempt, deadline = ?deadline, "deadline passed; handler cancelled");
                self.fail(id, attempt, TIMEOUT_MESSAGE.into(), true).await;
            }
            Ended::Cancelled(reason) => {
                join.abort();
                // Awaiting the aborted task guarantees the handler future has been dropped
                // (its destructors ran) before the slot is given back.
                let _ = join.await;
                slot.end_handler();
                match reason {
                    CancelReason::Stopping => {
                        let release = Command::Release {
                            attempt,
                            reason: "worker_stopping".into(),
                        };
                        self.write(id, attempt, "release", release).await;
                    }
                    CancelReason::Deadline => {
                        self.fail(id, attempt, TIMEOUT_MESSAGE.into(), true).await;
                    }
                    CancelReason::Expired | CancelReason::Admin => {
                        tracing::debug!(task_id = %id, attempt, ?reason, "handler dropped after cancellation");
                    }
                }
            }
        }
    }

    /// Writes the outcome of a handler that returned.
    async fn record(&self, task: &Task, probe: &TaskHandle, result: HandlerResult) {
        let id = task.id;
        let attempt = task.attempt;
        match result {
            Ok(Outcome::Complete(result)) => {
                self.write(
                    id,
                    attempt,
                    "completion",
                    Command::Complete { attempt, result },
                )
                .await;
            }
            Ok(Outcome::Spawn(spawn)) => self.spawn(task, spawn).await,
            Ok(Outcome::Suspend(suspension)) => {
                let command = Command::Suspend {
                    attempt,
                    reason: suspension.reason,
                    metadata: suspension.metadata,
                    context: suspension.context,
                };
                if let Written::Rejected(error) =
                    self.write(id, attempt, "suspension", command).await
                {
                    self.fail(id, attempt, error.to_string(), false).await;
                }
            }
            Ok(Outcome::Snooze(delay)) => {
                let command = Command::Snooze { attempt, delay };
                if let Written::Rejected(error) = self.write(id, attempt, "snooze", command).await {
                    self.fail(id, attempt, error.to_string(), false).await;
                }
            }
            Err(error) if is_permanent(error.as_ref()) => {
                let message = error_text(error.as_ref());
                tracing::warn!(task_id = %id, attempt, error = %message, "handler failed permanently; no retry");
                let command = Command::FailPermanently {
                    attempt,
                    error: message,
                };
                self.write(id, attempt, "permanent failure", command).await;
            }
            Err(error) => {
                let message = error_text(error.as_ref());
                tracing::warn!(task_id = %id, attempt, error = %message, "handler failed");
                self.fail(id, attempt, message, probe.deadline_reported())
                    .await;
            }
        }
    }

    /// `next(children)`: validates against the live registry, inserts the children and
    /// suspends the parent in one store call.
    async fn spawn(&self, parent: &Task, spawn: Spawn) {
        let id = parent.id;
        let attempt = parent.attempt;
        let now = self.clock.now();
        let children = match self.children(parent, &spawn.children, now) {
            Ok(children) => children,
            Err(message) => {
                self.fail(id, attempt, message, false).await;
                return;
            }
        };
        let request = SpawnRequest {
            parent_id: id,
            attempt,
            children,
            context: spawn.context,
            policy: spawn.policy,
            now,
        };
        let written = self
            .fenced("children", id, attempt, || {
                self.store.spawn_children(request.clone())
            })
            .await;
        match written {
            Written::Done(ids) => {
                tracing::debug!(task_id = %id, attempt, children = ?ids, "children created");
                self.wake.notify_one();
            }
            Written::Rejected(error) => self.fail(id, attempt, error.to_string(), false).await,
            Written::Stale | Written::Failed => {}
        }
    }

    /// Resolves child specs into rows. Errors are the reference's messages.
    pub(crate) fn children(
        &self,
        parent: &Task,
        specs: &[ChildSpec],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<NewTask>, String> {
        if specs.is_empty() {
            return Err("next() needs at least one child".into());
        }
        // Children inherit only the parent's priority (as a last resort); every other option
        // comes from the spec, then the child's registration, then the global defaults.
        let defaults = TaskDefaults {
            priority: parent.priority,
            ..self.defaults.clone()
        };
        specs
            .iter()
            .map(|spec| {
                if spec.name.trim().is_empty() {
                    return Err("Child task missing required name property".to_owned());
                }
                let entry = self.registry.get(&spec.name).ok_or_else(|| {
                    format!("No handler registered for child task: {}", spec.name)
                })?;
                let instance = TaskOptions {
                    priority: spec.priority,
                    timeout: spec.timeout,
                    max_retries: spec.max_retries,
                    retry_interval: spec.retry_interval,
                    ..TaskOptions::default()
                };
                let resolved = options::resolve(&defaults, &entry.options, &instance)
                    .map_err(|error| error.to_string())?;
                Ok(NewTask {
                    name: spec.name.clone(),
                    task_type: TaskType::Async,
                    priority: resolved.priority,
                    payload: spec.payload.clone(),
                    tag: spec.tag.clone(),
                    next_run_time: time::add(now, spec.delay.unwrap_or_default()),
                    timeout: resolved.timeout,
                    max_retries: resolved.stored_max_retries(),
                    retry_interval: resolved.retry.interval,
                    retry_backoff: resolved.retry.backoff,
                    cron_expr: None,
                    timezone: None,
                    root_id: Some(parent.workflow_root()),
                    parent_id: Some(parent.id),
                    // The round is the spawning attempt, not the stage: the stage goes back to 0
                    // on a restart, the attempt number never repeats (docs/workflows.md).
                    parent_round: Some(parent.attempt),
                    created_at: now,
                })
            })
            .collect()
    }

    /// Records a failed attempt (`timed_out` when the deadline caused it).
    pub(crate) async fn fail(&self, id: TaskId, attempt: i32, error: String, timed_out: bool) {
        let command = Command::Fail {
            attempt,
            error,
            timed_out,
            jitter: retry_jitter(),
        };
        let what = if timed_out { "timeout" } else { "failure" };
        self.write(id, attempt, what, command).await;
    }

    /// Applies a fenced command (see [`Inner::fenced`]) and wakes the loop.
    pub(crate) async fn write(
        &self,
        id: TaskId,
        attempt: i32,
        what: &str,
        command: Command,
    ) -> Written<Task> {
        // The writer retries transient faults itself, for as long as the attempt may still
        // be ours; what comes back is final.
        let written = verdict(
            what,
            id,
            attempt,
            self.writer().write(id, command, self.clock.now()).await,
        );
        self.wake.notify_one();
        written
    }

    /// Runs a fenced store write: transient faults are retried with back-off, a stale attempt
    /// is logged and dropped, a rejection is returned for the caller to turn into a failure.
    async fn fenced<T, F, Fut>(&self, what: &str, id: TaskId, attempt: i32, call: F) -> Written<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, PortError>>,
    {
        verdict(
            what,
            id,
            attempt,
            self.retrying(what, id, attempt, call).await,
        )
    }

    /// Calls the store, retrying transient faults (see [`crate::store_faults`]).
    async fn retrying<T, F, Fut>(
        &self,
        what: &str,
        id: TaskId,
        attempt: i32,
        call: F,
    ) -> Result<T, PortError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, PortError>>,
    {
        let what = format!("{what} of task {id} attempt {attempt}");
        retry_transient(&what, self.options.task_heartbeat_timeout, call).await
    }
}

/// Turns a fenced write's result into what the execution does next: a stale attempt is logged
/// and dropped, a rejection is returned for the caller to turn into a failure.
fn verdict<T>(what: &str, id: TaskId, attempt: i32, result: Result<T, PortError>) -> Written<T> {
    match result {
        Ok(value) => Written::Done(value),
        Err(PortError::Stale { .. }) => {
            tracing::warn!(task_id = %id, attempt, "skipping stale {what} update for task {id} attempt {attempt}");
            Written::Stale
        }
        Err(PortError::Rejected(DomainError::StaleAttempt { .. })) => {
            tracing::warn!(task_id = %id, attempt, "skipping stale {what} update for task {id} attempt {attempt}");
            Written::Stale
        }
        Err(PortError::Rejected(error)) => {
            tracing::warn!(task_id = %id, attempt, %error, "{what} update for task {id} attempt {attempt} rejected");
            Written::Rejected(error)
        }
        Err(error) => {
            tracing::error!(task_id = %id, attempt, %error, "could not write {what} update for task {id} attempt {attempt}");
            Written::Failed
        }
    }
}

/// A number in `[0, 1)` for retry jitter, from fastrand's thread-local generator (seeded per
/// thread from the OS), so two failures in the same instant still differ.
pub(crate) fn retry_jitter() -> f64 {
    fastrand::f64()
}

/// Counts how an attempt's handler ended (not counted: a give-up on stop, which is an
/// interruption, and cancellations that are not the attempt's own failure).
fn count_outcome(name: &str, ended: &Ended, stopping: bool) {
    let metric = match ended {
        Ended::Returned(Ok(Ok(Outcome::Complete(_)))) => metrics::COMPLETED,
        Ended::Returned(Ok(Ok(Outcome::Snooze(_)))) => metrics::SNOOZED,
        Ended::Returned(Ok(Ok(_))) => return,
        Ended::Returned(_) if stopping => return,
        Ended::Returned(_) | Ended::Deadline | Ended::Cancelled(CancelReason::Deadline) => {
            metrics::FAILED
        }
        Ended::Cancelled(_) => return,
    };
    metrics::count(metric, name);
}

/// The error's text followed by its source chain (`outer: inner: root`), skipping a source
/// whose text the outer message already contains.
pub(crate) fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The text of a panic payload (`panic!` gives `&str` or `String`).
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "non-string panic payload".to_owned(),
        },
    }
}
