//! Store-level tests of every `TaskStore` method, run on each backend (see the harness in src/lib.rs).

use std::time::Duration;

use fib_flow_domain::progress::{Progress, RecordContext, progress_record};
use fib_flow_domain::query::{
    AttemptQuery, DeleteFilter, EventQuery, Order, PageRequest, TaskQuery,
};
use fib_flow_domain::{
    AttemptOutcome, ChildFailurePolicy, Command, EventType, ExpiryKind, TaskId, TaskStatus,
    TaskType,
};
use fib_flow_ports::{
    BatchCommand, ClaimName, ClaimRequest, PortError, RetentionRun, SpawnRequest,
};
use fib_flow_store_test::{Backend, Ctx, at, child, new_task, raw_exec, raw_ids, store_test, t0};
use serde_json::{Value, json};

fn names(list: &[&str]) -> Vec<ClaimName> {
    list.iter()
        .map(|name| ClaimName {
            name: (*name).to_owned(),
            max: None,
            queue: "default".into(),
        })
        .collect()
}

fn claim_req(worker: &str, list: &[&str], limit: u32, now_ms: i64) -> ClaimRequest {
    ClaimRequest {
        worker_id: worker.to_owned(),
        now: at(now_ms),
        limit,
        names: names(list),
        queue_caps: Vec::new(),
        require_active_lease: false,
    }
}

fn batch(now_ms: i64, commands: Vec<(TaskId, Command)>) -> Vec<BatchCommand> {
    commands
        .into_iter()
        .map(|(task_id, command)| BatchCommand {
            task_id,
            command,
            at: at(now_ms),
        })
        .collect()
}

fn page(limit: u32) -> fib_flow_domain::query::PageBounds {
    PageRequest::limit(limit).bounds().expect("bounds")
}

async fn events_of(ctx: &Ctx, id: TaskId) -> Vec<fib_flow_domain::TaskEvent> {
    ctx.store
        .query_events(
            EventQuery {
                task_id: Some(id),
                ..EventQuery::default()
            },
            page(1000),
        )
        .await
        .expect("events")
        .items
}

async fn attempts_of(ctx: &Ctx, id: TaskId) -> Vec<fib_flow_domain::TaskAttempt> {
    ctx.store
        .query_attempts(
            AttemptQuery {
                task_id: Some(id),
                ..AttemptQuery::default()
            },
            page(1000),
        )
        .await
        .expect("attempts")
        .items
}

// ---- migrations, insert, get ---------------------------------------------------------------

async fn migrate_is_idempotent(ctx: Ctx) {
    ctx.store.migrate().await.expect("second migrate");
    ctx.store.migrate().await.expect("third migrate");
    assert!(["sqlite", "postgres", "mysql"].contains(&ctx.store.backend()));
}
store_test!(migrate_is_idempotent);

async fn insert_and_get_round_trip(ctx: Ctx) {
    let mut a = new_task("alpha");
    a.payload = json!({"n": 1, "s": "ü ✓", "nested": [1, 2, {"x": null}]});
    a.tag = Some("tag-a".into());
    a.priority = 7;
    a.timeout = None;
    a.retry_interval = Duration::from_millis(1500);
    a.retry_backoff = RetryBackoff::Exponential;
    let mut b = new_task("beta");
    b.task_type = TaskType::Cron;
    b.cron_expr = Some("*/5 * * * *".into());
    b.timezone = Some("Europe/Berlin".into());
    b.next_run_time = at(5_000);
    let ids = ctx
        .store
        .insert_tasks(vec![a.clone(), b])
        .await
        .expect("insert");
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1], "ids in input order");
    assert!(
        ctx.store
            .insert_tasks(vec![])
            .await
            .expect("empty")
            .is_empty()
    );

    let got = ctx
        .store
        .get_task(ids[0])
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.id, ids[0]);
    assert_eq!(got.name, "alpha");
    assert_eq!(got.task_type, TaskType::Async);
    assert_eq!(got.status, TaskStatus::Pending);
    assert_eq!(got.payload, a.payload);
    assert_eq!(got.priority, 7);
    assert_eq!(got.tag.as_deref(), Some("tag-a"));
    assert_eq!(got.created_at, t0());
    assert_eq!(got.next_run_time, t0());
    assert_eq!(got.timeout, None);
    assert_eq!(got.retry_interval, Duration::from_millis(1500));
    assert_eq!(got.retry_backoff, RetryBackoff::Exponential);
    assert_eq!(got.result, None);
    assert_eq!(got.attempt, 0);
    assert_eq!(got.stage, 0);
    assert_eq!(got.root_id, None);
    assert_eq!(got.last_event_type.as_deref(), Some("task_created"));
    assert_eq!(got.last_event_time, Some(t0()));
    assert_eq!(got.child_failure_policy, ChildFailurePolicy::Resume);

    let cron = ctx
        .store
        .get_task(ids[1])
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(cron.task_type, TaskType::Cron);
    assert_eq!(cron.payload, Value::Null);
    assert_eq!(cron.cron_expr.as_deref(), Some("*/5 * * * *"));
    assert_eq!(cron.timezone.as_deref(), Some("Europe/Berlin"));
    assert_eq!(cron.timeout, Some(Duration::from_secs(60)));

    assert!(
        ctx.store
            .get_task(TaskId(999_999))
            .await
            .expect("get")
            .is_none()
    );

    let events = events_of(&ctx, ids[0]).await;
    assert_eq!(events.len(), 1);
    let created = &events[0];
    assert_eq!(created.event_type, "task_created");
    assert_eq!(created.root_id, ids[0]);
    assert_eq!(created.from_status, None);
    assert_eq!(created.to_status, Some(TaskStatus::Pending));
    assert_eq!(created.stage, Some(0));
    assert_eq!(created.message.as_deref(), Some("Task alpha created"));
    assert_eq!(
        created.metadata,
        json!({"name": "alpha", "type": "async", "tag": "tag-a"})
    );
}
store_test!(insert_and_get_round_trip);

use fib_flow_domain::RetryBackoff;

// ---- claim ---------------------------------------------------------------------------------

async fn claim_opens_attempt_and_writes_events(ctx: Ctx) {
    let ids = ctx
        .store
        .insert_tasks(vec![new_task("job")])
        .await
        .expect("insert");
    let claimed = ctx
        .store
        .claim(claim_req("w1", &["job"], 5, 10))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let task = &claimed[0];
    assert_eq!(task.id, ids[0]);
    assert_eq!(task.status, TaskStatus::Running);
    assert_eq!(task.attempt, 1);
    assert_eq!(task.worker_id.as_deref(), Some("w1"));
    assert_eq!(task.start_time, Some(at(10)));
    assert_eq!(task.deadline, Some(at(60_010)));
    assert_eq!(
        ctx.store.get_task(ids[0]).await.expect("get").as_ref(),
        Some(task)
    );

    let attempts = attempts_of(&ctx, ids[0]).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].attempt, 1);
    assert_eq!(attempts[0].worker_id.as_deref(), Some("w1"));
    assert_eq!(attempts[0].started_at, at(10));
    assert_eq!(attempts[0].ended_at, None);
    assert_eq!(attempts[0].outcome, None);

    let types: Vec<String> = events_of(&ctx, ids[0])
        .await
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(types, ["task_created", "task_claimed", "task_started"]);

    // Nothing left to claim.
    assert!(
        ctx.store
            .claim(claim_req("w2", &["job"], 5, 20))
            .await
            .expect("claim")
            .is_empty()
    );
}
store_test!(claim_opens_attempt_and_writes_events);

