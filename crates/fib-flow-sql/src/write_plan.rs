//! The write plan: what a batch of domain transitions writes, as plain data (which rows, which
//! values, under which guards), and the claim plan (which due tasks a claim request may take).
//! A backend turns a plan into its cheapest statements.

use std::collections::{BTreeMap, HashMap};

use diesel::QueryResult;
use fib_flow_domain::time::to_millis;
use fib_flow_domain::{NewTask, TaskId, TaskStatus};
use fib_flow_ports::ClaimRequest;

use crate::rows::{NewAttemptRow, NewEventRow, TaskRow, TaskValues, created_event};
use crate::statements::RowByRow;
use crate::{CHUNK, queries};

/// One task row write of a batch: the row's final values, guarded by the status and attempt
/// it was read with. Several transitions of one task in a batch collapse into one write (the
/// first guard, the last values), so a set-based UPDATE never joins a row twice.
#[derive(Debug, Clone, PartialEq)]
pub struct RowWrite {
    /// The task.
    pub id: i64,
    /// Status the stored row must still have.
    pub guard_status: &'static str,
    /// Attempt the stored row must still have.
    pub guard_attempt: i32,
    /// The new row.
    pub values: TaskValues,
}

impl RowWrite {
    /// The writes of a batch of transitions, in ascending id order.
    pub fn collapse(transitions: &[fib_flow_domain::Transition]) -> Vec<RowWrite> {
        let mut writes: std::collections::BTreeMap<i64, RowWrite> = Default::default();
        for tr in transitions {
            let values = TaskValues::from_task(&tr.task);
            writes
                .entry(tr.task.id.0)
                .and_modify(|write| write.values = values.clone())
                .or_insert_with(|| RowWrite {
                    id: tr.task.id.0,
                    guard_status: tr.guard.status.as_str(),
                    guard_attempt: tr.guard.attempt,
                    values,
                });
        }
        writes.into_values().collect()
    }
}

/// Closing an open attempt row, as written.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptCloseRow {
    /// The task.
    pub task_id: i64,
    /// Which attempt.
    pub attempt: i32,
    /// End instant (ms).
    pub ended_at: i64,
    /// Outcome text.
    pub outcome: String,
    /// Error text.
    pub error: Option<String>,
    /// Whether it timed out.
    pub timeout_flag: bool,
}

impl From<&fib_flow_domain::AttemptClose> for AttemptCloseRow {
    fn from(close: &fib_flow_domain::AttemptClose) -> Self {
        AttemptCloseRow {
            task_id: close.task_id.0,
            attempt: close.attempt,
            ended_at: to_millis(close.ended_at),
            outcome: close.outcome.as_str().to_owned(),
            error: close.error.clone(),
            timeout_flag: close.timeout_flag,
        }
    }
}

/// Everything a set of transitions writes, gathered for set-based statements: row writes,
/// opened and closed attempts, events, and whether a waiting worker should be told that work
/// became due.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchWrite {
    /// Task rows, one per task, ascending id.
    pub rows: Vec<RowWrite>,
    /// Attempts opened by claims.
    pub opened: Vec<NewAttemptRow>,
    /// Attempts closed.
    pub closed: Vec<AttemptCloseRow>,
    /// Events, in transition order.
    pub events: Vec<NewEventRow>,
    /// Whether some task is left pending and due.
    pub notify: bool,
}

impl BatchWrite {
    /// The writes of `transitions`, decided at `now`.
    pub fn of(
        transitions: &[fib_flow_domain::Transition],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        let mut batch = BatchWrite {
            rows: RowWrite::collapse(transitions),
            ..BatchWrite::default()
        };
        for tr in transitions {
            match &tr.attempt {
                Some(fib_flow_domain::AttemptChange::Open(open)) => {
                    batch.opened.push(NewAttemptRow::from(open));
                }
                Some(fib_flow_domain::AttemptChange::Close(close)) => {
                    batch.closed.push(AttemptCloseRow::from(close));
                }
                None => {}
            }
            batch.events.extend(tr.events.iter().map(NewEventRow::from));
            batch.notify |= tr.task.status == TaskStatus::Pending && tr.task.next_run_time <= now;
        }
        batch
    }
}

