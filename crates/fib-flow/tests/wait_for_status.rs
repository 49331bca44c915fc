//! `TaskManager::wait_for_status`: woken by its own engine's changes, by other processes'
//! changes through the backstop read, and an error when the time is up.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fib_flow::prelude::*;
use fib_flow::testing;
use tokio::sync::Semaphore;

/// Generous: these waits end as soon as the status is reached; the bound only fails a hung test.
const PATIENCE: Duration = Duration::from_secs(30);

/// A handler that completes with `"done"` once the returned semaphore gets a permit.
fn gated(manager: &TaskManager, name: &str) -> Arc<Semaphore> {
    let gate = Arc::new(Semaphore::new(0));
    let permits = gate.clone();
    manager
        .register(name, move |_task: TaskHandle| {
            let permits = permits.clone();
            async move {
                permits
                    .acquire()
                    .await
                    .map_err(|error| error.to_string())?
                    .forget();
                Ok::<Outcome, HandlerError>(json!("done").into())
            }
        })
        .unwrap();
    gate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sees_each_change_its_own_engine_makes() {
    let (manager, _clock) = testing::manager().await.unwrap();
    let gate = gated(&manager, "gated");
    let id = manager
        .enqueue("gated", json!({}), TaskOptions::default())
        .await
        .unwrap();
    manager.start().await.unwrap();
    let running = manager
        .wait_for_status(id, &[TaskStatus::Running], PATIENCE)
        .await
        .unwrap();
    assert_eq!(running.status, TaskStatus::Running);
    gate.add_permits(1);
    let done = manager
        .wait_for_status(id, &[TaskStatus::Completed], PATIENCE)
        .await
        .unwrap();
    assert_eq!(done.result, Some(json!("done")));
    manager.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_runs_out_fails_with_the_last_snapshot() {
    let (manager, _clock) = testing::manager().await.unwrap();
    gated(&manager, "never_started");
    let id = manager
        .enqueue("never_started", json!({}), TaskOptions::default())
        .await
        .unwrap();
    let waited = Duration::from_millis(300);
    match manager
        .wait_for_status(id, &[TaskStatus::Completed], waited)
        .await
    {
        Err(Error::WaitTimedOut {
            task,
            statuses,
            waited: reported,
        }) => {
            assert_eq!((task.id, task.status), (id, TaskStatus::Pending));
            assert_eq!(statuses, vec![TaskStatus::Completed]);
            assert_eq!(reported, waited);
        }
        other => panic!("expected WaitTimedOut, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_task_is_not_found() {
    let (manager, _clock) = testing::manager().await.unwrap();
    let missing = manager
        .wait_for_status(TaskId(424_242), &[TaskStatus::Completed], PATIENCE)
        .await;
    assert!(
        matches!(&missing, Err(error) if error.to_string().contains("424242")),
        "{missing:?}"
    );
}

/// A SQLite database file two managers share, removed when dropped.
struct SharedFile(PathBuf);

impl SharedFile {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("fib-flow-wait-{}-{nanos}.db", std::process::id());
        SharedFile(std::env::temp_dir().join(name))
    }

    fn url(&self) -> String {
        format!("sqlite:{}", self.0.display())
    }
}

impl Drop for SharedFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sees_a_change_made_by_another_manager_sharing_the_database() {
    let file = SharedFile::new();
    let options = ManagerOptions {
        poll_interval: Duration::from_millis(50),
        ..ManagerOptions::new(file.url())
    };
    let waiter = TaskManager::new(options.clone()).await.unwrap();
    waiter.setup().await.unwrap();
    gated(&waiter, "elsewhere");
    let worker = TaskManager::new(options).await.unwrap();
    let gate = gated(&worker, "elsewhere");
    worker.start().await.unwrap();

    // Submitted and waited for here, run there: this manager's engine changes nothing and,
    // on SQLite, hears nothing from the other one.
    let id = waiter
        .enqueue("elsewhere", json!({}), TaskOptions::default())
        .await
        .unwrap();
    let running = waiter
        .wait_for_status(id, &[TaskStatus::Running], PATIENCE)
        .await
        .unwrap();
    assert_eq!(running.status, TaskStatus::Running);
    gate.add_permits(1);
    let done = waiter
        .wait_for_status(id, &[TaskStatus::Completed], PATIENCE)
        .await
        .unwrap();
    assert_eq!(done.result, Some(json!("done")));
    assert_eq!(
        done.worker_id.as_deref(),
        Some(worker.worker_id()),
        "run by the other manager"
    );
    worker.stop().await.unwrap();
}
