//! A batch of plain completions in one statement: the second transition, after the claim,
//! that PostgreSQL computes in SQL, because it is what almost every batch of a busy worker
//! holds. The domain path reads the rows `FOR UPDATE` (a row lock written to every tuple),
//! applies the transitions on the client and writes them back in a second round trip; this
//! statement does the same write at once, sent with its BEGIN and COMMIT in one round trip
//! (`pipeline::complete_in_one_round_trip`).
//!
//! Only a batch made entirely of `Complete` commands for distinct tasks, with results the
//! domain would store, is tried here; the statement refuses to write anything unless every
//! row is a running async task, not a workflow child, still on the completed attempt (the
//! only case where the domain writes nothing but the task, its attempt and one event). Any
//! other batch, or one the statement refused, goes through the domain.

use std::collections::{HashMap, HashSet};

use diesel::result::{Error, QueryResult};
use diesel_async::RunQueryDsl;
use fib_flow_domain::limits::{MAX_JSON_DEPTH, check_json};
use fib_flow_domain::time::to_millis;
use fib_flow_domain::{Command, Task, TaskStatus};
use fib_flow_ports::{BatchCommand, PortError};
use fib_flow_sql::TxError;
use fib_flow_sql::json_column::JsonText;
use fib_flow_sql::prepared::keep_prepared;
use fib_flow_sql::rows::{TaskRow, json_to_text};
use fib_flow_sql::schema::Json;
use futures_util::future::BoxFuture;

use crate::Conn;
use crate::statements::GUARD_MISSED;

/// The statement is written so that the planner finds the tasks by their primary key
/// whatever the statistics say (a young queue's say nothing true): the only condition on the
/// task table alone is `id = ANY(ids)`, whose row count the planner knows. The status guard
/// compares with a bound column (`running`, one per row): with the literal the planner read
/// the running tasks through `idx_tasks_active`, whose dead entries (every finished attempt
/// leaves one until vacuum) cost 5 ms a batch after 10,000 tasks. Whether each row is an
/// async task without a parent is checked on the rows written, by the guard count: as a
/// condition, its guessed selectivity made the planner expect one task and scan the table
/// once per completion (1 s for a batch of 500).
///
/// The rows come in ascending id order (`v` is sorted), so that the update locks them in the
/// order every other multi-row write does (docs/semantics.md, "Batched outcomes") whenever it
/// walks `v` or the primary key; a deadlock with another order is detected by PostgreSQL and
/// retried as a transient fault.
///
/// T3 (`running` → `completed`, async, no parent) as `fib_flow_domain::apply` writes it: the
/// task row, its attempt closed `completed`, the `task_completed` event with the reference's
/// generic message and metadata. Events go in command order. The final select fails the whole
/// statement, so that nothing is written, unless every command found its row and every row
/// is a plain completion (it reads the guard first, so that it runs even when no row
/// matched); the test
/// `plain_completions_write_what_the_domain_decides` pins the rest to the domain.
const COMPLETE: &str = concat!(
    "WITH v AS (SELECT * FROM unnest($1::bigint[], $2::int[], \
        $3::jsonb[], $4::bigint[], $6::text[]) WITH ORDINALITY \
        AS v(id, attempt, result, at, running, n) ORDER BY id), \
  done AS (UPDATE fib_flow_tasks AS t SET status = 'completed', deadline = NULL, \
        result = v.result, error = NULL, last_active_time = v.at, last_event_time = v.at, \
        last_event_type = 'task_completed' \
    FROM v WHERE t.id = ANY($1::bigint[]) AND t.id = v.id AND t.status = v.running \
      AND t.attempt = v.attempt \
    RETURNING t.*, v.at AS completed_at, v.n AS command_order), \
  closed AS (UPDATE fib_flow_task_attempts AS a SET ended_at = d.completed_at, \
        outcome = 'completed', error = NULL, timeout_flag = false \
    FROM done AS d WHERE a.task_id = d.id AND a.attempt = d.attempt AND a.ended_at IS NULL), \
  logged AS (INSERT INTO fib_flow_task_events (task_id, root_id, parent_id, event_type, \
        from_status, to_status, stage, worker_id, attempt, event_time, message, metadata) \
    SELECT d.id, COALESCE(d.root_id, d.id), d.parent_id, 'task_completed', 'running', \
        'completed', d.stage, d.worker_id, d.attempt, d.completed_at, \
        'Task ' || d.name || ' status changed from running to completed', \
        jsonb_build_object('error', NULL::text, 'retry_count', d.retry_count, \
            'next_run_time', NULL::text) \
    FROM done AS d ORDER BY d.command_order) \
SELECT ",
    task_row_columns!("d"),
    " FROM (SELECT fib_flow_guards_matched((SELECT count(*) FROM done \
        WHERE done.type = 'async' AND done.parent_id IS NULL), $5)) AS g(matched) \
    LEFT JOIN done AS d ON true"
);