async fn claim_order_due_names_and_caps(ctx: Ctx) {
    let mut low = new_task("a");
    low.priority = 1;
    let mut high = new_task("a");
    high.priority = 9;
    let mut later = new_task("a");
    later.priority = 9;
    later.next_run_time = at(1);
    let mut future = new_task("a");
    future.priority = 100;
    future.next_run_time = at(1_000_000);
    let other = new_task("b");
    let unknown = new_task("zzz");
    let ids = ctx
        .store
        .insert_tasks(vec![low, high, later, future, other, unknown])
        .await
        .expect("insert");

    assert!(
        ctx.store
            .claim(claim_req("w", &[], 5, 10))
            .await
            .expect("claim")
            .is_empty()
    );
    assert!(
        ctx.store
            .claim(claim_req("w", &["a"], 0, 10))
            .await
            .expect("claim")
            .is_empty()
    );

    // Cap `a` at 2: the two priority-9 ones, then `b` (priority 0 > nothing else).
    let request = ClaimRequest {
        worker_id: "w".into(),
        now: at(10),
        limit: 10,
        names: vec![
            ClaimName {
                name: "a".into(),
                max: Some(2),
                queue: "default".into(),
            },
            ClaimName {
                name: "b".into(),
                max: None,
                queue: "default".into(),
            },
        ],
        queue_caps: Vec::new(),
        require_active_lease: false,
    };
    let claimed: Vec<TaskId> = ctx
        .store
        .claim(request)
        .await
        .expect("claim")
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(claimed, vec![ids[1], ids[2], ids[4]]);

    // The low-priority one is next; the future one and the unknown name never.
    let claimed: Vec<TaskId> = ctx
        .store
        .claim(claim_req("w", &["a", "b"], 10, 10))
        .await
        .expect("claim")
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(claimed, vec![ids[0]]);
}
store_test!(claim_order_due_names_and_caps);

async fn concurrent_claims_never_double_claim(ctx: Ctx) {
    let tasks: Vec<_> = (0..40).map(|_| new_task("race")).collect();
    ctx.store.insert_tasks(tasks).await.expect("insert");
    let second = if ctx.backend == Backend::SqliteMemory {
        ctx.store.clone()
    } else {
        ctx.second_store().await
    };
    let mut handles = Vec::new();
    for worker in 0..4 {
        let store = if worker % 2 == 0 {
            ctx.store.clone()
        } else {
            second.clone()
        };
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store
                    .claim(claim_req(&format!("w{worker}"), &["race"], 3, 10))
                    .await
                    .expect("claim");
                if got.is_empty() {
                    break;
                }
                mine.extend(got.into_iter().map(|t| t.id));
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.expect("join"));
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "a task was claimed twice");
    assert_eq!(all.len(), 40);
    if ctx.backend != Backend::SqliteMemory {
        second.close().await;
    }
}
store_test!(concurrent_claims_never_double_claim);

// ---- apply ---------------------------------------------------------------------------------

async fn complete_stores_result_faithfully(ctx: Ctx) {
    for (i, result) in [
        json!(null),
        json!(0),
        json!(false),
        json!(""),
        json!({"k": [1]}),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("r{i}");
        let ids = ctx
            .store
            .insert_tasks(vec![new_task(&name)])
            .await
            .expect("insert");
        ctx.store
            .claim(claim_req("w", &[&name], 1, 10))
            .await
            .expect("claim");
        let done = ctx
            .store
            .apply(
                ids[0],
                Command::Complete {
                    attempt: 1,
                    result: result.clone(),
                },
                at(20),
            )
            .await
            .expect("complete");
        assert_eq!(done.status, TaskStatus::Completed);
        assert_eq!(done.result, Some(result.clone()));
        let read = ctx
            .store
            .get_task(ids[0])
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(read, done);
        let attempts = attempts_of(&ctx, ids[0]).await;
        assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Completed));
        assert_eq!(attempts[0].ended_at, Some(at(20)));
    }
}
store_test!(complete_stores_result_faithfully);

async fn apply_errors_are_typed(ctx: Ctx) {
    let ids = ctx
        .store
        .insert_tasks(vec![new_task("e")])
        .await
        .expect("insert");
    let missing = ctx
        .store
        .apply(TaskId(424_242), Command::Pause, at(1))
        .await;
    assert!(
        matches!(missing, Err(PortError::NotFound(TaskId(424_242)))),
        "{missing:?}"
    );

    // A fenced command while pending: stale.
    let stale = ctx
        .store
        .apply(
            ids[0],
            Command::Complete {
                attempt: 1,
                result: json!(1),
            },
            at(1),
        )
        .await;
    assert!(
        matches!(stale, Err(PortError::Stale { attempt: 1, .. })),
        "{stale:?}"
    );

    ctx.store
        .claim(claim_req("w", &["e"], 1, 10))
        .await
        .expect("claim");
    let wrong = ctx
        .store
        .apply(
            ids[0],
            Command::Complete {
                attempt: 7,
                result: json!(1),
            },
            at(11),
        )
        .await;
    assert!(
        matches!(wrong, Err(PortError::Stale { attempt: 7, .. })),
        "{wrong:?}"
    );

    ctx.store
        .apply(
            ids[0],
            Command::Complete {
                attempt: 1,
                result: json!(1),
            },
            at(12),
        )
        .await
        .expect("complete");
    let illegal = ctx.store.apply(ids[0], Command::Pause, at(13)).await;
    assert!(
        matches!(illegal, Err(PortError::Rejected(_))),
        "{illegal:?}"
    );
    // Nothing was written by the failures.
    let types: Vec<String> = events_of(&ctx, ids[0])
        .await
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(types.last().map(String::as_str), Some("task_completed"));
}
store_test!(apply_errors_are_typed);

async fn fail_schedules_retry_then_permanently_fails(ctx: Ctx) {
    let mut task = new_task("flaky");
    task.max_retries = 2;
    task.retry_interval = Duration::from_secs(5);
    let ids = ctx.store.insert_tasks(vec![task]).await.expect("insert");
    ctx.store
        .claim(claim_req("w", &["flaky"], 1, 10))
        .await
        .expect("claim");
    let failed = ctx
        .store
        .apply(
            ids[0],
            Command::Fail {
                attempt: 1,
                error: "boom".into(),
                timed_out: false,
                jitter: 0.0,
            },
            at(100),
        )
        .await
        .expect("fail");
    assert_eq!(failed.status, TaskStatus::Pending);
    assert_eq!(failed.retry_count, 1);
    assert_eq!(failed.next_run_time, at(5_100));
    assert_eq!(failed.error.as_deref(), Some("boom"));
    assert_eq!(failed.result, None);
    // Not due yet.
    assert!(
        ctx.store
            .claim(claim_req("w", &["flaky"], 1, 200))
            .await
            .expect("claim")
            .is_empty()
    );
    let again = ctx
        .store
        .claim(claim_req("w", &["flaky"], 1, 5_100))
        .await
        .expect("claim");
    assert_eq!(again[0].attempt, 2);
    let dead = ctx
        .store
        .apply(
            ids[0],
            Command::Fail {
                attempt: 2,
                error: "boom2".into(),
                timed_out: false,
                jitter: 0.0,
            },
            at(5_200),
        )
        .await
        .expect("fail");
    assert_eq!(dead.status, TaskStatus::PermanentlyFailed);
    let attempts = attempts_of(&ctx, ids[0]).await;
    assert_eq!(attempts.len(), 2);
    assert!(
        attempts
            .iter()
            .all(|a| a.outcome == Some(AttemptOutcome::Failed))
    );
    assert_eq!(attempts[1].error.as_deref(), Some("boom2"));
    let types: Vec<String> = events_of(&ctx, ids[0])
        .await
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert!(
        types.contains(&"task_retry_scheduled".to_owned()),
        "{types:?}"
    );
    assert!(
        types.contains(&"task_retry_started".to_owned()),
        "{types:?}"
    );
    assert_eq!(
        types.last().map(String::as_str),
        Some("task_permanently_failed")
    );
}
store_test!(fail_schedules_retry_then_permanently_fails);

// ---- workflows -----------------------------------------------------------------------------

async fn spawn(
    ctx: &Ctx,
    parent: TaskId,
    attempt: i32,
    names: &[&str],
    policy: ChildFailurePolicy,
    now: i64,
) -> Vec<TaskId> {
    let parent_task = ctx
        .store
        .get_task(parent)
        .await
        .expect("get")
        .expect("parent");
    let root = parent_task.workflow_root();
    let children = names
        .iter()
        .map(|name| child(name, parent, root, attempt))
        .collect();
    ctx.store
        .spawn_children(SpawnRequest {
            parent_id: parent,
            attempt,
            children,
            context: Some(vec![1, 2, 3]),
            policy,
            now: at(now),
        })
        .await
        .expect("spawn")
}

