//! start / stop / pause_task / resume_task / cancel_task.

use std::sync::Arc;
use std::time::Duration;

use fib_flow_domain::{Command, DomainError, TaskId, TaskStatus};
use fib_flow_ports::{HandlerError, Outcome, PortError, TaskHandle};
use serde_json::json;
use tokio::sync::Semaphore;

use super::*;
use crate::{ManagerState, RuntimeError};

#[tokio::test]
async fn stop_drains_in_flight_results_then_releases_the_rest() {
    let (engine, rec, clock) = engine();
    let finish = Arc::new(Semaphore::new(0));
    let gate = finish.clone();
    let r = rec.clone();
    engine
        .register("finishes", move |task: TaskHandle| {
            let (gate, rec) = (gate.clone(), r.clone());
            async move {
                rec.push(Ev::Started(task.id()));
                gate.acquire()
                    .await
                    .map_err(|error| error.to_string())?
                    .forget();
                Ok::<Outcome, HandlerError>(json!("kept").into())
            }
        })
        .expect("register");
    let r = rec.clone();
    engine
        .register("stuck", move |task: TaskHandle| {
            let rec = r.clone();
            async move {
                let _flag = DropFlag(rec.clone(), task.id());
                rec.push(Ev::Started(task.id()));
                std::future::pending::<()>().await;
                Ok::<Outcome, HandlerError>(json!(null).into())
            }
        })
        .expect("register");
    rec.script_claim(Ok(vec![
        running_task(1, "finishes", 1, t0()),
        running_task(2, "stuck", 4, t0()),
    ]));
    engine.start().await.unwrap();
    rec.wait_count("both running", 2, |event| matches!(event, Ev::Started(_)))
        .await;

    let stopping = tokio::spawn({
        let engine = engine.clone();
        async move { engine.stop().await }
    });
    settle().await;
    assert_eq!(engine.state(), ManagerState::Running, "still draining");
    let claims_before = rec.claims().len();
    // The finishing handler completes inside the drain window and its result is recorded.
    finish.add_permits(1);
    rec.wait_count("the drained completion", 1, |event| {
        matches!(event, Ev::Apply(..))
    })
    .await;
    assert!(is_complete(&rec.applies_to(1)[0], &json!("kept")));
    assert!(rec.applies_to(2).is_empty(), "the stuck one still has time");
    // Heartbeats continue while draining.
    clock.advance(Duration::from_secs(5));
    rec.wait("a heartbeat during the drain", |log| {
        log.iter().any(
            |event| matches!(event, Ev::Heartbeat(_, attempts) if attempts == &[(TaskId(2), 4)]),
        )
    })
    .await;
    // The stop timeout passes: the stuck handler is cancelled and its task released.
    clock.advance(Duration::from_secs(25));
    let stopped = tokio::time::timeout(WAIT_LIMIT, stopping).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
    assert_eq!(
        rec.applies_to(2),
        [Command::Release {
            attempt: 4,
            reason: "worker_stopping".into()
        }]
    );
    let log = rec.log();
    let dropped = log
        .iter()
        .position(|event| *event == Ev::Dropped(TaskId(2)));
    let released = log
        .iter()
        .position(|event| matches!(event, Ev::Apply(TaskId(2), Command::Release { .. })));
    assert!(
        dropped.is_some() && dropped < released,
        "dropped before the release: {log:#?}"
    );
    assert!(
        !log.contains(&Ev::Close),
        "stop leaves the store open for queries"
    );
    assert_eq!(
        rec.claims().len(),
        claims_before,
        "no claim after stop began"
    );
    assert_eq!(engine.state(), ManagerState::Stopped);
    assert_eq!(engine.in_flight(), 0);
    assert!(matches!(
        engine.start().await,
        Err(RuntimeError::AlreadyStopped)
    ));
    assert_eq!(
        RuntimeError::AlreadyStopped.to_string(),
        "Cannot restart a stopped TaskManager"
    );
}

#[tokio::test]
async fn stop_without_in_flight_work_returns_at_once() {
    let (engine, rec, _clock) = engine();
    engine
        .register("echo", |_t: TaskHandle| async {
            Ok::<_, HandlerError>(json!(1))
        })
        .expect("register");
    engine.start().await.unwrap();
    engine.start().await.unwrap();
    assert_eq!(
        engine.state(),
        ManagerState::Running,
        "a second start is a no-op"
    );
    let (first, second) = tokio::join!(engine.stop(), engine.stop());
    assert!(
        first.is_ok() && second.is_ok(),
        "a concurrent second stop waits and succeeds"
    );
    assert_eq!(engine.state(), ManagerState::Stopped);
    engine.stop().await.unwrap();
    assert_eq!(
        rec.count(|event| *event == Ev::Close),
        0,
        "stop does not close the store"
    );
    engine.close().await.unwrap();
    assert_eq!(rec.count(|event| *event == Ev::Close), 1, "close does");
}

