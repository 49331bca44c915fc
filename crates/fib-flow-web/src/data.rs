//! What the pages and the JSON API show, gathered once for both: the overview figures, the
//! task list filter, a task's detail, a workflow, and the actions.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use fib_flow::{
    EventQuery, EventType, Order, Page, PageRequest, Task, TaskAudit, TaskAuditOptions, TaskId,
    TaskManager, TaskQuery, TaskStatus, TaskType, Worker, WorkerQuery, WorkflowAudit,
    WorkflowAuditOptions, WorkflowSummary,
};
use serde::{Deserialize, Serialize};

use crate::error::WebError;

/// The throughput chart covers the last hour in buckets of this many minutes.
const BUCKET_MINUTES: i64 = 5;
/// Buckets of the throughput chart (one hour).
const BUCKETS: i64 = 12;
/// Most events and attempts a task page shows (the API pages further).
const DETAIL_ROWS: u32 = 500;
/// Most tasks of a workflow the tree shows.
const WORKFLOW_TASKS: u32 = 1000;

/// Event types counted as completions in the throughput chart.
pub(crate) const COMPLETION_EVENTS: [EventType; 1] = [EventType::TaskCompleted];
/// Event types counted as failures in the throughput chart: attempts that failed or timed out.
pub(crate) const FAILURE_EVENTS: [EventType; 2] = [EventType::TaskFailed, EventType::TaskTimedOut];

/// Counts by status and name, throughput over the last hour, and the worker registry.
#[derive(Debug, Serialize)]
pub struct Overview {
    /// The instant the figures were read (the manager's clock).
    pub generated_at: DateTime<Utc>,
    /// Tasks per status; every status is listed, 0 included.
    pub by_status: BTreeMap<TaskStatus, u64>,
    /// Tasks per handler name, each with its counts per status.
    pub by_name: Vec<NameCounts>,
    /// Completions and failures per five minutes over the last hour, oldest first.
    pub throughput: Vec<ThroughputBucket>,
    /// Every registered worker.
    pub workers: Vec<Worker>,
}

/// One handler name's tasks.
#[derive(Debug, Serialize)]
pub struct NameCounts {
    /// The handler name.
    pub name: String,
    /// All its tasks.
    pub total: u64,
    /// Its tasks per status (statuses with none are left out).
    pub by_status: BTreeMap<TaskStatus, u64>,
}

/// One bucket of the throughput chart.
#[derive(Debug, Serialize)]
pub struct ThroughputBucket {
    /// Start (exclusive).
    pub start: DateTime<Utc>,
    /// End (inclusive).
    pub end: DateTime<Utc>,
    /// `task_completed` events in the bucket.
    pub completed: u64,
    /// `task_failed` and `task_timed_out` events in the bucket.
    pub failed: u64,
}

/// Reads the overview.
pub(crate) async fn overview(manager: &TaskManager) -> Result<Overview, WebError> {
    let now = manager.now();
    let stats = manager.task_stats_by_tag(None, None).await?;
    let mut by_status: BTreeMap<TaskStatus, u64> = TaskStatus::ALL
        .into_iter()
        .map(|status| (status, 0))
        .collect();
    let mut names: BTreeMap<String, BTreeMap<TaskStatus, u64>> = BTreeMap::new();
    for stat in stats {
        *by_status.entry(stat.status).or_default() += stat.count;
        *names
            .entry(stat.name)
            .or_default()
            .entry(stat.status)
            .or_default() += stat.count;
    }
    let by_name = names
        .into_iter()
        .map(|(name, by_status)| NameCounts {
            name,
            total: by_status.values().sum(),
            by_status,
        })
        .collect();
    Ok(Overview {
        generated_at: now,
        by_status,
        by_name,
        throughput: throughput(manager, now).await?,
        workers: manager.workers(WorkerQuery::default()).await?,
    })
}

async fn throughput(
    manager: &TaskManager,
    now: DateTime<Utc>,
) -> Result<Vec<ThroughputBucket>, WebError> {
    let mut buckets = Vec::with_capacity(BUCKETS as usize);
    for index in (0..BUCKETS).rev() {
        let end = now - ChronoDuration::minutes(BUCKET_MINUTES * index);
        let start = end - ChronoDuration::minutes(BUCKET_MINUTES);
        buckets.push(ThroughputBucket {
            start,
            end,
            completed: count_events(manager, &COMPLETION_EVENTS, start, end).await?,
            failed: count_events(manager, &FAILURE_EVENTS, start, end).await?,
        });
    }
    Ok(buckets)
}

