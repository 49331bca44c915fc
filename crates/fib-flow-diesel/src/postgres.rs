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
use crate::rows::{AttemptCloseRow, NewAttemptRow, NewEventRow, RowWrite, TaskRow, TaskValues};
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

/// The rows of a batch, locked `FOR UPDATE` in ascending id order (`id = ANY($1)`: one
/// prepared shape whatever the batch size).
async fn lock_tasks(conn: &mut Conn, ids: &[i64]) -> QueryResult<Vec<TaskRow>> {
    t::table
        .filter(t::id.eq_any(ids))
        .order(t::id.asc())
        .select(TaskRow::as_select())
        .for_update()
        .load(conn)
        .await
}

/// Every column a transition may change, in the order of [`WRITE_ROWS`]'s arrays.
const WRITE_ROWS: &str = "UPDATE fib_flow_tasks AS t SET \
    status = v.status, priority = v.priority, next_run_time = v.next_run_time, \
    last_active_time = v.last_active_time, last_event_time = v.last_event_time, \
    last_event_type = v.last_event_type, result = v.result, error = v.error, \
    current_stage_name = v.current_stage_name, progress_text = v.progress_text, \
    progress_percent = v.progress_percent, stage = v.stage, timeout_ms = v.timeout_ms, \
    retry_count = v.retry_count, max_retries = v.max_retries, \
    retry_interval_ms = v.retry_interval_ms, retry_backoff = v.retry_backoff, \
    total_children = v.total_children, completed_children = v.completed_children, \
    child_failure_policy = v.child_failure_policy, worker_id = v.worker_id, \
    start_time = v.start_time, deadline = v.deadline, attempt = v.attempt, \
    context = v.context, suspend_reason = v.suspend_reason, suspend_metadata = v.suspend_metadata \
    FROM unnest($1::bigint[], $2::text[], $3::int[], $4::text[], $5::int[], $6::bigint[], \
        $7::bigint[], $8::bigint[], $9::text[], $10::text[], $11::text[], $12::text[], \
        $13::text[], $14::float8[], $15::int[], $16::bigint[], $17::int[], $18::int[], \
        $19::bigint[], $20::text[], $21::int[], $22::int[], $23::text[], $24::text[], \
        $25::bigint[], $26::bigint[], $27::int[], $28::bytea[], $29::text[], $30::text[]) \
    AS v(id, guard_status, guard_attempt, status, priority, next_run_time, last_active_time, \
        last_event_time, last_event_type, result, error, current_stage_name, progress_text, \
        progress_percent, stage, timeout_ms, retry_count, max_retries, retry_interval_ms, \
        retry_backoff, total_children, completed_children, child_failure_policy, worker_id, \
        start_time, deadline, attempt, context, suspend_reason, suspend_metadata) \
    WHERE t.id = v.id AND t.status = v.guard_status AND t.attempt = v.guard_attempt";

