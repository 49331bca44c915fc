//! Options: the manager's (with the reference's names and units for config files), a handler's
//! registration defaults, a task's instance options, their resolution, and retention policies.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::limits;
use crate::model::{RetryBackoff, TaskStatus};
use crate::retry::RetryPolicy;
use crate::serde_units;

/// Manager configuration. Deserialises from the reference's option object: intervals in
/// milliseconds (`poll_interval`, `*_heartbeat_*`), task durations in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerOptions {
    /// Database URL (`dbConnection`): `sqlite::memory:`, `sqlite:PATH`, `sqlite://PATH`,
    /// `postgres://…`, `postgresql://…`, `psql://…`, `mysql://…`.
    #[serde(alias = "dbConnection")]
    pub db_connection: String,
    /// Optional backend name (`dbType`): `sqlite`, `postgres` (or `psql`), `mysql`; must agree
    /// with the URL when given.
    #[serde(alias = "dbType")]
    pub db_type: Option<String>,
    /// Idle wait between claim rounds when nothing is due (wake-ups cut it short).
    #[serde(with = "serde_units::millis")]
    pub poll_interval: Duration,
    /// Default total attempts, the first included.
    pub max_retries: u32,
    /// Default delay before a retry.
    #[serde(with = "serde_units::secs")]
    pub retry_interval: Duration,
    /// Default per-attempt time limit; `null` means none.
    #[serde(with = "serde_units::opt_secs")]
    pub timeout: Option<Duration>,
    /// Executions this worker runs at once (at least 1).
    pub max_concurrent_tasks: usize,
    /// Period of the running-task heartbeat and of the maintenance sweeps.
    #[serde(with = "serde_units::millis")]
    pub task_heartbeat_interval: Duration,
    /// A running task whose heartbeat is older than this is timed out.
    #[serde(with = "serde_units::millis")]
    pub task_heartbeat_timeout: Duration,
    /// This process's worker id; generated as `worker-<uuid>` when absent.
    pub worker_id: Option<String>,
    /// Stable logical node id for worker recovery.
    pub pod_id: Option<String>,
    /// Period of the worker-registry heartbeat.
    #[serde(with = "serde_units::millis")]
    pub worker_heartbeat_interval: Duration,
    /// Worker lease length.
    #[serde(with = "serde_units::millis")]
    pub worker_heartbeat_timeout: Duration,
    /// Reclaim running tasks of dead or superseded workers.
    pub recover_running_jobs: bool,
    /// Backward-compatible retention shortcut (seconds); `retention.expire_time` wins.
    #[serde(with = "serde_units::opt_secs")]
    pub expire_time: Option<Duration>,
    /// Explicit retention policy.
    pub retention: Option<RetentionConfig>,
    /// How often automatic retention runs (first run one cadence after start).
    #[serde(with = "serde_units::millis")]
    pub retention_interval: Duration,
    /// How long `stop()` lets in-flight executions finish before releasing them.
    #[serde(with = "serde_units::millis")]
    pub stop_timeout: Duration,
    /// Most tasks one claim round takes (bounded by free slots).
    pub claim_batch_size: usize,
    /// Database connections in the pool.
    pub pool_size: usize,
    /// How long to wait for a pooled connection.
    #[serde(with = "serde_units::millis")]
    pub acquire_timeout: Duration,
    /// Longest time a finished execution's outcome waits for the executions still running to
    /// finish too, so that they share one write transaction (0 writes at once). Ours.
    #[serde(with = "serde_units::millis")]
    pub outcome_linger: Duration,
    /// The queues this worker serves (`None`: every queue it has handlers for). A handler's
    /// queue is `HandlerOptions::queue` (default [`DEFAULT_QUEUE`]). Ours.
    pub queues: Option<Vec<String>>,
    /// Most executions at once per queue in this worker (within `max_concurrent_tasks`).
    /// Ours.
    pub queue_concurrency: std::collections::BTreeMap<String, usize>,
}

