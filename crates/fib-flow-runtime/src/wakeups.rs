//! What tells the engine's parts, and its users, that something changed.
//!
//! The claim loop sleeps `poll_interval` unless woken through `Inner::wake`: submissions,
//! registrations, resumes, executions ending and lease changes post to it where they happen,
//! and the store's notifications (PostgreSQL LISTEN/NOTIFY; other backends never notify) post
//! to it from here. Waiters on a task's status (the facade's `wait_for_status`) subscribe to
//! [`Engine::task_changes`], marked by [`Inner::task_changed`] wherever this engine changes a
//! task and on every store notification.

use std::sync::Arc;

use tokio::sync::watch;

use crate::engine::{Engine, Inner};

impl Engine {
    /// A receiver marked changed whenever this engine changes a task's status (claims, the
    /// outcomes of its executions, `pause_task`, `resume_task`, `cancel_task`, `retry_task`,
    /// expiries of its sweeps, recoveries of its lease checks) and whenever the store
    /// notifies (PostgreSQL). A hint to read the task again, not a report of what changed:
    /// changes made by other processes send nothing unless the store notifies, so a waiter
    /// also reads again now and then.
    pub fn task_changes(&self) -> watch::Receiver<()> {
        self.inner.task_changes.subscribe()
    }
}

impl Inner {
    /// Tells the waiters of [`Engine::task_changes`] to look again.
    pub(crate) fn task_changed(&self) {
        self.task_changes.send_replace(());
    }

    /// Wakes the claim loop, and the status waiters, whenever the store reports that work may
    /// be due (a task written by another process).
    pub(crate) async fn notification_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.store.wait_for_notification() => {
                    self.wake.notify_one();
                    self.task_changed();
                }
                () = self.background_shutdown.cancelled() => break,
            }
        }
    }
}
