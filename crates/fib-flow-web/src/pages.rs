//! The HTML pages, rendered on the server with maud (every spliced value is HTML-escaped), a
//! small stylesheet and a small script without dependencies.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use fib_flow::{Page, Task, TaskId, TaskStatus, Worker};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use crate::AppState;
use crate::api::parse_task_id;
use crate::data::{self, Action, Overview, TaskFilter, Workflow};
use crate::error::WebError;
use crate::security::ActionCredentials;

const STYLE: &str = include_str!("../assets/style.css");
const SCRIPT: &str = include_str!("../assets/app.js");
/// No inline script or style, no framing (a framed confirmation button could be clicked
/// through an overlay), forms post only to the dashboard.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/tasks", get(tasks))
        .route("/tasks/{id}", get(task))
        .route("/tasks/{id}/{action}", get(confirm).post(act))
        .route("/workflows/{id}", get(workflow))
        .route("/assets/style.css", get(style))
        .route("/assets/app.js", get(script))
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// A page response with the security headers every page carries.
fn page(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// A failed page: the error's status and an explanation.
struct PageError {
    error: WebError,
    read_only: bool,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.error.status();
        if status.is_server_error() {
            tracing::warn!(error = %self.error, "dashboard page failed");
        }
        let title = status.canonical_reason().unwrap_or("Error");
        page(
            status,
            layout(
                title,
                self.read_only,
                false,
                html! {
                    h1 { (status.as_u16()) " " (title) }
                    p.error #error-message { (self.error.to_string()) }
                    p { a href="/" { "Back to the overview" } }
                },
            ),
        )
    }
}

type PageResult = Result<Response, PageError>;

impl AppState {
    fn fail(&self, error: impl Into<WebError>) -> PageError {
        PageError {
            error: error.into(),
            read_only: self.access.read_only,
        }
    }
}

