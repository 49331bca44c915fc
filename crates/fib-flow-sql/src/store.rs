//! [`SqlStore`]: the one [`TaskStore`] implementation, over any [`Backend`].
//!
//! Each operation checks its input, takes the single-writer lock where the backend has one
//! (SQLite), checks a connection out of the backend's pool and runs the shared logic in one
//! transaction (reads and heartbeats run without one).

use std::future::Future;
use std::ops::DerefMut;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fib_flow_domain::progress::HandlerRecord;
use fib_flow_domain::query::{
    AttemptQuery, DeleteFilter, EventQuery, Page, PageBounds, TagStat, TaskQuery,
};
use fib_flow_domain::{
    ChildResult, Command, NewTask, Task, TaskAttempt, TaskEvent, TaskId, TaskStatus, Worker,
    WorkerQuery,
};
use fib_flow_ports::{
    BatchCommand, ClaimRequest, CronChange, Enqueued, Expiry, PortError, Recovery, RetentionReport,
    RetentionRun, RetiredWorkers, SpawnRequest, TaskStore, WorkerRegistration,
};

use crate::error::TxError;
use crate::rows::{AttemptRow, EventRow, TaskRow, check_new_tasks, child_result, status_from_text};
use crate::{CHUNK, Statements, queries, retention, transitions, workers};

/// A transaction body: borrows the connection for the transaction's length.
pub type TxFuture<'r, T> = Pin<Box<dyn Future<Output = Result<T, TxError>> + Send + 'r>>;

/// What a backend crate provides besides its [`Statements`]: its pool, its way of opening a
/// transaction, its migrations and its wake-ups.
pub trait Backend: Statements {
    /// A connection checked out of the pool (returned to it on drop).
    type Pooled: DerefMut<Target = Self::Conn> + Send;

    /// Whether every write must hold one in-process lock (SQLite allows one writer at a time:
    /// queueing here beats spinning on `SQLITE_BUSY`).
    const SINGLE_WRITER: bool;

    /// A pooled connection; [`PortError::Unavailable`] when none frees up in time.
    fn checkout(&self) -> impl Future<Output = Result<Self::Pooled, PortError>> + Send;

    /// Runs `body` in one transaction on `conn`: committed when it returns `Ok`, rolled back
    /// otherwise.
    fn transaction<'c, R, F>(
        conn: &'c mut Self::Conn,
        body: F,
    ) -> impl Future<Output = Result<R, TxError>> + Send + 'c
    where
        R: Send + 'c,
        F: for<'r> FnOnce(&'r mut Self::Conn) -> TxFuture<'r, R> + Send + 'c;

    /// Runs `body` in one transaction (see [`Backend::transaction`]) on a pooled connection,
    /// which is returned to the pool afterwards. A backend whose statements are blocking calls
    /// overrides it to run the whole transaction in one.
    fn run_transaction<R, F>(
        mut conn: Self::Pooled,
        body: F,
    ) -> impl Future<Output = Result<R, TxError>> + Send
    where
        R: Send + 'static,
        F: for<'r> FnOnce(&'r mut Self::Conn) -> TxFuture<'r, R> + Send + 'static,
    {
        async move { Self::transaction(&mut *conn, body).await }
    }

    /// One claim round in a transaction of its own (see [`TaskStore::claim`]):
    /// [`transitions::claim_tx`] in [`Backend::run_transaction`] by default; a backend
    /// overrides it to save round trips.
    fn claim_round(
        conn: Self::Pooled,
        request: ClaimRequest,
    ) -> impl Future<Output = Result<Vec<Task>, TxError>> + Send {
        Self::run_transaction(conn, move |c| {
            Box::pin(async move { transitions::claim_tx::<Self>(c, &request).await })
        })
    }

    /// A batch of commands in a transaction of its own (see [`TaskStore::apply_batch`]):
    /// [`transitions::apply_batch_tx`] in [`Backend::run_transaction`] by default; a backend
    /// overrides it to save round trips.
    fn outcome_batch(
        conn: Self::Pooled,
        commands: Vec<BatchCommand>,
    ) -> impl Future<Output = Result<Vec<Result<Task, PortError>>, TxError>> + Send {
        Self::run_transaction(conn, move |c| {
            Box::pin(async move { transitions::apply_batch_tx::<Self>(c, &commands).await })
        })
    }

    /// Applies the pending migrations (see [`TaskStore::migrate`]).
    fn migrate(&self) -> impl Future<Output = Result<(), PortError>> + Send;

    /// Resolves when another process may have made a task due (see
    /// [`TaskStore::wait_for_notification`]).
    fn wait_for_notification(&self) -> impl Future<Output = ()> + Send;

    /// Closes the pool and any background connection.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// The [`TaskStore`] of a backend.
