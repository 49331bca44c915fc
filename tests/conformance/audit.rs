//! The audit query layer (paged task/event/attempt queries, audit views, the workflow summary)
//! and retention.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use fib_flow::{
    AttemptOutcome, AttemptQuery, ChildSpec, EventQuery, EventType, HandlerError, ManagerOptions,
    ManualClock, Order, Outcome, PageRequest, RetentionConfig, RetentionPolicy, TaskAuditOptions,
    TaskHandle, TaskId, TaskManager, TaskOptions, TaskQuery, TaskStatus, TaskType,
    WorkflowAuditOptions, json,
};
use serde_json::Value;

use crate::harness::{TestDb, wait_status};

fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0)
        .single()
        .expect("instant")
}

async fn manual_manager(db: &TestDb, options: ManagerOptions) -> (TaskManager, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(epoch()));
    let manager = db.manager_with(options, Some(clock.clone())).await;
    (manager, clock)
}

/// A handler that advances the manual clock by `payload.seconds` (so attempts get exact
/// durations) and then fails when `payload.fail` is true.
fn timed(
    clock: Arc<ManualClock>,
) -> impl Fn(
    TaskHandle,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Outcome, HandlerError>> + Send>,
> + Send
+ Sync
+ 'static {
    move |task: TaskHandle| {
        let clock = clock.clone();
        Box::pin(async move {
            let seconds = task.payload()["seconds"].as_u64().unwrap_or(0);
            clock.advance(Duration::from_secs(seconds));
            if task.payload()["fail"].as_bool() == Some(true) {
                return Err("timed child failed".into());
            }
            Ok(json!(seconds).into())
        })
    }
}

/// Test options with automatic retention out of the way (tests call it explicitly).
fn quiet(db: &TestDb) -> ManagerOptions {
    ManagerOptions {
        retention_interval: Duration::from_secs(30 * 86_400),
        task_heartbeat_timeout: Duration::from_secs(3600),
        ..db.options()
    }
}

/// One task at a time, so handlers can move the manual clock without overlapping.
fn serial(db: &TestDb) -> ManagerOptions {
    ManagerOptions {
        max_concurrent_tasks: 1,
        claim_batch_size: 1,
        ..quiet(db)
    }
}

pub async fn query_tasks_filters_and_pages(db: &TestDb) {
    let (manager, clock) = manual_manager(db, quiet(db)).await;
    manager
        .register("alpha", |_t: TaskHandle| async move {
            Ok::<Outcome, HandlerError>(json!(1).into())
        })
        .expect("register");
    manager
        .register("beta", |_t: TaskHandle| async move {
            Ok::<Outcome, HandlerError>(json!(2).into())
        })
        .expect("register");
    let mut ids = Vec::new();
    for index in 0..5 {
        let name = if index % 2 == 0 { "alpha" } else { "beta" };
        ids.push(
            manager
                .enqueue(
                    name,
                    json!({}),
                    TaskOptions::default().tag(format!("tag-{}", index % 3)),
                )
                .await
                .expect("enqueue"),
        );
    }
    let cron = manager
        .cron("beta", "0 0 * * *", json!({}), TaskOptions::default())
        .await
        .expect("cron");
    clock.advance(Duration::from_secs(1));

    let all = manager
        .query_tasks(TaskQuery::default(), PageRequest::default())
        .await
        .expect("all");
    assert_eq!(all.total, 6);
    assert_eq!(all.limit, 100);
    assert!(!all.has_more);
    let by = |query: TaskQuery| {
        let manager = manager.clone();
        async move {
            manager
                .query_tasks(query, PageRequest::default())
                .await
                .expect("query")
                .items
                .into_iter()
                .map(|task| task.id)
                .collect::<Vec<TaskId>>()
        }
    };
    assert_eq!(
        by(TaskQuery {
            name: Some("alpha".into()),
            ..TaskQuery::default()
        })
        .await,
        [ids[0], ids[2], ids[4]]
    );
    assert_eq!(
        by(TaskQuery {
            tag: Some("tag-1".into()),
            ..TaskQuery::default()
        })
        .await,
        [ids[1], ids[4]]
    );
    assert_eq!(
        by(TaskQuery {
            task_type: Some(TaskType::Cron),
            ..TaskQuery::default()
        })
        .await,
        [cron]
    );
    assert_eq!(
        by(TaskQuery {
            name: Some("beta".into()),
            task_type: Some(TaskType::Async),
            ..TaskQuery::default()
        })
        .await,
        [ids[1], ids[3]]
    );
    assert_eq!(
        by(TaskQuery {
            status: Some(TaskStatus::Completed),
            ..TaskQuery::default()
        })
        .await,
        []
    );
    assert_eq!(
        by(TaskQuery {
            workflow_root_id: Some(ids[3]),
            ..TaskQuery::default()
        })
        .await,
        [ids[3]]
    );

    let first = manager
        .query_tasks(TaskQuery::default(), PageRequest::limit(1))
        .await
        .expect("page");
    assert_eq!(
        (first.items.len(), first.total, first.has_more),
        (1, 6, true)
    );
    assert_eq!(first.items[0].id, ids[0]);
    let last = manager
        .query_tasks(TaskQuery::default(), PageRequest::limit(2).offset(4))
        .await
        .expect("last page");
    assert_eq!((last.items.len(), last.has_more), (2, false));
    let past = manager
        .query_tasks(TaskQuery::default(), PageRequest::limit(10).offset(50))
        .await
        .expect("past the end");
    assert!(past.items.is_empty());
    assert_eq!((past.total, past.offset, past.has_more), (6, 50, false));
    let desc = manager
        .query_tasks(
            TaskQuery::default(),
            PageRequest::limit(2).order(Order::Desc),
        )
        .await
        .expect("desc");
    assert_eq!(
        desc.items.iter().map(|t| t.id).collect::<Vec<_>>(),
        [cron, ids[4]],
        "equal created_at: id breaks ties"
    );
    for bad in [PageRequest::limit(0), PageRequest::limit(1001)] {
        let error = manager
            .query_tasks(TaskQuery::default(), bad)
            .await
            .expect_err("invalid limit");
        assert!(error.to_string().contains("limit"), "{error}");
    }
    manager.stop().await.expect("stop");
}

