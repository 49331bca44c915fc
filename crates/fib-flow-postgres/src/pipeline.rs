//! Claim rounds and outcome batches as pipelined transactions: BEGIN travels to the server
//! with the statements that read the rows, and COMMIT with the statement that writes them,
//! so each costs two round trips instead of four or five. tokio-postgres pipelines requests
//! that are in flight together on one connection, and the server runs them in the order sent.
//!
//! diesel-async's transaction manager sends BEGIN on its own and waits for it, so these
//! transactions are opened and ended by hand. Until one has ended (COMMIT or ROLLBACK
//! answered), the connection is marked as unusable: if the future is dropped half-way or the
//! connection fails, the pool discards it instead of handing out a connection that is still
//! inside a transaction.

use diesel::connection::TransactionManagerStatus;
use diesel::result::QueryResult;
use diesel_async::{AnsiTransactionManager, RunQueryDsl, TransactionManager};
use fib_flow_domain::Task;
use fib_flow_domain::time::to_millis;
use fib_flow_ports::{BatchCommand, ClaimRequest, PortError};
use fib_flow_sql::TxError;
use fib_flow_sql::prepared::keep_prepared;
use fib_flow_sql::rows::TaskRow;
use fib_flow_sql::transitions::{
    BatchPlan, batch_ids, check_written, plan_batch, plan_claim, settle_batch_parents,
};
use fib_flow_sql::write_plan::{BatchWrite, CandidateQuery, candidate_queries, take_candidates};
use futures_util::future::{BoxFuture, join, join_all, join3, join4};

use crate::completion::{Completions, refused};
use crate::statements::{
    SET_CLAIM_PLAN, SET_WRITE_PLAN, lock_tasks, select_claimable, write_batch,
};
use crate::{Conn, Postgres};

/// One statement without rows, on a shared reference so that it can be pipelined.
fn run<'a>(conn: &'a Conn, sql: &'static str) -> BoxFuture<'a, QueryResult<usize>> {
    let mut shared = conn;
    keep_prepared(diesel::sql_query(sql)).execute(&mut shared)
}

fn select_shared<'a>(
    conn: &'a Conn,
    names: &'a [String],
    now: i64,
    limit: i64,
    lease: Option<&'a str>,
) -> BoxFuture<'a, QueryResult<Vec<TaskRow>>> {
    let mut shared = conn;
    Box::pin(async move { select_claimable(&mut shared, names, now, limit, lease).await })
}

fn lock_shared<'a>(conn: &'a Conn, ids: &'a [i64]) -> BoxFuture<'a, QueryResult<Vec<TaskRow>>> {
    let mut shared = conn;
    Box::pin(async move { lock_tasks(&mut shared, ids).await })
}

fn write_shared<'a>(conn: &'a Conn, batch: &'a BatchWrite) -> BoxFuture<'a, QueryResult<usize>> {
    let mut shared = conn;
    Box::pin(async move { write_batch(&mut shared, batch).await })
}

/// Marks `conn` as inside a transaction opened by hand (see the module doc).
fn hold(conn: &mut Conn) {
    AnsiTransactionManager::transaction_manager_status_mut(conn).set_in_error();
}

/// The transaction opened by hand has ended: the pool may hand `conn` out again.
fn release(conn: &mut Conn) {
    *AnsiTransactionManager::transaction_manager_status_mut(conn) =
        TransactionManagerStatus::default();
}

/// Ends a failed transaction opened by hand, then returns its error. A connection whose
/// ROLLBACK fails stays held, so the pool discards it.
async fn abort<R>(conn: &mut Conn, error: TxError) -> Result<R, TxError> {
    if run(conn, "ROLLBACK").await.is_ok() {
        release(conn);
    }
    Err(error)
}

