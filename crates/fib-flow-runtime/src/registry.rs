//! The handler registry: name → handler and its registration defaults, plus the per-type
//! running counters used for per-handler concurrency limits.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};

use fib_flow_domain::HandlerOptions;
use fib_flow_ports::{
    ClaimName, HandlerError, HandlerResult, Outcome, QueueCap, TaskHandle, TaskHandler,
};

/// Adapts a closure returning `Result<impl Into<Outcome>, impl Into<HandlerError>>` to the
/// [`TaskHandler`] trait.
///
/// Written without `async_trait` sugar on purpose: an `async` block would capture the output
/// types `O` and `E` and require them to be `'static`, which the public `register` signature
/// does not promise. [`Adapt`] only holds the closure's future.
pub(crate) struct FnHandler<F>(pub(crate) F);

impl<F, Fut, O, E> TaskHandler for FnHandler<F>
where
    F: Fn(TaskHandle) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, E>> + Send + 'static,
    O: Into<Outcome>,
    E: Into<HandlerError>,
{
    fn run<'life0, 'async_trait>(
        &'life0 self,
        task: TaskHandle,
    ) -> Pin<Box<dyn Future<Output = HandlerResult> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(Adapt(Box::pin((self.0)(task))))
    }
}

/// Maps a handler future's `Result<O, E>` to a [`HandlerResult`].
struct Adapt<Fut>(Pin<Box<Fut>>);

impl<Fut, O, E> Future for Adapt<Fut>
where
    Fut: Future<Output = Result<O, E>>,
    O: Into<Outcome>,
    E: Into<HandlerError>,
{
    type Output = HandlerResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<HandlerResult> {
        self.0
            .as_mut()
            .poll(cx)
            .map(|result| result.map(Into::into).map_err(Into::into))
    }
}

/// One registered handler.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) handler: Arc<dyn TaskHandler>,
    pub(crate) options: HandlerOptions,
}

/// The registry. Reads vastly outnumber writes (every claim round and every execution start
/// reads it), hence the `RwLock`; no lock is held across an await.
#[derive(Default)]
pub(crate) struct Registry {
    entries: RwLock<HashMap<String, Entry>>,
    // Counters live outside the entries so that replacing or removing and re-adding a handler
    // keeps counting the executions still running under the old registration.
    running: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

impl Registry {
    /// Adds or replaces a handler.
    pub(crate) fn insert(&self, name: String, entry: Entry) {
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, entry);
    }

    /// Removes handlers; returns how many were registered.
    pub(crate) fn remove(&self, names: &[&str]) -> usize {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        names
            .iter()
            .filter(|name| entries.remove(**name).is_some())
            .count()
    }

    /// The current registration of `name` (a snapshot: later changes do not affect it).
    pub(crate) fn get(&self, name: &str) -> Option<Entry> {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Every registered name.
    pub(crate) fn names(&self) -> Vec<String> {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// The running counter of `name`, created on first use.
    pub(crate) fn counter(&self, name: &str) -> Arc<AtomicUsize> {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// The claim filter: every registered name of a served queue (`served`: `None` serves
    /// all) whose per-type limit is not reached, with its remaining capacity, and the
    /// remaining capacity of every queue `queue_limits` bounds; a queue at its limit
    /// contributes no names. Sorted by name so claim requests are deterministic.
    pub(crate) fn claim_filter(
        &self,
        served: Option<&[String]>,
        queue_limits: &BTreeMap<String, usize>,
    ) -> (Vec<ClaimName>, Vec<QueueCap>) {
        // (name, queue, per-name limit, running now): each counter is read once per round.
        let registered: Vec<(String, String, Option<usize>, usize)> = self
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, entry)| {
                served.is_none_or(|queues| queues.iter().any(|q| q == entry.options.queue_name()))
            })
            .map(|(name, entry)| {
                (
                    name.clone(),
                    entry.options.queue_name().to_owned(),
                    entry.options.max_concurrent_tasks,
                    self.counter(name).load(Ordering::SeqCst),
                )
            })
            .collect();
        let mut queue_running: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, queue, _, running) in &registered {
            *queue_running.entry(queue.as_str()).or_default() += running;
        }
        let queue_free: BTreeMap<String, usize> = queue_running
            .into_iter()
            .filter_map(|(queue, running)| {
                let limit = queue_limits.get(queue)?;
                Some((queue.to_owned(), limit.saturating_sub(running)))
            })
            .collect();
        let mut names: Vec<ClaimName> = registered
            .into_iter()
            .filter(|(_, queue, _, _)| queue_free.get(queue) != Some(&0))
            .filter_map(|(name, queue, limit, running)| {
                let max = match limit {
                    None => None,
                    Some(limit) => {
                        let free = limit.saturating_sub(running);
                        if free == 0 {
                            return None;
                        }
                        Some(u32::try_from(free).unwrap_or(u32::MAX))
                    }
                };
                Some(ClaimName { name, max, queue })
            })
            .collect();
        names.sort_by(|a, b| a.name.cmp(&b.name));
        let caps = queue_free
            .into_iter()
            .filter(|(_, free)| *free > 0)
            .map(|(queue, free)| QueueCap {
                queue,
                max: u32::try_from(free).unwrap_or(u32::MAX),
            })
            .collect();
        (names, caps)
    }
}
