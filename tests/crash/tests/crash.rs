//! Multi-process crash test of the worker registry, on every backend: a SQLite file shared by
//! the processes, PostgreSQL and MySQL/MariaDB.
//!
//! Four `crash-worker` processes (pods `pod-0`..`pod-3`) run short tasks (3000 to begin with,
//! topped up so that the workers are busy for the whole 40 s), each allowed one attempt only,
//! while the test SIGKILLs a random worker every 2-4 s and kills the database connections
//! every few seconds. A killed pod mostly comes back at once
//! under the same `pod_id`, so its replacement must recover the dead worker's tasks when it
//! starts (it supersedes the dead worker); every third kill it comes back only after the lease
//! has run out, so that another live worker's reaper must recover them.
//!
//! Afterwards every task must be completed with no attempt charged, no attempt may have run
//! twice (per the handler's own ledger table, written outside fib-flow), and every recovery
//! must have come in time: at the restart (same pod) or within the lease (reaper).
//!
//! The backends run one after the other (each spawns four processes; the machine may have two
//! cores). Each run gets a fresh database from `fib-flow-test-support`, which also decides
//! the skip policy: a server that is unusable, or whose skip variable (`FIB_FLOW_SKIP_POSTGRES`,
//! `FIB_FLOW_SKIP_MYSQL`, set by `cargo xtask test`) is set, is skipped with the reason printed;
//! under `CI=true` that is a failure. Worker logs (stderr, `RUST_LOG`) are kept in a temp
//! directory when the test fails.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text};
use fib_flow::{HandlerError, ManagerOptions, Outcome, TaskHandle, TaskManager, TaskOptions, json};
use fib_flow_crash_test::{
    Backend, CREATE_LEDGER, Db, LedgerEntry, TASK_NAME, WORKER_HEARTBEAT_INTERVAL,
    WORKER_HEARTBEAT_TIMEOUT, now_ms,
};
use fib_flow_test_support::{FacadeAdmin, TestDatabase};

/// The worker binary of this package.
const WORKER_BIN: &str = env!("CARGO_BIN_EXE_crash-worker");

/// Worker processes, one per pod.
const PODS: usize = 4;
/// Tasks enqueued before the workers start.
const INITIAL_TASKS: usize = 3_000;
/// Tasks per enqueue call (one transaction, one tag).
const BATCH: usize = 500;
/// While the chaos lasts, a batch is added whenever fewer tasks than this are pending, so that
/// the workers are busy whenever they are killed, whatever the backend's pace.
const BACKLOG: i64 = 1_000;
/// No more tasks than this in all.
const MAX_TASKS: usize = 40_000;
/// How long workers are killed (less when every task is done before).
const CHAOS: Duration = Duration::from_secs(40);
/// A worker is killed every this many milliseconds, drawn at random.
const KILL_EVERY_MS: (u64, u64) = (2_000, 4_000);
/// The database connections are killed every this many milliseconds, drawn at random.
const CONNECTION_KILL_EVERY_MS: (u64, u64) = (2_500, 5_000);
/// Every this many kills the pod comes back late, so that a reaper must recover its tasks.
const DELAYED_RESTART_EVERY: usize = 3;
/// How late a delayed restart comes: after the reaper's bound below, so that a recovery by
/// the restarted process instead of a reaper shows up as a late recovery.
const DELAYED_RESTART_AFTER: Duration = Duration::from_secs(5);
/// A restart under the same pod must have recovered the dead worker's tasks this soon after
/// it was spawned (process start and connect on a loaded machine included).
const RESTART_RECOVERY_BOUND: Duration = Duration::from_secs(2);
/// Added to the reaper's bound (lease plus one heartbeat interval after the kill) for a
/// loaded two-core machine.
const LOAD_TOLERANCE: Duration = Duration::from_secs(2);
/// How long the workers may take to start, and to finish the tasks after the chaos.
const START_LIMIT: Duration = Duration::from_secs(60);
const DRAIN_LIMIT: Duration = Duration::from_secs(120);
/// How long a worker may take to stop once its stdin is closed.
const STOP_LIMIT: Duration = Duration::from_secs(15);
/// Problems listed when the test fails: the first few say enough, thousands would bury them.
const PROBLEMS_SHOWN: usize = 25;