pub struct SqlStore<B> {
    backend: B,
    writer: Option<tokio::sync::Mutex<()>>,
    acquire_timeout: Duration,
}

impl<B: Backend> SqlStore<B> {
    /// A store over `backend`; waits for the single-writer lock (where the backend has one)
    /// are bounded by `acquire_timeout`, like pool checkouts.
    pub fn new(backend: B, acquire_timeout: Duration) -> Self {
        SqlStore {
            backend,
            writer: B::SINGLE_WRITER.then(|| tokio::sync::Mutex::new(())),
            acquire_timeout,
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The single-writer lock, if the backend has one. Waiting is bounded like a pool
    /// checkout, so a stuck writer surfaces as a transient fault instead of hanging every
    /// other write.
    async fn write_guard(&self) -> Result<Option<tokio::sync::MutexGuard<'_, ()>>, PortError> {
        let Some(writer) = &self.writer else {
            return Ok(None);
        };
        tokio::time::timeout(self.acquire_timeout, writer.lock())
            .await
            .map(Some)
            .map_err(|_| PortError::Unavailable {
                backend: B::BACKEND,
                message: format!(
                    "timed out after {:?} waiting for the single-writer lock",
                    self.acquire_timeout
                ),
            })
    }

    /// Runs `body` in a write transaction.
    async fn write<R, F>(&self, body: F) -> Result<R, PortError>
    where
        R: Send + 'static,
        F: for<'r> FnOnce(&'r mut B::Conn) -> TxFuture<'r, R> + Send + 'static,
    {
        let _writer = self.write_guard().await?;
        let conn = self.backend.checkout().await?;
        B::run_transaction(conn, body)
            .await
            .map_err(|error| error.into_port(B::BACKEND))
    }

    /// Runs `body` on a pooled connection, outside a transaction.
    async fn read<R>(
        &self,
        body: impl AsyncFnOnce(&mut B::Conn) -> Result<R, TxError>,
    ) -> Result<R, PortError> {
        let mut conn = self.backend.checkout().await?;
        body(&mut *conn)
            .await
            .map_err(|error| error.into_port(B::BACKEND))
    }
}

