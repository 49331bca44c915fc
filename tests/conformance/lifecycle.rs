//! The single-task lifecycle: submission, execution, results, retries, deadlines, heartbeats,
//! fencing, ordering, concurrency, control and hot reload.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use fib_flow::error::{DomainError, PortError, RuntimeError};
use fib_flow::{
    AttemptOutcome, ChildFailurePolicy, Error, EventQuery, HandlerError, HandlerOptions,
    ManagerOptions, ManualClock, Progress, Task, TaskHandle, TaskManager, TaskOptions, TaskStatus,
    json,
};
use fib_flow_domain::Command;
use fib_flow_ports::{ClaimName, ClaimRequest};
use tokio::sync::{Notify, Semaphore};

use crate::harness::{TestDb, attempt_outcomes, event_types, eventually, poll_until, wait_status};

const LONG: Duration = Duration::from_secs(20);

fn start_instant() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 30)
        .single()
        .expect("valid instant")
}

fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(start_instant()))
}

async fn echo(task: TaskHandle) -> Result<fib_flow::Outcome, HandlerError> {
    Ok(task.payload().clone().into())
}

pub async fn setup_is_idempotent(db: &TestDb) {
    let manager = db.manager().await;
    manager.setup().await.expect("second setup is a no-op");
    manager.register("echo", echo).expect("register");
    let id = manager
        .enqueue("echo", json!({"n": 1}), TaskOptions::default())
        .await
        .expect("enqueue");
    let task = manager.get_task(id).await.expect("get").expect("exists");
    assert_eq!(task.status, TaskStatus::Pending);
    assert!(manager.worker_id().starts_with("worker-"));
    manager.stop().await.expect("stop");
}

pub async fn async_task_completes_with_audit_trail(db: &TestDb) {
    let manager = db.manager().await;
    manager.register("echo", echo).expect("register");
    let id = manager
        .enqueue(
            "echo",
            json!({"text": "hello"}),
            TaskOptions::default().tag("greetings"),
        )
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let task = wait_status(&manager, id, TaskStatus::Completed).await;
    assert_eq!(task.result, Some(json!({"text": "hello"})));
    assert_eq!(task.error, None);
    assert_eq!(task.attempt, 1);
    assert_eq!(task.worker_id.as_deref(), Some(manager.worker_id()));
    assert_eq!(task.tag.as_deref(), Some("greetings"));
    assert_eq!(task.last_event_type.as_deref(), Some("task_completed"));

    let events = manager
        .task_events(id, EventQuery::default())
        .await
        .expect("events");
    let types: Vec<&str> = events
        .iter()
        .map(|event| event.event_type.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "task_created",
            "task_claimed",
            "task_started",
            "task_completed"
        ]
    );
    assert_eq!(events[0].attempt, None);
    assert!(
        events[1..].iter().all(|event| event.attempt == Some(1)),
        "{events:?}"
    );
    assert_eq!(events[3].from_status, Some(TaskStatus::Running));
    assert_eq!(events[3].to_status, Some(TaskStatus::Completed));

    let attempts = manager.task_attempts(id).await.expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Completed));
    assert!(attempts[0].ended_at.is_some());
    assert_eq!(attempts[0].worker_id.as_deref(), Some(manager.worker_id()));
    manager.stop().await.expect("stop");
}

pub async fn falsy_results_survive(db: &TestDb) {
    let manager = db.manager().await;
    manager.register("same", echo).expect("register");
    let mut ids = Vec::new();
    for value in [json!(0), json!(false), json!(""), json!(null), json!([])] {
        ids.push((
            manager
                .enqueue("same", value.clone(), TaskOptions::default())
                .await
                .expect("enqueue"),
            value,
        ));
    }
    manager.start().await.expect("start");
    for (id, value) in ids {
        let task = wait_status(&manager, id, TaskStatus::Completed).await;
        assert_eq!(task.result, Some(value));
    }
    manager.stop().await.expect("stop");
}

pub async fn failing_task_uses_every_attempt_then_fails_permanently(db: &TestDb) {
    let manager = db.manager().await;
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    manager
        .register("boom", move |_task: TaskHandle| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Err::<fib_flow::Outcome, _>("Task failed")
            }
        })
        .expect("register");
    let id = manager
        .enqueue("boom", json!({}), TaskOptions::default().max_retries(2))
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let task = wait_status(&manager, id, TaskStatus::PermanentlyFailed).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert!(
        task.error
            .as_deref()
            .is_some_and(|error| error.contains("Task failed")),
        "{:?}",
        task.error
    );
    assert_eq!(task.retry_count, 1);
    assert_eq!(
        attempt_outcomes(&manager, id).await,
        [Some(AttemptOutcome::Failed), Some(AttemptOutcome::Failed)]
    );
    let types = event_types(&manager, id).await;
    assert_eq!(types.iter().filter(|t| *t == "task_failed").count(), 2);
    assert_eq!(
        types
            .iter()
            .filter(|t| *t == "task_retry_scheduled")
            .count(),
        1
    );
    assert_eq!(
        types.iter().filter(|t| *t == "task_retry_started").count(),
        1
    );
    assert_eq!(
        types.last().map(String::as_str),
        Some("task_permanently_failed")
    );
    manager.stop().await.expect("stop");
}

