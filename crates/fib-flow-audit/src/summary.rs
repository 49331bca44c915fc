//! The workflow summary (`getWorkflowAuditSummary`): a pure aggregation of a workflow's tasks,
//! attempts and events, so it can be tested without a store.
//!
//! The output follows the reference key by key (behavior.md §8.6) with these deliberate
//! changes (decisions.md, behavior.md §19 item 27):
//! - instants are `DateTime<Utc>` with millisecond precision, and every duration is `f64`
//!   seconds computed from milliseconds, `max(0, ended_at − started_at)`;
//! - the critical path is computed per round: a task's attempts add up (sequential stages and
//!   retries), and each round of children adds its longest child path (parallel siblings take
//!   the longest), instead of the reference's "longest attempt plus one child". A round is
//!   identified by the child's `parent_round`, the parent's attempt number when it returned
//!   `next(children)`, so the round's child is placed right after that attempt;
//! - the result does not depend on the order of the input slices: everything is sorted here by
//!   the store's keys (`created_at, id` for tasks, `attempt, id` per task, `event_time, id`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use fib_flow_domain::{
    AttemptOutcome, EventType, Task, TaskAttempt, TaskEvent, TaskId, TaskStatus,
};
use serde::{Deserialize, Serialize};

/// The aggregate diagnosis of one workflow. Serialises to the reference's object, key by key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowSummary {
    /// The root's snapshot, `None` when it does not exist.
    pub root_task: Option<Task>,
    /// Row counts.
    pub totals: SummaryTotals,
    /// Tasks per status (keys sorted).
    pub statuses: BTreeMap<String, u64>,
    /// Attempts per outcome, open attempts left out (keys sorted).
    pub attempt_outcomes: BTreeMap<String, u64>,
    /// Tasks per handler name (keys sorted).
    pub task_names: BTreeMap<String, u64>,
    /// Tasks per current stage; keys are the stage numbers as strings, sorted as strings (so
    /// `"10"` comes before `"2"`, as in the reference).
    pub stages: BTreeMap<String, u64>,
    /// Distinct non-empty worker ids of tasks, attempts and events, sorted.
    pub workers: Vec<String>,
    /// Time boundaries.
    pub timing: SummaryTiming,
    /// The root's attempts, by attempt number.
    pub stage_timings: Vec<StageTiming>,
    /// Tasks currently failed, timed out, permanently failed or paused, in task order.
    pub failed_tasks: Vec<FailedTask>,
    /// The longest chain of attempts through the workflow tree.
    pub critical_path: CriticalPath,
    /// The five longest attempts.
    pub slowest_attempts: Vec<TimedAttempt>,
}

/// Row counts of a workflow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryTotals {
    /// Tasks (root and descendants).
    pub tasks: u64,
    /// Attempts of all tasks.
    pub attempts: u64,
    /// Events of all tasks.
    pub events: u64,
    /// Events of type `task_checkpoint`.
    pub checkpoints: u64,
    /// The highest attempt number of any task, 0 when there is no attempt.
    pub max_attempt: i32,
}

/// Time boundaries of a workflow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SummaryTiming {
    /// The root's creation instant.
    pub created_at: Option<DateTime<Utc>>,
    /// The earliest attempt start.
    pub first_started_at: Option<DateTime<Utc>>,
    /// The latest attempt end (open attempts ignored).
    pub last_ended_at: Option<DateTime<Utc>>,
    /// The latest event.
    pub last_event_time: Option<DateTime<Utc>>,
    /// `max(0, last_ended_at − created_at)` in seconds, when both exist.
    pub workflow_duration_seconds: Option<f64>,
}

/// One attempt of the root task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageTiming {
    /// The stage the attempt ran (from its start event; see [`summarize`]).
    pub stage: i32,
    /// Attempt number.
    pub attempt: i32,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End (`None` while open).
    pub ended_at: Option<DateTime<Utc>>,
    /// Seconds (`None` while open).
    pub duration_seconds: Option<f64>,
    /// Outcome (`None` while open).
    pub outcome: Option<AttemptOutcome>,
    /// The worker that ran it.
    pub worker_id: Option<String>,
}

