//! The outcome writer: executions hand their fenced outcome commands (complete, fail, timeout,
//! release, suspend) to one writer per engine, which writes whatever has queued up as one
//! [`TaskStore::apply_batch`] transaction.
//!
//! Batching is group commit: while one batch is being written the next one gathers. Before a
//! flush the writer also lingers, up to `linger` (wall clock), while handlers are still
//! running, so that with short handlers a burst of claims completes in one transaction instead
//! of several; it never waits when no handler runs. Each command keeps its own verdict: a stale or rejected command is
//! reported to its own execution only.
//!
//! A transient fault of a batch is retried with capped back-off until the write lands or the
//! attempts can no longer be ours: after `task_heartbeat_timeout` of failures any live
//! worker's sweep may expire them, and from then on the sweep owns their fate. The back-off
//! waits on the wall clock on purpose, like the claim loop's fault back-off: recovering from a
//! database fault must not depend on an injected clock moving.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fib_flow_domain::{Command, Task, TaskId};
use fib_flow_ports::{BatchCommand, PortError, TaskStore};
use tokio::sync::{mpsc, oneshot, watch};

/// First back-off after a transient batch fault (doubles up to [`MAX_BACKOFF`]).
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest back-off between retries of a failing batch.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// One outcome waiting for its batch.
struct Pending {
    command: BatchCommand,
    reply: oneshot::Sender<Result<Task, PortError>>,
}

/// The handle executions write through. The writer task ends when the last handle is dropped.
pub(crate) struct OutcomeWriter {
    queue: mpsc::UnboundedSender<Pending>,
}

impl OutcomeWriter {
    /// Starts the writer task on the current tokio runtime.
    pub(crate) fn spawn(
        store: Arc<dyn TaskStore>,
        handlers: watch::Receiver<usize>,
        settings: WriterSettings,
    ) -> OutcomeWriter {
        let (queue, pending) = mpsc::unbounded_channel();
        let writer = Writer {
            store,
            handlers,
            settings: WriterSettings {
                max_batch: settings.max_batch.max(1),
                ..settings
            },
        };
        tokio::spawn(writer.run(pending));
        OutcomeWriter { queue }
    }

    /// Queues a command and waits for its own verdict.
    /// `at` is when the outcome happened; the transition records it, not the flush time.
    pub(crate) async fn write(
        &self,
        task_id: TaskId,
        command: Command,
        at: DateTime<Utc>,
    ) -> Result<Task, PortError> {
        let (reply, verdict) = oneshot::channel();
        let pending = Pending {
            command: BatchCommand {
                task_id,
                command,
                at,
            },
            reply,
        };
        if self.queue.send(pending).is_err() {
            return Err(writer_gone());
        }
        verdict.await.unwrap_or_else(|_| Err(writer_gone()))
    }
}

fn writer_gone() -> PortError {
    PortError::Unavailable {
        backend: "runtime",
        message: "the outcome writer has stopped".into(),
    }
}

/// How the writer batches and retries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterSettings {
    /// Most commands in one transaction.
    pub(crate) max_batch: usize,
    /// Longest wait for running executions to report before a flush.
    pub(crate) linger: Duration,
    /// How long a transient fault is retried.
    pub(crate) give_up_after: Duration,
}

struct Writer {
    store: Arc<dyn TaskStore>,
    /// Handlers still running: each will report an outcome soon (or not: the linger bounds
    /// the wait).
    handlers: watch::Receiver<usize>,
    settings: WriterSettings,
}

impl Writer {
    async fn run(self, mut pending: mpsc::UnboundedReceiver<Pending>) {
        while let Some(first) = pending.recv().await {
            // Executions that finished in the same instant are still being polled: let them
            // queue their outcomes so they share this transaction.
            tokio::task::yield_now().await;
            let mut batch = vec![first];
            let linger_until = tokio::time::Instant::now() + self.settings.linger;
            while batch.len() < self.settings.max_batch {
                match pending.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if *self.handlers.borrow() == 0 {
                            break;
                        }
                        match tokio::time::timeout_at(linger_until, pending.recv()).await {
                            Ok(Some(next)) => batch.push(next),
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
            }
            self.flush(batch).await;
        }
    }

    async fn flush(&self, batch: Vec<Pending>) {
        let commands: Vec<BatchCommand> = batch
            .iter()
            .map(|pending| pending.command.clone())
            .collect();
        let started = tokio::time::Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.store.apply_batch(commands.clone()).await {
                Ok(verdicts) if verdicts.len() == batch.len() => {
                    for (pending, verdict) in batch.into_iter().zip(verdicts) {
                        let _ = pending.reply.send(verdict);
                    }
                    return;
                }
                Ok(verdicts) => {
                    tracing::error!(
                        expected = batch.len(),
                        got = verdicts.len(),
                        "the store answered a batch with the wrong number of verdicts"
                    );
                    for pending in batch {
                        let _ = pending.reply.send(Err(PortError::Database {
                            backend: self.store.backend(),
                            message: "batch verdicts do not match the commands".into(),
                        }));
                    }
                    return;
                }
                Err(error)
                    if error.is_transient() && started.elapsed() < self.settings.give_up_after =>
                {
                    tracing::warn!(
                        %error,
                        outcomes = batch.len(),
                        retry_in_ms = backoff.as_millis() as u64,
                        "transient store error writing outcomes; retrying"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
                }
                Err(error) if !error.is_transient() && batch.len() > 1 => {
                    // A permanent fault of the batch: write each command alone so that one
                    // command the store cannot take does not fail its neighbours.
                    tracing::warn!(%error, outcomes = batch.len(), "batch refused; writing its outcomes one by one");
                    for pending in batch {
                        let BatchCommand {
                            task_id,
                            command,
                            at,
                        } = pending.command;
                        let verdict = self.store.apply(task_id, command, at).await;
                        let _ = pending.reply.send(verdict);
                    }
                    return;
                }
                Err(error) => {
                    let message = error.to_string();
                    tracing::error!(%error, outcomes = batch.len(), "giving up on an outcome batch; the heartbeat sweep will recover its attempts");
                    let transient = error.is_transient();
                    let mut error = Some(error);
                    for pending in batch {
                        let verdict = match error.take() {
                            Some(error) => error,
                            None if transient => PortError::Unavailable {
                                backend: self.store.backend(),
                                message: message.clone(),
                            },
                            None => PortError::Database {
                                backend: self.store.backend(),
                                message: message.clone(),
                            },
                        };
                        let _ = pending.reply.send(Err(verdict));
                    }
                    return;
                }
            }
        }
    }
}
