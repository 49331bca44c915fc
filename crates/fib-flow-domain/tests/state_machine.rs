//! Property tests of the state machine: random async and cron tasks driven by random command
//! sequences (with right and stale attempt numbers) while time advances.
//!
//! A small harness plays the store: it keeps the children each accepted `AwaitChildren`
//! creates (in the round of the parent's attempt that returned `next()`), reports each child's settlement to the parent once (the store's exactly-once
//! guarantee), and sometimes reports a child a second time after the parent moved on, which the
//! machine must ignore.

mod common;

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use common::*;
use fib_flow_domain::{
    AttemptChange, ChildFailurePolicy, ChildSettlement, Command, DomainError, ExpiryKind,
    RetryBackoff, Task, TaskId, TaskStatus, TaskType, Transition, apply,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::json;

/// Which attempt number a fenced command carries.
#[derive(Debug, Clone, Copy)]
enum Fence {
    Current,
    Previous,
    Next,
}

#[derive(Debug, Clone)]
enum Op {
    Advance(u32),
    Claim,
    Complete {
        fence: Fence,
        result: i8,
    },
    Fail {
        fence: Fence,
        timed_out: bool,
        jitter: f64,
    },
    Expire {
        fence: Fence,
        heartbeat: bool,
        jitter: f64,
    },
    Suspend {
        fence: Fence,
        blank: bool,
    },
    Await {
        fence: Fence,
        children: u8,
        fail_parent: bool,
    },
    Release {
        fence: Fence,
    },
    Recover {
        fence: Fence,
    },
    FailPermanently {
        fence: Fence,
    },
    Snooze {
        fence: Fence,
        millis: u32,
    },
    Retry,
    Pause,
    Resume,
    Cancel,
    Settle {
        pick: usize,
        failed: bool,
    },
}

fn fence() -> impl Strategy<Value = Fence> {
    prop_oneof![
        6 => Just(Fence::Current),
        1 => Just(Fence::Previous),
        1 => Just(Fence::Next),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..5).prop_map(Op::Advance),
        2 => (0u32..4000).prop_map(Op::Advance),
        6 => Just(Op::Claim),
        3 => (fence(), any::<i8>()).prop_map(|(fence, result)| Op::Complete { fence, result }),
        4 => (fence(), any::<bool>(), 0.0f64..1.0)
            .prop_map(|(fence, timed_out, jitter)| Op::Fail { fence, timed_out, jitter }),
        2 => (fence(), any::<bool>(), 0.0f64..1.0)
            .prop_map(|(fence, heartbeat, jitter)| Op::Expire { fence, heartbeat, jitter }),
        1 => (fence(), prop::bool::weighted(0.2)).prop_map(|(fence, blank)| Op::Suspend { fence, blank }),
        3 => (fence(), 0u8..4, any::<bool>())
            .prop_map(|(fence, children, fail_parent)| Op::Await { fence, children, fail_parent }),
        1 => fence().prop_map(|fence| Op::Release { fence }),
        1 => fence().prop_map(|fence| Op::Recover { fence }),
        1 => fence().prop_map(|fence| Op::FailPermanently { fence }),
        1 => (fence(), 0u32..100_000).prop_map(|(fence, millis)| Op::Snooze { fence, millis }),
        1 => Just(Op::Retry),
        1 => Just(Op::Pause),
        2 => Just(Op::Resume),
        1 => Just(Op::Cancel),
        5 => (any::<usize>(), prop::bool::weighted(0.3)).prop_map(|(pick, failed)| Op::Settle { pick, failed }),
    ]
}

/// The initial task and the children already waiting on it (for a suspended parent).
#[derive(Debug, Clone)]
struct Start {
    task: Task,
    children: i32,
}

