//! PostgreSQL backend: `AsyncPgConnection` (tokio-postgres, no libpq) in a deadpool pool.
//!
//! Row locks: transitions read their row `FOR UPDATE`; claims use `FOR UPDATE SKIP LOCKED` so
//! concurrent workers take disjoint rows. Wake-ups: writes that leave a task pending and due
//! call `pg_notify('fib_flow_tasks', '')` inside their transaction (delivered on commit); one
//! dedicated listener connection per store (outside the pool, started on the first
//! `wait_for_notification`) turns them into wake-ups and reconnects after errors.

use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use fib_flow_ports::{PortError, TaskStore};
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::StoreConfig;
use crate::error::{connection_error, db_error, pool_error};
use crate::rows::{NewAttemptRow, NewEventRow, TaskRow, TaskValues};
use crate::schema::fib_flow_task_attempts as a;
use crate::schema::fib_flow_task_events as e;
use crate::schema::fib_flow_tasks as t;

pub(crate) type Conn = AsyncPgConnection;
pub(crate) type Db = diesel::pg::Pg;
pub(crate) const BACKEND: &str = "postgres";

/// The PostgreSQL migrations, embedded at compile time.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");

/// The NOTIFY channel for "a task became due".
const CHANNEL: &str = "fib_flow_tasks";

/// Serialises concurrent `migrate()` calls from several processes (arbitrary constant key).
const MIGRATION_LOCK: i64 = 0x00f1_bf10_0001;

