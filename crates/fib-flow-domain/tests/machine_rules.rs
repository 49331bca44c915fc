//! Example-based tests of the state machine, one group per command.

mod common;

use std::time::Duration;

use common::*;
use fib_flow_domain::machine::Guard;
use fib_flow_domain::{
    AttemptChange, AttemptClose, AttemptOutcome, ChildFailurePolicy, ChildSettlement, Command,
    DomainError, EventType, ExpiryKind, NewAttempt, ParentEffect, RetryBackoff, Task, TaskId,
    TaskStatus, TaskType, apply,
};
use serde_json::{Value, json};

fn claim(worker: &str) -> Command {
    Command::Claim {
        worker_id: worker.to_owned(),
    }
}

fn complete(attempt: i32, result: Value) -> Command {
    Command::Complete { attempt, result }
}

fn fail(attempt: i32, error: &str) -> Command {
    Command::Fail {
        attempt,
        error: error.to_owned(),
        timed_out: false,
        jitter: 0.0,
    }
}

fn closed(transition: &fib_flow_domain::Transition) -> &AttemptClose {
    match &transition.attempt {
        Some(AttemptChange::Close(close)) => close,
        other => panic!("expected a closed attempt, got {other:?}"),
    }
}

// ---- claim -----------------------------------------------------------------------------------

#[test]
fn first_claim_opens_attempt_one_and_sets_the_deadline() {
    let mut task = async_task();
    task.current_stage_name = Some("old".to_owned());
    task.progress_text = Some("half".to_owned());
    task.progress_percent = Some(50.0);
    let now = at(5);
    let t = apply(&task, claim("worker-a"), now).expect("claim");

    assert_eq!(
        t.guard,
        Guard {
            status: TaskStatus::Pending,
            attempt: 0
        }
    );
    assert_eq!(t.task.status, TaskStatus::Running);
    assert_eq!(t.task.attempt, 1);
    assert_eq!(t.task.worker_id.as_deref(), Some("worker-a"));
    assert_eq!(t.task.start_time, Some(now));
    assert_eq!(t.task.deadline, Some(at(65)));
    assert_eq!(t.task.last_active_time, Some(now));
    assert_eq!(t.task.current_stage_name, None);
    assert_eq!(t.task.progress_text, None);
    assert_eq!(t.task.progress_percent, None);
    assert_eq!(
        t.attempt,
        Some(AttemptChange::Open(NewAttempt {
            task_id: TaskId(7),
            attempt: 1,
            worker_id: "worker-a".to_owned(),
            started_at: now,
        }))
    );
    assert_eq!(
        event_types(&t),
        vec![EventType::TaskClaimed, EventType::TaskStarted]
    );
    for event in &t.events {
        assert_eq!(event.attempt, Some(1));
        assert_eq!(event.worker_id.as_deref(), Some("worker-a"));
        assert_eq!(event.from_status, Some(TaskStatus::Pending));
        assert_eq!(event.to_status, Some(TaskStatus::Running));
        assert_eq!(event.event_time, now);
        assert_eq!(event.task_id, TaskId(7));
        assert_eq!(event.root_id, TaskId(7));
        assert_eq!(event.parent_id, None);
    }
    assert_eq!(
        t.events[0].message.as_deref(),
        Some("Task job claimed by worker-a")
    );
    assert_eq!(t.events[0].metadata, json!({"name": "job"}));
    assert_eq!(
        t.events[1].message.as_deref(),
        Some("Task job started by worker-a")
    );
    assert_eq!(
        t.events[1].metadata,
        json!({"name": "job", "retry_count": 0})
    );
    assert_eq!(t.task.last_event_time, Some(now));
    assert_eq!(t.task.last_event_type.as_deref(), Some("task_started"));
}

#[test]
fn claim_of_a_retry_emits_retry_started() {
    let task = Task {
        retry_count: 2,
        attempt: 2,
        ..async_task()
    };
    let t = apply(&task, claim("worker-b"), at(0)).expect("claim");
    assert_eq!(t.task.attempt, 3);
    assert_eq!(
        event_types(&t),
        vec![
            EventType::TaskClaimed,
            EventType::TaskStarted,
            EventType::TaskRetryStarted
        ]
    );
    assert_eq!(
        t.events[2].message.as_deref(),
        Some("Task job retry attempt 2 started by worker-b")
    );
    assert_eq!(
        t.events[2].metadata,
        json!({"name": "job", "retry_count": 2})
    );
    assert!(t.events.iter().all(|e| e.attempt == Some(3)));
    assert_eq!(
        t.task.last_event_type.as_deref(),
        Some("task_retry_started")
    );
}

#[test]
fn claim_without_timeout_has_no_deadline() {
    let task = Task {
        timeout: None,
        ..async_task()
    };
    let t = apply(&task, claim("w"), at(1)).expect("claim");
    assert_eq!(t.task.deadline, None);
}

#[test]
fn claim_needs_a_due_pending_task() {
    let not_due = Task {
        next_run_time: at(10),
        ..async_task()
    };
    let err = apply(&not_due, claim("w"), at(9)).expect_err("not due");
    assert_eq!(
        err,
        DomainError::IllegalTransition {
            task_id: TaskId(7),
            from: TaskStatus::Pending,
            command: "claim"
        }
    );
    apply(&not_due, claim("w"), at(10)).expect("due exactly at next_run_time");

    for status in TaskStatus::ALL {
        if status == TaskStatus::Pending {
            continue;
        }
        let task = Task {
            status,
            ..async_task()
        };
        let err = apply(&task, claim("w"), at(0)).expect_err("not pending");
        assert!(is_illegal(&err), "{status}: {err:?}");
    }
}

// ---- complete --------------------------------------------------------------------------------

#[test]
fn async_completion_stores_the_result_faithfully_and_clears_the_error() {
    for result in [
        json!(null),
        json!(0),
        json!(false),
        json!(""),
        json!({"a": [1, 2]}),
    ] {
        let task = Task {
            error: Some("earlier failure".to_owned()),
            retry_count: 1,
            ..running(async_task(), 2)
        };
        let t = apply(&task, complete(2, result.clone()), at(30)).expect("complete");
        assert_eq!(t.task.status, TaskStatus::Completed);
        assert_eq!(t.task.result, Some(result.clone()));
        assert_eq!(t.task.error, None);
        assert_eq!(t.task.deadline, None);
        assert_eq!(t.task.last_active_time, Some(at(30)));
        assert_eq!(
            t.attempt,
            Some(AttemptChange::Close(AttemptClose {
                task_id: TaskId(7),
                attempt: 2,
                ended_at: at(30),
                outcome: AttemptOutcome::Completed,
                error: None,
                timeout_flag: false,
            }))
        );
        assert_eq!(event_types(&t), vec![EventType::TaskCompleted]);
        let event = &t.events[0];
        assert_eq!(event.attempt, Some(2));
        assert_eq!(event.worker_id.as_deref(), Some("worker-a"));
        assert_eq!(
            event.message.as_deref(),
            Some("Task job status changed from running to completed")
        );
        assert_eq!(
            event.metadata,
            json!({"error": null, "retry_count": 1, "next_run_time": null})
        );
        assert_eq!(t.parent, None);
    }
}

