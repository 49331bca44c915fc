//! Benchmarks: enqueue rate (one by one and batched), drain throughput of no-op tasks with the
//! full audit trail at two concurrency levels, and pickup latency into idle workers.
//!
//! Each backend runs in a fresh database (a temp SQLite file, or a database created on the
//! server and dropped afterwards). Results are printed as a Markdown table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use fib_flow::{
    HandlerError, ManagerOptions, PageRequest, TaskHandle, TaskManager, TaskOptions, TaskQuery,
    TaskStatus, json,
};
use tokio::sync::mpsc;

/// Options of `fib-flow bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Backends to measure: sqlite-file, sqlite-memory, postgres, mysql (comma separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sqlite-file,sqlite-memory,postgres,mysql"
    )]
    backends: Vec<String>,
    /// Tasks drained per concurrency level.
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// Tasks enqueued one by one.
    #[arg(long, default_value_t = 2_000)]
    single_enqueues: usize,
    /// Pickup latency samples.
    #[arg(long, default_value_t = 200)]
    latency_samples: usize,
    /// Drain concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    concurrency: Vec<usize>,
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

struct Target {
    label: String,
    url: String,
    server: Option<(String, String)>,
    dir: Option<std::path::PathBuf>,
}

impl Target {
    async fn create(backend: &str, args: &BenchArgs) -> BenchResult<Target> {
        let unique = format!(
            "ff_bench_{}_{}",
            backend.replace('-', "_"),
            std::process::id()
        );
        match backend {
            "sqlite-memory" => Ok(Target {
                label: backend.into(),
                url: "sqlite::memory:".into(),
                server: None,
                dir: None,
            }),
            "sqlite-file" => {
                let dir = std::env::temp_dir().join(&unique);
                std::fs::create_dir_all(&dir)?;
                Ok(Target {
                    label: backend.into(),
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
                    label: backend.into(),
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
            pool_size: (concurrency / 4).clamp(4, 16),
            poll_interval: Duration::from_millis(200),
            ..ManagerOptions::new(self.url.clone())
        })
        .await?;
        manager.setup().await?;
        manager.register("noop", |_task: TaskHandle| async move {
            Ok::<fib_flow::Outcome, HandlerError>(json!(null).into())
        })?;
        Ok(manager)
    }
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

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

async fn measure(target: &Target, args: &BenchArgs) -> BenchResult<Vec<String>> {
    let mut cells = Vec::new();

    let manager = target.manager(10).await?;
    let started = Instant::now();
    for index in 0..args.single_enqueues {
        manager
            .enqueue("noop", json!({ "index": index }), TaskOptions::default())
            .await?;
    }
    cells.push(format!(
        "{:.0}",
        args.single_enqueues as f64 / started.elapsed().as_secs_f64()
    ));
    let started = Instant::now();
    for chunk in (0..args.tasks).collect::<Vec<_>>().chunks(500) {
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
    cells.push(format!(
        "{:.0}",
        args.tasks as f64 / started.elapsed().as_secs_f64()
    ));
    manager
        .delete_tasks(fib_flow::DeleteFilter {
            all: true,
            ..Default::default()
        })
        .await?;
    manager.stop().await?;

    for &concurrency in &args.concurrency {
        let manager = target.manager(concurrency).await?;
        manager
            .delete_tasks(fib_flow::DeleteFilter {
                all: true,
                ..Default::default()
            })
            .await?;
        for chunk in (0..args.tasks).collect::<Vec<_>>().chunks(500) {
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
        let started = Instant::now();
        manager.start().await?;
        while completed(&manager).await? < args.tasks as u64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cells.push(format!(
            "{:.0}",
            args.tasks as f64 / started.elapsed().as_secs_f64()
        ));
        manager.stop().await?;
    }

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
        latencies.push(picked.duration_since(enqueued));
    }
    manager.stop().await?;
    latencies.sort();
    cells.push(format!(
        "{:.1}",
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0
    ));
    cells.push(format!(
        "{:.1}",
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0
    ));
    Ok(cells)
}

/// Runs every requested backend and prints one table row each.
pub async fn run(args: BenchArgs) -> Result<(), fib_flow::Error> {
    let mut header = vec![
        "backend".to_owned(),
        "enqueue 1-by-1 (tasks/s)".to_owned(),
        "enqueue batched (tasks/s)".to_owned(),
    ];
    header.extend(
        args.concurrency
            .iter()
            .map(|c| format!("drain c={c} (tasks/s)")),
    );
    header.extend(["pickup p50 (ms)".to_owned(), "pickup p99 (ms)".to_owned()]);
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for backend in &args.backends {
        let target = match Target::create(backend, &args).await {
            Ok(target) => target,
            Err(error) => {
                println!("| {backend} | skipped: {error} |");
                continue;
            }
        };
        let row = measure(&target, &args).await;
        let label = target.label.clone();
        target.destroy().await;
        match row {
            Ok(cells) => println!("| {label} | {} |", cells.join(" | ")),
            Err(error) => println!("| {label} | failed: {error} |"),
        }
    }
    Ok(())
}
