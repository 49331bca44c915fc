//! Fills a database with a small, realistic data set to try the `fib-flow` CLI on (docs/operations.md
//! shows its output against this data): e-mails, card charges that retry or are declined, an
//! album workflow that fans out to thumbnails, a cron schedule, a delayed and a paused task.
//!
//! ```sh
//! cargo run -p fib-flow-cli --example demo_data -- sqlite:/tmp/demo.db
//! fib-flow --url sqlite:/tmp/demo.db tasks list
//! ```

use std::time::Duration;

use fib_flow::{
    ChildSpec, HandlerError, ManagerOptions, Outcome, TaskHandle, TaskManager, TaskOptions, json,
    permanent,
};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), fib_flow::Error> {
    let Some(url) = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("FIB_FLOW_DATABASE_URL").ok())
    else {
        eprintln!("usage: demo_data URL (or set FIB_FLOW_DATABASE_URL)");
        std::process::exit(2);
    };
    let manager = TaskManager::new(ManagerOptions {
        worker_id: Some("demo-worker-1".to_owned()),
        pod_id: Some("demo".to_owned()),
        poll_interval: Duration::from_millis(50),
        ..ManagerOptions::new(url)
    })
    .await?;
    manager.setup().await?;
    register(&manager)?;

    let email = |to: &str| json!({ "to": to, "template": "welcome" });
    manager
        .enqueue(
            "send_email",
            email("ada@example.com"),
            TaskOptions::default(),
        )
        .await?;
    manager
        .enqueue(
            "send_email",
            email("grace@example.com"),
            TaskOptions::default(),
        )
        .await?;
    // Retries are due at once (no retry interval), so the run below sees them through.
    let billing = || TaskOptions::default().tag("billing").max_retries(3);
    manager
        .enqueue(
            "charge_card",
            json!({ "order": 1001, "cents": 4200 }),
            billing(),
        )
        .await?;
    manager
        .enqueue(
            "charge_card",
            json!({ "order": 1002, "cents": 990, "declined": true }),
            billing(),
        )
        .await?;
    manager
        .enqueue(
            "publish_album",
            json!({ "album": 42 }),
            TaskOptions::default().tag("media"),
        )
        .await?;
    manager
        .enqueue(
            "send_email",
            email("linus@example.com"),
            TaskOptions::default().delay(Duration::from_secs(3600)),
        )
        .await?;
    let held = manager
        .enqueue(
            "send_email",
            email("ken@example.com"),
            TaskOptions::default().delay(Duration::from_secs(3600)),
        )
        .await?;
    manager.pause_task(held).await?;
    manager
        .cron(
            "nightly_report",
            "0 3 * * *",
            json!({}),
            TaskOptions::default(),
        )
        .await?;

    manager.start().await?;
    fib_flow::testing::run_until_idle(&manager).await?;
    manager.stop().await?;
    println!("demo data written");
    Ok(())
}

fn register(manager: &TaskManager) -> Result<(), fib_flow::Error> {
    manager.register("send_email", |_task: TaskHandle| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<Outcome, HandlerError>(json!({ "delivered": true }).into())
    })?;
    manager.register("charge_card", |task: TaskHandle| async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        if task.payload()["declined"] == json!(true) {
            return Err(permanent("card declined by issuer (code 05)"));
        }
        if task.attempt() == 1 {
            return Err::<Outcome, HandlerError>("payment gateway timed out".into());
        }
        Ok(json!({ "charged": task.payload()["cents"] }).into())
    })?;
    manager.register("thumbnail", |task: TaskHandle| async move {
        let width = task.payload()["width"].as_u64().unwrap_or(64);
        tokio::time::sleep(Duration::from_millis(width / 8)).await;
        Ok::<Outcome, HandlerError>(json!({ "width": width }).into())
    })?;
    manager.register("publish_album", |task: TaskHandle| async move {
        tokio::time::sleep(Duration::from_millis(40)).await;
        if task.stage() == 0 {
            let children = [128, 256, 512]
                .into_iter()
                .map(|width| ChildSpec::new("thumbnail", json!({ "width": width })))
                .collect();
            return Ok::<Outcome, HandlerError>(task.next(children).into());
        }
        Ok(json!({ "published": true, "thumbnails": task.child_results().len() }).into())
    })?;
    manager.register("nightly_report", |_task: TaskHandle| async move {
        Ok::<Outcome, HandlerError>(json!({}).into())
    })?;
    Ok(())
}
