//! Query shapes: typed filters, pagination and pages.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::event::EventType;
use crate::model::{AttemptOutcome, TaskId, TaskStatus, TaskType};

/// Sort direction; ties are always broken by `id` in the same direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Oldest first.
    #[default]
    Asc,
    /// Newest first.
    Desc,
}

/// Rows per page when the caller gives no limit.
pub const DEFAULT_PAGE_LIMIT: u32 = 100;
/// The largest limit a caller may ask for.
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// Pagination of a `query_*` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PageRequest {
    /// Rows per page (default 100, at most 1000).
    pub limit: Option<u32>,
    /// Rows to skip.
    pub offset: u64,
    /// Sort direction.
    pub order: Order,
}

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageBounds {
    /// Rows per page (1..=1000).
    pub limit: u32,
    /// Rows to skip.
    pub offset: u64,
    /// Sort direction.
    pub order: Order,
}

impl PageRequest {
    /// A request for `limit` rows.
    pub fn limit(limit: u32) -> Self {
        PageRequest {
            limit: Some(limit),
            ..PageRequest::default()
        }
    }

    /// Sets the offset.
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }

    /// Sets the order.
    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// Applies the default and checks the range.
    pub fn bounds(&self) -> Result<PageBounds, DomainError> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE_LIMIT);
        if limit == 0 || limit > MAX_PAGE_LIMIT {
            return Err(DomainError::InvalidOption {
                field: "limit",
                reason: format!("must be between 1 and {MAX_PAGE_LIMIT}, got {limit}"),
            });
        }
        if i64::try_from(self.offset).is_err() {
            return Err(DomainError::InvalidOption {
                field: "offset",
                reason: format!("must be at most {}", i64::MAX),
            });
        }
        Ok(PageBounds {
            limit,
            offset: self.offset,
            order: self.order,
        })
    }
}

/// One page of rows with the reference's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The rows.
    pub items: Vec<T>,
    /// Rows matching the filter in all.
    pub total: u64,
    /// The effective limit.
    pub limit: u32,
    /// The offset.
    pub offset: u64,
    /// Whether rows follow this page.
    pub has_more: bool,
}

impl<T> Page<T> {
    /// Builds a page and derives `has_more`.
    pub fn new(items: Vec<T>, total: u64, bounds: PageBounds) -> Self {
        let has_more = bounds.offset + (items.len() as u64) < total;
        Page {
            items,
            total,
            limit: bounds.limit,
            offset: bounds.offset,
            has_more,
        }
    }
}

/// Task filter of `get_tasks`/`query_tasks`: every given field must match (AND).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskQuery {
    /// Handler name.
    pub name: Option<String>,
    /// Status.
    pub status: Option<TaskStatus>,
    /// Type.
    #[serde(rename = "type")]
    pub task_type: Option<TaskType>,
    /// Tag.
    pub tag: Option<String>,
    /// Last claiming worker.
    pub worker_id: Option<String>,
    /// Parent.
    pub parent_id: Option<TaskId>,
    /// Root column (descendants only).
    pub root_id: Option<TaskId>,
    /// The whole workflow: the root itself and every descendant.
    pub workflow_root_id: Option<TaskId>,
    /// Suspension reason (suspended tasks).
    pub suspend_reason: Option<String>,
}

/// Filter of `delete_tasks`. An empty filter is refused unless `all` is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeleteFilter {
    /// Tag.
    pub tag: Option<String>,
    /// Status.
    pub status: Option<TaskStatus>,
    /// Handler name.
    pub name: Option<String>,
    /// These tasks only (with the other fields, those of them that also match).
    pub ids: Vec<TaskId>,
    /// Delete every task (required when no other field is set).
    pub all: bool,
}

impl DeleteFilter {
    /// Refuses an empty filter without `all`.
    pub fn validate(&self) -> Result<(), DomainError> {
        if self.tag.is_none()
            && self.status.is_none()
            && self.name.is_none()
            && self.ids.is_empty()
            && !self.all
        {
            return Err(DomainError::InvalidOption {
                field: "filter",
                reason: "an empty delete filter would delete every task; set ids, tag, status or name, or `all: true`".into(),
            });
        }
        Ok(())
    }
}

/// One row of `task_stats_by_tag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagStat {
    /// Tag (`None` groups untagged tasks).
    pub tag: Option<String>,
    /// Handler name.
    pub name: String,
    /// Status.
    pub status: TaskStatus,
    /// Tasks in the group.
    pub count: u64,
}

/// Event filter of `query_task_events`/`query_workflow_events`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventQuery {
    /// The task (set by `query_task_events`).
    pub task_id: Option<TaskId>,
    /// The workflow root (set by `query_workflow_events`).
    pub root_id: Option<TaskId>,
    /// Parent.
    pub parent_id: Option<TaskId>,
    /// Worker.
    pub worker_id: Option<String>,
    /// One event type.
    pub event_type: Option<EventType>,
    /// Any of these event types.
    pub event_types: Vec<EventType>,
    /// Attempt number.
    pub attempt: Option<i32>,
    /// Stage.
    pub stage: Option<i32>,
    /// `event_time >=`.
    pub started_after: Option<DateTime<Utc>>,
    /// `event_time <=`.
    pub started_before: Option<DateTime<Utc>>,
}

/// Attempt filter of `query_task_attempts`/`query_workflow_attempts`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AttemptQuery {
    /// The task (set by `query_task_attempts`; ordered by attempt number).
    pub task_id: Option<TaskId>,
    /// The workflow (set by `query_workflow_attempts`; ordered by start time).
    pub workflow_root_id: Option<TaskId>,
    /// Worker.
    pub worker_id: Option<String>,
    /// Outcome.
    pub outcome: Option<AttemptOutcome>,
    /// `started_at >=`.
    pub started_after: Option<DateTime<Utc>>,
    /// `started_at <=`.
    pub started_before: Option<DateTime<Utc>>,
    /// `ended_at >=`.
    pub ended_after: Option<DateTime<Utc>>,
    /// `ended_at <=`.
    pub ended_before: Option<DateTime<Utc>>,
    /// Only attempts still open.
    pub open_only: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delete_filter_needs_a_field_or_all_and_ids_count_as_one() {
        assert!(DeleteFilter::default().validate().is_err());
        let by_id = DeleteFilter {
            ids: vec![TaskId(3)],
            ..DeleteFilter::default()
        };
        assert_eq!(by_id.validate(), Ok(()));
        let all = DeleteFilter {
            all: true,
            ..DeleteFilter::default()
        };
        assert_eq!(all.validate(), Ok(()));
    }
}
