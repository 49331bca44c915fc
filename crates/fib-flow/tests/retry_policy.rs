//! A `RetryPolicy` given to a task decides its attempts and the delay before each retry.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fib_flow::prelude::*;
use fib_flow::testing;

/// How long after `now` the task is due again.
fn due_in(task: &fib_flow::Task, now: chrono::DateTime<chrono::Utc>) -> Duration {
    (task.next_run_time - now).to_std().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exponential_policy_doubles_the_delay_until_the_attempts_run_out() {
    let (manager, clock) = testing::manager().await.unwrap();
    manager
        .register("always_fails", |_task: TaskHandle| async move {
            Err::<Outcome, HandlerError>("no luck".into())
        })
        .unwrap();
    let policy = RetryPolicy::exponential(3, Duration::from_secs(10));
    let id = manager
        .enqueue(
            "always_fails",
            json!({}),
            TaskOptions::default().retry(policy),
        )
        .await
        .unwrap();
    let stored = manager.get_task(id).await.unwrap().unwrap();
    assert_eq!(stored.retry_policy(), policy);
    manager.start().await.unwrap();

    testing::run_until_idle(&manager).await.unwrap();
    let first = manager.get_task(id).await.unwrap().unwrap();
    assert_eq!((first.status, first.retry_count), (TaskStatus::Pending, 1));
    let wait = due_in(&first, clock.now());
    assert!(
        (Duration::from_secs(5)..=Duration::from_secs(10)).contains(&wait),
        "retry 1 waits the base minus up to half: {wait:?}"
    );

    testing::advance(&manager, &clock, wait).await.unwrap();
    let second = manager.get_task(id).await.unwrap().unwrap();
    assert_eq!(
        (second.status, second.retry_count),
        (TaskStatus::Pending, 2)
    );
    let wait = due_in(&second, clock.now());
    assert!(
        (Duration::from_secs(10)..=Duration::from_secs(20)).contains(&wait),
        "retry 2 waits twice the base minus up to half: {wait:?}"
    );

    testing::advance(&manager, &clock, wait).await.unwrap();
    let last = manager.get_task(id).await.unwrap().unwrap();
    assert_eq!(
        (last.status, last.retry_count),
        (TaskStatus::PermanentlyFailed, 2),
        "three attempts in all"
    );
    manager.stop().await.unwrap();
}
