//! The runtime's one error type.

use fib_flow_domain::DomainError;
use fib_flow_ports::PortError;

/// Every error the engine's API returns.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A task or cron submission (or `task_info`) names a handler that is not registered.
    #[error("No handler registered for task: {name}")]
    UnknownHandler {
        /// The name that is not registered.
        name: String,
    },
    /// Invalid input (an option, a cron expression, a time zone) or an illegal transition;
    /// the domain error names the field or the transition.
    #[error(transparent)]
    InvalidInput(#[from] DomainError),
    /// `start` after `stop`.
    #[error("Cannot restart a stopped TaskManager")]
    AlreadyStopped,
    /// An operation that needs a running engine (a lease check) before `start` or after
    /// `stop`.
    #[error("The TaskManager is not running (state: {state})")]
    NotRunning {
        /// The state it is in.
        state: &'static str,
    },
    /// A storage error.
    #[error(transparent)]
    Store(PortError),
}

impl From<PortError> for RuntimeError {
    /// A store rejection carrying a domain error is surfaced as [`RuntimeError::InvalidInput`],
    /// so callers match one variant for "the domain said no" wherever it was decided.
    fn from(error: PortError) -> Self {
        match error {
            PortError::Rejected(domain) => RuntimeError::InvalidInput(domain),
            other => RuntimeError::Store(other),
        }
    }
}
