//! The worker registry (behavior.md §6): registration and leases, superseding within a pod,
//! reaping expired workers and recovering their tasks without charging a retry, the claim
//! fence, and how the heartbeat sweep leaves registered workers' tasks to the registry.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use fib_flow::error::{PortError, RuntimeError};
use fib_flow::{
    AttemptOutcome, Error, EventQuery, HandlerError, ManagerOptions, ManualClock, Outcome,
    TaskHandle, TaskId, TaskManager, TaskOptions, TaskStatus, WorkerQuery, WorkerStatus, json,
};
use fib_flow_ports::{ClaimName, ClaimRequest, Recovery, WorkerRegistration};

use crate::harness::{TestDb, attempt_outcomes, event_types, poll_until, wait_status};

const LONG: Duration = Duration::from_secs(20);

fn start_instant() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
        .single()
        .expect("valid instant")
}

fn millis(instant: DateTime<Utc>) -> i64 {
    instant.timestamp_millis()
}

async fn echo(task: TaskHandle) -> Result<Outcome, HandlerError> {
    Ok(task.payload().clone().into())
}

/// A manager on a manual clock with the given worker and pod ids.
async fn pod_manager(
    db: &TestDb,
    worker_id: &str,
    pod_id: Option<&str>,
) -> (TaskManager, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(start_instant()));
    let options = ManagerOptions {
        worker_id: Some(worker_id.into()),
        pod_id: pod_id.map(Into::into),
        ..db.options()
    };
    (db.manager_with(options, Some(clock.clone())).await, clock)
}

/// Registers a worker of another process directly in the store.
async fn register_other(
    manager: &TaskManager,
    worker_id: &str,
    pod_id: &str,
    now: DateTime<Utc>,
    ttl: Duration,
) {
    manager
        .store()
        .register_worker(WorkerRegistration {
            worker_id: worker_id.into(),
            pod_id: pod_id.into(),
            now,
            ttl,
            meta: json!({ "pid": 1 }),
        })
        .await
        .expect("register another worker");
}

/// Claims one task of `name` as `worker_id`, as that worker's process would.
async fn claim_as(
    manager: &TaskManager,
    worker_id: &str,
    name: &str,
    now: DateTime<Utc>,
    require_active_lease: bool,
) -> Vec<fib_flow::Task> {
    manager
        .store()
        .claim(ClaimRequest {
            worker_id: worker_id.into(),
            now,
            limit: 1,
            names: vec![ClaimName {
                name: name.into(),
                max: None,
                queue: "default".into(),
            }],
            queue_caps: Vec::new(),
            require_active_lease,
        })
        .await
        .expect("claim")
}

/// Another process's worker: registered with a lease of `ttl` at `now`, running a `job` task
/// (one attempt allowed) that it claimed. Returns the task.
async fn task_running_elsewhere(
    manager: &TaskManager,
    (worker_id, pod_id): (&str, &str),
    now: DateTime<Utc>,
    ttl: Duration,
) -> TaskId {
    register_other(manager, worker_id, pod_id, now, ttl).await;
    let id = manager
        .enqueue(
            "job",
            json!("payload"),
            TaskOptions::default().max_retries(1),
        )
        .await
        .expect("enqueue");
    let claimed = claim_as(manager, worker_id, "job", now, true).await;
    assert_eq!(claimed.len(), 1, "an active worker claims");
    id
}

async fn wait_leased(manager: &TaskManager) {
    poll_until("the worker to register", LONG, || async {
        manager.is_leased().then_some(())
    })
    .await;
}

