//! Failure control (issue 11): permanent errors that skip retries, snooze, `retry_task` for
//! dead tasks, and exponential back-off's default base.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use fib_flow::error::RuntimeError;
use fib_flow::{
    AttemptOutcome, CronChange, Enqueued, Error, HandlerError, HandlerOptions, ManagerOptions,
    ManualClock, Outcome, RetryBackoff, TaskHandle, TaskManager, TaskOptions, TaskStatus, json,
    permanent,
};

use crate::harness::{Backend, TestDb, attempt_outcomes, event_types, poll_until, wait_status};

const LONG: Duration = Duration::from_secs(20);

fn start_instant() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 4, 1, 8, 0, 0)
        .single()
        .expect("valid instant")
}

async fn manual_manager(db: &TestDb) -> (TaskManager, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(start_instant()));
    (
        db.manager_with(db.options(), Some(clock.clone())).await,
        clock,
    )
}

/// Registers `name`: its first `failures` runs fail with `error()`, later runs succeed.
fn register_flaky(
    manager: &TaskManager,
    name: &str,
    failures: usize,
    error: fn() -> HandlerError,
) -> Arc<AtomicUsize> {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    manager
        .register(name, move |_task: TaskHandle| {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) < failures {
                    Err::<Outcome, HandlerError>(error())
                } else {
                    Ok(json!("ok").into())
                }
            }
        })
        .expect("register");
    runs
}

pub async fn a_permanent_error_skips_the_remaining_retries(db: &TestDb) {
    let manager = db.manager().await;
    let runs = register_flaky(&manager, "email", usize::MAX, || {
        permanent("invalid address: nobody@")
    });
    let id = manager
        .enqueue("email", json!({}), TaskOptions::default().max_retries(5))
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let task = wait_status(&manager, id, TaskStatus::PermanentlyFailed).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "no retry");
    assert_eq!(task.retry_count, 0);
    assert_eq!(task.error.as_deref(), Some("invalid address: nobody@"));
    let types = event_types(&manager, id).await;
    assert_eq!(
        types[types.len() - 2..],
        [
            "task_failed".to_owned(),
            "task_permanently_failed".to_owned()
        ]
    );
    let events = manager
        .task_events(id, fib_flow::EventQuery::default())
        .await
        .expect("events");
    let last = events.last().expect("events");
    assert_eq!(last.metadata["retry_skipped"], json!(true));

    // A cron task pauses instead.
    runs.store(0, Ordering::SeqCst);
    let cron = manager
        .cron(
            "email",
            "* * * * *",
            json!({}),
            TaskOptions::default().max_retries(5),
        )
        .await
        .expect("cron");
    let paused = poll_until("the cron task to pause", LONG, || async {
        let task = manager.get_task(cron).await.expect("get").expect("exists");
        (task.status == TaskStatus::Paused).then_some(task)
    });
    // A cron task first runs at its next minute: run it now by resuming it from a pause.
    manager.pause_task(cron).await.expect("pause");
    manager.resume_task(cron, None).await.expect("resume");
    let paused = paused.await;
    assert_eq!(paused.retry_count, 0);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    manager.stop().await.expect("stop");
}

pub async fn a_snoozed_task_runs_again_later_without_using_an_attempt(db: &TestDb) {
    let (manager, clock) = manual_manager(db).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    manager
        .register("poll", move |task: TaskHandle| {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Ok::<Outcome, HandlerError>(Outcome::snooze(Duration::from_secs(30)));
                }
                Ok(json!({ "attempt": task.attempt() }).into())
            }
        })
        .expect("register");
    let id = manager
        .enqueue("poll", json!({}), TaskOptions::default().max_retries(1))
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let snoozed = poll_until("the snooze", LONG, || async {
        let task = manager.get_task(id).await.expect("get").expect("exists");
        (task.status == TaskStatus::Pending && task.attempt == 1).then_some(task)
    })
    .await;
    assert_eq!(snoozed.next_run_time, clock.now() + Duration::from_secs(30));
    assert_eq!(snoozed.retry_count, 0);
    assert!(
        event_types(&manager, id)
            .await
            .contains(&"task_snoozed".to_owned())
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "not due before the snooze ends"
    );

    clock.advance(Duration::from_secs(30));
    let task = wait_status(&manager, id, TaskStatus::Completed).await;
    assert_eq!(task.result, Some(json!({ "attempt": 2 })));
    assert_eq!(
        task.retry_count, 0,
        "a snooze is not a retry, even with one attempt"
    );
    assert_eq!(
        attempt_outcomes(&manager, id).await,
        vec![
            Some(AttemptOutcome::Pending),
            Some(AttemptOutcome::Completed)
        ]
    );
    manager.stop().await.expect("stop");
}