fn start() -> impl Strategy<Value = Start> {
    (
        (
            any::<bool>(),
            0i32..5,
            0u64..30,
            any::<bool>(),
            prop::option::of(1u64..120),
            any::<bool>(),
        ),
        (0usize..8, 0i32..4, 0i32..3, 0i32..4, 1i32..4, any::<bool>()),
    )
        .prop_map(
            |(
                (cron, max_retries, interval, exponential, timeout, child),
                (status_pick, attempt, stage, retry_count, children, awaiting_children),
            )| {
                let mut task = if cron { cron_task() } else { async_task() };
                if child && !cron {
                    task.root_id = Some(TaskId(1));
                    task.parent_id = Some(TaskId(2));
                    // The (arbitrary) attempt of the parent that created this child.
                    task.parent_round = Some(stage % 2 + 1);
                }
                task.max_retries = max_retries;
                task.retry_interval = Duration::from_secs(interval);
                task.retry_backoff = if exponential {
                    RetryBackoff::Exponential
                } else {
                    RetryBackoff::Fixed
                };
                task.timeout = timeout.map(Duration::from_secs);
                task.stage = stage;
                task.retry_count = retry_count.min(max_retries.max(1) - 1);
                task.attempt = attempt;
                let status = match TaskStatus::ALL[status_pick] {
                    // Cron tasks never complete.
                    TaskStatus::Completed if cron => TaskStatus::Paused,
                    status => status,
                };
                task.status = status;
                let mut seeded = 0;
                match status {
                    TaskStatus::Running => {
                        task = running(task, attempt.max(1));
                    }
                    TaskStatus::Suspended => {
                        task.attempt = attempt.max(1);
                        task.worker_id = Some("worker-a".to_owned());
                        if awaiting_children {
                            task = awaiting(task, children);
                            seeded = children;
                        } else {
                            task.suspend_reason = Some("approval".to_owned());
                        }
                    }
                    _ => {}
                }
                Start {
                    task,
                    children: seeded,
                }
            },
        )
}

#[derive(Debug, Clone)]
struct Child {
    id: TaskId,
    /// The parent's attempt that created the child.
    round: i32,
    settled: bool,
}

struct Harness {
    task: Task,
    now: DateTime<Utc>,
    children: Vec<Child>,
    next_child_id: i64,
    /// Claims since the retry budget was last reset (resume, completion).
    claims: i32,
    /// Re-queues that are not retries (release, recovery, stage advance) since the last reset.
    requeues: i32,
    /// Failures (fail, expire) since the last reset.
    failures: i32,
}

impl Harness {
    fn new(start: Start) -> Self {
        let Start { task, children } = start;
        let running = i32::from(task.status == TaskStatus::Running);
        let seeded = (0..children)
            .map(|i| Child {
                id: TaskId(1000 + i64::from(i)),
                round: task.attempt,
                settled: false,
            })
            .collect();
        Harness {
            claims: task.retry_count + running,
            failures: task.retry_count,
            requeues: 0,
            task,
            now: at(0),
            children: seeded,
            next_child_id: 2000,
        }
    }

    fn attempt(&self, fence: Fence) -> i32 {
        match fence {
            Fence::Current => self.task.attempt,
            Fence::Previous => self.task.attempt - 1,
            Fence::Next => self.task.attempt + 1,
        }
    }

    /// Whether the parent is waiting for the children of `round` (an attempt number).
    fn waits_on(&self, round: i32) -> bool {
        self.task.status == TaskStatus::Suspended
            && self.task.suspend_reason.as_deref() == Some("awaiting_subtasks")
            && self.task.attempt == round
    }

    fn outstanding(&self, round: i32, except: Option<TaskId>) -> i32 {
        let n = self
            .children
            .iter()
            .filter(|c| c.round == round && !c.settled && Some(c.id) != except)
            .count();
        i32::try_from(n).expect("few children")
    }

