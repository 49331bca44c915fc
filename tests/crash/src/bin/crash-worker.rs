//! One worker process of the crash test: runs `crash_task`s on a fib-flow database and records
//! every execution in the test's ledger table.
//!
//! Prints `worker_id=<id> pod_id=<pod>` when it begins and `started worker_id=<id>` once the
//! manager runs (the test waits for that line). It stops gracefully on SIGTERM or ctrl-c, and
//! when its stdin closes, so it never outlives the test process; the test kills it with SIGKILL
//! to simulate a crash.
//! Logs go to stderr (`RUST_LOG`, default `warn`).

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use fib_flow::{HandlerError, Outcome, TaskHandle, TaskManager, json};
use fib_flow_crash_test::{Backend, Db, LedgerEntry, TASK_NAME, now_ms, worker_options};
use tokio::sync::Mutex;

/// How long a ledger insert keeps retrying a broken connection before the handler gives up.
/// Far beyond any connection kill; only a real fault (say, a missing table) lasts that long.
const LEDGER_RETRY_LIMIT: Duration = Duration::from_secs(30);

/// Command line of one worker process.
#[derive(Debug, Parser)]
struct Args {
    /// fib-flow database URL (`sqlite:PATH`, `postgres://…`, `mysql://…`).
    #[arg(long)]
    db: String,
    /// Stable logical node id; a restart reuses it.
    #[arg(long)]
    pod_id: String,
    /// This process's worker id; unique per process.
    #[arg(long)]
    worker_id: String,
}

/// The ledger connection of this process, reopened after a killed connection.
struct Ledger {
    url: String,
    backend: Backend,
    conn: Mutex<Option<Db>>,
}

impl Ledger {
    /// Inserts one entry, reconnecting and retrying on any error: the connection may be killed
    /// by the test at any moment, and that must never fail the task. The insert ignores a row
    /// that is already there, so a retry after a commit whose answer was lost adds nothing.
    async fn record(&self, entry: &LedgerEntry) -> Result<(), HandlerError> {
        let sql = entry.insert_sql(self.backend)?;
        let started = Instant::now();
        loop {
            let error = match self.try_insert(&sql).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if started.elapsed() >= LEDGER_RETRY_LIMIT {
                return Err(format!(
                    "ledger insert still failing after {LEDGER_RETRY_LIMIT:?}: {error}"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One try on the held connection (opened first if there is none). A connection is put
    /// back only after a success: after an error it may be dead.
    async fn try_insert(&self, sql: &str) -> Result<(), String> {
        let mut slot = self.conn.lock().await;
        let mut db = match slot.take() {
            Some(db) => db,
            None => Db::connect(&self.url).await?,
        };
        db.execute(sql).await?;
        *slot = Some(db);
        Ok(())
    }
}

/// Resolves when stdin reaches its end: the test closed it, or the test process is gone.
async fn stdin_closed() {
    let (closed, wait) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut sink = [0_u8; 64];
        let mut stdin = std::io::stdin().lock();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = closed.send(());
    });
    let _ = wait.await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    println!("worker_id={} pod_id={}", args.worker_id, args.pod_id);

    let ledger = Arc::new(Ledger {
        url: args.db.clone(),
        backend: Backend::of_url(&args.db)?,
        conn: Mutex::new(None),
    });
    // The test ran the migrations; a worker only connects.
    let manager = TaskManager::new(worker_options(&args.db, &args.pod_id, &args.worker_id)).await?;
    let pod_id = args.pod_id.clone();
    manager.register(TASK_NAME, move |task: TaskHandle| {
        let ledger = ledger.clone();
        let pod_id = pod_id.clone();
        async move {
            let entry = LedgerEntry {
                run_id: uuid::Uuid::new_v4().simple().to_string(),
                task_id: task.id().0,
                attempt: task.attempt(),
                worker_id: task.worker_id().to_owned(),
                pod_id,
                at_ms: now_ms(),
            };
            ledger.record(&entry).await?;
            let sleep_ms = task.payload()["sleep_ms"].as_u64().unwrap_or(10);
            tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
            Ok::<Outcome, HandlerError>(json!(null).into())
        }
    })?;
    manager.start().await?;
    println!("started worker_id={}", args.worker_id);

    // SIGTERM or ctrl-c stop it as a deployment would; a closed stdin (the test is done, or
    // gone) too.
    tokio::select! {
        () = fib_flow::shutdown_signal() => {}
        () = stdin_closed() => {}
    }
    manager.stop().await?;
    println!("stopped worker_id={}", args.worker_id);
    Ok(())
}