/// A batch's writes statement by statement in the caller's transaction (multi-row inserts,
/// one guarded UPDATE per row and per closed attempt), for backends without a set-based form.
/// Returns how many task rows matched their guard.
pub async fn write_each<S: RowByRow>(conn: &mut S::Conn, batch: &BatchWrite) -> QueryResult<usize> {
    let mut written = 0;
    for write in &batch.rows {
        written += S::update_row(conn, write).await?;
    }
    for chunk in batch.opened.chunks(CHUNK) {
        S::insert_attempt_rows(conn, chunk.to_vec()).await?;
    }
    for close in &batch.closed {
        queries::close_attempt(S::connection(conn), close).await?;
    }
    for chunk in batch.events.chunks(CHUNK) {
        S::insert_event_rows(conn, chunk.to_vec()).await?;
    }
    if batch.notify {
        S::notify_due(conn).await?;
    }
    Ok(written)
}

/// A chunk of new tasks with their `task_created` events (and the due notification when
/// `notify`), statement by statement in the caller's transaction, for backends without a
/// one-statement form. Returns the new ids in input order.
pub async fn insert_created_each<S: RowByRow>(
    conn: &mut S::Conn,
    tasks: &[NewTask],
    notify: bool,
) -> QueryResult<Vec<i64>> {
    let values: Vec<TaskValues> = tasks.iter().map(TaskValues::from_new).collect();
    let ids = S::insert_task_rows(conn, &values).await?;
    let events: Vec<NewEventRow> = tasks
        .iter()
        .zip(&ids)
        .map(|(task, id)| created_event(task, TaskId(*id)))
        .collect();
    S::insert_event_rows(conn, events).await?;
    if notify {
        S::notify_due(conn).await?;
    }
    Ok(ids)
}

/// One candidate query of a claim: due tasks of `names`, at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateQuery {
    /// The task names (sorted, without duplicates).
    pub names: Vec<String>,
    /// Most rows to fetch.
    pub limit: i64,
    /// Per-name caps to hold while walking the rows in claim order (a capped queue's names).
    pub name_caps: HashMap<String, u32>,
}

/// The candidate queries of a claim: the uncapped names in one query, each capped name in its
/// own query limited to its cap, and each capped queue in one query over its names limited to
/// the queue's cap (names capped inside it are held to their cap while walking its rows).
/// Fetching per cap (rather than dropping rows after one query) keeps a capped name or queue
/// with many due tasks from starving the others in the same round.
pub fn candidate_queries(request: &ClaimRequest) -> Vec<CandidateQuery> {
    let limit = i64::from(request.limit);
    let queue_caps: HashMap<&str, u32> = request
        .queue_caps
        .iter()
        .map(|cap| (cap.queue.as_str(), cap.max))
        .collect();
    let mut uncapped: Vec<String> = Vec::new();
    let mut capped: BTreeMap<String, u32> = BTreeMap::new();
    let mut queued: BTreeMap<&str, HashMap<String, Option<u32>>> = BTreeMap::new();
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
    let mut queries = Vec::new();
    if !uncapped.is_empty() {
        queries.push(CandidateQuery {
            names: uncapped,
            limit,
            name_caps: HashMap::new(),
        });
    }
    for (name, max) in capped {
        let cap = i64::from(max).min(limit);
        if cap > 0 {
            queries.push(CandidateQuery {
                names: vec![name],
                limit: cap,
                name_caps: HashMap::new(),
            });
        }
    }
    for (queue, names) in queued {
        let cap = i64::from(queue_caps.get(queue).copied().unwrap_or(0)).min(limit);
        if cap <= 0 {
            continue;
        }
        let mut list: Vec<String> = names.keys().cloned().collect();
        list.sort();
        let name_caps = names
            .into_iter()
            .filter_map(|(name, max)| max.map(|max| (name, max)))
            .collect();
        queries.push(CandidateQuery {
            names: list,
            limit: cap,
            name_caps,
        });
    }
    queries
}