pub async fn retry_task_revives_a_dead_task_with_its_history(db: &TestDb) {
    let manager = db.manager().await;
    let runs = register_flaky(&manager, "flaky", 1, || "upstream down".into());
    let id = manager
        .enqueue("flaky", json!({}), TaskOptions::default().max_retries(1))
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    wait_status(&manager, id, TaskStatus::PermanentlyFailed).await;

    let revived = manager
        .retry_task(id, Some("upstream fixed".to_owned()))
        .await
        .expect("retry_task");
    assert_eq!(revived.retry_count, 0);
    let task = wait_status(&manager, id, TaskStatus::Completed).await;
    assert_eq!(task.error, None, "the success clears the error");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let types = event_types(&manager, id).await;
    let retried = types
        .iter()
        .position(|t| t == "task_retried")
        .expect("audited");
    assert!(types[..retried].contains(&"task_permanently_failed".to_owned()));
    assert_eq!(
        attempt_outcomes(&manager, id).await,
        vec![
            Some(AttemptOutcome::Failed),
            Some(AttemptOutcome::Completed)
        ]
    );

    let refused = manager.retry_task(id, None).await;
    assert!(
        matches!(&refused, Err(Error::Runtime(RuntimeError::InvalidInput(error))) if error.to_string().contains("retry_task")),
        "{refused:?}"
    );
    manager.stop().await.expect("stop");
}

pub async fn exponential_backoff_has_a_default_base(db: &TestDb) {
    let (manager, clock) = manual_manager(db).await;
    register_flaky(&manager, "flaky", usize::MAX, || "boom".into());
    let options = TaskOptions::default()
        .max_retries(3)
        .retry_backoff(RetryBackoff::Exponential);
    let id = manager
        .enqueue("flaky", json!({}), options)
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let retrying = poll_until("the retry to be scheduled", LONG, || async {
        let task = manager.get_task(id).await.expect("get").expect("exists");
        (task.retry_count == 1 && task.status == TaskStatus::Pending).then_some(task)
    })
    .await;
    // 5 s base, shortened by up to half by jitter.
    let delay = retrying.next_run_time - clock.now();
    assert!(
        delay >= chrono::TimeDelta::milliseconds(2500) && delay <= chrono::TimeDelta::seconds(5),
        "{delay:?}"
    );
    manager.stop().await.expect("stop");
}