    fn run(&mut self, op: Op) -> Result<(), TestCaseError> {
        let command = match op {
            Op::Advance(secs) => {
                self.now += TimeDelta::seconds(i64::from(secs));
                return Ok(());
            }
            Op::Claim => Command::Claim {
                worker_id: format!("worker-{}", self.task.attempt % 3),
            },
            Op::Complete { fence, result } => Command::Complete {
                attempt: self.attempt(fence),
                result: json!(result),
            },
            Op::Fail {
                fence,
                timed_out,
                jitter,
            } => Command::Fail {
                attempt: self.attempt(fence),
                error: "boom".to_owned(),
                timed_out,
                jitter,
            },
            Op::Expire {
                fence,
                heartbeat,
                jitter,
            } => Command::Expire {
                attempt: self.attempt(fence),
                kind: if heartbeat {
                    ExpiryKind::Heartbeat
                } else {
                    ExpiryKind::Deadline
                },
                jitter,
            },
            Op::Suspend { fence, blank } => Command::Suspend {
                attempt: self.attempt(fence),
                reason: if blank { "  " } else { "approval" }.to_owned(),
                metadata: None,
                context: None,
            },
            Op::Await {
                fence,
                children,
                fail_parent,
            } => {
                let ids: Vec<TaskId> = (0..i64::from(children))
                    .map(|i| TaskId(self.next_child_id + i))
                    .collect();
                Command::AwaitChildren {
                    attempt: self.attempt(fence),
                    child_names: ids.iter().map(|id| format!("child-{id}")).collect(),
                    child_ids: ids,
                    context: None,
                    policy: if fail_parent {
                        ChildFailurePolicy::FailParent
                    } else {
                        ChildFailurePolicy::Resume
                    },
                }
            }
            Op::Release { fence } => Command::Release {
                attempt: self.attempt(fence),
                reason: "worker_stopping".to_owned(),
            },
            Op::Recover { fence } => Command::Recover {
                attempt: self.attempt(fence),
                by_worker_id: "worker-r".to_owned(),
                by_pod_id: None,
            },
            Op::FailPermanently { fence } => Command::FailPermanently {
                attempt: self.attempt(fence),
                error: "not retryable".to_owned(),
            },
            Op::Snooze { fence, millis } => Command::Snooze {
                attempt: self.attempt(fence),
                delay: std::time::Duration::from_millis(u64::from(millis)),
            },
            Op::Retry => Command::Retry { reason: None },
            Op::Pause => Command::Pause,
            Op::Resume => Command::Resume {
                reason: None,
                outstanding_children: self.outstanding(self.task.attempt, None),
            },
            Op::Cancel => Command::Cancel { reason: None },
            Op::Settle { pick, failed } => return self.settle(pick, failed),
        };
        self.step(command)
    }

    fn settle(&mut self, pick: usize, failed: bool) -> Result<(), TestCaseError> {
        if self.children.is_empty() {
            return Ok(());
        }
        let index = pick % self.children.len();
        let child = self.children[index].clone();
        let command = Command::ChildSettled(ChildSettlement {
            child_id: child.id,
            round: child.round,
            failed,
            outstanding: self.outstanding(child.round, Some(child.id)),
        });
        if child.settled {
            // The store reports a child once; a repeat can only reach a parent that moved on.
            if self.waits_on(child.round) {
                return Ok(());
            }
            let before = self.task.clone();
            let t = apply(&before, command, self.now).expect("settlement never errors");
            prop_assert!(t.is_noop(&before), "repeat settlement changed the parent");
            prop_assert_eq!(t.parent, None);
            return Ok(());
        }
        self.children[index].settled = true;
        self.step(command)
    }

