//! `fib-flow retention run`: deletes expired workflows now, as a worker's automatic retention
//! would, with a policy given on the command line.

use std::time::Duration;

use clap::{Args, Subcommand};
use fib_flow::{RetentionConfig, RetentionPolicy, RetentionReport, TaskManager, TaskStatus};
use serde::Serialize;

use crate::database;
use crate::error::CliError;
use crate::output::{self, Output};

/// `fib-flow retention` subcommands.
#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Delete the workflows whose every task is in an eligible status and inactive for longer
    /// than the expiry, with their events and attempts.
    Run(RunArgs),
}

/// The policy of `retention run`; unset values take the library's defaults.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Inactivity after which a task expires, e.g. 7d, 12h, 90m [default: 1d].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    older_than: Option<Duration>,
    /// Eligible statuses (repeat or separate with commas; completed, permanently_failed,
    /// paused) [default: completed,permanently_failed].
    #[arg(long = "status", value_name = "STATUS", value_delimiter = ',')]
    statuses: Vec<TaskStatus>,
}

/// The JSON output of `retention run`.
#[derive(Debug, Serialize)]
struct RetentionRun {
    policy: RetentionPolicy,
    report: RetentionReport,
}

impl RunArgs {
    /// The policy, resolved the way a worker resolves its configured one.
    fn policy(&self, url: &str) -> Result<RetentionPolicy, CliError> {
        let options = fib_flow::ManagerOptions {
            retention: Some(RetentionConfig {
                expire_time: self.older_than,
                statuses: (!self.statuses.is_empty()).then(|| self.statuses.clone()),
            }),
            ..database::options(url)
        };
        options
            .retention_policy()
            .map_err(fib_flow::Error::from)?
            .ok_or_else(|| CliError::Usage("--older-than must be greater than zero".to_owned()))
    }
}

/// Runs a `retention` subcommand.
pub async fn run(
    manager: &TaskManager,
    url: &str,
    command: RetentionCommand,
    out: Output,
) -> Result<(), CliError> {
    let RetentionCommand::Run(args) = command;
    let policy = args.policy(url)?;
    // The library deletes batch after batch in one call and reports only the total, so the
    // bar cannot know the length: it spins with the elapsed time until the run ends.
    let bar = output::progress(None, "deleting expired workflows");
    let outcome = manager.run_retention(Some(policy.clone())).await;
    bar.finish_and_clear();
    let report = outcome?;
    if out.json {
        return out.json(&RetentionRun { policy, report });
    }
    out.text(&format!(
        "deleted {} task(s) with {} event(s) and {} attempt(s): workflows inactive for more than {} in statuses {}",
        report.tasks_deleted,
        report.events_deleted,
        report.attempts_deleted,
        output::duration(policy.expire_time),
        policy
            .statuses
            .iter()
            .map(|status| status.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(older_than: Option<Duration>, statuses: Vec<TaskStatus>) -> RunArgs {
        RunArgs {
            older_than,
            statuses,
        }
    }

    #[test]
    fn unset_values_take_the_library_defaults() {
        let policy = args(None, Vec::new())
            .policy("sqlite:tasks.db")
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(policy.expire_time, Duration::from_secs(86_400));
        assert_eq!(policy.statuses, RetentionPolicy::DEFAULT_STATUSES.to_vec());
    }

    #[test]
    fn given_values_are_validated_by_the_library() {
        let policy = args(Some(Duration::from_secs(60)), vec![TaskStatus::Paused])
            .policy("sqlite:tasks.db")
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(policy.expire_time, Duration::from_secs(60));
        assert_eq!(policy.statuses, vec![TaskStatus::Paused]);
        let refused = args(None, vec![TaskStatus::Pending]).policy("sqlite:tasks.db");
        assert_eq!(
            refused.err().map(|error| error.exit()),
            Some(crate::error::Exit::Usage)
        );
        let zero = args(Some(Duration::ZERO), Vec::new()).policy("sqlite:tasks.db");
        assert_eq!(
            zero.err().map(|error| error.exit()),
            Some(crate::error::Exit::Usage)
        );
    }
}
