//! Shared pieces of the multi-process crash test (`tests/crash.rs`) and its worker binary
//! (`crash-worker`): the worker options, the task and ledger definitions, and a raw SQL
//! connection to the test database.
//!
//! The ledger is an ordinary table of the test, written by the handler outside fib-flow, so
//! that it sees every execution, whatever fib-flow believes happened.

#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
compile_error!("enable at least one backend feature: sqlite, postgres or mysql");

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Integer, Text};
use diesel_async::{AsyncConnection, RunQueryDsl};
use fib_flow::ManagerOptions;

/// The handler name every crash task runs under.
pub const TASK_NAME: &str = "crash_task";

/// Period of the worker-registry heartbeat of every worker process.
pub const WORKER_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);

/// Worker lease: a worker silent for this long is dead and its running tasks are recovered.
pub const WORKER_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

/// The options of one worker process.
///
/// The per-task heartbeat timeout is far shorter than the chaos phase: the heartbeat sweep
/// runs all along, and the test proves that it leaves the tasks of registered workers to the
/// registry (supersession at start, or the lease reaper), which charges no attempt. It is also
/// how long a worker waits before it recovers an attempt it owns but lost track of (a claim
/// whose reply died with its killed connection).
pub fn worker_options(url: &str, pod_id: &str, worker_id: &str) -> ManagerOptions {
    ManagerOptions {
        pod_id: Some(pod_id.to_owned()),
        worker_id: Some(worker_id.to_owned()),
        recover_running_jobs: true,
        worker_heartbeat_interval: WORKER_HEARTBEAT_INTERVAL,
        worker_heartbeat_timeout: WORKER_HEARTBEAT_TIMEOUT,
        task_heartbeat_interval: Duration::from_secs(1),
        task_heartbeat_timeout: Duration::from_secs(5),
        poll_interval: Duration::from_millis(200),
        max_concurrent_tasks: 8,
        claim_batch_size: 8,
        stop_timeout: Duration::from_secs(5),
        acquire_timeout: Duration::from_secs(10),
        ..ManagerOptions::new(url)
    }
}

/// The current wall-clock time in Unix milliseconds (the unit of fib-flow's timestamps).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// Which database a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (`sqlite:PATH` or `sqlite://PATH`).
    Sqlite,
    /// PostgreSQL (`postgres://`, `postgresql://`).
    Postgres,
    /// MySQL or MariaDB (`mysql://`).
    Mysql,
}

impl Backend {
    /// The backend of a fib-flow database URL.
    pub fn of_url(url: &str) -> Result<Backend, String> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if url.starts_with("mysql://") {
            Ok(Backend::Mysql)
        } else {
            Err("the crash test needs a sqlite:, postgres:// or mysql:// URL".to_owned())
        }
    }
}

/// The ledger table. `run_id` is unique per handler execution, so that retrying an insert
/// whose connection died after the commit adds no row; two rows with one (task_id, attempt)
/// are two real executions of one attempt.
pub const CREATE_LEDGER: &str = "CREATE TABLE crash_ledger (
    run_id VARCHAR(64) NOT NULL PRIMARY KEY,
    task_id BIGINT NOT NULL,
    attempt INT NOT NULL,
    worker_id VARCHAR(255) NOT NULL,
    pod_id VARCHAR(255) NOT NULL,
    at_ms BIGINT NOT NULL
)";

/// One handler execution.
#[derive(Debug, Clone, QueryableByName)]
pub struct LedgerEntry {
    /// Unique per execution (a UUID).
    #[diesel(sql_type = Text)]
    pub run_id: String,
    /// The task.
    #[diesel(sql_type = BigInt)]
    pub task_id: i64,
    /// The attempt number the handler saw.
    #[diesel(sql_type = Integer)]
    pub attempt: i32,
    /// The worker process that ran it.
    #[diesel(sql_type = Text)]
    pub worker_id: String,
    /// That worker's pod.
    #[diesel(sql_type = Text)]
    pub pod_id: String,
    /// When the handler started, Unix milliseconds.
    #[diesel(sql_type = BigInt)]
    pub at_ms: i64,
}

impl LedgerEntry {
    /// The columns, in [`LedgerEntry`]'s order, for `SELECT`s.
    pub const COLUMNS: &str = "run_id, task_id, attempt, worker_id, pod_id, at_ms";

    /// An insert that does nothing when the row is already there (see [`CREATE_LEDGER`]).
    ///
    /// The values are spliced in: the ids are the test's own (a UUID, `pod-N`,
    /// `pod-N-M-<hex>`), checked here all the same.
    pub fn insert_sql(&self, backend: Backend) -> Result<String, String> {
        for text in [&self.run_id, &self.worker_id, &self.pod_id] {
            if !text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(format!("ledger value `{text}` is not a plain id"));
            }
        }
        let values = format!(
            "('{}', {}, {}, '{}', '{}', {})",
            self.run_id, self.task_id, self.attempt, self.worker_id, self.pod_id, self.at_ms
        );
        let columns = Self::COLUMNS;
        Ok(match backend {
            Backend::Sqlite => {
                format!("INSERT OR IGNORE INTO crash_ledger ({columns}) VALUES {values}")
            }
            Backend::Postgres => format!(
                "INSERT INTO crash_ledger ({columns}) VALUES {values} ON CONFLICT (run_id) DO NOTHING"
            ),
            Backend::Mysql => {
                format!("INSERT IGNORE INTO crash_ledger ({columns}) VALUES {values}")
            }
        })
    }
}

