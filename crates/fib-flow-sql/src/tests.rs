//! Unit tests: row mapping and error mapping.

use std::time::Duration;

use fib_flow_domain::time::from_millis;
use fib_flow_domain::{
    ChildFailurePolicy, NewTask, RetryBackoff, Task, TaskId, TaskStatus, TaskType,
};
use fib_flow_ports::PortError;
use serde_json::{Value, json};

use crate::json_column::JsonText;
use crate::rows::{
    TaskRow, TaskValues, child_result, created_event, json_from_text, json_to_text, normalized,
};

pub(crate) fn sample_task() -> Task {
    Task {
        id: TaskId(42),
        name: "n".into(),
        task_type: TaskType::Cron,
        status: TaskStatus::Suspended,
        priority: -3,
        payload: json!({"a": 1}),
        created_at: from_millis(1_000),
        tag: Some("t".into()),
        next_run_time: from_millis(2_000),
        last_active_time: Some(from_millis(3_000)),
        last_event_time: Some(from_millis(3_001)),
        last_event_type: Some("task_suspended".into()),
        result: Some(Value::Null),
        error: Some("e".into()),
        current_stage_name: Some("s".into()),
        progress_text: Some("p".into()),
        progress_percent: Some(12.5),
        stage: 2,
        timeout: None,
        retry_count: 1,
        max_retries: 5,
        retry_interval: Duration::from_millis(250),
        retry_backoff: RetryBackoff::Exponential,
        cron_expr: Some("0 * * * *".into()),
        timezone: Some("UTC".into()),
        root_id: Some(TaskId(1)),
        parent_id: Some(TaskId(2)),
        parent_round: Some(3),
        total_children: 4,
        completed_children: 2,
        child_failure_policy: ChildFailurePolicy::FailParent,
        worker_id: Some("w".into()),
        start_time: Some(from_millis(2_500)),
        deadline: None,
        attempt: 7,
        context: Some(vec![0, 255]),
        suspend_reason: Some("review".into()),
        suspend_metadata: Some(json!({"k": "v"})),
        cron_key: None,
        unique_key: None,
    }
}

pub(crate) fn row_of(task: &Task) -> TaskRow {
    let v = TaskValues::from_task(task);
    TaskRow {
        id: task.id.0,
        name: v.name,
        task_type: v.task_type,
        status: v.status,
        priority: v.priority,
        payload: v.payload,
        created_at: v.created_at,
        tag: v.tag,
        next_run_time: v.next_run_time,
        last_active_time: v.last_active_time,
        last_event_time: v.last_event_time,
        last_event_type: v.last_event_type,
        result: v.result,
        error: v.error,
        current_stage_name: v.current_stage_name,
        progress_text: v.progress_text,
        progress_percent: v.progress_percent,
        stage: v.stage,
        timeout_ms: v.timeout_ms,
        retry_count: v.retry_count,
        max_retries: v.max_retries,
        retry_interval_ms: v.retry_interval_ms,
        retry_backoff: v.retry_backoff,
        cron_expr: v.cron_expr,
        timezone: v.timezone,
        root_id: v.root_id,
        parent_id: v.parent_id,
        parent_round: v.parent_round,
        total_children: v.total_children,
        completed_children: v.completed_children,
        child_failure_policy: v.child_failure_policy,
        worker_id: v.worker_id,
        start_time: v.start_time,
        deadline: v.deadline,
        attempt: v.attempt,
        context: v.context,
        suspend_reason: v.suspend_reason,
        suspend_metadata: v.suspend_metadata,
        cron_key: None,
        unique_key: None,
    }
}

#[test]
fn task_rows_round_trip() {
    let task = sample_task();
    let row = row_of(&task);
    assert_eq!(
        row.result.as_ref().map(JsonText::as_str),
        Some("null"),
        "JSON null result is the text null"
    );
    assert_eq!(row.timeout_ms, None);
    assert_eq!(row.retry_interval_ms, 250);
    assert_eq!(row.status, "suspended");
    assert_eq!(row.child_failure_policy, "fail_parent");
    assert_eq!(row.into_task().ok(), Some(task.clone()));

    let mut no_result = task;
    no_result.result = None;
    no_result.payload = Value::Null;
    let row = row_of(&no_result);
    assert_eq!(row.result, None, "no result is NULL");
    assert_eq!(row.payload.as_str(), "null", "payload is never NULL");
    assert_eq!(row.into_task().ok(), Some(no_result));
}

