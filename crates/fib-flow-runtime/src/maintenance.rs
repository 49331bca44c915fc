//! Maintenance: heartbeats of the local attempts, the expiry sweep (deadline and heartbeat
//! timeouts, for every worker's attempts) and retention (automatic cadence and manual drain).

use std::sync::{Arc, PoisonError};

use fib_flow_domain::{Command, ExpiryKind, RetentionPolicy, TaskId, time};
use fib_flow_ports::{PortError, RetentionReport, RetentionRun};
use serde::Serialize;

use crate::cancel::CancelReason;
use crate::engine::{Engine, Inner};
use crate::error::RuntimeError;

/// Tasks per retention batch (the reference's fixed batch size).
pub(crate) const RETENTION_BATCH: u32 = 100;
/// Expired attempts fetched per sweep query.
pub(crate) const SWEEP_BATCH: u32 = 100;

/// What one maintenance tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Running attempts of this worker whose heartbeat was refreshed.
    pub heartbeats: u64,
    /// Attempts expired because their deadline passed (`timeout_type: total`).
    pub timed_out_total: u64,
    /// Attempts expired because their heartbeat lapsed (`timeout_type: heartbeat`).
    pub timed_out_heartbeat: u64,
    /// What automatic retention deleted on this tick (zero unless it was due).
    pub retention: RetentionReport,
}

impl Engine {
    /// Runs one maintenance tick now: heartbeat, expiry sweep and the automatic retention
    /// cadence (exactly what the background loop does every `task_heartbeat_interval`).
    pub async fn run_maintenance(&self) -> Result<crate::SweepReport, RuntimeError> {
        self.inner.maintenance_tick().await
    }

    /// Deletes every expired workflow now, batch after batch, with the configured policy or
    /// `policy`. A disabled configured policy yields a zero report.
    pub async fn run_retention(
        &self,
        policy: Option<RetentionPolicy>,
    ) -> Result<RetentionReport, RuntimeError> {
        self.inner.run_retention(policy).await
    }
}

impl Inner {
    /// Runs maintenance every `task_heartbeat_interval` until stopped; errors are logged.
    pub(crate) async fn maintenance_loop(self: Arc<Self>) {
        let interval = self.options.task_heartbeat_interval;
        let mut next = time::add(self.clock.now(), interval);
        loop {
            tokio::select! {
                () = self.clock.sleep_until(next) => {}
                () = self.background_shutdown.cancelled() => break,
            }
            // Anchored on the tick's start so a slow tick does not stretch the cadence; no
            // catch-up burst after a long pause either.
            next = time::add(self.clock.now(), interval);
            if let Err(error) = self.maintenance_tick().await {
                tracing::warn!(worker_id = %self.worker_id, %error, "maintenance tick failed");
            }
        }
    }

    /// One tick: heartbeat, sweep, then automatic retention if due.
    pub(crate) async fn maintenance_tick(&self) -> Result<SweepReport, RuntimeError> {
        let mut report = SweepReport {
            heartbeats: self.heartbeat().await?,
            ..SweepReport::default()
        };
        self.sweep(&mut report).await?;
        if report.timed_out_total + report.timed_out_heartbeat > 0 {
            self.task_changed();
        }
        report.retention = self.automatic_retention().await?;
        self.sample_queue_depth().await?;
        Ok(report)
    }

    /// Sets the queue-depth gauge of every name pending in the store and every name
    /// registered here.
    async fn sample_queue_depth(&self) -> Result<(), RuntimeError> {
        let pending = self
            .store
            .task_stats(None, Some(fib_flow_domain::TaskStatus::Pending))
            .await?;
        let registered = self.registry.names();
        crate::metrics::queue_depth(&pending, registered.iter().map(String::as_str));
        Ok(())
    }

    /// Refreshes `last_active_time` of every attempt running here.
    async fn heartbeat(&self) -> Result<u64, RuntimeError> {
        let mut attempts: Vec<(TaskId, i32)> = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect();
        if attempts.is_empty() {
            return Ok(0);
        }
        attempts.sort();
        let now = self.clock.now();
        Ok(self
            .store
            .heartbeat(self.worker_id.to_string(), attempts, now)
            .await?)
    }

