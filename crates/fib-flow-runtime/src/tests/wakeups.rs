//! `Engine::task_changes`: marked where this engine changes a task and on store notifications.

use std::sync::Arc;

use fib_flow_domain::TaskId;
use fib_flow_ports::{HandlerError, Outcome, TaskHandle};
use serde_json::json;
use tokio::sync::Semaphore;

use super::*;

/// Waits (bounded by [`WAIT_LIMIT`]) for the receiver to be marked changed.
async fn marked(changes: &mut watch::Receiver<()>, what: &str) {
    match tokio::time::timeout(WAIT_LIMIT, changes.changed()).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("the engine dropped its change signal while waiting for {what}"),
        Err(_) => panic!("no change announced for {what}"),
    }
}

#[tokio::test]
async fn control_commands_announce_their_change() {
    let (engine, _rec, _clock) = engine();
    let mut changes = engine.task_changes();
    assert!(!changes.has_changed().unwrap(), "nothing happened yet");
    engine.pause_task(TaskId(1)).await.unwrap();
    assert!(changes.has_changed().unwrap(), "pause_task");
    changes.borrow_and_update();
    engine.cancel_task(TaskId(1), None).await.unwrap();
    assert!(changes.has_changed().unwrap(), "cancel_task");
    changes.borrow_and_update();
    engine.retry_task(TaskId(1), None).await.unwrap();
    assert!(changes.has_changed().unwrap(), "retry_task");
}

#[tokio::test]
async fn a_claim_and_then_the_written_outcome_announce_their_change() {
    let (engine, rec, _clock) = engine();
    let finish = Arc::new(Semaphore::new(0));
    let gate = finish.clone();
    let r = rec.clone();
    engine
        .register("gated", move |task: TaskHandle| {
            let (gate, rec) = (gate.clone(), r.clone());
            async move {
                rec.push(Ev::Started(task.id()));
                gate.acquire()
                    .await
                    .map_err(|error| error.to_string())?
                    .forget();
                Ok::<Outcome, HandlerError>(json!("done").into())
            }
        })
        .expect("register");
    let mut changes = engine.task_changes();
    rec.script_claim(Ok(vec![running_task(5, "gated", 1, t0())]));
    engine.start().await.unwrap();
    // The test runtime has one thread: the handler starts only after the claim round that
    // launched it announced the claim.
    rec.wait("running", |log| log.contains(&Ev::Started(TaskId(5))))
        .await;
    assert!(changes.has_changed().unwrap(), "the claim");
    changes.borrow_and_update();
    settle().await;
    assert!(
        !changes.has_changed().unwrap(),
        "nothing more while the handler runs"
    );
    finish.add_permits(1);
    marked(&mut changes, "the outcome").await;
    assert!(
        rec.applies_to(5)
            .iter()
            .any(|command| is_complete(command, &json!("done"))),
        "announced once the outcome is written"
    );
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn a_store_notification_is_announced() {
    let (engine, rec, _clock) = engine();
    let mut changes = engine.task_changes();
    engine.start().await.unwrap();
    settle().await;
    changes.borrow_and_update();
    rec.notify.notify_one();
    marked(&mut changes, "the store notification").await;
    engine.stop().await.unwrap();
}
