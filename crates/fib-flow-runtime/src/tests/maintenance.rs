//! Heartbeats, the expiry sweep and retention.

use std::time::Duration;

use fib_flow_domain::{Command, ExpiryKind, RetentionPolicy, TaskId, TaskStatus};
use fib_flow_ports::{Expiry, HandlerError, Outcome, RetentionReport, TaskHandle};
use serde_json::json;

use super::*;

/// Registers `name` with a handler that reports its start and never returns.
fn register_hanging(engine: &Engine, rec: &Arc<Rec>, name: &str) {
    let r = rec.clone();
    engine
        .register(name.to_owned(), move |task: TaskHandle| {
            let rec = r.clone();
            async move {
                let _flag = DropFlag(rec.clone(), task.id());
                rec.push(Ev::Started(task.id()));
                std::future::pending::<()>().await;
                Ok::<Outcome, HandlerError>(json!(null).into())
            }
        })
        .expect("register");
}

fn report(tasks: u64) -> RetentionReport {
    RetentionReport {
        tasks_deleted: tasks,
        events_deleted: tasks * 3,
        attempts_deleted: tasks,
    }
}

#[tokio::test]
async fn heartbeat_sends_the_in_flight_attempts() {
    let (engine, rec, clock) = engine();
    register_hanging(&engine, &rec, "long");
    rec.script_claim(Ok(vec![
        running_task(1, "long", 1, t0()),
        running_task(2, "long", 3, t0()),
    ]));
    engine.start().await.unwrap();
    rec.wait_count("both running", 2, |event| matches!(event, Ev::Started(_)))
        .await;
    let manual = engine.run_maintenance().await.unwrap();
    assert_eq!(manual.heartbeats, 2);
    let expected = Ev::Heartbeat("w1".into(), vec![(TaskId(1), 1), (TaskId(2), 3)]);
    assert!(rec.log().contains(&expected), "{:#?}", rec.log());
    // The background loop does the same every task_heartbeat_interval.
    clock.advance(Duration::from_secs(5));
    rec.wait_count("the periodic heartbeat", 2, |event| *event == expected)
        .await;
    stop_advancing(&engine, &clock).await;
}

#[tokio::test]
async fn no_heartbeat_without_in_flight_work() {
    let (engine, rec, _clock) = engine();
    let report = engine.run_maintenance().await.unwrap();
    assert_eq!(report.heartbeats, 0);
    assert_eq!(rec.count(|event| matches!(event, Ev::Heartbeat(..))), 0);
}

#[tokio::test]
async fn sweep_expires_attempts_and_cancels_local_handlers() {
    let (engine, rec, _clock) = engine();
    register_hanging(&engine, &rec, "hung");
    rec.script_claim(Ok(vec![running_task(1, "hung", 2, t0())]));
    engine.start().await.unwrap();
    rec.wait("running", |log| log.contains(&Ev::Started(TaskId(1))))
        .await;
    rec.expired.lock().unwrap().push_back(vec![
        Expiry {
            task_id: TaskId(1),
            attempt: 2,
            kind: ExpiryKind::Deadline,
        },
        Expiry {
            task_id: TaskId(9),
            attempt: 1,
            kind: ExpiryKind::Heartbeat,
        },
    ]);
    let report = engine.run_maintenance().await.unwrap();
    assert_eq!((report.timed_out_total, report.timed_out_heartbeat), (1, 1));
    rec.wait("the local handler dropped", |log| {
        log.contains(&Ev::Dropped(TaskId(1)))
    })
    .await;
    settle().await;
    assert!(matches!(
        &rec.applies_to(1)[..],
        [Command::Expire { attempt: 2, kind: ExpiryKind::Deadline, jitter }] if (0.0..1.0).contains(jitter)
    ));
    assert!(matches!(
        &rec.applies_to(9)[..],
        [Command::Expire {
            attempt: 1,
            kind: ExpiryKind::Heartbeat,
            ..
        }]
    ));
    assert_eq!(
        engine.in_flight(),
        0,
        "the expired attempt gave its slot back without writing"
    );
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn sweep_skips_rows_settled_meanwhile_and_survives_row_errors() {
    let (engine, rec, _clock) = engine();
    rec.expired.lock().unwrap().push_back(vec![
        Expiry {
            task_id: TaskId(1),
            attempt: 1,
            kind: ExpiryKind::Heartbeat,
        },
        Expiry {
            task_id: TaskId(2),
            attempt: 1,
            kind: ExpiryKind::Heartbeat,
        },
        Expiry {
            task_id: TaskId(3),
            attempt: 1,
            kind: ExpiryKind::Heartbeat,
        },
    ]);
    rec.apply_results.lock().unwrap().extend([
        Err(fib_flow_ports::PortError::Stale {
            task_id: TaskId(1),
            attempt: 1,
        }),
        Err(fib_flow_ports::PortError::Database {
            backend: "mock",
            message: "parent missing".into(),
        }),
    ]);
    let report = engine.run_maintenance().await.unwrap();
    assert_eq!(report.timed_out_heartbeat, 1, "only the third row expired");
    assert_eq!(rec.applies().len(), 3, "every row was attempted");
}

#[tokio::test]
async fn automatic_retention_skips_the_startup_tick_then_runs_one_batch_per_cadence() {
    let (engine, rec, clock) = engine();
    rec.purge_results
        .lock()
        .unwrap()
        .extend([report(100), report(50)]);
    let first = engine.run_maintenance().await.unwrap();
    assert_eq!(
        first.retention,
        RetentionReport::default(),
        "startup tick skipped"
    );
    clock.advance(Duration::from_secs(299));
    assert_eq!(
        engine
            .run_maintenance()
            .await
            .unwrap()
            .retention
            .tasks_deleted,
        0
    );
    clock.advance(Duration::from_secs(1));
    let due = engine.run_maintenance().await.unwrap();
    assert_eq!(due.retention, report(100), "one bounded batch");
    assert_eq!(
        engine
            .run_maintenance()
            .await
            .unwrap()
            .retention
            .tasks_deleted,
        0
    );
    clock.advance(Duration::from_secs(300));
    assert_eq!(
        engine.run_maintenance().await.unwrap().retention,
        report(50)
    );
    let runs: Vec<RetentionRun> = rec
        .log()
        .into_iter()
        .filter_map(|event| match event {
            Ev::Purge(run) => Some(run),
            _ => None,
        })
        .collect();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].batch_size, 100);
    assert_eq!(
        runs[0].statuses,
        [TaskStatus::Completed, TaskStatus::PermanentlyFailed]
    );
    assert_eq!(
        runs[0].cutoff,
        t0() + chrono::TimeDelta::seconds(300) - chrono::TimeDelta::days(1),
        "now - expire_time (1 day by default)"
    );
}

