//! Claiming: the pause gate (`pause`/`resume`), the claim loop (lease, free slots, one batched
//! claim per round, idle waits cut short by wake-ups, back-off on store faults) and the launch
//! of each claimed task's execution.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use fib_flow_domain::{Task, time};
use fib_flow_ports::ClaimRequest;
use futures_util::FutureExt;
use tracing::Instrument;

use crate::cancel::Cancel;
use crate::engine::{Engine, Inner};
use crate::metrics;
use crate::slot::Slot;
use crate::store_faults::LoopBackoff;

/// How often a claim round yields for more slots of a burst to free (see the claim loop).
const CLAIM_FILL_YIELDS: usize = 8;

impl Engine {
    /// Whether claiming is paused (`pause`).
    pub fn is_paused(&self) -> bool {
        *self.inner.paused.borrow()
    }

    /// Stops claiming new tasks. Running executions, heartbeats and sweeps continue.
    pub fn pause(&self) {
        self.inner.paused.send_replace(true);
    }

    /// Resumes claiming after [`Engine::pause`].
    pub fn resume(&self) {
        self.inner.paused.send_replace(false);
        self.inner.wake.notify_one();
    }
}

impl Inner {
    /// Whether the claim loop should exit.
    fn claim_stopped(&self) -> bool {
        self.claim_shutdown.is_cancelled()
    }

    /// The claim loop: pause gate, free slots, one batched claim, executions; idle-waits
    /// `poll_interval` (cut short by a wake-up) when nothing is due, backs off on store errors
    /// and never exits before `stop`.
    pub(crate) async fn claim_loop(self: Arc<Self>) {
        let mut paused = self.paused.subscribe();
        let mut leased = self.leased.subscribe();
        let mut handlers = self.handlers.subscribe();
        let mut fault_backoff = LoopBackoff::new(self.options.poll_interval);
        let max = self.options.max_concurrent_tasks;
        loop {
            if self.claim_stopped() {
                break;
            }
            // Pause gate: only claiming waits here.
            tokio::select! {
                result = paused.wait_for(|paused| !*paused) => {
                    if result.is_err() { break; }
                }
                () = self.claim_shutdown.cancelled() => break,
            }
            // A lease: registered, and not stepped aside for a successor of our pod.
            tokio::select! {
                result = leased.wait_for(|leased| *leased) => {
                    if result.is_err() { break; }
                }
                () = self.claim_shutdown.cancelled() => break,
            }
            // A free slot.
            tokio::select! {
                result = handlers.wait_for(|handlers| *handlers < max) => {
                    if result.is_err() { break; }
                }
                () = self.claim_shutdown.cancelled() => break,
            }
            if self.claim_stopped() {
                break;
            }
            // Claim fill: handlers claimed together tend to end together. When slots are
            // coming back one by one, let the rest of such a burst run to its end first, so the
            // round claims for all of it instead of one task per freed slot. Yielding, not
            // sleeping: a handler that is really still working costs this round nothing.
            let fill = max.min(self.options.claim_batch_size);
            for _ in 0..CLAIM_FILL_YIELDS {
                let running_now = *self.handlers.borrow();
                if running_now == 0 || max.saturating_sub(running_now) >= fill {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let free = max.saturating_sub(*self.handlers.borrow());
            if free == 0 {
                continue;
            }
            // The gates above may have been waited at for a while (the start-up registration,
            // a busy slot): a pause or a lost lease meanwhile sends the loop back to them.
            if *self.paused.borrow() || !*self.leased.borrow() {
                continue;
            }
            let (names, queue_caps) = self.registry.claim_filter(
                self.options.queues.as_deref(),
                &self.options.queue_concurrency,
            );
            if names.is_empty() {
                let until = time::add(self.clock.now(), self.options.poll_interval);
                self.idle_wait(until).await;
                continue;
            }
            let limit = free.min(self.options.claim_batch_size);
            let request = ClaimRequest {
                worker_id: self.worker_id.to_string(),
                now: self.clock.now(),
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
                names,
                queue_caps,
                require_active_lease: true,
            };
            // This round sees every task submitted so far, so it satisfies the wake-ups
            // posted until now; consuming them avoids an immediate, redundant second round.
            let _ = self.wake.notified().now_or_never();
            tracing::trace!(now = %request.now, limit = request.limit, names = request.names.len(), "claim round");
            // Waits are measured from the claim instant, not from when the claim returned:
            // time that passed during the round (a slow query, a manual clock moved meanwhile)
            // counts, so a task that became due during the round is not missed for a period.
            let claimed_at = request.now;
            match self.store.claim(request).await {
                Ok(tasks) if tasks.is_empty() => {
                    fault_backoff.reset();
                    self.idle_wait(time::add(claimed_at, self.options.poll_interval))
                        .await;
                }
                Ok(tasks) => {
                    fault_backoff.reset();
                    for task in tasks {
                        self.clone().launch(task);
                    }
                    self.task_changed();
                }
                Err(error) => {
                    let backoff = fault_backoff.after_failure();
                    tracing::warn!(
                        worker_id = %self.worker_id,
                        %error,
                        transient = error.is_transient(),
                        retry_in_ms = backoff.as_millis() as u64,
                        "claim failed; backing off"
                    );
                    // Fault back-off waits on the wall clock, not the injected one: recovering from
                    // a database fault must not depend on scheduling time moving (a manual
                    // clock in tests, or a clock that stands still).
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.claim_shutdown.cancelled() => break,
                    }
                }
            }
        }
        tracing::debug!(worker_id = %self.worker_id, "claim loop stopped");
    }

    /// Waits until `until` on the clock, cut short by a wake-up or `stop`.
    async fn idle_wait(&self, until: DateTime<Utc>) {
        tokio::select! {
            () = self.clock.sleep_until(until) => {}
            () = self.wake.notified() => {}
            () = self.claim_shutdown.cancelled() => {}
        }
    }

    /// Accounts for a claimed task (slot, per-type count, in-flight entry) and spawns its
    /// execution. Accounting happens here, synchronously in the loop, so the next claim round
    /// already sees the slot taken.
    fn launch(self: Arc<Self>, task: Task) {
        tracing::debug!(task_id = %task.id, attempt = task.attempt, name = %task.name, stage = task.stage, "claimed");
        metrics::count(metrics::CLAIMED, &task.name);
        if task.retry_count > 0 {
            metrics::count(metrics::RETRIED, &task.name);
        }
        if let Some(started) = task.start_time
            && let Ok(waited) = (started - task.next_run_time).to_std()
        {
            metrics::seconds(metrics::PICKUP_SECONDS, &task.name, waited);
        }
        let cancel = Cancel::default();
        let slot = Slot::take(&self, &task, &cancel);
        // Every log of the attempt, the handler's own included, carries the task's identity.
        let span = tracing::info_span!(
            "task",
            task_id = %task.id,
            name = %task.name,
            attempt = task.attempt,
            worker_id = %self.worker_id,
        );
        tokio::spawn(
            async move {
                self.execute(task, cancel, &slot).await;
                drop(slot);
            }
            .instrument(span),
        );
    }
}
