//! Set-based batch statements: a batch's rows travel as one JSON document, which the statement
//! reads server-side with `JSON_TABLE` (MariaDB 10.6+, MySQL 8.0+). One statement per kind of
//! write and batch (task rows, opened attempts, closed attempts, events), whatever the batch
//! size, each with one fixed SQL text that stays prepared ([`Prepared`]).
//!
//! Why not a multi-row `VALUES` list: its SQL text changes with the number of rows, so it is
//! prepared afresh each time, and MariaDB 10.11 has no `VALUES ROW()` table constructor to join
//! an `UPDATE` against. Why not one `UPDATE` per row: that was three statements per task.
//!
//! Encoding: each item is a JSON array, its columns by position. Text is a JSON string (JSON
//! values such as a result are their text inside the string), SQL NULL is JSON `null` (which
//! `JSON_TABLE` reads as NULL), bytes are hex (`UNHEX`). Columns that carry user text are
//! `LONGTEXT` in the `COLUMNS` clause: `JSON_TABLE` truncates a longer value to its column type
//! with only a warning, where the table's own column refuses it in strict mode. Only the enum
//! strings this crate writes itself (statuses, outcomes, back-off, policy) are `VARCHAR(32)`.

use std::sync::LazyLock;

use diesel::QueryResult;
use diesel::SelectableHelper;
use diesel::query_builder::QueryFragment;
use diesel::result::Error;
use diesel_async::RunQueryDsl;
use fib_flow_sql::rows::{NewAttemptRow, NewEventRow, TaskRow, TaskValues};
use fib_flow_sql::schema::fib_flow_task_attempts as a;
use fib_flow_sql::schema::fib_flow_task_events as e;
use fib_flow_sql::write_plan::{AttemptCloseRow, BatchWrite, RowWrite};
use fib_flow_sql::{Statements, queries};
use serde::Serialize;

use crate::prepared::{Bind, Prepared};
use crate::{Conn, Mysql};

use diesel::mysql::Mysql as Db;

/// Most bytes of one JSON document. MariaDB refuses a bind longer than `max_allowed_packet`
/// (at least 16 MiB, checked at connect); a batch of large rows is split into several
/// documents well below it.
const DOC_BUDGET: usize = 4 * 1024 * 1024;

/// An item whose own encoding is longer than this is written alone with raw binds instead:
/// escaping can double a JSON value (every `"` becomes `\"`), and a row may carry a result,
/// suspension metadata and a context of up to 3 MiB each.
const ITEM_LIMIT: usize = 8 * 1024 * 1024;

/// A slice of a batch as written: JSON documents of many items, or one oversized item.
#[derive(Debug, PartialEq)]
enum Part<'a, T> {
    /// A JSON array document and how many items it holds.
    Doc(String, usize),
    Alone(&'a T),
}

fn encoding_error(error: serde_json::Error) -> Error {
    Error::SerializationError(Box::new(error))
}

/// `items` as JSON array documents of at most [`DOC_BUDGET`] bytes (an item longer than that
/// goes in a document of its own), in input order; items over [`ITEM_LIMIT`] come apart.
fn parts<'a, T, E: Serialize>(
    items: &'a [T],
    encode: impl Fn(&'a T) -> E,
) -> QueryResult<Vec<Part<'a, T>>> {
    let mut parts = Vec::new();
    let mut doc = String::new();
    let mut count = 0;
    for item in items {
        let encoded = serde_json::to_string(&encode(item)).map_err(encoding_error)?;
        if encoded.len() > ITEM_LIMIT {
            flush(&mut doc, &mut count, &mut parts);
            parts.push(Part::Alone(item));
            continue;
        }
        if !doc.is_empty() && doc.len() + encoded.len() + 2 > DOC_BUDGET {
            flush(&mut doc, &mut count, &mut parts);
        }
        doc.push(if doc.is_empty() { '[' } else { ',' });
        doc.push_str(&encoded);
        count += 1;
    }
    flush(&mut doc, &mut count, &mut parts);
    Ok(parts)
}

fn flush<T>(doc: &mut String, count: &mut usize, parts: &mut Vec<Part<'_, T>>) {
    if !doc.is_empty() {
        doc.push(']');
        parts.push(Part::Doc(std::mem::take(doc), std::mem::take(count)));
    }
}

