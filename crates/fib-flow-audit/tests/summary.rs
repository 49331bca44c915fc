//! `summarize()` on hand-built workflows: the §8.6 shape key by key, and the per-round critical
//! path. A child's `parent_round` is the parent's attempt number that returned `next(children)`.

mod common;

use common::{at, attempt, child, done, event, started, task};
use fib_flow_audit::{CriticalPathNode, WorkflowSummary, summarize};
use fib_flow_domain::{
    AttemptOutcome, EventType, Task, TaskAttempt, TaskEvent, TaskId, TaskStatus,
};
use serde_json::json;

use AttemptOutcome::{Completed, Failed, Suspended};

/// `(task, attempt)` of each critical-path node; attempt 0 marks a node without an attempt.
fn path(summary: &WorkflowSummary) -> Vec<(i64, i32)> {
    summary
        .critical_path
        .nodes
        .iter()
        .map(|node| (node.task_id.0, node.attempt.unwrap_or(0)))
        .collect()
}

fn reversed<T: Clone>(rows: &[T]) -> Vec<T> {
    rows.iter().rev().cloned().collect()
}

/// Runs `summarize` on the rows, and again on the rows reversed to check that input order does
/// not matter.
fn summarize_both_ways(
    root: Option<&Task>,
    tasks: &[Task],
    attempts: &[TaskAttempt],
    events: &[TaskEvent],
) -> WorkflowSummary {
    let summary = summarize(root, tasks, attempts, events);
    let again = summarize(
        root,
        &reversed(tasks),
        &reversed(attempts),
        &reversed(events),
    );
    assert_eq!(summary, again, "the summary depends on input order");
    summary
}

fn root(status: TaskStatus) -> Task {
    Task {
        created_at: at(0),
        ..task(1, "root", status)
    }
}

#[test]
fn a_pending_workflow_has_one_node_and_no_stage_timings() {
    let root = root(TaskStatus::Pending);
    let events = [event(1, 1, 1, EventType::TaskCreated, 0)];
    let summary = summarize_both_ways(Some(&root), std::slice::from_ref(&root), &[], &events);

    assert_eq!(summary.root_task.as_ref(), Some(&root));
    assert_eq!(summary.totals.tasks, 1);
    assert_eq!(summary.totals.attempts, 0);
    assert_eq!(summary.totals.events, 1);
    assert_eq!(summary.totals.checkpoints, 0);
    assert_eq!(summary.totals.max_attempt, 0);
    assert_eq!(summary.statuses, [("pending".to_owned(), 1)].into());
    assert!(summary.attempt_outcomes.is_empty());
    assert_eq!(summary.stages, [("0".to_owned(), 1)].into());
    assert!(summary.workers.is_empty());
    assert_eq!(summary.timing.created_at, Some(at(0)));
    assert_eq!(summary.timing.first_started_at, None);
    assert_eq!(summary.timing.last_ended_at, None);
    assert_eq!(summary.timing.last_event_time, Some(at(0)));
    assert_eq!(summary.timing.workflow_duration_seconds, None);
    assert!(summary.stage_timings.is_empty());
    assert!(summary.failed_tasks.is_empty());
    assert!(summary.slowest_attempts.is_empty());
    assert_eq!(summary.critical_path.total_duration_seconds, 0.0);
    assert_eq!(
        summary.critical_path.nodes,
        [CriticalPathNode {
            task_id: TaskId(1),
            name: "root".into(),
            status: TaskStatus::Pending,
            stage: 0,
            attempt: None,
            outcome: None,
            duration_seconds: None,
            started_at: None,
            ended_at: None,
        }]
    );
}

