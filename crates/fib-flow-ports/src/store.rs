//! The storage port.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fib_flow_domain::progress::HandlerRecord;
use fib_flow_domain::query::{
    AttemptQuery, DeleteFilter, EventQuery, Page, PageBounds, TagStat, TaskQuery,
};
use fib_flow_domain::{
    ChildFailurePolicy, ChildResult, Command, ExpiryKind, NewTask, Task, TaskAttempt, TaskEvent,
    TaskId, TaskStatus, Worker, WorkerQuery,
};
use serde::{Deserialize, Serialize};

use crate::error::PortError;

/// A handler name the worker can claim, with its remaining per-type capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimName {
    /// Handler name.
    pub name: String,
    /// At most this many of this name in this claim (`None`: only the overall limit applies).
    pub max: Option<u32>,
    /// The handler's queue; a queue listed in [`ClaimRequest::queue_caps`] bounds all its
    /// names together.
    pub queue: String,
}

/// At most `max` tasks of the names of `queue`, together, in one claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueCap {
    /// The queue.
    pub queue: String,
    /// Its remaining capacity in this worker.
    pub max: u32,
}

/// One claim round.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRequest {
    /// The claiming worker.
    pub worker_id: String,
    /// Claim instant; only tasks with `next_run_time <= now` are due.
    pub now: DateTime<Utc>,
    /// Most tasks to claim.
    pub limit: u32,
    /// Names eligible for this round.
    pub names: Vec<ClaimName>,
    /// Per-queue bounds (queues not listed are bounded only by `limit` and their names' caps).
    pub queue_caps: Vec<QueueCap>,
    /// Claim only while `worker_id` holds an active registry row (checked in the claim
    /// statement itself, so a worker superseded or reaped a moment ago claims nothing).
    pub require_active_lease: bool,
}

/// A handler's `next(children)`: children to insert and the parent's suspension, atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct SpawnRequest {
    /// The parent.
    pub parent_id: TaskId,
    /// The parent's running attempt (fence).
    pub attempt: i32,
    /// Children, fully resolved (`parent_id`, `root_id`, `parent_round` set).
    pub children: Vec<NewTask>,
    /// New context for the parent (`None` keeps it).
    pub context: Option<Vec<u8>>,
    /// Child failure policy of this round.
    pub policy: ChildFailurePolicy,
    /// The instant of the write.
    pub now: DateTime<Utc>,
}

/// One command of [`TaskStore::apply_batch`].
#[derive(Debug, Clone, PartialEq)]
pub struct BatchCommand {
    /// The task.
    pub task_id: TaskId,
    /// What to apply.
    pub command: Command,
    /// When it happened (a handler's return, not the batch's flush): the instant the
    /// transition records.
    pub at: DateTime<Utc>,
}

/// What registering a cron schedule under its key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CronChange {
    /// No schedule had the key: a new cron task.
    Created,
    /// The stored schedule has the same definition: nothing written.
    Unchanged,
    /// The stored schedule was redefined (event `task_schedule_updated`).
    Updated,
}

/// A submission that may have found its task already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enqueued {
    /// The task: the new one, or the existing one with the same key.
    pub id: TaskId,
    /// Whether this call created it.
    pub created: bool,
}

/// A running attempt a sweep found past its deadline or heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// The task.
    pub task_id: TaskId,
    /// Its running attempt.
    pub attempt: i32,
    /// Which limit it exceeded.
    pub kind: ExpiryKind,
}

/// A worker's (re-)registration in the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRegistration {
    /// The process instance.
    pub worker_id: String,
    /// Its stable identity.
    pub pod_id: String,
    /// Registration instant (`registered_at`, `last_seen_at`).
    pub now: DateTime<Utc>,
    /// Lease length: `expires_at = now + ttl`.
    pub ttl: std::time::Duration,
    /// `{ pid, started_at }` and, on re-registration, `recovered_at`.
    pub meta: serde_json::Value,
}

/// Who recovers the running tasks of unavailable workers, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    /// The recovering worker (recorded on the `task_recovered` event).
    pub by_worker_id: String,
    /// Its pod.
    pub by_pod_id: Option<String>,
    /// The instant of the recovery.
    pub now: DateTime<Utc>,
}

/// What [`TaskStore::supersede_workers`] or [`TaskStore::reap_workers`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetiredWorkers {
    /// The workers now `superseded` or `dead`.
    pub workers: Vec<String>,
    /// Their running tasks returned to `pending` (zero when no recovery was asked for).
    pub recovered: u64,
}

