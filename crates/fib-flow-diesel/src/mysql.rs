//! MySQL/MariaDB backend: `AsyncMysqlConnection` (mysql_async, no libmysqlclient) in a
//! deadpool pool.
//!
//! Every connection runs at READ COMMITTED: transitions lock their row `FOR UPDATE` and write
//! under a guard, so they need no snapshot; and under REPEATABLE READ two children settling at
//! once could both count the other as outstanding from their snapshots and leave the parent
//! waiting forever. READ COMMITTED also releases the locks of rows a claim scan rejects.
//! There is no RETURNING: inserted ids come from `LAST_INSERT_ID()`, one row at a time.

use std::sync::Arc;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Unsigned};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use fib_flow_ports::{PortError, TaskStore};

use crate::StoreConfig;
use crate::error::{connection_error, db_error, pool_error};
use crate::rows::{BatchWrite, NewAttemptRow, NewEventRow, RowWrite, TaskRow, TaskValues};
use crate::schema::fib_flow_task_attempts as a;
use crate::schema::fib_flow_task_events as e;
use crate::schema::fib_flow_tasks as t;

pub(crate) type Conn = AsyncMysqlConnection;
pub(crate) type Db = diesel::mysql::Mysql;
pub(crate) const BACKEND: &str = "mysql";
/// A chunk of new tasks takes several statements here, so it runs in a transaction.
const ONE_STATEMENT_INSERT: bool = false;

/// The MySQL/MariaDB migrations, embedded at compile time.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/mysql");

const SESSION_SETUP: &str = "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED";

