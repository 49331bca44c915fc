//! The statements whose SQL is the same on every backend, each written once in diesel's DSL
//! and run on whichever backend [`Connection`] carries.
//!
//! The hot ones spell `status = 'pending'` / `'running'` as literals ([`is_pending`],
//! [`is_running`]): a partial index (`WHERE status = 'pending'`) is only usable when the planner
//! sees the value at prepare time.

use diesel::dsl::{self, count_star, exists, not};
use diesel::prelude::*;
use diesel::query_dsl::methods;
use diesel::sql_types::{BigInt, Bool, Nullable};
use diesel_async::RunQueryDsl;
use fib_flow_domain::query::{
    AttemptQuery, DeleteFilter, EventQuery, Order, PageBounds, TaskQuery,
};
use fib_flow_domain::time::to_millis;
use fib_flow_domain::{TaskStatus, WorkerQuery, WorkerStatus};

use crate::Connection;
use crate::connection::on_backend;
use crate::rows::{AttemptRow, ChildRow, EventRow, RecordChanges, TaskRow, WorkerRow};
use crate::schema::fib_flow_task_attempts as a;
use crate::schema::fib_flow_task_events as e;
use crate::schema::fib_flow_tasks as t;
use crate::schema::fib_flow_workers as w;
use crate::write_plan::{AttemptCloseRow, RowWrite};

diesel::define_sql_function! {
    /// `COALESCE(a, b)`: the retention clock `COALESCE(last_active_time, created_at)`.
    fn coalesce(a: Nullable<BigInt>, b: BigInt) -> BigInt;
}

/// The statuses a task ends in.
pub const SETTLED: [&str; 2] = ["completed", "permanently_failed"];

/// `fib_flow_tasks.status = 'pending'` with the status as a literal, not a bind parameter
/// (SQLite never re-plans for bound values; a PostgreSQL generic plan would not match the
/// partial index either).
pub fn is_pending() -> diesel::expression::SqlLiteral<Bool> {
    dsl::sql::<Bool>("fib_flow_tasks.status = 'pending'")
}

/// `fib_flow_tasks.status = 'running'` as a literal (see [`is_pending`]).
pub fn is_running() -> diesel::expression::SqlLiteral<Bool> {
    dsl::sql::<Bool>("fib_flow_tasks.status = 'running'")
}

/// The claim's lease fence: true when no lease is required (`None`), else only while the
/// worker's registry row is `active`. A macro because the expression's type (SQL with binds)
/// has no nameable form to return from a function.
#[macro_export]
macro_rules! holds_lease {
    ($lease:expr) => {
        diesel::dsl::sql::<diesel::sql_types::Bool>("(")
            .bind::<diesel::sql_types::Bool, _>($lease.is_none())
            .sql(
                " OR EXISTS (SELECT 1 FROM fib_flow_workers \
                 WHERE fib_flow_workers.status = 'active' AND fib_flow_workers.worker_id = ",
            )
            .bind::<diesel::sql_types::Text, _>($lease.unwrap_or_default().to_owned())
            .sql("))")
    };
}

