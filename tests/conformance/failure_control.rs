//! Failure control (issue 11): permanent errors that skip retries, snooze, `retry_task` for
//! dead tasks, and exponential back-off's default base.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use fib_flow::{
    AttemptOutcome, Error, HandlerError, ManualClock, Outcome, RetryBackoff, RuntimeError,
    TaskHandle, TaskManager, TaskOptions, TaskStatus, json, permanent,
};

use crate::harness::{TestDb, attempt_outcomes, event_types, poll_until, wait_status};

const LONG: Duration = Duration::from_secs(20);

fn start_instant() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 4, 1, 8, 0, 0)
        .single()
        .expect("valid instant")
}

async fn manual_manager(db: &TestDb) -> (TaskManager, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(start_instant()));
    (
        db.manager_with(db.options(), Some(clock.clone())).await,
        clock,
    )
}

/// Registers `name`: its first `failures` runs fail with `error()`, later runs succeed.
fn register_flaky(
    manager: &TaskManager,
    name: &str,
    failures: usize,
    error: fn() -> HandlerError,
) -> Arc<AtomicUsize> {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    manager
        .register(name, move |_task: TaskHandle| {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) < failures {
                    Err::<Outcome, HandlerError>(error())
                } else {
                    Ok(json!("ok").into())
                }
            }
        })
        .expect("register");
    runs
}

pub async fn a_permanent_error_skips_the_remaining_retries(db: &TestDb) {
    let manager = db.manager().await;
    let runs = register_flaky(&manager, "email", usize::MAX, || {
        permanent("invalid address: nobody@")
    });
    let id = manager
        .enqueue("email", json!({}), TaskOptions::default().max_retries(5))
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let task = wait_status(&manager, id, TaskStatus::PermanentlyFailed).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "no retry");
    assert_eq!(task.retry_count, 0);
    assert_eq!(task.error.as_deref(), Some("invalid address: nobody@"));
    let types = event_types(&manager, id).await;
    assert_eq!(
        types[types.len() - 2..],
        [
            "task_failed".to_owned(),
            "task_permanently_failed".to_owned()
        ]
    );
    let events = manager
        .task_events(id, fib_flow::EventQuery::default())
        .await
        .expect("events");
    let last = events.last().expect("events");
    assert_eq!(last.metadata["retry_skipped"], json!(true));

    // A cron task pauses instead.
    runs.store(0, Ordering::SeqCst);
    let cron = manager
        .cron(
            "email",
            "* * * * *",
            json!({}),
            TaskOptions::default().max_retries(5),
        )
        .await
        .expect("cron");
    let paused = poll_until("the cron task to pause", LONG, || async {
        let task = manager.get_task(cron).await.expect("get").expect("exists");
        (task.status == TaskStatus::Paused).then_some(task)
    });
    // A cron task first runs at its next minute: run it now by resuming it from a pause.
    manager.pause_task(cron).await.expect("pause");
    manager.resume_task(cron, None).await.expect("resume");
    let paused = paused.await;
    assert_eq!(paused.retry_count, 0);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    manager.stop().await.expect("stop");
}

pub async fn a_snoozed_task_runs_again_later_without_using_an_attempt(db: &TestDb) {
    let (manager, clock) = manual_manager(db).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    manager
        .register("poll", move |task: TaskHandle| {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Ok::<Outcome, HandlerError>(Outcome::snooze(Duration::from_secs(30)));
                }
                Ok(json!({ "attempt": task.attempt() }).into())
            }
        })
        .expect("register");
    let id = manager
        .enqueue("poll", json!({}), TaskOptions::default().max_retries(1))
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let snoozed = poll_until("the snooze", LONG, || async {
        let task = manager.get_task(id).await.expect("get").expect("exists");
        (task.status == TaskStatus::Pending && task.attempt == 1).then_some(task)
    })
    .await;
    assert_eq!(snoozed.next_run_time, clock.now() + Duration::from_secs(30));
    assert_eq!(snoozed.retry_count, 0);
    assert!(
        event_types(&manager, id)
            .await
            .contains(&"task_snoozed".to_owned())
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "not due before the snooze ends"
    );

    clock.advance(Duration::from_secs(30));
    let task = wait_status(&manager, id, TaskStatus::Completed).await;
    assert_eq!(task.result, Some(json!({ "attempt": 2 })));
    assert_eq!(
        task.retry_count, 0,
        "a snooze is not a retry, even with one attempt"
    );
    assert_eq!(
        attempt_outcomes(&manager, id).await,
        vec![
            Some(AttemptOutcome::Pending),
            Some(AttemptOutcome::Completed)
        ]
    );
    manager.stop().await.expect("stop");
}

pub async fn retry_task_revives_a_dead_task_with_its_history(db: &TestDb) {
    let manager = db.manager().await;
    let runs = register_flaky(&manager, "flaky", 1, || "upstream down".into());
    let id = manager
        .enqueue("flaky", json!({}), TaskOptions::default().max_retries(1))
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    wait_status(&manager, id, TaskStatus::PermanentlyFailed).await;

    let revived = manager
        .retry_task(id, Some("upstream fixed".to_owned()))
        .await
        .expect("retry_task");
    assert_eq!(revived.retry_count, 0);
    let task = wait_status(&manager, id, TaskStatus::Completed).await;
    assert_eq!(task.error, None, "the success clears the error");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let types = event_types(&manager, id).await;
    let retried = types
        .iter()
        .position(|t| t == "task_retried")
        .expect("audited");
    assert!(types[..retried].contains(&"task_permanently_failed".to_owned()));
    assert_eq!(
        attempt_outcomes(&manager, id).await,
        vec![
            Some(AttemptOutcome::Failed),
            Some(AttemptOutcome::Completed)
        ]
    );

    let refused = manager.retry_task(id, None).await;
    assert!(
        matches!(&refused, Err(Error::Runtime(RuntimeError::InvalidInput(error))) if error.to_string().contains("retry_task")),
        "{refused:?}"
    );
    manager.stop().await.expect("stop");
}

pub async fn exponential_backoff_has_a_default_base(db: &TestDb) {
    let (manager, clock) = manual_manager(db).await;
    register_flaky(&manager, "flaky", usize::MAX, || "boom".into());
    let options = TaskOptions::default()
        .max_retries(3)
        .retry_backoff(RetryBackoff::Exponential);
    let id = manager
        .enqueue("flaky", json!({}), options)
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let retrying = poll_until("the retry to be scheduled", LONG, || async {
        let task = manager.get_task(id).await.expect("get").expect("exists");
        (task.retry_count == 1 && task.status == TaskStatus::Pending).then_some(task)
    })
    .await;
    // 5 s base, shortened by up to half by jitter.
    let delay = retrying.next_run_time - clock.now();
    assert!(
        delay >= chrono::TimeDelta::milliseconds(2500) && delay <= chrono::TimeDelta::seconds(5),
        "{delay:?}"
    );
    manager.stop().await.expect("stop");
}
