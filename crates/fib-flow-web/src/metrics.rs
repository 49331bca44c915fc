//! `/metrics`: Prometheus text of the database's figures, read fresh at every scrape, followed
//! by the engine's own metrics recorded in this process (when a Prometheus recorder is
//! installed, see [`crate::install_prometheus_recorder`]).
//!
//! The database figures are the same from whichever process serves them, so a dashboard that
//! runs no workers still reports queue depth, throughput, failures and latency; the engine's
//! counters and histograms are per process and come from the workers' own recorders.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use fib_flow::{AttemptQuery, EventType, Order, PageRequest, TaskManager, WorkerQuery};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::data::count_events;
use crate::error::WebError;

/// Pending tasks per name: the engine's gauge of the same name, read at scrape time.
pub const QUEUE_DEPTH: &str = "fib_flow_queue_depth";
/// Tasks per name and status.
pub const TASKS: &str = "fib_flow_tasks";
/// Registered workers per status.
pub const WORKERS: &str = "fib_flow_workers";
/// Events of the throughput and failure types in the last hour, per `event_type`.
pub const EVENTS_LAST_HOUR: &str = "fib_flow_events_last_hour";
/// Attempts that ended in the last hour.
pub const ATTEMPTS_LAST_HOUR: &str = "fib_flow_attempts_ended_last_hour";
/// Quantiles (0.5, 0.9, 0.99, 1) of the run time of the newest 1000 attempts that ended in
/// the last hour, in seconds.
pub const ATTEMPT_SECONDS_LAST_HOUR: &str = "fib_flow_attempt_duration_last_hour_seconds";

/// Every family this module renders from the database; the engine's rendering of a family of
/// the same name is left out so that each family appears once.
const DATABASE_FAMILIES: [&str; 6] = [
    QUEUE_DEPTH,
    TASKS,
    WORKERS,
    EVENTS_LAST_HOUR,
    ATTEMPTS_LAST_HOUR,
    ATTEMPT_SECONDS_LAST_HOUR,
];

/// The event types [`EVENTS_LAST_HOUR`] counts.
const COUNTED_EVENTS: [EventType; 6] = [
    EventType::TaskCompleted,
    EventType::TaskFailed,
    EventType::TaskTimedOut,
    EventType::TaskPermanentlyFailed,
    EventType::TaskRetryScheduled,
    EventType::TaskRecovered,
];

/// Most attempts the latency quantiles are computed over.
const LATENCY_SAMPLE: u32 = 1000;
const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 1.0];

/// The handle of the recorder this crate installed; the lock also keeps two first calls from
/// racing to install.
static RECORDER: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs metrics-exporter-prometheus's recorder as this process's `metrics` recorder (no
/// HTTP listener: the dashboard's `/metrics` renders it), so that the engine's counters and
/// histograms of any worker running in this process appear on `/metrics`. Idempotent: later
/// calls return the same handle. Fails when the application installed another recorder first;
/// pass that recorder's handle in [`crate::WebOptions::prometheus`] instead, if it is one.
pub fn install_prometheus_recorder() -> Result<PrometheusHandle, WebError> {
    let mut installed = RECORDER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|error| WebError::MetricsRecorder(error.to_string()))?;
    *installed = Some(handle.clone());
    Ok(handle)
}

/// The whole `/metrics` body.
pub(crate) async fn render(
    manager: &TaskManager,
    engine: Option<&PrometheusHandle>,
) -> Result<String, WebError> {
    let mut text = database_metrics(manager).await?;
    if let Some(handle) = engine {
        text.push_str(&without_families(&handle.render(), &DATABASE_FAMILIES));
    }
    Ok(text)
}

async fn database_metrics(manager: &TaskManager) -> Result<String, WebError> {
    let now = manager.now();
    let mut text = String::new();

    let mut by_name_status: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    let mut depth: BTreeMap<String, u64> = BTreeMap::new();
    for stat in manager.task_stats_by_tag(None, None).await? {
        *by_name_status
            .entry((stat.name.clone(), stat.status.as_str()))
            .or_default() += stat.count;
        let pending = depth.entry(stat.name).or_default();
        if stat.status == fib_flow::TaskStatus::Pending {
            *pending += stat.count;
        }
    }
    family(
        &mut text,
        QUEUE_DEPTH,
        "Pending tasks per name (due or not), read from the database at scrape time.",
        depth
            .iter()
            .map(|(name, count)| (vec![("name", name.as_str())], *count as f64)),
    );
    family(
        &mut text,
        TASKS,
        "Tasks per name and status, read from the database at scrape time.",
        by_name_status.iter().map(|((name, status), count)| {
            (
                vec![("name", name.as_str()), ("status", *status)],
                *count as f64,
            )
        }),
    );

    let mut workers: BTreeMap<&'static str, u64> = fib_flow::WorkerStatus::ALL
        .into_iter()
        .map(|status| (status.as_str(), 0))
        .collect();
    for worker in manager.workers(WorkerQuery::default()).await? {
        *workers.entry(worker.status.as_str()).or_default() += 1;
    }
    family(
        &mut text,
        WORKERS,
        "Registered workers per status.",
        workers
            .iter()
            .map(|(status, count)| (vec![("status", *status)], *count as f64)),
    );

    let hour_ago = now - ChronoDuration::hours(1);
    let mut events = Vec::with_capacity(COUNTED_EVENTS.len());
    for event_type in COUNTED_EVENTS {
        let count = count_events(manager, &[event_type], hour_ago, now).await?;
        events.push((event_type.as_str(), count));
    }
    family(
        &mut text,
        EVENTS_LAST_HOUR,
        "Events per type in the last hour: completions, attempt failures and timeouts, permanent failures, scheduled retries, recoveries.",
        events
            .iter()
            .map(|(event_type, count)| (vec![("event_type", *event_type)], *count as f64)),
    );

    let (ended, durations) = recent_attempt_durations(manager, hour_ago).await?;
    family(
        &mut text,
        ATTEMPTS_LAST_HOUR,
        "Attempts that ended in the last hour.",
        std::iter::once((Vec::new(), ended as f64)),
    );
    let quantiles: Vec<(String, f64)> = QUANTILES
        .iter()
        .filter_map(|q| quantile(&durations, *q).map(|value| (q.to_string(), value)))
        .collect();
    family(
        &mut text,
        ATTEMPT_SECONDS_LAST_HOUR,
        "Run time quantiles of the newest 1000 attempts that ended in the last hour, in seconds.",
        quantiles
            .iter()
            .map(|(q, value)| (vec![("quantile", q.as_str())], *value)),
    );
    Ok(text)
}