pub async fn event_and_attempt_queries_filter_and_order(db: &TestDb) {
    let (manager, clock) = manual_manager(db, quiet(db)).await;
    let flaky_clock = clock.clone();
    manager
        .register("flaky", move |task: TaskHandle| {
            let clock = flaky_clock.clone();
            async move {
                clock.advance(Duration::from_secs(2));
                if task.attempt() == 1 {
                    return Err::<Outcome, HandlerError>("first attempt fails".into());
                }
                task.audit("second_attempt").await?;
                Ok(json!("ok").into())
            }
        })
        .expect("register");
    let id = manager
        .enqueue("flaky", json!({}), TaskOptions::default().max_retries(3))
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    wait_status(&manager, id, TaskStatus::Completed).await;
    let page = PageRequest::default();

    let all = manager
        .query_task_events(id, EventQuery::default(), page)
        .await
        .expect("events");
    let types: Vec<&str> = all.items.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_failed",
            "task_retry_scheduled",
            "task_claimed",
            "task_started",
            "task_retry_started",
            "task_checkpoint",
            "task_completed"
        ]
    );
    let ids: Vec<i64> = all.items.iter().map(|e| e.id).collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "equal timestamps are ordered by id"
    );
    let desc = manager
        .query_task_events(
            id,
            EventQuery::default(),
            PageRequest::default().order(Order::Desc),
        )
        .await
        .expect("desc");
    assert_eq!(
        desc.items.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids.iter().rev().copied().collect::<Vec<_>>()
    );

    let second_round = EventQuery {
        attempt: Some(2),
        ..EventQuery::default()
    };
    let round = manager
        .query_task_events(id, second_round, page)
        .await
        .expect("attempt filter");
    assert_eq!(
        round.total, 5,
        "claimed, started, retry_started, checkpoint, completed carry attempt 2"
    );
    let typed = EventQuery {
        event_type: Some(EventType::TaskStarted),
        ..EventQuery::default()
    };
    assert_eq!(
        manager
            .query_task_events(id, typed, page)
            .await
            .expect("type")
            .total,
        2
    );
    let several = EventQuery {
        event_types: vec![EventType::TaskFailed, EventType::TaskCompleted],
        ..EventQuery::default()
    };
    assert_eq!(
        manager
            .query_task_events(id, several, page)
            .await
            .expect("types")
            .total,
        2
    );
    let by_worker = EventQuery {
        worker_id: Some(manager.worker_id().into()),
        ..EventQuery::default()
    };
    assert_eq!(
        manager
            .query_task_events(id, by_worker, page)
            .await
            .expect("worker")
            .total,
        9
    );
    let stage_zero = EventQuery {
        stage: Some(0),
        ..EventQuery::default()
    };
    assert_eq!(
        manager
            .query_task_events(id, stage_zero, page)
            .await
            .expect("stage")
            .total,
        10
    );
    let late = EventQuery {
        started_after: Some(epoch() + TimeDelta::seconds(1)),
        ..EventQuery::default()
    };
    let late_events = manager
        .query_task_events(id, late, page)
        .await
        .expect("after");
    assert!(
        late_events
            .items
            .iter()
            .all(|e| e.event_time >= epoch() + TimeDelta::seconds(1))
    );
    assert_eq!(late_events.total, 7);
    let early = EventQuery {
        started_before: Some(epoch()),
        ..EventQuery::default()
    };
    assert_eq!(
        manager
            .query_task_events(id, early, page)
            .await
            .expect("before")
            .total,
        3
    );

    let attempts = manager
        .query_task_attempts(id, AttemptQuery::default(), page)
        .await
        .expect("attempts");
    assert_eq!(attempts.total, 2);
    assert_eq!(attempts.items[0].outcome, Some(AttemptOutcome::Failed));
    assert_eq!(
        attempts.items[0].error.as_deref(),
        Some("first attempt fails")
    );
    assert_eq!(attempts.items[1].outcome, Some(AttemptOutcome::Completed));
    let failed = AttemptQuery {
        outcome: Some(AttemptOutcome::Failed),
        ..AttemptQuery::default()
    };
    assert_eq!(
        manager
            .query_task_attempts(id, failed, page)
            .await
            .expect("outcome")
            .total,
        1
    );
    let open = AttemptQuery {
        open_only: true,
        ..AttemptQuery::default()
    };
    assert_eq!(
        manager
            .query_task_attempts(id, open, page)
            .await
            .expect("open")
            .total,
        0
    );
    let ended_late = AttemptQuery {
        ended_after: Some(epoch() + TimeDelta::seconds(3)),
        ..AttemptQuery::default()
    };
    assert_eq!(
        manager
            .query_task_attempts(id, ended_late, page)
            .await
            .expect("ended after")
            .total,
        1
    );
    let started_early = AttemptQuery {
        started_before: Some(epoch() + TimeDelta::seconds(1)),
        ..AttemptQuery::default()
    };
    assert_eq!(
        manager
            .query_task_attempts(id, started_early, page)
            .await
            .expect("started before")
            .total,
        1
    );

    let audit = manager
        .task_audit(id, TaskAuditOptions::default())
        .await
        .expect("task audit");
    assert_eq!(audit.task.as_ref().map(|t| t.id), Some(id));
    assert_eq!(audit.events.total, 10);
    assert_eq!(audit.attempts.total, 2);
    let json = serde_json::to_value(&audit).expect("serialise");
    assert!(
        json["events"]["items"].is_array() && json["attempts"]["has_more"] == json!(false),
        "{json}"
    );
    manager.stop().await.expect("stop");
}