/// A batch that [`COMPLETE`] may write, as its bound arrays.
pub(crate) struct Completions {
    ids: Vec<i64>,
    attempts: Vec<i32>,
    results: Vec<JsonText>,
    at: Vec<i64>,
    /// `running` for each row: the status guard (see [`COMPLETE`]).
    running: Vec<&'static str>,
}

impl Completions {
    /// The batch as plain completions, if every command is a `Complete` of a task no other
    /// command of the batch names, with a result the domain stores as given (one it would
    /// refuse fails the attempt instead: the domain's business).
    pub(crate) fn of(commands: &[BatchCommand]) -> Option<Completions> {
        if commands.is_empty() {
            return None;
        }
        let mut seen = HashSet::with_capacity(commands.len());
        let mut completions = Completions {
            ids: Vec::with_capacity(commands.len()),
            attempts: Vec::with_capacity(commands.len()),
            results: Vec::with_capacity(commands.len()),
            at: Vec::with_capacity(commands.len()),
            running: Vec::with_capacity(commands.len()),
        };
        for command in commands {
            let Command::Complete { attempt, result } = &command.command else {
                return None;
            };
            if !seen.insert(command.task_id)
                || check_json("result", result, MAX_JSON_DEPTH).is_err()
            {
                return None;
            }
            completions.ids.push(command.task_id.0);
            completions.attempts.push(*attempt);
            completions.results.push(json_to_text(result));
            completions.at.push(to_millis(command.at));
            completions.running.push(TaskStatus::Running.as_str());
        }
        Some(completions)
    }

    /// [`COMPLETE`] on a shared reference, so that it can be pipelined (see `pipeline.rs`).
    pub(crate) fn load<'a>(&'a self, conn: &'a Conn) -> BoxFuture<'a, QueryResult<Vec<TaskRow>>> {
        use diesel::sql_types::{Array, BigInt, Integer, Text};
        let mut shared = conn;
        let expected = i64::try_from(self.ids.len()).unwrap_or(i64::MAX);
        Box::pin(async move {
            keep_prepared(
                diesel::sql_query(COMPLETE)
                    .bind::<Array<BigInt>, _>(&self.ids)
                    .bind::<Array<Integer>, _>(&self.attempts)
                    .bind::<Array<Json>, _>(&self.results)
                    .bind::<Array<BigInt>, _>(&self.at)
                    .bind::<BigInt, _>(expected)
                    .bind::<Array<Text>, _>(&self.running),
            )
            .load(&mut shared)
            .await
        })
    }

    /// The verdicts, in command order, from the rows [`COMPLETE`] wrote.
    pub(crate) fn verdicts(
        &self,
        rows: Vec<TaskRow>,
    ) -> Result<Vec<Result<Task, PortError>>, TxError> {
        let mut by_id: HashMap<i64, TaskRow> = rows.into_iter().map(|row| (row.id, row)).collect();
        let mut verdicts = Vec::with_capacity(self.ids.len());
        for id in &self.ids {
            let row = by_id.remove(id).ok_or_else(|| PortError::Database {
                backend: "postgres",
                message: format!("the completion of task {id} was written but not returned"),
            })?;
            verdicts.push(Ok(row.into_task()?));
        }
        Ok(verdicts)
    }
}

