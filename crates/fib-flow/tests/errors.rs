//! `Error::kind` on errors that real calls return: the kind does not depend on which layer
//! decided.

#![allow(clippy::unwrap_used)]

use fib_flow::prelude::*;
use fib_flow::{PageRequest, TaskQuery};

async fn manager() -> TaskManager {
    let manager = TaskManager::new(ManagerOptions::new("sqlite::memory:"))
        .await
        .unwrap();
    manager.setup().await.unwrap();
    manager
}

#[tokio::test]
async fn each_rejection_reports_its_kind() {
    let manager = manager().await;
    manager
        .register("noop", |_task: TaskHandle| async {
            Ok::<Outcome, HandlerError>(json!(null).into())
        })
        .unwrap();

    let unknown = manager
        .cancel_task(TaskId(424_242), None)
        .await
        .unwrap_err();
    assert_eq!(unknown.kind(), ErrorKind::NotFound, "{unknown}");

    let unregistered = manager
        .enqueue("nobody-handles-this", json!({}), TaskOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        unregistered.kind(),
        ErrorKind::InvalidInput,
        "{unregistered}"
    );

    let bad_option = manager
        .enqueue(
            "noop",
            json!({}),
            TaskOptions::default().tag("t".repeat(100_000)),
        )
        .await
        .unwrap_err();
    assert_eq!(bad_option.kind(), ErrorKind::InvalidInput, "{bad_option}");

    let bad_page = manager
        .query_tasks(TaskQuery::default(), PageRequest::limit(0))
        .await
        .unwrap_err();
    assert_eq!(bad_page.kind(), ErrorKind::InvalidInput, "{bad_page}");

    let id = manager
        .enqueue("noop", json!({}), TaskOptions::default())
        .await
        .unwrap();
    let not_resumable = manager.resume_task(id, None).await.unwrap_err();
    assert_eq!(
        not_resumable.kind(),
        ErrorKind::IllegalTransition,
        "{not_resumable}"
    );

    manager.stop().await.unwrap();
    let restarted = manager.start().await.unwrap_err();
    assert_eq!(restarted.kind(), ErrorKind::State, "{restarted}");
}

#[tokio::test]
async fn an_unknown_url_scheme_is_a_configuration_error() {
    let error = TaskManager::new(ManagerOptions::new("oracle://db/x"))
        .await
        .err()
        .unwrap();
    assert_eq!(error.kind(), ErrorKind::Configuration, "{error}");
    assert!(!error.is_transient());
}
