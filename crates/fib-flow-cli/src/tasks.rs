//! `fib-flow tasks …`: list, show, retry, cancel, pause, resume and delete tasks.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};

use clap::{Args, Subcommand};
use comfy_table::Table;
use fib_flow::{
    DeleteFilter, Task, TaskAttempt, TaskAuditOptions, TaskEvent, TaskId, TaskManager, TaskQuery,
    TaskStatus, TaskType,
};
use serde::Serialize;

use crate::args::{PageArgs, page_footer};
use crate::error::{CliError, Exit};
use crate::output::{self, Output};

/// `fib-flow tasks` subcommands.
#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// List tasks matching every given filter, one page at a time, by creation time.
    List(ListArgs),
    /// Show one task: its fields, payload, result, error, attempts and events.
    Show(ShowArgs),
    /// Bring permanently failed or paused tasks back to pending with a fresh retry budget.
    Retry(ReasonArgs),
    /// Cancel tasks (any non-terminal status becomes permanently_failed).
    Cancel(ReasonArgs),
    /// Pause tasks (pending, running, failed or timeout); they wait until resumed.
    Pause(IdsArgs),
    /// Resume paused or suspended tasks (back to pending).
    Resume(ReasonArgs),
    /// Delete every task matching a filter, with its events and attempts.
    Delete(DeleteArgs),
}

/// Filters and paging of `tasks list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only tasks in this status (pending, running, completed, failed, timeout,
    /// permanently_failed, paused, suspended).
    #[arg(long)]
    status: Option<TaskStatus>,
    /// Only tasks with this handler name.
    #[arg(long)]
    name: Option<String>,
    /// Only tasks with this tag.
    #[arg(long)]
    tag: Option<String>,
    /// Only children of this task.
    #[arg(long, value_name = "ID")]
    parent: Option<i64>,
    /// Only descendants of this workflow root (the root itself excluded).
    #[arg(long, value_name = "ID")]
    root: Option<i64>,
    /// The whole workflow: the root and every descendant.
    #[arg(long, value_name = "ID")]
    workflow: Option<i64>,
    /// Only tasks of this type (async or cron).
    #[arg(long = "type", value_name = "TYPE")]
    task_type: Option<TaskType>,
    /// Only tasks last claimed by this worker.
    #[arg(long)]
    worker: Option<String>,
    /// Only suspended tasks with this suspension reason.
    #[arg(long)]
    suspend_reason: Option<String>,
    #[command(flatten)]
    page: PageArgs,
}

/// Arguments of `tasks show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The task id.
    id: i64,
    /// Most events shown (the first ones, by time; 1 to 1000).
    #[arg(long, default_value_t = 100)]
    events_limit: u32,
    /// Most attempts shown (the first ones; 1 to 1000).
    #[arg(long, default_value_t = 100)]
    attempts_limit: u32,
}

/// Task ids of an action.
#[derive(Debug, Args)]
pub struct IdsArgs {
    /// One or more task ids.
    #[arg(required = true, value_name = "ID")]
    ids: Vec<i64>,
}

/// Task ids of an action that records a reason in the task's events.
#[derive(Debug, Args)]
pub struct ReasonArgs {
    #[command(flatten)]
    ids: IdsArgs,
    /// Why, recorded in the task's event (default: manual).
    #[arg(long)]
    reason: Option<String>,
}

/// Filter of `tasks delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// These tasks (the filters below, when given, narrow them further).
    ids: Vec<i64>,
    /// Only tasks in this status.
    #[arg(long)]
    status: Option<TaskStatus>,
    /// Only tasks with this handler name.
    #[arg(long)]
    name: Option<String>,
    /// Only tasks with this tag.
    #[arg(long)]
    tag: Option<String>,
    /// Every task (required when no filter is given).
    #[arg(long, conflicts_with_all = ["ids", "status", "name", "tag"])]
    all: bool,
    /// Delete without asking (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
}

/// Runs a `tasks` subcommand.
pub async fn run(
    manager: &TaskManager,
    command: TasksCommand,
    out: Output,
) -> Result<(), CliError> {
    match command {
        TasksCommand::List(args) => list(manager, args, out).await,
        TasksCommand::Show(args) => show(manager, args, out).await,
        TasksCommand::Retry(args) => {
            act(manager, Action::Retry, &args.ids.ids, args.reason, out).await
        }
        TasksCommand::Cancel(args) => {
            act(manager, Action::Cancel, &args.ids.ids, args.reason, out).await
        }
        TasksCommand::Pause(args) => act(manager, Action::Pause, &args.ids, None, out).await,
        TasksCommand::Resume(args) => {
            act(manager, Action::Resume, &args.ids.ids, args.reason, out).await
        }
        TasksCommand::Delete(args) => delete(manager, args, out).await,
    }
}

