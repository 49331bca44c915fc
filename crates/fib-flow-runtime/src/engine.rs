//! The engine: state, registry, submission, task control, start/stop and the claim loop.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use fib_flow_domain::options::{self, TaskDefaults};
use fib_flow_domain::{
    Command, CronSchedule, DomainError, HandlerOptions, ManagerOptions, NewTask, RetentionPolicy,
    Task, TaskId, TaskOptions, TaskStatus, TaskType, Worker, WorkerQuery, time,
};
use fib_flow_ports::{
    ClaimRequest, Clock, CronChange, Enqueued, HandlerError, Job, Outcome, PortError,
    RetentionReport, TaskHandle, TaskHandler, TaskStore,
};
use futures_util::FutureExt;
use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::RuntimeError;
use crate::metrics;
use crate::registry::{Entry, FnHandler, Registry};
use crate::writer::{OutcomeWriter, WriterSettings};

/// The reason suspended parents carry while their children run.
pub(crate) const AWAITING_SUBTASKS: &str = "awaiting_subtasks";
/// Upper bound of the claim loop's back-off after store errors.
const MAX_LOOP_BACKOFF: Duration = Duration::from_secs(30);
/// First claim-loop back-off after a store fault, when `poll_interval` is longer.
const FIRST_FAULT_BACKOFF: Duration = Duration::from_millis(250);
/// How often a claim round yields for more slots of a burst to free (see the claim loop).
const CLAIM_FILL_YIELDS: usize = 8;
/// Most outcomes in one write transaction (the engine never has more than
/// `max_concurrent_tasks` executions to write for anyway).
const MAX_OUTCOME_BATCH: usize = 500;

/// The manager's lifecycle: `init` → `running` (start) → `stopped` (stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManagerState {
    /// Built, not started: submission, registration, control and queries work; nothing runs.
    Init,
    /// Claiming and executing tasks, running maintenance.
    Running,
    /// Stopped for good; cannot be restarted.
    Stopped,
}

impl ManagerState {
    /// The reference's string (`init`, `running`, `stopped`).
    pub fn as_str(self) -> &'static str {
        match self {
            ManagerState::Init => "init",
            ManagerState::Running => "running",
            ManagerState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for ManagerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `task_info` returns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TaskInfo {
    /// The handler name.
    pub name: String,
    /// The registration's description (empty when none was given).
    pub description: String,
}

/// Why an in-flight attempt's cancellation token fired; decides what the execution writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelReason {
    /// `cancel_task`, `pause_task` or `resume_task` already moved the row: the handler gets a
    /// grace period to notice; its late write is fenced out.
    Admin,
    /// A sweep expired the attempt (already written): drop the handler, write nothing.
    Expired,
    /// The deadline passed locally: drop the handler, write `Fail { timed_out: true }`.
    Deadline,
    /// `stop()` gave up waiting: drop the handler, release the task.
    Stopping,
}

/// One in-flight attempt's cancellation: the token handed to the handler and the first reason
/// it was cancelled for (later reasons are ignored).
#[derive(Debug, Clone, Default)]
pub(crate) struct Cancel {
    pub(crate) token: CancellationToken,
    reason: Arc<OnceLock<CancelReason>>,
}

impl Cancel {
    /// Cancels for `reason` unless already cancelled for another one.
    pub(crate) fn cancel(&self, reason: CancelReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// The reason the token fired (`Admin` if it was cancelled without one).
    pub(crate) fn reason(&self) -> CancelReason {
        self.reason.get().copied().unwrap_or(CancelReason::Admin)
    }
}

/// An attempt executing in this engine.
#[derive(Debug, Clone)]
pub(crate) struct InFlight {
    pub(crate) name: String,
    pub(crate) cancel: Cancel,
}

/// Background tasks spawned by `start`.
#[derive(Default)]
struct Background {
    claim_loop: Option<JoinHandle<()>>,
    others: Vec<JoinHandle<()>>,
}

/// Shared engine state.
pub(crate) struct Inner {
    pub(crate) options: ManagerOptions,
    pub(crate) worker_id: Arc<str>,
    pub(crate) store: Arc<dyn TaskStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) defaults: TaskDefaults,
    pub(crate) retention: Option<RetentionPolicy>,
    pub(crate) registry: Registry,
    /// A watch so that a second, concurrent `stop` can wait for the first to finish.
    state: watch::Sender<ManagerState>,
    stopping: std::sync::atomic::AtomicBool,
    paused: watch::Sender<bool>,
    /// Wake-ups for the claim loop's idle wait (enqueue, cron, register, resume, an execution
    /// ending, a store notification). Separate from `paused` on purpose (decisions.md).
    pub(crate) wake: Notify,
    /// Executions in flight, counted when claimed and released when their outcome is written.
    pub(crate) running: watch::Sender<usize>,
    /// Executions whose handler is still running: the slots of `max_concurrent_tasks`. An
    /// execution gives its slot back when its handler ends, while its outcome is still being
    /// written, so the next claim overlaps the previous batch's write.
    pub(crate) handlers: watch::Sender<usize>,
    /// Keyed by (task, attempt): a stale execution of an earlier attempt and the current one can
    /// coexist briefly, and each must keep its own token and heartbeat entry.
    pub(crate) in_flight: Mutex<HashMap<(TaskId, i32), InFlight>>,
    /// Stops the claim loop (first step of `stop`).
    claim_shutdown: CancellationToken,
    /// Stops maintenance, the lease loop and the notification listener (after the drain).
    pub(crate) background_shutdown: CancellationToken,
    background: Mutex<Background>,
    /// When automatic retention runs next; `None` until the first tick schedules it.
    pub(crate) retention_due: Mutex<Option<DateTime<Utc>>>,
    /// Batches execution outcomes into shared transactions; started by the first outcome, so
    /// that building an engine needs no runtime.
    writer: OnceLock<OutcomeWriter>,
    /// Whether this worker holds an active registry lease (and so may claim). False until the
    /// first registration, while a successor of its pod is active, and after `stop`.
    pub(crate) leased: watch::Sender<bool>,
    /// When `start` ran (the registry's `meta.started_at`).
    pub(crate) started_at: OnceLock<DateTime<Utc>>,
}

/// The fib-flow engine: handler registry, submission, the claim loop, executions,
/// maintenance and graceful stop. Cheap to clone; clones share one engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
    /// Shared by the clones of this engine (not by its background tasks): when the last clone
    /// is dropped without `stop`, the loops are told to end instead of running on unowned.
    _owners: Arc<Owners>,
}