async fn execute(conn: &mut Conn, sql: &'static str, doc: &str) -> QueryResult<usize> {
    Prepared::statement(sql, vec![Bind::Text(doc)])
        .execute(conn)
        .await
}

/// Lowercase hex of `bytes`, read back with `UNHEX`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// A task row write: the guard, then every column a transition may change (the columns of
/// `UPDATE_ROW` in statements.rs, in the same order).
#[derive(Serialize)]
struct RowItem<'a>(
    i64,
    &'a str,
    i32,
    &'a str,
    i32,
    i64,
    Option<i64>,
    Option<i64>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<f64>,
    i32,
    Option<i64>,
    i32,
    i32,
    i64,
    &'a str,
    i32,
    i32,
    &'a str,
    Option<&'a str>,
    Option<i64>,
    Option<i64>,
    i32,
    Option<String>,
    Option<&'a str>,
    Option<&'a str>,
);

fn row_item(write: &RowWrite) -> RowItem<'_> {
    let v = &write.values;
    RowItem(
        write.id,
        write.guard_status,
        write.guard_attempt,
        &v.status,
        v.priority,
        v.next_run_time,
        v.last_active_time,
        v.last_event_time,
        v.last_event_type.as_deref(),
        v.result.as_ref().map(|json| json.as_str()),
        v.error.as_deref(),
        v.current_stage_name.as_deref(),
        v.progress_text.as_deref(),
        v.progress_percent,
        v.stage,
        v.timeout_ms,
        v.retry_count,
        v.max_retries,
        v.retry_interval_ms,
        &v.retry_backoff,
        v.total_children,
        v.completed_children,
        &v.child_failure_policy,
        v.worker_id.as_deref(),
        v.start_time,
        v.deadline,
        v.attempt,
        v.context.as_deref().map(hex),
        v.suspend_reason.as_deref(),
        v.suspend_metadata.as_ref().map(|json| json.as_str()),
    )
}

/// The rows of a batch under their (status, attempt) guards, joined by primary key; returns
/// the rows matched (the connection reports found rows, not changed rows). `STRAIGHT_JOIN`
/// and `FORCE INDEX (PRIMARY)` keep the plan on the key, in the document's order (ascending
/// id): through a status-leading secondary index InnoDB would lock that index's entries
/// before the rows, the reverse of every other writer, and deadlock (see `UPDATE_ROW`).
/// Every row is already locked by this transaction (claim or batch lock), so the statement
/// takes no new row lock.
const UPDATE_ROWS: &str = "UPDATE JSON_TABLE(?, '$[*]' COLUMNS (\
    id BIGINT PATH '$[0]', guard_status VARCHAR(32) PATH '$[1]', \
    guard_attempt INT PATH '$[2]', status VARCHAR(32) PATH '$[3]', priority INT PATH '$[4]', \
    next_run_time BIGINT PATH '$[5]', last_active_time BIGINT PATH '$[6]', \
    last_event_time BIGINT PATH '$[7]', last_event_type LONGTEXT PATH '$[8]', \
    result LONGTEXT PATH '$[9]', error LONGTEXT PATH '$[10]', \
    current_stage_name LONGTEXT PATH '$[11]', progress_text LONGTEXT PATH '$[12]', \
    progress_percent DOUBLE PATH '$[13]', stage INT PATH '$[14]', \
    timeout_ms BIGINT PATH '$[15]', retry_count INT PATH '$[16]', \
    max_retries INT PATH '$[17]', retry_interval_ms BIGINT PATH '$[18]', \
    retry_backoff VARCHAR(32) PATH '$[19]', total_children INT PATH '$[20]', \
    completed_children INT PATH '$[21]', child_failure_policy VARCHAR(32) PATH '$[22]', \
    worker_id LONGTEXT PATH '$[23]', start_time BIGINT PATH '$[24]', \
    deadline BIGINT PATH '$[25]', attempt INT PATH '$[26]', context LONGTEXT PATH '$[27]', \
    suspend_reason LONGTEXT PATH '$[28]', suspend_metadata LONGTEXT PATH '$[29]')) AS v \
    STRAIGHT_JOIN fib_flow_tasks AS t FORCE INDEX (PRIMARY) ON t.id = v.id \
    SET t.status = v.status, t.priority = v.priority, t.next_run_time = v.next_run_time, \
    t.last_active_time = v.last_active_time, t.last_event_time = v.last_event_time, \
    t.last_event_type = v.last_event_type, t.result = v.result, t.error = v.error, \
    t.current_stage_name = v.current_stage_name, t.progress_text = v.progress_text, \
    t.progress_percent = v.progress_percent, t.stage = v.stage, t.timeout_ms = v.timeout_ms, \
    t.retry_count = v.retry_count, t.max_retries = v.max_retries, \
    t.retry_interval_ms = v.retry_interval_ms, t.retry_backoff = v.retry_backoff, \
    t.total_children = v.total_children, t.completed_children = v.completed_children, \
    t.child_failure_policy = v.child_failure_policy, t.worker_id = v.worker_id, \
    t.start_time = v.start_time, t.deadline = v.deadline, t.attempt = v.attempt, \
    t.context = UNHEX(v.context), t.suspend_reason = v.suspend_reason, \
    t.suspend_metadata = v.suspend_metadata \
    WHERE t.status = v.guard_status AND t.attempt = v.guard_attempt";

