//! Property tests of the critical path on synthetic but consistent workflows.
//!
//! The generator builds a workflow tree (rounds of parallel children, possibly nested, with
//! retries and failing leaves) and lays it out on a timeline the way the engine runs it: a
//! task's attempts run one after another, a round's children start after the attempt that
//! created them ended, and the parent's next attempt starts only after every child of the
//! round ended. Children carry the number of the attempt that created them as `parent_round`.

mod common;

use common::{at, started};
use fib_flow_audit::summarize;
use fib_flow_domain::{AttemptOutcome, Task, TaskAttempt, TaskEvent, TaskId, TaskStatus};
use proptest::collection::vec;
use proptest::prelude::*;

/// `(gap before the attempt, attempt duration)` in milliseconds.
type Slot = (i64, i64);

#[derive(Debug, Clone)]
struct GenStage {
    /// Failed attempts of this stage before the one that ends it.
    retries: Vec<Slot>,
    /// The attempt that ends the stage.
    last: Slot,
    /// Children the last attempt creates (its round, numbered by that attempt).
    children: Vec<GenTask>,
}

#[derive(Debug, Clone)]
struct GenTask {
    stages: Vec<GenStage>,
    /// Whether the final attempt fails (the task ends permanently failed).
    fails: bool,
}

fn slot() -> impl Strategy<Value = Slot> {
    // Zero gaps and durations included: ties and instant attempts are the edge cases.
    (0i64..2_000, 0i64..5_000)
}

fn workflow() -> impl Strategy<Value = GenTask> {
    let leaf =
        (vec(slot(), 0..3), slot(), any::<bool>()).prop_map(|(retries, last, fails)| GenTask {
            stages: vec![GenStage {
                retries,
                last,
                children: Vec::new(),
            }],
            fails,
        });
    leaf.prop_recursive(3, 32, 4, |inner| {
        let stage =
            (vec(slot(), 0..2), slot(), vec(inner, 0..4)).prop_map(|(retries, last, children)| {
                GenStage {
                    retries,
                    last,
                    children,
                }
            });
        (vec(stage, 1..4), any::<bool>()).prop_map(|(stages, fails)| GenTask { stages, fails })
    })
}

/// The rows of a laid-out workflow.
#[derive(Default)]
struct Rows {
    tasks: Vec<Task>,
    attempts: Vec<TaskAttempt>,
    events: Vec<TaskEvent>,
}

impl Rows {
    /// Lays out `spec` starting at `start`; returns the instant its last attempt or last
    /// descendant ended.
    fn lay_out(&mut self, spec: &GenTask, parent: Option<(i64, i32)>, start: i64) -> i64 {
        let id = self.tasks.len() as i64 + 1;
        let root = 1;
        let mut task = match parent {
            None => common::task(id, "root", TaskStatus::Completed),
            Some((parent, round)) => {
                common::child(id, "node", TaskStatus::Completed, root, parent, round)
            }
        };
        task.created_at = at(start);
        let index = self.tasks.len();
        self.tasks.push(task);

        let mut now = start;
        let mut attempt = 0;
        let last_stage = spec.stages.len() - 1;
        for (stage_index, stage) in spec.stages.iter().enumerate() {
            let stage_number = stage_index as i32;
            for &(gap, duration) in &stage.retries {
                attempt += 1;
                now += gap;
                self.attempt(
                    id,
                    attempt,
                    stage_number,
                    now,
                    duration,
                    AttemptOutcome::Failed,
                );
                now += duration;
            }
            attempt += 1;
            let (gap, duration) = stage.last;
            now += gap;
            let outcome = if !stage.children.is_empty() || stage_index < last_stage {
                // Children, or an explicit suspension resumed by hand: the stage ends suspended.
                AttemptOutcome::Suspended
            } else if spec.fails {
                AttemptOutcome::Failed
            } else {
                AttemptOutcome::Completed
            };
            self.attempt(id, attempt, stage_number, now, duration, outcome);
            now += duration;
            // The round's children all start after the attempt that created them; the parent
            // continues once the last of them ended.
            let round_start = now;
            for child in &stage.children {
                // `parent_round` is the creating attempt's number, not the stage.
                let ended = self.lay_out(child, Some((id, attempt)), round_start);
                now = now.max(ended);
            }
        }
        let task = &mut self.tasks[index];
        task.stage = last_stage as i32;
        task.attempt = attempt;
        if !spec.stages[last_stage].children.is_empty() {
            // Its last round settled: resumed, waiting to be claimed for the next stage.
            task.status = TaskStatus::Pending;
            task.stage += 1;
        } else if spec.fails {
            task.status = TaskStatus::PermanentlyFailed;
        }
        now
    }

