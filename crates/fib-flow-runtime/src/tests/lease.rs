//! The worker registry from the engine's side: registration, superseding, fencing, revival,
//! recovery of lost attempts, the `stopped` mark, and a cooperative stop.

use std::sync::Arc;
use std::time::Duration;

use fib_flow_domain::{Command, TaskId, WorkerStatus};
use fib_flow_ports::{HandlerError, Outcome, TaskHandle};
use serde_json::json;

use super::*;
use crate::RuntimeError;

fn pod_options(worker_id: &str, pod_id: &str) -> ManagerOptions {
    ManagerOptions {
        worker_id: Some(worker_id.into()),
        pod_id: Some(pod_id.into()),
        ..options()
    }
}

fn position(log: &[Ev], pred: impl Fn(&Ev) -> bool) -> usize {
    log.iter()
        .position(pred)
        .unwrap_or_else(|| panic!("event missing from {log:#?}"))
}

/// Registers `echo`, starts, and waits for the first claim round.
async fn start_claiming(engine: &Engine, rec: &Rec) {
    engine.register("echo", echo).unwrap();
    engine.start().await.unwrap();
    rec.wait_count("a claim", 1, |event| matches!(event, Ev::Claim(_)))
        .await;
}

async fn echo(task: TaskHandle) -> Result<Outcome, HandlerError> {
    Ok(task.payload().clone().into())
}

