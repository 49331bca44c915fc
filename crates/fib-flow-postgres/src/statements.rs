//! The statements PostgreSQL says its own way: row locks (`FOR UPDATE`, `SKIP LOCKED`), a
//! batch's writes and a chunk of new tasks each in one statement over `unnest`ed arrays (fixed
//! text, so prepared once per connection whatever the size), and NOTIFY.

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel_async::{AsyncConnectionCore, RunQueryDsl};
use fib_flow_domain::NewTask;
use fib_flow_sql::prepared::keep_prepared;
use fib_flow_sql::rows::{NewEventRow, TaskRow, TaskValues};
use fib_flow_sql::schema::Json;
use fib_flow_sql::schema::fib_flow_task_events as e;
use fib_flow_sql::schema::fib_flow_tasks as t;
use fib_flow_sql::write_plan::BatchWrite;
use fib_flow_sql::{Connection, Statements, holds_lease, queries};

use crate::{CHANNEL, Conn, Postgres};

impl Statements for Postgres {
    type Conn = Conn;

    const BACKEND: &'static str = "postgres";

    /// `insert_created` writes a chunk of tasks, their events and the NOTIFY in one statement.
    const ONE_STATEMENT_INSERT: bool = true;

    fn connection(conn: &mut Conn) -> Connection<'_> {
        Connection::Postgres(conn)
    }

    async fn lock_task(conn: &mut Conn, id: i64) -> QueryResult<Option<TaskRow>> {
        lock_task(conn, id).await
    }

    async fn lock_tasks(conn: &mut Conn, ids: &[i64]) -> QueryResult<Vec<TaskRow>> {
        lock_tasks(conn, ids).await
    }

    async fn write_batch(conn: &mut Conn, batch: &BatchWrite) -> QueryResult<usize> {
        write_batch(conn, batch).await
    }

    async fn insert_created(
        conn: &mut Conn,
        tasks: &[NewTask],
        notify: bool,
    ) -> QueryResult<Vec<i64>> {
        insert_created(conn, tasks, notify).await
    }

    async fn insert_event_row(conn: &mut Conn, row: &NewEventRow) -> QueryResult<i64> {
        insert_event_row(conn, row).await
    }

    async fn insert_event_rows(conn: &mut Conn, rows: Vec<NewEventRow>) -> QueryResult<()> {
        insert_event_rows(conn, rows).await
    }

    async fn select_claimable(
        conn: &mut Conn,
        names: &[String],
        now: i64,
        limit: i64,
        lease: Option<&str>,
    ) -> QueryResult<Vec<TaskRow>> {
        keep_prepared(diesel::sql_query(SET_CLAIM_PLAN))
            .execute(conn)
            .await?;
        select_claimable(conn, names, now, limit, lease).await
    }

    async fn heartbeat_row(
        conn: &mut Conn,
        task_id: i64,
        attempt: i32,
        worker_id: &str,
        now: i64,
    ) -> QueryResult<usize> {
        queries::heartbeat_row(Connection::Postgres(conn), task_id, attempt, worker_id, now).await
    }

    async fn notify_due(conn: &mut Conn) -> QueryResult<()> {
        notify_due(conn).await
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

/// The rows of a batch, locked `FOR UPDATE` in ascending id order (`id = ANY($1)`: one
/// prepared shape whatever the batch size). Generic over the connection so that a shared
/// reference can pipeline it (see `pipeline.rs`).
pub(crate) async fn lock_tasks<C>(conn: &mut C, ids: &[i64]) -> QueryResult<Vec<TaskRow>>
where
    C: AsyncConnectionCore<Backend = Pg> + Send,
{
    t::table
        .filter(t::id.eq_any(ids))
        .order(t::id.asc())
        .select(TaskRow::as_select())
        .for_update()
        .load(conn)
        .await
}

/// A batch's writes as one statement: the task rows (joined on the primary key, guarded by
/// the status and attempt they were read with), opened attempts, closed attempts, events and
/// the due notification, each from `unnest`ed arrays. Fixed text, so prepared once per
/// connection whatever the batch size; one round trip instead of one per statement.
const WRITE_BATCH: &str = "WITH u AS (UPDATE fib_flow_tasks AS t SET \
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
        $7::bigint[], $8::bigint[], $9::text[], $10::jsonb[], $11::text[], $12::text[], \
        $13::text[], $14::float8[], $15::int[], $16::bigint[], $17::int[], $18::int[], \
        $19::bigint[], $20::text[], $21::int[], $22::int[], $23::text[], $24::text[], \
        $25::bigint[], $26::bigint[], $27::int[], $28::bytea[], $29::text[], $30::jsonb[]) \
    AS v(id, guard_status, guard_attempt, status, priority, next_run_time, last_active_time, \
        last_event_time, last_event_type, result, error, current_stage_name, progress_text, \
        progress_percent, stage, timeout_ms, retry_count, max_retries, retry_interval_ms, \
        retry_backoff, total_children, completed_children, child_failure_policy, worker_id, \
        start_time, deadline, attempt, context, suspend_reason, suspend_metadata) \
    WHERE t.id = v.id AND t.status = v.guard_status AND t.attempt = v.guard_attempt \
    RETURNING 1), \
  o AS (INSERT INTO fib_flow_task_attempts (task_id, attempt, worker_id, started_at, ended_at, \
        outcome, error, timeout_flag) \
    SELECT * FROM unnest($31::bigint[], $32::int[], $33::text[], $34::bigint[], $35::bigint[], \
        $36::text[], $37::text[], $38::bool[])), \
  c AS (UPDATE fib_flow_task_attempts AS a SET ended_at = w.ended_at, outcome = w.outcome, \
        error = w.error, timeout_flag = w.timeout_flag \
    FROM unnest($39::bigint[], $40::int[], $41::bigint[], $42::text[], $43::text[], $44::bool[]) \
    AS w(task_id, attempt, ended_at, outcome, error, timeout_flag) \
    WHERE a.task_id = w.task_id AND a.attempt = w.attempt AND a.ended_at IS NULL), \
  e AS (INSERT INTO fib_flow_task_events (task_id, root_id, parent_id, event_type, from_status, \
        to_status, stage, worker_id, attempt, event_time, message, metadata) \
    SELECT * FROM unnest($45::bigint[], $46::bigint[], $47::bigint[], $48::text[], $49::text[], \
        $50::text[], $51::int[], $52::text[], $53::int[], $54::bigint[], $55::text[], \
        $56::jsonb[])), \
  n AS (SELECT pg_notify('fib_flow_tasks', '') WHERE $57::boolean) \