impl CandidateQuery {
    /// The rows this query may contribute: in claim order, each capped name held to its cap.
    pub fn admit(&self, rows: Vec<TaskRow>) -> Vec<TaskRow> {
        let mut taken: HashMap<String, u32> = HashMap::new();
        rows.into_iter()
            .filter(|row| {
                let count = taken.entry(row.name.clone()).or_default();
                if self
                    .name_caps
                    .get(&row.name)
                    .is_some_and(|max| *count >= *max)
                {
                    return false;
                }
                *count += 1;
                true
            })
            .collect()
    }
}

/// What a claim round takes from the rows each of `queries` found (`found[i]` from
/// `queries[i]`): each query's admitted rows, merged in claim order, at most `limit`.
pub fn take_candidates(
    queries: &[CandidateQuery],
    found: Vec<Vec<TaskRow>>,
    limit: u32,
) -> Vec<TaskRow> {
    let rows = queries
        .iter()
        .zip(found)
        .flat_map(|(query, rows)| query.admit(rows))
        .collect();
    merge_candidates(rows, limit)
}

/// Merges the candidates of every query in claim order (`priority DESC, next_run_time, id`)
/// and keeps the first `limit`.
pub fn merge_candidates(mut rows: Vec<TaskRow>, limit: u32) -> Vec<TaskRow> {
    rows.sort_by(|x, y| {
        y.priority
            .cmp(&x.priority)
            .then(x.next_run_time.cmp(&y.next_run_time))
            .then(x.id.cmp(&y.id))
    });
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    rows
}

#[cfg(test)]
mod tests {
    use fib_flow_domain::time::from_millis;
    use fib_flow_ports::{ClaimName, QueueCap};

    use super::*;

    fn name(name: &str, max: Option<u32>, queue: &str) -> ClaimName {
        ClaimName {
            name: name.to_owned(),
            max,
            queue: queue.to_owned(),
        }
    }

    fn row(id: i64, name: &str, priority: i32) -> TaskRow {
        TaskRow {
            id,
            name: name.to_owned(),
            priority,
            next_run_time: 1_000,
            ..crate::tests::row_of(&crate::tests::sample_task())
        }
    }

    #[test]
    fn a_claim_fetches_uncapped_names_together_and_each_cap_on_its_own() {
        let request = ClaimRequest {
            worker_id: "w".into(),
            now: from_millis(1_000),
            limit: 5,
            names: vec![
                name("b", None, "default"),
                name("a", None, "default"),
                name("capped", Some(9), "default"),
                name("capped", Some(2), "default"),
                name("a", Some(3), "default"),
                name("mail", Some(1), "io"),
                name("sms", None, "io"),
            ],
            queue_caps: vec![QueueCap {
                queue: "io".into(),
                max: 4,
            }],
            require_active_lease: false,
        };
        let queries = candidate_queries(&request);
        assert_eq!(queries.len(), 4, "{queries:?}");
        assert_eq!(
            queries[0].names,
            vec!["b".to_owned()],
            "a name listed with a cap keeps it"
        );
        assert_eq!(queries[0].limit, 5);
        assert_eq!(
            (queries[1].names.clone(), queries[1].limit),
            (vec!["a".to_owned()], 3)
        );
        assert_eq!(
            (queries[2].names.clone(), queries[2].limit),
            (vec!["capped".to_owned()], 2),
            "the smallest cap of a name wins"
        );
        let queue = &queries[3];
        assert_eq!(queue.names, vec!["mail".to_owned(), "sms".to_owned()]);
        assert_eq!(queue.limit, 4, "a queue is fetched up to its own cap");
        let admitted = queue.admit(vec![row(1, "mail", 0), row(2, "mail", 0), row(3, "sms", 0)]);
        let ids: Vec<i64> = admitted.iter().map(|row| row.id).collect();
        assert_eq!(
            ids,
            vec![1, 3],
            "a capped name inside a queue is held to its cap"
        );
    }

    #[test]
    fn candidates_merge_in_claim_order_up_to_the_limit() {
        let merged = merge_candidates(vec![row(3, "a", 0), row(2, "b", 5), row(1, "a", 0)], 2);
        let ids: Vec<i64> = merged.iter().map(|row| row.id).collect();
        assert_eq!(ids, vec![2, 1]);
    }
}
