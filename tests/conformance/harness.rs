//! Per-backend test databases and managers.
//!
//! Every test gets its own database: a unique shared in-memory SQLite database, a fresh SQLite
//! file in a temp directory, or a freshly created PostgreSQL/MySQL database that is dropped
//! afterwards (even when the test panics), so runs never see each other's rows.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fib_flow::{
    AttemptOutcome, EventQuery, ManagerOptions, ManualClock, Task, TaskId, TaskManager, TaskStatus,
};

/// A backend the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    SqliteMemory,
    SqliteFile,
    Postgres,
    Mysql,
}

impl Backend {
    pub fn is_server(self) -> bool {
        matches!(self, Backend::Postgres | Backend::Mysql)
    }
}

const POSTGRES_ENV: &str = "FIB_FLOW_POSTGRES_URL";
const MYSQL_ENV: &str = "FIB_FLOW_MYSQL_URL";
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const DEFAULT_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

fn server_url(backend: Backend) -> (String, &'static str) {
    match backend {
        Backend::Postgres => (
            std::env::var(POSTGRES_ENV).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into()),
            "FIB_FLOW_SKIP_POSTGRES",
        ),
        _ => (
            std::env::var(MYSQL_ENV).unwrap_or_else(|_| DEFAULT_MYSQL_URL.into()),
            "FIB_FLOW_SKIP_MYSQL",
        ),
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// One isolated database for one test.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    server: Option<(String, String)>,
    dir: Option<PathBuf>,
}

impl TestDb {
    /// Creates the database, or returns `None` (after saying why) when the backend is skipped.
    async fn create(backend: Backend, test_name: &str) -> Option<TestDb> {
        let unique = format!(
            "ff_{}_{}",
            test_name
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(24)
                .collect::<String>(),
            uuid_suffix()
        )
        .to_lowercase();
        match backend {
            Backend::SqliteMemory => Some(TestDb {
                backend,
                url: "sqlite::memory:".into(),
                server: None,
                dir: None,
            }),
            Backend::SqliteFile => {
                let dir = std::env::temp_dir().join(&unique);
                std::fs::create_dir_all(&dir).expect("create temp dir");
                Some(TestDb {
                    backend,
                    url: format!("sqlite:{}", dir.join("tasks.db").display()),
                    server: None,
                    dir: Some(dir),
                })
            }
            Backend::Postgres | Backend::Mysql => {
                let (server, skip_env) = server_url(backend);
                if let Ok(reason) = std::env::var(skip_env) {
                    assert!(!in_ci(), "CI=true but {backend:?} is skipped: {reason}");
                    eprintln!("skipped {test_name} on {backend:?}: server unreachable ({reason})");
                    return None;
                }
                match fib_flow::storage::create_database(&server, &unique).await {
                    Ok(url) => Some(TestDb {
                        backend,
                        url,
                        server: Some((server, unique)),
                        dir: None,
                    }),
                    Err(error) if !in_ci() => {
                        eprintln!(
                            "skipped {test_name} on {backend:?}: cannot create a database on {server}: {error}"
                        );
                        None
                    }
                    Err(error) => {
                        panic!("CI=true and {backend:?} at {server} is unusable: {error}")
                    }
                }
            }
        }
    }

    async fn destroy(self) {
        if let Some((server, name)) = &self.server
            && let Err(error) = fib_flow::storage::drop_database(server, name).await
        {
            eprintln!("could not drop test database {name}: {error}");
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
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

fn uuid_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}{:x}{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
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