async fn run_workflow(
    manager: &TaskManager,
    clock: &Arc<ManualClock>,
    rounds: Vec<Vec<Value>>,
) -> TaskId {
    let timed_handler = timed(clock.clone());
    manager.register("timed", timed_handler).expect("register");
    let parent_clock = clock.clone();
    let rounds = Arc::new(rounds);
    manager
        .register("planner", move |task: TaskHandle| {
            let clock = parent_clock.clone();
            let rounds = rounds.clone();
            async move {
                clock.advance(Duration::from_secs(1));
                let Some(round) = rounds.get(usize::try_from(task.stage()).unwrap_or(usize::MAX))
                else {
                    return Ok::<Outcome, HandlerError>(json!("planned").into());
                };
                let children = round
                    .iter()
                    .map(|payload| ChildSpec::new("timed", payload.clone()))
                    .collect();
                Ok(task.next(children).into())
            }
        })
        .expect("register");
    manager
        .enqueue("planner", json!({}), TaskOptions::default())
        .await
        .expect("enqueue")
}

pub async fn workflow_summary_of_a_pending_workflow(db: &TestDb) {
    let (manager, _clock) = manual_manager(db, quiet(db)).await;
    manager
        .register("planner", |_t: TaskHandle| async move {
            Ok::<Outcome, HandlerError>(json!(null).into())
        })
        .expect("register");
    let root = manager
        .enqueue("planner", json!({}), TaskOptions::default())
        .await
        .expect("enqueue");
    let summary =
        serde_json::to_value(manager.workflow_audit_summary(root).await.expect("summary"))
            .expect("json");
    assert_eq!(summary["totals"]["tasks"], json!(1));
    assert_eq!(summary["totals"]["attempts"], json!(0));
    assert_eq!(summary["statuses"], json!({"pending": 1}));
    assert_eq!(summary["stage_timings"], json!([]));
    assert_eq!(
        summary["critical_path"]["total_duration_seconds"],
        json!(0.0)
    );
    let nodes = summary["critical_path"]["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["task_id"], json!(root));
    assert_eq!(nodes[0]["attempt"], Value::Null);
    assert_eq!(summary["timing"]["workflow_duration_seconds"], Value::Null);
    manager.stop().await.expect("stop");
}

fn path_durations(summary: &Value) -> Vec<f64> {
    summary["critical_path"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|node| node["duration_seconds"].as_f64().unwrap_or(0.0))
        .collect()
}

pub async fn workflow_summary_takes_the_longest_child_per_stage(db: &TestDb) {
    let (manager, clock) = manual_manager(db, serial(db)).await;
    let root = run_workflow(
        &manager,
        &clock,
        vec![
            vec![json!({"seconds": 2}), json!({"seconds": 5})],
            vec![json!({"seconds": 3}), json!({"seconds": 1, "fail": true})],
        ],
    )
    .await;
    manager.start().await.expect("start");
    wait_status(&manager, root, TaskStatus::Completed).await;
    let summary =
        serde_json::to_value(manager.workflow_audit_summary(root).await.expect("summary"))
            .expect("json");
    assert_eq!(summary["totals"]["tasks"], json!(5));
    // The failing child uses its three attempts of 1 s each.
    assert_eq!(summary["totals"]["attempts"], json!(9));
    assert_eq!(
        summary["statuses"],
        json!({"completed": 4, "permanently_failed": 1})
    );
    assert_eq!(summary["task_names"], json!({"planner": 1, "timed": 4}));
    assert_eq!(summary["attempt_outcomes"]["suspended"], json!(2));
    // Three parent attempts of 1 s each, plus the longest child of each round (5 s, then the
    // 3 s child, which ties with the failing child's three 1 s attempts and has the lower id).
    assert_eq!(
        summary["critical_path"]["total_duration_seconds"],
        json!(11.0)
    );
    assert_eq!(path_durations(&summary), [1.0, 5.0, 1.0, 3.0, 1.0]);
    let stage_timings = summary["stage_timings"].as_array().expect("stage timings");
    assert_eq!(
        stage_timings
            .iter()
            .map(|s| s["stage"].clone())
            .collect::<Vec<_>>(),
        [json!(0), json!(1), json!(2)]
    );
    let failed = summary["failed_tasks"].as_array().expect("failed tasks");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["status"], json!("permanently_failed"));
    let slowest = summary["slowest_attempts"].as_array().expect("slowest");
    assert!(slowest.len() <= 5);
    assert_eq!(slowest[0]["duration_seconds"], json!(5.0));
    let wall = summary["timing"]["workflow_duration_seconds"]
        .as_f64()
        .expect("duration");
    assert!(
        wall >= 11.0,
        "the path never exceeds the workflow's wall-clock time: {wall}"
    );

    let audit = manager
        .workflow_audit(root, WorkflowAuditOptions::default())
        .await
        .expect("workflow audit");
    assert_eq!(audit.root_task.as_ref().map(|t| t.id), Some(root));
    assert_eq!(audit.tasks.total, 5);
    let attempts = manager
        .query_workflow_attempts(root, AttemptQuery::default(), PageRequest::default())
        .await
        .expect("workflow attempts");
    assert_eq!(attempts.total, 9);
    let starts: Vec<_> = attempts
        .items
        .iter()
        .map(|a| (a.started_at, a.id))
        .collect();
    assert!(
        starts.windows(2).all(|pair| pair[0] <= pair[1]),
        "ordered by start time"
    );
    manager.stop().await.expect("stop");
}

