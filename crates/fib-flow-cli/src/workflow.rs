//! `fib-flow workflow show ROOT`: the workflow's tree, its root's stages, the critical path
//! and the failures, from the audit layer's workflow summary.

use std::collections::{BTreeMap, HashMap, HashSet};

use clap::{Args, Subcommand};
use fib_flow::{
    AttemptQuery, PageRequest, Task, TaskAttempt, TaskId, TaskManager, TaskQuery, WorkflowSummary,
};
use serde::Serialize;

use crate::error::CliError;
use crate::output::{self, Output};

/// `fib-flow workflow` subcommands.
#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Show a workflow: its task tree with statuses and timings, the root's stages, the
    /// critical path and the failed tasks.
    Show(ShowArgs),
}

/// Arguments of `workflow show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The workflow's root task id.
    root: i64,
}

/// The JSON output of `workflow show`: the library's summary and every task of the workflow
/// (the tree follows from each task's `parent_id`).
#[derive(Debug, Serialize)]
struct WorkflowView {
    summary: WorkflowSummary,
    tasks: Vec<Task>,
}

/// The most rows the library returns per page; a workflow is read page by page.
const PAGE: u32 = 1000;

/// Runs a `workflow` subcommand.
pub async fn run(
    manager: &TaskManager,
    command: WorkflowCommand,
    out: Output,
) -> Result<(), CliError> {
    match command {
        WorkflowCommand::Show(args) => show(manager, args.root, out).await,
    }
}

async fn show(manager: &TaskManager, root: i64, out: Output) -> Result<(), CliError> {
    let root_id = TaskId(root);
    let summary = manager.workflow_audit_summary(root_id).await?;
    let Some(root_task) = summary.root_task.clone() else {
        return Err(CliError::NotFound {
            what: "workflow",
            id: root,
        });
    };
    let tasks = workflow_tasks(manager, root_id).await?;
    if out.json {
        return out.json(&WorkflowView { summary, tasks });
    }
    let attempts = workflow_attempts(manager, root_id).await?;
    out.text(&header(&root_task, &summary))?;
    out.text("\ntree (* = on the critical path):")?;
    out.text(&tree(&root_task, &tasks, &attempts, &summary).to_string())?;
    out.text("\nroot stages:")?;
    out.table(&stage_table(&summary), "  (the root has not run yet)")?;
    out.text(&format!(
        "\ncritical path ({}):",
        output::seconds(Some(summary.critical_path.total_duration_seconds))
    ))?;
    out.table(&critical_path_table(&summary), "  (empty)")?;
    if !summary.failed_tasks.is_empty() {
        out.text("\nfailed tasks:")?;
        let mut failed = output::table(&["id", "name", "status", "error"]);
        for task in &summary.failed_tasks {
            failed.add_row([
                task.task_id.to_string(),
                task.name.clone(),
                task.status.to_string(),
                task.error
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), |error| output::clip(error, 60)),
            ]);
        }
        out.table(&failed, "")?;
    }
    Ok(())
}

async fn workflow_tasks(manager: &TaskManager, root: TaskId) -> Result<Vec<Task>, CliError> {
    let query = TaskQuery {
        workflow_root_id: Some(root),
        ..TaskQuery::default()
    };
    let mut tasks = Vec::new();
    loop {
        let page = manager
            .query_tasks(
                query.clone(),
                PageRequest::limit(PAGE).offset(tasks.len() as u64),
            )
            .await?;
        let more = page.has_more && !page.items.is_empty();
        tasks.extend(page.items);
        if !more {
            return Ok(tasks);
        }
    }
}

async fn workflow_attempts(
    manager: &TaskManager,
    root: TaskId,
) -> Result<Vec<TaskAttempt>, CliError> {
    let mut attempts = Vec::new();
    loop {
        let page = manager
            .query_workflow_attempts(
                root,
                AttemptQuery::default(),
                PageRequest::limit(PAGE).offset(attempts.len() as u64),
            )
            .await?;
        let more = page.has_more && !page.items.is_empty();
        attempts.extend(page.items);
        if !more {
            return Ok(attempts);
        }
    }
}

