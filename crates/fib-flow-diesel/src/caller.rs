//! Writing tasks through the caller's own connection, inside the caller's own transaction:
//! the task exists if and only if the caller's business write commits (the transactional
//! outbox pattern). Implemented for each backend's diesel-async connection type.

use async_trait::async_trait;
use fib_flow_domain::{NewTask, TaskId};
use fib_flow_ports::PortError;

/// A diesel-async connection to the fib-flow database that tasks can be inserted through.
///
/// Call it inside a transaction the caller opened on that connection: the rows and their
/// `task_created` events are then committed or rolled back with the caller's own writes. On
/// PostgreSQL the NOTIFY that wakes workers is sent on commit only.
#[async_trait]
pub trait CallerConnection: Send {
    /// Inserts `tasks` (already resolved and validated) and their `task_created` events.
    async fn insert_tasks(&mut self, tasks: &[NewTask]) -> Result<Vec<TaskId>, PortError>;
}

/// Implements [`CallerConnection`] for a backend module's `Conn`, through its shared `ops`.
macro_rules! caller_connection {
    ($module:ident) => {
        #[async_trait]
        impl CallerConnection for crate::$module::Conn {
            async fn insert_tasks(&mut self, tasks: &[NewTask]) -> Result<Vec<TaskId>, PortError> {
                crate::rows::check_new_tasks(tasks)?;
                crate::$module::ops::insert_tasks_tx(self, tasks)
                    .await
                    .map_err(|error| error.into_port(crate::$module::BACKEND))
            }
        }
    };
}

#[cfg(feature = "postgres")]
caller_connection!(postgres);
#[cfg(feature = "mysql")]
caller_connection!(mysql);
#[cfg(feature = "sqlite")]
caller_connection!(sqlite);
