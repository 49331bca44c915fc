//! Executions: outcomes, failures, panics, deadlines, spawn validation, fenced writes.

use std::sync::Arc;
use std::time::Duration;

use fib_flow_domain::{ChildSpec, Command, DomainError, HandlerOptions, TaskId, TaskStatus};
use fib_flow_ports::{HandlerError, Outcome, PortError, Spawn, Suspension, TaskHandle};
use serde_json::json;

use super::*;
use crate::execution::error_text;

/// Starts `engine`, hands it `tasks` in one claim and waits for `n` applies.
async fn run_claimed(engine: &Engine, rec: &Arc<Rec>, tasks: Vec<Task>, applies: usize) {
    rec.script_claim(Ok(tasks));
    engine.start().await.unwrap();
    rec.wait_count("outcome writes", applies, |event| {
        matches!(event, Ev::Apply(..))
    })
    .await;
}

#[tokio::test]
async fn completion_writes_complete_with_the_result() {
    let (engine, rec, _clock) = engine();
    engine
        .register("echo", |task: TaskHandle| async move {
            Ok::<_, HandlerError>(
                json!({ "got": task.payload().clone(), "attempt": task.attempt() }),
            )
        })
        .expect("register");
    let mut task = running_task(1, "echo", 2, t0());
    task.payload = json!(5);
    run_claimed(&engine, &rec, vec![task], 1).await;
    assert_eq!(
        rec.applies(),
        [(
            TaskId(1),
            Command::Complete {
                attempt: 2,
                result: json!({ "got": 5, "attempt": 2 })
            }
        )]
    );
    engine.stop().await.unwrap();
}

/// An error wrapping another as its source, as error-context crates do.
#[derive(Debug)]
struct Context(HandlerError);

impl std::fmt::Display for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sending the welcome mail")
    }
}

