//! `TaskManager`: the one type users hold.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fib_flow_audit::{
    Audit, TaskAudit, TaskAuditOptions, WorkflowAudit, WorkflowAuditOptions, WorkflowSummary,
};
use fib_flow_domain::query::{
    AttemptQuery, DeleteFilter, EventQuery, Page, PageRequest, TagStat, TaskQuery,
};
use fib_flow_domain::{
    DomainError, HandlerOptions, ManagerOptions, RetentionPolicy, Task, TaskAttempt, TaskEvent,
    TaskId, TaskOptions, TaskStatus, Worker, WorkerQuery,
};
use fib_flow_ports::{
    Clock, CronChange, Enqueued, HandlerError, Job, Outcome, RetentionReport, TaskHandle,
    TaskHandler, TaskStore,
};
use fib_flow_runtime::clock::SystemClock;
use fib_flow_runtime::{Engine, ManagerState, SweepReport, TaskInfo};
use fib_flow_sql::StoreConfig;
use serde_json::Value;

use crate::caller::CallerConnection;
use crate::connect::Target;
use crate::error::{Error, Result};

/// The longest [`TaskManager::wait_for_status`] goes without reading the task again when
/// nothing in this process announces a change: the bound on how late it sees a change made by
/// another process.
const WAIT_BACKSTOP: Duration = Duration::from_millis(200);

/// Checks that `db_type`, when given, names the backend `db_connection` selects.
fn check_db_type(options: &ManagerOptions) -> Result<(), DomainError> {
    let Some(db_type) = options.db_type.as_deref() else {
        return Ok(());
    };
    let backend = match db_type {
        "psql" | "postgresql" => "postgres",
        other => other,
    };
    if !["sqlite", "postgres", "mysql"].contains(&backend) {
        return Err(DomainError::InvalidOption {
            field: "db_type",
            reason: format!(
                "`{db_type}` is not supported; allowed values are sqlite, postgres (psql), mysql"
            ),
        });
    }
    let selected = Target::parse(&options.db_connection).map(|target| target.kind().name());
    if selected.is_ok_and(|selected| selected == backend) {
        Ok(())
    } else {
        Err(DomainError::InvalidOption {
            field: "db_type",
            reason: format!("`{db_type}` does not match the db_connection URL scheme"),
        })
    }
}

/// The task manager: handler registry, task submission, control, queries and audit.
///
/// Cheap to clone; clones share one engine.
#[derive(Clone)]
pub struct TaskManager {
    engine: Engine,
    audit: Audit,
}

impl std::fmt::Debug for TaskManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskManager")
            .field("worker_id", &self.engine.worker_id())
            .field("backend", &self.engine.store().backend())
            .field("state", &self.engine.state())
            .finish()
    }
}

impl TaskManager {
    /// Validates the options and connects to the database (no schema changes: call
    /// [`TaskManager::setup`]).
    pub async fn new(options: ManagerOptions) -> Result<Self> {
        Self::with_clock(options, Arc::new(SystemClock)).await
    }

    /// As [`TaskManager::new`] with an injected clock (tests use a `ManualClock`).
    pub async fn with_clock(options: ManagerOptions, clock: Arc<dyn Clock>) -> Result<Self> {
        options.validate()?;
        check_db_type(&options)?;
        let store = crate::connect::connect(StoreConfig {
            url: options.db_connection.clone(),
            pool_size: options.pool_size,
            acquire_timeout: options.acquire_timeout,
        })
        .await?;
        Self::from_store(options, store, clock)
    }

    /// A manager over any [`TaskStore`] implementation.
    pub fn from_store(
        options: ManagerOptions,
        store: Arc<dyn TaskStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let engine = Engine::new(options, store.clone(), clock)?;
        Ok(TaskManager {
            engine,
            audit: Audit::new(store),
        })
    }

    /// Applies the embedded migrations; a second call is a no-op.
    pub async fn setup(&self) -> Result<()> {
        Ok(self.engine.store().migrate().await?)
    }

    /// The options the manager was built with.
    pub fn options(&self) -> &ManagerOptions {
        self.engine.options()
    }

    /// This process's worker id.
    pub fn worker_id(&self) -> &str {
        self.engine.worker_id()
    }

    /// `init`, `running` or `stopped`.
    pub fn state(&self) -> ManagerState {
        self.engine.state()
    }

    /// The storage adapter (the reference's `db`).
    pub fn store(&self) -> &Arc<dyn TaskStore> {
        self.engine.store()
    }

    // --- handler registry -------------------------------------------------------------

