//! The statements MySQL/MariaDB says its own way: row locks (`FOR UPDATE`, `SKIP LOCKED`), no
//! RETURNING (inserted ids come from `LAST_INSERT_ID()`, one row at a time), primary-key
//! writes with `FORCE INDEX (PRIMARY)`, and batches written set-based through `JSON_TABLE`
//! (`batch.rs`).

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Unsigned};
use diesel_async::RunQueryDsl;
use fib_flow_domain::NewTask;
use fib_flow_sql::rows::{NewAttemptRow, NewEventRow, TaskRow, TaskValues};
use fib_flow_sql::schema::fib_flow_task_events as e;
use fib_flow_sql::schema::fib_flow_tasks as t;
use fib_flow_sql::write_plan::{BatchWrite, RowWrite, insert_created_each};
use fib_flow_sql::{Connection, RowByRow, Statements, holds_lease, queries};

use crate::prepared::{Bind, Prepared};
use crate::{Conn, Mysql, batch};

impl Statements for Mysql {
    type Conn = Conn;

    const BACKEND: &'static str = "mysql";

    /// A chunk of new tasks takes several statements here, so it runs in a transaction.
    const ONE_STATEMENT_INSERT: bool = false;

    fn connection(conn: &mut Conn) -> Connection<'_> {
        Connection::Mysql(conn)
    }

    async fn lock_task(conn: &mut Conn, id: i64) -> QueryResult<Option<TaskRow>> {
        lock_task(conn, id).await
    }

    async fn lock_tasks(conn: &mut Conn, ids: &[i64]) -> QueryResult<Vec<TaskRow>> {
        batch::lock_tasks(conn, ids).await
    }

    async fn write_batch(conn: &mut Conn, write: &BatchWrite) -> QueryResult<usize> {
        batch::write_batch(conn, write).await
    }

    async fn insert_created(
        conn: &mut Conn,
        tasks: &[NewTask],
        notify: bool,
    ) -> QueryResult<Vec<i64>> {
        insert_created_each::<Mysql>(conn, tasks, notify).await
    }

    async fn insert_event_row(conn: &mut Conn, row: &NewEventRow) -> QueryResult<i64> {
        insert_event_row(conn, row).await
    }

    async fn insert_event_rows(conn: &mut Conn, rows: Vec<NewEventRow>) -> QueryResult<()> {
        batch::insert_event_rows(conn, &rows).await
    }

    async fn select_claimable(
        conn: &mut Conn,
        names: &[String],
        now: i64,
        limit: i64,
        lease: Option<&str>,
    ) -> QueryResult<Vec<TaskRow>> {
        select_claimable(conn, names, now, limit, lease).await
    }

    async fn heartbeat_row(
        conn: &mut Conn,
        task_id: i64,
        attempt: i32,
        worker_id: &str,
        now: i64,
    ) -> QueryResult<usize> {
        heartbeat_row(conn, task_id, attempt, worker_id, now).await
    }

    /// MySQL has no notifications; workers poll.
    async fn notify_due(_conn: &mut Conn) -> QueryResult<()> {
        Ok(())
    }
}

impl RowByRow for Mysql {
    async fn update_row(conn: &mut Conn, write: &RowWrite) -> QueryResult<usize> {
        update_row(conn, write).await
    }

    async fn insert_task_rows(conn: &mut Conn, rows: &[TaskValues]) -> QueryResult<Vec<i64>> {
        insert_task_rows(conn, rows).await
    }

    async fn insert_attempt_rows(conn: &mut Conn, rows: Vec<NewAttemptRow>) -> QueryResult<()> {
        batch::insert_attempt_rows(conn, &rows).await
    }
}