async fn list(manager: &TaskManager, args: ListArgs, out: Output) -> Result<(), CliError> {
    let query = TaskQuery {
        name: args.name,
        status: args.status,
        task_type: args.task_type,
        tag: args.tag,
        worker_id: args.worker,
        parent_id: args.parent.map(TaskId),
        root_id: args.root.map(TaskId),
        workflow_root_id: args.workflow.map(TaskId),
        suspend_reason: args.suspend_reason,
    };
    let page = manager.query_tasks(query, args.page.request()).await?;
    if out.json {
        return out.json(&page);
    }
    out.table(&task_table(&page.items), "")?;
    out.text(&page_footer(&page, "tasks"))
}

/// The listing of `tasks list`: one line per task, the error cut to fit.
fn task_table(tasks: &[Task]) -> Table {
    let mut table = output::table(&[
        "id", "name", "type", "status", "tag", "prio", "attempt", "stage", "parent", "created",
        "next run", "error",
    ]);
    for task in tasks {
        table.add_row([
            task.id.to_string(),
            task.name.clone(),
            task.task_type.to_string(),
            task.status.to_string(),
            output::or_dash(task.tag.as_deref()),
            task.priority.to_string(),
            format!("{}/{}", task.attempt, task.max_retries),
            task.stage.to_string(),
            output::or_dash(task.parent_id),
            output::time(task.created_at),
            output::time(task.next_run_time),
            task.error
                .as_deref()
                .map_or_else(|| "-".to_owned(), |error| output::clip(error, 40)),
        ]);
    }
    table
}

async fn show(manager: &TaskManager, args: ShowArgs, out: Output) -> Result<(), CliError> {
    let options = TaskAuditOptions {
        events: fib_flow::PageRequest::limit(args.events_limit),
        attempts: fib_flow::PageRequest::limit(args.attempts_limit),
    };
    let audit = manager.task_audit(TaskId(args.id), options).await?;
    let Some(task) = &audit.task else {
        return Err(CliError::NotFound {
            what: "task",
            id: args.id,
        });
    };
    if out.json {
        return out.json(&audit);
    }
    out.text(&task_details(task))?;
    out.text(&format!("\nattempts ({}):", page_summary(&audit.attempts)))?;
    out.table(&attempt_table(&audit.attempts.items, false), "  (none)")?;
    if audit.attempts.has_more {
        out.text(&format!(
            "  more: fib-flow audit attempts --task {} --offset {}",
            task.id,
            audit.attempts.items.len()
        ))?;
    }
    out.text(&format!("\nevents ({}):", page_summary(&audit.events)))?;
    out.table(&event_table(&audit.events.items, false), "  (none)")?;
    if audit.events.has_more {
        out.text(&format!(
            "  more: fib-flow audit events --task {} --offset {}",
            task.id,
            audit.events.items.len()
        ))?;
    }
    Ok(())
}

fn page_summary<T>(page: &fib_flow::Page<T>) -> String {
    if page.has_more {
        format!("first {} of {}", page.items.len(), page.total)
    } else {
        page.total.to_string()
    }
}

