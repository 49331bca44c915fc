//! `fib-flow audit events|attempts`: the audit trail of one task or one workflow, with the
//! filters of the library's audit queries.

use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args, Subcommand};
use fib_flow::{AttemptOutcome, AttemptQuery, EventQuery, EventType, TaskId, TaskManager};

use crate::args::{PageArgs, page_footer};
use crate::error::CliError;
use crate::output::Output;
use crate::tasks::{attempt_table, event_table};

/// `fib-flow audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Events of a task or of a whole workflow, by time.
    Events(EventArgs),
    /// Attempts of a task (by number) or of a whole workflow (by start time).
    Attempts(AttemptArgs),
}

/// Whose audit rows: exactly one of `--task` and `--workflow`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("scope").required(true).args(["task", "workflow"])))]
pub struct Scope {
    /// One task's rows.
    #[arg(long, value_name = "ID")]
    task: Option<i64>,
    /// A workflow's rows: the root's and every descendant's.
    #[arg(long, value_name = "ROOT")]
    workflow: Option<i64>,
}

/// Filters of `audit events`.
#[derive(Debug, Args)]
pub struct EventArgs {
    #[command(flatten)]
    scope: Scope,
    /// Only events of these types (repeat or separate with commas), e.g. task_failed.
    #[arg(long = "type", value_name = "TYPE", value_delimiter = ',')]
    event_types: Vec<EventType>,
    /// Only events written by this worker.
    #[arg(long)]
    worker: Option<String>,
    /// Only events of this attempt number.
    #[arg(long)]
    attempt: Option<i32>,
    /// Only events of this stage.
    #[arg(long)]
    stage: Option<i32>,
    /// Only events of children of this task.
    #[arg(long, value_name = "ID")]
    parent: Option<i64>,
    /// Only events at or after this instant (RFC 3339, e.g. 2026-11-30T08:00:00Z).
    #[arg(long, value_name = "TIME")]
    since: Option<DateTime<Utc>>,
    /// Only events at or before this instant (RFC 3339).
    #[arg(long, value_name = "TIME")]
    until: Option<DateTime<Utc>>,
    #[command(flatten)]
    page: PageArgs,
}

/// Filters of `audit attempts`.
#[derive(Debug, Args)]
pub struct AttemptArgs {
    #[command(flatten)]
    scope: Scope,
    /// Only attempts that ended this way (completed, failed, timeout, suspended, paused,
    /// pending, interrupted, cancelled).
    #[arg(long)]
    outcome: Option<AttemptOutcome>,
    /// Only attempts run by this worker.
    #[arg(long)]
    worker: Option<String>,
    /// Only attempts still open (running).
    #[arg(long)]
    open: bool,
    /// Only attempts started at or after this instant (RFC 3339).
    #[arg(long, value_name = "TIME")]
    started_after: Option<DateTime<Utc>>,
    /// Only attempts started at or before this instant (RFC 3339).
    #[arg(long, value_name = "TIME")]
    started_before: Option<DateTime<Utc>>,
    /// Only attempts ended at or after this instant (RFC 3339).
    #[arg(long, value_name = "TIME")]
    ended_after: Option<DateTime<Utc>>,
    /// Only attempts ended at or before this instant (RFC 3339).
    #[arg(long, value_name = "TIME")]
    ended_before: Option<DateTime<Utc>>,
    #[command(flatten)]
    page: PageArgs,
}

/// Runs an `audit` subcommand.
pub async fn run(
    manager: &TaskManager,
    command: AuditCommand,
    out: Output,
) -> Result<(), CliError> {
    match command {
        AuditCommand::Events(args) => events(manager, args, out).await,
        AuditCommand::Attempts(args) => attempts(manager, args, out).await,
    }
}

async fn events(manager: &TaskManager, args: EventArgs, out: Output) -> Result<(), CliError> {
    let filter = EventQuery {
        parent_id: args.parent.map(TaskId),
        worker_id: args.worker,
        event_types: args.event_types,
        attempt: args.attempt,
        stage: args.stage,
        started_after: args.since,
        started_before: args.until,
        ..EventQuery::default()
    };
    let page_request = args.page.request();
    let (page, workflow_wide) = match (args.scope.task, args.scope.workflow) {
        (Some(task), _) => (
            manager
                .query_task_events(TaskId(task), filter, page_request)
                .await?,
            false,
        ),
        (None, Some(root)) => (
            manager
                .query_workflow_events(TaskId(root), filter, page_request)
                .await?,
            true,
        ),
        (None, None) => return Err(missing_scope()),
    };
    if out.json {
        return out.json(&page);
    }
    out.table(&event_table(&page.items, workflow_wide), "")?;
    out.text(&page_footer(&page, "events"))
}

async fn attempts(manager: &TaskManager, args: AttemptArgs, out: Output) -> Result<(), CliError> {
    let filter = AttemptQuery {
        worker_id: args.worker,
        outcome: args.outcome,
        started_after: args.started_after,
        started_before: args.started_before,
        ended_after: args.ended_after,
        ended_before: args.ended_before,
        open_only: args.open,
        ..AttemptQuery::default()
    };
    let page_request = args.page.request();
    let (page, workflow_wide) = match (args.scope.task, args.scope.workflow) {
        (Some(task), _) => (
            manager
                .query_task_attempts(TaskId(task), filter, page_request)
                .await?,
            false,
        ),
        (None, Some(root)) => (
            manager
                .query_workflow_attempts(TaskId(root), filter, page_request)
                .await?,
            true,
        ),
        (None, None) => return Err(missing_scope()),
    };
    if out.json {
        return out.json(&page);
    }
    out.table(&attempt_table(&page.items, workflow_wide), "")?;
    out.text(&page_footer(&page, "attempts"))
}

/// clap's group makes one of the two required; this only keeps the match total.
fn missing_scope() -> CliError {
    CliError::Usage("pass --task ID or --workflow ROOT".to_owned())
}
