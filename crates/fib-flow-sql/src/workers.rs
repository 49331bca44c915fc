//! The worker registry: registration, lease renewal, superseding, reaping and stopping, and
//! the recovery of a retired worker's running attempts through the domain's `Recover`.

use chrono::{DateTime, Utc};
use fib_flow_domain::time::{duration_millis, to_millis};
use fib_flow_domain::{Command, TaskId, Worker, WorkerQuery, WorkerStatus};
use fib_flow_ports::{BatchCommand, Recovery, RetiredWorkers, WorkerRegistration};

use crate::error::TxError;
use crate::rows::WorkerRow;
use crate::transitions::apply_batch_tx;
use crate::{CHUNK, Statements, queries};

type Tx<T> = Result<T, TxError>;

/// Registers a worker, replacing any row with its id.
pub async fn register_tx<S: Statements>(
    conn: &mut S::Conn,
    registration: &WorkerRegistration,
) -> Tx<Worker> {
    let row = WorkerRow::registered(registration);
    queries::replace_worker(S::connection(conn), &row).await?;
    Ok(row.into_worker()?)
}

/// Renews an active worker's lease (no transaction); false when it is no longer active.
pub async fn renew<S: Statements>(
    conn: &mut S::Conn,
    worker_id: &str,
    now: DateTime<Utc>,
    ttl: std::time::Duration,
) -> Tx<bool> {
    let now = to_millis(now);
    let expires_at = now.saturating_add(duration_millis(ttl));
    Ok(queries::renew_worker(S::connection(conn), worker_id, now, expires_at).await?)
}

/// One worker (a plain read).
pub async fn get<S: Statements>(conn: &mut S::Conn, worker_id: &str) -> Tx<Option<Worker>> {
    let row = queries::get_worker(S::connection(conn), worker_id).await?;
    Ok(row.map(WorkerRow::into_worker).transpose()?)
}

/// The workers matching `query` (a plain read).
pub async fn list<S: Statements>(conn: &mut S::Conn, query: &WorkerQuery) -> Tx<Vec<Worker>> {
    let rows = queries::list_workers(S::connection(conn), query).await?;
    Ok(rows
        .into_iter()
        .map(WorkerRow::into_worker)
        .collect::<Result<_, _>>()?)
}

/// Moves the listed workers from `active` to `status`, each guarded by its status (and its
/// lease, given `expired_before`), one by primary key in id order; returns those moved.
async fn retire<S: Statements>(
    conn: &mut S::Conn,
    mut candidates: Vec<String>,
    status: WorkerStatus,
    now: i64,
    expired_before: Option<i64>,
) -> Tx<Vec<String>> {
    candidates.sort();
    let mut moved = Vec::with_capacity(candidates.len());
    for worker_id in candidates {
        if queries::retire_worker(S::connection(conn), &worker_id, status, now, expired_before)
            .await?
        {
            moved.push(worker_id);
        }
    }
    Ok(moved)
}

/// Supersedes the other active workers of `pod_id` and recovers their running attempts.
pub async fn supersede_tx<S: Statements>(
    conn: &mut S::Conn,
    pod_id: &str,
    current: &str,
    now: DateTime<Utc>,
    recovery: Option<&Recovery>,
) -> Tx<RetiredWorkers> {
    let candidates = queries::other_active_workers(S::connection(conn), pod_id, current).await?;
    let superseded = retire::<S>(
        conn,
        candidates,
        WorkerStatus::Superseded,
        to_millis(now),
        None,
    )
    .await?;
    recover_retired::<S>(conn, superseded, recovery).await
}

/// Marks the active workers whose lease lapsed dead and recovers their running attempts.
pub async fn reap_tx<S: Statements>(
    conn: &mut S::Conn,
    now: DateTime<Utc>,
    recovery: Option<&Recovery>,
) -> Tx<RetiredWorkers> {
    let now = to_millis(now);
    let candidates = queries::lapsed_workers(S::connection(conn), now).await?;
    if candidates.is_empty() {
        return Ok(RetiredWorkers::default());
    }
    let reaped = retire::<S>(conn, candidates, WorkerStatus::Dead, now, Some(now)).await?;
    recover_retired::<S>(conn, reaped, recovery).await
}

/// Recovers the running tasks of workers just retired, in the caller's transaction: nobody may
/// see them superseded or dead with their tasks still running (the heartbeat sweep would take
/// those, charging a retry).
async fn recover_retired<S: Statements>(
    conn: &mut S::Conn,
    workers: Vec<String>,
    recovery: Option<&Recovery>,
) -> Tx<RetiredWorkers> {
    let recovered = match recovery {
        Some(recovery) if !workers.is_empty() => recover::<S>(conn, &workers, recovery).await?,
        _ => 0,
    };
    Ok(RetiredWorkers { workers, recovered })
}

/// Every running attempt of the given workers back to `pending` through the domain's
/// `Recover` (fenced by attempt), a chunk of rows at a time.
async fn recover<S: Statements>(
    conn: &mut S::Conn,
    worker_ids: &[String],
    recovery: &Recovery,
) -> Tx<u64> {
    if worker_ids.is_empty() {
        return Ok(0);
    }
    let running = queries::running_attempts_of(S::connection(conn), worker_ids).await?;
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
        let verdicts = apply_batch_tx::<S>(conn, &commands).await?;
        recovered += verdicts.iter().filter(|verdict| verdict.is_ok()).count() as u64;
    }
    Ok(recovered)
}

/// Recovers a stopping worker's running attempts (given `recovery`) and marks it stopped.
pub async fn stop_tx<S: Statements>(
    conn: &mut S::Conn,
    worker_id: &str,
    now: DateTime<Utc>,
    recovery: Option<&Recovery>,
) -> Tx<u64> {
    let recovered = match recovery {
        Some(recovery) => recover::<S>(conn, &[worker_id.to_owned()], recovery).await?,
        None => 0,
    };
    queries::stop_worker(S::connection(conn), worker_id, to_millis(now)).await?;
    Ok(recovered)
}

/// A worker's running attempts silent since `idle_before` (a plain read).
pub async fn idle_attempts<S: Statements>(
    conn: &mut S::Conn,
    worker_id: &str,
    idle_before: DateTime<Utc>,
    limit: u32,
) -> Tx<Vec<(TaskId, i32)>> {
    let rows = queries::idle_attempts(
        S::connection(conn),
        worker_id,
        to_millis(idle_before),
        limit,
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, attempt)| (TaskId(id), attempt))
        .collect())
}