pub async fn retry_waits_retry_interval_once(db: &TestDb) {
    let clock = manual_clock();
    let manager = db.manager_with(db.options(), Some(clock.clone())).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    manager
        .register("flaky", move |_task: TaskHandle| {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err::<fib_flow::Outcome, _>("first attempt fails".to_owned())
                } else {
                    Ok(json!("second attempt succeeds").into())
                }
            }
        })
        .expect("register");
    let options = TaskOptions::default()
        .max_retries(3)
        .retry_interval(Duration::from_secs(30));
    let id = manager
        .enqueue("flaky", json!({}), options)
        .await
        .expect("enqueue");
    manager.start().await.expect("start");

    let retried = poll_until("the retry to be scheduled", LONG, || async {
        let task = manager.get_task(id).await.expect("get").expect("exists");
        (task.retry_count == 1 && task.status == TaskStatus::Pending).then_some(task)
    })
    .await;
    assert_eq!(
        retried.next_run_time,
        clock.now() + chrono::TimeDelta::seconds(30)
    );
    assert_eq!(retried.error.as_deref(), Some("first attempt fails"));
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "not due before the interval"
    );

    clock.advance(Duration::from_secs(30));
    let task = wait_status(&manager, id, TaskStatus::Completed).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(task.error, None, "a later success clears the error");
    assert_eq!(task.result, Some(json!("second attempt succeeds")));
    manager.stop().await.expect("stop");
}

pub async fn handler_panic_fails_the_attempt_not_the_worker(db: &TestDb) {
    let manager = db.manager().await;
    manager
        .register("panics", |_task: TaskHandle| async move {
            if true {
                panic!("handler exploded");
            }
            Ok::<fib_flow::Outcome, HandlerError>(json!(null).into())
        })
        .expect("register");
    manager.register("echo", echo).expect("register");
    let bad = manager
        .enqueue("panics", json!({}), TaskOptions::default().max_retries(1))
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let task = wait_status(&manager, bad, TaskStatus::PermanentlyFailed).await;
    assert!(
        task.error
            .as_deref()
            .is_some_and(|error| error.contains("handler exploded")),
        "{:?}",
        task.error
    );
    let good = manager
        .enqueue("echo", json!(7), TaskOptions::default())
        .await
        .expect("enqueue");
    assert_eq!(
        wait_status(&manager, good, TaskStatus::Completed)
            .await
            .result,
        Some(json!(7))
    );
    manager.stop().await.expect("stop");
}

pub async fn deadline_cancels_a_hung_handler(db: &TestDb) {
    let clock = manual_clock();
    let manager = db.manager_with(db.options(), Some(clock.clone())).await;
    let started = Arc::new(AtomicUsize::new(0));
    let started_in = started.clone();
    manager
        .register("hangs", move |task: TaskHandle| {
            let started = started_in.clone();
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
                let _ = task;
                Ok::<fib_flow::Outcome, HandlerError>(json!(null).into())
            }
        })
        .expect("register");
    let options = TaskOptions::default()
        .timeout(Duration::from_secs(10))
        .max_retries(1);
    let id = manager
        .enqueue("hangs", json!({}), options)
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let running = wait_status(&manager, id, TaskStatus::Running).await;
    assert_eq!(
        running.deadline,
        Some(clock.now() + chrono::TimeDelta::seconds(10))
    );

    clock.advance(Duration::from_secs(11));
    let task = wait_status(&manager, id, TaskStatus::PermanentlyFailed).await;
    let attempts = manager.task_attempts(id).await.expect("attempts");
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Timeout));
    assert!(attempts[0].timeout_flag);
    assert!(
        event_types(&manager, id)
            .await
            .contains(&"task_timed_out".to_owned())
    );
    assert!(task.error.is_some());
    manager.stop().await.expect("stop");
}