#[test]
fn child_completion_reports_to_its_parent_round() {
    let task = running(child_task(), 1);
    let t = apply(&task, complete(1, json!(5)), at(3)).expect("complete");
    assert_eq!(
        t.parent,
        Some(ParentEffect {
            parent_id: TaskId(7),
            child_id: TaskId(8),
            round: 2,
            failed: false
        })
    );
    assert!(t.events.iter().all(|e| e.root_id == TaskId(1)));
    assert!(t.events.iter().all(|e| e.parent_id == Some(TaskId(7))));
}

#[test]
fn cron_success_reschedules_from_completion_time() {
    let task = Task {
        stage: 2,
        retry_count: 1,
        error: Some("old".to_owned()),
        context: Some(vec![1, 2]),
        ..running(cron_task(), 4)
    };
    let now = at(125); // 00:02:05
    let t = apply(&task, complete(4, json!(false)), now).expect("complete");
    assert_eq!(t.task.status, TaskStatus::Pending);
    assert_eq!(t.task.stage, 0);
    assert_eq!(t.task.retry_count, 0);
    assert_eq!(t.task.result, Some(json!(false)));
    assert_eq!(t.task.error, None);
    assert_eq!(t.task.context, None);
    assert_eq!(t.task.deadline, None);
    assert_eq!(t.task.next_run_time, at(3600));
    assert_eq!(closed(&t).outcome, AttemptOutcome::Completed);
    assert_eq!(event_types(&t), vec![EventType::TaskStatusChanged]);
    let event = &t.events[0];
    assert_eq!(event.stage, 0);
    assert_eq!(event.attempt, Some(4));
    assert_eq!(event.from_status, Some(TaskStatus::Running));
    assert_eq!(event.to_status, Some(TaskStatus::Pending));
    assert_eq!(
        event.metadata,
        json!({"error": null, "retry_count": 0, "next_run_time": "2026-01-01T01:00:00.000Z"})
    );
    assert_eq!(t.parent, None);
}

#[test]
fn cron_reschedule_uses_the_task_time_zone() {
    let task = Task {
        cron_expr: Some("0 9 * * *".to_owned()),
        timezone: Some("America/New_York".to_owned()),
        ..running(cron_task(), 1)
    };
    let t = apply(&task, complete(1, json!(1)), at(0)).expect("complete");
    assert_eq!(t.task.next_run_time, at(14 * 3600));
}

#[test]
fn cron_task_with_a_broken_expression_cannot_complete() {
    let task = Task {
        cron_expr: Some("not a cron".to_owned()),
        ..running(cron_task(), 1)
    };
    let err = apply(&task, complete(1, json!(1)), at(0)).expect_err("bad cron");
    assert!(matches!(err, DomainError::InvalidCron { .. }), "{err:?}");
    let task = Task {
        cron_expr: None,
        ..running(cron_task(), 1)
    };
    let err = apply(&task, complete(1, json!(1)), at(0)).expect_err("no cron");
    assert!(matches!(err, DomainError::InvalidCron { .. }), "{err:?}");
}

// ---- fencing ---------------------------------------------------------------------------------

#[test]
fn stale_attempts_are_rejected_by_every_fenced_command() {
    let task = running(async_task(), 3);
    let commands = |attempt: i32| {
        vec![
            complete(attempt, json!(1)),
            fail(attempt, "boom"),
            Command::Expire {
                attempt,
                kind: ExpiryKind::Heartbeat,
                jitter: 0.0,
            },
            Command::AwaitChildren {
                attempt,
                child_ids: vec![TaskId(9)],
                child_names: vec!["c".to_owned()],
                context: None,
                policy: ChildFailurePolicy::Resume,
            },
            Command::Suspend {
                attempt,
                reason: "approval".to_owned(),
                metadata: None,
                context: None,
            },
            Command::Release {
                attempt,
                reason: "worker_stopping".to_owned(),
            },
            Command::Recover {
                attempt,
                by_worker_id: "w2".to_owned(),
                by_pod_id: None,
            },
        ]
    };
    for command in commands(2) {
        let err = apply(&task, command.clone(), at(1)).expect_err("stale");
        assert_eq!(
            err,
            DomainError::StaleAttempt {
                task_id: TaskId(7),
                attempt: 2,
                current_attempt: 3,
                status: TaskStatus::Running
            },
            "{}",
            command.name()
        );
    }
    // The right attempt number of a task that no longer runs is stale too.
    let paused = Task {
        status: TaskStatus::Paused,
        ..task.clone()
    };
    for command in commands(3) {
        let err = apply(&paused, command.clone(), at(1)).expect_err("not running");
        assert_eq!(
            err,
            DomainError::StaleAttempt {
                task_id: TaskId(7),
                attempt: 3,
                current_attempt: 3,
                status: TaskStatus::Paused
            },
            "{}",
            command.name()
        );
    }
}

// ---- fail / expire ---------------------------------------------------------------------------

#[test]
fn failure_schedules_a_retry_after_retry_interval_in_the_same_transition() {
    let task = Task {
        stage: 1,
        context: Some(vec![9]),
        result: Some(json!("kept")),
        ..running(async_task(), 1)
    };
    let now = at(20);
    let t = apply(&task, fail(1, "boom"), now).expect("fail");
    assert_eq!(t.task.status, TaskStatus::Pending);
    assert_eq!(t.task.retry_count, 1);
    assert_eq!(t.task.stage, 0);
    assert_eq!(t.task.context, None);
    assert_eq!(t.task.deadline, None);
    assert_eq!(t.task.error.as_deref(), Some("boom"));
    assert_eq!(t.task.result, Some(json!("kept")));
    assert_eq!(t.task.next_run_time, at(30));
    assert_eq!(t.task.last_active_time, Some(now));
    assert_eq!(
        closed(&t),
        &AttemptClose {
            task_id: TaskId(7),
            attempt: 1,
            ended_at: now,
            outcome: AttemptOutcome::Failed,
            error: Some("boom".to_owned()),
            timeout_flag: false,
        }
    );
    assert_eq!(
        event_types(&t),
        vec![EventType::TaskFailed, EventType::TaskRetryScheduled]
    );
    assert_eq!(
        links(&t),
        vec![
            (Some(TaskStatus::Running), Some(TaskStatus::Failed)),
            (Some(TaskStatus::Failed), Some(TaskStatus::Pending)),
        ]
    );
    assert_eq!(t.events[0].stage, 1);
    assert_eq!(
        t.events[0].metadata,
        json!({"error": "boom", "retry_count": 0, "next_run_time": null})
    );
    assert_eq!(
        t.events[0].message.as_deref(),
        Some("Task job status changed from running to failed")
    );
    assert_eq!(t.events[1].stage, 0);
    assert_eq!(
        t.events[1].metadata,
        json!({"retry_count": 1, "previous_status": "failed", "next_run_time": "2026-01-01T00:00:30.000Z"})
    );
    assert_eq!(
        t.events[1].message.as_deref(),
        Some("Task job scheduled for retry")
    );
    assert!(t.events.iter().all(|e| e.attempt == Some(1)));
    assert_eq!(
        t.task.last_event_type.as_deref(),
        Some("task_retry_scheduled")
    );
    assert_eq!(t.parent, None);
}

