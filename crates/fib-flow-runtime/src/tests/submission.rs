//! Registration and submission: option resolution, typed errors, cron scheduling.

use std::time::Duration;

use fib_flow_domain::{DomainError, HandlerOptions, RetryBackoff, TaskId, TaskOptions, TaskType};
use fib_flow_ports::{HandlerError, MockTaskStore, TaskHandle};
use serde_json::json;

use super::*;
use crate::RuntimeError;

fn noop() -> impl Fn(TaskHandle) -> std::future::Ready<Result<serde_json::Value, HandlerError>>
+ Send
+ Sync
+ 'static {
    |_task: TaskHandle| std::future::ready(Ok(json!(null)))
}

fn inserted(rec: &Rec) -> Vec<NewTask> {
    rec.log()
        .into_iter()
        .filter_map(|event| match event {
            Ev::Insert(tasks) => Some(tasks),
            _ => None,
        })
        .flatten()
        .collect()
}

#[tokio::test]
async fn enqueue_resolves_instance_then_handler_then_global() {
    let mut options = options();
    options.max_retries = 3;
    options.retry_interval = Duration::from_secs(1);
    options.timeout = Some(Duration::from_secs(60));
    let (engine, rec, clock) = engine_with(options);
    engine
        .register_with(
            "typed",
            noop(),
            HandlerOptions {
                priority: Some(5),
                max_retries: Some(2),
                timeout: Some(Some(Duration::from_secs(120))),
                retry_backoff: Some(RetryBackoff::Exponential),
                ..HandlerOptions::default()
            },
        )
        .unwrap();
    engine.register("plain", noop()).expect("register");
    clock.advance(Duration::from_millis(1500));
    let instance = TaskOptions::default()
        .priority(9)
        .retry_interval(Duration::from_secs(30))
        .tag("batch-1")
        .delay(Duration::from_secs(10));
    engine
        .enqueue("typed", json!({ "n": 1 }), instance)
        .await
        .unwrap();
    engine
        .enqueue("plain", json!(null), TaskOptions::default().no_timeout())
        .await
        .unwrap();
    let now = t0() + chrono::TimeDelta::milliseconds(1500);
    let [typed, plain] = &inserted(&rec)[..] else {
        panic!("two inserts expected");
    };
    assert_eq!(typed.name, "typed");
    assert_eq!(typed.task_type, TaskType::Async);
    assert_eq!(typed.priority, 9, "instance");
    assert_eq!(typed.retry_interval, Duration::from_secs(30), "instance");
    assert_eq!(typed.max_retries, 2, "handler");
    assert_eq!(typed.timeout, Some(Duration::from_secs(120)), "handler");
    assert_eq!(typed.retry_backoff, RetryBackoff::Exponential, "handler");
    assert_eq!(typed.tag.as_deref(), Some("batch-1"));
    assert_eq!(typed.payload, json!({ "n": 1 }));
    assert_eq!(typed.next_run_time, now + chrono::TimeDelta::seconds(10));
    assert_eq!(typed.created_at, now);
    assert_eq!(
        (typed.parent_id, typed.root_id, typed.cron_expr.as_ref()),
        (None, None, None)
    );
    assert_eq!(plain.priority, 0, "no global priority");
    assert_eq!(plain.max_retries, 3, "global");
    assert_eq!(plain.retry_interval, Duration::from_secs(1), "global");
    assert_eq!(plain.timeout, None, "instance: no timeout");
    assert_eq!(plain.tag, None);
    assert_eq!(plain.next_run_time, now);
}

#[tokio::test]
async fn enqueue_many_is_one_store_call_and_all_or_nothing() {
    let (engine, rec, _clock) = engine();
    engine.register("a", noop()).expect("register");
    let ids = engine
        .enqueue_many(vec![
            ("a".into(), json!(1), TaskOptions::default()),
            ("a".into(), json!(2), TaskOptions::default().priority(2)),
        ])
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(
        rec.count(|event| matches!(event, Ev::Insert(tasks) if tasks.len() == 2)),
        1
    );
    let refused = engine
        .enqueue_many(vec![
            ("a".into(), json!(1), TaskOptions::default()),
            ("b".into(), json!(2), TaskOptions::default()),
        ])
        .await;
    assert!(matches!(refused, Err(RuntimeError::UnknownHandler { name }) if name == "b"));
    assert_eq!(
        rec.count(|event| matches!(event, Ev::Insert(_))),
        1,
        "nothing inserted"
    );
}