SELECT fib_flow_guards_matched((SELECT count(*) FROM u), $58) AS written, \
    (SELECT count(*) FROM n) AS notified";

/// What `fib_flow_guards_matched` says when a guarded row did not match.
pub(crate) const GUARD_MISSED: &str = "guarded task rows matched their guard";

#[derive(QueryableByName)]
struct BatchWritten {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    written: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    notified: i64,
}

fn column<R, T>(rows: &[R], get: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(get).collect()
}

/// Returns the rows written. A guard miss fails the statement inside the database (see
/// migration 000005), so none of its writes happened: it is reported as 0 rows written, which
/// the caller turns into a stale verdict for the whole batch.
pub(crate) async fn write_batch<C>(conn: &mut C, batch: &BatchWrite) -> QueryResult<usize>
where
    C: AsyncConnectionCore<Backend = Pg> + Send,
{
    use diesel::sql_types::{Array, BigInt, Binary, Bool, Double, Integer, Nullable, Text};
    let rows = &batch.rows;
    let opened = &batch.opened;
    let closed = &batch.closed;
    let events = &batch.events;
    let written: QueryResult<BatchWritten> = keep_prepared(
        diesel::sql_query(WRITE_BATCH)
            .bind::<Array<BigInt>, _>(column(rows, |w| w.id))
            .bind::<Array<Text>, _>(column(rows, |w| w.guard_status))
            .bind::<Array<Integer>, _>(column(rows, |w| w.guard_attempt))
            .bind::<Array<Text>, _>(column(rows, |w| w.values.status.clone()))
            .bind::<Array<Integer>, _>(column(rows, |w| w.values.priority))
            .bind::<Array<BigInt>, _>(column(rows, |w| w.values.next_run_time))
            .bind::<Array<Nullable<BigInt>>, _>(column(rows, |w| w.values.last_active_time))
            .bind::<Array<Nullable<BigInt>>, _>(column(rows, |w| w.values.last_event_time))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |w| w.values.last_event_type.clone()))
            .bind::<Array<Nullable<Json>>, _>(column(rows, |w| w.values.result.clone()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |w| w.values.error.clone()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |w| w.values.current_stage_name.clone()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |w| w.values.progress_text.clone()))
            .bind::<Array<Nullable<Double>>, _>(column(rows, |w| w.values.progress_percent))
            .bind::<Array<Integer>, _>(column(rows, |w| w.values.stage))
            .bind::<Array<Nullable<BigInt>>, _>(column(rows, |w| w.values.timeout_ms))
            .bind::<Array<Integer>, _>(column(rows, |w| w.values.retry_count))
            .bind::<Array<Integer>, _>(column(rows, |w| w.values.max_retries))
            .bind::<Array<BigInt>, _>(column(rows, |w| w.values.retry_interval_ms))
            .bind::<Array<Text>, _>(column(rows, |w| w.values.retry_backoff.clone()))
            .bind::<Array<Integer>, _>(column(rows, |w| w.values.total_children))
            .bind::<Array<Integer>, _>(column(rows, |w| w.values.completed_children))
            .bind::<Array<Text>, _>(column(rows, |w| w.values.child_failure_policy.clone()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |w| w.values.worker_id.clone()))
            .bind::<Array<Nullable<BigInt>>, _>(column(rows, |w| w.values.start_time))
            .bind::<Array<Nullable<BigInt>>, _>(column(rows, |w| w.values.deadline))
            .bind::<Array<Integer>, _>(column(rows, |w| w.values.attempt))
            .bind::<Array<Nullable<Binary>>, _>(column(rows, |w| w.values.context.clone()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |w| w.values.suspend_reason.clone()))
            .bind::<Array<Nullable<Json>>, _>(column(rows, |w| w.values.suspend_metadata.clone()))
            .bind::<Array<BigInt>, _>(column(opened, |r| r.task_id))
            .bind::<Array<Integer>, _>(column(opened, |r| r.attempt))
            .bind::<Array<Nullable<Text>>, _>(column(opened, |r| r.worker_id.clone()))
            .bind::<Array<BigInt>, _>(column(opened, |r| r.started_at))
            .bind::<Array<Nullable<BigInt>>, _>(column(opened, |r| r.ended_at))
            .bind::<Array<Nullable<Text>>, _>(column(opened, |r| r.outcome.clone()))
            .bind::<Array<Nullable<Text>>, _>(column(opened, |r| r.error.clone()))
            .bind::<Array<Bool>, _>(column(opened, |r| r.timeout_flag))
            .bind::<Array<BigInt>, _>(column(closed, |c| c.task_id))
            .bind::<Array<Integer>, _>(column(closed, |c| c.attempt))
            .bind::<Array<BigInt>, _>(column(closed, |c| c.ended_at))
            .bind::<Array<Text>, _>(column(closed, |c| c.outcome.clone()))
            .bind::<Array<Nullable<Text>>, _>(column(closed, |c| c.error.clone()))
            .bind::<Array<Bool>, _>(column(closed, |c| c.timeout_flag))
            .bind::<Array<BigInt>, _>(column(events, |r| r.task_id))
            .bind::<Array<BigInt>, _>(column(events, |r| r.root_id))
            .bind::<Array<Nullable<BigInt>>, _>(column(events, |r| r.parent_id))
            .bind::<Array<Text>, _>(column(events, |r| r.event_type.clone()))
            .bind::<Array<Nullable<Text>>, _>(column(events, |r| r.from_status.clone()))
            .bind::<Array<Nullable<Text>>, _>(column(events, |r| r.to_status.clone()))
            .bind::<Array<Nullable<Integer>>, _>(column(events, |r| r.stage))
            .bind::<Array<Nullable<Text>>, _>(column(events, |r| r.worker_id.clone()))
            .bind::<Array<Nullable<Integer>>, _>(column(events, |r| r.attempt))
            .bind::<Array<BigInt>, _>(column(events, |r| r.event_time))
            .bind::<Array<Nullable<Text>>, _>(column(events, |r| r.message.clone()))
            .bind::<Array<Json>, _>(column(events, |r| r.metadata.clone()))
            .bind::<Bool, _>(batch.notify)
            .bind::<BigInt, _>(i64::try_from(rows.len()).unwrap_or(i64::MAX)),
    )
    .get_result(conn)
    .await;
    let written = match written {
        Ok(written) => written,
        Err(diesel::result::Error::DatabaseError(_, info))
            if info.message().contains(GUARD_MISSED) =>
        {
            tracing::warn!(
                backend = Postgres::BACKEND,
                error = info.message(),
                "batch write refused"
            );
            return Ok(0);
        }
        Err(error) => return Err(error),
    };
    tracing::trace!(
        backend = Postgres::BACKEND,
        rows = written.written,
        notified = written.notified,
        "batch written"
    );
    Ok(usize::try_from(written.written).unwrap_or(usize::MAX))
}