fn header(root: &Task, summary: &WorkflowSummary) -> String {
    let totals = &summary.totals;
    let timing = &summary.timing;
    let counts = |map: &BTreeMap<String, u64>| {
        map.iter()
            .map(|(key, count)| format!("{key} {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut lines = vec![
        format!("workflow {}  {}  {}", root.id, root.name, root.status),
        format!(
            "tasks {} · attempts {} · events {} · checkpoints {} · duration {}",
            totals.tasks,
            totals.attempts,
            totals.events,
            totals.checkpoints,
            output::seconds(timing.workflow_duration_seconds)
        ),
        format!(
            "created {} · first start {} · last end {}",
            output::opt_time_ms(timing.created_at),
            output::opt_time_ms(timing.first_started_at),
            output::opt_time_ms(timing.last_ended_at)
        ),
        format!("statuses: {}", counts(&summary.statuses)),
    ];
    if !summary.attempt_outcomes.is_empty() {
        lines.push(format!("attempts: {}", counts(&summary.attempt_outcomes)));
    }
    if !summary.workers.is_empty() {
        lines.push(format!("workers: {}", summary.workers.join(", ")));
    }
    lines.join("\n")
}

/// What the tree shows of a task's attempts: how many, and their summed duration.
#[derive(Debug, Default)]
struct AttemptTotals {
    count: usize,
    seconds: f64,
    open: bool,
}

fn tree(
    root: &Task,
    tasks: &[Task],
    attempts: &[TaskAttempt],
    summary: &WorkflowSummary,
) -> termtree::Tree<String> {
    let mut totals: HashMap<TaskId, AttemptTotals> = HashMap::new();
    for attempt in attempts {
        let entry = totals.entry(attempt.task_id).or_default();
        entry.count += 1;
        match output::elapsed(attempt.started_at, attempt.ended_at) {
            Some(seconds) => entry.seconds += seconds,
            None => entry.open = true,
        }
    }
    let critical: HashSet<TaskId> = summary
        .critical_path
        .nodes
        .iter()
        .map(|node| node.task_id)
        .collect();
    let known: HashSet<TaskId> = tasks.iter().map(|task| task.id).collect();
    let mut children: HashMap<TaskId, Vec<&Task>> = HashMap::new();
    for task in tasks.iter().filter(|task| task.id != root.id) {
        // A parent missing from the listing (deleted by hand) would hide its subtree: hang it
        // under the root instead.
        let parent = task
            .parent_id
            .filter(|parent| known.contains(parent))
            .unwrap_or(root.id);
        children.entry(parent).or_default().push(task);
    }
    let labels = Labels {
        totals: &totals,
        critical: &critical,
        children: &children,
    };
    let mut visited = HashSet::new();
    labels.subtree(root, &mut visited)
}

/// What the tree's labels are made of.
struct Labels<'a> {
    totals: &'a HashMap<TaskId, AttemptTotals>,
    critical: &'a HashSet<TaskId>,
    children: &'a HashMap<TaskId, Vec<&'a Task>>,
}

impl Labels<'_> {
    fn subtree(&self, task: &Task, visited: &mut HashSet<TaskId>) -> termtree::Tree<String> {
        visited.insert(task.id);
        let mut leaves = Vec::new();
        for child in self
            .children
            .get(&task.id)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            // Parent links form a tree; the check only guards against corrupt rows.
            if !visited.contains(&child.id) {
                leaves.push(self.subtree(child, visited));
            }
        }
        termtree::Tree::new(self.label(task)).with_leaves(leaves)
    }

    fn label(&self, task: &Task) -> String {
        let marker = if self.critical.contains(&task.id) {
            "* "
        } else {
            ""
        };
        let attempts = self.totals.get(&task.id);
        let timing = match attempts {
            None => "not run".to_owned(),
            Some(totals) => format!(
                "{} attempt{} {}{}",
                totals.count,
                if totals.count == 1 { "" } else { "s" },
                output::seconds(Some(totals.seconds)),
                if totals.open { " (running)" } else { "" }
            ),
        };
        format!(
            "{marker}{} {}  {}  stage {}  {timing}",
            task.id, task.name, task.status, task.stage
        )
    }
}

fn stage_table(summary: &WorkflowSummary) -> comfy_table::Table {
    let mut table = output::table(&[
        "stage", "attempt", "started", "ended", "duration", "outcome", "worker",
    ]);
    for stage in &summary.stage_timings {
        table.add_row([
            stage.stage.to_string(),
            stage.attempt.to_string(),
            output::time_ms(stage.started_at),
            output::opt_time_ms(stage.ended_at),
            output::seconds(stage.duration_seconds),
            output::or_dash(stage.outcome),
            output::or_dash(stage.worker_id.as_deref()),
        ]);
    }
    table
}

fn critical_path_table(summary: &WorkflowSummary) -> comfy_table::Table {
    let mut table = output::table(&[
        "task", "name", "status", "stage", "attempt", "outcome", "duration", "started",
    ]);
    for node in &summary.critical_path.nodes {
        table.add_row([
            node.task_id.to_string(),
            node.name.clone(),
            node.status.to_string(),
            node.stage.to_string(),
            output::or_dash(node.attempt),
            output::or_dash(node.outcome),
            output::seconds(node.duration_seconds),
            output::opt_time_ms(node.started_at),
        ]);
    }
    table
}