/// Backends run one at a time: four worker processes each are plenty for the machine.
static SERIAL: Mutex<()> = Mutex::new(());

#[cfg(feature = "sqlite")]
#[test]
fn crash_sqlite_file() {
    run(Backend::Sqlite);
}

#[cfg(feature = "postgres")]
#[test]
fn crash_postgres() {
    run(Backend::Postgres);
}

#[cfg(feature = "mysql")]
#[test]
fn crash_mysql() {
    run(Backend::Mysql);
}

fn run(backend: Backend) {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let test_name = format!("crash_{backend:?}");
        let database =
            match TestDatabase::create(FacadeAdmin, database_backend(backend), &test_name).await {
                Ok(database) => database,
                Err(skip) if skip.is_skip() => {
                    eprintln!("SKIPPED crash test: {skip}");
                    return;
                }
                Err(error) => panic!("the {backend:?} crash test cannot run: {error}"),
            };
        let logs = std::env::temp_dir().join(format!("{}_logs", database.name()));
        std::fs::create_dir_all(&logs).expect("create the worker log directory");
        let outcome =
            tokio::spawn(crash_test(backend, database.url().to_owned(), logs.clone())).await;
        if let Err(error) = database.destroy().await {
            eprintln!("{error}");
        }
        if outcome.is_ok() {
            let _ = std::fs::remove_dir_all(&logs);
        } else {
            eprintln!("worker logs kept in {}", logs.display());
        }
        if let Err(error) = outcome {
            if error.is_panic() {
                std::panic::resume_unwind(error.into_panic());
            }
            panic!("crash test task failed: {error}");
        }
    });
}

/// The per-test database this backend's run needs: the workers share a SQLite file.
fn database_backend(backend: Backend) -> fib_flow_test_support::Backend {
    match backend {
        Backend::Sqlite => fib_flow_test_support::Backend::SqliteFile,
        Backend::Postgres => fib_flow_test_support::Backend::Postgres,
        Backend::Mysql => fib_flow_test_support::Backend::Mysql,
    }
}

/// A random number in `low..high` (a v4 UUID is 122 random bits; no extra dependency).
fn random_between(low: u64, high: u64) -> u64 {
    let span = u128::from(high.saturating_sub(low).max(1));
    low + u64::try_from(uuid::Uuid::new_v4().as_u128() % span).unwrap_or(0)
}

fn random_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// One worker process.
struct Worker {
    worker_id: String,
    child: Child,
    /// When the process printed `started` (Unix ms), set by its stdout reader thread.
    started_ms: Arc<Mutex<Option<i64>>>,
}

/// One pod: its current process, if up, and when a delayed restart is due.
struct Pod {
    pod_id: String,
    incarnations: usize,
    worker: Option<Worker>,
    restart_at: Option<Instant>,
}

/// The worker processes. Dropping it kills whatever still runs, so that a failing test leaves
/// no process behind (a worker also stops by itself when its stdin, this process's pipe,
/// closes).
struct Fleet {
    url: String,
    logs: PathBuf,
    pods: Vec<Pod>,
}

impl Fleet {
    fn new(url: &str, logs: &Path) -> Fleet {
        Fleet {
            url: url.to_owned(),
            logs: logs.to_owned(),
            pods: (0..PODS)
                .map(|index| Pod {
                    pod_id: format!("pod-{index}"),
                    incarnations: 0,
                    worker: None,
                    restart_at: None,
                })
                .collect(),
        }
    }