    fn step(&mut self, command: Command) -> Result<(), TestCaseError> {
        let before = self.task.clone();
        let expected = expected_outcome(&before, &command, self.now);
        let result = apply(&before, command.clone(), self.now);
        let t = match (result, expected) {
            (Ok(t), Ok(())) => t,
            (Err(err), Err(kind)) => {
                // (b) An illegal command is refused with the right error and nothing moves.
                prop_assert!(kind.matches(&err), "{command:?} on {before:?}: {err:?}");
                prop_assert_eq!(&self.task, &before);
                return Ok(());
            }
            (Ok(t), Err(kind)) => {
                return Err(TestCaseError::fail(format!(
                    "{command:?} accepted from {:?} (expected {kind:?}): {:?}",
                    before.status, t.task.status
                )));
            }
            (Err(err), Ok(())) => {
                return Err(TestCaseError::fail(format!(
                    "{command:?} refused from {:?}: {err:?}",
                    before.status
                )));
            }
        };
        check_common(&before, &command, &t, self.now)?;
        self.account(&before, &command, &t)?;
        self.task = t.task;
        check_snapshot(&self.task)?;
        Ok(())
    }

    /// The command-specific properties and the harness's bookkeeping.
    fn account(
        &mut self,
        before: &Task,
        command: &Command,
        t: &Transition,
    ) -> Result<(), TestCaseError> {
        let after = &t.task;
        let budget = before.max_retries.max(1);
        match command {
            Command::Claim { .. } => {
                // (e) One claim, one new attempt number.
                prop_assert_eq!(after.attempt, before.attempt + 1);
                match &t.attempt {
                    Some(AttemptChange::Open(open)) => {
                        prop_assert_eq!(open.attempt, after.attempt)
                    }
                    other => prop_assert!(false, "claim without an opened attempt: {other:?}"),
                }
                self.claims += 1;
                // (c) Attempts between resets: the retry budget plus non-failure re-queues.
                prop_assert!(
                    self.claims <= budget + self.requeues,
                    "claim {} exceeds {} attempts + {} re-queues",
                    self.claims,
                    budget,
                    self.requeues
                );
            }
            Command::Fail { .. } | Command::Expire { .. } => {
                self.failures += 1;
                prop_assert!(self.failures <= budget, "{} failures", self.failures);
                // (d) Exhaustion depends on the type.
                let allowed = match before.task_type {
                    TaskType::Async => [TaskStatus::Pending, TaskStatus::PermanentlyFailed],
                    TaskType::Cron => [TaskStatus::Pending, TaskStatus::Paused],
                };
                prop_assert!(
                    allowed.contains(&after.status),
                    "{:?} task ended {:?}",
                    before.task_type,
                    after.status
                );
                let exhausted = self.failures == budget;
                prop_assert_eq!(after.status != TaskStatus::Pending, exhausted);
            }
            Command::FailPermanently { .. } => {
                // (d) No retry, whatever the budget: the type's exhausted state at once.
                let exhausted = match before.task_type {
                    TaskType::Async => TaskStatus::PermanentlyFailed,
                    TaskType::Cron => TaskStatus::Paused,
                };
                prop_assert_eq!(after.status, exhausted);
                prop_assert_eq!(after.retry_count, before.retry_count);
            }
            Command::Complete { .. } | Command::Resume { .. } | Command::Retry { .. } => {
                self.reset()
            }
            Command::Release { .. } | Command::Recover { .. } | Command::Snooze { .. } => {
                prop_assert_eq!(after.retry_count, before.retry_count);
                self.requeues += 1
            }
            Command::AwaitChildren { child_ids, .. } => {
                for id in child_ids {
                    self.children.push(Child {
                        id: *id,
                        round: before.attempt,
                        settled: false,
                    });
                }
                self.next_child_id += i64::try_from(child_ids.len()).expect("few");
            }
            Command::ChildSettled(settlement) => {
                // (f) Counted at most once, only for the awaited round (the parent's current
                // attempt, whatever its stage); a parent only resumes once nothing of the round
                // is outstanding.
                let delta = after.completed_children - before.completed_children;
                let awaited = before.status == TaskStatus::Suspended
                    && before.suspend_reason.as_deref() == Some("awaiting_subtasks")
                    && before.attempt == settlement.round;
                prop_assert_eq!(delta, i32::from(awaited));
                if !awaited {
                    prop_assert!(t.is_noop(before));
                }
                if before.status == TaskStatus::Suspended && after.status == TaskStatus::Pending {
                    prop_assert_eq!(settlement.outstanding, 0);
                    prop_assert_eq!(self.outstanding(settlement.round, None), 0);
                    prop_assert_eq!(after.stage, before.stage + 1);
                    self.requeues += 1;
                }
                if settlement.outstanding > 0 && !settlement.failed {
                    prop_assert_eq!(after.status, before.status);
                }
            }
            Command::Suspend { .. } | Command::Pause | Command::Cancel { .. } => {}
        }
        if !matches!(command, Command::Claim { .. }) {
            prop_assert_eq!(after.attempt, before.attempt);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.claims = 0;
        self.requeues = 0;
        self.failures = 0;
    }
}

/// Why the oracle expects a refusal.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Stale,
    Illegal,
    InvalidOption,
    AwaitingChildren,
}