/// The queue of a handler registered without one.
pub const DEFAULT_QUEUE: &str = "default";

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            db_connection: String::new(),
            db_type: None,
            poll_interval: Duration::from_millis(1000),
            max_retries: 3,
            retry_interval: Duration::ZERO,
            timeout: Some(Duration::from_secs(60)),
            max_concurrent_tasks: 10,
            task_heartbeat_interval: Duration::from_millis(5000),
            task_heartbeat_timeout: Duration::from_millis(30_000),
            worker_id: None,
            pod_id: None,
            worker_heartbeat_interval: Duration::from_millis(5000),
            worker_heartbeat_timeout: Duration::from_millis(30_000),
            recover_running_jobs: true,
            expire_time: None,
            retention: None,
            retention_interval: Duration::from_secs(300),
            stop_timeout: Duration::from_secs(30),
            claim_batch_size: 32,
            pool_size: 5,
            acquire_timeout: Duration::from_secs(30),
            outcome_linger: Duration::from_millis(2),
            queues: None,
            queue_concurrency: std::collections::BTreeMap::new(),
        }
    }
}

/// The shortest per-attempt time limit: storage keeps whole milliseconds, and a shorter limit
/// was stored as 0 ms, which timed the task out at once.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// Rejects a per-attempt limit below [`MIN_TIMEOUT`] (zero included). Fractions of a
/// millisecond above it are rounded up when stored ([`crate::time::duration_millis`]).
fn check_timeout(timeout: Option<Duration>) -> Result<(), DomainError> {
    match timeout {
        Some(timeout) if timeout < MIN_TIMEOUT => Err(invalid(
            "timeout",
            format!(
                "must be at least 1 ms (the storage resolution), or None for no limit; got {timeout:?}"
            ),
        )),
        _ => Ok(()),
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DomainError {
    DomainError::InvalidOption {
        field,
        reason: reason.into(),
    }
}

impl ManagerOptions {
    /// Options for a database URL, everything else at its default.
    pub fn new(db_connection: impl Into<String>) -> Self {
        ManagerOptions {
            db_connection: db_connection.into(),
            ..ManagerOptions::default()
        }
    }

    /// Checks every option; the first problem is returned as a typed error naming the field.
    pub fn validate(&self) -> Result<(), DomainError> {
        if self.db_connection.trim().is_empty() {
            return Err(invalid("db_connection", "a database URL is required"));
        }
        if self.poll_interval.is_zero() {
            return Err(invalid("poll_interval", "must be greater than zero"));
        }
        if self.max_concurrent_tasks == 0 {
            return Err(invalid("max_concurrent_tasks", "must be at least 1"));
        }
        if self.task_heartbeat_interval.is_zero() {
            return Err(invalid(
                "task_heartbeat_interval",
                "must be greater than zero",
            ));
        }
        if self.task_heartbeat_timeout <= self.task_heartbeat_interval {
            return Err(invalid(
                "task_heartbeat_timeout",
                "must be greater than task_heartbeat_interval",
            ));
        }
        if self.worker_heartbeat_interval.is_zero() {
            return Err(invalid(
                "worker_heartbeat_interval",
                "must be greater than zero",
            ));
        }
        if self.worker_heartbeat_timeout <= self.worker_heartbeat_interval {
            return Err(invalid(
                "worker_heartbeat_timeout",
                "must be greater than worker_heartbeat_interval",
            ));
        }
        check_timeout(self.timeout)?;
        // Checked here, before `start()`: the ids are written into VARCHAR(255) columns by
        // every claim, so a longer one would make every claim fail on PostgreSQL and MySQL.
        if let Some(worker_id) = &self.worker_id {
            limits::check_name("worker_id", worker_id)?;
        }
        if let Some(pod_id) = &self.pod_id {
            limits::check_name("pod_id", pod_id)?;
        }
        if self.retention_interval.is_zero() {
            return Err(invalid("retention_interval", "must be greater than zero"));
        }
        if let Some(queues) = &self.queues {
            if queues.is_empty() {
                return Err(invalid(
                    "queues",
                    "must name at least one queue when given (leave it unset to serve every queue)",
                ));
            }
            for queue in queues {
                limits::check_name("queues", queue)?;
            }
        }
        for (queue, limit) in &self.queue_concurrency {
            limits::check_name("queue_concurrency", queue)?;
            if *limit == 0 {
                return Err(invalid(
                    "queue_concurrency",
                    format!("the limit of queue {queue:?} must be at least 1"),
                ));
            }
        }
        if self.claim_batch_size == 0 {
            return Err(invalid("claim_batch_size", "must be at least 1"));
        }
        if self.pool_size == 0 {
            return Err(invalid("pool_size", "must be at least 1"));
        }
        if self.acquire_timeout.is_zero() {
            return Err(invalid("acquire_timeout", "must be greater than zero"));
        }
        self.retention_policy()?;
        Ok(())
    }

    /// The effective retention policy: `retention` overlaid on `expire_time`, with the
    /// reference's defaults (1 hour for `sqlite::memory:`, else 1 day; statuses completed and
    /// permanently_failed). `None` when retention is disabled (`expire_time` of zero).
    pub fn retention_policy(&self) -> Result<Option<RetentionPolicy>, DomainError> {
        let config = self.retention.clone().unwrap_or_default();
        let default_expiry = if self.db_connection == "sqlite::memory:" {
            Duration::from_secs(3600)
        } else {
            Duration::from_secs(86_400)
        };
        let expire_time = config
            .expire_time
            .or(self.expire_time)
            .unwrap_or(default_expiry);
        if expire_time.is_zero() {
            return Ok(None);
        }
        let statuses = config
            .statuses
            .unwrap_or_else(|| RetentionPolicy::DEFAULT_STATUSES.to_vec());
        RetentionPolicy::new(expire_time, statuses).map(Some)
    }

    /// The global retry policy: `max_retries` attempts, `retry_interval` apart, fixed (a
    /// handler or a task may choose exponential back-off).
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::fixed(self.max_retries, self.retry_interval)
    }

    /// The global task defaults these options imply.
    pub fn task_defaults(&self) -> TaskDefaults {
        TaskDefaults {
            timeout: self.timeout,
            priority: 0,
            retry: self.retry_policy(),
        }
    }
}

/// The retention part of the options, as written in a config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Age (seconds since last activity) after which eligible tasks are deleted.
    #[serde(with = "serde_units::opt_secs")]
    pub expire_time: Option<Duration>,
    /// Eligible statuses.
    pub statuses: Option<Vec<TaskStatus>>,
}

