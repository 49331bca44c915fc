//! # fib-flow-web
//!
//! The operator dashboard of fib-flow: server-rendered HTML pages (overview, tasks, task
//! detail, workflow, and the retry/cancel/pause/resume actions behind a confirmation), the same
//! data as JSON under `/api/v1`, and Prometheus text on `/metrics`.
//!
//! ```no_run
//! # async fn run() -> Result<(), fib_flow_web::WebError> {
//! use fib_flow_web::{ManagerSource, ServeOptions};
//!
//! // What `fib-flow serve --url sqlite:tasks.db` does: loopback only, no token needed.
//! fib_flow_web::serve(ServeOptions::new(ManagerSource::Url("sqlite:tasks.db".into()))).await
//! # }
//! ```
//!
//! To mount the dashboard in a service of your own, build the router with [`router`] over a
//! [`fib_flow::TaskManager`] you hold (started or not: the dashboard never starts it).
//!
//! This crate owns the HTTP surface only: every figure comes from the facade's queries and
//! every action is a facade call. It must not start workers, register a worker row, migrate a
//! database or write SQL. Cargo features `sqlite` (default), `postgres` and `mysql` select the
//! facade's backends.

mod api;
mod data;
mod error;
mod metrics;
mod pages;
mod security;
mod serve;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use fib_flow::TaskManager;

pub use data::{NameCounts, Overview, TaskFilter, ThroughputBucket, Workflow};
pub use error::WebError;
pub use metrics::{
    ATTEMPT_SECONDS_LAST_HOUR, ATTEMPTS_LAST_HOUR, EVENTS_LAST_HOUR, QUEUE_DEPTH, TASKS, WORKERS,
    install_prometheus_recorder,
};
pub use metrics_exporter_prometheus::PrometheusHandle;
pub use serve::{
    DEFAULT_LISTEN, Dashboard, ManagerSource, ServeArgs, ServeOptions, TOKEN_ENV, serve,
};

/// How the dashboard's router behaves.
#[derive(Debug, Clone, Default)]
pub struct WebOptions {
    /// The token actions need (form field `token`, or `Authorization: Bearer` on the API).
    /// Without one, the dashboard answers only to loopback host names.
    pub token: Option<String>,
    /// Hide the actions and refuse them with 403.
    pub read_only: bool,
    /// The Prometheus recorder whose rendering `/metrics` appends to the database figures:
    /// the engine's counters and histograms recorded in this process.
    pub prometheus: Option<PrometheusHandle>,
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState(Arc<AppInner>);

pub(crate) struct AppInner {
    pub(crate) manager: TaskManager,
    pub(crate) access: security::AccessPolicy,
    pub(crate) prometheus: Option<PrometheusHandle>,
}

impl std::ops::Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// The dashboard: HTML pages at `/`, `/tasks`, `/tasks/{id}`, `/workflows/{id}`, the JSON API
/// under `/api/v1`, and `/metrics`. It only queries and acts through `manager`; it does not
/// start it.
pub fn router(manager: TaskManager, options: WebOptions) -> Router {
    let state = AppState(Arc::new(AppInner {
        manager,
        access: security::AccessPolicy::new(options.token, options.read_only),
        prometheus: options.prometheus,
    }));
    Router::new()
        .merge(pages::routes())
        .nest("/api/v1", api::routes())
        .route("/metrics", get(metrics_endpoint))
        .layer(middleware::from_fn_with_state(state.clone(), check_host))
        .with_state(state)
}

async fn check_host(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match state.access.check_host(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(error) => (error.status(), error.to_string()).into_response(),
    }
}

async fn metrics_endpoint(State(state): State<AppState>) -> Response {
    match metrics::render(&state.manager, state.prometheus.as_ref()).await {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => {
            tracing::warn!(%error, "cannot read the metrics");
            (error.status(), error.to_string()).into_response()
        }
    }
}