/// Events of these types with `start < event_time <= end` (an event of this very instant
/// counts), counted by the store (the page's `total`; one row is fetched).
pub(crate) async fn count_events(
    manager: &TaskManager,
    types: &[EventType],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<u64, WebError> {
    let query = EventQuery {
        event_types: types.to_vec(),
        // Both store bounds are inclusive; a microsecond (the finest stored precision) more
        // keeps an event on a bucket boundary out of the later bucket.
        started_after: Some(start + ChronoDuration::microseconds(1)),
        started_before: Some(end),
        ..EventQuery::default()
    };
    let page = manager.query_events(query, PageRequest::limit(1)).await?;
    Ok(page.total)
}

/// The task list's filter and paging, as query parameters. Blank values (an empty form
/// field) mean "any".
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub struct TaskFilter {
    /// Status.
    pub status: Option<String>,
    /// Handler name.
    pub name: Option<String>,
    /// Tag.
    pub tag: Option<String>,
    /// `async` or `cron`.
    #[serde(rename = "type")]
    pub task_type: Option<String>,
    /// Parent task id.
    pub parent_id: Option<String>,
    /// Workflow root id: the root and all its descendants.
    pub root_id: Option<String>,
    /// Last claiming worker.
    pub worker_id: Option<String>,
    /// Rows per page (1..=1000, default 50).
    pub limit: Option<String>,
    /// Rows to skip.
    pub offset: Option<String>,
    /// `desc` (newest first, the default) or `asc`.
    pub order: Option<String>,
}

/// Rows per page of the task list when none is asked for.
pub(crate) const DEFAULT_TASK_PAGE: u32 = 50;

impl TaskFilter {
    fn field(value: &Option<String>) -> Option<&str> {
        value.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }

    /// The field's value when given (for re-filling the form).
    pub(crate) fn value(value: &Option<String>) -> &str {
        Self::field(value).unwrap_or_default()
    }

    /// The store query and page this filter asks for.
    pub(crate) fn to_query(&self) -> Result<(TaskQuery, PageRequest), WebError> {
        let query = TaskQuery {
            name: Self::field(&self.name).map(str::to_owned),
            status: Self::field(&self.status)
                .map(|status| TaskStatus::parse_field(status, "status"))
                .transpose()
                .map_err(fib_flow::Error::from)?,
            task_type: Self::field(&self.task_type)
                .map(str::parse::<TaskType>)
                .transpose()
                .map_err(fib_flow::Error::from)?,
            tag: Self::field(&self.tag).map(str::to_owned),
            worker_id: Self::field(&self.worker_id).map(str::to_owned),
            parent_id: parse_id(Self::field(&self.parent_id), "parent_id")?,
            workflow_root_id: parse_id(Self::field(&self.root_id), "root_id")?,
            ..TaskQuery::default()
        };
        let limit = match Self::field(&self.limit) {
            Some(limit) => parse_number::<u32>(limit, "limit")?,
            None => DEFAULT_TASK_PAGE,
        };
        let offset = match Self::field(&self.offset) {
            Some(offset) => parse_number::<u64>(offset, "offset")?,
            None => 0,
        };
        let order = match Self::field(&self.order) {
            None | Some("desc") => Order::Desc,
            Some("asc") => Order::Asc,
            Some(other) => {
                return Err(WebError::BadParameter {
                    field: "order",
                    reason: format!("`{other}` is not allowed; allowed values are asc, desc"),
                });
            }
        };
        Ok((query, PageRequest::limit(limit).offset(offset).order(order)))
    }
}

fn parse_id(value: Option<&str>, field: &'static str) -> Result<Option<TaskId>, WebError> {
    value
        .map(|value| parse_number::<i64>(value, field).map(TaskId))
        .transpose()
}

fn parse_number<T: std::str::FromStr>(value: &str, field: &'static str) -> Result<T, WebError> {
    value.parse().map_err(|_| WebError::BadParameter {
        field,
        reason: format!("`{value}` is not a non-negative whole number"),
    })
}

/// One page of the task list.
pub(crate) async fn tasks(
    manager: &TaskManager,
    filter: &TaskFilter,
) -> Result<Page<Task>, WebError> {
    let (query, page) = filter.to_query()?;
    Ok(manager.query_tasks(query, page).await?)
}

/// A task with its newest events and attempts; `TaskNotFound` when there is no such task.
pub(crate) async fn task_detail(manager: &TaskManager, id: TaskId) -> Result<TaskAudit, WebError> {
    let audit = manager
        .task_audit(
            id,
            TaskAuditOptions {
                events: PageRequest::limit(DETAIL_ROWS),
                attempts: PageRequest::limit(DETAIL_ROWS),
            },
        )
        .await?;
    if audit.task.is_none() {
        return Err(WebError::TaskNotFound(id));
    }
    Ok(audit)
}

/// A workflow: its tasks and events, and the summary with the critical path.
#[derive(Debug, Serialize)]
pub struct Workflow {
    /// The root, its tasks (up to 1000) and events (up to 1000).
    pub audit: WorkflowAudit,
    /// The aggregate diagnosis: statuses, timings, failed tasks, the critical path.
    pub summary: WorkflowSummary,
}

/// Reads a workflow; `TaskNotFound` when the root does not exist.
pub(crate) async fn workflow(manager: &TaskManager, root: TaskId) -> Result<Workflow, WebError> {
    let audit = manager
        .workflow_audit(
            root,
            WorkflowAuditOptions {
                tasks: PageRequest::limit(WORKFLOW_TASKS),
                events: PageRequest::limit(WORKFLOW_TASKS),
            },
        )
        .await?;
    if audit.root_task.is_none() {
        return Err(WebError::TaskNotFound(root));
    }
    let summary = manager.workflow_audit_summary(root).await?;
    Ok(Workflow { audit, summary })
}

/// What an operator can do to one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Action {
    Retry,
    Cancel,
    Pause,
    Resume,
}

