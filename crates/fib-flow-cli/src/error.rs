//! The CLI's one error type and the exit code each error maps to.

use std::process::ExitCode;

use fib_flow::ErrorKind;
use fib_flow::storage::{ConnectErrorKind, PortError};

/// The documented exit codes (docs/operations.md, "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command did what it was asked.
    Success = 0,
    /// Anything else: a database error, a failed migration, an aborted confirmation.
    Failure = 1,
    /// The command line is wrong (clap's own code): a missing URL, a value the library refuses.
    Usage = 2,
    /// The task or workflow does not exist.
    NotFound = 3,
    /// The task's status does not allow the action (an illegal transition), or a concurrent
    /// change won.
    Conflict = 4,
    /// The database cannot be reached or opened.
    Unreachable = 5,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// Every way a command fails.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line is incomplete or inconsistent.
    #[error("{0}")]
    Usage(String),
    /// A task or workflow root that does not exist.
    #[error("{what} {id} not found")]
    NotFound {
        /// `task` or `workflow`.
        what: &'static str,
        /// The id asked for.
        id: i64,
    },
    /// A SQLite file that does not exist (opening it would create an empty database).
    #[error("database file {0} does not exist; create it with `fib-flow migrate`")]
    MissingDatabaseFile(String),
    /// Some of the tasks of an action failed (each failure was reported as it happened).
    #[error("{failed} of {total} task(s) failed")]
    Partial {
        /// How many ids failed.
        failed: usize,
        /// How many ids were given.
        total: usize,
        /// The exit code of the first failure.
        exit: Exit,
    },
    /// The operator declined the confirmation.
    #[error("aborted; nothing was deleted")]
    Aborted,
    /// An error of the fib-flow library.
    #[error(transparent)]
    Library(#[from] fib_flow::Error),
    /// The dashboard could not start or stopped with an error.
    #[error(transparent)]
    Dashboard(#[from] fib_flow_web::WebError),
    /// Writing the output or reading the confirmation failed.
    #[error("terminal: {0}")]
    Io(#[from] std::io::Error),
    /// A value could not be serialised to JSON.
    #[error("json output: {0}")]
    Json(#[from] serde_json::Error),
}

impl CliError {
    /// The exit code this error ends the process with.
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Usage(_) => Exit::Usage,
            CliError::NotFound { .. } => Exit::NotFound,
            CliError::MissingDatabaseFile(_) => Exit::Unreachable,
            CliError::Partial { exit, .. } => *exit,
            CliError::Aborted | CliError::Io(_) | CliError::Json(_) => Exit::Failure,
            CliError::Library(error) => library_exit(error),
            CliError::Dashboard(fib_flow_web::WebError::Manager(error)) => library_exit(error),
            CliError::Dashboard(
                fib_flow_web::WebError::TokenRequired { .. } | fib_flow_web::WebError::EmptyToken,
            ) => Exit::Usage,
            CliError::Dashboard(_) => Exit::Failure,
        }
    }
}

fn library_exit(error: &fib_flow::Error) -> Exit {
    match error.kind() {
        ErrorKind::InvalidInput => Exit::Usage,
        ErrorKind::NotFound => Exit::NotFound,
        ErrorKind::IllegalTransition | ErrorKind::Conflict => Exit::Conflict,
        ErrorKind::Transient => Exit::Unreachable,
        // A URL that does not parse is the command line's fault; refused credentials, an
        // unknown database or an unopenable file mean the database cannot be opened.
        ErrorKind::Configuration if is_malformed_url(error) => Exit::Usage,
        ErrorKind::Configuration => Exit::Unreachable,
        _ => Exit::Failure,
    }
}

fn is_malformed_url(error: &fib_flow::Error) -> bool {
    matches!(
        error,
        fib_flow::Error::Store(PortError::Connect {
            kind: ConnectErrorKind::InvalidUrl,
            ..
        })
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use fib_flow::error::{AuditError, DomainError, RuntimeError};
    use fib_flow::{TaskId, TaskStatus};

    fn exit_of(error: impl Into<fib_flow::Error>) -> Exit {
        CliError::Library(error.into()).exit()
    }

    #[test]
    fn an_illegal_transition_is_a_conflict_wherever_it_was_decided() {
        let illegal = DomainError::IllegalTransition {
            task_id: TaskId(1),
            from: TaskStatus::Completed,
            command: "retry",
        };
        assert_eq!(exit_of(illegal.clone()), Exit::Conflict);
        assert_eq!(
            exit_of(RuntimeError::InvalidInput(illegal.clone())),
            Exit::Conflict
        );
        assert_eq!(exit_of(PortError::Rejected(illegal)), Exit::Conflict);
    }

    #[test]
    fn a_missing_task_is_not_found() {
        assert_eq!(exit_of(PortError::NotFound(TaskId(9))), Exit::NotFound);
        assert_eq!(
            exit_of(RuntimeError::Store(PortError::NotFound(TaskId(9)))),
            Exit::NotFound
        );
    }

    #[test]
    fn refused_connections_are_unreachable_but_a_malformed_url_is_usage() {
        let unavailable = PortError::Unavailable {
            backend: "postgres",
            message: "connection refused".into(),
        };
        assert_eq!(exit_of(unavailable), Exit::Unreachable);
        let authentication = PortError::Connect {
            backend: "postgres",
            kind: ConnectErrorKind::Authentication,
            message: "password authentication failed".into(),
            source: None,
        };
        assert_eq!(exit_of(authentication), Exit::Unreachable);
        let malformed = PortError::Connect {
            backend: "postgres",
            kind: ConnectErrorKind::InvalidUrl,
            message: "invalid port".into(),
            source: None,
        };
        assert_eq!(exit_of(malformed), Exit::Usage);
    }

    #[test]
    fn invalid_input_is_usage_and_database_errors_are_failures() {
        let invalid = DomainError::InvalidOption {
            field: "limit",
            reason: "must be between 1 and 1000, got 0".into(),
        };
        assert_eq!(exit_of(AuditError::Invalid(invalid)), Exit::Usage);
        let database = PortError::Database {
            backend: "sqlite",
            message: "no such table: fib_flow_tasks".into(),
        };
        assert_eq!(exit_of(database), Exit::Failure);
    }
}
