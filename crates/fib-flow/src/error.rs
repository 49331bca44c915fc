//! The facade's one error type, [`Error`] with its [`ErrorKind`], and the errors of the
//! layers below that its variants carry (for matching on the detail; most callers only need
//! [`Error::kind`]).

pub use fib_flow_audit::AuditError;
pub use fib_flow_domain::DomainError;
pub use fib_flow_ports::PortError;
pub use fib_flow_runtime::RuntimeError;

/// Every error the `TaskManager` API returns.
///
/// Match on [`Error::kind`] rather than on the variants: the variants keep the layer that
/// decided (and, through [`std::error::Error::source`], the chain below it), while the kind
/// says what the caller can do about it, wherever it was decided. New variants and kinds may
/// be added in a minor release.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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

/// What kind of failure an [`Error`] is: the one question a caller usually asks of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input was rejected: an option, a status or task type string, a cron expression, a
    /// time zone, a value too long or too deep, a page request, or a handler name that is not
    /// registered. The message names the field and the allowed values.
    InvalidInput,
    /// No task with the given id.
    NotFound,
    /// The task's current status does not allow the operation (e.g. `resume` of a running
    /// task, `cancel` of a completed one, a parent still waiting for its children), or a fenced
    /// write by an attempt that no longer owns the task.
    IllegalTransition,
    /// A unique key (`unique_key`, `cron_key`) is held by another row.
    Conflict,
    /// A transient storage fault (a lost or refused connection, a pool timeout, a deadlock, a
    /// serialization failure): retrying the same call may succeed.
    Transient,
    /// The store cannot be used as configured: a malformed or unsupported URL, a backend whose
    /// cargo feature is off, rejected credentials, an unknown database, an unopenable file, or
    /// a schema migrated by a newer fib-flow.
    Configuration,
    /// The manager is in the wrong state for the call (`start` after `stop`, a lease check on a
    /// manager that is not running).
    State,
    /// A wait gave up (`wait_for_status`, `testing::run_until_idle`) or an attempt passed its
    /// deadline.
    TimedOut,
    /// Any other database error, permanent for this call.
    Storage,
}

impl Error {
    /// What kind of failure this is, however many layers it crossed.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid(error) => domain_kind(error),
            Error::Runtime(RuntimeError::InvalidInput(error)) => domain_kind(error),
            Error::Runtime(RuntimeError::UnknownHandler { .. }) => ErrorKind::InvalidInput,
            Error::Runtime(RuntimeError::AlreadyStopped | RuntimeError::NotRunning { .. }) => {
                ErrorKind::State
            }
            Error::Runtime(RuntimeError::Store(error)) | Error::Store(error) => port_kind(error),
            Error::Audit(AuditError::Invalid(error)) => domain_kind(error),
            Error::Audit(AuditError::Store(error)) => port_kind(error),
            Error::NotIdle { .. } | Error::WaitTimedOut { .. } => ErrorKind::TimedOut,
        }
    }

    /// Whether retrying the same call may succeed: only transient storage faults (a lost or
    /// refused connection, a pool timeout, a deadlock, a serialization failure). Invalid input,
    /// configuration and authentication errors, a too-new schema and size limits are permanent.
    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }
}

fn domain_kind(error: &DomainError) -> ErrorKind {
    match error {
        DomainError::IllegalTransition { .. }
        | DomainError::StaleAttempt { .. }
        | DomainError::AwaitingChildren { .. } => ErrorKind::IllegalTransition,
        DomainError::InvalidOption { .. }
        | DomainError::TooLong { .. }
        | DomainError::JsonTooDeep { .. }
        | DomainError::InvalidStatus { .. }
        | DomainError::InvalidTaskType { .. }
        | DomainError::InvalidCron { .. }
        | DomainError::InvalidTimezone { .. } => ErrorKind::InvalidInput,
    }
}