/// A task currently in a failure-like status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedTask {
    /// The task.
    pub task_id: TaskId,
    /// Handler name.
    pub name: String,
    /// `failed`, `timeout`, `permanently_failed` or `paused`.
    pub status: TaskStatus,
    /// The task's error text.
    pub error: Option<String>,
}

/// The critical path: the chain of attempts that bounds the workflow's duration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CriticalPath {
    /// Sum of the durations of the path's attempts (open attempts count 0).
    pub total_duration_seconds: f64,
    /// The path's attempts in execution order.
    pub nodes: Vec<CriticalPathNode>,
}

/// One attempt on the critical path (or a task that has not run yet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CriticalPathNode {
    /// The task.
    pub task_id: TaskId,
    /// Handler name.
    pub name: String,
    /// The task's current status.
    pub status: TaskStatus,
    /// The stage the attempt ran (the task's current stage when it has no attempt).
    pub stage: i32,
    /// Attempt number (`None`: the task has no attempt).
    pub attempt: Option<i32>,
    /// Outcome (`None`: open or no attempt).
    pub outcome: Option<AttemptOutcome>,
    /// Seconds (`None`: open or no attempt).
    pub duration_seconds: Option<f64>,
    /// Start.
    pub started_at: Option<DateTime<Utc>>,
    /// End.
    pub ended_at: Option<DateTime<Utc>>,
}

/// An attempt row with its duration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimedAttempt {
    /// The attempt's columns.
    #[serde(flatten)]
    pub attempt: TaskAttempt,
    /// Seconds (`None` while open).
    pub duration_seconds: Option<f64>,
}

/// How many attempts `slowest_attempts` lists.
pub const SLOWEST_ATTEMPTS: usize = 5;

/// Builds the summary of a workflow from its rows.
///
/// `root` is the root's snapshot; `tasks`, `attempts` and `events` are the workflow's rows (root
/// and descendants). The order of the slices does not matter.
///
/// The stage of an attempt is the `stage` of the task's first (`event_time, id`)
/// `task_started`/`task_retry_started` event carrying that attempt number and a stage; without
/// one, `max(0, attempt − 1)` for the root (the reference's fallback) and 0 for other tasks.
///
/// Critical path: for a task T, `path(T)` = the durations of all of T's attempts + for each
/// round r of T that created children (children with `parent_id = T`, `parent_round = r`, r
/// being T's attempt number when it returned `next(children)`), the longest `path(child)` of
/// that round (ties: the lowest child id). The nodes are T's attempts in attempt order, each
/// round's chosen child's nodes following T's attempt number r (without one, the last attempt
/// numbered below r, else T's first node). A task without attempts is one node with the
/// attempt fields empty and contributes 0.
pub fn summarize(
    root: Option<&Task>,
    tasks: &[Task],
    attempts: &[TaskAttempt],
    events: &[TaskEvent],
) -> WorkflowSummary {
    let mut sorted_tasks: Vec<&Task> = tasks.iter().collect();
    sorted_tasks.sort_by_key(|task| (task.created_at, task.id));

    let starts = StartStages::new(events);
    let attempts_by_task = attempts_by_task(attempts);

    let totals = SummaryTotals {
        tasks: tasks.len() as u64,
        attempts: attempts.len() as u64,
        events: events.len() as u64,
        checkpoints: events
            .iter()
            .filter(|event| event.event_type == EventType::TaskCheckpoint.as_str())
            .count() as u64,
        max_attempt: attempts
            .iter()
            .map(|attempt| attempt.attempt)
            .max()
            .unwrap_or(0)
            .max(0),
    };

    WorkflowSummary {
        root_task: root.cloned(),
        totals,
        statuses: count(tasks.iter().map(|task| task.status.as_str().to_owned())),
        attempt_outcomes: count(
            attempts
                .iter()
                .filter_map(|attempt| attempt.outcome.map(|outcome| outcome.as_str().to_owned())),
        ),
        task_names: count(tasks.iter().map(|task| task.name.clone())),
        stages: count(tasks.iter().map(|task| task.stage.to_string())),
        workers: workers(tasks, attempts, events),
        timing: timing(root, attempts, events),
        stage_timings: root
            .map(|root| stage_timings(root, &attempts_by_task, &starts))
            .unwrap_or_default(),
        failed_tasks: sorted_tasks
            .iter()
            .filter(|task| {
                matches!(
                    task.status,
                    TaskStatus::Failed
                        | TaskStatus::Timeout
                        | TaskStatus::PermanentlyFailed
                        | TaskStatus::Paused
                )
            })
            .map(|task| FailedTask {
                task_id: task.id,
                name: task.name.clone(),
                status: task.status,
                error: task.error.clone(),
            })
            .collect(),
        critical_path: root
            .map(|root| critical_path(root, tasks, &attempts_by_task, &starts))
            .unwrap_or(CriticalPath {
                total_duration_seconds: 0.0,
                nodes: Vec::new(),
            }),
        slowest_attempts: slowest_attempts(attempts),
    }
}