#[test]
fn malformed_enum_strings_are_named_errors() {
    let mut row = row_of(&sample_task());
    row.status = "exploded".into();
    let error = row.into_task().expect_err("bad status");
    assert!(
        error.0.contains("row 42") && error.0.contains("exploded"),
        "{}",
        error.0
    );
    let mut row = row_of(&sample_task());
    row.task_type = "weekly".into();
    assert!(row.into_task().is_err());
    let mut row = row_of(&sample_task());
    row.retry_backoff = "linear".into();
    assert!(row.into_task().is_err());
}

#[test]
fn json_that_does_not_read_back_is_a_decode_error_not_a_string() {
    assert_eq!(
        json_from_text("{\"a\":1}", "payload", 1),
        Ok(json!({"a": 1}))
    );
    let error = json_from_text("not json", "payload", 7).expect_err("not json");
    assert!(
        error.0.contains("row 7") && error.0.contains("payload"),
        "{error:?}"
    );
    // Nested past serde_json's recursion limit: was read back as a JSON string.
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let error = json_from_text(&deep, "result", 3).expect_err("too deep");
    assert!(error.0.contains("result"), "{error:?}");
    let mut row = row_of(&sample_task());
    row.payload = JsonText(deep);
    assert!(row.into_task().is_err());
    assert_eq!(json_to_text(&Value::Null).as_str(), "null");
    assert_eq!(json_to_text(&json!(0)).as_str(), "0");
}

#[test]
fn normalized_truncates_to_storage_precision() {
    let mut task = sample_task();
    task.created_at = from_millis(1_000) + chrono::TimeDelta::microseconds(1_700);
    task.timeout = Some(Duration::from_micros(1_500));
    let n = normalized(&task);
    assert_eq!(n.created_at, from_millis(1_001));
    // Durations round up: a stored limit is never shorter than the one asked for.
    assert_eq!(n.timeout, Some(Duration::from_millis(2)));
}

#[test]
fn created_events_and_child_results() {
    let task = NewTask {
        name: "kid".into(),
        task_type: TaskType::Async,
        priority: 0,
        payload: Value::Null,
        tag: None,
        next_run_time: from_millis(5),
        timeout: None,
        max_retries: 1,
        retry_interval: Duration::ZERO,
        retry_backoff: RetryBackoff::Fixed,
        cron_expr: None,
        timezone: None,
        root_id: Some(TaskId(1)),
        parent_id: Some(TaskId(2)),
        parent_round: Some(0),
        created_at: from_millis(5),
    };
    let event = created_event(&task, TaskId(9));
    assert_eq!(event.root_id, 1);
    assert_eq!(event.parent_id, Some(2));
    assert_eq!(event.event_type, "task_created");
    assert_eq!(event.to_status.as_deref(), Some("pending"));
    let root_event = created_event(
        &NewTask {
            root_id: None,
            ..task
        },
        TaskId(9),
    );
    assert_eq!(root_event.root_id, 9, "a root's events name itself as root");

    let done = child_result((
        1,
        "a".into(),
        "completed".into(),
        Some(JsonText("0".into())),
        None,
    ))
    .expect("decode");
    assert_eq!(done.result, Some(json!(0)));
    assert_eq!(done.error, None);
    let failed = child_result((
        2,
        "b".into(),
        "permanently_failed".into(),
        None,
        Some("x".into()),
    ))
    .expect("decode");
    assert_eq!(failed.result, None);
    assert_eq!(failed.error.as_deref(), Some("x"));
}