/// A validated retention policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetentionPolicy {
    /// Tasks inactive for longer than this are eligible.
    #[serde(with = "serde_units::secs")]
    pub expire_time: Duration,
    /// Eligible statuses (a non-empty subset of completed, permanently_failed, paused).
    pub statuses: Vec<TaskStatus>,
}

impl RetentionPolicy {
    /// Statuses retention may delete.
    pub const ALLOWED_STATUSES: [TaskStatus; 3] = [
        TaskStatus::Completed,
        TaskStatus::PermanentlyFailed,
        TaskStatus::Paused,
    ];
    /// Statuses deleted when the policy names none.
    pub const DEFAULT_STATUSES: [TaskStatus; 2] =
        [TaskStatus::Completed, TaskStatus::PermanentlyFailed];

    /// Validates and normalises (duplicates removed, sorted) a policy.
    pub fn new(expire_time: Duration, statuses: Vec<TaskStatus>) -> Result<Self, DomainError> {
        if expire_time.is_zero() {
            return Err(invalid(
                "retention.expire_time",
                "must be greater than zero",
            ));
        }
        if statuses.is_empty() {
            return Err(invalid(
                "retention.statuses",
                "must not be empty; allowed values are completed, permanently_failed, paused",
            ));
        }
        if let Some(status) = statuses
            .iter()
            .find(|status| !Self::ALLOWED_STATUSES.contains(status))
        {
            return Err(invalid(
                "retention.statuses",
                format!(
                    "`{status}` cannot be retained; allowed values are completed, permanently_failed, paused"
                ),
            ));
        }
        let mut statuses = statuses;
        statuses.sort();
        statuses.dedup();
        Ok(RetentionPolicy {
            expire_time,
            statuses,
        })
    }
}

/// The global defaults every task starts from.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskDefaults {
    /// Per-attempt time limit.
    pub timeout: Option<Duration>,
    /// Priority.
    pub priority: i32,
    /// Attempts and the delay before each retry.
    pub retry: RetryPolicy,
}

/// Defaults given when a handler is registered; each overrides the global value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HandlerOptions {
    /// Per-attempt time limit; `Some(None)` means unlimited.
    #[serde(with = "serde_units::opt_opt_secs")]
    pub timeout: Option<Option<Duration>>,
    /// Total attempts.
    pub max_retries: Option<u32>,
    /// Retry delay.
    #[serde(with = "serde_units::opt_secs")]
    pub retry_interval: Option<Duration>,
    /// Priority.
    pub priority: Option<i32>,
    /// At most this many executions of this handler at once in this worker.
    pub max_concurrent_tasks: Option<usize>,
    /// Retry growth.
    pub retry_backoff: Option<RetryBackoff>,
    /// Human description (`get_task_info`).
    pub description: Option<String>,
    /// The queue this handler's tasks belong to (default [`DEFAULT_QUEUE`]): a worker serves
    /// the queues of `ManagerOptions::queues` and limits each by `queue_concurrency`. Ours.
    pub queue: Option<String>,
}

