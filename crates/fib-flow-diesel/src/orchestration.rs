//! The storage logic written once for every backend.
//!
//! diesel-async has no multi-backend connection and generic diesel code over backends needs
//! unwieldy bounds, so the logic is a macro expanded once per backend module (as `mod ops`).
//! The backend module supplies the few statements whose SQL differs:
//!
//! - `type Conn`, `type Db`, `const BACKEND: &str`, `const ONE_STATEMENT_INSERT: bool` (a
//!   chunk of new tasks is one statement, so it needs no transaction of its own);
//! - `lock_task` / `lock_tasks`: one row, or a batch's rows in ascending id order, locked
//!   where the backend has row locks;
//! - `insert_created`: a chunk of new tasks with their `task_created` events (one statement
//!   on PostgreSQL; `insert_created_each!` over the backend's `insert_task_rows` elsewhere) and
//!   `insert_event_row` (RETURNING or `LAST_INSERT_ID()`);
//! - `insert_event_rows` and `insert_attempt_rows` (multi-row inserts);
//! - `write_batch`: every write of a set of transitions (rows under their guards, opened and
//!   closed attempts, events, the due notification): one statement on PostgreSQL,
//!   [`write_batch_each`](self) statement by statement elsewhere;
//! - `select_claimable` (SKIP LOCKED where available);
//! - `notify_due` (PostgreSQL NOTIFY, else nothing).
//!
//! Everything here runs inside a transaction the caller opened, except the plain reads.

use diesel::sql_types::{BigInt, Nullable};

diesel::define_sql_function! {
    /// `COALESCE(a, b)`: the retention clock `COALESCE(last_active_time, created_at)`.
    fn coalesce(a: Nullable<BigInt>, b: BigInt) -> BigInt;
}

/// `fib_flow_tasks.status = 'pending'` with the status as a literal, not a bind parameter: a
/// partial index (`WHERE status = 'pending'`) is only usable when the planner sees the value
/// at prepare time (SQLite never re-plans for bound values; a PostgreSQL generic plan would
/// not match it either).
pub(crate) fn is_pending() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql::<diesel::sql_types::Bool>("fib_flow_tasks.status = 'pending'")
}

/// `fib_flow_tasks.status = 'running'` as a literal (see [`is_pending`]).
pub(crate) fn is_running() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql::<diesel::sql_types::Bool>("fib_flow_tasks.status = 'running'")
}

/// The claim's lease fence: true when no lease is required (`None`), else only while the
/// worker's registry row is `active`. A macro because the expression's type (SQL with binds)
/// has no nameable form to return from a function.
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

pub(crate) use holds_lease;

/// Runs a keyed insert again when it lost a race: another process inserted the same key
/// between its lookup and its write (the unique index refused the second; the retry finds the
/// first). Deadlocks and other transient faults of those few statements are retried too.
pub(crate) async fn retry_key_conflict<T, F, Fut>(
    mut attempt: F,
) -> Result<T, fib_flow_ports::PortError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, fib_flow_ports::PortError>>,
{
    const ATTEMPTS: usize = 3;
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(error)
                if tries < ATTEMPTS && (error.is_unique_violation() || error.is_transient()) =>
            {
                tracing::debug!(%error, tries, "keyed insert lost a race; retrying");
            }
            result => return result,
        }
    }
}

/// Rows per multi-row insert or `IN (...)` list: well under SQLite's and PostgreSQL's bind
/// parameter limits for the widest row we write (13 columns).
pub(crate) const CHUNK: usize = 500;