#[tokio::test]
async fn first_automatic_retention_is_one_cadence_after_start() {
    let (engine, rec, clock) = engine();
    engine.start().await.unwrap();
    clock.advance(Duration::from_secs(295));
    settle().await;
    assert_eq!(rec.count(|event| matches!(event, Ev::Purge(_))), 0);
    clock.advance(Duration::from_secs(5));
    rec.wait("the first automatic run", |log| {
        log.iter().any(|event| matches!(event, Ev::Purge(_)))
    })
    .await;
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn run_retention_drains_until_a_short_batch() {
    let (engine, rec, clock) = engine();
    rec.purge_results
        .lock()
        .unwrap()
        .extend([report(100), report(100), report(1)]);
    let total = engine.run_retention(None).await.unwrap();
    assert_eq!(total, report(201));
    assert_eq!(rec.count(|event| matches!(event, Ev::Purge(_))), 3);
    let policy = RetentionPolicy::new(Duration::from_secs(60), vec![TaskStatus::Paused]).unwrap();
    engine.run_retention(Some(policy)).await.unwrap();
    let Some(Ev::Purge(run)) = rec.log().pop() else {
        panic!("a purge was expected last");
    };
    assert_eq!(run.statuses, [TaskStatus::Paused]);
    assert_eq!(run.cutoff, t0() - chrono::TimeDelta::seconds(60));
    // The manual run re-schedules the automatic one a full cadence later.
    clock.advance(Duration::from_secs(299));
    engine.run_maintenance().await.unwrap();
    assert_eq!(rec.count(|event| matches!(event, Ev::Purge(_))), 4);
}

#[tokio::test]
async fn disabled_retention_does_nothing() {
    let options = ManagerOptions {
        retention: Some(fib_flow_domain::RetentionConfig {
            expire_time: Some(Duration::ZERO),
            statuses: None,
        }),
        ..options()
    };
    let (engine, rec, clock) = engine_with(options);
    assert_eq!(
        engine.run_retention(None).await.unwrap(),
        RetentionReport::default()
    );
    engine.run_maintenance().await.unwrap();
    clock.advance(Duration::from_secs(3600));
    engine.run_maintenance().await.unwrap();
    assert_eq!(rec.count(|event| matches!(event, Ev::Purge(_))), 0);
}

/// Stops an engine whose handlers never return: the stop timeout runs on the manual clock,
/// so move it along while `stop` waits.
async fn stop_advancing(engine: &Engine, clock: &ManualClock) {
    let stopping = tokio::spawn({
        let engine = engine.clone();
        async move { engine.stop().await }
    });
    settle().await;
    clock.advance(engine.options().stop_timeout);
    let stopped = tokio::time::timeout(WAIT_LIMIT, stopping).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
}