pub async fn cron_registration_is_idempotent_per_key(db: &TestDb) {
    let (manager, clock) = manual_manager(db).await;
    manager
        .register("cleanup", |_task: TaskHandle| async move {
            Ok::<Outcome, HandlerError>(json!(null).into())
        })
        .expect("register");
    let (id, change) = manager
        .cron_schedule(
            "cleanup",
            "0 3 * * *",
            json!({ "days": 30 }),
            TaskOptions::default(),
        )
        .await
        .expect("cron");
    assert_eq!(change, CronChange::Created);
    // Every start registers it again: nothing changes.
    for _ in 0..3 {
        let again = manager
            .cron_schedule(
                "cleanup",
                "0 3 * * *",
                json!({ "days": 30 }),
                TaskOptions::default(),
            )
            .await
            .expect("cron");
        assert_eq!(again, (id, CronChange::Unchanged));
    }
    assert_eq!(manager.crons().await.expect("crons").len(), 1);

    // A new expression redefines the schedule in place, audited.
    let (same, change) = manager
        .cron_schedule(
            "cleanup",
            "0 4 * * *",
            json!({ "days": 7 }),
            TaskOptions::default(),
        )
        .await
        .expect("cron");
    assert_eq!((same, change), (id, CronChange::Updated));
    let task = manager.get_task(id).await.expect("get").expect("exists");
    assert_eq!(task.cron_expr.as_deref(), Some("0 4 * * *"));
    assert_eq!(task.payload, json!({ "days": 7 }));
    assert_eq!(task.cron_key.as_deref(), Some("cleanup"));
    assert_eq!(
        task.next_run_time,
        Utc.with_ymd_and_hms(2026, 4, 2, 4, 0, 0)
            .single()
            .expect("instant")
    );
    let events = manager
        .task_events(id, fib_flow::EventQuery::default())
        .await
        .expect("events");
    let updated = events
        .iter()
        .find(|event| event.event_type.as_str() == "task_schedule_updated")
        .expect("audited");
    assert_eq!(updated.metadata["changed"], json!(["cron_expr", "payload"]));
    assert_eq!(updated.metadata["previous_cron_expr"], json!("0 3 * * *"));
    let _ = clock;

    // Several schedules of one handler need explicit keys.
    let (eu, change) = manager
        .cron_schedule(
            "cleanup",
            "30 3 * * *",
            json!({ "region": "eu" }),
            TaskOptions::default().cron_key("cleanup-eu"),
        )
        .await
        .expect("cron");
    assert_eq!(change, CronChange::Created);
    assert_ne!(eu, id);
    assert_eq!(manager.crons().await.expect("crons").len(), 2);
    assert!(manager.remove_cron("cleanup-eu").await.expect("remove"));
    assert!(
        !manager
            .remove_cron("cleanup-eu")
            .await
            .expect("remove again")
    );
    assert_eq!(manager.get_task(eu).await.expect("get"), None);

    // Concurrent registrations of one key leave exactly one schedule (the database decides).
    let registrations = (0..8).map(|_| {
        manager.cron_schedule(
            "cleanup",
            "*/5 * * * *",
            json!(1),
            TaskOptions::default().cron_key("race"),
        )
    });
    let results = futures_join_all(registrations).await;
    let ids: std::collections::BTreeSet<_> = results.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), 1, "{results:?}");
    assert_eq!(
        results
            .iter()
            .filter(|(_, change)| *change == CronChange::Created)
            .count(),
        1,
        "{results:?}"
    );

    let misplaced = manager
        .cron(
            "cleanup",
            "* * * * *",
            json!(1),
            TaskOptions::default().unique_key("k"),
        )
        .await;
    assert!(
        matches!(&misplaced, Err(Error::Runtime(RuntimeError::InvalidInput(e))) if e.to_string().contains("unique_key")),
        "{misplaced:?}"
    );
}

pub async fn unique_key_returns_the_unfinished_task(db: &TestDb) {
    let manager = db.manager().await;
    manager
        .register("job", |task: TaskHandle| async move {
            Ok::<Outcome, HandlerError>(task.payload().clone().into())
        })
        .expect("register");
    let unique = || TaskOptions::default().unique_key("order-1");
    let first = manager
        .enqueue_unique("job", json!(1), unique())
        .await
        .expect("enqueue");
    assert!(first.created);
    let second = manager
        .enqueue_unique("job", json!(2), unique())
        .await
        .expect("enqueue");
    assert_eq!(
        second,
        Enqueued {
            id: first.id,
            created: false
        }
    );
    assert_eq!(
        manager
            .enqueue("job", json!(3), unique())
            .await
            .expect("enqueue"),
        first.id
    );
    let other = manager
        .enqueue_unique(
            "job",
            json!(4),
            TaskOptions::default().unique_key("order-2"),
        )
        .await
        .expect("enqueue");
    assert!(other.created);

    // Concurrent submissions of one key: one task.
    let submissions = (0..8).map(|n| {
        manager.enqueue_unique("job", json!(n), TaskOptions::default().unique_key("race"))
    });
    let results = futures_join_all(submissions).await;
    assert_eq!(
        results.iter().filter(|e| e.created).count(),
        1,
        "{results:?}"
    );
    let ids: std::collections::BTreeSet<_> = results.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 1);

    // Once the task is finished, the key is free again.
    manager.start().await.expect("start");
    let done = wait_status(&manager, first.id, TaskStatus::Completed).await;
    assert_eq!(done.result, Some(json!(1)));
    assert_eq!(done.unique_key.as_deref(), Some("order-1"));
    let again = manager
        .enqueue_unique("job", json!(5), unique())
        .await
        .expect("enqueue");
    assert!(again.created);
    assert_ne!(again.id, first.id);

    let batch = manager
        .enqueue_many(vec![("job".to_owned(), json!(1), unique())])
        .await;
    assert!(
        matches!(&batch, Err(Error::Runtime(RuntimeError::InvalidInput(e))) if e.to_string().contains("unique_key")),
        "{batch:?}"
    );
    let misplaced = manager
        .enqueue("job", json!(1), TaskOptions::default().cron_key("k"))
        .await;
    assert!(
        matches!(&misplaced, Err(Error::Runtime(RuntimeError::InvalidInput(e))) if e.to_string().contains("cron_key")),
        "{misplaced:?}"
    );
    manager.stop().await.expect("stop");
}

