//! The facade's one error type.

use fib_flow_audit::AuditError;
use fib_flow_domain::DomainError;
use fib_flow_ports::PortError;
use fib_flow_runtime::RuntimeError;

/// Every error the `TaskManager` API returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid input: an option, status, filter, cron expression or transition, naming the field.
    #[error(transparent)]
    Invalid(#[from] DomainError),
    /// An engine error (unknown handler, stopped manager, …).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// An audit query error.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A storage error.
    #[error(transparent)]
    Store(#[from] PortError),
    /// `testing::run_until_idle` gave up: these tasks were still due or running.
    #[error("not idle after {waited:?}: tasks {busy:?} are still due or running")]
    NotIdle {
        /// The tasks still due or running.
        busy: Vec<fib_flow_domain::TaskId>,
        /// How long it waited.
        waited: std::time::Duration,
    },
    /// `wait_for_status` gave up: the task did not reach any of the wanted statuses in time.
    #[error("task {} is still {} after {waited:?} (waited for {})", task.id, task.status, statuses.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))]
    WaitTimedOut {
        /// The task as last seen.
        task: Box<fib_flow_domain::Task>,
        /// The statuses waited for.
        statuses: Vec<fib_flow_domain::TaskStatus>,
        /// How long it waited.
        waited: std::time::Duration,
    },
}

impl Error {
    /// Whether retrying the same call may succeed: only transient storage faults (a lost or
    /// refused connection, a pool timeout, a deadlock, a serialization failure). Invalid input,
    /// configuration and authentication errors, a too-new schema and size limits are permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Invalid(_) => false,
            Error::Runtime(RuntimeError::Store(error)) | Error::Store(error) => {
                error.is_transient()
            }
            Error::Runtime(_) | Error::WaitTimedOut { .. } | Error::NotIdle { .. } => false,
            Error::Audit(error) => error.is_transient(),
        }
    }
}

/// `Result` with the facade's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
