//! Error plumbing: the error type used inside transactions and the mapping of diesel, pool and
//! decode errors onto [`PortError`].

use fib_flow_domain::DomainError;
use fib_flow_ports::{ConnectErrorKind, PortError};

use crate::rows::DecodeError;

/// The error of a transaction body: a database error (which rolls the transaction back and is
/// mapped later), or a port error decided inside the transaction (not found, stale, rejected),
/// which also rolls it back.
#[derive(Debug)]
pub enum TxError {
    /// A statement failed.
    Db(diesel::result::Error),
    /// The operation's own verdict (not found, stale, rejected).
    Port(PortError),
    /// A stored value did not decode.
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
    /// The port error this becomes at the store's boundary.
    pub fn into_port(self, backend: &'static str) -> PortError {
        match self {
            TxError::Db(error) => db_error(backend, error),
            TxError::Port(error) => error,
            TxError::Decode(error) => decode_error(backend, error),
        }
    }
}

/// A domain verdict on a command: a stale fence is [`PortError::Stale`], anything else
/// [`PortError::Rejected`].
pub fn domain_error(error: DomainError) -> PortError {
    match error {
        DomainError::StaleAttempt {
            task_id, attempt, ..
        } => PortError::Stale { task_id, attempt },
        other => PortError::Rejected(other),
    }
}

/// A stored value that does not decode, as a database error naming it.
pub fn decode_error(backend: &'static str, error: DecodeError) -> PortError {
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
pub fn db_error(backend: &'static str, error: diesel::result::Error) -> PortError {
    use diesel::result::{DatabaseErrorKind, Error};
    let message = error.to_string();
    if let Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _) = &error {
        return PortError::Conflict { backend, message };
    }
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

/// Whether a driver's error text describes a fault a retry may get past.
pub fn is_transient_text(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    TRANSIENT.iter().any(|needle| lower.contains(needle))
}

/// A pool error: a failed connect is classified like [`connection_error`] (bad credentials or
/// an unknown database are permanent, a refused or lost connection transient); a checkout
/// timeout or a closed pool is transient.
pub fn pool_error(
    backend: &'static str,
    error: diesel_async::pooled_connection::deadpool::PoolError,
) -> PortError {
    use deadpool::managed::PoolError;
    use diesel_async::pooled_connection::PoolError as Backend;
    match error {
        PoolError::Backend(Backend::ConnectionError(error)) => connection_error(backend, error),
        PoolError::Backend(Backend::QueryError(error)) => db_error(backend, error),
        other => PortError::Unavailable {
            backend,
            message: other.to_string(),
        },
    }
}

/// Message fragments of connect failures no retry can fix, with their kind. Drivers report
/// these as text only (diesel's `ConnectionError` keeps no error codes), hence matching text.
const PERMANENT_CONNECT: &[(&str, ConnectErrorKind)] = &[
    (
        "password authentication failed",
        ConnectErrorKind::Authentication,
    ),
    ("access denied", ConnectErrorKind::Authentication),
    ("authentication failed", ConnectErrorKind::Authentication),
    ("no pg_hba.conf entry", ConnectErrorKind::Authentication),
    ("role \"", ConnectErrorKind::Authentication),
    ("unknown database", ConnectErrorKind::UnknownDatabase),
    ("database \"", ConnectErrorKind::UnknownDatabase),
    ("invalid configuration", ConnectErrorKind::InvalidUrl),
    ("invalid connection", ConnectErrorKind::InvalidUrl),
];

/// The kind of a permanent connect failure described by `message`, or `None` when it may be
/// transient (refused, reset, timed out).
pub fn permanent_connect_kind(message: &str) -> Option<ConnectErrorKind> {
    let lower = message.to_ascii_lowercase();
    PERMANENT_CONNECT
        .iter()
        .find(|(needle, _)| {
            lower.contains(needle)
                // "role"/"database" only name the problem together with "does not exist".
                && (!matches!(needle, &"role \"" | &"database \"") || lower.contains("does not exist"))
        })
        .map(|(_, kind)| *kind)
}

/// Maps a failure to establish a connection. Malformed URLs, bad credentials, unknown
/// databases and unopenable SQLite files are [`PortError::Connect`] (permanent, with the
/// driver's error as source where diesel keeps it); everything else (refused, reset, timed
/// out, a locked SQLite file) is transient.
pub fn connection_error(
    backend: &'static str,
    error: diesel::result::ConnectionError,
) -> PortError {
    use diesel::result::ConnectionError;
    let message = error.to_string();
    let connect =
        |kind, message: String, source: Option<Box<dyn std::error::Error + Send + Sync>>| {
            PortError::Connect {
                backend,
                kind,
                message,
                source,
            }
        };
    match error {
        ConnectionError::InvalidConnectionUrl(text) => {
            connect(ConnectErrorKind::InvalidUrl, text, None)
        }
        ConnectionError::InvalidCString(error) => {
            connect(ConnectErrorKind::InvalidUrl, message, Some(Box::new(error)))
        }
        // SQLite reports only failures to open (or create) the file this way.
        ConnectionError::BadConnection(text) if backend == "sqlite" => {
            connect(ConnectErrorKind::Unopenable, text, None)
        }
        ConnectionError::BadConnection(text) => match permanent_connect_kind(&text) {
            Some(kind) => connect(kind, text, None),
            None => PortError::Unavailable {
                backend,
                message: text,
            },
        },
        ConnectionError::CouldntSetupConfiguration(error) => {
            match permanent_connect_kind(&message) {
                Some(kind) => connect(kind, message, Some(Box::new(error))),
                None => db_error(backend, error),
            }
        }
        _ => match permanent_connect_kind(&message) {
            Some(kind) => connect(kind, message, None),
            None => PortError::Unavailable { backend, message },
        },
    }
}
