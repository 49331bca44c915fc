//! fib-flow's storage adapters: the [`TaskStore`] port over diesel + diesel-async for SQLite
//! (feature `sqlite`, default), PostgreSQL (`postgres`) and MySQL/MariaDB (`mysql`).
//!
//! Owns: the schema and its versioned migrations (`migrations/<backend>/`, embedded), the row
//! mapping (Unix-millisecond timestamps, JSON text, enum strings), connection pools, the
//! transactional persistence of state-machine transitions (guarded row write, attempt row,
//! events and the parent bookkeeping of a settling child, in one transaction), claims,
//! queries, retention batches and PostgreSQL LISTEN/NOTIFY wake-ups.
//!
//! Must not: decide transitions. Every status change is computed by
//! [`fib_flow_domain::apply`]; this crate only loads the row, calls it and writes the result
//! under the transition's guard. No scheduling, no handler execution, no retries of its own:
//! transient faults surface as [`PortError::Unavailable`] for the runtime to retry.
//!
//! One orchestration ([`orchestration`]) is expanded per backend; the backend modules only hold
//! the statements whose SQL differs (row locks, RETURNING vs `LAST_INSERT_ID()`, SKIP LOCKED,
//! NOTIFY) and their connection setup.

// With no backend feature the shared machinery has no user; that build only serves `connect`'s
// "feature is off" errors.
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(dead_code, unused_imports, unused_macros)
)]

use std::sync::Arc;
use std::time::Duration;

use fib_flow_ports::{PortError, TaskStore};

mod caller;
mod error;
mod orchestration;
pub mod rows;
pub mod schema;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod schema_version;

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use caller::CallerConnection;

/// How to reach the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `sqlite::memory:`, `sqlite:PATH`, `sqlite://PATH`, `postgres://…`, `postgresql://…`,
    /// `psql://…` (alias of `postgres://`) or `mysql://…`.
    pub url: String,
    /// Most pooled connections (SQLite in-memory databases always use one).
    pub pool_size: usize,
    /// How long to wait for a pooled connection (and to open one) before failing with
    /// [`PortError::Unavailable`].
    pub acquire_timeout: Duration,
}

impl StoreConfig {
    /// A config with a pool of 10 and a 30 s acquire timeout.
    pub fn new(url: impl Into<String>) -> Self {
        StoreConfig {
            url: url.into(),
            pool_size: 10,
            acquire_timeout: Duration::from_secs(30),
        }
    }
}

/// The URL schemes [`connect`] accepts, for error messages.
const ALLOWED: &str =
    "sqlite::memory:, sqlite:PATH, sqlite://PATH, postgres://, postgresql://, psql://, mysql://";

/// Where a URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A fresh shared in-memory SQLite database.
    SqliteMemory,
    /// A SQLite file.
    SqliteFile(String),
    /// A PostgreSQL URL (normalised to `postgres://`).
    Postgres(String),
    /// A MySQL/MariaDB URL.
    Mysql(String),
}

fn scheme_of(url: &str) -> &str {
    url.split_once(':').map_or(url, |(scheme, _)| scheme)
}

/// Parses a connection URL. Only the scheme is named in errors: the rest may hold a password.
fn parse_url(url: &str) -> Result<Target, PortError> {
    let url = url.trim();
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let path = rest.strip_prefix("//").unwrap_or(rest);
        return match path {
            ":memory:" => Ok(Target::SqliteMemory),
            "" => Err(PortError::Config(
                "sqlite URL has no path: use sqlite::memory:, sqlite:PATH or sqlite://PATH".into(),
            )),
            path => Ok(Target::SqliteFile(path.to_owned())),
        };
    }
    for (prefix, normalised) in [
        ("postgres://", "postgres://"),
        ("postgresql://", "postgresql://"),
        ("psql://", "postgres://"),
    ] {
        if let Some(rest) = url.strip_prefix(prefix) {
            return Ok(Target::Postgres(format!("{normalised}{rest}")));
        }
    }
    if url.starts_with("mysql://") {
        return Ok(Target::Mysql(url.to_owned()));
    }
    Err(PortError::Config(format!(
        "unsupported database URL scheme `{}`; allowed: {ALLOWED}",
        scheme_of(url)
    )))
}

