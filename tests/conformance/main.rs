//! The conformance suite: one set of behavior tests, written once against the `TaskManager`
//! facade and run on every backend (SQLite in memory, SQLite file, PostgreSQL, MySQL/MariaDB).
//!
//! Each backend's tests are built with its cargo feature of this package (`sqlite`, the
//! default, `postgres`, `mysql`). `cargo xtask test` builds them all, decides which server
//! backends are reachable and passes `FIB_FLOW_SKIP_<BACKEND>` for the others (with `CI=true`
//! an unreachable server is a failure).

mod audit;
mod contention;
mod developer;
mod failure_control;
mod hardening;
mod harness;
mod lifecycle;
mod registry;
mod workflows;

/// Instantiates every listed test once per backend, in modules named after the backend.
macro_rules! conformance {
    ($($module:ident :: $test:ident),* $(,)?) => {
        conformance!(@backend "sqlite", sqlite_memory, SqliteMemory, $($module::$test),*);
        conformance!(@backend "sqlite", sqlite_file, SqliteFile, $($module::$test),*);
        conformance!(@backend "postgres", postgres, Postgres, $($module::$test),*);
        conformance!(@backend "mysql", mysql, Mysql, $($module::$test),*);
    };
    (@backend $feature:literal, $backend_module:ident, $backend:ident, $($module:ident :: $test:ident),*) => {
        #[cfg(feature = $feature)]
        mod $backend_module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    crate::harness::run(
                        crate::harness::Backend::$backend,
                        stringify!($test),
                        |db| Box::pin(crate::$module::$test(db)),
                    )
                    .await;
                }
            )*
        }
    };
}

conformance! {
    lifecycle::setup_is_idempotent,
    lifecycle::async_task_completes_with_audit_trail,
    lifecycle::falsy_results_survive,
    lifecycle::failing_task_uses_every_attempt_then_fails_permanently,
    lifecycle::retry_waits_retry_interval_once,
    lifecycle::handler_panic_fails_the_attempt_not_the_worker,
    lifecycle::deadline_cancels_a_hung_handler,
    lifecycle::handle_exposes_deadline_payload_and_stage,
    lifecycle::heartbeat_keeps_a_long_task_alive,
    lifecycle::sweep_times_out_a_lost_heartbeat_and_rejects_the_stale_writer,
    lifecycle::claims_by_priority_then_due_time_then_id,
    lifecycle::delayed_task_waits_for_its_delay,
    lifecycle::per_handler_concurrency_limit_holds,
    lifecycle::global_concurrency_limit_holds,
    lifecycle::paused_manager_claims_nothing_and_register_does_not_unpause,
    lifecycle::task_control_pause_resume_cancel,
    lifecycle::hot_reload_keeps_the_running_attempt_on_its_handler,
    lifecycle::stop_drains_then_releases,
    lifecycle::stop_waits_for_in_flight_results,
    lifecycle::cron_task_reschedules_from_completion_time,
    lifecycle::cron_exhaustion_pauses_and_resume_resets,
    lifecycle::cron_success_resets_retry_count,
    lifecycle::handler_audit_and_progress_are_recorded,
    lifecycle::invalid_input_is_a_typed_error,
    lifecycle::queries_filter_and_delete,
    lifecycle::tricky_strings_and_large_payloads_round_trip,
    lifecycle::child_failure_policy_defaults_to_resume,
    contention::every_task_runs_exactly_once_under_contention,
    contention::killed_connections_lose_no_task,
    workflows::two_child_workflow_completes,
    workflows::nested_levels_share_one_root,
    workflows::each_stage_sees_only_its_rounds_results,
    workflows::failed_child_resumes_parent_with_its_error,
    workflows::fail_fast_policy_fails_the_parent,
    workflows::context_round_trips_and_is_not_inherited,
    workflows::retried_parent_restarts_at_stage_zero_without_context,
    workflows::new_rounds_use_the_live_child_handler,
    workflows::invalid_children_fail_the_attempt_and_write_nothing,
    workflows::explicit_suspension_waits_for_a_human,
    workflows::a_suspended_child_keeps_its_parent_waiting,
    workflows::cron_parent_resumes_then_reschedules_at_stage_zero,
    workflows::deleting_a_parent_does_not_break_maintenance,
    audit::query_tasks_filters_and_pages,
    audit::event_and_attempt_queries_filter_and_order,
    audit::workflow_summary_of_a_pending_workflow,
    audit::workflow_summary_takes_the_longest_child_per_stage,
    audit::workflow_summary_breaks_ties_by_lowest_id,
    audit::retention_deletes_expired_terminal_tasks_only,
    audit::retention_drains_in_batches_and_keeps_unfinished_workflows,
    audit::automatic_retention_runs_one_batch_per_due_tick,
    hardening::deep_json_round_trips_or_is_refused,
    hardening::names_tags_and_ids_are_checked_up_front,
    hardening::oversized_values_get_a_typed_size_error,
    hardening::sub_millisecond_timeouts_are_refused,
    hardening::permanent_connect_errors_are_not_transient,
    hardening::a_newer_schema_is_refused_at_setup,
    registry::registration_renews_and_a_graceful_stop_marks_stopped,
    registry::same_pod_supersedes_and_recovers_without_a_retry,
    registry::an_expired_worker_is_reaped_strictly_after_its_lease,
    registry::the_sweep_leaves_an_active_workers_tasks_to_the_registry,
    registry::registry_store_contract,
    registry::a_handler_that_gives_up_on_stop_is_interrupted_not_failed,
    failure_control::a_permanent_error_skips_the_remaining_retries,
    failure_control::a_snoozed_task_runs_again_later_without_using_an_attempt,
    failure_control::retry_task_revives_a_dead_task_with_its_history,
    failure_control::exponential_backoff_has_a_default_base,
    failure_control::cron_registration_is_idempotent_per_key,
    failure_control::unique_key_returns_the_unfinished_task,
    failure_control::enqueue_in_the_callers_transaction_commits_or_rolls_back_with_it,
    failure_control::named_queues_split_workers_and_bound_each_queue,
    developer::typed_jobs_round_trip_and_a_malformed_payload_fails_permanently,
    developer::wait_for_status_fails_when_it_times_out,
}
