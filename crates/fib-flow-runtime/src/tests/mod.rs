//! Unit tests of the engine against mocked ports.
//!
//! The store is a mockall `MockTaskStore` whose expectations feed a shared recorder ([`Rec`]):
//! scripted claim/apply/expiry results go in, every call comes out as an [`Ev`] in one ordered
//! log that tests await. Time is a [`ManualClock`]; nothing here sleeps on the wall clock (the
//! only real timer is [`WAIT_LIMIT`], a safety net that fails a hung test).

#![allow(clippy::unwrap_used)]

mod clock;
mod control;
mod execution;
mod lease;
mod maintenance;
mod scheduling;
mod submission;
mod wakeups;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use fib_flow_domain::progress::HandlerRecord;
use fib_flow_domain::query::{
    AttemptQuery, DeleteFilter, EventQuery, Page, PageBounds, TagStat, TaskQuery,
};
use fib_flow_domain::{
    ChildFailurePolicy, ChildResult, Command, ManagerOptions, NewTask, RetryBackoff, Task,
    TaskAttempt, TaskEvent, TaskId, TaskStatus, TaskType, Worker, WorkerQuery, WorkerStatus,
};
use fib_flow_ports::{
    BatchCommand, ClaimRequest, CronChange, Enqueued, Expiry, MockTaskStore, PortError, Recovery,
    RetentionReport, RetentionRun, RetiredWorkers, SpawnRequest, TaskStore, WorkerRegistration,
};
use serde_json::json;
use tokio::sync::{Notify, watch};

use crate::Engine;
use crate::clock::ManualClock;

/// Longest any awaited condition may take before the test fails (a hang guard, not a sleep).
pub(crate) const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// Everything the store saw and the handlers reported, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ev {
    Claim(ClaimRequest),
    Apply(TaskId, Command),
    /// One `apply_batch` call with the tasks of its commands (each also logs its `Apply`).
    Batch(Vec<TaskId>),
    Spawn(SpawnRequest),
    Heartbeat(String, Vec<(TaskId, i32)>),
    Insert(Vec<NewTask>),
    Purge(RetentionRun),
    ChildResults(TaskId, i32),
    Outstanding(TaskId, i32),
    Close,
    /// A handler started (test handlers report it).
    Started(TaskId),
    /// A handler future was dropped (test handlers report it through [`DropFlag`]).
    Dropped(TaskId),
    /// `register_worker` (worker id, whether the meta says it is a revival).
    Register(String, bool),
    /// `supersede_workers` superseded these (and recovered their tasks if asked).
    Supersede(Vec<String>, bool),
    /// `reap_workers` reaped these, logged only when it reaped some (and recovered their
    /// tasks if asked).
    Reap(Vec<String>, bool),
    /// `stop_worker` (and recovered the worker's remaining tasks if asked).
    StopWorker(String, bool),
}

/// Shared script and log of the fake store.
pub(crate) struct Rec {
    log: Mutex<Vec<Ev>>,
    bump: watch::Sender<u64>,
    pub(crate) claims: Mutex<VecDeque<Result<Vec<Task>, PortError>>>,
    pub(crate) apply_results: Mutex<VecDeque<Result<(), PortError>>>,
    pub(crate) spawn_results: Mutex<VecDeque<Result<(), PortError>>>,
    pub(crate) expired: Mutex<VecDeque<Vec<Expiry>>>,
    pub(crate) purge_results: Mutex<VecDeque<RetentionReport>>,
    pub(crate) tasks: Mutex<HashMap<TaskId, Task>>,
    pub(crate) outstanding: Mutex<i32>,
    pub(crate) child_results: Mutex<Vec<ChildResult>>,
    pub(crate) notify: Notify,
    next_id: AtomicUsize,
    /// The in-memory worker registry (behavior.md §6.1 semantics).
    pub(crate) workers: Mutex<std::collections::BTreeMap<String, Worker>>,
    /// What `idle_attempts` returns next.
    pub(crate) idle: Mutex<Vec<(TaskId, i32)>>,
    /// When set, `register_worker` waits for a permit (a slow start-up registration).
    pub(crate) registration_gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
}