/// An attempt row to open (or any attempt row to insert).
#[derive(Serialize)]
struct OpenItem<'a>(
    i64,
    i32,
    Option<&'a str>,
    i64,
    Option<i64>,
    Option<&'a str>,
    Option<&'a str>,
    u8,
);

fn open_item(row: &NewAttemptRow) -> OpenItem<'_> {
    OpenItem(
        row.task_id,
        row.attempt,
        row.worker_id.as_deref(),
        row.started_at,
        row.ended_at,
        row.outcome.as_deref(),
        row.error.as_deref(),
        u8::from(row.timeout_flag),
    )
}

const INSERT_ATTEMPTS: &str = "INSERT INTO fib_flow_task_attempts \
    (task_id, attempt, worker_id, started_at, ended_at, outcome, error, timeout_flag) \
    SELECT task_id, attempt, worker_id, started_at, ended_at, outcome, error, timeout_flag \
    FROM JSON_TABLE(?, '$[*]' COLUMNS (task_id BIGINT PATH '$[0]', attempt INT PATH '$[1]', \
    worker_id LONGTEXT PATH '$[2]', started_at BIGINT PATH '$[3]', ended_at BIGINT PATH '$[4]', \
    outcome VARCHAR(32) PATH '$[5]', error LONGTEXT PATH '$[6]', \
    timeout_flag TINYINT PATH '$[7]')) AS v";

#[derive(Serialize)]
struct CloseItem<'a>(i64, i32, i64, &'a str, Option<&'a str>, u8);

fn close_item(close: &AttemptCloseRow) -> CloseItem<'_> {
    CloseItem(
        close.task_id,
        close.attempt,
        close.ended_at,
        &close.outcome,
        close.error.as_deref(),
        u8::from(close.timeout_flag),
    )
}

/// Closes open attempts by their unique (task_id, attempt) key, like
/// [`queries::close_attempt`] row by row. Their tasks' rows are locked by this transaction, so
/// no other writer touches these attempt rows.
const CLOSE_ATTEMPTS: &str = "UPDATE JSON_TABLE(?, '$[*]' COLUMNS (\
    task_id BIGINT PATH '$[0]', attempt INT PATH '$[1]', ended_at BIGINT PATH '$[2]', \
    outcome VARCHAR(32) PATH '$[3]', error LONGTEXT PATH '$[4]', \
    timeout_flag TINYINT PATH '$[5]')) AS v \
    STRAIGHT_JOIN fib_flow_task_attempts AS a FORCE INDEX (idx_task_attempts_task_attempt) \
    ON a.task_id = v.task_id AND a.attempt = v.attempt \
    SET a.ended_at = v.ended_at, a.outcome = v.outcome, a.error = v.error, \
    a.timeout_flag = v.timeout_flag \
    WHERE a.ended_at IS NULL";

#[derive(Serialize)]
struct EventItem<'a>(
    i64,
    i64,
    Option<i64>,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Option<i32>,
    Option<&'a str>,
    Option<i32>,
    i64,
    Option<&'a str>,
    &'a str,
);

