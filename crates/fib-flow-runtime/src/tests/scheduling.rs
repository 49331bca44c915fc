//! The claim loop: concurrency limits, pause gate, hot reload, wake-ups, store errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fib_flow_domain::{HandlerOptions, TaskId, TaskOptions};
use fib_flow_ports::{ClaimName, HandlerError, Outcome, PortError, QueueCap, TaskHandle};
use serde_json::json;
use tokio::sync::Semaphore;

use super::*;

/// A handler that reports its start, tracks how many run at once, and blocks until the test
/// adds a permit to `gate`.
fn gated(
    rec: &Arc<Rec>,
    gate: &Arc<Semaphore>,
    active: &Arc<AtomicUsize>,
    peak: &Arc<AtomicUsize>,
    result: &'static str,
) -> impl Fn(
    TaskHandle,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Outcome, HandlerError>> + Send>,
> + Send
+ Sync
+ 'static {
    let (rec, gate, active, peak) = (rec.clone(), gate.clone(), active.clone(), peak.clone());
    move |task: TaskHandle| {
        let (rec, gate, active, peak) = (rec.clone(), gate.clone(), active.clone(), peak.clone());
        Box::pin(async move {
            let now = active.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            rec.push(Ev::Started(task.id()));
            gate.acquire()
                .await
                .map_err(|error| error.to_string())?
                .forget();
            active.fetch_sub(1, Ordering::SeqCst);
            Ok(json!(result).into())
        })
    }
}

