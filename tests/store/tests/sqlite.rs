//! SQLite files: opening errors and concurrent opens.

#![cfg(feature = "sqlite")]

use fib_flow_ports::PortError;

fn fresh_sqlite_dir(label: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("ff_{label}_{}_{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test]
async fn an_unopenable_sqlite_path_is_a_permanent_error() {
    let dir = fresh_sqlite_dir("unopenable");
    let url = format!(
        "sqlite:{}",
        dir.join("missing").join("sub").join("t.db").display()
    );
    let error = match fib_flow::storage::connect(fib_flow::storage::StoreConfig::new(url)).await {
        Ok(_) => panic!("opened a file in a missing directory"),
        Err(error) => error,
    };
    assert!(
        matches!(
            error,
            PortError::Connect {
                kind: fib_flow_ports::ConnectErrorKind::Unopenable,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!error.is_transient());
    let _ = std::fs::remove_dir_all(dir);
}

/// Several stores (each with its own pool and writer lock, like separate processes) opening
/// and migrating one fresh file at the same instant: all must succeed. Before busy_timeout was
/// set ahead of the WAL switch and migrations took the write lock up front, most of them
/// failed with "database is locked" or "table already exists".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_stores_opening_one_fresh_file_at_once_all_succeed() {
    const OPENERS: usize = 6;
    for round in 0..4 {
        let dir = fresh_sqlite_dir(&format!("openers{round}"));
        let url = format!("sqlite:{}", dir.join("tasks.db").display());
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(OPENERS));
        let openers: Vec<_> = (0..OPENERS)
            .map(|_| {
                let url = url.clone();
                let start = start.clone();
                tokio::spawn(async move {
                    start.wait().await;
                    let store =
                        fib_flow::storage::connect(fib_flow::storage::StoreConfig::new(url))
                            .await?;
                    store.migrate().await?;
                    store.close().await;
                    Ok::<(), PortError>(())
                })
            })
            .collect();
        for (n, opener) in openers.into_iter().enumerate() {
            let outcome = opener.await.expect("opener task");
            assert!(outcome.is_ok(), "round {round}, opener {n}: {outcome:?}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
