//! The set-based batch statements against a MySQL/MariaDB server (`FIB_FLOW_MYSQL_URL`; a
//! local run skips an unusable server, `CI=true` fails): a batch of any size reuses the
//! statements prepared for the first, guards and found-row counts hold, new tasks get their
//! ids in input order, and a row too large for a batch document is still written.

use std::time::Duration;

use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, RunQueryDsl};
use fib_flow_domain::time::from_millis;
use fib_flow_domain::{NewTask, RetryBackoff, TaskType};
use fib_flow_mysql::{Conn, Mysql};
use fib_flow_ports::PortError;
use fib_flow_sql::rows::{NewAttemptRow, NewEventRow, TaskValues};
use fib_flow_sql::write_plan::{AttemptCloseRow, BatchWrite, RowWrite};
use fib_flow_sql::{Statements, StoreConfig};
use fib_flow_test_support::{Backend, DatabaseAdmin, TestDatabase};

struct Admin;

impl DatabaseAdmin for Admin {
    type Error = PortError;

    async fn create_database(&self, server_url: &str, name: &str) -> Result<String, PortError> {
        fib_flow_mysql::create_database(server_url, name).await?;
        let server = server_url
            .rsplit_once('/')
            .map_or(server_url, |(base, _)| base);
        Ok(format!("{server}/{name}"))
    }

    async fn drop_database(&self, server_url: &str, name: &str) -> Result<(), PortError> {
        fib_flow_mysql::drop_database(server_url, name).await
    }
}

/// A migrated test database and a plain connection to it, or `None` when a local run skips.
async fn setup(test: &str) -> Option<(TestDatabase<Admin>, Conn)> {
    let database = match TestDatabase::create(Admin, Backend::Mysql, test).await {
        Ok(database) => database,
        Err(skip) if skip.is_skip() => {
            eprintln!("{skip}");
            return None;
        }
        Err(error) => panic!("{error}"),
    };
    let store =
        fib_flow_mysql::connect(database.url().to_owned(), &StoreConfig::new(database.url()))
            .await
            .expect("connect");
    store.migrate().await.expect("migrate");
    store.close().await;
    let conn = Conn::establish(database.url()).await.expect("a connection");
    Some((database, conn))
}

fn new_task(name: &str) -> NewTask {
    NewTask {
        name: name.to_owned(),
        task_type: TaskType::Async,
        priority: 0,
        payload: serde_json::json!({"name": name, "quote": "\"", "é": "😀"}),
        tag: None,
        next_run_time: from_millis(1_000),
        timeout: Some(Duration::from_secs(60)),
        max_retries: 3,
        retry_interval: Duration::ZERO,
        retry_backoff: RetryBackoff::Fixed,
        cron_expr: None,
        timezone: None,
        root_id: None,
        parent_id: None,
        parent_round: None,
        created_at: from_millis(1_000),
    }
}

/// Statements this connection has prepared so far (the reading itself prepares one more).
async fn prepared_so_far(conn: &mut Conn) -> u64 {
    let count: String = diesel::select(diesel::dsl::sql::<Text>(
        "(SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS \
         WHERE VARIABLE_NAME = 'COM_STMT_PREPARE')",
    ))
    .get_result(conn)
    .await
    .expect("session status");
    count.parse().expect("a count")
}

/// Claims `ids` (pending, attempt 0 → running, attempt 1) with an attempt opened, an attempt
/// closed and an event each.
fn claim_batch(tasks: &[(i64, NewTask)]) -> BatchWrite {
    let mut batch = BatchWrite::default();
    for (id, task) in tasks {
        let mut values = TaskValues::from_new(task);
        values.status = "running".to_owned();
        values.attempt = 1;
        values.worker_id = Some("w-é".to_owned());
        values.context = Some(vec![0, 1, 0xfe, 0xff]);
        values.progress_percent = Some(12.5);
        batch.rows.push(RowWrite {
            id: *id,
            guard_status: "pending",
            guard_attempt: 0,
            values,
        });
        batch.opened.push(NewAttemptRow {
            task_id: *id,
            attempt: 1,
            worker_id: Some("w-é".to_owned()),
            started_at: 2_000,
            ended_at: None,
            outcome: None,
            error: None,
            timeout_flag: false,
        });
        batch.closed.push(AttemptCloseRow {
            task_id: *id,
            attempt: 1,
            ended_at: 3_000,
            outcome: "completed".to_owned(),
            error: Some("no error, \"quoted\"".to_owned()),
            timeout_flag: true,
        });
        batch.events.push(NewEventRow {
            task_id: *id,
            root_id: *id,
            parent_id: None,
            event_type: "task_claimed".to_owned(),
            from_status: Some("pending".to_owned()),
            to_status: Some("running".to_owned()),
            stage: Some(0),
            worker_id: Some("w-é".to_owned()),
            attempt: Some(1),
            event_time: 2_000,
            message: Some("claimed".to_owned()),
            metadata: fib_flow_sql::rows::json_to_text(&serde_json::json!({"k": [1, "ü"]})),
        });
    }
    batch
}

