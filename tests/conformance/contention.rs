//! Many managers on one database: every task runs exactly once per attempt, also when the
//! workers' database connections are killed mid-run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fib_flow::{
    AttemptQuery, HandlerError, ManagerOptions, PageRequest, SystemClock, TaskHandle, TaskId,
    TaskManager, TaskOptions, TaskQuery, TaskStatus, json,
};

use crate::harness::{Backend, TestDb, eventually};

type Executions = Arc<Mutex<HashMap<TaskId, Vec<(String, i32)>>>>;

/// Builds `count` managers on the test database: separate pools where the backend can share
/// a database across pools, one shared store for `sqlite::memory:` (whose database lives in
/// one pool).
async fn managers(db: &TestDb, count: usize, executions: &Executions) -> Vec<TaskManager> {
    let mut managers: Vec<TaskManager> = Vec::new();
    for index in 0..count {
        let options = ManagerOptions {
            worker_id: Some(format!("worker-contender-{index}")),
            max_concurrent_tasks: 8,
            claim_batch_size: 8,
            ..db.options()
        };
        let manager = match managers.first() {
            Some(first) if !db.shares_across_managers() => {
                TaskManager::from_store(options, first.store().clone(), Arc::new(SystemClock))
                    .expect("shared-store manager")
            }
            _ => db.manager_with(options, None).await,
        };
        let log = executions.clone();
        manager
            .register("work", move |task: TaskHandle| {
                let log = log.clone();
                async move {
                    log.lock()
                        .expect("executions lock")
                        .entry(task.id())
                        .or_default()
                        .push((task.worker_id().to_owned(), task.attempt()));
                    Ok::<fib_flow::Outcome, HandlerError>(json!(null).into())
                }
            })
            .expect("register");
        managers.push(manager);
    }
    managers
}

async fn submit(manager: &TaskManager, total: usize) -> Vec<TaskId> {
    let mut ids = Vec::with_capacity(total);
    for chunk_start in (0..total).step_by(200) {
        let batch = (chunk_start..(chunk_start + 200).min(total))
            .map(|index| {
                let priority = i32::try_from((index * 7919) % 21).expect("small") - 10;
                (
                    "work".to_owned(),
                    json!({ "index": index }),
                    TaskOptions::default().priority(priority),
                )
            })
            .collect();
        ids.extend(manager.enqueue_many(batch).await.expect("enqueue_many"));
    }
    ids
}

async fn completed_count(manager: &TaskManager) -> u64 {
    manager
        .query_tasks(
            TaskQuery {
                status: Some(TaskStatus::Completed),
                ..TaskQuery::default()
            },
            PageRequest::limit(1),
        )
        .await
        .expect("count completed")
        .total
}

async fn assert_exactly_once(manager: &TaskManager, ids: &[TaskId], executions: &Executions) {
    let executions = executions.lock().expect("executions lock").clone();
    assert_eq!(executions.len(), ids.len(), "every task ran");
    for id in ids {
        let runs = executions.get(id).expect("task ran");
        let mut attempts: Vec<i32> = runs.iter().map(|(_, attempt)| *attempt).collect();
        attempts.sort_unstable();
        let before = attempts.len();
        attempts.dedup();
        assert_eq!(
            before,
            attempts.len(),
            "task {id} ran twice for one attempt: {runs:?}"
        );
    }
    let open = manager.query_workflow_attempts_all_open().await;
    assert_eq!(open, 0, "no attempt row is left open");
}

trait OpenAttempts {
    async fn query_workflow_attempts_all_open(&self) -> u64;
}

impl OpenAttempts for TaskManager {
    async fn query_workflow_attempts_all_open(&self) -> u64 {
        self.store()
            .query_attempts(
                AttemptQuery {
                    open_only: true,
                    ..AttemptQuery::default()
                },
                PageRequest::limit(1).bounds().expect("bounds"),
            )
            .await
            .expect("open attempts")
            .total
    }
}

pub async fn every_task_runs_exactly_once_under_contention(db: &TestDb) {
    const TASKS: usize = 2000;
    let executions: Executions = Arc::default();
    let managers = managers(db, 4, &executions).await;
    let ids = submit(&managers[0], TASKS).await;
    for manager in &managers {
        manager.start().await.expect("start");
    }
    eventually(
        "every task to complete",
        Duration::from_secs(180),
        || async { completed_count(&managers[0]).await == TASKS as u64 },
    )
    .await;
    assert_exactly_once(&managers[0], &ids, &executions).await;
    let executions = executions.lock().expect("lock").clone();
    assert!(
        executions.values().all(|runs| runs.len() == 1),
        "without faults every task runs exactly once"
    );
    for manager in &managers {
        manager.stop().await.expect("stop");
    }
}

/// Kills every other connection to the test database, as a server restart would.
async fn kill_connections(db: &TestDb) -> usize {
    match db.backend {
        #[cfg(feature = "postgres")]
        Backend::Postgres => {
            use diesel_async::{AsyncConnection, RunQueryDsl};
            let mut conn = diesel_async::AsyncPgConnection::establish(&db.url)
                .await
                .expect("admin connection");
            diesel::sql_query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .execute(&mut conn)
            .await
            .expect("terminate backends")
        }
        #[cfg(feature = "mysql")]
        Backend::Mysql => {
            use diesel_async::{AsyncConnection, RunQueryDsl};
            #[derive(diesel::QueryableByName)]
            struct Process {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                id: i64,
            }
            let mut conn = diesel_async::AsyncMysqlConnection::establish(&db.url)
                .await
                .expect("admin connection");
            let processes: Vec<Process> = diesel::sql_query(
                "SELECT CAST(id AS SIGNED) AS id FROM information_schema.processlist \
                 WHERE db = DATABASE() AND id <> CONNECTION_ID()",
            )
            .load(&mut conn)
            .await
            .expect("list connections");
            for process in &processes {
                // A connection may have closed since the listing; that is fine.
                let _ = diesel::sql_query(format!("KILL {}", process.id))
                    .execute(&mut conn)
                    .await;
            }
            processes.len()
        }
        Backend::SqliteMemory | Backend::SqliteFile => 0,
        // A server backend's tests exist only with its feature.
        #[cfg(not(all(feature = "postgres", feature = "mysql")))]
        other => unreachable!("{other} tests are built only with its feature"),
    }
}

pub async fn killed_connections_lose_no_task(db: &TestDb) {
    if !db.backend.is_server() {
        eprintln!(
            "skipped on {:?}: an embedded database has no server connections to kill",
            db.backend
        );
        return;
    }
    const TASKS: usize = 400;
    let executions: Executions = Arc::default();
    let managers = managers(db, 2, &executions).await;
    let ids = submit(&managers[0], TASKS).await;
    for manager in &managers {
        manager.start().await.expect("start");
    }
    let mut kills = 0;
    for _ in 0..3 {
        eventually(
            "some progress before the next kill",
            Duration::from_secs(60),
            || async { !executions.lock().expect("lock").is_empty() },
        )
        .await;
        kills += kill_connections(db).await;
    }
    assert!(kills > 0, "the fault was injected");
    eventually(
        "every task to complete after the faults",
        Duration::from_secs(180),
        || async { completed_count(&managers[0]).await == TASKS as u64 },
    )
    .await;
    assert_exactly_once(&managers[0], &ids, &executions).await;
    for manager in &managers {
        manager.stop().await.expect("stop");
    }
}