#[test]
fn the_summary_serialises_to_the_reference_keys_in_order() {
    let root = root(TaskStatus::Running);
    let attempts = [attempt(1, 1, 1, 0, None, None)];
    let events = [started(1, 1, 1, 1, 0, 0)];
    let summary = summarize(Some(&root), std::slice::from_ref(&root), &attempts, &events);
    let text = serde_json::to_string(&summary).expect("json");
    let keys = [
        "\"root_task\"",
        "\"totals\"",
        "\"statuses\"",
        "\"attempt_outcomes\"",
        "\"task_names\"",
        "\"stages\"",
        "\"workers\"",
        "\"timing\"",
        "\"stage_timings\"",
        "\"failed_tasks\"",
        "\"critical_path\"",
        "\"slowest_attempts\"",
    ];
    let positions: Vec<usize> = keys
        .iter()
        .map(|key| {
            text.rfind(key)
                .unwrap_or_else(|| panic!("{key} missing in {text}"))
        })
        .collect();
    assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "{text}");

    let value = serde_json::to_value(&summary).expect("json");
    assert_eq!(
        value["totals"],
        json!({ "tasks": 1, "attempts": 1, "events": 1, "checkpoints": 0, "max_attempt": 1 })
    );
    assert_eq!(
        value["timing"],
        json!({
            "created_at": "2026-01-01T00:00:00Z",
            "first_started_at": "2026-01-01T00:00:00Z",
            "last_ended_at": null,
            "last_event_time": "2026-01-01T00:00:00Z",
            "workflow_duration_seconds": null,
        })
    );
    assert_eq!(
        value["stage_timings"],
        json!([{
            "stage": 0, "attempt": 1, "started_at": "2026-01-01T00:00:00Z", "ended_at": null,
            "duration_seconds": null, "outcome": null, "worker_id": "worker-a",
        }])
    );
    assert_eq!(
        value["critical_path"],
        json!({
            "total_duration_seconds": 0.0,
            "nodes": [{
                "task_id": 1, "name": "root", "status": "running", "stage": 0, "attempt": 1,
                "outcome": null, "duration_seconds": null,
                "started_at": "2026-01-01T00:00:00Z", "ended_at": null,
            }],
        })
    );
    // Slowest attempts are the attempt row with its duration added.
    assert_eq!(
        value["slowest_attempts"],
        json!([{
            "id": 1, "task_id": 1, "attempt": 1, "worker_id": "worker-a",
            "started_at": "2026-01-01T00:00:00Z", "ended_at": null, "outcome": null,
            "error": null, "timeout_flag": false, "duration_seconds": null,
        }])
    );
    // And it reads back.
    let back: WorkflowSummary = serde_json::from_str(&text).expect("round trip");
    assert_eq!(back, summary);
}

/// Root: attempt 1 (stage 0) creates children 2 and 3, suspends; attempt 2 (stage 1) completes.
fn two_child_workflow() -> (Task, Vec<Task>, Vec<TaskAttempt>, Vec<TaskEvent>) {
    let root = Task {
        stage: 1,
        ..root(TaskStatus::Completed)
    };
    let tasks = vec![
        root.clone(),
        child(2, "slow", TaskStatus::Completed, 1, 1, 1),
        child(3, "fast", TaskStatus::Completed, 1, 1, 1),
    ];
    let attempts = vec![
        done(1, 1, 1, 0, 1000, Suspended),
        done(2, 2, 1, 1100, 3100, Completed),
        done(3, 3, 1, 1100, 2100, Completed),
        done(4, 1, 2, 3200, 3700, Completed),
    ];
    let events = vec![
        event(1, 1, 1, EventType::TaskCreated, 0),
        started(2, 1, 1, 1, 0, 0),
        event(3, 2, 1, EventType::TaskCreated, 1000),
        event(4, 3, 1, EventType::TaskCreated, 1000),
        started(5, 2, 1, 1, 0, 1100),
        started(6, 3, 1, 1, 0, 1100),
        // The re-claim after the resume runs stage 1.
        started(7, 1, 1, 2, 1, 3200),
    ];
    (root, tasks, attempts, events)
}