/// Writes `batch` and commits in one round trip. The write statement fails by itself when a
/// guard misses (see `write_batch`), so the COMMIT behind it then rolls back: nothing of a
/// half-matched batch is ever committed.
async fn write_and_commit(conn: &mut Conn, batch: &BatchWrite) -> Result<(), TxError> {
    let (written, committed) = if batch.rows.is_empty() {
        (Ok(0), run(conn, "COMMIT").await)
    } else {
        join(write_shared(conn, batch), run(conn, "COMMIT")).await
    };
    match (written, committed) {
        (Ok(written), Ok(_)) => {
            release(conn);
            check_written(batch, written)
        }
        // The write's error aborted the transaction, and PostgreSQL answers a COMMIT of an
        // aborted transaction by rolling it back: it has ended.
        (Err(error), Ok(_)) => {
            release(conn);
            Err(error.into())
        }
        (Err(error), Err(_)) | (Ok(_), Err(error)) => abort(conn, error.into()).await,
    }
}

/// A claim round: in one round trip when the claim plan is one uncapped query (the usual case),
/// otherwise in two.
pub(crate) async fn claim_round(
    conn: &mut Conn,
    request: ClaimRequest,
) -> Result<Vec<Task>, TxError> {
    match candidate_queries(&request).as_slice() {
        [query] if query.name_caps.is_empty() => {
            claim_in_one_statement(conn, &request, query).await
        }
        _ => claim_planned(conn, request).await,
    }
}

/// The claim transition (`fib_flow_domain::apply` with `Command::Claim`) said in SQL, so that
/// a claim round needs no read before its write: the task rows, the opened attempts and the
/// `task_claimed` / `task_started` / `task_retry_started` events, exactly as the domain writes
/// them. It is the one transition computed outside the domain; the test
/// `the_one_statement_claim_writes_what_the_domain_decides` pins it to the domain's.
/// Events go in claim order, each task's in the domain's order. The rows come back by column
/// name, and the `type` column is `task_type` in [`TaskRow`].
const CLAIM: &str = concat!(
    "WITH picked AS (SELECT id FROM fib_flow_tasks \
    WHERE fib_flow_tasks.status = 'pending' AND next_run_time <= $1 AND name = ANY($2) \
      AND ($3 OR EXISTS (SELECT 1 FROM fib_flow_workers \
        WHERE fib_flow_workers.status = 'active' AND fib_flow_workers.worker_id = $4)) \
    ORDER BY priority DESC, next_run_time ASC, id ASC LIMIT $5 FOR UPDATE SKIP LOCKED), \
  claimed AS (UPDATE fib_flow_tasks AS t SET status = 'running', attempt = t.attempt + 1, \
        worker_id = $4, start_time = $1, deadline = $1 + t.timeout_ms, \
        current_stage_name = NULL, progress_text = NULL, progress_percent = NULL, \
        last_active_time = $1, last_event_time = $1, last_event_type = \
        CASE WHEN t.retry_count > 0 THEN 'task_retry_started' ELSE 'task_started' END \
    FROM picked WHERE t.id = picked.id RETURNING t.*), \
  opened AS (INSERT INTO fib_flow_task_attempts (task_id, attempt, worker_id, started_at, \
        ended_at, outcome, error, timeout_flag) \
    SELECT id, attempt, $4, $1, NULL, NULL, NULL, false FROM claimed \
    ORDER BY priority DESC, next_run_time, id), \
  logged AS (INSERT INTO fib_flow_task_events (task_id, root_id, parent_id, event_type, \
        from_status, to_status, stage, worker_id, attempt, event_time, message, metadata) \
    SELECT c.id, COALESCE(c.root_id, c.id), c.parent_id, e.event_type, 'pending', 'running', \
        c.stage, $4, c.attempt, $1, e.message, e.metadata \
    FROM claimed AS c CROSS JOIN LATERAL (VALUES \
        (1, 'task_claimed', 'Task ' || c.name || ' claimed by ' || $4, \
            jsonb_build_object('name', c.name)), \
        (2, 'task_started', 'Task ' || c.name || ' started by ' || $4, \
            jsonb_build_object('name', c.name, 'retry_count', c.retry_count)), \
        (3, 'task_retry_started', 'Task ' || c.name || ' retry attempt ' || c.retry_count \
            || ' started by ' || $4, \
            jsonb_build_object('name', c.name, 'retry_count', c.retry_count))) \
      AS e(seq, event_type, message, metadata) \
    WHERE e.seq < 3 OR c.retry_count > 0 \
    ORDER BY c.priority DESC, c.next_run_time, c.id, e.seq) \
SELECT ",
    task_row_columns!("c"),
    " FROM claimed AS c ORDER BY c.priority DESC, c.next_run_time, c.id"
);

