//! Every log of an attempt carries the task's span, and a handler failure is a warning.
//!
//! A test binary of its own with a single test: tracing caches per call site whether any
//! subscriber listens, so a capturing subscriber shares a process badly with tests that run
//! without one.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use fib_flow::prelude::*;
use fib_flow::testing;

/// Collects what a `fmt` subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_of_an_attempt_carries_the_task_span_and_failures_are_warnings() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .init();
    let (manager, _clock) = testing::manager_with(ManagerOptions {
        worker_id: Some("w1".into()),
        ..ManagerOptions::default()
    })
    .await
    .unwrap();
    manager
        .register("logs", |_task: TaskHandle| async move {
            tracing::info!("inside the handler");
            Err::<Outcome, HandlerError>("it broke".into())
        })
        .unwrap();
    let id = manager
        .enqueue("logs", json!({}), TaskOptions::default().max_retries(1))
        .await
        .unwrap();
    manager.start().await.unwrap();
    testing::run_until_idle(&manager).await.unwrap();
    manager.stop().await.unwrap();

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = |needle: &str| {
        text.lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
            .to_owned()
    };
    let span = format!("task{{task_id={id} name=logs attempt=1 worker_id=w1}}");
    let handler_line = line("inside the handler");
    assert!(handler_line.contains(&span), "{handler_line}");
    let failure = line("handler failed");
    assert!(failure.contains("WARN"), "{failure}");
    assert!(failure.contains(&span), "{failure}");
}
