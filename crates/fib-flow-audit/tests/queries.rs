//! The `Audit` service against a mocked store: forced ids, validated page bounds, assembled
//! views, and the summary loader's paging.

mod common;

use std::sync::Arc;

use common::{done, event, started, task};
use fib_flow_audit::{Audit, AuditError, TaskAuditOptions, WorkflowAuditOptions};
use fib_flow_domain::query::{
    AttemptQuery, EventQuery, Order, Page, PageBounds, PageRequest, TaskQuery,
};
use fib_flow_domain::{
    AttemptOutcome, DomainError, EventType, TaskAttempt, TaskEvent, TaskId, TaskStatus,
};
use fib_flow_ports::{MockTaskStore, PortError};

fn bounds(limit: u32, offset: u64, order: Order) -> PageBounds {
    PageBounds {
        limit,
        offset,
        order,
    }
}

fn audit(store: MockTaskStore) -> Audit {
    Audit::new(Arc::new(store))
}

fn empty<T>(page: PageBounds) -> Page<T> {
    Page::new(Vec::new(), 0, page)
}

/// The field a rejected page request names.
fn invalid_field(error: AuditError) -> &'static str {
    match error {
        AuditError::Invalid(DomainError::InvalidOption { field, .. }) => field,
        other => panic!("expected an invalid-option error, got {other:?}"),
    }
}

#[tokio::test]
async fn query_tasks_forwards_the_filter_and_the_default_bounds() {
    let mut store = MockTaskStore::new();
    store
        .expect_query_tasks()
        .withf(|query, page| {
            query.name.as_deref() == Some("resize")
                && query.status == Some(TaskStatus::Failed)
                && *page == bounds(100, 0, Order::Asc)
        })
        .times(1)
        .returning(|_, page| {
            Ok(Page::new(
                vec![task(1, "resize", TaskStatus::Failed)],
                1,
                page,
            ))
        });
    let query = TaskQuery {
        name: Some("resize".into()),
        status: Some(TaskStatus::Failed),
        ..TaskQuery::default()
    };
    let page = audit(store)
        .query_tasks(query, PageRequest::default())
        .await
        .expect("page");
    assert_eq!(page.items.len(), 1);
    assert_eq!(
        (page.total, page.limit, page.offset, page.has_more),
        (1, 100, 0, false)
    );
}

#[tokio::test]
async fn query_task_events_forces_the_task_id_and_keeps_the_other_filters() {
    let mut store = MockTaskStore::new();
    store
        .expect_query_events()
        .withf(|query, page| {
            query.task_id == Some(TaskId(7))
                && query.root_id.is_none()
                && query.attempt == Some(2)
                && query.event_types == vec![EventType::TaskFailed]
                && *page == bounds(50, 10, Order::Desc)
        })
        .times(1)
        .returning(|_, page| Ok(empty(page)));
    let query = EventQuery {
        task_id: Some(TaskId(99)), // overridden by the method's id
        attempt: Some(2),
        event_types: vec![EventType::TaskFailed],
        ..EventQuery::default()
    };
    let page = audit(store)
        .query_task_events(
            TaskId(7),
            query,
            PageRequest::limit(50).offset(10).order(Order::Desc),
        )
        .await
        .expect("page");
    assert_eq!((page.limit, page.offset), (50, 10));
}

#[tokio::test]
async fn query_workflow_events_forces_the_root_id() {
    let mut store = MockTaskStore::new();
    store
        .expect_query_events()
        .withf(|query, page| {
            query.root_id == Some(TaskId(3))
                && query.task_id.is_none()
                && query.stage == Some(0)
                && *page == bounds(1000, 0, Order::Asc)
        })
        .times(1)
        .returning(|_, page| Ok(empty(page)));
    let query = EventQuery {
        root_id: Some(TaskId(4)),
        stage: Some(0),
        ..EventQuery::default()
    };
    audit(store)
        .query_workflow_events(TaskId(3), query, PageRequest::limit(1000))
        .await
        .expect("page");
}

#[tokio::test]
async fn query_task_attempts_forces_the_task_id() {
    let mut store = MockTaskStore::new();
    store
        .expect_query_attempts()
        .withf(|query, page| {
            query.task_id == Some(TaskId(5))
                && query.workflow_root_id.is_none()
                && query.outcome == Some(AttemptOutcome::Timeout)
                && query.open_only
                && *page == bounds(1, 0, Order::Asc)
        })
        .times(1)
        .returning(|_, page| Ok(empty(page)));
    let query = AttemptQuery {
        outcome: Some(AttemptOutcome::Timeout),
        open_only: true,
        ..AttemptQuery::default()
    };
    audit(store)
        .query_task_attempts(TaskId(5), query, PageRequest::limit(1))
        .await
        .expect("page");
}

