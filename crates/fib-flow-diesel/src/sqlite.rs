//! SQLite backend: `SyncConnectionWrapper<SqliteConnection>` in a deadpool pool.
//!
//! SQLite allows one writer at a time. Every write goes through one in-process async mutex
//! (so this process's writers queue instead of spinning on `SQLITE_BUSY`) and runs in
//! `BEGIN IMMEDIATE` (so a transaction takes the write lock before it reads what it will
//! change, and cannot fail half-way upgrading a read lock). `busy_timeout` covers other
//! processes sharing the file. File databases use WAL so readers never wait for the writer.
//!
//! `sqlite::memory:` is a shared-cache in-memory database with a name unique to the
//! `connect()` call; one connection is held for the store's life so the database outlives
//! idle pool connections, and the pool has a single connection because shared-cache table
//! locks fail readers immediately (`SQLITE_LOCKED`) instead of honouring `busy_timeout`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use diesel::SqliteConnection;
use diesel::prelude::*;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use fib_flow_ports::{PortError, TaskStore};

use crate::StoreConfig;
use crate::error::{connection_error, pool_error};
use crate::rows::{BatchWrite, NewAttemptRow, NewEventRow, RowWrite, TaskRow, TaskValues};
use crate::schema::fib_flow_task_attempts as a;
use crate::schema::fib_flow_task_events as e;
use crate::schema::fib_flow_tasks as t;

pub(crate) type Conn = SyncConnectionWrapper<SqliteConnection>;
pub(crate) type Db = diesel::sqlite::Sqlite;
pub(crate) const BACKEND: &str = "sqlite";
/// A chunk of new tasks takes several statements here, so it runs in a transaction.
const ONE_STATEMENT_INSERT: bool = false;

/// The SQLite migrations, embedded at compile time.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");