async fn insert(conn: &mut Conn, names: &[&str]) -> Vec<(i64, NewTask)> {
    let tasks: Vec<NewTask> = names.iter().map(|name| new_task(name)).collect();
    let ids = Mysql::insert_created(conn, &tasks, false)
        .await
        .expect("insert");
    ids.into_iter().zip(tasks).collect()
}

#[tokio::test]
async fn batches_of_any_size_reuse_the_statements_prepared_for_the_first() {
    let Some((database, mut conn)) = setup("mysql_batch_prepared").await else {
        return;
    };
    let tasks = insert(&mut conn, &["a", "b", "c", "d"]).await;

    let first = claim_batch(&tasks[..1]);
    assert_eq!(
        Mysql::write_batch(&mut conn, &first).await.expect("write"),
        1
    );
    Mysql::lock_tasks(&mut conn, &[tasks[0].0])
        .await
        .expect("lock");
    let before = prepared_so_far(&mut conn).await;

    let rest = claim_batch(&tasks[1..]);
    assert_eq!(
        Mysql::write_batch(&mut conn, &rest).await.expect("write"),
        3,
        "every row matched its guard"
    );
    let ids: Vec<i64> = tasks.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        Mysql::lock_tasks(&mut conn, &ids)
            .await
            .expect("lock")
            .len(),
        4
    );
    assert_eq!(
        prepared_so_far(&mut conn).await,
        before + 1,
        "a larger batch prepared nothing new (the one is the status read itself)"
    );

    let rows_only = BatchWrite {
        rows: rest.rows.clone(),
        ..BatchWrite::default()
    };
    assert_eq!(
        Mysql::write_batch(&mut conn, &rows_only)
            .await
            .expect("write"),
        0,
        "the rows are running now: the pending guards no longer match"
    );
    let rows = Mysql::lock_tasks(&mut conn, &ids).await.expect("lock");
    for row in &rows {
        assert_eq!(row.status, "running");
        assert_eq!(row.attempt, 1);
        assert_eq!(row.worker_id.as_deref(), Some("w-é"));
        assert_eq!(row.context.as_deref(), Some(&[0, 1, 0xfe, 0xff][..]));
        assert_eq!(row.progress_percent, Some(12.5));
    }
    drop(conn);
    database.destroy().await.expect("drop");
}

#[tokio::test]
async fn new_tasks_get_their_ids_in_input_order_and_lock_in_id_order() {
    let Some((database, mut conn)) = setup("mysql_batch_ids").await else {
        return;
    };
    let names = ["n0", "n1", "n2", "n3", "n4"];
    let tasks = insert(&mut conn, &names).await;
    let ids: Vec<i64> = tasks.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");

    let mut reversed = ids.clone();
    reversed.reverse();
    let rows = Mysql::lock_tasks(&mut conn, &reversed).await.expect("lock");
    let got: Vec<(i64, String)> = rows.iter().map(|row| (row.id, row.name.clone())).collect();
    let want: Vec<(i64, String)> = tasks
        .iter()
        .map(|(id, task)| (*id, task.name.clone()))
        .collect();
    assert_eq!(got, want, "ascending ids, each with its own task");
    for (row, (_, task)) in rows.iter().zip(&tasks) {
        let payload: serde_json::Value =
            serde_json::from_str(row.payload.as_str()).expect("stored JSON");
        assert_eq!(payload, task.payload);
    }
    drop(conn);
    database.destroy().await.expect("drop");
}

#[tokio::test]
async fn a_row_too_large_for_a_batch_document_is_written_on_its_own() {
    let Some((database, mut conn)) = setup("mysql_batch_large").await else {
        return;
    };
    let tasks = insert(&mut conn, &["small", "large", "after"]).await;
    let mut batch = claim_batch(&tasks);
    // Every `"` doubles in the document: 5 MiB of them is over the per-item limit.
    let large = "\"".repeat(5 * 1024 * 1024);
    batch.rows[1].values.error = Some(large.clone());
    assert_eq!(
        Mysql::write_batch(&mut conn, &batch).await.expect("write"),
        3
    );
    let ids: Vec<i64> = tasks.iter().map(|(id, _)| *id).collect();
    let rows = Mysql::lock_tasks(&mut conn, &ids).await.expect("lock");
    assert_eq!(rows[1].error.as_deref(), Some(large.as_str()));
    assert!(rows.iter().all(|row| row.status == "running"));
    drop(conn);
    database.destroy().await.expect("drop");
}