/// Runs the futures concurrently (one task, interleaved over the pool's connections) and
/// returns their results in order, unwrapped.
async fn futures_join_all<T, F>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = Result<T, Error>>,
{
    futures_util::future::join_all(futures)
        .await
        .into_iter()
        .map(|result| result.expect("submission"))
        .collect()
}

/// A row of the outbox test's business table.
#[derive(Debug, PartialEq, diesel::QueryableByName)]
struct OrderRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

/// An error of the caller's transaction in the outbox test: the database's or fib-flow's.
#[derive(Debug)]
enum OutboxError {
    Db(diesel::result::Error),
    Flow(Error),
}

impl std::fmt::Display for OutboxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutboxError::Db(error) => write!(f, "database: {error}"),
            OutboxError::Flow(error) => write!(f, "fib-flow: {error}"),
        }
    }
}

impl From<diesel::result::Error> for OutboxError {
    fn from(error: diesel::result::Error) -> Self {
        OutboxError::Db(error)
    }
}

/// The business write and the task in one transaction of the caller's own connection: rolled
/// back, neither exists; committed, both do (and the task runs).
macro_rules! outbox_case {
    ($manager:expr, $conn:expr) => {{
        use diesel_async::{AsyncConnection, RunQueryDsl};
        let manager: &TaskManager = $manager;
        let conn = $conn;
        diesel::sql_query("CREATE TABLE outbox_orders (id BIGINT PRIMARY KEY)")
            .execute(conn)
            .await
            .expect("create the business table");
        let rolled_back: Result<(), OutboxError> = conn
            .transaction(async |c| {
                diesel::sql_query("INSERT INTO outbox_orders (id) VALUES (1)")
                    .execute(c)
                    .await?;
                manager
                    .enqueue_in(c, "job", json!({ "order": 1 }), TaskOptions::default())
                    .await
                    .map_err(OutboxError::Flow)?;
                Err(OutboxError::Db(diesel::result::Error::RollbackTransaction))
            })
            .await;
        assert!(
            matches!(
                rolled_back,
                Err(OutboxError::Db(diesel::result::Error::RollbackTransaction))
            ),
            "{rolled_back:?}"
        );
        assert!(manager.tasks_by_name("job").await.expect("tasks").is_empty(), "no task");

        let id = conn
            .transaction(async |c| {
                diesel::sql_query("INSERT INTO outbox_orders (id) VALUES (2)")
                    .execute(c)
                    .await?;
                manager
                    .enqueue_in(c, "job", json!({ "order": 2 }), TaskOptions::default())
                    .await
                    .map_err(OutboxError::Flow)
            })
            .await
            .unwrap_or_else(|error: OutboxError| panic!("commit: {error}"));
        let orders: Vec<OrderRow> = diesel::sql_query("SELECT id FROM outbox_orders")
            .load(conn)
            .await
            .expect("orders");
        assert_eq!(orders, vec![OrderRow { id: 2 }], "only the committed order");
        manager.start().await.expect("start");
        let task = wait_status(manager, id, TaskStatus::Completed).await;
        assert_eq!(task.result, Some(json!({ "order": 2 })));
        assert_eq!(manager.tasks_by_name("job").await.expect("tasks").len(), 1);
        manager.stop().await.expect("stop");
    }};
}