/// Ends the claim and background loops when the last [`Engine`] clone goes away. Executions
/// already running finish and record their outcome.
struct Owners {
    claim_shutdown: CancellationToken,
    background_shutdown: CancellationToken,
}

impl Drop for Owners {
    fn drop(&mut self) {
        self.claim_shutdown.cancel();
        self.background_shutdown.cancel();
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("worker_id", &self.inner.worker_id)
            .field("backend", &self.inner.store.backend())
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Validates `options` and builds an engine in the `Init` state. The worker id is
    /// `options.worker_id` or `worker-<uuid v4>`.
    pub fn new(
        options: ManagerOptions,
        store: Arc<dyn TaskStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine, RuntimeError> {
        options.validate()?;
        let retention = options.retention_policy()?;
        let worker_id: Arc<str> = match &options.worker_id {
            Some(id) => Arc::from(id.as_str()),
            None => Arc::from(format!("worker-{}", uuid::Uuid::new_v4())),
        };
        let defaults = options.task_defaults();
        let claim_shutdown = CancellationToken::new();
        let background_shutdown = CancellationToken::new();
        Ok(Engine {
            _owners: Arc::new(Owners {
                claim_shutdown: claim_shutdown.clone(),
                background_shutdown: background_shutdown.clone(),
            }),
            inner: Arc::new(Inner {
                options,
                worker_id,
                store,
                clock,
                defaults,
                retention,
                registry: Registry::default(),
                state: watch::Sender::new(ManagerState::Init),
                stopping: std::sync::atomic::AtomicBool::new(false),
                paused: watch::Sender::new(false),
                wake: Notify::new(),
                running: watch::Sender::new(0),
                handlers: watch::Sender::new(0),
                in_flight: Mutex::new(HashMap::new()),
                claim_shutdown,
                background_shutdown,
                background: Mutex::new(Background::default()),
                retention_due: Mutex::new(None),
                writer: OnceLock::new(),
                leased: watch::Sender::new(false),
                started_at: OnceLock::new(),
            }),
        })
    }

    /// This process's worker id.
    pub fn worker_id(&self) -> &str {
        &self.inner.worker_id
    }

    /// The options the engine was built with.
    pub fn options(&self) -> &ManagerOptions {
        &self.inner.options
    }

    /// `Init`, `Running` or `Stopped`.
    pub fn state(&self) -> ManagerState {
        *self.inner.state.borrow()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn TaskStore> {
        &self.inner.store
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Whether claiming is paused (`pause`).
    pub fn is_paused(&self) -> bool {
        *self.inner.paused.borrow()
    }

    /// How many executions are in flight in this engine.
    pub fn in_flight(&self) -> usize {
        *self.inner.running.borrow()
    }

    // --- registry ---------------------------------------------------------------------

    /// Registers a closure with the global defaults (the reference's function form).
    /// Replacing a handler keeps running attempts on the old one and keeps its per-type
    /// running count. Wakes the claim loop; never un-pauses it.
    ///
    /// Errors: [`RuntimeError::InvalidInput`] for an empty name or one longer than
    /// [`fib_flow_domain::limits::MAX_NAME_BYTES`] bytes (no task of that name could be stored).
    pub fn register<F, Fut, O, E>(
        &self,
        name: impl Into<String>,
        handler: F,
    ) -> Result<(), RuntimeError>
    where
        F: Fn(TaskHandle) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
        O: Into<Outcome>,
        E: Into<HandlerError>,
    {
        self.register_handler(
            name,
            Arc::new(FnHandler(handler)),
            HandlerOptions::default(),
        )
    }

    /// Registers a typed job under `J::NAME`: each attempt deserializes the payload into `J`
    /// (a payload that does not fit fails the task permanently, naming the type), runs it, and
    /// stores its output as the result.
    pub fn register_job<J: Job>(&self, options: HandlerOptions) -> Result<(), RuntimeError> {
        self.register_with(
            J::NAME,
            |task: TaskHandle| async move {
                let job: J = serde_json::from_value(task.payload().clone()).map_err(|error| {
                    fib_flow_ports::permanent(format!(
                        "payload of {} is not a valid {}: {error}",
                        J::NAME,
                        std::any::type_name::<J>()
                    ))
                })?;
                let output = job.run(task).await?;
                let result = serde_json::to_value(output).map_err(|error| {
                    fib_flow_ports::permanent(format!(
                        "result of {} cannot be stored as JSON: {error}",
                        J::NAME
                    ))
                })?;
                Ok::<Outcome, HandlerError>(Outcome::Complete(result))
            },
            options,
        )
    }

    /// Enqueues a typed job under `J::NAME`, its fields as the payload.
    pub async fn enqueue_job<J: Job>(
        &self,
        job: &J,
        options: TaskOptions,
    ) -> Result<TaskId, RuntimeError> {
        let payload = serde_json::to_value(job).map_err(|error| DomainError::InvalidOption {
            field: "payload",
            reason: format!("{} does not serialize to JSON: {error}", J::NAME),
        })?;
        self.enqueue(J::NAME, payload, options).await
    }

    /// Registers a closure with its own defaults (the reference's object form); the options
    /// are validated.
    pub fn register_with<F, Fut, O, E>(
        &self,
        name: impl Into<String>,
        handler: F,
        options: HandlerOptions,
    ) -> Result<(), RuntimeError>
    where
        F: Fn(TaskHandle) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
        O: Into<Outcome>,
        E: Into<HandlerError>,
    {
        self.register_handler(name, Arc::new(FnHandler(handler)), options)
    }

    /// Registers a handler object with its defaults; the name and the options are validated.
    pub fn register_handler(
        &self,
        name: impl Into<String>,
        handler: Arc<dyn TaskHandler>,
        options: HandlerOptions,
    ) -> Result<(), RuntimeError> {
        let name = name.into();
        fib_flow_domain::limits::check_name("name", &name)?;
        options.validate()?;
        self.insert(name, handler, options);
        Ok(())
    }

    fn insert(&self, name: String, handler: Arc<dyn TaskHandler>, options: HandlerOptions) {
        tracing::debug!(handler = %name, "handler registered");
        self.inner.registry.insert(name, Entry { handler, options });
        self.inner.wake.notify_one();
    }

    /// Removes handlers; returns how many were registered. Running attempts are not touched;
    /// pending rows of those names stay pending until a worker registers them again.
    pub fn unregister(&self, names: &[&str]) -> usize {
        let removed = self.inner.registry.remove(names);
        if removed > 0 {
            self.inner.wake.notify_one();
        }
        removed
    }

    /// Name and description of a registered handler.
    pub fn task_info(&self, name: &str) -> Result<TaskInfo, RuntimeError> {
        let entry = self.inner.registry.get(name).ok_or_else(|| unknown(name))?;
        Ok(TaskInfo {
            name: name.to_owned(),
            description: entry.options.description.unwrap_or_default(),
        })
    }

    // --- submission -------------------------------------------------------------------

    /// Submits a one-off task. Options resolve instance > handler > global; due at
    /// `now + delay`. Wakes the claim loop.
    pub async fn enqueue(
        &self,
        name: &str,
        payload: Value,
        options: TaskOptions,
    ) -> Result<TaskId, RuntimeError> {
        Ok(self.enqueue_unique(name, payload, options).await?.id)
    }

    /// [`Engine::enqueue`], telling whether the task is new: with `options.unique_key` set, an
    /// unfinished task with the same key is returned instead of a new one (`created: false`).
    /// The database enforces the key, so this holds across processes.
    pub async fn enqueue_unique(
        &self,
        name: &str,
        payload: Value,
        options: TaskOptions,
    ) -> Result<Enqueued, RuntimeError> {
        let now = self.inner.clock.now();
        let task = self.inner.new_async_task(name, payload, &options, now)?;
        let enqueued = match options.unique_key {
            Some(key) => self.inner.store.insert_unique(task, key).await?,
            None => {
                let ids = self.inner.store.insert_tasks(vec![task]).await?;
                let id = ids.into_iter().next().ok_or_else(|| {
                    RuntimeError::Store(PortError::Database {
                        backend: self.inner.store.backend(),
                        message: "insert_tasks returned no id for one task".into(),
                    })
                })?;
                Enqueued { id, created: true }
            }
        };
        if enqueued.created {
            metrics::count(metrics::ENQUEUED, name);
            self.inner.wake.notify_one();
        }
        Ok(enqueued)
    }

    /// Resolves and validates a one-off task as [`Engine::enqueue`] would, without writing
    /// it: for callers that insert it themselves (inside their own transaction). Wake-ups are
    /// theirs too: a worker sees the task at its next poll (or NOTIFY, on commit).
    pub fn prepare_task(
        &self,
        name: &str,
        payload: Value,
        options: &TaskOptions,
    ) -> Result<NewTask, RuntimeError> {
        if options.unique_key.is_some() {
            return Err(DomainError::InvalidOption {
                field: "unique_key",
                reason: "a task written through the caller's transaction cannot be unique; use enqueue_unique".into(),
            }
            .into());
        }
        self.inner
            .new_async_task(name, payload, options, self.inner.clock.now())
    }

    /// Submits several one-off tasks in one store call (all or nothing); ids in input order.
    pub async fn enqueue_many(
        &self,
        tasks: Vec<(String, Value, TaskOptions)>,
    ) -> Result<Vec<TaskId>, RuntimeError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        if tasks
            .iter()
            .any(|(_, _, options)| options.unique_key.is_some())
        {
            return Err(DomainError::InvalidOption {
                field: "unique_key",
                reason: "enqueue_many inserts all or nothing; submit unique tasks with enqueue or enqueue_unique".into(),
            }
            .into());
        }
        let now = self.inner.clock.now();
        let rows = tasks
            .into_iter()
            .map(|(name, payload, options)| {
                self.inner.new_async_task(&name, payload, &options, now)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let names: Vec<String> = rows.iter().map(|row| row.name.clone()).collect();
        let ids = self.inner.store.insert_tasks(rows).await?;
        for name in &names {
            metrics::count(metrics::ENQUEUED, name);
        }
        self.inner.wake.notify_one();
        Ok(ids)
    }

    /// Registers a recurring task under its key (`options.cron_key`, default the name): the
    /// first registration creates it, an identical one changes nothing, a different one
    /// redefines it (see [`Engine::cron_schedule`]). The expression (and `options.timezone`)
    /// is parsed now; the first run is the first occurrence strictly after now. `delay` and
    /// `unique_key` are refused.
    pub async fn cron(
        &self,
        name: &str,
        expr: &str,
        payload: Value,
        options: TaskOptions,
    ) -> Result<TaskId, RuntimeError> {
        Ok(self.cron_schedule(name, expr, payload, options).await?.0)
    }

    /// [`Engine::cron`], telling what the registration did.
    pub async fn cron_schedule(
        &self,
        name: &str,
        expr: &str,
        payload: Value,
        options: TaskOptions,
    ) -> Result<(TaskId, CronChange), RuntimeError> {
        fib_flow_domain::limits::check_name("name", name)?;
        let entry = self.inner.registry.get(name).ok_or_else(|| unknown(name))?;
        if options.delay.is_some() {
            return Err(DomainError::InvalidOption {
                field: "delay",
                reason:
                    "cron tasks run on their schedule; delay applies to enqueued (async) tasks only"
                        .into(),
            }
            .into());
        }
        if options.unique_key.is_some() {
            return Err(DomainError::InvalidOption {
                field: "unique_key",
                reason: "a cron schedule is unique by its cron_key; unique_key applies to enqueued (async) tasks only".into(),
            }
            .into());
        }
        let cron_key = options.cron_key.clone().unwrap_or_else(|| name.to_owned());
        let schedule = CronSchedule::parse(expr, options.timezone.as_deref())?;
        let now = self.inner.clock.now();
        let next_run_time = schedule.next_after(now)?;
        let resolved = options::resolve(&self.inner.defaults, &entry.options, &options)?;
        let task = NewTask {
            name: name.to_owned(),
            task_type: TaskType::Cron,
            priority: resolved.priority,
            payload,
            tag: options.tag,
            next_run_time,
            timeout: resolved.timeout,
            max_retries: resolved.max_retries,
            retry_interval: resolved.retry_interval,
            retry_backoff: resolved.retry_backoff,
            cron_expr: Some(expr.to_owned()),
            timezone: options.timezone,
            root_id: None,
            parent_id: None,
            parent_round: None,
            created_at: now,
        };
        task.validate()?;
        let (id, change) = self.inner.store.upsert_cron(task, cron_key.clone()).await?;
        tracing::info!(task_id = %id, cron_key = %cron_key, ?change, "cron schedule registered");
        if change == CronChange::Created {
            metrics::count(metrics::ENQUEUED, name);
        }
        if change != CronChange::Unchanged {
            self.inner.wake.notify_one();
        }
        Ok((id, change))
    }

    /// Deletes the cron schedule with this key (its task row, events and attempts). Returns
    /// whether there was one. A run in progress finishes; its outcome finds no row and is
    /// dropped.
    pub async fn remove_cron(&self, cron_key: &str) -> Result<bool, RuntimeError> {
        fib_flow_domain::limits::check_name("cron_key", cron_key)?;
        Ok(self.inner.store.remove_cron(cron_key.to_owned()).await?)
    }

    /// Every cron schedule, by id.
    pub async fn crons(&self) -> Result<Vec<Task>, RuntimeError> {
        let query = fib_flow_domain::query::TaskQuery {
            task_type: Some(TaskType::Cron),
            ..Default::default()
        };
        Ok(self.inner.store.list_tasks(query).await?)
    }

    // --- control ----------------------------------------------------------------------

    /// Starts the claim loop, the maintenance loop and the notification listener.
    /// A running engine is left alone; a stopped one cannot be restarted.
    pub async fn start(&self) -> Result<(), RuntimeError> {
        let mut previous = ManagerState::Init;
        self.inner.state.send_if_modified(|state| {
            previous = *state;
            if *state == ManagerState::Init && !self.inner.stopping.load(Ordering::SeqCst) {
                *state = ManagerState::Running;
                true
            } else {
                false
            }
        });
        match previous {
            ManagerState::Stopped => return Err(RuntimeError::AlreadyStopped),
            ManagerState::Running => {
                tracing::debug!(worker_id = %self.inner.worker_id, "start: already running");
                return Ok(());
            }
            // A `stop` of the never-started engine is under way: it wins.
            ManagerState::Init if self.inner.stopping.load(Ordering::SeqCst) => {
                return Err(RuntimeError::AlreadyStopped);
            }
            ManagerState::Init => {}
        }
        let now = self.inner.clock.now();
        if self.inner.retention.is_some() {
            // First automatic retention run one cadence after start (the startup tick is
            // skipped), so starting a worker never begins with a large delete.
            *self
                .inner
                .retention_due
                .lock()
                .unwrap_or_else(PoisonError::into_inner) =
                Some(time::add(now, self.inner.options.retention_interval));
        }
        let _ = self.inner.started_at.set(now);
        let lease = tokio::spawn(self.inner.clone().lease_loop());
        let claim_loop = tokio::spawn(self.inner.clone().claim_loop());
        let maintenance = tokio::spawn(self.inner.clone().maintenance_loop());
        let listener = tokio::spawn(self.inner.clone().notification_loop());
        let mut background = self
            .inner
            .background
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        background.claim_loop = Some(claim_loop);
        background.others = vec![lease, maintenance, listener];
        tracing::info!(worker_id = %self.inner.worker_id, backend = self.inner.store.backend(), "engine started");
        Ok(())
    }

    /// Stops claiming, lets in-flight executions finish and record their outcome for up to
    /// `stop_timeout`, then cancels the rest and releases them (`pending`, attempt
    /// `interrupted`, reason `worker_stopping`) and stops the background loops. The state
    /// becomes `Stopped` for good.
    ///
    /// The store stays open so the stopped manager can still be queried (docs/semantics.md,
    /// "Stop"); it closes when the last handle to it is dropped, or explicitly with
    /// [`Engine::close`]. Idempotent; a concurrent second call waits for the first.
    pub async fn stop(&self) -> Result<(), RuntimeError> {
        if self.inner.stopping.swap(true, Ordering::SeqCst) {
            tracing::debug!(worker_id = %self.inner.worker_id, "stop: already stopping or stopped");
            let mut state = self.inner.state.subscribe();
            let _ = state
                .wait_for(|state| *state == ManagerState::Stopped)
                .await;
            return Ok(());
        }
        let was = self.state();
        if was == ManagerState::Running {
            self.inner.claim_shutdown.cancel();
            let (claim_loop, others) = {
                let mut background = self
                    .inner
                    .background
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                (
                    background.claim_loop.take(),
                    std::mem::take(&mut background.others),
                )
            };
            // Wait for the loop so that no claim lands after the drain starts.
            if let Some(handle) = claim_loop
                && let Err(error) = handle.await
            {
                tracing::error!(%error, "claim loop ended abnormally");
            }
            self.inner.drain().await;
            self.inner.background_shutdown.cancel();
            for handle in others {
                if let Err(error) = handle.await {
                    tracing::error!(%error, "background loop ended abnormally");
                }
            }
            self.inner.mark_stopped().await;
        }
        self.inner.state.send_replace(ManagerState::Stopped);
        tracing::info!(worker_id = %self.inner.worker_id, "engine stopped");
        Ok(())
    }

    /// [`Engine::stop`], then closes the store (its pool and any listener). Later store calls
    /// through this engine or its clones fail.
    pub async fn close(&self) -> Result<(), RuntimeError> {
        self.stop().await?;
        self.inner.store.close().await;
        Ok(())
    }

    /// Stops claiming new tasks. Running executions, heartbeats and sweeps continue.
    pub fn pause(&self) {
        self.inner.paused.send_replace(true);
    }

    /// Resumes claiming after [`Engine::pause`].
    pub fn resume(&self) {
        self.inner.paused.send_replace(false);
        self.inner.wake.notify_one();
    }

    /// Registry rows matching the filter, ordered by `registered_at, worker_id`.
    pub async fn workers(&self, query: WorkerQuery) -> Result<Vec<Worker>, RuntimeError> {
        if let Some(pod_id) = &query.pod_id {
            fib_flow_domain::limits::check_name("pod_id", pod_id)?;
        }
        Ok(self.inner.store.list_workers(query).await?)
    }

    /// One registry row.
    pub async fn worker(&self, worker_id: &str) -> Result<Option<Worker>, RuntimeError> {
        fib_flow_domain::limits::check_name("worker_id", worker_id)?;
        Ok(self.inner.store.get_worker(worker_id.to_owned()).await?)
    }

    /// Whether this worker holds an active lease and may claim (false before its first
    /// registration, while a successor of its pod is active, and after `stop`).
    pub fn is_leased(&self) -> bool {
        *self.inner.leased.borrow()
    }

    /// Runs one lease check now (renew, reap and recover, settle standing), as the lease loop
    /// does every `worker_heartbeat_interval`. Returns whether this worker may claim
    /// afterwards. A worker whose start-up registration has not happened yet registers here
    /// as a revived one would.
    pub async fn run_lease_check(&self) -> Result<bool, RuntimeError> {
        let state = self.state();
        if state != ManagerState::Running {
            return Err(RuntimeError::NotRunning {
                state: state.as_str(),
            });
        }
        Ok(self.inner.lease_check().await? == crate::lease::Standing::Active)
    }

    /// Pauses one task (`pending`, `running`, `failed`, `timeout`). A running attempt in this
    /// engine is cancelled through its token; its late write is fenced out.
    pub async fn pause_task(&self, id: TaskId) -> Result<Task, RuntimeError> {
        let now = self.inner.clock.now();
        let task = self.inner.store.apply(id, Command::Pause, now).await?;
        self.inner.cancel_task_locally(id, CancelReason::Admin);
        Ok(task)
    }

    /// Resumes a paused, failed, timed-out, running or suspended task (`pending`, retry count
    /// 0). A parent still waiting for children of its round is refused
    /// (`DomainError::AwaitingChildren`). Wakes the claim loop.
    pub async fn resume_task(
        &self,
        id: TaskId,
        reason: Option<String>,
    ) -> Result<Task, RuntimeError> {
        let current = self
            .inner
            .store
            .get_task(id)
            .await?
            .ok_or(RuntimeError::Store(PortError::NotFound(id)))?;
        let outstanding_children = if current.status == TaskStatus::Suspended
            && current.suspend_reason.as_deref() == Some(AWAITING_SUBTASKS)
        {
            self.inner
                .store
                // A round is identified by the attempt that returned `next()` (docs/workflows.md);
                // a suspended parent still holds that attempt number.
                .outstanding_children(id, current.attempt)
                .await?
        } else {
            0
        };
        let now = self.inner.clock.now();
        let task = self
            .inner
            .store
            .apply(
                id,
                Command::Resume {
                    reason,
                    outstanding_children,
                },
                now,
            )
            .await?;
        self.inner.cancel_task_locally(id, CancelReason::Admin);
        self.inner.wake.notify_one();
        Ok(task)
    }

    /// Cancels a task from any non-terminal status (`permanently_failed`, error `reason` or
    /// `Task cancelled`). A running attempt in this engine is cancelled through its token.
    pub async fn cancel_task(
        &self,
        id: TaskId,
        reason: Option<String>,
    ) -> Result<Task, RuntimeError> {
        let now = self.inner.clock.now();
        let task = self
            .inner
            .store
            .apply(id, Command::Cancel { reason }, now)
            .await?;
        self.inner.cancel_task_locally(id, CancelReason::Admin);
        Ok(task)
    }

    /// Brings a dead task back: a `permanently_failed` task (retries exhausted, a permanent
    /// error, a cancel) or a `paused` one goes back to `pending` now, from stage 0, with its
    /// whole retry budget, keeping its id and history (event `task_retried`, `reason` or
    /// `manual`). Any other status is a typed error naming the transition.
    pub async fn retry_task(
        &self,
        id: TaskId,
        reason: Option<String>,
    ) -> Result<Task, RuntimeError> {
        let now = self.inner.clock.now();
        let task = self
            .inner
            .store
            .apply(id, Command::Retry { reason }, now)
            .await?;
        self.inner.wake.notify_one();
        Ok(task)
    }

    /// Runs one maintenance tick now: heartbeat, expiry sweep and the automatic retention
    /// cadence (exactly what the background loop does every `task_heartbeat_interval`).
    pub async fn run_maintenance(&self) -> Result<crate::SweepReport, RuntimeError> {
        self.inner.maintenance_tick().await
    }

    /// Deletes every expired workflow now, batch after batch, with the configured policy or
    /// `policy`. A disabled configured policy yields a zero report.
    pub async fn run_retention(
        &self,
        policy: Option<RetentionPolicy>,
    ) -> Result<RetentionReport, RuntimeError> {
        self.inner.run_retention(policy).await
    }
}

fn unknown(name: &str) -> RuntimeError {
    RuntimeError::UnknownHandler {
        name: name.to_owned(),
    }
}

impl Inner {
    /// Builds an async task row, checking the handler and the options.
    fn new_async_task(
        &self,
        name: &str,
        payload: Value,
        options: &TaskOptions,
        now: DateTime<Utc>,
    ) -> Result<NewTask, RuntimeError> {
        // Before the registry: an empty or over-long name is invalid input, not an unknown
        // handler.
        fib_flow_domain::limits::check_name("name", name)?;
        let entry = self.registry.get(name).ok_or_else(|| unknown(name))?;
        if options.timezone.is_some() {
            return Err(DomainError::InvalidOption {
                field: "timezone",
                reason: "only cron tasks have a time zone".into(),
            }
            .into());
        }
        if options.cron_key.is_some() {
            return Err(DomainError::InvalidOption {
                field: "cron_key",
                reason: "only cron tasks have a cron_key; use unique_key for enqueued tasks".into(),
            }
            .into());
        }
        if let Some(key) = &options.unique_key {
            fib_flow_domain::limits::check_name("unique_key", key)?;
        }
        let resolved = options::resolve(&self.defaults, &entry.options, options)?;
        let task = NewTask {
            name: name.to_owned(),
            task_type: TaskType::Async,
            priority: resolved.priority,
            payload,
            tag: options.tag.clone(),
            next_run_time: time::add(now, options.delay.unwrap_or_default()),
            timeout: resolved.timeout,
            max_retries: resolved.max_retries,
            retry_interval: resolved.retry_interval,
            retry_backoff: resolved.retry_backoff,
            cron_expr: None,
            timezone: None,
            root_id: None,
            parent_id: None,
            parent_round: None,
            created_at: now,
        };
        task.validate()?;
        Ok(task)
    }

    /// Fires the token of every local attempt of `id`.
    pub(crate) fn cancel_task_locally(&self, id: TaskId, reason: CancelReason) {
        let in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for ((task_id, attempt), entry) in in_flight.iter() {
            if *task_id == id {
                tracing::debug!(task_id = %id, attempt, ?reason, "cancelling local execution");
                entry.cancel.cancel(reason);
            }
        }
    }

    /// Fires the token of one local attempt, if it is in flight here.
    pub(crate) fn cancel_attempt_locally(&self, id: TaskId, attempt: i32, reason: CancelReason) {
        let in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = in_flight.get(&(id, attempt)) {
            tracing::debug!(task_id = %id, attempt, ?reason, "cancelling local execution");
            entry.cancel.cancel(reason);
        }
    }

    /// A number in `[0, 1)` for retry jitter, from fastrand's thread-local generator (seeded
    /// per thread from the OS), so two failures in the same instant still differ.
    pub(crate) fn jitter(&self) -> f64 {
        fastrand::f64()
    }

    /// The outcome writer, started on first use.
    pub(crate) fn writer(&self) -> &OutcomeWriter {
        self.writer.get_or_init(|| {
            OutcomeWriter::spawn(
                self.store.clone(),
                self.handlers.subscribe(),
                WriterSettings {
                    max_batch: self.options.max_concurrent_tasks.min(MAX_OUTCOME_BATCH),
                    linger: self.options.outcome_linger,
                    give_up_after: self.options.task_heartbeat_timeout,
                },
            )
        })
    }

    /// Whether the claim loop should exit.
    fn claim_stopped(&self) -> bool {
        self.claim_shutdown.is_cancelled()
    }

    /// The claim loop: pause gate, free slots, one batched claim, executions; idle-waits
    /// `poll_interval` (cut short by a wake-up) when nothing is due, backs off on store errors
    /// and never exits before `stop`.
    async fn claim_loop(self: Arc<Self>) {
        let mut paused = self.paused.subscribe();
        let mut leased = self.leased.subscribe();
        let mut handlers = self.handlers.subscribe();
        let mut failures: u32 = 0;
        let max = self.options.max_concurrent_tasks;
        loop {
            if self.claim_stopped() {
                break;
            }
            // Pause gate: only claiming waits here.
            tokio::select! {
                result = paused.wait_for(|paused| !*paused) => {
                    if result.is_err() { break; }
                }
                () = self.claim_shutdown.cancelled() => break,
            }
            // A lease: registered, and not stepped aside for a successor of our pod.
            tokio::select! {
                result = leased.wait_for(|leased| *leased) => {
                    if result.is_err() { break; }
                }
                () = self.claim_shutdown.cancelled() => break,
            }
            // A free slot.
            tokio::select! {
                result = handlers.wait_for(|handlers| *handlers < max) => {
                    if result.is_err() { break; }
                }
                () = self.claim_shutdown.cancelled() => break,
            }
            if self.claim_stopped() {
                break;
            }
            // Claim fill: handlers claimed together tend to end together. When slots are
            // coming back one by one, let the rest of such a burst run to its end first, so the
            // round claims for all of it instead of one task per freed slot. Yielding, not
            // sleeping: a handler that is really still working costs this round nothing.
            let fill = max.min(self.options.claim_batch_size);
            for _ in 0..CLAIM_FILL_YIELDS {
                let running_now = *self.handlers.borrow();
                if running_now == 0 || max.saturating_sub(running_now) >= fill {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let free = max.saturating_sub(*self.handlers.borrow());
            if free == 0 {
                continue;
            }
            // The gates above may have been waited at for a while (the start-up registration,
            // a busy slot): a pause or a lost lease meanwhile sends the loop back to them.
            if *self.paused.borrow() || !*self.leased.borrow() {
                continue;
            }
            let (names, queue_caps) = self.registry.claim_filter(
                self.options.queues.as_deref(),
                &self.options.queue_concurrency,
            );
            if names.is_empty() {
                let until = time::add(self.clock.now(), self.options.poll_interval);
                self.idle_wait(until).await;
                continue;
            }
            let limit = free.min(self.options.claim_batch_size);
            let request = ClaimRequest {
                worker_id: self.worker_id.to_string(),
                now: self.clock.now(),
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
                names,
                queue_caps,
                require_active_lease: true,
            };
            // This round sees every task submitted so far, so it satisfies the wake-ups
            // posted until now; consuming them avoids an immediate, redundant second round.
            let _ = self.wake.notified().now_or_never();
            tracing::trace!(now = %request.now, limit = request.limit, names = request.names.len(), "claim round");
            // Waits are measured from the claim instant, not from when the claim returned:
            // time that passed during the round (a slow query, a manual clock moved meanwhile)
            // counts, so a task that became due during the round is not missed for a period.
            let claimed_at = request.now;
            match self.store.claim(request).await {
                Ok(tasks) if tasks.is_empty() => {
                    failures = 0;
                    self.idle_wait(time::add(claimed_at, self.options.poll_interval))
                        .await;
                }
                Ok(tasks) => {
                    failures = 0;
                    for task in tasks {
                        self.clone().launch(task);
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let backoff = loop_backoff(self.options.poll_interval, failures);
                    tracing::warn!(
                        worker_id = %self.worker_id,
                        %error,
                        transient = error.is_transient(),
                        retry_in_ms = backoff.as_millis() as u64,
                        "claim failed; backing off"
                    );
                    // Fault back-off waits on the wall clock, not the injected one: recovering from
                    // a database fault must not depend on scheduling time moving (a manual
                    // clock in tests, or a clock that stands still).
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.claim_shutdown.cancelled() => break,
                    }
                }
            }
        }
        tracing::debug!(worker_id = %self.worker_id, "claim loop stopped");
    }

    /// Waits until `until` on the clock, cut short by a wake-up or `stop`.
    async fn idle_wait(&self, until: DateTime<Utc>) {
        tokio::select! {
            () = self.clock.sleep_until(until) => {}
            () = self.wake.notified() => {}
            () = self.claim_shutdown.cancelled() => {}
        }
    }

    /// Accounts for a claimed task (slot, per-type count, in-flight entry) and spawns its
    /// execution. Accounting happens here, synchronously in the loop, so the next claim round
    /// already sees the slot taken.
    fn launch(self: Arc<Self>, task: Task) {
        tracing::debug!(task_id = %task.id, attempt = task.attempt, name = %task.name, stage = task.stage, "claimed");
        metrics::count(metrics::CLAIMED, &task.name);
        if task.retry_count > 0 {
            metrics::count(metrics::RETRIED, &task.name);
        }
        if let Some(started) = task.start_time
            && let Ok(waited) = (started - task.next_run_time).to_std()
        {
            metrics::seconds(metrics::PICKUP_SECONDS, &task.name, waited);
        }
        let cancel = Cancel::default();
        let counter = self.registry.counter(&task.name);
        counter.fetch_add(1, Ordering::SeqCst);
        self.running.send_modify(|running| *running += 1);
        self.handlers.send_modify(|handlers| *handlers += 1);
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                (task.id, task.attempt),
                InFlight {
                    name: task.name.clone(),
                    cancel: cancel.clone(),
                },
            );
        let slot = Slot {
            inner: self.clone(),
            key: (task.id, task.attempt),
            counter,
            handler_ended: AtomicBool::new(false),
        };
        // Every log of the attempt, the handler's own included, carries the task's identity.
        let span = tracing::info_span!(
            "task",
            task_id = %task.id,
            name = %task.name,
            attempt = task.attempt,
            worker_id = %self.worker_id,
        );
        tokio::spawn(
            async move {
                let inner = slot.inner.clone();
                inner.execute(task, cancel, &slot).await;
                drop(slot);
            }
            .instrument(span),
        );
    }

    /// Part of `stop`: waits up to `stop_timeout` for in-flight executions, then cancels the
    /// rest with `Stopping` (each releases its task) and waits for them to wind down.
    async fn drain(&self) {
        let mut running = self.running.subscribe();
        let deadline = time::add(self.clock.now(), self.options.stop_timeout);
        let drained = tokio::select! {
            result = running.wait_for(|running| *running == 0) => result.is_ok(),
            () = self.clock.sleep_until(deadline) => false,
        };
        if drained {
            return;
        }
        let left: Vec<(String, Cancel)> = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|((id, attempt), entry)| {
                (
                    format!("{}#{id}/{attempt}", entry.name),
                    entry.cancel.clone(),
                )
            })
            .collect();
        tracing::warn!(
            worker_id = %self.worker_id,
            executions = ?left.iter().map(|(what, _)| what.as_str()).collect::<Vec<_>>(),
            stop_timeout_ms = self.options.stop_timeout.as_millis() as u64,
            "stop timeout reached; cancelling and releasing the remaining executions"
        );
        for (_, cancel) in &left {
            cancel.cancel(CancelReason::Stopping);
        }
        let _ = running.wait_for(|running| *running == 0).await;
    }

    /// Wakes the claim loop whenever the store reports that work may be due elsewhere.
    async fn notification_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.store.wait_for_notification() => self.wake.notify_one(),
                () = self.background_shutdown.cancelled() => break,
            }
        }
    }

    /// Runs maintenance every `task_heartbeat_interval` until stopped; errors are logged.
    async fn maintenance_loop(self: Arc<Self>) {
        let interval = self.options.task_heartbeat_interval;
        let mut next = time::add(self.clock.now(), interval);
        loop {
            tokio::select! {
                () = self.clock.sleep_until(next) => {}
                () = self.background_shutdown.cancelled() => break,
            }
            // Anchored on the tick's start so a slow tick does not stretch the cadence; no
            // catch-up burst after a long pause either.
            next = time::add(self.clock.now(), interval);
            if let Err(error) = self.maintenance_tick().await {
                tracing::warn!(worker_id = %self.worker_id, %error, "maintenance tick failed");
            }
        }
    }
}

/// `base × 2^(failures-1)` with `base = min(poll_interval, 250 ms)`, capped at 30 s. Not a
/// multiple of `poll_interval`: that is the idle cadence, and a worker that polls rarely (or
/// relies on NOTIFY) must still come back within seconds after a database restart.
pub(crate) fn loop_backoff(poll_interval: Duration, failures: u32) -> Duration {
    let base = poll_interval.min(FIRST_FAULT_BACKOFF);
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1).min(16))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(MAX_LOOP_BACKOFF)
}