#[tokio::test]
async fn start_registers_supersedes_its_pod_reaps_and_recovers_before_claiming() {
    let (engine, rec, _clock) = engine_with(pod_options("w-new", "pod-a"));
    rec.put_worker(
        "w-old",
        "pod-a",
        WorkerStatus::Active,
        t0() + Duration::from_secs(60),
    );
    rec.put_worker(
        "w-gone",
        "pod-b",
        WorkerStatus::Active,
        t0() - Duration::from_secs(1),
    );
    rec.put_worker(
        "w-alive",
        "pod-b",
        WorkerStatus::Active,
        t0() + Duration::from_secs(1),
    );
    start_claiming(&engine, &rec).await;

    let log = rec.log();
    let registered = position(&log, |e| *e == Ev::Register("w-new".into(), false));
    let superseded = position(&log, |e| *e == Ev::Supersede(vec!["w-old".into()], true));
    let reaped = position(&log, |e| *e == Ev::Reap(vec!["w-gone".into()], true));
    let claimed = position(&log, |e| matches!(e, Ev::Claim(_)));
    assert!(registered < superseded && superseded < reaped);
    assert!(reaped < claimed, "no claim before the start-up recovery");
    assert!(rec.claims().iter().all(|claim| claim.require_active_lease));
    assert_eq!(rec.worker_status("w-old"), Some(WorkerStatus::Superseded));
    assert_eq!(rec.worker_status("w-gone"), Some(WorkerStatus::Dead));
    assert_eq!(rec.worker_status("w-alive"), Some(WorkerStatus::Active));
    assert!(engine.is_leased());
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn without_a_pod_id_a_worker_supersedes_nobody() {
    let (engine, rec, _clock) = engine();
    rec.put_worker(
        "other",
        "w1",
        WorkerStatus::Active,
        t0() + Duration::from_secs(60),
    );
    start_claiming(&engine, &rec).await;
    assert_eq!(rec.count(|e| matches!(e, Ev::Supersede(..))), 0);
    assert_eq!(rec.worker_status("other"), Some(WorkerStatus::Active));
    let own = rec.workers.lock().unwrap().get("w1").cloned().unwrap();
    assert_eq!(own.pod_id, "w1", "a pod of its own");
    assert_eq!(own.expires_at, t0() + Duration::from_secs(30));
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn a_superseded_worker_stops_claiming_and_revives_when_its_successor_dies() {
    let (engine, rec, clock) = engine_with(pod_options("w-1", "pod-a"));
    assert!(matches!(
        engine.run_lease_check().await,
        Err(RuntimeError::NotRunning { state: "init" })
    ));
    start_claiming(&engine, &rec).await;

    // A newer worker of the pod takes over (as its start would do).
    rec.put_worker(
        "w-2",
        "pod-a",
        WorkerStatus::Active,
        clock.now() + Duration::from_secs(30),
    );
    rec.workers.lock().unwrap().get_mut("w-1").unwrap().status = WorkerStatus::Superseded;
    assert!(!engine.run_lease_check().await.unwrap(), "fenced");
    assert!(!engine.is_leased());
    settle().await;
    let claims = rec.claims().len();
    for _ in 0..3 {
        clock.advance(Duration::from_secs(1));
        settle().await;
    }
    assert_eq!(rec.claims().len(), claims, "a fenced worker claims nothing");
    assert_eq!(
        rec.worker_status("w-1"),
        Some(WorkerStatus::Superseded),
        "its heartbeat is a no-op"
    );

    // The successor's lease runs out: it is reaped, and the old worker comes back.
    clock.advance(Duration::from_secs(30));
    assert!(engine.run_lease_check().await.unwrap(), "revived");
    assert_eq!(rec.worker_status("w-2"), Some(WorkerStatus::Dead));
    assert_eq!(rec.worker_status("w-1"), Some(WorkerStatus::Active));
    assert!(
        rec.log().contains(&Ev::Register("w-1".into(), true)),
        "meta gains recovered_at"
    );
    rec.wait_count("claims again", claims + 1, |event| {
        matches!(event, Ev::Claim(_))
    })
    .await;
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn an_evicted_worker_with_no_successor_re_registers() {
    let (engine, rec, _clock) = engine_with(pod_options("w-1", "pod-a"));
    start_claiming(&engine, &rec).await;
    // A peer reaped us while we were unreachable.
    rec.workers.lock().unwrap().get_mut("w-1").unwrap().status = WorkerStatus::Dead;
    assert!(engine.run_lease_check().await.unwrap());
    assert_eq!(rec.worker_status("w-1"), Some(WorkerStatus::Active));
    assert!(rec.log().contains(&Ev::Register("w-1".into(), true)));
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn attempts_owned_here_but_not_running_are_recovered_without_a_retry() {
    let (engine, rec, clock) = engine();
    let r = rec.clone();
    engine
        .register("hangs", move |task: TaskHandle| {
            let rec = r.clone();
            async move {
                rec.push(Ev::Started(task.id()));
                std::future::pending::<()>().await;
                Ok::<Outcome, HandlerError>(json!(null).into())
            }
        })
        .unwrap();
    rec.script_claim(Ok(vec![running_task(8, "hangs", 1, t0())]));
    engine.start().await.unwrap();
    rec.wait_count("running", 1, |event| matches!(event, Ev::Started(_)))
        .await;

    *rec.idle.lock().unwrap() = vec![(TaskId(7), 3), (TaskId(8), 1)];
    assert!(engine.run_lease_check().await.unwrap());
    assert_eq!(
        rec.applies_to(7),
        vec![Command::Recover {
            attempt: 3,
            by_worker_id: "w1".into(),
            by_pod_id: None,
        }]
    );
    assert!(rec.applies_to(8).is_empty(), "in flight here: not lost");
    let stopping = tokio::spawn({
        let engine = engine.clone();
        async move { engine.stop().await }
    });
    settle().await;
    clock.advance(Duration::from_secs(30));
    let stopped = tokio::time::timeout(WAIT_LIMIT, stopping).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
}

#[tokio::test]
async fn without_recover_running_jobs_nothing_is_recovered() {
    let options = ManagerOptions {
        recover_running_jobs: false,
        ..pod_options("w-new", "pod-a")
    };
    let (engine, rec, _clock) = engine_with(options);
    rec.put_worker(
        "w-old",
        "pod-a",
        WorkerStatus::Active,
        t0() + Duration::from_secs(60),
    );
    start_claiming(&engine, &rec).await;
    *rec.idle.lock().unwrap() = vec![(TaskId(7), 3)];
    assert!(engine.run_lease_check().await.unwrap());
    assert_eq!(rec.worker_status("w-old"), Some(WorkerStatus::Superseded));
    assert!(
        rec.log()
            .contains(&Ev::Supersede(vec!["w-old".into()], false))
    );
    assert_eq!(rec.count(|e| matches!(e, Ev::StopWorker(_, true))), 0);
    assert!(rec.applies_to(7).is_empty());
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn stop_marks_the_worker_stopped_after_the_drain() {
    let (engine, rec, _clock) = engine();
    start_claiming(&engine, &rec).await;
    engine.stop().await.unwrap();
    assert_eq!(rec.worker_status("w1"), Some(WorkerStatus::Stopped));
    assert_eq!(
        rec.count(|e| *e == Ev::StopWorker("w1".into(), true)),
        1,
        "with what it lost recovered"
    );
    assert!(!engine.is_leased());
}

#[tokio::test]
async fn a_handler_that_gives_up_on_stop_is_released_not_failed() {
    let (engine, rec, clock) = engine();
    let r = rec.clone();
    engine
        .register("cooperative", move |task: TaskHandle| {
            let rec = r.clone();
            async move {
                rec.push(Ev::Started(task.id()));
                task.cancellation().cancelled().await;
                Err::<Outcome, HandlerError>("stopping: giving up".into())
            }
        })
        .unwrap();
    let r = rec.clone();
    engine
        .register("finisher", move |task: TaskHandle| {
            let rec = r.clone();
            async move {
                rec.push(Ev::Started(task.id()));
                task.cancellation().cancelled().await;
                Ok::<Outcome, HandlerError>(json!("done anyway").into())
            }
        })
        .unwrap();
    rec.script_claim(Ok(vec![
        running_task(1, "cooperative", 2, t0()),
        running_task(2, "finisher", 1, t0()),
    ]));
    engine.start().await.unwrap();
    rec.wait_count("running", 2, |event| matches!(event, Ev::Started(_)))
        .await;
    let stopping = tokio::spawn({
        let engine = engine.clone();
        async move { engine.stop().await }
    });
    settle().await;
    clock.advance(Duration::from_secs(30));
    let stopped = tokio::time::timeout(WAIT_LIMIT, stopping).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
    assert_eq!(
        rec.applies_to(1),
        vec![Command::Release {
            attempt: 2,
            reason: "worker_stopping".into(),
        }],
        "an error after the stop signal is an interruption"
    );
    assert!(
        is_complete(&rec.applies_to(2)[0], &json!("done anyway")),
        "a result returned on stop is kept"
    );
}

#[tokio::test]
async fn a_pause_while_the_registration_is_pending_holds() {
    let (engine, rec, _clock) = engine();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    *rec.registration_gate.lock().unwrap() = Some(gate.clone());
    engine.register("echo", echo).unwrap();
    engine.start().await.unwrap();
    // The claim loop has passed the pause gate and waits for the lease.
    settle().await;
    engine.pause();
    gate.add_permits(1);
    rec.wait("the registration", |log| {
        log.contains(&Ev::Register("w1".into(), false))
    })
    .await;
    settle().await;
    assert!(engine.is_leased());
    assert!(rec.claims().is_empty(), "paused while waiting: no claim");
    engine.resume();
    rec.wait_count("a claim after resume", 1, |event| {
        matches!(event, Ev::Claim(_))
    })
    .await;
    engine.stop().await.unwrap();
}
