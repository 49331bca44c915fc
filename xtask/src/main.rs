//! Project automation (matklad's xtask pattern): `cargo xtask test | migrate | bench`.
//!
//! A plain binary that shells out to cargo and prints each step. `.ci/run` calls
//! `cargo xtask test`; nothing else in the project is scripted.

use std::net::{TcpStream, ToSocketAddrs};
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::{Parser, Subcommand};

mod browser;

/// Default server of the PostgreSQL conformance run (overridable with `FIB_FLOW_POSTGRES_URL`).
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Default server of the MySQL/MariaDB conformance run (overridable with `FIB_FLOW_MYSQL_URL`).
const DEFAULT_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

#[derive(Parser)]
#[command(about = "fib-flow project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// fmt check, clippy -D warnings, then every test on every reachable backend.
    Test {
        /// Run the tests while busy-loop processes saturate every core (one per core), to
        /// shake out timing assumptions that only hold on an idle machine.
        #[arg(long)]
        under_load: bool,
    },
    /// Apply the embedded migrations to a database URL.
    Migrate {
        /// `sqlite:PATH`, `postgres://…`, `mysql://…`
        #[arg(long)]
        url: String,
    },
    /// Run the benchmarks (release build) and print the figures.
    Bench {
        /// Extra arguments for the bench runner (e.g. `--backends sqlite-file`).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

struct ServerBackend {
    name: &'static str,
    env: &'static str,
    default_url: &'static str,
    skip_env: &'static str,
}

const SERVER_BACKENDS: [ServerBackend; 2] = [
    ServerBackend {
        name: "postgres",
        env: "FIB_FLOW_POSTGRES_URL",
        default_url: DEFAULT_POSTGRES_URL,
        skip_env: "FIB_FLOW_SKIP_POSTGRES",
    },
    ServerBackend {
        name: "mysql",
        env: "FIB_FLOW_MYSQL_URL",
        default_url: DEFAULT_MYSQL_URL,
        skip_env: "FIB_FLOW_SKIP_MYSQL",
    },
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Test { under_load } => test(under_load),
        Task::Migrate { url } => run(
            "migrate",
            cargo().args([
                "run",
                "--quiet",
                "-p",
                "fib-flow-cli",
                "--all-features",
                "--",
                "migrate",
                "--url",
                &url,
            ]),
        ),
        Task::Bench { args } => bench(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(step: &str, command: &mut Command) -> Result<(), String> {
    println!("==> {step}: {command:?}");
    let status = command
        .status()
        .map_err(|error| format!("{step}: could not start: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{step} failed ({status})"))
    }
}

/// Runs the benchmarks; adds the graphile-worker peer when it can be prepared.
fn bench(args: Vec<String>) -> Result<(), String> {
    let mut command = cargo();
    command.args([
        "run",
        "--release",
        "--quiet",
        "-p",
        "fib-flow-cli",
        "--all-features",
        "--",
        "bench",
    ]);
    command.args(&args);
    if !args.iter().any(|arg| arg.starts_with("--peer")) {
        match prepare_peer() {
            Ok(dir) => {
                command.arg("--peer").arg(dir);
            }
            Err(reason) => println!("==> peer (graphile-worker) skipped: {reason}"),
        }
    }
    run("bench", &mut command)
}

/// Copies the peer companion from `../shared/bench/graphile-worker` (read-only there) into
/// `target/bench-peer` and installs it with `npm ci` once.
fn prepare_peer() -> Result<std::path::PathBuf, String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("xtask has no parent directory")?
        .to_path_buf();
    let source = root.join("../shared/bench/graphile-worker");
    if !source.join("bench-side.mjs").exists() {
        return Err(format!("{} not found", source.display()));
    }
    for tool in ["node", "npm"] {
        Command::new(tool)
            .arg("--version")
            .output()
            .map_err(|error| format!("`{tool}` is not available: {error}"))?;
    }
    let target = root.join("target/bench-peer");
    std::fs::create_dir_all(&target).map_err(|error| error.to_string())?;
    for file in ["package.json", "package-lock.json", "bench-side.mjs"] {
        std::fs::copy(source.join(file), target.join(file))
            .map_err(|error| format!("copy {file}: {error}"))?;
    }
    if !target.join("node_modules").exists() {
        run(
            "npm ci (graphile-worker peer)",
            Command::new("npm")
                .args(["ci", "--silent", "--no-audit", "--no-fund"])
                .current_dir(&target),
        )?;
    }
    Ok(target)
}

/// The `host:port` of a database URL, for a reachability probe.
fn host_port(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    Some(host_port.to_owned())
}

fn reachable(url: &str) -> Result<(), String> {
    let target = host_port(url).ok_or_else(|| format!("cannot find host:port in `{url}`"))?;
    let address = target
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {target}: {error}"))?
        .next()
        .ok_or_else(|| format!("{target} resolves to no address"))?;
    TcpStream::connect_timeout(&address, Duration::from_secs(3))
        .map(drop)
        .map_err(|error| format!("{target} does not answer: {error}"))
}

fn test(under_load: bool) -> Result<(), String> {
    let ci = std::env::var("CI").is_ok_and(|value| value == "true" || value == "1");
    run("fmt", cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]),
    )?;

    let mut tests = cargo();
    tests.args(["test", "--workspace", "--all-features"]);
    let mut ran = vec!["sqlite-memory", "sqlite-file"];
    let mut skipped = Vec::new();
    for backend in &SERVER_BACKENDS {
        let url = std::env::var(backend.env).unwrap_or_else(|_| backend.default_url.to_owned());
        match reachable(&url) {
            Ok(()) => {
                ran.push(backend.name);
                tests.env(backend.env, &url).env_remove(backend.skip_env);
            }
            Err(reason) if ci => {
                return Err(format!(
                    "CI=true and the {} server is unreachable ({reason}); set {} to a reachable server",
                    backend.name, backend.env
                ));
            }
            Err(reason) => {
                skipped.push(format!(
                    "{} ({reason}; set {} to test it)",
                    backend.name, backend.env
                ));
                tests.env(backend.skip_env, &reason);
            }
        }
    }
    browser::ensure_packages(ci)?;
    println!("==> backends under test: {}", ran.join(", "));
    for skip in &skipped {
        println!("==> SKIPPED backend {skip}");
    }
    if under_load {
        let load = Load::start()?;
        println!(
            "==> under load: {} busy-loop processes",
            load.children.len()
        );
        let outcome = run("test", &mut tests);
        drop(load);
        outcome?;
    } else {
        run("test", &mut tests)?;
    }
    println!("==> all checks passed on: {}", ran.join(", "));
    for skip in &skipped {
        println!("==> not tested (server unreachable): {skip}");
    }
    Ok(())
}

/// Busy-loop child processes, one per core, killed (and reaped) when dropped.
struct Load {
    children: Vec<std::process::Child>,
}

impl Load {
    /// Starts one `sh` busy loop per available core. Separate processes (not threads of this
    /// one) so the load competes with the test binaries exactly like other work on the host.
    fn start() -> Result<Load, String> {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let mut load = Load {
            children: Vec::with_capacity(cores),
        };
        for _ in 0..cores {
            let child = Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdin(std::process::Stdio::null())
                .spawn()
                .map_err(|error| format!("could not start a busy-loop process: {error}"))?;
            load.children.push(child);
        }
        Ok(load)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for child in &mut self.children {
            // Only our own children, by handle; an already exited one is fine.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