fn limit_i64(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

// --- task rows -----------------------------------------------------------------------------

/// One task row, unlocked.
pub async fn get_task(conn: Connection<'_>, id: i64) -> QueryResult<Option<TaskRow>> {
    on_backend!(conn, |c, Db| t::table
        .find(id)
        .select(TaskRow::as_select())
        .first(c)
        .await
        .optional())
}

/// One guarded row write in diesel's DSL (the planner picks the primary key).
pub async fn update_row(conn: Connection<'_>, write: &RowWrite) -> QueryResult<usize> {
    let query = diesel::update(
        t::table
            .filter(t::id.eq(write.id))
            .filter(t::status.eq(write.guard_status))
            .filter(t::attempt.eq(write.guard_attempt)),
    )
    .set(&write.values);
    on_backend!(conn, |c, Db| query.execute(c).await)
}

/// One heartbeat in diesel's DSL (the planner picks the primary key). Two heartbeats racing
/// (the maintenance loop and a manual tick) must not move the clock back: the older one skips.
pub async fn heartbeat_row(
    conn: Connection<'_>,
    task_id: i64,
    attempt: i32,
    worker_id: &str,
    now: i64,
) -> QueryResult<usize> {
    let query = diesel::update(
        t::table
            .filter(t::id.eq(task_id))
            .filter(t::status.eq(TaskStatus::Running.as_str()))
            .filter(t::worker_id.eq(worker_id))
            .filter(t::attempt.eq(attempt))
            .filter(
                t::last_active_time
                    .is_null()
                    .or(t::last_active_time.le(now)),
            ),
    )
    .set(t::last_active_time.eq(now));
    on_backend!(conn, |c, Db| query.execute(c).await)
}

/// Closes one open attempt row.
pub async fn close_attempt(conn: Connection<'_>, close: &AttemptCloseRow) -> QueryResult<usize> {
    let query = diesel::update(
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
    on_backend!(conn, |c, Db| query.execute(c).await)
}

/// Children of `parent`'s `round` that have not settled yet.
pub async fn count_outstanding(conn: Connection<'_>, parent: i64, round: i32) -> QueryResult<i64> {
    let query = t::table
        .filter(t::parent_id.eq(parent))
        .filter(t::parent_round.eq(round))
        .filter(t::status.ne_all(SETTLED))
        .count();
    on_backend!(conn, |c, Db| query.get_result(c).await)
}

/// Writes a handler's progress record to its running attempt's row; returns the rows written.
pub async fn record_progress(
    conn: Connection<'_>,
    task_id: i64,
    attempt: i32,
    changes: &RecordChanges,
) -> QueryResult<usize> {
    let query = diesel::update(
        t::table
            .filter(t::id.eq(task_id))
            .filter(t::status.eq(TaskStatus::Running.as_str()))
            .filter(t::attempt.eq(attempt)),
    )
    .set(changes);
    on_backend!(conn, |c, Db| query.execute(c).await)
}

/// Running attempts past their deadline, or silent since `cutoff` with no active worker
/// claiming them: `(id, attempt, deadline)` by id.
pub async fn expired(
    conn: Connection<'_>,
    now: i64,
    cutoff: i64,
    limit: u32,
) -> QueryResult<Vec<(i64, i32, Option<i64>)>> {
    let query = t::table
        .filter(is_running())
        .filter(t::deadline.lt(now).or(t::last_active_time.lt(cutoff).and(
            // An active worker's attempts are the registry's business: the worker heartbeats
            // them and recovers any it lost, and once its lease expires a reaper recovers them
            // without charging a retry. The sweep takes over only when no active row claims
            // them (an unregistered or stopped worker, or a reap without recovery).
            // Correlated, so SQL.
            dsl::sql::<Bool>(
                "NOT EXISTS (SELECT 1 FROM fib_flow_workers \
                 WHERE fib_flow_workers.worker_id = fib_flow_tasks.worker_id \
                 AND fib_flow_workers.status = 'active')",
            ),
        )))
        .order(t::id.asc())
        .limit(i64::from(limit))
        .select((t::id, t::attempt, t::deadline));
    on_backend!(conn, |c, Db| query.load(c).await)
}

/// The unfinished task holding `unique_key`, if any (the statuses as literals, so the partial
/// unique index serves the lookup).
pub async fn live_unique(conn: Connection<'_>, unique_key: &str) -> QueryResult<Option<i64>> {
    let query = t::table
        .filter(t::unique_key.eq(unique_key))
        .filter(dsl::sql::<Bool>(
            "fib_flow_tasks.status NOT IN ('completed', 'permanently_failed')",
        ))
        .select(t::id);
    on_backend!(conn, |c, Db| query.first::<i64>(c).await.optional())
}

/// Sets the unique key of a task just inserted.
pub async fn set_unique_key(conn: Connection<'_>, id: i64, unique_key: &str) -> QueryResult<()> {
    let query = diesel::update(t::table.find(id)).set(t::unique_key.eq(unique_key));
    on_backend!(conn, |c, Db| query.execute(c).await).map(|_| ())
}

/// The ids of the tasks with `cron_key` (at most one: the key is unique).
pub async fn cron_task_ids(conn: Connection<'_>, cron_key: &str) -> QueryResult<Vec<i64>> {
    let query = t::table.filter(t::cron_key.eq(cron_key)).select(t::id);
    on_backend!(conn, |c, Db| query.load(c).await)
}

/// Sets the cron key of a task just inserted.
pub async fn set_cron_key(conn: Connection<'_>, id: i64, cron_key: &str) -> QueryResult<()> {
    let query = diesel::update(t::table.find(id)).set(t::cron_key.eq(cron_key));
    on_backend!(conn, |c, Db| query.execute(c).await).map(|_| ())
}

/// What a redefined cron schedule writes to its task row.
#[derive(Debug, Clone, PartialEq, AsChangeset)]
#[diesel(table_name = t, treat_none_as_null = true)]
pub struct CronRedefinition {
    /// The handler name.
    pub name: String,
    /// The cron expression.
    pub cron_expr: Option<String>,
    /// Its IANA zone.
    pub timezone: Option<String>,
    /// JSON payload text.
    pub payload: crate::json_column::JsonText,
    /// Priority.
    pub priority: i32,
    /// Attempt timeout (ms).
    pub timeout_ms: Option<i64>,
    /// Retries allowed.
    pub max_retries: i32,
    /// Base retry interval (ms).
    pub retry_interval_ms: i64,
    /// Backoff kind.
    pub retry_backoff: String,
    /// Tag.
    pub tag: Option<String>,
    /// Next run (ms).
    pub next_run_time: i64,
    /// The redefinition event's instant (ms).
    pub last_event_time: i64,
    /// The redefinition event's type.
    pub last_event_type: String,
}

/// Writes a cron schedule's new definition to its task row.
pub async fn redefine_cron(
    conn: Connection<'_>,
    id: i64,
    definition: &CronRedefinition,
) -> QueryResult<()> {
    let query = diesel::update(t::table.find(id)).set(definition);
    on_backend!(conn, |c, Db| query.execute(c).await).map(|_| ())
}

/// Running attempts of `worker_id` silent since `idle_before`: `(id, attempt)` by id.
pub async fn idle_attempts(
    conn: Connection<'_>,
    worker_id: &str,
    idle_before: i64,
    limit: u32,
) -> QueryResult<Vec<(i64, i32)>> {
    let query = t::table
        .filter(is_running())
        .filter(t::worker_id.eq(worker_id))
        .filter(t::last_active_time.lt(idle_before))
        .order(t::id.asc())
        .limit(i64::from(limit))
        .select((t::id, t::attempt));
    on_backend!(conn, |c, Db| query.load(c).await)
}

/// Running attempts of any of `worker_ids`: `(id, attempt)` by id.
pub async fn running_attempts_of(
    conn: Connection<'_>,
    worker_ids: &[String],
) -> QueryResult<Vec<(i64, i32)>> {
    let query = t::table
        .filter(is_running())
        .filter(t::worker_id.eq_any(worker_ids))
        .order(t::id.asc())
        .select((t::id, t::attempt));
    on_backend!(conn, |c, Db| query.load(c).await)
}

/// The settled children of `parent`'s `round`, by id.
pub async fn child_results(
    conn: Connection<'_>,
    parent: i64,
    round: i32,
) -> QueryResult<Vec<ChildRow>> {
    let query = t::table
        .filter(t::parent_id.eq(parent))
        .filter(t::parent_round.eq(round))
        .filter(t::status.eq_any(SETTLED))
        .order(t::id.asc())
        .select((t::id, t::name, t::status, t::result, t::error));
    on_backend!(conn, |c, Db| query.load(c).await)
}

/// Task counts by tag, name and status.
pub async fn task_stats(
    conn: Connection<'_>,
    tag: Option<String>,
    status: Option<TaskStatus>,
) -> QueryResult<Vec<(Option<String>, String, String, i64)>> {
    on_backend!(conn, |c, Db| {
        let mut query = t::table
            .group_by((t::tag, t::name, t::status))
            .select((t::tag, t::name, t::status, count_star()))
            .order((t::tag.asc(), t::name.asc(), t::status.asc()))
            .into_boxed::<Db>();
        if let Some(tag) = tag {
            query = query.filter(t::tag.eq(tag));
        }
        if let Some(status) = status {
            query = query.filter(t::status.eq(status.as_str()));
        }
        query.load(c).await
    })
}

/// Tasks matching `query`, by id.
pub async fn list_tasks(conn: Connection<'_>, query: &TaskQuery) -> QueryResult<Vec<TaskRow>> {
    on_backend!(conn, |c, Db| task_filter(
        t::table.into_boxed::<Db>(),
        query
    )
    .order(t::id.asc())
    .select(TaskRow::as_select())
    .load(c)
    .await)
}

/// One page of the tasks matching `query` (by creation) and how many match in all.
pub async fn page_tasks(
    conn: Connection<'_>,
    query: &TaskQuery,
    page: PageBounds,
) -> QueryResult<(Vec<TaskRow>, i64)> {
    on_backend!(conn, |c, Db| {
        let total: i64 = task_filter(t::table.into_boxed::<Db>(), query)
            .count()
            .get_result(c)
            .await?;
        let filtered = task_filter(t::table.into_boxed::<Db>(), query);
        let ordered = match page.order {
            Order::Asc => filtered.order((t::created_at.asc(), t::id.asc())),
            Order::Desc => filtered.order((t::created_at.desc(), t::id.desc())),
        };
        let rows = ordered
            .limit(i64::from(page.limit))
            .offset(limit_i64(page.offset))
            .select(TaskRow::as_select())
            .load(c)
            .await?;
        Ok((rows, total))
    })
}

/// `q` narrowed to the tasks matching `query`. Generic over the (boxed) query so that each
/// backend's boxed type gets the same filters; the bounds name each predicate's type.
fn task_filter<Q>(mut q: Q, query: &TaskQuery) -> Q
where
    Q: methods::FilterDsl<dsl::Eq<t::name, String>, Output = Q>
        + methods::FilterDsl<dsl::Eq<t::status, &'static str>, Output = Q>
        + methods::FilterDsl<dsl::Eq<t::task_type, &'static str>, Output = Q>
        + methods::FilterDsl<dsl::Eq<t::tag, String>, Output = Q>
        + methods::FilterDsl<dsl::Eq<t::worker_id, String>, Output = Q>
        + methods::FilterDsl<dsl::Eq<t::parent_id, i64>, Output = Q>
        + methods::FilterDsl<dsl::Eq<t::root_id, i64>, Output = Q>
        + methods::FilterDsl<WorkflowMember, Output = Q>
        + methods::FilterDsl<dsl::Eq<t::suspend_reason, String>, Output = Q>,
{
    if let Some(v) = &query.name {
        q = methods::FilterDsl::filter(q, t::name.eq(v.clone()));
    }
    if let Some(v) = query.status {
        q = methods::FilterDsl::filter(q, t::status.eq(v.as_str()));
    }
    if let Some(v) = query.task_type {
        q = methods::FilterDsl::filter(q, t::task_type.eq(v.as_str()));
    }
    if let Some(v) = &query.tag {
        q = methods::FilterDsl::filter(q, t::tag.eq(v.clone()));
    }
    if let Some(v) = &query.worker_id {
        q = methods::FilterDsl::filter(q, t::worker_id.eq(v.clone()));
    }
    if let Some(v) = query.parent_id {
        q = methods::FilterDsl::filter(q, t::parent_id.eq(v.0));
    }
    if let Some(v) = query.root_id {
        q = methods::FilterDsl::filter(q, t::root_id.eq(v.0));
    }
    if let Some(v) = query.workflow_root_id {
        q = methods::FilterDsl::filter(q, workflow_member(v.0));
    }
    if let Some(v) = &query.suspend_reason {
        q = methods::FilterDsl::filter(q, t::suspend_reason.eq(v.clone()));
    }
    q
}

/// A task of the workflow rooted at a task: the root itself or a task whose root it is.
type WorkflowMember = dsl::Or<dsl::Eq<t::id, i64>, dsl::AssumeNotNull<dsl::Eq<t::root_id, i64>>>;

fn workflow_member(root: i64) -> WorkflowMember {
    t::id.eq(root).or(t::root_id.eq(root).assume_not_null())
}

/// The ids of the tasks matching a delete filter.
pub async fn filtered_task_ids(
    conn: Connection<'_>,
    filter: &DeleteFilter,
) -> QueryResult<Vec<i64>> {
    on_backend!(conn, |c, Db| {
        let mut query = t::table.select(t::id).into_boxed::<Db>();
        if let Some(tag) = &filter.tag {
            query = query.filter(t::tag.eq(tag.clone()));
        }
        if let Some(status) = filter.status {
            query = query.filter(t::status.eq(status.as_str()));
        }
        if let Some(name) = &filter.name {
            query = query.filter(t::name.eq(name.clone()));
        }
        if !filter.ids.is_empty() {
            query =
                query.filter(t::id.eq_any(filter.ids.iter().map(|id| id.0).collect::<Vec<_>>()));
        }
        query.load(c).await
    })
}

/// Deletes tasks by id with their events and attempts: `(events, attempts, tasks)` deleted.
pub async fn delete_tasks(conn: Connection<'_>, ids: &[i64]) -> QueryResult<(u64, u64, u64)> {
    let events = diesel::delete(e::table.filter(e::task_id.eq_any(ids)));
    let attempts = diesel::delete(a::table.filter(a::task_id.eq_any(ids)));
    let tasks = diesel::delete(t::table.filter(t::id.eq_any(ids)));
    on_backend!(conn, |c, Db| {
        let events = events.execute(c).await?;
        let attempts = attempts.execute(c).await?;
        let tasks = tasks.execute(c).await?;
        Ok((events as u64, attempts as u64, tasks as u64))
    })
}

// --- audit reads ---------------------------------------------------------------------------

/// One page of the events matching `query` (by event time) and how many match in all.
pub async fn page_events(
    conn: Connection<'_>,
    query: &EventQuery,
    page: PageBounds,
) -> QueryResult<(Vec<EventRow>, i64)> {
    on_backend!(conn, |c, Db| {
        let total: i64 = event_filter(e::table.into_boxed::<Db>(), query)
            .count()
            .get_result(c)
            .await?;
        let filtered = event_filter(e::table.into_boxed::<Db>(), query);
        let ordered = match page.order {
            Order::Asc => filtered.order((e::event_time.asc(), e::id.asc())),
            Order::Desc => filtered.order((e::event_time.desc(), e::id.desc())),
        };
        let rows = ordered
            .limit(i64::from(page.limit))
            .offset(limit_i64(page.offset))
            .select(EventRow::as_select())
            .load(c)
            .await?;
        Ok((rows, total))
    })
}

/// `q` narrowed to the events matching `query` (generic like [`task_filter`]).
fn event_filter<Q>(mut q: Q, query: &EventQuery) -> Q
where
    Q: methods::FilterDsl<dsl::Eq<e::task_id, i64>, Output = Q>
        + methods::FilterDsl<dsl::Eq<e::root_id, i64>, Output = Q>
        + methods::FilterDsl<dsl::Eq<e::parent_id, i64>, Output = Q>
        + methods::FilterDsl<dsl::Eq<e::worker_id, String>, Output = Q>
        + methods::FilterDsl<dsl::Eq<e::event_type, &'static str>, Output = Q>
        + methods::FilterDsl<dsl::EqAny<e::event_type, Vec<&'static str>>, Output = Q>
        + methods::FilterDsl<dsl::Eq<e::attempt, i32>, Output = Q>
        + methods::FilterDsl<dsl::Eq<e::stage, i32>, Output = Q>
        + methods::FilterDsl<dsl::GtEq<e::event_time, i64>, Output = Q>
        + methods::FilterDsl<dsl::LtEq<e::event_time, i64>, Output = Q>,
{
    if let Some(v) = query.task_id {
        q = methods::FilterDsl::filter(q, e::task_id.eq(v.0));
    }
    if let Some(v) = query.root_id {
        q = methods::FilterDsl::filter(q, e::root_id.eq(v.0));
    }
    if let Some(v) = query.parent_id {
        q = methods::FilterDsl::filter(q, e::parent_id.eq(v.0));
    }
    if let Some(v) = &query.worker_id {
        q = methods::FilterDsl::filter(q, e::worker_id.eq(v.clone()));
    }
    if let Some(v) = query.event_type {
        q = methods::FilterDsl::filter(q, e::event_type.eq(v.as_str()));
    }
    if !query.event_types.is_empty() {
        let types: Vec<&'static str> = query.event_types.iter().map(|t| t.as_str()).collect();
        q = methods::FilterDsl::filter(q, e::event_type.eq_any(types));
    }
    if let Some(v) = query.attempt {
        q = methods::FilterDsl::filter(q, e::attempt.eq(v));
    }
    if let Some(v) = query.stage {
        q = methods::FilterDsl::filter(q, e::stage.eq(v));
    }
    if let Some(v) = query.started_after {
        q = methods::FilterDsl::filter(q, e::event_time.ge(to_millis(v)));
    }
    if let Some(v) = query.started_before {
        q = methods::FilterDsl::filter(q, e::event_time.le(to_millis(v)));
    }
    q
}

/// One page of the attempts matching `query` and how many match in all. One task's attempts
/// come by attempt number; a workflow's (or anything else) by start time.
pub async fn page_attempts(
    conn: Connection<'_>,
    query: &AttemptQuery,
    page: PageBounds,
) -> QueryResult<(Vec<AttemptRow>, i64)> {
    let by_attempt = query.task_id.is_some() && query.workflow_root_id.is_none();
    on_backend!(conn, |c, Db| {
        let total: i64 = attempt_filter(a::table.into_boxed::<Db>(), query)
            .count()
            .get_result(c)
            .await?;
        let filtered = attempt_filter(a::table.into_boxed::<Db>(), query);
        let ordered = match (by_attempt, page.order) {
            (true, Order::Asc) => filtered.order((a::attempt.asc(), a::id.asc())),
            (true, Order::Desc) => filtered.order((a::attempt.desc(), a::id.desc())),
            (false, Order::Asc) => filtered.order((a::started_at.asc(), a::id.asc())),
            (false, Order::Desc) => filtered.order((a::started_at.desc(), a::id.desc())),
        };
        let rows = ordered
            .limit(i64::from(page.limit))
            .offset(limit_i64(page.offset))
            .select(AttemptRow::as_select())
            .load(c)
            .await?;
        Ok((rows, total))
    })
}

/// The attempts of a workflow's tasks.
type InWorkflow = dsl::EqAny<a::task_id, dsl::Select<dsl::Filter<t::table, WorkflowMember>, t::id>>;

/// `q` narrowed to the attempts matching `query` (generic like [`task_filter`]).
fn attempt_filter<Q>(mut q: Q, query: &AttemptQuery) -> Q
where
    Q: methods::FilterDsl<dsl::Eq<a::task_id, i64>, Output = Q>
        + methods::FilterDsl<InWorkflow, Output = Q>
        + methods::FilterDsl<dsl::Eq<a::worker_id, String>, Output = Q>
        + methods::FilterDsl<dsl::Eq<a::outcome, &'static str>, Output = Q>
        + methods::FilterDsl<dsl::GtEq<a::started_at, i64>, Output = Q>
        + methods::FilterDsl<dsl::LtEq<a::started_at, i64>, Output = Q>
        + methods::FilterDsl<dsl::GtEq<a::ended_at, i64>, Output = Q>
        + methods::FilterDsl<dsl::LtEq<a::ended_at, i64>, Output = Q>
        + methods::FilterDsl<dsl::IsNull<a::ended_at>, Output = Q>,
{
    if let Some(v) = query.task_id {
        q = methods::FilterDsl::filter(q, a::task_id.eq(v.0));
    }
    if let Some(v) = query.workflow_root_id {
        let members = t::table.filter(workflow_member(v.0)).select(t::id);
        q = methods::FilterDsl::filter(q, a::task_id.eq_any(members));
    }
    if let Some(v) = &query.worker_id {
        q = methods::FilterDsl::filter(q, a::worker_id.eq(v.clone()));
    }
    if let Some(v) = query.outcome {
        q = methods::FilterDsl::filter(q, a::outcome.eq(v.as_str()));
    }
    if let Some(v) = query.started_after {
        q = methods::FilterDsl::filter(q, a::started_at.ge(to_millis(v)));
    }
    if let Some(v) = query.started_before {
        q = methods::FilterDsl::filter(q, a::started_at.le(to_millis(v)));
    }
    if let Some(v) = query.ended_after {
        q = methods::FilterDsl::filter(q, a::ended_at.ge(to_millis(v)));
    }
    if let Some(v) = query.ended_before {
        q = methods::FilterDsl::filter(q, a::ended_at.le(to_millis(v)));
    }
    if query.open_only {
        q = methods::FilterDsl::filter(q, a::ended_at.is_null());
    }
    q
}

// --- retention -----------------------------------------------------------------------------

/// Roots (`root_id IS NULL`) that are eligible and have no ineligible descendant, oldest
/// retention clock first.
pub async fn purgeable_roots(
    conn: Connection<'_>,
    statuses: &[&'static str],
    cutoff: i64,
    batch: i64,
) -> QueryResult<Vec<i64>> {
    let d = diesel::alias!(crate::schema::fib_flow_tasks as d);
    let query = t::table
        .filter(t::root_id.is_null())
        .filter(t::status.eq_any(statuses.to_vec()))
        .filter(coalesce(t::last_active_time, t::created_at).lt(cutoff))
        .filter(not(exists(
            d.filter(d.field(t::root_id).eq(t::id.nullable())).filter(
                d.field(t::status).ne_all(statuses.to_vec()).or(coalesce(
                    d.field(t::last_active_time),
                    d.field(t::created_at),
                )
                .ge(cutoff)),
            ),
        )))
        .order((
            coalesce(t::last_active_time, t::created_at).asc(),
            t::id.asc(),
        ))
        .limit(batch)
        .select(t::id);
    on_backend!(conn, |c, Db| query.load(c).await)
}

/// The `root_id`s of orphaned workflow remains (the root row is gone) whose every member is
/// eligible, oldest retention clock first (one entry per member row: the caller dedups).
pub async fn purgeable_orphan_roots(
    conn: Connection<'_>,
    statuses: &[&'static str],
    cutoff: i64,
    batch: i64,
) -> QueryResult<Vec<Option<i64>>> {
    let (d, r) = diesel::alias!(
        crate::schema::fib_flow_tasks as d,
        crate::schema::fib_flow_tasks as r
    );
    let query = t::table
        .filter(t::root_id.is_not_null())
        .filter(not(exists(
            r.filter(r.field(t::id).nullable().eq(t::root_id)),
        )))
        .filter(t::status.eq_any(statuses.to_vec()))
        .filter(coalesce(t::last_active_time, t::created_at).lt(cutoff))
        .filter(not(exists(
            d.filter(d.field(t::root_id).eq(t::root_id)).filter(
                d.field(t::status).ne_all(statuses.to_vec()).or(coalesce(
                    d.field(t::last_active_time),
                    d.field(t::created_at),
                )
                .ge(cutoff)),
            ),
        )))
        .order((
            coalesce(t::last_active_time, t::created_at).asc(),
            t::id.asc(),
        ))
        .limit(batch)
        .select(t::root_id);
    on_backend!(conn, |c, Db| query.load(c).await)
}

/// The ids of the tasks whose root is `root` (not the root itself), by id.
pub async fn workflow_descendants(conn: Connection<'_>, root: i64) -> QueryResult<Vec<i64>> {
    let query = t::table
        .filter(t::root_id.eq(root))
        .order(t::id.asc())
        .select(t::id);
    on_backend!(conn, |c, Db| query.load(c).await)
}

// --- worker registry -----------------------------------------------------------------------

/// Replaces a worker's registry row.
pub async fn replace_worker(conn: Connection<'_>, row: &WorkerRow) -> QueryResult<()> {
    let delete = diesel::delete(w::table.find(&row.worker_id));
    let insert = diesel::insert_into(w::table).values(row);
    on_backend!(conn, |c, Db| {
        delete.execute(c).await?;
        insert.execute(c).await.map(|_| ())
    })
}

/// Renews an active worker's lease; returns whether it was active.
pub async fn renew_worker(
    conn: Connection<'_>,
    worker_id: &str,
    now: i64,
    expires_at: i64,
) -> QueryResult<bool> {
    let query = diesel::update(
        w::table
            .filter(w::worker_id.eq(worker_id))
            .filter(w::status.eq(WorkerStatus::Active.as_str())),
    )
    .set((w::last_seen_at.eq(now), w::expires_at.eq(expires_at)));
    on_backend!(conn, |c, Db| query.execute(c).await).map(|renewed| renewed > 0)
}

/// One worker's registry row.
pub async fn get_worker(conn: Connection<'_>, worker_id: &str) -> QueryResult<Option<WorkerRow>> {
    on_backend!(conn, |c, Db| w::table
        .find(worker_id)
        .select(WorkerRow::as_select())
        .first(c)
        .await
        .optional())
}

/// The registry rows matching `query`, by registration.
pub async fn list_workers(
    conn: Connection<'_>,
    query: &WorkerQuery,
) -> QueryResult<Vec<WorkerRow>> {
    on_backend!(conn, |c, Db| {
        let mut select = w::table.select(WorkerRow::as_select()).into_boxed::<Db>();
        if let Some(pod_id) = &query.pod_id {
            select = select.filter(w::pod_id.eq(pod_id.clone()));
        }
        if let Some(status) = query.status {
            select = select.filter(w::status.eq(status.as_str()));
        }
        select
            .order((w::registered_at.asc(), w::worker_id.asc()))
            .load(c)
            .await
    })
}

/// The active workers of `pod_id` other than `current`.
pub async fn other_active_workers(
    conn: Connection<'_>,
    pod_id: &str,
    current: &str,
) -> QueryResult<Vec<String>> {
    let query = w::table
        .filter(w::pod_id.eq(pod_id))
        .filter(w::status.eq(WorkerStatus::Active.as_str()))
        .filter(w::worker_id.ne(current))
        .select(w::worker_id);
    on_backend!(conn, |c, Db| query.load(c).await)
}

/// The active workers whose lease expired before `now`.
pub async fn lapsed_workers(conn: Connection<'_>, now: i64) -> QueryResult<Vec<String>> {
    let query = w::table
        .filter(w::status.eq(WorkerStatus::Active.as_str()))
        .filter(w::expires_at.lt(now))
        .select(w::worker_id);
    on_backend!(conn, |c, Db| query.load(c).await)
}

/// Moves one worker from `active` to superseded or dead (guarded by its status and, given
/// `expired_before`, by its lease having expired); returns whether it moved.
pub async fn retire_worker(
    conn: Connection<'_>,
    worker_id: &str,
    status: WorkerStatus,
    now: i64,
    expired_before: Option<i64>,
) -> QueryResult<bool> {
    let guarded = w::table
        .filter(w::worker_id.eq(worker_id))
        .filter(w::status.eq(WorkerStatus::Active.as_str()))
        .filter(w::expires_at.lt(expired_before.unwrap_or(i64::MAX)));
    let changed = if status == WorkerStatus::Superseded {
        let query =
            diesel::update(guarded).set((w::status.eq(status.as_str()), w::superseded_at.eq(now)));
        on_backend!(conn, |c, Db| query.execute(c).await)?
    } else {
        let query =
            diesel::update(guarded).set((w::status.eq(status.as_str()), w::dead_at.eq(now)));
        on_backend!(conn, |c, Db| query.execute(c).await)?
    };
    Ok(changed > 0)
}

/// Marks a worker stopped.
pub async fn stop_worker(conn: Connection<'_>, worker_id: &str, now: i64) -> QueryResult<()> {
    let query = diesel::update(w::table.filter(w::worker_id.eq(worker_id))).set((
        w::status.eq(WorkerStatus::Stopped.as_str()),
        w::last_seen_at.eq(now),
        w::dead_at.eq(now),
    ));
    on_backend!(conn, |c, Db| query.execute(c).await).map(|_| ())
}