pub async fn registration_renews_and_a_graceful_stop_marks_stopped(db: &TestDb) {
    let (manager, clock) = pod_manager(db, "w-a", Some("pod-a")).await;
    let registered_at = clock.now();
    manager.start().await.expect("start");
    wait_leased(&manager).await;

    let worker = manager
        .worker("w-a")
        .await
        .expect("worker")
        .expect("registered");
    assert_eq!(worker.pod_id, "pod-a");
    assert_eq!(worker.status, WorkerStatus::Active);
    assert_eq!(worker.registered_at, registered_at);
    assert_eq!(worker.last_seen_at, registered_at);
    assert_eq!(worker.expires_at, registered_at + Duration::from_secs(30));
    let meta = worker.meta.expect("meta");
    assert_eq!(meta["pid"], json!(std::process::id()));
    assert_eq!(meta["started_at"], json!(millis(registered_at)));

    clock.advance(Duration::from_millis(1500));
    assert!(manager.run_lease_check().await.expect("lease check"));
    let renewed = manager
        .worker("w-a")
        .await
        .expect("worker")
        .expect("registered");
    assert_eq!(renewed.last_seen_at, clock.now());
    assert_eq!(renewed.expires_at, clock.now() + Duration::from_secs(30));
    assert_eq!(renewed.registered_at, registered_at);

    let pod = manager
        .workers(WorkerQuery::pod("pod-a"))
        .await
        .expect("workers");
    assert_eq!(
        pod.iter().map(|w| w.worker_id.as_str()).collect::<Vec<_>>(),
        ["w-a"]
    );
    let dead = manager
        .workers(WorkerQuery::default().status(WorkerStatus::Dead))
        .await
        .expect("workers");
    assert!(dead.is_empty());
    assert!(matches!(
        manager.worker("").await,
        Err(Error::Runtime(RuntimeError::InvalidInput(error))) if error.to_string().contains("worker_id")
    ));

    // A task the store says this worker runs but it does not (a claim whose reply was lost):
    // the graceful stop recovers it instead of leaving it to the sweep.
    manager.pause();
    manager.register("job", echo).expect("register");
    let lost = manager
        .enqueue("job", json!(1), TaskOptions::default())
        .await
        .expect("enqueue");
    assert_eq!(
        claim_as(&manager, "w-a", "job", clock.now(), true)
            .await
            .len(),
        1
    );

    manager.stop().await.expect("stop");
    let recovered = manager.get_task(lost).await.expect("get").expect("exists");
    assert_eq!(recovered.status, TaskStatus::Pending);
    assert_eq!(recovered.retry_count, 0);
    assert_eq!(
        attempt_outcomes(&manager, lost).await,
        vec![Some(AttemptOutcome::Interrupted)]
    );
    let stopped = manager.worker("w-a").await.expect("worker").expect("kept");
    assert_eq!(stopped.status, WorkerStatus::Stopped);
    assert_eq!(stopped.dead_at, Some(clock.now()));
    assert!(!manager.is_leased());
}

pub async fn same_pod_supersedes_and_recovers_without_a_retry(db: &TestDb) {
    let (manager, clock) = pod_manager(db, "w-new", Some("pod-a")).await;
    manager.register("job", echo).expect("register");
    // The previous process of pod-a registered, claimed a task, and died.
    let id = task_running_elsewhere(
        &manager,
        ("w-old", "pod-a"),
        clock.now(),
        Duration::from_secs(30),
    )
    .await;

    clock.advance(Duration::from_secs(1));
    manager.start().await.expect("start");
    let task = wait_status(&manager, id, TaskStatus::Completed).await;
    assert_eq!(task.retry_count, 0, "a crash charges no retry");
    assert_eq!(task.result, Some(json!("payload")));
    assert_eq!(
        attempt_outcomes(&manager, id).await,
        vec![
            Some(AttemptOutcome::Interrupted),
            Some(AttemptOutcome::Completed)
        ]
    );
    let attempts = manager.task_attempts(id).await.expect("attempts");
    assert_eq!(
        attempts[0].error.as_deref(),
        Some("Task ownership recovered after worker became unavailable")
    );
    let types = event_types(&manager, id).await;
    assert!(types.contains(&"task_recovered".to_owned()), "{types:?}");
    assert!(
        !types
            .iter()
            .any(|t| t == "task_failed" || t == "task_timed_out")
    );
    let recovered = manager
        .task_events(id, EventQuery::default())
        .await
        .expect("events")
        .into_iter()
        .find(|event| event.event_type.as_str() == "task_recovered")
        .expect("recovered event");
    assert_eq!(recovered.worker_id.as_deref(), Some("w-new"));
    assert_eq!(recovered.from_status, Some(TaskStatus::Running));
    assert_eq!(recovered.to_status, Some(TaskStatus::Pending));
    let metadata = recovered.metadata;
    assert_eq!(metadata["recovery_reason"], json!("worker_unavailable"));
    assert_eq!(metadata["recovered_from_worker_id"], json!("w-old"));
    assert_eq!(metadata["recovered_by_worker_id"], json!("w-new"));
    assert_eq!(metadata["recovered_by_pod_id"], json!("pod-a"));

    let old = manager
        .worker("w-old")
        .await
        .expect("worker")
        .expect("kept");
    assert_eq!(old.status, WorkerStatus::Superseded);
    assert_eq!(old.superseded_at, Some(clock.now()));

    // The superseded worker is fenced: it claims nothing, and its late outcome is stale.
    manager.pause();
    manager
        .enqueue("job", json!(2), TaskOptions::default())
        .await
        .expect("enqueue");
    assert!(
        claim_as(&manager, "w-old", "job", clock.now(), true)
            .await
            .is_empty()
    );
    let late = manager
        .store()
        .apply(
            id,
            fib_flow_domain::Command::Complete {
                attempt: 1,
                result: json!("late"),
            },
            clock.now(),
        )
        .await;
    assert!(
        matches!(
            late,
            Err(PortError::Stale { .. }) | Err(PortError::Rejected(_))
        ),
        "{late:?}"
    );
    manager.stop().await.expect("stop");
}

