//! The rules behind [`crate::machine::apply`].

use chrono::{DateTime, Utc};

use crate::error::DomainError;
use crate::machine::{Command, Transition};
use crate::model::Task;

pub(crate) fn apply(
    task: &Task,
    command: Command,
    now: DateTime<Utc>,
) -> Result<Transition, DomainError> {
    let _ = (task, now);
    Err(DomainError::IllegalTransition {
        task_id: task.id,
        from: task.status,
        command: command.name(),
    })
}
