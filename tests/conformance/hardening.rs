//! Issue 9, "Hardening": input every backend must refuse identically and up front (names,
//! tags, ids, JSON depth and size, sub-millisecond timeouts), permanent connect errors, and a
//! schema migrated by a newer build.

use std::time::Duration;

use fib_flow::error::{DomainError, PortError, RuntimeError};
use fib_flow::storage::ConnectErrorKind;
use fib_flow::{
    Error, HandlerError, ManagerOptions, TaskHandle, TaskManager, TaskOptions, TaskQuery,
    TaskStatus, Value, json,
};
use fib_flow_domain::limits::{MAX_JSON_DEPTH, MAX_NAME_BYTES, MAX_VALUE_BYTES};

use crate::harness::{Backend, TestDb, wait_status};

async fn echo(task: TaskHandle) -> Result<fib_flow::Outcome, HandlerError> {
    Ok(task.payload().clone().into())
}

fn nested(depth: usize) -> Value {
    let mut value = json!("leaf");
    for _ in 0..depth {
        value = json!([value]);
    }
    value
}

fn is_invalid(result: &Result<impl std::fmt::Debug, Error>, field: &str) -> bool {
    match result {
        Err(Error::Invalid(error)) | Err(Error::Runtime(RuntimeError::InvalidInput(error))) => {
            match error {
                DomainError::InvalidOption { field: f, .. }
                | DomainError::TooLong { field: f, .. }
                | DomainError::JsonTooDeep { field: f, .. } => *f == field,
                _ => false,
            }
        }
        _ => false,
    }
}

async fn task_count(manager: &TaskManager) -> usize {
    manager
        .get_tasks(TaskQuery::default())
        .await
        .expect("list")
        .len()
}

pub async fn deep_json_round_trips_or_is_refused(db: &TestDb) {
    let manager = db.manager().await;
    manager.register("echo", echo).expect("register");

    // Refused at submit, naming the field and the limit; nothing is stored.
    let refused = manager
        .enqueue("echo", nested(200), TaskOptions::default())
        .await;
    assert!(
        matches!(
            &refused,
            Err(Error::Runtime(RuntimeError::InvalidInput(
                DomainError::JsonTooDeep {
                    field: "payload",
                    depth: 200,
                    max: MAX_JSON_DEPTH,
                }
            )))
        ),
        "{refused:?}"
    );
    assert!(refused.as_ref().is_err_and(|e| !e.is_transient()));
    assert_eq!(task_count(&manager).await, 0);

    // The deepest accepted payload comes back exactly, as payload and as result.
    let deepest = nested(MAX_JSON_DEPTH);
    let id = manager
        .enqueue("echo", deepest.clone(), TaskOptions::default())
        .await
        .expect("enqueue the deepest payload");
    let stored = manager.get_task(id).await.expect("get").expect("exists");
    assert_eq!(stored.payload, deepest);

    // A handler result too deep to read back fails the attempt with the reason.
    manager
        .register("deep_result", |_task: TaskHandle| async move {
            Ok::<fib_flow::Outcome, HandlerError>(nested(200).into())
        })
        .expect("register");
    let deep = manager
        .enqueue(
            "deep_result",
            json!({}),
            TaskOptions::default().max_retries(1),
        )
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let done = wait_status(&manager, id, TaskStatus::Completed).await;
    assert_eq!(done.result, Some(deepest));
    let failed = wait_status(&manager, deep, TaskStatus::PermanentlyFailed).await;
    let error = failed.error.expect("error text");
    assert!(
        error.contains("result")
            && error.contains("200")
            && error.contains(&MAX_JSON_DEPTH.to_string()),
        "{error}"
    );
    assert_eq!(failed.result, None);
    manager.stop().await.expect("stop");
}