/// One UPDATE for the whole batch, joined on the primary key; a fixed statement text, so it
/// is prepared once per connection.
async fn write_rows(conn: &mut Conn, writes: &[RowWrite]) -> QueryResult<usize> {
    use diesel::sql_types::{Array, BigInt, Binary, Double, Integer, Nullable, Text};
    fn column<T>(writes: &[RowWrite], get: impl Fn(&RowWrite) -> T) -> Vec<T> {
        writes.iter().map(get).collect()
    }
    diesel::sql_query(WRITE_ROWS)
        .bind::<Array<BigInt>, _>(column(writes, |w| w.id))
        .bind::<Array<Text>, _>(column(writes, |w| w.guard_status))
        .bind::<Array<Integer>, _>(column(writes, |w| w.guard_attempt))
        .bind::<Array<Text>, _>(column(writes, |w| w.values.status.clone()))
        .bind::<Array<Integer>, _>(column(writes, |w| w.values.priority))
        .bind::<Array<BigInt>, _>(column(writes, |w| w.values.next_run_time))
        .bind::<Array<Nullable<BigInt>>, _>(column(writes, |w| w.values.last_active_time))
        .bind::<Array<Nullable<BigInt>>, _>(column(writes, |w| w.values.last_event_time))
        .bind::<Array<Nullable<Text>>, _>(column(writes, |w| w.values.last_event_type.clone()))
        .bind::<Array<Nullable<Text>>, _>(column(writes, |w| w.values.result.clone()))
        .bind::<Array<Nullable<Text>>, _>(column(writes, |w| w.values.error.clone()))
        .bind::<Array<Nullable<Text>>, _>(column(writes, |w| w.values.current_stage_name.clone()))
        .bind::<Array<Nullable<Text>>, _>(column(writes, |w| w.values.progress_text.clone()))
        .bind::<Array<Nullable<Double>>, _>(column(writes, |w| w.values.progress_percent))
        .bind::<Array<Integer>, _>(column(writes, |w| w.values.stage))
        .bind::<Array<Nullable<BigInt>>, _>(column(writes, |w| w.values.timeout_ms))
        .bind::<Array<Integer>, _>(column(writes, |w| w.values.retry_count))
        .bind::<Array<Integer>, _>(column(writes, |w| w.values.max_retries))
        .bind::<Array<BigInt>, _>(column(writes, |w| w.values.retry_interval_ms))
        .bind::<Array<Text>, _>(column(writes, |w| w.values.retry_backoff.clone()))
        .bind::<Array<Integer>, _>(column(writes, |w| w.values.total_children))
        .bind::<Array<Integer>, _>(column(writes, |w| w.values.completed_children))
        .bind::<Array<Text>, _>(column(writes, |w| w.values.child_failure_policy.clone()))
        .bind::<Array<Nullable<Text>>, _>(column(writes, |w| w.values.worker_id.clone()))
        .bind::<Array<Nullable<BigInt>>, _>(column(writes, |w| w.values.start_time))
        .bind::<Array<Nullable<BigInt>>, _>(column(writes, |w| w.values.deadline))
        .bind::<Array<Integer>, _>(column(writes, |w| w.values.attempt))
        .bind::<Array<Nullable<Binary>>, _>(column(writes, |w| w.values.context.clone()))
        .bind::<Array<Nullable<Text>>, _>(column(writes, |w| w.values.suspend_reason.clone()))
        .bind::<Array<Nullable<Text>>, _>(column(writes, |w| w.values.suspend_metadata.clone()))
        .execute(conn)
        .await
}

const CLOSE_ATTEMPTS: &str = "UPDATE fib_flow_task_attempts AS a SET \
    ended_at = v.ended_at, outcome = v.outcome, error = v.error, timeout_flag = v.timeout_flag \
    FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::text[], $5::text[], $6::bool[]) \
    AS v(task_id, attempt, ended_at, outcome, error, timeout_flag) \
    WHERE a.task_id = v.task_id AND a.attempt = v.attempt AND a.ended_at IS NULL";