/// Counts how many times the guarded handler future was dropped.
struct DropFlag(Arc<AtomicUsize>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

pub async fn handle_exposes_deadline_payload_and_stage(db: &TestDb) {
    #[derive(serde::Deserialize)]
    struct Resize {
        width: u32,
    }
    let clock = manual_clock();
    let manager = db.manager_with(db.options(), Some(clock.clone())).await;
    manager
        .register("inspect", |task: TaskHandle| async move {
            let resize: Resize = task.payload_as()?;
            task.check_timeout()?;
            Ok::<fib_flow::Outcome, HandlerError>(
                json!({
                    "width": resize.width,
                    "stage": task.stage(),
                    "attempt": task.attempt(),
                    "deadline": task.deadline(),
                    "name": task.name(),
                })
                .into(),
            )
        })
        .expect("register");
    let id = manager
        .enqueue(
            "inspect",
            json!({"width": 640}),
            TaskOptions::default().timeout(Duration::from_secs(90)),
        )
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let task = wait_status(&manager, id, TaskStatus::Completed).await;
    let expected_deadline = clock.now() + chrono::TimeDelta::seconds(90);
    assert_eq!(
        task.result,
        Some(
            json!({"width": 640, "stage": 0, "attempt": 1, "deadline": expected_deadline, "name": "inspect"})
        )
    );
    manager.stop().await.expect("stop");
}

pub async fn heartbeat_keeps_a_long_task_alive(db: &TestDb) {
    let clock = manual_clock();
    let manager = db.manager_with(db.options(), Some(clock.clone())).await;
    let release = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let (gate, started_in) = (release.clone(), started.clone());
    manager
        .register("long", move |_task: TaskHandle| {
            let (gate, started) = (gate.clone(), started_in.clone());
            async move {
                started.notify_one();
                gate.notified().await;
                Ok::<fib_flow::Outcome, HandlerError>(json!("done").into())
            }
        })
        .expect("register");
    let id = manager
        .enqueue("long", json!({}), TaskOptions::default().no_timeout())
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    // The row turns `running` at the claim; the attempt is heartbeated once it executes.
    started.notified().await;
    for _ in 0..4 {
        clock.advance(Duration::from_secs(3));
        manager.run_maintenance().await.expect("maintenance");
    }
    let task = manager.get_task(id).await.expect("get").expect("exists");
    assert_eq!(
        task.status,
        TaskStatus::Running,
        "12 s with heartbeats every 3 s must not time out"
    );
    assert_eq!(task.last_active_time, Some(clock.now()));
    release.notify_one();
    wait_status(&manager, id, TaskStatus::Completed).await;
    manager.stop().await.expect("stop");
}

async fn ghost_claim(manager: &TaskManager, clock: &ManualClock, name: &str) -> Task {
    let claimed = manager
        .store()
        .claim(ClaimRequest {
            worker_id: "ghost-worker".into(),
            now: clock.now(),
            limit: 1,
            names: vec![ClaimName {
                name: name.into(),
                max: None,
                queue: "default".into(),
            }],
            queue_caps: Vec::new(),
            require_active_lease: false,
        })
        .await
        .expect("ghost claim");
    assert_eq!(claimed.len(), 1, "the ghost claims the task");
    claimed.into_iter().next().expect("one task")
}

pub async fn sweep_times_out_a_lost_heartbeat_and_rejects_the_stale_writer(db: &TestDb) {
    let clock = manual_clock();
    let manager = db.manager_with(db.options(), Some(clock.clone())).await;
    manager.register("echo", echo).expect("register");
    let id = manager
        .enqueue("orphaned", json!({}), TaskOptions::default().max_retries(3))
        .await
        .map(Some)
        .or_else(|error| match error {
            Error::Runtime(RuntimeError::UnknownHandler { .. }) => Ok(None),
            other => Err(other),
        })
        .expect("enqueue");
    assert!(id.is_none(), "submitting an unregistered name is refused");

    manager.register("orphaned", echo).expect("register");
    let id = manager
        .enqueue(
            "orphaned",
            json!({}),
            TaskOptions::default().max_retries(3).no_timeout(),
        )
        .await
        .expect("enqueue");
    let claimed = ghost_claim(&manager, &clock, "orphaned").await;
    assert_eq!(claimed.id, id);
    assert_eq!(claimed.attempt, 1);

    clock.advance(Duration::from_secs(6));
    manager.run_maintenance().await.expect("maintenance");
    let task = manager.get_task(id).await.expect("get").expect("exists");
    assert_eq!(
        task.status,
        TaskStatus::Pending,
        "heartbeat timeout schedules a retry"
    );
    assert_eq!(task.retry_count, 1);
    assert_eq!(task.error.as_deref(), Some("Task heartbeat timed out"));
    let attempts = manager.task_attempts(id).await.expect("attempts");
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Timeout));

    let stale = manager
        .store()
        .apply(
            id,
            Command::Complete {
                attempt: 1,
                result: json!("late"),
            },
            clock.now(),
        )
        .await;
    assert!(
        matches!(stale, Err(PortError::Stale { attempt: 1, .. })),
        "{stale:?}"
    );
    let task = manager.get_task(id).await.expect("get").expect("exists");
    assert_eq!(task.status, TaskStatus::Pending);
    assert_eq!(task.result, None, "the stale result was not written");

    manager.start().await.expect("start");
    let task = wait_status(&manager, id, TaskStatus::Completed).await;
    assert_eq!(task.attempt, 2);
    manager.stop().await.expect("stop");
}

pub async fn claims_by_priority_then_due_time_then_id(db: &TestDb) {
    let clock = manual_clock();
    let options = ManagerOptions {
        max_concurrent_tasks: 1,
        claim_batch_size: 1,
        ..db.options()
    };
    let manager = db.manager_with(options, Some(clock.clone())).await;
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = order.clone();
    manager
        .register("ordered", move |task: TaskHandle| {
            let seen = seen.clone();
            async move {
                seen.lock().expect("order lock").push(task.id());
                Ok::<fib_flow::Outcome, HandlerError>(json!(null).into())
            }
        })
        .expect("register");
    let submit = |priority: i32, delay: u64| {
        manager.enqueue(
            "ordered",
            json!({}),
            TaskOptions::default()
                .priority(priority)
                .delay(Duration::from_secs(delay)),
        )
    };
    let first = submit(1, 5).await.expect("enqueue");
    let second = submit(2, 3).await.expect("enqueue");
    let third = submit(1, 3).await.expect("enqueue");
    let fourth = submit(1, 3).await.expect("enqueue");
    clock.advance(Duration::from_secs(5));
    manager.start().await.expect("start");
    for id in [first, second, third, fourth] {
        wait_status(&manager, id, TaskStatus::Completed).await;
    }
    assert_eq!(
        *order.lock().expect("order lock"),
        [second, third, fourth, first]
    );
    manager.stop().await.expect("stop");
}

