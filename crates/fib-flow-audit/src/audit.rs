//! The [`Audit`] service: paged queries and audit views over the [`TaskStore`] port.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use fib_flow_domain::query::{
    AttemptQuery, EventQuery, MAX_PAGE_LIMIT, Order, Page, PageBounds, PageRequest, TaskQuery,
};
use fib_flow_domain::{Task, TaskAttempt, TaskEvent, TaskId};
use fib_flow_ports::{PortError, TaskStore};
use serde::{Deserialize, Serialize};

use crate::error::AuditError;
use crate::summary::{WorkflowSummary, summarize};

/// Page options of [`Audit::task_audit`] (the reference's `{ events, attempts }`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskAuditOptions {
    /// The page of the task's events (ordered by `event_time, id`).
    pub events: PageRequest,
    /// The page of the task's attempts (ordered by `attempt, id`).
    pub attempts: PageRequest,
}

/// Page options of [`Audit::workflow_audit`] (the reference's `{ tasks, events }`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkflowAuditOptions {
    /// The page of the workflow's tasks (ordered by `created_at, id`).
    pub tasks: PageRequest,
    /// The page of the workflow's events (ordered by `event_time, id`).
    pub events: PageRequest,
}

/// One task with a page of its events and a page of its attempts (`getTaskAudit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAudit {
    /// The task's current snapshot; `None` when it does not exist (or retention deleted it).
    pub task: Option<Task>,
    /// A page of the task's events.
    pub events: Page<TaskEvent>,
    /// A page of the task's attempts.
    pub attempts: Page<TaskAttempt>,
}

/// A workflow root with a page of the workflow's tasks and a page of its events
/// (`getWorkflowAudit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowAudit {
    /// The root's current snapshot; `None` when it does not exist (or retention deleted it).
    pub root_task: Option<Task>,
    /// A page of the workflow's tasks: the root and every descendant.
    pub tasks: Page<Task>,
    /// A page of the workflow's events: the root's and every descendant's.
    pub events: Page<TaskEvent>,
}

/// The audit query layer: read-only views of tasks, events and attempts.
///
/// Every page request is validated here ([`PageRequest::bounds`]: default limit 100, at most
/// 1000) before the store is asked, so an invalid request never reaches the database. The
/// store does the filtering and ordering; this type only forces the scoping id of each query,
/// assembles the composite views and aggregates the workflow summary.
#[derive(Clone)]
pub struct Audit {
    store: Arc<dyn TaskStore>,
}

impl fmt::Debug for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Audit")
            .field("backend", &self.store.backend())
            .finish()
    }
}

impl Audit {
    /// An audit layer reading through `store`.
    pub fn new(store: Arc<dyn TaskStore>) -> Self {
        Audit { store }
    }

    /// A page of tasks matching `query`, ordered by `created_at, id` (`queryTasks`).
    pub async fn query_tasks(
        &self,
        query: TaskQuery,
        page: PageRequest,
    ) -> Result<Page<Task>, AuditError> {
        let bounds = page.bounds()?;
        Ok(self.store.query_tasks(query, bounds).await?)
    }

    /// A page of one task's events, ordered by `event_time, id` (`queryTaskEvents`).
    ///
    /// `query.task_id` is replaced by `task_id`; the other filters apply as given.
    pub async fn query_task_events(
        &self,
        task_id: TaskId,
        mut query: EventQuery,
        page: PageRequest,
    ) -> Result<Page<TaskEvent>, AuditError> {
        let bounds = page.bounds()?;
        query.task_id = Some(task_id);
        Ok(self.store.query_events(query, bounds).await?)
    }

    /// A page of events across tasks, filtered by the query's own fields (type, worker,
    /// time window, …; none set = every event), ordered by `event_time, id`. What an
    /// operator's view of "what happened in the last hour" reads.
    pub async fn query_events(
        &self,
        query: EventQuery,
        page: PageRequest,
    ) -> Result<Page<TaskEvent>, AuditError> {
        let bounds = page.bounds()?;
        Ok(self.store.query_events(query, bounds).await?)
    }

    /// A page of attempts across tasks, filtered by the query's own fields (worker, outcome,
    /// time window, …).
    pub async fn query_attempts(
        &self,
        query: AttemptQuery,
        page: PageRequest,
    ) -> Result<Page<TaskAttempt>, AuditError> {
        let bounds = page.bounds()?;
        Ok(self.store.query_attempts(query, bounds).await?)
    }

    /// A page of a workflow's events — the root's own and every descendant's — ordered by
    /// `event_time, id` (`queryWorkflowEvents`).
    ///
    /// `query.root_id` is replaced by `root_id`; the other filters apply as given.
    pub async fn query_workflow_events(
        &self,
        root_id: TaskId,
        mut query: EventQuery,
        page: PageRequest,
    ) -> Result<Page<TaskEvent>, AuditError> {
        let bounds = page.bounds()?;
        query.root_id = Some(root_id);
        Ok(self.store.query_events(query, bounds).await?)
    }

    /// A page of one task's attempts, ordered by `attempt, id` (`queryTaskAttempts`).
    ///
    /// `query.task_id` is replaced by `task_id`; the other filters apply as given.
    pub async fn query_task_attempts(
        &self,
        task_id: TaskId,
        mut query: AttemptQuery,
        page: PageRequest,
    ) -> Result<Page<TaskAttempt>, AuditError> {
        let bounds = page.bounds()?;
        query.task_id = Some(task_id);
        Ok(self.store.query_attempts(query, bounds).await?)
    }