/// One execution's hold on a slot and on its in-flight entry. The slot (global and per-handler
/// concurrency) is given back when the handler ends; the in-flight entry (heartbeats, `stop`'s
/// drain) when the execution ends, even if it panics.
pub(crate) struct Slot {
    inner: Arc<Inner>,
    key: (TaskId, i32),
    counter: Arc<AtomicUsize>,
    handler_ended: AtomicBool,
}

impl Slot {
    /// The handler has returned, panicked or been dropped: its slot is free for the next
    /// claim while the outcome is written. Idempotent.
    pub(crate) fn end_handler(&self) {
        if self.handler_ended.swap(true, Ordering::SeqCst) {
            return;
        }
        // Floored at zero: a counter must never wrap around and block a handler forever.
        let _ = self
            .counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_sub(1))
            });
        self.inner
            .handlers
            .send_modify(|handlers| *handlers = handlers.saturating_sub(1));
        self.inner.wake.notify_one();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.end_handler();
        self.inner
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
        self.inner
            .running
            .send_modify(|running| *running = running.saturating_sub(1));
        self.inner.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_backoff_grows_and_caps() {
        let poll = Duration::from_millis(100);
        assert_eq!(loop_backoff(poll, 1), poll);
        assert_eq!(loop_backoff(poll, 2), Duration::from_millis(200));
        assert_eq!(loop_backoff(poll, 4), Duration::from_millis(800));
        assert_eq!(loop_backoff(poll, 40), MAX_LOOP_BACKOFF);
        let slow = Duration::from_secs(120);
        assert_eq!(
            loop_backoff(slow, 1),
            FIRST_FAULT_BACKOFF,
            "a slow poll does not slow fault recovery"
        );
        assert_eq!(loop_backoff(slow, 3), Duration::from_secs(1));
        assert_eq!(loop_backoff(slow, 40), MAX_LOOP_BACKOFF);
    }
}