    /// Registers a handler with the global defaults (the reference's function form).
    /// Replacing a handler keeps running attempts on the old one.
    ///
    /// Errors: the name is empty or longer than 255 bytes (no task of that name could be
    /// stored on PostgreSQL or MySQL; SQLite is held to the same limit).
    pub fn register<F, Fut, O, E>(&self, name: impl Into<String>, handler: F) -> Result<()>
    where
        F: Fn(TaskHandle) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<O, E>> + Send + 'static,
        O: Into<Outcome>,
        E: Into<HandlerError>,
    {
        Ok(self.engine.register(name, handler)?)
    }

    /// Registers a typed job under `J::NAME` (see [`Job`]).
    pub fn register_job<J: Job>(&self, options: HandlerOptions) -> Result<()> {
        Ok(self.engine.register_job::<J>(options)?)
    }

    /// Enqueues a typed job under `J::NAME`, its fields as the payload.
    pub async fn enqueue_job<J: Job>(&self, job: &J, options: TaskOptions) -> Result<TaskId> {
        Ok(self.engine.enqueue_job(job, options).await?)
    }

    /// Registers a handler with its own defaults (the reference's object form).
    pub fn register_with<F, Fut, O, E>(
        &self,
        name: impl Into<String>,
        handler: F,
        options: HandlerOptions,
    ) -> Result<()>
    where
        F: Fn(TaskHandle) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<O, E>> + Send + 'static,
        O: Into<Outcome>,
        E: Into<HandlerError>,
    {
        Ok(self.engine.register_with(name, handler, options)?)
    }

    /// Registers a handler object.
    pub fn register_handler(
        &self,
        name: impl Into<String>,
        handler: Arc<dyn TaskHandler>,
        options: HandlerOptions,
    ) -> Result<()> {
        Ok(self.engine.register_handler(name, handler, options)?)
    }

    /// Registers several handlers (the reference's bulk map form). Stops at the first invalid
    /// entry; earlier entries stay registered.
    pub fn register_many<I, S>(&self, handlers: I) -> Result<()>
    where
        I: IntoIterator<Item = (S, Arc<dyn TaskHandler>, HandlerOptions)>,
        S: Into<String>,
    {
        for (name, handler, options) in handlers {
            self.engine.register_handler(name, handler, options)?;
        }
        Ok(())
    }

    /// Removes handlers; returns how many were registered. Running attempts are not touched.
    pub fn unregister(&self, names: &[&str]) -> usize {
        self.engine.unregister(names)
    }

    /// Name and description of a registered handler.
    pub fn task_info(&self, name: &str) -> Result<TaskInfo> {
        Ok(self.engine.task_info(name)?)
    }

    // --- submission -------------------------------------------------------------------

    /// Submits a one-off task (the reference's `async`). Returns its id.
    pub async fn enqueue(
        &self,
        name: &str,
        payload: Value,
        options: TaskOptions,
    ) -> Result<TaskId> {
        Ok(self.engine.enqueue(name, payload, options).await?)
    }

    /// Submits several one-off tasks in one transaction.
    pub async fn enqueue_many(
        &self,
        tasks: Vec<(String, Value, TaskOptions)>,
    ) -> Result<Vec<TaskId>> {
        Ok(self.engine.enqueue_many(tasks).await?)
    }

    /// Registers a recurring task under its key (`TaskOptions::cron_key`, default the name):
    /// calling it at every start keeps one schedule; a changed expression, payload or option
    /// redefines it. The first run is the first occurrence strictly after now.
    pub async fn cron(
        &self,
        name: &str,
        expr: &str,
        payload: Value,
        options: TaskOptions,
    ) -> Result<TaskId> {
        Ok(self.engine.cron(name, expr, payload, options).await?)
    }

    /// [`TaskManager::cron`], telling what the registration did: `Created`, `Unchanged` (an
    /// identical schedule is registered under the key) or `Updated`.
    pub async fn cron_schedule(
        &self,
        name: &str,
        expr: &str,
        payload: Value,
        options: TaskOptions,
    ) -> Result<(TaskId, CronChange)> {
        Ok(self
            .engine
            .cron_schedule(name, expr, payload, options)
            .await?)
    }

    /// Deletes the cron schedule with this key; returns whether there was one.
    pub async fn remove_cron(&self, cron_key: &str) -> Result<bool> {
        Ok(self.engine.remove_cron(cron_key).await?)
    }

    /// Every cron schedule, by id.
    pub async fn crons(&self) -> Result<Vec<Task>> {
        Ok(self.engine.crons().await?)
    }