fn claim_shared<'a>(
    conn: &'a Conn,
    query: &'a CandidateQuery,
    request: &'a ClaimRequest,
) -> BoxFuture<'a, QueryResult<Vec<TaskRow>>> {
    use diesel::sql_types::{Array, BigInt, Bool, Text};
    let mut shared = conn;
    Box::pin(async move {
        keep_prepared(
            diesel::sql_query(CLAIM)
                .bind::<BigInt, _>(to_millis(request.now))
                .bind::<Array<Text>, _>(&query.names)
                .bind::<Bool, _>(!request.require_active_lease)
                .bind::<Text, _>(&request.worker_id)
                .bind::<BigInt, _>(query.limit),
        )
        .load(&mut shared)
        .await
    })
}

/// A claim round in one round trip: BEGIN, [`SET_CLAIM_PLAN`], [`CLAIM`] and COMMIT sent
/// together.
async fn claim_in_one_statement(
    conn: &mut Conn,
    request: &ClaimRequest,
    query: &CandidateQuery,
) -> Result<Vec<Task>, TxError> {
    hold(conn);
    let shared: &Conn = conn;
    let (begun, planner_set, claimed, committed) = join4(
        run(shared, "BEGIN"),
        run(shared, SET_CLAIM_PLAN),
        claim_shared(shared, query, request),
        run(shared, "COMMIT"),
    )
    .await;
    let claimed = begun.and(planner_set).and(claimed);
    match (claimed, committed) {
        (Ok(rows), Ok(_)) => {
            release(conn);
            rows.into_iter()
                .map(|row| row.into_task().map_err(TxError::from))
                .collect()
        }
        // A failed statement aborts the transaction, and the COMMIT behind it rolls back.
        (Err(error), Ok(_)) => {
            release(conn);
            Err(error.into())
        }
        (_, Err(error)) => abort(conn, error.into()).await,
    }
}

/// A claim round in two round trips: BEGIN, [`SET_CLAIM_PLAN`] and the SKIP LOCKED selects (one per
/// candidate query of the claim plan) together, then the write and COMMIT together. For
/// rounds with per-name or per-queue caps, which [`claim_in_one_statement`] cannot say.
pub(crate) async fn claim_planned(
    conn: &mut Conn,
    request: ClaimRequest,
) -> Result<Vec<Task>, TxError> {
    let queries = candidate_queries(&request);
    let now = to_millis(request.now);
    let lease = request
        .require_active_lease
        .then_some(request.worker_id.as_str());
    hold(conn);
    let shared: &Conn = conn;
    let selects = queries
        .iter()
        .map(|query| select_shared(shared, &query.names, now, query.limit, lease));
    let (begun, planner_set, selected) = join3(
        run(shared, "BEGIN"),
        run(shared, SET_CLAIM_PLAN),
        join_all(selects),
    )
    .await;
    let candidates = begun
        .and(planner_set)
        .and(selected.into_iter().collect::<QueryResult<Vec<_>>>())
        .map(|found| take_candidates(&queries, found, request.limit))
        .map_err(TxError::from);
    match candidates.and_then(|rows| plan_claim(rows, &request)) {
        Ok((claimed, batch)) => write_and_commit(conn, &batch).await.map(|()| claimed),
        Err(error) => abort(conn, error).await,
    }
}

