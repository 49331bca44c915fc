//! Task submission: one-off tasks (`enqueue` and its variants, typed jobs, tasks written
//! through the caller's transaction) and cron schedules. Options resolve instance > handler >
//! global ([`fib_flow_domain::options::resolve`]); a submission that created something wakes
//! the claim loop.

use chrono::{DateTime, Utc};
use fib_flow_domain::options;
use fib_flow_domain::{
    CronSchedule, DomainError, NewTask, Task, TaskId, TaskOptions, TaskType, time,
};
use fib_flow_ports::{CronChange, Enqueued, Job, PortError};
use serde_json::Value;

use crate::engine::{Engine, Inner};
use crate::error::RuntimeError;
use crate::handlers::unknown;
use crate::metrics;

impl Engine {
    /// Submits a one-off task. Options resolve instance > handler > global; due at
    /// `now + delay`. Wakes the claim loop.
    pub async fn enqueue(
        &self,
        name: &str,
        payload: Value,
        options: TaskOptions,
    ) -> Result<TaskId, RuntimeError> {
        Ok(self.enqueue_unique(name, payload, options).await?.id)
    }

    /// [`Engine::enqueue`], telling whether the task is new: with `options.unique_key` set, an
    /// unfinished task with the same key is returned instead of a new one (`created: false`).
    /// The database enforces the key, so this holds across processes.
    pub async fn enqueue_unique(
        &self,
        name: &str,
        payload: Value,
        options: TaskOptions,
    ) -> Result<Enqueued, RuntimeError> {
        let now = self.inner.clock.now();
        let task = self.inner.new_async_task(name, payload, &options, now)?;
        let enqueued = match options.unique_key {
            Some(key) => self.inner.store.insert_unique(task, key).await?,
            None => {
                let ids = self.inner.store.insert_tasks(vec![task]).await?;
                let id = ids.into_iter().next().ok_or_else(|| {
                    RuntimeError::Store(PortError::Database {
                        backend: self.inner.store.backend(),
                        message: "insert_tasks returned no id for one task".into(),
                    })
                })?;
                Enqueued { id, created: true }
            }
        };
        if enqueued.created {
            metrics::count(metrics::ENQUEUED, name);
            self.inner.wake.notify_one();
        }
        Ok(enqueued)
    }

    /// Resolves and validates a one-off task as [`Engine::enqueue`] would, without writing
    /// it: for callers that insert it themselves (inside their own transaction). Wake-ups are
    /// theirs too: a worker sees the task at its next poll (or NOTIFY, on commit).
    pub fn prepare_task(
        &self,
        name: &str,
        payload: Value,
        options: &TaskOptions,
    ) -> Result<NewTask, RuntimeError> {
        if options.unique_key.is_some() {
            return Err(DomainError::InvalidOption {
                field: "unique_key",
                reason: "a task written through the caller's transaction cannot be unique; use enqueue_unique".into(),
            }
            .into());
        }
        self.inner
            .new_async_task(name, payload, options, self.inner.clock.now())
    }