async fn children_settle_into_parent(ctx: Ctx) {
    let ids = ctx
        .store
        .insert_tasks(vec![new_task("parent")])
        .await
        .expect("insert");
    let parent = ids[0];
    ctx.store
        .claim(claim_req("w", &["parent"], 1, 10))
        .await
        .expect("claim");
    let kids = spawn(
        &ctx,
        parent,
        1,
        &["kid", "kid"],
        ChildFailurePolicy::Resume,
        20,
    )
    .await;
    assert_eq!(kids.len(), 2);
    let p = ctx
        .store
        .get_task(parent)
        .await
        .expect("get")
        .expect("parent");
    assert_eq!(p.status, TaskStatus::Suspended);
    assert_eq!(p.suspend_reason.as_deref(), Some("awaiting_subtasks"));
    assert_eq!(p.total_children, 2);
    assert_eq!(p.context, Some(vec![1, 2, 3]));
    assert_eq!(
        ctx.store
            .outstanding_children(parent, 1)
            .await
            .expect("outstanding"),
        2
    );
    let kid = ctx
        .store
        .get_task(kids[0])
        .await
        .expect("get")
        .expect("kid");
    assert_eq!(kid.root_id, Some(parent));
    assert_eq!(kid.parent_id, Some(parent));
    assert_eq!(kid.parent_round, Some(1));
    let created = events_of(&ctx, kids[0]).await;
    assert_eq!(created[0].root_id, parent);
    assert_eq!(created[0].parent_id, Some(parent));

    // A resume by hand is refused while children are outstanding.
    let refused = ctx
        .store
        .apply(
            parent,
            Command::Resume {
                reason: None,
                outstanding_children: 2,
            },
            at(21),
        )
        .await;
    assert!(
        matches!(refused, Err(PortError::Rejected(_))),
        "{refused:?}"
    );

    let claimed = ctx
        .store
        .claim(claim_req("w", &["kid"], 5, 30))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 2);
    ctx.store
        .apply(
            kids[0],
            Command::Complete {
                attempt: 1,
                result: json!("one"),
            },
            at(40),
        )
        .await
        .expect("complete kid 0");
    let p = ctx
        .store
        .get_task(parent)
        .await
        .expect("get")
        .expect("parent");
    assert_eq!(p.status, TaskStatus::Suspended);
    assert_eq!(p.completed_children, 1);
    assert_eq!(
        ctx.store
            .outstanding_children(parent, 1)
            .await
            .expect("outstanding"),
        1
    );

    ctx.store
        .apply(
            kids[1],
            Command::Cancel {
                reason: Some("nope".into()),
            },
            at(50),
        )
        .await
        .expect("cancel kid 1");
    let p = ctx
        .store
        .get_task(parent)
        .await
        .expect("get")
        .expect("parent");
    assert_eq!(
        p.status,
        TaskStatus::Pending,
        "parent resumes once the round settles"
    );
    assert_eq!(p.stage, 1);
    assert_eq!(p.completed_children, 2);
    assert_eq!(p.suspend_reason, None);

    let results = ctx
        .store
        .child_results(parent, 1)
        .await
        .expect("child results");
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].task_id, kids[0]);
    assert_eq!(results[0].status, TaskStatus::Completed);
    assert_eq!(results[0].result, Some(json!("one")));
    assert_eq!(results[1].status, TaskStatus::PermanentlyFailed);
    assert_eq!(results[1].error.as_deref(), Some("nope"));
    assert_eq!(results[1].result, None);
    assert!(
        ctx.store
            .child_results(parent, 2)
            .await
            .expect("round 1")
            .is_empty()
    );

    // A spawn fenced by a stale attempt rolls back entirely (no orphan children).
    let before = ctx
        .store
        .list_tasks(TaskQuery::default())
        .await
        .expect("list")
        .len();
    let stale = ctx
        .store
        .spawn_children(SpawnRequest {
            parent_id: parent,
            attempt: 1,
            children: vec![child("late", parent, parent, 1)],
            context: None,
            policy: ChildFailurePolicy::Resume,
            now: at(60),
        })
        .await;
    assert!(matches!(stale, Err(PortError::Stale { .. })), "{stale:?}");
    let after = ctx
        .store
        .list_tasks(TaskQuery::default())
        .await
        .expect("list")
        .len();
    assert_eq!(before, after);
}
store_test!(children_settle_into_parent);

async fn fail_parent_policy_propagates_to_grandparent(ctx: Ctx) {
    let ids = ctx
        .store
        .insert_tasks(vec![new_task("gp")])
        .await
        .expect("insert");
    let gp = ids[0];
    ctx.store
        .claim(claim_req("w", &["gp"], 1, 10))
        .await
        .expect("claim");
    let parents = spawn(&ctx, gp, 1, &["p"], ChildFailurePolicy::FailParent, 20).await;
    ctx.store
        .claim(claim_req("w", &["p"], 1, 30))
        .await
        .expect("claim");
    let kids = spawn(
        &ctx,
        parents[0],
        1,
        &["k"],
        ChildFailurePolicy::FailParent,
        40,
    )
    .await;
    let k = ctx
        .store
        .get_task(kids[0])
        .await
        .expect("get")
        .expect("kid");
    assert_eq!(
        k.root_id,
        Some(gp),
        "grandchildren belong to the root's workflow"
    );
    ctx.store
        .apply(kids[0], Command::Cancel { reason: None }, at(50))
        .await
        .expect("cancel");
    let p = ctx
        .store
        .get_task(parents[0])
        .await
        .expect("get")
        .expect("p");
    assert_eq!(p.status, TaskStatus::PermanentlyFailed);
    let g = ctx.store.get_task(gp).await.expect("get").expect("gp");
    assert_eq!(g.status, TaskStatus::PermanentlyFailed);
    assert_eq!(g.completed_children, 1);
}
store_test!(fail_parent_policy_propagates_to_grandparent);

async fn missing_parent_is_not_an_error(ctx: Ctx) {
    let ids = ctx
        .store
        .insert_tasks(vec![new_task("solo")])
        .await
        .expect("insert");
    let orphan = ctx
        .store
        .insert_tasks(vec![child("orphan", TaskId(777_777), TaskId(777_777), 0)])
        .await
        .expect("insert orphan");
    let _ = ids;
    ctx.store
        .claim(claim_req("w", &["orphan"], 1, 10))
        .await
        .expect("claim");
    let done = ctx
        .store
        .apply(
            orphan[0],
            Command::Complete {
                attempt: 1,
                result: json!(1),
            },
            at(20),
        )
        .await
        .expect("a child of a missing parent still completes");
    assert_eq!(done.status, TaskStatus::Completed);
}
store_test!(missing_parent_is_not_an_error);

// ---- heartbeat, record, expiry -------------------------------------------------------------

