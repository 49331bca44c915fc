//! fib-flow's PostgreSQL store: [`connect`] returns the shared [`SqlStore`] over
//! [`Postgres`], this crate's statements and connection setup.
//!
//! Owns: the pool (`AsyncPgConnection`, tokio-postgres, no libpq), the PostgreSQL migrations
//! (`migrations/postgres/`, embedded), database creation for test isolation, the statements
//! PostgreSQL says its own way (`statements.rs`) and wake-ups. Must not: hold
//! transaction logic (fib-flow-sql does; the two exceptions are the claim transition and the
//! completion of a plain async task said in SQL, each in one round trip, `pipeline.rs` and
//! `completion.rs`, each pinned to the domain's by a test) or parse URLs beyond handing them
//! to the driver.
//!
//! Row locks: transitions read their row `FOR UPDATE`; claims use `FOR UPDATE SKIP LOCKED` so
//! concurrent workers take disjoint rows. Wake-ups: writes that leave a task pending and due
//! call `pg_notify('fib_flow_tasks', '')` inside their transaction (delivered on commit); one
//! dedicated listener connection per store (outside the pool, started on the first
//! `wait_for_notification`) turns them into wake-ups and reconnects after errors.

use std::sync::Arc;
use std::time::Duration;

use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use fib_flow_domain::Task;
use fib_flow_ports::{BatchCommand, ClaimRequest, PortError, TaskStore};
use fib_flow_sql::error::{TxError, connection_error, db_error, pool_error};
use fib_flow_sql::{Backend, SqlStore, Statements, StoreConfig, TxFuture};
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The columns of a [`TaskRow`](fib_flow_sql::rows::TaskRow) read from `$alias`, for the
/// final select of a statement that returns task rows. Named one by one, not `$alias.*`: the
/// statements stay prepared, and a prepared statement whose result columns change (a newer
/// migration adding a column while this process runs) fails with "cached plan must not change
/// result type" on every later call.
macro_rules! task_row_columns {
    ($alias:literal) => {
        concat!(
            $alias,
            ".id, ",
            $alias,
            ".name, ",
            $alias,
            ".type AS task_type, ",
            $alias,
            ".status, ",
            $alias,
            ".priority, ",
            $alias,
            ".payload, ",
            $alias,
            ".created_at, ",
            $alias,
            ".tag, ",
            $alias,
            ".next_run_time, ",
            $alias,
            ".last_active_time, ",
            $alias,
            ".last_event_time, ",
            $alias,
            ".last_event_type, ",
            $alias,
            ".result, ",
            $alias,
            ".error, ",
            $alias,
            ".current_stage_name, ",
            $alias,
            ".progress_text, ",
            $alias,
            ".progress_percent, ",
            $alias,
            ".stage, ",
            $alias,
            ".timeout_ms, ",
            $alias,
            ".retry_count, ",
            $alias,
            ".max_retries, ",
            $alias,
            ".retry_interval_ms, ",
            $alias,
            ".retry_backoff, ",
            $alias,
            ".cron_expr, ",
            $alias,
            ".timezone, ",
            $alias,
            ".root_id, ",
            $alias,
            ".parent_id, ",
            $alias,
            ".parent_round, ",
            $alias,
            ".total_children, ",
            $alias,
            ".completed_children, ",
            $alias,
            ".child_failure_policy, ",
            $alias,
            ".worker_id, ",
            $alias,
            ".start_time, ",
            $alias,
            ".deadline, ",
            $alias,
            ".attempt, ",
            $alias,
            ".context, ",
            $alias,
            ".suspend_reason, ",
            $alias,
            ".suspend_metadata, ",
            $alias,
            ".cron_key, ",
            $alias,
            ".unique_key"
        )
    };
}

mod completion;
mod pipeline;
mod statements;

/// The PostgreSQL connection type.
pub use diesel_async::AsyncPgConnection as Conn;

/// The PostgreSQL migrations, embedded at compile time.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");

/// The NOTIFY channel for "a task became due".
const CHANNEL: &str = "fib_flow_tasks";

/// Serialises concurrent `migrate()` calls from several processes (arbitrary constant key).
const MIGRATION_LOCK: i64 = 0x00f1_bf10_0001;