#[test]
fn timed_out_failure_is_a_timeout() {
    let task = running(async_task(), 1);
    let t = apply(
        &task,
        Command::Fail {
            attempt: 1,
            error: "Task execution timeout".to_owned(),
            timed_out: true,
            jitter: 0.0,
        },
        at(61),
    )
    .expect("fail");
    assert_eq!(
        event_types(&t),
        vec![EventType::TaskTimedOut, EventType::TaskRetryScheduled]
    );
    assert_eq!(closed(&t).outcome, AttemptOutcome::Timeout);
    assert!(closed(&t).timeout_flag);
    assert_eq!(meta(&t, 1, "previous_status"), &json!("timeout"));
    assert_eq!(t.events[1].from_status, Some(TaskStatus::Timeout));
}

#[test]
fn expiry_by_deadline_and_by_heartbeat() {
    for (kind, error, timeout_type, message) in [
        (
            ExpiryKind::Deadline,
            "Task exceeded total timeout limit",
            "total",
            "Task job exceeded total timeout",
        ),
        (
            ExpiryKind::Heartbeat,
            "Task heartbeat timed out",
            "heartbeat",
            "Task job lost heartbeat",
        ),
    ] {
        let task = Task {
            result: Some(json!(1)),
            ..running(async_task(), 1)
        };
        let t = apply(
            &task,
            Command::Expire {
                attempt: 1,
                kind,
                jitter: 0.0,
            },
            at(90),
        )
        .expect("expire");
        assert_eq!(t.task.error.as_deref(), Some(error));
        assert_eq!(t.task.result, Some(json!(1)));
        assert_eq!(
            closed(&t),
            &AttemptClose {
                task_id: TaskId(7),
                attempt: 1,
                ended_at: at(90),
                outcome: AttemptOutcome::Timeout,
                error: Some(error.to_owned()),
                timeout_flag: true,
            }
        );
        assert_eq!(
            event_types(&t),
            vec![EventType::TaskTimedOut, EventType::TaskRetryScheduled]
        );
        assert_eq!(meta(&t, 0, "timeout_type"), &json!(timeout_type));
        assert_eq!(meta(&t, 0, "error"), &json!(error));
        assert_eq!(t.events[0].message.as_deref(), Some(message));
        assert_eq!(t.task.status, TaskStatus::Pending);
    }
}

#[test]
fn async_retries_exhausted_fail_permanently_and_report_to_the_parent() {
    let task = Task {
        retry_count: 2,
        max_retries: 3,
        ..running(child_task(), 3)
    };
    let t = apply(&task, fail(3, "boom"), at(5)).expect("fail");
    assert_eq!(t.task.status, TaskStatus::PermanentlyFailed);
    assert_eq!(t.task.retry_count, 2);
    assert_eq!(
        event_types(&t),
        vec![EventType::TaskFailed, EventType::TaskPermanentlyFailed]
    );
    assert_eq!(
        t.events[1].metadata,
        json!({"error": "boom", "retry_exhausted": true})
    );
    assert_eq!(
        t.events[1].message.as_deref(),
        Some("Task child permanently failed after retry exhaustion")
    );
    assert_eq!(t.events[1].attempt, Some(3));
    assert_eq!(
        t.parent,
        Some(ParentEffect {
            parent_id: TaskId(7),
            child_id: TaskId(8),
            round: 2,
            failed: true
        })
    );
}

#[test]
fn cron_retries_exhausted_pause_the_task() {
    let task = Task {
        retry_count: 2,
        max_retries: 3,
        ..running(cron_task(), 3)
    };
    let t = apply(
        &task,
        Command::Expire {
            attempt: 3,
            kind: ExpiryKind::Deadline,
            jitter: 0.0,
        },
        at(5),
    )
    .expect("expire");
    assert_eq!(t.task.status, TaskStatus::Paused);
    assert_eq!(
        event_types(&t),
        vec![EventType::TaskTimedOut, EventType::TaskPaused]
    );
    assert_eq!(t.events[1].metadata, json!({"retry_exhausted": true}));
    assert_eq!(
        t.events[1].message.as_deref(),
        Some("Cron task tick paused after retry exhaustion")
    );
    assert_eq!(t.parent, None);
}

#[test]
fn max_retries_zero_or_one_means_a_single_attempt() {
    for max_retries in [0, 1] {
        let task = Task {
            max_retries,
            ..running(async_task(), 1)
        };
        let t = apply(&task, fail(1, "boom"), at(5)).expect("fail");
        assert_eq!(t.task.status, TaskStatus::PermanentlyFailed);
    }
}

#[test]
fn exponential_backoff_doubles_caps_at_an_hour_and_subtracts_jitter() {
    let failing = |retry_count: i32, interval: u64, jitter: f64| {
        let task = Task {
            retry_count,
            max_retries: 100,
            retry_interval: Duration::from_secs(interval),
            retry_backoff: RetryBackoff::Exponential,
            ..running(async_task(), 1)
        };
        let t = apply(
            &task,
            Command::Fail {
                attempt: 1,
                error: "e".to_owned(),
                timed_out: false,
                jitter,
            },
            at(0),
        )
        .expect("fail");
        (t.task.next_run_time - at(0))
            .to_std()
            .expect("non-negative")
    };
    // Retry n waits interval × 2^(n-1).
    assert_eq!(failing(0, 10, 0.0), Duration::from_secs(10));
    assert_eq!(failing(1, 10, 0.0), Duration::from_secs(20));
    assert_eq!(failing(2, 10, 0.0), Duration::from_secs(40));
    assert_eq!(failing(5, 10, 0.0), Duration::from_secs(320));
    // Capped at one hour, even for huge retry counts.
    assert_eq!(failing(20, 10, 0.0), Duration::from_secs(3600));
    assert_eq!(failing(90, 10, 0.0), Duration::from_secs(3600));
    // Jitter takes off up to half.
    assert_eq!(failing(1, 10, 0.5), Duration::from_secs(15));
    assert_eq!(failing(20, 10, 0.5), Duration::from_secs(2700));
    assert_eq!(failing(0, 10, 0.999), Duration::from_millis(5005));
    // Out-of-range jitter is clamped, never trusted.
    assert_eq!(failing(0, 10, -3.0), Duration::from_secs(10));
    assert_eq!(failing(0, 10, 7.0), Duration::from_secs(5));
    assert_eq!(failing(0, 10, f64::NAN), Duration::from_secs(10));
    // A zero interval (the default) grows from a 5 s base instead of staying zero.
    assert_eq!(failing(0, 0, 0.0), Duration::from_secs(5));
    assert_eq!(failing(3, 0, 0.0), Duration::from_secs(40));
    assert_eq!(failing(3, 0, 0.5), Duration::from_secs(30));
    assert_eq!(failing(40, 0, 0.0), Duration::from_secs(3600));
}