async fn lock_task(conn: &mut Conn, id: i64) -> QueryResult<Option<TaskRow>> {
    t::table
        .find(id)
        .select(TaskRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

async fn insert_task_row(conn: &mut Conn, values: &TaskValues) -> QueryResult<i64> {
    diesel::insert_into(t::table)
        .values(values)
        .returning(t::id)
        .get_result(conn)
        .await
}

async fn insert_event_row(conn: &mut Conn, row: &NewEventRow) -> QueryResult<i64> {
    diesel::insert_into(e::table)
        .values(row)
        .returning(e::id)
        .get_result(conn)
        .await
}

async fn insert_event_rows(conn: &mut Conn, rows: Vec<NewEventRow>) -> QueryResult<()> {
    diesel::insert_into(e::table)
        .values(&rows)
        .execute(conn)
        .await
        .map(|_| ())
}

async fn insert_attempt_rows(conn: &mut Conn, rows: Vec<NewAttemptRow>) -> QueryResult<()> {
    diesel::insert_into(a::table)
        .values(&rows)
        .execute(conn)
        .await
        .map(|_| ())
}

async fn select_claimable(
    conn: &mut Conn,
    names: &[String],
    now: i64,
    limit: i64,
) -> QueryResult<Vec<TaskRow>> {
    t::table
        .filter(t::status.eq("pending"))
        .filter(t::next_run_time.le(now))
        .filter(t::name.eq_any(names))
        .order((t::priority.desc(), t::next_run_time.asc(), t::id.asc()))
        .limit(limit)
        .select(TaskRow::as_select())
        .for_update()
        .skip_locked()
        .load(conn)
        .await
}

/// Queued by PostgreSQL until the transaction commits; dropped on rollback.
async fn notify_due(conn: &mut Conn) -> QueryResult<()> {
    diesel::sql_query(format!("SELECT pg_notify('{CHANNEL}', '')"))
        .execute(conn)
        .await
        .map(|_| ())
}

crate::orchestration::store_ops!();

/// The PostgreSQL [`TaskStore`].
pub(crate) struct PgStore {
    pool: Pool<Conn>,
    url: String,
    wake: Arc<Notify>,
    listener: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl PgStore {
    async fn conn(&self) -> Result<Object<Conn>, PortError> {
        self.pool.get().await.map_err(|e| pool_error(BACKEND, e))
    }

    /// PostgreSQL locks rows; there is no process-wide writer lock.
    async fn write_guard(&self) -> Result<(), PortError> {
        Ok(())
    }

    async fn run_migrations(&self) -> Result<(), PortError> {
        let mut conn = Conn::establish(&self.url)
            .await
            .map_err(|e| connection_error(BACKEND, e))?;
        conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
            .await
            .map_err(|e| db_error(BACKEND, e))?;
        // Sync diesel_migrations over the async connection, on a blocking thread so it works
        // on any runtime flavour.
        tokio::task::spawn_blocking(move || {
            let mut wrapper: AsyncConnectionWrapper<Conn> = AsyncConnectionWrapper::from(conn);
            let outcome =
                crate::schema_version::check_not_newer(BACKEND, &mut wrapper, &MIGRATIONS)
                    .and_then(|()| {
                        wrapper
                            .run_pending_migrations(MIGRATIONS)
                            .map(|_| ())
                            .map_err(|e| {
                                PortError::Config(format!("{BACKEND} migration failed: {e}"))
                            })
                    });
            let _ = diesel::connection::SimpleConnection::batch_execute(
                &mut wrapper,
                &format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"),
            );
            outcome
        })
        .await
        .map_err(|e| PortError::Config(format!("postgres migration task failed: {e}")))?
    }

    async fn wait_notification(&self) {
        self.ensure_listener();
        self.wake.notified().await
    }

    fn ensure_listener(&self) {
        let Ok(mut listener) = self.listener.lock() else {
            return;
        };
        if listener.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let url = self.url.clone();
        let wake = self.wake.clone();
        *listener = Some(tokio::spawn(listen(url, wake)));
    }

    async fn shutdown(&self) {
        if let Ok(mut listener) = self.listener.lock()
            && let Some(handle) = listener.take()
        {
            handle.abort();
        }
        self.pool.close();
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Ok(mut listener) = self.listener.lock()
            && let Some(handle) = listener.take()
        {
            handle.abort();
        }
    }
}

/// The listener loop: LISTEN on a dedicated connection, wake a waiter per notification,
/// reconnect after any error. A reconnect also wakes a waiter: notifications sent while
/// disconnected are lost, so the runtime should look for work.
async fn listen(url: String, wake: Arc<Notify>) {
    let mut first = true;
    loop {
        match Conn::establish(&url).await {
            Ok(mut conn) => {
                match diesel::sql_query(format!("LISTEN {CHANNEL}"))
                    .execute(&mut conn)
                    .await
                {
                    Ok(_) => {
                        if !first {
                            wake.notify_one();
                        }
                        first = false;
                        let mut stream = std::pin::pin!(conn.notifications_stream());
                        while let Some(item) = stream.next().await {
                            match item {
                                Ok(_) => wake.notify_one(),
                                Err(error) => {
                                    tracing::warn!(backend = BACKEND, %error, "notification listener failed; reconnecting");
                                    break;
                                }
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(backend = BACKEND, %error, "LISTEN failed; retrying");
                    }
                }
            }
            Err(error) => {
                tracing::warn!(backend = BACKEND, %error, "notification listener cannot connect; retrying");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

crate::orchestration::impl_task_store!(PgStore, transaction);

/// Opens a PostgreSQL store.
pub(crate) async fn connect(
    url: String,
    config: &StoreConfig,
) -> Result<Arc<dyn TaskStore>, PortError> {
    let manager = AsyncDieselConnectionManager::<Conn>::new(url.clone());
    let pool = Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .wait_timeout(Some(config.acquire_timeout))
        .create_timeout(Some(config.acquire_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| PortError::Config(format!("postgres pool: {e}")))?;
    let store = PgStore {
        pool,
        url,
        wake: Arc::new(Notify::new()),
        listener: std::sync::Mutex::new(None),
    };
    // Fail fast on an unreachable server rather than at the first query.
    probe(&store.url).await?;
    Ok(Arc::new(store))
}

/// The error's text followed by its causes (`outer: inner: root`).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Connects once with tokio-postgres directly: diesel-async turns a failed connect into text
/// without its cause ("error connecting to server", "invalid configuration") and without the
/// SQLSTATE, which is what tells a wrong password (permanent) from a refused socket
/// (transient).
async fn probe(url: &str) -> Result<(), PortError> {
    use fib_flow_ports::ConnectErrorKind;
    use tokio_postgres::error::SqlState;
    let config: tokio_postgres::Config =
        url.parse()
            .map_err(|error: tokio_postgres::Error| PortError::Connect {
                backend: BACKEND,
                kind: ConnectErrorKind::InvalidUrl,
                message: error_chain(&error),
                source: Some(Box::new(error)),
            })?;
    match config.connect(tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            let driver = tokio::spawn(connection);
            // Dropping the client ends the session cleanly; the driver task then finishes.
            drop(client);
            let _ = driver.await;
            Ok(())
        }
        Err(error) => {
            let message = error_chain(&error);
            let kind = match error.code() {
                Some(code) if code.code().starts_with("28") => {
                    Some(ConnectErrorKind::Authentication)
                }
                Some(code) if *code == SqlState::INVALID_CATALOG_NAME => {
                    Some(ConnectErrorKind::UnknownDatabase)
                }
                _ => None,
            };
            Err(match kind {
                Some(kind) => PortError::Connect {
                    backend: BACKEND,
                    kind,
                    message,
                    source: Some(Box::new(error)),
                },
                None => PortError::Unavailable {
                    backend: BACKEND,
                    message,
                },
            })
        }
    }
}

/// `CREATE DATABASE name` on the server; returns the new database's URL.
pub(crate) async fn create_database(server_url: &str, name: &str) -> Result<String, PortError> {
    let mut conn = Conn::establish(server_url)
        .await
        .map_err(|e| connection_error(BACKEND, e))?;
    conn.batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .map_err(|e| db_error(BACKEND, e))?;
    crate::with_database(server_url, name)
}

/// `DROP DATABASE IF EXISTS name WITH (FORCE)`: lingering connections (a listener, a killed
/// test's pool) must not keep a test database alive.
pub(crate) async fn drop_database(server_url: &str, name: &str) -> Result<(), PortError> {
    let mut conn = Conn::establish(server_url)
        .await
        .map_err(|e| connection_error(BACKEND, e))?;
    conn.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .map_err(|e| db_error(BACKEND, e))
}