fn count_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[async_trait]
impl<B: Backend> TaskStore for SqlStore<B> {
    fn backend(&self) -> &'static str {
        B::BACKEND
    }

    async fn migrate(&self) -> Result<(), PortError> {
        let _writer = self.write_guard().await?;
        self.backend.migrate().await
    }

    async fn insert_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<TaskId>, PortError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        check_new_tasks(&tasks)?;
        if B::ONE_STATEMENT_INSERT && tasks.len() <= CHUNK {
            // One statement is atomic by itself: no BEGIN/COMMIT round trips.
            let _writer = self.write_guard().await?;
            return self
                .read(async |c| transitions::insert_tasks_tx::<B>(c, &tasks).await)
                .await;
        }
        self.write(move |c| {
            Box::pin(async move { transitions::insert_tasks_tx::<B>(c, &tasks).await })
        })
        .await
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Task>, PortError> {
        if request.names.is_empty() || request.limit == 0 {
            return Ok(Vec::new());
        }
        let _writer = self.write_guard().await?;
        let conn = self.backend.checkout().await?;
        B::claim_round(conn, request)
            .await
            .map_err(|error| error.into_port(B::BACKEND))
    }

    async fn insert_unique(
        &self,
        task: NewTask,
        unique_key: String,
    ) -> Result<Enqueued, PortError> {
        check_new_tasks(std::slice::from_ref(&task))?;
        fib_flow_domain::limits::check_name("unique_key", &unique_key)
            .map_err(PortError::Rejected)?;
        retry_key_conflict(|| {
            let task = task.clone();
            let unique_key = unique_key.clone();
            self.write(move |c| {
                Box::pin(
                    async move { transitions::insert_unique_tx::<B>(c, &task, &unique_key).await },
                )
            })
        })
        .await
    }

    async fn upsert_cron(
        &self,
        task: NewTask,
        cron_key: String,
    ) -> Result<(TaskId, CronChange), PortError> {
        check_new_tasks(std::slice::from_ref(&task))?;
        fib_flow_domain::limits::check_name("cron_key", &cron_key).map_err(PortError::Rejected)?;
        retry_key_conflict(|| {
            let task = task.clone();
            let cron_key = cron_key.clone();
            self.write(move |c| {
                Box::pin(async move { transitions::upsert_cron_tx::<B>(c, &task, &cron_key).await })
            })
        })
        .await
    }

    async fn remove_cron(&self, cron_key: String) -> Result<bool, PortError> {
        self.write(move |c| {
            Box::pin(async move { retention::remove_cron_tx::<B>(c, &cron_key).await })
        })
        .await
    }

    async fn apply(
        &self,
        task_id: TaskId,
        command: Command,
        now: DateTime<Utc>,
    ) -> Result<Task, PortError> {
        self.write(move |c| Box::pin(transitions::apply_tx::<B>(c, task_id, command, now)))
            .await
    }

    async fn apply_batch(
        &self,
        commands: Vec<BatchCommand>,
    ) -> Result<Vec<Result<Task, PortError>>, PortError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let _writer = self.write_guard().await?;
        let conn = self.backend.checkout().await?;
        B::outcome_batch(conn, commands)
            .await
            .map_err(|error| error.into_port(B::BACKEND))
    }

    async fn spawn_children(&self, request: SpawnRequest) -> Result<Vec<TaskId>, PortError> {
        check_new_tasks(&request.children)?;
        self.write(move |c| Box::pin(transitions::spawn_tx::<B>(c, request)))
            .await
    }

    async fn heartbeat(
        &self,
        worker_id: String,
        attempts: Vec<(TaskId, i32)>,
        now: DateTime<Utc>,
    ) -> Result<u64, PortError> {
        if attempts.is_empty() {
            return Ok(0);
        }
        let _writer = self.write_guard().await?;
        self.read(async |c| transitions::heartbeat::<B>(c, &worker_id, &attempts, now).await)
            .await
    }

    async fn record(&self, record: HandlerRecord) -> Result<i64, PortError> {
        self.write(move |c| Box::pin(async move { transitions::record_tx::<B>(c, &record).await }))
            .await
    }

    async fn expired_attempts(
        &self,
        now: DateTime<Utc>,
        heartbeat_cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Expiry>, PortError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(async |c| transitions::expired::<B>(c, now, heartbeat_cutoff, limit).await)
            .await
    }

    async fn outstanding_children(&self, parent_id: TaskId, round: i32) -> Result<i32, PortError> {
        self.read(async |c| {
            let outstanding =
                queries::count_outstanding(B::connection(c), parent_id.0, round).await?;
            Ok(i32::try_from(outstanding).unwrap_or(i32::MAX))
        })
        .await
    }

    async fn get_task(&self, task_id: TaskId) -> Result<Option<Task>, PortError> {
        self.read(async |c| {
            let row = queries::get_task(B::connection(c), task_id.0).await?;
            Ok(row.map(TaskRow::into_task).transpose()?)
        })
        .await
    }

    async fn list_tasks(&self, query: TaskQuery) -> Result<Vec<Task>, PortError> {
        self.read(async |c| {
            let rows = queries::list_tasks(B::connection(c), &query).await?;
            Ok(decode(rows, TaskRow::into_task)?)
        })
        .await
    }

    async fn query_tasks(
        &self,
        query: TaskQuery,
        page: PageBounds,
    ) -> Result<Page<Task>, PortError> {
        self.read(async |c| {
            let (rows, total) = queries::page_tasks(B::connection(c), &query, page).await?;
            Ok(Page::new(
                decode(rows, TaskRow::into_task)?,
                count_u64(total),
                page,
            ))
        })
        .await
    }

    async fn child_results(
        &self,
        parent_id: TaskId,
        round: i32,
    ) -> Result<Vec<ChildResult>, PortError> {
        self.read(async |c| {
            let rows = queries::child_results(B::connection(c), parent_id.0, round).await?;
            Ok(decode(rows, child_result)?)
        })
        .await
    }

    async fn task_stats(
        &self,
        tag: Option<String>,
        status: Option<TaskStatus>,
    ) -> Result<Vec<TagStat>, PortError> {
        self.read(async |c| {
            let rows = queries::task_stats(B::connection(c), tag, status).await?;
            Ok(decode(rows, |(tag, name, status, count)| {
                Ok(TagStat {
                    tag,
                    name,
                    status: status_from_text(&status)?,
                    count: count_u64(count),
                })
            })?)
        })
        .await
    }

    async fn delete_tasks(&self, filter: DeleteFilter) -> Result<u64, PortError> {
        filter.validate().map_err(PortError::Rejected)?;
        self.write(move |c| Box::pin(async move { retention::delete_tx::<B>(c, &filter).await }))
            .await
    }

    async fn query_events(
        &self,
        query: EventQuery,
        page: PageBounds,
    ) -> Result<Page<TaskEvent>, PortError> {
        self.read(async |c| {
            let (rows, total) = queries::page_events(B::connection(c), &query, page).await?;
            Ok(Page::new(
                decode(rows, EventRow::into_event)?,
                count_u64(total),
                page,
            ))
        })
        .await
    }

    async fn query_attempts(
        &self,
        query: AttemptQuery,
        page: PageBounds,
    ) -> Result<Page<TaskAttempt>, PortError> {
        self.read(async |c| {
            let (rows, total) = queries::page_attempts(B::connection(c), &query, page).await?;
            Ok(Page::new(
                decode(rows, AttemptRow::into_attempt)?,
                count_u64(total),
                page,
            ))
        })
        .await
    }

    async fn purge_expired(&self, run: RetentionRun) -> Result<RetentionReport, PortError> {
        self.write(move |c| Box::pin(async move { retention::purge_tx::<B>(c, &run).await }))
            .await
    }

    async fn register_worker(&self, registration: WorkerRegistration) -> Result<Worker, PortError> {
        fib_flow_domain::limits::check_name("worker_id", &registration.worker_id)
            .and_then(|()| fib_flow_domain::limits::check_name("pod_id", &registration.pod_id))
            .map_err(PortError::Rejected)?;
        self.write(move |c| {
            Box::pin(async move { workers::register_tx::<B>(c, &registration).await })
        })
        .await
    }

    async fn heartbeat_worker(
        &self,
        worker_id: String,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<bool, PortError> {
        let _writer = self.write_guard().await?;
        self.read(async |c| workers::renew::<B>(c, &worker_id, now, ttl).await)
            .await
    }

    async fn get_worker(&self, worker_id: String) -> Result<Option<Worker>, PortError> {
        self.read(async |c| workers::get::<B>(c, &worker_id).await)
            .await
    }

    async fn list_workers(&self, query: WorkerQuery) -> Result<Vec<Worker>, PortError> {
        self.read(async |c| workers::list::<B>(c, &query).await)
            .await
    }

    async fn supersede_workers(
        &self,
        pod_id: String,
        current_worker_id: String,
        now: DateTime<Utc>,
        recovery: Option<Recovery>,
    ) -> Result<RetiredWorkers, PortError> {
        self.write(move |c| {
            Box::pin(async move {
                workers::supersede_tx::<B>(c, &pod_id, &current_worker_id, now, recovery.as_ref())
                    .await
            })
        })
        .await
    }

    async fn reap_workers(
        &self,
        now: DateTime<Utc>,
        recovery: Option<Recovery>,
    ) -> Result<RetiredWorkers, PortError> {
        self.write(move |c| {
            Box::pin(async move { workers::reap_tx::<B>(c, now, recovery.as_ref()).await })
        })
        .await
    }

    async fn stop_worker(
        &self,
        worker_id: String,
        now: DateTime<Utc>,
        recovery: Option<Recovery>,
    ) -> Result<u64, PortError> {
        self.write(move |c| {
            Box::pin(
                async move { workers::stop_tx::<B>(c, &worker_id, now, recovery.as_ref()).await },
            )
        })
        .await
    }

    async fn idle_attempts(
        &self,
        worker_id: String,
        idle_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(TaskId, i32)>, PortError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(async |c| workers::idle_attempts::<B>(c, &worker_id, idle_before, limit).await)
            .await
    }

    async fn wait_for_notification(&self) {
        self.backend.wait_for_notification().await
    }

    async fn close(&self) {
        self.backend.close().await
    }
}

/// Decodes every row, failing on the first that does not decode.
fn decode<R, T>(
    rows: Vec<R>,
    decode_row: impl FnMut(R) -> Result<T, crate::rows::DecodeError>,
) -> Result<Vec<T>, crate::rows::DecodeError> {
    rows.into_iter().map(decode_row).collect()
}

/// Runs a keyed insert again when it lost a race: another process inserted the same key between
/// its lookup and its write (the unique index refused the second; the retry finds the first).
/// Deadlocks and other transient faults of those few statements are retried too.
async fn retry_key_conflict<T, F, Fut>(mut attempt: F) -> Result<T, PortError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, PortError>>,
{
    const ATTEMPTS: usize = 3;
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(error)
                if tries < ATTEMPTS && (error.is_unique_violation() || error.is_transient()) =>
            {
                tracing::debug!(%error, tries, "keyed insert lost a race; retrying");
            }
            result => return result,
        }
    }
}