#[allow(dead_code)]
fn feature_off(backend: &str) -> PortError {
    PortError::Config(format!(
        "database backend `{backend}` is not compiled in: enable the `{backend}` feature of fib-flow-diesel (allowed URL schemes: {ALLOWED})"
    ))
}

/// Opens a store for `config.url`. No schema changes: call [`TaskStore::migrate`].
///
/// Errors: [`PortError::Config`] for an unknown scheme, a backend whose cargo feature is off
/// or a MySQL server whose `max_allowed_packet` is below 16 MiB; [`PortError::Connect`]
/// (permanent) for a malformed URL, rejected credentials, an unknown database or an
/// unopenable SQLite file; [`PortError::Unavailable`] (transient) when the database cannot be
/// reached.
pub async fn connect(config: StoreConfig) -> Result<Arc<dyn TaskStore>, PortError> {
    match parse_url(&config.url)? {
        #[cfg(feature = "sqlite")]
        Target::SqliteMemory => sqlite::connect(None, &config).await,
        #[cfg(feature = "sqlite")]
        Target::SqliteFile(path) => sqlite::connect(Some(path), &config).await,
        #[cfg(not(feature = "sqlite"))]
        Target::SqliteMemory | Target::SqliteFile(_) => Err(feature_off("sqlite")),
        #[cfg(feature = "postgres")]
        Target::Postgres(url) => postgres::connect(url, &config).await,
        #[cfg(not(feature = "postgres"))]
        Target::Postgres(_) => Err(feature_off("postgres")),
        #[cfg(feature = "mysql")]
        Target::Mysql(url) => mysql::connect(url, &config).await,
        #[cfg(not(feature = "mysql"))]
        Target::Mysql(_) => Err(feature_off("mysql")),
    }
}

/// A database name safe to splice into `CREATE DATABASE` (identifiers cannot be bound).
fn check_database_name(name: &str) -> Result<(), PortError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(PortError::Config(format!(
            "database name `{name}` must be 1 to 63 ASCII letters, digits or underscores"
        )))
    }
}

/// `server_url` with its path (database) replaced by `name`.
#[allow(dead_code)]
fn with_database(server_url: &str, name: &str) -> Result<String, PortError> {
    let (base, query) = match server_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server_url, None),
    };
    let Some((scheme, rest)) = base.split_once("://") else {
        return Err(PortError::Config(format!(
            "server URL with scheme `{}` has no `://`",
            scheme_of(server_url)
        )));
    };
    let authority = rest
        .split_once('/')
        .map_or(rest, |(authority, _)| authority);
    let mut url = format!("{scheme}://{authority}/{name}");
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    Ok(url)
}

/// Creates database `name` on the PostgreSQL or MySQL server at `server_url` and returns the
/// URL of the new database (test isolation). SQLite URLs are refused.
pub async fn create_database(server_url: &str, name: &str) -> Result<String, PortError> {
    check_database_name(name)?;
    match parse_url(server_url)? {
        #[cfg(feature = "postgres")]
        Target::Postgres(url) => postgres::create_database(&url, name).await,
        #[cfg(feature = "mysql")]
        Target::Mysql(url) => mysql::create_database(&url, name).await,
        _ => Err(PortError::Config(format!(
            "create_database needs a compiled-in postgres:// or mysql:// server URL, got scheme `{}`",
            scheme_of(server_url)
        ))),
    }
}

/// Drops database `name` on the server at `server_url` (if it exists).
pub async fn drop_database(server_url: &str, name: &str) -> Result<(), PortError> {
    check_database_name(name)?;
    match parse_url(server_url)? {
        #[cfg(feature = "postgres")]
        Target::Postgres(url) => postgres::drop_database(&url, name).await,
        #[cfg(feature = "mysql")]
        Target::Mysql(url) => mysql::drop_database(&url, name).await,
        _ => Err(PortError::Config(format!(
            "drop_database needs a compiled-in postgres:// or mysql:// server URL, got scheme `{}`",
            scheme_of(server_url)
        ))),
    }
}

#[cfg(test)]
mod tests;