    /// Enqueues inside the caller's own database transaction, through the caller's
    /// diesel-async connection (`AsyncPgConnection`, `AsyncMysqlConnection`, or
    /// `SyncConnectionWrapper<SqliteConnection>`) to the fib-flow database: the task exists if
    /// and only if that transaction commits. Options resolve as for [`TaskManager::enqueue`]
    /// (`unique_key` is refused). Workers see the task once it commits, at their next poll
    /// (PostgreSQL also wakes them with a NOTIFY on commit).
    pub async fn enqueue_in<C: CallerConnection>(
        &self,
        conn: &mut C,
        name: &str,
        payload: Value,
        options: TaskOptions,
    ) -> Result<TaskId> {
        let task = self.engine.prepare_task(name, payload, &options)?;
        let ids = conn.insert_tasks(std::slice::from_ref(&task)).await?;
        ids.into_iter().next().ok_or_else(|| {
            Error::Store(fib_flow_ports::PortError::Database {
                backend: self.store().backend(),
                message: "inserted no row for one task".to_owned(),
            })
        })
    }

    /// [`TaskManager::enqueue`], telling whether the task is new: with
    /// `TaskOptions::unique_key`, an unfinished task with the same key is returned instead
    /// (`created: false`), across processes.
    pub async fn enqueue_unique(
        &self,
        name: &str,
        payload: Value,
        options: TaskOptions,
    ) -> Result<Enqueued> {
        Ok(self.engine.enqueue_unique(name, payload, options).await?)
    }

    // --- control ----------------------------------------------------------------------

    /// Starts claiming and the background loops. A stopped manager cannot be restarted.
    pub async fn start(&self) -> Result<()> {
        Ok(self.engine.start().await?)
    }

    /// Drains in-flight executions up to `stop_timeout`, releases the rest and marks this
    /// worker `stopped`. The store stays open, so reads still work; [`TaskManager::close`]
    /// also closes it.
    pub async fn stop(&self) -> Result<()> {
        Ok(self.engine.stop().await?)
    }

    /// [`TaskManager::stop`], then closes the store's connections. For a manager that was
    /// only opened to read and act (a CLI, a dashboard) it just closes the connections.
    pub async fn close(&self) -> Result<()> {
        Ok(self.engine.close().await?)
    }