pub async fn delayed_task_waits_for_its_delay(db: &TestDb) {
    let clock = manual_clock();
    let manager = db.manager_with(db.options(), Some(clock.clone())).await;
    manager.register("echo", echo).expect("register");
    let id = manager
        .enqueue(
            "echo",
            json!("later"),
            TaskOptions::default().delay(Duration::from_secs(60)),
        )
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let task = manager.get_task(id).await.expect("get").expect("exists");
    assert_eq!(
        task.next_run_time,
        clock.now() + chrono::TimeDelta::seconds(60)
    );
    assert_eq!(task.status, TaskStatus::Pending);
    clock.advance(Duration::from_secs(60));
    wait_status(&manager, id, TaskStatus::Completed).await;
    manager.stop().await.expect("stop");
}

/// Runs `total` tasks whose handlers block until the test releases them, and returns the
/// highest number observed running at once.
async fn peak_concurrency(
    manager: &TaskManager,
    name: &str,
    total: usize,
    expected_peak: usize,
    options: HandlerOptions,
) -> usize {
    let active = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(Semaphore::new(0));
    let (active_in, peak_in, permits_in) = (active.clone(), peak.clone(), permits.clone());
    let handler = move |_task: TaskHandle| {
        let (active, peak, permits) = (active_in.clone(), peak_in.clone(), permits_in.clone());
        async move {
            let now_active = active.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now_active, Ordering::SeqCst);
            permits
                .acquire()
                .await
                .map_err(|error| error.to_string())?
                .forget();
            active.fetch_sub(1, Ordering::SeqCst);
            Ok::<fib_flow::Outcome, HandlerError>(json!(null).into())
        }
    };
    manager
        .register_with(name, handler, options)
        .expect("register");
    let mut ids = Vec::new();
    for _ in 0..total {
        ids.push(
            manager
                .enqueue(name, json!({}), TaskOptions::default())
                .await
                .expect("enqueue"),
        );
    }
    manager.start().await.expect("start");
    let mut released = 0;
    while released < total {
        let batch = expected_peak.min(total - released);
        eventually("the next batch to be running", LONG, || async {
            active.load(Ordering::SeqCst) == batch
        })
        .await;
        permits.add_permits(batch);
        released += batch;
    }
    for id in ids {
        wait_status(manager, id, TaskStatus::Completed).await;
    }
    peak.load(Ordering::SeqCst)
}

pub async fn per_handler_concurrency_limit_holds(db: &TestDb) {
    let manager = db.manager().await;
    let limited = HandlerOptions {
        max_concurrent_tasks: Some(2),
        ..HandlerOptions::default()
    };
    let peak = peak_concurrency(&manager, "limited", 6, 2, limited).await;
    assert_eq!(peak, 2, "the global limit is 10, the handler's is 2");
    manager.stop().await.expect("stop");
}

pub async fn global_concurrency_limit_holds(db: &TestDb) {
    let options = ManagerOptions {
        max_concurrent_tasks: 3,
        ..db.options()
    };
    let manager = db.manager_with(options, None).await;
    let peak = peak_concurrency(&manager, "busy", 9, 3, HandlerOptions::default()).await;
    assert_eq!(peak, 3);
    manager.stop().await.expect("stop");
}

pub async fn paused_manager_claims_nothing_and_register_does_not_unpause(db: &TestDb) {
    let manager = db.manager().await;
    manager.register("echo", echo).expect("register");
    manager.start().await.expect("start");
    manager.pause();
    let id = manager
        .enqueue("echo", json!(1), TaskOptions::default())
        .await
        .expect("enqueue");
    manager.register("another", echo).expect("register");
    // Absence of a claim cannot be awaited; give the loop many poll intervals to misbehave.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let task = manager.get_task(id).await.expect("get").expect("exists");
    assert_eq!(
        task.status,
        TaskStatus::Pending,
        "a paused manager must not claim"
    );
    manager.resume();
    wait_status(&manager, id, TaskStatus::Completed).await;
    manager.stop().await.expect("stop");
}