fn event_item(row: &NewEventRow) -> EventItem<'_> {
    EventItem(
        row.task_id,
        row.root_id,
        row.parent_id,
        &row.event_type,
        row.from_status.as_deref(),
        row.to_status.as_deref(),
        row.stage,
        row.worker_id.as_deref(),
        row.attempt,
        row.event_time,
        row.message.as_deref(),
        row.metadata.as_str(),
    )
}

/// Events in document order (a single table function scan inserts its rows in order, so
/// event ids keep the order of the transitions).
const INSERT_EVENTS: &str = "INSERT INTO fib_flow_task_events \
    (task_id, root_id, parent_id, event_type, from_status, to_status, stage, worker_id, \
    attempt, event_time, message, metadata) \
    SELECT task_id, root_id, parent_id, event_type, from_status, to_status, stage, worker_id, \
    attempt, event_time, message, metadata \
    FROM JSON_TABLE(?, '$[*]' COLUMNS (task_id BIGINT PATH '$[0]', root_id BIGINT PATH '$[1]', \
    parent_id BIGINT PATH '$[2]', event_type LONGTEXT PATH '$[3]', \
    from_status VARCHAR(32) PATH '$[4]', to_status VARCHAR(32) PATH '$[5]', \
    stage INT PATH '$[6]', worker_id LONGTEXT PATH '$[7]', attempt INT PATH '$[8]', \
    event_time BIGINT PATH '$[9]', message LONGTEXT PATH '$[10]', \
    metadata LONGTEXT PATH '$[11]')) AS v";

/// Every write of a batch, one statement per kind (see the module docs); returns how many task
/// rows matched their guard.
pub(crate) async fn write_batch(conn: &mut Conn, batch: &BatchWrite) -> QueryResult<usize> {
    let mut written = 0;
    for part in parts(&batch.rows, row_item)? {
        written += match part {
            Part::Doc(doc, _) => execute(conn, UPDATE_ROWS, &doc).await?,
            Part::Alone(write) => crate::statements::update_row(conn, write).await?,
        };
    }
    insert_attempt_rows(conn, &batch.opened).await?;
    let mut closed: Vec<&AttemptCloseRow> = batch.closed.iter().collect();
    closed.sort_by_key(|close| (close.task_id, close.attempt));
    for part in parts(&closed, |close| close_item(close))? {
        match part {
            Part::Doc(doc, _) => execute(conn, CLOSE_ATTEMPTS, &doc).await?,
            Part::Alone(close) => queries::close_attempt(Mysql::connection(conn), close).await?,
        };
    }
    insert_event_rows(conn, &batch.events).await?;
    Ok(written)
}

/// Attempt rows, in order.
pub(crate) async fn insert_attempt_rows(
    conn: &mut Conn,
    rows: &[NewAttemptRow],
) -> QueryResult<()> {
    for part in parts(rows, open_item)? {
        match part {
            Part::Doc(doc, _) => execute(conn, INSERT_ATTEMPTS, &doc).await?,
            Part::Alone(row) => {
                diesel::insert_into(a::table)
                    .values(row)
                    .execute(conn)
                    .await?
            }
        };
    }
    Ok(())
}

/// Events, in order.
pub(crate) async fn insert_event_rows(conn: &mut Conn, rows: &[NewEventRow]) -> QueryResult<()> {
    for part in parts(rows, event_item)? {
        match part {
            Part::Doc(doc, _) => execute(conn, INSERT_EVENTS, &doc).await?,
            Part::Alone(row) => {
                diesel::insert_into(e::table)
                    .values(row)
                    .execute(conn)
                    .await?
            }
        };
    }
    Ok(())
}

/// A new task row, the columns of [`TaskValues`] in order.
#[derive(Serialize)]
struct TaskItem<'a>(
    &'a str,
    &'a str,
    &'a str,
    i32,
    &'a str,
    i64,
    Option<&'a str>,
    i64,
    Option<i64>,
    Option<i64>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<f64>,
    i32,
    Option<i64>,
    i32,
    i32,
    i64,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Option<i64>,
    Option<i64>,
    Option<i32>,
    i32,
    i32,
    &'a str,
    Option<&'a str>,
    Option<i64>,
    Option<i64>,
    i32,
    Option<String>,
    Option<&'a str>,
    Option<&'a str>,
);

