//! The metrics the engine emits (through the `metrics` facade), read by a recorder of the
//! test's own. A test binary of its own: a metrics recorder is process-wide.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fib_flow::prelude::*;
use fib_flow::testing;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// Counters, gauges and histogram samples by `name{label=value,…}`.
#[derive(Default)]
struct Recorded {
    counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    gauges: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<BTreeMap<String, Arc<Samples>>>,
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl metrics::HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

fn render(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|label| format!("{}={}", label.key(), label.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

struct TestRecorder(Arc<Recorded>);

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let cell = self
            .0
            .counters
            .lock()
            .unwrap()
            .entry(render(key))
            .or_default()
            .clone();
        Counter::from_arc(cell)
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let cell = self
            .0
            .gauges
            .lock()
            .unwrap()
            .entry(render(key))
            .or_default()
            .clone();
        Gauge::from_arc(cell)
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let cell = self
            .0
            .histograms
            .lock()
            .unwrap()
            .entry(render(key))
            .or_default()
            .clone();
        Histogram::from_arc(cell)
    }
}

impl Recorded {
    fn counter(&self, key: &str) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .get(key)
            .map_or(0, |cell| cell.load(Ordering::SeqCst))
    }
    fn gauge(&self, key: &str) -> Option<f64> {
        self.gauges
            .lock()
            .unwrap()
            .get(key)
            .map(|cell| f64::from_bits(cell.load(Ordering::SeqCst)))
    }
    fn samples(&self, key: &str) -> usize {
        self.histograms
            .lock()
            .unwrap()
            .get(key)
            .map_or(0, |cell| cell.0.lock().unwrap().len())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_counts_its_work_and_measures_latency() {
    let recorded = Arc::new(Recorded::default());
    metrics::set_global_recorder(TestRecorder(recorded.clone())).unwrap();
    let (manager, clock) = testing::manager().await.unwrap();
    manager
        .register("ok", |_task: TaskHandle| async move {
            Ok::<Outcome, HandlerError>(json!(1).into())
        })
        .unwrap();
    manager
        .register("bad", |_task: TaskHandle| async move {
            Err::<Outcome, HandlerError>("no".into())
        })
        .unwrap();
    manager
        .register("later", |task: TaskHandle| async move {
            if task.attempt() == 1 {
                Ok::<Outcome, HandlerError>(Outcome::snooze(Duration::from_secs(5)))
            } else {
                Ok(json!("done").into())
            }
        })
        .unwrap();
    for _ in 0..3 {
        manager
            .enqueue("ok", json!({}), TaskOptions::default())
            .await
            .unwrap();
    }
    manager
        .enqueue("bad", json!({}), TaskOptions::default().max_retries(2))
        .await
        .unwrap();
    manager
        .enqueue("later", json!({}), TaskOptions::default())
        .await
        .unwrap();
    // Queue depth is sampled by the maintenance tick.
    manager.run_maintenance().await.unwrap();
    assert_eq!(recorded.gauge("fib_flow_queue_depth{name=ok}"), Some(3.0));
    manager.start().await.unwrap();
    testing::run_until_idle(&manager).await.unwrap();
    testing::advance(&manager, &clock, Duration::from_secs(5))
        .await
        .unwrap();
    manager.stop().await.unwrap();

    assert_eq!(
        recorded.counter("fib_flow_tasks_enqueued_total{name=ok}"),
        3
    );
    assert_eq!(recorded.counter("fib_flow_tasks_claimed_total{name=ok}"), 3);
    assert_eq!(
        recorded.counter("fib_flow_tasks_completed_total{name=ok}"),
        3
    );
    assert_eq!(recorded.counter("fib_flow_tasks_failed_total{name=bad}"), 2);
    assert_eq!(
        recorded.counter("fib_flow_tasks_retried_total{name=bad}"),
        1
    );
    assert_eq!(
        recorded.counter("fib_flow_tasks_snoozed_total{name=later}"),
        1
    );
    assert_eq!(
        recorded.counter("fib_flow_tasks_completed_total{name=later}"),
        1
    );
    assert_eq!(
        recorded.samples("fib_flow_task_execution_seconds{name=ok}"),
        3
    );
    assert_eq!(recorded.samples("fib_flow_task_pickup_seconds{name=ok}"), 3);
    manager.run_maintenance().await.unwrap();
    assert_eq!(recorded.gauge("fib_flow_queue_depth{name=ok}"), Some(0.0));
}
