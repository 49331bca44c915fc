//! The dashboard's one error type, and the HTTP status each error answers with.

use std::net::SocketAddr;

use axum::http::StatusCode;
use fib_flow::ErrorKind;

/// Every way starting the dashboard or answering a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// `listen` is not a loopback address and no token was given: anyone who can reach the
    /// port could retry, cancel, pause and resume tasks.
    #[error(
        "refusing to listen on {listen} without a token: actions need --token (or FIB_FLOW_DASHBOARD_TOKEN) whenever the dashboard binds beyond loopback"
    )]
    TokenRequired {
        /// The non-loopback address asked for.
        listen: SocketAddr,
    },
    /// The token is empty or whitespace: it would protect nothing.
    #[error("the dashboard token must not be empty")]
    EmptyToken,
    /// The listening socket could not be opened.
    #[error("cannot listen on {listen}: {source}")]
    Bind {
        /// The address asked for.
        listen: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The HTTP server stopped with an I/O error.
    #[error("the dashboard server failed: {0}")]
    Serve(std::io::Error),
    /// Another metrics recorder was installed in this process before the dashboard's.
    #[error("cannot install the Prometheus recorder: {0}")]
    MetricsRecorder(String),
    /// A task manager call failed (opening the database, a query or an action).
    #[error(transparent)]
    Manager(#[from] fib_flow::Error),
    /// No task with this id.
    #[error("task {0} not found")]
    TaskNotFound(fib_flow::TaskId),
    /// A query parameter or form field is malformed.
    #[error("invalid parameter `{field}`: {reason}")]
    BadParameter {
        /// The parameter.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An action needs the dashboard token and the request did not carry the right one.
    #[error("this action needs the dashboard token")]
    Unauthorized,
    /// The request is refused whoever sends it: read-only mode, a failed CSRF or origin check,
    /// or a Host header that is not loopback on a dashboard without a token.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
}

impl WebError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            WebError::TaskNotFound(_) => StatusCode::NOT_FOUND,
            WebError::BadParameter { .. } => StatusCode::BAD_REQUEST,
            WebError::Unauthorized => StatusCode::UNAUTHORIZED,
            WebError::Forbidden(_) => StatusCode::FORBIDDEN,
            WebError::Manager(error) => manager_status(error),
            WebError::TokenRequired { .. }
            | WebError::EmptyToken
            | WebError::Bind { .. }
            | WebError::Serve(_)
            | WebError::MetricsRecorder(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

fn manager_status(error: &fib_flow::Error) -> StatusCode {
    match error.kind() {
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::IllegalTransition | ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Transient => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
