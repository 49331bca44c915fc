//! Fault test: a throwaway PostgreSQL server of its own (initdb and pg_ctl from the machine's
//! PostgreSQL binaries, a free port, a temp directory) is restarted in the middle of a drain.
//!
//! It asserts that nothing is lost and nothing runs twice per attempt, that the engine resumes
//! by itself, and that its LISTEN connection comes back: after the restart, a task enqueued by
//! another manager reaches a worker whose poll interval is far longer than the wait, which only
//! a NOTIFY can do.
//!
//! Where the binaries are missing the test says so and passes; under `CI=true` it fails. The
//! machine's own servers are never touched.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fib_flow::{
    HandlerError, ManagerOptions, PageRequest, TaskHandle, TaskManager, TaskOptions, TaskQuery,
    TaskStatus, json,
};

/// Where the PostgreSQL server binaries are: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin` holding `initdb` and `pg_ctl`.
fn server_binaries() -> Option<PathBuf> {
    let usable = |dir: &Path| dir.join("initdb").exists() && dir.join("pg_ctl").exists();
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if usable(&dir) {
            return Some(dir);
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|dir| usable(dir))
        .collect();
    candidates.sort();
    candidates.pop()
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// A PostgreSQL server in a temp directory, stopped and removed on drop.
struct Server {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Server {
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            // initdb refuses to run as root.
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn pg_ctl(&self, action: &[&str]) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let status = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-l"])
            .arg(self.dir.join("server.log"))
            .args(["-o", &options])
            .args(action)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run pg_ctl");
        assert!(status.success(), "pg_ctl {action:?} failed");
    }

    fn start(bin: PathBuf) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("ff_pg_restart_{}_{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let as_postgres = running_as_root();
        if as_postgres {
            let status = Command::new("chown")
                .arg("postgres")
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(status.success(), "chown the temp dir to postgres");
        }
        let server = Server {
            bin,
            dir,
            port,
            as_postgres,
        };
        let status = server
            .command("initdb")
            .arg("-D")
            .arg(server.dir.join("data"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed");
        server.pg_ctl(&["start"]);
        server
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Ledger = Arc<Mutex<HashMap<(i64, i32), u32>>>;

async fn worker(url: &str, ledger: &Ledger) -> TaskManager {
    let manager = TaskManager::new(ManagerOptions {
        // Far longer than any wait below: after the restart only a NOTIFY (or the engine's own
        // wake-ups) can start a claim round.
        poll_interval: Duration::from_secs(120),
        task_heartbeat_interval: Duration::from_millis(500),
        task_heartbeat_timeout: Duration::from_secs(3),
        max_concurrent_tasks: 10,
        claim_batch_size: 10,
        max_retries: 10,
        ..ManagerOptions::new(url)
    })
    .await
    .expect("worker");
    manager.setup().await.expect("setup");
    let ledger = ledger.clone();
    manager
        .register("work", move |task: TaskHandle| {
            let ledger = ledger.clone();
            async move {
                *ledger
                    .lock()
                    .unwrap()
                    .entry((task.id().0, task.attempt()))
                    .or_default() += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok::<fib_flow::Outcome, HandlerError>(json!(null).into())
            }
        })
        .expect("register");
    manager
}

/// Counts tasks in a status, retrying while the server comes back.
async fn count(manager: &TaskManager, status: TaskStatus) -> u64 {
    let filter = TaskQuery {
        status: Some(status),
        ..TaskQuery::default()
    };
    let started = Instant::now();
    loop {
        match manager
            .query_tasks(filter.clone(), PageRequest::limit(1))
            .await
        {
            Ok(page) => return page.total,
            Err(error) => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "the store did not come back: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn wait_until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_during_a_drain_loses_nothing_and_runs_nothing_twice() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    let Some(bin) = server_binaries() else {
        assert!(
            !fib_flow_test_support::in_ci(),
            "CI=true: the PostgreSQL server binaries (initdb, pg_ctl) are required for the restart test"
        );
        eprintln!(
            "SKIPPED a_server_restart_during_a_drain: no PostgreSQL server binaries (initdb, pg_ctl) on this machine"
        );
        return;
    };
    let server = Server::start(bin);
    let ledger: Ledger = Arc::default();
    let manager = worker(&server.url(), &ledger).await;
    let total = 3_000;
    for chunk in (0..total).collect::<Vec<usize>>().chunks(500) {
        let batch = chunk
            .iter()
            .map(|index| {
                (
                    "work".to_owned(),
                    json!({ "index": index }),
                    TaskOptions::default(),
                )
            })
            .collect();
        manager.enqueue_many(batch).await.expect("enqueue");
    }
    manager.start().await.expect("start");
    wait_until(
        "a third of the drain",
        Duration::from_secs(60),
        async || ledger.lock().unwrap().len() >= total / 3,
    )
    .await;
    let before_restart = ledger.lock().unwrap().len();
    server.pg_ctl(&["-m", "fast", "restart"]);
    assert!(
        before_restart < total,
        "the restart must land during the drain"
    );

    wait_until(
        "every task completed after the restart",
        Duration::from_secs(90),
        async || {
            let completed = count(&manager, TaskStatus::Completed).await;
            if completed != total as u64 {
                eprintln!(
                    "completed {completed}, running {}, pending {}, executed {}",
                    count(&manager, TaskStatus::Running).await,
                    count(&manager, TaskStatus::Pending).await,
                    ledger.lock().unwrap().len()
                );
            }
            completed == total as u64
        },
    )
    .await;
    assert_eq!(count(&manager, TaskStatus::Running).await, 0);
    assert_eq!(count(&manager, TaskStatus::Pending).await, 0);
    {
        let ledger = ledger.lock().unwrap();
        let twice: Vec<_> = ledger.iter().filter(|(_, runs)| **runs > 1).collect();
        assert!(twice.is_empty(), "ran twice for one attempt: {twice:?}");
        let tasks: std::collections::HashSet<i64> = ledger.keys().map(|(id, _)| *id).collect();
        assert_eq!(tasks.len(), total, "every task ran");
    }

    // The LISTEN connection is back: a task enqueued by another process-like manager (its
    // in-process wake-up does not reach the worker) starts well within the poll interval.
    let producer = TaskManager::new(ManagerOptions::new(server.url()))
        .await
        .expect("producer");
    producer
        .register("work", |_task: TaskHandle| async move {
            Ok::<fib_flow::Outcome, HandlerError>(json!(null).into())
        })
        .expect("register on the producer (never started)");
    let woken = Instant::now();
    let late = producer
        .enqueue("work", json!({ "late": true }), TaskOptions::default())
        .await
        .expect("enqueue after restart");
    wait_until(
        "the late task, woken by NOTIFY",
        Duration::from_secs(20),
        async || {
            matches!(
                manager.get_task(late).await,
                Ok(Some(task)) if task.status == TaskStatus::Completed
            )
        },
    )
    .await;
    assert!(woken.elapsed() < Duration::from_secs(20));
    producer.stop().await.expect("stop producer");
    manager.stop().await.expect("stop worker");
    drop(server);
}