impl std::error::Error for Context {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

#[tokio::test]
async fn a_permanent_error_writes_fail_permanently_and_a_snooze_writes_snooze() {
    let (engine, rec, _clock) = engine();
    engine
        .register("invalid", |_task: TaskHandle| async move {
            // Wrapped once more: the mark is found anywhere in the source chain.
            let marked = fib_flow_ports::permanent("no such address");
            Err::<Outcome, HandlerError>(Box::new(Context(marked)))
        })
        .expect("register");
    engine
        .register("later", |_task: TaskHandle| async move {
            Ok::<_, HandlerError>(Outcome::snooze(Duration::from_secs(90)))
        })
        .expect("register");
    let tasks = vec![
        running_task(1, "invalid", 1, t0()),
        running_task(2, "later", 3, t0()),
    ];
    run_claimed(&engine, &rec, tasks, 2).await;
    assert_eq!(
        rec.applies_to(1),
        [Command::FailPermanently {
            attempt: 1,
            error: "sending the welcome mail: no such address".to_owned(),
        }]
    );
    assert_eq!(
        rec.applies_to(2),
        [Command::Snooze {
            attempt: 3,
            delay: Duration::from_secs(90),
        }]
    );
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn handler_error_writes_fail_not_timed_out_with_jitter() {
    let (engine, rec, _clock) = engine();
    engine
        .register("boom", |_task: TaskHandle| async move {
            Err::<Outcome, _>("Task failed")
        })
        .expect("register");
    run_claimed(&engine, &rec, vec![running_task(1, "boom", 1, t0())], 1).await;
    match &rec.applies_to(1)[..] {
        [
            Command::Fail {
                attempt: 1,
                error,
                timed_out: false,
                jitter,
            },
        ] => {
            assert_eq!(error, "Task failed");
            assert!(
                (0.0..1.0).contains(jitter),
                "jitter {jitter} must be in [0, 1)"
            );
        }
        other => panic!("expected one Fail, got {other:?}"),
    }
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn error_after_check_timeout_is_a_timed_out_failure() {
    let (engine, rec, clock) = engine();
    let handler_clock = clock.clone();
    engine
        .register("slow", move |task: TaskHandle| {
            let clock = handler_clock.clone();
            async move {
                // The handler overruns its deadline and notices through check_timeout.
                clock.advance(Duration::from_secs(11));
                task.check_timeout()?;
                Ok::<Outcome, HandlerError>(json!("unreachable").into())
            }
        })
        .expect("register");
    let mut task = running_task(1, "slow", 1, t0());
    task.deadline = Some(t0() + chrono::TimeDelta::seconds(10));
    run_claimed(&engine, &rec, vec![task], 1).await;
    match &rec.applies_to(1)[..] {
        [
            Command::Fail {
                timed_out: true,
                error,
                ..
            },
        ] => {
            assert!(error.contains("timeout"), "{error}");
        }
        other => panic!("expected one timed-out Fail, got {other:?}"),
    }
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn deadline_cancels_a_hung_handler_and_writes_a_timeout() {
    let (engine, rec, clock) = engine();
    let r = rec.clone();
    engine
        .register("hangs", move |task: TaskHandle| {
            let rec = r.clone();
            async move {
                let _flag = DropFlag(rec.clone(), task.id());
                rec.push(Ev::Started(task.id()));
                std::future::pending::<()>().await;
                Ok::<Outcome, HandlerError>(json!(null).into())
            }
        })
        .expect("register");
    let mut task = running_task(1, "hangs", 1, t0());
    task.deadline = Some(t0() + chrono::TimeDelta::seconds(10));
    rec.script_claim(Ok(vec![task]));
    engine.start().await.unwrap();
    rec.wait("handler start", |log| log.contains(&Ev::Started(TaskId(1))))
        .await;
    clock.advance(Duration::from_secs(9));
    settle().await;
    assert!(rec.applies_to(1).is_empty(), "nothing before the deadline");
    clock.advance(Duration::from_secs(2));
    rec.wait_count("timeout write", 1, |event| matches!(event, Ev::Apply(..)))
        .await;
    assert_eq!(
        rec.count(|event| *event == Ev::Dropped(TaskId(1))),
        1,
        "the handler future was dropped before the write"
    );
    match &rec.applies_to(1)[..] {
        [
            Command::Fail {
                attempt: 1,
                error,
                timed_out: true,
                ..
            },
        ] => {
            assert_eq!(error, "Task execution timeout");
        }
        other => panic!("expected one timed-out Fail, got {other:?}"),
    }
    assert_eq!(engine.in_flight(), 0, "the slot is free again");
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn panic_is_a_failed_attempt_and_the_worker_keeps_going() {
    let (engine, rec, _clock) = engine();
    engine
        .register("panics", |_task: TaskHandle| async move {
            if true {
                panic!("handler exploded");
            }
            Ok::<Outcome, HandlerError>(json!(null).into())
        })
        .expect("register");
    engine
        .register("echo", |_task: TaskHandle| async move {
            Ok::<_, HandlerError>(json!("fine"))
        })
        .expect("register");
    rec.script_claim(Ok(vec![running_task(1, "panics", 1, t0())]));
    rec.script_claim(Ok(vec![running_task(2, "echo", 1, t0())]));
    engine.start().await.unwrap();
    rec.wait_count("both outcomes", 2, |event| matches!(event, Ev::Apply(..)))
        .await;
    match &rec.applies_to(1)[..] {
        [
            Command::Fail {
                error,
                timed_out: false,
                ..
            },
        ] => {
            assert!(error.contains("handler exploded"), "{error}");
        }
        other => panic!("expected one Fail, got {other:?}"),
    }
    assert!(is_complete(&rec.applies_to(2)[0], &json!("fine")));
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn spawn_validation_failures_use_the_reference_messages() {
    let (engine, rec, _clock) = engine();
    engine
        .register("child", |_task: TaskHandle| async move {
            Ok::<_, HandlerError>(json!(null))
        })
        .expect("register");
    engine
        .register("parent", |task: TaskHandle| async move {
            let children = match task.id().0 {
                1 => vec![],
                2 => vec![
                    ChildSpec::new("child", json!(1)),
                    ChildSpec::new("ghost", json!(2)),
                ],
                _ => vec![ChildSpec::new("  ", json!(3))],
            };
            Ok::<_, HandlerError>(task.next(children))
        })
        .expect("register");
    let tasks = (1..=3)
        .map(|id| running_task(id, "parent", 1, t0()))
        .collect();
    run_claimed(&engine, &rec, tasks, 3).await;
    let message = |id| match &rec.applies_to(id)[..] {
        [
            Command::Fail {
                error,
                timed_out: false,
                ..
            },
        ] => error.clone(),
        other => panic!("task {id}: expected one Fail, got {other:?}"),
    };
    assert_eq!(message(1), "next() needs at least one child");
    assert_eq!(message(2), "No handler registered for child task: ghost");
    assert_eq!(message(3), "Child task missing required name property");
    assert_eq!(
        rec.count(|event| matches!(event, Ev::Spawn(_))),
        0,
        "nothing inserted"
    );
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn spawn_resolves_child_options_spec_then_child_handler_then_parent_and_global() {
    let mut options = options();
    options.max_retries = 4;
    options.retry_interval = Duration::from_secs(9);
    let (engine, rec, clock) = engine_with(options);
    engine
        .register_with(
            "configured",
            |_task: TaskHandle| async move { Ok::<_, HandlerError>(json!(null)) },
            HandlerOptions {
                priority: Some(7),
                max_retries: Some(5),
                timeout: Some(Some(Duration::from_secs(20))),
                ..HandlerOptions::default()
            },
        )
        .unwrap();
    engine
        .register("plain", |_task: TaskHandle| async move {
            Ok::<_, HandlerError>(json!(null))
        })
        .expect("register");
    engine
        .register("parent", |_task: TaskHandle| async move {
            let overriding = ChildSpec {
                timeout: Some(Some(Duration::from_secs(5))),
                tag: Some("t".into()),
                delay: Some(Duration::from_secs(30)),
                ..ChildSpec::new("configured", json!("a"))
            };
            let spawn = Spawn::new(vec![overriding, ChildSpec::new("plain", json!("b"))])
                .context(b"ctx".to_vec())
                .fail_on_child_failure();
            Ok::<_, HandlerError>(spawn)
        })
        .expect("register");
    let mut parent = running_task(10, "parent", 3, t0());
    parent.priority = 3;
    parent.stage = 2;
    parent.root_id = Some(TaskId(1));
    clock.advance(Duration::from_secs(1));
    rec.script_claim(Ok(vec![parent]));
    engine.start().await.unwrap();
    rec.wait("spawn", |log| {
        log.iter().any(|event| matches!(event, Ev::Spawn(_)))
    })
    .await;
    let spawn = rec
        .log()
        .into_iter()
        .find_map(|event| match event {
            Ev::Spawn(request) => Some(request),
            _ => None,
        })
        .unwrap();
    let now = t0() + chrono::TimeDelta::seconds(1);
    assert_eq!(spawn.parent_id, TaskId(10));
    assert_eq!(spawn.attempt, 3);
    assert_eq!(spawn.context.as_deref(), Some(&b"ctx"[..]));
    assert_eq!(
        spawn.policy,
        fib_flow_domain::ChildFailurePolicy::FailParent
    );
    let [configured, plain] = &spawn.children[..] else {
        panic!("two children expected: {:?}", spawn.children);
    };
    assert_eq!(configured.name, "configured");
    assert_eq!(configured.task_type, fib_flow_domain::TaskType::Async);
    assert_eq!(
        configured.priority, 7,
        "child handler priority beats the parent's"
    );
    assert_eq!(configured.max_retries, 5, "child handler beats global");
    assert_eq!(
        configured.timeout,
        Some(Duration::from_secs(5)),
        "spec beats handler"
    );
    assert_eq!(configured.retry_interval, Duration::from_secs(9), "global");
    assert_eq!(configured.tag.as_deref(), Some("t"));
    assert_eq!(configured.payload, json!("a"));
    assert_eq!(
        configured.next_run_time,
        now + chrono::TimeDelta::seconds(30)
    );
    assert_eq!(configured.parent_id, Some(TaskId(10)));
    assert_eq!(configured.root_id, Some(TaskId(1)));
    assert_eq!(configured.parent_round, Some(3), "the spawning attempt");
    assert_eq!(
        plain.priority, 3,
        "the parent's priority is the last resort"
    );
    assert_eq!(plain.max_retries, 4);
    assert_eq!(plain.timeout, Some(Duration::from_secs(60)));
    assert_eq!(plain.tag, None, "tags are not inherited");
    assert_eq!(plain.next_run_time, now);
    assert!(
        rec.applies_to(10).is_empty(),
        "the spawn call suspends the parent itself"
    );
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn root_parent_is_the_root_of_its_children() {
    let (engine, rec, _clock) = engine();
    engine
        .register("child", |_task: TaskHandle| async move {
            Ok::<_, HandlerError>(json!(null))
        })
        .expect("register");
    engine
        .register("parent", |task: TaskHandle| async move {
            Ok::<_, HandlerError>(task.next(vec![ChildSpec::new("child", json!(null))]))
        })
        .expect("register");
    rec.script_claim(Ok(vec![running_task(4, "parent", 1, t0())]));
    engine.start().await.unwrap();
    rec.wait("spawn", |log| {
        log.iter().any(|event| matches!(event, Ev::Spawn(_)))
    })
    .await;
    let root = rec.log().into_iter().find_map(|event| match event {
        Ev::Spawn(request) => Some(request.children[0].root_id),
        _ => None,
    });
    assert_eq!(root, Some(Some(TaskId(4))));
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn rejected_spawn_and_suspension_become_failures_with_the_domain_message() {
    let (engine, rec, _clock) = engine();
    engine
        .register("child", |_task: TaskHandle| async move {
            Ok::<_, HandlerError>(json!(null))
        })
        .expect("register");
    engine
        .register("spawns", |task: TaskHandle| async move {
            Ok::<_, HandlerError>(task.next(vec![ChildSpec::new("child", json!(null))]))
        })
        .expect("register");
    engine
        .register("suspends", |task: TaskHandle| async move {
            Ok::<_, HandlerError>(task.suspend("   "))
        })
        .expect("register");
    let rejection = || {
        PortError::Rejected(DomainError::InvalidOption {
            field: "suspend_reason",
            reason: "must not be empty".into(),
        })
    };
    rec.spawn_results
        .lock()
        .unwrap()
        .push_back(Err(rejection()));
    rec.apply_results
        .lock()
        .unwrap()
        .push_back(Err(rejection()));
    rec.script_claim(Ok(vec![running_task(1, "suspends", 1, t0())]));
    engine.start().await.unwrap();
    rec.wait_count("suspension then failure", 2, |event| {
        matches!(event, Ev::Apply(..))
    })
    .await;
    let commands = rec.applies_to(1);
    assert!(matches!(&commands[0], Command::Suspend { reason, .. } if reason == "   "));
    assert!(
        matches!(&commands[1], Command::Fail { error, .. } if error.contains("suspend_reason")),
        "{commands:?}"
    );
    rec.script_claim(Ok(vec![running_task(2, "spawns", 1, t0())]));
    rec.notify.notify_one();
    rec.wait_count("failure after rejected spawn", 3, |event| {
        matches!(event, Ev::Apply(..))
    })
    .await;
    assert!(
        matches!(&rec.applies_to(2)[..], [Command::Fail { error, .. }] if error.contains("must not be empty"))
    );
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn suspension_is_written_with_reason_metadata_and_context() {
    let (engine, rec, _clock) = engine();
    engine
        .register("approval", |_task: TaskHandle| async move {
            Ok::<_, HandlerError>(
                Suspension::new("awaiting_approval")
                    .metadata(json!({ "by": "ops" }))
                    .context(b"snap".to_vec()),
            )
        })
        .expect("register");
    run_claimed(&engine, &rec, vec![running_task(1, "approval", 2, t0())], 1).await;
    assert_eq!(
        rec.applies_to(1),
        [Command::Suspend {
            attempt: 2,
            reason: "awaiting_approval".into(),
            metadata: Some(json!({ "by": "ops" })),
            context: Some(b"snap".to_vec()),
        }]
    );
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn stale_outcome_write_is_logged_and_dropped() {
    let (captured, _guard) = capture_logs(tracing::Level::TRACE).await;

    let (engine, rec, _clock) = engine();
    engine
        .register("late", |_task: TaskHandle| async move {
            Ok::<_, HandlerError>(json!("late"))
        })
        .expect("register");
    rec.apply_results
        .lock()
        .unwrap()
        .push_back(Err(PortError::Stale {
            task_id: TaskId(1),
            attempt: 1,
        }));
    run_claimed(&engine, &rec, vec![running_task(1, "late", 1, t0())], 1).await;
    settle().await;
    assert_eq!(
        rec.applies_to(1).len(),
        1,
        "a stale write is neither retried nor turned into a failure"
    );
    let logs = captured.text();
    assert!(
        logs.contains("WARN")
            && logs.contains("skipping stale completion update for task 1 attempt 1"),
        "{logs}"
    );
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn transient_outcome_write_is_retried_with_backoff() {
    let (engine, rec, clock) = engine();
    engine
        .register("ok", |_task: TaskHandle| async move {
            Ok::<_, HandlerError>(json!(1))
        })
        .expect("register");
    rec.apply_results
        .lock()
        .unwrap()
        .push_back(Err(PortError::Unavailable {
            backend: "mock",
            message: "connection reset".into(),
        }));
    run_claimed(&engine, &rec, vec![running_task(1, "ok", 1, t0())], 1).await;
    settle().await;
    assert_eq!(
        rec.applies_to(1).len(),
        1,
        "the retry waits for its back-off"
    );
    clock.advance(Duration::from_millis(100));
    rec.wait_count("retried write", 2, |event| matches!(event, Ev::Apply(..)))
        .await;
    let commands = rec.applies_to(1);
    assert!(
        commands
            .iter()
            .all(|command| is_complete(command, &json!(1))),
        "{commands:?}"
    );
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn missing_handler_at_execution_start_releases_the_task() {
    let (engine, rec, _clock) = engine();
    engine
        .register("known", |_task: TaskHandle| async move {
            Ok::<_, HandlerError>(json!(null))
        })
        .expect("register");
    run_claimed(&engine, &rec, vec![running_task(1, "gone", 2, t0())], 1).await;
    assert_eq!(
        rec.applies_to(1),
        [Command::Release {
            attempt: 2,
            reason: "handler_missing".into()
        }]
    );
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn a_resumed_parent_receives_the_previous_rounds_child_results() {
    let (engine, rec, _clock) = engine();
    *rec.child_results.lock().unwrap() = vec![fib_flow_domain::ChildResult {
        task_id: TaskId(11),
        name: "child".into(),
        status: TaskStatus::Completed,
        result: Some(json!(42)),
        error: None,
    }];
    engine
        .register("parent", |task: TaskHandle| async move {
            let results: Vec<_> = task
                .child_results()
                .iter()
                .map(|child| child.result.clone())
                .collect();
            Ok::<_, HandlerError>(json!({ "stage": task.stage(), "results": results }))
        })
        .expect("register");
    let mut parent = running_task(10, "parent", 2, t0());
    parent.stage = 1;
    parent.total_children = 1;
    run_claimed(&engine, &rec, vec![parent], 1).await;
    assert!(
        rec.log().contains(&Ev::ChildResults(TaskId(10), 1)),
        "the round of the attempt that spawned"
    );
    assert!(is_complete(
        &rec.applies_to(10)[0],
        &json!({ "stage": 1, "results": [42] })
    ));
    engine.stop().await.unwrap();
}

#[test]
fn error_text_includes_the_source_chain() {
    #[derive(Debug, thiserror::Error)]
    #[error("fetching the invoice")]
    struct Outer(#[source] std::io::Error);
    let error = Outer(std::io::Error::other("connection refused"));
    assert_eq!(
        error_text(&error),
        "fetching the invoice: connection refused"
    );
    let flat = std::io::Error::other("plain");
    assert_eq!(error_text(&flat), "plain");
}

#[tokio::test]
async fn outcomes_finishing_together_share_one_batch() {
    let (engine, rec, _clock) = engine();
    engine
        .register("quick", |_task: TaskHandle| async move {
            Ok::<_, HandlerError>(json!("done"))
        })
        .unwrap();
    let tasks = (1..=3)
        .map(|id| running_task(id, "quick", 1, t0()))
        .collect();
    run_claimed(&engine, &rec, tasks, 3).await;
    rec.wait_count("three completions", 3, |event| {
        matches!(event, Ev::Apply(..))
    })
    .await;
    let batches: Vec<Vec<TaskId>> = rec
        .log()
        .into_iter()
        .filter_map(|event| match event {
            Ev::Batch(ids) => Some(ids),
            _ => None,
        })
        .collect();
    assert_eq!(batches.len(), 1, "one write transaction: {batches:?}");
    let mut written = batches[0].clone();
    written.sort();
    assert_eq!(written, [TaskId(1), TaskId(2), TaskId(3)]);
    engine.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_transient_outcome_fault_is_retried_past_any_fixed_count() {
    let (engine, rec, _clock) = engine();
    engine
        .register("ok", |_task: TaskHandle| async move {
            Ok::<_, HandlerError>(json!(1))
        })
        .unwrap();
    let faults = 8;
    rec.apply_results
        .lock()
        .unwrap()
        .extend((0..faults).map(|_| {
            Err(PortError::Unavailable {
                backend: "mock",
                message: "Deadlock found when trying to get lock".into(),
            })
        }));
    run_claimed(&engine, &rec, vec![running_task(1, "ok", 1, t0())], 1).await;
    // Paused tokio time: the wall-clock back-off (capped at 2 s) advances by itself.
    rec.wait_count("the write that finally lands", faults + 1, |event| {
        matches!(event, Ev::Apply(..))
    })
    .await;
    let commands = rec.applies_to(1);
    assert_eq!(commands.len(), faults + 1);
    assert!(
        commands
            .iter()
            .all(|command| is_complete(command, &json!(1)))
    );
    engine.stop().await.unwrap();
}

/// Collects what a `fmt` subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs a capturing subscriber on this thread (the test runtime is single-threaded, so it
/// reaches every task) until the returned guard drops.
async fn capture_logs(level: tracing::Level) -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(level)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    (captured, guard)
}