pub async fn task_control_pause_resume_cancel(db: &TestDb) {
    let manager = db.manager().await;
    manager.register("echo", echo).expect("register");
    let id = manager
        .enqueue("echo", json!(1), TaskOptions::default())
        .await
        .expect("enqueue");
    assert_eq!(
        manager.pause_task(id).await.expect("pause").status,
        TaskStatus::Paused
    );
    let resumed = manager.resume_task(id, None).await.expect("resume");
    assert_eq!(resumed.status, TaskStatus::Pending);
    assert_eq!(resumed.retry_count, 0);
    let cancelled = manager.cancel_task(id, None).await.expect("cancel");
    assert_eq!(cancelled.status, TaskStatus::PermanentlyFailed);
    assert_eq!(cancelled.error.as_deref(), Some("Task cancelled"));
    let illegal = manager.resume_task(id, None).await;
    assert!(
        matches!(illegal, Err(Error::Runtime(_)) | Err(Error::Invalid(_))),
        "resuming a cancelled task is a typed error: {illegal:?}"
    );
    let types = event_types(&manager, id).await;
    assert_eq!(
        types,
        [
            "task_created",
            "task_paused",
            "task_status_changed",
            "task_permanently_failed"
        ]
    );

    let cancelled_flag = Arc::new(AtomicUsize::new(0));
    let handler_started = Arc::new(Notify::new());
    let (flag, started_in) = (cancelled_flag.clone(), handler_started.clone());
    manager
        .register("waits", move |task: TaskHandle| {
            let (flag, started) = (flag.clone(), started_in.clone());
            async move {
                started.notify_one();
                task.cancellation().cancelled().await;
                flag.fetch_add(1, Ordering::SeqCst);
                Ok::<fib_flow::Outcome, HandlerError>(json!("ignored").into())
            }
        })
        .expect("register");
    let running = manager
        .enqueue("waits", json!({}), TaskOptions::default())
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    handler_started.notified().await;
    let cancelled = manager
        .cancel_task(running, Some("operator said no".into()))
        .await
        .expect("cancel running");
    assert_eq!(cancelled.status, TaskStatus::PermanentlyFailed);
    assert_eq!(cancelled.error.as_deref(), Some("operator said no"));
    eventually("the handler to see its cancellation", LONG, || async {
        cancelled_flag.load(Ordering::SeqCst) == 1
    })
    .await;
    let attempts = manager.task_attempts(running).await.expect("attempts");
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Cancelled));
    let task = manager
        .get_task(running)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        task.status,
        TaskStatus::PermanentlyFailed,
        "the late return is fenced out"
    );
    assert_eq!(task.result, None);
    manager.stop().await.expect("stop");
}

pub async fn hot_reload_keeps_the_running_attempt_on_its_handler(db: &TestDb) {
    let manager = db.manager().await;
    let release = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let (gate, started_in) = (release.clone(), started.clone());
    manager
        .register("versioned", move |_task: TaskHandle| {
            let (gate, started) = (gate.clone(), started_in.clone());
            async move {
                started.notify_one();
                gate.notified().await;
                Ok::<fib_flow::Outcome, HandlerError>(json!("v1").into())
            }
        })
        .expect("register");
    let first = manager
        .enqueue("versioned", json!({}), TaskOptions::default())
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    // The handler is captured when the attempt starts executing, not when the row is claimed.
    started.notified().await;
    manager
        .register("versioned", |_task: TaskHandle| async move {
            Ok::<fib_flow::Outcome, HandlerError>(json!("v2").into())
        })
        .expect("register");
    release.notify_one();
    assert_eq!(
        wait_status(&manager, first, TaskStatus::Completed)
            .await
            .result,
        Some(json!("v1"))
    );
    let second = manager
        .enqueue("versioned", json!({}), TaskOptions::default())
        .await
        .expect("enqueue");
    assert_eq!(
        wait_status(&manager, second, TaskStatus::Completed)
            .await
            .result,
        Some(json!("v2"))
    );
    assert_eq!(manager.unregister(&["versioned", "never-registered"]), 1);
    assert!(
        manager
            .enqueue("versioned", json!({}), TaskOptions::default())
            .await
            .is_err()
    );
    manager.stop().await.expect("stop");
}

pub async fn stop_drains_then_releases(db: &TestDb) {
    let options = ManagerOptions {
        stop_timeout: Duration::from_millis(300),
        ..db.options()
    };
    let manager = db.manager_with(options, None).await;
    let dropped = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let (flag, started_in) = (dropped.clone(), started.clone());
    manager
        .register("stuck", move |_task: TaskHandle| {
            let (flag, started) = (flag.clone(), started_in.clone());
            async move {
                let _guard = DropFlag(flag);
                started.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
                Ok::<fib_flow::Outcome, HandlerError>(json!(null).into())
            }
        })
        .expect("register");
    let stuck = manager
        .enqueue("stuck", json!({}), TaskOptions::default().no_timeout())
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    wait_status(&manager, stuck, TaskStatus::Running).await;
    eventually("the handler to start", LONG, || async {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    manager.stop().await.expect("stop");
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the stuck handler was cancelled"
    );
    let task = manager.get_task(stuck).await.expect("get").expect("exists");
    assert_eq!(task.status, TaskStatus::Pending, "released on stop");
    assert_eq!(task.worker_id, None);
    let attempts = manager.task_attempts(stuck).await.expect("attempts");
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Interrupted));
    assert_eq!(
        event_types(&manager, stuck)
            .await
            .last()
            .map(String::as_str),
        Some("task_recovered")
    );
}

