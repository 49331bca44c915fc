//! The worker registry from the engine's side: registration at start, the lease loop (renew,
//! reap and recover dead workers, step aside for a successor, revive), recovery of this
//! worker's own lost attempts, and the `stopped` mark of a graceful stop (behavior.md §6).
//!
//! Every started engine registers, with or without a `pod_id`: crash recovery needs no
//! configuration. Without a `pod_id` a worker is a pod of its own and supersedes nobody.

use std::sync::Arc;

use fib_flow_domain::{Command, TaskId, Worker, WorkerQuery, WorkerStatus, time};
use fib_flow_ports::{BatchCommand, PortError, Recovery, RetiredWorkers, WorkerRegistration};
use serde_json::json;

use crate::engine::{Engine, Inner, ManagerState};
use crate::error::RuntimeError;
use crate::store_faults::LoopBackoff;

/// Lost attempts recovered per lease check (the rest wait for the next one).
const ORPHAN_BATCH: u32 = 100;

/// What a lease check found about this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Our row is `active`: claim.
    Active,
    /// Another worker of our pod is `active`: claim nothing while it lives.
    Fenced,
}

impl Engine {
    /// Registry rows matching the filter, ordered by `registered_at, worker_id`.
    pub async fn workers(&self, query: WorkerQuery) -> Result<Vec<Worker>, RuntimeError> {
        if let Some(pod_id) = &query.pod_id {
            fib_flow_domain::limits::check_name("pod_id", pod_id)?;
        }
        Ok(self.inner.store.list_workers(query).await?)
    }

    /// One registry row.
    pub async fn worker(&self, worker_id: &str) -> Result<Option<Worker>, RuntimeError> {
        fib_flow_domain::limits::check_name("worker_id", worker_id)?;
        Ok(self.inner.store.get_worker(worker_id.to_owned()).await?)
    }

    /// Whether this worker holds an active lease and may claim (false before its first
    /// registration, while a successor of its pod is active, and after `stop`).
    pub fn is_leased(&self) -> bool {
        *self.inner.leased.borrow()
    }

    /// Runs one lease check now (renew, reap and recover, settle standing), as the lease loop
    /// does every `worker_heartbeat_interval`. Returns whether this worker may claim
    /// afterwards. A worker whose start-up registration has not happened yet registers here
    /// as a revived one would.
    pub async fn run_lease_check(&self) -> Result<bool, RuntimeError> {
        let state = self.state();
        if state != ManagerState::Running {
            return Err(RuntimeError::NotRunning {
                state: state.as_str(),
            });
        }
        Ok(self.inner.lease_check().await? == crate::lease::Standing::Active)
    }
}

impl Inner {
    /// The pod this worker belongs to in the registry: `pod_id`, else its own worker id.
    pub(crate) fn pod(&self) -> String {
        self.options
            .pod_id
            .clone()
            .unwrap_or_else(|| self.worker_id.to_string())
    }

    fn recovery(&self) -> Option<Recovery> {
        self.options.recover_running_jobs.then(|| Recovery {
            by_worker_id: self.worker_id.to_string(),
            by_pod_id: self.options.pod_id.clone(),
            now: self.clock.now(),
        })
    }

    fn registration(&self, revived: bool) -> WorkerRegistration {
        let now = self.clock.now();
        let mut meta = json!({
            "pid": std::process::id(),
            "started_at": time::to_millis(*self.started_at.get_or_init(|| now)),
        });
        if revived {
            meta["recovered_at"] = json!(time::to_millis(now));
        }
        WorkerRegistration {
            worker_id: self.worker_id.to_string(),
            pod_id: self.pod(),
            now,
            ttl: self.options.worker_heartbeat_timeout,
            meta,
        }
    }

    /// Registration at start (§6.2): register, supersede the older workers of our pod, reap
    /// expired workers, and recover the running tasks of both.
    pub(crate) async fn register_at_start(&self) -> Result<(), PortError> {
        let registered = self.store.register_worker(self.registration(false)).await?;
        let now = registered.registered_at;
        let superseded = if self.options.pod_id.is_some() {
            self.store
                .supersede_workers(self.pod(), self.worker_id.to_string(), now, self.recovery())
                .await?
        } else {
            RetiredWorkers::default()
        };
        let reaped = self.store.reap_workers(now, self.recovery()).await?;
        crate::metrics::recovered(superseded.recovered + reaped.recovered);
        if superseded.recovered + reaped.recovered > 0 {
            self.task_changed();
        }
        tracing::info!(
            worker_id = %self.worker_id,
            pod_id = %registered.pod_id,
            superseded = ?superseded.workers,
            reaped = ?reaped.workers,
            recovered = superseded.recovered + reaped.recovered,
            "worker registered"
        );
        self.set_standing(Standing::Active);
        Ok(())
    }

    /// One lease check (§6.3): renew our lease, reap expired workers (recovering their
    /// tasks), then settle our own standing: active, fenced by a successor, or revived by
    /// re-registering. Returns the standing.
    pub(crate) async fn lease_check(&self) -> Result<Standing, PortError> {
        let now = self.clock.now();
        let renewed = self
            .store
            .heartbeat_worker(
                self.worker_id.to_string(),
                now,
                self.options.worker_heartbeat_timeout,
            )
            .await?;
        let reaped = self.store.reap_workers(now, self.recovery()).await?;
        crate::metrics::recovered(reaped.recovered);
        if !reaped.workers.is_empty() {
            tracing::warn!(
                worker_id = %self.worker_id,
                reaped = ?reaped.workers,
                recovered = reaped.recovered,
                "reaped workers whose lease expired"
            );
            if reaped.recovered > 0 {
                self.wake.notify_one();
                self.task_changed();
            }
        }
        let standing = if renewed {
            Standing::Active
        } else {
            self.settle_standing().await?
        };
        self.set_standing(standing);
        if standing == Standing::Active {
            self.recover_lost_attempts().await?;
        }
        Ok(standing)
    }