#[tokio::test]
async fn query_workflow_attempts_forces_the_workflow_root() {
    let mut store = MockTaskStore::new();
    store
        .expect_query_attempts()
        .withf(|query, page| {
            query.workflow_root_id == Some(TaskId(8))
                && query.task_id.is_none()
                && query.worker_id.as_deref() == Some("w1")
                && *page == bounds(100, 200, Order::Desc)
        })
        .times(1)
        .returning(|_, page| Ok(empty(page)));
    let query = AttemptQuery {
        workflow_root_id: Some(TaskId(1)),
        worker_id: Some("w1".into()),
        ..AttemptQuery::default()
    };
    audit(store)
        .query_workflow_attempts(
            TaskId(8),
            query,
            PageRequest::default().offset(200).order(Order::Desc),
        )
        .await
        .expect("page");
}

#[tokio::test]
async fn out_of_range_pages_are_typed_errors_and_never_reach_the_store() {
    // No expectations: any store call panics.
    let audit = audit(MockTaskStore::new());
    for limit in [0, 1001] {
        let page = PageRequest::limit(limit);
        let errors = [
            audit
                .query_tasks(TaskQuery::default(), page)
                .await
                .expect_err("limit"),
            audit
                .query_task_events(TaskId(1), EventQuery::default(), page)
                .await
                .expect_err("limit"),
            audit
                .query_workflow_events(TaskId(1), EventQuery::default(), page)
                .await
                .expect_err("limit"),
            audit
                .query_task_attempts(TaskId(1), AttemptQuery::default(), page)
                .await
                .expect_err("limit"),
            audit
                .query_workflow_attempts(TaskId(1), AttemptQuery::default(), page)
                .await
                .expect_err("limit"),
        ];
        for error in errors {
            assert!(!error.is_transient());
            assert!(error.to_string().contains("limit"), "{error}");
            assert_eq!(invalid_field(error), "limit");
        }
    }
    let error = audit
        .query_tasks(
            TaskQuery::default(),
            PageRequest::default().offset(u64::MAX),
        )
        .await
        .expect_err("offset");
    assert_eq!(invalid_field(error), "offset");
}

#[tokio::test]
async fn store_errors_surface_as_store_errors() {
    let mut store = MockTaskStore::new();
    store.expect_query_tasks().returning(|_, _| {
        Err(PortError::Unavailable {
            backend: "sqlite",
            message: "database is locked".into(),
        })
    });
    let error = audit(store)
        .query_tasks(TaskQuery::default(), PageRequest::default())
        .await
        .expect_err("store error");
    assert!(error.is_transient());
    assert!(matches!(
        error,
        AuditError::Store(PortError::Unavailable { .. })
    ));
}

#[tokio::test]
async fn task_audit_assembles_the_task_its_events_and_its_attempts() {
    let mut store = MockTaskStore::new();
    store
        .expect_get_task()
        .withf(|id| *id == TaskId(4))
        .times(1)
        .returning(|_| Ok(Some(task(4, "resize", TaskStatus::Completed))));
    store
        .expect_query_events()
        .withf(|query, page| {
            *query
                == EventQuery {
                    task_id: Some(TaskId(4)),
                    ..EventQuery::default()
                }
                && *page == bounds(50, 0, Order::Asc)
        })
        .times(1)
        .returning(|_, page| {
            let items = vec![
                event(1, 4, 4, EventType::TaskCreated, 0),
                started(2, 4, 4, 1, 0, 10),
            ];
            Ok(Page::new(items, 3, page))
        });
    store
        .expect_query_attempts()
        .withf(|query, page| {
            *query
                == AttemptQuery {
                    task_id: Some(TaskId(4)),
                    ..AttemptQuery::default()
                }
                && *page == bounds(20, 0, Order::Desc)
        })
        .times(1)
        .returning(|_, page| {
            Ok(Page::new(
                vec![done(1, 4, 1, 10, 20, AttemptOutcome::Completed)],
                1,
                page,
            ))
        });
    let options = TaskAuditOptions {
        events: PageRequest::limit(50),
        attempts: PageRequest::limit(20).order(Order::Desc),
    };
    let view = audit(store)
        .task_audit(TaskId(4), options)
        .await
        .expect("view");
    assert_eq!(view.task.as_ref().map(|task| task.id), Some(TaskId(4)));
    assert_eq!(view.events.items.len(), 2);
    assert!(view.events.has_more);
    assert_eq!(view.attempts.limit, 20);

    // The reference's object: { task, events: page, attempts: page }.
    let json = serde_json::to_value(&view).expect("json");
    let keys: Vec<&str> = json
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["attempts", "events", "task"]); // serde_json's map sorts keys
    assert_eq!(json["events"]["total"], 3);
    assert_eq!(json["events"]["has_more"], true);
    assert_eq!(json["attempts"]["items"][0]["outcome"], "completed");
    assert_eq!(json["task"]["type"], "async");
}