/// SQLite has no row locks; `BEGIN IMMEDIATE` already excludes other writers.
async fn lock_task(conn: &mut Conn, id: i64) -> QueryResult<Option<TaskRow>> {
    t::table
        .find(id)
        .select(TaskRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The rows of a batch, in ascending id order (`BEGIN IMMEDIATE` already excludes other writers).
async fn lock_tasks(conn: &mut Conn, ids: &[i64]) -> QueryResult<Vec<TaskRow>> {
    t::table
        .filter(t::id.eq_any(ids))
        .order(t::id.asc())
        .select(TaskRow::as_select())
        .load(conn)
        .await
}

async fn write_batch(conn: &mut Conn, batch: &BatchWrite) -> QueryResult<usize> {
    ops::write_batch_each(conn, batch).await
}

/// Every row in one hop to the blocking pool (SQLite statements are cheap; the hop is not).
async fn insert_task_rows(conn: &mut Conn, rows: &[TaskValues]) -> QueryResult<Vec<i64>> {
    let rows = rows.to_vec();
    conn.spawn_blocking(move |c| {
        rows.iter()
            .map(|row| {
                diesel::RunQueryDsl::get_result(
                    diesel::insert_into(t::table).values(row).returning(t::id),
                    c,
                )
            })
            .collect()
    })
    .await
}

crate::orchestration::insert_created_each!();

async fn update_row(conn: &mut Conn, write: &RowWrite) -> QueryResult<usize> {
    ops::update_row_dsl(conn, write).await
}

async fn heartbeat_row(
    conn: &mut Conn,
    task_id: i64,
    attempt: i32,
    worker_id: &str,
    now: i64,
) -> QueryResult<usize> {
    ops::heartbeat_row_dsl(conn, task_id, attempt, worker_id, now).await
}

async fn insert_event_row(conn: &mut Conn, row: &NewEventRow) -> QueryResult<i64> {
    diesel::insert_into(e::table)
        .values(row)
        .returning(e::id)
        .get_result(conn)
        .await
}

/// Multi-row inserts run on the wrapped sync connection: diesel's single-statement SQLite
/// batch insert is only wired up for the sync `SqliteConnection`.
async fn insert_event_rows(conn: &mut Conn, rows: Vec<NewEventRow>) -> QueryResult<()> {
    conn.spawn_blocking(move |c| {
        diesel::RunQueryDsl::execute(diesel::insert_into(e::table).values(&rows), c).map(|_| ())
    })
    .await
}

async fn insert_attempt_rows(conn: &mut Conn, rows: Vec<NewAttemptRow>) -> QueryResult<()> {
    conn.spawn_blocking(move |c| {
        diesel::RunQueryDsl::execute(diesel::insert_into(a::table).values(&rows), c).map(|_| ())
    })
    .await
}

async fn select_claimable(
    conn: &mut Conn,
    names: &[String],
    now: i64,
    limit: i64,
    lease: Option<&str>,
) -> QueryResult<Vec<TaskRow>> {
    t::table
        .filter(crate::orchestration::is_pending())
        .filter(t::next_run_time.le(now))
        .filter(t::name.eq_any(names))
        .filter(crate::orchestration::holds_lease!(lease))
        .order((t::priority.desc(), t::next_run_time.asc(), t::id.asc()))
        .limit(limit)
        .select(TaskRow::as_select())
        .load(conn)
        .await
}

/// Nothing to notify: other processes on the same file poll.
async fn notify_due(_conn: &mut Conn) -> QueryResult<()> {
    Ok(())
}

crate::orchestration::store_ops!();

/// The SQLite [`TaskStore`].
pub(crate) struct SqliteStore {
    pool: Pool<Conn>,
    writer: tokio::sync::Mutex<()>,
    acquire_timeout: std::time::Duration,
    /// Keeps a shared in-memory database alive (None for files and after close).
    keepalive: std::sync::Mutex<Option<Conn>>,
}

impl SqliteStore {
    async fn conn(&self) -> Result<Object<Conn>, PortError> {
        self.pool.get().await.map_err(|e| pool_error(BACKEND, e))
    }

    /// The single-writer lock. Waiting is bounded like a pool checkout, so a stuck writer
    /// surfaces as a transient fault instead of hanging every other write.
    async fn write_guard(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, PortError> {
        tokio::time::timeout(self.acquire_timeout, self.writer.lock())
            .await
            .map_err(|_| PortError::Unavailable {
                backend: BACKEND,
                message: format!(
                    "timed out after {:?} waiting for the SQLite write lock",
                    self.acquire_timeout
                ),
            })
    }

    async fn run_migrations(&self) -> Result<(), PortError> {
        let _writer = self.write_guard().await?;
        let mut conn = self.conn().await?;
        // spawn_blocking rather than AsyncMigrationHarness: it works on a current-thread
        // runtime too. Everything runs in one `BEGIN IMMEDIATE` transaction: it takes the
        // file's write lock (waiting `busy_timeout` for other processes) before reading which
        // migrations are pending, so processes migrating one fresh file at once run them one
        // after the other instead of both creating the same tables. diesel runs each
        // migration's own transaction as a savepoint inside it; SQLite DDL is transactional.
        let outcome = conn
            .spawn_blocking(|c| {
                let mut outcome = Ok(());
                let tx = c.immediate_transaction(|c| {
                    outcome = crate::schema_version::check_not_newer(BACKEND, c, &MIGRATIONS);
                    if outcome.is_err() {
                        return Ok(());
                    }
                    c.run_pending_migrations(MIGRATIONS)
                        .map(|_| ())
                        .map_err(diesel::result::Error::QueryBuilderError)
                });
                Ok((tx, outcome))
            })
            .await
            .map_err(|e| PortError::Config(format!("sqlite migration failed: {e}")))?;
        let (tx, outcome) = outcome;
        outcome?;
        tx.map_err(|e| match crate::error::db_error(BACKEND, e) {
            // Another process held the write lock for longer than busy_timeout: retryable.
            transient @ PortError::Unavailable { .. } => transient,
            other => PortError::Config(format!("sqlite migration failed: {other}")),
        })
    }

    async fn wait_notification(&self) {
        std::future::pending::<()>().await
    }

    async fn shutdown(&self) {
        self.pool.close();
        if let Ok(mut keepalive) = self.keepalive.lock() {
            keepalive.take();
        }
    }
}

crate::orchestration::impl_task_store!(SqliteStore, immediate_transaction);

/// A shared-cache in-memory database URI unique to this process and call.
fn memory_uri() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "file:fib_flow_mem_{}_{n}_{nanos}?mode=memory&cache=shared",
        std::process::id()
    )
}

/// Per-connection settings. `busy_timeout` comes first: every later statement (the WAL switch
/// above all, which needs the file's lock) then waits for another process's lock instead of
/// failing at once with "database is locked". `foreign_keys` stays off: the schema has none
/// and workflows are deleted explicitly.
const PRAGMAS: &str =
    "PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = OFF; PRAGMA synchronous = NORMAL;";

/// How often the WAL switch is tried. SQLite does not always call the busy handler for a
/// journal-mode change (it can fail with SQLITE_BUSY at once while another connection opens
/// the same fresh file), so it gets its own short retry.
const WAL_TRIES: u32 = 50;

async fn open(url: &str, file: bool) -> ConnectionResult<Conn> {
    let mut conn = Conn::establish(url).await?;
    conn.batch_execute(PRAGMAS)
        .await
        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    if file {
        let mut tries = 0;
        loop {
            tries += 1;
            match conn.batch_execute("PRAGMA journal_mode = WAL;").await {
                Ok(()) => break,
                Err(error)
                    if tries < WAL_TRIES && crate::error::is_transient_text(&error.to_string()) =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(error) => {
                    return Err(diesel::ConnectionError::CouldntSetupConfiguration(error));
                }
            }
        }
    }
    Ok(conn)
}

/// Opens a SQLite store: `path` is a file path, or `None` for a fresh in-memory database.
pub(crate) async fn connect(
    path: Option<String>,
    config: &StoreConfig,
) -> Result<Arc<dyn TaskStore>, PortError> {
    let file = path.is_some();
    let url = path.unwrap_or_else(memory_uri);
    let keepalive = if file {
        None
    } else {
        Some(
            open(&url, false)
                .await
                .map_err(|e| connection_error(BACKEND, e))?,
        )
    };
    let mut manager_config = ManagerConfig::<Conn>::default();
    manager_config.custom_setup = Box::new(move |url| {
        let url = url.to_owned();
        Box::pin(async move { open(&url, file).await })
    });
    let manager = AsyncDieselConnectionManager::<Conn>::new_with_config(url, manager_config);
    let size = if file { config.pool_size.max(1) } else { 1 };
    let pool = Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(config.acquire_timeout))
        .create_timeout(Some(config.acquire_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| PortError::Config(format!("sqlite pool: {e}")))?;
    let store = SqliteStore {
        pool,
        writer: tokio::sync::Mutex::new(()),
        acquire_timeout: config.acquire_timeout,
        keepalive: std::sync::Mutex::new(keepalive),
    };
    // Fail fast on an unopenable file rather than at the first query.
    drop(store.conn().await?);
    Ok(Arc::new(store))
}
