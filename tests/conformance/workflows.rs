//! Workflows and human-in-the-loop: children, stages, context, child results, failure
//! policies, explicit suspension, resume and cancel.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use fib_flow::error::{DomainError, RuntimeError};
use fib_flow::{
    AttemptOutcome, ChildSpec, DeleteFilter, Error, EventQuery, HandlerError, ManualClock, Outcome,
    TaskHandle, TaskId, TaskOptions, TaskStatus, json,
};

use crate::harness::{TestDb, attempt_outcomes, event_types, eventually, poll_until, wait_status};

type HandlerOutput = Result<Outcome, HandlerError>;

async fn child_double(task: TaskHandle) -> HandlerOutput {
    let n = task.payload()["n"].as_i64().unwrap_or(0);
    Ok(json!(n * 2).into())
}

fn results_of(task: &TaskHandle) -> serde_json::Value {
    json!(task
        .child_results()
        .iter()
        .map(|child| json!({"name": child.name, "status": child.status, "result": child.result, "error": child.error}))
        .collect::<Vec<_>>())
}

pub async fn two_child_workflow_completes(db: &TestDb) {
    let manager = db.manager().await;
    manager.register("double", child_double).expect("register");
    manager
        .register("parent", |task: TaskHandle| async move {
            if task.stage() == 0 {
                let children = vec![
                    ChildSpec::new("double", json!({"n": 1})),
                    ChildSpec::new("double", json!({"n": 2})),
                ];
                return Ok::<Outcome, HandlerError>(task.next(children).into());
            }
            Ok(json!({"stage": task.stage(), "children": results_of(&task)}).into())
        })
        .expect("register");
    let parent = manager
        .enqueue("parent", json!({}), TaskOptions::default())
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let done = wait_status(&manager, parent, TaskStatus::Completed).await;
    assert_eq!(
        done.result,
        Some(json!({"stage": 1, "children": [
            {"name": "double", "status": "completed", "result": 2, "error": null},
            {"name": "double", "status": "completed", "result": 4, "error": null},
        ]}))
    );
    assert_eq!(done.total_children, 2);
    assert_eq!(done.completed_children, 2);
    assert_eq!(
        attempt_outcomes(&manager, parent).await,
        [
            Some(AttemptOutcome::Suspended),
            Some(AttemptOutcome::Completed)
        ]
    );
    let children = manager.child_tasks(parent).await.expect("children");
    assert_eq!(children.len(), 2);
    assert!(
        children
            .iter()
            .all(|child| child.root_id == Some(parent) && child.parent_id == Some(parent))
    );

    let events = manager
        .task_events(parent, EventQuery::default())
        .await
        .expect("events");
    let subtasks = events
        .iter()
        .find(|e| e.event_type == "task_subtasks_created")
        .expect("subtasks event");
    assert_eq!(subtasks.metadata["child_count"], json!(2));
    let changes: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "task_status_changed")
        .collect();
    assert_eq!(
        changes[0].metadata["suspend_reason"],
        json!("awaiting_subtasks")
    );
    assert_eq!(
        changes[1].metadata["resume_reason"],
        json!("children_completed")
    );
    assert_eq!(changes[1].to_status, Some(TaskStatus::Pending));
    let workflow = manager
        .workflow_events(parent, EventQuery::default())
        .await
        .expect("workflow events");
    assert!(
        workflow.iter().any(|e| e.task_id == children[0].id),
        "workflow events include the children's"
    );
    manager.stop().await.expect("stop");
}