impl Refusal {
    fn matches(self, err: &DomainError) -> bool {
        matches!(
            (self, err),
            (Refusal::Stale, DomainError::StaleAttempt { .. })
                | (Refusal::Illegal, DomainError::IllegalTransition { .. })
                | (Refusal::InvalidOption, DomainError::InvalidOption { .. })
                | (
                    Refusal::AwaitingChildren,
                    DomainError::AwaitingChildren { .. }
                )
        )
    }
}

/// An independent statement of which commands each status accepts.
fn expected_outcome(task: &Task, command: &Command, now: DateTime<Utc>) -> Result<(), Refusal> {
    use TaskStatus::*;
    let fenced = |attempt: i32| {
        if task.status == Running && task.attempt == attempt {
            Ok(())
        } else {
            Err(Refusal::Stale)
        }
    };
    let allowed = |ok: bool| if ok { Ok(()) } else { Err(Refusal::Illegal) };
    match command {
        Command::Claim { .. } => allowed(task.status == Pending && task.next_run_time <= now),
        Command::Complete { attempt, .. }
        | Command::Fail { attempt, .. }
        | Command::Expire { attempt, .. }
        | Command::Release { attempt, .. }
        | Command::Recover { attempt, .. }
        | Command::FailPermanently { attempt, .. }
        | Command::Snooze { attempt, .. } => fenced(*attempt),
        Command::Retry { .. } => allowed(matches!(task.status, PermanentlyFailed | Paused)),
        Command::Suspend {
            attempt, reason, ..
        } => fenced(*attempt).and_then(|()| {
            if reason.trim().is_empty() {
                Err(Refusal::InvalidOption)
            } else {
                Ok(())
            }
        }),
        Command::AwaitChildren {
            attempt, child_ids, ..
        } => fenced(*attempt).and({
            if child_ids.is_empty() {
                Err(Refusal::InvalidOption)
            } else {
                Ok(())
            }
        }),
        Command::Pause => allowed(matches!(task.status, Running | Pending | Failed | Timeout)),
        Command::Resume {
            outstanding_children,
            ..
        } => match task.status {
            Suspended
                if task.suspend_reason.as_deref() == Some("awaiting_subtasks")
                    && *outstanding_children > 0 =>
            {
                Err(Refusal::AwaitingChildren)
            }
            Suspended | Paused | Failed | Timeout | Running => Ok(()),
            Pending | Completed | PermanentlyFailed => Err(Refusal::Illegal),
        },
        Command::Cancel { .. } => allowed(!matches!(task.status, Completed | PermanentlyFailed)),
        Command::ChildSettled(_) => Ok(()),
    }
}