fn port_kind(error: &PortError) -> ErrorKind {
    match error {
        PortError::NotFound(_) => ErrorKind::NotFound,
        PortError::Stale { .. } => ErrorKind::IllegalTransition,
        PortError::Rejected(error) => domain_kind(error),
        PortError::DeadlineExceeded { .. } => ErrorKind::TimedOut,
        PortError::Unavailable { .. } => ErrorKind::Transient,
        PortError::Database { .. } => ErrorKind::Storage,
        PortError::Config(_) | PortError::Connect { .. } | PortError::SchemaTooNew { .. } => {
            ErrorKind::Configuration
        }
        PortError::Conflict { .. } => ErrorKind::Conflict,
    }
}

/// `Result` with the facade's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use fib_flow_domain::{TaskId, TaskStatus};

    fn task_id() -> TaskId {
        TaskId(7)
    }

    #[test]
    fn a_store_error_has_the_same_kind_on_every_path_it_reaches_the_user() {
        let kinds_by_path = |make: &dyn Fn() -> PortError| {
            [
                Error::Store(make()).kind(),
                Error::Runtime(RuntimeError::Store(make())).kind(),
                Error::Audit(AuditError::Store(make())).kind(),
            ]
        };
        let cases: [(ErrorKind, &dyn Fn() -> PortError); 5] = [
            (ErrorKind::NotFound, &|| PortError::NotFound(task_id())),
            (ErrorKind::Transient, &|| PortError::Unavailable {
                backend: "postgres",
                message: "connection reset".into(),
            }),
            (ErrorKind::Conflict, &|| PortError::Conflict {
                backend: "mysql",
                message: "duplicate key".into(),
            }),
            (ErrorKind::Configuration, &|| {
                PortError::Config("unknown scheme".into())
            }),
            (ErrorKind::Storage, &|| PortError::Database {
                backend: "sqlite",
                message: "disk I/O error".into(),
            }),
        ];
        for (kind, make) in cases {
            assert_eq!(kinds_by_path(make), [kind; 3], "{:?}", make());
        }
    }

    #[test]
    fn a_domain_rejection_is_invalid_input_or_an_illegal_transition_wherever_it_was_decided() {
        let illegal = || DomainError::IllegalTransition {
            task_id: task_id(),
            from: TaskStatus::Completed,
            command: "cancel",
        };
        let invalid = || DomainError::InvalidStatus {
            field: "status",
            value: "done".into(),
        };
        for (error, kind) in [
            (Error::Invalid(illegal()), ErrorKind::IllegalTransition),
            (
                Error::Runtime(RuntimeError::InvalidInput(illegal())),
                ErrorKind::IllegalTransition,
            ),
            (
                Error::Store(PortError::Rejected(illegal())),
                ErrorKind::IllegalTransition,
            ),
            (Error::Invalid(invalid()), ErrorKind::InvalidInput),
            (
                Error::Audit(AuditError::Invalid(invalid())),
                ErrorKind::InvalidInput,
            ),
            (
                Error::Runtime(RuntimeError::UnknownHandler { name: "x".into() }),
                ErrorKind::InvalidInput,
            ),
            (
                Error::Store(PortError::Stale {
                    task_id: task_id(),
                    attempt: 1,
                }),
                ErrorKind::IllegalTransition,
            ),
            (
                Error::Runtime(RuntimeError::AlreadyStopped),
                ErrorKind::State,
            ),
        ] {
            assert_eq!(error.kind(), kind, "{error}");
            assert!(!error.is_transient(), "{error}");
        }
    }

    #[test]
    fn only_transient_store_faults_are_transient() {
        let transient = Error::Runtime(RuntimeError::Store(PortError::Unavailable {
            backend: "postgres",
            message: "pool timed out".into(),
        }));
        assert!(transient.is_transient());
        assert!(
            !Error::Store(PortError::Database {
                backend: "postgres",
                message: "syntax error".into(),
            })
            .is_transient()
        );
    }
}