pub async fn nested_levels_share_one_root(db: &TestDb) {
    let manager = db.manager().await;
    manager
        .register("leaf", |_task: TaskHandle| async move {
            Ok::<Outcome, HandlerError>(json!("leaf").into())
        })
        .expect("register");
    for (name, child) in [("middle", "leaf"), ("top", "middle")] {
        manager
            .register(name, move |task: TaskHandle| async move {
                if task.stage() == 0 {
                    return Ok::<Outcome, HandlerError>(
                        task.next(vec![ChildSpec::new(child, json!({}))]).into(),
                    );
                }
                Ok(json!(task.child_results()[0].result).into())
            })
            .expect("register");
    }
    let root = manager
        .enqueue("top", json!({}), TaskOptions::default())
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let done = wait_status(&manager, root, TaskStatus::Completed).await;
    assert_eq!(done.result, Some(json!("leaf")));
    let middle = manager.child_tasks(root).await.expect("children");
    let leaf = manager
        .child_tasks(middle[0].id)
        .await
        .expect("grandchildren");
    assert_eq!(middle[0].root_id, Some(root));
    assert_eq!(
        leaf[0].root_id,
        Some(root),
        "grandchildren share the workflow root"
    );
    assert_eq!(leaf[0].parent_id, Some(middle[0].id));
    manager.stop().await.expect("stop");
}

pub async fn each_stage_sees_only_its_rounds_results(db: &TestDb) {
    let manager = db.manager().await;
    manager.register("double", child_double).expect("register");
    manager
        .register("staged", |task: TaskHandle| async move {
            let seen: Vec<i64> = task
                .child_results()
                .iter()
                .filter_map(|c| c.result.as_ref()?.as_i64())
                .collect();
            match task.stage() {
                0 => Ok::<Outcome, HandlerError>(
                    task.next(vec![ChildSpec::new("double", json!({"n": 1}))])
                        .into(),
                ),
                1 => {
                    assert_eq!(seen, [2]);
                    let children = vec![
                        ChildSpec::new("double", json!({"n": 10})),
                        ChildSpec::new("double", json!({"n": 20})),
                    ];
                    Ok(task.next(children).into())
                }
                _ => Ok(json!({"stage": task.stage(), "seen": seen}).into()),
            }
        })
        .expect("register");
    let id = manager
        .enqueue("staged", json!({}), TaskOptions::default())
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let done = wait_status(&manager, id, TaskStatus::Completed).await;
    assert_eq!(done.result, Some(json!({"stage": 2, "seen": [20, 40]})));
    assert_eq!(done.total_children, 3);
    manager.stop().await.expect("stop");
}

async fn failing_child(_task: TaskHandle) -> HandlerOutput {
    Err("child exploded".into())
}

pub async fn failed_child_resumes_parent_with_its_error(db: &TestDb) {
    let manager = db.manager().await;
    manager.register("fails", failing_child).expect("register");
    manager.register("double", child_double).expect("register");
    manager
        .register("parent", |task: TaskHandle| async move {
            if task.stage() == 0 {
                let mut bad = ChildSpec::new("fails", json!({}));
                bad.max_retries = Some(2);
                return Ok::<Outcome, HandlerError>(
                    task.next(vec![ChildSpec::new("double", json!({"n": 3})), bad])
                        .into(),
                );
            }
            Ok(results_of(&task).into())
        })
        .expect("register");
    let id = manager
        .enqueue("parent", json!({}), TaskOptions::default())
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let done = wait_status(&manager, id, TaskStatus::Completed).await;
    let result = done.result.expect("result");
    assert_eq!(result[0]["result"], json!(6));
    assert_eq!(result[1]["status"], json!("permanently_failed"));
    assert!(
        result[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("child exploded")),
        "{result}"
    );
    let children = manager.child_tasks(id).await.expect("children");
    assert_eq!(
        manager
            .task_attempts(children[1].id)
            .await
            .expect("attempts")
            .len(),
        2,
        "retries exhausted first"
    );
    manager.stop().await.expect("stop");
}