/// An outcome batch (never empty: the store answers an empty one itself). A batch of plain
/// completions is one statement ([`completion`](crate::completion)); when that statement finds
/// a row it cannot write (a workflow child, a cron task, a stale attempt), it writes nothing
/// and the batch takes the general path, [`outcome_batch_planned`].
pub(crate) async fn outcome_batch(
    conn: &mut Conn,
    commands: Vec<BatchCommand>,
) -> Result<Vec<Result<Task, PortError>>, TxError> {
    if let Some(completions) = Completions::of(&commands)
        && let Some(verdicts) = complete_in_one_round_trip(conn, &completions).await?
    {
        return Ok(verdicts);
    }
    outcome_batch_planned(conn, commands).await
}

/// A batch of plain completions in one round trip: BEGIN, [`SET_WRITE_PLAN`], the completion
/// statement and COMMIT sent together. `None` when the statement refused the batch: it failed,
/// so the COMMIT behind it rolled back and nothing was written.
pub(crate) async fn complete_in_one_round_trip(
    conn: &mut Conn,
    completions: &Completions,
) -> Result<Option<Vec<Result<Task, PortError>>>, TxError> {
    hold(conn);
    let shared: &Conn = conn;
    let (begun, planner_set, completed, committed) = join4(
        run(shared, "BEGIN"),
        run(shared, SET_WRITE_PLAN),
        completions.load(shared),
        run(shared, "COMMIT"),
    )
    .await;
    match (begun.and(planner_set).and(completed), committed) {
        (Ok(rows), Ok(_)) => {
            release(conn);
            completions.verdicts(rows).map(Some)
        }
        (Err(error), Ok(_)) if refused(&error) => {
            release(conn);
            tracing::trace!("not a batch of plain completions; writing it through the domain");
            Ok(None)
        }
        (Err(error), Ok(_)) => {
            release(conn);
            Err(error.into())
        }
        (_, Err(error)) => abort(conn, error.into()).await,
    }
}