impl Rec {
    pub(crate) fn new() -> Arc<Rec> {
        Arc::new(Rec {
            log: Mutex::new(Vec::new()),
            bump: watch::Sender::new(0),
            claims: Mutex::default(),
            apply_results: Mutex::default(),
            spawn_results: Mutex::default(),
            expired: Mutex::default(),
            purge_results: Mutex::default(),
            tasks: Mutex::default(),
            outstanding: Mutex::new(0),
            child_results: Mutex::default(),
            notify: Notify::new(),
            next_id: AtomicUsize::new(100),
            workers: Mutex::default(),
            idle: Mutex::default(),
            registration_gate: Mutex::default(),
        })
    }

    pub(crate) fn push(&self, event: Ev) {
        self.log.lock().unwrap().push(event);
        self.bump.send_modify(|n| *n += 1);
    }

    pub(crate) fn log(&self) -> Vec<Ev> {
        self.log.lock().unwrap().clone()
    }

    /// Puts a registry row in place, as another process would have.
    pub(crate) fn put_worker(
        &self,
        worker_id: &str,
        pod_id: &str,
        status: WorkerStatus,
        expires_at: DateTime<Utc>,
    ) {
        self.workers.lock().unwrap().insert(
            worker_id.to_owned(),
            Worker {
                worker_id: worker_id.to_owned(),
                pod_id: pod_id.to_owned(),
                status,
                registered_at: expires_at,
                last_seen_at: expires_at,
                expires_at,
                superseded_at: None,
                dead_at: None,
                meta: None,
            },
        );
    }

    /// A registry row's status.
    pub(crate) fn worker_status(&self, worker_id: &str) -> Option<WorkerStatus> {
        self.workers
            .lock()
            .unwrap()
            .get(worker_id)
            .map(|worker| worker.status)
    }

    /// Scripts the next claim result.
    pub(crate) fn script_claim(&self, result: Result<Vec<Task>, PortError>) {
        self.claims.lock().unwrap().push_back(result);
    }

