//! The statements SQLite says its own way. SQLite has no row locks: `BEGIN IMMEDIATE` already
//! excludes other writers, so "locking" reads are plain reads.
//!
//! The hot statements (a batch's reads and writes, the claim's select, inserts) run on the
//! wrapped sync connection, in one blocking call each, and are prepared once per connection
//! ([`Cached`]): a SQLite statement executes in microseconds, while preparing it again (as
//! diesel does for every UPDATE) or collecting its binds for the async wrapper costs several
//! times that. Rows are written one cached statement each, like `executemany`, instead of in
//! multi-row statements whose text changes with the row count.

use diesel::SqliteConnection;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sqlite::Sqlite as Dialect;
use diesel_async::RunQueryDsl;
use diesel_async::sync_connection_wrapper::{SpawnBlocking, SyncConnectionWrapper};
use fib_flow_domain::{NewTask, TaskId};
use fib_flow_ports::PortError;
use fib_flow_sql::error::db_error;
use fib_flow_sql::rows::{NewEventRow, TaskRow, TaskValues, check_new_tasks, created_event};
use fib_flow_sql::schema::fib_flow_task_attempts as a;
use fib_flow_sql::schema::fib_flow_task_events as e;
use fib_flow_sql::schema::fib_flow_tasks as t;
use fib_flow_sql::write_plan::BatchWrite;
use fib_flow_sql::{CHUNK, Connection, Statements, holds_lease, queries};

use crate::{Conn, Sqlite};

impl Statements for Sqlite {
    type Conn = Conn;

    const BACKEND: &'static str = "sqlite";

    /// A chunk of new tasks takes several statements here, so it runs in a transaction.
    const ONE_STATEMENT_INSERT: bool = false;

    fn connection(conn: &mut Conn) -> Connection<'_> {
        Connection::Sqlite(conn)
    }

    async fn lock_task(conn: &mut Conn, id: i64) -> QueryResult<Option<TaskRow>> {
        queries::get_task(Connection::Sqlite(conn), id).await
    }

    /// One cached primary-key read per id, in ascending id order: an `IN` list's statement
    /// changes with its length and would be prepared afresh for every batch.
    async fn lock_tasks(conn: &mut Conn, ids: &[i64]) -> QueryResult<Vec<TaskRow>> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        conn.spawn_blocking(move |c| {
            let mut rows = Vec::with_capacity(ids.len());
            for id in ids {
                let query = t::table.find(id).select(TaskRow::as_select());
                if let Some(row) = diesel::RunQueryDsl::first(query, c).optional()? {
                    rows.push(row);
                }
            }
            Ok(rows)
        })
        .await
    }

    async fn write_batch(conn: &mut Conn, batch: &BatchWrite) -> QueryResult<usize> {
        let batch = batch.clone();
        conn.spawn_blocking(move |c| write_batch(c, &batch)).await
    }

    /// Nothing to notify: other processes on the same file poll.
    async fn insert_created(
        conn: &mut Conn,
        tasks: &[NewTask],
        _notify: bool,
    ) -> QueryResult<Vec<i64>> {
        let tasks = tasks.to_vec();
        conn.spawn_blocking(move |c| insert_created(c, &tasks))
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
        conn.spawn_blocking(move |c| insert_event_rows(c, &rows))
            .await
    }

    async fn select_claimable(
        conn: &mut Conn,
        names: &[String],
        now: i64,
        limit: i64,
        lease: Option<&str>,
    ) -> QueryResult<Vec<TaskRow>> {
        let names = names.to_vec();
        let lease = lease.map(str::to_owned);
        conn.spawn_blocking(move |c| {
            let query = t::table
                .filter(queries::is_pending())
                .filter(t::next_run_time.le(now))
                .filter(t::name.eq_any(&names))
                .filter(holds_lease!(lease.as_deref()))
                .order((t::priority.desc(), t::next_run_time.asc(), t::id.asc()))
                .limit(limit)
                .select(TaskRow::as_select());
            diesel::RunQueryDsl::load(Cached(query), c)
        })
        .await
    }

    async fn heartbeat_row(
        conn: &mut Conn,
        task_id: i64,
        attempt: i32,
        worker_id: &str,
        now: i64,
    ) -> QueryResult<usize> {
        queries::heartbeat_row(Connection::Sqlite(conn), task_id, attempt, worker_id, now).await
    }

    /// Nothing to notify: other processes on the same file poll.
    async fn notify_due(_conn: &mut Conn) -> QueryResult<()> {
        Ok(())
    }
}