/// An outcome batch through the domain, in two round trips when no child settles: BEGIN,
/// [`SET_WRITE_PLAN`] and the rows' `FOR UPDATE`, then the write with COMMIT. Settling parents reads more rows, so a
/// batch with settled children writes, settles and commits one statement at a time.
pub(crate) async fn outcome_batch_planned(
    conn: &mut Conn,
    commands: Vec<BatchCommand>,
) -> Result<Vec<Result<Task, PortError>>, TxError> {
    hold(conn);
    let ids = batch_ids(&commands);
    let shared: &Conn = conn;
    let (begun, planner_set, locked) = join3(
        run(shared, "BEGIN"),
        run(shared, SET_WRITE_PLAN),
        lock_shared(shared, &ids),
    )
    .await;
    let planned = begun
        .and(planner_set)
        .and(locked)
        .map_err(TxError::from)
        .and_then(|rows| plan_batch(rows, &commands));
    let BatchPlan {
        verdicts,
        write,
        parent_effects,
        now,
    } = match planned {
        Ok(plan) => plan,
        Err(error) => return abort(conn, error).await,
    };
    if parent_effects.is_empty() {
        return write_and_commit(conn, &write).await.map(|()| verdicts);
    }
    let settled = async {
        if !write.rows.is_empty() {
            let written = write_batch(&mut *conn, &write).await?;
            check_written(&write, written)?;
        }
        settle_batch_parents::<Postgres>(conn, parent_effects, now).await
    }
    .await;
    match settled {
        Ok(()) => match run(conn, "COMMIT").await {
            Ok(_) => {
                release(conn);
                Ok(verdicts)
            }
            Err(error) => abort(conn, error.into()).await,
        },
        Err(error) => abort(conn, error).await,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use diesel::sql_types::BigInt;
    use diesel_async::AsyncConnection;
    use diesel_async::pooled_connection::PoolableConnection;
    use fib_flow_domain::time::from_millis;
    use fib_flow_domain::{NewTask, RetryBackoff, TaskType};
    use fib_flow_sql::StoreConfig;
    use fib_flow_test_support::{Backend, DatabaseAdmin, TestDatabase};
    use serde_json::Value;

    use super::*;

    pub(crate) struct Admin;

    impl DatabaseAdmin for Admin {
        type Error = PortError;

        async fn create_database(&self, server_url: &str, name: &str) -> Result<String, PortError> {
            crate::create_database(server_url, name).await?;
            // The test server URLs name a database and carry no query string.
            let server = server_url
                .rsplit_once('/')
                .map_or(server_url, |(server, _)| server);
            Ok(format!("{server}/{name}"))
        }

        async fn drop_database(&self, server_url: &str, name: &str) -> Result<(), PortError> {
            crate::drop_database(server_url, name).await
        }
    }

    pub(crate) fn new_task(name: &str) -> NewTask {
        let created = from_millis(1_700_000_000_000);
        NewTask {
            name: name.into(),
            task_type: TaskType::Async,
            priority: 0,
            payload: Value::Null,
            tag: None,
            next_run_time: created,
            timeout: Some(Duration::from_secs(60)),
            max_retries: 0,
            retry_interval: Duration::ZERO,
            retry_backoff: RetryBackoff::Fixed,
            cron_expr: None,
            timezone: None,
            root_id: None,
            parent_id: None,
            parent_round: None,
            created_at: created,
        }
    }

    /// A fresh, migrated database, and a raw connection to it; `None` (and why) when no
    /// PostgreSQL server is configured outside CI.
    pub(crate) async fn empty_database(
        test: &str,
    ) -> Option<(
        TestDatabase<Admin>,
        std::sync::Arc<dyn fib_flow_ports::TaskStore>,
    )> {
        let db = match TestDatabase::create(Admin, Backend::Postgres, test).await {
            Ok(db) => db,
            Err(error) if error.is_skip() => {
                eprintln!("skipped {test}: {error}");
                return None;
            }
            Err(error) => panic!("{test}: {error}"),
        };
        let store = crate::connect(db.url().to_owned(), &StoreConfig::new(db.url()))
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        Some((db, store))
    }

    /// A fresh, migrated database with one due task, and a raw connection to it.
    async fn database_with_a_task(test: &str) -> Option<(TestDatabase<Admin>, Conn, i64)> {
        let (db, store) = empty_database(test).await?;
        let ids = store
            .insert_tasks(vec![new_task("pipelined")])
            .await
            .expect("insert");
        store.close().await;
        let conn = Conn::establish(db.url()).await.expect("raw connection");
        Some((db, conn, ids[0].0))
    }

    fn claim_request() -> ClaimRequest {
        ClaimRequest {
            worker_id: "w1".into(),
            now: from_millis(1_700_000_001_000),
            limit: 10,
            names: vec![fib_flow_ports::ClaimName {
                name: "pipelined".into(),
                max: None,
                queue: "default".into(),
            }],
            queue_caps: Vec::new(),
            require_active_lease: false,
        }
    }

    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }

    async fn count(conn: &mut Conn, sql: &'static str) -> i64 {
        diesel::sql_query(sql)
            .get_result::<Count>(conn)
            .await
            .expect(sql)
            .n
    }

    /// The hot statements keep their prepared form on the connection: parsing and planning
    /// them on every call cost more than running them (see `fib_flow_sql::prepared`).
    #[tokio::test]
    async fn claims_and_completions_are_prepared_once_per_connection() {
        let Some((db, mut conn, id)) =
            database_with_a_task("claims_and_completions_are_prepared_once_per_connection").await
        else {
            return;
        };
        for _ in 0..3 {
            claim_round(&mut conn, claim_request())
                .await
                .expect("claim");
        }
        let completion = vec![BatchCommand {
            task_id: fib_flow_domain::TaskId(id),
            command: fib_flow_domain::Command::Complete {
                attempt: 1,
                result: Value::Null,
            },
            at: from_millis(1_700_000_002_000),
        }];
        let verdicts = outcome_batch(&mut conn, completion.clone())
            .await
            .expect("complete");
        assert!(verdicts[0].is_ok(), "{verdicts:?}");
        let stale = outcome_batch(&mut conn, completion).await.expect("stale");
        assert!(
            matches!(stale[0], Err(PortError::Stale { .. })),
            "{stale:?}"
        );
        let prepared = |statement: &str| {
            format!(
                "SELECT count(*) AS n FROM pg_prepared_statements WHERE statement LIKE '{statement}%'"
            )
        };
        for (statement, copies) in [("WITH picked AS", 1), ("WITH v AS", 1), ("WITH u AS", 0)] {
            let found = diesel::sql_query(prepared(statement))
                .get_result::<Count>(&mut conn)
                .await
                .expect("pg_prepared_statements")
                .n;
            assert_eq!(found, copies, "{statement}");
        }
        drop(conn);
        db.destroy().await.expect("drop database");
    }

    /// A newer migration may add a column while this process runs, its statements prepared:
    /// they name their result columns, so they keep working (a `*` in a prepared statement's
    /// result fails with "cached plan must not change result type" from then on).
    #[tokio::test]
    async fn prepared_claims_and_completions_survive_a_column_added_meanwhile() {
        let Some((db, store)) =
            empty_database("prepared_claims_and_completions_survive_a_column_added").await
        else {
            return;
        };
        store
            .insert_tasks(vec![new_task("pipelined"), new_task("pipelined")])
            .await
            .expect("insert");
        store.close().await;
        let mut conn = Conn::establish(db.url()).await.expect("raw connection");
        let one_at_a_time = ClaimRequest {
            limit: 1,
            ..claim_request()
        };
        for round in 0..2 {
            let claimed = claim_round(&mut conn, one_at_a_time.clone())
                .await
                .expect("claim");
            let [task] = claimed.as_slice() else {
                panic!("one task claimed in round {round}: {claimed:?}");
            };
            let completion = vec![BatchCommand {
                task_id: task.id,
                command: fib_flow_domain::Command::Complete {
                    attempt: task.attempt,
                    result: Value::from(round),
                },
                at: from_millis(1_700_000_002_000),
            }];
            let verdicts = outcome_batch(&mut conn, completion)
                .await
                .expect("complete");
            assert!(verdicts[0].is_ok(), "round {round}: {verdicts:?}");
            if round == 0 {
                diesel::sql_query("ALTER TABLE fib_flow_tasks ADD COLUMN added_later INT")
                    .execute(&mut conn)
                    .await
                    .expect("add a column");
            }
        }
        let completed = count(
            &mut conn,
            "SELECT count(*) AS n FROM fib_flow_tasks WHERE status = 'completed'",
        )
        .await;
        assert_eq!(completed, 2);
        drop(conn);
        db.destroy().await.expect("drop database");
    }

    #[tokio::test]
    async fn a_pipelined_claim_commits_the_row_its_attempt_and_its_events() {
        let Some((db, mut conn, id)) =
            database_with_a_task("a_pipelined_claim_commits_the_row_its_attempt_and_its_events")
                .await
        else {
            return;
        };
        let claimed = claim_round(&mut conn, claim_request())
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].id.0, id);
        assert!(!conn.is_broken(), "the connection is reusable after COMMIT");
        let running = count(
            &mut conn,
            "SELECT count(*) AS n FROM fib_flow_tasks WHERE status = 'running' AND attempt = 1",
        )
        .await;
        let attempts = count(
            &mut conn,
            "SELECT count(*) AS n FROM fib_flow_task_attempts",
        )
        .await;
        let events = count(
            &mut conn,
            "SELECT count(*) AS n FROM fib_flow_task_events \
             WHERE event_type IN ('task_claimed', 'task_started')",
        )
        .await;
        assert_eq!((running, attempts, events), (1, 1, 2));
        drop(conn);
        db.destroy().await.expect("drop database");
    }

    #[tokio::test]
    async fn a_guard_miss_behind_a_pipelined_commit_commits_nothing() {
        let Some((db, mut conn, id)) =
            database_with_a_task("a_guard_miss_behind_a_pipelined_commit_commits_nothing").await
        else {
            return;
        };
        // The rows the claim read, as the claim planned them; then a writer that ignores the
        // row locks changes the row before the write, so its guard no longer matches.
        hold(&mut conn);
        run(&conn, "BEGIN").await.expect("begin");
        let rows = select_shared(&conn, &["pipelined".to_owned()], i64::MAX, 10, None)
            .await
            .expect("select");
        let (_, batch) = plan_claim(rows, &claim_request()).expect("plan");
        diesel::sql_query("UPDATE fib_flow_tasks SET attempt = 7 WHERE id = $1")
            .bind::<BigInt, _>(id)
            .execute(&mut conn)
            .await
            .expect("the interfering write");
        let written = write_and_commit(&mut conn, &batch).await;
        assert!(
            matches!(written, Err(TxError::Port(PortError::Stale { .. }))),
            "{written:?}"
        );
        assert!(!conn.is_broken(), "the transaction has ended: rolled back");
        // Rolled back as a whole: the interfering write (same transaction) and no attempt or
        // claim event for a row that was not claimed.
        let attempts = count(
            &mut conn,
            "SELECT count(*) AS n FROM fib_flow_task_attempts",
        )
        .await;
        let claim_events = count(
            &mut conn,
            "SELECT count(*) AS n FROM fib_flow_task_events WHERE event_type = 'task_claimed'",
        )
        .await;
        let untouched = count(
            &mut conn,
            "SELECT count(*) AS n FROM fib_flow_tasks WHERE status = 'pending' AND attempt = 0",
        )
        .await;
        assert_eq!((attempts, claim_events, untouched), (0, 0, 1));
        drop(conn);
        db.destroy().await.expect("drop database");
    }

    #[tokio::test]
    async fn a_transaction_left_open_marks_the_connection_broken_for_the_pool() {
        let Some((db, mut conn, _)) = database_with_a_task(
            "a_transaction_left_open_marks_the_connection_broken_for_the_pool",
        )
        .await
        else {
            return;
        };
        // What a claim future dropped between BEGIN and COMMIT leaves behind.
        hold(&mut conn);
        run(&conn, "BEGIN").await.expect("begin");
        assert!(conn.is_broken(), "the pool must discard it");
        let aborted: Result<(), TxError> = abort(
            &mut conn,
            TxError::Port(PortError::NotFound(fib_flow_domain::TaskId(1))),
        )
        .await;
        assert!(aborted.is_err());
        assert!(!conn.is_broken(), "rolled back: reusable");
        drop(conn);
        db.destroy().await.expect("drop database");
    }
}