    pub(crate) fn claims(&self) -> Vec<ClaimRequest> {
        self.log()
            .into_iter()
            .filter_map(|event| match event {
                Ev::Claim(request) => Some(request),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn applies(&self) -> Vec<(TaskId, Command)> {
        self.log()
            .into_iter()
            .filter_map(|event| match event {
                Ev::Apply(id, command) => Some((id, command)),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn applies_to(&self, id: i64) -> Vec<Command> {
        self.applies()
            .into_iter()
            .filter(|(task, _)| *task == TaskId(id))
            .map(|(_, command)| command)
            .collect()
    }

    pub(crate) fn count(&self, pred: impl Fn(&Ev) -> bool) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|event| pred(event))
            .count()
    }

    /// Waits until `pred` holds for the log.
    pub(crate) async fn wait(&self, what: &str, pred: impl Fn(&[Ev]) -> bool) {
        let mut changes = self.bump.subscribe();
        let waited = tokio::time::timeout(WAIT_LIMIT, async {
            loop {
                changes.borrow_and_update();
                if pred(&self.log.lock().unwrap()) {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "timed out waiting for {what}; log: {:#?}",
            self.log()
        );
    }

    /// Waits until `n` events match `pred`.
    pub(crate) async fn wait_count(&self, what: &str, n: usize, pred: impl Fn(&Ev) -> bool) {
        self.wait(what, |log| {
            log.iter().filter(|event| pred(event)).count() >= n
        })
        .await;
    }

    fn claim(&self, request: ClaimRequest) -> Result<Vec<Task>, PortError> {
        self.push(Ev::Claim(request));
        self.claims
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Ok(Vec::new()))
    }

    fn apply(&self, id: TaskId, command: Command, now: DateTime<Utc>) -> Result<Task, PortError> {
        self.push(Ev::Apply(id, command));
        self.apply_results
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Ok(()))?;
        let task = self.tasks.lock().unwrap().get(&id).cloned();
        Ok(task.unwrap_or_else(|| running_task(id.0, "any", 1, now)))
    }
}

/// The mock store, every expectation answered from the recorder.
pub(crate) fn mock_store(rec: &Arc<Rec>) -> MockTaskStore {
    let mut mock = MockTaskStore::new();
    mock.expect_backend().return_const("mock");
    let r = rec.clone();
    mock.expect_claim()
        .returning(move |request| r.claim(request));
    let r = rec.clone();
    mock.expect_apply()
        .returning(move |id, command, now| r.apply(id, command, now));
    let r = rec.clone();
    mock.expect_spawn_children().returning(move |request| {
        let count = request.children.len();
        r.push(Ev::Spawn(request));
        r.spawn_results
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Ok(()))?;
        Ok((0..count)
            .map(|_| TaskId(r.next_id.fetch_add(1, Ordering::SeqCst) as i64))
            .collect())
    });
    let r = rec.clone();
    mock.expect_heartbeat()
        .returning(move |worker, attempts, _now| {
            let count = attempts.len() as u64;
            r.push(Ev::Heartbeat(worker, attempts));
            Ok(count)
        });
    let r = rec.clone();
    mock.expect_expired_attempts()
        .returning(move |_now, _cutoff, _limit| {
            Ok(r.expired.lock().unwrap().pop_front().unwrap_or_default())
        });
    let r = rec.clone();
    mock.expect_purge_expired().returning(move |run| {
        r.push(Ev::Purge(run));
        Ok(r.purge_results
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_default())
    });
    let r = rec.clone();
    mock.expect_insert_tasks().returning(move |tasks| {
        let count = tasks.len();
        r.push(Ev::Insert(tasks));
        Ok((0..count)
            .map(|_| TaskId(r.next_id.fetch_add(1, Ordering::SeqCst) as i64))
            .collect())
    });
    let r = rec.clone();
    mock.expect_get_task()
        .returning(move |id| Ok(r.tasks.lock().unwrap().get(&id).cloned()));
    let r = rec.clone();
    mock.expect_outstanding_children()
        .returning(move |id, round| {
            r.push(Ev::Outstanding(id, round));
            Ok(*r.outstanding.lock().unwrap())
        });
    let r = rec.clone();
    mock.expect_child_results().returning(move |id, round| {
        r.push(Ev::ChildResults(id, round));
        Ok(r.child_results.lock().unwrap().clone())
    });
    let r = rec.clone();
    mock.expect_close().returning(move || r.push(Ev::Close));
    // Sampled by every maintenance tick for the queue-depth gauge.
    mock.expect_task_stats().returning(|_, _| Ok(Vec::new()));
    mock
}

/// Wraps the mock so that `wait_for_notification` can pend (a mock can only return at once)
/// and fires when a test calls `rec.notify.notify_one()`.
pub(crate) struct TestStore {
    mock: MockTaskStore,
    rec: Arc<Rec>,
}

impl TestStore {
    pub(crate) fn new(mock: MockTaskStore, rec: Arc<Rec>) -> Arc<TestStore> {
        Arc::new(TestStore { mock, rec })
    }
}

#[async_trait]
impl TaskStore for TestStore {
    fn backend(&self) -> &'static str {
        self.mock.backend()
    }
    async fn migrate(&self) -> Result<(), PortError> {
        self.mock.migrate().await
    }
    async fn insert_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<TaskId>, PortError> {
        self.mock.insert_tasks(tasks).await
    }
    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Task>, PortError> {
        self.mock.claim(request).await
    }
    /// Keyed submissions go through the scripted `insert_tasks` (logged as [`Ev::Insert`]):
    /// the key logic itself is the adapters' and is covered by the conformance suite.
    async fn insert_unique(
        &self,
        task: NewTask,
        _unique_key: String,
    ) -> Result<Enqueued, PortError> {
        let ids = self.mock.insert_tasks(vec![task]).await?;
        Ok(Enqueued {
            id: ids[0],
            created: true,
        })
    }
    async fn upsert_cron(
        &self,
        task: NewTask,
        _cron_key: String,
    ) -> Result<(TaskId, CronChange), PortError> {
        let ids = self.mock.insert_tasks(vec![task]).await?;
        Ok((ids[0], CronChange::Created))
    }
    async fn remove_cron(&self, _cron_key: String) -> Result<bool, PortError> {
        Ok(false)
    }
    async fn apply(
        &self,
        task_id: TaskId,
        command: Command,
        now: DateTime<Utc>,
    ) -> Result<Task, PortError> {
        self.mock.apply(task_id, command, now).await
    }
    /// Each command goes through the scripted `apply`; a transient fault of any of them fails
    /// the whole batch, as a real store's rolled-back transaction would.
    async fn apply_batch(
        &self,
        commands: Vec<BatchCommand>,
    ) -> Result<Vec<Result<Task, PortError>>, PortError> {
        self.rec
            .push(Ev::Batch(commands.iter().map(|c| c.task_id).collect()));
        let mut verdicts = Vec::with_capacity(commands.len());
        for BatchCommand {
            task_id,
            command,
            at,
        } in commands
        {
            match self.mock.apply(task_id, command, at).await {
                Err(error) if error.is_transient() => return Err(error),
                verdict => verdicts.push(verdict),
            }
        }
        Ok(verdicts)
    }
    async fn spawn_children(&self, request: SpawnRequest) -> Result<Vec<TaskId>, PortError> {
        self.mock.spawn_children(request).await
    }
    async fn heartbeat(
        &self,
        worker_id: String,
        attempts: Vec<(TaskId, i32)>,
        now: DateTime<Utc>,
    ) -> Result<u64, PortError> {
        self.mock.heartbeat(worker_id, attempts, now).await
    }
    async fn record(&self, record: HandlerRecord) -> Result<i64, PortError> {
        self.mock.record(record).await
    }
    async fn expired_attempts(
        &self,
        now: DateTime<Utc>,
        heartbeat_cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Expiry>, PortError> {
        self.mock
            .expired_attempts(now, heartbeat_cutoff, limit)
            .await
    }
    async fn outstanding_children(&self, parent_id: TaskId, round: i32) -> Result<i32, PortError> {
        self.mock.outstanding_children(parent_id, round).await
    }
    async fn get_task(&self, task_id: TaskId) -> Result<Option<Task>, PortError> {
        self.mock.get_task(task_id).await
    }
    async fn list_tasks(&self, query: TaskQuery) -> Result<Vec<Task>, PortError> {
        self.mock.list_tasks(query).await
    }
    async fn query_tasks(
        &self,
        query: TaskQuery,
        page: PageBounds,
    ) -> Result<Page<Task>, PortError> {
        self.mock.query_tasks(query, page).await
    }
    async fn child_results(
        &self,
        parent_id: TaskId,
        round: i32,
    ) -> Result<Vec<ChildResult>, PortError> {
        self.mock.child_results(parent_id, round).await
    }
    async fn task_stats(
        &self,
        tag: Option<String>,
        status: Option<TaskStatus>,
    ) -> Result<Vec<TagStat>, PortError> {
        self.mock.task_stats(tag, status).await
    }
    async fn delete_tasks(&self, filter: DeleteFilter) -> Result<u64, PortError> {
        self.mock.delete_tasks(filter).await
    }
    async fn query_events(
        &self,
        query: EventQuery,
        page: PageBounds,
    ) -> Result<Page<TaskEvent>, PortError> {
        self.mock.query_events(query, page).await
    }
    async fn query_attempts(
        &self,
        query: AttemptQuery,
        page: PageBounds,
    ) -> Result<Page<TaskAttempt>, PortError> {
        self.mock.query_attempts(query, page).await
    }
    async fn purge_expired(&self, run: RetentionRun) -> Result<RetentionReport, PortError> {
        self.mock.purge_expired(run).await
    }
    async fn register_worker(&self, registration: WorkerRegistration) -> Result<Worker, PortError> {
        let gate = self.rec.registration_gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.acquire().await.unwrap().forget();
        }
        let revived = registration.meta.get("recovered_at").is_some();
        self.rec
            .push(Ev::Register(registration.worker_id.clone(), revived));
        let now = registration.now;
        let worker = Worker {
            worker_id: registration.worker_id.clone(),
            pod_id: registration.pod_id,
            status: WorkerStatus::Active,
            registered_at: now,
            last_seen_at: now,
            expires_at: now + registration.ttl,
            superseded_at: None,
            dead_at: None,
            meta: Some(registration.meta),
        };
        self.rec
            .workers
            .lock()
            .unwrap()
            .insert(registration.worker_id, worker.clone());
        Ok(worker)
    }
    async fn heartbeat_worker(
        &self,
        worker_id: String,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<bool, PortError> {
        let mut workers = self.rec.workers.lock().unwrap();
        match workers.get_mut(&worker_id) {
            Some(worker) if worker.status == WorkerStatus::Active => {
                worker.last_seen_at = now;
                worker.expires_at = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    async fn get_worker(&self, worker_id: String) -> Result<Option<Worker>, PortError> {
        Ok(self.rec.workers.lock().unwrap().get(&worker_id).cloned())
    }
    async fn list_workers(&self, query: WorkerQuery) -> Result<Vec<Worker>, PortError> {
        Ok(self
            .rec
            .workers
            .lock()
            .unwrap()
            .values()
            .filter(|w| query.pod_id.as_ref().is_none_or(|pod| *pod == w.pod_id))
            .filter(|w| query.status.is_none_or(|status| status == w.status))
            .cloned()
            .collect())
    }
    async fn supersede_workers(
        &self,
        pod_id: String,
        current_worker_id: String,
        now: DateTime<Utc>,
        recovery: Option<Recovery>,
    ) -> Result<RetiredWorkers, PortError> {
        let mut superseded = Vec::new();
        for worker in self.rec.workers.lock().unwrap().values_mut() {
            if worker.pod_id == pod_id
                && worker.worker_id != current_worker_id
                && worker.status == WorkerStatus::Active
            {
                worker.status = WorkerStatus::Superseded;
                worker.superseded_at = Some(now);
                superseded.push(worker.worker_id.clone());
            }
        }
        self.rec
            .push(Ev::Supersede(superseded.clone(), recovery.is_some()));
        Ok(retired(superseded, recovery.as_ref()))
    }
    async fn reap_workers(
        &self,
        now: DateTime<Utc>,
        recovery: Option<Recovery>,
    ) -> Result<RetiredWorkers, PortError> {
        let mut reaped = Vec::new();
        for worker in self.rec.workers.lock().unwrap().values_mut() {
            if worker.status == WorkerStatus::Active && worker.expires_at < now {
                worker.status = WorkerStatus::Dead;
                worker.dead_at = Some(now);
                reaped.push(worker.worker_id.clone());
            }
        }
        if reaped.is_empty() {
            return Ok(RetiredWorkers::default());
        }
        self.rec.push(Ev::Reap(reaped.clone(), recovery.is_some()));
        Ok(retired(reaped, recovery.as_ref()))
    }
    async fn stop_worker(
        &self,
        worker_id: String,
        now: DateTime<Utc>,
        recovery: Option<Recovery>,
    ) -> Result<u64, PortError> {
        if let Some(worker) = self.rec.workers.lock().unwrap().get_mut(&worker_id) {
            worker.status = WorkerStatus::Stopped;
            worker.dead_at = Some(now);
        }
        self.rec.push(Ev::StopWorker(worker_id, recovery.is_some()));
        Ok(0)
    }
    async fn idle_attempts(
        &self,
        _worker_id: String,
        _idle_before: DateTime<Utc>,
        _limit: u32,
    ) -> Result<Vec<(TaskId, i32)>, PortError> {
        Ok(std::mem::take(&mut *self.rec.idle.lock().unwrap()))
    }
    async fn wait_for_notification(&self) {
        self.rec.notify.notified().await;
    }
    async fn close(&self) {
        self.mock.close().await;
    }
}

/// The fake registry's report: one recovered task per retired worker when recovery was asked.
fn retired(workers: Vec<String>, recovery: Option<&Recovery>) -> RetiredWorkers {
    let recovered = if recovery.is_some() {
        workers.len() as u64
    } else {
        0
    };
    RetiredWorkers { workers, recovered }
}

/// The instant every test starts at.
pub(crate) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 30).single().unwrap()
}

/// Test options: 1 s polling, 5 s maintenance, 30 s heartbeat timeout and stop timeout.
pub(crate) fn options() -> ManagerOptions {
    ManagerOptions {
        poll_interval: Duration::from_secs(1),
        task_heartbeat_interval: Duration::from_secs(5),
        task_heartbeat_timeout: Duration::from_secs(30),
        stop_timeout: Duration::from_secs(30),
        worker_id: Some("w1".into()),
        ..ManagerOptions::new("mock://test")
    }
}

/// An engine over the recorder's mock store and a manual clock at [`t0`].
pub(crate) fn engine_with(options: ManagerOptions) -> (Engine, Arc<Rec>, Arc<ManualClock>) {
    let rec = Rec::new();
    let store = TestStore::new(mock_store(&rec), rec.clone());
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = Engine::new(options, store, clock.clone()).unwrap();
    (engine, rec, clock)
}

pub(crate) fn engine() -> (Engine, Arc<Rec>, Arc<ManualClock>) {
    engine_with(options())
}

/// A claimed (running) task snapshot.
pub(crate) fn running_task(id: i64, name: &str, attempt: i32, now: DateTime<Utc>) -> Task {
    Task {
        id: TaskId(id),
        name: name.into(),
        task_type: TaskType::Async,
        status: TaskStatus::Running,
        priority: 0,
        payload: json!({}),
        created_at: now,
        tag: None,
        next_run_time: now,
        last_active_time: Some(now),
        last_event_time: None,
        last_event_type: None,
        result: None,
        error: None,
        current_stage_name: None,
        progress_text: None,
        progress_percent: None,
        stage: 0,
        timeout: None,
        retry_count: 0,
        max_retries: 3,
        retry_interval: Duration::ZERO,
        retry_backoff: RetryBackoff::Fixed,
        cron_expr: None,
        timezone: None,
        root_id: None,
        parent_id: None,
        parent_round: None,
        total_children: 0,
        completed_children: 0,
        child_failure_policy: ChildFailurePolicy::Resume,
        worker_id: Some("w1".into()),
        start_time: Some(now),
        deadline: None,
        attempt,
        context: None,
        suspend_reason: None,
        suspend_metadata: None,
        cron_key: None,
        unique_key: None,
    }
}

/// Lets every ready task on the (current-thread) test runtime run until it blocks.
pub(crate) async fn settle() {
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
}

/// Reports `Ev::Dropped(id)` when the handler future holding it is dropped.
pub(crate) struct DropFlag(pub(crate) Arc<Rec>, pub(crate) TaskId);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.push(Ev::Dropped(self.1));
    }
}

/// Whether the command is a `Complete` with this result.
pub(crate) fn is_complete(command: &Command, expected: &serde_json::Value) -> bool {
    matches!(command, Command::Complete { result, .. } if result == expected)
}