/// One retention batch.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionRun {
    /// Eligible statuses.
    pub statuses: Vec<TaskStatus>,
    /// Tasks whose `COALESCE(last_active_time, created_at)` is before this are expired.
    pub cutoff: DateTime<Utc>,
    /// Most tasks deleted in this batch (whole workflows only).
    pub batch_size: u32,
}

/// What a retention run deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionReport {
    /// Task rows.
    pub tasks_deleted: u64,
    /// Event rows.
    pub events_deleted: u64,
    /// Attempt rows.
    pub attempts_deleted: u64,
}

impl std::ops::AddAssign for RetentionReport {
    fn add_assign(&mut self, other: Self) {
        self.tasks_deleted += other.tasks_deleted;
        self.events_deleted += other.events_deleted;
        self.attempts_deleted += other.attempts_deleted;
    }
}

/// Everything fib-flow persists. Implementations: one per backend (fib-flow-sql over fib-flow-sqlite, -postgres, -mysql).
///
/// Every method that changes more than one row does so in one transaction. Transitions are
/// computed by [`fib_flow_domain::apply`] and written with its guard, so a concurrent change
/// makes the write fail cleanly instead of overwriting.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Backend name (`sqlite`, `postgres`, `mysql`), for logs and errors.
    fn backend(&self) -> &'static str;

    /// Applies pending migrations; a no-op when the schema is current.
    async fn migrate(&self) -> Result<(), PortError>;

    /// Inserts tasks and their `task_created` events in one transaction; ids in input order.
    async fn insert_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<TaskId>, PortError>;

    /// Claims up to `limit` due pending tasks, in `priority DESC, next_run_time ASC, id ASC`
    /// order, skipping rows other workers hold; opens their attempts and writes their claim
    /// events in the same transaction. Returns the claimed snapshots.
    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Task>, PortError>;

    /// Inserts a task unless an unfinished task with the same `unique_key` exists (enforced by
    /// a unique index, so it holds across processes). Returns the task and whether it is new.
    async fn insert_unique(&self, task: NewTask, unique_key: String)
    -> Result<Enqueued, PortError>;

    /// Registers a cron schedule under `cron_key` (unique in the database): inserts it, or
    /// leaves an identical stored schedule alone, or redefines a different one (definition
    /// columns, and `next_run_time` while it waits for its next run), in one transaction.
    async fn upsert_cron(
        &self,
        task: NewTask,
        cron_key: String,
    ) -> Result<(TaskId, CronChange), PortError>;

    /// Deletes the cron schedule with this key (with its events and attempts). Returns
    /// whether there was one.
    async fn remove_cron(&self, cron_key: String) -> Result<bool, PortError>;

    /// Applies a command to a task in one transaction (with the parent bookkeeping of a child
    /// that settles). Returns the new snapshot. A fenced command whose attempt no longer owns
    /// the task fails with [`PortError::Stale`]; an illegal one with [`PortError::Rejected`].
    async fn apply(
        &self,
        task_id: TaskId,
        command: Command,
        now: DateTime<Utc>,
    ) -> Result<Task, PortError>;

    /// Applies many commands in one transaction: the rows are locked in ascending id order,
    /// each command is decided by [`fib_flow_domain::apply`] on its row at its own instant, and
    /// every transition is written with set-based statements. Commands for the same task
    /// apply in order.
    ///
    /// The outer `Err` is a fault of the whole batch (nothing was written; a transient one may
    /// be retried). The inner results are per command: a stale fence or an illegal command
    /// ([`PortError::Stale`], [`PortError::Rejected`], [`PortError::NotFound`]) fails only its
    /// own command, never its neighbours.
    async fn apply_batch(
        &self,
        commands: Vec<BatchCommand>,
    ) -> Result<Vec<Result<Task, PortError>>, PortError>;

    /// Inserts a parent's children and suspends the parent, in one transaction.
    async fn spawn_children(&self, request: SpawnRequest) -> Result<Vec<TaskId>, PortError>;

    /// Refreshes `last_active_time` of the given running attempts owned by `worker_id`.
    /// Returns how many rows were refreshed.
    async fn heartbeat(
        &self,
        worker_id: String,
        attempts: Vec<(TaskId, i32)>,
        now: DateTime<Utc>,
    ) -> Result<u64, PortError>;

    /// Writes a handler's checkpoint or progress event (and progress snapshot fields), fenced by
    /// the event's task and attempt. Returns the event id.
    async fn record(&self, record: HandlerRecord) -> Result<i64, PortError>;

    /// Running attempts whose deadline is before `now`, or whose last activity is before
    /// `heartbeat_cutoff` while their worker has no `active` registry row (an active worker
    /// heartbeats its attempts and recovers any it lost; an expired one is reaped and its
    /// attempts recovered without a retry), at most `limit`.
    async fn expired_attempts(
        &self,
        now: DateTime<Utc>,
        heartbeat_cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Expiry>, PortError>;

    /// Children of a parent round that have not settled yet.
    async fn outstanding_children(&self, parent_id: TaskId, round: i32) -> Result<i32, PortError>;

    /// One task.
    async fn get_task(&self, task_id: TaskId) -> Result<Option<Task>, PortError>;

    /// Every task matching the filter, ordered by id.
    async fn list_tasks(&self, query: TaskQuery) -> Result<Vec<Task>, PortError>;

    /// A page of tasks ordered by `created_at, id`.
    async fn query_tasks(
        &self,
        query: TaskQuery,
        page: PageBounds,
    ) -> Result<Page<Task>, PortError>;

    /// Outcomes of the children of one parent round, in child id order.
    async fn child_results(
        &self,
        parent_id: TaskId,
        round: i32,
    ) -> Result<Vec<ChildResult>, PortError>;

    /// Counts grouped by (tag, name, status), ordered by those keys.
    async fn task_stats(
        &self,
        tag: Option<String>,
        status: Option<TaskStatus>,
    ) -> Result<Vec<TagStat>, PortError>;

    /// Deletes matching tasks with their events and attempts in one transaction.
    async fn delete_tasks(&self, filter: DeleteFilter) -> Result<u64, PortError>;

    /// A page of events ordered by `event_time, id`.
    async fn query_events(
        &self,
        query: EventQuery,
        page: PageBounds,
    ) -> Result<Page<TaskEvent>, PortError>;

    /// A page of attempts: by `attempt, id` for one task, by `started_at, id` for a workflow.
    async fn query_attempts(
        &self,
        query: AttemptQuery,
        page: PageBounds,
    ) -> Result<Page<TaskAttempt>, PortError>;

    /// Deletes one batch of expired workflows (every member eligible) with their audit rows.
    async fn purge_expired(&self, run: RetentionRun) -> Result<RetentionReport, PortError>;

    /// Registers a worker: any row with its id is replaced by an `active` one whose lease
    /// ends at `now + ttl`, in one transaction. Returns the row.
    async fn register_worker(&self, registration: WorkerRegistration) -> Result<Worker, PortError>;

    /// Renews an `active` worker's lease (`last_seen_at = now`, `expires_at = now + ttl`).
    /// Returns false, changing nothing, when the worker is not `active`.
    async fn heartbeat_worker(
        &self,
        worker_id: String,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> Result<bool, PortError>;

    /// One registry row.
    async fn get_worker(&self, worker_id: String) -> Result<Option<Worker>, PortError>;

    /// Registry rows matching the filter, ordered by `registered_at, worker_id`.
    async fn list_workers(&self, query: WorkerQuery) -> Result<Vec<Worker>, PortError>;

    /// Marks every other `active` worker of `pod_id` `superseded` (at `now`) and, when
    /// `recovery` is given, returns their running tasks to `pending` as
    /// [`TaskStore::reap_workers`] does, in one transaction.
    async fn supersede_workers(
        &self,
        pod_id: String,
        current_worker_id: String,
        now: DateTime<Utc>,
        recovery: Option<Recovery>,
    ) -> Result<RetiredWorkers, PortError>;

    /// Marks every `active` worker whose lease ended strictly before `now` `dead` and, when
    /// `recovery` is given, returns their running tasks to `pending` (attempt `interrupted`,
    /// event `task_recovered`, no retry charged), all in one transaction, so that no sweep can
    /// see a reaped worker's tasks before they are recovered.
    async fn reap_workers(
        &self,
        now: DateTime<Utc>,
        recovery: Option<Recovery>,
    ) -> Result<RetiredWorkers, PortError>;

    /// Marks a worker `stopped` after its graceful stop released its executions and, when
    /// `recovery` is given, returns any task still running under its id (one it lost track
    /// of) to `pending`, in one transaction. Returns how many tasks were recovered.
    async fn stop_worker(
        &self,
        worker_id: String,
        now: DateTime<Utc>,
        recovery: Option<Recovery>,
    ) -> Result<u64, PortError>;

    /// Running attempts owned by `worker_id` whose last activity is before `idle_before`,
    /// at most `limit`, ordered by task id.
    async fn idle_attempts(
        &self,
        worker_id: String,
        idle_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(TaskId, i32)>, PortError>;

    /// Resolves when another process may have made work due (PostgreSQL LISTEN/NOTIFY).
    /// Backends without notifications never resolve; the runtime also polls.
    async fn wait_for_notification(&self);

    /// Closes the pool and any listener.
    async fn close(&self);
}
