//! Error plumbing: the error type used inside transactions and the mapping of diesel, pool and
//! decode errors onto [`PortError`].

use fib_flow_domain::DomainError;
use fib_flow_ports::PortError;

use crate::rows::DecodeError;

/// The error of a transaction body: a database error (which rolls the transaction back and is
/// mapped later), or a port error decided inside the transaction (not found, stale, rejected),
/// which also rolls it back.
#[derive(Debug)]
pub(crate) enum TxError {
    Db(diesel::result::Error),
    Port(PortError),
    Decode(DecodeError),
}

impl From<diesel::result::Error> for TxError {
    fn from(error: diesel::result::Error) -> Self {
        TxError::Db(error)
    }
}

impl From<PortError> for TxError {
    fn from(error: PortError) -> Self {
        TxError::Port(error)
    }
}

impl From<DecodeError> for TxError {
    fn from(error: DecodeError) -> Self {
        TxError::Decode(error)
    }
}

impl TxError {
    pub(crate) fn into_port(self, backend: &'static str) -> PortError {
        match self {
            TxError::Db(error) => db_error(backend, error),
            TxError::Port(error) => error,
            TxError::Decode(error) => decode_error(backend, error),
        }
    }
}

/// A domain verdict on a command: a stale fence is [`PortError::Stale`], anything else
/// [`PortError::Rejected`].
pub(crate) fn domain_error(error: DomainError) -> PortError {
    match error {
        DomainError::StaleAttempt {
            task_id, attempt, ..
        } => PortError::Stale { task_id, attempt },
        other => PortError::Rejected(other),
    }
}

pub(crate) fn decode_error(backend: &'static str, error: DecodeError) -> PortError {
    PortError::Database {
        backend,
        message: format!("malformed stored data: {}", error.0),
    }
}

/// Message fragments of faults that a retry may get past: lock contention, deadlocks,
/// serialization failures and lost connections.
const TRANSIENT: &[&str] = &[
    "database is locked",
    "database table is locked",
    "sqlite_busy",
    "deadlock",
    "lock wait timeout",
    "could not serialize",
    "serialization failure",
    "connection",
    "server has gone away",
    "broken pipe",
    "terminating",
    "shutting down",
    "timed out",
];

/// Maps a diesel error: transient faults are [`PortError::Unavailable`], the rest
/// [`PortError::Database`].
pub(crate) fn db_error(backend: &'static str, error: diesel::result::Error) -> PortError {
    use diesel::result::{DatabaseErrorKind, Error};
    let message = error.to_string();
    let transient = match &error {
        Error::DatabaseError(kind, _) => {
            matches!(
                kind,
                DatabaseErrorKind::SerializationFailure
                    | DatabaseErrorKind::ClosedConnection
                    | DatabaseErrorKind::UnableToSendCommand
            ) || is_transient_text(&message)
        }
        Error::BrokenTransactionManager => true,
        _ => is_transient_text(&message),
    };
    if transient {
        PortError::Unavailable { backend, message }
    } else {
        PortError::Database { backend, message }
    }
}

fn is_transient_text(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    TRANSIENT.iter().any(|needle| lower.contains(needle))
}

/// A pool error (timeout, failed connect, closed pool) is always transient.
pub(crate) fn pool_error<E: std::fmt::Display>(backend: &'static str, error: E) -> PortError {
    PortError::Unavailable {
        backend,
        message: error.to_string(),
    }
}

/// A connection error (establishing a connection) is transient.
pub(crate) fn connection_error(
    backend: &'static str,
    error: diesel::result::ConnectionError,
) -> PortError {
    PortError::Unavailable {
        backend,
        message: error.to_string(),
    }
}