/// One UPDATE for every attempt a batch closes, on the `(task_id, attempt)` unique index.
async fn close_attempts(conn: &mut Conn, closes: &[AttemptCloseRow]) -> QueryResult<()> {
    use diesel::sql_types::{Array, BigInt, Bool, Integer, Nullable, Text};
    diesel::sql_query(CLOSE_ATTEMPTS)
        .bind::<Array<BigInt>, _>(closes.iter().map(|c| c.task_id).collect::<Vec<_>>())
        .bind::<Array<Integer>, _>(closes.iter().map(|c| c.attempt).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(closes.iter().map(|c| c.ended_at).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(closes.iter().map(|c| c.outcome.clone()).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(
            closes.iter().map(|c| c.error.clone()).collect::<Vec<_>>(),
        )
        .bind::<Array<Bool>, _>(closes.iter().map(|c| c.timeout_flag).collect::<Vec<_>>())
        .execute(conn)
        .await
        .map(|_| ())
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

const INSERT_EVENTS: &str = "INSERT INTO fib_flow_task_events (task_id, root_id, parent_id, \
    event_type, from_status, to_status, stage, worker_id, attempt, event_time, message, metadata) \
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], \
        $6::text[], $7::int[], $8::text[], $9::int[], $10::bigint[], $11::text[], $12::text[])";

/// One fixed-shape statement whatever the row count (a VALUES list would be parsed anew for
/// every count).
async fn insert_event_rows(conn: &mut Conn, rows: Vec<NewEventRow>) -> QueryResult<()> {
    use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text};
    fn column<T>(rows: &[NewEventRow], get: impl Fn(&NewEventRow) -> T) -> Vec<T> {
        rows.iter().map(get).collect()
    }
    diesel::sql_query(INSERT_EVENTS)
        .bind::<Array<BigInt>, _>(column(&rows, |r| r.task_id))
        .bind::<Array<BigInt>, _>(column(&rows, |r| r.root_id))
        .bind::<Array<Nullable<BigInt>>, _>(column(&rows, |r| r.parent_id))
        .bind::<Array<Text>, _>(column(&rows, |r| r.event_type.clone()))
        .bind::<Array<Nullable<Text>>, _>(column(&rows, |r| r.from_status.clone()))
        .bind::<Array<Nullable<Text>>, _>(column(&rows, |r| r.to_status.clone()))
        .bind::<Array<Nullable<Integer>>, _>(column(&rows, |r| r.stage))
        .bind::<Array<Nullable<Text>>, _>(column(&rows, |r| r.worker_id.clone()))
        .bind::<Array<Nullable<Integer>>, _>(column(&rows, |r| r.attempt))
        .bind::<Array<BigInt>, _>(column(&rows, |r| r.event_time))
        .bind::<Array<Nullable<Text>>, _>(column(&rows, |r| r.message.clone()))
        .bind::<Array<Text>, _>(column(&rows, |r| r.metadata.clone()))
        .execute(conn)
        .await
        .map(|_| ())
}

const INSERT_ATTEMPTS: &str = "INSERT INTO fib_flow_task_attempts (task_id, attempt, \
    worker_id, started_at, ended_at, outcome, error, timeout_flag) \
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::bigint[], $5::bigint[], \
        $6::text[], $7::text[], $8::bool[])";

async fn insert_attempt_rows(conn: &mut Conn, rows: Vec<NewAttemptRow>) -> QueryResult<()> {
    use diesel::sql_types::{Array, BigInt, Bool, Integer, Nullable, Text};
    fn column<T>(rows: &[NewAttemptRow], get: impl Fn(&NewAttemptRow) -> T) -> Vec<T> {
        rows.iter().map(get).collect()
    }
    diesel::sql_query(INSERT_ATTEMPTS)
        .bind::<Array<BigInt>, _>(column(&rows, |r| r.task_id))
        .bind::<Array<Integer>, _>(column(&rows, |r| r.attempt))
        .bind::<Array<Nullable<Text>>, _>(column(&rows, |r| r.worker_id.clone()))
        .bind::<Array<BigInt>, _>(column(&rows, |r| r.started_at))
        .bind::<Array<Nullable<BigInt>>, _>(column(&rows, |r| r.ended_at))
        .bind::<Array<Nullable<Text>>, _>(column(&rows, |r| r.outcome.clone()))
        .bind::<Array<Nullable<Text>>, _>(column(&rows, |r| r.error.clone()))
        .bind::<Array<Bool>, _>(column(&rows, |r| r.timeout_flag))
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
        let outcome = tokio::task::spawn_blocking(move || {
            let mut wrapper: AsyncConnectionWrapper<Conn> = AsyncConnectionWrapper::from(conn);
            let outcome = wrapper
                .run_pending_migrations(MIGRATIONS)
                .map(|_| ())
                .map_err(|e| e.to_string());
            let _ = diesel::connection::SimpleConnection::batch_execute(
                &mut wrapper,
                &format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"),
            );
            outcome
        })
        .await
        .map_err(|e| PortError::Config(format!("postgres migration task failed: {e}")))?;
        outcome.map_err(|e| PortError::Config(format!("postgres migration failed: {e}")))
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
    drop(store.conn().await?);
    Ok(Arc::new(store))
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