#[tokio::test]
async fn stop_on_a_never_started_engine_only_changes_the_state() {
    let (engine, rec, _clock) = engine();
    assert_eq!(engine.state(), ManagerState::Init);
    engine.stop().await.unwrap();
    assert_eq!(engine.state(), ManagerState::Stopped);
    assert!(rec.log().is_empty(), "nothing ran, nothing to release");
    assert!(matches!(
        engine.start().await,
        Err(RuntimeError::AlreadyStopped)
    ));
    engine.close().await.unwrap();
    assert_eq!(rec.log(), [Ev::Close]);
}

#[tokio::test]
async fn cancel_task_fires_the_running_handlers_token() {
    let (engine, rec, _clock) = engine();
    let r = rec.clone();
    engine
        .register("waits", move |task: TaskHandle| {
            let rec = r.clone();
            async move {
                rec.push(Ev::Started(task.id()));
                task.cancellation().cancelled().await;
                rec.push(Ev::Started(TaskId(-task.id().0)));
                Ok::<Outcome, HandlerError>(json!("ignored").into())
            }
        })
        .expect("register");
    rec.script_claim(Ok(vec![running_task(7, "waits", 1, t0())]));
    engine.start().await.unwrap();
    rec.wait("running", |log| log.contains(&Ev::Started(TaskId(7))))
        .await;
    engine
        .cancel_task(TaskId(7), Some("operator said no".into()))
        .await
        .unwrap();
    rec.wait("the handler saw its cancellation", |log| {
        log.contains(&Ev::Started(TaskId(-7)))
    })
    .await;
    rec.wait_count("the late write", 2, |event| matches!(event, Ev::Apply(..)))
        .await;
    let commands = rec.applies_to(7);
    assert_eq!(
        commands[0],
        Command::Cancel {
            reason: Some("operator said no".into())
        }
    );
    assert!(
        is_complete(&commands[1], &json!("ignored")),
        "the store fences it out"
    );
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn pause_task_of_a_running_attempt_drops_an_uncooperative_handler_after_the_grace() {
    let (engine, rec, clock) = engine();
    let r = rec.clone();
    engine
        .register("stubborn", move |task: TaskHandle| {
            let rec = r.clone();
            async move {
                let _flag = DropFlag(rec.clone(), task.id());
                rec.push(Ev::Started(task.id()));
                std::future::pending::<()>().await;
                Ok::<Outcome, HandlerError>(json!(null).into())
            }
        })
        .expect("register");
    rec.script_claim(Ok(vec![running_task(3, "stubborn", 1, t0())]));
    engine.start().await.unwrap();
    rec.wait("running", |log| log.contains(&Ev::Started(TaskId(3))))
        .await;
    engine.pause_task(TaskId(3)).await.unwrap();
    settle().await;
    assert_eq!(engine.in_flight(), 1, "the grace period runs on the clock");
    clock.advance(Duration::from_secs(30));
    rec.wait("handler dropped", |log| {
        log.contains(&Ev::Dropped(TaskId(3)))
    })
    .await;
    settle().await;
    assert_eq!(
        rec.applies_to(3),
        [Command::Pause],
        "nothing written after the pause"
    );
    assert_eq!(engine.in_flight(), 0);
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn resume_task_passes_outstanding_children_of_a_waiting_parent() {
    let (engine, rec, _clock) = engine();
    let mut parent = running_task(5, "parent", 3, t0());
    parent.status = TaskStatus::Suspended;
    parent.suspend_reason = Some("awaiting_subtasks".into());
    parent.stage = 1;
    rec.tasks.lock().unwrap().insert(TaskId(5), parent);
    *rec.outstanding.lock().unwrap() = 2;
    engine
        .resume_task(TaskId(5), Some("operator".into()))
        .await
        .unwrap();
    assert_eq!(
        rec.applies_to(5),
        [Command::Resume {
            reason: Some("operator".into()),
            outstanding_children: 2
        }]
    );
    assert!(
        rec.log().contains(&Ev::Outstanding(TaskId(5), 3)),
        "the round is the attempt that spawned the children"
    );

    let mut human = running_task(6, "approval", 1, t0());
    human.status = TaskStatus::Suspended;
    human.suspend_reason = Some("awaiting_approval".into());
    rec.tasks.lock().unwrap().insert(TaskId(6), human);
    engine.resume_task(TaskId(6), None).await.unwrap();
    assert_eq!(
        rec.applies_to(6),
        [Command::Resume {
            reason: None,
            outstanding_children: 0
        }],
        "only parents awaiting subtasks count children"
    );
    assert_eq!(
        rec.count(|event| matches!(event, Ev::Outstanding(..))),
        1,
        "asked once, for the parent"
    );
    let missing = engine.resume_task(TaskId(99), None).await;
    assert!(
        matches!(
            missing,
            Err(RuntimeError::Store(PortError::NotFound(TaskId(99))))
        ),
        "{missing:?}"
    );
}

#[tokio::test]
async fn domain_rejections_surface_as_invalid_input() {
    let (engine, rec, _clock) = engine();
    let illegal = DomainError::IllegalTransition {
        task_id: TaskId(1),
        from: TaskStatus::Completed,
        command: "pause",
    };
    rec.apply_results
        .lock()
        .unwrap()
        .push_back(Err(PortError::Rejected(illegal.clone())));
    let refused = engine.pause_task(TaskId(1)).await;
    assert!(
        matches!(&refused, Err(RuntimeError::InvalidInput(error)) if *error == illegal),
        "{refused:?}"
    );
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("`pause` is not allowed from status completed")
    );
    rec.apply_results
        .lock()
        .unwrap()
        .push_back(Err(PortError::Database {
            backend: "mock",
            message: "disk full".into(),
        }));
    let failed = engine.cancel_task(TaskId(1), None).await;
    assert!(matches!(
        failed,
        Err(RuntimeError::Store(PortError::Database { .. }))
    ));
    assert_eq!(
        rec.applies_to(1),
        [Command::Pause, Command::Cancel { reason: None }]
    );
}

#[tokio::test]
async fn a_handler_cancelling_its_own_token_does_not_cancel_the_attempt() {
    let (engine, rec, _clock) = engine();
    engine
        .register("self_cancel", |task: TaskHandle| async move {
            task.cancellation().cancel();
            tokio::task::yield_now().await;
            Ok::<_, HandlerError>(json!("still recorded"))
        })
        .expect("register");
    rec.script_claim(Ok(vec![running_task(1, "self_cancel", 1, t0())]));
    engine.start().await.unwrap();
    rec.wait_count("the completion", 1, |event| matches!(event, Ev::Apply(..)))
        .await;
    assert!(is_complete(&rec.applies_to(1)[0], &json!("still recorded")));
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn resume_task_wakes_the_claim_loop() {
    let (engine, rec, _clock) = engine();
    engine
        .register("echo", |_t: TaskHandle| async {
            Ok::<_, HandlerError>(json!(1))
        })
        .expect("register");
    let mut paused = running_task(2, "echo", 1, t0());
    paused.status = TaskStatus::Paused;
    rec.tasks.lock().unwrap().insert(TaskId(2), paused);
    engine.start().await.unwrap();
    rec.wait_count("the first claim", 1, |event| matches!(event, Ev::Claim(_)))
        .await;
    settle().await;
    assert_eq!(rec.claims().len(), 1, "idle until the poll interval");
    engine.resume_task(TaskId(2), None).await.unwrap();
    rec.wait_count("a claim right after the resume", 2, |event| {
        matches!(event, Ev::Claim(_))
    })
    .await;
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn dropping_the_last_engine_clone_ends_the_loops() {
    let (engine, rec, clock) = engine();
    engine
        .register("echo", |_t: TaskHandle| async {
            Ok::<_, HandlerError>(json!(1))
        })
        .expect("register");
    engine.start().await.unwrap();
    let clone = engine.clone();
    rec.wait_count("the first claim", 1, |event| matches!(event, Ev::Claim(_)))
        .await;
    drop(engine);
    clock.advance(Duration::from_secs(1));
    rec.wait_count("a clone keeps the engine running", 2, |event| {
        matches!(event, Ev::Claim(_))
    })
    .await;
    drop(clone);
    settle().await;
    let claims = rec.claims().len();
    for _ in 0..3 {
        clock.advance(Duration::from_secs(5));
        settle().await;
    }
    assert_eq!(
        rec.claims().len(),
        claims,
        "no claim once every handle is gone"
    );
    assert_eq!(
        clock.sleepers(),
        0,
        "no loop is waiting on the clock any more"
    );
}