pub async fn an_expired_worker_is_reaped_strictly_after_its_lease(db: &TestDb) {
    let (manager, clock) = pod_manager(db, "w-live", None).await;
    manager.register("job", echo).expect("register");
    let id = task_running_elsewhere(
        &manager,
        ("w-crashed", "pod-x"),
        clock.now(),
        Duration::from_secs(2),
    )
    .await;
    manager.start().await.expect("start");
    wait_leased(&manager).await;

    // At the instant the lease ends it is still alive.
    clock.advance(Duration::from_secs(2));
    assert!(manager.run_lease_check().await.expect("lease check"));
    let crashed = manager
        .worker("w-crashed")
        .await
        .expect("worker")
        .expect("kept");
    assert_eq!(crashed.status, WorkerStatus::Active);
    assert_eq!(
        manager
            .get_task(id)
            .await
            .expect("get")
            .expect("exists")
            .status,
        TaskStatus::Running
    );

    // One millisecond later it is dead, and its task is back without a retry.
    clock.advance(Duration::from_millis(1));
    assert!(manager.run_lease_check().await.expect("lease check"));
    let crashed = manager
        .worker("w-crashed")
        .await
        .expect("worker")
        .expect("kept");
    assert_eq!(crashed.status, WorkerStatus::Dead);
    assert_eq!(crashed.dead_at, Some(clock.now()));
    let task = wait_status(&manager, id, TaskStatus::Completed).await;
    assert_eq!(task.retry_count, 0);
    let types = event_types(&manager, id).await;
    assert!(types.contains(&"task_recovered".to_owned()), "{types:?}");
    assert!(!types.iter().any(|t| t == "task_timed_out"), "{types:?}");
    manager.stop().await.expect("stop");
}

pub async fn the_sweep_leaves_an_active_workers_tasks_to_the_registry(db: &TestDb) {
    let (manager, clock) = pod_manager(db, "w-sweeper", None).await;
    manager.register("job", echo).expect("register");
    let store = manager.store();
    let start = clock.now();
    let id = task_running_elsewhere(
        &manager,
        ("w-busy", "pod-b"),
        start,
        Duration::from_secs(20),
    )
    .await;

    // Its heartbeat is long stale (and even its worker's lease has run out), but until a
    // reaper recovers it its worker is active: not the sweep's to take. Before the deadline
    // (the default 60 s timeout), which the sweep enforces whoever the owner is.
    let later = start + Duration::from_secs(30);
    let cutoff = later - Duration::from_secs(5);
    assert!(
        store
            .expired_attempts(later, cutoff, 10)
            .await
            .expect("sweep query")
            .is_empty()
    );

    // Reaped without recovery (recover_running_jobs off): now the sweep takes over.
    let report = store.reap_workers(later, None).await.expect("reap");
    assert_eq!(report.workers, vec!["w-busy".to_owned()]);
    assert_eq!(report.recovered, 0);
    let expired = store
        .expired_attempts(later, cutoff, 10)
        .await
        .expect("sweep query");
    assert_eq!(
        expired.iter().map(|e| e.task_id).collect::<Vec<TaskId>>(),
        vec![id]
    );
    manager.stop().await.expect("stop");
}