pub async fn stop_waits_for_in_flight_results(db: &TestDb) {
    let manager = db.manager().await;
    let started = Arc::new(Notify::new());
    let signal = started.clone();
    manager
        .register("slow", move |_task: TaskHandle| {
            let signal = signal.clone();
            async move {
                signal.notify_one();
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<fib_flow::Outcome, HandlerError>(json!("kept").into())
            }
        })
        .expect("register");
    let id = manager
        .enqueue("slow", json!({}), TaskOptions::default())
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    started.notified().await;
    manager.stop().await.expect("stop");
    assert!(matches!(
        manager.start().await,
        Err(Error::Runtime(RuntimeError::AlreadyStopped))
    ));
    let task = manager.get_task(id).await.expect("get").expect("exists");
    assert_eq!(
        task.status,
        TaskStatus::Completed,
        "stop records results of executions it drained"
    );
    assert_eq!(task.result, Some(json!("kept")));
}

pub async fn cron_task_reschedules_from_completion_time(db: &TestDb) {
    let clock = manual_clock();
    let manager = db.manager_with(db.options(), Some(clock.clone())).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    manager
        .register("tick", move |_task: TaskHandle| {
            let counter = counter.clone();
            async move {
                let run = counter.fetch_add(1, Ordering::SeqCst) + 1;
                Ok::<fib_flow::Outcome, HandlerError>(json!({ "run": run }).into())
            }
        })
        .expect("register");
    let id = manager
        .cron("tick", "* * * * *", json!({}), TaskOptions::default())
        .await
        .expect("cron");
    let task = manager.get_task(id).await.expect("get").expect("exists");
    let first_due = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 1, 0)
        .single()
        .expect("instant");
    assert_eq!(task.next_run_time, first_due);
    assert_eq!(task.cron_expr.as_deref(), Some("* * * * *"));
    manager.start().await.expect("start");
    clock.set(first_due + chrono::TimeDelta::seconds(10));
    eventually("the first cron run", LONG, || async {
        let task = manager.get_task(id).await.expect("get").expect("exists");
        task.status == TaskStatus::Pending && task.result.is_some()
    })
    .await;
    let task = manager.get_task(id).await.expect("get").expect("exists");
    assert_eq!(task.result, Some(json!({"run": 1})));
    assert_eq!(
        task.next_run_time,
        first_due + chrono::TimeDelta::seconds(60)
    );
    assert_eq!(task.retry_count, 0);
    assert_eq!(task.stage, 0);
    assert_eq!(
        attempt_outcomes(&manager, id).await,
        [Some(AttemptOutcome::Completed)]
    );
    assert_eq!(
        event_types(&manager, id).await.last().map(String::as_str),
        Some("task_status_changed")
    );
    manager.stop().await.expect("stop");
}

pub async fn cron_exhaustion_pauses_and_resume_resets(db: &TestDb) {
    let clock = manual_clock();
    let manager = db.manager_with(db.options(), Some(clock.clone())).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    manager
        .register("cron_fails", move |_task: TaskHandle| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Err::<fib_flow::Outcome, _>("cron run failed")
            }
        })
        .expect("register");
    let id = manager
        .cron(
            "cron_fails",
            "* * * * * *",
            json!({}),
            TaskOptions::default().max_retries(2),
        )
        .await
        .expect("cron");
    manager.start().await.expect("start");
    clock.advance(Duration::from_secs(1));
    let task = wait_status(&manager, id, TaskStatus::Paused).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(
        event_types(&manager, id).await.last().map(String::as_str),
        Some("task_paused")
    );
    assert_eq!(task.error.as_deref(), Some("cron run failed"));
    let resumed = manager.resume_task(id, None).await.expect("resume");
    assert_eq!(resumed.retry_count, 0);
    assert_eq!(resumed.stage, 0);
    manager.stop().await.expect("stop");
}

pub async fn cron_success_resets_retry_count(db: &TestDb) {
    let clock = manual_clock();
    let manager = db.manager_with(db.options(), Some(clock.clone())).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    manager
        .register("cron_flaky", move |_task: TaskHandle| {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err::<fib_flow::Outcome, _>("first run fails")
                } else {
                    Ok(json!("ok").into())
                }
            }
        })
        .expect("register");
    let id = manager
        .cron(
            "cron_flaky",
            "0 * * * *",
            json!({}),
            TaskOptions::default().max_retries(3),
        )
        .await
        .expect("cron");
    manager.start().await.expect("start");
    clock.advance(Duration::from_secs(3600));
    eventually("the successful rerun", LONG, || async {
        let task = manager.get_task(id).await.expect("get").expect("exists");
        task.result.is_some()
    })
    .await;
    let task = manager.get_task(id).await.expect("get").expect("exists");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(
        task.retry_count, 0,
        "a successful cron run resets retry_count"
    );
    assert_eq!(task.status, TaskStatus::Pending);
    assert_eq!(task.error, None);
    manager.stop().await.expect("stop");
}