/// Properties every accepted transition has.
fn check_common(
    before: &Task,
    command: &Command,
    t: &Transition,
    now: DateTime<Utc>,
) -> Result<(), TestCaseError> {
    let after = &t.task;
    prop_assert_eq!(t.guard.status, before.status);
    prop_assert_eq!(t.guard.attempt, before.attempt);

    // (a) The events tell the status change as one linked chain.
    let mut chain: Vec<(TaskStatus, TaskStatus)> = Vec::new();
    for event in &t.events {
        let (Some(from), Some(to)) = (event.from_status, event.to_status) else {
            return Err(TestCaseError::fail(format!(
                "event without statuses: {event:?}"
            )));
        };
        prop_assert_ne!(from, to);
        // Consecutive events about the same change (claim's claimed/started/retry_started,
        // next()'s subtasks_created/status_changed) are one link.
        if chain.last() != Some(&(from, to)) {
            chain.push((from, to));
        }
    }
    let failure = matches!(
        command,
        Command::Fail { .. } | Command::Expire { .. } | Command::FailPermanently { .. }
    );
    if before.status == after.status {
        prop_assert!(t.events.is_empty(), "events without a status change");
    } else {
        let expected_links = if failure { 2 } else { 1 };
        prop_assert_eq!(chain.len(), expected_links, "chain {:?}", chain);
        prop_assert_eq!(chain[0].0, before.status);
        prop_assert_eq!(chain[chain.len() - 1].1, after.status);
        for pair in chain.windows(2) {
            prop_assert_eq!(pair[0].1, pair[1].0);
        }
        if failure {
            prop_assert!(matches!(
                chain[0].1,
                TaskStatus::Failed | TaskStatus::Timeout
            ));
        }
        prop_assert_eq!(after.last_active_time, Some(now));
    }
    if before.status == after.status {
        prop_assert_eq!(after.last_active_time, before.last_active_time);
    } else {
        // Failures are resolved in the transition that records them.
        prop_assert!(!matches!(
            after.status,
            TaskStatus::Failed | TaskStatus::Timeout
        ));
    }

    // Identity, time and attempt stamps of the events.
    let round_attempt = match command {
        Command::Claim { .. } => Some(after.attempt),
        Command::Complete { .. }
        | Command::Fail { .. }
        | Command::Expire { .. }
        | Command::AwaitChildren { .. }
        | Command::Suspend { .. }
        | Command::Release { .. }
        | Command::Recover { .. }
        | Command::FailPermanently { .. }
        | Command::Snooze { .. } => Some(before.attempt),
        Command::Retry { .. } => None,
        Command::Pause | Command::Resume { .. } | Command::Cancel { .. } => {
            (before.status == TaskStatus::Running).then_some(before.attempt)
        }
        Command::ChildSettled(_) => None,
    };
    for event in &t.events {
        prop_assert_eq!(event.task_id, before.id);
        prop_assert_eq!(event.root_id, before.workflow_root());
        prop_assert_eq!(event.parent_id, before.parent_id);
        prop_assert_eq!(event.event_time, now);
        prop_assert_eq!(event.attempt, round_attempt);
    }
    match t.events.last() {
        Some(last) => {
            prop_assert_eq!(after.last_event_time, Some(now));
            prop_assert_eq!(
                after.last_event_type.as_deref(),
                Some(last.event_type.as_str())
            );
        }
        None => {
            prop_assert_eq!(after.last_event_time, before.last_event_time);
            prop_assert_eq!(&after.last_event_type, &before.last_event_type);
        }
    }

    // An attempt closes exactly when a running task stops running.
    let leaves_running =
        before.status == TaskStatus::Running && after.status != TaskStatus::Running;
    match &t.attempt {
        Some(AttemptChange::Open(_)) => {
            let is_claim = matches!(command, Command::Claim { .. });
            prop_assert!(is_claim, "only a claim opens an attempt");
        }
        Some(AttemptChange::Close(close)) => {
            prop_assert!(leaves_running);
            prop_assert_eq!(close.attempt, before.attempt);
            prop_assert_eq!(close.ended_at, now);
        }
        None => prop_assert!(!leaves_running),
    }

    // Failures never touch the result; only completion writes it.
    if !matches!(command, Command::Complete { .. }) {
        prop_assert_eq!(&after.result, &before.result);
    }
    // A parent hears about a child exactly when the child settles.
    let settles = matches!(
        after.status,
        TaskStatus::Completed | TaskStatus::PermanentlyFailed
    ) && before.status != after.status;
    prop_assert_eq!(t.parent.is_some(), settles && before.parent_id.is_some());
    if let Some(effect) = t.parent {
        prop_assert_eq!(effect.failed, after.status == TaskStatus::PermanentlyFailed);
        prop_assert_eq!(effect.child_id, before.id);
        prop_assert_eq!(Some(effect.parent_id), before.parent_id);
        prop_assert_eq!(Some(effect.round), before.parent_round);
    }
    Ok(())
}