pub async fn registry_store_contract(db: &TestDb) {
    let (manager, clock) = pod_manager(db, "w-contract", None).await;
    let store = manager.store();
    let t0 = clock.now();
    let ttl = Duration::from_secs(2);
    register_other(&manager, "w-1", "pod-c", t0, ttl).await;
    register_other(&manager, "w-2", "pod-c", t0 + Duration::from_secs(1), ttl).await;
    register_other(&manager, "w-3", "pod-d", t0, ttl).await;

    // Superseding touches only the other active workers of the pod (recovering nothing: none
    // of them runs a task).
    let recovery = Recovery {
        by_worker_id: "w-2".into(),
        by_pod_id: Some("pod-c".into()),
        now: t0,
    };
    let superseded = store
        .supersede_workers(
            "pod-c".into(),
            "w-2".into(),
            t0 + Duration::from_secs(1),
            Some(recovery),
        )
        .await
        .expect("supersede");
    assert_eq!(superseded.workers, vec!["w-1".to_owned()]);
    assert_eq!(superseded.recovered, 0);
    // A superseded worker's heartbeat changes nothing; an active one's extends its lease.
    let now = t0 + Duration::from_millis(1500);
    assert!(
        !store
            .heartbeat_worker("w-1".into(), now, ttl)
            .await
            .expect("heartbeat")
    );
    assert!(
        store
            .heartbeat_worker("w-2".into(), now, ttl)
            .await
            .expect("heartbeat")
    );
    let w1 = store
        .get_worker("w-1".into())
        .await
        .expect("get")
        .expect("row");
    assert_eq!((w1.status, w1.last_seen_at), (WorkerStatus::Superseded, t0));

    // Ordered by registration instant, then id; filtered by pod and status.
    let all = store
        .list_workers(WorkerQuery::default())
        .await
        .expect("list");
    let ids: Vec<&str> = all.iter().map(|w| w.worker_id.as_str()).collect();
    assert_eq!(ids, ["w-1", "w-3", "w-2"]);
    let active_c = store
        .list_workers(WorkerQuery::pod("pod-c").status(WorkerStatus::Active))
        .await
        .expect("list");
    assert_eq!(active_c.len(), 1);
    assert_eq!(active_c[0].worker_id, "w-2");

    // Reaping: strictly after expires_at, active rows only.
    let w3_expiry = t0 + ttl;
    assert!(
        store
            .reap_workers(w3_expiry, None)
            .await
            .expect("reap")
            .workers
            .is_empty()
    );
    let reaped = store
        .reap_workers(w3_expiry + Duration::from_millis(1), None)
        .await
        .expect("reap");
    assert_eq!(reaped.workers, vec!["w-3".to_owned()]);

    // Re-registration replaces the row: active again, new timestamps, new meta.
    register_other(&manager, "w-3", "pod-d", t0 + Duration::from_secs(9), ttl).await;
    let w3 = store
        .get_worker("w-3".into())
        .await
        .expect("get")
        .expect("row");
    assert_eq!(w3.status, WorkerStatus::Active);
    assert_eq!(w3.registered_at, t0 + Duration::from_secs(9));
    assert_eq!(w3.dead_at, None);

    let refused = store
        .register_worker(WorkerRegistration {
            worker_id: "  ".into(),
            pod_id: "pod".into(),
            now: t0,
            ttl,
            meta: json!({}),
        })
        .await;
    assert!(
        matches!(&refused, Err(PortError::Rejected(error)) if error.to_string().contains("worker_id")),
        "{refused:?}"
    );
    assert_eq!(store.get_worker("missing".into()).await.expect("get"), None);
    manager.stop().await.expect("stop");
}

pub async fn a_handler_that_gives_up_on_stop_is_interrupted_not_failed(db: &TestDb) {
    const TASKS: usize = 20;
    let options = ManagerOptions {
        stop_timeout: Duration::from_millis(200),
        max_concurrent_tasks: TASKS,
        ..db.options()
    };
    let manager = db.manager_with(options, None).await;
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    let signal = started.clone();
    manager
        .register("cooperative", move |task: TaskHandle| {
            let started = signal.clone();
            async move {
                started.add_permits(1);
                task.cancellation().cancelled().await;
                Err::<Outcome, HandlerError>("stop requested; giving up".into())
            }
        })
        .expect("register");
    let ids = manager
        .enqueue_many(
            (0..TASKS)
                .map(|n| {
                    let options = TaskOptions::default().max_retries(1);
                    ("cooperative".to_owned(), json!(n), options)
                })
                .collect(),
        )
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let all_started = tokio::time::timeout(LONG, started.acquire_many(TASKS as u32)).await;
    assert!(all_started.is_ok(), "every handler started");
    manager.stop().await.expect("stop");

    for id in ids {
        let task = manager.get_task(id).await.expect("get").expect("exists");
        assert_eq!(task.status, TaskStatus::Pending, "task {id} released");
        assert_eq!(task.retry_count, 0, "task {id}: no retry used");
        assert_eq!(
            attempt_outcomes(&manager, id).await,
            vec![Some(AttemptOutcome::Interrupted)],
            "task {id}"
        );
        assert!(
            !event_types(&manager, id)
                .await
                .contains(&"task_failed".to_owned())
        );
    }
}