pub async fn fail_fast_policy_fails_the_parent(db: &TestDb) {
    let manager = db.manager().await;
    manager.register("fails", failing_child).expect("register");
    let parent_runs = Arc::new(AtomicUsize::new(0));
    let runs = parent_runs.clone();
    manager
        .register("strict", move |task: TaskHandle| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let mut child = ChildSpec::new("fails", json!({}));
                child.max_retries = Some(1);
                Ok::<Outcome, HandlerError>(task.next(vec![child]).fail_on_child_failure().into())
            }
        })
        .expect("register");
    let id = manager
        .enqueue("strict", json!({}), TaskOptions::default().max_retries(1))
        .await
        .expect("enqueue");
    let cron_parent = manager
        .cron(
            "strict",
            "* * * * * *",
            json!({}),
            TaskOptions::default().max_retries(1),
        )
        .await
        .expect("cron");
    manager.start().await.expect("start");
    let failed = wait_status(&manager, id, TaskStatus::PermanentlyFailed).await;
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("failed")),
        "{:?}",
        failed.error
    );
    let paused = wait_status(&manager, cron_parent, TaskStatus::Paused).await;
    assert!(
        paused
            .error
            .as_deref()
            .is_some_and(|e| e.contains("failed")),
        "{:?}",
        paused.error
    );
    assert_eq!(
        parent_runs.load(Ordering::SeqCst),
        2,
        "neither parent is resumed after its child failed"
    );
    manager.stop().await.expect("stop");
}

pub async fn context_round_trips_and_is_not_inherited(db: &TestDb) {
    let manager = db.manager().await;
    let context: Vec<u8> = (0..(1024 * 1024))
        .map(|i| (i % 251) as u8)
        .chain([0xff, 0xfe, 0x00])
        .collect();
    let expected = context.clone();
    manager
        .register("child_context", |task: TaskHandle| async move {
            Ok::<Outcome, HandlerError>(json!(task.context().is_some()).into())
        })
        .expect("register");
    manager
        .register("keeper", move |task: TaskHandle| {
            let context = context.clone();
            async move {
                if task.stage() == 0 {
                    return Ok::<Outcome, HandlerError>(
                        task.next(vec![ChildSpec::new("child_context", json!({}))])
                            .context(context)
                            .into(),
                    );
                }
                let same = task.context() == Some(context.as_slice());
                Ok(
                    json!({"same": same, "child_saw_context": task.child_results()[0].result})
                        .into(),
                )
            }
        })
        .expect("register");
    let id = manager
        .enqueue("keeper", json!({}), TaskOptions::default())
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let done = wait_status(&manager, id, TaskStatus::Completed).await;
    assert_eq!(
        done.result,
        Some(json!({"same": true, "child_saw_context": false}))
    );
    assert_eq!(done.context.as_deref(), Some(expected.as_slice()));
    manager.stop().await.expect("stop");
}

pub async fn retried_parent_restarts_at_stage_zero_without_context(db: &TestDb) {
    let manager = db.manager().await;
    manager.register("double", child_double).expect("register");
    let observed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = observed.clone();
    manager
        .register("retrying", move |task: TaskHandle| {
            let log = log.clone();
            async move {
                log.lock().expect("lock").push((
                    task.stage(),
                    task.context().map(<[u8]>::to_vec),
                    task.attempt(),
                ));
                match (task.stage(), task.attempt()) {
                    (0, _) => Ok::<Outcome, HandlerError>(
                        task.next(vec![ChildSpec::new("double", json!({"n": 1}))])
                            .context(b"ctx".to_vec())
                            .into(),
                    ),
                    (_, 2) => Err("stage 1 fails on the first run".into()),
                    _ => Ok(json!("recovered").into()),
                }
            }
        })
        .expect("register");
    let id = manager
        .enqueue("retrying", json!({}), TaskOptions::default().max_retries(2))
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let done = wait_status(&manager, id, TaskStatus::Completed).await;
    assert_eq!(done.result, Some(json!("recovered")));
    let observed = observed.lock().expect("lock").clone();
    assert_eq!(
        observed,
        [
            (0, None, 1),
            (1, Some(b"ctx".to_vec()), 2),
            (0, None, 3),
            (1, Some(b"ctx".to_vec()), 4)
        ],
        "the retry restarts at stage 0 with the context cleared and creates the children again"
    );
    assert_eq!(manager.child_tasks(id).await.expect("children").len(), 2);
    manager.stop().await.expect("stop");
}