pub async fn workflow_summary_breaks_ties_by_lowest_id(db: &TestDb) {
    let (manager, clock) = manual_manager(db, serial(db)).await;
    let root = run_workflow(
        &manager,
        &clock,
        vec![vec![json!({"seconds": 2}), json!({"seconds": 2})]],
    )
    .await;
    manager.start().await.expect("start");
    wait_status(&manager, root, TaskStatus::Completed).await;
    let children = manager.child_tasks(root).await.expect("children");
    let summary =
        serde_json::to_value(manager.workflow_audit_summary(root).await.expect("summary"))
            .expect("json");
    let nodes = summary["critical_path"]["nodes"].as_array().expect("nodes");
    assert_eq!(
        nodes[1]["task_id"],
        json!(children[0].id),
        "equal siblings: the lowest id is on the path"
    );
    assert_eq!(
        summary["critical_path"]["total_duration_seconds"],
        json!(4.0)
    );
    manager.stop().await.expect("stop");
}

async fn finish(manager: &TaskManager, name: &str, options: TaskOptions) -> TaskId {
    let id = manager
        .enqueue(name, json!({}), options)
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    id
}

pub async fn retention_deletes_expired_terminal_tasks_only(db: &TestDb) {
    let (manager, clock) = manual_manager(db, quiet(db)).await;
    manager
        .register("ok", |_t: TaskHandle| async move {
            Ok::<Outcome, HandlerError>(json!(1).into())
        })
        .expect("register");
    manager
        .register("fails", |_t: TaskHandle| async move {
            Err::<Outcome, HandlerError>("no".into())
        })
        .expect("register");
    manager
        .register("waits", |t: TaskHandle| async move {
            Ok::<Outcome, HandlerError>(t.suspend("human").into())
        })
        .expect("register");
    let completed = finish(&manager, "ok", TaskOptions::default()).await;
    let failed = finish(&manager, "fails", TaskOptions::default().max_retries(1)).await;
    let suspended = finish(&manager, "waits", TaskOptions::default()).await;
    wait_status(&manager, completed, TaskStatus::Completed).await;
    wait_status(&manager, failed, TaskStatus::PermanentlyFailed).await;
    wait_status(&manager, suspended, TaskStatus::Suspended).await;
    manager.pause();
    // Due only after the clock moves past every instant this test uses: `pause()` does not wait
    // for a claim round already under way, which (seen under load on MariaDB) could still take
    // a task that was due at once.
    let not_due = TaskOptions::default().delay(Duration::from_secs(86_400));
    let pending = manager
        .enqueue("ok", json!({}), not_due.clone())
        .await
        .expect("enqueue");
    let paused = manager
        .enqueue("ok", json!({}), not_due)
        .await
        .expect("enqueue");
    manager.pause_task(paused).await.expect("pause");

    let policy = RetentionPolicy::new(
        Duration::from_secs(60),
        RetentionPolicy::DEFAULT_STATUSES.to_vec(),
    )
    .expect("policy");
    let nothing = manager
        .run_retention(Some(policy.clone()))
        .await
        .expect("retention");
    assert_eq!(nothing.tasks_deleted, 0, "nothing is older than 60 s yet");
    clock.advance(Duration::from_secs(3600));
    let report = manager
        .run_retention(Some(policy))
        .await
        .expect("retention");
    assert_eq!(report.tasks_deleted, 2);
    assert!(
        report.events_deleted >= 8 && report.attempts_deleted == 2,
        "{report:?}"
    );
    assert!(manager.get_task(completed).await.expect("get").is_none());
    assert!(manager.get_task(failed).await.expect("get").is_none());
    for id in [suspended, pending, paused] {
        assert!(
            manager.get_task(id).await.expect("get").is_some(),
            "task {id} is not eligible"
        );
    }
    let audit = manager
        .task_audit(completed, TaskAuditOptions::default())
        .await
        .expect("audit");
    assert!(audit.task.is_none() && audit.events.total == 0 && audit.attempts.total == 0);

    let with_paused = RetentionPolicy::new(
        Duration::from_secs(60),
        vec![TaskStatus::Completed, TaskStatus::Paused],
    )
    .expect("policy");
    assert_eq!(
        manager
            .run_retention(Some(with_paused))
            .await
            .expect("retention")
            .tasks_deleted,
        1
    );
    assert!(
        manager.get_task(paused).await.expect("get").is_none(),
        "paused is deleted when opted in"
    );
    let invalid = RetentionPolicy::new(Duration::from_secs(60), vec![TaskStatus::Running]);
    assert!(invalid.is_err_and(|error| error.to_string().contains("retention.statuses")));
    manager.stop().await.expect("stop");
}

