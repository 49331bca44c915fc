//! Opening the database for one command: a `TaskManager` that is never started, so the CLI
//! claims nothing, runs no loop and registers no worker row.

use std::path::Path;
use std::time::Duration;

use fib_flow::{ManagerOptions, TaskManager};

use crate::error::CliError;

/// The environment variable that supplies `--url`.
pub const URL_ENV: &str = "FIB_FLOW_DATABASE_URL";

/// A command issues its queries one after another; two connections cover the odd overlap.
const POOL_SIZE: usize = 2;
/// How long to wait for a connection before reporting the database unreachable: shorter than
/// the library's 30 s default, since an operator is waiting at the prompt.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The URL given with `--url` or the environment, or a usage error naming both.
pub fn require_url(url: Option<&str>) -> Result<&str, CliError> {
    url.filter(|url| !url.trim().is_empty()).ok_or_else(|| {
        CliError::Usage(format!(
            "no database URL: pass --url URL or set {URL_ENV} (sqlite:PATH, postgres://…, mysql://…)"
        ))
    })
}

/// Manager options for `url` with the CLI's small pool.
pub fn options(url: &str) -> ManagerOptions {
    ManagerOptions {
        pool_size: POOL_SIZE,
        acquire_timeout: ACQUIRE_TIMEOUT,
        ..ManagerOptions::new(url)
    }
}

/// Opens an existing database. A SQLite file that does not exist is refused: opening it would
/// create an empty file and every query would then fail on the missing tables.
pub async fn open(options: ManagerOptions) -> Result<TaskManager, CliError> {
    if let Some(path) = sqlite_file(&options.db_connection)
        && !Path::new(path).exists()
    {
        return Err(CliError::MissingDatabaseFile(path.to_owned()));
    }
    Ok(TaskManager::new(options).await?)
}

/// Opens the database for `migrate`, creating a SQLite file when there is none.
pub async fn open_or_create(url: &str) -> Result<TaskManager, CliError> {
    Ok(TaskManager::new(options(url)).await?)
}

/// Releases the pool (the manager was never started, so there is nothing to drain).
pub async fn close(manager: TaskManager) -> Result<(), CliError> {
    Ok(manager.close().await?)
}

/// The file path of a `sqlite:PATH` or `sqlite://PATH` URL; `None` for other URLs and for
/// the in-memory database.
fn sqlite_file(url: &str) -> Option<&str> {
    let rest = url.trim().strip_prefix("sqlite:")?;
    let path = rest.strip_prefix("//").unwrap_or(rest);
    (path != ":memory:" && !path.is_empty()).then_some(path)
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_file_paths_are_recognised_in_both_forms() {
        assert_eq!(sqlite_file("sqlite:/tmp/a.db"), Some("/tmp/a.db"));
        assert_eq!(sqlite_file("sqlite:///tmp/a.db"), Some("/tmp/a.db"));
        assert_eq!(sqlite_file("sqlite:tasks.db"), Some("tasks.db"));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("postgres://localhost/db"), None);
    }

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("postgres://app:secret@db:5432/tasks"),
            "postgres://app:***@db:5432/tasks"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
        assert_eq!(redact("sqlite:/tmp/a.db"), "sqlite:/tmp/a.db");
    }

    #[test]
    fn a_blank_url_is_a_usage_error() {
        assert!(matches!(require_url(Some("  ")), Err(CliError::Usage(_))));
        assert!(matches!(require_url(None), Err(CliError::Usage(_))));
        assert_eq!(require_url(Some("sqlite:a.db")).ok(), Some("sqlite:a.db"));
    }
}