/// Expands the shared operations as `mod ops` inside a backend module.
macro_rules! store_ops {
    () => {
        pub(crate) mod ops {
            #![allow(clippy::too_many_arguments)]
            use std::collections::HashMap;

            use chrono::{DateTime, Utc};
            use diesel::prelude::*;
            use diesel::dsl::{count_star, exists, not};
            use diesel_async::RunQueryDsl;
            use fib_flow_domain::query::{
                AttemptQuery, DeleteFilter, EventQuery, Order, Page, PageBounds, TagStat,
                TaskQuery,
            };
            use fib_flow_domain::time::to_millis;
            use fib_flow_domain::{
                AttemptChange, ChildResult, ChildSettlement, Command, ExpiryKind, NewTask,
                ParentEffect, Task, TaskAttempt, TaskEvent, TaskId, TaskStatus, Transition,
            };
            use fib_flow_domain::progress::HandlerRecord;
            use fib_flow_domain::{Worker, WorkerQuery, WorkerStatus};
            use fib_flow_ports::{
                BatchCommand, ClaimRequest, CronChange, Enqueued, Expiry, PortError, Recovery, RetentionReport, RetiredWorkers,
                RetentionRun, SpawnRequest, WorkerRegistration,
            };

            use $crate::error::{domain_error, TxError};
            use $crate::orchestration::{coalesce, CHUNK};
            use $crate::rows::{
                child_result, normalized, status_from_text, AttemptCloseRow, AttemptRow,
                BatchWrite, ChildRow, EventRow, NewAttemptRow, NewEventRow, RecordChanges, RowWrite, TaskRow,
                WorkerRow,
            };
            use $crate::schema::fib_flow_task_attempts as a;
            use $crate::schema::fib_flow_task_events as e;
            use $crate::schema::fib_flow_tasks as t;
            use $crate::schema::fib_flow_workers as w;

            use super::{
                heartbeat_row, insert_attempt_rows, insert_created, insert_event_row, insert_event_rows, lock_task, lock_tasks, notify_due, select_claimable,
                update_row, write_batch, Conn, Db, BACKEND,
            };

            type Tx<T> = Result<T, TxError>;

            const SETTLED: [&str; 2] = ["completed", "permanently_failed"];

            fn limit_i64(value: impl TryInto<i64>) -> i64 {
                value.try_into().unwrap_or(i64::MAX)
            }

            fn count_u64(value: i64) -> u64 {
                u64::try_from(value).unwrap_or(0)
            }

            async fn load_task(conn: &mut Conn, id: i64) -> Tx<Option<Task>> {
                match lock_task(conn, id).await? {
                    Some(row) => Ok(Some(row.into_task()?)),
                    None => Ok(None),
                }
            }

            /// Writes a batch's rows through the backend's set-based statement; every row must
            /// still match its guard (the batch holds their locks, so a miss is a bug or a
            /// concurrent writer that ignored the lock order, and fails the whole batch).
            async fn write_guarded(conn: &mut Conn, batch: &BatchWrite) -> Tx<()> {
                if batch.rows.is_empty() {
                    return Ok(());
                }
                let written = write_batch(conn, batch).await?;
                if written != batch.rows.len() {
                    let missed = &batch.rows[0];
                    return Err(PortError::Stale {
                        task_id: TaskId(missed.id),
                        attempt: missed.guard_attempt,
                    }
                    .into());
                }
                Ok(())
            }

            /// A batch's writes statement by statement (multi-row inserts, one UPDATE per row
            /// and per closed attempt): for backends without a one-statement form.
            #[allow(dead_code)]
            pub(crate) async fn write_batch_each(
                conn: &mut Conn,
                batch: &BatchWrite,
            ) -> diesel::QueryResult<usize> {
                let written = write_rows_each(conn, &batch.rows).await?;
                for chunk in batch.opened.chunks(CHUNK) {
                    insert_attempt_rows(conn, chunk.to_vec()).await?;
                }
                close_attempts_each(conn, &batch.closed).await?;
                for chunk in batch.events.chunks(CHUNK) {
                    insert_event_rows(conn, chunk.to_vec()).await?;
                }
                if batch.notify {
                    notify_due(conn).await?;
                }
                Ok(written)
            }

            /// Row writes one guarded UPDATE each: for backends without a set-based form.
            #[allow(dead_code)]
            pub(crate) async fn write_rows_each(
                conn: &mut Conn,
                writes: &[RowWrite],
            ) -> diesel::QueryResult<usize> {
                let mut written = 0;
                for write in writes {
                    written += update_row(conn, write).await?;
                }
                Ok(written)
            }

            /// One guarded row write in diesel's DSL (the planner picks the primary key).
            #[allow(dead_code)]
            pub(crate) async fn update_row_dsl(
                conn: &mut Conn,
                write: &RowWrite,
            ) -> diesel::QueryResult<usize> {
                diesel::update(
                    t::table
                        .filter(t::id.eq(write.id))
                        .filter(t::status.eq(write.guard_status))
                        .filter(t::attempt.eq(write.guard_attempt)),
                )
                .set(&write.values)
                .execute(conn)
                .await
            }

            /// One heartbeat in diesel's DSL (the planner picks the primary key).
            #[allow(dead_code)]
            pub(crate) async fn heartbeat_row_dsl(
                conn: &mut Conn,
                task_id: i64,
                attempt: i32,
                worker_id: &str,
                now: i64,
            ) -> diesel::QueryResult<usize> {
                diesel::update(
                    t::table
                        .filter(t::id.eq(task_id))
                        .filter(t::status.eq(TaskStatus::Running.as_str()))
                        .filter(t::worker_id.eq(worker_id))
                        .filter(t::attempt.eq(attempt))
                        // Two heartbeats racing (the maintenance loop and a manual tick)
                        // must not move the clock back: the older one skips.
                        .filter(t::last_active_time.is_null().or(t::last_active_time.le(now))),
                )
                .set(t::last_active_time.eq(now))
                .execute(conn)
                .await
            }

            /// Attempt closes one UPDATE each: for backends without a set-based form.
            #[allow(dead_code)]
            pub(crate) async fn close_attempts_each(
                conn: &mut Conn,
                closes: &[AttemptCloseRow],
            ) -> diesel::QueryResult<()> {
                for close in closes {
                    diesel::update(
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
                    ))
                    .execute(conn)
                    .await?;
                }
                Ok(())
            }

            /// Persists one transition: guarded row write, attempt open/close, events.
            async fn persist(conn: &mut Conn, tr: &Transition, now: DateTime<Utc>) -> Tx<()> {
                write_guarded(conn, &BatchWrite::of(std::slice::from_ref(tr), now)).await
            }

            async fn count_outstanding(conn: &mut Conn, parent: i64, round: i32) -> Tx<i64> {
                Ok(t::table
                    .filter(t::parent_id.eq(parent))
                    .filter(t::parent_round.eq(round))
                    .filter(t::status.ne_all(SETTLED))
                    .count()
                    .get_result::<i64>(conn)
                    .await?)
            }

            /// Reports settled children to their parents (and grandparents, when a parent
            /// settles in turn), each in this transaction. A missing parent is logged and
            /// ends the chain: a deleted workflow must not make its orphans' writes fail.
            ///
            /// `later_siblings` counts children of the same parent round that this batch has
            /// already written as settled but reports after this one: they still count as
            /// outstanding for this report, exactly as if each child had its own transaction.
            async fn settle_parents(
                conn: &mut Conn,
                mut effect: Option<ParentEffect>,
                now: DateTime<Utc>,
                mut later_siblings: i64,
            ) -> Tx<()> {
                while let Some(settled) = effect {
                    let Some(parent) = load_task(conn, settled.parent_id.0).await? else {
                        tracing::warn!(
                            backend = BACKEND,
                            parent_id = %settled.parent_id,
                            child_id = %settled.child_id,
                            "a child settled but its parent no longer exists; nothing to notify"
                        );
                        return Ok(());
                    };
                    let outstanding =
                        count_outstanding(conn, settled.parent_id.0, settled.round).await?
                            + later_siblings;
                    // Grandparents are settled in this chain, one at a time.
                    later_siblings = 0;
                    let command = Command::ChildSettled(ChildSettlement {
                        child_id: settled.child_id,
                        round: settled.round,
                        failed: settled.failed,
                        outstanding: i32::try_from(outstanding).unwrap_or(i32::MAX),
                    });
                    let tr = fib_flow_domain::apply(&parent, command, now).map_err(domain_error)?;
                    if tr.is_noop(&parent) {
                        return Ok(());
                    }
                    persist(conn, &tr, now).await?;
                    effect = tr.parent;
                }
                Ok(())
            }

            pub(crate) async fn apply_tx(
                conn: &mut Conn,
                task_id: TaskId,
                command: Command,
                now: DateTime<Utc>,
            ) -> Tx<Task> {
                let before = load_task(conn, task_id.0)
                    .await?
                    .ok_or(PortError::NotFound(task_id))?;
                let tr = fib_flow_domain::apply(&before, command, now).map_err(domain_error)?;
                if tr.is_noop(&before) {
                    return Ok(before);
                }
                persist(conn, &tr, now).await?;
                settle_parents(conn, tr.parent, now, 0).await?;
                Ok(normalized(&tr.task))
            }

            /// Many commands in one transaction (see `TaskStore::apply_batch`). Lock order is
            /// fixed so that two batches can never deadlock on each other: the batch's own rows
            /// in ascending id order (one statement), then the parents of settling children in
            /// ascending id order. A parent is always older (smaller id) than its children, and
            /// no transaction locks a child after its parent, so no cycle can form.
            pub(crate) async fn apply_batch_tx(
                conn: &mut Conn,
                commands: &[BatchCommand],
            ) -> Tx<Vec<Result<Task, PortError>>> {
                let Some(now) = commands.iter().map(|c| c.at).max() else {
                    return Ok(Vec::new());
                };
                let mut ids: Vec<i64> = commands.iter().map(|c| c.task_id.0).collect();
                ids.sort_unstable();
                ids.dedup();
                let mut current: HashMap<i64, Task> = HashMap::with_capacity(ids.len());
                for row in lock_tasks(conn, &ids).await? {
                    let task = row.into_task()?;
                    current.insert(task.id.0, task);
                }
                let mut verdicts = Vec::with_capacity(commands.len());
                let mut transitions: Vec<Transition> = Vec::with_capacity(commands.len());
                for BatchCommand { task_id: id, command, at } in commands {
                    let Some(before) = current.get(&id.0) else {
                        verdicts.push(Err(PortError::NotFound(*id)));
                        continue;
                    };
                    match fib_flow_domain::apply(before, command.clone(), *at) {
                        Err(error) => verdicts.push(Err(domain_error(error))),
                        Ok(tr) if tr.is_noop(before) => verdicts.push(Ok(before.clone())),
                        Ok(tr) => {
                            verdicts.push(Ok(normalized(&tr.task)));
                            current.insert(id.0, tr.task.clone());
                            transitions.push(tr);
                        }
                    }
                }
                if transitions.is_empty() {
                    return Ok(verdicts);
                }
                write_guarded(conn, &BatchWrite::of(&transitions, now)).await?;
                let mut effects: Vec<ParentEffect> =
                    transitions.into_iter().filter_map(|tr| tr.parent).collect();
                effects.sort_by_key(|effect| (effect.parent_id.0, effect.round, effect.child_id.0));
                for (index, effect) in effects.iter().enumerate() {
                    let later_siblings = effects[index + 1..]
                        .iter()
                        .take_while(|later| {
                            later.parent_id == effect.parent_id && later.round == effect.round
                        })
                        .count();
                    settle_parents(conn, Some(*effect), now, later_siblings as i64).await?;
                }
                Ok(verdicts)
            }

            /// Inserts tasks a chunk per statement where the backend can (ids in input order
            /// on every backend), then their `task_created` events.
            pub(crate) async fn insert_tasks_tx(conn: &mut Conn, tasks: &[NewTask]) -> Tx<Vec<TaskId>> {
                let due = tasks.iter().any(|task| task.next_run_time <= task.created_at);
                let mut ids = Vec::with_capacity(tasks.len());
                for (index, chunk) in tasks.chunks(CHUNK).enumerate() {
                    let inserted = insert_created(conn, chunk, due && index == 0).await?;
                    if inserted.len() != chunk.len() {
                        return Err(PortError::Database {
                            backend: BACKEND,
                            message: format!("inserted {} task rows for {} tasks", inserted.len(), chunk.len()),
                        }
                        .into());
                    }
                    ids.extend(inserted.into_iter().map(TaskId));
                }
                Ok(ids)
            }

            pub(crate) async fn spawn_tx(conn: &mut Conn, request: SpawnRequest) -> Tx<Vec<TaskId>> {
                // Lock the parent first so a concurrent transition of it waits for (or beats)
                // this one before any child row exists.
                if load_task(conn, request.parent_id.0).await?.is_none() {
                    return Err(PortError::NotFound(request.parent_id).into());
                }
                let ids = insert_tasks_tx(conn, &request.children).await?;
                let command = Command::AwaitChildren {
                    attempt: request.attempt,
                    child_ids: ids.clone(),
                    child_names: request.children.iter().map(|c| c.name.clone()).collect(),
                    context: request.context,
                    policy: request.policy,
                };
                apply_tx(conn, request.parent_id, command, request.now).await?;
                Ok(ids)
            }

            /// Due candidates: the uncapped names in one query, each capped name in its own
            /// query limited to its cap, and each capped queue in one query over its names
            /// limited to the queue's cap (names capped inside it are held to their cap while
            /// walking its rows in claim order), merged in claim order. Fetching per cap
            /// (rather than dropping rows after one query) keeps a capped name or queue with
            /// many due tasks from starving the others in the same round.
            async fn claim_candidates(conn: &mut Conn, request: &ClaimRequest) -> Tx<Vec<TaskRow>> {
                let now = to_millis(request.now);
                let limit = i64::from(request.limit);
                let queue_caps: HashMap<&str, u32> = request
                    .queue_caps
                    .iter()
                    .map(|cap| (cap.queue.as_str(), cap.max))
                    .collect();
                let mut uncapped: Vec<String> = Vec::new();
                let mut capped: HashMap<String, u32> = HashMap::new();
                let mut queued: std::collections::BTreeMap<&str, HashMap<String, Option<u32>>> =
                    std::collections::BTreeMap::new();
                for entry in &request.names {
                    if queue_caps.contains_key(entry.queue.as_str()) {
                        let cap = queued
                            .entry(entry.queue.as_str())
                            .or_default()
                            .entry(entry.name.clone())
                            .or_insert(entry.max);
                        *cap = match (*cap, entry.max) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                        continue;
                    }
                    match entry.max {
                        None => uncapped.push(entry.name.clone()),
                        Some(max) => {
                            let slot = capped.entry(entry.name.clone()).or_insert(max);
                            *slot = (*slot).min(max);
                        }
                    }
                }
                // A name listed both with and without a cap keeps its cap.
                uncapped.retain(|name| !capped.contains_key(name));
                uncapped.sort();
                uncapped.dedup();
                let lease = request.require_active_lease.then_some(request.worker_id.as_str());
                let mut rows = Vec::new();
                if !uncapped.is_empty() {
                    rows.extend(select_claimable(conn, &uncapped, now, limit, lease).await?);
                }
                let mut capped: Vec<(String, u32)> = capped.into_iter().collect();
                capped.sort();
                for (name, max) in capped {
                    let cap = i64::from(max).min(limit);
                    if cap > 0 {
                        rows.extend(select_claimable(conn, &[name], now, cap, lease).await?);
                    }
                }
                for (queue, names) in queued {
                    let cap = i64::from(queue_caps.get(queue).copied().unwrap_or(0)).min(limit);
                    if cap <= 0 {
                        continue;
                    }
                    let mut list: Vec<String> = names.keys().cloned().collect();
                    list.sort();
                    let mut taken: HashMap<String, u32> = HashMap::new();
                    for row in select_claimable(conn, &list, now, cap, lease).await? {
                        let count = taken.entry(row.name.clone()).or_default();
                        if names.get(&row.name).copied().flatten().is_some_and(|max| *count >= max) {
                            continue;
                        }
                        *count += 1;
                        rows.push(row);
                    }
                }
                rows.sort_by(|x, y| {
                    y.priority
                        .cmp(&x.priority)
                        .then(x.next_run_time.cmp(&y.next_run_time))
                        .then(x.id.cmp(&y.id))
                });
                rows.truncate(usize::try_from(request.limit).unwrap_or(usize::MAX));
                Ok(rows)
            }

            pub(crate) async fn claim_tx(conn: &mut Conn, request: &ClaimRequest) -> Tx<Vec<Task>> {
                let rows = claim_candidates(conn, request).await?;
                let mut claimed = Vec::with_capacity(rows.len());
                let mut attempts = Vec::with_capacity(rows.len());
                let mut events = Vec::with_capacity(rows.len() * 2);
                let mut transitions = Vec::with_capacity(rows.len());
                for row in rows {
                    let before = row.into_task()?;
                    let command = Command::Claim {
                        worker_id: request.worker_id.clone(),
                    };
                    let tr = match fib_flow_domain::apply(&before, command, request.now) {
                        Ok(tr) => tr,
                        Err(error) => {
                            // The query only returns due pending rows, so this means the
                            // domain and the query disagree; skip the row rather than fail
                            // the whole round.
                            tracing::warn!(backend = BACKEND, task_id = %before.id, %error, "claim rejected by the domain");
                            continue;
                        }
                    };
                    if let Some(AttemptChange::Open(open)) = &tr.attempt {
                        attempts.push(NewAttemptRow::from(open));
                    }
                    events.extend(tr.events.iter().map(NewEventRow::from));
                    claimed.push(normalized(&tr.task));
                    transitions.push(tr);
                }
                write_guarded(conn, &BatchWrite::of(&transitions, request.now)).await?;
                Ok(claimed)
            }

            /// One UPDATE per attempt, by primary key, in ascending id order. Not one
            /// multi-row UPDATE: InnoDB may serve that through a secondary index on `status`,
            /// locking that index's entries before the rows, the reverse of a batch write
            /// (rows first, then their index entries) and a deadlock under load. A lookup by
            /// primary key takes the row lock first, like every other writer.
            pub(crate) async fn heartbeat_q(
                conn: &mut Conn,
                worker_id: &str,
                attempts: &[(TaskId, i32)],
                now: DateTime<Utc>,
            ) -> Tx<u64> {
                let mut ordered = attempts.to_vec();
                ordered.sort_unstable();
                let now = to_millis(now);
                let mut refreshed = 0u64;
                for (task_id, attempt) in ordered {
                    refreshed += heartbeat_row(conn, task_id.0, attempt, worker_id, now).await? as u64;
                }
                Ok(refreshed)
            }

            pub(crate) async fn record_tx(conn: &mut Conn, record: &HandlerRecord) -> Tx<i64> {
                let event = &record.event;
                let attempt = event.attempt.unwrap_or(-1);
                let changes = RecordChanges {
                    last_active_time: to_millis(event.event_time),
                    last_event_time: to_millis(event.event_time),
                    last_event_type: event.event_type.as_str().to_owned(),
                    current_stage_name: record.stage_name.clone(),
                    progress_text: record.progress_text.clone(),
                    progress_percent: record.progress_percent,
                };
                let written = diesel::update(
                    t::table
                        .filter(t::id.eq(event.task_id.0))
                        .filter(t::status.eq(TaskStatus::Running.as_str()))
                        .filter(t::attempt.eq(attempt)),
                )
                .set(&changes)
                .execute(conn)
                .await?;
                if written == 0 {
                    return Err(PortError::Stale {
                        task_id: event.task_id,
                        attempt,
                    }
                    .into());
                }
                Ok(insert_event_row(conn, &NewEventRow::from(event)).await?)
            }

            pub(crate) async fn expired_q(
                conn: &mut Conn,
                now: DateTime<Utc>,
                heartbeat_cutoff: DateTime<Utc>,
                limit: u32,
            ) -> Tx<Vec<Expiry>> {
                let now = to_millis(now);
                let cutoff = to_millis(heartbeat_cutoff);
                let rows: Vec<(i64, i32, Option<i64>)> = t::table
                    .filter($crate::orchestration::is_running())
                    .filter(t::deadline.lt(now).or(t::last_active_time.lt(cutoff).and(
                        // An active worker's attempts are the registry's business: the
                        // worker heartbeats them and recovers any it lost, and once its lease
                        // expires a reaper recovers them without charging a retry. The sweep
                        // takes over only when no active row claims them (an unregistered or
                        // stopped worker, or a reap without recovery). Correlated, so SQL.
                        diesel::dsl::sql::<diesel::sql_types::Bool>(
                            "NOT EXISTS (SELECT 1 FROM fib_flow_workers \
                             WHERE fib_flow_workers.worker_id = fib_flow_tasks.worker_id \
                             AND fib_flow_workers.status = 'active')",
                        ),
                    )))
                    .order(t::id.asc())
                    .limit(i64::from(limit))
                    .select((t::id, t::attempt, t::deadline))
                    .load(conn)
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, attempt, deadline)| Expiry {
                        task_id: TaskId(id),
                        attempt,
                        kind: if deadline.is_some_and(|d| d < now) {
                            ExpiryKind::Deadline
                        } else {
                            ExpiryKind::Heartbeat
                        },
                    })
                    .collect())
            }

            /// The unfinished task holding `unique_key`, if any (the statuses as literals, so
            /// the partial unique index serves the lookup).
            async fn live_unique(conn: &mut Conn, unique_key: &str) -> Tx<Option<i64>> {
                Ok(t::table
                    .filter(t::unique_key.eq(unique_key))
                    .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
                        "fib_flow_tasks.status NOT IN ('completed', 'permanently_failed')",
                    ))
                    .select(t::id)
                    .first::<i64>(conn)
                    .await
                    .optional()?)
            }

            /// See `TaskStore::insert_unique`. A concurrent insert of the same key makes the
            /// key write fail on the unique index; the caller retries, and then finds it.
            pub(crate) async fn insert_unique_tx(
                conn: &mut Conn,
                task: &NewTask,
                unique_key: &str,
            ) -> Tx<Enqueued> {
                if let Some(id) = live_unique(conn, unique_key).await? {
                    return Ok(Enqueued { id: TaskId(id), created: false });
                }
                let id = insert_one(conn, task).await?;
                diesel::update(t::table.find(id.0))
                    .set(t::unique_key.eq(unique_key))
                    .execute(conn)
                    .await?;
                Ok(Enqueued { id, created: true })
            }

            async fn insert_one(conn: &mut Conn, task: &NewTask) -> Tx<TaskId> {
                let ids = insert_tasks_tx(conn, std::slice::from_ref(task)).await?;
                ids.into_iter().next().ok_or_else(|| {
                    PortError::Database {
                        backend: BACKEND,
                        message: "inserted no row for one task".to_owned(),
                    }
                    .into()
                })
            }

            /// See `TaskStore::upsert_cron`.
            pub(crate) async fn upsert_cron_tx(
                conn: &mut Conn,
                task: &NewTask,
                cron_key: &str,
            ) -> Tx<(TaskId, CronChange)> {
                let existing: Option<i64> = t::table
                    .filter(t::cron_key.eq(cron_key))
                    .select(t::id)
                    .first(conn)
                    .await
                    .optional()?;
                let Some(id) = existing else {
                    let id = insert_one(conn, task).await?;
                    diesel::update(t::table.find(id.0))
                        .set(t::cron_key.eq(cron_key))
                        .execute(conn)
                        .await?;
                    return Ok((id, CronChange::Created));
                };
                let current = load_task(conn, id)
                    .await?
                    .ok_or(PortError::NotFound(TaskId(id)))?;
                let Some(change) =
                    fib_flow_domain::schedule::redefine_cron(&current, task, task.created_at)
                else {
                    return Ok((current.id, CronChange::Unchanged));
                };
                let next_run_time = if change.reschedule {
                    to_millis(task.next_run_time)
                } else {
                    to_millis(current.next_run_time)
                };
                let event_time = to_millis(change.event.event_time);
                diesel::update(t::table.find(id))
                    .set((
                        t::name.eq(&task.name),
                        t::cron_expr.eq(&task.cron_expr),
                        t::timezone.eq(&task.timezone),
                        t::payload.eq($crate::rows::json_to_text(&task.payload)),
                        t::priority.eq(task.priority),
                        t::timeout_ms.eq(task.timeout.map(fib_flow_domain::time::duration_millis)),
                        t::max_retries.eq(task.max_retries),
                        t::retry_interval_ms.eq(fib_flow_domain::time::duration_millis(task.retry_interval)),
                        t::retry_backoff.eq(task.retry_backoff.as_str()),
                        t::tag.eq(&task.tag),
                        t::next_run_time.eq(next_run_time),
                        t::last_event_time.eq(event_time),
                        t::last_event_type.eq(change.event.event_type.as_str()),
                    ))
                    .execute(conn)
                    .await?;
                insert_event_rows(conn, vec![NewEventRow::from(&change.event)]).await?;
                if change.reschedule {
                    notify_due(conn).await?;
                }
                Ok((current.id, CronChange::Updated))
            }

            pub(crate) async fn remove_cron_tx(conn: &mut Conn, cron_key: &str) -> Tx<bool> {
                let ids: Vec<i64> = t::table
                    .filter(t::cron_key.eq(cron_key))
                    .select(t::id)
                    .load(conn)
                    .await?;
                Ok(delete_ids(conn, &ids).await?.tasks_deleted > 0)
            }

            pub(crate) async fn register_worker_tx(
                conn: &mut Conn,
                registration: &WorkerRegistration,
            ) -> Tx<Worker> {
                diesel::delete(w::table.find(&registration.worker_id))
                    .execute(conn)
                    .await?;
                let row = WorkerRow::registered(registration);
                diesel::insert_into(w::table).values(&row).execute(conn).await?;
                Ok(row.into_worker()?)
            }

            pub(crate) async fn heartbeat_worker_q(
                conn: &mut Conn,
                worker_id: &str,
                now: DateTime<Utc>,
                ttl: std::time::Duration,
            ) -> Tx<bool> {
                let now = to_millis(now);
                let renewed = diesel::update(
                    w::table
                        .filter(w::worker_id.eq(worker_id))
                        .filter(w::status.eq(WorkerStatus::Active.as_str())),
                )
                .set((
                    w::last_seen_at.eq(now),
                    w::expires_at.eq(now.saturating_add(fib_flow_domain::time::duration_millis(ttl))),
                ))
                .execute(conn)
                .await?;
                Ok(renewed > 0)
            }

            pub(crate) async fn get_worker_q(conn: &mut Conn, worker_id: &str) -> Tx<Option<Worker>> {
                let row = w::table
                    .find(worker_id)
                    .select(WorkerRow::as_select())
                    .first(conn)
                    .await
                    .optional()?;
                Ok(row.map(WorkerRow::into_worker).transpose()?)
            }

            pub(crate) async fn list_workers_q(conn: &mut Conn, query: &WorkerQuery) -> Tx<Vec<Worker>> {
                let mut select = w::table.select(WorkerRow::as_select()).into_boxed::<Db>();
                if let Some(pod_id) = &query.pod_id {
                    select = select.filter(w::pod_id.eq(pod_id.clone()));
                }
                if let Some(status) = query.status {
                    select = select.filter(w::status.eq(status.as_str()));
                }
                let rows: Vec<WorkerRow> = select
                    .order((w::registered_at.asc(), w::worker_id.asc()))
                    .load(conn)
                    .await?;
                Ok(rows.into_iter().map(WorkerRow::into_worker).collect::<Result<_, _>>()?)
            }

            /// Moves the listed workers from `active` to `status`, each guarded by its
            /// status (and `extra`), one by primary key; returns those actually moved.
            async fn retire_workers(
                conn: &mut Conn,
                candidates: Vec<String>,
                status: WorkerStatus,
                now: i64,
                expired_before: Option<i64>,
            ) -> Tx<Vec<String>> {
                let mut moved = Vec::with_capacity(candidates.len());
                for worker_id in candidates {
                    let guarded = w::table
                        .filter(w::worker_id.eq(&worker_id))
                        .filter(w::status.eq(WorkerStatus::Active.as_str()))
                        .filter(w::expires_at.lt(expired_before.unwrap_or(i64::MAX)));
                    let changed = if status == WorkerStatus::Superseded {
                        diesel::update(guarded)
                            .set((w::status.eq(status.as_str()), w::superseded_at.eq(now)))
                            .execute(conn)
                            .await?
                    } else {
                        diesel::update(guarded)
                            .set((w::status.eq(status.as_str()), w::dead_at.eq(now)))
                            .execute(conn)
                            .await?
                    };
                    if changed > 0 {
                        moved.push(worker_id);
                    }
                }
                Ok(moved)
            }

            pub(crate) async fn supersede_tx(
                conn: &mut Conn,
                pod_id: &str,
                current: &str,
                now: DateTime<Utc>,
                recovery: Option<&Recovery>,
            ) -> Tx<RetiredWorkers> {
                let mut candidates: Vec<String> = w::table
                    .filter(w::pod_id.eq(pod_id))
                    .filter(w::status.eq(WorkerStatus::Active.as_str()))
                    .filter(w::worker_id.ne(current))
                    .select(w::worker_id)
                    .load(conn)
                    .await?;
                candidates.sort();
                let superseded =
                    retire_workers(conn, candidates, WorkerStatus::Superseded, to_millis(now), None).await?;
                recover_retired(conn, superseded, recovery).await
            }

            /// Recovers the running tasks of workers just retired, in the caller's transaction:
            /// nobody may see them superseded or dead with their tasks still running (the
            /// heartbeat sweep would take those, charging a retry).
            async fn recover_retired(
                conn: &mut Conn,
                workers: Vec<String>,
                recovery: Option<&Recovery>,
            ) -> Tx<RetiredWorkers> {
                let recovered = match recovery {
                    Some(recovery) if !workers.is_empty() => recover_tx(conn, &workers, recovery).await?,
                    _ => 0,
                };
                Ok(RetiredWorkers { workers, recovered })
            }

            pub(crate) async fn reap_tx(
                conn: &mut Conn,
                now: DateTime<Utc>,
                recovery: Option<&Recovery>,
            ) -> Tx<RetiredWorkers> {
                let now_ms = to_millis(now);
                let mut candidates: Vec<String> = w::table
                    .filter(w::status.eq(WorkerStatus::Active.as_str()))
                    .filter(w::expires_at.lt(now_ms))
                    .select(w::worker_id)
                    .load(conn)
                    .await?;
                if candidates.is_empty() {
                    return Ok(RetiredWorkers::default());
                }
                candidates.sort();
                let reaped =
                    retire_workers(conn, candidates, WorkerStatus::Dead, now_ms, Some(now_ms)).await?;
                recover_retired(conn, reaped, recovery).await
            }

            /// Every running attempt of the given workers back to `pending` through the
            /// domain's `Recover` (fenced by attempt), a chunk of rows at a time.
            async fn recover_tx(
                conn: &mut Conn,
                worker_ids: &[String],
                recovery: &Recovery,
            ) -> Tx<u64> {
                if worker_ids.is_empty() {
                    return Ok(0);
                }
                let running: Vec<(i64, i32)> = t::table
                    .filter($crate::orchestration::is_running())
                    .filter(t::worker_id.eq_any(worker_ids))
                    .order(t::id.asc())
                    .select((t::id, t::attempt))
                    .load(conn)
                    .await?;
                let mut recovered = 0u64;
                for chunk in running.chunks(CHUNK) {
                    let commands: Vec<BatchCommand> = chunk
                        .iter()
                        .map(|&(id, attempt)| BatchCommand {
                            task_id: TaskId(id),
                            command: Command::Recover {
                                attempt,
                                by_worker_id: recovery.by_worker_id.clone(),
                                by_pod_id: recovery.by_pod_id.clone(),
                            },
                            at: recovery.now,
                        })
                        .collect();
                    let verdicts = apply_batch_tx(conn, &commands).await?;
                    recovered += verdicts.iter().filter(|verdict| verdict.is_ok()).count() as u64;
                }
                Ok(recovered)
            }

            pub(crate) async fn stop_worker_tx(
                conn: &mut Conn,
                worker_id: &str,
                now: DateTime<Utc>,
                recovery: Option<&Recovery>,
            ) -> Tx<u64> {
                let recovered = match recovery {
                    Some(recovery) => recover_tx(conn, &[worker_id.to_owned()], recovery).await?,
                    None => 0,
                };
                let now = to_millis(now);
                diesel::update(w::table.filter(w::worker_id.eq(worker_id)))
                    .set((
                        w::status.eq(WorkerStatus::Stopped.as_str()),
                        w::last_seen_at.eq(now),
                        w::dead_at.eq(now),
                    ))
                    .execute(conn)
                    .await?;
                Ok(recovered)
            }

            pub(crate) async fn idle_attempts_q(
                conn: &mut Conn,
                worker_id: &str,
                idle_before: DateTime<Utc>,
                limit: u32,
            ) -> Tx<Vec<(TaskId, i32)>> {
                let rows: Vec<(i64, i32)> = t::table
                    .filter($crate::orchestration::is_running())
                    .filter(t::worker_id.eq(worker_id))
                    .filter(t::last_active_time.lt(to_millis(idle_before)))
                    .order(t::id.asc())
                    .limit(i64::from(limit))
                    .select((t::id, t::attempt))
                    .load(conn)
                    .await?;
                Ok(rows.into_iter().map(|(id, attempt)| (TaskId(id), attempt)).collect())
            }

            pub(crate) async fn outstanding_q(conn: &mut Conn, parent: TaskId, round: i32) -> Tx<i32> {
                let n = count_outstanding(conn, parent.0, round).await?;
                Ok(i32::try_from(n).unwrap_or(i32::MAX))
            }

            pub(crate) async fn get_task_q(conn: &mut Conn, id: TaskId) -> Tx<Option<Task>> {
                let row = t::table
                    .find(id.0)
                    .select(TaskRow::as_select())
                    .first(conn)
                    .await
                    .optional()?;
                Ok(row.map(TaskRow::into_task).transpose()?)
            }

            fn task_filter(query: &TaskQuery) -> t::BoxedQuery<'static, Db> {
                let mut q = t::table.into_boxed();
                if let Some(v) = &query.name {
                    q = q.filter(t::name.eq(v.clone()));
                }
                if let Some(v) = query.status {
                    q = q.filter(t::status.eq(v.as_str()));
                }
                if let Some(v) = query.task_type {
                    q = q.filter(t::task_type.eq(v.as_str()));
                }
                if let Some(v) = &query.tag {
                    q = q.filter(t::tag.eq(v.clone()));
                }
                if let Some(v) = &query.worker_id {
                    q = q.filter(t::worker_id.eq(v.clone()));
                }
                if let Some(v) = query.parent_id {
                    q = q.filter(t::parent_id.eq(v.0));
                }
                if let Some(v) = query.root_id {
                    q = q.filter(t::root_id.eq(v.0));
                }
                if let Some(v) = query.workflow_root_id {
                    q = q.filter(t::id.eq(v.0).or(t::root_id.eq(v.0).assume_not_null()));
                }
                if let Some(v) = &query.suspend_reason {
                    q = q.filter(t::suspend_reason.eq(v.clone()));
                }
                q
            }

            fn decode_tasks(rows: Vec<TaskRow>) -> Tx<Vec<Task>> {
                Ok(rows
                    .into_iter()
                    .map(TaskRow::into_task)
                    .collect::<Result<Vec<_>, _>>()?)
            }

            pub(crate) async fn list_tasks_q(conn: &mut Conn, query: &TaskQuery) -> Tx<Vec<Task>> {
                let rows = task_filter(query)
                    .order(t::id.asc())
                    .select(TaskRow::as_select())
                    .load(conn)
                    .await?;
                decode_tasks(rows)
            }

            pub(crate) async fn query_tasks_q(
                conn: &mut Conn,
                query: &TaskQuery,
                page: PageBounds,
            ) -> Tx<Page<Task>> {
                let total: i64 = task_filter(query).count().get_result(conn).await?;
                let q = task_filter(query);
                let q = match page.order {
                    Order::Asc => q.order((t::created_at.asc(), t::id.asc())),
                    Order::Desc => q.order((t::created_at.desc(), t::id.desc())),
                };
                let rows = q
                    .limit(i64::from(page.limit))
                    .offset(limit_i64(page.offset))
                    .select(TaskRow::as_select())
                    .load(conn)
                    .await?;
                Ok(Page::new(decode_tasks(rows)?, count_u64(total), page))
            }

            pub(crate) async fn child_results_q(
                conn: &mut Conn,
                parent: TaskId,
                round: i32,
            ) -> Tx<Vec<ChildResult>> {
                let rows: Vec<ChildRow> = t::table
                    .filter(t::parent_id.eq(parent.0))
                    .filter(t::parent_round.eq(round))
                    .filter(t::status.eq_any(SETTLED))
                    .order(t::id.asc())
                    .select((t::id, t::name, t::status, t::result, t::error))
                    .load(conn)
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(child_result)
                    .collect::<Result<Vec<_>, _>>()?)
            }

            pub(crate) async fn task_stats_q(
                conn: &mut Conn,
                tag: Option<String>,
                status: Option<TaskStatus>,
            ) -> Tx<Vec<TagStat>> {
                let mut q = t::table
                    .group_by((t::tag, t::name, t::status))
                    .select((t::tag, t::name, t::status, count_star()))
                    .order((t::tag.asc(), t::name.asc(), t::status.asc()))
                    .into_boxed();
                if let Some(tag) = tag {
                    q = q.filter(t::tag.eq(tag));
                }
                if let Some(status) = status {
                    q = q.filter(t::status.eq(status.as_str()));
                }
                let rows: Vec<(Option<String>, String, String, i64)> = q.load(conn).await?;
                rows.into_iter()
                    .map(|(tag, name, status, count)| {
                        Ok(TagStat {
                            tag,
                            name,
                            status: status_from_text(&status)?,
                            count: count_u64(count),
                        })
                    })
                    .collect()
            }

            /// Deletes tasks by id with their events and attempts, in chunks.
            async fn delete_ids(conn: &mut Conn, ids: &[i64]) -> Tx<RetentionReport> {
                let mut report = RetentionReport::default();
                for chunk in ids.chunks(CHUNK) {
                    report.events_deleted += diesel::delete(e::table.filter(e::task_id.eq_any(chunk)))
                        .execute(conn)
                        .await? as u64;
                    report.attempts_deleted += diesel::delete(a::table.filter(a::task_id.eq_any(chunk)))
                        .execute(conn)
                        .await? as u64;
                    report.tasks_deleted += diesel::delete(t::table.filter(t::id.eq_any(chunk)))
                        .execute(conn)
                        .await? as u64;
                }
                Ok(report)
            }

            pub(crate) async fn delete_tx(conn: &mut Conn, filter: &DeleteFilter) -> Tx<u64> {
                let mut q = t::table.select(t::id).into_boxed();
                if let Some(tag) = &filter.tag {
                    q = q.filter(t::tag.eq(tag.clone()));
                }
                if let Some(status) = filter.status {
                    q = q.filter(t::status.eq(status.as_str()));
                }
                if let Some(name) = &filter.name {
                    q = q.filter(t::name.eq(name.clone()));
                }
                let ids: Vec<i64> = q.load(conn).await?;
                Ok(delete_ids(conn, &ids).await?.tasks_deleted)
            }

            fn event_filter(query: &EventQuery) -> e::BoxedQuery<'static, Db> {
                let mut q = e::table.into_boxed();
                if let Some(v) = query.task_id {
                    q = q.filter(e::task_id.eq(v.0));
                }
                if let Some(v) = query.root_id {
                    q = q.filter(e::root_id.eq(v.0));
                }
                if let Some(v) = query.parent_id {
                    q = q.filter(e::parent_id.eq(v.0));
                }
                if let Some(v) = &query.worker_id {
                    q = q.filter(e::worker_id.eq(v.clone()));
                }
                if let Some(v) = query.event_type {
                    q = q.filter(e::event_type.eq(v.as_str()));
                }
                if !query.event_types.is_empty() {
                    let types: Vec<&'static str> = query.event_types.iter().map(|t| t.as_str()).collect();
                    q = q.filter(e::event_type.eq_any(types));
                }
                if let Some(v) = query.attempt {
                    q = q.filter(e::attempt.eq(v));
                }
                if let Some(v) = query.stage {
                    q = q.filter(e::stage.eq(v));
                }
                if let Some(v) = query.started_after {
                    q = q.filter(e::event_time.ge(to_millis(v)));
                }
                if let Some(v) = query.started_before {
                    q = q.filter(e::event_time.le(to_millis(v)));
                }
                q
            }

            pub(crate) async fn query_events_q(
                conn: &mut Conn,
                query: &EventQuery,
                page: PageBounds,
            ) -> Tx<Page<TaskEvent>> {
                let total: i64 = event_filter(query).count().get_result(conn).await?;
                let q = event_filter(query);
                let q = match page.order {
                    Order::Asc => q.order((e::event_time.asc(), e::id.asc())),
                    Order::Desc => q.order((e::event_time.desc(), e::id.desc())),
                };
                let rows: Vec<EventRow> = q
                    .limit(i64::from(page.limit))
                    .offset(limit_i64(page.offset))
                    .select(EventRow::as_select())
                    .load(conn)
                    .await?;
                let items = rows
                    .into_iter()
                    .map(EventRow::into_event)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Page::new(items, count_u64(total), page))
            }

            fn attempt_filter(query: &AttemptQuery) -> a::BoxedQuery<'static, Db> {
                let mut q = a::table.into_boxed();
                if let Some(v) = query.task_id {
                    q = q.filter(a::task_id.eq(v.0));
                }
                if let Some(v) = query.workflow_root_id {
                    q = q.filter(
                        a::task_id.eq_any(
                            t::table
                                .filter(t::id.eq(v.0).or(t::root_id.eq(v.0).assume_not_null()))
                                .select(t::id),
                        ),
                    );
                }
                if let Some(v) = &query.worker_id {
                    q = q.filter(a::worker_id.eq(v.clone()));
                }
                if let Some(v) = query.outcome {
                    q = q.filter(a::outcome.eq(v.as_str()));
                }
                if let Some(v) = query.started_after {
                    q = q.filter(a::started_at.ge(to_millis(v)));
                }
                if let Some(v) = query.started_before {
                    q = q.filter(a::started_at.le(to_millis(v)));
                }
                if let Some(v) = query.ended_after {
                    q = q.filter(a::ended_at.ge(to_millis(v)));
                }
                if let Some(v) = query.ended_before {
                    q = q.filter(a::ended_at.le(to_millis(v)));
                }
                if query.open_only {
                    q = q.filter(a::ended_at.is_null());
                }
                q
            }

            pub(crate) async fn query_attempts_q(
                conn: &mut Conn,
                query: &AttemptQuery,
                page: PageBounds,
            ) -> Tx<Page<TaskAttempt>> {
                let total: i64 = attempt_filter(query).count().get_result(conn).await?;
                let q = attempt_filter(query);
                // One task: by attempt number. A workflow (or anything else): by start time.
                let by_attempt = query.task_id.is_some() && query.workflow_root_id.is_none();
                let q = match (by_attempt, page.order) {
                    (true, Order::Asc) => q.order((a::attempt.asc(), a::id.asc())),
                    (true, Order::Desc) => q.order((a::attempt.desc(), a::id.desc())),
                    (false, Order::Asc) => q.order((a::started_at.asc(), a::id.asc())),
                    (false, Order::Desc) => q.order((a::started_at.desc(), a::id.desc())),
                };
                let rows: Vec<AttemptRow> = q
                    .limit(i64::from(page.limit))
                    .offset(limit_i64(page.offset))
                    .select(AttemptRow::as_select())
                    .load(conn)
                    .await?;
                let items = rows
                    .into_iter()
                    .map(AttemptRow::into_attempt)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Page::new(items, count_u64(total), page))
            }

            /// One retention batch. Units are whole workflows: a root (`root_id IS NULL`)
            /// with every task whose `root_id` is that root, or the remains of a workflow
            /// whose root is already gone (orphans sharing a `root_id`). A unit qualifies when
            /// every member has an eligible status and a retention clock before the cutoff.
            pub(crate) async fn purge_tx(conn: &mut Conn, run: &RetentionRun) -> Tx<RetentionReport> {
                if run.statuses.is_empty() || run.batch_size == 0 {
                    return Ok(RetentionReport::default());
                }
                let statuses: Vec<&'static str> = run.statuses.iter().map(|s| s.as_str()).collect();
                let cutoff = to_millis(run.cutoff);
                let batch = i64::from(run.batch_size);
                let (d, r) = diesel::alias!(
                    $crate::schema::fib_flow_tasks as d,
                    $crate::schema::fib_flow_tasks as r
                );
                let clock = coalesce(t::last_active_time, t::created_at);

                // Roots that are eligible and have no ineligible descendant.
                let roots: Vec<i64> = t::table
                    .filter(t::root_id.is_null())
                    .filter(t::status.eq_any(statuses.clone()))
                    .filter(coalesce(t::last_active_time, t::created_at).lt(cutoff))
                    .filter(not(exists(
                        d.filter(d.field(t::root_id).eq(t::id.nullable()))
                            .filter(
                                d.field(t::status).ne_all(statuses.clone()).or(coalesce(
                                    d.field(t::last_active_time),
                                    d.field(t::created_at),
                                )
                                .ge(cutoff)),
                            ),
                    )))
                    .order((clock.asc(), t::id.asc()))
                    .limit(batch)
                    .select(t::id)
                    .load(conn)
                    .await?;

                // Orphaned workflow remains: the root row is gone, every member is eligible.
                let orphan_rows: Vec<Option<i64>> = t::table
                    .filter(t::root_id.is_not_null())
                    .filter(not(exists(r.filter(r.field(t::id).nullable().eq(t::root_id)))))
                    .filter(t::status.eq_any(statuses.clone()))
                    .filter(coalesce(t::last_active_time, t::created_at).lt(cutoff))
                    .filter(not(exists(
                        d.filter(d.field(t::root_id).eq(t::root_id))
                            .filter(
                                d.field(t::status).ne_all(statuses.clone()).or(coalesce(
                                    d.field(t::last_active_time),
                                    d.field(t::created_at),
                                )
                                .ge(cutoff)),
                            ),
                    )))
                    .order((coalesce(t::last_active_time, t::created_at).asc(), t::id.asc()))
                    .limit(batch)
                    .select(t::root_id)
                    .load(conn)
                    .await?;
                let mut orphan_roots: Vec<i64> = Vec::new();
                for root in orphan_rows.into_iter().flatten() {
                    if !orphan_roots.contains(&root) {
                        orphan_roots.push(root);
                    }
                }

                // Fill the batch with whole units, at least one.
                let mut ids: Vec<i64> = Vec::new();
                let units = roots
                    .into_iter()
                    .map(|root| (root, true))
                    .chain(orphan_roots.into_iter().map(|root| (root, false)));
                for (root, has_root_row) in units {
                    let mut members: Vec<i64> = t::table
                        .filter(t::root_id.eq(root))
                        .order(t::id.asc())
                        .select(t::id)
                        .load(conn)
                        .await?;
                    if has_root_row {
                        members.insert(0, root);
                    }
                    if !ids.is_empty() && ids.len() + members.len() > run.batch_size as usize {
                        break;
                    }
                    ids.extend(members);
                    if ids.len() >= run.batch_size as usize {
                        break;
                    }
                }
                delete_ids(conn, &ids).await
            }
        }
    };
}