pub async fn enqueue_in_the_callers_transaction_commits_or_rolls_back_with_it(db: &TestDb) {
    use diesel_async::AsyncConnection;
    let manager = db.manager().await;
    manager
        .register("job", |task: TaskHandle| async move {
            Ok::<Outcome, HandlerError>(task.payload().clone().into())
        })
        .expect("register");
    match db.backend {
        Backend::SqliteMemory => {
            eprintln!(
                "skipped on SqliteMemory: a private in-memory database has no second connection for the caller"
            );
        }
        #[cfg(feature = "sqlite")]
        Backend::SqliteFile => {
            use diesel_async::RunQueryDsl;
            use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
            let path = db.url.trim_start_matches("sqlite:");
            let mut conn = SyncConnectionWrapper::<diesel::SqliteConnection>::establish(path)
                .await
                .expect("caller connection");
            // The workers write to the same file; wait for their locks like fib-flow does.
            diesel::sql_query("PRAGMA busy_timeout = 5000")
                .execute(&mut conn)
                .await
                .expect("busy timeout");
            outbox_case!(&manager, &mut conn);
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres => {
            let mut conn = diesel_async::AsyncPgConnection::establish(&db.url)
                .await
                .expect("caller connection");
            outbox_case!(&manager, &mut conn);
        }
        #[cfg(feature = "mysql")]
        Backend::Mysql => {
            let mut conn = diesel_async::AsyncMysqlConnection::establish(&db.url)
                .await
                .expect("caller connection");
            outbox_case!(&manager, &mut conn);
        }
        #[allow(unreachable_patterns)]
        other => eprintln!("skipped on {other:?}: its cargo feature is off"),
    }
}

pub async fn named_queues_split_workers_and_bound_each_queue(db: &TestDb) {
    let email_worker = ManagerOptions {
        queues: Some(vec!["email".into()]),
        queue_concurrency: [("email".to_owned(), 1)].into(),
        ..db.options()
    };
    let manager = db.manager_with(email_worker, None).await;
    let active = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (now_active, max_seen) = (active.clone(), peak.clone());
    let email = HandlerOptions {
        queue: Some("email".into()),
        ..HandlerOptions::default()
    };
    manager
        .register_with(
            "send",
            move |_task: TaskHandle| {
                let (active, peak) = (now_active.clone(), max_seen.clone());
                async move {
                    let running = active.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(running, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    active.fetch_sub(1, Ordering::SeqCst);
                    Ok::<Outcome, HandlerError>(json!("sent").into())
                }
            },
            email,
        )
        .expect("register");
    let reports = HandlerOptions {
        queue: Some("reports".into()),
        ..HandlerOptions::default()
    };
    let report =
        |_task: TaskHandle| async move { Ok::<Outcome, HandlerError>(json!("report").into()) };
    manager
        .register_with("report", report, reports.clone())
        .expect("register");
    let mut sends = Vec::new();
    for n in 0..4 {
        sends.push(
            manager
                .enqueue("send", json!(n), TaskOptions::default())
                .await
                .expect("enqueue"),
        );
    }
    let report_id = manager
        .enqueue("report", json!({}), TaskOptions::default())
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    for id in &sends {
        wait_status(&manager, *id, TaskStatus::Completed).await;
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        1,
        "the email queue's limit held"
    );
    assert_eq!(
        manager
            .get_task(report_id)
            .await
            .expect("get")
            .expect("exists")
            .status,
        TaskStatus::Pending,
        "this worker does not serve the reports queue"
    );

    if db.shares_across_managers() {
        let reports_worker = ManagerOptions {
            queues: Some(vec!["reports".into()]),
            ..db.options()
        };
        let other = db.manager_with(reports_worker, None).await;
        other
            .register_with("report", report, reports)
            .expect("register");
        other.start().await.expect("start");
        wait_status(&other, report_id, TaskStatus::Completed).await;
        other.stop().await.expect("stop");
    }
    let refused = TaskManager::new(ManagerOptions {
        queue_concurrency: [("email".to_owned(), 0)].into(),
        ..db.options()
    })
    .await;
    assert!(
        matches!(&refused, Err(error) if error.to_string().contains("queue_concurrency")),
        "{:?}",
        refused.err()
    );
    manager.stop().await.expect("stop");
}
