//! Running the dashboard as a server: the options, the loopback rule, and `fib-flow serve`'s
//! arguments.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};

use fib_flow::{ManagerOptions, TaskManager};

use crate::error::WebError;
use crate::{WebOptions, router};

/// Where the dashboard listens unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);

/// The env variable `--token` falls back to.
pub const TOKEN_ENV: &str = "FIB_FLOW_DASHBOARD_TOKEN";

/// The task manager the dashboard shows.
#[derive(Debug, Clone)]
pub enum ManagerSource {
    /// Open a manager on this database URL (no migration, no worker: it is never started).
    Url(String),
    /// Use a manager the caller holds (started or not).
    Manager(TaskManager),
}

/// How to run the dashboard server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The manager to show.
    pub source: ManagerSource,
    /// The address to listen on (default 127.0.0.1:8080).
    pub listen: SocketAddr,
    /// The token actions need; required when `listen` is not a loopback address.
    pub token: Option<String>,
    /// Hide the actions and refuse them.
    pub read_only: bool,
}

impl ServeOptions {
    /// Loopback on port 8080, no token, actions enabled.
    pub fn new(source: ManagerSource) -> Self {
        ServeOptions {
            source,
            listen: DEFAULT_LISTEN,
            token: None,
            read_only: false,
        }
    }
}

/// The arguments of `fib-flow serve`, for the CLI to flatten into its subcommand (the
/// database URL is the CLI's own `--url`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; anything but loopback requires a token.
    #[arg(long, default_value_t = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Token that actions (retry, cancel, pause, resume) require.
    #[arg(long, env = TOKEN_ENV, hide_env_values = true)]
    pub token: Option<String>,
    /// Show everything, allow no action.
    #[arg(long)]
    pub read_only: bool,
}

impl ServeArgs {
    /// The serve options for these arguments over `source`.
    pub fn into_options(self, source: ManagerSource) -> ServeOptions {
        ServeOptions {
            source,
            listen: self.listen,
            token: self.token,
            read_only: self.read_only,
        }
    }
}

/// A dashboard bound to its socket, ready to serve.
#[derive(Debug)]
pub struct Dashboard {
    listener: tokio::net::TcpListener,
    app: axum::Router,
    local_addr: SocketAddr,
}

impl Dashboard {
    /// Checks the options (a non-loopback address needs a token), opens the manager when
    /// given a URL, installs the Prometheus recorder and binds the socket.
    pub async fn bind(options: ServeOptions) -> Result<Dashboard, WebError> {
        if options
            .token
            .as_deref()
            .is_some_and(|token| token.trim().is_empty())
        {
            return Err(WebError::EmptyToken);
        }
        if !options.listen.ip().is_loopback() && options.token.is_none() {
            return Err(WebError::TokenRequired {
                listen: options.listen,
            });
        }
        let manager = match options.source {
            ManagerSource::Manager(manager) => manager,
            ManagerSource::Url(url) => TaskManager::new(ManagerOptions::new(url)).await?,
        };
        let prometheus = crate::install_prometheus_recorder()?;
        let app = router(
            manager,
            WebOptions {
                token: options.token,
                read_only: options.read_only,
                prometheus: Some(prometheus),
            },
        );
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| WebError::Bind {
                listen: options.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| WebError::Bind {
            listen: options.listen,
            source,
        })?;
        Ok(Dashboard {
            listener,
            app,
            local_addr,
        })
    }

    /// The address the dashboard listens on (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then finishes the requests in flight.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), WebError> {
        tracing::info!(address = %self.local_addr, "dashboard listening");
        axum::serve(self.listener, self.app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(WebError::Serve)
    }
}

/// Binds the dashboard and serves it until SIGTERM or ctrl-c: what `fib-flow serve` runs.
pub async fn serve(options: ServeOptions) -> Result<(), WebError> {
    Dashboard::bind(options)
        .await?
        .run_until(fib_flow::shutdown_signal())
        .await
}