/// New tasks and their `task_created` events in one statement. The ids ascend in input
/// order (the caller's ids are returned sorted). The NOTIFY sits in a CTE that the result must
/// reference (as the `notified` column): an unreferenced one would not run.
///
/// Only the columns a new task can vary in are bound; the others are the same for every new
/// task ([`TaskValues::from_new`]) and written here as constants, which spares binding and
/// parsing 21 arrays per chunk. The test `new_task_constants_match_the_insert` holds the two
/// together. Each event is built from its inserted row, so nothing of it is bound; the test
/// `created_events_built_in_the_statement_match_the_domain` holds it to `created_event`.
const INSERT_CREATED: &str = "WITH ins AS (INSERT INTO fib_flow_tasks (name, type, status, \
    priority, payload, created_at, tag, next_run_time, last_active_time, last_event_time, \
    last_event_type, result, error, current_stage_name, progress_text, progress_percent, stage, \
    timeout_ms, retry_count, max_retries, retry_interval_ms, retry_backoff, cron_expr, timezone, \
    root_id, parent_id, parent_round, total_children, completed_children, child_failure_policy, \
    worker_id, start_time, deadline, attempt, context, suspend_reason, suspend_metadata) \
    SELECT v.name, v.type, 'pending', v.priority, v.payload, v.created_at, v.tag, \
        v.next_run_time, NULL, v.created_at, 'task_created', NULL, NULL, NULL, NULL, NULL, 0, \
        v.timeout_ms, 0, v.max_retries, v.retry_interval_ms, v.retry_backoff, v.cron_expr, \
        v.timezone, v.root_id, v.parent_id, v.parent_round, 0, 0, 'resume', NULL, NULL, NULL, 0, \
        NULL, NULL, NULL \
    FROM unnest($1::text[], $2::text[], $3::int[], $4::jsonb[], $5::bigint[], $6::text[], \
        $7::bigint[], $8::bigint[], $9::int[], $10::bigint[], $11::text[], $12::text[], \
        $13::text[], $14::bigint[], $15::bigint[], $16::int[]) \
    AS v(name, type, priority, payload, created_at, tag, next_run_time, timeout_ms, \
        max_retries, retry_interval_ms, retry_backoff, cron_expr, timezone, root_id, parent_id, \
        parent_round) \
    RETURNING id, name, type, tag, created_at, root_id, parent_id), \
  ev AS (INSERT INTO fib_flow_task_events (task_id, root_id, parent_id, event_type, \
        from_status, to_status, stage, worker_id, attempt, event_time, message, metadata) \
    SELECT id, COALESCE(root_id, id), parent_id, 'task_created', NULL, 'pending', 0, NULL, \
        NULL, created_at, 'Task ' || name || ' created', \
        jsonb_build_object('name', name, 'type', type, 'tag', tag) \
    FROM ins), \
  nt AS (SELECT pg_notify('fib_flow_tasks', '') WHERE $17::boolean) \
SELECT id, (SELECT count(*) FROM nt) AS notified FROM ins ORDER BY id";

