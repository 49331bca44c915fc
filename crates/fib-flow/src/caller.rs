//! Enqueueing through the caller's own connection, inside the caller's own transaction: the
//! task exists if and only if the caller's business write commits (the transactional outbox
//! pattern). Implemented for each compiled-in backend's diesel-async connection type.

use async_trait::async_trait;
use fib_flow_domain::{NewTask, TaskId};
use fib_flow_ports::PortError;

/// A diesel-async connection to the fib-flow database that tasks can be inserted through:
/// `SyncConnectionWrapper<SqliteConnection>` (feature `sqlite`), `AsyncPgConnection`
/// (`postgres`) or `AsyncMysqlConnection` (`mysql`).
///
/// Call it inside a transaction the caller opened on that connection: the rows and their
/// `task_created` events are then committed or rolled back with the caller's own writes. On
/// PostgreSQL the NOTIFY that wakes workers is sent on commit only.
#[async_trait]
pub trait CallerConnection: Send {
    /// Inserts `tasks` (already resolved and validated) and their `task_created` events.
    async fn insert_tasks(&mut self, tasks: &[NewTask]) -> Result<Vec<TaskId>, PortError>;
}

#[cfg(feature = "sqlite")]
#[async_trait]
impl<S: fib_flow_sqlite::SpawnBlocking + Send> CallerConnection for fib_flow_sqlite::CallerConn<S> {
    async fn insert_tasks(&mut self, tasks: &[NewTask]) -> Result<Vec<TaskId>, PortError> {
        fib_flow_sqlite::insert_in_caller_transaction(self, tasks).await
    }
}

#[cfg(feature = "postgres")]
#[async_trait]
impl CallerConnection for fib_flow_postgres::Conn {
    async fn insert_tasks(&mut self, tasks: &[NewTask]) -> Result<Vec<TaskId>, PortError> {
        fib_flow_sql::transitions::insert_in_caller_transaction::<fib_flow_postgres::Postgres>(
            self, tasks,
        )
        .await
    }
}

#[cfg(feature = "mysql")]
#[async_trait]
impl CallerConnection for fib_flow_mysql::Conn {
    async fn insert_tasks(&mut self, tasks: &[NewTask]) -> Result<Vec<TaskId>, PortError> {
        fib_flow_sql::transitions::insert_in_caller_transaction::<fib_flow_mysql::Mysql>(
            self, tasks,
        )
        .await
    }
}
