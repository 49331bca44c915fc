//! What operator tools (the CLI, the dashboard) use from the facade: the manager's clock,
//! audit queries across tasks, and closing a manager that was only opened.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fib_flow::prelude::*;
use fib_flow::{AttemptQuery, EventQuery, EventType, PageRequest, testing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_queries_span_tasks_and_now_follows_the_manual_clock() {
    let (manager, clock) = testing::manager().await.unwrap();
    manager
        .register("noop", |_task: TaskHandle| async {
            Ok::<Outcome, HandlerError>(json!(null).into())
        })
        .unwrap();
    let before = manager.now();
    clock.advance(Duration::from_secs(90));
    assert_eq!(manager.now() - before, chrono::Duration::seconds(90));

    for _ in 0..3 {
        manager
            .enqueue("noop", json!({}), TaskOptions::default())
            .await
            .unwrap();
    }
    manager.start().await.unwrap();
    testing::run_until_idle(&manager).await.unwrap();

    let created = manager
        .query_events(
            EventQuery {
                event_type: Some(EventType::TaskCreated),
                ..EventQuery::default()
            },
            PageRequest::limit(10),
        )
        .await
        .unwrap();
    assert_eq!(created.total, 3);
    assert!(
        created
            .items
            .iter()
            .all(|event| event.event_type == EventType::TaskCreated.as_str())
    );
    let distinct_tasks: std::collections::HashSet<_> =
        created.items.iter().map(|event| event.task_id).collect();
    assert_eq!(distinct_tasks.len(), 3);

    let attempts = manager
        .query_attempts(
            AttemptQuery {
                worker_id: Some(manager.worker_id().to_owned()),
                ..AttemptQuery::default()
            },
            PageRequest::limit(10),
        )
        .await
        .unwrap();
    assert_eq!(attempts.total, 3);
    manager.stop().await.unwrap();
}

#[tokio::test]
async fn stop_keeps_the_store_open_and_close_closes_it() {
    let manager = TaskManager::new(ManagerOptions::new("sqlite::memory:"))
        .await
        .unwrap();
    manager.setup().await.unwrap();
    manager.stop().await.unwrap();
    assert!(manager.get_task(TaskId(1)).await.unwrap().is_none());
    manager.close().await.unwrap();
    assert!(manager.get_task(TaskId(1)).await.is_err());
}
