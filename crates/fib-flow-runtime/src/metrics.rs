//! The engine's metrics, through the `metrics` facade: nothing is recorded until the
//! application installs a recorder (a Prometheus exporter, say). Every name is here, and in
//! docs/semantics.md ("Metrics"). Counters and histograms carry the handler `name` as label.

use std::time::Duration;

use fib_flow_domain::query::TagStat;

/// Tasks submitted (enqueue, enqueue_many, cron registration that created one).
pub const ENQUEUED: &str = "fib_flow_tasks_enqueued_total";
/// Attempts claimed by this worker.
pub const CLAIMED: &str = "fib_flow_tasks_claimed_total";
/// Attempts whose handler returned a result (an async completion or a cron run).
pub const COMPLETED: &str = "fib_flow_tasks_completed_total";
/// Attempts whose handler failed, panicked or overran its deadline.
pub const FAILED: &str = "fib_flow_tasks_failed_total";
/// Retry attempts claimed (`retry_count > 0`).
pub const RETRIED: &str = "fib_flow_tasks_retried_total";
/// Running tasks this worker recovered from dead, superseded or lost owners.
pub const RECOVERED: &str = "fib_flow_tasks_recovered_total";
/// Attempts whose handler snoozed.
pub const SNOOZED: &str = "fib_flow_tasks_snoozed_total";
/// Handler run time, in seconds.
pub const EXECUTION_SECONDS: &str = "fib_flow_task_execution_seconds";
/// From due (`next_run_time`) to claimed, in seconds, on the engine's clock.
pub const PICKUP_SECONDS: &str = "fib_flow_task_pickup_seconds";
/// Pending tasks per name (due or not), sampled by each maintenance tick.
pub const QUEUE_DEPTH: &str = "fib_flow_queue_depth";

pub(crate) fn count(metric: &'static str, name: &str) {
    metrics::counter!(metric, "name" => name.to_owned()).increment(1);
}

pub(crate) fn recovered(count: u64) {
    if count > 0 {
        metrics::counter!(RECOVERED).increment(count);
    }
}

pub(crate) fn seconds(metric: &'static str, name: &str, elapsed: Duration) {
    metrics::histogram!(metric, "name" => name.to_owned()).record(elapsed.as_secs_f64());
}

/// Sets the queue-depth gauge of every name in `pending` (summed over tags) and of every name
/// in `known` (0 when it has nothing pending, so a drained queue reads 0, not its last depth).
pub(crate) fn queue_depth<'a>(pending: &[TagStat], known: impl IntoIterator<Item = &'a str>) {
    let mut depth: std::collections::BTreeMap<&str, u64> =
        known.into_iter().map(|name| (name, 0)).collect();
    for stat in pending {
        *depth.entry(stat.name.as_str()).or_default() += stat.count;
    }
    for (name, pending) in depth {
        metrics::gauge!(QUEUE_DEPTH, "name" => name.to_owned()).set(pending as f64);
    }
}
