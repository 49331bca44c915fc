//! Handler registration from the engine's side: `register` and its variants, typed jobs,
//! `unregister` and `task_info`. The registry itself (and the per-type running counters) is
//! [`crate::registry`]; a registration wakes the claim loop, which may now claim the name.

use std::future::Future;
use std::sync::Arc;

use fib_flow_domain::HandlerOptions;
use fib_flow_ports::{HandlerError, Job, Outcome, TaskHandle, TaskHandler};

use crate::engine::Engine;
use crate::error::RuntimeError;
use crate::registry::{Entry, FnHandler};

/// What `task_info` returns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TaskInfo {
    /// The handler name.
    pub name: String,
    /// The registration's description (empty when none was given).
    pub description: String,
}

impl Engine {
    /// Registers a closure with the global defaults (the reference's function form).
    /// Replacing a handler keeps running attempts on the old one and keeps its per-type
    /// running count. Wakes the claim loop; never un-pauses it.
    ///
    /// Errors: [`RuntimeError::InvalidInput`] for an empty name or one longer than
    /// [`fib_flow_domain::limits::MAX_NAME_BYTES`] bytes (no task of that name could be stored).
    pub fn register<F, Fut, O, E>(
        &self,
        name: impl Into<String>,
        handler: F,
    ) -> Result<(), RuntimeError>
    where
        F: Fn(TaskHandle) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
        O: Into<Outcome>,
        E: Into<HandlerError>,
    {
        self.register_handler(
            name,
            Arc::new(FnHandler(handler)),
            HandlerOptions::default(),
        )
    }

    /// Registers a typed job under `J::NAME`: each attempt deserializes the payload into `J`
    /// (a payload that does not fit fails the task permanently, naming the type), runs it, and
    /// stores its output as the result.
    pub fn register_job<J: Job>(&self, options: HandlerOptions) -> Result<(), RuntimeError> {
        self.register_with(
            J::NAME,
            |task: TaskHandle| async move {
                let job: J = serde_json::from_value(task.payload().clone()).map_err(|error| {
                    fib_flow_ports::permanent(format!(
                        "payload of {} is not a valid {}: {error}",
                        J::NAME,
                        std::any::type_name::<J>()
                    ))
                })?;
                let output = job.run(task).await?;
                let result = serde_json::to_value(output).map_err(|error| {
                    fib_flow_ports::permanent(format!(
                        "result of {} cannot be stored as JSON: {error}",
                        J::NAME
                    ))
                })?;
                Ok::<Outcome, HandlerError>(Outcome::Complete(result))
            },
            options,
        )
    }

    /// Registers a closure with its own defaults (the reference's object form); the options
    /// are validated.
    pub fn register_with<F, Fut, O, E>(
        &self,
        name: impl Into<String>,
        handler: F,
        options: HandlerOptions,
    ) -> Result<(), RuntimeError>
    where
        F: Fn(TaskHandle) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
        O: Into<Outcome>,
        E: Into<HandlerError>,
    {
        self.register_handler(name, Arc::new(FnHandler(handler)), options)
    }

    /// Registers a handler object with its defaults; the name and the options are validated.
    pub fn register_handler(
        &self,
        name: impl Into<String>,
        handler: Arc<dyn TaskHandler>,
        options: HandlerOptions,
    ) -> Result<(), RuntimeError> {
        let name = name.into();
        fib_flow_domain::limits::check_name("name", &name)?;
        options.validate()?;
        self.insert(name, handler, options);
        Ok(())
    }

    fn insert(&self, name: String, handler: Arc<dyn TaskHandler>, options: HandlerOptions) {
        tracing::debug!(handler = %name, "handler registered");
        self.inner.registry.insert(name, Entry { handler, options });
        self.inner.wake.notify_one();
    }

    /// Removes handlers; returns how many were registered. Running attempts are not touched;
    /// pending rows of those names stay pending until a worker registers them again.
    pub fn unregister(&self, names: &[&str]) -> usize {
        let removed = self.inner.registry.remove(names);
        if removed > 0 {
            self.inner.wake.notify_one();
        }
        removed
    }

    /// Name and description of a registered handler.
    pub fn task_info(&self, name: &str) -> Result<TaskInfo, RuntimeError> {
        let entry = self.inner.registry.get(name).ok_or_else(|| unknown(name))?;
        Ok(TaskInfo {
            name: name.to_owned(),
            description: entry.options.description.unwrap_or_default(),
        })
    }
}

/// The error for a name no handler is registered under.
pub(crate) fn unknown(name: &str) -> RuntimeError {
    RuntimeError::UnknownHandler {
        name: name.to_owned(),
    }
}
