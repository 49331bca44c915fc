//! The engine's shared state and its construction: [`Engine`] (the cheap, cloneable handle),
//! `Inner` (what every part of the engine reads and writes) and [`ManagerState`].
//!
//! What the engine does lives beside this file, one responsibility each: `handlers`
//! (registration), `submit` (enqueue and cron), `control` (commands on one task),
//! `claim_loop` (the pause gate and claiming), `slot` (concurrency accounting), `execution`
//! (one attempt), `cancel` (cancelling in-flight attempts), `writer` (outcome batches),
//! `wakeups` (what wakes the claim loop and status waiters), `lifecycle` (start and stop),
//! `lease` (the worker registry), `maintenance` (heartbeats, sweeps, retention) and
//! `store_faults` (back-off after store faults).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, Utc};
use fib_flow_domain::options::TaskDefaults;
use fib_flow_domain::{ManagerOptions, RetentionPolicy, TaskId};
use fib_flow_ports::{Clock, TaskStore};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::cancel::InFlight;
use crate::error::RuntimeError;
use crate::lifecycle::Background;
use crate::registry::Registry;
use crate::writer::OutcomeWriter;

/// The manager's lifecycle: `init` → `running` (start) → `stopped` (stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManagerState {
    /// Built, not started: submission, registration, control and queries work; nothing runs.
    Init,
    /// Claiming and executing tasks, running maintenance.
    Running,
    /// Stopped for good; cannot be restarted.
    Stopped,
}

impl ManagerState {
    /// The reference's string (`init`, `running`, `stopped`).
    pub fn as_str(self) -> &'static str {
        match self {
            ManagerState::Init => "init",
            ManagerState::Running => "running",
            ManagerState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for ManagerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Shared engine state.
pub(crate) struct Inner {
    pub(crate) options: ManagerOptions,
    pub(crate) worker_id: Arc<str>,
    pub(crate) store: Arc<dyn TaskStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) defaults: TaskDefaults,
    pub(crate) retention: Option<RetentionPolicy>,
    pub(crate) registry: Registry,
    /// A watch so that a second, concurrent `stop` can wait for the first to finish.
    pub(crate) state: watch::Sender<ManagerState>,
    /// Set by the first `stop`: a later `start` or `stop` sees it at once.
    pub(crate) stopping: AtomicBool,
    /// The claim loop's pause gate (`pause`/`resume`).
    pub(crate) paused: watch::Sender<bool>,
    /// Wake-ups for the claim loop's idle wait (enqueue, cron, register, resume, an execution
    /// ending, a store notification). Separate from `paused` on purpose (decisions.md).
    pub(crate) wake: Notify,
    /// Marked after this engine changed a task (a claim, an execution's outcome, a control
    /// command, an expiry, a recovery) and on every store notification: waiters on a task's
    /// status read it again. Separate from `wake`, which has one waiter and no memory.
    pub(crate) task_changes: watch::Sender<()>,
    /// Executions in flight, counted when claimed and released when their outcome is written.
    pub(crate) running: watch::Sender<usize>,
    /// Executions whose handler is still running: the slots of `max_concurrent_tasks`. An
    /// execution gives its slot back when its handler ends, while its outcome is still being
    /// written, so the next claim overlaps the previous batch's write.
    pub(crate) handlers: watch::Sender<usize>,
    /// Keyed by (task, attempt): a stale execution of an earlier attempt and the current one can
    /// coexist briefly, and each must keep its own token and heartbeat entry.
    pub(crate) in_flight: Mutex<HashMap<(TaskId, i32), InFlight>>,
    /// Stops the claim loop (first step of `stop`).
    pub(crate) claim_shutdown: CancellationToken,
    /// Stops maintenance, the lease loop and the notification listener (after the drain).
    pub(crate) background_shutdown: CancellationToken,
    /// The loops `start` spawned, awaited by `stop`.
    pub(crate) background: Mutex<Background>,
    /// When automatic retention runs next; `None` until the first tick schedules it.
    pub(crate) retention_due: Mutex<Option<DateTime<Utc>>>,
    /// Batches execution outcomes into shared transactions; started by the first outcome, so
    /// that building an engine needs no runtime.
    pub(crate) writer: OnceLock<OutcomeWriter>,
    /// Whether this worker holds an active registry lease (and so may claim). False until the
    /// first registration, while a successor of its pod is active, and after `stop`.
    pub(crate) leased: watch::Sender<bool>,
    /// When `start` ran (the registry's `meta.started_at`).
    pub(crate) started_at: OnceLock<DateTime<Utc>>,
}

/// The fib-flow engine: handler registry, submission, the claim loop, executions,
/// maintenance and graceful stop. Cheap to clone; clones share one engine.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
    /// Shared by the clones of this engine (not by its background tasks): when the last clone
    /// is dropped without `stop`, the loops are told to end instead of running on unowned.
    _owners: Arc<Owners>,
}

/// Ends the claim and background loops when the last [`Engine`] clone goes away. Executions
/// already running finish and record their outcome.
struct Owners {
    pub(crate) claim_shutdown: CancellationToken,
    background_shutdown: CancellationToken,
}

impl Drop for Owners {
    fn drop(&mut self) {
        self.claim_shutdown.cancel();
        self.background_shutdown.cancel();
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("worker_id", &self.inner.worker_id)
            .field("backend", &self.inner.store.backend())
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Validates `options` and builds an engine in the `Init` state. The worker id is
    /// `options.worker_id` or `worker-<uuid v4>`.
    pub fn new(
        options: ManagerOptions,
        store: Arc<dyn TaskStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine, RuntimeError> {
        options.validate()?;
        let retention = options.retention_policy()?;
        let worker_id: Arc<str> = match &options.worker_id {
            Some(id) => Arc::from(id.as_str()),
            None => Arc::from(format!("worker-{}", uuid::Uuid::new_v4())),
        };
        let defaults = options.task_defaults();
        let claim_shutdown = CancellationToken::new();
        let background_shutdown = CancellationToken::new();
        Ok(Engine {
            _owners: Arc::new(Owners {
                claim_shutdown: claim_shutdown.clone(),
                background_shutdown: background_shutdown.clone(),
            }),
            inner: Arc::new(Inner {
                options,
                worker_id,
                store,
                clock,
                defaults,
                retention,
                registry: Registry::default(),
                state: watch::Sender::new(ManagerState::Init),
                stopping: AtomicBool::new(false),
                paused: watch::Sender::new(false),
                wake: Notify::new(),
                task_changes: watch::Sender::new(()),
                running: watch::Sender::new(0),
                handlers: watch::Sender::new(0),
                in_flight: Mutex::new(HashMap::new()),
                claim_shutdown,
                background_shutdown,
                background: Mutex::new(Background::default()),
                retention_due: Mutex::new(None),
                writer: OnceLock::new(),
                leased: watch::Sender::new(false),
                started_at: OnceLock::new(),
            }),
        })
    }

    /// This process's worker id.
    pub fn worker_id(&self) -> &str {
        &self.inner.worker_id
    }

    /// The options the engine was built with.
    pub fn options(&self) -> &ManagerOptions {
        &self.inner.options
    }

    /// `Init`, `Running` or `Stopped`.
    pub fn state(&self) -> ManagerState {
        *self.inner.state.borrow()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn TaskStore> {
        &self.inner.store
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// How many executions are in flight in this engine.
    pub fn in_flight(&self) -> usize {
        *self.inner.running.borrow()
    }
}
