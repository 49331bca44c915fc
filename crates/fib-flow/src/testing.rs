//! Helpers for testing a service built on fib-flow, without a database server or real time:
//! a manager on a private in-memory SQLite database driven by a [`ManualClock`], a drain that
//! runs every due task to completion, time travel, and a look at what was enqueued.
//!
//! ```
//! use std::time::Duration;
//! use fib_flow::prelude::*;
//!
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), fib_flow::Error> {
//! let (manager, clock) = fib_flow::testing::manager().await?;
//! manager.register("remind", |_task: TaskHandle| async move {
//!     Ok::<Outcome, HandlerError>(json!("sent").into())
//! })?;
//! manager.enqueue("remind", json!({}), TaskOptions::default().delay(Duration::from_secs(3600))).await?;
//! manager.start().await?;
//! fib_flow::testing::run_until_idle(&manager).await?; // nothing is due yet
//! assert_eq!(fib_flow::testing::enqueued(&manager, "remind").await?[0].status, TaskStatus::Pending);
//! fib_flow::testing::advance(&manager, &clock, Duration::from_secs(3600)).await?;
//! assert_eq!(fib_flow::testing::enqueued(&manager, "remind").await?[0].status, TaskStatus::Completed);
//! manager.stop().await?;
//! # Ok(())
//! # }
//! ```
//!
//! The manual clock is the manager's only notion of time: due times, deadlines, retries and
//! cron schedules all follow it, and nothing moves until [`advance`] (or
//! [`ManualClock::advance`]) says so. Handlers still run on the tokio runtime for real, so the
//! drain waits (on the wall clock, bounded by [`IDLE_LIMIT`]) for them to finish.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fib_flow_domain::query::TaskQuery;
use fib_flow_domain::{Task, TaskStatus};
use fib_flow_runtime::clock::ManualClock;

use crate::{Error, ManagerOptions, Result, TaskManager};

/// How long [`run_until_idle`] waits for due work to finish before failing.
pub const IDLE_LIMIT: Duration = Duration::from_secs(30);

/// A manager on a fresh private in-memory SQLite database (schema set up) and the manual clock
/// it runs on, starting at the current instant. Not started.
pub async fn manager() -> Result<(TaskManager, Arc<ManualClock>)> {
    manager_with(ManagerOptions::new("sqlite::memory:")).await
}

/// [`manager`] with your options (its `db_connection` is replaced by a private in-memory
/// database).
pub async fn manager_with(options: ManagerOptions) -> Result<(TaskManager, Arc<ManualClock>)> {
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let options = ManagerOptions {
        db_connection: "sqlite::memory:".to_owned(),
        db_type: None,
        ..options
    };
    let manager = TaskManager::with_clock(options, clock.clone()).await?;
    manager.setup().await?;
    Ok((manager, clock))
}

/// Waits until nothing is due or running (on the manager's clock): every task due now has run,
/// and so have the ones that became due meanwhile (children, retries without delay). Tasks due
/// later stay pending. The manager must be started. Fails with [`Error::NotIdle`] after
/// [`IDLE_LIMIT`].
pub async fn run_until_idle(manager: &TaskManager) -> Result<()> {
    run_until_idle_within(manager, IDLE_LIMIT).await
}

/// [`run_until_idle`] with your own bound.
pub async fn run_until_idle_within(manager: &TaskManager, limit: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let busy = busy_tasks(manager).await?;
        if busy.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= limit {
            return Err(Error::NotIdle {
                busy: busy.into_iter().map(|task| task.id).collect(),
                waited: limit,
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Moves the clock forward by `by`, then [`run_until_idle`].
pub async fn advance(manager: &TaskManager, clock: &ManualClock, by: Duration) -> Result<()> {
    // The claim loop's idle wait is on this clock, so moving it wakes the loop.
    clock.advance(by);
    run_until_idle(manager).await
}

/// Every task submitted under `name`, by id: to assert what was enqueued.
pub async fn enqueued(manager: &TaskManager, name: &str) -> Result<Vec<Task>> {
    manager
        .get_tasks(TaskQuery {
            name: Some(name.to_owned()),
            ..TaskQuery::default()
        })
        .await
}

/// Tasks running, or pending and due on the manager's clock, from one snapshot (two queries
/// could both miss a task claimed between them).
async fn busy_tasks(manager: &TaskManager) -> Result<Vec<Task>> {
    let now = manager.now();
    Ok(manager
        .get_tasks(TaskQuery::default())
        .await?
        .into_iter()
        .filter(|task| {
            task.status == TaskStatus::Running
                || (task.status == TaskStatus::Pending && task.next_run_time <= now)
        })
        .collect())
}