#[test]
fn parallel_children_add_their_longest_branch_to_the_parents_attempts() {
    let (root, tasks, attempts, events) = two_child_workflow();
    let summary = summarize_both_ways(Some(&root), &tasks, &attempts, &events);

    // 1.0 (root stage 0) + 2.0 (slowest child) + 0.5 (root stage 1).
    assert_eq!(summary.critical_path.total_duration_seconds, 3.5);
    assert_eq!(path(&summary), [(1, 1), (2, 1), (1, 2)]);
    let stages: Vec<i32> = summary
        .critical_path
        .nodes
        .iter()
        .map(|node| node.stage)
        .collect();
    assert_eq!(stages, [0, 0, 1]);
    assert_eq!(summary.critical_path.nodes[1].duration_seconds, Some(2.0));
    assert_eq!(summary.critical_path.nodes[1].outcome, Some(Completed));

    let timings: Vec<(i32, i32, Option<f64>, Option<AttemptOutcome>)> = summary
        .stage_timings
        .iter()
        .map(|timing| {
            (
                timing.stage,
                timing.attempt,
                timing.duration_seconds,
                timing.outcome,
            )
        })
        .collect();
    assert_eq!(
        timings,
        [
            (0, 1, Some(1.0), Some(Suspended)),
            (1, 2, Some(0.5), Some(Completed))
        ]
    );

    assert_eq!(summary.timing.first_started_at, Some(at(0)));
    assert_eq!(summary.timing.last_ended_at, Some(at(3700)));
    assert_eq!(summary.timing.last_event_time, Some(at(3200)));
    assert_eq!(summary.timing.workflow_duration_seconds, Some(3.7));
    assert_eq!(summary.totals.max_attempt, 2);
    assert_eq!(
        summary.attempt_outcomes,
        [("completed".to_owned(), 3), ("suspended".to_owned(), 1)].into()
    );
}

#[test]
fn each_stage_of_children_adds_to_the_path() {
    // Root attempt 1 (stage 0) → children 2 (2 s) and 3 (0.5 s); attempt 2 (stage 1) →
    // children 4 (0.5 s) and 5 (a failed 1 s attempt and a 1.5 s retry); attempt 3 (stage 2)
    // completes.
    let root = Task {
        stage: 2,
        ..root(TaskStatus::Completed)
    };
    let tasks = vec![
        root.clone(),
        child(2, "a", TaskStatus::Completed, 1, 1, 1),
        child(3, "b", TaskStatus::Completed, 1, 1, 1),
        child(4, "c", TaskStatus::Completed, 1, 1, 2),
        child(5, "d", TaskStatus::Completed, 1, 1, 2),
    ];
    let attempts = vec![
        done(1, 1, 1, 0, 1000, Suspended),
        done(2, 2, 1, 1000, 3000, Completed),
        done(3, 3, 1, 1000, 1500, Completed),
        done(4, 1, 2, 3000, 3500, Suspended),
        done(5, 4, 1, 3500, 4000, Completed),
        done(6, 5, 1, 3500, 4500, Failed),
        done(7, 5, 2, 5000, 6500, Completed),
        done(8, 1, 3, 6500, 7000, Completed),
    ];
    let events = vec![
        started(1, 1, 1, 1, 0, 0),
        started(2, 2, 1, 1, 0, 1000),
        started(3, 3, 1, 1, 0, 1000),
        started(4, 1, 1, 2, 1, 3000),
        started(5, 4, 1, 1, 0, 3500),
        started(6, 5, 1, 1, 0, 3500),
        started(7, 5, 1, 2, 0, 5000),
        started(8, 1, 1, 3, 2, 6500),
    ];
    let summary = summarize_both_ways(Some(&root), &tasks, &attempts, &events);

    // 1 + 2 + 0.5 + (1 + 1.5) + 0.5: both rounds add, the retry adds to its task.
    assert_eq!(summary.critical_path.total_duration_seconds, 6.5);
    assert_eq!(
        path(&summary),
        [(1, 1), (2, 1), (1, 2), (5, 1), (5, 2), (1, 3)]
    );
    let stages: Vec<i32> = summary
        .critical_path
        .nodes
        .iter()
        .map(|node| node.stage)
        .collect();
    assert_eq!(stages, [0, 0, 1, 0, 0, 2]);
    // The path never exceeds the wall-clock span of the workflow (7 s).
    assert!(summary.critical_path.total_duration_seconds <= 7.0);
    let timings: Vec<(i32, i32)> = summary
        .stage_timings
        .iter()
        .map(|timing| (timing.stage, timing.attempt))
        .collect();
    assert_eq!(timings, [(0, 1), (1, 2), (2, 3)]);
}

