//! The outcome writer: executions hand their fenced outcome commands (complete, fail, timeout,
//! release, suspend) to one writer per engine, which writes whatever has queued up as one
//! [`TaskStore::apply_batch`] transaction.
//!
//! Batching is group commit: while one batch is being written the next one gathers. Before a
//! flush the writer also lingers, up to `linger` (wall clock), while handlers are still
//! running, so that with short handlers a burst of claims completes in one transaction instead
//! of several; it never waits when no handler runs. Each command keeps its own verdict: a stale
//! or rejected command is reported to its own execution only. Transient faults of a batch are
//! retried as every store call of an execution is ([`crate::store_faults`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fib_flow_domain::{Command, Task, TaskId};
use fib_flow_ports::{BatchCommand, PortError, TaskStore};
use tokio::sync::{mpsc, oneshot, watch};

use crate::engine::Inner;
use crate::store_faults::retry_transient;

/// Most outcomes in one write transaction. A slot is free again when its handler returns, not
/// when its outcome is written, so more than `max_concurrent_tasks` outcomes can be waiting
/// when the database is slower than the handlers: they are written together.
const MAX_OUTCOME_BATCH: usize = 500;

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
                linger_batch: settings.linger_batch.clamp(1, settings.max_batch.max(1)),
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

impl Inner {
    /// The outcome writer, started on first use.
    pub(crate) fn writer(&self) -> &OutcomeWriter {
        self.writer.get_or_init(|| {
            OutcomeWriter::spawn(
                self.store.clone(),
                self.handlers.subscribe(),
                WriterSettings {
                    max_batch: MAX_OUTCOME_BATCH,
                    linger_batch: self.options.max_concurrent_tasks,
                    linger: self.options.outcome_linger,
                    give_up_after: self.options.task_heartbeat_timeout,
                },
            )
        })
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
    /// A batch this large is written at once, without lingering: as many outcomes as can
    /// run at the same time (`max_concurrent_tasks`).
    pub(crate) linger_batch: usize,
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
                        if *self.handlers.borrow() == 0 || batch.len() >= self.settings.linger_batch
                        {
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
        let what = format!("an outcome batch of {}", batch.len());
        let written = retry_transient(&what, self.settings.give_up_after, || {
            self.store.apply_batch(commands.clone())
        })
        .await;
        match written {
            Ok(verdicts) if verdicts.len() == batch.len() => {
                for (pending, verdict) in batch.into_iter().zip(verdicts) {
                    let _ = pending.reply.send(verdict);
                }
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
            }
            Err(error) => {
                tracing::error!(%error, outcomes = batch.len(), "giving up on an outcome batch; the heartbeat sweep will recover its attempts");
                let message = error.to_string();
                for pending in batch {
                    // Each execution gets the same kind of fault (`PortError` is not `Clone`).
                    let verdict = if error.is_transient() {
                        PortError::Unavailable {
                            backend: self.store.backend(),
                            message: message.clone(),
                        }
                    } else {
                        PortError::Database {
                            backend: self.store.backend(),
                            message: message.clone(),
                        }
                    };
                    let _ = pending.reply.send(Err(verdict));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, mpsc as blocking_mpsc};

    use fib_flow_ports::MockTaskStore;
    use futures_util::FutureExt;
    use serde_json::Value;

    use super::*;
    use crate::tests::{running_task, t0};

    /// Outcomes that queued up while a batch was being written go out in the next batch
    /// together, more of them than `max_concurrent_tasks` (`linger_batch`): slots are free
    /// again when handlers return, so a backlog can outgrow the concurrency.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backlog_beyond_the_concurrency_is_written_in_one_batch() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (release, gate) = blocking_mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let (first_in_store, first_seen) = tokio::sync::oneshot::channel::<()>();
        let first_in_store = Mutex::new(Some(first_in_store));
        let recorded = sizes.clone();
        let mut store = MockTaskStore::new();
        store.expect_apply_batch().returning(move |commands| {
            recorded.lock().expect("sizes").push(commands.len());
            if let Some(seen) = first_in_store.lock().expect("signal").take() {
                let _ = seen.send(());
                // The store is busy with the first batch until the backlog has queued.
                let _ = gate.lock().expect("gate").recv();
            }
            Ok(commands
                .iter()
                .map(|command| Ok(running_task(command.task_id.0, "t", 1, t0())))
                .collect())
        });
        let (_handlers, running) = watch::channel(0usize);
        let writer = OutcomeWriter::spawn(
            Arc::new(store),
            running,
            WriterSettings {
                max_batch: MAX_OUTCOME_BATCH,
                linger_batch: 10,
                linger: Duration::from_millis(2),
                give_up_after: Duration::from_secs(1),
            },
        );
        let complete = |id: i64| {
            writer.write(
                TaskId(id),
                Command::Complete {
                    attempt: 1,
                    result: Value::Null,
                },
                t0(),
            )
        };
        let mut first = Box::pin(complete(1));
        assert!((&mut first).now_or_never().is_none(), "queued");
        first_seen.await.expect("the first batch reached the store");
        let mut backlog: Vec<_> = (2..=26).map(|id| Box::pin(complete(id))).collect();
        for write in &mut backlog {
            assert!(write.as_mut().now_or_never().is_none(), "queued");
        }
        release.send(()).expect("the store waits");
        first.await.expect("first outcome written");
        for write in backlog {
            write.await.expect("backlog outcome written");
        }
        assert_eq!(*sizes.lock().expect("sizes"), vec![1, 25]);
    }
}
