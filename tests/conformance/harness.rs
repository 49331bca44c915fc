//! Per-backend test databases and managers.
//!
//! Every test gets its own database from `fib-flow-test-support`: a private in-memory SQLite
//! database, a fresh SQLite file in a temp directory, or a freshly created PostgreSQL/MySQL
//! database that is dropped afterwards (even when the test panics), so runs never see each
//! other's rows. That crate also decides when an unusable server is skipped (a local run) or a
//! failure (`CI=true`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fib_flow::{
    AttemptOutcome, EventQuery, ManagerOptions, ManualClock, Task, TaskId, TaskManager, TaskStatus,
};
pub use fib_flow_test_support::Backend;
use fib_flow_test_support::{FacadeAdmin, TestDatabase};

/// One isolated database for one test.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    database: TestDatabase<FacadeAdmin>,
}

impl TestDb {
    /// Creates the database, or returns `None` (after saying why) when the backend is skipped.
    async fn create(backend: Backend, test_name: &str) -> Option<TestDb> {
        match TestDatabase::create(FacadeAdmin, backend, test_name).await {
            Ok(database) => Some(TestDb {
                backend,
                url: database.url().to_owned(),
                database,
            }),
            Err(skip) if skip.is_skip() => {
                eprintln!("skipped {test_name}: {skip}");
                None
            }
            Err(error) => panic!("{test_name}: {error}"),
        }
    }

    async fn destroy(self) {
        if let Err(error) = self.database.destroy().await {
            eprintln!("{error}");
        }
    }

    /// Options tuned for tests: fast polling, short heartbeats.
    pub fn options(&self) -> ManagerOptions {
        ManagerOptions {
            poll_interval: Duration::from_millis(25),
            task_heartbeat_interval: Duration::from_millis(200),
            task_heartbeat_timeout: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(5),
            ..ManagerOptions::new(self.url.clone())
        }
    }

    /// A manager on the wall clock with the test options, schema set up.
    pub async fn manager(&self) -> TaskManager {
        self.manager_with(self.options(), None).await
    }

    /// A manager with the given options and, optionally, a manual clock.
    pub async fn manager_with(
        &self,
        options: ManagerOptions,
        clock: Option<Arc<ManualClock>>,
    ) -> TaskManager {
        let manager = match clock {
            Some(clock) => TaskManager::with_clock(options, clock).await,
            None => TaskManager::new(options).await,
        }
        .expect("build manager");
        manager.setup().await.expect("setup");
        manager
    }

    /// A second manager on the same database (memory SQLite cannot share across pools).
    pub fn shares_across_managers(&self) -> bool {
        self.backend != Backend::SqliteMemory
    }
}

/// The longest one conformance test may take (the contention tests need the most).
const TEST_TIME_LIMIT: Duration = Duration::from_secs(300);

pub type TestFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Runs one conformance test on one backend in its own database, dropping it afterwards.
pub async fn run<F>(backend: Backend, test_name: &str, test: F)
where
    F: for<'a> FnOnce(&'a TestDb) -> TestFuture<'a> + Send + 'static,
{
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let Some(db) = TestDb::create(backend, test_name).await else {
        return;
    };
    let db = Arc::new(db);
    let outcome = {
        let db = db.clone();
        // A hung test must fail with its name instead of stalling the whole run.
        tokio::spawn(async move {
            tokio::time::timeout(TEST_TIME_LIMIT, test(&db))
                .await
                .unwrap_or_else(|_| panic!("test did not finish within {TEST_TIME_LIMIT:?}"));
        })
        .await
    };
    if let Ok(db) = Arc::try_unwrap(db) {
        db.destroy().await;
    }
    if let Err(error) = outcome {
        if error.is_panic() {
            std::panic::resume_unwind(error.into_panic());
        }
        panic!("test task failed: {error}");
    }
}

/// Polls until `check` holds, failing the test after `limit` (wall clock).
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the task reaches `status` (10 s limit) and returns it.
pub async fn wait_status(manager: &TaskManager, id: TaskId, status: TaskStatus) -> Task {
    let started = std::time::Instant::now();
    loop {
        let task = manager
            .get_task(id)
            .await
            .expect("get_task")
            .expect("task exists");
        if task.status == status {
            return task;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "task {id} stayed {} (wanted {status}); error: {:?}",
            task.status,
            task.error
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls until `probe` yields a value, failing the test after `limit` (wall clock).
pub async fn poll_until<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = std::time::Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The task's event types, oldest first.
pub async fn event_types(manager: &TaskManager, id: TaskId) -> Vec<String> {
    manager
        .task_events(id, EventQuery::default())
        .await
        .expect("events")
        .into_iter()
        .map(|event| event.event_type)
        .collect()
}

/// The task's attempt outcomes, by attempt number.
pub async fn attempt_outcomes(manager: &TaskManager, id: TaskId) -> Vec<Option<AttemptOutcome>> {
    manager
        .task_attempts(id)
        .await
        .expect("attempts")
        .into_iter()
        .map(|attempt| attempt.outcome)
        .collect()
}
