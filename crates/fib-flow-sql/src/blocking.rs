//! How the SQLite connection runs its statements: diesel's SQLite connection is synchronous,
//! and diesel-async's wrapper hands every statement to tokio's blocking pool. That hop (a
//! thread wake-up there and a task wake-up back) costs far more than a SQLite statement, so a
//! backend that runs a whole transaction in one blocking call (see
//! [`crate::Backend::run_transaction`]) marks that call with [`statements_in_place`]: the
//! connection's statements then run on the calling thread, one after the other.

use std::cell::Cell;
use std::error::Error;
use std::future::Future;
use std::pin::Pin;

use diesel_async::sync_connection_wrapper::{SpawnBlocking, SyncConnectionWrapper};

/// Names the spawner a wrapper type was instantiated with.
trait SpawnerOf {
    type Spawner;
}

impl<C, S> SpawnerOf for SyncConnectionWrapper<C, S> {
    type Spawner = S;
}

/// diesel-async's own tokio spawner (its wrapper's default parameter; the type itself is not
/// exported). Kept for statements outside a blocking call: it also waits for a statement
/// whose future was dropped, so the connection is never used by two threads.
type Tokio = <SyncConnectionWrapper<diesel::SqliteConnection> as SpawnerOf>::Spawner;

thread_local! {
    /// Whether this thread is inside [`statements_in_place`].
    static IN_PLACE: Cell<bool> = const { Cell::new(false) };
}

/// The spawner of fib-flow's SQLite connections: tokio's blocking pool, except inside
/// [`statements_in_place`], where a statement runs at once on the calling thread.
pub struct SqliteSpawner(Tokio);

impl SpawnBlocking for SqliteSpawner {
    fn spawn_blocking<'a, R>(
        &mut self,
        task: impl FnOnce() -> R + Send + 'static,
    ) -> Pin<Box<dyn Future<Output = Result<R, Box<dyn Error + Send + Sync + 'static>>> + Send + 'a>>
    where
        R: Send + 'static,
    {
        if IN_PLACE.get() {
            Box::pin(std::future::ready(Ok(task())))
        } else {
            self.0.spawn_blocking(task)
        }
    }

    fn get_runtime() -> Self {
        SqliteSpawner(Tokio::get_runtime())
    }
}

/// Runs `f` with the statements of every [`crate::SqliteConnection`] it drives executed in
/// place on this thread. Only for a thread that may block: a blocking-pool thread, never an
/// async worker.
pub fn statements_in_place<R>(f: impl FnOnce() -> R) -> R {
    /// Restores the previous mode, also when `f` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            IN_PLACE.set(self.0);
        }
    }
    let _restore = Restore(IN_PLACE.replace(true));
    f()
}

#[cfg(test)]
mod tests {
    use diesel::QueryResult;

    use super::*;
    use crate::SqliteConnection;

    /// The thread each statement ran on, from inside the connection.
    async fn statement_thread(conn: &mut SqliteConnection) -> QueryResult<std::thread::ThreadId> {
        conn.spawn_blocking(|_| Ok(std::thread::current().id()))
            .await
    }

    #[tokio::test]
    async fn statements_leave_the_async_thread_unless_run_in_place() {
        use diesel_async::AsyncConnection;
        let mut conn = SqliteConnection::establish(":memory:").await.expect("open");
        let here = std::thread::current().id();
        let pooled = statement_thread(&mut conn).await.expect("statement");
        assert_ne!(
            pooled, here,
            "outside, a statement runs on the blocking pool"
        );

        let runtime = tokio::runtime::Handle::current();
        let (caller, ran_on, after) = tokio::task::spawn_blocking(move || {
            let ran_on = statements_in_place(|| runtime.block_on(statement_thread(&mut conn)));
            (std::thread::current().id(), ran_on, IN_PLACE.get())
        })
        .await
        .expect("blocking call");
        assert_eq!(
            ran_on.expect("statement"),
            caller,
            "in place, a statement runs on the calling thread"
        );
        assert!(!after, "the mode ends with the call");
    }
}
