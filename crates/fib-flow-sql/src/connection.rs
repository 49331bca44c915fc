//! One connection of any compiled-in backend, so that a statement whose SQL is the same
//! everywhere is written once (in [`crate::queries`]) and type-checked once per backend.
//!
//! Generic diesel code over backends needs a bound for every query shape (each bind type's
//! `ToSql`, each clause's `QueryFragment`), so the shared statements match on the connection
//! instead, the way diesel's own `MultiConnection` does.

/// The SQLite connection type of every SQLite store: diesel's sync connection, its statements
/// run by [`crate::blocking::SqliteSpawner`].
#[cfg(feature = "sqlite")]
pub type SqliteConnection = diesel_async::sync_connection_wrapper::SyncConnectionWrapper<
    diesel::SqliteConnection,
    crate::blocking::SqliteSpawner,
>;

#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
compile_error!("fib-flow-sql needs at least one of its `sqlite`, `postgres`, `mysql` features");

/// A borrowed connection of one of the compiled-in backends.
pub enum Connection<'c> {
    /// SQLite (through diesel's sync connection on the blocking pool).
    #[cfg(feature = "sqlite")]
    Sqlite(&'c mut SqliteConnection),
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(&'c mut diesel_async::AsyncPgConnection),
    /// MySQL/MariaDB.
    #[cfg(feature = "mysql")]
    Mysql(&'c mut diesel_async::AsyncMysqlConnection),
}

/// Evaluates `$body` with `$c` bound to the concrete connection and `$db` naming its diesel
/// backend type, in one match arm per compiled-in backend.
macro_rules! on_backend {
    ($conn:expr, |$c:ident, $db:ident| $body:expr) => {
        match $conn {
            #[cfg(feature = "sqlite")]
            $crate::connection::Connection::Sqlite($c) => {
                #[allow(dead_code)]
                type $db = diesel::sqlite::Sqlite;
                $body
            }
            #[cfg(feature = "postgres")]
            $crate::connection::Connection::Postgres($c) => {
                #[allow(dead_code)]
                type $db = diesel::pg::Pg;
                $body
            }
            #[cfg(feature = "mysql")]
            $crate::connection::Connection::Mysql($c) => {
                #[allow(dead_code)]
                type $db = diesel::mysql::Mysql;
                $body
            }
        }
    };
}

pub(crate) use on_backend;