pub async fn handler_audit_and_progress_are_recorded(db: &TestDb) {
    let manager = db.manager().await;
    let rejected = Arc::new(std::sync::Mutex::new(Vec::new()));
    let errors = rejected.clone();
    manager
        .register("reporting", move |task: TaskHandle| {
            let errors = errors.clone();
            async move {
                task.audit(
                    fib_flow::Checkpoint::new("payload_validated")
                        .message("Payload validated")
                        .metadata(json!({"source": "crm"})),
                )
                .await?;
                task.progress(
                    Progress::text("Downloading source data")
                        .stage_name("download")
                        .with_percent(20.0),
                )
                .await?;
                task.set_progress(50.0).await?;
                for bad in [
                    task.audit("   ").await.err(),
                    task.set_progress(101.0).await.err(),
                    task.progress(Progress::default()).await.err(),
                    task.audit(fib_flow::Checkpoint::new("x").metadata(json!([1])))
                        .await
                        .err(),
                ] {
                    errors
                        .lock()
                        .expect("lock")
                        .push(bad.map(|error| error.to_string()));
                }
                Ok::<fib_flow::Outcome, HandlerError>(json!("reported").into())
            }
        })
        .expect("register");
    let id = manager
        .enqueue("reporting", json!({}), TaskOptions::default())
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let task = wait_status(&manager, id, TaskStatus::Completed).await;
    assert_eq!(task.current_stage_name.as_deref(), Some("download"));
    assert_eq!(
        task.progress_text.as_deref(),
        Some("Downloading source data")
    );
    assert_eq!(task.progress_percent, Some(50.0));
    let rejected = rejected.lock().expect("lock").clone();
    assert_eq!(rejected.len(), 4);
    assert!(rejected.iter().all(Option::is_some), "{rejected:?}");
    assert!(
        rejected[0]
            .as_deref()
            .is_some_and(|m| m.contains("checkpoint.code")),
        "{rejected:?}"
    );
    assert!(
        rejected[1]
            .as_deref()
            .is_some_and(|m| m.contains("progress_percent")),
        "{rejected:?}"
    );
    assert!(
        rejected[3]
            .as_deref()
            .is_some_and(|m| m.contains("checkpoint.metadata")),
        "{rejected:?}"
    );

    let events = manager
        .task_events(id, EventQuery::default())
        .await
        .expect("events");
    let checkpoint = events
        .iter()
        .find(|e| e.event_type == "task_checkpoint")
        .expect("checkpoint event");
    assert_eq!(checkpoint.attempt, Some(1));
    assert_eq!(checkpoint.message.as_deref(), Some("Payload validated"));
    assert_eq!(
        checkpoint.metadata,
        json!({"code": "payload_validated", "source": "crm"})
    );
    let progress: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "task_progress")
        .collect();
    assert_eq!(progress.len(), 2);
    assert_eq!(
        progress[0].message.as_deref(),
        Some("Downloading source data")
    );
    assert_eq!(progress[1].metadata, json!({"progress_percent": 50.0}));
    manager.stop().await.expect("stop");
}

pub async fn invalid_input_is_a_typed_error(db: &TestDb) {
    let manager = db.manager().await;
    manager.register("echo", echo).expect("register");
    let unknown = manager
        .enqueue("nobody", json!({}), TaskOptions::default())
        .await;
    assert!(
        matches!(&unknown, Err(Error::Runtime(RuntimeError::UnknownHandler { name })) if name == "nobody"),
        "{unknown:?}"
    );
    let cron = manager
        .cron("echo", "61 * * * *", json!({}), TaskOptions::default())
        .await;
    assert!(format!("{:?}", cron).contains("InvalidCron"), "{cron:?}");
    let zone = manager
        .cron(
            "echo",
            "0 9 * * *",
            json!({}),
            TaskOptions::default().timezone("Mars/Olympus"),
        )
        .await;
    assert!(
        format!("{:?}", zone).contains("InvalidTimezone"),
        "{zone:?}"
    );
    let status = "bogus".parse::<TaskStatus>();
    assert!(matches!(status, Err(DomainError::InvalidStatus { .. })));
    let delete_all = manager
        .delete_tasks(fib_flow::DeleteFilter::default())
        .await;
    assert!(matches!(
        delete_all,
        Err(Error::Invalid(DomainError::InvalidOption {
            field: "filter",
            ..
        }))
    ));
    let empty_name = manager.tasks_by_name("").await;
    assert!(matches!(
        empty_name,
        Err(Error::Invalid(DomainError::InvalidOption {
            field: "name",
            ..
        }))
    ));
    let zero_limit = HandlerOptions {
        max_concurrent_tasks: Some(0),
        ..HandlerOptions::default()
    };
    assert!(manager.register_with("zero", echo, zero_limit).is_err());
    for (options, field) in [
        (
            ManagerOptions {
                max_concurrent_tasks: 0,
                ..db.options()
            },
            "max_concurrent_tasks",
        ),
        (
            ManagerOptions {
                task_heartbeat_timeout: Duration::from_millis(100),
                task_heartbeat_interval: Duration::from_millis(100),
                ..db.options()
            },
            "task_heartbeat_timeout",
        ),
        (ManagerOptions::new("redis://localhost"), "db_connection"),
        (
            ManagerOptions {
                db_type: Some("oracle".into()),
                ..db.options()
            },
            "db_type",
        ),
    ] {
        let built = TaskManager::new(options).await;
        let message = format!("{:?}", built.as_ref().err());
        assert!(built.is_err(), "{field} must be rejected");
        assert!(
            message.contains(field) || message.contains("redis"),
            "{field}: {message}"
        );
    }
    manager.stop().await.expect("stop");
}