/// New tasks, their `task_created` events and the due notification in one round trip.
async fn insert_created(conn: &mut Conn, tasks: &[NewTask], notify: bool) -> QueryResult<Vec<i64>> {
    use diesel::sql_types::{Array, BigInt, Bool, Integer, Nullable, Text};
    let rows: Vec<TaskValues> = tasks.iter().map(TaskValues::from_new).collect();
    let rows = &rows[..];
    let inserted: Vec<InsertedId> = keep_prepared(
        diesel::sql_query(INSERT_CREATED)
            .bind::<Array<Text>, _>(column(rows, |r| r.name.clone()))
            .bind::<Array<Text>, _>(column(rows, |r| r.task_type.clone()))
            .bind::<Array<Integer>, _>(column(rows, |r| r.priority))
            .bind::<Array<Json>, _>(column(rows, |r| r.payload.clone()))
            .bind::<Array<BigInt>, _>(column(rows, |r| r.created_at))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.tag.clone()))
            .bind::<Array<BigInt>, _>(column(rows, |r| r.next_run_time))
            .bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.timeout_ms))
            .bind::<Array<Integer>, _>(column(rows, |r| r.max_retries))
            .bind::<Array<BigInt>, _>(column(rows, |r| r.retry_interval_ms))
            .bind::<Array<Text>, _>(column(rows, |r| r.retry_backoff.clone()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.cron_expr.clone()))
            .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.timezone.clone()))
            .bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.root_id))
            .bind::<Array<Nullable<BigInt>>, _>(column(rows, |r| r.parent_id))
            .bind::<Array<Nullable<Integer>>, _>(column(rows, |r| r.parent_round))
            .bind::<Bool, _>(notify),
    )
    .load(conn)
    .await?;
    Ok(inserted.into_iter().map(|row| row.id).collect())
}

