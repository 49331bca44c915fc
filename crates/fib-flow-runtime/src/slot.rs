//! Concurrency accounting of one execution: a [`Slot`] is taken when a task is claimed and
//! holds a place in `max_concurrent_tasks`, in its handler's per-type limit and in the
//! in-flight map (heartbeats, cancellation, `stop`'s drain) until it is given back.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError};

use fib_flow_domain::{Task, TaskId};

use crate::cancel::{Cancel, InFlight};
use crate::engine::Inner;

/// One execution's hold on a slot and on its in-flight entry. The slot (global and per-handler
/// concurrency) is given back when the handler ends; the in-flight entry (heartbeats, `stop`'s
/// drain) when the execution ends, even if it panics.
pub(crate) struct Slot {
    inner: Arc<Inner>,
    key: (TaskId, i32),
    counter: Arc<AtomicUsize>,
    handler_ended: AtomicBool,
}

impl Slot {
    /// Takes a slot for a claimed attempt: the global and per-handler counts and its in-flight
    /// entry (with `cancel`, so that control, sweeps and `stop` can reach it). Synchronous, so
    /// the next claim round already sees the slot taken.
    pub(crate) fn take(inner: &Arc<Inner>, task: &Task, cancel: &Cancel) -> Slot {
        let counter = inner.registry.counter(&task.name);
        counter.fetch_add(1, Ordering::SeqCst);
        inner.running.send_modify(|running| *running += 1);
        inner.handlers.send_modify(|handlers| *handlers += 1);
        inner
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                (task.id, task.attempt),
                InFlight {
                    name: task.name.clone(),
                    cancel: cancel.clone(),
                },
            );
        Slot {
            inner: inner.clone(),
            key: (task.id, task.attempt),
            counter,
            handler_ended: AtomicBool::new(false),
        }
    }

    /// The handler has returned, panicked or been dropped: its slot is free for the next
    /// claim while the outcome is written. Idempotent.
    pub(crate) fn end_handler(&self) {
        if self.handler_ended.swap(true, Ordering::SeqCst) {
            return;
        }
        // Floored at zero: a counter must never wrap around and block a handler forever.
        let _ = self
            .counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_sub(1))
            });
        self.inner
            .handlers
            .send_modify(|handlers| *handlers = handlers.saturating_sub(1));
        self.inner.wake.notify_one();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.end_handler();
        self.inner
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
        self.inner
            .running
            .send_modify(|running| *running = running.saturating_sub(1));
        self.inner.wake.notify_one();
        // The execution's outcome (or release) is written by now.
        self.inner.task_changed();
    }
}