pub async fn new_rounds_use_the_live_child_handler(db: &TestDb) {
    let manager = db.manager().await;
    manager
        .register("versioned_child", |_task: TaskHandle| async move {
            Ok::<Outcome, HandlerError>(json!("v1").into())
        })
        .expect("register");
    let swap = manager.clone();
    manager
        .register("two_rounds", move |task: TaskHandle| {
            let swap = swap.clone();
            async move {
                match task.stage() {
                    0 => Ok::<Outcome, HandlerError>(
                        task.next(vec![ChildSpec::new("versioned_child", json!({}))])
                            .into(),
                    ),
                    1 => {
                        swap.register("versioned_child", |_task: TaskHandle| async move {
                            Ok::<Outcome, HandlerError>(json!("v2").into())
                        })
                        .expect("register");
                        Ok(task
                            .next(vec![ChildSpec::new("versioned_child", json!({}))])
                            .into())
                    }
                    _ => Ok(json!(task.child_results()[0].result).into()),
                }
            }
        })
        .expect("register");
    let id = manager
        .enqueue("two_rounds", json!({}), TaskOptions::default())
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    assert_eq!(
        wait_status(&manager, id, TaskStatus::Completed)
            .await
            .result,
        Some(json!("v2"))
    );
    let children = manager.child_tasks(id).await.expect("children");
    assert_eq!(children[0].result, Some(json!("v1")));
    manager.stop().await.expect("stop");
}

pub async fn invalid_children_fail_the_attempt_and_write_nothing(db: &TestDb) {
    let manager = db.manager().await;
    manager
        .register("bad_parent", |task: TaskHandle| async move {
            let children = match task.payload()["kind"].as_str() {
                Some("unknown") => vec![ChildSpec::new("not_registered", json!({}))],
                Some("unnamed") => vec![ChildSpec::new("", json!({}))],
                _ => Vec::new(),
            };
            Ok::<Outcome, HandlerError>(task.next(children).into())
        })
        .expect("register");
    let mut ids = Vec::new();
    for kind in ["unknown", "unnamed", "empty"] {
        ids.push(
            manager
                .enqueue(
                    "bad_parent",
                    json!({"kind": kind}),
                    TaskOptions::default().max_retries(1),
                )
                .await
                .expect("enqueue"),
        );
    }
    manager.start().await.expect("start");
    let expected = [
        "No handler registered for child task: not_registered",
        "Child task missing required name property",
        "at least one child",
    ];
    for (id, message) in ids.into_iter().zip(expected) {
        let task = wait_status(&manager, id, TaskStatus::PermanentlyFailed).await;
        assert!(
            task.error.as_deref().is_some_and(|e| e.contains(message)),
            "{:?} vs {message}",
            task.error
        );
        assert!(
            manager.child_tasks(id).await.expect("children").is_empty(),
            "nothing half-written"
        );
        assert_eq!(task.total_children, 0);
    }
    manager.stop().await.expect("stop");
}

fn approval_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .expect("instant"),
    ))
}