    /// Submits several one-off tasks in one store call (all or nothing); ids in input order.
    pub async fn enqueue_many(
        &self,
        tasks: Vec<(String, Value, TaskOptions)>,
    ) -> Result<Vec<TaskId>, RuntimeError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        if tasks
            .iter()
            .any(|(_, _, options)| options.unique_key.is_some())
        {
            return Err(DomainError::InvalidOption {
                field: "unique_key",
                reason: "enqueue_many inserts all or nothing; submit unique tasks with enqueue or enqueue_unique".into(),
            }
            .into());
        }
        let now = self.inner.clock.now();
        let rows = tasks
            .into_iter()
            .map(|(name, payload, options)| {
                self.inner.new_async_task(&name, payload, &options, now)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let names: Vec<String> = rows.iter().map(|row| row.name.clone()).collect();
        let ids = self.inner.store.insert_tasks(rows).await?;
        for name in &names {
            metrics::count(metrics::ENQUEUED, name);
        }
        self.inner.wake.notify_one();
        Ok(ids)
    }

    /// Registers a recurring task under its key (`options.cron_key`, default the name): the
    /// first registration creates it, an identical one changes nothing, a different one
    /// redefines it (see [`Engine::cron_schedule`]). The expression (and `options.timezone`)
    /// is parsed now; the first run is the first occurrence strictly after now. `delay` and
    /// `unique_key` are refused.
    pub async fn cron(
        &self,
        name: &str,
        expr: &str,
        payload: Value,
        options: TaskOptions,
    ) -> Result<TaskId, RuntimeError> {
        Ok(self.cron_schedule(name, expr, payload, options).await?.0)
    }

    /// [`Engine::cron`], telling what the registration did.
    pub async fn cron_schedule(
        &self,
        name: &str,
        expr: &str,
        payload: Value,
        options: TaskOptions,
    ) -> Result<(TaskId, CronChange), RuntimeError> {
        fib_flow_domain::limits::check_name("name", name)?;
        let entry = self.inner.registry.get(name).ok_or_else(|| unknown(name))?;
        if options.delay.is_some() {
            return Err(DomainError::InvalidOption {
                field: "delay",
                reason:
                    "cron tasks run on their schedule; delay applies to enqueued (async) tasks only"
                        .into(),
            }
            .into());
        }
        if options.unique_key.is_some() {
            return Err(DomainError::InvalidOption {
                field: "unique_key",
                reason: "a cron schedule is unique by its cron_key; unique_key applies to enqueued (async) tasks only".into(),
            }
            .into());
        }
        let cron_key = options.cron_key.clone().unwrap_or_else(|| name.to_owned());
        let schedule = CronSchedule::parse(expr, options.timezone.as_deref())?;
        let now = self.inner.clock.now();
        let next_run_time = schedule.next_after(now)?;
        let resolved = options::resolve(&self.inner.defaults, &entry.options, &options)?;
        let task = NewTask {
            name: name.to_owned(),
            task_type: TaskType::Cron,
            priority: resolved.priority,
            payload,
            tag: options.tag,
            next_run_time,
            timeout: resolved.timeout,
            max_retries: resolved.stored_max_retries(),
            retry_interval: resolved.retry.interval,
            retry_backoff: resolved.retry.backoff,
            cron_expr: Some(expr.to_owned()),
            timezone: options.timezone,
            root_id: None,
            parent_id: None,
            parent_round: None,
            created_at: now,
        };
        task.validate()?;
        let (id, change) = self.inner.store.upsert_cron(task, cron_key.clone()).await?;
        tracing::info!(task_id = %id, cron_key = %cron_key, ?change, "cron schedule registered");
        if change == CronChange::Created {
            metrics::count(metrics::ENQUEUED, name);
        }
        if change != CronChange::Unchanged {
            self.inner.wake.notify_one();
        }
        Ok((id, change))
    }

    /// Deletes the cron schedule with this key (its task row, events and attempts). Returns
    /// whether there was one. A run in progress finishes; its outcome finds no row and is
    /// dropped.
    pub async fn remove_cron(&self, cron_key: &str) -> Result<bool, RuntimeError> {
        fib_flow_domain::limits::check_name("cron_key", cron_key)?;
        Ok(self.inner.store.remove_cron(cron_key.to_owned()).await?)
    }

    /// Every cron schedule, by id.
    pub async fn crons(&self) -> Result<Vec<Task>, RuntimeError> {
        let query = fib_flow_domain::query::TaskQuery {
            task_type: Some(TaskType::Cron),
            ..Default::default()
        };
        Ok(self.inner.store.list_tasks(query).await?)
    }

    /// Enqueues a typed job under `J::NAME`, its fields as the payload.
    pub async fn enqueue_job<J: Job>(
        &self,
        job: &J,
        options: TaskOptions,
    ) -> Result<TaskId, RuntimeError> {
        let payload = serde_json::to_value(job).map_err(|error| DomainError::InvalidOption {
            field: "payload",
            reason: format!("{} does not serialize to JSON: {error}", J::NAME),
        })?;
        self.enqueue(J::NAME, payload, options).await
    }
}

impl Inner {
    /// Builds an async task row, checking the handler and the options.
    fn new_async_task(
        &self,
        name: &str,
        payload: Value,
        options: &TaskOptions,
        now: DateTime<Utc>,
    ) -> Result<NewTask, RuntimeError> {
        // Before the registry: an empty or over-long name is invalid input, not an unknown
        // handler.
        fib_flow_domain::limits::check_name("name", name)?;
        let entry = self.registry.get(name).ok_or_else(|| unknown(name))?;
        if options.timezone.is_some() {
            return Err(DomainError::InvalidOption {
                field: "timezone",
                reason: "only cron tasks have a time zone".into(),
            }
            .into());
        }
        if options.cron_key.is_some() {
            return Err(DomainError::InvalidOption {
                field: "cron_key",
                reason: "only cron tasks have a cron_key; use unique_key for enqueued tasks".into(),
            }
            .into());
        }
        if let Some(key) = &options.unique_key {
            fib_flow_domain::limits::check_name("unique_key", key)?;
        }
        let resolved = options::resolve(&self.defaults, &entry.options, options)?;
        let task = NewTask {
            name: name.to_owned(),
            task_type: TaskType::Async,
            priority: resolved.priority,
            payload,
            tag: options.tag.clone(),
            next_run_time: time::add(now, options.delay.unwrap_or_default()),
            timeout: resolved.timeout,
            max_retries: resolved.stored_max_retries(),
            retry_interval: resolved.retry.interval,
            retry_backoff: resolved.retry.backoff,
            cron_expr: None,
            timezone: None,
            root_id: None,
            parent_id: None,
            parent_round: None,
            created_at: now,
        };
        task.validate()?;
        Ok(task)
    }
}