    /// Starts a new process for a pod (which must be down).
    fn spawn(&mut self, index: usize) {
        let pod = &mut self.pods[index];
        assert!(pod.worker.is_none(), "{} is already up", pod.pod_id);
        pod.incarnations += 1;
        pod.restart_at = None;
        let worker_id = format!("{}-{}-{}", pod.pod_id, pod.incarnations, random_suffix());
        let log = File::create(self.logs.join(format!("{worker_id}.log"))).expect("worker log");
        let mut child = Command::new(WORKER_BIN)
            .args([
                "--db",
                &self.url,
                "--pod-id",
                &pod.pod_id,
                "--worker-id",
                &worker_id,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn crash-worker");
        let started_ms = Arc::new(Mutex::new(None));
        let stdout = child.stdout.take().expect("worker stdout");
        let started = started_ms.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("started ") {
                    *started.lock().unwrap_or_else(PoisonError::into_inner) = Some(now_ms());
                }
            }
        });
        pod.worker = Some(Worker {
            worker_id,
            child,
            started_ms,
        });
    }

    /// SIGKILLs a pod's process (`Child::kill` is SIGKILL on Unix) and reaps it.
    fn kill(&mut self, index: usize) -> Worker {
        let mut worker = self.pods[index].worker.take().expect("a live worker");
        let _ = worker.child.kill();
        let _ = worker.child.wait();
        worker
    }

    fn live(&self) -> Vec<usize> {
        (0..self.pods.len())
            .filter(|&index| self.pods[index].worker.is_some())
            .collect()
    }

    /// Restarts the pods whose delayed restart is due; returns (pod index, spawn time).
    fn restart_due(&mut self, now: Instant) -> Vec<(usize, i64)> {
        let due: Vec<usize> = (0..self.pods.len())
            .filter(|&index| self.pods[index].restart_at.is_some_and(|at| at <= now))
            .collect();
        due.into_iter()
            .map(|index| {
                let at = now_ms();
                self.spawn(index);
                (index, at)
            })
            .collect()
    }

    /// Waits until every live process printed `started`.
    async fn wait_started(&self, limit: Duration) {
        let began = Instant::now();
        loop {
            let waiting: Vec<&str> = self
                .pods
                .iter()
                .filter_map(|pod| pod.worker.as_ref())
                .filter(|worker| {
                    worker
                        .started_ms
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .is_none()
                })
                .map(|worker| worker.worker_id.as_str())
                .collect();
            if waiting.is_empty() {
                return;
            }
            assert!(
                began.elapsed() < limit,
                "workers not started after {limit:?}: {waiting:?} (see their logs)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Closes every worker's stdin (a graceful stop) and waits; kills the ones that hang.
    async fn stop(&mut self) {
        for pod in &mut self.pods {
            if let Some(worker) = &mut pod.worker {
                drop(worker.child.stdin.take());
            }
        }
        let began = Instant::now();
        for pod in &mut self.pods {
            let Some(mut worker) = pod.worker.take() else {
                continue;
            };
            loop {
                match worker.child.try_wait() {
                    Ok(Some(status)) => {
                        if !status.success() {
                            eprintln!("{} exited with {status}", worker.worker_id);
                        }
                        break;
                    }
                    Ok(None) if began.elapsed() < STOP_LIMIT => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    _ => {
                        eprintln!(
                            "{} did not stop within {STOP_LIMIT:?}; killed",
                            worker.worker_id
                        );
                        let _ = worker.child.kill();
                        let _ = worker.child.wait();
                        break;
                    }
                }
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for pod in &mut self.pods {
            if let Some(worker) = &mut pod.worker {
                let _ = worker.child.kill();
                let _ = worker.child.wait();
            }
        }
    }
}

/// One SIGKILL of a worker process.
struct Kill {
    pod_id: String,
    worker_id: String,
    killed_ms: i64,
    delayed: bool,
    /// When the replacement process was spawned.
    restarted_ms: Option<i64>,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Terminated {
    #[diesel(sql_type = Bool)]
    terminated: bool,
}

#[derive(QueryableByName)]
struct ConnectionId {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
struct TaskRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Integer)]
    retry_count: i32,
    #[diesel(sql_type = Nullable<Text>)]
    error: Option<String>,
}

#[derive(QueryableByName)]
struct EventRow {
    #[diesel(sql_type = BigInt)]
    task_id: i64,
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = BigInt)]
    event_time: i64,
    #[diesel(sql_type = Text)]
    metadata: String,
}

/// A `task_recovered` event.
struct Recovery {
    task_id: i64,
    at_ms: i64,
    from_worker_id: String,
    by_pod_id: Option<String>,
}

impl Recovery {
    /// The recovery an event records, if it is a `task_recovered` event.
    fn of(event: &EventRow) -> Option<Recovery> {
        if event.event_type != "task_recovered" {
            return None;
        }
        let metadata: serde_json::Value = serde_json::from_str(&event.metadata).unwrap_or_default();
        Some(Recovery {
            task_id: event.task_id,
            at_ms: event.event_time,
            from_worker_id: metadata["recovered_from_worker_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            by_pod_id: metadata["recovered_by_pod_id"].as_str().map(str::to_owned),
        })
    }
}

async fn count(admin: &mut Db, filter: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) AS n FROM fib_flow_tasks WHERE {filter}");
    admin
        .load::<Count>(&sql)
        .await
        .expect("count tasks")
        .first()
        .map_or(0, |row| row.n)
}

/// Kills every connection to the test database but `admin`'s own; returns how many.
async fn kill_connections(admin: &mut Db, database: &str) -> usize {
    match admin.backend() {
        Backend::Sqlite => 0,
        Backend::Postgres => {
            let sql = format!(
                "SELECT pg_terminate_backend(pid) AS terminated FROM pg_stat_activity \
                 WHERE datname = '{database}' AND pid <> pg_backend_pid()"
            );
            admin
                .load::<Terminated>(&sql)
                .await
                .expect("terminate connections")
                .iter()
                .filter(|row| row.terminated)
                .count()
        }
        Backend::Mysql => {
            let sql = format!(
                "SELECT CAST(ID AS SIGNED) AS id FROM information_schema.PROCESSLIST \
                 WHERE DB = '{database}' AND ID <> CONNECTION_ID()"
            );
            let ids = admin
                .load::<ConnectionId>(&sql)
                .await
                .expect("list connections");
            let mut killed = 0;
            for ConnectionId { id } in ids {
                // The connection may have closed meanwhile ("Unknown thread id").
                if admin.execute(&format!("KILL {id}")).await.is_ok() {
                    killed += 1;
                }
            }
            killed
        }
    }
}

/// The database name in a server URL (`…/name?options`).
fn database_name(url: &str) -> String {
    let path = url.split('?').next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or_default().to_owned()
}

/// Enqueues the tasks in tagged batches through a manager of this process that never starts
/// (the workers run the tasks).
struct Producer {
    manager: TaskManager,
    enqueued: usize,
    batches: usize,
}

impl Producer {
    /// Runs the migrations and creates the ledger table, before any worker starts.
    async fn prepare(url: &str, admin: &mut Db) -> Producer {
        let manager = TaskManager::new(ManagerOptions::new(url))
            .await
            .expect("producer manager");
        manager.setup().await.expect("migrations");
        admin.execute(CREATE_LEDGER).await.expect("create ledger");
        // Only so that enqueue knows the name.
        manager
            .register(TASK_NAME, |_task: TaskHandle| async move {
                Ok::<Outcome, HandlerError>(json!(null).into())
            })
            .expect("register");
        Producer {
            manager,
            enqueued: 0,
            batches: 0,
        }
    }

    /// Enqueues one batch. The test kills this manager's connections too, and a killed
    /// connection can fail the call after the batch committed (all or nothing, one
    /// transaction), so after an error the batch's tag tells whether it landed.
    async fn enqueue_batch(&mut self, admin: &mut Db) {
        let tag = format!("batch-{}", self.batches);
        let tasks: Vec<(String, fib_flow::Value, TaskOptions)> = (self.enqueued
            ..self.enqueued + BATCH)
            .map(|index| {
                // 5-30 ms, spread without a random generator.
                let sleep_ms = 5 + (index * 7) % 26;
                (
                    TASK_NAME.to_owned(),
                    json!({ "index": index, "sleep_ms": sleep_ms }),
                    // One attempt in all: a crash that charged an attempt fails the task.
                    TaskOptions::default().max_retries(1).tag(tag.clone()),
                )
            })
            .collect();
        let mut tries = 0;
        loop {
            tries += 1;
            let error = match self.manager.enqueue_many(tasks.clone()).await {
                Ok(_) => break,
                Err(error) => error,
            };
            let landed = count(admin, &format!("tag = '{tag}'")).await;
            if landed == BATCH as i64 {
                break;
            }
            assert!(
                landed == 0 && tries < 20,
                "enqueue of {tag} failed {tries} times, {landed} of its tasks stored: {error}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.enqueued += BATCH;
        self.batches += 1;
    }

    async fn stop(self) {
        self.manager.stop().await.expect("stop the producer");
    }
}

/// Figures of the chaos phase.
#[derive(Default)]
struct Chaos {
    kills: Vec<Kill>,
    connection_kill_rounds: usize,
    connections_killed: usize,
}

/// Kills and restarts workers, kills connections and keeps a backlog of tasks until `CHAOS` is
/// over (or no task is left).
async fn chaos(
    fleet: &mut Fleet,
    producer: &mut Producer,
    admin: &mut Db,
    database: &str,
) -> Chaos {
    let mut figures = Chaos::default();
    let began = Instant::now();
    let mut next_kill =
        began + Duration::from_millis(random_between(KILL_EVERY_MS.0, KILL_EVERY_MS.1));
    let mut next_connection_kill = began
        + Duration::from_millis(random_between(
            CONNECTION_KILL_EVERY_MS.0,
            CONNECTION_KILL_EVERY_MS.1,
        ));
    let mut last_count = began;
    while began.elapsed() < CHAOS {
        let now = Instant::now();
        record_restarts(fleet, &mut figures.kills, now);
        if now >= next_kill {
            next_kill =
                now + Duration::from_millis(random_between(KILL_EVERY_MS.0, KILL_EVERY_MS.1));
            let live = fleet.live();
            // Keep two workers up, so that there is always a live reaper.
            if live.len() > 2 {
                let index =
                    live[usize::try_from(random_between(0, live.len() as u64)).unwrap_or(0)];
                let killed = fleet.kill(index);
                let killed_ms = now_ms();
                let delayed = (figures.kills.len() + 1) % DELAYED_RESTART_EVERY == 0;
                let restarted_ms = if delayed {
                    fleet.pods[index].restart_at = Some(now + DELAYED_RESTART_AFTER);
                    None
                } else {
                    let at = now_ms();
                    fleet.spawn(index);
                    Some(at)
                };
                figures.kills.push(Kill {
                    pod_id: fleet.pods[index].pod_id.clone(),
                    worker_id: killed.worker_id,
                    killed_ms,
                    delayed,
                    restarted_ms,
                });
            }
        }
        if admin.backend() != Backend::Sqlite && now >= next_connection_kill {
            next_connection_kill = now
                + Duration::from_millis(random_between(
                    CONNECTION_KILL_EVERY_MS.0,
                    CONNECTION_KILL_EVERY_MS.1,
                ));
            figures.connection_kill_rounds += 1;
            figures.connections_killed += kill_connections(admin, database).await;
        }
        if last_count.elapsed() >= Duration::from_millis(500) {
            last_count = Instant::now();
            let pending = count(admin, "status = 'pending'").await;
            if pending < BACKLOG && producer.enqueued < MAX_TASKS {
                producer.enqueue_batch(admin).await;
            } else if count(admin, "status IN ('pending', 'running')").await == 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    figures
}

/// Restarts the pods whose delayed restart is due, noting the time on their kill.
fn record_restarts(fleet: &mut Fleet, kills: &mut [Kill], now: Instant) {
    for (index, at) in fleet.restart_due(now) {
        let pod_id = &fleet.pods[index].pod_id;
        if let Some(kill) = kills
            .iter_mut()
            .rev()
            .find(|kill| &kill.pod_id == pod_id && kill.restarted_ms.is_none())
        {
            kill.restarted_ms = Some(at);
        }
    }
}

/// Waits (bounded) until no task is pending or running; delayed restarts still happen.
async fn drain(fleet: &mut Fleet, kills: &mut [Kill], admin: &mut Db) -> Duration {
    let began = Instant::now();
    while began.elapsed() < DRAIN_LIMIT {
        record_restarts(fleet, kills, Instant::now());
        if count(admin, "status IN ('pending', 'running')").await == 0
            && fleet.pods.iter().all(|pod| pod.restart_at.is_none())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    began.elapsed()
}

fn percentile(sorted: &[i64], fraction: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted.get(rank).copied()
}

fn show_ms(value: Option<i64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |ms| format!("{ms} ms"))
}

async fn crash_test(backend: Backend, url: String, logs: PathBuf) {
    let mut admin = Db::connect(&url).await.expect("admin connection");
    let mut producer = Producer::prepare(&url, &mut admin).await;
    while producer.enqueued < INITIAL_TASKS {
        producer.enqueue_batch(&mut admin).await;
    }
    let database = database_name(&url);

    let mut fleet = Fleet::new(&url, &logs);
    for index in 0..PODS {
        fleet.spawn(index);
    }
    fleet.wait_started(START_LIMIT).await;
    let chaos_began = Instant::now();
    let mut figures = chaos(&mut fleet, &mut producer, &mut admin, &database).await;
    let chaos_took = chaos_began.elapsed();
    let enqueued = producer.enqueued;
    producer.stop().await;
    let drain_took = drain(&mut fleet, &mut figures.kills, &mut admin).await;
    fleet.stop().await;

    let tasks = admin
        .load::<TaskRow>("SELECT id, status, retry_count, error FROM fib_flow_tasks")
        .await
        .expect("tasks");
    let ledger = admin
        .load::<LedgerEntry>(&format!(
            "SELECT {} FROM crash_ledger",
            LedgerEntry::COLUMNS
        ))
        .await
        .expect("ledger");
    // The metadata column is `jsonb` on PostgreSQL: read as its text there, as it is elsewhere.
    let metadata = if backend == Backend::Postgres {
        "metadata::text AS metadata"
    } else {
        "metadata"
    };
    let events = admin
        .load::<EventRow>(&format!(
            "SELECT task_id, event_type, event_time, {metadata} FROM fib_flow_task_events \
             WHERE event_type IN ('task_recovered', 'task_failed', 'task_timed_out', \
             'task_permanently_failed')"
        ))
        .await
        .expect("events");
    let recoveries: Vec<Recovery> = events.iter().filter_map(Recovery::of).collect();

    let mut problems = Vec::new();
    check_tasks(&tasks, enqueued, &events, &mut problems);
    let executed = check_ledger(&tasks, &ledger, &mut problems);
    let timing = check_recoveries(&figures.kills, &recoveries, &mut problems);

    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    for task in &tasks {
        *by_status.entry(task.status.as_str()).or_default() += 1;
    }
    let delayed = figures.kills.iter().filter(|kill| kill.delayed).count();
    let connection_kills = if backend == Backend::Sqlite {
        "connection kills: none (SQLite has no server connections)".to_owned()
    } else {
        format!(
            "connection kills: {} rounds, {} connections",
            figures.connection_kill_rounds, figures.connections_killed
        )
    };
    let from_live: usize = timing.from_live.values().sum();
    // Written to the stdout handle, past libtest's capture of `println!`, so that every CI
    // log shows the figures, passing or not.
    let _ = writeln!(
        std::io::stdout(),
        "crash test on {backend:?}: {} tasks {by_status:?}; chaos {:.1} s, drain {:.1} s\n  \
         kills: {} ({} immediate restarts, {delayed} delayed); {connection_kills}\n  \
         recoveries: {} task_recovered events ({} by the killed pod's restart, {} by another \
         pod, {from_live} from workers never killed); recovery time after the kill p50 {}, \
         max {}\n  \
         executions: {} ledger rows for {executed} tasks",
        tasks.len(),
        chaos_took.as_secs_f64(),
        drain_took.as_secs_f64(),
        figures.kills.len(),
        figures.kills.len() - delayed,
        recoveries.len(),
        timing.by_same_pod,
        recoveries.len() - timing.by_same_pod - from_live,
        show_ms(percentile(&timing.times, 0.5)),
        show_ms(timing.times.last().copied()),
        ledger.len(),
    );
    for line in &timing.per_kill {
        println!("  {line}");
    }
    if !timing.from_live.is_empty() {
        println!(
            "  tasks recovered from workers never killed: {:?}",
            timing.from_live
        );
    }
    assert!(
        problems.is_empty(),
        "crash test on {backend:?} found {} problems:\n{}{}",
        problems.len(),
        problems[..problems.len().min(PROBLEMS_SHOWN)].join("\n"),
        if problems.len() > PROBLEMS_SHOWN {
            "\n…"
        } else {
            ""
        }
    );
}

/// Every task completed, none charged an attempt, no failure or timeout event.
fn check_tasks(
    tasks: &[TaskRow],
    enqueued: usize,
    events: &[EventRow],
    problems: &mut Vec<String>,
) {
    if tasks.len() != enqueued {
        problems.push(format!(
            "{} tasks in the table, {enqueued} enqueued",
            tasks.len()
        ));
    }
    let unfinished: Vec<String> = tasks
        .iter()
        .filter(|task| task.status != "completed")
        .map(|task| format!("{} {} ({:?})", task.id, task.status, task.error))
        .collect();
    if !unfinished.is_empty() {
        problems.push(format!(
            "{} tasks not completed, e.g. {:?}",
            unfinished.len(),
            &unfinished[..unfinished.len().min(10)]
        ));
    }
    let charged: Vec<String> = tasks
        .iter()
        .filter(|task| task.retry_count != 0)
        .map(|task| format!("{} retry_count {}", task.id, task.retry_count))
        .collect();
    if !charged.is_empty() {
        problems.push(format!(
            "{} tasks charged an attempt, e.g. {:?}",
            charged.len(),
            &charged[..charged.len().min(10)]
        ));
    }
    let failures: Vec<String> = events
        .iter()
        .filter(|event| event.event_type != "task_recovered")
        .map(|event| format!("{} {}", event.task_id, event.event_type))
        .collect();
    if !failures.is_empty() {
        problems.push(format!(
            "{} failure events, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(10)]
        ));
    }
}

/// No (task, attempt) ran twice and every task ran. Returns how many tasks ran.
fn check_ledger(tasks: &[TaskRow], ledger: &[LedgerEntry], problems: &mut Vec<String>) -> usize {
    let mut runs: HashMap<(i64, i32), Vec<&str>> = HashMap::new();
    for entry in ledger {
        runs.entry((entry.task_id, entry.attempt))
            .or_default()
            .push(&entry.worker_id);
    }
    let twice: Vec<String> = runs
        .iter()
        .filter(|(_, workers)| workers.len() > 1)
        .map(|((task_id, attempt), workers)| {
            format!("task {task_id} attempt {attempt} by {workers:?}")
        })
        .collect();
    if !twice.is_empty() {
        problems.push(format!(
            "{} attempts executed more than once, e.g. {:?}",
            twice.len(),
            &twice[..twice.len().min(10)]
        ));
    }
    let executed: HashSet<i64> = ledger.iter().map(|entry| entry.task_id).collect();
    let never_ran = tasks
        .iter()
        .filter(|task| !executed.contains(&task.id))
        .count();
    if never_ran > 0 {
        problems.push(format!("{never_ran} tasks never reached the handler"));
    }
    executed.len()
}

/// What the recoveries looked like.
struct RecoveryTiming {
    /// Milliseconds from each kill to each recovery of the killed worker's tasks, sorted.
    times: Vec<i64>,
    /// Recoveries of a killed worker's tasks by its own pod's next process.
    by_same_pod: usize,
    /// Recoveries from workers never killed, by worker: such a worker had let its lease run
    /// out (its heartbeat held up by a killed connection or a busy database). Not a failure
    /// as such: its late writes are fenced and the ledger shows any double execution.
    from_live: BTreeMap<String, usize>,
    /// One line per kill.
    per_kill: Vec<String>,
}

/// Every task of a killed worker was recovered in time: by the restart of its pod, within
/// `RESTART_RECOVERY_BOUND` of the spawn; by a reaper (delayed restart), within the lease and
/// one heartbeat interval of the kill, plus `LOAD_TOLERANCE`.
fn check_recoveries(
    kills: &[Kill],
    recoveries: &[Recovery],
    problems: &mut Vec<String>,
) -> RecoveryTiming {
    let reaper_bound =
        millis(WORKER_HEARTBEAT_TIMEOUT + WORKER_HEARTBEAT_INTERVAL + LOAD_TOLERANCE);
    let restart_bound = millis(RESTART_RECOVERY_BOUND);
    let mut timing = RecoveryTiming {
        times: Vec::new(),
        by_same_pod: 0,
        from_live: BTreeMap::new(),
        per_kill: Vec::new(),
    };
    for kill in kills {
        let deadline = match (kill.delayed, kill.restarted_ms) {
            (false, Some(restarted_ms)) => restarted_ms + restart_bound,
            _ => kill.killed_ms + reaper_bound,
        };
        let restart = if kill.delayed { "delayed" } else { "immediate" };
        let mut recovered = 0;
        let mut slowest = None;
        for recovery in recoveries
            .iter()
            .filter(|recovery| recovery.from_worker_id == kill.worker_id)
        {
            let took = recovery.at_ms - kill.killed_ms;
            recovered += 1;
            slowest = slowest.max(Some(took));
            timing.times.push(took);
            if recovery.by_pod_id.as_deref() == Some(kill.pod_id.as_str()) {
                timing.by_same_pod += 1;
            }
            if recovery.at_ms > deadline {
                problems.push(format!(
                    "task {} of {} recovered {took} ms after the kill, past its bound of {} ms \
                     ({restart} restart, spawned {} after the kill)",
                    recovery.task_id,
                    kill.worker_id,
                    deadline - kill.killed_ms,
                    show_ms(kill.restarted_ms.map(|at| at - kill.killed_ms)),
                ));
            }
        }
        timing.per_kill.push(format!(
            "killed {} ({restart} restart): {recovered} tasks recovered, slowest {}",
            kill.worker_id,
            show_ms(slowest)
        ));
    }
    timing.times.sort_unstable();
    let killed: HashSet<&str> = kills.iter().map(|kill| kill.worker_id.as_str()).collect();
    for recovery in recoveries {
        if !killed.contains(recovery.from_worker_id.as_str()) {
            *timing
                .from_live
                .entry(recovery.from_worker_id.clone())
                .or_default() += 1;
        }
    }
    timing
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