#[test]
fn nested_workflows_add_grandchildren_inside_their_parents_branch() {
    // Root → child 2, which itself fans out to 3 and 4 before finishing; child 5 runs alongside.
    let root = Task {
        stage: 1,
        ..root(TaskStatus::Completed)
    };
    let tasks = vec![
        root.clone(),
        Task {
            stage: 1,
            ..child(2, "fan", TaskStatus::Completed, 1, 1, 1)
        },
        child(3, "leaf", TaskStatus::Completed, 1, 2, 1),
        child(4, "leaf", TaskStatus::Completed, 1, 2, 1),
        child(5, "solo", TaskStatus::Completed, 1, 1, 1),
    ];
    let attempts = vec![
        done(1, 1, 1, 0, 100, Suspended),
        done(2, 2, 1, 100, 300, Suspended),
        done(3, 3, 1, 300, 1300, Completed),
        done(4, 4, 1, 300, 800, Completed),
        done(5, 2, 2, 1300, 1400, Completed),
        done(6, 5, 1, 100, 1200, Completed),
        done(7, 1, 2, 1400, 1500, Completed),
    ];
    let events = vec![
        started(1, 1, 1, 1, 0, 0),
        started(2, 2, 1, 1, 0, 100),
        started(3, 3, 1, 1, 0, 300),
        started(4, 4, 1, 1, 0, 300),
        started(5, 2, 1, 2, 1, 1300),
        started(6, 5, 1, 1, 0, 100),
        started(7, 1, 1, 2, 1, 1400),
    ];
    let summary = summarize_both_ways(Some(&root), &tasks, &attempts, &events);
    // Branch 2 = 0.2 + 1.0 + 0.1 = 1.3 beats branch 5 = 1.1; total 0.1 + 1.3 + 0.1.
    assert_eq!(summary.critical_path.total_duration_seconds, 1.5);
    assert_eq!(path(&summary), [(1, 1), (2, 1), (3, 1), (2, 2), (1, 2)]);
}

#[test]
fn equal_siblings_resolve_to_the_lowest_id() {
    let (root, mut tasks, mut attempts, events) = two_child_workflow();
    // Make the two children equally long (2 s each).
    attempts[2] = done(3, 3, 1, 1100, 3100, Completed);
    tasks.swap(1, 2);
    attempts.swap(1, 2);
    let summary = summarize_both_ways(Some(&root), &tasks, &attempts, &events);
    assert_eq!(summary.critical_path.total_duration_seconds, 3.5);
    assert_eq!(path(&summary), [(1, 1), (2, 1), (1, 2)]);
}

