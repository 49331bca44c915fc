//! The dashboard in headless Chromium (through chromedriver and fantoccini): open the overview,
//! filter the task list, open a failed task, retry it through the confirmation page, and see
//! its status change. Screenshots of every step go to `target/dashboard-screenshots/`.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`cargo xtask test` installs
//! them when it may). Without chromedriver the test says it skipped; with `CI=true` it fails.

mod common;

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use fib_flow::TaskStatus;
use fib_flow_web::{Dashboard, ManagerSource, ServeOptions};

/// Generous: a loaded 2-core machine starts Chromium slowly.
const WAIT: Duration = Duration::from_secs(60);

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// Says so on the terminal even though the test harness captures `eprintln!` of passing tests.
fn announce(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Kills chromedriver (our own child, by handle) when the test ends, passing or not.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

async fn start_driver(chromedriver: &Path) -> (Driver, u16) {
    let port = free_port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver(child);
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < WAIT,
            "chromedriver did not listen on {port} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (driver, port)
}

async fn connect(port: u16) -> Client {
    let mut chrome_options = serde_json::json!({
        "args": [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
        ]
    });
    let binary = std::env::var("CHROME_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if Path::new(&binary).exists() {
        chrome_options["binary"] = serde_json::Value::String(binary);
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), chrome_options);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a chromedriver session")
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

async fn screenshot(client: &Client, dir: &Path, name: &str) {
    let png = client.screenshot().await.expect("a screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("screenshot written");
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_filters_opens_and_retries_a_failed_task() {
    let chromedriver = std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .or_else(|| find_on_path("chromedriver"));
    let Some(chromedriver) = chromedriver else {
        assert!(
            !in_ci(),
            "CI=true and chromedriver is missing: install the Debian packages chromium and chromium-driver (cargo xtask test does when it runs as root)"
        );
        announce(
            "SKIPPED browser test: chromedriver not found (apt-get install chromium chromium-driver, or set CHROMEDRIVER)",
        );
        return;
    };

    let fixture = common::fixture().await;
    let dashboard = Dashboard::bind(ServeOptions {
        listen: "127.0.0.1:0".parse().expect("address"),
        ..ServeOptions::new(ManagerSource::Manager(fixture.manager.clone()))
    })
    .await
    .expect("dashboard binds");
    let base = format!("http://{}", dashboard.local_addr());
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(dashboard.run_until(async {
        let _ = server_stopped.await;
    }));

    let (_driver, driver_port) = start_driver(&chromedriver).await;
    let client = connect(driver_port).await;
    let dir = screenshot_dir();

    client.goto(&format!("{base}/")).await.expect("overview");
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Id("status-counts"))
        .await
        .expect("status counts");
    screenshot(&client, &dir, "1-overview").await;

    // Filter: choosing a status submits the form (the page's script).
    client.goto(&format!("{base}/tasks")).await.expect("tasks");
    client
        .find(Locator::Css("select[name=status]"))
        .await
        .expect("status filter")
        .select_by_value("permanently_failed")
        .await
        .expect("select a status");
    let failed_row = format!("tr[data-task-id=\"{}\"]", fixture.failed);
    wait_for_url_containing(&client, "status=permanently_failed").await;
    client
        .find(Locator::Css(&failed_row))
        .await
        .expect("the failed task is listed");
    let rows = client
        .find_all(Locator::Css("#task-list tbody tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 1, "only the failed task matches");
    screenshot(&client, &dir, "2-tasks-filtered").await;

    // Open it.
    client
        .find(Locator::Css(&format!("{failed_row} a")))
        .await
        .expect("the task link")
        .click()
        .await
        .expect("open the task");
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Id("action-retry"))
        .await
        .expect("the retry button");
    let error = client
        .find(Locator::Id("task-error"))
        .await
        .expect("the error")
        .text()
        .await
        .expect("error text");
    assert!(error.contains("card declined"), "{error}");
    screenshot(&client, &dir, "3-task-failed").await;

    // Retry, confirming.
    client
        .find(Locator::Id("action-retry"))
        .await
        .expect("retry")
        .click()
        .await
        .expect("click retry");
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Id("confirm"))
        .await
        .expect("the confirmation page");
    assert_eq!(
        fixture
            .manager
            .get_task(fixture.failed)
            .await
            .expect("task")
            .expect("exists")
            .status,
        TaskStatus::PermanentlyFailed,
        "nothing happens before the confirmation"
    );
    client
        .find(Locator::Css("input[name=reason]"))
        .await
        .expect("reason field")
        .send_keys("card topped up")
        .await
        .expect("type a reason");
    screenshot(&client, &dir, "4-confirm-retry").await;
    client
        .find(Locator::Id("confirm"))
        .await
        .expect("confirm")
        .click()
        .await
        .expect("click confirm");
    let notice = client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Id("action-done"))
        .await
        .expect("the result notice")
        .text()
        .await
        .expect("notice text");
    assert!(notice.contains("now pending"), "{notice}");
    let badge = client
        .find(Locator::Css("h1 .badge"))
        .await
        .expect("status badge")
        .text()
        .await
        .expect("badge text");
    assert_eq!(badge, "pending");
    screenshot(&client, &dir, "5-task-retried").await;
    assert_eq!(
        fixture
            .manager
            .get_task(fixture.failed)
            .await
            .expect("task")
            .expect("exists")
            .status,
        TaskStatus::Pending
    );

    client
        .goto(&format!("{base}/workflows/{}", fixture.workflow))
        .await
        .expect("workflow");
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Id("critical-path"))
        .await
        .expect("the critical path");
    screenshot(&client, &dir, "6-workflow").await;

    client.close().await.expect("close the browser");
    let _ = stop_server.send(());
    server
        .await
        .expect("server task")
        .expect("server stops cleanly");
    announce(&format!("browser test screenshots: {}", dir.display()));
}

async fn wait_for_url_containing(client: &Client, fragment: &str) {
    let started = Instant::now();
    loop {
        let url = client.current_url().await.expect("current URL");
        if url.as_str().contains(fragment) {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "the URL {url} did not come to contain {fragment} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