    /// Our row is not `active` (superseded, reaped while we were unreachable, or gone):
    /// step aside while another worker of our pod is active, else come back (§6.3).
    async fn settle_standing(&self) -> Result<Standing, PortError> {
        let successors = self
            .store
            .list_workers(WorkerQuery::pod(self.pod()).status(WorkerStatus::Active))
            .await?;
        if let Some(successor) = successors
            .iter()
            .find(|worker| *worker.worker_id != *self.worker_id)
        {
            if self.standing() == Standing::Active {
                tracing::warn!(
                    worker_id = %self.worker_id,
                    successor = %successor.worker_id,
                    "superseded by a newer worker of this pod; claiming nothing while it lives"
                );
            }
            return Ok(Standing::Fenced);
        }
        let registered = self.store.register_worker(self.registration(true)).await?;
        tracing::warn!(
            worker_id = %self.worker_id,
            pod_id = %registered.pod_id,
            "lease had lapsed and nobody took over; re-registered"
        );
        Ok(Standing::Active)
    }

    /// Attempts the store says we run but we do not (a claim whose reply was lost with its
    /// connection, an outcome the writer gave up on): idle for a whole task heartbeat timeout,
    /// so not in flight here (those are heartbeated). Returned to `pending` like a dead
    /// worker's, without charging a retry.
    async fn recover_lost_attempts(&self) -> Result<(), PortError> {
        if !self.options.recover_running_jobs {
            return Ok(());
        }
        let now = self.clock.now();
        let idle_before = time::sub(now, self.options.task_heartbeat_timeout);
        let idle = self
            .store
            .idle_attempts(self.worker_id.to_string(), idle_before, ORPHAN_BATCH)
            .await?;
        let lost: Vec<(TaskId, i32)> = {
            let in_flight = self
                .in_flight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            idle.into_iter()
                .filter(|key| !in_flight.contains_key(key))
                .collect()
        };
        if lost.is_empty() {
            return Ok(());
        }
        let commands = lost
            .iter()
            .map(|&(task_id, attempt)| BatchCommand {
                task_id,
                command: Command::Recover {
                    attempt,
                    by_worker_id: self.worker_id.to_string(),
                    by_pod_id: self.options.pod_id.clone(),
                },
                at: now,
            })
            .collect();
        let verdicts = self.store.apply_batch(commands).await?;
        let recovered = verdicts.iter().filter(|verdict| verdict.is_ok()).count();
        crate::metrics::recovered(recovered as u64);
        tracing::warn!(
            worker_id = %self.worker_id,
            attempts = ?lost,
            recovered,
            "recovered attempts this worker owned but was not running"
        );
        if recovered > 0 {
            self.wake.notify_one();
            self.task_changed();
        }
        Ok(())
    }

    /// Registers, then checks the lease every `worker_heartbeat_interval` until the engine's
    /// background loops stop. A failed registration or check is retried with the claim
    /// loop's fault back-off; claiming waits until the first registration succeeds.
    pub(crate) async fn lease_loop(self: Arc<Self>) {
        let interval = self.options.worker_heartbeat_interval;
        let mut registered = false;
        let mut fault_backoff = LoopBackoff::new(interval);
        loop {
            let result = if registered {
                self.lease_check().await.map(|_| ())
            } else {
                self.register_at_start().await
            };
            match result {
                Ok(()) => {
                    registered = true;
                    fault_backoff.reset();
                    let next = time::add(self.clock.now(), interval);
                    tokio::select! {
                        () = self.clock.sleep_until(next) => {}
                        () = self.background_shutdown.cancelled() => break,
                    }
                }
                Err(error) => {
                    let backoff = fault_backoff.after_failure();
                    tracing::warn!(
                        worker_id = %self.worker_id,
                        %error,
                        registered,
                        retry_in_ms = backoff.as_millis() as u64,
                        "worker lease check failed"
                    );
                    // Wall clock, as the claim loop's fault back-off (see there).
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.background_shutdown.cancelled() => break,
                    }
                }
            }
        }
    }

    /// Part of `stop`, after the drain: our row becomes `stopped`. Every execution has been
    /// written or released by then, so a task still running under our id is one we lost
    /// track of: it is recovered in the same transaction rather than left to the sweep.
    pub(crate) async fn mark_stopped(&self) {
        let now = self.clock.now();
        match self
            .store
            .stop_worker(self.worker_id.to_string(), now, self.recovery())
            .await
        {
            Ok(0) => {}
            Ok(recovered) => {
                crate::metrics::recovered(recovered);
                self.task_changed();
                tracing::warn!(worker_id = %self.worker_id, recovered, "recovered tasks this worker owned but was not running, at stop");
            }
            Err(error) => {
                tracing::warn!(worker_id = %self.worker_id, %error, "could not mark the worker stopped");
            }
        }
        self.leased.send_replace(false);
    }

    fn standing(&self) -> Standing {
        if *self.leased.borrow() {
            Standing::Active
        } else {
            Standing::Fenced
        }
    }

    fn set_standing(&self, standing: Standing) {
        let active = standing == Standing::Active;
        let was = self.leased.send_replace(active);
        if active && !was {
            self.wake.notify_one();
        }
    }
}
