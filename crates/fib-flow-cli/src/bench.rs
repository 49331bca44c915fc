//! Benchmarks measured the way the peer (graphile-worker) measures itself, so that the two can
//! be compared as ratios from one interleaved run:
//!
//! - **drain**: N no-op tasks enqueued beforehand, one worker at concurrency c, full audit
//!   trail; completions are counted in the handler (no polling during the drain), and the
//!   drain ends when every row is `completed` (one count query after the last handler call);
//! - **depth**: the same drain rate with a deep queue (the first `tasks` of `depth_tasks`);
//! - **enqueue**: one by one, then `enqueue_many` in batches of 500;
//! - **pickup**: enqueue → handler start into an idle, started worker;
//! - client CPU (this process) and, for servers on this machine, the CPU of the database's
//!   backend processes, per task; the worker's resident memory after each drain.
//!
//! Every measurement runs in a fresh database (a temp SQLite file, or a database created on
//! the server and dropped afterwards). With `--peer DIR` (a directory holding graphile-worker's
//! `bench-side.mjs` with its `node_modules`) and `node` on the PATH, each PostgreSQL round also
//! runs the peer on the same server and the report ends with the ratios.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use fib_flow::{
    HandlerError, ManagerOptions, PageRequest, TaskHandle, TaskManager, TaskOptions, TaskQuery,
    TaskStatus, json,
};
use tokio::sync::{Notify, mpsc};

/// Options of `fib-flow bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Backends to measure: sqlite-file, sqlite-memory, postgres, mysql (comma separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sqlite-file,postgres,mysql"
    )]
    backends: Vec<String>,
    /// Tasks drained per concurrency level.
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// Tasks queued for the depth run (0 skips it); the first `tasks` of them are timed.
    #[arg(long, default_value_t = 100_000)]
    depth_tasks: usize,
    /// Tasks enqueued one by one.
    #[arg(long, default_value_t = 2_000)]
    single_enqueues: usize,
    /// Pickup latency samples.
    #[arg(long, default_value_t = 200)]
    latency_samples: usize,
    /// Drain concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    concurrency: Vec<usize>,
    /// Interleaved rounds (medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Directory of the graphile-worker companion (`bench-side.mjs` after `npm ci`).
    #[arg(long, env = "FIB_FLOW_PEER_DIR")]
    peer: Option<PathBuf>,
    /// PostgreSQL server URL.
    #[arg(
        long,
        env = "FIB_FLOW_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    /// MySQL/MariaDB server URL.
    #[arg(
        long,
        env = "FIB_FLOW_MYSQL_URL",
        default_value = "mysql://root@127.0.0.1:3306/test"
    )]
    mysql_url: String,
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// One fresh database.
struct Target {
    url: String,
    server: Option<(String, String)>,
    dir: Option<PathBuf>,
}

impl Target {
    async fn create(backend: &str, args: &BenchArgs, run: usize) -> BenchResult<Target> {
        let unique = format!(
            "ff_bench_{}_{}_{run}",
            backend.replace('-', "_"),
            std::process::id()
        );
        match backend {
            "sqlite-memory" => Ok(Target {
                url: "sqlite::memory:".into(),
                server: None,
                dir: None,
            }),
            "sqlite-file" => {
                let dir = std::env::temp_dir().join(&unique);
                std::fs::create_dir_all(&dir)?;
                Ok(Target {
                    url: format!("sqlite:{}", dir.join("bench.db").display()),
                    server: None,
                    dir: Some(dir),
                })
            }
            "postgres" | "mysql" => {
                let server = if backend == "postgres" {
                    &args.postgres_url
                } else {
                    &args.mysql_url
                };
                let url = fib_flow::storage::create_database(server, &unique).await?;
                Ok(Target {
                    url,
                    server: Some((server.clone(), unique)),
                    dir: None,
                })
            }
            other => Err(format!(
                "unknown backend `{other}`; use sqlite-file, sqlite-memory, postgres, mysql"
            )
            .into()),
        }
    }