#[test]
fn fixed_backoff_with_a_zero_interval_retries_at_once() {
    let task = Task {
        retry_interval: Duration::ZERO,
        ..running(async_task(), 1)
    };
    let t = apply(&task, fail(1, "e"), at(3)).expect("fail");
    assert_eq!(t.task.next_run_time, at(3));
}

// ---- permanent failures, snooze, retry_task -----------------------------------------------

fn fail_permanently(attempt: i32, error: &str) -> Command {
    Command::FailPermanently {
        attempt,
        error: error.to_owned(),
    }
}

#[test]
fn a_permanent_error_skips_the_remaining_retries() {
    let task = Task {
        max_retries: 5,
        ..running(child_task(), 1)
    };
    let t = apply(&task, fail_permanently(1, "invalid address"), at(5)).expect("fail");
    assert_eq!(t.task.status, TaskStatus::PermanentlyFailed);
    assert_eq!(t.task.retry_count, 0);
    assert_eq!(t.task.error.as_deref(), Some("invalid address"));
    assert_eq!(
        event_types(&t),
        vec![EventType::TaskFailed, EventType::TaskPermanentlyFailed]
    );
    assert_eq!(
        t.events[1].metadata,
        json!({"error": "invalid address", "retry_skipped": true})
    );
    assert_eq!(
        t.events[1].message.as_deref(),
        Some("Task child permanently failed: the error is not retryable")
    );
    assert_eq!(closed(&t).outcome, AttemptOutcome::Failed);
    assert_eq!(t.parent.map(|effect| effect.failed), Some(true));
}

#[test]
fn a_permanent_error_pauses_a_cron_task() {
    let task = Task {
        max_retries: 5,
        ..running(cron_task(), 2)
    };
    let t = apply(&task, fail_permanently(2, "bad config"), at(5)).expect("fail");
    assert_eq!(t.task.status, TaskStatus::Paused);
    assert_eq!(
        event_types(&t),
        vec![EventType::TaskFailed, EventType::TaskPaused]
    );
    assert_eq!(
        t.events[1].metadata,
        json!({"error": "bad config", "retry_skipped": true})
    );
    assert!(is_stale(
        &apply(&task, fail_permanently(1, "late"), at(5)).expect_err("stale")
    ));
}

#[test]
fn snooze_returns_the_task_to_pending_later_without_charging_a_retry() {
    let mut task = Task {
        retry_count: 1,
        max_retries: 3,
        stage: 2,
        context: Some(b"ctx".to_vec()),
        ..running(async_task(), 4)
    };
    task.worker_id = Some("w".to_owned());
    let command = Command::Snooze {
        attempt: 4,
        delay: Duration::from_millis(90_500),
    };
    let t = apply(&task, command, at(10)).expect("snooze");
    assert_eq!(t.task.status, TaskStatus::Pending);
    assert_eq!(t.task.retry_count, 1, "no retry used");
    assert_eq!(t.task.stage, 2, "same stage");
    assert_eq!(t.task.context.as_deref(), Some(&b"ctx"[..]), "context kept");
    assert_eq!(t.task.next_run_time, at(10) + Duration::from_millis(90_500));
    assert_eq!(t.task.worker_id, None);
    assert_eq!(t.task.deadline, None);
    assert_eq!(closed(&t).outcome, AttemptOutcome::Pending);
    assert_eq!(event_types(&t), vec![EventType::TaskSnoozed]);
    assert_eq!(t.events[0].worker_id.as_deref(), Some("w"));
    assert_eq!(t.events[0].attempt, Some(4));
    assert_eq!(*meta(&t, 0, "snooze_ms"), json!(90_500));

    let too_long = Command::Snooze {
        attempt: 4,
        delay: Duration::from_secs(400 * 24 * 3600),
    };
    let error = apply(&task, too_long, at(10)).expect_err("too long");
    assert!(error.to_string().contains("snooze"), "{error}");
    let stale = Command::Snooze {
        attempt: 3,
        delay: Duration::ZERO,
    };
    assert!(is_stale(&apply(&task, stale, at(10)).expect_err("stale")));
}

#[test]
fn retry_task_revives_a_dead_task_with_a_fresh_budget() {
    let dead = Task {
        status: TaskStatus::PermanentlyFailed,
        retry_count: 2,
        max_retries: 3,
        stage: 1,
        context: Some(b"old".to_vec()),
        error: Some("boom".to_owned()),
        worker_id: Some("w".to_owned()),
        ..async_task()
    };
    let t = apply(
        &dead,
        Command::Retry {
            reason: Some("fixed upstream".to_owned()),
        },
        at(50),
    )
    .expect("retry");
    assert_eq!(t.task.status, TaskStatus::Pending);
    assert_eq!(t.task.retry_count, 0);
    assert_eq!((t.task.stage, t.task.context.clone()), (0, None));
    assert_eq!(t.task.next_run_time, at(50));
    assert_eq!(
        t.task.error.as_deref(),
        Some("boom"),
        "kept until a success"
    );
    assert_eq!(t.attempt, None);
    assert_eq!(event_types(&t), vec![EventType::TaskRetried]);
    assert_eq!(
        t.events[0].metadata,
        json!({
            "retry_reason": "fixed upstream",
            "previous_status": "permanently_failed",
            "previous_retry_count": 2
        })
    );

    let paused_cron = Task {
        status: TaskStatus::Paused,
        ..cron_task()
    };
    let t = apply(&paused_cron, Command::Retry { reason: None }, at(50)).expect("retry");
    assert_eq!(t.task.status, TaskStatus::Pending);
    assert_eq!(*meta(&t, 0, "retry_reason"), json!("manual"));

    for status in [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Suspended,
        TaskStatus::Failed,
    ] {
        let task = Task {
            status,
            ..async_task()
        };
        let error = apply(&task, Command::Retry { reason: None }, at(50)).expect_err("illegal");
        assert!(is_illegal(&error), "{status}: {error}");
    }
}

#[test]
fn fixed_backoff_ignores_jitter_and_retry_count() {
    let task = Task {
        retry_count: 4,
        max_retries: 10,
        ..running(async_task(), 1)
    };
    let t = apply(
        &task,
        Command::Fail {
            attempt: 1,
            error: "e".to_owned(),
            timed_out: false,
            jitter: 0.9,
        },
        at(0),
    )
    .expect("fail");
    assert_eq!(t.task.next_run_time, at(10));
}

// ---- await children --------------------------------------------------------------------------