pub async fn retention_drains_in_batches_and_keeps_unfinished_workflows(db: &TestDb) {
    let options = ManagerOptions {
        retention: Some(RetentionConfig {
            expire_time: Some(Duration::from_secs(60)),
            statuses: None,
        }),
        ..quiet(db)
    };
    let (manager, clock) = manual_manager(db, options).await;
    manager
        .register("ok", |_t: TaskHandle| async move {
            Ok::<Outcome, HandlerError>(json!(1).into())
        })
        .expect("register");
    let batch = (0..101)
        .map(|_| ("ok".to_owned(), json!({}), TaskOptions::default()))
        .collect();
    let ids = manager.enqueue_many(batch).await.expect("enqueue");
    for id in &ids {
        manager.cancel_task(*id, None).await.expect("cancel");
    }
    let gate = Arc::new(tokio::sync::Notify::new());
    let release = gate.clone();
    manager
        .register("slow_child", move |_t: TaskHandle| {
            let gate = release.clone();
            async move {
                gate.notified().await;
                Ok::<Outcome, HandlerError>(json!(1).into())
            }
        })
        .expect("register");
    manager
        .register("wf", |task: TaskHandle| async move {
            if task.stage() == 0 {
                return Ok::<Outcome, HandlerError>(
                    task.next(vec![
                        ChildSpec::new("ok", json!({})),
                        ChildSpec::new("slow_child", json!({})),
                    ])
                    .into(),
                );
            }
            Ok(json!("done").into())
        })
        .expect("register");
    let root = manager
        .enqueue("wf", json!({}), TaskOptions::default())
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let children = loop {
        let children = manager.child_tasks(root).await.expect("children");
        if children.iter().any(|c| c.status == TaskStatus::Completed) {
            break children;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    clock.advance(Duration::from_secs(3600));
    let report = manager.run_retention(None).await.expect("drain");
    assert_eq!(
        report.tasks_deleted, 101,
        "one manual call drains every batch"
    );
    for child in &children {
        assert!(
            manager.get_task(child.id).await.expect("get").is_some(),
            "a workflow is kept while a member is unfinished"
        );
    }
    gate.notify_one();
    wait_status(&manager, root, TaskStatus::Completed).await;
    clock.advance(Duration::from_secs(3600));
    let report = manager.run_retention(None).await.expect("retention");
    assert_eq!(
        report.tasks_deleted, 3,
        "the finished workflow goes as a unit"
    );
    assert_eq!(
        manager
            .workflow_audit(root, WorkflowAuditOptions::default())
            .await
            .expect("audit")
            .tasks
            .total,
        0
    );
    manager.stop().await.expect("stop");
}

pub async fn automatic_retention_runs_one_batch_per_due_tick(db: &TestDb) {
    let options = ManagerOptions {
        retention: Some(RetentionConfig {
            expire_time: Some(Duration::from_secs(60)),
            statuses: None,
        }),
        retention_interval: Duration::from_secs(300),
        ..quiet(db)
    };
    let (manager, clock) = manual_manager(db, options).await;
    manager
        .register("ok", |_t: TaskHandle| async move {
            Ok::<Outcome, HandlerError>(json!(1).into())
        })
        .expect("register");
    let batch = (0..150)
        .map(|_| ("ok".to_owned(), json!({}), TaskOptions::default()))
        .collect();
    for id in manager.enqueue_many(batch).await.expect("enqueue") {
        manager.cancel_task(id, None).await.expect("cancel");
    }
    clock.advance(Duration::from_secs(3600));
    let remaining = |manager: TaskManager| async move {
        manager
            .query_tasks(TaskQuery::default(), PageRequest::limit(1))
            .await
            .expect("count")
            .total
    };
    let startup = manager.run_maintenance().await.expect("startup tick");
    assert_eq!(
        startup.retention.tasks_deleted, 0,
        "the startup tick is skipped"
    );
    assert_eq!(remaining(manager.clone()).await, 150);
    clock.advance(Duration::from_secs(300));
    let due = manager.run_maintenance().await.expect("due tick");
    assert_eq!(
        due.retention.tasks_deleted, 100,
        "one bounded batch per automatic run"
    );
    let again = manager
        .run_maintenance()
        .await
        .expect("tick before the next due time");
    assert_eq!(again.retention.tasks_deleted, 0);
    clock.advance(Duration::from_secs(300));
    assert_eq!(
        manager
            .run_maintenance()
            .await
            .expect("next due tick")
            .retention
            .tasks_deleted,
        50
    );
    assert_eq!(remaining(manager.clone()).await, 0);
    manager.stop().await.expect("stop");
}
