//! Store-level test harness: runs one test body against every backend, each in its own fresh
//! database (SQLite in memory, a SQLite temp file, and — when the servers answer — a database
//! created for the test on PostgreSQL and MySQL/MariaDB, dropped afterwards). The stores come
//! from `fib_flow::storage::connect`, the way the facade opens them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fib_flow::storage::{StoreConfig, connect};
use fib_flow_domain::time::from_millis;
use fib_flow_domain::{NewTask, RetryBackoff, TaskId, TaskType};
use fib_flow_ports::TaskStore;
use serde_json::Value;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite::memory:`.
    SqliteMemory,
    /// A SQLite file in a fresh temp directory.
    SqliteFile,
    /// A database created for the test on the PostgreSQL server.
    Postgres,
    /// A database created for the test on the MySQL/MariaDB server.
    Mysql,
}

/// A test body, run once per backend.
pub type Body = fn(Ctx) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a test body gets: the store, and the URL (to open a second store on the same DB).
#[derive(Clone)]
pub struct Ctx {
    /// The backend under test.
    pub backend: Backend,
    /// The migrated store.
    pub store: Arc<dyn TaskStore>,
    /// The database's URL.
    pub url: String,
}

impl Ctx {
    /// Another store on the same database (not for the in-memory backend).
    pub async fn second_store(&self) -> Arc<dyn TaskStore> {
        connect(config(&self.url)).await.expect("second store")
    }
}

fn config(url: &str) -> StoreConfig {
    StoreConfig {
        url: url.to_owned(),
        pool_size: 4,
        acquire_timeout: Duration::from_secs(20),
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let short: String = test
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(20)
        .collect();
    format!(
        "ffd_{short}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
    .to_lowercase()
}

/// Runs `body` on `backend`, or says why it is skipped.
pub async fn run(backend: Backend, test: &str, body: Body) {
    let name = unique(test);
    let (url, server, dir) = match backend {
        Backend::SqliteMemory => ("sqlite::memory:".to_owned(), None, None),
        Backend::SqliteFile => {
            let dir = std::env::temp_dir().join(&name);
            std::fs::create_dir_all(&dir).expect("temp dir");
            (
                format!("sqlite:{}", dir.join("tasks.db").display()),
                None,
                Some(dir),
            )
        }
        Backend::Postgres | Backend::Mysql => {
            let (env, default, skip) = if backend == Backend::Postgres {
                (
                    "FIB_FLOW_POSTGRES_URL",
                    "postgres://postgres@127.0.0.1:5432/test",
                    "FIB_FLOW_SKIP_POSTGRES",
                )
            } else {
                (
                    "FIB_FLOW_MYSQL_URL",
                    "mysql://root@127.0.0.1:3306/test",
                    "FIB_FLOW_SKIP_MYSQL",
                )
            };
            if let Ok(reason) = std::env::var(skip) {
                assert!(!in_ci(), "CI=true but {backend:?} is skipped: {reason}");
                eprintln!("skipped {test} on {backend:?}: {reason}");
                return;
            }
            let server = std::env::var(env).unwrap_or_else(|_| default.to_owned());
            match fib_flow::storage::create_database(&server, &name).await {
                Ok(url) => (url, Some(server), None),
                Err(error) if !in_ci() => {
                    eprintln!("skipped {test} on {backend:?}: {error}");
                    return;
                }
                Err(error) => panic!("CI=true and {backend:?} is unusable: {error}"),
            }
        }
    };
    let store = connect(config(&url)).await.expect("connect");
    store.migrate().await.expect("migrate");
    let ctx = Ctx {
        backend,
        store: store.clone(),
        url: url.clone(),
    };
    // Run the body in its own task so a panic still lets us clean up.
    let outcome = tokio::spawn(body(ctx)).await;
    store.close().await;
    drop(store);
    if let Some(server) = server
        && let Err(error) = fib_flow::storage::drop_database(&server, &name).await
    {
        eprintln!("could not drop {name}: {error}");
    }
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic.into_panic());
    }
}

/// Declares one `#[tokio::test]` per backend for an `async fn body(ctx: Ctx)`.
#[macro_export]
macro_rules! store_test {
    ($body:ident) => {
        mod $body {
            use fib_flow_store_test::{Backend, run};

            #[cfg(feature = "sqlite")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_memory() {
                run(Backend::SqliteMemory, stringify!($body), |ctx| {
                    Box::pin(super::$body(ctx))
                })
                .await
            }

            #[cfg(feature = "sqlite")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_file() {
                run(Backend::SqliteFile, stringify!($body), |ctx| {
                    Box::pin(super::$body(ctx))
                })
                .await
            }

            #[cfg(feature = "postgres")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run(Backend::Postgres, stringify!($body), |ctx| {
                    Box::pin(super::$body(ctx))
                })
                .await
            }

            #[cfg(feature = "mysql")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                run(Backend::Mysql, stringify!($body), |ctx| {
                    Box::pin(super::$body(ctx))
                })
                .await
            }
        }
    };
}

