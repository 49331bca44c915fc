//! Every endpoint of the dashboard, through the router (no socket), against SQLite: the JSON
//! API, the pages, /metrics, and the host, token, CSRF, origin and read-only rules.

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use common::{Fixture, HOSTILE_NAME, HOSTILE_TAG, fixture};
use fib_flow::TaskStatus;
use fib_flow_web::{ManagerSource, ServeOptions, WebError, WebOptions, router};
use serde_json::Value;
use tower::ServiceExt;

const HOST: &str = "127.0.0.1:8080";
const TOKEN: &str = "s3cret-token";

struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

async fn send(app: &Router, request: Request<Body>) -> Response {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    Response {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).expect("UTF-8 body"),
    }
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri)
        .header(header::HOST, HOST)
        .body(Body::empty())
        .expect("request")
}

fn post_json(uri: &str, headers: &[(&str, &str)], body: Option<Value>) -> Request<Body> {
    let mut request = Request::post(uri).header(header::HOST, HOST);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .expect("request")
}

fn post_form(uri: &str, headers: &[(&str, &str)], form: &str) -> Request<Body> {
    let mut request = Request::post(uri)
        .header(header::HOST, HOST)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::from(form.to_owned())).expect("request")
}

fn app(fixture: &Fixture) -> Router {
    router(fixture.manager.clone(), WebOptions::default())
}

async fn csrf_token(app: &Router) -> String {
    let session = send(app, get("/api/v1/session")).await;
    assert_eq!(session.status, StatusCode::OK);
    session.json()["csrf_token"]
        .as_str()
        .expect("csrf_token")
        .to_owned()
}

async fn status_of(fixture: &Fixture, id: fib_flow::TaskId) -> TaskStatus {
    fixture
        .manager
        .get_task(id)
        .await
        .expect("get task")
        .expect("task exists")
        .status
}

// --- JSON API: reads ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn overview_counts_statuses_names_throughput_and_workers() {
    let fixture = fixture().await;
    let response = send(&app(&fixture), get("/api/v1/overview")).await;
    assert_eq!(response.status, StatusCode::OK);
    let overview = response.json();
    let by_status = &overview["by_status"];
    assert_eq!(by_status.as_object().map(|o| o.len()), Some(8));
    assert_eq!(by_status["permanently_failed"], 1);
    assert_eq!(by_status["pending"], 1);
    assert_eq!(by_status["suspended"], 0);
    // send_email ×2, charge_card, build_report, render_page ×2, the hostile one.
    assert_eq!(by_status["completed"], 5);
    let send_email = overview["by_name"]
        .as_array()
        .and_then(|names| names.iter().find(|n| n["name"] == "send_email"))
        .expect("send_email counted");
    assert_eq!(send_email["total"], 2);
    assert_eq!(send_email["by_status"]["completed"], 1);
    assert_eq!(send_email["by_status"]["pending"], 1);
    let buckets = overview["throughput"].as_array().expect("buckets");
    assert_eq!(buckets.len(), 12);
    let completed: u64 = buckets.iter().filter_map(|b| b["completed"].as_u64()).sum();
    let failed: u64 = buckets.iter().filter_map(|b| b["failed"].as_u64()).sum();
    // build_report completes once (its first attempt spawned children).
    assert_eq!(completed, 5);
    assert_eq!(failed, 1);
    let workers = overview["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0]["status"], "stopped");
}

