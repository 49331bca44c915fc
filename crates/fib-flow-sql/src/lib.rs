//! What fib-flow's SQL adapters (fib-flow-sqlite, fib-flow-postgres, fib-flow-mysql) share,
//! written once as ordinary Rust.
//!
//! Owns: the `diesel::table!` schema ([`schema`]) and its JSON column type ([`json_column`]:
//! `jsonb` on PostgreSQL), the row types and their mapping to the
//! domain ([`rows`]), the write plan of a batch of transitions ([`write_plan`]), the
//! transaction logic of every [`TaskStore`](fib_flow_ports::TaskStore) operation
//! ([`transitions`], [`workers`], [`retention`]), the statements whose SQL is the same on every
//! backend ([`queries`]), the generic store ([`SqlStore`]), the mapping of database errors
//! onto [`PortError`](fib_flow_ports::PortError) ([`error`]) and the marker that keeps a
//! fixed-text statement prepared ([`prepared`]).
//!
//! Must not: decide transitions (every status change is computed by
//! [`fib_flow_domain::apply`]; this crate loads the rows, calls it and writes the result under
//! the transition's guard), hold SQL that differs per backend (row locks, RETURNING,
//! `LAST_INSERT_ID()`, SKIP LOCKED, NOTIFY: a backend crate implements [`Statements`] with
//! them), open connections or know URLs (the backend crates and the facade do), retry
//! transient faults (they surface as `PortError::Unavailable` for the runtime).
//!
//! The cargo features `sqlite`, `postgres` and `mysql` name the connection types that
//! [`Connection`] can carry; each backend crate turns on its own, so a SQLite-only build
//! compiles no PostgreSQL or MySQL client.

use std::time::Duration;

#[cfg(feature = "sqlite")]
pub mod blocking;
mod connection;
pub mod error;
pub mod json_column;
pub mod prepared;
pub mod queries;
pub mod retention;
pub mod rows;
pub mod schema;
pub mod schema_version;
mod statements;
mod store;
pub mod transitions;
pub mod workers;
pub mod write_plan;

pub use connection::Connection;
#[cfg(feature = "sqlite")]
pub use connection::SqliteConnection;
pub use error::TxError;
pub use statements::{RowByRow, Statements};
pub use store::{Backend, SqlStore, TxFuture};

/// How to reach the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `sqlite::memory:`, `sqlite:PATH`, `sqlite://PATH`, `postgres://…`, `postgresql://…`,
    /// `psql://…` (alias of `postgres://`) or `mysql://…`.
    pub url: String,
    /// Most pooled connections (SQLite in-memory databases always use one).
    pub pool_size: usize,
    /// How long to wait for a pooled connection (and to open one) before failing with
    /// [`PortError::Unavailable`](fib_flow_ports::PortError::Unavailable).
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

/// Rows per multi-row insert or `IN (...)` list: well under SQLite's and PostgreSQL's bind
/// parameter limits for the widest row we write (13 columns).
pub const CHUNK: usize = 500;

#[cfg(test)]
mod tests;