fn task_item(v: &TaskValues) -> TaskItem<'_> {
    TaskItem(
        &v.name,
        &v.task_type,
        &v.status,
        v.priority,
        v.payload.as_str(),
        v.created_at,
        v.tag.as_deref(),
        v.next_run_time,
        v.last_active_time,
        v.last_event_time,
        v.last_event_type.as_deref(),
        v.result.as_ref().map(|json| json.as_str()),
        v.error.as_deref(),
        v.current_stage_name.as_deref(),
        v.progress_text.as_deref(),
        v.progress_percent,
        v.stage,
        v.timeout_ms,
        v.retry_count,
        v.max_retries,
        v.retry_interval_ms,
        &v.retry_backoff,
        v.cron_expr.as_deref(),
        v.timezone.as_deref(),
        v.root_id,
        v.parent_id,
        v.parent_round,
        v.total_children,
        v.completed_children,
        &v.child_failure_policy,
        v.worker_id.as_deref(),
        v.start_time,
        v.deadline,
        v.attempt,
        v.context.as_deref().map(hex),
        v.suspend_reason.as_deref(),
        v.suspend_metadata.as_ref().map(|json| json.as_str()),
    )
}

/// New task rows in document order (`ORDER BY` the ordinality: their ids are handed out in
/// that order and read back from `LAST_INSERT_ID()`, see [`insert_task_rows`]).
const INSERT_TASKS: &str = "INSERT INTO fib_flow_tasks (name, type, status, priority, payload, \
    created_at, tag, next_run_time, last_active_time, last_event_time, last_event_type, result, \
    error, current_stage_name, progress_text, progress_percent, stage, timeout_ms, retry_count, \
    max_retries, retry_interval_ms, retry_backoff, cron_expr, timezone, root_id, parent_id, \
    parent_round, total_children, completed_children, child_failure_policy, worker_id, \
    start_time, deadline, attempt, context, suspend_reason, suspend_metadata) \
    SELECT name, task_type, status, priority, payload, created_at, tag, next_run_time, \
    last_active_time, last_event_time, last_event_type, result, error, current_stage_name, \
    progress_text, progress_percent, stage, timeout_ms, retry_count, max_retries, \
    retry_interval_ms, retry_backoff, cron_expr, timezone, root_id, parent_id, parent_round, \
    total_children, completed_children, child_failure_policy, worker_id, start_time, deadline, \
    attempt, UNHEX(context), suspend_reason, suspend_metadata \
    FROM JSON_TABLE(?, '$[*]' COLUMNS (ord FOR ORDINALITY, name LONGTEXT PATH '$[0]', \
    task_type VARCHAR(32) PATH '$[1]', status VARCHAR(32) PATH '$[2]', priority INT PATH '$[3]', \
    payload LONGTEXT PATH '$[4]', created_at BIGINT PATH '$[5]', tag LONGTEXT PATH '$[6]', \
    next_run_time BIGINT PATH '$[7]', last_active_time BIGINT PATH '$[8]', \
    last_event_time BIGINT PATH '$[9]', last_event_type LONGTEXT PATH '$[10]', \
    result LONGTEXT PATH '$[11]', error LONGTEXT PATH '$[12]', \
    current_stage_name LONGTEXT PATH '$[13]', progress_text LONGTEXT PATH '$[14]', \
    progress_percent DOUBLE PATH '$[15]', stage INT PATH '$[16]', timeout_ms BIGINT PATH '$[17]', \
    retry_count INT PATH '$[18]', max_retries INT PATH '$[19]', \
    retry_interval_ms BIGINT PATH '$[20]', retry_backoff VARCHAR(32) PATH '$[21]', \
    cron_expr LONGTEXT PATH '$[22]', timezone LONGTEXT PATH '$[23]', root_id BIGINT PATH '$[24]', \
    parent_id BIGINT PATH '$[25]', parent_round INT PATH '$[26]', \
    total_children INT PATH '$[27]', completed_children INT PATH '$[28]', \
    child_failure_policy VARCHAR(32) PATH '$[29]', worker_id LONGTEXT PATH '$[30]', \
    start_time BIGINT PATH '$[31]', deadline BIGINT PATH '$[32]', attempt INT PATH '$[33]', \
    context LONGTEXT PATH '$[34]', suspend_reason LONGTEXT PATH '$[35]', \
    suspend_metadata LONGTEXT PATH '$[36]')) AS v ORDER BY v.ord";