#[tokio::test]
async fn unknown_handler_and_misplaced_options_are_typed_errors() {
    // A bare mock: any store call would panic, proving validation happens first.
    let mut mock = MockTaskStore::new();
    mock.expect_insert_tasks().never();
    let rec = Rec::new();
    let engine = Engine::new(
        options(),
        TestStore::new(mock, rec),
        Arc::new(ManualClock::new(t0())),
    )
    .unwrap();
    engine.register("known", noop()).expect("register");
    let unknown = engine
        .enqueue("nobody", json!({}), TaskOptions::default())
        .await;
    assert!(matches!(&unknown, Err(RuntimeError::UnknownHandler { name }) if name == "nobody"));
    assert_eq!(
        unknown.unwrap_err().to_string(),
        "No handler registered for task: nobody"
    );
    let cron = engine
        .cron("nobody", "* * * * *", json!({}), TaskOptions::default())
        .await;
    assert!(matches!(cron, Err(RuntimeError::UnknownHandler { .. })));
    let zone = engine
        .enqueue(
            "known",
            json!({}),
            TaskOptions::default().timezone("Europe/Paris"),
        )
        .await;
    assert!(
        matches!(
            zone,
            Err(RuntimeError::InvalidInput(DomainError::InvalidOption {
                field: "timezone",
                ..
            }))
        ),
        "{zone:?}"
    );
    let delay = engine
        .cron(
            "known",
            "* * * * *",
            json!({}),
            TaskOptions::default().delay(Duration::from_secs(5)),
        )
        .await;
    assert!(
        matches!(
            delay,
            Err(RuntimeError::InvalidInput(DomainError::InvalidOption {
                field: "delay",
                ..
            }))
        ),
        "{delay:?}"
    );
    let zero = engine
        .enqueue(
            "known",
            json!({}),
            TaskOptions::default().timeout(Duration::ZERO),
        )
        .await;
    assert!(matches!(
        zero,
        Err(RuntimeError::InvalidInput(DomainError::InvalidOption {
            field: "timeout",
            ..
        }))
    ));
    let info = engine.task_info("nobody");
    assert!(matches!(info, Err(RuntimeError::UnknownHandler { .. })));
}

#[tokio::test]
async fn cron_rejects_a_bad_expression_at_submit_and_schedules_the_next_occurrence() {
    let (engine, rec, _clock) = engine();
    engine.register("tick", noop()).expect("register");
    let bad = engine
        .cron("tick", "61 * * * *", json!({}), TaskOptions::default())
        .await;
    assert!(
        matches!(&bad, Err(RuntimeError::InvalidInput(DomainError::InvalidCron { expr, .. })) if expr == "61 * * * *"),
        "{bad:?}"
    );
    assert!(inserted(&rec).is_empty());
    let id = engine
        .cron(
            "tick",
            "* * * * *",
            json!({ "k": 1 }),
            TaskOptions::default().tag("cron"),
        )
        .await
        .unwrap();
    assert!(id.0 > 0);
    let [task] = &inserted(&rec)[..] else {
        panic!("one insert expected");
    };
    assert_eq!(task.task_type, TaskType::Cron);
    assert_eq!(task.cron_expr.as_deref(), Some("* * * * *"));
    assert_eq!(task.timezone, None);
    assert_eq!(
        task.next_run_time,
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 1, 0).single().unwrap(),
        "first occurrence strictly after 00:00:30"
    );
    assert_eq!(task.tag.as_deref(), Some("cron"));
    let _ = TaskId(0);
}

#[test]
fn registration_validates_options_and_describes_handlers() {
    let (engine, _rec, _clock) = engine();
    let zero = HandlerOptions {
        max_concurrent_tasks: Some(0),
        ..HandlerOptions::default()
    };
    let refused = engine.register_with("zero", noop(), zero);
    assert!(matches!(
        refused,
        Err(RuntimeError::InvalidInput(DomainError::InvalidOption {
            field: "max_concurrent_tasks",
            ..
        }))
    ));
    assert!(
        engine.task_info("zero").is_err(),
        "a refused registration is not stored"
    );
    engine
        .register_with(
            "described",
            noop(),
            HandlerOptions {
                description: Some("Resizes images".into()),
                ..HandlerOptions::default()
            },
        )
        .unwrap();
    engine.register("bare", noop()).expect("register");
    let info = engine.task_info("described").unwrap();
    assert_eq!(
        (info.name.as_str(), info.description.as_str()),
        ("described", "Resizes images")
    );
    assert_eq!(engine.task_info("bare").unwrap().description, "");
    assert_eq!(engine.unregister(&["bare", "described", "bare"]), 2);
    assert!(engine.task_info("bare").is_err());
}

#[test]
fn engine_validates_options_and_generates_a_worker_id() {
    let rec = Rec::new();
    let store = || TestStore::new(MockTaskStore::new(), rec.clone());
    let clock: Arc<dyn fib_flow_ports::Clock> = Arc::new(ManualClock::new(t0()));
    let bad = Engine::new(
        ManagerOptions {
            max_concurrent_tasks: 0,
            ..options()
        },
        store(),
        clock.clone(),
    );
    assert!(
        matches!(
            &bad,
            Err(RuntimeError::InvalidInput(DomainError::InvalidOption {
                field: "max_concurrent_tasks",
                ..
            }))
        ),
        "{bad:?}"
    );
    assert!(
        bad.unwrap_err()
            .to_string()
            .contains("max_concurrent_tasks")
    );
    let generated = Engine::new(
        ManagerOptions {
            worker_id: None,
            ..options()
        },
        store(),
        clock.clone(),
    )
    .unwrap();
    let id = generated.worker_id().strip_prefix("worker-").unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    let given = Engine::new(options(), store(), clock).unwrap();
    assert_eq!(given.worker_id(), "w1");
    assert_eq!(given.options().worker_id.as_deref(), Some("w1"));
    assert_eq!(given.state(), crate::ManagerState::Init);
}