    fn database_name(&self) -> Option<&str> {
        self.server.as_ref().map(|(_, name)| name.as_str())
    }

    async fn destroy(self) {
        if let Some((server, name)) = &self.server {
            let _ = fib_flow::storage::drop_database(server, name).await;
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    async fn manager(&self, concurrency: usize) -> BenchResult<TaskManager> {
        let manager = TaskManager::new(ManagerOptions {
            max_concurrent_tasks: concurrency,
            claim_batch_size: concurrency,
            poll_interval: Duration::from_millis(1000),
            ..ManagerOptions::new(self.url.clone())
        })
        .await?;
        manager.setup().await?;
        Ok(manager)
    }
}

async fn enqueue_noops(manager: &TaskManager, count: usize) -> BenchResult<()> {
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let batch = chunk
            .iter()
            .map(|index| {
                (
                    "noop".to_owned(),
                    json!({ "index": index }),
                    TaskOptions::default(),
                )
            })
            .collect();
        manager.enqueue_many(batch).await?;
    }
    Ok(())
}

async fn completed(manager: &TaskManager) -> BenchResult<u64> {
    let filter = TaskQuery {
        status: Some(TaskStatus::Completed),
        ..TaskQuery::default()
    };
    Ok(manager
        .query_tasks(filter, PageRequest::limit(1))
        .await?
        .total)
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(values, 0.5)
}

/// CPU seconds (user + system) of a process, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(after_name) = stat.rfind(')').map(|end| &stat[end + 2..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = after_name.split(' ').collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of stat (utime, stime), counted from the state field (index 0 = 3rd).
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of the server processes serving one database on this machine (PostgreSQL
/// backends carry the database name in their process title). MariaDB is one process with a
/// thread per connection, so it is measured whole.
fn server_cpu_seconds(backend: &str, database: Option<&str>) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = 0.0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let ours = match (backend, database) {
            ("postgres", Some(database)) => {
                cmdline.starts_with("postgres: ") && cmdline.contains(&format!(" {database} "))
            }
            ("mysql", _) => cmdline.contains("mariadbd") || cmdline.contains("mysqld"),
            _ => false,
        };
        if ours {
            total += cpu_seconds(pid);
        }
    }
    total
}

/// Resident memory of this process in MiB.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The figures of one drain.
struct Drain {
    handler_rate: f64,
    committed_rate: f64,
    client_cpu_ms_per_task: f64,
    server_cpu_ms_per_task: f64,
    rss_mib: f64,
}

async fn drain(
    backend: &str,
    args: &BenchArgs,
    run: usize,
    concurrency: usize,
    queued: usize,
) -> BenchResult<Drain> {
    let target = Target::create(backend, args, run).await?;
    let result = drain_in(&target, backend, concurrency, queued, args.tasks).await;
    target.destroy().await;
    result
}