pub(crate) use store_ops;

/// `insert_created` statement by statement, for backends without a one-statement form: expands
/// to `async fn insert_created` in the backend module, over its `insert_task_rows` (ids in
/// input order), `insert_event_rows` and `notify_due`.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
macro_rules! insert_created_each {
    () => {
        /// One chunk of new tasks with their `task_created` events (and the due notification
        /// when `notify`), statement by statement in the caller's transaction.
        async fn insert_created(
            conn: &mut Conn,
            tasks: &[fib_flow_domain::NewTask],
            notify: bool,
        ) -> diesel::QueryResult<Vec<i64>> {
            let values: Vec<$crate::rows::TaskValues> = tasks
                .iter()
                .map($crate::rows::TaskValues::from_new)
                .collect();
            let ids = insert_task_rows(conn, &values).await?;
            let events: Vec<NewEventRow> = tasks
                .iter()
                .zip(&ids)
                .map(|(task, id)| $crate::rows::created_event(task, fib_flow_domain::TaskId(*id)))
                .collect();
            insert_event_rows(conn, events).await?;
            if notify {
                notify_due(conn).await?;
            }
            Ok(ids)
        }
    };
}

#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) use insert_created_each;

/// Implements [`fib_flow_ports::TaskStore`] for a backend store type on top of `mod ops`.
///
/// The store type provides `conn()` (a pooled connection), `write_guard()` (the SQLite
/// single-writer lock, bounded by the acquire timeout; a no-op elsewhere), `run_migrations()`, `wait_notification()` and
/// `shutdown()`. `$tx` is the transaction method: `immediate_transaction` on SQLite (take the
/// write lock up front instead of upgrading mid-transaction), `transaction` elsewhere.
macro_rules! impl_task_store {
    ($store:ty, $tx:ident) => {
        #[async_trait::async_trait]
        impl fib_flow_ports::TaskStore for $store {
            fn backend(&self) -> &'static str {
                BACKEND
            }

            async fn migrate(&self) -> Result<(), fib_flow_ports::PortError> {
                self.run_migrations().await
            }

            async fn insert_tasks(
                &self,
                tasks: Vec<fib_flow_domain::NewTask>,
            ) -> Result<Vec<fib_flow_domain::TaskId>, fib_flow_ports::PortError> {
                if tasks.is_empty() {
                    return Ok(Vec::new());
                }
                $crate::rows::check_new_tasks(&tasks)?;
                let _writer = self.write_guard().await?;
                let mut conn = self.conn().await?;
                if ONE_STATEMENT_INSERT && tasks.len() <= $crate::orchestration::CHUNK {
                    // One statement is atomic by itself: no BEGIN/COMMIT round trips.
                    return ops::insert_tasks_tx(&mut conn, &tasks)
                        .await
                        .map_err(|e| e.into_port(BACKEND));
                }
                conn.$tx(async |c| ops::insert_tasks_tx(c, &tasks).await)
                    .await
                    .map_err(|e: $crate::error::TxError| e.into_port(BACKEND))
            }

            async fn insert_unique(
                &self,
                task: fib_flow_domain::NewTask,
                unique_key: String,
            ) -> Result<fib_flow_ports::Enqueued, fib_flow_ports::PortError> {
                $crate::rows::check_new_tasks(std::slice::from_ref(&task))?;
                fib_flow_domain::limits::check_name("unique_key", &unique_key)
                    .map_err(fib_flow_ports::PortError::Rejected)?;
                $crate::orchestration::retry_key_conflict(|| async {
                    let _writer = self.write_guard().await?;
                    let mut conn = self.conn().await?;
                    conn.$tx(async |c| ops::insert_unique_tx(c, &task, &unique_key).await)
                        .await
                        .map_err(|e: $crate::error::TxError| e.into_port(BACKEND))
                })
                .await
            }

            async fn upsert_cron(
                &self,
                task: fib_flow_domain::NewTask,
                cron_key: String,
            ) -> Result<
                (fib_flow_domain::TaskId, fib_flow_ports::CronChange),
                fib_flow_ports::PortError,
            > {
                $crate::rows::check_new_tasks(std::slice::from_ref(&task))?;
                fib_flow_domain::limits::check_name("cron_key", &cron_key)
                    .map_err(fib_flow_ports::PortError::Rejected)?;
                $crate::orchestration::retry_key_conflict(|| async {
                    let _writer = self.write_guard().await?;
                    let mut conn = self.conn().await?;
                    conn.$tx(async |c| ops::upsert_cron_tx(c, &task, &cron_key).await)
                        .await
                        .map_err(|e: $crate::error::TxError| e.into_port(BACKEND))
                })
                .await
            }

            async fn remove_cron(
                &self,
                cron_key: String,
            ) -> Result<bool, fib_flow_ports::PortError> {
                let _writer = self.write_guard().await?;
                let mut conn = self.conn().await?;
                conn.$tx(async |c| ops::remove_cron_tx(c, &cron_key).await)
                    .await
                    .map_err(|e: $crate::error::TxError| e.into_port(BACKEND))
            }

            async fn claim(
                &self,
                request: fib_flow_ports::ClaimRequest,
            ) -> Result<Vec<fib_flow_domain::Task>, fib_flow_ports::PortError> {
                if request.names.is_empty() || request.limit == 0 {
                    return Ok(Vec::new());
                }
                let _writer = self.write_guard().await?;
                let mut conn = self.conn().await?;
                conn.$tx(async |c| ops::claim_tx(c, &request).await)
                    .await
                    .map_err(|e: $crate::error::TxError| e.into_port(BACKEND))
            }

            async fn apply(
                &self,
                task_id: fib_flow_domain::TaskId,
                command: fib_flow_domain::Command,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<fib_flow_domain::Task, fib_flow_ports::PortError> {
                let _writer = self.write_guard().await?;
                let mut conn = self.conn().await?;
                conn.$tx(async move |c| ops::apply_tx(c, task_id, command, now).await)
                    .await
                    .map_err(|e: $crate::error::TxError| e.into_port(BACKEND))
            }

            async fn apply_batch(
                &self,
                commands: Vec<fib_flow_ports::BatchCommand>,
            ) -> Result<
                Vec<Result<fib_flow_domain::Task, fib_flow_ports::PortError>>,
                fib_flow_ports::PortError,
            > {
                if commands.is_empty() {
                    return Ok(Vec::new());
                }
                let _writer = self.write_guard().await?;
                let mut conn = self.conn().await?;
                conn.$tx(async |c| ops::apply_batch_tx(c, &commands).await)
                    .await
                    .map_err(|e: $crate::error::TxError| e.into_port(BACKEND))
            }

            async fn spawn_children(
                &self,
                request: fib_flow_ports::SpawnRequest,
            ) -> Result<Vec<fib_flow_domain::TaskId>, fib_flow_ports::PortError> {
                $crate::rows::check_new_tasks(&request.children)?;
                let _writer = self.write_guard().await?;
                let mut conn = self.conn().await?;
                conn.$tx(async move |c| ops::spawn_tx(c, request).await)
                    .await
                    .map_err(|e: $crate::error::TxError| e.into_port(BACKEND))
            }

            async fn heartbeat(
                &self,
                worker_id: String,
                attempts: Vec<(fib_flow_domain::TaskId, i32)>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, fib_flow_ports::PortError> {
                if attempts.is_empty() {
                    return Ok(0);
                }
                let _writer = self.write_guard().await?;
                let mut conn = self.conn().await?;
                ops::heartbeat_q(&mut conn, &worker_id, &attempts, now)
                    .await
                    .map_err(|e| e.into_port(BACKEND))
            }

            async fn record(
                &self,
                record: fib_flow_domain::progress::HandlerRecord,
            ) -> Result<i64, fib_flow_ports::PortError> {
                let _writer = self.write_guard().await?;
                let mut conn = self.conn().await?;
                conn.$tx(async |c| ops::record_tx(c, &record).await)
                    .await
                    .map_err(|e: $crate::error::TxError| e.into_port(BACKEND))
            }

            async fn expired_attempts(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                heartbeat_cutoff: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> Result<Vec<fib_flow_ports::Expiry>, fib_flow_ports::PortError> {
                if limit == 0 {
                    return Ok(Vec::new());
                }
                let mut conn = self.conn().await?;
                ops::expired_q(&mut conn, now, heartbeat_cutoff, limit)
                    .await
                    .map_err(|e| e.into_port(BACKEND))
            }

            async fn outstanding_children(
                &self,
                parent_id: fib_flow_domain::TaskId,
                round: i32,
            ) -> Result<i32, fib_flow_ports::PortError> {
                let mut conn = self.conn().await?;
                ops::outstanding_q(&mut conn, parent_id, round)
                    .await
                    .map_err(|e| e.into_port(BACKEND))
            }

            async fn get_task(
                &self,
                task_id: fib_flow_domain::TaskId,
            ) -> Result<Option<fib_flow_domain::Task>, fib_flow_ports::PortError> {
                let mut conn = self.conn().await?;
                ops::get_task_q(&mut conn, task_id)
                    .await
                    .map_err(|e| e.into_port(BACKEND))
            }

            async fn list_tasks(
                &self,
                query: fib_flow_domain::query::TaskQuery,
            ) -> Result<Vec<fib_flow_domain::Task>, fib_flow_ports::PortError> {
                let mut conn = self.conn().await?;
                ops::list_tasks_q(&mut conn, &query)
                    .await
                    .map_err(|e| e.into_port(BACKEND))
            }

            async fn query_tasks(
                &self,
                query: fib_flow_domain::query::TaskQuery,
                page: fib_flow_domain::query::PageBounds,
            ) -> Result<
                fib_flow_domain::query::Page<fib_flow_domain::Task>,
                fib_flow_ports::PortError,
            > {
                let mut conn = self.conn().await?;
                ops::query_tasks_q(&mut conn, &query, page)
                    .await
                    .map_err(|e| e.into_port(BACKEND))
            }

            async fn child_results(
                &self,
                parent_id: fib_flow_domain::TaskId,
                round: i32,
            ) -> Result<Vec<fib_flow_domain::ChildResult>, fib_flow_ports::PortError> {
                let mut conn = self.conn().await?;
                ops::child_results_q(&mut conn, parent_id, round)
                    .await
                    .map_err(|e| e.into_port(BACKEND))
            }

            async fn task_stats(
                &self,
                tag: Option<String>,
                status: Option<fib_flow_domain::TaskStatus>,
            ) -> Result<Vec<fib_flow_domain::query::TagStat>, fib_flow_ports::PortError> {
                let mut conn = self.conn().await?;
                ops::task_stats_q(&mut conn, tag, status)
                    .await
                    .map_err(|e| e.into_port(BACKEND))
            }

            async fn delete_tasks(
                &self,
                filter: fib_flow_domain::query::DeleteFilter,
            ) -> Result<u64, fib_flow_ports::PortError> {
                filter
                    .validate()
                    .map_err(fib_flow_ports::PortError::Rejected)?;
                let _writer = self.write_guard().await?;
                let mut conn = self.conn().await?;
                conn.$tx(async |c| ops::delete_tx(c, &filter).await)
                    .await
                    .map_err(|e: $crate::error::TxError| e.into_port(BACKEND))
            }

            async fn query_events(
                &self,
                query: fib_flow_domain::query::EventQuery,
                page: fib_flow_domain::query::PageBounds,
            ) -> Result<
                fib_flow_domain::query::Page<fib_flow_domain::TaskEvent>,
                fib_flow_ports::PortError,
            > {
                let mut conn = self.conn().await?;
                ops::query_events_q(&mut conn, &query, page)
                    .await
                    .map_err(|e| e.into_port(BACKEND))
            }

            async fn query_attempts(
                &self,
                query: fib_flow_domain::query::AttemptQuery,
                page: fib_flow_domain::query::PageBounds,
            ) -> Result<
                fib_flow_domain::query::Page<fib_flow_domain::TaskAttempt>,
                fib_flow_ports::PortError,
            > {
                let mut conn = self.conn().await?;
                ops::query_attempts_q(&mut conn, &query, page)
                    .await
                    .map_err(|e| e.into_port(BACKEND))
            }

            async fn purge_expired(
                &self,
                run: fib_flow_ports::RetentionRun,
            ) -> Result<fib_flow_ports::RetentionReport, fib_flow_ports::PortError> {
                let _writer = self.write_guard().await?;
                let mut conn = self.conn().await?;
                conn.$tx(async |c| ops::purge_tx(c, &run).await)
                    .await
                    .map_err(|e: $crate::error::TxError| e.into_port(BACKEND))
            }

            async fn register_worker(
                &self,
                registration: fib_flow_ports::WorkerRegistration,
            ) -> Result<fib_flow_domain::Worker, fib_flow_ports::PortError> {
                fib_flow_domain::limits::check_name("worker_id", &registration.worker_id)
                    .and_then(|()| {
                        fib_flow_domain::limits::check_name("pod_id", &registration.pod_id)
                    })
                    .map_err(fib_flow_ports::PortError::Rejected)?;
                let _writer = self.write_guard().await?;
                let mut conn = self.conn().await?;
                conn.$tx(async |c| ops::register_worker_tx(c, &registration).await)
                    .await
                    .map_err(|e: $crate::error::TxError| e.into_port(BACKEND))
            }

            async fn heartbeat_worker(
                &self,
                worker_id: String,
                now: chrono::DateTime<chrono::Utc>,
                ttl: std::time::Duration,
            ) -> Result<bool, fib_flow_ports::PortError> {
                let _writer = self.write_guard().await?;
                let mut conn = self.conn().await?;
                ops::heartbeat_worker_q(&mut conn, &worker_id, now, ttl)
                    .await
                    .map_err(|e| e.into_port(BACKEND))
            }

            async fn get_worker(
                &self,
                worker_id: String,
            ) -> Result<Option<fib_flow_domain::Worker>, fib_flow_ports::PortError> {
                let mut conn = self.conn().await?;
                ops::get_worker_q(&mut conn, &worker_id)
                    .await
                    .map_err(|e| e.into_port(BACKEND))
            }

            async fn list_workers(
                &self,
                query: fib_flow_domain::WorkerQuery,
            ) -> Result<Vec<fib_flow_domain::Worker>, fib_flow_ports::PortError> {
                let mut conn = self.conn().await?;
                ops::list_workers_q(&mut conn, &query)
                    .await
                    .map_err(|e| e.into_port(BACKEND))
            }

            async fn supersede_workers(
                &self,
                pod_id: String,
                current_worker_id: String,
                now: chrono::DateTime<chrono::Utc>,
                recovery: Option<fib_flow_ports::Recovery>,
            ) -> Result<fib_flow_ports::RetiredWorkers, fib_flow_ports::PortError> {
                let _writer = self.write_guard().await?;
                let mut conn = self.conn().await?;
                conn.$tx(async |c| {
                    ops::supersede_tx(c, &pod_id, &current_worker_id, now, recovery.as_ref()).await
                })
                .await
                .map_err(|e: $crate::error::TxError| e.into_port(BACKEND))
            }

            async fn reap_workers(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                recovery: Option<fib_flow_ports::Recovery>,
            ) -> Result<fib_flow_ports::RetiredWorkers, fib_flow_ports::PortError> {
                let _writer = self.write_guard().await?;
                let mut conn = self.conn().await?;
                conn.$tx(async |c| ops::reap_tx(c, now, recovery.as_ref()).await)
                    .await
                    .map_err(|e: $crate::error::TxError| e.into_port(BACKEND))
            }

            async fn stop_worker(
                &self,
                worker_id: String,
                now: chrono::DateTime<chrono::Utc>,
                recovery: Option<fib_flow_ports::Recovery>,
            ) -> Result<u64, fib_flow_ports::PortError> {
                let _writer = self.write_guard().await?;
                let mut conn = self.conn().await?;
                conn.$tx(async |c| ops::stop_worker_tx(c, &worker_id, now, recovery.as_ref()).await)
                    .await
                    .map_err(|e: $crate::error::TxError| e.into_port(BACKEND))
            }

            async fn idle_attempts(
                &self,
                worker_id: String,
                idle_before: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> Result<Vec<(fib_flow_domain::TaskId, i32)>, fib_flow_ports::PortError> {
                if limit == 0 {
                    return Ok(Vec::new());
                }
                let mut conn = self.conn().await?;
                ops::idle_attempts_q(&mut conn, &worker_id, idle_before, limit)
                    .await
                    .map_err(|e| e.into_port(BACKEND))
            }

            async fn wait_for_notification(&self) {
                self.wait_notification().await
            }

            async fn close(&self) {
                self.shutdown().await
            }
        }
    };
}

pub(crate) use impl_task_store;
