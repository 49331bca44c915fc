//! The statements SQLite says its own way. SQLite has no row locks: `BEGIN IMMEDIATE` already
//! excludes other writers, so "locking" reads are plain reads.
//!
//! The hot statements (a batch's reads and writes, the claim's select, inserts) run on the
//! wrapped sync connection, in one blocking call each: diesel-async's wrapper would collect
//! every statement's binds into owned buffers and rows into owned rows first. The guarded row
//! updates are prepared once per connection ([`Update`]): a SQLite statement executes in
//! microseconds, while diesel prepares every UPDATE afresh, which costs several times that.

use diesel::SqliteConnection;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
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
                // No `first()`: SQLite prepares a statement with `LIMIT ?` again whenever
                // the limit is bound anew.
                let query = t::table.find(id).select(TaskRow::as_select());
                rows.extend(diesel::RunQueryDsl::load::<TaskRow>(query, c)?);
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
            diesel::RunQueryDsl::load(query, c)
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

/// `UPDATE table SET <set> WHERE <filter>`, prepared once per connection: its SQL text is its
/// statement-cache key. diesel flags its own UPDATE as never cacheable (an update's text can
/// vary between calls of one Rust type, and diesel's key is the type), so every row write
/// would be parsed and planned again; keyed on the text, each variant gets its own entry. The
/// changeset and the filter are diesel's.
struct Update<S, F> {
    /// The table's name.
    table: &'static str,
    /// The changeset.
    set: S,
    /// The row filter.
    filter: F,
}

impl<S: QueryFragment<Dialect>, F: QueryFragment<Dialect>> QueryFragment<Dialect> for Update<S, F> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Dialect>) -> QueryResult<()> {
        out.push_sql("UPDATE ");
        out.push_identifier(self.table)?;
        out.push_sql(" SET ");
        self.set.walk_ast(out.reborrow())?;
        out.push_sql(" WHERE ");
        self.filter.walk_ast(out.reborrow())
    }
}

/// No type-based key: the statement cache then keys on the SQL text.
impl<S, F> QueryId for Update<S, F> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<S, F> diesel::RunQueryDsl<SqliteConnection> for Update<S, F> {}

/// Every write of a batch: each task row under its guard, opened attempts, closed attempts,
/// events. Returns how many task rows matched their guard.
fn write_batch(c: &mut SqliteConnection, batch: &BatchWrite) -> QueryResult<usize> {
    let mut written = 0;
    for write in &batch.rows {
        let update = Update {
            table: "fib_flow_tasks",
            set: (&write.values).as_changeset(),
            filter: t::id
                .eq(write.id)
                .and(t::status.eq(write.guard_status))
                .and(t::attempt.eq(write.guard_attempt)),
        };
        written += diesel::RunQueryDsl::execute(update, c)?;
    }
    for chunk in batch.opened.chunks(CHUNK) {
        diesel::RunQueryDsl::execute(diesel::insert_into(a::table).values(chunk), c)?;
    }
    for close in &batch.closed {
        let update = Update {
            table: "fib_flow_task_attempts",
            set: (
                a::ended_at.eq(close.ended_at),
                a::outcome.eq(&close.outcome),
                a::error.eq(&close.error),
                a::timeout_flag.eq(close.timeout_flag),
            )
                .as_changeset(),
            filter: a::task_id
                .eq(close.task_id)
                .and(a::attempt.eq(close.attempt))
                .and(a::ended_at.is_null()),
        };
        diesel::RunQueryDsl::execute(update, c)?;
    }
    insert_event_rows(c, &batch.events)?;
    Ok(written)
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

/// Events, a multi-row `INSERT` per chunk (diesel caches no insert of this row type, so one
/// statement to prepare per chunk beats one per row).
fn insert_event_rows(c: &mut SqliteConnection, rows: &[NewEventRow]) -> QueryResult<()> {
    for chunk in rows.chunks(CHUNK) {
        diesel::RunQueryDsl::execute(diesel::insert_into(e::table).values(chunk), c)?;
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use diesel::Connection as _;
    use diesel::connection::InstrumentationEvent;
    use diesel_migrations::MigrationHarness;
    use fib_flow_domain::{RetryBackoff, TaskType};
    use fib_flow_sql::write_plan::RowWrite;

    use super::*;

    fn new_task() -> NewTask {
        let at = chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap_or_default();
        NewTask {
            name: "job".to_owned(),
            task_type: TaskType::Async,
            priority: 0,
            payload: serde_json::json!({}),
            tag: None,
            next_run_time: at,
            timeout: Some(Duration::from_secs(60)),
            max_retries: 3,
            retry_interval: Duration::ZERO,
            retry_backoff: RetryBackoff::Fixed,
            cron_expr: None,
            timezone: None,
            root_id: None,
            parent_id: None,
            parent_round: None,
            created_at: at,
        }
    }

    /// A batch claiming task `id` (pending, attempt 0 → running, attempt 1), with one event.
    fn claim_of(task: &NewTask, id: i64) -> BatchWrite {
        let mut values = TaskValues::from_new(task);
        values.status = "running".to_owned();
        values.attempt = 1;
        BatchWrite {
            rows: vec![RowWrite {
                id,
                guard_status: "pending",
                guard_attempt: 0,
                values,
            }],
            events: vec![created_event(task, TaskId(id))],
            ..BatchWrite::default()
        }
    }

    #[test]
    fn a_batch_prepares_its_row_update_once_per_connection() {
        let mut c = SqliteConnection::establish(":memory:").expect("open");
        c.run_pending_migrations(crate::MIGRATIONS)
            .expect("migrate");
        let task = new_task();
        let ids = insert_created(&mut c, &[task.clone(), task.clone()]).expect("insert");
        let prepared = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = Arc::clone(&prepared);
        c.set_instrumentation(move |event: InstrumentationEvent<'_>| {
            if let InstrumentationEvent::CacheQuery { sql, .. } = event {
                seen.lock().expect("not poisoned").push(sql.to_owned());
            }
        });

        assert_eq!(write_batch(&mut c, &claim_of(&task, ids[0])), Ok(1));
        let first = prepared.lock().expect("not poisoned").len();
        assert_eq!(first, 1, "the row update is cached");
        assert_eq!(write_batch(&mut c, &claim_of(&task, ids[1])), Ok(1));
        assert_eq!(
            prepared.lock().expect("not poisoned").len(),
            first,
            "a second batch of the same shape reuses every statement"
        );
    }
}
