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
}

/// `Result` with the facade's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