/// A fixed base instant (whole milliseconds, like storage).
pub fn t0() -> DateTime<Utc> {
    from_millis(1_700_000_000_000)
}

/// `t0 + ms`.
pub fn at(ms: i64) -> DateTime<Utc> {
    from_millis(1_700_000_000_000 + ms)
}

/// An async task due at t0.
pub fn new_task(name: &str) -> NewTask {
    NewTask {
        name: name.to_owned(),
        task_type: TaskType::Async,
        priority: 0,
        payload: Value::Null,
        tag: None,
        next_run_time: t0(),
        timeout: Some(Duration::from_secs(60)),
        max_retries: 3,
        retry_interval: Duration::from_secs(0),
        retry_backoff: RetryBackoff::Fixed,
        cron_expr: None,
        timezone: None,
        root_id: None,
        parent_id: None,
        parent_round: None,
        created_at: t0(),
    }
}

/// A child of `parent` (root `root`) in round `round`.
pub fn child(name: &str, parent: TaskId, root: TaskId, round: i32) -> NewTask {
    NewTask {
        parent_id: Some(parent),
        root_id: Some(root),
        parent_round: Some(round),
        ..new_task(name)
    }
}

/// Runs raw SQL on the test database through a separate connection (to plant bad data or
/// probe constraints). Returns the database's error text on failure.
pub async fn raw_exec(ctx: &Ctx, sql: &str) -> Result<(), String> {
    use diesel_async::{AsyncConnection, SimpleAsyncConnection};
    match ctx.backend {
        Backend::SqliteMemory => Err("no second connection to a private in-memory database".into()),
        #[cfg(feature = "sqlite")]
        Backend::SqliteFile => {
            type C = diesel_async::sync_connection_wrapper::SyncConnectionWrapper<
                diesel::SqliteConnection,
            >;
            let path = ctx.url.trim_start_matches("sqlite:");
            let mut conn = C::establish(path).await.map_err(|e| e.to_string())?;
            conn.batch_execute(sql).await.map_err(|e| e.to_string())
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres => {
            let mut conn = diesel_async::AsyncPgConnection::establish(&ctx.url)
                .await
                .map_err(|e| e.to_string())?;
            conn.batch_execute(sql).await.map_err(|e| e.to_string())
        }
        #[cfg(feature = "mysql")]
        Backend::Mysql => {
            let mut conn = diesel_async::AsyncMysqlConnection::establish(&ctx.url)
                .await
                .map_err(|e| e.to_string())?;
            conn.batch_execute(sql).await.map_err(|e| e.to_string())
        }
        #[allow(unreachable_patterns)]
        _ => Err("backend not compiled in".into()),
    }
}

/// Creates a database, migrates and inserts on whatever runtime the caller runs (the
/// current-thread check of `migrate`).
pub async fn run_current_thread(backend: Backend, test: &str) {
    run(backend, test, |ctx| {
        Box::pin(async move {
            ctx.store.migrate().await.expect("second migrate");
            let ids = ctx
                .store
                .insert_tasks(vec![new_task("ct")])
                .await
                .expect("insert");
            assert_eq!(ids.len(), 1);
        })
    })
    .await
}
