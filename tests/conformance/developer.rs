//! Developer experience (issue 12): typed jobs and `wait_for_status` failing on timeout.

use std::time::Duration;

use fib_flow::prelude::*;
use serde::{Deserialize, Serialize};

use crate::harness::{TestDb, event_types, wait_status};

/// A typed job whose output echoes its payload.
#[derive(Debug, Serialize, Deserialize)]
struct Welcome {
    email: String,
}

impl Job for Welcome {
    const NAME: &'static str = "welcome_email";
    type Output = String;

    async fn run(self, task: TaskHandle) -> Result<String, HandlerError> {
        Ok(format!(
            "sent to {} on attempt {}",
            self.email,
            task.attempt()
        ))
    }
}

pub async fn typed_jobs_round_trip_and_a_malformed_payload_fails_permanently(db: &TestDb) {
    let manager = db.manager().await;
    manager
        .register_job::<Welcome>(HandlerOptions::default())
        .expect("register");
    let id = manager
        .enqueue_job(
            &Welcome {
                email: "ada@example.com".into(),
            },
            TaskOptions::default(),
        )
        .await
        .expect("enqueue");
    // A payload stored by someone else that is not a `Welcome`.
    let malformed = manager
        .enqueue(
            Welcome::NAME,
            json!({ "mail": 7 }),
            TaskOptions::default().max_retries(5),
        )
        .await
        .expect("enqueue");
    manager.start().await.expect("start");
    let task = wait_status(&manager, id, TaskStatus::Completed).await;
    assert_eq!(task.name, "welcome_email");
    assert_eq!(task.payload, json!({ "email": "ada@example.com" }));
    assert_eq!(
        task.result,
        Some(json!("sent to ada@example.com on attempt 1"))
    );

    let failed = wait_status(&manager, malformed, TaskStatus::PermanentlyFailed).await;
    assert_eq!(failed.attempt, 1, "no retry can fix a malformed payload");
    let error = failed.error.expect("error");
    assert!(
        error.contains("payload of welcome_email is not a valid") && error.contains("Welcome"),
        "{error}"
    );
    assert!(
        event_types(&manager, malformed)
            .await
            .contains(&"task_permanently_failed".to_owned())
    );
    manager.stop().await.expect("stop");
}

pub async fn wait_for_status_fails_when_it_times_out(db: &TestDb) {
    let manager = db.manager().await;
    manager
        .register("never_started", |_task: TaskHandle| async move {
            Ok::<Outcome, HandlerError>(json!(null).into())
        })
        .expect("register");
    let id = manager
        .enqueue("never_started", json!({}), TaskOptions::default())
        .await
        .expect("enqueue");
    let waited = manager
        .wait_for_status(id, &[TaskStatus::Completed], Duration::from_millis(50))
        .await;
    match waited {
        Err(Error::WaitTimedOut { task, statuses, .. }) => {
            assert_eq!(task.id, id);
            assert_eq!(task.status, TaskStatus::Pending);
            assert_eq!(statuses, vec![TaskStatus::Completed]);
        }
        other => panic!("expected a timeout error, got {other:?}"),
    }
}
