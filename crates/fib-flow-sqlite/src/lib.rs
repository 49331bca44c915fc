//! fib-flow's SQLite store: [`connect`] opens a file or a fresh in-memory database and
//! returns the shared [`SqlStore`] over [`Sqlite`], this crate's statements.
//!
//! Owns: the SQLite connection setup (pragmas, WAL), the pool, the SQLite migrations
//! (`migrations/sqlite/`, embedded) and the few statements SQLite says its own way: no row
//! locks (`BEGIN IMMEDIATE` already excludes other writers), multi-row inserts on the blocking
//! pool, RETURNING. Must not: hold transaction logic (fib-flow-sql does) or know other
//! backends.
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

use deadpool::managed::QueueMode;
use diesel::connection::AnsiTransactionManager;
use diesel::prelude::*;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::sync_connection_wrapper::SyncTransactionManagerWrapper;
use diesel_async::{AsyncConnection, SimpleAsyncConnection, TransactionManager};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use fib_flow_ports::{PortError, TaskStore};
pub use fib_flow_sql::SqliteConnection as Conn;
use fib_flow_sql::blocking::statements_in_place;
use fib_flow_sql::error::{TxError, connection_error, db_error, is_transient_text, pool_error};
use fib_flow_sql::{Backend, SqlStore, Statements, StoreConfig, TxFuture};

mod statements;

pub use diesel_async::sync_connection_wrapper::SpawnBlocking;
pub use statements::insert_in_caller_transaction;

/// A caller's own connection to enqueue through (`TaskManager::enqueue_in`): diesel-async's
/// wrapper of diesel's SQLite connection with any spawner, `SyncConnectionWrapper<SqliteConnection>`
/// by default.
pub type CallerConn<S> =
    diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection, S>;

/// The SQLite migrations, embedded at compile time.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");

/// The SQLite backend: its pool, and its statements (see [`Statements`]).
pub struct Sqlite {
    pool: Pool<Conn>,
    /// Keeps a shared in-memory database alive (None for files and after close).
    keepalive: std::sync::Mutex<Option<Conn>>,
}

impl Backend for Sqlite {
    type Pooled = Object<Conn>;

    const SINGLE_WRITER: bool = true;

    async fn checkout(&self) -> Result<Object<Conn>, PortError> {
        self.pool
            .get()
            .await
            .map_err(|e| pool_error(Self::BACKEND, e))
    }

    /// `BEGIN IMMEDIATE`: take the write lock up front instead of upgrading mid-transaction.
    async fn transaction<'c, R, F>(conn: &'c mut Conn, body: F) -> Result<R, TxError>
    where
        R: Send + 'c,
        F: for<'r> FnOnce(&'r mut Conn) -> TxFuture<'r, R> + Send + 'c,
    {
        // diesel-async's `immediate_transaction`, which it only offers with its own spawner.
        type Manager = SyncTransactionManagerWrapper<AnsiTransactionManager>;
        conn.spawn_blocking(|c| {
            AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")
        })
        .await?;
        match body(conn).await {
            Ok(value) => {
                Manager::commit_transaction(conn).await?;
                Ok(value)
            }
            Err(error) => {
                Manager::rollback_transaction(conn).await?;
                Err(error)
            }
        }
    }

    /// The whole transaction in one call on the blocking pool: every statement would otherwise
    /// be a hop there and back, which costs far more than the statement. The call owns the
    /// pooled connection, so a caller that stops waiting leaves the transaction to finish (or
    /// roll back) there and the connection to return to the pool afterwards.
    async fn run_transaction<R, F>(mut conn: Object<Conn>, body: F) -> Result<R, TxError>
    where
        R: Send + 'static,
        F: for<'r> FnOnce(&'r mut Conn) -> TxFuture<'r, R> + Send + 'static,
    {
        let runtime = tokio::runtime::Handle::current();
        let call = tokio::task::spawn_blocking(move || {
            statements_in_place(|| runtime.block_on(Self::transaction(&mut conn, body)))
        });
        match call.await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => Err(PortError::Unavailable {
                backend: Self::BACKEND,
                message: format!("the transaction's blocking call did not run: {error}"),
            }
            .into()),
        }
    }

    async fn migrate(&self) -> Result<(), PortError> {
        let mut conn = self.checkout().await?;
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
                    outcome = fib_flow_sql::schema_version::check_not_newer(
                        Self::BACKEND,
                        c,
                        &MIGRATIONS,
                    );
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
        tx.map_err(|e| match db_error(Self::BACKEND, e) {
            // Another process held the write lock for longer than busy_timeout: retryable.
            transient @ PortError::Unavailable { .. } => transient,
            other => PortError::Config(format!("sqlite migration failed: {other}")),
        })
    }

    /// Nothing to wait for: other processes on the same file are found by polling.
    async fn wait_for_notification(&self) {
        std::future::pending::<()>().await
    }

    async fn close(&self) {
        self.pool.close();
        if let Ok(mut keepalive) = self.keepalive.lock() {
            keepalive.take();
        }
    }
}

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
                Err(error) if tries < WAL_TRIES && is_transient_text(&error.to_string()) => {
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

/// Opens a SQLite store: `path` is a file path, or `None` for a fresh in-memory database. No
/// schema changes: call [`TaskStore::migrate`].
///
/// Errors: [`PortError::Connect`] for a file that cannot be opened or created,
/// [`PortError::Unavailable`] when another process holds the file's lock for too long.
pub async fn connect(
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
                .map_err(|e| connection_error(Sqlite::BACKEND, e))?,
        )
    };
    let mut manager_config = ManagerConfig::<Conn>::default();
    // No `SELECT 1` per checkout: a SQLite connection is a file handle with no link to lose,
    // and the ping is a blocking-pool hop of its own before every transaction.
    manager_config.recycling_method = RecyclingMethod::Fast;
    manager_config.custom_setup = Box::new(move |url| {
        let url = url.to_owned();
        Box::pin(async move { open(&url, file).await })
    });
    let manager = AsyncDieselConnectionManager::<Conn>::new_with_config(url, manager_config);
    let size = if file { config.pool_size.max(1) } else { 1 };
    // Most recently returned first: the single writer then reuses one connection, whose page
    // cache stays valid between its own transactions. SQLite drops a connection's cache
    // whenever another connection has written, so rotating through the pool re-reads pages.
    let pool = Pool::builder(manager)
        .max_size(size)
        .queue_mode(QueueMode::Lifo)
        .wait_timeout(Some(config.acquire_timeout))
        .create_timeout(Some(config.acquire_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| PortError::Config(format!("sqlite pool: {e}")))?;
    let backend = Sqlite {
        pool,
        keepalive: std::sync::Mutex::new(keepalive),
    };
    // Fail fast on an unopenable file rather than at the first query.
    drop(backend.checkout().await?);
    Ok(Arc::new(SqlStore::new(backend, config.acquire_timeout)))
}
