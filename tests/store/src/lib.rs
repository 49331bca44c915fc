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

pub use fib_flow_test_support::Backend;
use fib_flow_test_support::{FacadeAdmin, TestDatabase};

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

/// Runs `body` on `backend` in a database of its own (fib-flow-test-support's), or says why
/// it is skipped.
pub async fn run(backend: Backend, test: &str, body: Body) {
    let database = match TestDatabase::create(FacadeAdmin, backend, test).await {
        Ok(database) => database,
        Err(skip) if skip.is_skip() => {
            eprintln!("skipped {test}: {skip}");
            return;
        }
        Err(error) => panic!("{test}: {error}"),
    };
    let url = database.url().to_owned();
    let store = connect(config(&url)).await.expect("connect");
    store.migrate().await.expect("migrate");
    let ctx = Ctx {
        backend,
        store: store.clone(),
        url,
    };
    // Run the body in its own task so a panic still lets us clean up.
    let outcome = tokio::spawn(body(ctx)).await;
    store.close().await;
    drop(store);
    if let Err(error) = database.destroy().await {
        eprintln!("{error}");
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

/// One `id` column of a raw query's rows.
#[derive(diesel::QueryableByName)]
struct IdRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

/// Runs a raw `SELECT` whose rows carry an `id` BIGINT column through a separate connection,
/// as a user's own SQL would (querying inside stored JSON, say), and returns the ids in row
/// order. Returns the database's error text on failure.
pub async fn raw_ids(ctx: &Ctx, sql: &str) -> Result<Vec<i64>, String> {
    use diesel_async::{AsyncConnection, RunQueryDsl};
    let query = diesel::sql_query(sql);
    let rows: Vec<IdRow> = match ctx.backend {
        Backend::SqliteMemory => {
            return Err("no second connection to a private in-memory database".into());
        }
        #[cfg(feature = "sqlite")]
        Backend::SqliteFile => {
            type C = diesel_async::sync_connection_wrapper::SyncConnectionWrapper<
                diesel::SqliteConnection,
            >;
            let path = ctx.url.trim_start_matches("sqlite:");
            let mut conn = C::establish(path).await.map_err(|e| e.to_string())?;
            query.load(&mut conn).await.map_err(|e| e.to_string())?
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres => {
            let mut conn = diesel_async::AsyncPgConnection::establish(&ctx.url)
                .await
                .map_err(|e| e.to_string())?;
            query.load(&mut conn).await.map_err(|e| e.to_string())?
        }
        #[cfg(feature = "mysql")]
        Backend::Mysql => {
            let mut conn = diesel_async::AsyncMysqlConnection::establish(&ctx.url)
                .await
                .map_err(|e| e.to_string())?;
            query.load(&mut conn).await.map_err(|e| e.to_string())?
        }
        #[allow(unreachable_patterns)]
        _ => return Err("backend not compiled in".into()),
    };
    Ok(rows.into_iter().map(|row| row.id).collect())
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