/// The PostgreSQL backend: its pool, its notification listener, and its statements (see
/// [`Statements`]).
pub struct Postgres {
    pool: Pool<Conn>,
    url: String,
    wake: Arc<Notify>,
    listener: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Backend for Postgres {
    type Pooled = Object<Conn>;

    /// PostgreSQL locks rows; there is no process-wide writer lock.
    const SINGLE_WRITER: bool = false;

    async fn checkout(&self) -> Result<Object<Conn>, PortError> {
        self.pool
            .get()
            .await
            .map_err(|e| pool_error(Self::BACKEND, e))
    }

    async fn transaction<'c, R, F>(conn: &'c mut Conn, body: F) -> Result<R, TxError>
    where
        R: Send + 'c,
        F: for<'r> FnOnce(&'r mut Conn) -> TxFuture<'r, R> + Send + 'c,
    {
        conn.transaction(async move |c| body(c).await).await
    }

    async fn claim_round(
        mut conn: Object<Conn>,
        request: ClaimRequest,
    ) -> Result<Vec<Task>, TxError> {
        pipeline::claim_round(&mut conn, request).await
    }

    async fn outcome_batch(
        mut conn: Object<Conn>,
        commands: Vec<BatchCommand>,
    ) -> Result<Vec<Result<Task, PortError>>, TxError> {
        pipeline::outcome_batch(&mut conn, commands).await
    }

    async fn migrate(&self) -> Result<(), PortError> {
        let mut conn = Conn::establish(&self.url)
            .await
            .map_err(|e| connection_error(Self::BACKEND, e))?;
        conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
            .await
            .map_err(|e| db_error(Self::BACKEND, e))?;
        // Sync diesel_migrations over the async connection, on a blocking thread so it works
        // on any runtime flavour.
        tokio::task::spawn_blocking(move || {
            let mut wrapper: AsyncConnectionWrapper<Conn> = AsyncConnectionWrapper::from(conn);
            let outcome = fib_flow_sql::schema_version::check_not_newer(
                Self::BACKEND,
                &mut wrapper,
                &MIGRATIONS,
            )
            .and_then(|()| {
                wrapper
                    .run_pending_migrations(MIGRATIONS)
                    .map(|_| ())
                    .map_err(|e| PortError::Config(format!("postgres migration failed: {e}")))
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

    async fn wait_for_notification(&self) {
        self.ensure_listener();
        self.wake.notified().await
    }

    async fn close(&self) {
        self.stop_listener();
        self.pool.close();
    }
}

impl Postgres {
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

    fn stop_listener(&self) {
        if let Ok(mut listener) = self.listener.lock()
            && let Some(handle) = listener.take()
        {
            handle.abort();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop_listener();
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
                                    tracing::warn!(backend = Postgres::BACKEND, %error, "notification listener failed; reconnecting");
                                    break;
                                }
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(backend = Postgres::BACKEND, %error, "LISTEN failed; retrying");
                    }
                }
            }
            Err(error) => {
                tracing::warn!(backend = Postgres::BACKEND, %error, "notification listener cannot connect; retrying");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Opens a PostgreSQL store at `url` (a `postgres://` or `postgresql://` URL). No schema
/// changes: call [`TaskStore::migrate`].
///
/// Errors: [`PortError::Connect`] (permanent) for a malformed URL, rejected credentials or an
/// unknown database; [`PortError::Unavailable`] (transient) when the server cannot be reached.
pub async fn connect(url: String, config: &StoreConfig) -> Result<Arc<dyn TaskStore>, PortError> {
    // `Fast` recycling: no test query on every checkout (a round trip per transaction).
    // tokio-postgres notices a connection the server closed as soon as it happens (its
    // connection task ends), so the pool drops it as broken before handing it out.
    let mut manager_config = ManagerConfig::<Conn>::default();
    manager_config.recycling_method = RecyclingMethod::Fast;
    let manager =
        AsyncDieselConnectionManager::<Conn>::new_with_config(url.clone(), manager_config);
    let pool = Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .wait_timeout(Some(config.acquire_timeout))
        .create_timeout(Some(config.acquire_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| PortError::Config(format!("postgres pool: {e}")))?;
    // Fail fast on an unreachable server rather than at the first query.
    probe(&url).await?;
    let backend = Postgres {
        pool,
        url,
        wake: Arc::new(Notify::new()),
        listener: std::sync::Mutex::new(None),
    };
    Ok(Arc::new(SqlStore::new(backend, config.acquire_timeout)))
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
                backend: Postgres::BACKEND,
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
                    backend: Postgres::BACKEND,
                    kind,
                    message,
                    source: Some(Box::new(error)),
                },
                None => PortError::Unavailable {
                    backend: Postgres::BACKEND,
                    message,
                },
            })
        }
    }
}

/// `CREATE DATABASE name` on the server at `server_url`. `name` must be a safe identifier
/// (identifiers cannot be bound): the caller checks it.
pub async fn create_database(server_url: &str, name: &str) -> Result<(), PortError> {
    let mut conn = Conn::establish(server_url)
        .await
        .map_err(|e| connection_error(Postgres::BACKEND, e))?;
    conn.batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .map_err(|e| db_error(Postgres::BACKEND, e))
}

/// `DROP DATABASE IF EXISTS name WITH (FORCE)`: lingering connections (a listener, a killed
/// test's pool) must not keep a test database alive.
pub async fn drop_database(server_url: &str, name: &str) -> Result<(), PortError> {
    let mut conn = Conn::establish(server_url)
        .await
        .map_err(|e| connection_error(Postgres::BACKEND, e))?;
    conn.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .map_err(|e| db_error(Postgres::BACKEND, e))
}
