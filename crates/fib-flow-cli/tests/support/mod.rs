//! Test databases, a seeded data set and a runner for the real `fib-flow` binary.
//!
//! Every test gets its own database: a SQLite file in a temp directory, or a fresh PostgreSQL
//! database (dropped afterwards) on the server of `FIB_FLOW_POSTGRES_URL`. An unreachable
//! server skips the PostgreSQL variant with a message, unless `CI=true`, where it fails.

use std::process::{Command, Stdio};
use std::time::Duration;

use fib_flow_test_support::{FacadeAdmin, TestDatabase};

use fib_flow::{
    ChildSpec, HandlerError, ManagerOptions, ManualClock, Outcome, TaskHandle, TaskManager,
    TaskOptions, Value, json, permanent,
};

/// Where a test's database lives: a SQLite file, or a fresh database on the PostgreSQL server.
pub use fib_flow_test_support::Backend;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// One isolated database for one test (fib-flow-test-support's, dropped on drop).
pub struct TestDb {
    /// The URL the binary gets in `FIB_FLOW_DATABASE_URL`.
    pub url: String,
    database: Option<TestDatabase<FacadeAdmin>>,
}

impl TestDb {
    /// An empty database (no schema), or `None` when the backend is skipped (a local run
    /// without the server; under `CI=true` that fails instead).
    pub fn create(backend: Backend, test_name: &str) -> Option<TestDb> {
        match runtime().block_on(TestDatabase::create(FacadeAdmin, backend, test_name)) {
            Ok(database) => Some(TestDb {
                url: database.url().to_owned(),
                database: Some(database),
            }),
            Err(skip) if skip.is_skip() => {
                eprintln!("skipped {test_name}: {skip}");
                None
            }
            Err(error) => panic!("{test_name}: {error}"),
        }
    }

    /// A database with the schema and the data set of [`Seeded`].
    pub fn seeded(backend: Backend, test_name: &str) -> Option<(TestDb, Seeded)> {
        let db = TestDb::create(backend, test_name)?;
        let seeded = runtime().block_on(seed(&db.url));
        Some((db, seeded))
    }

    /// Runs the binary with this database in `FIB_FLOW_DATABASE_URL`.
    pub fn run(&self, args: &[&str]) -> Run {
        run_with_url(Some(&self.url), args)
    }

    /// Runs the binary with `--json`, expects exit code 0 and parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut with_json = args.to_vec();
        with_json.push("--json");
        let run = self.run(&with_json);
        assert_eq!(run.code, Some(0), "{args:?} failed: {run:?}");
        serde_json::from_str(&run.stdout)
            .unwrap_or_else(|error| panic!("{args:?}: stdout is not JSON ({error}): {run:?}"))
    }

    /// Runs the binary and expects exit code 0.
    pub fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(run.code, Some(0), "{args:?} failed: {run:?}");
        run
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(database) = self.database.take()
            && let Err(error) = runtime().block_on(database.destroy())
        {
            eprintln!("{error}");
        }
    }
}

