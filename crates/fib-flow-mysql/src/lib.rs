//! fib-flow's MySQL/MariaDB store: [`connect`] returns the shared [`SqlStore`] over
//! [`Mysql`], this crate's statements and connection setup.
//!
//! Owns: the pool (`AsyncMysqlConnection`, mysql_async, no libmysqlclient), the session setup,
//! the MySQL migrations (`migrations/mysql/`, embedded), database creation for test isolation
//! and the statements MySQL says its own way (`statements.rs`; batches set-based through
//! `JSON_TABLE` in `batch.rs`, in fixed-text statements that stay prepared, `prepared.rs`).
//! Must not:
//! hold transaction logic (fib-flow-sql does).
//!
//! Every connection runs at READ COMMITTED: transitions lock their row `FOR UPDATE` and write
//! under a guard, so they need no snapshot; and under REPEATABLE READ two children settling at
//! once could both count the other as outstanding from their snapshots and leave the parent
//! waiting forever. READ COMMITTED also releases the locks of rows a claim scan rejects.

use std::sync::Arc;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Unsigned};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use fib_flow_ports::{PortError, TaskStore};
use fib_flow_sql::error::{TxError, connection_error, db_error, pool_error};
use fib_flow_sql::{Backend, SqlStore, Statements, StoreConfig, TxFuture};

mod batch;
mod prepared;
mod statements;

/// The MySQL/MariaDB connection type.
pub use diesel_async::AsyncMysqlConnection as Conn;

/// The MySQL/MariaDB migrations, embedded at compile time.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/mysql");

const SESSION_SETUP: &str = "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED";

/// The MySQL/MariaDB backend: its pool and its statements (see [`Statements`]).
pub struct Mysql {
    pool: Pool<Conn>,
    url: String,
}

async fn open(url: &str) -> ConnectionResult<Conn> {
    let mut conn = Conn::establish(url).await?;
    conn.batch_execute(SESSION_SETUP)
        .await
        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

impl Backend for Mysql {
    type Pooled = Object<Conn>;

    /// InnoDB locks rows; there is no process-wide writer lock.
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

    async fn migrate(&self) -> Result<(), PortError> {
        let mut conn = open(&self.url)
            .await
            .map_err(|e| connection_error(Self::BACKEND, e))?;
        // DDL is not transactional on MySQL: keep concurrent migrate() calls from interleaving.
        conn.batch_execute("DO GET_LOCK('fib_flow_migrations', 60)")
            .await
            .map_err(|e| db_error(Self::BACKEND, e))?;
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
                    .map_err(|e| PortError::Config(format!("mysql migration failed: {e}")))
            });
            let _ = diesel::connection::SimpleConnection::batch_execute(
                &mut wrapper,
                "DO RELEASE_LOCK('fib_flow_migrations')",
            );
            outcome
        })
        .await
        .map_err(|e| PortError::Config(format!("mysql migration task failed: {e}")))?
    }

    /// MySQL has no notifications: workers poll.
    async fn wait_for_notification(&self) {
        std::future::pending::<()>().await
    }

    async fn close(&self) {
        self.pool.close();
    }
}

/// Opens a MySQL/MariaDB store at `url` (a `mysql://` URL). No schema changes: call
/// [`TaskStore::migrate`].
///
/// Errors: [`PortError::Config`] for a server whose `max_allowed_packet` is below 16 MiB;
/// [`PortError::Connect`] (permanent) for a malformed URL, rejected credentials or an unknown
/// database; [`PortError::Unavailable`] (transient) when the server cannot be reached.
pub async fn connect(url: String, config: &StoreConfig) -> Result<Arc<dyn TaskStore>, PortError> {
    let mut manager_config = ManagerConfig::<Conn>::default();
    // The default `Verified` recycling (a test query per checkout) stays: unlike
    // tokio-postgres, mysql_async notices a connection the server killed only when it is next
    // used, so without the check a query after a server restart fails once per pooled
    // connection (the connection-kill conformance test).
    manager_config.custom_setup = Box::new(|url| {
        let url = url.to_owned();
        Box::pin(async move { open(&url).await })
    });
    let manager =
        AsyncDieselConnectionManager::<Conn>::new_with_config(url.clone(), manager_config);
    let pool = Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .wait_timeout(Some(config.acquire_timeout))
        .create_timeout(Some(config.acquire_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| PortError::Config(format!("mysql pool: {e}")))?;
    let backend = Mysql { pool, url };
    // Fail fast on an unreachable server rather than at the first query, and on a server whose
    // packet limit is below what the largest task row needs.
    let mut conn = backend.checkout().await?;
    check_packet_size(&mut conn).await?;
    drop(conn);
    Ok(Arc::new(SqlStore::new(backend, config.acquire_timeout)))
}

/// The `max_allowed_packet` a task row of the largest accepted values needs: MariaDB's default.
/// [`fib_flow_domain::limits::MAX_VALUE_BYTES`] is chosen so that a row fits in it.
pub const MIN_PACKET_BYTES: u64 = 16 * 1024 * 1024;

/// Refuses a server whose `max_allowed_packet` is below [`MIN_PACKET_BYTES`]: such a server
/// drops the connection on a large row ("Connection to the server is closed"), which cannot
/// be told apart from a transient fault, so the limit must hold before anything is written.
async fn check_packet_size(conn: &mut Conn) -> Result<(), PortError> {
    let packet: u64 = diesel::select(diesel::dsl::sql::<Unsigned<BigInt>>(
        "CAST(@@max_allowed_packet AS UNSIGNED)",
    ))
    .get_result(conn)
    .await
    .map_err(|e| db_error(Mysql::BACKEND, e))?;
    if packet < MIN_PACKET_BYTES {
        return Err(PortError::Config(format!(
            "the server's max_allowed_packet is {packet} bytes; fib-flow needs at least {MIN_PACKET_BYTES} (16 MiB, MariaDB's default) so that a task row with values up to {} bytes each fits in one packet: raise max_allowed_packet",
            fib_flow_domain::limits::MAX_VALUE_BYTES
        )));
    }
    Ok(())
}

/// `CREATE DATABASE name` (utf8mb4, binary collation) on the server at `server_url`. `name`
/// must be a safe identifier (identifiers cannot be bound): the caller checks it.
pub async fn create_database(server_url: &str, name: &str) -> Result<(), PortError> {
    let mut conn = Conn::establish(server_url)
        .await
        .map_err(|e| connection_error(Mysql::BACKEND, e))?;
    conn.batch_execute(&format!(
        "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    ))
    .await
    .map_err(|e| db_error(Mysql::BACKEND, e))
}

/// `DROP DATABASE IF EXISTS name`.
pub async fn drop_database(server_url: &str, name: &str) -> Result<(), PortError> {
    let mut conn = Conn::establish(server_url)
        .await
        .map_err(|e| connection_error(Mysql::BACKEND, e))?;
    conn.batch_execute(&format!("DROP DATABASE IF EXISTS `{name}`"))
        .await
        .map_err(|e| db_error(Mysql::BACKEND, e))
}
