//! The `fib-flow` command line, for operators: list, inspect and act on tasks, show workflows,
//! read the audit trail, list workers, count tasks, run retention and migrations, and run the
//! benchmarks (see docs/operations.md and docs/benchmarks.md).
//!
//! Owns: argument parsing, the human and JSON renderings, progress bars, confirmations and the
//! exit codes. Must not: hold behavior of its own. Every read and every state change goes
//! through the `fib-flow` facade; the manager it opens is never started, so a command claims
//! no task and registers no worker.

mod args;
mod audit;
mod bench;
mod database;
mod error;
mod output;
mod overview;
mod retention;
mod tasks;
mod workflow;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::{CliError, Exit};
use crate::output::Output;

/// Where `--url` and `--json` appear in every subcommand's help: after its own options.
const GLOBAL_OPTIONS_LAST: usize = 1000;

#[derive(Parser)]
#[command(
    name = "fib-flow",
    version,
    about = "Operate a fib-flow task database: tasks, workflows, audit trail, workers",
    after_help = "Exit codes: 0 ok, 1 failure, 2 usage, 3 not found, 4 conflict (illegal transition), 5 database unreachable."
)]
struct Cli {
    /// Database URL: sqlite:PATH, postgres://…, mysql://…
    #[arg(
        long,
        global = true,
        env = database::URL_ENV,
        hide_env_values = true,
        display_order = GLOBAL_OPTIONS_LAST
    )]
    url: Option<String>,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true, display_order = GLOBAL_OPTIONS_LAST)]
    json: bool,
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Subcommand)]
enum CliCommand {
    #[command(flatten)]
    Operate(OperatorCommand),
    /// Apply pending migrations to the database (idempotent; creates a SQLite file).
    Migrate,
    /// Run the web dashboard, its JSON API and /metrics (docs/operations.md) until SIGTERM or
    /// ctrl-c.
    Serve(fib_flow_web::ServeArgs),
    /// Measure enqueue rate, drain throughput and pickup latency per backend (ignores --url).
    Bench(bench::BenchArgs),
}

/// The commands that work on an existing database through a manager that is never started.
#[derive(Subcommand)]
enum OperatorCommand {
    /// List, show, retry, cancel, pause, resume or delete tasks.
    Tasks {
        #[command(subcommand)]
        command: tasks::TasksCommand,
    },
    /// Show a workflow's tree, stages and critical path.
    Workflow {
        #[command(subcommand)]
        command: workflow::WorkflowCommand,
    },
    /// Read the audit trail: events and attempts.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// List the worker registry.
    Workers {
        #[command(subcommand)]
        command: overview::WorkersCommand,
    },
    /// Count tasks by status, name and tag.
    Stats(overview::StatsArgs),
    /// Delete expired workflows now.
    Retention {
        #[command(subcommand)]
        command: retention::RetentionCommand,
    },
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => Exit::Success.into(),
        // `fib-flow … | head` closes the pipe early; that is not a failure of the command.
        Err(CliError::Io(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {
            Exit::Success.into()
        }
        Err(error) => {
            eprintln!("fib-flow: {error}");
            error.exit().into()
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let out = Output { json: cli.json };
    let url = cli.url.as_deref();
    match cli.command {
        CliCommand::Bench(args) => Ok(bench::run(args).await?),
        CliCommand::Migrate => migrate(database::require_url(url)?, out).await,
        CliCommand::Serve(args) => serve(database::require_url(url)?, args).await,
        CliCommand::Operate(command) => operate(database::require_url(url)?, command, out).await,
    }
}

async fn operate(url: &str, command: OperatorCommand, out: Output) -> Result<(), CliError> {
    let manager = database::open(database::options(url)).await?;
    let result = match command {
        OperatorCommand::Tasks { command } => tasks::run(&manager, command, out).await,
        OperatorCommand::Workflow { command } => workflow::run(&manager, command, out).await,
        OperatorCommand::Audit { command } => audit::run(&manager, command, out).await,
        OperatorCommand::Workers { command } => overview::workers(&manager, command, out).await,
        OperatorCommand::Stats(args) => overview::stats(&manager, args, out).await,
        OperatorCommand::Retention { command } => retention::run(&manager, url, command, out).await,
    };
    let closed = database::close(manager).await;
    result.and(closed)
}

/// Serves the dashboard over a manager that is never started, on an existing database.
async fn serve(url: &str, args: fib_flow_web::ServeArgs) -> Result<(), CliError> {
    let manager = database::open(fib_flow::ManagerOptions::new(url)).await?;
    let served = fib_flow_web::serve(
        args.into_options(fib_flow_web::ManagerSource::Manager(manager.clone())),
    )
    .await;
    let closed = database::close(manager).await;
    served?;
    closed
}

/// The JSON output of `migrate`.
#[derive(serde::Serialize)]
struct Migrated {
    backend: &'static str,
}

async fn migrate(url: &str, out: Output) -> Result<(), CliError> {
    let manager = database::open_or_create(url).await?;
    let migrated = manager.setup().await;
    let backend = manager.store().backend();
    database::close(manager).await?;
    migrated?;
    if out.json {
        return out.json(&Migrated { backend });
    }
    out.text(&format!(
        "migrations applied to {} ({backend} backend)",
        database::redact(url)
    ))
}