/// A statement prepared once per connection and reused: its SQL text is the statement cache's
/// key. diesel refuses to cache an UPDATE, a literal SQL fragment or an `IN` list (their text
/// may change from call to call, and its own key is the statement's type); keyed on the text,
/// every variant simply gets its own entry.
struct Cached<Q>(Q);

impl<Q: QueryFragment<Dialect>> QueryFragment<Dialect> for Cached<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Dialect>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Dialect) -> QueryResult<bool> {
        Ok(true)
    }
}

/// No type-based key: the statement cache then keys on the SQL text.
impl<Q> QueryId for Cached<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Cached<Q> {
    type SqlType = Q::SqlType;
}

impl<Q> diesel::RunQueryDsl<SqliteConnection> for Cached<Q> {}

/// Every write of a batch: each task row under its guard, opened attempts, closed attempts,
/// events. Returns how many task rows matched their guard.
fn write_batch(c: &mut SqliteConnection, batch: &BatchWrite) -> QueryResult<usize> {
    let mut written = 0;
    for write in &batch.rows {
        let update = diesel::update(
            t::table
                .filter(t::id.eq(write.id))
                .filter(t::status.eq(write.guard_status))
                .filter(t::attempt.eq(write.guard_attempt)),
        )
        .set(&write.values);
        written += diesel::RunQueryDsl::execute(Cached(update), c)?;
    }
    for row in &batch.opened {
        diesel::RunQueryDsl::execute(diesel::insert_into(a::table).values(row), c)?;
    }
    for close in &batch.closed {
        let update = diesel::update(
            a::table
                .filter(a::task_id.eq(close.task_id))
                .filter(a::attempt.eq(close.attempt))
                .filter(a::ended_at.is_null()),
        )
        .set((
            a::ended_at.eq(close.ended_at),
            a::outcome.eq(&close.outcome),
            a::error.eq(&close.error),
            a::timeout_flag.eq(close.timeout_flag),
        ));
        diesel::RunQueryDsl::execute(Cached(update), c)?;
    }
    insert_event_rows(c, &batch.events)?;
    Ok(written)
}

/// New task rows, one cached `INSERT … RETURNING id` each (ids in input order).
fn insert_task_rows(c: &mut SqliteConnection, rows: &[TaskValues]) -> QueryResult<Vec<i64>> {
    rows.iter()
        .map(|row| {
            diesel::RunQueryDsl::get_result(
                diesel::insert_into(t::table).values(row).returning(t::id),
                c,
            )
        })
        .collect()
}

/// Events, one cached `INSERT` each.
fn insert_event_rows(c: &mut SqliteConnection, rows: &[NewEventRow]) -> QueryResult<()> {
    for row in rows {
        diesel::RunQueryDsl::execute(diesel::insert_into(e::table).values(row), c)?;
    }
    Ok(())
}

/// A chunk of new tasks with their `task_created` events; returns the new ids in input order.
fn insert_created(c: &mut SqliteConnection, tasks: &[NewTask]) -> QueryResult<Vec<i64>> {
    let values: Vec<TaskValues> = tasks.iter().map(TaskValues::from_new).collect();
    let ids = insert_task_rows(c, &values)?;
    let events: Vec<NewEventRow> = tasks
        .iter()
        .zip(&ids)
        .map(|(task, id)| created_event(task, TaskId(*id)))
        .collect();
    insert_event_rows(c, &events)?;
    Ok(ids)
}

/// Inserts tasks and their `task_created` events through a caller's connection, in the
/// transaction the caller opened on it (the facade's `CallerConnection`): the tasks exist if
/// and only if it commits. Any spawner: callers hold diesel-async's default wrapper.
///
/// Errors: [`PortError::Rejected`] for a task that fails validation, the mapped database
/// error otherwise.
pub async fn insert_in_caller_transaction<S>(
    conn: &mut SyncConnectionWrapper<SqliteConnection, S>,
    tasks: &[NewTask],
) -> Result<Vec<TaskId>, PortError>
where
    S: SpawnBlocking + Send,
{
    check_new_tasks(tasks)?;
    let tasks = tasks.to_vec();
    let ids = conn
        .spawn_blocking(move |c| {
            let mut ids = Vec::with_capacity(tasks.len());
            for chunk in tasks.chunks(CHUNK) {
                ids.extend(insert_created(c, chunk)?);
            }
            Ok(ids)
        })
        .await
        .map_err(|error| db_error(Sqlite::BACKEND, error))?;
    Ok(ids.into_iter().map(TaskId).collect())
}