async fn lock_task(conn: &mut Conn, id: i64) -> QueryResult<Option<TaskRow>> {
    t::table
        .find(id)
        .select(TaskRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

async fn last_insert_id(conn: &mut Conn) -> QueryResult<i64> {
    let id: u64 = diesel::select(diesel::dsl::sql::<Unsigned<BigInt>>("LAST_INSERT_ID()"))
        .get_result(conn)
        .await?;
    i64::try_from(id).map_err(|_| {
        diesel::result::Error::DeserializationError(
            format!("LAST_INSERT_ID() {id} does not fit a BIGINT").into(),
        )
    })
}

/// The rows of a batch, in ascending id order and locked `FOR UPDATE` in that order.
async fn lock_tasks(conn: &mut Conn, ids: &[i64]) -> QueryResult<Vec<TaskRow>> {
    t::table
        .filter(t::id.eq_any(ids))
        .order(t::id.asc())
        .select(TaskRow::as_select())
        .for_update()
        .load(conn)
        .await
}

async fn write_batch(conn: &mut Conn, batch: &BatchWrite) -> QueryResult<usize> {
    ops::write_batch_each(conn, batch).await
}

async fn insert_task_row(conn: &mut Conn, values: &TaskValues) -> QueryResult<i64> {
    diesel::insert_into(t::table)
        .values(values)
        .execute(conn)
        .await?;
    last_insert_id(conn).await
}

/// Row by row: a multi-row INSERT's ids are only consecutive under some
/// `innodb_autoinc_lock_mode` settings, and `LAST_INSERT_ID()` names only the first.
async fn insert_task_rows(conn: &mut Conn, rows: &[TaskValues]) -> QueryResult<Vec<i64>> {
    let mut ids = Vec::with_capacity(rows.len());
    for row in rows {
        ids.push(insert_task_row(conn, row).await?);
    }
    Ok(ids)
}

crate::orchestration::insert_created_each!();

/// Every column a transition may change, written by primary key. `FORCE INDEX (PRIMARY)`:
/// left to itself, InnoDB serves `id = ? AND status = ?` through a status-leading secondary
/// index, locking that index's entry before the row, the reverse order of a transaction that
/// already holds the row, and the two deadlock.
const UPDATE_ROW: &str = "UPDATE fib_flow_tasks FORCE INDEX (PRIMARY) SET status = ?, \
    priority = ?, next_run_time = ?, last_active_time = ?, last_event_time = ?, \
    last_event_type = ?, result = ?, error = ?, current_stage_name = ?, progress_text = ?, \
    progress_percent = ?, stage = ?, timeout_ms = ?, retry_count = ?, max_retries = ?, \
    retry_interval_ms = ?, retry_backoff = ?, total_children = ?, completed_children = ?, \
    child_failure_policy = ?, worker_id = ?, start_time = ?, deadline = ?, attempt = ?, \
    context = ?, suspend_reason = ?, suspend_metadata = ? \
    WHERE id = ? AND status = ? AND attempt = ?";

async fn update_row(conn: &mut Conn, write: &RowWrite) -> QueryResult<usize> {
    use diesel::sql_types::{Binary, Double, Integer, Nullable, Text};
    let v = &write.values;
    diesel::sql_query(UPDATE_ROW)
        .bind::<Text, _>(&v.status)
        .bind::<Integer, _>(v.priority)
        .bind::<BigInt, _>(v.next_run_time)
        .bind::<Nullable<BigInt>, _>(v.last_active_time)
        .bind::<Nullable<BigInt>, _>(v.last_event_time)
        .bind::<Nullable<Text>, _>(&v.last_event_type)
        .bind::<Nullable<Text>, _>(&v.result)
        .bind::<Nullable<Text>, _>(&v.error)
        .bind::<Nullable<Text>, _>(&v.current_stage_name)
        .bind::<Nullable<Text>, _>(&v.progress_text)
        .bind::<Nullable<Double>, _>(v.progress_percent)
        .bind::<Integer, _>(v.stage)
        .bind::<Nullable<BigInt>, _>(v.timeout_ms)
        .bind::<Integer, _>(v.retry_count)
        .bind::<Integer, _>(v.max_retries)
        .bind::<BigInt, _>(v.retry_interval_ms)
        .bind::<Text, _>(&v.retry_backoff)
        .bind::<Integer, _>(v.total_children)
        .bind::<Integer, _>(v.completed_children)
        .bind::<Text, _>(&v.child_failure_policy)
        .bind::<Nullable<Text>, _>(&v.worker_id)
        .bind::<Nullable<BigInt>, _>(v.start_time)
        .bind::<Nullable<BigInt>, _>(v.deadline)
        .bind::<Integer, _>(v.attempt)
        .bind::<Nullable<Binary>, _>(&v.context)
        .bind::<Nullable<Text>, _>(&v.suspend_reason)
        .bind::<Nullable<Text>, _>(&v.suspend_metadata)
        .bind::<BigInt, _>(write.id)
        .bind::<Text, _>(write.guard_status)
        .bind::<Integer, _>(write.guard_attempt)
        .execute(conn)
        .await
}

/// A heartbeat by primary key (see [`UPDATE_ROW`] for why the index is forced).
const HEARTBEAT_ROW: &str = "UPDATE fib_flow_tasks FORCE INDEX (PRIMARY) \
    SET last_active_time = ? WHERE id = ? AND status = 'running' AND worker_id = ? \
    AND attempt = ? AND (last_active_time IS NULL OR last_active_time <= ?)";

async fn heartbeat_row(
    conn: &mut Conn,
    task_id: i64,
    attempt: i32,
    worker_id: &str,
    now: i64,
) -> QueryResult<usize> {
    use diesel::sql_types::{Integer, Text};
    diesel::sql_query(HEARTBEAT_ROW)
        .bind::<BigInt, _>(now)
        .bind::<BigInt, _>(task_id)
        .bind::<Text, _>(worker_id)
        .bind::<Integer, _>(attempt)
        .bind::<BigInt, _>(now)
        .execute(conn)
        .await
}

async fn insert_event_row(conn: &mut Conn, row: &NewEventRow) -> QueryResult<i64> {
    diesel::insert_into(e::table)
        .values(row)
        .execute(conn)
        .await?;
    last_insert_id(conn).await
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

/// Served by `idx_tasks_claim (status, priority DESC, next_run_time, id)` without a filesort,
/// which matters under InnoDB: a filesort would lock every scanned row and starve the other
/// workers' SKIP LOCKED scans.
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
        .for_update()
        .skip_locked()
        .load(conn)
        .await
}

/// MySQL has no notifications; workers poll.
async fn notify_due(_conn: &mut Conn) -> QueryResult<()> {
    Ok(())
}

crate::orchestration::store_ops!();

/// The MySQL/MariaDB [`TaskStore`].
pub(crate) struct MysqlStore {
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

impl MysqlStore {
    async fn conn(&self) -> Result<Object<Conn>, PortError> {
        self.pool.get().await.map_err(|e| pool_error(BACKEND, e))
    }

    /// InnoDB locks rows; there is no process-wide writer lock.
    async fn write_guard(&self) -> Result<(), PortError> {
        Ok(())
    }

    async fn run_migrations(&self) -> Result<(), PortError> {
        let mut conn = open(&self.url)
            .await
            .map_err(|e| connection_error(BACKEND, e))?;
        // DDL is not transactional on MySQL: keep concurrent migrate() calls from interleaving.
        conn.batch_execute("DO GET_LOCK('fib_flow_migrations', 60)")
            .await
            .map_err(|e| db_error(BACKEND, e))?;
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
                "DO RELEASE_LOCK('fib_flow_migrations')",
            );
            outcome
        })
        .await
        .map_err(|e| PortError::Config(format!("mysql migration task failed: {e}")))?
    }

    async fn wait_notification(&self) {
        std::future::pending::<()>().await
    }

    async fn shutdown(&self) {
        self.pool.close();
    }
}

