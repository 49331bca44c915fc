//! Project automation (matklad's xtask pattern): `cargo xtask test | migrate | bench`.
//!
//! A plain binary that shells out to cargo and prints each step. `.ci/run` calls
//! `cargo xtask test`; nothing else in the project is scripted.

use std::collections::BTreeSet;
use std::net::{TcpStream, ToSocketAddrs};
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::{Parser, Subcommand};
use fib_flow_test_support::{Server, in_ci};
use url::Url;

mod browser;

#[derive(Parser)]
#[command(about = "fib-flow project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// fmt check, clippy -D warnings (all features, then each backend feature alone), the
    /// lean-build check, then every test on every reachable backend.
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

/// The `host:port` of a server URL, for a reachability probe (IPv6 hosts keep their brackets;
/// a password with `@` is no host; a missing port is the server's usual one).
fn host_port(url: &str) -> Result<String, String> {
    let parsed = Url::parse(url).map_err(|error| format!("`{url}` is not a URL: {error}"))?;
    let host = parsed
        .host()
        .ok_or_else(|| format!("`{url}` names no host"))?;
    let port = parsed
        .port()
        .or_else(|| default_port(parsed.scheme()))
        .ok_or_else(|| format!("`{url}` names no port"))?;
    Ok(format!("{host}:{port}"))
}

/// The port a server URL without one means (what the clients assume).
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "postgres" | "postgresql" => Some(5432),
        "mysql" => Some(3306),
        _ => None,
    }
}

fn reachable(url: &str) -> Result<(), String> {
    let target = host_port(url)?;
    let address = target
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {target}: {error}"))?
        .next()
        .ok_or_else(|| format!("{target} resolves to no address"))?;
    TcpStream::connect_timeout(&address, Duration::from_secs(3))
        .map(drop)
        .map_err(|error| format!("{target} does not answer: {error}"))
}

/// The packages a user builds with one backend feature (the conformance suite comes along so
/// that its per-backend `cfg`s are checked too).
const PER_FEATURE_PACKAGES: [&str; 3] = ["fib-flow", "fib-flow-cli", "fib-flow-conformance"];

/// The backend features, each of which must build on its own.
const BACKEND_FEATURES: [&str; 3] = ["sqlite", "postgres", "mysql"];

/// Lints the facade and the CLI (and the suite) with each backend feature alone: the
/// workspace-wide clippy above enables every feature, which hides a `cfg` that only compiles
/// when another backend is on.
fn clippy_each_backend_alone() -> Result<(), String> {
    for feature in BACKEND_FEATURES {
        let mut command = cargo();
        command.arg("clippy");
        for package in PER_FEATURE_PACKAGES {
            command.args(["-p", package]);
        }
        command.args([
            "--all-targets",
            "--no-default-features",
            "--features",
            feature,
            "--",
            "-D",
            "warnings",
        ]);
        run(&format!("clippy, {feature} alone"), &mut command)?;
    }
    Ok(())
}

/// Crates the README's main command (`cargo run -p fib-flow --example quickstart`, SQLite
/// only) and a default build of the CLI must not compile: the server clients and the mocks.
const NOT_IN_THE_LEAN_BUILD: [&str; 3] = ["tokio-postgres", "mysql_async", "mockall"];

/// Fails when the default build of the facade (with its examples' dev-dependencies) or of the
/// CLI pulls in a crate of [`NOT_IN_THE_LEAN_BUILD`]; a dev-dependency added to the facade
/// for a server test would do that. `cargo tree` resolves without compiling: a second or two.
fn check_lean_build() -> Result<(), String> {
    let mut command = cargo();
    command.args([
        "tree",
        "--quiet",
        "--edges",
        "normal,build,dev",
        "--prefix",
        "none",
        "-p",
        "fib-flow",
        "-p",
        "fib-flow-cli",
    ]);
    println!("==> lean build: {command:?}");
    let output = command
        .output()
        .map_err(|error| format!("lean build: could not start cargo tree: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "lean build: cargo tree failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let tree = String::from_utf8_lossy(&output.stdout);
    let unwanted = unwanted_crates(&tree);
    if unwanted.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "lean build: the default build of fib-flow or fib-flow-cli pulls in {}; keep server \
             clients and mocks behind features or in the test packages under tests/",
            unwanted.into_iter().collect::<Vec<_>>().join(", ")
        ))
    }
}

/// The crates of [`NOT_IN_THE_LEAN_BUILD`] in a `cargo tree --prefix none` listing.
fn unwanted_crates(tree: &str) -> BTreeSet<&str> {
    tree.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| NOT_IN_THE_LEAN_BUILD.contains(name))
        .collect()
}

fn test(under_load: bool) -> Result<(), String> {
    let ci = in_ci();
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
    check_lean_build()?;
    clippy_each_backend_alone()?;

    let mut tests = cargo();
    tests.args(["test", "--workspace", "--all-features"]);
    let mut ran = vec!["sqlite-memory", "sqlite-file"];
    let mut skipped = Vec::new();
    for server in Server::ALL {
        let url = server.url();
        match reachable(&url) {
            Ok(()) => {
                ran.push(server.backend().name());
                tests
                    .env(server.url_env(), &url)
                    .env_remove(server.skip_env());
            }
            Err(reason) if ci => {
                return Err(format!(
                    "CI=true and the {} server is unreachable ({reason}); set {} to a reachable server",
                    server.backend(),
                    server.url_env()
                ));
            }
            Err(reason) => {
                skipped.push(format!(
                    "{} ({reason}; set {} to test it)",
                    server.backend(),
                    server.url_env()
                ));
                tests.env(server.skip_env(), &reason);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_reads_the_authority_of_every_server_url_form() {
        let cases = [
            ("postgres://postgres@127.0.0.1:5432/test", "127.0.0.1:5432"),
            (
                "mysql://root:p%40ss@db.internal:3307/test?ssl=false",
                "db.internal:3307",
            ),
            ("postgres://user:p@ss@[::1]:6543/test", "[::1]:6543"),
            ("mysql://db.internal/test", "db.internal:3306"),
            ("postgresql://localhost", "localhost:5432"),
        ];
        for (url, expected) in cases {
            assert_eq!(host_port(url).as_deref(), Ok(expected), "{url}");
        }
    }

    #[test]
    fn host_port_refuses_a_url_without_host_or_port() {
        assert!(host_port("not a url").is_err());
        assert!(host_port("sqlite:tasks.db").is_err());
        assert!(host_port("redis://cache.internal/0").is_err());
    }

    #[test]
    fn the_lean_check_finds_server_clients_and_mocks_only() {
        let tree = "fib-flow v0.1.0 (/work/crates/fib-flow)\n\
                    tokio v1.54.0\n\
                    tokio-postgres v0.7.18\n\
                    mockall v0.15.0\n\
                    mockall_derive v0.15.0 (proc-macro)\n\
                    tokio-postgres v0.7.18\n";
        assert_eq!(
            unwanted_crates(tree),
            BTreeSet::from(["mockall", "tokio-postgres"])
        );
        assert!(unwanted_crates("fib-flow v0.1.0\ndiesel v2.3.14\n").is_empty());
    }
}