/// The detail view of one task: the set fields, then payload, result and error.
fn task_details(task: &Task) -> String {
    let mut fields = Vec::new();
    let mut field = |key: &'static str, value: String| fields.push((key, value));
    field("id", task.id.to_string());
    field("name", task.name.clone());
    field("type", task.task_type.to_string());
    field("status", task.status.to_string());
    field("priority", task.priority.to_string());
    if let Some(tag) = &task.tag {
        field("tag", tag.clone());
    }
    field(
        "attempt",
        format!(
            "{} of {} (retries scheduled: {})",
            task.attempt, task.max_retries, task.retry_count
        ),
    );
    field(
        "stage",
        match &task.current_stage_name {
            Some(name) => format!("{} ({name})", task.stage),
            None => task.stage.to_string(),
        },
    );
    field("created", output::precise_time(task.created_at));
    field("next run", output::precise_time(task.next_run_time));
    let optional_times = [
        ("started", task.start_time),
        ("deadline", task.deadline),
        ("last active", task.last_active_time),
    ];
    for (key, instant) in optional_times {
        if let Some(instant) = instant {
            field(key, output::precise_time(instant));
        }
    }
    if let (Some(kind), Some(at)) = (&task.last_event_type, task.last_event_time) {
        field(
            "last event",
            format!("{kind} at {}", output::precise_time(at)),
        );
    }
    if let Some(worker) = &task.worker_id {
        field("worker", worker.clone());
    }
    if let Some(parent) = task.parent_id {
        field(
            "parent",
            format!(
                "{parent} (round {}, workflow {})",
                output::or_dash(task.parent_round),
                task.workflow_root()
            ),
        );
    }
    if task.total_children > 0 {
        field(
            "children",
            format!(
                "{} of {} settled (on failure: {})",
                task.completed_children,
                task.total_children,
                task.child_failure_policy.as_str()
            ),
        );
    }
    field(
        "timeout",
        task.timeout
            .map_or_else(|| "none".to_owned(), output::duration),
    );
    field(
        "retry",
        format!(
            "{} after {}",
            task.retry_backoff.as_str(),
            output::duration(task.retry_interval)
        ),
    );
    if let Some(expr) = &task.cron_expr {
        field(
            "cron",
            format!(
                "{expr} ({}; key {})",
                task.timezone.as_deref().unwrap_or("UTC"),
                output::or_dash(task.cron_key.as_deref())
            ),
        );
    }
    if let Some(key) = &task.unique_key {
        field("unique key", key.clone());
    }
    if task.progress_percent.is_some() || task.progress_text.is_some() {
        field(
            "progress",
            format!(
                "{} {}",
                task.progress_percent
                    .map_or_else(String::new, |percent| format!("{percent:.0}%")),
                task.progress_text.as_deref().unwrap_or_default()
            )
            .trim()
            .to_owned(),
        );
    }
    if let Some(reason) = &task.suspend_reason {
        field("suspended for", reason.clone());
    }
    if let Some(context) = &task.context {
        field("context", format!("{} bytes", context.len()));
    }
    let mut text = output::key_values(fields).to_string();
    text.push_str(&format!("\npayload:\n{}", indented_json(&task.payload)));
    if let Some(metadata) = &task.suspend_metadata {
        text.push_str(&format!(
            "\nsuspension metadata:\n{}",
            indented_json(metadata)
        ));
    }
    if let Some(result) = &task.result {
        text.push_str(&format!("\nresult:\n{}", indented_json(result)));
    }
    if let Some(error) = &task.error {
        text.push_str("\nerror:");
        for line in error.lines() {
            text.push_str(&format!("\n  {line}"));
        }
    }
    text
}