async fn heartbeat_record_and_expiry(ctx: Ctx) {
    let mut short = new_task("hb");
    short.timeout = Some(Duration::from_millis(100));
    let ids = ctx
        .store
        .insert_tasks(vec![short, new_task("hb")])
        .await
        .expect("insert");
    ctx.store
        .claim(claim_req("w1", &["hb"], 5, 10))
        .await
        .expect("claim");

    // Wrong worker / attempt refresh nothing.
    assert_eq!(
        ctx.store
            .heartbeat("other".into(), vec![(ids[0], 1)], at(50))
            .await
            .expect("hb"),
        0
    );
    assert_eq!(
        ctx.store
            .heartbeat("w1".into(), vec![(ids[0], 2)], at(50))
            .await
            .expect("hb"),
        0
    );
    assert_eq!(
        ctx.store
            .heartbeat("w1".into(), vec![], at(50))
            .await
            .expect("hb"),
        0
    );
    assert_eq!(
        ctx.store
            .heartbeat("w1".into(), vec![(ids[0], 1), (ids[1], 1)], at(50))
            .await
            .expect("hb"),
        2
    );
    let t = ctx
        .store
        .get_task(ids[1])
        .await
        .expect("get")
        .expect("task");
    assert_eq!(t.last_active_time, Some(at(50)));

    let record_ctx = RecordContext {
        task_id: ids[1],
        root_id: ids[1],
        parent_id: None,
        stage: 0,
        worker_id: "w1".into(),
        attempt: 1,
    };
    let record = progress_record(
        &record_ctx,
        Progress::text("halfway")
            .stage_name("load")
            .with_percent(50.0),
        at(60),
    )
    .expect("valid");
    let event_id = ctx.store.record(record).await.expect("record");
    assert!(event_id > 0);
    let t = ctx
        .store
        .get_task(ids[1])
        .await
        .expect("get")
        .expect("task");
    assert_eq!(t.progress_text.as_deref(), Some("halfway"));
    assert_eq!(t.current_stage_name.as_deref(), Some("load"));
    assert_eq!(t.progress_percent, Some(50.0));
    assert_eq!(t.last_active_time, Some(at(60)));
    assert_eq!(t.last_event_type.as_deref(), Some("task_progress"));
    // A text-only update keeps the other snapshot fields.
    let record = progress_record(&record_ctx, Progress::text("more"), at(61)).expect("valid");
    ctx.store.record(record).await.expect("record");
    let t = ctx
        .store
        .get_task(ids[1])
        .await
        .expect("get")
        .expect("task");
    assert_eq!(t.progress_text.as_deref(), Some("more"));
    assert_eq!(t.current_stage_name.as_deref(), Some("load"));
    let events = events_of(&ctx, ids[1]).await;
    let progress = events.iter().find(|e| e.id == event_id).expect("event");
    assert_eq!(progress.event_type, "task_progress");
    assert_eq!(progress.attempt, Some(1));

    let stale_ctx = RecordContext {
        attempt: 9,
        ..record_ctx
    };
    let stale = progress_record(&stale_ctx, Progress::text("x"), at(62)).expect("valid");
    assert!(matches!(
        ctx.store.record(stale).await,
        Err(PortError::Stale { attempt: 9, .. })
    ));

    // ids[0]: deadline at 10 + 100 = 110. ids[1]: last active 61.
    let none = ctx
        .store
        .expired_attempts(at(100), at(0), 10)
        .await
        .expect("expired");
    assert!(none.is_empty(), "{none:?}");
    let deadline = ctx
        .store
        .expired_attempts(at(111), at(0), 10)
        .await
        .expect("expired");
    assert_eq!(deadline.len(), 1);
    assert_eq!(deadline[0].task_id, ids[0]);
    assert_eq!(deadline[0].attempt, 1);
    assert_eq!(deadline[0].kind, ExpiryKind::Deadline);
    let both = ctx
        .store
        .expired_attempts(at(111), at(70), 10)
        .await
        .expect("expired");
    assert_eq!(both.len(), 2);
    assert_eq!(both[1].kind, ExpiryKind::Heartbeat);
    assert_eq!(
        ctx.store
            .expired_attempts(at(111), at(70), 1)
            .await
            .expect("expired")
            .len(),
        1
    );
    assert!(
        ctx.store
            .expired_attempts(at(111), at(70), 0)
            .await
            .expect("expired")
            .is_empty()
    );

    let expired = ctx
        .store
        .apply(
            ids[0],
            Command::Expire {
                attempt: 1,
                kind: ExpiryKind::Deadline,
                jitter: 0.0,
            },
            at(111),
        )
        .await
        .expect("expire");
    assert_eq!(expired.status, TaskStatus::Pending);
    let attempts = attempts_of(&ctx, ids[0]).await;
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Timeout));
    assert!(attempts[0].timeout_flag);
}
store_test!(heartbeat_record_and_expiry);

// ---- queries -------------------------------------------------------------------------------

