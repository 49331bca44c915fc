//! The statements SQLite says its own way. SQLite has no row locks: `BEGIN IMMEDIATE` already
//! excludes other writers, so "locking" reads are plain reads. Multi-row inserts run on the
//! wrapped sync connection: diesel's single-statement SQLite batch insert is only wired up for
//! the sync `SqliteConnection`.

use diesel::SqliteConnection;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use diesel_async::sync_connection_wrapper::{SpawnBlocking, SyncConnectionWrapper};
use fib_flow_domain::{NewTask, TaskId};
use fib_flow_ports::PortError;
use fib_flow_sql::error::db_error;
use fib_flow_sql::rows::{
    NewAttemptRow, NewEventRow, TaskRow, TaskValues, check_new_tasks, created_event,
};
use fib_flow_sql::schema::fib_flow_task_attempts as a;
use fib_flow_sql::schema::fib_flow_task_events as e;
use fib_flow_sql::schema::fib_flow_tasks as t;
use fib_flow_sql::write_plan::{BatchWrite, RowWrite, write_each};
use fib_flow_sql::{CHUNK, Connection, RowByRow, Statements, holds_lease, queries};

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

    async fn lock_tasks(conn: &mut Conn, ids: &[i64]) -> QueryResult<Vec<TaskRow>> {
        t::table
            .filter(t::id.eq_any(ids))
            .order(t::id.asc())
            .select(TaskRow::as_select())
            .load(conn)
            .await
    }

    async fn write_batch(conn: &mut Conn, batch: &BatchWrite) -> QueryResult<usize> {
        write_each::<Sqlite>(conn, batch).await
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
        t::table
            .filter(queries::is_pending())
            .filter(t::next_run_time.le(now))
            .filter(t::name.eq_any(names))
            .filter(holds_lease!(lease))
            .order((t::priority.desc(), t::next_run_time.asc(), t::id.asc()))
            .limit(limit)
            .select(TaskRow::as_select())
            .load(conn)
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

impl RowByRow for Sqlite {
    async fn update_row(conn: &mut Conn, write: &RowWrite) -> QueryResult<usize> {
        queries::update_row(Connection::Sqlite(conn), write).await
    }

    /// Every row in one hop to the blocking pool (SQLite statements are cheap; the hop is not).
    async fn insert_task_rows(conn: &mut Conn, rows: &[TaskValues]) -> QueryResult<Vec<i64>> {
        let rows = rows.to_vec();
        conn.spawn_blocking(move |c| insert_task_rows(c, &rows))
            .await
    }

    async fn insert_attempt_rows(conn: &mut Conn, rows: Vec<NewAttemptRow>) -> QueryResult<()> {
        conn.spawn_blocking(move |c| {
            diesel::RunQueryDsl::execute(diesel::insert_into(a::table).values(&rows), c).map(|_| ())
        })
        .await
    }
}

/// New task rows, one `INSERT … RETURNING id` each (ids in input order).
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

/// Events in one multi-row insert.
fn insert_event_rows(c: &mut SqliteConnection, rows: &[NewEventRow]) -> QueryResult<()> {
    diesel::RunQueryDsl::execute(diesel::insert_into(e::table).values(rows), c).map(|_| ())
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
