//! The statements SQLite says its own way. SQLite has no row locks: `BEGIN IMMEDIATE` already
//! excludes other writers, so "locking" reads are plain reads. Multi-row inserts run on the
//! wrapped sync connection: diesel's single-statement SQLite batch insert is only wired up for
//! the sync `SqliteConnection`.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use fib_flow_domain::NewTask;
use fib_flow_sql::rows::{NewAttemptRow, NewEventRow, TaskRow, TaskValues};
use fib_flow_sql::schema::fib_flow_task_attempts as a;
use fib_flow_sql::schema::fib_flow_task_events as e;
use fib_flow_sql::schema::fib_flow_tasks as t;
use fib_flow_sql::write_plan::{BatchWrite, RowWrite, insert_created_each, write_each};
use fib_flow_sql::{Connection, RowByRow, Statements, holds_lease, queries};

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

    async fn insert_created(
        conn: &mut Conn,
        tasks: &[NewTask],
        notify: bool,
    ) -> QueryResult<Vec<i64>> {
        insert_created_each::<Sqlite>(conn, tasks, notify).await
    }

    async fn insert_event_row(conn: &mut Conn, row: &NewEventRow) -> QueryResult<i64> {
        diesel::insert_into(e::table)
            .values(row)
            .returning(e::id)
            .get_result(conn)
            .await
    }

    async fn insert_event_rows(conn: &mut Conn, rows: Vec<NewEventRow>) -> QueryResult<()> {
        conn.spawn_blocking(move |c| {
            diesel::RunQueryDsl::execute(diesel::insert_into(e::table).values(&rows), c).map(|_| ())
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

    async fn insert_attempt_rows(conn: &mut Conn, rows: Vec<NewAttemptRow>) -> QueryResult<()> {
        conn.spawn_blocking(move |c| {
            diesel::RunQueryDsl::execute(diesel::insert_into(a::table).values(&rows), c).map(|_| ())
        })
        .await
    }
}
