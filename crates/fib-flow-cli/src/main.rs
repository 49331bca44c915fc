//! The `fib-flow` command line: `fib-flow migrate --url URL` applies the embedded migrations;
//! `fib-flow bench` runs the benchmarks (see docs/benchmarks.md).
//!
//! A thin shell over the `fib-flow` facade; it owns no behavior of its own.

mod bench;

use clap::{Parser, Subcommand};
use fib_flow::{ManagerOptions, TaskManager};

#[derive(Parser)]
#[command(name = "fib-flow", about = "fib-flow task scheduler tools")]
struct Cli {
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Subcommand)]
enum CliCommand {
    /// Apply pending migrations to a database (idempotent).
    Migrate {
        /// `sqlite:PATH`, `postgres://…`, `mysql://…`
        #[arg(long)]
        url: String,
    },
    /// Measure enqueue rate, drain throughput and pickup latency per backend.
    Bench(bench::BenchArgs),
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let result = match Cli::parse().command {
        CliCommand::Migrate { url } => migrate(url).await,
        CliCommand::Bench(args) => bench::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fib-flow: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn migrate(url: String) -> Result<(), fib_flow::Error> {
    let manager = TaskManager::new(ManagerOptions::new(url.clone())).await?;
    manager.setup().await?;
    println!(
        "migrations applied to {url} ({} backend)",
        manager.store().backend()
    );
    manager.stop().await
}
