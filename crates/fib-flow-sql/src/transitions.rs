//! Task transitions in a transaction: load the rows, let [`fib_flow_domain::apply`] decide,
//! write the result under the transition's guard, and settle parents of settling children.
//! Also inserts (plain, unique, cron) and the attempt-level reads the runtime polls.
//!
//! Everything here runs inside a transaction the caller opened, unless a function says it is a
//! plain read.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use fib_flow_domain::progress::HandlerRecord;
use fib_flow_domain::time::{duration_millis, to_millis};
use fib_flow_domain::{
    ChildSettlement, Command, ExpiryKind, NewTask, ParentEffect, Task, TaskId, Transition,
};
use fib_flow_ports::{
    BatchCommand, ClaimRequest, CronChange, Enqueued, Expiry, PortError, SpawnRequest,
};

use crate::error::{TxError, domain_error};
use crate::queries::{self, CronRedefinition};
use crate::rows::{NewEventRow, RecordChanges, TaskRow, json_to_text, normalized};
use crate::write_plan::{BatchWrite, candidate_queries, take_candidates};
use crate::{CHUNK, Statements};

type Tx<T> = Result<T, TxError>;

async fn load_task<S: Statements>(conn: &mut S::Conn, id: i64) -> Tx<Option<Task>> {
    match S::lock_task(conn, id).await? {
        Some(row) => Ok(Some(row.into_task()?)),
        None => Ok(None),
    }
}

/// Writes a batch through the backend; every row must still match its guard (see
/// [`check_written`]).
async fn write_guarded<S: Statements>(conn: &mut S::Conn, batch: &BatchWrite) -> Tx<()> {
    if batch.rows.is_empty() {
        return Ok(());
    }
    let written = S::write_batch(conn, batch).await?;
    check_written(batch, written)
}

/// Fails unless every row of `batch` matched its guard. The batch holds their locks, so a miss
/// is a bug or a concurrent writer that ignored the lock order, and fails the whole batch.
pub fn check_written(batch: &BatchWrite, written: usize) -> Tx<()> {
    match batch.rows.first() {
        Some(missed) if written != batch.rows.len() => Err(PortError::Stale {
            task_id: TaskId(missed.id),
            attempt: missed.guard_attempt,
        }
        .into()),
        _ => Ok(()),
    }
}

/// Persists one transition: guarded row write, attempt open/close, events.
async fn persist<S: Statements>(conn: &mut S::Conn, tr: &Transition, now: DateTime<Utc>) -> Tx<()> {
    write_guarded::<S>(conn, &BatchWrite::of(std::slice::from_ref(tr), now)).await
}

/// Reports settled children to their parents (and grandparents, when a parent settles in
/// turn), each in this transaction. A missing parent is logged and ends the chain: a deleted
/// workflow must not make its orphans' writes fail.
///
/// `later_siblings` counts children of the same parent round that this batch has already
/// written as settled but reports after this one: they still count as outstanding for this
/// report, exactly as if each child had its own transaction.
async fn settle_parents<S: Statements>(
    conn: &mut S::Conn,
    mut effect: Option<ParentEffect>,
    now: DateTime<Utc>,
    mut later_siblings: i64,
) -> Tx<()> {
    while let Some(settled) = effect {
        let Some(parent) = load_task::<S>(conn, settled.parent_id.0).await? else {
            tracing::warn!(
                backend = S::BACKEND,
                parent_id = %settled.parent_id,
                child_id = %settled.child_id,
                "a child settled but its parent no longer exists; nothing to notify"
            );
            return Ok(());
        };
        let outstanding =
            queries::count_outstanding(S::connection(conn), settled.parent_id.0, settled.round)
                .await?
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
        persist::<S>(conn, &tr, now).await?;
        effect = tr.parent;
    }
    Ok(())
}

/// One command on one task (see `TaskStore::apply`).
pub async fn apply_tx<S: Statements>(
    conn: &mut S::Conn,
    task_id: TaskId,
    command: Command,
    now: DateTime<Utc>,
) -> Tx<Task> {
    let before = load_task::<S>(conn, task_id.0)
        .await?
        .ok_or(PortError::NotFound(task_id))?;
    let tr = fib_flow_domain::apply(&before, command, now).map_err(domain_error)?;
    if tr.is_noop(&before) {
        return Ok(before);
    }
    persist::<S>(conn, &tr, now).await?;
    settle_parents::<S>(conn, tr.parent, now, 0).await?;
    Ok(normalized(&tr.task))
}