    fn attempt(
        &mut self,
        task: i64,
        n: i32,
        stage: i32,
        start: i64,
        duration: i64,
        outcome: AttemptOutcome,
    ) {
        let id = self.attempts.len() as i64 + 1;
        self.attempts
            .push(common::done(id, task, n, start, start + duration, outcome));
        let event_id = self.events.len() as i64 + 1;
        self.events
            .push(started(event_id, task, 1, n, stage, start));
    }
}

/// The expected critical path straight from the generator's tree, in milliseconds: every
/// attempt of a task adds; each round adds its longest child.
fn model_path(spec: &GenTask) -> i64 {
    spec.stages
        .iter()
        .map(|stage| {
            let own: i64 = stage.retries.iter().map(|slot| slot.1).sum::<i64>() + stage.last.1;
            own + stage.children.iter().map(model_path).max().unwrap_or(0)
        })
        .sum()
}

fn secs(millis: i64) -> f64 {
    millis as f64 / 1000.0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_critical_path_is_bounded_by_the_span_and_the_longest_attempt(spec in workflow()) {
        let mut rows = Rows::default();
        rows.lay_out(&spec, None, 0);
        let root = rows.tasks[0].clone();
        let summary = summarize(Some(&root), &rows.tasks, &rows.attempts, &rows.events);
        let path = &summary.critical_path;

        let first_started = rows.attempts.iter().map(|a| a.started_at).min().expect("an attempt");
        let last_ended = rows.attempts.iter().filter_map(|a| a.ended_at).max().expect("an end");
        let span = secs((last_ended - first_started).num_milliseconds());
        let longest = rows
            .attempts
            .iter()
            .filter_map(|a| a.ended_at.map(|end| secs((end - a.started_at).num_milliseconds())))
            .fold(0.0, f64::max);
        prop_assert!(path.total_duration_seconds <= span + 1e-6,
            "path {} > span {}", path.total_duration_seconds, span);
        prop_assert!(path.total_duration_seconds >= longest - 1e-6,
            "path {} < longest attempt {}", path.total_duration_seconds, longest);

        // Exactly the generator's path, and the nodes are that path: they start with the root,
        // their durations add up to the total, and they run one after another in time.
        prop_assert_eq!(path.total_duration_seconds, secs(model_path(&spec)));
        prop_assert_eq!(path.nodes.first().map(|node| node.task_id), Some(TaskId(1)));
        let node_sum: i64 = path
            .nodes
            .iter()
            .map(|node| (node.duration_seconds.unwrap_or(0.0) * 1000.0).round() as i64)
            .sum();
        prop_assert_eq!(secs(node_sum), path.total_duration_seconds);
        for pair in path.nodes.windows(2) {
            prop_assert!(pair[0].ended_at <= pair[1].started_at, "{:?} overlaps {:?}", pair[0], pair[1]);
        }

        // The root's stage timings follow its stages, and input order does not matter.
        let root_attempts = rows.attempts.iter().filter(|a| a.task_id == TaskId(1)).count();
        prop_assert_eq!(summary.stage_timings.len(), root_attempts);
        prop_assert!(summary.stage_timings.windows(2).all(|pair| pair[0].stage <= pair[1].stage));
        let reversed = |rows: &[TaskEvent]| rows.iter().rev().cloned().collect::<Vec<_>>();
        let shuffled_tasks: Vec<Task> = rows.tasks.iter().rev().cloned().collect();
        let shuffled_attempts: Vec<TaskAttempt> = rows.attempts.iter().rev().cloned().collect();
        let again = summarize(Some(&root), &shuffled_tasks, &shuffled_attempts, &reversed(&rows.events));
        prop_assert_eq!(again, summary);
    }
}
