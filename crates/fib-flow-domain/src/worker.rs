//! The worker registry's model: one row per worker process, its lease and its status.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DomainError;

/// A registered worker's status (behavior.md §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStatus {
    /// Holds a lease it renews; may claim tasks.
    Active,
    /// A newer worker with the same `pod_id` took over; claims nothing while that one lives.
    Superseded,
    /// Its lease expired (reaped by a live worker); its running tasks were recovered.
    Dead,
    /// Stopped gracefully; it released its tasks itself.
    Stopped,
}

impl WorkerStatus {
    /// Every status, in declaration order.
    pub const ALL: [WorkerStatus; 4] = [
        WorkerStatus::Active,
        WorkerStatus::Superseded,
        WorkerStatus::Dead,
        WorkerStatus::Stopped,
    ];

    /// The reference's string for this status.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Active => "active",
            WorkerStatus::Superseded => "superseded",
            WorkerStatus::Dead => "dead",
            WorkerStatus::Stopped => "stopped",
        }
    }

    /// Parses a status, naming `field` in the error.
    pub fn parse_field(value: &str, field: &'static str) -> Result<Self, DomainError> {
        WorkerStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == value)
            .ok_or_else(|| DomainError::InvalidOption {
                field,
                reason: format!(
                    "unknown worker status {value:?}; allowed: active, superseded, dead, stopped"
                ),
            })
    }
}

impl fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WorkerStatus {
    type Err = DomainError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        WorkerStatus::parse_field(value, "status")
    }
}

/// A row of the worker registry (`fib_flow_workers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    /// The process instance's id (`ManagerOptions::worker_id` or a generated one).
    pub worker_id: String,
    /// The stable identity across restarts (`ManagerOptions::pod_id`; the worker id when none
    /// was given, so such a worker supersedes nobody).
    pub pod_id: String,
    /// Lease status.
    pub status: WorkerStatus,
    /// (Re-)registration instant.
    pub registered_at: DateTime<Utc>,
    /// Last lease renewal.
    pub last_seen_at: DateTime<Utc>,
    /// `last_seen_at + worker_heartbeat_timeout`; reaped once strictly past it.
    pub expires_at: DateTime<Utc>,
    /// When a newer worker of the same pod superseded this one.
    pub superseded_at: Option<DateTime<Utc>>,
    /// When a live worker reaped this one (or it stopped gracefully).
    pub dead_at: Option<DateTime<Utc>>,
    /// `{ pid, started_at }`, plus `recovered_at` after a re-registration.
    pub meta: Option<Value>,
}

/// Filter of `workers()`: every given field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerQuery {
    /// Only this pod's workers.
    pub pod_id: Option<String>,
    /// Only workers in this status.
    pub status: Option<WorkerStatus>,
}

impl WorkerQuery {
    /// Workers of one pod.
    pub fn pod(pod_id: impl Into<String>) -> WorkerQuery {
        WorkerQuery {
            pod_id: Some(pod_id.into()),
            status: None,
        }
    }

    /// Only workers in `status`.
    #[must_use]
    pub fn status(mut self, status: WorkerStatus) -> WorkerQuery {
        self.status = Some(status);
        self
    }
}
