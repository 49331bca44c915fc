//! The audit query layer of fib-flow.
//!
//! Owns: the paged task, event and attempt queries (`queryTasks`, `queryTaskEvents`,
//! `queryWorkflowEvents`, `queryTaskAttempts`, `queryWorkflowAttempts`), the task and workflow
//! audit views (`getTaskAudit`, `getWorkflowAudit`) and the workflow summary
//! (`getWorkflowAuditSummary`, a pure function in [`summary`]). Page requests are validated here
//! (default limit 100, at most 1000) before any read; results serialise with serde to the
//! reference's objects, field by field.
//!
//! Must not: run SQL or change state. It reads only through the [`TaskStore`] port (the SQL,
//! filters and orderings live in the adapters) and never writes; it depends on the domain and
//! ports crates only.
//!
//! [`TaskStore`]: fib_flow_ports::TaskStore

mod audit;
mod error;
pub mod summary;

pub use audit::{Audit, TaskAudit, TaskAuditOptions, WorkflowAudit, WorkflowAuditOptions};
pub use error::AuditError;
pub use summary::{
    CriticalPath, CriticalPathNode, FailedTask, StageTiming, SummaryTiming, SummaryTotals,
    TimedAttempt, WorkflowSummary, summarize,
};