#[test]
fn await_children_suspends_the_parent_for_its_round() {
    let task = Task {
        stage: 1,
        total_children: 2,
        completed_children: 2,
        result: Some(json!("r")),
        context: Some(vec![1]),
        suspend_metadata: Some(json!({"stale": true})),
        ..running(async_task(), 4)
    };
    let t = apply(
        &task,
        Command::AwaitChildren {
            attempt: 4,
            child_ids: vec![TaskId(20), TaskId(21)],
            child_names: vec!["a".to_owned(), "b".to_owned()],
            context: Some(vec![7, 7]),
            policy: ChildFailurePolicy::FailParent,
        },
        at(9),
    )
    .expect("await");
    assert_eq!(t.task.status, TaskStatus::Suspended);
    assert_eq!(t.task.suspend_reason.as_deref(), Some("awaiting_subtasks"));
    assert_eq!(t.task.suspend_metadata, None);
    assert_eq!(t.task.total_children, 4);
    assert_eq!(t.task.completed_children, 2);
    assert_eq!(t.task.child_failure_policy, ChildFailurePolicy::FailParent);
    assert_eq!(t.task.context, Some(vec![7, 7]));
    assert_eq!(t.task.result, Some(json!("r")));
    assert_eq!(t.task.deadline, None);
    assert_eq!(t.task.stage, 1);
    assert_eq!(closed(&t).outcome, AttemptOutcome::Suspended);
    assert_eq!(
        event_types(&t),
        vec![EventType::TaskSubtasksCreated, EventType::TaskStatusChanged]
    );
    assert_eq!(
        t.events[0].metadata,
        json!({"child_task_ids": [20, 21], "child_task_names": ["a", "b"], "child_count": 2})
    );
    assert_eq!(
        t.events[0].message.as_deref(),
        Some("Task job created 2 subtasks")
    );
    assert_eq!(
        t.events[1].metadata,
        json!({"suspend_reason": "awaiting_subtasks", "child_count": 2, "child_task_ids": [20, 21]})
    );
    assert_eq!(
        t.events[1].message.as_deref(),
        Some("Task job suspended while waiting for child tasks")
    );
    assert!(
        t.events
            .iter()
            .all(|e| e.attempt == Some(4) && e.stage == 1)
    );
}

#[test]
fn await_children_keeps_the_context_when_none_is_given() {
    let task = Task {
        context: Some(vec![1]),
        ..running(async_task(), 1)
    };
    let t = apply(
        &task,
        Command::AwaitChildren {
            attempt: 1,
            child_ids: vec![TaskId(20)],
            child_names: vec!["a".to_owned()],
            context: None,
            policy: ChildFailurePolicy::Resume,
        },
        at(9),
    )
    .expect("await");
    assert_eq!(t.task.context, Some(vec![1]));
}

#[test]
fn await_children_needs_at_least_one_child() {
    let task = running(async_task(), 1);
    let err = apply(
        &task,
        Command::AwaitChildren {
            attempt: 1,
            child_ids: vec![],
            child_names: vec![],
            context: None,
            policy: ChildFailurePolicy::Resume,
        },
        at(9),
    )
    .expect_err("empty");
    assert_eq!(
        err,
        DomainError::InvalidOption {
            field: "children",
            reason: "next() needs at least one child".to_owned()
        }
    );
}

// ---- suspend ---------------------------------------------------------------------------------

#[test]
fn explicit_suspension_stores_the_trimmed_reason_and_metadata() {
    let task = Task {
        result: Some(json!(3)),
        ..running(async_task(), 1)
    };
    let t = apply(
        &task,
        Command::Suspend {
            attempt: 1,
            reason: "  needs approval ".to_owned(),
            metadata: Some(json!({"ticket": 42})),
            context: Some(vec![5]),
        },
        at(2),
    )
    .expect("suspend");
    assert_eq!(t.task.status, TaskStatus::Suspended);
    assert_eq!(t.task.suspend_reason.as_deref(), Some("needs approval"));
    assert_eq!(t.task.suspend_metadata, Some(json!({"ticket": 42})));
    assert_eq!(t.task.context, Some(vec![5]));
    assert_eq!(t.task.result, Some(json!(3)));
    assert_eq!(closed(&t).outcome, AttemptOutcome::Suspended);
    assert_eq!(event_types(&t), vec![EventType::TaskSuspended]);
    assert_eq!(
        t.events[0].metadata,
        json!({
            "error": null, "retry_count": 0, "next_run_time": null,
            "suspend_reason": "needs approval", "suspend_metadata": {"ticket": 42}
        })
    );
    assert_eq!(t.events[0].attempt, Some(1));
}

#[test]
fn explicit_suspension_without_metadata_omits_the_key() {
    let t = apply(
        &running(async_task(), 1),
        Command::Suspend {
            attempt: 1,
            reason: "wait".to_owned(),
            metadata: None,
            context: None,
        },
        at(2),
    )
    .expect("suspend");
    assert!(t.events[0].metadata.get("suspend_metadata").is_none());
    assert_eq!(t.task.suspend_metadata, None);
}