fn indented_json(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value)
        .unwrap_or_else(|_| value.to_string())
        .lines()
        .map(|line| format!("  {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Attempts as a table; `with_task` adds the task column (workflow-wide listings).
pub fn attempt_table(attempts: &[TaskAttempt], with_task: bool) -> Table {
    let mut header = vec![
        "attempt", "started", "ended", "duration", "outcome", "worker", "error",
    ];
    if with_task {
        header.insert(0, "task");
    }
    let mut table = output::table(&header);
    for attempt in attempts {
        let mut row = vec![
            attempt.attempt.to_string(),
            output::time_ms(attempt.started_at),
            output::opt_time_ms(attempt.ended_at),
            output::seconds(output::elapsed(attempt.started_at, attempt.ended_at)),
            match (attempt.outcome, attempt.timeout_flag) {
                (Some(outcome), true) => format!("{outcome} (timed out)"),
                (Some(outcome), false) => outcome.to_string(),
                (None, _) => "open".to_owned(),
            },
            output::or_dash(attempt.worker_id.as_deref()),
            attempt
                .error
                .as_deref()
                .map_or_else(|| "-".to_owned(), |error| output::clip(error, 40)),
        ];
        if with_task {
            row.insert(0, attempt.task_id.to_string());
        }
        table.add_row(row);
    }
    table
}

/// Events as a table; `with_task` adds the task column (workflow-wide listings).
pub fn event_table(events: &[TaskEvent], with_task: bool) -> Table {
    let mut header = vec![
        "id", "time", "type", "status", "attempt", "stage", "worker", "message",
    ];
    if with_task {
        header.insert(1, "task");
    }
    let mut table = output::table(&header);
    for event in events {
        let status = match (event.from_status, event.to_status) {
            (Some(from), Some(to)) => format!("{from} -> {to}"),
            (None, Some(to)) => to.to_string(),
            (Some(from), None) => from.to_string(),
            (None, None) => "-".to_owned(),
        };
        let mut row = vec![
            event.id.to_string(),
            output::time_ms(event.event_time),
            event.event_type.clone(),
            status,
            output::or_dash(event.attempt),
            output::or_dash(event.stage),
            output::or_dash(event.worker_id.as_deref()),
            event
                .message
                .as_deref()
                .map_or_else(|| "-".to_owned(), |message| output::clip(message, 48)),
        ];
        if with_task {
            row.insert(1, event.task_id.to_string());
        }
        table.add_row(row);
    }
    table
}

/// A state change an operator applies to tasks by id.
#[derive(Debug, Clone, Copy)]
enum Action {
    Retry,
    Cancel,
    Pause,
    Resume,
}

impl Action {
    fn past_tense(self) -> &'static str {
        match self {
            Action::Retry => "retried",
            Action::Cancel => "cancelled",
            Action::Pause => "paused",
            Action::Resume => "resumed",
        }
    }
}

/// One id's outcome in the JSON output of an action: the task's new snapshot, or the error
/// with the exit code it maps to.
#[derive(Debug, Serialize)]
struct ActionResult {
    id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    task: Option<Task>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<u8>,
}

/// Applies `action` to every id in order. A failure does not stop the others (an unreachable
/// database does); the process then exits with the code of the first failure.
async fn act(
    manager: &TaskManager,
    action: Action,
    ids: &[i64],
    reason: Option<String>,
    out: Output,
) -> Result<(), CliError> {
    let mut results = Vec::with_capacity(ids.len());
    let mut first_failure: Option<Exit> = None;
    let mut failed = 0;
    for &id in ids {
        let task_id = TaskId(id);
        let outcome = match action {
            Action::Retry => manager.retry_task(task_id, reason.clone()).await,
            Action::Cancel => manager.cancel_task(task_id, reason.clone()).await,
            Action::Pause => manager.pause_task(task_id).await,
            Action::Resume => manager.resume_task(task_id, reason.clone()).await,
        };
        match outcome {
            Ok(task) => {
                if !out.json {
                    out.text(&format!(
                        "task {id} {}: now {}",
                        action.past_tense(),
                        task.status
                    ))?;
                }
                results.push(ActionResult {
                    id,
                    task: Some(task),
                    error: None,
                    exit_code: None,
                });
            }
            Err(error) => {
                let error = CliError::from(error);
                let exit = error.exit();
                failed += 1;
                first_failure.get_or_insert(exit);
                let message = error.to_string();
                // The library's messages usually name the task already.
                if message.starts_with(&format!("task {id}")) {
                    eprintln!("fib-flow: {message}");
                } else {
                    eprintln!("fib-flow: task {id}: {message}");
                }
                results.push(ActionResult {
                    id,
                    task: None,
                    error: Some(message),
                    exit_code: Some(exit as u8),
                });
                if exit == Exit::Unreachable {
                    break;
                }
            }
        }
    }
    if out.json {
        out.json(&results)?;
    }
    match first_failure {
        None => Ok(()),
        Some(exit) => Err(CliError::Partial {
            failed,
            total: ids.len(),
            exit,
        }),
    }
}

/// The JSON output of `tasks delete`.
#[derive(Debug, Serialize)]
struct DeleteReport {
    filter: DeleteFilter,
    matched: u64,
    deleted: u64,
}

async fn delete(manager: &TaskManager, args: DeleteArgs, out: Output) -> Result<(), CliError> {
    let filter = DeleteFilter {
        tag: args.tag,
        status: args.status,
        name: args.name,
        ids: args.ids.iter().copied().map(TaskId).collect(),
        all: args.all,
    };
    filter.validate().map_err(fib_flow::Error::from)?;
    if !filter.ids.is_empty() {
        return delete_by_id(manager, filter, args.yes, out).await;
    }
    let groups = delete_groups(manager, &filter).await?;
    let matched: u64 = groups.values().sum();
    if matched == 0 {
        if out.json {
            return out.json(&DeleteReport {
                filter,
                matched: 0,
                deleted: 0,
            });
        }
        return out.text("no task matches; nothing deleted");
    }
    if !args.yes {
        confirm(&format!(
            "delete {matched} task(s) matching {} with their events and attempts?",
            describe(&filter)
        ))?;
    }
    let bar = output::progress(Some(matched), "deleting tasks");
    let mut deleted = 0;
    for ((name, status), _) in groups {
        let group = DeleteFilter {
            tag: filter.tag.clone(),
            status: Some(status),
            name: Some(name),
            ids: Vec::new(),
            all: false,
        };
        match manager.delete_tasks(group).await {
            Ok(count) => {
                deleted += count;
                bar.inc(count);
            }
            Err(error) => {
                bar.abandon();
                eprintln!("fib-flow: deleted {deleted} of {matched} task(s) before the error");
                return Err(error.into());
            }
        }
    }
    bar.finish_and_clear();
    if out.json {
        return out.json(&DeleteReport {
            filter,
            matched,
            deleted,
        });
    }
    out.text(&format!(
        "deleted {deleted} task(s) with their events and attempts"
    ))
}

/// `tasks delete ID…`: the ids that exist (and match the other filters) go in one
/// transaction; each missing id is reported like the other actions report theirs, and the
/// exit code is "not found" when any was missing.
async fn delete_by_id(
    manager: &TaskManager,
    mut filter: DeleteFilter,
    yes: bool,
    out: Output,
) -> Result<(), CliError> {
    let total = filter.ids.len();
    let mut present = Vec::new();
    for id in std::mem::take(&mut filter.ids) {
        if manager.get_task(id).await?.is_some() {
            present.push(id);
        } else {
            eprintln!(
                "fib-flow: {}",
                CliError::NotFound {
                    what: "task",
                    id: id.0
                }
            );
        }
    }
    let missing = total - present.len();
    let matched = present.len() as u64;
    filter.ids = present;
    let deleted = if filter.ids.is_empty() {
        0
    } else {
        if !yes {
            confirm(&format!(
                "delete {matched} task(s) ({}) with their events and attempts?",
                describe(&filter)
            ))?;
        }
        manager.delete_tasks(filter.clone()).await?
    };
    if out.json {
        out.json(&DeleteReport {
            filter,
            matched,
            deleted,
        })?;
    } else {
        out.text(&format!(
            "deleted {deleted} task(s) with their events and attempts"
        ))?;
    }
    if missing > 0 {
        return Err(CliError::Partial {
            failed: missing,
            total,
            exit: Exit::NotFound,
        });
    }
    Ok(())
}

/// The matching tasks counted per (name, status): the delete runs one transaction per group,
/// so the progress bar advances group by group and an interrupted run has deleted whole
/// groups only.
async fn delete_groups(
    manager: &TaskManager,
    filter: &DeleteFilter,
) -> Result<BTreeMap<(String, TaskStatus), u64>, CliError> {
    let stats = manager
        .task_stats_by_tag(filter.tag.as_deref(), filter.status)
        .await?;
    let mut groups = BTreeMap::new();
    for stat in stats {
        if filter.name.as_ref().is_some_and(|name| *name != stat.name) {
            continue;
        }
        *groups.entry((stat.name, stat.status)).or_insert(0) += stat.count;
    }
    Ok(groups)
}

fn describe(filter: &DeleteFilter) -> String {
    let mut parts = Vec::new();
    if !filter.ids.is_empty() {
        let ids: Vec<String> = filter.ids.iter().map(ToString::to_string).collect();
        parts.push(format!("ids={}", ids.join(",")));
    }
    if let Some(status) = filter.status {
        parts.push(format!("status={status}"));
    }
    if let Some(name) = &filter.name {
        parts.push(format!("name={name}"));
    }
    if let Some(tag) = &filter.tag {
        parts.push(format!("tag={tag}"));
    }
    if parts.is_empty() {
        "--all".to_owned()
    } else {
        parts.join(" ")
    }
}

/// Asks on the terminal; without one the operator must have said `--yes`.
fn confirm(question: &str) -> Result<(), CliError> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(CliError::Usage(format!(
            "{question} stdin is not a terminal, so pass --yes to confirm"
        )));
    }
    let mut stderr = std::io::stderr();
    write!(stderr, "{question} [y/N] ")?;
    stderr.flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if matches!(answer.trim().to_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(CliError::Aborted)
    }
}
