//! Commands on one task (`pause_task`, `resume_task`, `cancel_task`, `retry_task`): the store
//! applies the domain's transition, then an attempt of that task in flight here is cancelled
//! (its late write is fenced out) and the claim loop is woken where the task became due.

use fib_flow_domain::{Command, Task, TaskId, TaskStatus};
use fib_flow_ports::PortError;

use crate::cancel::CancelReason;
use crate::engine::Engine;
use crate::error::RuntimeError;

/// The reason suspended parents carry while their children run.
const AWAITING_SUBTASKS: &str = "awaiting_subtasks";

impl Engine {
    /// Pauses one task (`pending`, `running`, `failed`, `timeout`). A running attempt in this
    /// engine is cancelled through its token; its late write is fenced out.
    pub async fn pause_task(&self, id: TaskId) -> Result<Task, RuntimeError> {
        let now = self.inner.clock.now();
        let task = self.inner.store.apply(id, Command::Pause, now).await?;
        self.inner.cancel_task_locally(id, CancelReason::Admin);
        self.inner.task_changed();
        Ok(task)
    }

    /// Resumes a paused, failed, timed-out, running or suspended task (`pending`, retry count
    /// 0). A parent still waiting for children of its round is refused
    /// (`DomainError::AwaitingChildren`). Wakes the claim loop.
    pub async fn resume_task(
        &self,
        id: TaskId,
        reason: Option<String>,
    ) -> Result<Task, RuntimeError> {
        let current = self
            .inner
            .store
            .get_task(id)
            .await?
            .ok_or(RuntimeError::Store(PortError::NotFound(id)))?;
        let outstanding_children = if current.status == TaskStatus::Suspended
            && current.suspend_reason.as_deref() == Some(AWAITING_SUBTASKS)
        {
            self.inner
                .store
                // A round is identified by the attempt that returned `next()` (docs/workflows.md);
                // a suspended parent still holds that attempt number.
                .outstanding_children(id, current.attempt)
                .await?
        } else {
            0
        };
        let now = self.inner.clock.now();
        let task = self
            .inner
            .store
            .apply(
                id,
                Command::Resume {
                    reason,
                    outstanding_children,
                },
                now,
            )
            .await?;
        self.inner.cancel_task_locally(id, CancelReason::Admin);
        self.inner.task_changed();
        self.inner.wake.notify_one();
        Ok(task)
    }

    /// Cancels a task from any non-terminal status (`permanently_failed`, error `reason` or
    /// `Task cancelled`). A running attempt in this engine is cancelled through its token.
    pub async fn cancel_task(
        &self,
        id: TaskId,
        reason: Option<String>,
    ) -> Result<Task, RuntimeError> {
        let now = self.inner.clock.now();
        let task = self
            .inner
            .store
            .apply(id, Command::Cancel { reason }, now)
            .await?;
        self.inner.cancel_task_locally(id, CancelReason::Admin);
        self.inner.task_changed();
        Ok(task)
    }

    /// Brings a dead task back: a `permanently_failed` task (retries exhausted, a permanent
    /// error, a cancel) or a `paused` one goes back to `pending` now, from stage 0, with its
    /// whole retry budget, keeping its id and history (event `task_retried`, `reason` or
    /// `manual`). Any other status is a typed error naming the transition.
    pub async fn retry_task(
        &self,
        id: TaskId,
        reason: Option<String>,
    ) -> Result<Task, RuntimeError> {
        let now = self.inner.clock.now();
        let task = self
            .inner
            .store
            .apply(id, Command::Retry { reason }, now)
            .await?;
        self.inner.wake.notify_one();
        self.inner.task_changed();
        Ok(task)
    }
}