/// Many commands in one transaction (see `TaskStore::apply_batch`). Lock order is fixed so
/// that two batches can never deadlock on each other: the batch's own rows in ascending id
/// order (one statement), then the parents of settling children in ascending id order. A
/// parent is always older (smaller id) than its children, and no transaction locks a child
/// after its parent, so no cycle can form.
pub async fn apply_batch_tx<S: Statements>(
    conn: &mut S::Conn,
    commands: &[BatchCommand],
) -> Tx<Vec<Result<Task, PortError>>> {
    let rows = S::lock_tasks(conn, &batch_ids(commands)).await?;
    let plan = plan_batch(rows, commands)?;
    write_guarded::<S>(conn, &plan.write).await?;
    settle_batch_parents::<S>(conn, plan.parent_effects, plan.now).await?;
    Ok(plan.verdicts)
}

/// The task ids a batch of commands locks, ascending and without duplicates (the lock order).
pub fn batch_ids(commands: &[BatchCommand]) -> Vec<i64> {
    let mut ids: Vec<i64> = commands.iter().map(|c| c.task_id.0).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// What a batch of commands does, decided from its locked rows before anything is written.
#[derive(Debug)]
pub struct BatchPlan {
    /// One verdict per command, in command order.
    pub verdicts: Vec<Result<Task, PortError>>,
    /// The writes of every transition that changes a row.
    pub write: BatchWrite,
    /// Children that settled: their parents are told after the write, in lock order.
    pub parent_effects: Vec<ParentEffect>,
    /// The batch's instant (its latest command's).
    pub now: DateTime<Utc>,
}

/// Applies each command to its row (or to the row an earlier command of the batch left), as
/// [`apply_batch_tx`] does, without touching the database.
pub fn plan_batch(rows: Vec<TaskRow>, commands: &[BatchCommand]) -> Tx<BatchPlan> {
    let now = commands.iter().map(|c| c.at).max().unwrap_or_default();
    let mut current: HashMap<i64, Task> = HashMap::with_capacity(rows.len());
    for row in rows {
        let task = row.into_task()?;
        current.insert(task.id.0, task);
    }
    let mut verdicts = Vec::with_capacity(commands.len());
    let mut transitions: Vec<Transition> = Vec::with_capacity(commands.len());
    for BatchCommand {
        task_id: id,
        command,
        at,
    } in commands
    {
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
    let write = BatchWrite::of(&transitions, now);
    let mut parent_effects: Vec<ParentEffect> =
        transitions.into_iter().filter_map(|tr| tr.parent).collect();
    parent_effects.sort_by_key(|effect| (effect.parent_id.0, effect.round, effect.child_id.0));
    Ok(BatchPlan {
        verdicts,
        write,
        parent_effects,
        now,
    })
}

/// Tells the parents of a batch's settled children (sorted by parent, round and child), each
/// in this transaction after the batch's own write.
pub async fn settle_batch_parents<S: Statements>(
    conn: &mut S::Conn,
    effects: Vec<ParentEffect>,
    now: DateTime<Utc>,
) -> Tx<()> {
    for (index, effect) in effects.iter().enumerate() {
        let later_siblings = effects[index + 1..]
            .iter()
            .take_while(|later| later.parent_id == effect.parent_id && later.round == effect.round)
            .count();
        settle_parents::<S>(conn, Some(*effect), now, later_siblings as i64).await?;
    }
    Ok(())
}

/// Inserts tasks a chunk per statement where the backend can (ids in input order on every
/// backend), with their `task_created` events.
pub async fn insert_tasks_tx<S: Statements>(
    conn: &mut S::Conn,
    tasks: &[NewTask],
) -> Tx<Vec<TaskId>> {
    let due = tasks
        .iter()
        .any(|task| task.next_run_time <= task.created_at);
    let mut ids = Vec::with_capacity(tasks.len());
    for (index, chunk) in tasks.chunks(CHUNK).enumerate() {
        let inserted = S::insert_created(conn, chunk, due && index == 0).await?;
        if inserted.len() != chunk.len() {
            return Err(PortError::Database {
                backend: S::BACKEND,
                message: format!(
                    "inserted {} task rows for {} tasks",
                    inserted.len(),
                    chunk.len()
                ),
            }
            .into());
        }
        ids.extend(inserted.into_iter().map(TaskId));
    }
    Ok(ids)
}

/// Inserts tasks through the caller's own connection, in the transaction the caller opened
/// (the facade's `CallerConnection`): the tasks exist if and only if it commits.
pub async fn insert_in_caller_transaction<S: Statements>(
    conn: &mut S::Conn,
    tasks: &[NewTask],
) -> Result<Vec<TaskId>, PortError> {
    crate::rows::check_new_tasks(tasks)?;
    insert_tasks_tx::<S>(conn, tasks)
        .await
        .map_err(|error| error.into_port(S::BACKEND))
}

async fn insert_one<S: Statements>(conn: &mut S::Conn, task: &NewTask) -> Tx<TaskId> {
    let ids = insert_tasks_tx::<S>(conn, std::slice::from_ref(task)).await?;
    ids.into_iter().next().ok_or_else(|| {
        PortError::Database {
            backend: S::BACKEND,
            message: "inserted no row for one task".to_owned(),
        }
        .into()
    })
}

/// Children of a running parent, and the parent's move to waiting (see
/// `TaskStore::spawn_children`).
pub async fn spawn_tx<S: Statements>(conn: &mut S::Conn, request: SpawnRequest) -> Tx<Vec<TaskId>> {
    // Lock the parent first so a concurrent transition of it waits for (or beats) this one
    // before any child row exists.
    if load_task::<S>(conn, request.parent_id.0).await?.is_none() {
        return Err(PortError::NotFound(request.parent_id).into());
    }
    let ids = insert_tasks_tx::<S>(conn, &request.children).await?;
    let command = Command::AwaitChildren {
        attempt: request.attempt,
        child_ids: ids.clone(),
        child_names: request.children.iter().map(|c| c.name.clone()).collect(),
        context: request.context,
        policy: request.policy,
    };
    apply_tx::<S>(conn, request.parent_id, command, request.now).await?;
    Ok(ids)
}

/// Due candidates of every query of the claim plan, merged in claim order.
async fn claim_candidates<S: Statements>(
    conn: &mut S::Conn,
    request: &ClaimRequest,
) -> Tx<Vec<TaskRow>> {
    let now = to_millis(request.now);
    let lease = request
        .require_active_lease
        .then_some(request.worker_id.as_str());
    let queries = candidate_queries(request);
    let mut found = Vec::with_capacity(queries.len());
    for query in &queries {
        found.push(S::select_claimable(conn, &query.names, now, query.limit, lease).await?);
    }
    Ok(take_candidates(&queries, found, request.limit))
}

/// One claim round (see `TaskStore::claim`).
pub async fn claim_tx<S: Statements>(conn: &mut S::Conn, request: &ClaimRequest) -> Tx<Vec<Task>> {
    let rows = claim_candidates::<S>(conn, request).await?;
    let (claimed, write) = plan_claim(rows, request)?;
    write_guarded::<S>(conn, &write).await?;
    Ok(claimed)
}

/// Claims the selected rows for `request`'s worker: the claimed tasks, and the writes that
/// record it (rows, opened attempts, events), decided without touching the database.
pub fn plan_claim(rows: Vec<TaskRow>, request: &ClaimRequest) -> Tx<(Vec<Task>, BatchWrite)> {
    let mut claimed = Vec::with_capacity(rows.len());
    let mut transitions = Vec::with_capacity(rows.len());
    for row in rows {
        let before = row.into_task()?;
        let command = Command::Claim {
            worker_id: request.worker_id.clone(),
        };
        let tr = match fib_flow_domain::apply(&before, command, request.now) {
            Ok(tr) => tr,
            Err(error) => {
                // The query only returns due pending rows, so this means the domain and the
                // query disagree; skip the row rather than fail the whole round.
                tracing::warn!(task_id = %before.id, %error, "claim rejected by the domain");
                continue;
            }
        };
        claimed.push(normalized(&tr.task));
        transitions.push(tr);
    }
    Ok((claimed, BatchWrite::of(&transitions, request.now)))
}

/// Heartbeats, one UPDATE per attempt by primary key in ascending id order (no transaction).
/// Not one multi-row UPDATE: InnoDB may serve that through a secondary index on `status`,
/// locking that index's entries before the rows, the reverse of a batch write (rows first,
/// then their index entries) and a deadlock under load. A lookup by primary key takes the row
/// lock first, like every other writer.
pub async fn heartbeat<S: Statements>(
    conn: &mut S::Conn,
    worker_id: &str,
    attempts: &[(TaskId, i32)],
    now: DateTime<Utc>,
) -> Tx<u64> {
    let mut ordered = attempts.to_vec();
    ordered.sort_unstable();
    let now = to_millis(now);
    let mut refreshed = 0u64;
    for (task_id, attempt) in ordered {
        refreshed += S::heartbeat_row(conn, task_id.0, attempt, worker_id, now).await? as u64;
    }
    Ok(refreshed)
}

/// A handler's progress record: the row's activity clocks and progress, and its event.
pub async fn record_tx<S: Statements>(conn: &mut S::Conn, record: &HandlerRecord) -> Tx<i64> {
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
    let written =
        queries::record_progress(S::connection(conn), event.task_id.0, attempt, &changes).await?;
    if written == 0 {
        return Err(PortError::Stale {
            task_id: event.task_id,
            attempt,
        }
        .into());
    }
    Ok(S::insert_event_row(conn, &NewEventRow::from(event)).await?)
}

/// Running attempts past their deadline or silent since `heartbeat_cutoff` (a plain read).
pub async fn expired<S: Statements>(
    conn: &mut S::Conn,
    now: DateTime<Utc>,
    heartbeat_cutoff: DateTime<Utc>,
    limit: u32,
) -> Tx<Vec<Expiry>> {
    let now = to_millis(now);
    let rows =
        queries::expired(S::connection(conn), now, to_millis(heartbeat_cutoff), limit).await?;
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

/// See `TaskStore::insert_unique`. A concurrent insert of the same key makes the key write
/// fail on the unique index; the caller retries, and then finds it.
pub async fn insert_unique_tx<S: Statements>(
    conn: &mut S::Conn,
    task: &NewTask,
    unique_key: &str,
) -> Tx<Enqueued> {
    if let Some(id) = queries::live_unique(S::connection(conn), unique_key).await? {
        return Ok(Enqueued {
            id: TaskId(id),
            created: false,
        });
    }
    let id = insert_one::<S>(conn, task).await?;
    queries::set_unique_key(S::connection(conn), id.0, unique_key).await?;
    Ok(Enqueued { id, created: true })
}

/// See `TaskStore::upsert_cron`.
pub async fn upsert_cron_tx<S: Statements>(
    conn: &mut S::Conn,
    task: &NewTask,
    cron_key: &str,
) -> Tx<(TaskId, CronChange)> {
    let existing = queries::cron_task_ids(S::connection(conn), cron_key)
        .await?
        .into_iter()
        .next();
    let Some(id) = existing else {
        let id = insert_one::<S>(conn, task).await?;
        queries::set_cron_key(S::connection(conn), id.0, cron_key).await?;
        return Ok((id, CronChange::Created));
    };
    let current = load_task::<S>(conn, id)
        .await?
        .ok_or(PortError::NotFound(TaskId(id)))?;
    let Some(change) = fib_flow_domain::schedule::redefine_cron(&current, task, task.created_at)
    else {
        return Ok((current.id, CronChange::Unchanged));
    };
    let next_run_time = if change.reschedule {
        to_millis(task.next_run_time)
    } else {
        to_millis(current.next_run_time)
    };
    let definition = CronRedefinition {
        name: task.name.clone(),
        cron_expr: task.cron_expr.clone(),
        timezone: task.timezone.clone(),
        payload: json_to_text(&task.payload),
        priority: task.priority,
        timeout_ms: task.timeout.map(duration_millis),
        max_retries: task.max_retries,
        retry_interval_ms: duration_millis(task.retry_interval),
        retry_backoff: task.retry_backoff.as_str().to_owned(),
        tag: task.tag.clone(),
        next_run_time,
        last_event_time: to_millis(change.event.event_time),
        last_event_type: change.event.event_type.as_str().to_owned(),
    };
    queries::redefine_cron(S::connection(conn), id, &definition).await?;
    S::insert_event_rows(conn, vec![NewEventRow::from(&change.event)]).await?;
    if change.reschedule {
        S::notify_due(conn).await?;
    }
    Ok((current.id, CronChange::Updated))
}