#[test]
fn failed_tasks_list_current_failures_in_task_order() {
    let (root, mut tasks, mut attempts, events) = two_child_workflow();
    tasks[1] = Task {
        error: Some("boom".into()),
        ..child(2, "slow", TaskStatus::PermanentlyFailed, 1, 1, 1)
    };
    attempts[1] = done(2, 2, 1, 1100, 2100, Failed);
    attempts.push(done(5, 2, 2, 2100, 3100, Failed));
    tasks.push(child(6, "held", TaskStatus::Paused, 1, 1, 1));
    tasks.push(Task {
        error: Some("deadline".into()),
        ..child(7, "late", TaskStatus::Timeout, 1, 1, 1)
    });
    tasks.push(child(8, "waiting", TaskStatus::Pending, 1, 1, 1));
    let summary = summarize_both_ways(Some(&root), &tasks, &attempts, &events);

    let failed: Vec<(i64, &str, TaskStatus, Option<&str>)> = summary
        .failed_tasks
        .iter()
        .map(|task| {
            (
                task.task_id.0,
                task.name.as_str(),
                task.status,
                task.error.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        failed,
        [
            (2, "slow", TaskStatus::PermanentlyFailed, Some("boom")),
            (6, "held", TaskStatus::Paused, None),
            (7, "late", TaskStatus::Timeout, Some("deadline")),
        ]
    );
    assert_eq!(
        summary.attempt_outcomes,
        [
            ("completed".to_owned(), 2),
            ("failed".to_owned(), 2),
            ("suspended".to_owned(), 1)
        ]
        .into()
    );
    // The failed child's two attempts (2 s together) make it the longest branch; the
    // pending child contributes one empty node and 0 s.
    assert_eq!(summary.critical_path.total_duration_seconds, 3.5);
    assert_eq!(path(&summary), [(1, 1), (2, 1), (2, 2), (1, 2)]);
}

#[test]
fn count_maps_and_workers_are_sorted_and_distinct() {
    let root = Task {
        stage: 10,
        worker_id: Some("w-b".into()),
        ..root(TaskStatus::Suspended)
    };
    let tasks = vec![
        root.clone(),
        Task {
            stage: 2,
            worker_id: Some(String::new()),
            ..child(2, "zeta", TaskStatus::Running, 1, 1, 9)
        },
        Task {
            worker_id: Some("w-a".into()),
            ..child(3, "alpha", TaskStatus::Completed, 1, 1, 9)
        },
        child(4, "alpha", TaskStatus::Pending, 1, 1, 9),
    ];
    let mut late = done(1, 3, 1, 0, 10, Completed);
    late.worker_id = Some("w-c".into());
    let attempts = vec![
        late,
        attempt(2, 2, 1, 5, None, None),
        done(3, 2, 4, 0, 1, Failed),
    ];
    let mut checkpoint = event(2, 3, 1, EventType::TaskCheckpoint, 3);
    checkpoint.worker_id = Some("w-d".into());
    let events = vec![
        event(1, 1, 1, EventType::TaskCreated, 0),
        checkpoint,
        event(3, 3, 1, EventType::TaskCheckpoint, 4),
        event(4, 2, 1, EventType::TaskProgress, 5),
    ];
    let summary = summarize_both_ways(Some(&root), &tasks, &attempts, &events);

    let keys = |map: &std::collections::BTreeMap<String, u64>| -> Vec<String> {
        map.keys().cloned().collect()
    };
    assert_eq!(keys(&summary.stages), ["0", "10", "2"]);
    assert_eq!(summary.stages["0"], 2);
    assert_eq!(
        keys(&summary.statuses),
        ["completed", "pending", "running", "suspended"]
    );
    assert_eq!(keys(&summary.task_names), ["alpha", "root", "zeta"]);
    assert_eq!(summary.task_names["alpha"], 2);
    assert_eq!(keys(&summary.attempt_outcomes), ["completed", "failed"]);
    assert_eq!(summary.workers, ["w-a", "w-b", "w-c", "w-d", "worker-a"]);
    assert_eq!(summary.totals.checkpoints, 2);
    assert_eq!(summary.totals.max_attempt, 4);
    assert_eq!(summary.timing.last_event_time, Some(at(5)));
    // The serialised maps keep that order.
    let text = serde_json::to_string(&summary.stages).expect("json");
    assert_eq!(text, r#"{"0":2,"10":1,"2":1}"#);
}

#[test]
fn slowest_attempts_sort_by_duration_then_start_then_id_and_stop_at_five() {
    let root = root(TaskStatus::Running);
    let attempts = vec![
        attempt(1, 1, 7, 0, None, None),   // open: last
        done(2, 1, 1, 0, 500, Failed),     // 0.5 s
        done(3, 1, 2, 600, 2600, Failed),  // 2 s, starts later than 4
        done(4, 1, 3, 100, 2100, Failed),  // 2 s
        done(5, 1, 4, 100, 2100, Failed),  // 2 s, same start as 4, higher id
        done(6, 1, 5, 3000, 6000, Failed), // 3 s
        done(7, 1, 6, 7000, 6000, Failed), // clock skew: clamped to 0 s
    ];
    let summary = summarize_both_ways(Some(&root), std::slice::from_ref(&root), &attempts, &[]);
    let order: Vec<(i64, Option<f64>)> = summary
        .slowest_attempts
        .iter()
        .map(|timed| (timed.attempt.id, timed.duration_seconds))
        .collect();
    assert_eq!(
        order,
        [
            (6, Some(3.0)),
            (4, Some(2.0)),
            (5, Some(2.0)),
            (3, Some(2.0)),
            (2, Some(0.5))
        ]
    );

    // With fewer than five finished attempts, open ones come last.
    let summary = summarize(
        Some(&root),
        std::slice::from_ref(&root),
        &attempts[..3],
        &[],
    );
    let order: Vec<i64> = summary
        .slowest_attempts
        .iter()
        .map(|timed| timed.attempt.id)
        .collect();
    assert_eq!(order, [3, 2, 1]);
    assert_eq!(summary.slowest_attempts[2].duration_seconds, None);
}

#[test]
fn open_attempts_count_zero_and_stages_fall_back_without_start_events() {
    // No start events: the root's attempt n falls back to stage n − 1, a child's to 0.
    let root = Task {
        stage: 1,
        ..root(TaskStatus::Running)
    };
    let tasks = vec![
        root.clone(),
        child(2, "leaf", TaskStatus::Completed, 1, 1, 1),
    ];
    let attempts = vec![
        done(1, 1, 1, 0, 250, Suspended),
        done(2, 2, 1, 250, 1000, Completed),
        attempt(3, 1, 2, 1000, None, None),
    ];
    let summary = summarize_both_ways(Some(&root), &tasks, &attempts, &[]);
    assert_eq!(summary.critical_path.total_duration_seconds, 1.0);
    assert_eq!(path(&summary), [(1, 1), (2, 1), (1, 2)]);
    let nodes = &summary.critical_path.nodes;
    assert_eq!((nodes[0].stage, nodes[1].stage, nodes[2].stage), (0, 0, 1));
    assert_eq!(nodes[2].duration_seconds, None);
    assert_eq!(nodes[2].ended_at, None);
    let timings: Vec<(i32, Option<f64>)> = summary
        .stage_timings
        .iter()
        .map(|timing| (timing.stage, timing.duration_seconds))
        .collect();
    assert_eq!(timings, [(0, Some(0.25)), (1, None)]);
}

#[test]
fn a_retry_keeps_the_stage_its_start_event_records() {
    // Attempt 2 is a retry of stage 0, not stage 1 as the fallback would guess.
    let root = root(TaskStatus::Completed);
    let attempts = vec![
        done(1, 1, 1, 0, 100, Failed),
        done(2, 1, 2, 200, 300, Completed),
    ];
    let events = vec![started(1, 1, 1, 1, 0, 0), started(2, 1, 1, 2, 0, 200)];
    let summary = summarize_both_ways(Some(&root), std::slice::from_ref(&root), &attempts, &events);
    let stages: Vec<i32> = summary
        .stage_timings
        .iter()
        .map(|timing| timing.stage)
        .collect();
    assert_eq!(stages, [0, 0]);
    assert_eq!(summary.critical_path.total_duration_seconds, 0.2);
}

#[test]
fn children_follow_the_attempt_that_created_their_round_not_its_stage() {
    // Root attempt 1 (1 s, stage 0) → children 2 (2 s) and 3 (5 s); attempt 2 (1 s, stage 1) →
    // children 4 (3 s) and 5 (three failing 1 s attempts, 3 s: the tie goes to 4); attempt 3
    // (1 s, stage 2) completes. Round r is the attempt number, so round 1's child follows
    // attempt 1 even though that attempt ran stage 0.
    let root = Task {
        stage: 2,
        ..root(TaskStatus::Completed)
    };
    let tasks = vec![
        root.clone(),
        child(2, "short", TaskStatus::Completed, 1, 1, 1),
        child(3, "long", TaskStatus::Completed, 1, 1, 1),
        child(4, "steady", TaskStatus::Completed, 1, 1, 2),
        Task {
            attempt: 3,
            retry_count: 2,
            ..child(5, "flaky", TaskStatus::PermanentlyFailed, 1, 1, 2)
        },
    ];
    let attempts = vec![
        done(1, 1, 1, 0, 1000, Suspended),
        done(2, 2, 1, 1000, 3000, Completed),
        done(3, 3, 1, 1000, 6000, Completed),
        done(4, 1, 2, 6000, 7000, Suspended),
        done(5, 4, 1, 7000, 10000, Completed),
        done(6, 5, 1, 7000, 8000, Failed),
        done(7, 5, 2, 8000, 9000, Failed),
        done(8, 5, 3, 9000, 10000, Failed),
        done(9, 1, 3, 10000, 11000, Completed),
    ];
    let events = vec![
        started(1, 1, 1, 1, 0, 0),
        started(2, 2, 1, 1, 0, 1000),
        started(3, 3, 1, 1, 0, 1000),
        started(4, 1, 1, 2, 1, 6000),
        started(5, 4, 1, 1, 0, 7000),
        started(6, 5, 1, 1, 0, 7000),
        started(7, 5, 1, 2, 0, 8000),
        started(8, 5, 1, 3, 0, 9000),
        started(9, 1, 1, 3, 2, 10000),
    ];
    let summary = summarize_both_ways(Some(&root), &tasks, &attempts, &events);

    assert_eq!(summary.critical_path.total_duration_seconds, 11.0);
    assert_eq!(path(&summary), [(1, 1), (3, 1), (1, 2), (4, 1), (1, 3)]);
    let durations: Vec<Option<f64>> = summary
        .critical_path
        .nodes
        .iter()
        .map(|node| node.duration_seconds)
        .collect();
    assert_eq!(
        durations,
        [Some(1.0), Some(5.0), Some(1.0), Some(3.0), Some(1.0)]
    );
    let stages: Vec<i32> = summary
        .critical_path
        .nodes
        .iter()
        .map(|node| node.stage)
        .collect();
    assert_eq!(stages, [0, 0, 1, 0, 2]);
}

#[test]
fn a_round_created_by_a_retry_follows_that_retry() {
    // Attempt 1 of stage 0 fails, its retry (attempt 2, still stage 0) creates round 2, and
    // attempt 3 (stage 1) completes: the child follows attempt 2, not attempt 3.
    let root = Task {
        stage: 1,
        ..root(TaskStatus::Completed)
    };
    let tasks = vec![
        root.clone(),
        child(2, "leaf", TaskStatus::Completed, 1, 1, 2),
    ];
    let attempts = vec![
        done(1, 1, 1, 0, 100, Failed),
        done(2, 1, 2, 200, 300, Suspended),
        done(3, 2, 1, 300, 600, Completed),
        done(4, 1, 3, 600, 700, Completed),
    ];
    let events = vec![
        started(1, 1, 1, 1, 0, 0),
        started(2, 1, 1, 2, 0, 200),
        started(3, 2, 1, 1, 0, 300),
        started(4, 1, 1, 3, 1, 600),
    ];
    let summary = summarize_both_ways(Some(&root), &tasks, &attempts, &events);
    assert_eq!(summary.critical_path.total_duration_seconds, 0.6);
    assert_eq!(path(&summary), [(1, 1), (1, 2), (2, 1), (1, 3)]);
}

#[test]
fn children_of_a_round_without_its_attempt_follow_the_last_earlier_attempt() {
    // Round 3 has a child but the root has no attempt 3 (data the engine would not write):
    // the child still adds and follows attempt 2, the last one numbered below 3.
    let root = root(TaskStatus::Suspended);
    let tasks = vec![
        root.clone(),
        child(2, "leaf", TaskStatus::Completed, 1, 1, 3),
    ];
    let attempts = vec![
        done(1, 1, 1, 0, 100, Failed),
        done(2, 1, 2, 100, 200, Suspended),
        done(3, 2, 1, 200, 500, Completed),
    ];
    let events = vec![started(1, 1, 1, 1, 0, 0), started(2, 1, 1, 2, 0, 100)];
    let summary = summarize_both_ways(Some(&root), &tasks, &attempts, &events);
    assert_eq!(summary.critical_path.total_duration_seconds, 0.5);
    assert_eq!(path(&summary), [(1, 1), (1, 2), (2, 1)]);
}

#[test]
fn children_of_a_round_before_every_attempt_follow_the_first_node() {
    // Round 1 names an attempt the root no longer has, and no attempt is numbered below it:
    // the child follows the root's first node so the path still starts with the root.
    let root = root(TaskStatus::Suspended);
    let tasks = vec![
        root.clone(),
        child(2, "leaf", TaskStatus::Completed, 1, 1, 1),
    ];
    let attempts = vec![
        done(1, 1, 2, 0, 100, Failed),
        done(2, 1, 3, 100, 200, Suspended),
        done(3, 2, 1, 200, 500, Completed),
    ];
    let summary = summarize_both_ways(Some(&root), &tasks, &attempts, &[]);
    assert_eq!(summary.critical_path.total_duration_seconds, 0.5);
    assert_eq!(path(&summary), [(1, 2), (2, 1), (1, 3)]);
}

#[test]
fn a_missing_root_gives_an_empty_path_and_no_stage_timings() {
    let tasks = vec![child(2, "orphan", TaskStatus::Completed, 1, 1, 1)];
    let attempts = vec![done(1, 2, 1, 0, 100, Completed)];
    let summary = summarize_both_ways(None, &tasks, &attempts, &[]);
    assert!(summary.root_task.is_none());
    assert_eq!(summary.timing.created_at, None);
    assert_eq!(summary.timing.workflow_duration_seconds, None);
    assert_eq!(summary.timing.last_ended_at, Some(at(100)));
    assert!(summary.stage_timings.is_empty());
    assert!(summary.critical_path.nodes.is_empty());
    assert_eq!(summary.critical_path.total_duration_seconds, 0.0);
    assert_eq!(summary.totals.tasks, 1);
}

#[test]
fn a_parent_cycle_in_corrupt_data_terminates() {
    // 2 and 3 name each other as parents; only the root's real child is reachable.
    let root = root(TaskStatus::Suspended);
    let tasks = vec![
        root.clone(),
        child(2, "a", TaskStatus::Completed, 1, 3, 1),
        child(3, "b", TaskStatus::Completed, 1, 2, 1),
        child(4, "c", TaskStatus::Completed, 1, 1, 1),
        // The root claiming itself as a child must not loop either.
        Task {
            parent_id: Some(TaskId(4)),
            ..root.clone()
        },
    ];
    let attempts = vec![
        done(1, 1, 1, 0, 100, Suspended),
        done(2, 4, 1, 100, 300, Completed),
    ];
    let summary = summarize(Some(&root), &tasks, &attempts, &[]);
    assert_eq!(path(&summary), [(1, 1), (4, 1)]);
    assert_eq!(summary.critical_path.total_duration_seconds, 0.3);
}