#[derive(QueryableByName)]
struct InsertedId {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
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
        $6::text[], $7::int[], $8::text[], $9::int[], $10::bigint[], $11::text[], $12::jsonb[])";

/// One fixed-shape statement whatever the row count (a VALUES list would be parsed anew for
/// every count).
async fn insert_event_rows(conn: &mut Conn, rows: Vec<NewEventRow>) -> QueryResult<()> {
    use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text};
    keep_prepared(
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
            .bind::<Array<Json>, _>(column(&rows, |r| r.metadata.clone())),
    )
    .execute(conn)
    .await
    .map(|_| ())
}

/// Makes the planner walk the claim index (see [`select_claimable`]), keeps JIT out of the
/// claim and plans the claim once per connection. With sorting discouraged, a statement that
/// must still sort a few rows (the one-statement claim orders its events) is costed past
/// `jit_above_cost`, and compiling it took 450 ms of a 0.5 ms claim. The claim stays prepared
/// ([`keep_prepared`]); its generic plan has the same shape whatever the statistics (the
/// claim index in order, `LockRows`, `Limit`, the primary key) and takes 0.02 ms to fetch
/// where planning it took 0.25–1.0 ms. All three settings last until COMMIT.
pub(crate) const SET_CLAIM_PLAN: &str = "SELECT set_config('enable_sort', 'off', true), \
    set_config('jit', 'off', true), set_config('plan_cache_mode', 'force_generic_plan', true)";

/// Plans an outcome batch's statements for the rows at hand, every time. They stay prepared
/// (no parsing), but a plan kept for the connection was made from the statistics of its
/// first calls: right after a fresh queue starts draining those say the attempt table is
/// empty and few tasks run, and the kept plan then scanned every attempt row for each
/// completion (8.6 ms a batch after 10,000 tasks, against 0.3 ms). Lasts until COMMIT.
pub(crate) const SET_WRITE_PLAN: &str = "SELECT set_config('plan_cache_mode', \
    'force_custom_plan', true), set_config('jit', 'off', true)";

