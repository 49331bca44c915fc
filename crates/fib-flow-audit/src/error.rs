//! The audit layer's one error type.

use fib_flow_domain::DomainError;
use fib_flow_ports::PortError;

/// Every way an audit query can fail.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The request was rejected before reaching the store (a page `limit` of 0 or above 1000,
    /// an `offset` beyond the database's range); the error names the field.
    #[error(transparent)]
    Invalid(#[from] DomainError),
    /// The store failed to answer.
    #[error(transparent)]
    Store(#[from] PortError),
}

impl AuditError {
    /// Whether retrying the same query may succeed (a transient store fault).
    pub fn is_transient(&self) -> bool {
        match self {
            AuditError::Invalid(_) => false,
            AuditError::Store(error) => error.is_transient(),
        }
    }
}