fn counters() -> (Arc<Semaphore>, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    (
        Arc::new(Semaphore::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    )
}

fn started(n: usize) -> impl Fn(&[Ev]) -> bool {
    move |log| {
        log.iter()
            .filter(|event| matches!(event, Ev::Started(_)))
            .count()
            >= n
    }
}

#[tokio::test]
async fn global_limit_caps_claims_and_running_handlers() {
    let options = ManagerOptions {
        max_concurrent_tasks: 2,
        claim_batch_size: 10,
        ..options()
    };
    let (engine, rec, clock) = engine_with(options);
    let (gate, active, peak) = counters();
    engine
        .register("busy", gated(&rec, &gate, &active, &peak, "done"))
        .expect("register");
    rec.script_claim(Ok(vec![
        running_task(1, "busy", 1, t0()),
        running_task(2, "busy", 1, t0()),
    ]));
    rec.script_claim(Ok(vec![running_task(3, "busy", 1, t0())]));
    engine.start().await.unwrap();
    rec.wait("two handlers running", started(2)).await;
    assert_eq!(
        rec.claims()[0].limit,
        2,
        "a batch of at most the free slots"
    );
    // Full: time passes, wake-ups arrive, yet no claim is attempted.
    for _ in 0..5 {
        clock.advance(Duration::from_secs(1));
        engine
            .register("other", |_t: TaskHandle| async {
                Ok::<_, HandlerError>(json!(null))
            })
            .expect("register");
        settle().await;
    }
    assert_eq!(rec.claims().len(), 1, "no claim while every slot is taken");
    assert_eq!(engine.in_flight(), 2);
    gate.add_permits(1);
    rec.wait("third handler running", started(3)).await;
    assert_eq!(rec.claims()[1].limit, 1, "one slot freed, one task claimed");
    gate.add_permits(2);
    rec.wait_count("three completions", 3, |event| {
        matches!(event, Ev::Apply(..))
    })
    .await;
    assert_eq!(
        peak.load(Ordering::SeqCst),
        2,
        "never more than two at once"
    );
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn claim_batch_size_bounds_a_claim() {
    let options = ManagerOptions {
        max_concurrent_tasks: 10,
        claim_batch_size: 3,
        ..options()
    };
    let (engine, rec, _clock) = engine_with(options);
    engine
        .register("a", |_t: TaskHandle| async {
            Ok::<_, HandlerError>(json!(null))
        })
        .expect("register");
    engine.start().await.unwrap();
    rec.wait("a claim", |log| {
        log.iter().any(|event| matches!(event, Ev::Claim(_)))
    })
    .await;
    let claim = &rec.claims()[0];
    assert_eq!(claim.limit, 3);
    assert_eq!(claim.worker_id, "w1");
    assert_eq!(claim.now, t0());
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn per_type_limit_is_reflected_in_claim_names() {
    let (engine, rec, _clock) = engine();
    let (gate, active, peak) = counters();
    engine
        .register_with(
            "limited",
            gated(&rec, &gate, &active, &peak, "limited"),
            HandlerOptions {
                max_concurrent_tasks: Some(2),
                ..HandlerOptions::default()
            },
        )
        .unwrap();
    engine
        .register("free", |_t: TaskHandle| async {
            Ok::<_, HandlerError>(json!(null))
        })
        .expect("register");
    rec.script_claim(Ok(vec![running_task(1, "limited", 1, t0())]));
    rec.script_claim(Ok(vec![running_task(2, "limited", 1, t0())]));
    engine.start().await.unwrap();
    rec.wait("two limited running", started(2)).await;
    rec.wait_count("a third claim", 3, |event| matches!(event, Ev::Claim(_)))
        .await;
    let claims = rec.claims();
    let names = |i: usize| claims[i].names.clone();
    let free = ClaimName {
        name: "free".into(),
        max: None,
        queue: "default".into(),
    };
    let limited = |max| ClaimName {
        name: "limited".into(),
        max: Some(max),
        queue: "default".into(),
    };
    assert_eq!(names(0), [free.clone(), limited(2)]);
    assert_eq!(names(1), [free.clone(), limited(1)], "remaining capacity");
    assert_eq!(names(2), [free], "a full handler is left out of the claim");
    gate.add_permits(1);
    rec.wait_count("a completion", 1, |event| matches!(event, Ev::Apply(..)))
        .await;
    rec.wait("limited claimable again", |log| {
        log.iter().any(|event| matches!(event, Ev::Claim(request) if request.names.contains(&limited(1)) && request.names.len() == 2))
            && log.iter().filter(|event| matches!(event, Ev::Claim(_))).count() > 3
    })
    .await;
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    gate.add_permits(1);
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn per_type_count_survives_re_registration() {
    let (engine, rec, _clock) = engine();
    let (gate, active, peak) = counters();
    let limit = HandlerOptions {
        max_concurrent_tasks: Some(1),
        ..HandlerOptions::default()
    };
    engine
        .register_with(
            "one",
            gated(&rec, &gate, &active, &peak, "v1"),
            limit.clone(),
        )
        .unwrap();
    engine
        .register("free", |_t: TaskHandle| async {
            Ok::<_, HandlerError>(json!(null))
        })
        .expect("register");
    rec.script_claim(Ok(vec![running_task(1, "one", 1, t0())]));
    engine.start().await.unwrap();
    rec.wait("v1 running", started(1)).await;
    engine
        .register_with("one", gated(&rec, &gate, &active, &peak, "v2"), limit)
        .unwrap();
    // The loop may already be in a round that saw the new registration; wake it once more
    // so that a round surely starts after it.
    let claims_so_far = rec.claims().len();
    rec.notify.notify_one();
    rec.wait_count(
        "a claim after re-registration",
        claims_so_far + 1,
        |event| matches!(event, Ev::Claim(_)),
    )
    .await;
    let last = rec.claims().pop().unwrap();
    assert_eq!(
        last.names,
        [ClaimName {
            name: "free".into(),
            max: None,
            queue: "default".into(),
        }],
        "the replaced registration still counts the running v1 attempt"
    );
    gate.add_permits(1);
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn hot_reload_keeps_the_running_attempt_on_its_handler() {
    let (engine, rec, _clock) = engine();
    let (gate, active, peak) = counters();
    engine
        .register("versioned", gated(&rec, &gate, &active, &peak, "v1"))
        .expect("register");
    rec.script_claim(Ok(vec![running_task(1, "versioned", 1, t0())]));
    engine.start().await.unwrap();
    rec.wait("v1 running", started(1)).await;
    engine
        .register("versioned", |_t: TaskHandle| async {
            Ok::<_, HandlerError>(json!("v2"))
        })
        .expect("register");
    gate.add_permits(1);
    rec.wait_count("first completion", 1, |event| {
        matches!(event, Ev::Apply(..))
    })
    .await;
    assert!(
        is_complete(&rec.applies_to(1)[0], &json!("v1")),
        "the running attempt kept v1"
    );

    rec.script_claim(Ok(vec![running_task(2, "versioned", 1, t0())]));
    rec.notify.notify_one();
    rec.wait_count("second completion", 2, |event| {
        matches!(event, Ev::Apply(..))
    })
    .await;
    assert!(
        is_complete(&rec.applies_to(2)[0], &json!("v2")),
        "the next claim uses v2"
    );

    // Unregistering does not interrupt a running attempt.
    engine
        .register("versioned", gated(&rec, &gate, &active, &peak, "v3"))
        .expect("register");
    rec.script_claim(Ok(vec![running_task(3, "versioned", 1, t0())]));
    rec.notify.notify_one();
    rec.wait("v3 running", started(2)).await;
    assert_eq!(engine.unregister(&["versioned", "never-registered"]), 1);
    settle().await;
    assert!(rec.applies_to(3).is_empty());
    gate.add_permits(1);
    rec.wait_count("third completion", 3, |event| {
        matches!(event, Ev::Apply(..))
    })
    .await;
    assert!(is_complete(&rec.applies_to(3)[0], &json!("v3")));
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn paused_engine_claims_nothing_and_register_does_not_unpause() {
    let (engine, rec, clock) = engine();
    engine
        .register("echo", |_t: TaskHandle| async {
            Ok::<_, HandlerError>(json!(1))
        })
        .expect("register");
    engine.pause();
    engine.start().await.unwrap();
    for _ in 0..3 {
        clock.advance(Duration::from_secs(2));
        engine
            .register("another", |_t: TaskHandle| async {
                Ok::<_, HandlerError>(json!(2))
            })
            .expect("register");
        assert_eq!(engine.unregister(&["another"]), 1);
        engine
            .enqueue("echo", json!({}), TaskOptions::default())
            .await
            .unwrap();
        settle().await;
    }
    assert!(
        engine.is_paused(),
        "register/unregister/enqueue never un-pause"
    );
    assert!(rec.claims().is_empty(), "a paused engine must not claim");
    assert!(
        rec.count(|event| matches!(event, Ev::Heartbeat(..) | Ev::Purge(_))) == 0,
        "nothing in flight, no retention due yet"
    );
    engine.resume();
    rec.wait("a claim after resume", |log| {
        log.iter().any(|event| matches!(event, Ev::Claim(_)))
    })
    .await;
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn idle_loop_polls_every_poll_interval_and_wakes_early() {
    let (engine, rec, clock) = engine();
    engine
        .register("echo", |_t: TaskHandle| async {
            Ok::<_, HandlerError>(json!(1))
        })
        .expect("register");
    engine.start().await.unwrap();
    rec.wait_count("first claim", 1, |event| matches!(event, Ev::Claim(_)))
        .await;
    settle().await;
    assert_eq!(rec.claims().len(), 1, "idle: waits for the poll interval");
    clock.advance(Duration::from_millis(999));
    settle().await;
    assert_eq!(rec.claims().len(), 1);
    clock.advance(Duration::from_millis(1));
    rec.wait_count("poll after the interval", 2, |event| {
        matches!(event, Ev::Claim(_))
    })
    .await;
    // A store notification cuts the idle wait short.
    rec.notify.notify_one();
    rec.wait_count("claim after a notification", 3, |event| {
        matches!(event, Ev::Claim(_))
    })
    .await;
    // So does an enqueue.
    engine
        .enqueue("echo", json!({}), TaskOptions::default())
        .await
        .unwrap();
    rec.wait_count("claim after an enqueue", 4, |event| {
        matches!(event, Ev::Claim(_))
    })
    .await;
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn loop_survives_store_errors_with_backoff() {
    let (engine, rec, clock) = engine();
    engine
        .register("echo", |_t: TaskHandle| async {
            Ok::<_, HandlerError>(json!("ok"))
        })
        .expect("register");
    let transient = || PortError::Unavailable {
        backend: "mock",
        message: "pool timed out".into(),
    };
    rec.script_claim(Err(transient()));
    rec.script_claim(Err(transient()));
    rec.script_claim(Err(PortError::Database {
        backend: "mock",
        message: "syntax error".into(),
    }));
    rec.script_claim(Ok(vec![running_task(1, "echo", 1, t0())]));
    engine.start().await.unwrap();
    rec.wait_count("first failure", 1, |event| matches!(event, Ev::Claim(_)))
        .await;
    clock.advance(Duration::from_secs(1));
    rec.wait_count("retry after 1 s", 2, |event| matches!(event, Ev::Claim(_)))
        .await;
    clock.advance(Duration::from_secs(1));
    settle().await;
    assert_eq!(rec.claims().len(), 2, "the back-off doubles");
    clock.advance(Duration::from_secs(1));
    rec.wait_count("retry after 2 s", 3, |event| matches!(event, Ev::Claim(_)))
        .await;
    // Wake-ups do not shorten an error back-off.
    rec.notify.notify_one();
    settle().await;
    assert_eq!(rec.claims().len(), 3);
    clock.advance(Duration::from_secs(4));
    rec.wait_count("the loop recovered and ran the task", 1, |event| {
        matches!(event, Ev::Apply(..))
    })
    .await;
    assert!(is_complete(&rec.applies_to(1)[0], &json!("ok")));
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn no_registered_handler_means_no_claim() {
    let (engine, rec, clock) = engine();
    engine.start().await.unwrap();
    clock.advance(Duration::from_secs(3));
    settle().await;
    assert!(
        rec.claims().is_empty(),
        "an empty name list never reaches the store"
    );
    engine
        .register("late", |_t: TaskHandle| async {
            Ok::<_, HandlerError>(json!(null))
        })
        .expect("register");
    rec.wait("a claim once a handler exists", |log| {
        log.iter().any(|event| matches!(event, Ev::Claim(_)))
    })
    .await;
    let _ = TaskId(0);
    engine.stop().await.unwrap();
}

#[tokio::test]
async fn a_worker_claims_only_its_queues_within_their_limits() {
    let options = ManagerOptions {
        queues: Some(vec!["email".into()]),
        queue_concurrency: [("email".to_owned(), 2)].into(),
        ..options()
    };
    let (engine, rec, _clock) = engine_with(options);
    let (gate, active, peak) = counters();
    let email = |max| HandlerOptions {
        queue: Some("email".into()),
        max_concurrent_tasks: max,
        ..HandlerOptions::default()
    };
    engine
        .register_with(
            "send",
            gated(&rec, &gate, &active, &peak, "send"),
            email(None),
        )
        .unwrap();
    engine
        .register_with(
            "welcome",
            gated(&rec, &gate, &active, &peak, "welcome"),
            email(Some(1)),
        )
        .unwrap();
    let reports = HandlerOptions {
        queue: Some("reports".into()),
        ..HandlerOptions::default()
    };
    engine
        .register_with(
            "report",
            gated(&rec, &gate, &active, &peak, "report"),
            reports,
        )
        .unwrap();
    rec.script_claim(Ok(vec![running_task(1, "send", 1, t0())]));
    engine.start().await.unwrap();
    rec.wait("send running", started(1)).await;
    rec.wait_count("a second claim", 2, |event| matches!(event, Ev::Claim(_)))
        .await;
    let claims = rec.claims();
    let queue_of = |name: &str, max| ClaimName {
        name: name.into(),
        max,
        queue: "email".into(),
    };
    assert_eq!(
        claims[0].names,
        [queue_of("send", None), queue_of("welcome", Some(1))],
        "the reports queue is not served here"
    );
    assert_eq!(
        claims[0].queue_caps,
        [QueueCap {
            queue: "email".into(),
            max: 2
        }]
    );
    assert_eq!(
        claims[1].queue_caps,
        [QueueCap {
            queue: "email".into(),
            max: 1
        }],
        "one of the queue's two slots is taken"
    );
    gate.add_permits(1);
    engine.stop().await.unwrap();
}