crate::orchestration::impl_task_store!(MysqlStore, transaction);

/// Opens a MySQL/MariaDB store.
pub(crate) async fn connect(
    url: String,
    config: &StoreConfig,
) -> Result<Arc<dyn TaskStore>, PortError> {
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
    let store = MysqlStore { pool, url };
    // Fail fast on an unreachable server rather than at the first query, and on a server whose
    // packet limit is below what the largest task row needs.
    let mut conn = store.conn().await?;
    check_packet_size(&mut conn).await?;
    drop(conn);
    Ok(Arc::new(store))
}

/// The `max_allowed_packet` a task row of the largest accepted values needs: MariaDB's default.
/// [`fib_flow_domain::limits::MAX_VALUE_BYTES`] is chosen so that a row fits in it.
pub(crate) const MIN_PACKET_BYTES: u64 = 16 * 1024 * 1024;

/// Refuses a server whose `max_allowed_packet` is below [`MIN_PACKET_BYTES`]: such a server
/// drops the connection on a large row ("Connection to the server is closed"), which cannot
/// be told apart from a transient fault, so the limit must hold before anything is written.
async fn check_packet_size(conn: &mut Conn) -> Result<(), PortError> {
    let packet: u64 = diesel::select(diesel::dsl::sql::<Unsigned<BigInt>>(
        "CAST(@@max_allowed_packet AS UNSIGNED)",
    ))
    .get_result(conn)
    .await
    .map_err(|e| db_error(BACKEND, e))?;
    if packet < MIN_PACKET_BYTES {
        return Err(PortError::Config(format!(
            "the server's max_allowed_packet is {packet} bytes; fib-flow needs at least {MIN_PACKET_BYTES} (16 MiB, MariaDB's default) so that a task row with values up to {} bytes each fits in one packet: raise max_allowed_packet",
            fib_flow_domain::limits::MAX_VALUE_BYTES
        )));
    }
    Ok(())
}

/// `CREATE DATABASE name` (utf8mb4, binary collation) on the server; returns its URL.
pub(crate) async fn create_database(server_url: &str, name: &str) -> Result<String, PortError> {
    let mut conn = Conn::establish(server_url)
        .await
        .map_err(|e| connection_error(BACKEND, e))?;
    conn.batch_execute(&format!(
        "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    ))
    .await
    .map_err(|e| db_error(BACKEND, e))?;
    crate::with_database(server_url, name)
}

/// `DROP DATABASE IF EXISTS name`.
pub(crate) async fn drop_database(server_url: &str, name: &str) -> Result<(), PortError> {
    let mut conn = Conn::establish(server_url)
        .await
        .map_err(|e| connection_error(BACKEND, e))?;
    conn.batch_execute(&format!("DROP DATABASE IF EXISTS `{name}`"))
        .await
        .map_err(|e| db_error(BACKEND, e))
}