impl HandlerOptions {
    /// Sets `max_retries`, `retry_interval` and `retry_backoff` from one policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.max_retries = Some(policy.max_attempts);
        self.retry_interval = Some(policy.interval);
        self.retry_backoff = Some(policy.backoff);
        self
    }

    /// The handler's queue.
    pub fn queue_name(&self) -> &str {
        self.queue.as_deref().unwrap_or(DEFAULT_QUEUE)
    }

    /// Rejects a zero per-type concurrency limit and a zero timeout.
    pub fn validate(&self) -> Result<(), DomainError> {
        if self.max_concurrent_tasks == Some(0) {
            return Err(invalid(
                "max_concurrent_tasks",
                "must be at least 1 when given",
            ));
        }
        if let Some(timeout) = self.timeout {
            check_timeout(timeout)?;
        }
        if let Some(queue) = &self.queue {
            limits::check_name("queue", queue)?;
        }
        Ok(())
    }
}

/// Options of one submitted task; each overrides the handler's and then the global value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskOptions {
    /// Delay before the task is due (async tasks only).
    #[serde(with = "serde_units::opt_secs")]
    pub delay: Option<Duration>,
    /// Priority (higher first).
    pub priority: Option<i32>,
    /// Tag.
    pub tag: Option<String>,
    /// Per-attempt time limit; `Some(None)` means unlimited.
    #[serde(with = "serde_units::opt_opt_secs")]
    pub timeout: Option<Option<Duration>>,
    /// Total attempts.
    pub max_retries: Option<u32>,
    /// Retry delay.
    #[serde(with = "serde_units::opt_secs")]
    pub retry_interval: Option<Duration>,
    /// Retry growth.
    pub retry_backoff: Option<RetryBackoff>,
    /// IANA time zone for a cron schedule (UTC when absent).
    pub timezone: Option<String>,
    /// The key of a cron schedule (cron tasks only; default: the handler name). One schedule
    /// per key: registering it again updates it. Ours.
    pub cron_key: Option<String>,
    /// At most one unfinished task per key (async tasks only): a second `enqueue` with the
    /// same key returns the existing task. Ours.
    pub unique_key: Option<String>,
}

impl TaskOptions {
    /// Sets `delay`.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
    /// Sets `priority`.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }
    /// Sets `tag`.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }
    /// Sets `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(Some(timeout));
        self
    }
    /// Removes the per-attempt time limit.
    pub fn no_timeout(mut self) -> Self {
        self.timeout = Some(None);
        self
    }
    /// Sets `max_retries` (total attempts).
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = Some(max_retries);
        self
    }
    /// Sets `retry_interval`.
    pub fn retry_interval(mut self, retry_interval: Duration) -> Self {
        self.retry_interval = Some(retry_interval);
        self
    }
    /// Sets exponential or fixed retry back-off.
    pub fn retry_backoff(mut self, retry_backoff: RetryBackoff) -> Self {
        self.retry_backoff = Some(retry_backoff);
        self
    }
    /// Sets `max_retries`, `retry_interval` and `retry_backoff` from one policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.max_retries = Some(policy.max_attempts);
        self.retry_interval = Some(policy.interval);
        self.retry_backoff = Some(policy.backoff);
        self
    }
    /// Sets the cron time zone.
    pub fn timezone(mut self, timezone: impl Into<String>) -> Self {
        self.timezone = Some(timezone.into());
        self
    }
    /// Sets the cron schedule's key (several schedules of one handler need one each).
    pub fn cron_key(mut self, key: impl Into<String>) -> Self {
        self.cron_key = Some(key.into());
        self
    }
    /// Makes the task unique among unfinished tasks with this key.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }
}

/// Options after resolution: instance > handler > global.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedOptions {
    /// Priority.
    pub priority: i32,
    /// Per-attempt limit.
    pub timeout: Option<Duration>,
    /// Attempts (at least 1, at most `i32::MAX`: what a task row can store) and the delay
    /// before each retry.
    pub retry: RetryPolicy,
}

impl ResolvedOptions {
    /// `retry.max_attempts` as a task row stores it (`max_retries`).
    pub fn stored_max_retries(&self) -> i32 {
        i32::try_from(self.retry.max_attempts).unwrap_or(i32::MAX)
    }
}