// `Db::load` must name "loadable on every compiled-in backend" as one bound; these traits
// say "loadable on this backend" when its feature is on, and nothing when it is off.

/// Rows loadable from SQLite (any type when the `sqlite` feature is off).
#[cfg(feature = "sqlite")]
pub trait SqliteRow: QueryableByName<diesel::sqlite::Sqlite> {}
#[cfg(feature = "sqlite")]
impl<T: QueryableByName<diesel::sqlite::Sqlite>> SqliteRow for T {}
/// Rows loadable from SQLite (any type when the `sqlite` feature is off).
#[cfg(not(feature = "sqlite"))]
pub trait SqliteRow {}
#[cfg(not(feature = "sqlite"))]
impl<T> SqliteRow for T {}

/// Rows loadable from PostgreSQL (any type when the `postgres` feature is off).
#[cfg(feature = "postgres")]
pub trait PgRow: QueryableByName<diesel::pg::Pg> {}
#[cfg(feature = "postgres")]
impl<T: QueryableByName<diesel::pg::Pg>> PgRow for T {}
/// Rows loadable from PostgreSQL (any type when the `postgres` feature is off).
#[cfg(not(feature = "postgres"))]
pub trait PgRow {}
#[cfg(not(feature = "postgres"))]
impl<T> PgRow for T {}

/// Rows loadable from MySQL (any type when the `mysql` feature is off).
#[cfg(feature = "mysql")]
pub trait MysqlRow: QueryableByName<diesel::mysql::Mysql> {}
#[cfg(feature = "mysql")]
impl<T: QueryableByName<diesel::mysql::Mysql>> MysqlRow for T {}
/// Rows loadable from MySQL (any type when the `mysql` feature is off).
#[cfg(not(feature = "mysql"))]
pub trait MysqlRow {}
#[cfg(not(feature = "mysql"))]
impl<T> MysqlRow for T {}

/// A row type [`Db::load`] can read on every compiled-in backend.
pub trait Row: SqliteRow + PgRow + MysqlRow + Send + 'static {}
impl<T: SqliteRow + PgRow + MysqlRow + Send + 'static> Row for T {}

/// One raw connection to the test database (not pooled: the callers reconnect when it dies).
pub struct Db {
    backend: Backend,
    conn: Conn,
}

enum Conn {
    #[cfg(feature = "sqlite")]
    Sqlite(diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>),
    // Boxed: four times the size of the others.
    #[cfg(feature = "postgres")]
    Postgres(Box<diesel_async::AsyncPgConnection>),
    #[cfg(feature = "mysql")]
    Mysql(diesel_async::AsyncMysqlConnection),
}

/// Runs `$body` with `$conn` bound to whichever backend connection `$db` holds.
macro_rules! with_conn {
    ($db:expr, $conn:ident => $body:expr) => {
        match &mut $db.conn {
            #[cfg(feature = "sqlite")]
            Conn::Sqlite($conn) => $body,
            #[cfg(feature = "postgres")]
            Conn::Postgres(boxed) => {
                let $conn = &mut **boxed;
                $body
            }
            #[cfg(feature = "mysql")]
            Conn::Mysql($conn) => $body,
        }
    };
}

impl Db {
    /// Connects to a fib-flow database URL.
    pub async fn connect(url: &str) -> Result<Db, String> {
        let backend = Backend::of_url(url)?;
        let conn = match backend {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite => {
                let path = url.trim_start_matches("sqlite:");
                let path = path.strip_prefix("//").unwrap_or(path);
                let mut conn = diesel_async::sync_connection_wrapper::SyncConnectionWrapper::<
                    diesel::SqliteConnection,
                >::establish(path)
                .await
                .map_err(|error| format!("sqlite connect: {error}"))?;
                // Four worker processes write the same file: wait for their locks instead of
                // failing at once with "database is locked".
                diesel_async::SimpleAsyncConnection::batch_execute(
                    &mut conn,
                    "PRAGMA busy_timeout = 10000;",
                )
                .await
                .map_err(|error| format!("sqlite busy_timeout: {error}"))?;
                Conn::Sqlite(conn)
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres => Conn::Postgres(Box::new(
                diesel_async::AsyncPgConnection::establish(url)
                    .await
                    .map_err(|error| format!("postgres connect: {error}"))?,
            )),
            #[cfg(feature = "mysql")]
            Backend::Mysql => Conn::Mysql(
                diesel_async::AsyncMysqlConnection::establish(url)
                    .await
                    .map_err(|error| format!("mysql connect: {error}"))?,
            ),
            #[allow(unreachable_patterns)]
            other => return Err(format!("the {other:?} feature is not compiled in")),
        };
        Ok(Db { backend, conn })
    }

    /// The backend this connection talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs a statement; returns the number of affected rows.
    pub async fn execute(&mut self, sql: &str) -> Result<usize, String> {
        let query = diesel::sql_query(sql.to_owned());
        with_conn!(self, conn => query.execute(conn).await)
            .map_err(|error| format!("{error} (in `{sql}`)"))
    }

    /// Runs a query and reads its rows by column name.
    pub async fn load<T: Row>(&mut self, sql: &str) -> Result<Vec<T>, String> {
        let query = diesel::sql_query(sql.to_owned());
        with_conn!(self, conn => query.load::<T>(conn).await)
            .map_err(|error| format!("{error} (in `{sql}`)"))
    }
}