#[test]
fn transient_faults_are_unavailable() {
    use diesel::result::{DatabaseErrorKind, Error};
    let db = |kind, message: &str| Error::DatabaseError(kind, Box::new(message.to_owned()));
    for error in [
        db(DatabaseErrorKind::Unknown, "database is locked"),
        db(DatabaseErrorKind::Unknown, "deadlock detected"),
        db(
            DatabaseErrorKind::Unknown,
            "Deadlock found when trying to get lock; try restarting transaction",
        ),
        db(
            DatabaseErrorKind::Unknown,
            "Lock wait timeout exceeded; try restarting transaction",
        ),
        db(
            DatabaseErrorKind::SerializationFailure,
            "could not serialize access",
        ),
        db(DatabaseErrorKind::ClosedConnection, "closed"),
        db(
            DatabaseErrorKind::Unknown,
            "terminating connection due to administrator command",
        ),
        Error::BrokenTransactionManager,
    ] {
        let mapped = crate::error::db_error("x", error);
        assert!(mapped.is_transient(), "{mapped}");
    }
    let duplicate = crate::error::db_error(
        "x",
        db(DatabaseErrorKind::UniqueViolation, "duplicate key value"),
    );
    assert!(
        duplicate.is_unique_violation() && !duplicate.is_transient(),
        "{duplicate}"
    );
    for error in [
        db(
            DatabaseErrorKind::CheckViolation,
            "CHECK constraint failed: status",
        ),
        Error::NotFound,
    ] {
        let mapped = crate::error::db_error("x", error);
        assert!(
            matches!(mapped, PortError::Database { backend: "x", .. }),
            "{mapped}"
        );
    }
}

#[test]
fn domain_verdicts_map_to_stale_or_rejected() {
    use fib_flow_domain::DomainError;
    let stale = crate::error::domain_error(DomainError::StaleAttempt {
        task_id: TaskId(1),
        attempt: 2,
        current_attempt: 3,
        status: TaskStatus::Running,
    });
    assert!(matches!(
        stale,
        PortError::Stale {
            task_id: TaskId(1),
            attempt: 2
        }
    ));
    let rejected = crate::error::domain_error(DomainError::IllegalTransition {
        task_id: TaskId(1),
        from: TaskStatus::Completed,
        command: "pause",
    });
    assert!(matches!(rejected, PortError::Rejected(_)));
}

#[test]
fn connect_failures_are_permanent_only_when_retrying_cannot_help() {
    use diesel::result::{ConnectionError, DatabaseErrorKind, Error};
    use fib_flow_ports::ConnectErrorKind;
    let server = |message: &str| {
        ConnectionError::CouldntSetupConfiguration(Error::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new(message.to_owned()),
        ))
    };
    for (error, kind) in [
        (
            server("Access denied for user 'root'@'localhost' (using password: YES)"),
            ConnectErrorKind::Authentication,
        ),
        (
            server("password authentication failed for user \"postgres\""),
            ConnectErrorKind::Authentication,
        ),
        (
            server("role \"nobody\" does not exist"),
            ConnectErrorKind::Authentication,
        ),
        (
            server("Unknown database 'ff_missing'"),
            ConnectErrorKind::UnknownDatabase,
        ),
        (
            server("database \"ff_missing\" does not exist"),
            ConnectErrorKind::UnknownDatabase,
        ),
        (
            ConnectionError::InvalidConnectionUrl("invalid port number".into()),
            ConnectErrorKind::InvalidUrl,
        ),
    ] {
        let mapped = crate::error::connection_error("mysql", error);
        assert!(!mapped.is_transient(), "{mapped}");
        match &mapped {
            PortError::Connect { kind: found, .. } => assert_eq!(*found, kind, "{mapped}"),
            other => panic!("expected a permanent connect error, got {other:?}"),
        }
    }
    // The server's error stays reachable as the source.
    let mapped = crate::error::connection_error("mysql", server("Unknown database 'x'"));
    assert!(std::error::Error::source(&mapped).is_some());
    let sqlite = crate::error::connection_error(
        "sqlite",
        ConnectionError::BadConnection("unable to open database file".into()),
    );
    assert!(matches!(
        sqlite,
        PortError::Connect {
            kind: ConnectErrorKind::Unopenable,
            ..
        }
    ));
    for transient in [
        ConnectionError::BadConnection("Connection refused (os error 111)".into()),
        server("Too many connections"),
    ] {
        let mapped = crate::error::connection_error("mysql", transient);
        assert!(mapped.is_transient(), "{mapped}");
    }
}