impl Action {
    pub(crate) const ALL: [Action; 4] =
        [Action::Retry, Action::Cancel, Action::Pause, Action::Resume];

    pub(crate) fn parse(value: &str) -> Result<Action, WebError> {
        Action::ALL
            .into_iter()
            .find(|action| action.as_str() == value)
            .ok_or_else(|| WebError::BadParameter {
                field: "action",
                reason: format!(
                    "`{value}` is not an action; allowed values are retry, cancel, pause, resume"
                ),
            })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Cancel => "cancel",
            Action::Pause => "pause",
            Action::Resume => "resume",
        }
    }

    /// The button's label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Action::Retry => "Retry",
            Action::Cancel => "Cancel",
            Action::Pause => "Pause",
            Action::Resume => "Resume",
        }
    }

    /// What confirming does, for the confirmation page.
    pub(crate) fn explanation(self) -> &'static str {
        match self {
            Action::Retry => {
                "The task goes back to pending now, from stage 0, with its whole retry budget; its id and history stay."
            }
            Action::Cancel => {
                "The task becomes permanently_failed; a running attempt is told to stop. This cannot be undone except by a retry."
            }
            Action::Pause => {
                "The task is paused: no worker claims it until it is resumed; a running attempt is told to stop."
            }
            Action::Resume => {
                "The task goes back to pending with its retry count reset, and runs when a worker claims it."
            }
        }
    }

    /// Whether the action applies to a task in `status` (the buttons a page offers; the
    /// engine decides for good).
    pub(crate) fn applies_to(self, status: TaskStatus) -> bool {
        use TaskStatus::*;
        match self {
            Action::Retry => matches!(status, PermanentlyFailed | Paused),
            Action::Cancel => !status.is_terminal(),
            Action::Pause => matches!(status, Pending | Running | Failed | Timeout),
            Action::Resume => matches!(status, Paused | Failed | Timeout | Running | Suspended),
        }
    }

    /// Performs the action; returns the task's new snapshot.
    pub(crate) async fn perform(
        self,
        manager: &TaskManager,
        id: TaskId,
        reason: Option<String>,
    ) -> Result<Task, WebError> {
        let reason = reason.filter(|reason| !reason.trim().is_empty());
        tracing::info!(task_id = %id, action = self.as_str(), ?reason, "dashboard action");
        let task = match self {
            Action::Retry => manager.retry_task(id, reason).await?,
            Action::Cancel => manager.cancel_task(id, reason).await?,
            Action::Pause => manager.pause_task(id).await?,
            Action::Resume => manager.resume_task(id, reason).await?,
        };
        Ok(task)
    }
}
