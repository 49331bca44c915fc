//! A task database with one of everything the dashboard shows: a completed task, a
//! permanently failed one, a pending one, a two-child workflow, a task whose name, tag and
//! payload are HTML, and the stopped worker that ran them.

#![allow(dead_code)] // each test binary uses a different part of the fixture

use fib_flow::{
    ChildSpec, HandlerError, Outcome, TaskHandle, TaskId, TaskManager, TaskOptions, TaskStatus,
    json, permanent,
};

/// A handler name that is markup, to prove the pages escape it.
pub const HOSTILE_NAME: &str = "<script>alert(\"name\")</script>";
/// A tag that tries to break out of an attribute.
pub const HOSTILE_TAG: &str = "\"><img src=x onerror=alert(1)>";

pub struct Fixture {
    pub manager: TaskManager,
    pub completed: TaskId,
    pub failed: TaskId,
    pub pending: TaskId,
    pub workflow: TaskId,
    pub hostile: TaskId,
}

/// Builds the fixture on a private in-memory SQLite database: runs every due task once on a
/// worker, then stops it, so nothing changes behind a test's back.
pub async fn fixture() -> Fixture {
    let (manager, clock) = fib_flow::testing::manager()
        .await
        .expect("in-memory manager");
    // Handlers move the manual clock on, so that attempts have durations to show.
    let spend = move |millis: u64| clock.advance(std::time::Duration::from_millis(millis));
    let spend_charging = spend.clone();
    let spend_reporting = spend.clone();
    let spend_rendering = spend;
    manager
        .register("send_email", |task: TaskHandle| async move {
            Ok::<Outcome, HandlerError>(json!({ "sent_to": task.payload()["to"] }).into())
        })
        .expect("register send_email");
    manager
        .register("charge_card", move |_task: TaskHandle| {
            spend_charging(250);
            async move {
                Err::<Outcome, HandlerError>(permanent("card declined: insufficient funds"))
            }
        })
        .expect("register charge_card");
    manager
        .register("build_report", move |task: TaskHandle| {
            spend_reporting(500);
            async move {
                if task.stage() == 0 {
                    let pages = (1..=2)
                        .map(|page| ChildSpec {
                            name: "render_page".into(),
                            payload: json!({ "page": page }),
                            ..ChildSpec::default()
                        })
                        .collect();
                    Ok::<Outcome, HandlerError>(task.next(pages).into())
                } else {
                    Ok(json!({ "pages": task.child_results().len() }).into())
                }
            }
        })
        .expect("register build_report");
    manager
        .register("render_page", move |task: TaskHandle| {
            spend_rendering(1500);
            async move {
                Ok::<Outcome, HandlerError>(json!({ "rendered": task.payload()["page"] }).into())
            }
        })
        .expect("register render_page");
    manager
        .register(HOSTILE_NAME, |_task: TaskHandle| async move {
            Ok::<Outcome, HandlerError>(json!("</pre><script>alert('result')</script>").into())
        })
        .expect("register the hostile name");

    let completed = manager
        .enqueue(
            "send_email",
            json!({ "to": "ada@example.com" }),
            TaskOptions::default().tag("mail"),
        )
        .await
        .expect("enqueue send_email");
    let failed = manager
        .enqueue(
            "charge_card",
            json!({ "amount_cents": 4200 }),
            TaskOptions::default().tag("billing").max_retries(1),
        )
        .await
        .expect("enqueue charge_card");
    let workflow = manager
        .enqueue(
            "build_report",
            json!({ "month": "2026-11" }),
            TaskOptions::default(),
        )
        .await
        .expect("enqueue build_report");
    let hostile = manager
        .enqueue(
            HOSTILE_NAME,
            json!({ "html": "</pre><script>alert('payload')</script>" }),
            TaskOptions::default().tag(HOSTILE_TAG),
        )
        .await
        .expect("enqueue the hostile task");
    let pending = manager
        .enqueue(
            "send_email",
            json!({ "to": "later@example.com" }),
            TaskOptions::default().delay(std::time::Duration::from_secs(3600)),
        )
        .await
        .expect("enqueue the delayed task");

    manager.start().await.expect("start");
    fib_flow::testing::run_until_idle(&manager)
        .await
        .expect("every due task runs");
    manager.stop().await.expect("stop");

    let status = |id| {
        let manager = manager.clone();
        async move {
            manager
                .get_task(id)
                .await
                .expect("get task")
                .expect("task exists")
                .status
        }
    };
    assert_eq!(status(completed).await, TaskStatus::Completed);
    assert_eq!(status(failed).await, TaskStatus::PermanentlyFailed);
    assert_eq!(status(workflow).await, TaskStatus::Completed);
    assert_eq!(status(pending).await, TaskStatus::Pending);
    Fixture {
        manager,
        completed,
        failed,
        pending,
        workflow,
        hostile,
    }
}