pub async fn explicit_suspension_waits_for_a_human(db: &TestDb) {
    let clock = approval_clock();
    let manager = db.manager_with(db.options(), Some(clock.clone())).await;
    manager
        .register("approval", |task: TaskHandle| async move {
            if task.stage() == 0 {
                return Ok::<Outcome, HandlerError>(
                    task.suspend("needs_approval")
                        .metadata(json!({"approver": "ops"}))
                        .context(vec![0u8, 159, 146, 150])
                        .into(),
                );
            }
            Ok(json!({"stage": task.stage(), "context": task.context()}).into())
        })
        .expect("register");
    let id = manager
        .enqueue("approval", json!({}), TaskOptions::default())
        .await
        .expect("enqueue");
    let other = manager
        .enqueue("approval", json!({}), TaskOptions::default())
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let suspended = wait_status(&manager, id, TaskStatus::Suspended).await;
    wait_status(&manager, other, TaskStatus::Suspended).await;
    assert_eq!(suspended.suspend_reason.as_deref(), Some("needs_approval"));
    assert_eq!(suspended.suspend_metadata, Some(json!({"approver": "ops"})));

    clock.advance(Duration::from_secs(3600));
    manager.run_maintenance().await.expect("maintenance");
    let still = manager.get_task(id).await.expect("get").expect("exists");
    assert_eq!(
        still.status,
        TaskStatus::Suspended,
        "immune to heartbeat and deadline sweeps"
    );

    let by_reason = manager
        .tasks_by_status(TaskStatus::Suspended, Some("needs_approval"))
        .await
        .expect("by reason");
    assert_eq!(
        by_reason.iter().map(|t| t.id).collect::<Vec<_>>(),
        [id, other]
    );
    assert!(
        manager
            .tasks_by_status(TaskStatus::Suspended, Some("other"))
            .await
            .expect("none")
            .is_empty()
    );

    let resumed = manager
        .resume_task(id, Some("approved by ops".into()))
        .await
        .expect("resume");
    assert_eq!(resumed.status, TaskStatus::Pending);
    assert_eq!(resumed.stage, 1);
    assert_eq!(resumed.suspend_reason, None);
    let done = wait_status(&manager, id, TaskStatus::Completed).await;
    assert_eq!(
        done.result,
        Some(json!({"stage": 1, "context": [0, 159, 146, 150]}))
    );
    assert_eq!(
        attempt_outcomes(&manager, id).await,
        [
            Some(AttemptOutcome::Suspended),
            Some(AttemptOutcome::Completed)
        ]
    );
    let events = manager
        .task_events(id, EventQuery::default())
        .await
        .expect("events");
    let suspended_event = events
        .iter()
        .find(|e| e.event_type == "task_suspended")
        .expect("suspended event");
    assert_eq!(
        suspended_event.metadata["suspend_reason"],
        json!("needs_approval")
    );
    let resumed_event = events
        .iter()
        .find(|e| e.event_type == "task_resumed")
        .expect("resumed event");
    assert_eq!(
        resumed_event.metadata["resume_reason"],
        json!("approved by ops")
    );

    let cancelled = manager
        .cancel_task(other, Some("rejected".into()))
        .await
        .expect("cancel");
    assert_eq!(cancelled.status, TaskStatus::PermanentlyFailed);
    assert_eq!(
        event_types(&manager, other)
            .await
            .last()
            .map(String::as_str),
        Some("task_permanently_failed")
    );
    manager.stop().await.expect("stop");
}

pub async fn a_suspended_child_keeps_its_parent_waiting(db: &TestDb) {
    let manager = db.manager().await;
    manager
        .register("needs_human", |task: TaskHandle| async move {
            if task.stage() == 0 {
                return Ok::<Outcome, HandlerError>(task.suspend("review").into());
            }
            Ok(json!("reviewed").into())
        })
        .expect("register");
    manager
        .register("waiting_parent", |task: TaskHandle| async move {
            if task.stage() == 0 {
                return Ok::<Outcome, HandlerError>(
                    task.next(vec![ChildSpec::new("needs_human", json!({}))])
                        .into(),
                );
            }
            Ok(json!(task.child_results()[0].result).into())
        })
        .expect("register");
    let parent = manager
        .enqueue("waiting_parent", json!({}), TaskOptions::default())
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let child: TaskId = poll_until("the child to suspend", Duration::from_secs(20), || async {
        let children = manager.child_tasks(parent).await.expect("children");
        children
            .first()
            .filter(|c| c.status == TaskStatus::Suspended)
            .map(|c| c.id)
    })
    .await;
    let waiting = manager
        .get_task(parent)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(waiting.status, TaskStatus::Suspended);
    assert_eq!(waiting.suspend_reason.as_deref(), Some("awaiting_subtasks"));
    let refused = manager.resume_task(parent, None).await;
    assert!(
        matches!(
            refused,
            Err(Error::Runtime(RuntimeError::InvalidInput(
                DomainError::AwaitingChildren { .. }
            ))) | Err(Error::Invalid(DomainError::AwaitingChildren { .. }))
        ),
        "{refused:?}"
    );
    manager
        .resume_task(child, None)
        .await
        .expect("resume child");
    let done = wait_status(&manager, parent, TaskStatus::Completed).await;
    assert_eq!(done.result, Some(json!("reviewed")));
    manager.stop().await.expect("stop");
}

