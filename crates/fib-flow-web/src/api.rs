//! The JSON API under `/api/v1`: the pages' data, and the actions for scripts.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fib_flow::{
    AttemptQuery, EventQuery, Page, PageRequest, Task, TaskAttempt, TaskAudit, TaskEvent, TaskId,
    Worker, WorkerQuery, WorkerStatus,
};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::data::{self, Action, Overview, TaskFilter, Workflow};
use crate::error::WebError;
use crate::security::ActionCredentials;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/session", get(session))
        .route("/overview", get(overview))
        .route("/tasks", get(tasks))
        .route("/tasks/{id}", get(task))
        .route("/tasks/{id}/events", get(task_events))
        .route("/tasks/{id}/attempts", get(task_attempts))
        .route("/tasks/{id}/{action}", post(act))
        .route("/workflows/{id}", get(workflow))
        .route("/workers", get(workers))
}

/// An API error: its status and `{"error": "..."}`.
pub(crate) struct ApiError(WebError);

impl<E: Into<WebError>> From<E> for ApiError {
    fn from(error: E) -> Self {
        ApiError(error.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        if status.is_server_error() {
            tracing::warn!(error = %self.0, "dashboard API request failed");
        }
        (
            status,
            Json(serde_json::json!({ "error": self.0.to_string() })),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

pub(crate) fn parse_task_id(value: &str) -> Result<TaskId, WebError> {
    value
        .parse::<i64>()
        .map(TaskId)
        .map_err(|_| WebError::BadParameter {
            field: "id",
            reason: format!("`{value}` is not a task id"),
        })
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, WebError> {
    query
        .map(|Query(value)| value)
        .map_err(|rejection| WebError::BadParameter {
            field: "query",
            reason: rejection.body_text(),
        })
}

/// What a script needs before it acts.
#[derive(Serialize)]
struct Session {
    /// Echo it in `X-CSRF-Token` on POSTs that carry no bearer token.
    csrf_token: String,
    /// Actions are refused.
    read_only: bool,
    /// Actions need `Authorization: Bearer <token>`.
    token_required: bool,
}

async fn session(State(state): State<AppState>) -> Json<Session> {
    Json(Session {
        csrf_token: state.access.csrf_token.clone(),
        read_only: state.access.read_only,
        token_required: state.access.token.is_some(),
    })
}

async fn overview(State(state): State<AppState>) -> ApiResult<Overview> {
    Ok(Json(data::overview(&state.manager).await?))
}

async fn tasks(
    State(state): State<AppState>,
    filter: Result<Query<TaskFilter>, QueryRejection>,
) -> ApiResult<Page<Task>> {
    let filter = query(filter)?;
    Ok(Json(data::tasks(&state.manager, &filter).await?))
}

async fn task(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<TaskAudit> {
    let id = parse_task_id(&id)?;
    Ok(Json(data::task_detail(&state.manager, id).await?))
}

async fn task_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    page: Result<Query<PageRequest>, QueryRejection>,
) -> ApiResult<Page<TaskEvent>> {
    let id = parse_task_id(&id)?;
    let page = query(page)?;
    Ok(Json(
        state
            .manager
            .query_task_events(id, EventQuery::default(), page)
            .await?,
    ))
}

async fn task_attempts(
    State(state): State<AppState>,
    Path(id): Path<String>,
    page: Result<Query<PageRequest>, QueryRejection>,
) -> ApiResult<Page<TaskAttempt>> {
    let id = parse_task_id(&id)?;
    let page = query(page)?;
    Ok(Json(
        state
            .manager
            .query_task_attempts(id, AttemptQuery::default(), page)
            .await?,
    ))
}

async fn workflow(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Workflow> {
    let id = parse_task_id(&id)?;
    Ok(Json(data::workflow(&state.manager, id).await?))
}

#[derive(Deserialize)]
struct WorkerFilter {
    status: Option<String>,
}

async fn workers(
    State(state): State<AppState>,
    filter: Result<Query<WorkerFilter>, QueryRejection>,
) -> ApiResult<Vec<Worker>> {
    let filter = query(filter)?;
    let status = filter
        .status
        .as_deref()
        .filter(|status| !status.is_empty())
        .map(|status| WorkerStatus::parse_field(status, "status"))
        .transpose()
        .map_err(fib_flow::Error::from)?;
    let query = WorkerQuery {
        status,
        ..WorkerQuery::default()
    };
    Ok(Json(state.manager.workers(query).await?))
}

/// The optional body of an action.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    /// Recorded on the task's event (retry, cancel, resume).
    reason: Option<String>,
}

async fn act(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<ActionBody>>,
) -> ApiResult<Task> {
    let id = parse_task_id(&id)?;
    let action = Action::parse(&action)?;
    state.access.check_action(
        &headers,
        &ActionCredentials {
            csrf_token: None,
            token: None,
        },
    )?;
    let Json(body) = body.unwrap_or_default();
    Ok(Json(action.perform(&state.manager, id, body.reason).await?))
}