/// New task rows, a statement per document; returns their ids in input order. Relies on the
/// server handing one `INSERT … SELECT` consecutive ids (`innodb_autoinc_lock_mode` 0 or 1:
/// the table's AUTO-INC lock is held to the statement's end), `step` apart
/// (`auto_increment_increment`); the caller checks both (see `statements.rs`).
pub(crate) async fn insert_task_rows(
    conn: &mut Conn,
    rows: &[TaskValues],
    step: i64,
) -> QueryResult<Vec<i64>> {
    let mut ids = Vec::with_capacity(rows.len());
    for part in parts(rows, task_item)? {
        match part {
            Part::Doc(doc, count) => {
                let inserted = execute(conn, INSERT_TASKS, &doc).await?;
                if inserted != count {
                    return Err(Error::QueryBuilderError(
                        format!("inserted {inserted} task rows for {count}").into(),
                    ));
                }
                let first = crate::statements::last_insert_id(conn).await?;
                ids.extend((0..count).map(|index| first + step * index as i64));
            }
            Part::Alone(row) => ids.push(crate::statements::insert_task_row(conn, row).await?),
        }
    }
    Ok(ids)
}

/// The SQL type of a [`TaskRow`] as selected.
type TaskRowSql = diesel::dsl::SqlTypeOf<diesel::dsl::AsSelect<TaskRow, Db>>;

/// The batch lock: the rows of a JSON array of ids, read by primary key in the array's order
/// (`STRAIGHT_JOIN`), so locked in ascending id order when the ids are sorted. The select list
/// is diesel's own for [`TaskRow`], so the row decodes exactly as a DSL query's would.
static LOCK_TASKS: LazyLock<Option<String>> = LazyLock::new(|| {
    let mut builder = diesel::mysql::MysqlQueryBuilder::new();
    TaskRow::as_select().to_sql(&mut builder, &Db).ok()?;
    let columns = diesel::query_builder::QueryBuilder::finish(builder);
    Some(format!(
        "SELECT {columns} FROM JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$')) AS v \
         STRAIGHT_JOIN `fib_flow_tasks` FORCE INDEX (PRIMARY) ON `fib_flow_tasks`.`id` = v.id \
         FOR UPDATE"
    ))
});

/// The rows of `ids`, in ascending id order and locked `FOR UPDATE` in that order.
pub(crate) async fn lock_tasks(conn: &mut Conn, ids: &[i64]) -> QueryResult<Vec<TaskRow>> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let doc = serde_json::to_string(&ids).map_err(encoding_error)?;
    let sql = LOCK_TASKS.as_deref().ok_or_else(|| {
        Error::QueryBuilderError("the task row's select list did not render".into())
    })?;
    Prepared::<TaskRowSql>::query(sql, vec![Bind::Text(&doc)])
        .load(conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_items_share_one_document_in_order() {
        let items = [1_i64, 2, 3];
        let got = parts(&items, |item| *item).expect("encodes");
        assert_eq!(got, vec![Part::Doc("[1,2,3]".to_owned(), 3)]);
    }

    #[test]
    fn documents_stay_under_the_budget_and_oversized_items_come_apart() {
        let half = "x".repeat(DOC_BUDGET / 2);
        let huge = "y".repeat(ITEM_LIMIT + 1);
        let items = [half.clone(), half.clone(), huge.clone(), half.clone()];
        let got = parts(&items, |item| item.as_str()).expect("encodes");
        assert_eq!(
            got.len(),
            4,
            "two documents, the oversized item, a document"
        );
        for part in &got {
            if let Part::Doc(doc, _) = part {
                assert!(doc.len() <= DOC_BUDGET, "{} bytes", doc.len());
            }
        }
        assert_eq!(got[2], Part::Alone(&items[2]));
        assert!(
            matches!(&got[3], Part::Doc(doc, 1) if doc.len() == half.len() + 4),
            "the order holds around the oversized item"
        );
    }

    #[test]
    fn bytes_travel_as_lowercase_hex() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn the_batch_lock_selects_diesels_column_list_by_key() {
        let sql = LOCK_TASKS.as_deref().expect("renders");
        assert!(sql.starts_with("SELECT `fib_flow_tasks`.`id`, `fib_flow_tasks`.`name`"));
        assert!(sql.ends_with("FOR UPDATE"));
        assert_eq!(sql.matches('?').count(), 1);
    }
}