/// The claim must walk `idx_tasks_claim` in order and stop after `limit` rows, whatever the
/// statistics say. Right after a bulk enqueue into a young table they say the queue is nearly
/// empty, and the planner then fetches every due row and sorts them (40 ms per claim at
/// 100,000 queued instead of 0.05 ms).
///
/// Expects [`SET_CLAIM_PLAN`] to have run in the transaction; the pipelined claim
/// sends it together with BEGIN and this select.
pub(crate) async fn select_claimable<C>(
    conn: &mut C,
    names: &[String],
    now: i64,
    limit: i64,
    lease: Option<&str>,
) -> QueryResult<Vec<TaskRow>>
where
    C: AsyncConnectionCore<Backend = Pg> + Send,
{
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

/// Queued by PostgreSQL until the transaction commits; dropped on rollback.
async fn notify_due(conn: &mut Conn) -> QueryResult<()> {
    diesel::sql_query(format!("SELECT pg_notify('{CHANNEL}', '')"))
        .execute(conn)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fib_flow_domain::time::from_millis;
    use fib_flow_domain::{RetryBackoff, TaskId, TaskType};
    use serde_json::json;

    use super::*;

    /// What `INSERT_CREATED` writes as constants must be what `TaskValues::from_new` gives
    /// every new task, whatever the task: a change to either must change both.
    #[test]
    fn new_task_constants_match_the_insert() {
        let created = from_millis(1_700_000_000_123);
        let varied = [
            NewTask {
                name: "plain".into(),
                task_type: TaskType::Async,
                priority: 3,
                payload: json!({"a": 1}),
                tag: Some("t".into()),
                next_run_time: from_millis(1_700_000_009_000),
                timeout: Some(Duration::from_secs(5)),
                max_retries: 4,
                retry_interval: Duration::from_millis(250),
                retry_backoff: RetryBackoff::Exponential,
                cron_expr: None,
                timezone: None,
                root_id: Some(TaskId(7)),
                parent_id: Some(TaskId(8)),
                parent_round: Some(2),
                created_at: created,
            },
            NewTask {
                name: "cron".into(),
                task_type: TaskType::Cron,
                priority: 0,
                payload: json!(null),
                tag: None,
                next_run_time: created,
                timeout: None,
                max_retries: 0,
                retry_interval: Duration::ZERO,
                retry_backoff: RetryBackoff::Fixed,
                cron_expr: Some("*/5 * * * *".into()),
                timezone: Some("Europe/Paris".into()),
                root_id: None,
                parent_id: None,
                parent_round: None,
                created_at: created,
            },
        ];
        for task in &varied {
            let values = TaskValues::from_new(task);
            let constants = (
                values.status.as_str(),
                values.last_active_time,
                values.last_event_time,
                values.last_event_type.as_deref(),
                values.result.is_none(),
                values.error.is_none(),
                values.current_stage_name.is_none(),
                values.progress_text.is_none(),
                values.progress_percent.is_none(),
                values.stage,
                values.retry_count,
            );
            assert_eq!(
                constants,
                (
                    "pending",
                    None,
                    Some(values.created_at),
                    Some("task_created"),
                    true,
                    true,
                    true,
                    true,
                    true,
                    0,
                    0
                ),
                "{task:?}"
            );
            let more_constants = (
                values.total_children,
                values.completed_children,
                values.child_failure_policy.as_str(),
                values.worker_id.is_none(),
                values.start_time.is_none(),
                values.deadline.is_none(),
                values.attempt,
                values.context.is_none(),
                values.suspend_reason.is_none(),
                values.suspend_metadata.is_none(),
            );
            assert_eq!(
                more_constants,
                (0, 0, "resume", true, true, true, 0, true, true, true),
                "{task:?}"
            );
        }
    }

    /// The `task_created` events the statement builds from the inserted rows are the ones
    /// `created_event` builds for the other backends, field for field.
    #[tokio::test]
    async fn created_events_built_in_the_statement_match_the_domain() {
        use diesel::QueryDsl;
        use diesel_async::AsyncConnection;
        use fib_flow_sql::rows::{EventRow, created_event};

        use crate::pipeline::tests::{empty_database, new_task};

        let Some((db, store)) =
            empty_database("created_events_built_in_the_statement_match_the_domain").await
        else {
            return;
        };
        let parent = store
            .insert_tasks(vec![new_task("parent")])
            .await
            .expect("parent")[0];
        let tasks = vec![
            NewTask {
                tag: Some("tagged".into()),
                ..new_task("with a tag")
            },
            NewTask {
                root_id: Some(parent),
                parent_id: Some(parent),
                parent_round: Some(0),
                ..new_task("child")
            },
            NewTask {
                task_type: TaskType::Cron,
                cron_expr: Some("*/5 * * * *".into()),
                ..new_task("o'clock \"quoted\" ünïcode")
            },
        ];
        let ids = store.insert_tasks(tasks.clone()).await.expect("insert");
        store.close().await;
        let mut conn = Conn::establish(db.url()).await.expect("raw connection");
        let events: Vec<EventRow> = e::table
            .filter(e::task_id.eq_any(ids.iter().map(|id| id.0)))
            .order(e::id)
            .select(EventRow::as_select())
            .load(&mut conn)
            .await
            .expect("events");
        assert_eq!(events.len(), tasks.len());
        for ((task, id), event) in tasks.iter().zip(&ids).zip(&events) {
            let expected = created_event(task, *id);
            let metadata = |text: &fib_flow_sql::json_column::JsonText| {
                serde_json::from_str::<serde_json::Value>(text.as_str()).expect("json")
            };
            assert_eq!(
                (
                    event.task_id,
                    event.root_id,
                    event.parent_id,
                    event.event_type.as_str(),
                    event.from_status.as_deref(),
                    event.to_status.as_deref(),
                    event.stage,
                    event.worker_id.as_deref(),
                    event.attempt,
                    event.event_time,
                    event.message.as_deref(),
                    metadata(&event.metadata),
                ),
                (
                    expected.task_id,
                    expected.root_id,
                    expected.parent_id,
                    expected.event_type.as_str(),
                    expected.from_status.as_deref(),
                    expected.to_status.as_deref(),
                    expected.stage,
                    expected.worker_id.as_deref(),
                    expected.attempt,
                    expected.event_time,
                    expected.message.as_deref(),
                    metadata(&expected.metadata),
                ),
                "{task:?}"
            );
        }
        drop(conn);
        db.destroy().await.expect("drop database");
    }
}