    /// The current time on the manager's clock (a [`ManualClock`](crate::ManualClock) in
    /// tests): what "now" means for due times, deadlines and retention.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.engine.clock().now()
    }

    /// Stops claiming new tasks; running ones continue.
    pub fn pause(&self) {
        self.engine.pause();
    }

    /// Resumes claiming.
    pub fn resume(&self) {
        self.engine.resume();
    }

    /// Pauses one task (pending, running, failed or timeout).
    pub async fn pause_task(&self, id: TaskId) -> Result<Task> {
        Ok(self.engine.pause_task(id).await?)
    }

    /// Resumes a paused or suspended task.
    pub async fn resume_task(&self, id: TaskId, reason: Option<String>) -> Result<Task> {
        Ok(self.engine.resume_task(id, reason).await?)
    }

    /// Cancels a task from any non-terminal status (`permanently_failed`).
    pub async fn cancel_task(&self, id: TaskId, reason: Option<String>) -> Result<Task> {
        Ok(self.engine.cancel_task(id, reason).await?)
    }

    /// Brings a `permanently_failed` (or `paused`) task back to `pending` with a fresh retry
    /// budget, keeping its id and history (event `task_retried`).
    pub async fn retry_task(&self, id: TaskId, reason: Option<String>) -> Result<Task> {
        Ok(self.engine.retry_task(id, reason).await?)
    }

    /// Deletes expired terminal tasks with their audit rows (the configured policy, or `policy`).
    pub async fn run_retention(&self, policy: Option<RetentionPolicy>) -> Result<RetentionReport> {
        Ok(self.engine.run_retention(policy).await?)
    }

    /// Runs one maintenance tick now (heartbeat and timeout sweep).
    pub async fn run_maintenance(&self) -> Result<SweepReport> {
        Ok(self.engine.run_maintenance().await?)
    }

    /// Starts (unless already running), waits for SIGTERM or ctrl-c, then stops gracefully:
    /// what a deployed worker's `main` ends with, so that systemd, docker or Kubernetes
    /// stopping the process drains and releases its tasks instead of leaving them `running`.
    pub async fn run_until_shutdown(&self) -> Result<()> {
        if self.state() == ManagerState::Init {
            self.start().await?;
        }
        crate::shutdown_signal().await;
        tracing::info!(worker_id = %self.worker_id(), "shutdown signal received; stopping");
        self.stop().await
    }

    /// Runs one worker-registry lease check now (renew, reap and recover dead workers, step
    /// aside for or take over from a worker of the same pod), as the lease loop does every
    /// `worker_heartbeat_interval`. Returns whether this worker may claim afterwards.
    pub async fn run_lease_check(&self) -> Result<bool> {
        Ok(self.engine.run_lease_check().await?)
    }

    /// Whether this worker holds an active registry lease and may claim.
    pub fn is_leased(&self) -> bool {
        self.engine.is_leased()
    }

    // --- worker registry --------------------------------------------------------------

    /// Registered workers matching the filter (pod, status), ordered by `registered_at`,
    /// `worker_id`.
    pub async fn workers(&self, query: WorkerQuery) -> Result<Vec<Worker>> {
        Ok(self.engine.workers(query).await?)
    }

    /// One registered worker, or `None`.
    pub async fn worker(&self, worker_id: &str) -> Result<Option<Worker>> {
        Ok(self.engine.worker(worker_id).await?)
    }

    // --- snapshot queries -------------------------------------------------------------

    /// One task, or `None`.
    pub async fn get_task(&self, id: TaskId) -> Result<Option<Task>> {
        Ok(self.store().get_task(id).await?)
    }

    /// Every task matching the filter (AND of the given fields), ordered by id.
    pub async fn get_tasks(&self, filter: TaskQuery) -> Result<Vec<Task>> {
        Ok(self.store().list_tasks(filter).await?)
    }

    /// Tasks with this handler name.
    pub async fn tasks_by_name(&self, name: &str) -> Result<Vec<Task>> {
        let name = required("name", name)?;
        self.get_tasks(TaskQuery {
            name: Some(name),
            ..TaskQuery::default()
        })
        .await
    }

    /// Tasks in this status; for `suspended`, optionally only those suspended for `suspend_reason`.
    pub async fn tasks_by_status(
        &self,
        status: TaskStatus,
        suspend_reason: Option<&str>,
    ) -> Result<Vec<Task>> {
        self.get_tasks(TaskQuery {
            status: Some(status),
            suspend_reason: suspend_reason.map(str::to_owned),
            ..TaskQuery::default()
        })
        .await
    }

    /// Tasks with this tag.
    pub async fn tasks_by_tag(&self, tag: &str) -> Result<Vec<Task>> {
        let tag = required("tag", tag)?;
        self.get_tasks(TaskQuery {
            tag: Some(tag),
            ..TaskQuery::default()
        })
        .await
    }

    /// Children of a task, ordered by id.
    pub async fn child_tasks(&self, parent_id: TaskId) -> Result<Vec<Task>> {
        self.get_tasks(TaskQuery {
            parent_id: Some(parent_id),
            ..TaskQuery::default()
        })
        .await
    }

    /// Counts by (tag, name, status), optionally for one tag and/or status.
    pub async fn task_stats_by_tag(
        &self,
        tag: Option<&str>,
        status: Option<TaskStatus>,
    ) -> Result<Vec<TagStat>> {
        Ok(self
            .store()
            .task_stats(tag.map(str::to_owned), status)
            .await?)
    }

    /// Deletes matching tasks with their events and attempts; an empty filter needs `all: true`.
    pub async fn delete_tasks(&self, filter: DeleteFilter) -> Result<u64> {
        filter.validate()?;
        Ok(self.store().delete_tasks(filter).await?)
    }

    /// Events of one task (first page of `query_task_events`).
    pub async fn task_events(&self, task_id: TaskId, filter: EventQuery) -> Result<Vec<TaskEvent>> {
        Ok(self
            .query_task_events(task_id, filter, PageRequest::default())
            .await?
            .items)
    }

    /// Events of a workflow (first page of `query_workflow_events`).
    pub async fn workflow_events(
        &self,
        root_id: TaskId,
        filter: EventQuery,
    ) -> Result<Vec<TaskEvent>> {
        Ok(self
            .query_workflow_events(root_id, filter, PageRequest::default())
            .await?
            .items)
    }

    /// Attempts of one task (first page of `query_task_attempts`).
    pub async fn task_attempts(&self, task_id: TaskId) -> Result<Vec<TaskAttempt>> {
        Ok(self
            .query_task_attempts(task_id, AttemptQuery::default(), PageRequest::default())
            .await?
            .items)
    }

    /// Waits until the task reaches one of `statuses` and returns that snapshot; fails with
    /// [`Error::WaitTimedOut`] (carrying the last snapshot) when `timeout` passes first (wall
    /// clock), so a caller that forgets to look at the status cannot mistake a timeout for
    /// success.
    ///
    /// The task is read again whenever this manager's engine changes a task or the store
    /// notifies ([`fib_flow_runtime::Engine::task_changes`]), and at least every 200 ms as a
    /// backstop: changes made by other processes sharing the database send this
    /// process nothing on SQLite and MySQL, and PostgreSQL notifies only of work that became
    /// due, not of a task finishing elsewhere.
    pub async fn wait_for_status(
        &self,
        id: TaskId,
        statuses: &[TaskStatus],
        timeout: Duration,
    ) -> Result<Task> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.engine.task_changes();
        loop {
            // Marked as seen before the read: a change landing during the read is not missed.
            changes.borrow_and_update();
            let task = self
                .get_task(id)
                .await?
                .ok_or(fib_flow_ports::PortError::NotFound(id))?;
            if statuses.contains(&task.status) {
                return Ok(task);
            }
            let next_look = async {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            tokio::time::sleep(WAIT_BACKSTOP).await;
                        }
                    }
                    () = tokio::time::sleep(WAIT_BACKSTOP) => {}
                }
            };
            if tokio::time::timeout_at(deadline, next_look).await.is_err() {
                return Err(Error::WaitTimedOut {
                    task: Box::new(task),
                    statuses: statuses.to_vec(),
                    waited: timeout,
                });
            }
        }
    }

    // --- audit ------------------------------------------------------------------------

    /// A page of tasks with metadata.
    pub async fn query_tasks(&self, filter: TaskQuery, page: PageRequest) -> Result<Page<Task>> {
        Ok(self.audit.query_tasks(filter, page).await?)
    }

    /// A page of events across tasks, filtered by the query's own fields (type, worker, time
    /// window; none set = every event), ordered by `event_time, id`.
    pub async fn query_events(
        &self,
        filter: EventQuery,
        page: PageRequest,
    ) -> Result<Page<TaskEvent>> {
        Ok(self.audit.query_events(filter, page).await?)
    }

    /// A page of attempts across tasks, filtered by the query's own fields.
    pub async fn query_attempts(
        &self,
        filter: AttemptQuery,
        page: PageRequest,
    ) -> Result<Page<TaskAttempt>> {
        Ok(self.audit.query_attempts(filter, page).await?)
    }

    /// A page of one task's events.
    pub async fn query_task_events(
        &self,
        task_id: TaskId,
        filter: EventQuery,
        page: PageRequest,
    ) -> Result<Page<TaskEvent>> {
        Ok(self.audit.query_task_events(task_id, filter, page).await?)
    }

    /// A page of a workflow's events (root and descendants).
    pub async fn query_workflow_events(
        &self,
        root_id: TaskId,
        filter: EventQuery,
        page: PageRequest,
    ) -> Result<Page<TaskEvent>> {
        Ok(self
            .audit
            .query_workflow_events(root_id, filter, page)
            .await?)
    }

    /// A page of one task's attempts, by attempt number.
    pub async fn query_task_attempts(
        &self,
        task_id: TaskId,
        filter: AttemptQuery,
        page: PageRequest,
    ) -> Result<Page<TaskAttempt>> {
        Ok(self
            .audit
            .query_task_attempts(task_id, filter, page)
            .await?)
    }

    /// A page of a workflow's attempts, by start time.
    pub async fn query_workflow_attempts(
        &self,
        root_id: TaskId,
        filter: AttemptQuery,
        page: PageRequest,
    ) -> Result<Page<TaskAttempt>> {
        Ok(self
            .audit
            .query_workflow_attempts(root_id, filter, page)
            .await?)
    }

    /// A task with paged events and attempts.
    pub async fn task_audit(
        &self,
        task_id: TaskId,
        options: TaskAuditOptions,
    ) -> Result<TaskAudit> {
        Ok(self.audit.task_audit(task_id, options).await?)
    }

    /// A workflow root with paged tasks and events.
    pub async fn workflow_audit(
        &self,
        root_id: TaskId,
        options: WorkflowAuditOptions,
    ) -> Result<WorkflowAudit> {
        Ok(self.audit.workflow_audit(root_id, options).await?)
    }

    /// The aggregate diagnosis of a workflow.
    pub async fn workflow_audit_summary(&self, root_id: TaskId) -> Result<WorkflowSummary> {
        Ok(self.audit.workflow_audit_summary(root_id).await?)
    }
}

fn required(field: &'static str, value: &str) -> Result<String, Error> {
    if value.trim().is_empty() {
        return Err(DomainError::InvalidOption {
            field,
            reason: "is required".into(),
        }
        .into());
    }
    Ok(value.to_owned())
}