pub async fn cron_parent_resumes_then_reschedules_at_stage_zero(db: &TestDb) {
    let clock = approval_clock();
    let manager = db.manager_with(db.options(), Some(clock.clone())).await;
    manager.register("double", child_double).expect("register");
    manager
        .register("cron_parent", |task: TaskHandle| async move {
            if task.stage() == 0 {
                return Ok::<Outcome, HandlerError>(
                    task.next(vec![ChildSpec::new("double", json!({"n": 5}))])
                        .into(),
                );
            }
            Ok(json!(task.child_results()[0].result).into())
        })
        .expect("register");
    let id = manager
        .cron(
            "cron_parent",
            "0 * * * *",
            json!({}),
            TaskOptions::default(),
        )
        .await
        .expect("cron");
    manager.start().await.expect("start");
    clock.advance(Duration::from_secs(3600));
    eventually(
        "the cron parent to finish its run",
        Duration::from_secs(20),
        || async {
            let task = manager.get_task(id).await.expect("get").expect("exists");
            task.status == TaskStatus::Pending && task.result.is_some()
        },
    )
    .await;
    let task = manager.get_task(id).await.expect("get").expect("exists");
    assert_eq!(task.result, Some(json!(10)));
    assert_eq!(task.stage, 0);
    assert_eq!(
        task.next_run_time,
        Utc.with_ymd_and_hms(2026, 3, 1, 14, 0, 0)
            .single()
            .expect("instant")
    );
    manager.stop().await.expect("stop");
}

pub async fn deleting_a_parent_does_not_break_maintenance(db: &TestDb) {
    let manager = db.manager().await;
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    manager
        .register("slow_failure", move |_task: TaskHandle| {
            let gate = gate.clone();
            async move {
                gate.notified().await;
                Err::<Outcome, HandlerError>("child failed after its parent was deleted".into())
            }
        })
        .expect("register");
    manager
        .register("doomed_parent", |task: TaskHandle| async move {
            let mut child = ChildSpec::new("slow_failure", json!({}));
            child.max_retries = Some(1);
            Ok::<Outcome, HandlerError>(task.next(vec![child]).into())
        })
        .expect("register");
    manager.register("double", child_double).expect("register");
    let parent = manager
        .enqueue("doomed_parent", json!({}), TaskOptions::default())
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let child: TaskId = poll_until("the child to run", Duration::from_secs(20), || async {
        let children = manager.child_tasks(parent).await.expect("children");
        children
            .first()
            .filter(|c| c.status == TaskStatus::Running)
            .map(|c| c.id)
    })
    .await;
    let deleted = manager
        .delete_tasks(DeleteFilter {
            name: Some("doomed_parent".into()),
            ..DeleteFilter::default()
        })
        .await
        .expect("delete parent");
    assert_eq!(deleted, 1);
    release.notify_one();
    wait_status(&manager, child, TaskStatus::PermanentlyFailed).await;
    manager
        .run_maintenance()
        .await
        .expect("maintenance still runs");
    let after = manager
        .enqueue("double", json!({"n": 21}), TaskOptions::default())
        .await
        .expect("enqueue");
    assert_eq!(
        wait_status(&manager, after, TaskStatus::Completed)
            .await
            .result,
        Some(json!(42))
    );
    manager.stop().await.expect("stop");
}