async fn task_queries_filters_pages_and_stats(ctx: Ctx) {
    let mut tasks = Vec::new();
    for i in 0..5 {
        let mut t = new_task(if i % 2 == 0 { "even" } else { "odd" });
        t.tag = (i < 3).then(|| "front".to_owned());
        t.created_at = at(i * 10);
        tasks.push(t);
    }
    let ids = ctx.store.insert_tasks(tasks).await.expect("insert");
    let kids = ctx
        .store
        .insert_tasks(vec![child("kid", ids[0], ids[0], 0)])
        .await
        .expect("insert kid");

    let all = ctx
        .store
        .list_tasks(TaskQuery::default())
        .await
        .expect("list");
    assert_eq!(all.len(), 6);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));

    let even = ctx
        .store
        .list_tasks(TaskQuery {
            name: Some("even".into()),
            ..TaskQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(
        even.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[0], ids[2], ids[4]]
    );
    let front_odd = ctx
        .store
        .list_tasks(TaskQuery {
            name: Some("odd".into()),
            tag: Some("front".into()),
            status: Some(TaskStatus::Pending),
            task_type: Some(TaskType::Async),
            ..TaskQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(front_odd.len(), 1);
    assert_eq!(front_odd[0].id, ids[1]);

    let workflow = ctx
        .store
        .list_tasks(TaskQuery {
            workflow_root_id: Some(ids[0]),
            ..TaskQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(
        workflow.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[0], kids[0]]
    );
    let by_root = ctx
        .store
        .list_tasks(TaskQuery {
            root_id: Some(ids[0]),
            ..TaskQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(by_root.len(), 1);
    let by_parent = ctx
        .store
        .list_tasks(TaskQuery {
            parent_id: Some(ids[0]),
            ..TaskQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(by_parent.len(), 1);

    let first = ctx
        .store
        .query_tasks(
            TaskQuery::default(),
            PageRequest::limit(2).bounds().expect("b"),
        )
        .await
        .expect("page");
    assert_eq!(first.total, 6);
    assert!(first.has_more);
    assert_eq!(
        first.items.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[0], kids[0]]
    );
    let last = ctx
        .store
        .query_tasks(
            TaskQuery::default(),
            PageRequest::limit(2).offset(5).bounds().expect("b"),
        )
        .await
        .expect("page");
    assert_eq!(last.items.len(), 1);
    assert!(!last.has_more);
    let desc = ctx
        .store
        .query_tasks(
            TaskQuery::default(),
            PageRequest::limit(1)
                .order(Order::Desc)
                .bounds()
                .expect("b"),
        )
        .await
        .expect("page");
    assert_eq!(desc.items[0].id, ids[4]);

    // Suspend one explicitly; query by reason.
    ctx.store
        .claim(claim_req("w9", &["odd"], 1, 100))
        .await
        .expect("claim");
    ctx.store
        .apply(
            ids[1],
            Command::Suspend {
                attempt: 1,
                reason: "needs_review".into(),
                metadata: Some(json!({"by": "me"})),
                context: None,
            },
            at(110),
        )
        .await
        .expect("suspend");
    let suspended = ctx
        .store
        .list_tasks(TaskQuery {
            suspend_reason: Some("needs_review".into()),
            ..TaskQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(suspended.len(), 1);
    assert_eq!(suspended[0].suspend_metadata, Some(json!({"by": "me"})));
    let by_worker = ctx
        .store
        .list_tasks(TaskQuery {
            worker_id: Some("w9".into()),
            ..TaskQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(by_worker.len(), 1);

    let stats = ctx.store.task_stats(None, None).await.expect("stats");
    let flat: Vec<(Option<&str>, &str, TaskStatus, u64)> = stats
        .iter()
        .map(|s| (s.tag.as_deref(), s.name.as_str(), s.status, s.count))
        .collect();
    assert!(
        flat.contains(&(Some("front"), "even", TaskStatus::Pending, 2)),
        "{flat:?}"
    );
    assert!(
        flat.contains(&(Some("front"), "odd", TaskStatus::Suspended, 1)),
        "{flat:?}"
    );
    assert!(
        flat.contains(&(None, "odd", TaskStatus::Pending, 1)),
        "{flat:?}"
    );
    assert!(
        flat.contains(&(None, "kid", TaskStatus::Pending, 1)),
        "{flat:?}"
    );
    assert_eq!(stats.iter().map(|s| s.count).sum::<u64>(), 6);
    let front = ctx
        .store
        .task_stats(Some("front".into()), Some(TaskStatus::Pending))
        .await
        .expect("stats");
    assert_eq!(front.len(), 1);
    assert_eq!((front[0].name.as_str(), front[0].count), ("even", 2));
}
store_test!(task_queries_filters_pages_and_stats);

async fn delete_tasks_with_audit_rows(ctx: Ctx) {
    let mut tagged = new_task("d");
    tagged.tag = Some("gone".into());
    let ids = ctx
        .store
        .insert_tasks(vec![tagged, new_task("keep")])
        .await
        .expect("insert");
    ctx.store
        .claim(claim_req("w", &["d"], 1, 10))
        .await
        .expect("claim");

    let empty = ctx.store.delete_tasks(DeleteFilter::default()).await;
    assert!(matches!(empty, Err(PortError::Rejected(_))), "{empty:?}");
    let none = ctx
        .store
        .delete_tasks(DeleteFilter {
            tag: Some("gone".into()),
            status: Some(TaskStatus::Pending),
            ..DeleteFilter::default()
        })
        .await
        .expect("delete");
    assert_eq!(none, 0);
    let one = ctx
        .store
        .delete_tasks(DeleteFilter {
            tag: Some("gone".into()),
            ..DeleteFilter::default()
        })
        .await
        .expect("delete");
    assert_eq!(one, 1);
    assert!(ctx.store.get_task(ids[0]).await.expect("get").is_none());
    assert!(events_of(&ctx, ids[0]).await.is_empty());
    assert!(attempts_of(&ctx, ids[0]).await.is_empty());
    assert!(ctx.store.get_task(ids[1]).await.expect("get").is_some());

    let by_id = ctx
        .store
        .insert_tasks(vec![new_task("x"), new_task("x")])
        .await
        .expect("insert");
    let wrong_name = ctx
        .store
        .delete_tasks(DeleteFilter {
            ids: vec![by_id[0]],
            name: Some("keep".into()),
            ..DeleteFilter::default()
        })
        .await
        .expect("delete");
    assert_eq!(wrong_name, 0, "ids narrow the other fields, not widen them");
    let picked = ctx
        .store
        .delete_tasks(DeleteFilter {
            ids: vec![by_id[0]],
            ..DeleteFilter::default()
        })
        .await
        .expect("delete by id");
    assert_eq!(picked, 1);
    assert!(ctx.store.get_task(by_id[0]).await.expect("get").is_none());
    assert!(events_of(&ctx, by_id[0]).await.is_empty());
    assert!(ctx.store.get_task(by_id[1]).await.expect("get").is_some());

    let all = ctx
        .store
        .delete_tasks(DeleteFilter {
            all: true,
            ..DeleteFilter::default()
        })
        .await
        .expect("delete all");
    assert_eq!(all, 2);
}
store_test!(delete_tasks_with_audit_rows);

async fn event_and_attempt_queries(ctx: Ctx) {
    let ids = ctx
        .store
        .insert_tasks(vec![new_task("root")])
        .await
        .expect("insert");
    let root = ids[0];
    ctx.store
        .claim(claim_req("wa", &["root"], 1, 10))
        .await
        .expect("claim");
    let kids = spawn(&ctx, root, 1, &["k"], ChildFailurePolicy::Resume, 20).await;
    ctx.store
        .claim(claim_req("wb", &["k"], 1, 30))
        .await
        .expect("claim");
    ctx.store
        .apply(
            kids[0],
            Command::Complete {
                attempt: 1,
                result: json!(1),
            },
            at(40),
        )
        .await
        .expect("complete");

    let workflow = ctx
        .store
        .query_events(
            EventQuery {
                root_id: Some(root),
                ..EventQuery::default()
            },
            page(1000),
        )
        .await
        .expect("events");
    assert!(workflow.items.iter().any(|e| e.task_id == kids[0]));
    assert!(
        workflow
            .items
            .windows(2)
            .all(|w| (w[0].event_time, w[0].id) <= (w[1].event_time, w[1].id))
    );
    assert_eq!(workflow.total as usize, workflow.items.len());

    let claimed = ctx
        .store
        .query_events(
            EventQuery {
                root_id: Some(root),
                event_type: Some(EventType::TaskClaimed),
                ..EventQuery::default()
            },
            page(1000),
        )
        .await
        .expect("events");
    assert_eq!(claimed.total, 2);
    let mixed = ctx
        .store
        .query_events(
            EventQuery {
                root_id: Some(root),
                event_types: vec![EventType::TaskClaimed, EventType::TaskCompleted],
                ..EventQuery::default()
            },
            page(1000),
        )
        .await
        .expect("events");
    assert_eq!(mixed.total, 3);
    let both = ctx
        .store
        .query_events(
            EventQuery {
                root_id: Some(root),
                event_type: Some(EventType::TaskClaimed),
                event_types: vec![EventType::TaskCompleted],
                ..EventQuery::default()
            },
            page(1000),
        )
        .await
        .expect("events");
    assert_eq!(both.total, 0, "event_type and event_types are AND-ed");
    let by_worker = ctx
        .store
        .query_events(
            EventQuery {
                worker_id: Some("wb".into()),
                attempt: Some(1),
                ..EventQuery::default()
            },
            page(1000),
        )
        .await
        .expect("events");
    assert!(by_worker.items.iter().all(|e| e.task_id == kids[0]));
    assert!(by_worker.total >= 3);
    let by_parent = ctx
        .store
        .query_events(
            EventQuery {
                parent_id: Some(root),
                ..EventQuery::default()
            },
            page(1000),
        )
        .await
        .expect("events");
    assert!(by_parent.items.iter().all(|e| e.task_id == kids[0]));
    let window = ctx
        .store
        .query_events(
            EventQuery {
                root_id: Some(root),
                started_after: Some(at(30)),
                started_before: Some(at(30)),
                stage: Some(0),
                ..EventQuery::default()
            },
            page(1000),
        )
        .await
        .expect("events");
    assert!(window.items.iter().all(|e| e.event_time == at(30)));
    assert_eq!(window.total, 2, "claimed + started of the kid");
    let paged = ctx
        .store
        .query_events(
            EventQuery {
                root_id: Some(root),
                ..EventQuery::default()
            },
            PageRequest::limit(2)
                .offset(1)
                .order(Order::Desc)
                .bounds()
                .expect("b"),
        )
        .await
        .expect("events");
    assert_eq!(paged.items.len(), 2);
    assert!(paged.has_more);

    let attempts = ctx
        .store
        .query_attempts(
            AttemptQuery {
                workflow_root_id: Some(root),
                ..AttemptQuery::default()
            },
            page(100),
        )
        .await
        .expect("attempts");
    assert_eq!(attempts.total, 2);
    assert_eq!(attempts.items[0].task_id, root);
    assert_eq!(attempts.items[0].outcome, Some(AttemptOutcome::Suspended));
    assert_eq!(attempts.items[1].task_id, kids[0]);
    let by_outcome = ctx
        .store
        .query_attempts(
            AttemptQuery {
                outcome: Some(AttemptOutcome::Completed),
                worker_id: Some("wb".into()),
                ..AttemptQuery::default()
            },
            page(100),
        )
        .await
        .expect("attempts");
    assert_eq!(by_outcome.total, 1);
    let ended = ctx
        .store
        .query_attempts(
            AttemptQuery {
                ended_after: Some(at(35)),
                ended_before: Some(at(45)),
                started_after: Some(at(25)),
                started_before: Some(at(35)),
                ..AttemptQuery::default()
            },
            page(100),
        )
        .await
        .expect("attempts");
    assert_eq!(ended.total, 1);

    // Re-claim the resumed root: its open attempt shows with open_only.
    ctx.store
        .claim(claim_req("wa", &["root"], 1, 50))
        .await
        .expect("claim");
    let open = ctx
        .store
        .query_attempts(
            AttemptQuery {
                workflow_root_id: Some(root),
                open_only: true,
                ..AttemptQuery::default()
            },
            page(100),
        )
        .await
        .expect("attempts");
    assert_eq!(open.total, 1);
    assert_eq!(open.items[0].attempt, 2);
}
store_test!(event_and_attempt_queries);

// ---- retention -----------------------------------------------------------------------------

async fn finish(ctx: &Ctx, name: &str, id: TaskId, now: i64) {
    let claimed = ctx
        .store
        .claim(claim_req("w", &[name], 1, now))
        .await
        .expect("claim");
    assert_eq!(
        claimed.first().map(|t| t.id),
        Some(id),
        "claimed the expected task"
    );
    ctx.store
        .apply(
            id,
            Command::Complete {
                attempt: claimed[0].attempt,
                result: json!(null),
            },
            at(now),
        )
        .await
        .expect("complete");
}

async fn purge_deletes_whole_eligible_workflows(ctx: Ctx) {
    // Workflow A: root + child, both completed at 100 → eligible.
    let a = ctx
        .store
        .insert_tasks(vec![new_task("ra")])
        .await
        .expect("insert")[0];
    ctx.store
        .claim(claim_req("w", &["ra"], 1, 10))
        .await
        .expect("claim");
    let a_kids = spawn(&ctx, a, 1, &["ka"], ChildFailurePolicy::Resume, 20).await;
    finish(&ctx, "ka", a_kids[0], 30).await;
    finish(&ctx, "ra", a, 100).await;
    // Workflow B: completed root, child still pending → not eligible.
    let b = ctx
        .store
        .insert_tasks(vec![new_task("rb")])
        .await
        .expect("insert")[0];
    let b_kid = ctx
        .store
        .insert_tasks(vec![child("kb", b, b, 0)])
        .await
        .expect("insert")[0];
    finish(&ctx, "rb", b, 100).await;
    // Standalone C: completed at 100, D: completed at 5000 (after the cutoff).
    let c = ctx
        .store
        .insert_tasks(vec![new_task("rc")])
        .await
        .expect("insert")[0];
    finish(&ctx, "rc", c, 110).await;
    let d = ctx
        .store
        .insert_tasks(vec![new_task("rd")])
        .await
        .expect("insert")[0];
    finish(&ctx, "rd", d, 5_000).await;
    // Orphan E: its root 888888 does not exist; completed at 120.
    let e = ctx
        .store
        .insert_tasks(vec![child("ke", TaskId(888_888), TaskId(888_888), 0)])
        .await
        .expect("insert")[0];
    finish(&ctx, "ke", e, 120).await;

    let run = |batch| RetentionRun {
        statuses: vec![TaskStatus::Completed, TaskStatus::PermanentlyFailed],
        cutoff: at(1_000),
        batch_size: batch,
    };
    // Batch of 1: workflow A has 2 tasks but a batch always takes at least one workflow.
    let first = ctx.store.purge_expired(run(1)).await.expect("purge");
    assert_eq!(first.tasks_deleted, 2);
    assert!(first.events_deleted > 0);
    assert_eq!(
        first.attempts_deleted, 3,
        "root ran twice (before and after its child), child once"
    );
    assert!(ctx.store.get_task(a).await.expect("get").is_none());
    assert!(ctx.store.get_task(a_kids[0]).await.expect("get").is_none());
    assert!(events_of(&ctx, a_kids[0]).await.is_empty());

    let rest = ctx.store.purge_expired(run(100)).await.expect("purge");
    assert_eq!(rest.tasks_deleted, 2, "C and the orphan E");
    assert!(ctx.store.get_task(c).await.expect("get").is_none());
    assert!(ctx.store.get_task(e).await.expect("get").is_none());
    assert!(
        ctx.store.get_task(b).await.expect("get").is_some(),
        "B has a live child"
    );
    assert!(ctx.store.get_task(b_kid).await.expect("get").is_some());
    assert!(
        ctx.store.get_task(d).await.expect("get").is_some(),
        "D is too recent"
    );
    let nothing = ctx.store.purge_expired(run(100)).await.expect("purge");
    assert_eq!(nothing, Default::default());
}
store_test!(purge_deletes_whole_eligible_workflows);

async fn wait_for_notification_pending_or_wakes(ctx: Ctx) {
    match ctx.backend {
        Backend::Postgres => {
            let store = ctx.store.clone();
            let waiter = tokio::spawn(async move { store.wait_for_notification().await });
            // Let the listener start, then make work due from another store.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let other = ctx.second_store().await;
            other
                .insert_tasks(vec![new_task("wake")])
                .await
                .expect("insert");
            tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("woken by NOTIFY")
                .expect("join");
            // A batch that leaves a task pending and due (a retry) notifies too.
            let claimed = other
                .claim(claim_req("w", &["wake"], 1, 10))
                .await
                .expect("claim");
            assert_eq!(claimed.len(), 1);
            // The listener is already connected; a wake-up that arrives before the waiter
            // polls is kept for it (`Notify` stores one permit), so no pause is needed here.
            let store = ctx.store.clone();
            let waiter = tokio::spawn(async move { store.wait_for_notification().await });
            let verdicts = other
                .apply_batch(batch(
                    20,
                    vec![(
                        claimed[0].id,
                        Command::Fail {
                            attempt: 1,
                            error: "again".into(),
                            timed_out: false,
                            jitter: 0.0,
                        },
                    )],
                ))
                .await
                .expect("batch");
            assert!(verdicts[0].is_ok(), "{verdicts:?}");
            tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("woken by the retry's NOTIFY")
                .expect("join");
            other.close().await;
        }
        _ => {
            let waited = tokio::time::timeout(
                Duration::from_millis(100),
                ctx.store.wait_for_notification(),
            )
            .await;
            assert!(waited.is_err(), "no notifications on {:?}", ctx.backend);
        }
    }
}
store_test!(wait_for_notification_pending_or_wakes);

// ---- schema constraints and malformed rows -------------------------------------------------

async fn constraints_and_malformed_rows(ctx: Ctx) {
    if ctx.backend == Backend::SqliteMemory {
        return; // needs a second connection to the same database
    }
    let ids = ctx
        .store
        .insert_tasks(vec![new_task("c")])
        .await
        .expect("insert");
    let id = ids[0].0;
    // CHECK constraints on every backend.
    for sql in [
        format!("UPDATE fib_flow_tasks SET status = 'bogus' WHERE id = {id}"),
        format!("UPDATE fib_flow_tasks SET type = 'weekly' WHERE id = {id}"),
        format!("UPDATE fib_flow_tasks SET retry_backoff = 'linear' WHERE id = {id}"),
        format!("UPDATE fib_flow_tasks SET child_failure_policy = 'ignore' WHERE id = {id}"),
        format!("UPDATE fib_flow_task_attempts SET outcome = 'meh' WHERE task_id = {id}"),
        "INSERT INTO fib_flow_workers (worker_id, pod_id, status, registered_at, last_seen_at, expires_at) VALUES ('w', 'p', 'zombie', 0, 0, 0)".to_owned(),
    ] {
        // The attempts update matches no row; plant one first so the CHECK is exercised.
        if sql.contains("fib_flow_task_attempts") {
            raw_exec(&ctx, &format!("INSERT INTO fib_flow_task_attempts (task_id, attempt, started_at) VALUES ({id}, 1, 0)"))
                .await
                .expect("plant attempt");
        }
        let outcome = raw_exec(&ctx, &sql).await;
        assert!(outcome.is_err(), "{:?} accepted: {sql}", ctx.backend);
    }
    // The unique (task_id, attempt) index.
    let duplicate = raw_exec(
        &ctx,
        &format!(
            "INSERT INTO fib_flow_task_attempts (task_id, attempt, started_at) VALUES ({id}, 1, 0)"
        ),
    )
    .await;
    assert!(duplicate.is_err(), "duplicate attempt accepted");
    // Defaults.
    raw_exec(&ctx, "INSERT INTO fib_flow_tasks (name, type, payload, created_at, next_run_time) VALUES ('defaults', 'async', 'null', 0, 0)")
        .await
        .expect("insert with defaults");
    let defaults = ctx
        .store
        .list_tasks(TaskQuery {
            name: Some("defaults".into()),
            ..TaskQuery::default()
        })
        .await
        .expect("list");
    let d = &defaults[0];
    assert_eq!(
        (d.status, d.priority, d.max_retries, d.attempt),
        (TaskStatus::Pending, 0, 3, 0)
    );
    assert_eq!(d.retry_backoff, RetryBackoff::Fixed);
    assert_eq!(d.child_failure_policy, ChildFailurePolicy::Resume);
    assert_eq!(d.timeout, None);

    // Event statuses are not constrained; a malformed one is a clear database error on read.
    raw_exec(
        &ctx,
        &format!("UPDATE fib_flow_task_events SET from_status = 'exploded' WHERE task_id = {id}"),
    )
    .await
    .expect("plant bad event");
    let read = ctx
        .store
        .query_events(
            EventQuery {
                task_id: Some(ids[0]),
                ..EventQuery::default()
            },
            page(10),
        )
        .await;
    match read {
        Err(PortError::Database { message, .. }) => {
            assert!(message.contains("exploded"), "{message}")
        }
        other => panic!("expected a database error, got {other:?}"),
    }
}
store_test!(constraints_and_malformed_rows);

/// JSON is stored in each backend's JSON type (`jsonb` on PostgreSQL), so a user's own SQL can
/// look inside payloads, results and event metadata, while every value reads back through the
/// store unchanged.
async fn stored_json_is_queryable_and_reads_back_unchanged(ctx: Ctx) {
    let mut deepest = json!("bottom");
    for _ in 0..fib_flow_domain::limits::MAX_JSON_DEPTH {
        deepest = json!([deepest]);
    }
    let payloads = [
        json!({"customer": "c1", "zeta": [1, 2.5, -3], "alpha": {"nested": true}, "": null}),
        json!({"customer": "c2", "text": "\"quoted\" \\ back\nslash \t ☃ 😀 \u{1}"}),
        json!({"customer": "c1", "big": u64::MAX, "small": i64::MIN, "float": 1.0, "tiny": 1.5e-7, "huge": 1e22}),
        json!([]),
        json!("customer"),
        deepest,
    ];
    let tasks = payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| fib_flow_domain::NewTask {
            payload: payload.clone(),
            ..new_task(&format!("json{i}"))
        })
        .collect();
    let ids = ctx.store.insert_tasks(tasks).await.expect("insert");
    for (id, payload) in ids.iter().zip(&payloads) {
        let task = ctx.store.get_task(*id).await.expect("get").expect("exists");
        assert_eq!(
            &task.payload, payload,
            "{:?}: payload of {id:?}",
            ctx.backend
        );
    }

    let result = json!({"invoice": {"total": 12.5, "lines": [{"sku": "a"}]}, "customer": "c1"});
    ctx.store
        .claim(claim_req("w", &["json0"], 1, 10))
        .await
        .expect("claim");
    let done = ctx
        .store
        .apply(
            ids[0],
            Command::Complete {
                attempt: 1,
                result: result.clone(),
            },
            at(20),
        )
        .await
        .expect("complete");
    assert_eq!(done.result, Some(result.clone()));
    let read = ctx
        .store
        .get_task(ids[0])
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(read.result, Some(result));

    // A string holding U+0000 cannot be jsonb; every backend refuses it alike.
    let refused = ctx
        .store
        .insert_tasks(vec![fib_flow_domain::NewTask {
            payload: json!({"customer": "nul\u{0}byte"}),
            ..new_task("nul")
        }])
        .await;
    assert!(
        matches!(refused, Err(PortError::Rejected(_))),
        "{:?}: {refused:?}",
        ctx.backend
    );

    if ctx.backend == Backend::SqliteMemory {
        return; // the SQL below needs a second connection to the same database
    }
    let (by_payload, by_result, by_event) = match ctx.backend {
        Backend::Postgres => (
            "SELECT id FROM fib_flow_tasks WHERE payload->>'customer' = 'c1' ORDER BY id",
            "SELECT id FROM fib_flow_tasks WHERE result @> '{\"invoice\": {\"lines\": [{\"sku\": \"a\"}]}}'",
            "SELECT task_id AS id FROM fib_flow_task_events \
             WHERE metadata->>'name' = 'json1' AND event_type = 'task_created'",
        ),
        Backend::Mysql => (
            "SELECT id FROM fib_flow_tasks \
             WHERE JSON_UNQUOTE(JSON_EXTRACT(payload, '$.customer')) = 'c1' ORDER BY id",
            "SELECT id FROM fib_flow_tasks WHERE JSON_EXTRACT(result, '$.invoice.lines[0].sku') = 'a'",
            "SELECT task_id AS id FROM fib_flow_task_events \
             WHERE JSON_VALUE(metadata, '$.name') = 'json1' AND event_type = 'task_created'",
        ),
        _ => (
            "SELECT id FROM fib_flow_tasks WHERE json_extract(payload, '$.customer') = 'c1' ORDER BY id",
            "SELECT id FROM fib_flow_tasks WHERE json_extract(result, '$.invoice.lines[0].sku') = 'a'",
            "SELECT task_id AS id FROM fib_flow_task_events \
             WHERE json_extract(metadata, '$.name') = 'json1' AND event_type = 'task_created'",
        ),
    };
    let by_customer = raw_ids(&ctx, by_payload).await.expect("query payload");
    assert_eq!(by_customer, vec![ids[0].0, ids[2].0], "{:?}", ctx.backend);
    let by_sku = raw_ids(&ctx, by_result).await.expect("query result");
    assert_eq!(by_sku, vec![ids[0].0], "{:?}", ctx.backend);
    let created = raw_ids(&ctx, by_event).await.expect("query event metadata");
    assert_eq!(created, vec![ids[1].0], "{:?}", ctx.backend);

    if ctx.backend == Backend::Postgres {
        // The index docs/audit.md suggests: containment queries can use it.
        raw_exec(
            &ctx,
            "CREATE INDEX idx_user_payload ON fib_flow_tasks USING GIN (payload jsonb_path_ops)",
        )
        .await
        .expect("a GIN index on the payload");
        let contained = raw_ids(
            &ctx,
            "SELECT id FROM fib_flow_tasks WHERE payload @> '{\"customer\": \"c2\"}'",
        )
        .await
        .expect("containment query");
        assert_eq!(contained, vec![ids[1].0]);
    }
}
store_test!(stored_json_is_queryable_and_reads_back_unchanged);

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_postgres_is_unavailable() {
    let config = fib_flow::storage::StoreConfig {
        url: "psql://postgres@127.0.0.1:1/nothing".into(),
        pool_size: 1,
        acquire_timeout: Duration::from_secs(2),
    };
    let error = fib_flow::storage::connect(config)
        .await
        .err()
        .expect("no server on port 1");
    assert!(error.is_transient(), "{error}");
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_mysql_is_unavailable() {
    let config = fib_flow::storage::StoreConfig {
        url: "mysql://root@127.0.0.1:1/nothing".into(),
        pool_size: 1,
        acquire_timeout: Duration::from_secs(2),
    };
    let error = fib_flow::storage::connect(config)
        .await
        .err()
        .expect("no server on port 1");
    assert!(error.is_transient(), "{error}");
}

#[tokio::test]
async fn create_database_refuses_sqlite() {
    let error = fib_flow::storage::create_database("sqlite::memory:", "x")
        .await
        .expect_err("refused");
    assert!(matches!(error, PortError::Config(_)), "{error}");
}

/// Migrations run on a blocking thread, so a current-thread runtime works too.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "current_thread")]
async fn migrate_on_current_thread_runtime_sqlite() {
    let store = fib_flow::storage::connect(fib_flow::storage::StoreConfig::new("sqlite::memory:"))
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    store.migrate().await.expect("again");
    let ids = store
        .insert_tasks(vec![new_task("ct")])
        .await
        .expect("insert");
    assert_eq!(ids.len(), 1);
    store.close().await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "current_thread")]
async fn migrate_on_current_thread_runtime_postgres() {
    fib_flow_store_test::run_current_thread(Backend::Postgres, "ct_pg").await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "current_thread")]
async fn migrate_on_current_thread_runtime_mysql() {
    fib_flow_store_test::run_current_thread(Backend::Mysql, "ct_my").await;
}

// ---- concurrent settlement -----------------------------------------------------------------

/// Twenty children completing at once, from several connections: the parent counts each
/// exactly once and resumes exactly once.
async fn concurrent_children_settle_exactly_once(ctx: Ctx) {
    let parent = ctx
        .store
        .insert_tasks(vec![new_task("fan")])
        .await
        .expect("insert")[0];
    ctx.store
        .claim(claim_req("w", &["fan"], 1, 10))
        .await
        .expect("claim");
    let names = vec!["leaf"; 20];
    let kids = spawn(&ctx, parent, 1, &names, ChildFailurePolicy::Resume, 20).await;
    let claimed = ctx
        .store
        .claim(claim_req("w", &["leaf"], 50, 30))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 20);
    let second = if ctx.backend == Backend::SqliteMemory {
        ctx.store.clone()
    } else {
        ctx.second_store().await
    };
    let mut handles = Vec::new();
    for (i, kid) in kids.iter().copied().enumerate() {
        let store = if i % 2 == 0 {
            ctx.store.clone()
        } else {
            second.clone()
        };
        handles.push(tokio::spawn(async move {
            // A transient fault (deadlock victim, busy) is retried, as the runtime would.
            for _ in 0..20 {
                match store
                    .apply(
                        kid,
                        Command::Complete {
                            attempt: 1,
                            result: json!(i),
                        },
                        at(40),
                    )
                    .await
                {
                    Ok(_) => return,
                    Err(error) if error.is_transient() => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Err(error) => panic!("complete {kid}: {error}"),
                }
            }
            panic!("complete {kid}: still failing after retries");
        }));
    }
    for handle in handles {
        handle.await.expect("join");
    }
    let p = ctx
        .store
        .get_task(parent)
        .await
        .expect("get")
        .expect("parent");
    assert_eq!(p.completed_children, 20);
    assert_eq!(p.status, TaskStatus::Pending);
    assert_eq!(p.stage, 1);
    let resumed = ctx
        .store
        .query_events(
            EventQuery {
                task_id: Some(parent),
                event_type: Some(EventType::TaskStatusChanged),
                ..EventQuery::default()
            },
            page(100),
        )
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.to_status == Some(TaskStatus::Pending))
        .count();
    assert_eq!(resumed, 1, "the parent resumed exactly once");
    assert_eq!(
        ctx.store
            .child_results(parent, 1)
            .await
            .expect("results")
            .len(),
        20
    );
    if ctx.backend != Backend::SqliteMemory {
        second.close().await;
    }
}
store_test!(concurrent_children_settle_exactly_once);

// ---- batched outcomes ----------------------------------------------------------------------

async fn apply_batch_gives_each_command_its_own_verdict(ctx: Ctx) {
    let ids = ctx
        .store
        .insert_tasks(vec![new_task("b"), new_task("b"), new_task("b")])
        .await
        .expect("insert");
    let claimed = ctx
        .store
        .claim(claim_req("w", &["b"], 3, 10))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 3);
    let complete = |attempt| Command::Complete {
        attempt,
        result: json!("ok"),
    };
    let verdicts = ctx
        .store
        .apply_batch(batch(
            20,
            vec![
                (ids[2], complete(1)),
                // A stale fence: attempt 7 never ran.
                (ids[0], complete(7)),
                (TaskId(999_999), complete(1)),
                (
                    ids[1],
                    Command::Fail {
                        attempt: 1,
                        error: "boom".into(),
                        timed_out: false,
                        jitter: 0.0,
                    },
                ),
            ],
        ))
        .await
        .expect("batch");
    assert_eq!(verdicts.len(), 4, "one verdict per command, in order");
    assert!(
        matches!(&verdicts[0], Ok(task) if task.id == ids[2] && task.status == TaskStatus::Completed)
    );
    assert!(
        matches!(verdicts[1], Err(PortError::Stale { task_id, attempt: 7 }) if task_id == ids[0]),
        "{:?}",
        verdicts[1]
    );
    assert!(matches!(
        verdicts[2],
        Err(PortError::NotFound(TaskId(999_999)))
    ));
    assert!(
        matches!(&verdicts[3], Ok(task) if task.status == TaskStatus::Pending && task.retry_count == 1)
    );
    // The stale neighbour changed nothing; the others were written with their audit rows.
    let untouched = ctx.store.get_task(ids[0]).await.expect("get").expect("row");
    assert_eq!(untouched.status, TaskStatus::Running);
    let done = ctx.store.get_task(ids[2]).await.expect("get").expect("row");
    assert_eq!(done.result, Some(json!("ok")));
    assert_eq!(
        attempts_of(&ctx, ids[2]).await[0].outcome,
        Some(AttemptOutcome::Completed)
    );
    assert_eq!(
        attempts_of(&ctx, ids[1]).await[0].outcome,
        Some(AttemptOutcome::Failed)
    );
    assert_eq!(attempts_of(&ctx, ids[0]).await[0].outcome, None);
    let types: Vec<String> = events_of(&ctx, ids[2])
        .await
        .into_iter()
        .map(|event| event.event_type)
        .collect();
    assert_eq!(
        types,
        [
            EventType::TaskCreated.as_str(),
            EventType::TaskClaimed.as_str(),
            EventType::TaskStarted.as_str(),
            EventType::TaskCompleted.as_str()
        ]
    );
    assert!(
        ctx.store
            .apply_batch(batch(30, Vec::new()))
            .await
            .expect("empty batch")
            .is_empty()
    );
}
store_test!(apply_batch_gives_each_command_its_own_verdict);

async fn apply_batch_settles_sibling_children_once_each(ctx: Ctx) {
    let ids = ctx
        .store
        .insert_tasks(vec![new_task("parent")])
        .await
        .expect("insert");
    let parent = ids[0];
    ctx.store
        .claim(claim_req("w", &["parent"], 1, 10))
        .await
        .expect("claim");
    let kids = spawn(
        &ctx,
        parent,
        1,
        &["kid", "kid", "kid"],
        ChildFailurePolicy::Resume,
        20,
    )
    .await;
    let claimed = ctx
        .store
        .claim(claim_req("w", &["kid"], 3, 30))
        .await
        .expect("claim kids");
    assert_eq!(claimed.len(), 3);
    // Every child settles in the same transaction, in reverse id order on purpose.
    let verdicts = ctx
        .store
        .apply_batch(batch(
            40,
            kids.iter()
                .rev()
                .map(|kid| {
                    (
                        *kid,
                        Command::Complete {
                            attempt: 1,
                            result: json!(kid.0),
                        },
                    )
                })
                .collect(),
        ))
        .await
        .expect("batch");
    assert!(verdicts.iter().all(Result::is_ok), "{verdicts:?}");
    let p = ctx
        .store
        .get_task(parent)
        .await
        .expect("get")
        .expect("parent");
    assert_eq!(
        p.status,
        TaskStatus::Pending,
        "resumed once the last child settled"
    );
    assert_eq!(p.completed_children, 3, "each child counted exactly once");
    assert_eq!(p.stage, 1);
    let resumed = events_of(&ctx, parent)
        .await
        .iter()
        .filter(|event| {
            event.event_type == EventType::TaskStatusChanged.as_str()
                && event.from_status == Some(TaskStatus::Suspended)
        })
        .count();
    assert_eq!(resumed, 1, "the parent resumes exactly once");
}
store_test!(apply_batch_settles_sibling_children_once_each);

async fn apply_batch_applies_commands_of_one_task_in_order(ctx: Ctx) {
    let ids = ctx
        .store
        .insert_tasks(vec![new_task("twice")])
        .await
        .expect("insert");
    ctx.store
        .claim(claim_req("w", &["twice"], 1, 10))
        .await
        .expect("claim");
    let verdicts = ctx
        .store
        .apply_batch(batch(
            20,
            vec![
                (
                    ids[0],
                    Command::Complete {
                        attempt: 1,
                        result: json!(1),
                    },
                ),
                (
                    ids[0],
                    Command::Complete {
                        attempt: 1,
                        result: json!(2),
                    },
                ),
            ],
        ))
        .await
        .expect("batch");
    assert!(matches!(&verdicts[0], Ok(task) if task.result == Some(json!(1))));
    assert!(
        verdicts[1].is_err(),
        "the second completion sees the first one's row: {:?}",
        verdicts[1]
    );
    let stored = ctx.store.get_task(ids[0]).await.expect("get").expect("row");
    assert_eq!(stored.result, Some(json!(1)));
    assert_eq!(attempts_of(&ctx, ids[0]).await.len(), 1);
}
store_test!(apply_batch_applies_commands_of_one_task_in_order);
