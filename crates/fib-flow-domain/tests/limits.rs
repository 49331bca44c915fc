//! The size limits every backend shares (issue 9): values that could not be stored or read back
//! are refused with a typed error naming the field and the limit, before any database sees them.

mod common;

use std::time::Duration;

use common::*;
use fib_flow_domain::limits::{MAX_JSON_DEPTH, MAX_NAME_BYTES, MAX_VALUE_BYTES};
use fib_flow_domain::options::{self, TaskDefaults};
use fib_flow_domain::time::duration_millis;
use fib_flow_domain::{
    AttemptChange, AttemptOutcome, Command, DomainError, EventType, HandlerOptions, ManagerOptions,
    NewTask, RetryBackoff, RetryPolicy, TaskOptions, TaskStatus, TaskType, apply,
};
use serde_json::{Value, json};

fn nested(depth: usize) -> Value {
    let mut value = json!("leaf");
    for _ in 0..depth {
        value = json!({ "n": value });
    }
    value
}

fn new_task(name: &str, payload: Value) -> NewTask {
    NewTask {
        name: name.to_owned(),
        task_type: TaskType::Async,
        priority: 0,
        payload,
        tag: None,
        next_run_time: t0(),
        timeout: None,
        max_retries: 1,
        retry_interval: Duration::ZERO,
        retry_backoff: RetryBackoff::Fixed,
        cron_expr: None,
        timezone: None,
        root_id: None,
        parent_id: None,
        parent_round: None,
        created_at: t0(),
    }
}

#[test]
fn new_tasks_need_a_bounded_name_and_tag_and_a_storable_payload() {
    assert_eq!(new_task("job", nested(MAX_JSON_DEPTH)).validate(), Ok(()));
    let empty = new_task("", json!({})).validate();
    assert!(
        matches!(empty, Err(DomainError::InvalidOption { field: "name", .. })),
        "{empty:?}"
    );
    assert_eq!(
        new_task(&"n".repeat(10_000), json!({})).validate(),
        Err(DomainError::TooLong {
            field: "name",
            len: 10_000,
            max: MAX_NAME_BYTES
        })
    );
    let long_tag = NewTask {
        tag: Some("t".repeat(256)),
        ..new_task("job", json!({}))
    };
    assert!(matches!(
        long_tag.validate(),
        Err(DomainError::TooLong {
            field: "tag",
            len: 256,
            max: 255
        })
    ));
    let empty_tag = NewTask {
        tag: Some(String::new()),
        ..new_task("job", json!({}))
    };
    assert!(matches!(
        empty_tag.validate(),
        Err(DomainError::InvalidOption { field: "tag", .. })
    ));
    assert_eq!(
        new_task("job", nested(200)).validate(),
        Err(DomainError::JsonTooDeep {
            field: "payload",
            depth: 200,
            max: MAX_JSON_DEPTH
        })
    );
    let big = new_task("job", Value::String("x".repeat(MAX_VALUE_BYTES))).validate();
    assert!(
        matches!(
            big,
            Err(DomainError::TooLong {
                field: "payload",
                max: MAX_VALUE_BYTES,
                ..
            })
        ),
        "{big:?}"
    );
    let message = new_task("job", nested(200))
        .validate()
        .expect_err("too deep")
        .to_string();
    assert!(
        message.contains("payload") && message.contains("127"),
        "{message}"
    );
}

#[test]
fn a_result_that_cannot_be_read_back_fails_the_attempt_instead_of_being_stored() {
    let task = running(async_task(), 1);
    let t = apply(
        &task,
        Command::Complete {
            attempt: 1,
            result: nested(200),
        },
        at(30),
    )
    .expect("the transition is a failure, not an error");
    assert_eq!(t.task.result, None);
    let error = t.task.error.clone().expect("error text");
    assert!(
        error.contains("result") && error.contains("200") && error.contains("127"),
        "{error}"
    );
    assert_eq!(event_types(&t)[0], EventType::TaskFailed);
    match &t.attempt {
        Some(AttemptChange::Close(close)) => assert_eq!(close.outcome, AttemptOutcome::Failed),
        other => panic!("expected a closed attempt, got {other:?}"),
    }
    assert_ne!(t.task.status, TaskStatus::Completed);

    // The deepest readable result is stored as given.
    let ok = apply(
        &task,
        Command::Complete {
            attempt: 1,
            result: nested(MAX_JSON_DEPTH),
        },
        at(30),
    )
    .expect("complete");
    assert_eq!(ok.task.status, TaskStatus::Completed);
    assert_eq!(ok.task.result, Some(nested(MAX_JSON_DEPTH)));
}