async fn drain_in(
    target: &Target,
    backend: &str,
    concurrency: usize,
    queued: usize,
    timed: usize,
) -> BenchResult<Drain> {
    let manager = target.manager(concurrency).await?;
    let done = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(Notify::new());
    {
        let done = done.clone();
        let finished = finished.clone();
        manager.register("noop", move |_task: TaskHandle| {
            let done = done.clone();
            let finished = finished.clone();
            async move {
                if done.fetch_add(1, Ordering::Relaxed) + 1 == timed {
                    finished.notify_one();
                }
                Ok::<fib_flow::Outcome, HandlerError>(json!(null).into())
            }
        })?;
    }
    enqueue_noops(&manager, queued).await?;
    let client = std::process::id();
    let client_before = cpu_seconds(client);
    let server_before = server_cpu_seconds(backend, target.database_name());
    let started = Instant::now();
    manager.start().await?;
    finished.notified().await;
    let handler_elapsed = started.elapsed();
    if queued == timed {
        while completed(&manager).await? < timed as u64 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let committed_elapsed = started.elapsed();
    let client_cpu = cpu_seconds(client) - client_before;
    let server_cpu = server_cpu_seconds(backend, target.database_name()) - server_before;
    let rss = rss_mib();
    manager.stop().await?;
    let tasks = timed as f64;
    Ok(Drain {
        handler_rate: tasks / handler_elapsed.as_secs_f64(),
        committed_rate: tasks / committed_elapsed.as_secs_f64(),
        client_cpu_ms_per_task: client_cpu * 1000.0 / tasks,
        server_cpu_ms_per_task: server_cpu * 1000.0 / tasks,
        rss_mib: rss,
    })
}

async fn enqueue_rates(backend: &str, args: &BenchArgs, run: usize) -> BenchResult<(f64, f64)> {
    let target = Target::create(backend, args, run).await?;
    let result = async {
        let manager = target.manager(10).await?;
        manager.register("noop", |_task: TaskHandle| async move {
            Ok::<fib_flow::Outcome, HandlerError>(json!(null).into())
        })?;
        let started = Instant::now();
        for index in 0..args.single_enqueues {
            manager
                .enqueue("noop", json!({ "index": index }), TaskOptions::default())
                .await?;
        }
        let single = args.single_enqueues as f64 / started.elapsed().as_secs_f64();
        let started = Instant::now();
        enqueue_noops(&manager, args.tasks).await?;
        let batched = args.tasks as f64 / started.elapsed().as_secs_f64();
        manager.stop().await?;
        Ok((single, batched))
    }
    .await;
    target.destroy().await;
    result
}

async fn pickup(backend: &str, args: &BenchArgs, run: usize) -> BenchResult<(f64, f64)> {
    let target = Target::create(backend, args, run).await?;
    let result = async {
        let manager = target.manager(10).await?;
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let sender = Arc::new(sender);
        manager.register("probe", move |_task: TaskHandle| {
            let sender = sender.clone();
            async move {
                let _ = sender.send(Instant::now());
                Ok::<fib_flow::Outcome, HandlerError>(json!(null).into())
            }
        })?;
        manager.start().await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut latencies = Vec::with_capacity(args.latency_samples);
        for _ in 0..args.latency_samples {
            let enqueued = Instant::now();
            manager
                .enqueue("probe", json!({}), TaskOptions::default())
                .await?;
            let picked = receiver
                .recv()
                .await
                .ok_or("probe handler channel closed")?;
            latencies.push(picked.duration_since(enqueued).as_secs_f64() * 1000.0);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        manager.stop().await?;
        latencies.sort_by(f64::total_cmp);
        Ok((percentile(&latencies, 0.5), percentile(&latencies, 0.99)))
    }
    .await;
    target.destroy().await;
    result
}

/// Runs the peer's companion script on a fresh database and returns its JSON line.
async fn peer(
    args: &BenchArgs,
    dir: &std::path::Path,
    run: usize,
    mode: &str,
    extra: &[String],
) -> BenchResult<serde_json::Value> {
    let name = format!("ff_bench_peer_{}_{run}", std::process::id());
    let url = fib_flow::storage::create_database(&args.postgres_url, &name).await?;
    let output = Command::new("node")
        .current_dir(dir)
        .arg("bench-side.mjs")
        .arg(mode)
        .arg(&url)
        .args(extra)
        .output();
    let _ = fib_flow::storage::drop_database(&args.postgres_url, &name).await;
    let output = output?;
    if !output.status.success() {
        return Err(format!(
            "peer {mode} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .ok_or("peer printed no JSON line")?;
    Ok(serde_json::from_str(line)?)
}

fn peer_dir(args: &BenchArgs) -> Option<PathBuf> {
    let dir = args.peer.clone()?;
    let usable = dir.join("bench-side.mjs").exists()
        && dir.join("node_modules").exists()
        && Command::new("node").arg("--version").output().is_ok();
    usable.then_some(dir)
}

/// Samples of one figure across rounds, keyed by (backend, figure).
#[derive(Default)]
struct Samples(BTreeMap<(String, String), Vec<f64>>);

impl Samples {
    fn add(&mut self, backend: &str, figure: &str, value: f64) {
        self.0
            .entry((backend.to_owned(), figure.to_owned()))
            .or_default()
            .push(value);
    }

    fn median(&self, backend: &str, figure: &str) -> Option<f64> {
        let mut values = self
            .0
            .get(&(backend.to_owned(), figure.to_owned()))?
            .clone();
        (!values.is_empty()).then(|| median(&mut values))
    }
}

async fn round(
    args: &BenchArgs,
    backend: &str,
    run: usize,
    samples: &mut Samples,
) -> BenchResult<()> {
    let mut sub = run * 100;
    for &c in &args.concurrency {
        sub += 1;
        let drained = drain(backend, args, sub, c, args.tasks).await?;
        samples.add(backend, &format!("drain c={c}"), drained.committed_rate);
        samples.add(
            backend,
            &format!("drain c={c} (handler)"),
            drained.handler_rate,
        );
        samples.add(
            backend,
            &format!("client CPU ms/task c={c}"),
            drained.client_cpu_ms_per_task,
        );
        samples.add(
            backend,
            &format!("server CPU ms/task c={c}"),
            drained.server_cpu_ms_per_task,
        );
        samples.add(backend, &format!("RSS MiB c={c}"), drained.rss_mib);
        eprintln!(
            "  {backend} round {run}: drain c={c} {:.0} tasks/s",
            drained.committed_rate
        );
    }
    if args.depth_tasks > args.tasks {
        let c = args.concurrency.last().copied().unwrap_or(10);
        sub += 1;
        let drained = drain(backend, args, sub, c, args.depth_tasks).await?;
        samples.add(
            backend,
            &format!("depth {}k drain c={c}", args.depth_tasks / 1000),
            drained.handler_rate,
        );
        samples.add(
            backend,
            &format!("depth {}k RSS MiB", args.depth_tasks / 1000),
            drained.rss_mib,
        );
        eprintln!(
            "  {backend} round {run}: depth drain {:.0} tasks/s",
            drained.handler_rate
        );
    }
    sub += 1;
    let (single, batched) = enqueue_rates(backend, args, sub).await?;
    samples.add(backend, "enqueue 1-by-1", single);
    samples.add(backend, "enqueue batched x500", batched);
    sub += 1;
    let (p50, p99) = pickup(backend, args, sub).await?;
    samples.add(backend, "pickup p50 ms", p50);
    samples.add(backend, "pickup p99 ms", p99);
    Ok(())
}

async fn peer_round(
    args: &BenchArgs,
    dir: &std::path::Path,
    run: usize,
    samples: &mut Samples,
) -> BenchResult<()> {
    let mut sub = run * 100 + 50;
    for &c in &args.concurrency {
        sub += 1;
        let line = peer(
            args,
            dir,
            sub,
            "drain",
            &[args.tasks.to_string(), c.to_string()],
        )
        .await?;
        let rate = line["drain_jobs_per_s_committed"].as_f64().unwrap_or(0.0);
        let tasks = args.tasks as f64;
        samples.add("graphile-worker", &format!("drain c={c}"), rate);
        samples.add(
            "graphile-worker",
            &format!("drain c={c} (handler)"),
            line["drain_jobs_per_s_handler"].as_f64().unwrap_or(0.0),
        );
        samples.add(
            "graphile-worker",
            &format!("client CPU ms/task c={c}"),
            line["client_cpu_s"].as_f64().unwrap_or(0.0) * 1000.0 / tasks,
        );
        samples.add(
            "graphile-worker",
            &format!("server CPU ms/task c={c}"),
            line["server_backend_cpu_s"].as_f64().unwrap_or(0.0) * 1000.0 / tasks,
        );
        eprintln!("  graphile-worker round {run}: drain c={c} {rate:.0} jobs/s");
    }
    sub += 1;
    let line = peer(
        args,
        dir,
        sub,
        "enqueue",
        &[args.single_enqueues.to_string(), args.tasks.to_string()],
    )
    .await?;
    samples.add(
        "graphile-worker",
        "enqueue 1-by-1",
        line["single_per_s"].as_f64().unwrap_or(0.0),
    );
    samples.add(
        "graphile-worker",
        "enqueue batched x500",
        line["batched500_per_s"].as_f64().unwrap_or(0.0),
    );
    sub += 1;
    let line = peer(
        args,
        dir,
        sub,
        "pickup",
        &[args.latency_samples.to_string()],
    )
    .await?;
    samples.add(
        "graphile-worker",
        "pickup p50 ms",
        line["p50_ms"].as_f64().unwrap_or(0.0),
    );
    samples.add(
        "graphile-worker",
        "pickup p99 ms",
        line["p99_ms"].as_f64().unwrap_or(0.0),
    );
    Ok(())
}

/// Runs every requested backend (and the peer) `rounds` times, interleaved, then prints one
/// Markdown table of medians and, when the peer ran, the ratios against it.
pub async fn run(args: BenchArgs) -> Result<(), fib_flow::Error> {
    let peer = peer_dir(&args);
    match (&args.peer, &peer) {
        (Some(dir), None) => eprintln!(
            "peer skipped: {} has no bench-side.mjs with node_modules, or node is missing",
            dir.display()
        ),
        (None, _) => eprintln!("peer skipped: no --peer directory (FIB_FLOW_PEER_DIR)"),
        _ => {}
    }
    eprintln!(
        "pool size {} (ManagerOptions default), claim_batch_size = c, {} rounds",
        ManagerOptions::default().pool_size,
        args.rounds
    );
    let mut samples = Samples::default();
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    for run in 1..=args.rounds.max(1) {
        for backend in &args.backends {
            if failed.contains_key(backend) {
                continue;
            }
            if let Err(error) = round(&args, backend, run, &mut samples).await {
                failed.insert(backend.clone(), error.to_string());
            }
            if backend == "postgres"
                && let Some(dir) = &peer
                && let Err(error) = peer_round(&args, dir, run, &mut samples).await
            {
                failed.insert("graphile-worker".into(), error.to_string());
            }
        }
    }

    let mut figures: Vec<String> = Vec::new();
    for (_, figure) in samples.0.keys() {
        if !figures.contains(figure) {
            figures.push(figure.clone());
        }
    }
    let mut columns: Vec<String> = args.backends.clone();
    if peer.is_some() {
        columns.push("graphile-worker".into());
        columns.push("postgres / graphile-worker".into());
    }
    println!(
        "| figure (median of {} rounds) | {} |",
        args.rounds,
        columns.join(" | ")
    );
    println!("|---|{}", "---|".repeat(columns.len()));
    for figure in &figures {
        let mut cells = Vec::new();
        for column in &columns {
            let cell = if column == "postgres / graphile-worker" {
                match (
                    samples.median("postgres", figure),
                    samples.median("graphile-worker", figure),
                ) {
                    (Some(ours), Some(theirs)) if theirs > 0.0 => {
                        format!("{:.2}×", ours / theirs)
                    }
                    _ => String::new(),
                }
            } else {
                samples
                    .median(column, figure)
                    .map(|value| {
                        if value >= 100.0 {
                            format!("{value:.0}")
                        } else {
                            format!("{value:.2}")
                        }
                    })
                    .unwrap_or_default()
            };
            cells.push(cell);
        }
        println!("| {figure} | {} |", cells.join(" | "));
    }
    for (backend, error) in &failed {
        println!("\n{backend} failed: {error}");
    }
    Ok(())
}