/// How many attempts ended since `since`, and the sorted durations (seconds) of the newest
/// [`LATENCY_SAMPLE`] of them.
async fn recent_attempt_durations(
    manager: &TaskManager,
    since: DateTime<Utc>,
) -> Result<(u64, Vec<f64>), WebError> {
    let query = AttemptQuery {
        ended_after: Some(since),
        ..AttemptQuery::default()
    };
    let newest = PageRequest::limit(LATENCY_SAMPLE).order(Order::Desc);
    let page = manager.query_attempts(query, newest).await?;
    let mut durations: Vec<f64> = page
        .items
        .iter()
        .filter_map(|attempt| {
            let ended = attempt.ended_at?;
            Some(((ended - attempt.started_at).num_milliseconds().max(0) as f64) / 1000.0)
        })
        .collect();
    durations.sort_by(f64::total_cmp);
    Ok((page.total, durations))
}

/// The nearest-rank quantile of sorted values; `None` when there are none.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied()
}

/// Appends one gauge family: HELP, TYPE and a sample per label set.
fn family<'a>(
    text: &mut String,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (Vec<(&'a str, &'a str)>, f64)>,
) {
    // Writing to a String cannot fail.
    let _ = writeln!(text, "# HELP {name} {help}");
    let _ = writeln!(text, "# TYPE {name} gauge");
    for (labels, value) in samples {
        text.push_str(name);
        if !labels.is_empty() {
            text.push('{');
            for (index, (label, label_value)) in labels.iter().enumerate() {
                if index > 0 {
                    text.push(',');
                }
                let _ = write!(text, "{label}=\"{}\"", escape_label_value(label_value));
            }
            text.push('}');
        }
        let _ = writeln!(text, " {value}");
    }
}

/// The exposition format's label value escapes: backslash, double quote and newline.
fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// The metric family a line of exposition text belongs to (`# HELP`/`# TYPE` lines name it;
/// a sample line starts with it, a histogram's `_bucket`/`_sum`/`_count` suffixes included).
fn line_family(line: &str) -> Option<&str> {
    if let Some(rest) = line
        .strip_prefix("# HELP ")
        .or_else(|| line.strip_prefix("# TYPE "))
    {
        return rest.split_whitespace().next();
    }
    if line.starts_with('#') {
        return None;
    }
    line.split(['{', ' ']).next()
}

/// `text` without the lines of the given families.
fn without_families(text: &str, families: &[&str]) -> String {
    text.lines()
        .filter(|line| {
            line_family(line).is_none_or(|name| {
                !families.iter().any(|family| {
                    name == *family
                        || ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|suffix| name.strip_suffix(suffix) == Some(family))
                })
            })
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        assert_eq!(escape_label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label_value("line\nbreak"), "line\\nbreak");
        assert_eq!(escape_label_value("plain"), "plain");
    }

    #[test]
    fn a_family_renders_help_type_and_labelled_samples() {
        let mut text = String::new();
        family(
            &mut text,
            "m",
            "Help.",
            vec![(vec![("name", "a\"b"), ("status", "pending")], 2.0)].into_iter(),
        );
        assert_eq!(
            text,
            "# HELP m Help.\n# TYPE m gauge\nm{name=\"a\\\"b\",status=\"pending\"} 2\n"
        );
    }

    #[test]
    fn engine_lines_of_database_families_are_left_out() {
        let engine = "# TYPE fib_flow_queue_depth gauge\nfib_flow_queue_depth{name=\"a\"} 3\n\
                      # TYPE fib_flow_tasks_claimed_total counter\nfib_flow_tasks_claimed_total{name=\"a\"} 7\n\
                      # HELP fib_flow_tasks_more x\nfib_flow_tasks_more 1\n";
        let kept = without_families(engine, &DATABASE_FAMILIES);
        assert_eq!(
            kept,
            "# TYPE fib_flow_tasks_claimed_total counter\nfib_flow_tasks_claimed_total{name=\"a\"} 7\n\
             # HELP fib_flow_tasks_more x\nfib_flow_tasks_more 1\n"
        );
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let values = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&values, 0.5), Some(2.0));
        assert_eq!(quantile(&values, 0.9), Some(4.0));
        assert_eq!(quantile(&values, 1.0), Some(4.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