#[test]
fn explicit_suspension_needs_a_reason() {
    for reason in ["", "   ", "\t\n"] {
        let err = apply(
            &running(async_task(), 1),
            Command::Suspend {
                attempt: 1,
                reason: reason.to_owned(),
                metadata: None,
                context: None,
            },
            at(2),
        )
        .expect_err("empty reason");
        assert!(
            matches!(
                err,
                DomainError::InvalidOption {
                    field: "suspension.reason",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

// ---- release / recover -----------------------------------------------------------------------

#[test]
fn release_gives_the_task_back_without_consuming_a_retry() {
    let task = Task {
        stage: 2,
        retry_count: 1,
        context: Some(vec![1]),
        ..running(async_task(), 2)
    };
    let now = at(40);
    let t = apply(
        &task,
        Command::Release {
            attempt: 2,
            reason: "worker_stopping".to_owned(),
        },
        now,
    )
    .expect("release");
    assert_eq!(t.task.status, TaskStatus::Pending);
    assert_eq!(t.task.stage, 0);
    assert_eq!(t.task.retry_count, 1);
    assert_eq!(t.task.context, None);
    assert_eq!(t.task.next_run_time, now);
    assert_eq!(t.task.deadline, None);
    assert_eq!(t.task.start_time, None);
    assert_eq!(t.task.worker_id, None);
    assert_eq!(
        closed(&t),
        &AttemptClose {
            task_id: TaskId(7),
            attempt: 2,
            ended_at: now,
            outcome: AttemptOutcome::Interrupted,
            error: Some("Task released: worker_stopping".to_owned()),
            timeout_flag: false,
        }
    );
    assert_eq!(event_types(&t), vec![EventType::TaskRecovered]);
    let event = &t.events[0];
    assert_eq!(event.worker_id.as_deref(), Some("worker-a"));
    assert_eq!(event.attempt, Some(2));
    assert_eq!(event.stage, 0);
    assert_eq!(
        event.metadata,
        json!({"recovery_reason": "worker_stopping", "recovered_from_worker_id": "worker-a"})
    );
}

#[test]
fn recovery_is_attributed_to_the_recovering_worker() {
    let t = apply(
        &running(async_task(), 1),
        Command::Recover {
            attempt: 1,
            by_worker_id: "worker-b".to_owned(),
            by_pod_id: Some("pod-1".to_owned()),
        },
        at(40),
    )
    .expect("recover");
    assert_eq!(t.task.status, TaskStatus::Pending);
    assert_eq!(t.task.worker_id, None);
    assert_eq!(
        closed(&t).error.as_deref(),
        Some("Task ownership recovered after worker became unavailable")
    );
    assert_eq!(closed(&t).outcome, AttemptOutcome::Interrupted);
    let event = &t.events[0];
    assert_eq!(event.event_type, EventType::TaskRecovered);
    assert_eq!(event.worker_id.as_deref(), Some("worker-b"));
    assert_eq!(
        event.metadata,
        json!({
            "recovery_reason": "worker_unavailable",
            "recovered_from_worker_id": "worker-a",
            "recovered_by_worker_id": "worker-b",
            "recovered_by_pod_id": "pod-1"
        })
    );
    assert_eq!(
        event.message.as_deref(),
        Some("Task 7 recovered from worker worker-a")
    );
}

// ---- pause -----------------------------------------------------------------------------------

#[test]
fn pausing_a_running_task_closes_its_attempt() {
    let t = apply(&running(async_task(), 2), Command::Pause, at(3)).expect("pause");
    assert_eq!(t.task.status, TaskStatus::Paused);
    assert_eq!(t.task.deadline, None);
    assert_eq!(closed(&t).outcome, AttemptOutcome::Paused);
    assert_eq!(event_types(&t), vec![EventType::TaskPaused]);
    assert_eq!(t.events[0].attempt, Some(2));
    assert_eq!(
        t.events[0].message.as_deref(),
        Some("Task job status changed from running to paused")
    );
}

#[test]
fn pausing_a_pending_task_has_no_attempt() {
    let task = Task {
        attempt: 1,
        ..async_task()
    };
    let t = apply(&task, Command::Pause, at(3)).expect("pause");
    assert_eq!(t.task.status, TaskStatus::Paused);
    assert_eq!(t.attempt, None);
    assert_eq!(t.events[0].attempt, None);
    assert_eq!(t.task.last_active_time, Some(at(3)));
}

#[test]
fn pause_from_other_statuses_is_illegal() {
    for status in [
        TaskStatus::Completed,
        TaskStatus::PermanentlyFailed,
        TaskStatus::Paused,
        TaskStatus::Suspended,
    ] {
        let task = Task {
            status,
            ..async_task()
        };
        let err = apply(&task, Command::Pause, at(0)).expect_err("illegal");
        assert_eq!(
            err,
            DomainError::IllegalTransition {
                task_id: TaskId(7),
                from: status,
                command: "pause"
            }
        );
    }
    for status in [TaskStatus::Failed, TaskStatus::Timeout] {
        let task = Task {
            status,
            ..async_task()
        };
        apply(&task, Command::Pause, at(0)).expect("pausable");
    }
}

// ---- resume ----------------------------------------------------------------------------------

#[test]
fn resuming_an_explicit_suspension_advances_the_stage() {
    let task = Task {
        status: TaskStatus::Suspended,
        stage: 1,
        retry_count: 2,
        next_run_time: at(-100),
        suspend_reason: Some("approval".to_owned()),
        suspend_metadata: Some(json!(1)),
        context: Some(vec![4]),
        attempt: 3,
        worker_id: Some("worker-a".to_owned()),
        ..async_task()
    };
    let t = apply(
        &task,
        Command::Resume {
            reason: None,
            outstanding_children: 0,
        },
        at(50),
    )
    .expect("resume");
    assert_eq!(t.task.status, TaskStatus::Pending);
    assert_eq!(t.task.stage, 2);
    assert_eq!(t.task.retry_count, 0);
    assert_eq!(t.task.next_run_time, at(50));
    assert_eq!(t.task.suspend_reason, None);
    assert_eq!(t.task.suspend_metadata, None);
    assert_eq!(t.task.context, Some(vec![4]));
    assert_eq!(t.attempt, None);
    assert_eq!(event_types(&t), vec![EventType::TaskResumed]);
    let event = &t.events[0];
    assert_eq!(event.stage, 2);
    assert_eq!(event.attempt, None);
    assert_eq!(
        event.metadata,
        json!({"error": null, "retry_count": 0, "next_run_time": "2026-01-01T00:00:50.000Z", "resume_reason": "manual"})
    );

    let t = apply(
        &task,
        Command::Resume {
            reason: Some("approved".to_owned()),
            outstanding_children: 0,
        },
        at(50),
    )
    .expect("resume");
    assert_eq!(meta(&t, 0, "resume_reason"), &json!("approved"));
}

#[test]
fn resuming_a_parent_that_awaits_children_is_refused() {
    let task = awaiting(async_task(), 3);
    let err = apply(
        &task,
        Command::Resume {
            reason: None,
            outstanding_children: 2,
        },
        at(5),
    )
    .expect_err("awaiting");
    assert_eq!(
        err,
        DomainError::AwaitingChildren {
            task_id: TaskId(7),
            outstanding: 2
        }
    );
    // Nothing outstanding: a stranded parent can be moved on by hand.
    let t = apply(
        &task,
        Command::Resume {
            reason: None,
            outstanding_children: 0,
        },
        at(5),
    )
    .expect("resume");
    assert_eq!(t.task.stage, 1);
}

#[test]
fn resuming_paused_or_running_restarts_from_stage_zero() {
    let paused = Task {
        status: TaskStatus::Paused,
        stage: 3,
        retry_count: 2,
        context: Some(vec![1]),
        attempt: 4,
        ..async_task()
    };
    let t = apply(
        &paused,
        Command::Resume {
            reason: Some("ignored".to_owned()),
            outstanding_children: 0,
        },
        at(7),
    )
    .expect("resume");
    assert_eq!(t.task.status, TaskStatus::Pending);
    assert_eq!(t.task.stage, 0);
    assert_eq!(t.task.retry_count, 0);
    assert_eq!(t.task.context, None);
    assert_eq!(t.task.next_run_time, at(7));
    assert_eq!(t.attempt, None);
    assert_eq!(event_types(&t), vec![EventType::TaskStatusChanged]);
    assert_eq!(t.events[0].attempt, None);
    assert!(t.events[0].metadata.get("resume_reason").is_none());

    let run = running(async_task(), 2);
    let t = apply(
        &run,
        Command::Resume {
            reason: None,
            outstanding_children: 0,
        },
        at(7),
    )
    .expect("resume");
    assert_eq!(t.task.status, TaskStatus::Pending);
    assert_eq!(t.task.deadline, None);
    assert_eq!(closed(&t).outcome, AttemptOutcome::Pending);
    assert_eq!(t.events[0].attempt, Some(2));
    // The handler still running attempt 2 can no longer write.
    let err = apply(&t.task, complete(2, json!(1)), at(8)).expect_err("stale");
    assert!(is_stale(&err));
}

#[test]
fn resume_from_pending_or_terminal_is_illegal() {
    for status in [
        TaskStatus::Pending,
        TaskStatus::Completed,
        TaskStatus::PermanentlyFailed,
    ] {
        let task = Task {
            status,
            ..async_task()
        };
        let err = apply(
            &task,
            Command::Resume {
                reason: None,
                outstanding_children: 0,
            },
            at(0),
        )
        .expect_err("illegal");
        assert!(is_illegal(&err), "{status}: {err:?}");
    }
}

// ---- cancel ----------------------------------------------------------------------------------

#[test]
fn cancel_works_from_every_non_terminal_status() {
    for status in [
        TaskStatus::Pending,
        TaskStatus::Failed,
        TaskStatus::Timeout,
        TaskStatus::Paused,
        TaskStatus::Suspended,
    ] {
        let task = Task {
            status,
            suspend_reason: Some("x".to_owned()),
            suspend_metadata: Some(json!(1)),
            ..async_task()
        };
        let t = apply(&task, Command::Cancel { reason: None }, at(1)).expect("cancel");
        assert_eq!(t.task.status, TaskStatus::PermanentlyFailed);
        assert_eq!(t.task.error.as_deref(), Some("Task cancelled"));
        assert_eq!(t.task.suspend_reason, None);
        assert_eq!(t.task.suspend_metadata, None);
        assert_eq!(t.attempt, None);
        assert_eq!(event_types(&t), vec![EventType::TaskPermanentlyFailed]);
        assert_eq!(t.events[0].from_status, Some(status));
        assert_eq!(t.events[0].attempt, None);
        assert_eq!(meta(&t, 0, "cancel_reason"), &Value::Null);
        assert_eq!(meta(&t, 0, "error"), &json!("Task cancelled"));
    }
}

#[test]
fn cancelling_a_running_child_closes_its_attempt_and_reports_the_failure() {
    let task = running(child_task(), 1);
    let t = apply(
        &task,
        Command::Cancel {
            reason: Some("operator".to_owned()),
        },
        at(1),
    )
    .expect("cancel");
    assert_eq!(t.task.error.as_deref(), Some("operator"));
    assert_eq!(t.task.deadline, None);
    assert_eq!(
        closed(&t),
        &AttemptClose {
            task_id: TaskId(8),
            attempt: 1,
            ended_at: at(1),
            outcome: AttemptOutcome::Cancelled,
            error: Some("operator".to_owned()),
            timeout_flag: false,
        }
    );
    assert_eq!(t.events[0].attempt, Some(1));
    assert_eq!(meta(&t, 0, "cancel_reason"), &json!("operator"));
    assert_eq!(
        t.parent,
        Some(ParentEffect {
            parent_id: TaskId(7),
            child_id: TaskId(8),
            round: 2,
            failed: true
        })
    );
}

#[test]
fn cancel_of_a_terminal_task_is_illegal() {
    for status in [TaskStatus::Completed, TaskStatus::PermanentlyFailed] {
        let task = Task {
            status,
            ..async_task()
        };
        let err = apply(&task, Command::Cancel { reason: None }, at(0)).expect_err("terminal");
        assert!(is_illegal(&err));
    }
}

// ---- child settled ---------------------------------------------------------------------------

fn settled(child: i64, round: i32, failed: bool, outstanding: i32) -> Command {
    Command::ChildSettled(ChildSettlement {
        child_id: TaskId(child),
        round,
        failed,
        outstanding,
    })
}

#[test]
fn a_settling_child_with_siblings_outstanding_only_counts() {
    let parent = awaiting(
        Task {
            stage: 1,
            attempt: 3,
            ..async_task()
        },
        3,
    );
    let t = apply(&parent, settled(20, 3, false, 2), at(4)).expect("settle");
    assert_eq!(t.task.completed_children, 1);
    assert_eq!(t.task.status, TaskStatus::Suspended);
    assert!(t.events.is_empty());
    assert_eq!(t.attempt, None);
    assert_eq!(t.parent, None);
    assert!(!t.is_noop(&parent));
    assert_eq!(t.task.last_active_time, parent.last_active_time);
}

#[test]
fn the_last_child_resumes_the_parent_at_the_next_stage() {
    let parent = Task {
        stage: 1,
        attempt: 4,
        completed_children: 2,
        next_run_time: at(-500),
        ..awaiting(async_task(), 3)
    };
    let t = apply(&parent, settled(22, 4, false, 0), at(4)).expect("settle");
    assert_eq!(t.task.attempt, 4);
    assert_eq!(t.task.completed_children, 3);
    assert_eq!(t.task.status, TaskStatus::Pending);
    assert_eq!(t.task.stage, 2);
    assert_eq!(t.task.suspend_reason, None);
    assert_eq!(t.task.next_run_time, at(-500));
    assert_eq!(t.task.last_active_time, Some(at(4)));
    assert_eq!(event_types(&t), vec![EventType::TaskStatusChanged]);
    let event = &t.events[0];
    assert_eq!(event.stage, 2);
    assert_eq!(event.worker_id.as_deref(), Some("worker-a"));
    assert_eq!(event.attempt, None);
    assert_eq!(
        event.metadata,
        json!({"resume_reason": "children_completed"})
    );
    assert_eq!(
        event.message.as_deref(),
        Some("Parent task job resumed after child completion")
    );
}

#[test]
fn a_failed_child_under_the_resume_policy_is_just_a_settled_child() {
    let parent = Task {
        completed_children: 1,
        ..awaiting(async_task(), 2)
    };
    let t = apply(&parent, settled(21, 1, true, 0), at(4)).expect("settle");
    assert_eq!(t.task.status, TaskStatus::Pending);
    assert_eq!(t.task.stage, 1);
    assert_eq!(t.task.error, None);
}

#[test]
fn a_failed_child_fails_an_async_parent_that_asked_for_it() {
    let parent = Task {
        child_failure_policy: ChildFailurePolicy::FailParent,
        root_id: Some(TaskId(1)),
        parent_id: Some(TaskId(1)),
        parent_round: Some(0),
        ..awaiting(async_task(), 3)
    };
    let t = apply(&parent, settled(21, 1, true, 2), at(4)).expect("settle");
    assert_eq!(t.task.status, TaskStatus::PermanentlyFailed);
    assert_eq!(t.task.completed_children, 1);
    assert_eq!(t.task.error.as_deref(), Some("Child task 21 failed"));
    assert_eq!(t.task.suspend_reason, None);
    assert_eq!(event_types(&t), vec![EventType::TaskPermanentlyFailed]);
    assert_eq!(
        t.events[0].metadata,
        json!({"child_task_id": 21, "reason": "child_failed"})
    );
    assert_eq!(
        t.parent,
        Some(ParentEffect {
            parent_id: TaskId(1),
            child_id: TaskId(7),
            round: 0,
            failed: true
        })
    );
    // The siblings that settle later find a parent that moved on.
    let late = apply(&t.task, settled(22, 1, false, 1), at(5)).expect("late");
    assert!(late.is_noop(&t.task));
}

#[test]
fn a_failed_child_pauses_a_cron_parent_that_asked_for_it() {
    let parent = Task {
        child_failure_policy: ChildFailurePolicy::FailParent,
        ..awaiting(cron_task(), 1)
    };
    assert_eq!(parent.error, None);
    let t = apply(&parent, settled(21, 1, true, 0), at(4)).expect("settle");
    assert_eq!(t.task.status, TaskStatus::Paused);
    // The same error text as an async parent's, so the pause explains itself.
    assert_eq!(t.task.error.as_deref(), Some("Child task 21 failed"));
    assert_eq!(t.task.completed_children, 1);
    assert_eq!(t.task.suspend_reason, None);
    assert_eq!(event_types(&t), vec![EventType::TaskPaused]);
    assert_eq!(
        t.events[0].metadata,
        json!({"child_task_id": 21, "reason": "child_failed"})
    );
    assert_eq!(t.parent, None);
}

#[test]
fn settlements_for_another_round_or_state_are_no_ops() {
    let parent = Task {
        stage: 2,
        attempt: 5,
        ..awaiting(async_task(), 3)
    };
    let cases = [
        (parent.clone(), settled(20, 4, false, 0)),
        (parent.clone(), settled(20, 6, true, 0)),
        // The round is the attempt, not the stage.
        (parent.clone(), settled(20, 2, false, 0)),
        (
            Task {
                status: TaskStatus::Pending,
                suspend_reason: None,
                ..parent.clone()
            },
            settled(20, 5, false, 0),
        ),
        (
            Task {
                suspend_reason: Some("approval".to_owned()),
                ..parent.clone()
            },
            settled(20, 5, false, 0),
        ),
        (
            Task {
                status: TaskStatus::PermanentlyFailed,
                ..parent.clone()
            },
            settled(20, 5, true, 0),
        ),
    ];
    for (task, command) in cases {
        let t = apply(&task, command, at(1)).expect("no-op");
        assert!(t.is_noop(&task), "{task:?}");
        assert_eq!(t.task, task);
        assert_eq!(t.parent, None);
        assert!(t.events.is_empty());
    }
}

#[test]
fn a_late_settlement_from_an_old_round_is_a_no_op_for_a_new_round_at_the_same_stage() {
    let policy = |fail_parent| {
        if fail_parent {
            ChildFailurePolicy::FailParent
        } else {
            ChildFailurePolicy::Resume
        }
    };
    let await_children = |attempt: i32, ids: &[i64], fail_parent: bool| Command::AwaitChildren {
        attempt,
        child_ids: ids.iter().copied().map(TaskId).collect(),
        child_names: ids.iter().map(|id| format!("c{id}")).collect(),
        context: None,
        policy: policy(fail_parent),
    };

    // Round 1: attempt 1 returns next() at stage 0 with three children.
    let mut task = cron_task();
    task = apply(&task, claim("w"), at(0)).expect("claim").task;
    task = apply(&task, await_children(1, &[30, 31, 32], true), at(1))
        .expect("await")
        .task;
    assert_eq!((task.stage, task.attempt), (0, 1));

    // One child fails: the cron parent pauses with 31 and 32 of round 1 still outstanding.
    task = apply(&task, settled(30, 1, true, 2), at(2))
        .expect("settle")
        .task;
    assert_eq!(task.status, TaskStatus::Paused);

    // Restarted: back to stage 0, claimed as attempt 2, and a new round at stage 0.
    task = apply(
        &task,
        Command::Resume {
            reason: None,
            outstanding_children: 0,
        },
        at(3),
    )
    .expect("resume")
    .task;
    assert_eq!((task.status, task.stage), (TaskStatus::Pending, 0));
    task = apply(&task, claim("w"), at(4)).expect("claim").task;
    task = apply(&task, await_children(2, &[40, 41], false), at(5))
        .expect("await")
        .task;
    assert_eq!(task.status, TaskStatus::Suspended);
    assert_eq!((task.stage, task.attempt), (0, 2));
    assert_eq!(task.completed_children, 1);

    // The old round's children settle late; same stage, older attempt: nothing happens, even
    // for a report that would claim the round is done.
    for command in [settled(31, 1, false, 1), settled(32, 1, true, 0)] {
        let t = apply(&task, command, at(6)).expect("late settlement");
        assert!(t.is_noop(&task));
        assert_eq!(t.task, task);
        assert!(t.events.is_empty());
    }

    // Only the new round's children count, and the last of them resumes the parent.
    task = apply(&task, settled(40, 2, false, 1), at(7))
        .expect("settle")
        .task;
    assert_eq!(task.status, TaskStatus::Suspended);
    assert_eq!(task.completed_children, 2);
    let t = apply(&task, settled(41, 2, false, 0), at(8)).expect("settle");
    assert_eq!(t.task.status, TaskStatus::Pending);
    assert_eq!(t.task.stage, 1);
    assert_eq!(t.task.completed_children, 3);
}

// ---- general ---------------------------------------------------------------------------------

#[test]
fn events_carry_the_workflow_identity_of_the_task() {
    let task = Task {
        stage: 1,
        ..running(child_task(), 1)
    };
    let t = apply(&task, Command::Pause, at(2)).expect("pause");
    let event = &t.events[0];
    assert_eq!(event.task_id, TaskId(8));
    assert_eq!(event.root_id, TaskId(1));
    assert_eq!(event.parent_id, Some(TaskId(7)));
    assert_eq!(event.stage, 1);
    assert_eq!(event.event_time, at(2));
}

#[test]
fn a_two_stage_parent_runs_to_completion() {
    let mut task = async_task();
    task = apply(&task, claim("w"), at(0)).expect("claim").task;
    task = apply(
        &task,
        Command::AwaitChildren {
            attempt: 1,
            child_ids: vec![TaskId(30)],
            child_names: vec!["c".to_owned()],
            context: None,
            policy: ChildFailurePolicy::Resume,
        },
        at(1),
    )
    .expect("await")
    .task;
    task = apply(&task, settled(30, 1, false, 0), at(2))
        .expect("settle")
        .task;
    assert_eq!((task.status, task.stage), (TaskStatus::Pending, 1));
    task = apply(&task, claim("w"), at(3)).expect("claim").task;
    assert_eq!(task.attempt, 2);
    let t = apply(&task, complete(2, json!("done")), at(4)).expect("complete");
    assert_eq!(t.task.status, TaskStatus::Completed);
    assert_eq!(t.task.task_type, TaskType::Async);
    assert_eq!(t.task.start_time, Some(at(3)));
    assert_eq!(t.task.last_active_time, Some(at(4)));
}
