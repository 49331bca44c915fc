//! The ports' one error type.

use chrono::{DateTime, Utc};
use fib_flow_domain::{DomainError, TaskId};

/// Errors crossing the port boundary.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// No task with this id.
    #[error("task {0} not found")]
    NotFound(TaskId),
    /// A fenced write by an attempt that no longer owns the task (timed out, recovered,
    /// paused, cancelled or re-claimed meanwhile).
    #[error("task {task_id}: attempt {attempt} no longer owns the task; the write was rejected")]
    Stale {
        /// The task.
        task_id: TaskId,
        /// The stale attempt.
        attempt: i32,
    },
    /// The domain rejected the input or the transition.
    #[error(transparent)]
    Rejected(#[from] DomainError),
    /// The attempt's deadline has passed (`check_timeout`).
    #[error("task {task_id}: task execution timeout (deadline {deadline})")]
    DeadlineExceeded {
        /// The task.
        task_id: TaskId,
        /// The attempt's deadline.
        deadline: DateTime<Utc>,
    },
    /// The database could not be reached or the operation hit a transient fault (connection
    /// lost, pool timeout, deadlock, serialization failure); retrying may succeed.
    #[error("{backend}: transient database fault: {message}")]
    Unavailable {
        /// Backend name.
        backend: &'static str,
        /// The backend's error text.
        message: String,
    },
    /// Any other database error.
    #[error("{backend}: database error: {message}")]
    Database {
        /// Backend name.
        backend: &'static str,
        /// The backend's error text.
        message: String,
    },
    /// The store was misconfigured (bad URL, failed migration).
    #[error("storage configuration: {0}")]
    Config(String),
    /// Connecting failed for a reason retrying cannot fix (bad credentials, unknown database,
    /// malformed URL, unopenable file). Permanent: [`PortError::is_transient`] is false.
    #[error("{backend}: cannot connect ({kind}): {message}")]
    Connect {
        /// Backend name.
        backend: &'static str,
        /// What is wrong.
        kind: ConnectErrorKind,
        /// The driver's explanation (with its causes).
        message: String,
        /// The driver's error, when it is available as a value.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// The database was migrated by a newer fib-flow: its schema has migrations this build
    /// does not know, so this build cannot safely read or write it.
    #[error(
        "{backend}: the database schema is newer than this build: it has migration {database_version}, this build knows migrations up to {supported_version}; upgrade fib-flow"
    )]
    SchemaTooNew {
        /// Backend name.
        backend: &'static str,
        /// The newest applied migration this build does not know.
        database_version: String,
        /// The newest migration embedded in this build.
        supported_version: String,
    },
    /// A unique key (`cron_key`, `unique_key`) is already held by another row: a concurrent
    /// submission won the race. Keyed submissions retry and find the winner.
    #[error("{backend}: key conflict: {message}")]
    Conflict {
        /// Backend name.
        backend: &'static str,
        /// The backend's error text.
        message: String,
    },
}

/// Why a connection could not be made (see [`PortError::Connect`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectErrorKind {
    /// The URL does not parse or names an unusable option.
    InvalidUrl,
    /// The server refused the credentials.
    Authentication,
    /// The database named in the URL does not exist.
    UnknownDatabase,
    /// The SQLite file (or its directory) cannot be opened or created.
    Unopenable,
    /// Any other refusal by the server that a retry will not change.
    Refused,
}

impl std::fmt::Display for ConnectErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnectErrorKind::InvalidUrl => "invalid URL",
            ConnectErrorKind::Authentication => "authentication failed",
            ConnectErrorKind::UnknownDatabase => "unknown database",
            ConnectErrorKind::Unopenable => "cannot open the database file",
            ConnectErrorKind::Refused => "refused",
        })
    }
}

impl PortError {
    /// Whether retrying the same call may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, PortError::Unavailable { .. })
    }

    /// Whether a unique key was already held ([`PortError::Conflict`]).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, PortError::Conflict { .. })
    }
}
