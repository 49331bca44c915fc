//! Quick start: a handful of tasks on embedded SQLite, printing each task's final status and
//! result. Run with `cargo run -p fib-flow --example quickstart` (add `-- sqlite:tasks.db` to keep a file).

use std::time::Duration;

use fib_flow::{
    HandlerError, HandlerOptions, ManagerOptions, Progress, TaskHandle, TaskManager, TaskOptions,
    TaskStatus, json,
};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), fib_flow::Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sqlite::memory:".to_owned());
    let manager = TaskManager::new(ManagerOptions {
        poll_interval: Duration::from_millis(50),
        ..ManagerOptions::new(url)
    })
    .await?;
    manager.setup().await?;

    manager.register("add", |task: TaskHandle| async move {
        #[derive(serde::Deserialize)]
        struct Operands {
            a: i64,
            b: i64,
        }
        let Operands { a, b } = task.payload_as()?;
        task.progress(Progress::text("adding").with_percent(50.0))
            .await?;
        Ok::<fib_flow::Outcome, HandlerError>(json!({ "sum": a + b }).into())
    })?;
    manager.register_with(
        "flaky",
        |task: TaskHandle| async move {
            if task.attempt() < 2 {
                return Err::<fib_flow::Outcome, HandlerError>("transient upstream error".into());
            }
            Ok(json!(format!("succeeded on attempt {}", task.attempt())).into())
        },
        HandlerOptions {
            max_retries: Some(3),
            ..HandlerOptions::default()
        },
    )?;
    manager.register("always_fails", |_task: TaskHandle| async move {
        Err::<fib_flow::Outcome, HandlerError>("this handler always fails".into())
    })?;

    let ids = vec![
        manager
            .enqueue("add", json!({ "a": 2, "b": 3 }), TaskOptions::default())
            .await?,
        manager
            .enqueue(
                "add",
                json!({ "a": 40, "b": 2 }),
                TaskOptions::default().priority(5).tag("answers"),
            )
            .await?,
        manager
            .enqueue("flaky", json!({}), TaskOptions::default())
            .await?,
        manager
            .enqueue(
                "always_fails",
                json!({}),
                TaskOptions::default().max_retries(2),
            )
            .await?,
    ];

    manager.start().await?;
    let finished = [TaskStatus::Completed, TaskStatus::PermanentlyFailed];
    for id in &ids {
        manager
            .wait_for_status(*id, &finished, Duration::from_secs(30))
            .await?;
    }
    manager.stop().await?;

    for id in ids {
        if let Some(task) = manager.get_task(id).await? {
            let outcome = match (&task.result, &task.error) {
                (Some(result), _) => format!("result {result}"),
                (None, Some(error)) => format!("error {error:?}"),
                (None, None) => "no result".to_owned(),
            };
            println!(
                "task {:>2} {:<13} {:<18} attempts {}  {outcome}",
                task.id, task.name, task.status, task.attempt
            );
        }
    }
    Ok(())
}