/// Whether [`COMPLETE`] refused its batch (nothing written): a row it cannot write.
pub(crate) fn refused(error: &Error) -> bool {
    matches!(error, Error::DatabaseError(_, info) if info.message().contains(GUARD_MISSED))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fib_flow_domain::TaskId;
    use serde_json::{Value, json};

    use super::*;
    use crate::pipeline::one_statement_claim::{request, varied_tasks, written};
    use crate::pipeline::{
        claim_planned, complete_in_one_round_trip, outcome_batch, outcome_batch_planned,
    };

    fn completions_of(claimed: &[Task], results: &[Value]) -> Vec<BatchCommand> {
        claimed
            .iter()
            .zip(results.iter().cycle())
            .enumerate()
            .map(|(index, (task, result))| BatchCommand {
                task_id: task.id,
                command: Command::Complete {
                    attempt: task.attempt,
                    result: result.clone(),
                },
                at: fib_flow_domain::time::add(
                    request().now,
                    Duration::from_millis(10 + index as u64),
                ),
            })
            .collect()
    }

    fn tasks(verdicts: Vec<Result<Task, PortError>>) -> Vec<Task> {
        verdicts
            .into_iter()
            .map(|verdict| verdict.expect("written"))
            .collect()
    }

    /// Completions in reverse claim order (events follow the commands), with results of every
    /// JSON kind, of tasks with and without a timeout, a tag, a retry behind them.
    #[tokio::test]
    async fn plain_completions_write_what_the_domain_decides() {
        let Some((sql_db, mut by_sql)) = varied_tasks("plain_completions_sql").await else {
            return;
        };
        let Some((domain_db, mut by_domain)) = varied_tasks("plain_completions_domain").await
        else {
            return;
        };
        let claimed_sql = claim_planned(&mut by_sql, request()).await.expect("claim");
        let claimed_domain = claim_planned(&mut by_domain, request())
            .await
            .expect("claim");
        assert_eq!(claimed_sql, claimed_domain);
        let mut plain: Vec<Task> = claimed_sql
            .into_iter()
            .filter(|task| task.parent_id.is_none())
            .collect();
        plain.reverse();
        assert_eq!(plain.len(), 3, "three plain tasks claimed: {plain:?}");
        let results = [
            json!({"b": [1, 2.5, "x"], "a": null}),
            json!(null),
            json!(""),
        ];
        let commands = completions_of(&plain, &results);
        let completions = Completions::of(&commands).expect("plain completions");
        let by_statement = complete_in_one_round_trip(&mut by_sql, &completions)
            .await
            .expect("write")
            .expect("every row written");
        let through_domain = outcome_batch_planned(&mut by_domain, commands)
            .await
            .expect("domain batch");
        assert_eq!(tasks(by_statement), tasks(through_domain));
        let (sql_tasks, sql_attempts, sql_events) = written(&mut by_sql).await;
        let (domain_tasks, domain_attempts, domain_events) = written(&mut by_domain).await;
        assert_eq!(sql_tasks, domain_tasks);
        assert_eq!(sql_attempts, domain_attempts);
        assert_eq!(sql_events, domain_events);
        let completed = sql_events
            .iter()
            .filter(|event| event.event_type == "task_completed")
            .count();
        assert_eq!(completed, 3);
        drop((by_sql, by_domain));
        sql_db.destroy().await.expect("drop database");
        domain_db.destroy().await.expect("drop database");
    }

    async fn task_completed_events(conn: &mut Conn) -> usize {
        let (_, _, events) = written(conn).await;
        events
            .iter()
            .filter(|event| event.event_type == "task_completed")
            .count()
    }

    /// A workflow child (its parent must be told) or a stale attempt makes the statement
    /// write nothing at all; the batch then goes through the domain, which writes every
    /// outcome it can and reports the stale one to its own execution.
    #[tokio::test]
    async fn a_batch_the_statement_cannot_write_is_left_whole_to_the_domain() {
        let Some((db, mut conn)) = varied_tasks("completions_left_to_the_domain").await else {
            return;
        };
        let claimed = claim_planned(&mut conn, request()).await.expect("claim");
        assert!(claimed.iter().any(|task| task.parent_id.is_some()));
        let with_child = completions_of(&claimed, &[json!(1)]);
        let completions = Completions::of(&with_child).expect("completions");
        let refused = complete_in_one_round_trip(&mut conn, &completions)
            .await
            .expect("no database error");
        assert!(refused.is_none(), "a child's completion is not plain");
        let mut stale = completions_of(&claimed[..1], &[json!(1)]);
        if let Command::Complete { attempt, .. } = &mut stale[0].command {
            *attempt += 1;
        }
        let completions = Completions::of(&stale).expect("completions");
        let refused = complete_in_one_round_trip(&mut conn, &completions)
            .await
            .expect("no database error");
        assert!(refused.is_none(), "a stale attempt is not written");
        assert_eq!(task_completed_events(&mut conn).await, 0, "nothing written");

        let mut batch = stale;
        batch.extend(completions_of(&claimed[1..], &[json!(2)]));
        let verdicts = outcome_batch(&mut conn, batch).await.expect("batch");
        assert!(
            matches!(verdicts[0], Err(PortError::Stale { .. })),
            "{verdicts:?}"
        );
        assert!(verdicts[1..].iter().all(Result::is_ok), "{verdicts:?}");
        assert_eq!(task_completed_events(&mut conn).await, claimed.len() - 1);
        drop(conn);
        db.destroy().await.expect("drop database");
    }

    #[test]
    fn only_batches_of_distinct_storable_completions_are_plain() {
        let complete = |id: i64, result: Value| BatchCommand {
            task_id: TaskId(id),
            command: Command::Complete { attempt: 1, result },
            at: request().now,
        };
        assert!(Completions::of(&[complete(1, json!(1)), complete(2, json!(2))]).is_some());
        assert!(Completions::of(&[]).is_none());
        assert!(Completions::of(&[complete(1, json!(1)), complete(1, json!(2))]).is_none());
        assert!(Completions::of(&[complete(1, json!("nul \u{0}"))]).is_none());
        let failed = BatchCommand {
            task_id: TaskId(3),
            command: Command::Fail {
                attempt: 1,
                error: "boom".into(),
                timed_out: false,
                jitter: 0.0,
            },
            at: request().now,
        };
        assert!(Completions::of(&[complete(1, json!(1)), failed]).is_none());
    }
}