pub async fn names_tags_and_ids_are_checked_up_front(db: &TestDb) {
    let manager = db.manager().await;
    let long = "n".repeat(MAX_NAME_BYTES + 1);
    assert!(is_invalid(&manager.register("", echo), "name"));
    assert!(is_invalid(&manager.register(long.clone(), echo), "name"));
    manager.register("echo", echo).expect("register");
    let longest = "n".repeat(MAX_NAME_BYTES);
    manager
        .register(longest.clone(), echo)
        .expect("255 bytes fit");

    let empty = manager.enqueue("", json!({}), TaskOptions::default()).await;
    assert!(is_invalid(&empty, "name"), "{empty:?}");
    let long_name = manager
        .enqueue(&long, json!({}), TaskOptions::default())
        .await;
    assert!(is_invalid(&long_name, "name"), "{long_name:?}");
    let long_cron = manager
        .cron(&long, "0 * * * *", json!({}), TaskOptions::default())
        .await;
    assert!(is_invalid(&long_cron, "name"), "{long_cron:?}");
    let long_tag = manager
        .enqueue(
            "echo",
            json!({}),
            TaskOptions::default().tag("t".repeat(10_000)),
        )
        .await;
    assert!(is_invalid(&long_tag, "tag"), "{long_tag:?}");
    let empty_tag = manager
        .enqueue("echo", json!({}), TaskOptions::default().tag(""))
        .await;
    assert!(is_invalid(&empty_tag, "tag"), "{empty_tag:?}");
    let batch = manager
        .enqueue_many(vec![
            ("echo".into(), json!(1), TaskOptions::default()),
            (
                "echo".into(),
                json!(2),
                TaskOptions::default().tag("t".repeat(256)),
            ),
        ])
        .await;
    assert!(is_invalid(&batch, "tag"), "{batch:?}");
    assert_eq!(task_count(&manager).await, 0, "nothing was stored");

    // The longest accepted values are stored the same way on every backend.
    let id = manager
        .enqueue(
            &longest,
            json!({}),
            TaskOptions::default().tag("t".repeat(MAX_NAME_BYTES)),
        )
        .await
        .expect("255-byte name and tag");
    let stored = manager.get_task(id).await.expect("get").expect("exists");
    assert_eq!(stored.name, longest);
    manager.stop().await.expect("stop");

    // A worker or pod id that no claim could write is refused before start().
    for (options, field) in [
        (
            ManagerOptions {
                worker_id: Some("w".repeat(300)),
                ..db.options()
            },
            "worker_id",
        ),
        (
            ManagerOptions {
                pod_id: Some("p".repeat(300)),
                ..db.options()
            },
            "pod_id",
        ),
    ] {
        let built = TaskManager::new(options).await;
        assert!(
            matches!(&built, Err(Error::Invalid(DomainError::TooLong { field: f, max: MAX_NAME_BYTES, .. })) if *f == field),
            "{field}: {:?}",
            built.as_ref().err()
        );
    }
}

pub async fn oversized_values_get_a_typed_size_error(db: &TestDb) {
    let manager = db.manager().await;
    manager.register("echo", echo).expect("register");
    let too_big = json!("x".repeat(MAX_VALUE_BYTES));
    let refused = manager
        .enqueue("echo", too_big, TaskOptions::default())
        .await;
    assert!(
        matches!(
            &refused,
            Err(Error::Runtime(RuntimeError::InvalidInput(
                DomainError::TooLong {
                    field: "payload",
                    max: MAX_VALUE_BYTES,
                    ..
                }
            )))
        ),
        "{:?}",
        refused.as_ref().err().map(ToString::to_string)
    );
    assert!(refused.as_ref().is_err_and(|e| !e.is_transient()));
    assert_eq!(task_count(&manager).await, 0);

    // Just below the limit: stored and read back exactly on every backend, MariaDB's default
    // 16 MiB packet included. (Not executed here: on MariaDB the completion write of a row this
    // large currently deadlocks with the heartbeat update, a write-path issue tracked apart.)
    let largest = json!("y".repeat(MAX_VALUE_BYTES - 2));
    let id = manager
        .enqueue("echo", largest.clone(), TaskOptions::default())
        .await
        .expect("the largest payload");
    let stored = manager.get_task(id).await.expect("get").expect("exists");
    assert_eq!(stored.payload, largest);
    manager.stop().await.expect("stop");
}

pub async fn sub_millisecond_timeouts_are_refused(db: &TestDb) {
    let manager = db.manager().await;
    manager.register("echo", echo).expect("register");
    let refused = manager
        .enqueue(
            "echo",
            json!({}),
            TaskOptions::default().timeout(Duration::from_micros(500)),
        )
        .await;
    assert!(is_invalid(&refused, "timeout"), "{refused:?}");
    // Fractions above 1 ms round up: the stored limit is never shorter than asked.
    let id = manager
        .enqueue(
            "echo",
            json!({}),
            TaskOptions::default().timeout(Duration::from_micros(1_500)),
        )
        .await
        .expect("enqueue");
    let stored = manager.get_task(id).await.expect("get").expect("exists");
    assert_eq!(stored.timeout, Some(Duration::from_millis(2)));
    manager.stop().await.expect("stop");
}