#[cfg(test)]
pub(crate) mod one_statement_claim {
    use diesel::{QueryDsl, SelectableHelper};
    use diesel_async::AsyncConnection;
    use fib_flow_domain::time::from_millis;
    use fib_flow_domain::{NewTask, TaskId};
    use fib_flow_sql::rows::{AttemptRow, EventRow};
    use fib_flow_sql::schema::{fib_flow_task_attempts, fib_flow_task_events, fib_flow_tasks};

    use fib_flow_test_support::TestDatabase;

    use super::tests::{Admin, empty_database, new_task};
    use super::*;

    /// Tasks that exercise every input of the claim transition: a timeout or none, a tag, a
    /// priority, a workflow child, a retry (attempt, retry count, stage and progress carried
    /// over), one not yet due and one of a name nobody claims.
    pub(crate) async fn varied_tasks(test: &str) -> Option<(TestDatabase<Admin>, Conn)> {
        let (db, store) = empty_database(test).await?;
        let parent = store
            .insert_tasks(vec![new_task("not-claimed")])
            .await
            .expect("parent")[0];
        let later = from_millis(1_700_000_900_000);
        let tasks = vec![
            new_task("claimed"),
            NewTask {
                tag: Some("tagged".into()),
                priority: 5,
                timeout: None,
                ..new_task("claimed")
            },
            NewTask {
                parent_id: Some(parent),
                root_id: Some(parent),
                parent_round: Some(1),
                ..new_task("child")
            },
            new_task("claimed"),
            NewTask {
                next_run_time: later,
                ..new_task("claimed")
            },
        ];
        let ids = store.insert_tasks(tasks).await.expect("insert");
        store.close().await;
        let mut conn = Conn::establish(db.url()).await.expect("raw connection");
        diesel::sql_query(
            "UPDATE fib_flow_tasks SET retry_count = 2, attempt = 2, stage = 3, \
             current_stage_name = 'load', progress_text = 'half', progress_percent = 50 \
             WHERE id = $1",
        )
        .bind::<diesel::sql_types::BigInt, _>(ids[3].0)
        .execute(&mut conn)
        .await
        .expect("make a retry");
        Some((db, conn))
    }