    /// Expires running attempts past their deadline or heartbeat (any worker's) and cancels
    /// the local handler of any that ran here.
    async fn sweep(&self, report: &mut SweepReport) -> Result<(), RuntimeError> {
        let now = self.clock.now();
        let cutoff = time::sub(now, self.options.task_heartbeat_timeout);
        loop {
            let expired = self
                .store
                .expired_attempts(now, cutoff, SWEEP_BATCH)
                .await?;
            let full = expired.len() >= SWEEP_BATCH as usize;
            let mut progressed = false;
            for expiry in expired {
                let command = Command::Expire {
                    attempt: expiry.attempt,
                    kind: expiry.kind,
                    jitter: crate::execution::retry_jitter(),
                };
                match self.store.apply(expiry.task_id, command, now).await {
                    Ok(_) => {
                        progressed = true;
                        match expiry.kind {
                            ExpiryKind::Deadline => report.timed_out_total += 1,
                            ExpiryKind::Heartbeat => report.timed_out_heartbeat += 1,
                        }
                        tracing::info!(task_id = %expiry.task_id, attempt = expiry.attempt, kind = ?expiry.kind, "attempt expired");
                    }
                    Err(PortError::Stale { .. } | PortError::Rejected(_)) => {
                        // Someone else settled it between the query and the write.
                        tracing::debug!(task_id = %expiry.task_id, attempt = expiry.attempt, "expiry skipped: attempt already settled");
                    }
                    Err(error) => {
                        // One bad row must not stop the sweep of the others.
                        tracing::warn!(task_id = %expiry.task_id, attempt = expiry.attempt, %error, "could not expire attempt");
                        continue;
                    }
                }
                // Either way the attempt no longer owns its task: stop its local handler.
                self.cancel_attempt_locally(expiry.task_id, expiry.attempt, CancelReason::Expired);
            }
            if !full || !progressed {
                return Ok(());
            }
        }
    }

    /// Runs one retention batch when the cadence says so. The first tick with nothing
    /// scheduled only schedules (startup tick skipped).
    async fn automatic_retention(&self) -> Result<RetentionReport, RuntimeError> {
        let Some(policy) = &self.retention else {
            return Ok(RetentionReport::default());
        };
        let now = self.clock.now();
        let due = {
            let mut next = self
                .retention_due
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match *next {
                None => {
                    *next = Some(time::add(now, self.options.retention_interval));
                    false
                }
                Some(at) if now >= at => {
                    *next = Some(time::add(now, self.options.retention_interval));
                    true
                }
                Some(_) => false,
            }
        };
        if !due {
            return Ok(RetentionReport::default());
        }
        let report = self.retention_batch(policy, now).await?;
        if report.tasks_deleted > 0 {
            tracing::info!(
                tasks = report.tasks_deleted,
                events = report.events_deleted,
                attempts = report.attempts_deleted,
                "automatic retention"
            );
        }
        Ok(report)
    }

    /// One bounded retention batch.
    async fn retention_batch(
        &self,
        policy: &RetentionPolicy,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<RetentionReport, RuntimeError> {
        let run = RetentionRun {
            statuses: policy.statuses.clone(),
            cutoff: time::sub(now, policy.expire_time),
            batch_size: RETENTION_BATCH,
        };
        Ok(self.store.purge_expired(run).await?)
    }

    /// Drains every expired workflow with `policy` (or the configured one) and re-schedules
    /// the automatic run one cadence later.
    pub(crate) async fn run_retention(
        &self,
        policy: Option<RetentionPolicy>,
    ) -> Result<RetentionReport, RuntimeError> {
        let Some(policy) = policy.or_else(|| self.retention.clone()) else {
            return Ok(RetentionReport::default());
        };
        let now = self.clock.now();
        let mut total = RetentionReport::default();
        loop {
            let batch = self.retention_batch(&policy, now).await?;
            total += batch;
            if batch.tasks_deleted < u64::from(RETENTION_BATCH) {
                break;
            }
        }
        if self.retention.is_some() {
            *self
                .retention_due
                .lock()
                .unwrap_or_else(PoisonError::into_inner) =
                Some(time::add(now, self.options.retention_interval));
        }
        Ok(total)
    }
}