/// `db.url` with its database name replaced.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let cut = base.rfind('/').expect("a database path");
    let mut out = format!("{}/{name}", &base[..cut]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// `db.url` with `user:password@` as credentials.
fn with_password(url: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let user = authority
        .rsplit_once('@')
        .map(|(user, _)| user.split(':').next().unwrap_or(user))
        .unwrap_or("root");
    format!("{scheme}://{user}:{password}@{host}/{path}")
}

async fn connect_error(url: String) -> Error {
    match TaskManager::new(ManagerOptions::new(url.clone())).await {
        Ok(manager) => match manager.setup().await {
            Ok(()) => panic!("{url}: connected"),
            Err(error) => error,
        },
        Err(error) => error,
    }
}

fn connect_kind(error: &Error) -> Option<ConnectErrorKind> {
    match error {
        Error::Store(PortError::Connect { kind, .. }) => Some(*kind),
        _ => None,
    }
}

pub async fn permanent_connect_errors_are_not_transient(db: &TestDb) {
    let mut cases: Vec<(String, ConnectErrorKind)> = Vec::new();
    match db.backend {
        Backend::SqliteMemory | Backend::SqliteFile => {
            let missing = std::env::temp_dir()
                .join(format!("ff-missing-dir-{}", std::process::id()))
                .join("nested")
                .join("tasks.db");
            cases.push((
                format!("sqlite:{}", missing.display()),
                ConnectErrorKind::Unopenable,
            ));
        }
        Backend::Postgres | Backend::Mysql => {
            cases.push((
                with_database(&db.url, "ff_no_such_database_here"),
                ConnectErrorKind::UnknownDatabase,
            ));
            let scheme = if db.backend == Backend::Postgres {
                "postgres"
            } else {
                "mysql"
            };
            cases.push((
                format!("{scheme}://user@127.0.0.1:notaport/db"),
                ConnectErrorKind::InvalidUrl,
            ));
            if db.backend == Backend::Mysql {
                cases.push((
                    with_password(&db.url, "certainly-wrong-password"),
                    ConnectErrorKind::Authentication,
                ));
            }
        }
    }
    for (url, kind) in cases {
        let error = connect_error(url.clone()).await;
        assert_eq!(connect_kind(&error), Some(kind), "{url}: {error:?}");
        assert!(!error.is_transient(), "{url}: {error}");
    }

    if db.backend.is_server() {
        // A server that does not answer is a real transient fault.
        let scheme = if db.backend == Backend::Postgres {
            "postgres"
        } else {
            "mysql"
        };
        let error = connect_error(format!("{scheme}://root@127.0.0.1:1/db")).await;
        assert!(error.is_transient(), "{error:?}");
    }
}

const FUTURE_VERSION: &str = "99991231235959";

/// Records a migration this build does not know, as a newer build would have.
async fn apply_future_migration(db: &TestDb) {
    let insert =
        format!("INSERT INTO __diesel_schema_migrations (version) VALUES ('{FUTURE_VERSION}')");
    match db.backend {
        Backend::SqliteMemory => unreachable!("a private in-memory database"),
        #[cfg(feature = "sqlite")]
        Backend::SqliteFile => {
            use diesel::Connection;
            let path = db.url.strip_prefix("sqlite:").expect("sqlite url");
            let mut conn = diesel::SqliteConnection::establish(path).expect("open");
            diesel::RunQueryDsl::execute(diesel::sql_query(insert), &mut conn).expect("insert");
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres => {
            use diesel_async::{AsyncConnection, RunQueryDsl};
            let mut conn = diesel_async::AsyncPgConnection::establish(&db.url)
                .await
                .expect("connect");
            diesel::sql_query(insert)
                .execute(&mut conn)
                .await
                .expect("insert");
        }
        #[cfg(feature = "mysql")]
        Backend::Mysql => {
            use diesel_async::{AsyncConnection, RunQueryDsl};
            let mut conn = diesel_async::AsyncMysqlConnection::establish(&db.url)
                .await
                .expect("connect");
            diesel::sql_query(insert)
                .execute(&mut conn)
                .await
                .expect("insert");
        }
        // A backend's tests exist only with its feature.
        #[cfg(not(all(feature = "sqlite", feature = "postgres", feature = "mysql")))]
        other => unreachable!("{other} tests are built only with its feature"),
    }
}

pub async fn a_newer_schema_is_refused_at_setup(db: &TestDb) {
    if !db.shares_across_managers() {
        // A private in-memory database cannot have been migrated by another build.
        return;
    }
    let manager = db.manager().await;
    manager.stop().await.expect("stop");
    apply_future_migration(db).await;
    let newer = TaskManager::new(db.options()).await.expect("connect");
    let error = newer.setup().await.expect_err("a newer schema");
    match &error {
        Error::Store(PortError::SchemaTooNew {
            database_version,
            supported_version,
            ..
        }) => {
            assert_eq!(database_version, FUTURE_VERSION);
            assert!(!supported_version.is_empty() && supported_version.as_str() < FUTURE_VERSION);
            let message = error.to_string();
            assert!(
                message.contains(FUTURE_VERSION) && message.contains(supported_version.as_str()),
                "{message}"
            );
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    assert!(!error.is_transient());
}
