//! A workflow on embedded SQLite: a parent fans out to children, resumes with their results,
//! then waits for a human approval before it finishes. Run with `cargo run --example workflow`.

use std::time::Duration;

use fib_flow::{
    ChildSpec, HandlerError, ManagerOptions, Outcome, TaskHandle, TaskManager, TaskOptions,
    TaskStatus, json,
};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), fib_flow::Error> {
    let manager = TaskManager::new(ManagerOptions {
        poll_interval: Duration::from_millis(50),
        ..ManagerOptions::new("sqlite::memory:")
    })
    .await?;
    manager.setup().await?;

    manager.register("thumbnail", |task: TaskHandle| async move {
        let width = task.payload()["width"].as_u64().unwrap_or(0);
        Ok::<Outcome, HandlerError>(json!({ "width": width, "bytes": width * 10 }).into())
    })?;

    manager.register("publish_album", |task: TaskHandle| async move {
        match task.stage() {
            // Stage 0: fan out, keeping some state for later stages in the context bytes.
            0 => {
                let children = [64, 256, 1024]
                    .into_iter()
                    .map(|width| ChildSpec::new("thumbnail", json!({ "width": width })))
                    .collect();
                Ok::<Outcome, HandlerError>(
                    task.next(children).context(b"album-42".to_vec()).into(),
                )
            }
            // Stage 1: the children have settled; ask a human before publishing.
            1 => {
                let total: u64 = task
                    .child_results()
                    .iter()
                    .filter_map(|child| child.result.as_ref()?.get("bytes")?.as_u64())
                    .sum();
                println!("stage 1: thumbnails ready ({total} bytes), waiting for approval");
                Ok(task
                    .suspend("awaiting_approval")
                    .metadata(json!({ "bytes": total }))
                    .into())
            }
            // Stage 2: approved.
            _ => {
                let album =
                    String::from_utf8_lossy(task.context().unwrap_or_default()).into_owned();
                Ok(json!({ "published": album, "stage": task.stage() }).into())
            }
        }
    })?;

    let album = manager
        .enqueue("publish_album", json!({}), TaskOptions::default())
        .await?;
    manager.start().await?;

    // The parent is also `suspended` while it waits for its children; wait for the approval.
    loop {
        let task = manager
            .wait_for_status(album, &[TaskStatus::Suspended], Duration::from_secs(30))
            .await?;
        if task.suspend_reason.as_deref() == Some("awaiting_approval") {
            println!(
                "approving task {album} (suspension metadata: {:?})",
                task.suspend_metadata
            );
            manager
                .resume_task(album, Some("approved by the editor".into()))
                .await?;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = manager
        .wait_for_status(album, &[TaskStatus::Completed], Duration::from_secs(30))
        .await?;
    manager.stop().await?;

    println!("result: {}", done.result.unwrap_or_default());
    for child in manager.child_tasks(album).await? {
        println!(
            "  child {} {} -> {}",
            child.id,
            child.status,
            child.result.unwrap_or_default()
        );
    }
    let summary = manager.workflow_audit_summary(album).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&summary).unwrap_or_default()
    );
    Ok(())
}
