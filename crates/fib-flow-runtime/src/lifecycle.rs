//! The engine's lifecycle: `start` (spawns the lease, claim, maintenance and notification
//! loops), graceful `stop` (stop claiming, drain, cancel and release what is left, stop the
//! background loops, mark the worker stopped) and `close`.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use fib_flow_domain::time;
use tokio::task::JoinHandle;

use crate::cancel::{Cancel, CancelReason};
use crate::engine::{Engine, Inner, ManagerState};
use crate::error::RuntimeError;

/// Background tasks spawned by `start`.
#[derive(Default)]
pub(crate) struct Background {
    claim_loop: Option<JoinHandle<()>>,
    others: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Starts the claim loop, the maintenance loop and the notification listener.
    /// A running engine is left alone; a stopped one cannot be restarted.
    pub async fn start(&self) -> Result<(), RuntimeError> {
        let mut previous = ManagerState::Init;
        self.inner.state.send_if_modified(|state| {
            previous = *state;
            if *state == ManagerState::Init && !self.inner.stopping.load(Ordering::SeqCst) {
                *state = ManagerState::Running;
                true
            } else {
                false
            }
        });
        match previous {
            ManagerState::Stopped => return Err(RuntimeError::AlreadyStopped),
            ManagerState::Running => {
                tracing::debug!(worker_id = %self.inner.worker_id, "start: already running");
                return Ok(());
            }
            // A `stop` of the never-started engine is under way: it wins.
            ManagerState::Init if self.inner.stopping.load(Ordering::SeqCst) => {
                return Err(RuntimeError::AlreadyStopped);
            }
            ManagerState::Init => {}
        }
        let now = self.inner.clock.now();
        if self.inner.retention.is_some() {
            // First automatic retention run one cadence after start (the startup tick is
            // skipped), so starting a worker never begins with a large delete.
            *self
                .inner
                .retention_due
                .lock()
                .unwrap_or_else(PoisonError::into_inner) =
                Some(time::add(now, self.inner.options.retention_interval));
        }
        let _ = self.inner.started_at.set(now);
        let lease = tokio::spawn(self.inner.clone().lease_loop());
        let claim_loop = tokio::spawn(self.inner.clone().claim_loop());
        let maintenance = tokio::spawn(self.inner.clone().maintenance_loop());
        let listener = tokio::spawn(self.inner.clone().notification_loop());
        let mut background = self
            .inner
            .background
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        background.claim_loop = Some(claim_loop);
        background.others = vec![lease, maintenance, listener];
        tracing::info!(worker_id = %self.inner.worker_id, backend = self.inner.store.backend(), "engine started");
        Ok(())
    }

    /// Stops claiming, lets in-flight executions finish and record their outcome for up to
    /// `stop_timeout`, then cancels the rest and releases them (`pending`, attempt
    /// `interrupted`, reason `worker_stopping`) and stops the background loops. The state
    /// becomes `Stopped` for good.
    ///
    /// The store stays open so the stopped manager can still be queried (docs/semantics.md,
    /// "Stop"); it closes when the last handle to it is dropped, or explicitly with
    /// [`Engine::close`]. Idempotent; a concurrent second call waits for the first.
    pub async fn stop(&self) -> Result<(), RuntimeError> {
        if self.inner.stopping.swap(true, Ordering::SeqCst) {
            tracing::debug!(worker_id = %self.inner.worker_id, "stop: already stopping or stopped");
            let mut state = self.inner.state.subscribe();
            let _ = state
                .wait_for(|state| *state == ManagerState::Stopped)
                .await;
            return Ok(());
        }
        let was = self.state();
        if was == ManagerState::Running {
            self.inner.claim_shutdown.cancel();
            let (claim_loop, others) = {
                let mut background = self
                    .inner
                    .background
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                (
                    background.claim_loop.take(),
                    std::mem::take(&mut background.others),
                )
            };
            // Wait for the loop so that no claim lands after the drain starts.
            if let Some(handle) = claim_loop
                && let Err(error) = handle.await
            {
                tracing::error!(%error, "claim loop ended abnormally");
            }
            self.inner.drain().await;
            self.inner.background_shutdown.cancel();
            for handle in others {
                if let Err(error) = handle.await {
                    tracing::error!(%error, "background loop ended abnormally");
                }
            }
            self.inner.mark_stopped().await;
        }
        self.inner.state.send_replace(ManagerState::Stopped);
        tracing::info!(worker_id = %self.inner.worker_id, "engine stopped");
        Ok(())
    }

    /// [`Engine::stop`], then closes the store (its pool and any listener). Later store calls
    /// through this engine or its clones fail.
    pub async fn close(&self) -> Result<(), RuntimeError> {
        self.stop().await?;
        self.inner.store.close().await;
        Ok(())
    }
}

impl Inner {
    /// Part of `stop`: waits up to `stop_timeout` for in-flight executions, then cancels the
    /// rest with `Stopping` (each releases its task) and waits for them to wind down.
    pub(crate) async fn drain(&self) {
        let mut running = self.running.subscribe();
        let deadline = time::add(self.clock.now(), self.options.stop_timeout);
        let drained = tokio::select! {
            result = running.wait_for(|running| *running == 0) => result.is_ok(),
            () = self.clock.sleep_until(deadline) => false,
        };
        if drained {
            return;
        }
        let left: Vec<(String, Cancel)> = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|((id, attempt), entry)| {
                (
                    format!("{}#{id}/{attempt}", entry.name),
                    entry.cancel.clone(),
                )
            })
            .collect();
        tracing::warn!(
            worker_id = %self.worker_id,
            executions = ?left.iter().map(|(what, _)| what.as_str()).collect::<Vec<_>>(),
            stop_timeout_ms = self.options.stop_timeout.as_millis() as u64,
            "stop timeout reached; cancelling and releasing the remaining executions"
        );
        for (_, cancel) in &left {
            cancel.cancel(CancelReason::Stopping);
        }
        let _ = running.wait_for(|running| *running == 0).await;
    }
}