#[test]
fn suspension_metadata_must_fit_inside_its_event() {
    let suspend = |metadata: Value, reason: &str| Command::Suspend {
        attempt: 1,
        reason: reason.to_owned(),
        metadata: Some(metadata),
        context: None,
    };
    let task = running(async_task(), 1);
    // Stored in the row and one level down in the task_suspended event's metadata.
    let t = apply(&task, suspend(nested(MAX_JSON_DEPTH - 1), "wait"), at(2)).expect("suspend");
    let text = serde_json::to_string(&t.events[0].metadata).expect("serialize");
    assert!(serde_json::from_str::<Value>(&text).is_ok());
    assert_eq!(
        apply(&task, suspend(nested(MAX_JSON_DEPTH), "wait"), at(2)).expect_err("too deep"),
        DomainError::JsonTooDeep {
            field: "suspension.metadata",
            depth: MAX_JSON_DEPTH,
            max: MAX_JSON_DEPTH - 1
        }
    );
    assert!(matches!(
        apply(&task, suspend(json!({}), &"r".repeat(300)), at(2)),
        Err(DomainError::TooLong {
            field: "suspension.reason",
            len: 300,
            max: 255
        })
    ));
}

#[test]
fn worker_and_pod_ids_are_bounded_before_start() {
    let base = ManagerOptions::new("sqlite::memory:");
    assert_eq!(base.validate(), Ok(()));
    for (options, field) in [
        (
            ManagerOptions {
                worker_id: Some("w".repeat(256)),
                ..base.clone()
            },
            "worker_id",
        ),
        (
            ManagerOptions {
                pod_id: Some("p".repeat(1000)),
                ..base.clone()
            },
            "pod_id",
        ),
    ] {
        match options.validate() {
            Err(DomainError::TooLong { field: f, max, .. }) => {
                assert_eq!((f, max), (field, MAX_NAME_BYTES));
            }
            other => panic!("{field}: expected TooLong, got {other:?}"),
        }
    }
    let longest = ManagerOptions {
        worker_id: Some("w".repeat(255)),
        pod_id: Some("p".repeat(255)),
        ..base
    };
    assert_eq!(longest.validate(), Ok(()));
}

#[test]
fn sub_millisecond_timeouts_are_refused_everywhere() {
    let tiny = Duration::from_micros(500);
    let timeout_error = |result: Result<(), DomainError>| {
        assert!(
            matches!(
                result,
                Err(DomainError::InvalidOption {
                    field: "timeout",
                    ..
                })
            ),
            "{result:?}"
        );
    };
    timeout_error(
        ManagerOptions {
            timeout: Some(tiny),
            ..ManagerOptions::new("sqlite::memory:")
        }
        .validate(),
    );
    timeout_error(
        HandlerOptions {
            timeout: Some(Some(tiny)),
            ..HandlerOptions::default()
        }
        .validate(),
    );
    let defaults = TaskDefaults {
        timeout: None,
        priority: 0,
        retry: RetryPolicy::fixed(1, Duration::ZERO),
    };
    timeout_error(
        options::resolve(
            &defaults,
            &HandlerOptions::default(),
            &TaskOptions::default().timeout(tiny),
        )
        .map(drop),
    );
    let resolved = options::resolve(
        &defaults,
        &HandlerOptions::default(),
        &TaskOptions::default().timeout(Duration::from_millis(1)),
    )
    .expect("1 ms is the shortest limit");
    assert_eq!(resolved.timeout, Some(Duration::from_millis(1)));
}

#[test]
fn stored_durations_round_fractions_of_a_millisecond_up() {
    assert_eq!(duration_millis(Duration::ZERO), 0);
    assert_eq!(duration_millis(Duration::from_millis(7)), 7);
    assert_eq!(duration_millis(Duration::from_micros(1_500)), 2);
    assert_eq!(duration_millis(Duration::from_nanos(1)), 1);
    assert_eq!(duration_millis(Duration::MAX), i64::MAX);
}