pub async fn queries_filter_and_delete(db: &TestDb) {
    let manager = db.manager().await;
    manager.register("alpha", echo).expect("register");
    manager.register("beta", echo).expect("register");
    let a1 = manager
        .enqueue("alpha", json!(1), TaskOptions::default().tag("batch-1"))
        .await
        .expect("enqueue");
    let a2 = manager
        .enqueue("alpha", json!(2), TaskOptions::default().tag("batch-2"))
        .await
        .expect("enqueue");
    let b1 = manager
        .enqueue("beta", json!(3), TaskOptions::default().tag("batch-1"))
        .await
        .expect("enqueue");
    let b2 = manager
        .enqueue("beta", json!(4), TaskOptions::default())
        .await
        .expect("enqueue");
    manager.pause_task(b2).await.expect("pause");

    let ids = |tasks: Vec<Task>| tasks.into_iter().map(|task| task.id).collect::<Vec<_>>();
    assert_eq!(
        ids(manager.tasks_by_name("alpha").await.expect("by name")),
        [a1, a2]
    );
    assert_eq!(
        ids(manager.tasks_by_tag("batch-1").await.expect("by tag")),
        [a1, b1]
    );
    assert_eq!(
        ids(manager
            .tasks_by_status(TaskStatus::Paused, None)
            .await
            .expect("by status")),
        [b2]
    );
    let filtered = manager
        .get_tasks(fib_flow::TaskQuery {
            name: Some("beta".into()),
            tag: Some("batch-1".into()),
            status: Some(TaskStatus::Pending),
            ..fib_flow::TaskQuery::default()
        })
        .await
        .expect("filtered");
    assert_eq!(ids(filtered), [b1]);
    assert_eq!(
        ids(manager
            .get_tasks(fib_flow::TaskQuery::default())
            .await
            .expect("all")),
        [a1, a2, b1, b2]
    );

    let stats = manager.task_stats_by_tag(None, None).await.expect("stats");
    let rows: Vec<(Option<&str>, &str, TaskStatus, u64)> = stats
        .iter()
        .map(|stat| {
            (
                stat.tag.as_deref(),
                stat.name.as_str(),
                stat.status,
                stat.count,
            )
        })
        .collect();
    assert!(
        rows.contains(&(Some("batch-1"), "alpha", TaskStatus::Pending, 1)),
        "{rows:?}"
    );
    assert!(
        rows.contains(&(Some("batch-1"), "beta", TaskStatus::Pending, 1)),
        "{rows:?}"
    );
    assert!(
        rows.contains(&(None, "beta", TaskStatus::Paused, 1)),
        "{rows:?}"
    );
    let one_tag = manager
        .task_stats_by_tag(Some("batch-2"), None)
        .await
        .expect("stats");
    assert_eq!(one_tag.len(), 1);
    assert_eq!(one_tag[0].count, 1);

    let deleted = manager
        .delete_tasks(fib_flow::DeleteFilter {
            tag: Some("batch-1".into()),
            ..fib_flow::DeleteFilter::default()
        })
        .await
        .expect("delete");
    assert_eq!(deleted, 2);
    assert!(manager.get_task(a1).await.expect("get").is_none());
    assert!(
        manager
            .task_events(a1, EventQuery::default())
            .await
            .expect("events")
            .is_empty(),
        "audit rows go with the task"
    );
    let rest = manager
        .delete_tasks(fib_flow::DeleteFilter {
            all: true,
            ..fib_flow::DeleteFilter::default()
        })
        .await
        .expect("delete all");
    assert_eq!(rest, 2);
    assert!(
        manager
            .get_tasks(fib_flow::TaskQuery::default())
            .await
            .expect("all")
            .is_empty()
    );
    manager.stop().await.expect("stop");
}

pub async fn tricky_strings_and_large_payloads_round_trip(db: &TestDb) {
    let manager = db.manager().await;
    let name = "it's a \"quoted\" \\ name % _ ü 🚀";
    let tag = "tag'; DROP TABLE fib_flow_tasks; -- %_\\";
    manager.register(name, echo).expect("register");
    let big = "x".repeat(1024 * 1024);
    let payload = json!({"quote": "'\"", "backslash": "\\\\", "percent": "100%", "unicode": "日本語 ✓", "big": big});
    let id = manager
        .enqueue(name, payload.clone(), TaskOptions::default().tag(tag))
        .await
        .expect("enqueue");
    let stored = manager.get_task(id).await.expect("get").expect("exists");
    assert_eq!(stored.payload, payload);
    assert_eq!(stored.tag.as_deref(), Some(tag));
    assert_eq!(manager.tasks_by_tag(tag).await.expect("by tag").len(), 1);
    assert_eq!(manager.tasks_by_name(name).await.expect("by name").len(), 1);
    manager.start().await.expect("start");
    let done = wait_status(&manager, id, TaskStatus::Completed).await;
    assert_eq!(done.result, Some(payload));
    manager.stop().await.expect("stop");
}

pub async fn child_failure_policy_defaults_to_resume(db: &TestDb) {
    let manager = db.manager().await;
    manager.register("echo", echo).expect("register");
    let id = manager
        .enqueue("echo", json!({}), TaskOptions::default())
        .await
        .expect("enqueue");
    let task = manager.get_task(id).await.expect("get").expect("exists");
    assert_eq!(task.child_failure_policy, ChildFailurePolicy::Resume);
    manager.stop().await.expect("stop");
}