    pub(crate) fn request() -> ClaimRequest {
        ClaimRequest {
            worker_id: "w-1".into(),
            now: from_millis(1_700_000_001_234),
            limit: 10,
            names: ["claimed", "child"]
                .into_iter()
                .map(|name| fib_flow_ports::ClaimName {
                    name: name.into(),
                    max: None,
                    queue: "default".into(),
                })
                .collect(),
            queue_caps: Vec::new(),
            require_active_lease: false,
        }
    }

    /// Everything the claim wrote, without the event ids (their order is compared instead).
    pub(crate) async fn written(conn: &mut Conn) -> (Vec<TaskRow>, Vec<AttemptRow>, Vec<EventRow>) {
        let tasks = fib_flow_tasks::table
            .order(fib_flow_tasks::id)
            .select(TaskRow::as_select())
            .load(conn)
            .await
            .expect("tasks");
        let attempts = fib_flow_task_attempts::table
            .order(fib_flow_task_attempts::id)
            .select(AttemptRow::as_select())
            .load(conn)
            .await
            .expect("attempts");
        let events = fib_flow_task_events::table
            .order(fib_flow_task_events::id)
            .select(EventRow::as_select())
            .load::<EventRow>(conn)
            .await
            .expect("events")
            .into_iter()
            .map(|event| EventRow { id: 0, ..event })
            .collect();
        (tasks, attempts, events)
    }