#[tokio::test]
async fn task_audit_of_a_missing_task_still_reports_remaining_rows() {
    let mut store = MockTaskStore::new();
    store.expect_get_task().returning(|_| Ok(None));
    store
        .expect_query_events()
        .returning(|_, page| Ok(empty(page)));
    store
        .expect_query_attempts()
        .returning(|_, page| Ok(empty(page)));
    let view = audit(store)
        .task_audit(TaskId(9), TaskAuditOptions::default())
        .await
        .expect("view");
    assert!(view.task.is_none());
    assert_eq!((view.events.total, view.events.limit), (0, 100));
    assert_eq!((view.attempts.total, view.attempts.limit), (0, 100));
}

#[tokio::test]
async fn audit_views_validate_every_page_before_reading() {
    let audit = audit(MockTaskStore::new());
    let error = audit
        .task_audit(
            TaskId(1),
            TaskAuditOptions {
                events: PageRequest::default(),
                attempts: PageRequest::limit(0),
            },
        )
        .await
        .expect_err("attempts page");
    assert_eq!(invalid_field(error), "limit");
    let error = audit
        .workflow_audit(
            TaskId(1),
            WorkflowAuditOptions {
                tasks: PageRequest::default(),
                events: PageRequest::limit(5000),
            },
        )
        .await
        .expect_err("events page");
    assert_eq!(invalid_field(error), "limit");
}

#[tokio::test]
async fn workflow_audit_assembles_the_root_its_tasks_and_its_events() {
    let mut store = MockTaskStore::new();
    store
        .expect_get_task()
        .withf(|id| *id == TaskId(1))
        .times(1)
        .returning(|_| Ok(Some(task(1, "root", TaskStatus::Suspended))));
    store
        .expect_query_tasks()
        .withf(|query, page| {
            *query
                == TaskQuery {
                    workflow_root_id: Some(TaskId(1)),
                    ..TaskQuery::default()
                }
                && *page == bounds(100, 0, Order::Asc)
        })
        .times(1)
        .returning(|_, page| {
            Ok(Page::new(
                vec![
                    task(1, "root", TaskStatus::Suspended),
                    common::child(2, "leaf", TaskStatus::Running, 1, 1, 1),
                ],
                2,
                page,
            ))
        });
    store
        .expect_query_events()
        .withf(|query, page| {
            *query
                == EventQuery {
                    root_id: Some(TaskId(1)),
                    ..EventQuery::default()
                }
                && *page == bounds(200, 0, Order::Asc)
        })
        .times(1)
        .returning(|_, page| {
            Ok(Page::new(
                vec![event(1, 1, 1, EventType::TaskCreated, 0)],
                9,
                page,
            ))
        });
    let options = WorkflowAuditOptions {
        tasks: PageRequest::default(),
        events: PageRequest::limit(200),
    };
    let view = audit(store)
        .workflow_audit(TaskId(1), options)
        .await
        .expect("view");
    assert_eq!(view.root_task.map(|task| task.id), Some(TaskId(1)));
    assert_eq!(view.tasks.items.len(), 2);
    assert!(!view.tasks.has_more);
    assert_eq!((view.events.total, view.events.limit), (9, 200));
    assert!(view.events.has_more);
}

/// Serves `rows` through the page bounds the way an adapter does.
fn serve<T: Clone>(rows: &[T], page: PageBounds) -> Page<T> {
    let start = usize::try_from(page.offset)
        .expect("offset")
        .min(rows.len());
    let end = (start + page.limit as usize).min(rows.len());
    Page::new(rows[start..end].to_vec(), rows.len() as u64, page)
}