/// Properties of every snapshot the machine produces.
fn check_snapshot(task: &Task) -> Result<(), TestCaseError> {
    prop_assert!(task.retry_count >= 0);
    prop_assert!(task.retry_count < task.max_retries.max(1));
    prop_assert!(task.completed_children <= task.total_children);
    prop_assert_eq!(
        task.suspend_reason.is_some(),
        task.status == TaskStatus::Suspended
    );
    if task.status == TaskStatus::Running {
        let expected = task.timeout.map(|limit| {
            task.start_time.expect("running has a start")
                + TimeDelta::from_std(limit).expect("small")
        });
        prop_assert_eq!(task.deadline, expected);
        prop_assert!(task.worker_id.is_some());
    } else {
        prop_assert_eq!(task.deadline, None);
    }
    if task.task_type == TaskType::Cron {
        prop_assert!(task.status != TaskStatus::Completed);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/state_machine.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_command_sequences_keep_the_state_machine_invariants(
        start in start(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let mut harness = Harness::new(start);
        check_snapshot(&harness.task)?;
        for op in ops {
            harness.run(op)?;
        }
    }
}

/// The delay `apply` schedules for a failure of a task with `retry_count` retries so far.
fn scheduled_delay(
    backoff: RetryBackoff,
    interval_ms: u64,
    retry_count: i32,
    jitter: f64,
) -> Duration {
    let task = Task {
        retry_count,
        max_retries: i32::MAX,
        retry_interval: Duration::from_millis(interval_ms),
        retry_backoff: backoff,
        ..running(async_task(), 1)
    };
    let command = Command::Fail {
        attempt: 1,
        error: "e".to_owned(),
        timed_out: false,
        jitter,
    };
    let t = apply(&task, command, at(0)).expect("retry scheduled");
    (t.task.next_run_time - at(0))
        .to_std()
        .expect("not in the past")
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/state_machine.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn exponential_backoff_grows_monotonically_and_stays_within_bounds(
        interval_ms in 0u64..600_000,
        retry_count in 0i32..40,
        jitter in 0.0f64..1.0,
    ) {
        let hour = Duration::from_secs(3600);
        let interval = Duration::from_millis(interval_ms);
        let plain = scheduled_delay(RetryBackoff::Exponential, interval_ms, retry_count, 0.0);
        let next = scheduled_delay(RetryBackoff::Exponential, interval_ms, retry_count + 1, 0.0);
        prop_assert!(plain <= next);
        prop_assert!(plain <= hour);
        prop_assert!(plain >= interval.min(hour));
        let jittered = scheduled_delay(RetryBackoff::Exponential, interval_ms, retry_count, jitter);
        prop_assert!(jittered <= plain);
        // Half the delay, give or take the millisecond truncation.
        prop_assert!(jittered + Duration::from_millis(1) >= plain / 2);
        prop_assert_eq!(jittered.subsec_nanos() % 1_000_000, 0);
        let fixed = scheduled_delay(RetryBackoff::Fixed, interval_ms, retry_count, jitter);
        prop_assert_eq!(fixed, interval);
    }
}