fn layout(title: &str, read_only: bool, refresh: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · fib-flow" }
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/app.js" defer {}
            }
            body data-refresh=[refresh.then_some("5")] {
                header.top {
                    a.brand href="/" { "fib-flow" }
                    nav {
                        a href="/" { "Overview" }
                        a href="/tasks" { "Tasks" }
                        a href="/metrics" { "Metrics" }
                    }
                    @if read_only { span.mode { "read-only" } }
                    @if refresh {
                        label.refresh { input #auto-refresh type="checkbox"; " auto-refresh" }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn status_badge(status: TaskStatus) -> Markup {
    html! { span class={ "badge status-" (status.as_str()) } { (status.as_str()) } }
}

fn time(instant: Option<DateTime<Utc>>) -> Markup {
    match instant {
        Some(instant) => html! {
            time datetime=(instant.to_rfc3339()) { (instant.format("%Y-%m-%d %H:%M:%S UTC")) }
        },
        None => html! { span.muted { "—" } },
    }
}

fn task_link(id: TaskId) -> Markup {
    html! { a href={ "/tasks/" (id) } { "#" (id) } }
}

fn json_block(value: &serde_json::Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    html! { pre.json { (text) } }
}

fn opt_text(value: Option<&str>) -> Markup {
    match value {
        Some(value) => html! { (value) },
        None => html! { span.muted { "—" } },
    }
}

// --- overview -----------------------------------------------------------------------------

async fn overview(State(state): State<AppState>) -> PageResult {
    let overview = data::overview(&state.manager)
        .await
        .map_err(|e| state.fail(e))?;
    Ok(page(
        StatusCode::OK,
        layout(
            "Overview",
            state.access.read_only,
            true,
            render_overview(&overview),
        ),
    ))
}

fn render_overview(overview: &Overview) -> Markup {
    html! {
        h1 { "Overview" }
        section.cards #status-counts {
            @for (status, count) in &overview.by_status {
                a class={ "card status-" (status.as_str()) } href={ "/tasks?status=" (status.as_str()) } {
                    span.count { (count) }
                    span.label { (status.as_str()) }
                }
            }
        }
        section {
            h2 { "Throughput, last hour" }
            (throughput_chart(overview))
        }
        section {
            h2 { "Tasks by name" }
            @if overview.by_name.is_empty() {
                p.muted { "No tasks." }
            } @else {
                table #tasks-by-name {
                    thead { tr {
                        th { "name" } th.num { "total" }
                        @for status in TaskStatus::ALL { th.num { (status.as_str()) } }
                    } }
                    tbody {
                        @for name in &overview.by_name {
                            tr {
                                td { a href={ "/tasks?name=" (url_encode(&name.name)) } { (name.name) } }
                                td.num { (name.total) }
                                @for status in TaskStatus::ALL {
                                    td.num { @match name.by_status.get(&status) {
                                        Some(count) => a href={ "/tasks?name=" (url_encode(&name.name)) "&status=" (status.as_str()) } { (count) },
                                        None => span.muted { "0" },
                                    } }
                                }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Workers" }
            (workers_table(&overview.workers))
        }
        p.muted { "As of " (time(Some(overview.generated_at))) "." }
    }
}

/// Bars of completions (and failures stacked on top) per five minutes, as inline SVG: sizes
/// are attributes, so the page needs no inline style.
fn throughput_chart(overview: &Overview) -> Markup {
    const BAR: u64 = 40;
    const HEIGHT: u64 = 120;
    let peak = overview
        .throughput
        .iter()
        .map(|bucket| bucket.completed + bucket.failed)
        .max()
        .unwrap_or(0)
        .max(1);
    let completed: u64 = overview.throughput.iter().map(|b| b.completed).sum();
    let failed: u64 = overview.throughput.iter().map(|b| b.failed).sum();
    let width = BAR * overview.throughput.len() as u64;
    html! {
        p #throughput-totals { (completed) " completed, " (failed) " failed attempts in the last hour (peak " (peak) " per 5 min)." }
        svg.chart width=(width) height=(HEIGHT + 20) viewBox={ "0 0 " (width) " " (HEIGHT + 20) } role="img" aria-label="throughput per 5 minutes" {
            @for (index, bucket) in overview.throughput.iter().enumerate() {
                @let x = index as u64 * BAR + 4;
                @let ok_height = bucket.completed * HEIGHT / peak;
                @let failed_height = bucket.failed * HEIGHT / peak;
                rect.completed x=(x) y=(HEIGHT - ok_height) width=(BAR - 8) height=(ok_height) {
                    title { (bucket.start.format("%H:%M")) ": " (bucket.completed) " completed" }
                }
                rect.failed x=(x) y=(HEIGHT - ok_height - failed_height) width=(BAR - 8) height=(failed_height) {
                    title { (bucket.start.format("%H:%M")) ": " (bucket.failed) " failed" }
                }
                text x=(x) y=(HEIGHT + 14) { (bucket.start.format("%H:%M")) }
            }
        }
    }
}

fn workers_table(workers: &[Worker]) -> Markup {
    html! {
        @if workers.is_empty() {
            p.muted { "No worker has registered." }
        } @else {
            table #workers {
                thead { tr { th { "worker" } th { "pod" } th { "status" } th { "registered" } th { "last seen" } th { "lease until" } } }
                tbody {
                    @for worker in workers {
                        tr {
                            td { code { (worker.worker_id) } }
                            td { (worker.pod_id) }
                            td { span class={ "badge worker-" (worker.status.as_str()) } { (worker.status.as_str()) } }
                            td { (time(Some(worker.registered_at))) }
                            td { (time(Some(worker.last_seen_at))) }
                            td { (time(Some(worker.expires_at))) }
                        }
                    }
                }
            }
        }
    }
}

// --- tasks --------------------------------------------------------------------------------

async fn tasks(
    State(state): State<AppState>,
    filter: Result<Query<TaskFilter>, QueryRejection>,
) -> PageResult {
    let filter = filter.map(|Query(filter)| filter).map_err(|rejection| {
        state.fail(WebError::BadParameter {
            field: "query",
            reason: rejection.body_text(),
        })
    })?;
    let page_of_tasks = data::tasks(&state.manager, &filter)
        .await
        .map_err(|e| state.fail(e))?;
    Ok(page(
        StatusCode::OK,
        layout(
            "Tasks",
            state.access.read_only,
            false,
            render_tasks(&filter, &page_of_tasks),
        ),
    ))
}

fn render_tasks(filter: &TaskFilter, tasks: &Page<Task>) -> Markup {
    let value = TaskFilter::value;
    html! {
        h1 { "Tasks" }
        form.filters #task-filter method="get" action="/tasks" {
            label { "status "
                select name="status" data-autosubmit {
                    option value="" { "any" }
                    @for status in TaskStatus::ALL {
                        option value=(status.as_str()) selected[value(&filter.status) == status.as_str()] { (status.as_str()) }
                    }
                }
            }
            label { "type "
                select name="type" data-autosubmit {
                    option value="" { "any" }
                    @for task_type in ["async", "cron"] {
                        option value=(task_type) selected[value(&filter.task_type) == task_type] { (task_type) }
                    }
                }
            }
            label { "name " input name="name" value=(value(&filter.name)) size="14"; }
            label { "tag " input name="tag" value=(value(&filter.tag)) size="10"; }
            label { "parent " input name="parent_id" value=(value(&filter.parent_id)) size="6" inputmode="numeric"; }
            label { "workflow " input name="root_id" value=(value(&filter.root_id)) size="6" inputmode="numeric"; }
            label { "worker " input name="worker_id" value=(value(&filter.worker_id)) size="12"; }
            input type="hidden" name="limit" value=(value(&filter.limit));
            input type="hidden" name="order" value=(value(&filter.order));
            button type="submit" #apply-filter { "Filter" }
            a href="/tasks" { "clear" }
        }
        p.muted #page-info {
            @if tasks.items.is_empty() {
                "No task matches."
            } @else {
                "Tasks " (tasks.offset + 1) "–" (tasks.offset + tasks.items.len() as u64) " of " (tasks.total) "."
            }
        }
        @if !tasks.items.is_empty() {
            table #task-list {
                thead { tr {
                    th { "id" } th { "name" } th { "status" } th { "type" } th { "tag" } th.num { "priority" }
                    th.num { "attempt" } th { "created" } th { "next run" } th { "error" }
                } }
                tbody {
                    @for task in &tasks.items {
                        tr data-task-id=(task.id) {
                            td { (task_link(task.id)) }
                            td { (task.name) }
                            td { (status_badge(task.status)) }
                            td { (task.task_type.as_str()) }
                            td { (opt_text(task.tag.as_deref())) }
                            td.num { (task.priority) }
                            td.num { (task.attempt) }
                            td { (time(Some(task.created_at))) }
                            td { (time(Some(task.next_run_time))) }
                            td.error-cell { (opt_text(task.error.as_deref().map(|e| truncate(e, 80)))) }
                        }
                    }
                }
            }
        }
        nav.pager {
            @if tasks.offset > 0 {
                a #previous-page href=(page_link(filter, tasks.offset.saturating_sub(u64::from(tasks.limit)), tasks.limit)) { "← newer" }
            }
            @if tasks.has_more {
                a #next-page href=(page_link(filter, tasks.offset + u64::from(tasks.limit), tasks.limit)) { "older →" }
            }
        }
    }
}

fn truncate(text: &str, max_chars: usize) -> &str {
    text.char_indices()
        .nth(max_chars)
        .map_or(text, |(end, _)| &text[..end])
}

/// The task list URL with the same filter at another offset.
fn page_link(filter: &TaskFilter, offset: u64, limit: u32) -> String {
    let fields = [
        ("status", &filter.status),
        ("type", &filter.task_type),
        ("name", &filter.name),
        ("tag", &filter.tag),
        ("parent_id", &filter.parent_id),
        ("root_id", &filter.root_id),
        ("worker_id", &filter.worker_id),
        ("order", &filter.order),
    ];
    let mut link = format!("/tasks?limit={limit}&offset={offset}");
    for (field, value) in fields {
        let value = TaskFilter::value(value);
        if !value.is_empty() {
            link.push_str(&format!("&{field}={}", url_encode(value)));
        }
    }
    link
}

/// Percent-encodes everything but unreserved characters, for a query value.
fn url_encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

// --- task detail --------------------------------------------------------------------------

#[derive(Deserialize)]
struct Done {
    done: Option<String>,
}

async fn task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(done): Query<Done>,
) -> PageResult {
    let id = parse_task_id(&id).map_err(|e| state.fail(e))?;
    let audit = data::task_detail(&state.manager, id)
        .await
        .map_err(|e| state.fail(e))?;
    let Some(task) = &audit.task else {
        return Err(state.fail(WebError::TaskNotFound(id)));
    };
    let done = done.done.and_then(|done| Action::parse(&done).ok());
    let body = html! {
        h1 { "Task " (task_link(task.id)) " " (task.name) " " (status_badge(task.status)) }
        @if let Some(action) = done {
            p.notice #action-done { (action.label()) " done: the task is now " strong { (task.status.as_str()) } "." }
        }
        @if !state.access.read_only {
            div.actions #actions {
                @for action in Action::ALL {
                    @if action.applies_to(task.status) {
                        a.button id={ "action-" (action.as_str()) } href={ "/tasks/" (task.id) "/" (action.as_str()) } { (action.label()) }
                    }
                }
            }
        }
        (task_fields(task))
        div.columns {
            section { h2 { "Payload" } (json_block(&task.payload)) }
            section {
                h2 { "Result" }
                @match &task.result {
                    Some(result) => (json_block(result)),
                    None => p.muted { "No result." },
                }
            }
        }
        section {
            h2 { "Error" }
            @match &task.error {
                Some(error) => pre.error #task-error { (error) },
                None => p.muted { "No error." },
            }
        }
        section {
            h2 { "Attempts (" (audit.attempts.total) ")" }
            @if audit.attempts.items.is_empty() {
                p.muted { "Not run yet." }
            } @else {
                table #attempts {
                    thead { tr { th.num { "#" } th { "worker" } th { "started" } th { "ended" } th.num { "seconds" } th { "outcome" } th { "error" } } }
                    tbody {
                        @for attempt in &audit.attempts.items {
                            tr {
                                td.num { (attempt.attempt) }
                                td { (opt_text(attempt.worker_id.as_deref())) }
                                td { (time(Some(attempt.started_at))) }
                                td { (time(attempt.ended_at)) }
                                td.num { @if let Some(ended) = attempt.ended_at {
                                    (format!("{:.3}", (ended - attempt.started_at).num_milliseconds().max(0) as f64 / 1000.0))
                                } }
                                td { (opt_text(attempt.outcome.map(|o| o.as_str()))) }
                                td.error-cell { (opt_text(attempt.error.as_deref())) }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Events (" (audit.events.total) ")" }
            ol.timeline #events {
                @for event in &audit.events.items {
                    li {
                        (time(Some(event.event_time)))
                        " " strong { (event.event_type) }
                        @if let (Some(from), Some(to)) = (event.from_status, event.to_status) {
                            " " span.muted { (from.as_str()) " → " (to.as_str()) }
                        }
                        @if let Some(attempt) = event.attempt { " " span.muted { "attempt " (attempt) } }
                        @if let Some(worker) = &event.worker_id { " " span.muted { "by " (worker) } }
                        @if let Some(message) = &event.message { div.message { (message) } }
                        @if event.metadata.as_object().is_some_and(|fields| !fields.is_empty()) {
                            div.metadata { code { (event.metadata.to_string()) } }
                        }
                    }
                }
            }
        }
    };
    Ok(page(
        StatusCode::OK,
        layout(
            &format!("Task {}", task.id),
            state.access.read_only,
            true,
            body,
        ),
    ))
}

fn task_fields(task: &Task) -> Markup {
    html! {
        dl.fields #task-fields {
            dt { "type" } dd { (task.task_type.as_str()) @if let Some(expr) = &task.cron_expr { " " code { (expr) } } }
            dt { "priority" } dd { (task.priority) }
            dt { "tag" } dd { (opt_text(task.tag.as_deref())) }
            dt { "created" } dd { (time(Some(task.created_at))) }
            dt { "next run" } dd { (time(Some(task.next_run_time))) }
            dt { "last active" } dd { (time(task.last_active_time)) }
            dt { "attempt" } dd { (task.attempt) " (retries " (task.retry_count) " of " (task.max_retries) " attempts)" }
            dt { "stage" } dd { (task.stage) @if let Some(name) = &task.current_stage_name { " · " (name) } }
            dt { "progress" } dd {
                @if let Some(percent) = task.progress_percent { (format!("{percent:.0}")) "% " }
                (opt_text(task.progress_text.as_deref()))
            }
            dt { "worker" } dd { (opt_text(task.worker_id.as_deref())) }
            dt { "parent" } dd { @match task.parent_id { Some(parent) => (task_link(parent)), None => span.muted { "—" } } }
            dt { "workflow" } dd { a #workflow-link href={ "/workflows/" (task.workflow_root()) } { "workflow #" (task.workflow_root()) } }
            @if let Some(reason) = &task.suspend_reason { dt { "suspended for" } dd { (reason) } }
        }
    }
}

// --- actions ------------------------------------------------------------------------------

async fn confirm(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
) -> PageResult {
    let id = parse_task_id(&id).map_err(|e| state.fail(e))?;
    let action = Action::parse(&action).map_err(|e| state.fail(e))?;
    if state.access.read_only {
        return Err(state.fail(WebError::Forbidden("the dashboard is read-only")));
    }
    let task = state
        .manager
        .get_task(id)
        .await
        .map_err(|e| state.fail(e))?
        .ok_or_else(|| state.fail(WebError::TaskNotFound(id)))?;
    let body = html! {
        h1 { (action.label()) " task " (task_link(task.id)) " " (task.name) "?" }
        p { "It is " (status_badge(task.status)) ". " (action.explanation()) }
        form.confirm #confirm-form method="post" action={ "/tasks/" (task.id) "/" (action.as_str()) } {
            input type="hidden" name="csrf_token" value=(state.access.csrf_token);
            @if action != Action::Pause {
                label { "Reason (recorded on the event) " input name="reason" size="40"; }
            }
            @if state.access.token.is_some() {
                label { "Dashboard token " input type="password" name="token" required autocomplete="current-password"; }
            }
            button.danger type="submit" #confirm { "Yes, " (action.as_str()) " task " (task.id) }
            " "
            a href={ "/tasks/" (task.id) } { "No, go back" }
        }
    };
    Ok(page(
        StatusCode::OK,
        layout(
            &format!("{} task {}", action.label(), task.id),
            false,
            false,
            body,
        ),
    ))
}

/// The confirmation form's fields.
#[derive(Deserialize)]
struct ActionForm {
    csrf_token: Option<String>,
    token: Option<String>,
    reason: Option<String>,
}

async fn act(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    form: Result<Form<ActionForm>, FormRejection>,
) -> PageResult {
    let id = parse_task_id(&id).map_err(|e| state.fail(e))?;
    let action = Action::parse(&action).map_err(|e| state.fail(e))?;
    let Form(form) = form.map_err(|rejection| {
        state.fail(WebError::BadParameter {
            field: "form",
            reason: rejection.body_text(),
        })
    })?;
    state
        .access
        .check_action(
            &headers,
            &ActionCredentials {
                csrf_token: Some(form.csrf_token.as_deref().unwrap_or_default()),
                token: form.token.as_deref(),
            },
        )
        .map_err(|e| state.fail(e))?;
    action
        .perform(&state.manager, id, form.reason)
        .await
        .map_err(|e| state.fail(e))?;
    Ok(Redirect::to(&format!("/tasks/{id}?done={}", action.as_str())).into_response())
}

// --- workflow -----------------------------------------------------------------------------

async fn workflow(State(state): State<AppState>, Path(id): Path<String>) -> PageResult {
    let id = parse_task_id(&id).map_err(|e| state.fail(e))?;
    let workflow = data::workflow(&state.manager, id)
        .await
        .map_err(|e| state.fail(e))?;
    Ok(page(
        StatusCode::OK,
        layout(
            &format!("Workflow {id}"),
            state.access.read_only,
            true,
            render_workflow(&workflow),
        ),
    ))
}

fn render_workflow(workflow: &Workflow) -> Markup {
    let summary = &workflow.summary;
    let mut children: BTreeMap<Option<TaskId>, Vec<&Task>> = BTreeMap::new();
    for task in &workflow.audit.tasks.items {
        children.entry(task.parent_id).or_default().push(task);
    }
    html! {
        @if let Some(root) = &workflow.audit.root_task {
            h1 { "Workflow " (task_link(root.id)) " " (root.name) " " (status_badge(root.status)) }
            section.cards #workflow-statuses {
                @for (status, count) in &summary.statuses {
                    div class={ "card status-" (status) } { span.count { (count) } span.label { (status) } }
                }
            }
            dl.fields #workflow-summary {
                dt { "tasks" } dd { (summary.totals.tasks) }
                dt { "attempts" } dd { (summary.totals.attempts) }
                dt { "events" } dd { (summary.totals.events) }
                dt { "created" } dd { (time(summary.timing.created_at)) }
                dt { "first start" } dd { (time(summary.timing.first_started_at)) }
                dt { "last end" } dd { (time(summary.timing.last_ended_at)) }
                dt { "duration" } dd { (seconds(summary.timing.workflow_duration_seconds)) }
                dt { "workers" } dd { (summary.workers.join(", ")) }
            }
            section {
                h2 { "Tree" }
                ul.tree #workflow-tree { (tree_node(root, &children)) }
                @if workflow.audit.tasks.has_more {
                    p.muted { "Only the first " (workflow.audit.tasks.items.len()) " of " (workflow.audit.tasks.total) " tasks are shown." }
                }
            }
            section {
                h2 { "Critical path (" (format!("{:.3}", summary.critical_path.total_duration_seconds)) " s)" }
                (critical_path(workflow))
            }
            @if !summary.failed_tasks.is_empty() {
                section {
                    h2 { "Failed tasks" }
                    table #failed-tasks {
                        thead { tr { th { "task" } th { "name" } th { "status" } th { "error" } } }
                        tbody {
                            @for failed in &summary.failed_tasks {
                                tr {
                                    td { (task_link(failed.task_id)) }
                                    td { (failed.name) }
                                    td { (status_badge(failed.status)) }
                                    td.error-cell { (opt_text(failed.error.as_deref())) }
                                }
                            }
                        }
                    }
                }
            }
            section {
                h2 { "Root stages" }
                @if summary.stage_timings.is_empty() {
                    p.muted { "The root has not run yet." }
                } @else {
                    table #stage-timings {
                        thead { tr { th.num { "stage" } th.num { "attempt" } th { "started" } th { "ended" } th.num { "seconds" } th { "outcome" } } }
                        tbody {
                            @for stage in &summary.stage_timings {
                                tr {
                                    td.num { (stage.stage) }
                                    td.num { (stage.attempt) }
                                    td { (time(Some(stage.started_at))) }
                                    td { (time(stage.ended_at)) }
                                    td.num { (seconds(stage.duration_seconds)) }
                                    td { (opt_text(stage.outcome.map(|o| o.as_str()))) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn seconds(value: Option<f64>) -> Markup {
    match value {
        Some(value) => html! { (format!("{value:.3}")) " s" },
        None => html! { span.muted { "—" } },
    }
}

fn tree_node(task: &Task, children: &BTreeMap<Option<TaskId>, Vec<&Task>>) -> Markup {
    html! {
        li {
            (task_link(task.id)) " " (task.name) " " (status_badge(task.status))
            span.muted { " stage " (task.stage) ", attempt " (task.attempt) }
            @if let Some(kids) = children.get(&Some(task.id)) {
                ul { @for child in kids { (tree_node(child, children)) } }
            }
        }
    }
}

/// The critical path's attempts grouped by the stage they ran, each stage with its subtotal.
fn critical_path(workflow: &Workflow) -> Markup {
    let nodes = &workflow.summary.critical_path.nodes;
    let mut stages: Vec<(i32, Vec<_>)> = Vec::new();
    for node in nodes {
        match stages.last_mut() {
            Some((stage, members)) if *stage == node.stage => members.push(node),
            _ => stages.push((node.stage, vec![node])),
        }
    }
    html! {
        @if nodes.is_empty() {
            p.muted { "Nothing has run yet." }
        } @else {
            table #critical-path {
                thead { tr { th.num { "stage" } th { "task" } th { "name" } th.num { "attempt" } th { "outcome" } th.num { "seconds" } } }
                tbody {
                    @for (stage, members) in &stages {
                        @for node in members {
                            tr {
                                td.num { (stage) }
                                td { (task_link(node.task_id)) }
                                td { (node.name) }
                                td.num { (opt_text(node.attempt.map(|a| a.to_string()).as_deref())) }
                                td { (opt_text(node.outcome.map(|o| o.as_str()))) }
                                td.num { (seconds(node.duration_seconds)) }
                            }
                        }
                        tr.subtotal {
                            td.num { (stage) }
                            td colspan="4" { "stage " (stage) " subtotal" }
                            td.num { (seconds(Some(members.iter().filter_map(|n| n.duration_seconds).sum()))) }
                        }
                    }
                }
            }
        }
    }
}