async fn lock_task(conn: &mut Conn, id: i64) -> QueryResult<Option<TaskRow>> {
    t::table
        .find(id)
        .select(TaskRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// The first id the connection's last `INSERT` generated.
pub(crate) async fn last_insert_id(conn: &mut Conn) -> QueryResult<i64> {
    let id: u64 = Prepared::<Unsigned<BigInt>>::query("SELECT LAST_INSERT_ID()", Vec::new())
        .get_result(conn)
        .await?;
    i64::try_from(id).map_err(|_| {
        diesel::result::Error::DeserializationError(
            format!("LAST_INSERT_ID() {id} does not fit a BIGINT").into(),
        )
    })
}

/// One new task row; returns its id.
pub(crate) async fn insert_task_row(conn: &mut Conn, values: &TaskValues) -> QueryResult<i64> {
    diesel::insert_into(t::table)
        .values(values)
        .execute(conn)
        .await?;
    last_insert_id(conn).await
}

/// The distance between the ids one multi-row `INSERT` generates, if they are consecutive:
/// `innodb_autoinc_lock_mode` 0 ("traditional") and 1 ("consecutive", MariaDB's default) hold
/// the table's AUTO-INC lock to the end of an `INSERT … SELECT`, so its ids follow each other
/// `auto_increment_increment` apart; 2 ("interleaved", MySQL 8's default) does not.
async fn consecutive_id_step(conn: &mut Conn) -> QueryResult<Option<i64>> {
    use diesel::sql_types::BigInt;
    let (mode, step): (i64, i64) = Prepared::<(BigInt, BigInt)>::query(
        "SELECT CAST(@@innodb_autoinc_lock_mode AS SIGNED), \
         CAST(@@auto_increment_increment AS SIGNED)",
        Vec::new(),
    )
    .get_result(conn)
    .await?;
    Ok((mode == 0 || mode == 1).then_some(step))
}

/// One statement per chunk where the server hands it consecutive ids
/// ([`consecutive_id_step`]); otherwise row by row, since `LAST_INSERT_ID()` names only the
/// first id of a multi-row `INSERT`.
async fn insert_task_rows(conn: &mut Conn, rows: &[TaskValues]) -> QueryResult<Vec<i64>> {
    if rows.len() > 1
        && let Some(step) = consecutive_id_step(conn).await?
    {
        return batch::insert_task_rows(conn, rows, step).await;
    }
    let mut ids = Vec::with_capacity(rows.len());
    for row in rows {
        ids.push(insert_task_row(conn, row).await?);
    }
    Ok(ids)
}

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

/// One row write with raw binds: a row too large for a batch document (`batch.rs`).
pub(crate) async fn update_row(conn: &mut Conn, write: &RowWrite) -> QueryResult<usize> {
    use diesel::sql_types::{Binary, Double, Integer, Nullable, Text};
    use fib_flow_sql::schema::Json;
    let v = &write.values;
    diesel::sql_query(UPDATE_ROW)
        .bind::<Text, _>(&v.status)
        .bind::<Integer, _>(v.priority)
        .bind::<BigInt, _>(v.next_run_time)
        .bind::<Nullable<BigInt>, _>(v.last_active_time)
        .bind::<Nullable<BigInt>, _>(v.last_event_time)
        .bind::<Nullable<Text>, _>(&v.last_event_type)
        .bind::<Nullable<Json>, _>(&v.result)
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
        .bind::<Nullable<Json>, _>(&v.suspend_metadata)
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
    Prepared::statement(
        HEARTBEAT_ROW,
        vec![
            Bind::BigInt(now),
            Bind::BigInt(task_id),
            Bind::Text(worker_id),
            Bind::Integer(attempt),
            Bind::BigInt(now),
        ],
    )
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
        .filter(queries::is_pending())
        .filter(t::next_run_time.le(now))
        .filter(t::name.eq_any(names))
        .filter(holds_lease!(lease))
        .order((t::priority.desc(), t::next_run_time.asc(), t::id.asc()))
        .limit(limit)
        .select(TaskRow::as_select())
        .for_update()
        .skip_locked()
        .load(conn)
        .await
}
