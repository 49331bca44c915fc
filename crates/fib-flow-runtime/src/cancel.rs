//! Cancelling attempts in flight in this engine: each has a token handed to its handler and
//! the first reason it was cancelled for, which decides what its execution writes (nothing, a
//! failure, a release). Task control, the expiry sweep, deadlines and `stop` cancel through it.

use std::sync::{Arc, OnceLock, PoisonError};

use fib_flow_domain::TaskId;
use tokio_util::sync::CancellationToken;

use crate::engine::Inner;

/// Why an in-flight attempt's cancellation token fired; decides what the execution writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelReason {
    /// `cancel_task`, `pause_task` or `resume_task` already moved the row: the handler gets a
    /// grace period to notice; its late write is fenced out.
    Admin,
    /// A sweep expired the attempt (already written): drop the handler, write nothing.
    Expired,
    /// The deadline passed locally: drop the handler, write `Fail { timed_out: true }`.
    Deadline,
    /// `stop()` gave up waiting: drop the handler, release the task.
    Stopping,
}

/// One in-flight attempt's cancellation: the token handed to the handler and the first reason
/// it was cancelled for (later reasons are ignored).
#[derive(Debug, Clone, Default)]
pub(crate) struct Cancel {
    pub(crate) token: CancellationToken,
    reason: Arc<OnceLock<CancelReason>>,
}

impl Cancel {
    /// Cancels for `reason` unless already cancelled for another one.
    pub(crate) fn cancel(&self, reason: CancelReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// The reason the token fired (`Admin` if it was cancelled without one).
    pub(crate) fn reason(&self) -> CancelReason {
        self.reason.get().copied().unwrap_or(CancelReason::Admin)
    }
}

/// An attempt executing in this engine.
#[derive(Debug, Clone)]
pub(crate) struct InFlight {
    pub(crate) name: String,
    pub(crate) cancel: Cancel,
}

impl Inner {
    /// Fires the token of every local attempt of `id`.
    pub(crate) fn cancel_task_locally(&self, id: TaskId, reason: CancelReason) {
        let in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for ((task_id, attempt), entry) in in_flight.iter() {
            if *task_id == id {
                tracing::debug!(task_id = %id, attempt, ?reason, "cancelling local execution");
                entry.cancel.cancel(reason);
            }
        }
    }

    /// Fires the token of one local attempt, if it is in flight here.
    pub(crate) fn cancel_attempt_locally(&self, id: TaskId, attempt: i32, reason: CancelReason) {
        let in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = in_flight.get(&(id, attempt)) {
            tracing::debug!(task_id = %id, attempt, ?reason, "cancelling local execution");
            entry.cancel.cancel(reason);
        }
    }
}