/// `max(0, ended_at − started_at)` in milliseconds; `None` while the attempt is open.
fn duration_millis(attempt: &TaskAttempt) -> Option<i64> {
    attempt.ended_at.map(|ended| {
        ended
            .timestamp_millis()
            .saturating_sub(attempt.started_at.timestamp_millis())
            .max(0)
    })
}

/// Milliseconds as seconds. Durations are summed as integer milliseconds and converted once,
/// so that sums and tie-breaks are exact.
fn seconds(millis: i64) -> f64 {
    millis as f64 / 1000.0
}

fn count(keys: impl Iterator<Item = String>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for key in keys {
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

fn workers(tasks: &[Task], attempts: &[TaskAttempt], events: &[TaskEvent]) -> Vec<String> {
    let ids = tasks
        .iter()
        .map(|task| &task.worker_id)
        .chain(attempts.iter().map(|attempt| &attempt.worker_id))
        .chain(events.iter().map(|event| &event.worker_id))
        .filter_map(|id| id.as_deref())
        .filter(|id| !id.is_empty());
    ids.map(str::to_owned)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn timing(root: Option<&Task>, attempts: &[TaskAttempt], events: &[TaskEvent]) -> SummaryTiming {
    let created_at = root.map(|root| root.created_at);
    let last_ended_at = attempts.iter().filter_map(|attempt| attempt.ended_at).max();
    SummaryTiming {
        created_at,
        first_started_at: attempts.iter().map(|attempt| attempt.started_at).min(),
        last_ended_at,
        last_event_time: events.iter().map(|event| event.event_time).max(),
        workflow_duration_seconds: match (created_at, last_ended_at) {
            (Some(created), Some(ended)) => Some(seconds(
                ended
                    .timestamp_millis()
                    .saturating_sub(created.timestamp_millis())
                    .max(0),
            )),
            _ => None,
        },
    }
}

/// Each task's attempts in attempt order (`attempt, id`).
fn attempts_by_task(attempts: &[TaskAttempt]) -> HashMap<TaskId, Vec<&TaskAttempt>> {
    let mut by_task: HashMap<TaskId, Vec<&TaskAttempt>> = HashMap::new();
    for attempt in attempts {
        by_task.entry(attempt.task_id).or_default().push(attempt);
    }
    for list in by_task.values_mut() {
        list.sort_by_key(|attempt| (attempt.attempt, attempt.id));
    }
    by_task
}

/// The stage recorded by the start event of each `(task, attempt)`.
struct StartStages {
    /// `(task, attempt)` → `(event_time, event id, stage)` of the first start event.
    first: HashMap<(TaskId, i32), (DateTime<Utc>, i64, i32)>,
}

impl StartStages {
    fn new(events: &[TaskEvent]) -> Self {
        let started = EventType::TaskStarted.as_str();
        let retry_started = EventType::TaskRetryStarted.as_str();
        let mut first: HashMap<(TaskId, i32), (DateTime<Utc>, i64, i32)> = HashMap::new();
        for event in events {
            if event.event_type != started && event.event_type != retry_started {
                continue;
            }
            let (Some(attempt), Some(stage)) = (event.attempt, event.stage) else {
                continue;
            };
            let candidate = (event.event_time, event.id, stage);
            first
                .entry((event.task_id, attempt))
                .and_modify(|current| {
                    if (candidate.0, candidate.1) < (current.0, current.1) {
                        *current = candidate;
                    }
                })
                .or_insert(candidate);
        }
        StartStages { first }
    }

    /// The stage of `attempt` of `task`; `root` selects the fallback when no event recorded it.
    fn stage(&self, task: TaskId, attempt: i32, root: bool) -> i32 {
        match self.first.get(&(task, attempt)) {
            Some(&(_, _, stage)) => stage,
            // The root's stage advances once per resumed round, so attempt n usually ran stage
            // n − 1 (wrong after retries, which is why the event wins when present). Other
            // tasks are assumed single-stage.
            None if root => attempt.saturating_sub(1).max(0),
            None => 0,
        }
    }
}

fn stage_timings(
    root: &Task,
    attempts_by_task: &HashMap<TaskId, Vec<&TaskAttempt>>,
    starts: &StartStages,
) -> Vec<StageTiming> {
    attempts_by_task
        .get(&root.id)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|attempt| StageTiming {
            stage: starts.stage(root.id, attempt.attempt, true),
            attempt: attempt.attempt,
            started_at: attempt.started_at,
            ended_at: attempt.ended_at,
            duration_seconds: duration_millis(attempt).map(seconds),
            outcome: attempt.outcome,
            worker_id: attempt.worker_id.clone(),
        })
        .collect()
}

fn slowest_attempts(attempts: &[TaskAttempt]) -> Vec<TimedAttempt> {
    let mut sorted: Vec<(Option<i64>, &TaskAttempt)> = attempts
        .iter()
        .map(|attempt| (duration_millis(attempt), attempt))
        .collect();
    // Open attempts (no duration) count as −1, i.e. after every finished attempt.
    sorted.sort_by_key(|(millis, attempt)| {
        (
            Reverse(millis.unwrap_or(-1)),
            attempt.started_at,
            attempt.id,
        )
    });
    sorted
        .into_iter()
        .take(SLOWEST_ATTEMPTS)
        .map(|(millis, attempt)| TimedAttempt {
            attempt: attempt.clone(),
            duration_seconds: millis.map(seconds),
        })
        .collect()
}

/// What a task contributes to the path, once its children's paths are known.
struct PathPlan {
    /// `path(task)` in milliseconds.
    total_millis: i64,
    /// The chosen child of each round that created children, by round.
    chosen: BTreeMap<i32, TaskId>,
}

fn critical_path(
    root: &Task,
    tasks: &[Task],
    attempts_by_task: &HashMap<TaskId, Vec<&TaskAttempt>>,
    starts: &StartStages,
) -> CriticalPath {
    let mut by_id: HashMap<TaskId, &Task> = tasks.iter().map(|task| (task.id, task)).collect();
    // The root row given separately wins over a copy in `tasks` (they are the same row).
    by_id.insert(root.id, root);
    let mut children: HashMap<TaskId, Vec<&Task>> = HashMap::new();
    for task in by_id.values() {
        if let Some(parent) = task.parent_id
            && task.id != root.id
        {
            children.entry(parent).or_default().push(task);
        }
    }

    let no_attempts: &[&TaskAttempt] = &[];
    let attempts_of = |id: TaskId| -> &[&TaskAttempt] {
        attempts_by_task
            .get(&id)
            .map(Vec::as_slice)
            .unwrap_or(no_attempts)
    };
    let stage_of = |id: TaskId, attempt: i32| starts.stage(id, attempt, id == root.id);

    // Post-order walk from the root without recursion (a deep chain of nested workflows must
    // not overflow the stack). `seen` also makes a corrupt parent cycle terminate.
    let mut post_order = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![(root.id, false)];
    while let Some((id, expanded)) = stack.pop() {
        if expanded {
            post_order.push(id);
            continue;
        }
        if !seen.insert(id) {
            continue;
        }
        stack.push((id, true));
        for child in children.get(&id).map(Vec::as_slice).unwrap_or_default() {
            if !seen.contains(&child.id) {
                stack.push((child.id, false));
            }
        }
    }

    let mut plans: HashMap<TaskId, PathPlan> = HashMap::new();
    for id in post_order {
        let own: i64 = attempts_of(id)
            .iter()
            .filter_map(|attempt| duration_millis(attempt))
            .sum();
        // Longest child per round (the parent's attempt number that created it); ties go to
        // the lowest id. A child without a recorded round (not written by this port) joins
        // round 0, which degrades to the reference's single-child choice when no child has one
        // (and is placed after the parent's first node).
        let mut best: BTreeMap<i32, (i64, TaskId)> = BTreeMap::new();
        for child in children.get(&id).map(Vec::as_slice).unwrap_or_default() {
            // Children already on the walk's stack above this task (a cycle) have no plan.
            let Some(plan) = plans.get(&child.id) else {
                continue;
            };
            let round = child.parent_round.unwrap_or(0);
            let candidate = (plan.total_millis, child.id);
            best.entry(round)
                .and_modify(|current| {
                    if candidate.0 > current.0
                        || (candidate.0 == current.0 && candidate.1 < current.1)
                    {
                        *current = candidate;
                    }
                })
                .or_insert(candidate);
        }
        let total_millis = best
            .values()
            .fold(own, |sum, (millis, _)| sum.saturating_add(*millis));
        plans.insert(
            id,
            PathPlan {
                total_millis,
                chosen: best
                    .into_iter()
                    .map(|(round, (_, child))| (round, child))
                    .collect(),
            },
        );
    }

    let total_millis = plans.get(&root.id).map_or(0, |plan| plan.total_millis);

    // Expand the plans into nodes, again with an explicit stack.
    enum Step {
        Task(TaskId),
        Node(CriticalPathNode),
    }
    let mut nodes = Vec::new();
    let mut stack = vec![Step::Task(root.id)];
    while let Some(step) = stack.pop() {
        let id = match step {
            Step::Node(node) => {
                nodes.push(node);
                continue;
            }
            Step::Task(id) => id,
        };
        let (Some(task), Some(plan)) = (by_id.get(&id), plans.get(&id)) else {
            continue;
        };
        let attempts = attempts_of(id);
        // Each node with its attempt number (`None`: the task has no attempt).
        let mut own_nodes: Vec<(Option<i32>, CriticalPathNode)> = attempts
            .iter()
            .map(|attempt| {
                let stage = stage_of(id, attempt.attempt);
                (
                    Some(attempt.attempt),
                    attempt_node(task, stage, Some(attempt)),
                )
            })
            .collect();
        if own_nodes.is_empty() {
            own_nodes.push((None, attempt_node(task, task.stage, None)));
        }
        // Round r's child follows the attempt numbered r (the attempt that returned
        // `next(children)`); without it, the last attempt numbered below r; when there is
        // none, the first node, so the path still starts with the task itself.
        let mut after: Vec<Vec<TaskId>> = vec![Vec::new(); own_nodes.len()];
        for (&round, &child) in &plan.chosen {
            let slot = own_nodes
                .iter()
                .rposition(|(number, _)| number.is_some_and(|number| number <= round))
                .unwrap_or(0);
            after[slot].push(child);
        }
        let mut steps = Vec::new();
        for ((_, node), children) in own_nodes.into_iter().zip(after) {
            steps.push(Step::Node(node));
            steps.extend(children.into_iter().map(Step::Task));
        }
        stack.extend(steps.into_iter().rev());
    }

    CriticalPath {
        total_duration_seconds: seconds(total_millis),
        nodes,
    }
}

fn attempt_node(task: &Task, stage: i32, attempt: Option<&TaskAttempt>) -> CriticalPathNode {
    CriticalPathNode {
        task_id: task.id,
        name: task.name.clone(),
        status: task.status,
        stage,
        attempt: attempt.map(|attempt| attempt.attempt),
        outcome: attempt.and_then(|attempt| attempt.outcome),
        duration_seconds: attempt.and_then(duration_millis).map(seconds),
        started_at: attempt.map(|attempt| attempt.started_at),
        ended_at: attempt.and_then(|attempt| attempt.ended_at),
    }
}
