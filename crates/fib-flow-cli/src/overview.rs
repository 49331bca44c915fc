//! `fib-flow workers list` and `fib-flow stats`: who works on the database and how many tasks
//! are where.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use fib_flow::{TagStat, TaskManager, TaskStatus, WorkerQuery, WorkerStatus};
use serde::Serialize;

use crate::error::CliError;
use crate::output::{self, Output};

/// `fib-flow workers` subcommands.
#[derive(Debug, Subcommand)]
pub enum WorkersCommand {
    /// Registered worker processes, by registration time.
    List(WorkerArgs),
}

/// Filters of `workers list`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Only workers of this pod.
    #[arg(long)]
    pod: Option<String>,
    /// Only workers in this status (active, superseded, dead, stopped).
    #[arg(long)]
    status: Option<WorkerStatus>,
}

/// Filters of `stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Only tasks with this tag.
    #[arg(long)]
    tag: Option<String>,
    /// Only tasks in this status.
    #[arg(long)]
    status: Option<TaskStatus>,
}

/// Runs a `workers` subcommand.
pub async fn workers(
    manager: &TaskManager,
    command: WorkersCommand,
    out: Output,
) -> Result<(), CliError> {
    let WorkersCommand::List(args) = command;
    let workers = manager
        .workers(WorkerQuery {
            pod_id: args.pod,
            status: args.status,
        })
        .await?;
    if out.json {
        return out.json(&workers);
    }
    let mut table = output::table(&[
        "worker",
        "pod",
        "status",
        "registered",
        "last seen",
        "expires",
        "ended",
    ]);
    for worker in &workers {
        table.add_row([
            worker.worker_id.clone(),
            worker.pod_id.clone(),
            worker.status.to_string(),
            output::time(worker.registered_at),
            output::time(worker.last_seen_at),
            output::time(worker.expires_at),
            output::opt_time(worker.dead_at.or(worker.superseded_at)),
        ]);
    }
    out.table(&table, "no registered worker")
}

/// The JSON output of `stats`: totals per status, name and tag, and the library's rows
/// (counts per tag, name and status) they were added up from.
#[derive(Debug, Serialize)]
struct Stats {
    total: u64,
    by_status: BTreeMap<TaskStatus, u64>,
    by_name: BTreeMap<String, u64>,
    /// Tagged tasks per tag; untagged tasks are counted in `untagged`.
    by_tag: BTreeMap<String, u64>,
    untagged: u64,
    groups: Vec<TagStat>,
}

impl Stats {
    fn new(groups: Vec<TagStat>) -> Self {
        let mut stats = Stats {
            total: 0,
            by_status: BTreeMap::new(),
            by_name: BTreeMap::new(),
            by_tag: BTreeMap::new(),
            untagged: 0,
            groups: Vec::new(),
        };
        for group in &groups {
            stats.total += group.count;
            *stats.by_status.entry(group.status).or_insert(0) += group.count;
            *stats.by_name.entry(group.name.clone()).or_insert(0) += group.count;
            match &group.tag {
                Some(tag) => *stats.by_tag.entry(tag.clone()).or_insert(0) += group.count,
                None => stats.untagged += group.count,
            }
        }
        stats.groups = groups;
        stats
    }
}

/// Runs `stats`.
pub async fn stats(manager: &TaskManager, args: StatsArgs, out: Output) -> Result<(), CliError> {
    let groups = manager
        .task_stats_by_tag(args.tag.as_deref(), args.status)
        .await?;
    let stats = Stats::new(groups);
    if out.json {
        return out.json(&stats);
    }
    out.text(&format!("{} task(s)", stats.total))?;
    let mut by_status = output::table(&["status", "tasks"]);
    for (status, count) in &stats.by_status {
        by_status.add_row([status.to_string(), count.to_string()]);
    }
    out.text("\nby status:")?;
    out.table(&by_status, "  (none)")?;
    let mut by_name = output::table(&["name", "tasks"]);
    for (name, count) in &stats.by_name {
        by_name.add_row([name.clone(), count.to_string()]);
    }
    out.text("\nby name:")?;
    out.table(&by_name, "  (none)")?;
    let mut by_tag = output::table(&["tag", "tasks"]);
    for (tag, count) in &stats.by_tag {
        by_tag.add_row([tag.clone(), count.to_string()]);
    }
    if stats.untagged > 0 {
        by_tag.add_row(["(untagged)".to_owned(), stats.untagged.to_string()]);
    }
    out.text("\nby tag:")?;
    out.table(&by_tag, "  (none)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(tag: Option<&str>, name: &str, status: TaskStatus, count: u64) -> TagStat {
        TagStat {
            tag: tag.map(str::to_owned),
            name: name.to_owned(),
            status,
            count,
        }
    }

    #[test]
    fn stats_add_the_groups_up_per_status_name_and_tag() {
        let stats = Stats::new(vec![
            group(Some("billing"), "charge", TaskStatus::Completed, 3),
            group(Some("billing"), "charge", TaskStatus::PermanentlyFailed, 1),
            group(None, "charge", TaskStatus::Completed, 2),
            group(None, "email", TaskStatus::Pending, 4),
        ]);
        assert_eq!(stats.total, 10);
        assert_eq!(stats.by_status[&TaskStatus::Completed], 5);
        assert_eq!(stats.by_status[&TaskStatus::Pending], 4);
        assert_eq!(stats.by_name["charge"], 6);
        assert_eq!(stats.by_tag["billing"], 4);
        assert_eq!(stats.untagged, 6);
        assert_eq!(stats.groups.len(), 4);
    }
}
