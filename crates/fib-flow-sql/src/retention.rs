//! Deleting tasks with their audit rows: by filter, by cron key, and the retention purge of
//! whole workflows.

use fib_flow_domain::query::DeleteFilter;
use fib_flow_domain::time::to_millis;
use fib_flow_ports::{RetentionReport, RetentionRun};

use crate::error::TxError;
use crate::{CHUNK, Statements, queries};

type Tx<T> = Result<T, TxError>;

/// Deletes tasks by id with their events and attempts, a chunk per statement.
async fn delete_ids<S: Statements>(conn: &mut S::Conn, ids: &[i64]) -> Tx<RetentionReport> {
    let mut report = RetentionReport::default();
    for chunk in ids.chunks(CHUNK) {
        let (events, attempts, tasks) = queries::delete_tasks(S::connection(conn), chunk).await?;
        report.events_deleted += events;
        report.attempts_deleted += attempts;
        report.tasks_deleted += tasks;
    }
    Ok(report)
}

/// Deletes the tasks matching `filter`; returns how many.
pub async fn delete_tx<S: Statements>(conn: &mut S::Conn, filter: &DeleteFilter) -> Tx<u64> {
    let ids = queries::filtered_task_ids(S::connection(conn), filter).await?;
    Ok(delete_ids::<S>(conn, &ids).await?.tasks_deleted)
}

/// Deletes the cron schedule with `cron_key`; returns whether there was one.
pub async fn remove_cron_tx<S: Statements>(conn: &mut S::Conn, cron_key: &str) -> Tx<bool> {
    let ids = queries::cron_task_ids(S::connection(conn), cron_key).await?;
    Ok(delete_ids::<S>(conn, &ids).await?.tasks_deleted > 0)
}

/// One retention batch. Units are whole workflows: a root (`root_id IS NULL`) with every task
/// whose `root_id` is that root, or the remains of a workflow whose root is already gone
/// (orphans sharing a `root_id`). A unit qualifies when every member has an eligible status and
/// a retention clock before the cutoff.
pub async fn purge_tx<S: Statements>(
    conn: &mut S::Conn,
    run: &RetentionRun,
) -> Tx<RetentionReport> {
    if run.statuses.is_empty() || run.batch_size == 0 {
        return Ok(RetentionReport::default());
    }
    let statuses: Vec<&'static str> = run.statuses.iter().map(|s| s.as_str()).collect();
    let cutoff = to_millis(run.cutoff);
    let batch = i64::from(run.batch_size);
    let roots = queries::purgeable_roots(S::connection(conn), &statuses, cutoff, batch).await?;
    let orphan_rows =
        queries::purgeable_orphan_roots(S::connection(conn), &statuses, cutoff, batch).await?;
    let mut units: Vec<(i64, bool)> = roots.into_iter().map(|root| (root, true)).collect();
    for root in orphan_rows.into_iter().flatten() {
        if !units.contains(&(root, false)) {
            units.push((root, false));
        }
    }
    let mut ids: Vec<i64> = Vec::new();
    for (root, has_root_row) in units {
        let mut members = queries::workflow_descendants(S::connection(conn), root).await?;
        if has_root_row {
            members.insert(0, root);
        }
        if !fill_batch(&mut ids, members, run.batch_size as usize) {
            break;
        }
    }
    delete_ids::<S>(conn, &ids).await
}

/// Adds a unit's `members` to the batch `ids` when it fits (the first unit always does);
/// returns whether another unit may follow.
fn fill_batch(ids: &mut Vec<i64>, members: Vec<i64>, batch_size: usize) -> bool {
    if !ids.is_empty() && ids.len() + members.len() > batch_size {
        return false;
    }
    ids.extend(members);
    ids.len() < batch_size
}

#[cfg(test)]
mod tests {
    use super::fill_batch;

    #[test]
    fn batches_take_whole_units_and_at_least_one() {
        let mut ids = Vec::new();
        assert!(
            !fill_batch(&mut ids, vec![1, 2, 3], 2),
            "an oversized first unit fills the batch"
        );
        assert_eq!(ids, vec![1, 2, 3]);

        let mut ids = Vec::new();
        assert!(fill_batch(&mut ids, vec![1], 3));
        assert!(
            !fill_batch(&mut ids, vec![2, 3, 4], 3),
            "a unit that does not fit ends the batch"
        );
        assert_eq!(ids, vec![1]);
        assert!(!fill_batch(&mut ids, vec![5, 6], 3), "a full batch ends it");
        assert_eq!(ids, vec![1, 5, 6]);
    }
}