/// What one run of the binary printed and returned.
#[derive(Debug)]
pub struct Run {
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs the binary with `url` (or no URL at all) in the environment and stdin closed.
pub fn run_with_url(url: Option<&str>, args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fib-flow"));
    command
        .args(args)
        .env_remove("FIB_FLOW_DATABASE_URL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    if let Some(url) = url {
        command.env("FIB_FLOW_DATABASE_URL", url);
    }
    let output = command.output().expect("run the fib-flow binary");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The seeded data set, ten days in the past (a manual clock), by one worker that stopped:
///
/// | task | name | tag | status |
/// |---|---|---|---|
/// | `billed[0..2]` | ok | billing | completed |
/// | `plain` | ok | – | completed |
/// | `declined` | boom | billing | permanently_failed (one attempt, permanent error) |
/// | `root` | fanout | – | completed after a round of two children |
/// | `children[0..2]` | leaf | – | completed, children of `root` |
/// | `later` | ok | later | pending (due in an hour) |
/// | `held` | ok | – | paused |
#[derive(Debug, Clone)]
pub struct Seeded {
    pub billed: Vec<i64>,
    pub plain: i64,
    pub declined: i64,
    pub root: i64,
    pub children: Vec<i64>,
    pub later: i64,
    pub held: i64,
}

/// The worker id of the seeding manager.
pub const SEED_WORKER: &str = "seed-worker";
/// How far in the past the seeded data lives.
pub const SEED_AGE: Duration = Duration::from_secs(10 * 86_400);

async fn seed(url: &str) -> Seeded {
    let start = chrono::Utc::now() - SEED_AGE;
    let clock = std::sync::Arc::new(ManualClock::new(start));
    let options = ManagerOptions {
        worker_id: Some(SEED_WORKER.to_owned()),
        pod_id: Some("seed-pod".to_owned()),
        poll_interval: Duration::from_millis(25),
        ..ManagerOptions::new(url)
    };
    let manager = TaskManager::with_clock(options, clock)
        .await
        .expect("seed manager");
    manager.setup().await.expect("migrations");
    register_handlers(&manager);

    let billing = || TaskOptions::default().tag("billing");
    let billed = vec![
        enqueue(&manager, "ok", json!({ "invoice": 1 }), billing()).await,
        enqueue(&manager, "ok", json!({ "invoice": 2 }), billing()).await,
    ];
    let plain = enqueue(&manager, "ok", json!({}), TaskOptions::default()).await;
    let declined = enqueue(
        &manager,
        "boom",
        json!({ "card": "4000 0000 0000 0002" }),
        billing().max_retries(1),
    )
    .await;
    let root = enqueue(
        &manager,
        "fanout",
        json!({ "album": 7 }),
        TaskOptions::default(),
    )
    .await;
    let hour_later = || TaskOptions::default().delay(Duration::from_secs(3600));
    let later = enqueue(&manager, "ok", json!({}), hour_later().tag("later")).await;
    let held = enqueue(&manager, "ok", json!({}), hour_later()).await;
    manager
        .pause_task(fib_flow::TaskId(held))
        .await
        .expect("pause");

    manager.start().await.expect("start");
    fib_flow::testing::run_until_idle(&manager)
        .await
        .expect("seeded tasks run");
    manager.stop().await.expect("stop");
    let children = manager
        .child_tasks(fib_flow::TaskId(root))
        .await
        .expect("children")
        .into_iter()
        .map(|child| child.id.0)
        .collect();
    manager.close().await.expect("close");
    Seeded {
        billed,
        plain,
        declined,
        root,
        children,
        later,
        held,
    }
}

fn register_handlers(manager: &TaskManager) {
    manager
        .register("ok", |_task: TaskHandle| async move {
            Ok::<Outcome, HandlerError>(json!({ "ok": true }).into())
        })
        .expect("register ok");
    manager
        .register("leaf", |task: TaskHandle| async move {
            Ok::<Outcome, HandlerError>(json!({ "leaf": task.payload()["n"] }).into())
        })
        .expect("register leaf");
    manager
        .register("boom", |_task: TaskHandle| async move {
            Err::<Outcome, HandlerError>(permanent("card declined"))
        })
        .expect("register boom");
    manager
        .register("fanout", |task: TaskHandle| async move {
            if task.stage() == 0 {
                let children = (1..=2)
                    .map(|n| ChildSpec::new("leaf", json!({ "n": n })))
                    .collect();
                Ok::<Outcome, HandlerError>(task.next(children).into())
            } else {
                Ok(json!({ "children": task.child_results().len() }).into())
            }
        })
        .expect("register fanout");
}

async fn enqueue(manager: &TaskManager, name: &str, payload: Value, options: TaskOptions) -> i64 {
    manager
        .enqueue(name, payload, options)
        .await
        .expect("enqueue")
        .0
}