#[tokio::test]
async fn the_summary_pages_through_the_whole_workflow_1000_rows_at_a_time() {
    // 2 500 leaf tasks under one root: three task pages; one attempt and two events per task.
    let mut tasks = vec![task(1, "root", TaskStatus::Suspended)];
    tasks.extend((2..=2500).map(|id| common::child(id, "leaf", TaskStatus::Completed, 1, 1, 1)));
    let attempts: Vec<TaskAttempt> = (1..=2500)
        .map(|id| done(id, id, 1, 100, 100 + id, AttemptOutcome::Completed))
        .collect();
    let events: Vec<TaskEvent> = (1..=2500)
        .flat_map(|id| {
            [
                event(2 * id, id, 1, EventType::TaskCreated, 0),
                started(2 * id + 1, id, 1, 1, 0, 100),
            ]
        })
        .collect();

    let mut store = MockTaskStore::new();
    let root = tasks[0].clone();
    store
        .expect_get_task()
        .withf(|id| *id == TaskId(1))
        .times(1)
        .returning(move |_| Ok(Some(root.clone())));
    let mut expected_offset = 0;
    store
        .expect_query_tasks()
        .withf(|query, page| {
            query.workflow_root_id == Some(TaskId(1))
                && page.limit == 1000
                && page.order == Order::Asc
        })
        .times(3)
        .returning(move |_, page| {
            assert_eq!(page.offset, expected_offset);
            expected_offset += 1000;
            Ok(serve(&tasks, page))
        });
    store
        .expect_query_attempts()
        .withf(|query, page| {
            query.workflow_root_id == Some(TaskId(1))
                && query.task_id.is_none()
                && page.limit == 1000
        })
        .times(3)
        .returning(move |_, page| Ok(serve(&attempts, page)));
    store
        .expect_query_events()
        .withf(|query, page| query.root_id == Some(TaskId(1)) && page.limit == 1000)
        .times(5)
        .returning(move |_, page| Ok(serve(&events, page)));

    let summary = audit(store)
        .workflow_audit_summary(TaskId(1))
        .await
        .expect("summary");
    assert_eq!(summary.totals.tasks, 2500);
    assert_eq!(summary.totals.attempts, 2500);
    assert_eq!(summary.totals.events, 5000);
    assert_eq!(summary.task_names["leaf"], 2499);
    // The root's attempt (1 ms) plus the longest leaf (task 2500: 2 500 ms).
    assert_eq!(summary.critical_path.total_duration_seconds, 2.501);
    assert_eq!(summary.critical_path.nodes.len(), 2);
    assert_eq!(summary.critical_path.nodes[1].task_id, TaskId(2500));
}

#[tokio::test]
async fn the_summary_loader_stops_on_an_empty_page_and_drops_duplicates() {
    let mut store = MockTaskStore::new();
    store.expect_get_task().returning(|_| Ok(None));
    // A store whose rows shifted between reads: the second page repeats a row, and then an
    // empty page claims more rows follow.
    let mut call = 0;
    store
        .expect_query_tasks()
        .times(3)
        .returning(move |_, page| {
            call += 1;
            let items = match call {
                1 => (1..=1000)
                    .map(|id| task(id, "t", TaskStatus::Pending))
                    .collect(),
                2 => vec![
                    task(1000, "t", TaskStatus::Pending),
                    task(1001, "t", TaskStatus::Pending),
                ],
                _ => Vec::new(),
            };
            Ok(Page {
                items,
                total: 5000,
                limit: page.limit,
                offset: page.offset,
                has_more: true,
            })
        });
    store
        .expect_query_attempts()
        .times(1)
        .returning(|_, page| Ok(empty(page)));
    store
        .expect_query_events()
        .times(1)
        .returning(|_, page| Ok(empty(page)));
    let summary = audit(store)
        .workflow_audit_summary(TaskId(1))
        .await
        .expect("summary");
    assert_eq!(summary.totals.tasks, 1001);
    assert!(summary.root_task.is_none());
    assert!(summary.critical_path.nodes.is_empty());
}

#[tokio::test]
async fn a_store_error_while_loading_the_summary_is_returned() {
    let mut store = MockTaskStore::new();
    store
        .expect_get_task()
        .returning(|_| Ok(Some(task(1, "root", TaskStatus::Pending))));
    store
        .expect_query_tasks()
        .returning(|_, page| Ok(empty(page)));
    store.expect_query_attempts().returning(|_, _| {
        Err(PortError::Database {
            backend: "postgres",
            message: "relation does not exist".into(),
        })
    });
    let error = audit(store)
        .workflow_audit_summary(TaskId(1))
        .await
        .expect_err("store error");
    assert!(matches!(
        error,
        AuditError::Store(PortError::Database { .. })
    ));
}