    #[tokio::test]
    async fn the_one_statement_claim_writes_what_the_domain_decides() {
        let Some((sql_db, mut by_sql)) = varied_tasks("one_statement_claim_sql").await else {
            return;
        };
        let Some((domain_db, mut by_domain)) = varied_tasks("one_statement_claim_domain").await
        else {
            return;
        };
        let request = request();
        let queries = candidate_queries(&request);
        let [query] = queries.as_slice() else {
            panic!("one uncapped query: {queries:?}");
        };
        let claimed_by_sql = claim_in_one_statement(&mut by_sql, &request, query)
            .await
            .expect("claim in one statement");
        let claimed_by_domain = claim_planned(&mut by_domain, request.clone())
            .await
            .expect("claim through the domain");
        assert_eq!(claimed_by_sql, claimed_by_domain);
        let ids: Vec<TaskId> = claimed_by_sql.iter().map(|task| task.id).collect();
        assert_eq!(ids.len(), 4, "all due tasks of the claimed names: {ids:?}");
        let (sql_tasks, sql_attempts, sql_events) = written(&mut by_sql).await;
        let (domain_tasks, domain_attempts, domain_events) = written(&mut by_domain).await;
        assert_eq!(sql_tasks, domain_tasks);
        assert_eq!(sql_attempts, domain_attempts);
        assert_eq!(sql_events, domain_events);
        let retry_events = sql_events
            .iter()
            .filter(|event| event.event_type == "task_retry_started")
            .count();
        assert_eq!(retry_events, 1, "the retry's third event");
        drop((by_sql, by_domain));
        sql_db.destroy().await.expect("drop database");
        domain_db.destroy().await.expect("drop database");
    }
}
