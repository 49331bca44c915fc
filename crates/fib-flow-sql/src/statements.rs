//! The seam between the shared transaction logic and a backend: the statements whose SQL
//! differs per backend. A backend crate implements [`Statements`] for its connection type.

use std::future::Future;

use diesel::QueryResult;
use fib_flow_domain::NewTask;

use crate::Connection;
use crate::rows::{NewAttemptRow, NewEventRow, TaskRow, TaskValues};
use crate::write_plan::{BatchWrite, RowWrite};

/// A backend's statements that only it can say, on its connection type. Every call runs inside
/// the transaction the caller opened, except where a method says otherwise.
///
/// Implemented by a type of the backend crate (the connection types are diesel-async's), which
/// is also its [`crate::Backend`].
pub trait Statements: Send + Sync + Sized + 'static {
    /// The backend's diesel-async connection.
    type Conn: Send + 'static;

    /// The backend's name in errors and logs (`sqlite`, `postgres`, `mysql`).
    const BACKEND: &'static str;

    /// Whether [`Statements::insert_created`] writes a chunk in one statement, which is
    /// atomic by itself and so needs no transaction of its own.
    const ONE_STATEMENT_INSERT: bool;

    /// The connection, for the statements that read the same on every backend
    /// ([`crate::queries`]).
    fn connection(conn: &mut Self::Conn) -> Connection<'_>;

    /// One task row, locked for the rest of the transaction where the backend has row locks.
    fn lock_task(
        conn: &mut Self::Conn,
        id: i64,
    ) -> impl Future<Output = QueryResult<Option<TaskRow>>> + Send;

    /// A batch's task rows in ascending id order, locked in that order where the backend has
    /// row locks (the lock order that keeps two batches from deadlocking).
    fn lock_tasks(
        conn: &mut Self::Conn,
        ids: &[i64],
    ) -> impl Future<Output = QueryResult<Vec<TaskRow>>> + Send;

    /// Every write of a batch: the task rows under their guards, opened and closed attempts,
    /// events and the due notification. Returns how many task rows matched their guard.
    fn write_batch(
        conn: &mut Self::Conn,
        batch: &BatchWrite,
    ) -> impl Future<Output = QueryResult<usize>> + Send;

    /// A chunk of new tasks with their `task_created` events (and the due notification when
    /// `notify`); returns the new ids in input order.
    fn insert_created(
        conn: &mut Self::Conn,
        tasks: &[NewTask],
        notify: bool,
    ) -> impl Future<Output = QueryResult<Vec<i64>>> + Send;

    /// One event; returns its id.
    fn insert_event_row(
        conn: &mut Self::Conn,
        row: &NewEventRow,
    ) -> impl Future<Output = QueryResult<i64>> + Send;

    /// Several events at once.
    fn insert_event_rows(
        conn: &mut Self::Conn,
        rows: Vec<NewEventRow>,
    ) -> impl Future<Output = QueryResult<()>> + Send;

    /// Due pending tasks of `names` in claim order (`priority DESC, next_run_time, id`), at
    /// most `limit`, locked (skipping rows other claims hold) where the backend can. With a
    /// `lease`, only while that worker's registry row is active.
    fn select_claimable(
        conn: &mut Self::Conn,
        names: &[String],
        now: i64,
        limit: i64,
        lease: Option<&str>,
    ) -> impl Future<Output = QueryResult<Vec<TaskRow>>> + Send;

    /// Refreshes `last_active_time` of one running attempt by primary key, never moving it
    /// back; returns the rows written (0 or 1).
    fn heartbeat_row(
        conn: &mut Self::Conn,
        task_id: i64,
        attempt: i32,
        worker_id: &str,
        now: i64,
    ) -> impl Future<Output = QueryResult<usize>> + Send;

    /// Tells waiting workers that a task became due (delivered on commit), where the backend
    /// has notifications.
    fn notify_due(conn: &mut Self::Conn) -> impl Future<Output = QueryResult<()>> + Send;
}

/// The statements of a backend that writes a batch statement by statement
/// ([`crate::write_plan::write_each`]) rather than in one set-based statement.
pub trait RowByRow: Statements {
    /// One task row under its guard; returns the rows written (0 or 1).
    fn update_row(
        conn: &mut Self::Conn,
        write: &RowWrite,
    ) -> impl Future<Output = QueryResult<usize>> + Send;

    /// New task rows, one statement each or in one blocking call; returns their ids in input
    /// order.
    fn insert_task_rows(
        conn: &mut Self::Conn,
        rows: &[TaskValues],
    ) -> impl Future<Output = QueryResult<Vec<i64>>> + Send;

    /// Several attempt rows at once.
    fn insert_attempt_rows(
        conn: &mut Self::Conn,
        rows: Vec<NewAttemptRow>,
    ) -> impl Future<Output = QueryResult<()>> + Send;
}