#[tokio::test(flavor = "multi_thread")]
async fn task_list_filters_and_pages() {
    let fixture = fixture().await;
    let app = app(&fixture);

    let failed = send(&app, get("/api/v1/tasks?status=permanently_failed")).await;
    assert_eq!(failed.status, StatusCode::OK);
    let page = failed.json();
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["id"], fixture.failed.0);

    let by_name = send(&app, get("/api/v1/tasks?name=send_email&tag=mail"))
        .await
        .json();
    assert_eq!(by_name["total"], 1);
    assert_eq!(by_name["items"][0]["id"], fixture.completed.0);

    let children = send(
        &app,
        get(&format!("/api/v1/tasks?parent_id={}", fixture.workflow)),
    )
    .await
    .json();
    assert_eq!(children["total"], 2);
    let whole = send(
        &app,
        get(&format!("/api/v1/tasks?root_id={}", fixture.workflow)),
    )
    .await
    .json();
    assert_eq!(whole["total"], 3, "the root and its two children");

    // Blank form fields mean "any"; newest first by default (the manual clock stands
    // still, so ties on created_at fall back to the id, descending).
    let first = send(&app, get("/api/v1/tasks?status=&name=&limit=2"))
        .await
        .json();
    assert_eq!(first["total"], 7);
    assert_eq!(first["has_more"], true);
    let ids: Vec<i64> = first["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|task| task["id"].as_i64())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] > ids[1], "{ids:?}");
    let last = send(&app, get("/api/v1/tasks?limit=2&offset=6"))
        .await
        .json();
    assert_eq!(last["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(last["has_more"], false);
    let oldest = send(&app, get("/api/v1/tasks?limit=1&order=asc"))
        .await
        .json();
    assert_eq!(oldest["items"][0]["id"], fixture.completed.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn task_list_rejects_malformed_filters_with_the_field_named() {
    let fixture = fixture().await;
    let app = app(&fixture);
    for (uri, field) in [
        ("/api/v1/tasks?status=exploded", "status"),
        ("/api/v1/tasks?type=weekly", "weekly"),
        ("/api/v1/tasks?limit=0", "limit"),
        ("/api/v1/tasks?limit=many", "limit"),
        ("/api/v1/tasks?parent_id=-x", "parent_id"),
        ("/api/v1/tasks?order=sideways", "order"),
    ] {
        let response = send(&app, get(uri)).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{uri}");
        let error = response.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(error.contains(field), "{uri}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn task_detail_has_attempts_events_payload_result_and_error() {
    let fixture = fixture().await;
    let app = app(&fixture);
    let detail = send(&app, get(&format!("/api/v1/tasks/{}", fixture.failed))).await;
    assert_eq!(detail.status, StatusCode::OK);
    let detail = detail.json();
    assert_eq!(detail["task"]["payload"]["amount_cents"], 4200);
    assert!(
        detail["task"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("card declined"))
    );
    assert_eq!(detail["attempts"]["total"], 1);
    assert_eq!(detail["attempts"]["items"][0]["outcome"], "failed");
    let types: Vec<&str> = detail["events"]["items"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    assert!(types.contains(&"task_created"), "{types:?}");
    assert!(types.contains(&"task_permanently_failed"), "{types:?}");

    let completed = send(&app, get(&format!("/api/v1/tasks/{}", fixture.completed)))
        .await
        .json();
    assert_eq!(completed["task"]["result"]["sent_to"], "ada@example.com");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_and_malformed_task_ids_are_404_and_400() {
    let fixture = fixture().await;
    let app = app(&fixture);
    for uri in ["/api/v1/tasks/999999", "/api/v1/workflows/999999"] {
        let response = send(&app, get(uri)).await;
        assert_eq!(response.status, StatusCode::NOT_FOUND, "{uri}");
        assert!(
            response.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("999999"))
        );
    }
    let response = send(&app, get("/api/v1/tasks/abc")).await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    let page = send(&app, get("/tasks/999999")).await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(page.body.contains("task 999999 not found"));
}

#[tokio::test(flavor = "multi_thread")]
async fn task_events_and_attempts_page_on_their_own() {
    let fixture = fixture().await;
    let app = app(&fixture);
    let all = send(
        &app,
        get(&format!("/api/v1/tasks/{}/events", fixture.failed)),
    )
    .await
    .json();
    let total = all["total"].as_u64().expect("total");
    assert!(total >= 3, "created, claimed/started, failed: {all}");
    let page = send(
        &app,
        get(&format!(
            "/api/v1/tasks/{}/events?limit=1&offset=1&order=desc",
            fixture.failed
        )),
    )
    .await
    .json();
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["offset"], 1);
    assert_eq!(page["has_more"], total > 2);

    let attempts = send(
        &app,
        get(&format!("/api/v1/tasks/{}/attempts", fixture.failed)),
    )
    .await
    .json();
    assert_eq!(attempts["total"], 1);
    assert_eq!(attempts["items"][0]["attempt"], 1);
    let bad = send(
        &app,
        get(&format!(
            "/api/v1/tasks/{}/attempts?limit=5000",
            fixture.failed
        )),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn workflow_has_tree_summary_and_critical_path() {
    let fixture = fixture().await;
    let response = send(
        &app(&fixture),
        get(&format!("/api/v1/workflows/{}", fixture.workflow)),
    )
    .await;
    assert_eq!(response.status, StatusCode::OK);
    let workflow = response.json();
    assert_eq!(workflow["audit"]["root_task"]["id"], fixture.workflow.0);
    assert_eq!(workflow["audit"]["tasks"]["total"], 3);
    assert_eq!(workflow["summary"]["totals"]["tasks"], 3);
    assert_eq!(workflow["summary"]["statuses"]["completed"], 3);
    let path = workflow["summary"]["critical_path"]["nodes"]
        .as_array()
        .expect("critical path");
    // The root's spawning attempt, one child, the root's final attempt.
    assert_eq!(path.len(), 3, "{path:?}");
    assert_eq!(path[1]["name"], "render_page");
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_filter_by_status() {
    let fixture = fixture().await;
    let app = app(&fixture);
    let stopped = send(&app, get("/api/v1/workers?status=stopped"))
        .await
        .json();
    assert_eq!(stopped.as_array().map(Vec::len), Some(1));
    let active = send(&app, get("/api/v1/workers?status=active"))
        .await
        .json();
    assert_eq!(active.as_array().map(Vec::len), Some(0));
    let bad = send(&app, get("/api/v1/workers?status=zombie")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn session_tells_scripts_the_csrf_token_and_the_mode() {
    let fixture = fixture().await;
    let session = send(&app(&fixture), get("/api/v1/session")).await.json();
    assert_eq!(session["read_only"], false);
    assert_eq!(session["token_required"], false);
    assert_eq!(session["csrf_token"].as_str().map(str::len), Some(32));
    let protected = router(
        fixture.manager.clone(),
        WebOptions {
            token: Some(TOKEN.into()),
            read_only: true,
            ..WebOptions::default()
        },
    );
    let session = send(&protected, get("/api/v1/session")).await.json();
    assert_eq!(session["read_only"], true);
    assert_eq!(session["token_required"], true);
}

// --- JSON API: actions --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn api_actions_need_the_csrf_token_and_change_the_task() {
    let fixture = fixture().await;
    let app = app(&fixture);
    let uri = format!("/api/v1/tasks/{}/retry", fixture.failed);

    let refused = send(&app, post_json(&uri, &[], None)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(
        refused.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("CSRF"))
    );
    let wrong = send(&app, post_json(&uri, &[("x-csrf-token", "guess")], None)).await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert_eq!(
        status_of(&fixture, fixture.failed).await,
        TaskStatus::PermanentlyFailed
    );

    let csrf = csrf_token(&app).await;
    let retried = send(
        &app,
        post_json(
            &uri,
            &[("x-csrf-token", &csrf)],
            Some(serde_json::json!({ "reason": "card topped up" })),
        ),
    )
    .await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    assert_eq!(retried.json()["status"], "pending");
    let events = fixture
        .manager
        .task_events(fixture.failed, fib_flow::EventQuery::default())
        .await
        .expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.event_type == "task_retried"
                && e.metadata["retry_reason"] == "card topped up"),
        "{events:?}"
    );

    for (action, expected) in [
        ("pause", TaskStatus::Paused),
        ("resume", TaskStatus::Pending),
        ("cancel", TaskStatus::PermanentlyFailed),
    ] {
        let response = send(
            &app,
            post_json(
                &format!("/api/v1/tasks/{}/{action}", fixture.pending),
                &[("x-csrf-token", &csrf)],
                None,
            ),
        )
        .await;
        assert_eq!(
            response.status,
            StatusCode::OK,
            "{action}: {}",
            response.body
        );
        assert_eq!(
            status_of(&fixture, fixture.pending).await,
            expected,
            "{action}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn api_actions_report_illegal_transitions_unknown_actions_and_tasks() {
    let fixture = fixture().await;
    let app = app(&fixture);
    let csrf = csrf_token(&app).await;
    let headers = [("x-csrf-token", csrf.as_str())];
    let completed_retry = send(
        &app,
        post_json(
            &format!("/api/v1/tasks/{}/retry", fixture.completed),
            &headers,
            None,
        ),
    )
    .await;
    assert_eq!(completed_retry.status, StatusCode::CONFLICT);
    assert!(
        completed_retry.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("retry"))
    );
    let unknown_action = send(
        &app,
        post_json(
            &format!("/api/v1/tasks/{}/explode", fixture.failed),
            &headers,
            None,
        ),
    )
    .await;
    assert_eq!(unknown_action.status, StatusCode::BAD_REQUEST);
    let unknown_task = send(
        &app,
        post_json("/api/v1/tasks/999999/cancel", &headers, None),
    )
    .await;
    assert_eq!(unknown_task.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn actions_from_another_origin_are_refused_even_with_the_csrf_token() {
    let fixture = fixture().await;
    let app = app(&fixture);
    let csrf = csrf_token(&app).await;
    let uri = format!("/api/v1/tasks/{}/retry", fixture.failed);
    for headers in [
        vec![
            ("x-csrf-token", csrf.as_str()),
            ("origin", "http://evil.example"),
        ],
        vec![("x-csrf-token", csrf.as_str()), ("origin", "null")],
        vec![
            ("x-csrf-token", csrf.as_str()),
            ("sec-fetch-site", "cross-site"),
        ],
    ] {
        let response = send(&app, post_json(&uri, &headers, None)).await;
        assert_eq!(response.status, StatusCode::FORBIDDEN, "{headers:?}");
    }
    let same_origin = send(
        &app,
        post_json(
            &uri,
            &[
                ("x-csrf-token", &csrf),
                ("origin", "http://127.0.0.1:8080"),
                ("sec-fetch-site", "same-origin"),
            ],
            None,
        ),
    )
    .await;
    assert_eq!(same_origin.status, StatusCode::OK, "{}", same_origin.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_token_actions_need_it_and_a_bearer_header_replaces_the_csrf_token() {
    let fixture = fixture().await;
    let app = router(
        fixture.manager.clone(),
        WebOptions {
            token: Some(TOKEN.into()),
            ..WebOptions::default()
        },
    );
    let csrf = csrf_token(&app).await;
    let uri = format!("/api/v1/tasks/{}/retry", fixture.failed);
    let no_token = send(&app, post_json(&uri, &[("x-csrf-token", &csrf)], None)).await;
    assert_eq!(no_token.status, StatusCode::UNAUTHORIZED);
    let wrong = send(
        &app,
        post_json(&uri, &[("authorization", "Bearer s3cret-tokeN")], None),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let bearer = format!("Bearer {TOKEN}");
    let ok = send(&app, post_json(&uri, &[("authorization", &bearer)], None)).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(
        status_of(&fixture, fixture.failed).await,
        TaskStatus::Pending
    );

    // The form carries the token in a field, and still needs the CSRF token.
    let form_uri = format!("/tasks/{}/pause", fixture.failed);
    let without_csrf = send(&app, post_form(&form_uri, &[], &format!("token={TOKEN}"))).await;
    assert_eq!(without_csrf.status, StatusCode::FORBIDDEN);
    let wrong_token = send(
        &app,
        post_form(&form_uri, &[], &format!("token=nope&csrf_token={csrf}")),
    )
    .await;
    assert_eq!(wrong_token.status, StatusCode::UNAUTHORIZED);
    let paused = send(
        &app,
        post_form(&form_uri, &[], &format!("token={TOKEN}&csrf_token={csrf}")),
    )
    .await;
    assert_eq!(paused.status, StatusCode::SEE_OTHER, "{}", paused.body);
    assert_eq!(
        status_of(&fixture, fixture.failed).await,
        TaskStatus::Paused
    );

    let confirm = send(&app, get(&form_uri)).await;
    assert!(
        confirm.body.contains(r#"name="token""#),
        "the form asks for the token"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_hides_and_refuses_every_action() {
    let fixture = fixture().await;
    let app = router(
        fixture.manager.clone(),
        WebOptions {
            read_only: true,
            ..WebOptions::default()
        },
    );
    let csrf = csrf_token(&app).await;
    let api = send(
        &app,
        post_json(
            &format!("/api/v1/tasks/{}/retry", fixture.failed),
            &[("x-csrf-token", &csrf)],
            None,
        ),
    )
    .await;
    assert_eq!(api.status, StatusCode::FORBIDDEN);
    assert!(
        api.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("read-only"))
    );
    let form = send(
        &app,
        post_form(
            &format!("/tasks/{}/retry", fixture.failed),
            &[],
            &format!("csrf_token={csrf}"),
        ),
    )
    .await;
    assert_eq!(form.status, StatusCode::FORBIDDEN);
    let confirm = send(&app, get(&format!("/tasks/{}/retry", fixture.failed))).await;
    assert_eq!(confirm.status, StatusCode::FORBIDDEN);
    let page = send(&app, get(&format!("/tasks/{}", fixture.failed))).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("action-retry"), "no action buttons");
    assert!(page.body.contains("read-only"));
    assert_eq!(
        status_of(&fixture, fixture.failed).await,
        TaskStatus::PermanentlyFailed
    );
}

// --- host and bind rules ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_only_loopback_host_names_are_answered() {
    let fixture = fixture().await;
    let app = app(&fixture);
    for host in ["evil.example", "evil.example:8080", "10.0.0.5:8080"] {
        let request = Request::get("/api/v1/overview")
            .header(header::HOST, host)
            .body(Body::empty())
            .expect("request");
        assert_eq!(
            send(&app, request).await.status,
            StatusCode::FORBIDDEN,
            "{host}"
        );
    }
    let no_host = Request::get("/").body(Body::empty()).expect("request");
    assert_eq!(send(&app, no_host).await.status, StatusCode::FORBIDDEN);
    for host in ["localhost:8080", "127.0.0.1", "[::1]:8080"] {
        let request = Request::get("/api/v1/overview")
            .header(header::HOST, host)
            .body(Body::empty())
            .expect("request");
        assert_eq!(send(&app, request).await.status, StatusCode::OK, "{host}");
    }
    let with_token = router(
        fixture.manager.clone(),
        WebOptions {
            token: Some(TOKEN.into()),
            ..WebOptions::default()
        },
    );
    let request = Request::get("/api/v1/overview")
        .header(header::HOST, "dashboard.example.com")
        .body(Body::empty())
        .expect("request");
    assert_eq!(send(&with_token, request).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn binding_beyond_loopback_needs_a_non_empty_token() {
    let fixture = fixture().await;
    let options = |listen: &str, token: Option<&str>| ServeOptions {
        listen: listen.parse().expect("address"),
        token: token.map(str::to_owned),
        ..ServeOptions::new(ManagerSource::Manager(fixture.manager.clone()))
    };
    let refused = fib_flow_web::Dashboard::bind(options("0.0.0.0:0", None)).await;
    assert!(
        matches!(refused, Err(WebError::TokenRequired { .. })),
        "{refused:?}"
    );
    let empty = fib_flow_web::Dashboard::bind(options("0.0.0.0:0", Some("  "))).await;
    assert!(matches!(empty, Err(WebError::EmptyToken)), "{empty:?}");
    let loopback = fib_flow_web::Dashboard::bind(options("127.0.0.1:0", None))
        .await
        .expect("loopback needs no token");
    assert!(loopback.local_addr().ip().is_loopback());
    assert_ne!(loopback.local_addr().port(), 0);
    let anywhere = fib_flow_web::Dashboard::bind(options("0.0.0.0:0", Some(TOKEN)))
        .await
        .expect("a token allows any address");
    assert!(anywhere.local_addr().ip().is_unspecified());
}

#[test]
fn serve_args_default_to_loopback_and_read_the_token_from_the_environment() {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: fib_flow_web::ServeArgs,
    }
    let defaults = Cli::try_parse_from(["serve"]).expect("no argument is required");
    assert_eq!(defaults.serve.listen.to_string(), "127.0.0.1:8080");
    assert!(!defaults.serve.read_only);
    let given = Cli::try_parse_from([
        "serve",
        "--listen",
        "0.0.0.0:9000",
        "--token",
        "abc",
        "--read-only",
    ])
    .expect("all arguments");
    assert_eq!(given.serve.token.as_deref(), Some("abc"));
    assert!(given.serve.read_only);
    let options = given
        .serve
        .into_options(ManagerSource::Url("sqlite::memory:".into()));
    assert_eq!(options.listen.port(), 9000);
    let token_env = <Cli as clap::CommandFactory>::command()
        .get_arguments()
        .find(|arg| arg.get_id() == "token")
        .and_then(|arg| arg.get_env().map(std::ffi::OsStr::to_os_string));
    assert_eq!(
        token_env.as_deref(),
        Some(std::ffi::OsStr::new(fib_flow_web::TOKEN_ENV))
    );
}

// --- pages --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn pages_render_with_security_headers() {
    let fixture = fixture().await;
    let app = app(&fixture);
    for uri in [
        "/".to_owned(),
        "/tasks".to_owned(),
        "/tasks?status=permanently_failed&name=".to_owned(),
        format!("/tasks/{}", fixture.failed),
        format!("/workflows/{}", fixture.workflow),
        format!("/tasks/{}/retry", fixture.failed),
    ] {
        let page = send(&app, get(&uri)).await;
        assert_eq!(page.status, StatusCode::OK, "{uri}: {}", page.body);
        assert!(page.body.starts_with("<!DOCTYPE html>"), "{uri}");
        let csp = page.headers.get(header::CONTENT_SECURITY_POLICY);
        assert!(
            csp.and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("frame-ancestors 'none'")),
            "{uri}"
        );
        assert_eq!(
            page.headers
                .get(header::X_FRAME_OPTIONS)
                .map(|v| v.as_bytes()),
            Some(&b"DENY"[..])
        );
    }
    for asset in ["/assets/style.css", "/assets/app.js"] {
        let response = send(&app, get(asset)).await;
        assert_eq!(response.status, StatusCode::OK, "{asset}");
        assert!(!response.body.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_show_the_figures_of_the_api() {
    let fixture = fixture().await;
    let app = app(&fixture);
    let overview = send(&app, get("/")).await.body;
    assert!(overview.contains("id=\"status-counts\""));
    assert!(overview.contains("href=\"/tasks?status=permanently_failed\""));
    assert!(overview.contains("5 completed, 1 failed attempts in the last hour"));
    assert!(overview.contains("charge_card"));

    let list = send(&app, get("/tasks?status=permanently_failed"))
        .await
        .body;
    assert!(list.contains(&format!("data-task-id=\"{}\"", fixture.failed)));
    assert!(!list.contains(&format!("data-task-id=\"{}\"", fixture.completed)));
    assert!(list.contains("<option value=\"permanently_failed\" selected>"));
    let paged = send(&app, get("/tasks?limit=2")).await.body;
    assert!(paged.contains("Tasks 1–2 of 7."));
    assert!(
        paged.contains("href=\"/tasks?limit=2&amp;offset=2\""),
        "{paged}"
    );

    let detail = send(&app, get(&format!("/tasks/{}", fixture.failed)))
        .await
        .body;
    assert!(detail.contains("card declined: insufficient funds"));
    assert!(detail.contains("&quot;amount_cents&quot;: 4200"));
    assert!(detail.contains("task_permanently_failed"));
    assert!(detail.contains(&format!("href=\"/tasks/{}/retry\"", fixture.failed)));
    assert!(
        !detail.contains("action-pause"),
        "pause does not apply to a dead task"
    );

    let workflow = send(&app, get(&format!("/workflows/{}", fixture.workflow)))
        .await
        .body;
    assert!(workflow.contains("id=\"workflow-tree\""));
    assert!(workflow.matches("render_page").count() >= 2);
    assert!(workflow.contains("id=\"critical-path\""));
    assert!(workflow.contains("stage 1 subtotal"), "{workflow}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_escape_names_tags_payloads_and_results() {
    let fixture = fixture().await;
    let app = app(&fixture);
    let list = send(&app, get("/tasks")).await.body;
    let detail = send(&app, get(&format!("/tasks/{}", fixture.hostile)))
        .await
        .body;
    let overview = send(&app, get("/")).await.body;
    for (page, body) in [
        ("list", &list),
        ("detail", &detail),
        ("overview", &overview),
    ] {
        assert!(!body.contains(HOSTILE_NAME), "{page} has the raw name");
        assert!(!body.contains("<script>alert"), "{page} has a raw script");
        assert!(!body.contains("<img src=x"), "{page} has a raw img");
        assert!(
            body.contains("&lt;script&gt;alert(&quot;name&quot;)&lt;/script&gt;"),
            "{page} shows the escaped name"
        );
    }
    assert!(!list.contains(HOSTILE_TAG));
    assert!(list.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"));
    assert!(detail.contains("&lt;/pre&gt;&lt;script&gt;alert('payload')&lt;/script&gt;"));
    assert!(detail.contains("&lt;/pre&gt;&lt;script&gt;alert('result')&lt;/script&gt;"));
    // A filter value comes back inside an attribute, escaped.
    let reflected = send(&app, get("/tasks?name=%22%3E%3Cb%3Ex")).await.body;
    assert!(!reflected.contains("\"><b>x"));
    assert!(reflected.contains("value=\"&quot;&gt;&lt;b&gt;x\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn form_actions_confirm_then_redirect_back_with_a_notice() {
    let fixture = fixture().await;
    let app = app(&fixture);
    let confirm = send(&app, get(&format!("/tasks/{}/retry", fixture.failed)))
        .await
        .body;
    let csrf = csrf_token(&app).await;
    assert!(confirm.contains(&format!("name=\"csrf_token\" value=\"{csrf}\"")));
    assert!(confirm.contains("Yes, retry task"));
    assert!(
        !confirm.contains("name=\"token\""),
        "no token configured, none asked"
    );

    let uri = format!("/tasks/{}/retry", fixture.failed);
    let forged = send(&app, post_form(&uri, &[], "csrf_token=guess")).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(forged.body.contains("CSRF"));
    assert_eq!(
        status_of(&fixture, fixture.failed).await,
        TaskStatus::PermanentlyFailed
    );

    let done = send(
        &app,
        post_form(
            &uri,
            &[("origin", "http://127.0.0.1:8080")],
            &format!("csrf_token={csrf}&reason=operator+retry"),
        ),
    )
    .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    let location = done
        .headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .expect("a redirect")
        .to_owned();
    assert_eq!(location, format!("/tasks/{}?done=retry", fixture.failed));
    assert_eq!(
        status_of(&fixture, fixture.failed).await,
        TaskStatus::Pending
    );
    let after = send(&app, get(&location)).await.body;
    assert!(after.contains("Retry done: the task is now <strong>pending</strong>."));

    let illegal = send(&app, post_form(&uri, &[], &format!("csrf_token={csrf}"))).await;
    assert_eq!(
        illegal.status,
        StatusCode::CONFLICT,
        "a pending task cannot be retried"
    );
    assert!(illegal.body.contains("not allowed from status pending"));
}

// --- /metrics -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn metrics_serve_database_figures_and_the_engine_recorder_once_each() {
    let handle = fib_flow_web::install_prometheus_recorder().expect("recorder");
    assert!(
        fib_flow_web::install_prometheus_recorder().is_ok(),
        "installing again returns the same handle"
    );
    let fixture = fixture().await;
    let app = router(
        fixture.manager.clone(),
        WebOptions {
            prometheus: Some(handle),
            ..WebOptions::default()
        },
    );
    let response = send(&app, get("/metrics")).await;
    assert_eq!(response.status, StatusCode::OK);
    assert!(
        response
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/plain; version=0.0.4"))
    );
    let text = response.body;
    for line in [
        "fib_flow_tasks{name=\"charge_card\",status=\"permanently_failed\"} 1",
        "fib_flow_tasks{name=\"send_email\",status=\"pending\"} 1",
        "fib_flow_queue_depth{name=\"send_email\"} 1",
        "fib_flow_queue_depth{name=\"charge_card\"} 0",
        "fib_flow_workers{status=\"stopped\"} 1",
        "fib_flow_events_last_hour{event_type=\"task_completed\"} 5",
        "fib_flow_events_last_hour{event_type=\"task_permanently_failed\"} 1",
        "fib_flow_attempts_ended_last_hour 7",
        "fib_flow_attempt_duration_last_hour_seconds{quantile=\"1\"} ",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    assert!(
        text.contains(r#"fib_flow_queue_depth{name="<script>alert(\"name\")</script>"} 0"#),
        "label values are escaped for the exposition format:\n{text}"
    );
    // The worker of the fixture ran in this process: its counters come from the recorder.
    assert!(
        text.contains("fib_flow_tasks_completed_total{name=\"send_email\"}"),
        "{text}"
    );
    assert_eq!(
        text.matches("# TYPE fib_flow_queue_depth ").count(),
        1,
        "{text}"
    );

    let without_recorder = send(&app_without_recorder(&fixture), get("/metrics"))
        .await
        .body;
    assert!(without_recorder.contains("fib_flow_tasks{"));
    assert!(!without_recorder.contains("fib_flow_tasks_completed_total"));
}

fn app_without_recorder(fixture: &Fixture) -> Router {
    router(fixture.manager.clone(), WebOptions::default())
}

// --- serving a database URL ---------------------------------------------------------------

/// One HTTP/1.1 GET over a fresh connection; the raw response.
async fn http_get(address: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to the dashboard");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the response");
    response
}

#[tokio::test(flavor = "multi_thread")]
async fn serving_a_database_url_starts_no_worker_and_answers_over_http() {
    let path =
        std::env::temp_dir().join(format!("fib-flow-web-{}.db", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite:{}", path.display());
    let writer = fib_flow::TaskManager::new(fib_flow::ManagerOptions::new(url.clone()))
        .await
        .expect("manager on the file");
    writer.setup().await.expect("migrate");
    writer
        .register("send_email", |_task: fib_flow::TaskHandle| async move {
            Ok::<fib_flow::Outcome, fib_flow::HandlerError>(().into())
        })
        .expect("register");
    let id = writer
        .enqueue(
            "send_email",
            serde_json::json!({}),
            fib_flow::TaskOptions::default(),
        )
        .await
        .expect("enqueue");

    let dashboard = fib_flow_web::Dashboard::bind(ServeOptions {
        listen: "127.0.0.1:0".parse().expect("address"),
        ..ServeOptions::new(ManagerSource::Url(url))
    })
    .await
    .expect("the dashboard opens the URL");
    let address = dashboard.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(dashboard.run_until(async {
        let _ = stopped.await;
    }));

    let workers = http_get(address, "/api/v1/workers").await;
    assert!(workers.starts_with("HTTP/1.1 200"), "{workers}");
    assert!(workers.ends_with("[]"), "no worker row: {workers}");
    let task = http_get(address, &format!("/api/v1/tasks/{id}")).await;
    assert!(task.contains("\"status\":\"pending\""), "{task}");
    let metrics = http_get(address, "/metrics").await;
    assert!(
        metrics.contains("fib_flow_queue_depth{name=\"send_email\"} 1"),
        "{metrics}"
    );

    let _ = stop.send(());
    server
        .await
        .expect("server task")
        .expect("the server stops cleanly");
    assert_eq!(
        writer
            .workers(fib_flow::WorkerQuery::default())
            .await
            .expect("workers")
            .len(),
        0,
        "the dashboard registered no worker"
    );
    writer.close().await.expect("close");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
