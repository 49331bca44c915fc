//! The user-facing test helpers (`fib_flow::testing`).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fib_flow::prelude::*;
use fib_flow::testing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_wait_for_the_manual_clock_and_a_hung_handler_is_reported() {
    let (manager, clock) = testing::manager().await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    manager
        .register("flaky", move |_task: TaskHandle| {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err::<Outcome, HandlerError>("first run fails".into())
                } else {
                    Ok(json!("ok").into())
                }
            }
        })
        .unwrap();
    let options = TaskOptions::default()
        .max_retries(2)
        .retry_interval(Duration::from_secs(10));
    let id = manager.enqueue("flaky", json!({}), options).await.unwrap();
    manager.start().await.unwrap();

    testing::run_until_idle(&manager).await.unwrap();
    let waiting = &testing::enqueued(&manager, "flaky").await.unwrap()[0];
    assert_eq!((waiting.id, waiting.status), (id, TaskStatus::Pending));
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the retry is not due yet");

    testing::advance(&manager, &clock, Duration::from_secs(10))
        .await
        .unwrap();
    let done = &testing::enqueued(&manager, "flaky").await.unwrap()[0];
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    manager
        .register("hangs", |task: TaskHandle| async move {
            // Until cancelled: the cancel at the end ends it at once.
            task.cancellation().cancelled().await;
            Ok::<Outcome, HandlerError>(json!(null).into())
        })
        .unwrap();
    let hung = manager
        .enqueue("hangs", json!({}), TaskOptions::default())
        .await
        .unwrap();
    match testing::run_until_idle_within(&manager, Duration::from_millis(200)).await {
        Err(Error::NotIdle { busy, .. }) => assert_eq!(busy, vec![hung]),
        other => panic!(
            "expected NotIdle, got {other:?}; task {:?}",
            manager.get_task(hung).await.unwrap()
        ),
    }
    manager.cancel_task(hung, None).await.unwrap();
    manager.stop().await.unwrap();
}