/// Resolves one task's options: each field from the instance, else the handler, else global;
/// the retry policy field by field as well (a task may set only its interval). A
/// `max_retries` of 0 means one attempt, like 1.
pub fn resolve(
    global: &TaskDefaults,
    handler: &HandlerOptions,
    instance: &TaskOptions,
) -> Result<ResolvedOptions, DomainError> {
    let timeout = instance
        .timeout
        .or(handler.timeout)
        .unwrap_or(global.timeout);
    check_timeout(timeout)?;
    let max_attempts = instance
        .max_retries
        .or(handler.max_retries)
        .unwrap_or(global.retry.max_attempts)
        .max(1);
    if i32::try_from(max_attempts).is_err() {
        return Err(invalid(
            "max_retries",
            format!("must be at most {}", i32::MAX),
        ));
    }
    Ok(ResolvedOptions {
        priority: instance
            .priority
            .or(handler.priority)
            .unwrap_or(global.priority),
        timeout,
        retry: RetryPolicy {
            max_attempts,
            interval: instance
                .retry_interval
                .or(handler.retry_interval)
                .unwrap_or(global.retry.interval),
            backoff: instance
                .retry_backoff
                .or(handler.retry_backoff)
                .unwrap_or(global.retry.backoff),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_policy_resolves_field_by_field() {
        let global = ManagerOptions {
            max_retries: 4,
            retry_interval: Duration::from_secs(2),
            ..ManagerOptions::default()
        }
        .task_defaults();
        assert_eq!(global.retry, RetryPolicy::fixed(4, Duration::from_secs(2)));
        let handler = HandlerOptions::default().retry(RetryPolicy::exponential(6, Duration::ZERO));
        let instance = TaskOptions::default().retry_interval(Duration::from_secs(9));
        let resolved = resolve(&global, &handler, &instance).expect("valid options");
        assert_eq!(
            resolved.retry,
            RetryPolicy::exponential(6, Duration::from_secs(9)),
            "the instance's interval, the handler's attempts and back-off"
        );
        assert_eq!(resolved.stored_max_retries(), 6);
        let resolved = resolve(&global, &HandlerOptions::default(), &TaskOptions::default())
            .expect("valid options");
        assert_eq!(
            resolved.retry, global.retry,
            "nothing set: the global policy"
        );
    }

    #[test]
    fn a_task_policy_overrides_every_retry_field() {
        let global = ManagerOptions::default().task_defaults();
        let handler = HandlerOptions::default().retry(RetryPolicy::exponential(6, Duration::ZERO));
        let policy = RetryPolicy::fixed(2, Duration::from_millis(1500));
        let resolved = resolve(&global, &handler, &TaskOptions::default().retry(policy))
            .expect("valid options");
        assert_eq!(resolved.retry, policy);
    }

    #[test]
    fn zero_attempts_resolve_to_one_and_too_many_are_refused() {
        let global = ManagerOptions::default().task_defaults();
        let none = TaskOptions::default().max_retries(0);
        let resolved = resolve(&global, &HandlerOptions::default(), &none).expect("valid");
        assert_eq!(resolved.retry.max_attempts, 1);
        let huge = TaskOptions::default().max_retries(u32::MAX);
        let error = resolve(&global, &HandlerOptions::default(), &huge)
            .expect_err("more attempts than a row can store");
        assert!(matches!(
            error,
            DomainError::InvalidOption {
                field: "max_retries",
                ..
            }
        ));
    }

    #[test]
    fn config_durations_read_numbers_in_their_units_or_strings_with_a_unit() {
        let numeric: ManagerOptions = serde_json::from_value(serde_json::json!({
            "db_connection": "sqlite::memory:",
            "poll_interval": 250,
            "retry_interval": 1.5,
            "timeout": null,
        }))
        .expect("the reference's numeric form");
        let text: ManagerOptions = serde_json::from_value(serde_json::json!({
            "db_connection": "sqlite::memory:",
            "poll_interval": "250ms",
            "retry_interval": "1s 500ms",
            "timeout": null,
        }))
        .expect("humantime strings");
        assert_eq!(numeric, text);
        assert_eq!(text.poll_interval, Duration::from_millis(250));
        assert_eq!(text.retry_interval, Duration::from_millis(1500));
        assert_eq!(text.timeout, None);
        let options: TaskOptions =
            serde_json::from_value(serde_json::json!({"delay": "5m", "timeout": 30}))
                .expect("mixed forms");
        assert_eq!(options.delay, Some(Duration::from_secs(300)));
        assert_eq!(options.timeout, Some(Some(Duration::from_secs(30))));
    }
}