    /// A page of the attempts of every task of a workflow (`queryWorkflowAttempts`).
    ///
    /// Ordered by `started_at, id` — chronologically, unlike the reference, which grouped all
    /// first attempts before all second attempts. `query.workflow_root_id` is replaced by
    /// `root_id`; the other filters apply as given.
    pub async fn query_workflow_attempts(
        &self,
        root_id: TaskId,
        mut query: AttemptQuery,
        page: PageRequest,
    ) -> Result<Page<TaskAttempt>, AuditError> {
        let bounds = page.bounds()?;
        query.workflow_root_id = Some(root_id);
        Ok(self.store.query_attempts(query, bounds).await?)
    }

    /// The task's snapshot with a page of its events and a page of its attempts
    /// (`getTaskAudit`). A missing task gives `task: None` and whatever audit rows remain.
    pub async fn task_audit(
        &self,
        task_id: TaskId,
        options: TaskAuditOptions,
    ) -> Result<TaskAudit, AuditError> {
        // Both pages are validated before the first read, so a bad option costs no query.
        let events_bounds = options.events.bounds()?;
        let attempts_bounds = options.attempts.bounds()?;
        let task = self.store.get_task(task_id).await?;
        let events = self
            .store
            .query_events(
                EventQuery {
                    task_id: Some(task_id),
                    ..EventQuery::default()
                },
                events_bounds,
            )
            .await?;
        let attempts = self
            .store
            .query_attempts(
                AttemptQuery {
                    task_id: Some(task_id),
                    ..AttemptQuery::default()
                },
                attempts_bounds,
            )
            .await?;
        Ok(TaskAudit {
            task,
            events,
            attempts,
        })
    }

    /// The root's snapshot with a page of the workflow's tasks and a page of its events
    /// (`getWorkflowAudit`). After retention deleted the workflow: `root_task: None` and empty
    /// pages.
    pub async fn workflow_audit(
        &self,
        root_id: TaskId,
        options: WorkflowAuditOptions,
    ) -> Result<WorkflowAudit, AuditError> {
        let tasks_bounds = options.tasks.bounds()?;
        let events_bounds = options.events.bounds()?;
        let root_task = self.store.get_task(root_id).await?;
        let tasks = self
            .store
            .query_tasks(workflow_tasks(root_id), tasks_bounds)
            .await?;
        let events = self
            .store
            .query_events(workflow_events(root_id), events_bounds)
            .await?;
        Ok(WorkflowAudit {
            root_task,
            tasks,
            events,
        })
    }

    /// The aggregate diagnosis of a workflow (`getWorkflowAuditSummary`); see [`summarize`].
    ///
    /// Reads the whole workflow — every task, attempt and event — through the store, 1000 rows
    /// per round trip, then aggregates in memory. Meant for diagnosis, not for hot paths. The
    /// pages are separate reads, not one snapshot: rows written while the summary loads may or
    /// may not be included (each row is counted at most once).
    pub async fn workflow_audit_summary(
        &self,
        root_id: TaskId,
    ) -> Result<WorkflowSummary, AuditError> {
        let root = self.store.get_task(root_id).await?;
        let tasks = load_all(
            |bounds| self.store.query_tasks(workflow_tasks(root_id), bounds),
            |task: &Task| task.id,
        )
        .await?;
        let attempts = load_all(
            |bounds| {
                let query = AttemptQuery {
                    workflow_root_id: Some(root_id),
                    ..AttemptQuery::default()
                };
                self.store.query_attempts(query, bounds)
            },
            |attempt: &TaskAttempt| attempt.id,
        )
        .await?;
        let events = load_all(
            |bounds| self.store.query_events(workflow_events(root_id), bounds),
            |event: &TaskEvent| event.id,
        )
        .await?;
        Ok(summarize(root.as_ref(), &tasks, &attempts, &events))
    }
}

/// The root and every descendant.
fn workflow_tasks(root_id: TaskId) -> TaskQuery {
    TaskQuery {
        workflow_root_id: Some(root_id),
        ..TaskQuery::default()
    }
}

/// The root's own events and every descendant's (all carry the root's id in `root_id`).
fn workflow_events(root_id: TaskId) -> EventQuery {
    EventQuery {
        root_id: Some(root_id),
        ..EventQuery::default()
    }
}

/// Reads every row of a query, [`MAX_PAGE_LIMIT`] rows per round trip, in ascending order.
///
/// Offset paging over separate reads can see a row twice when rows are inserted before the
/// current offset between two reads (the store's orders put new rows last, so this is rare);
/// rows are therefore de-duplicated by `key`, keeping the first copy.
async fn load_all<T, K, F, Fut>(mut fetch: F, key: impl Fn(&T) -> K) -> Result<Vec<T>, PortError>
where
    K: Eq + Hash,
    F: FnMut(PageBounds) -> Fut,
    Fut: Future<Output = Result<Page<T>, PortError>>,
{
    let mut rows = Vec::new();
    let mut seen = HashSet::new();
    let mut offset = 0u64;
    loop {
        let page = fetch(PageBounds {
            limit: MAX_PAGE_LIMIT,
            offset,
            order: Order::Asc,
        })
        .await?;
        let fetched = page.items.len() as u64;
        rows.extend(page.items.into_iter().filter(|row| seen.insert(key(row))));
        offset += fetched;
        // An empty page ends the loop even if `has_more` claims otherwise (rows deleted
        // meanwhile), so a shrinking table cannot make this spin.
        if fetched == 0 || !page.has_more {
            return Ok(rows);
        }
    }
}
