//! The one `diesel::table!` set every backend uses. Column types are chosen so that the same
//! Rust row types load from SQLite, PostgreSQL and MySQL/MariaDB: `BigInt` for ids and Unix
//! millisecond timestamps, `Integer` for counters, `Text` for strings, [`Json`] for JSON
//! (`jsonb` on PostgreSQL, text elsewhere), `Binary` for the context bytes.

#![allow(missing_docs)]

pub use crate::json_column::Json;

diesel::table! {
    use diesel::sql_types::*;
    use super::Json;

    fib_flow_tasks (id) {
        id -> BigInt,
        name -> Text,
        #[sql_name = "type"]
        task_type -> Text,
        status -> Text,
        priority -> Integer,
        payload -> Json,
        created_at -> BigInt,
        tag -> Nullable<Text>,
        next_run_time -> BigInt,
        last_active_time -> Nullable<BigInt>,
        last_event_time -> Nullable<BigInt>,
        last_event_type -> Nullable<Text>,
        result -> Nullable<Json>,
        error -> Nullable<Text>,
        current_stage_name -> Nullable<Text>,
        progress_text -> Nullable<Text>,
        progress_percent -> Nullable<Double>,
        stage -> Integer,
        timeout_ms -> Nullable<BigInt>,
        retry_count -> Integer,
        max_retries -> Integer,
        retry_interval_ms -> BigInt,
        retry_backoff -> Text,
        cron_expr -> Nullable<Text>,
        timezone -> Nullable<Text>,
        root_id -> Nullable<BigInt>,
        parent_id -> Nullable<BigInt>,
        parent_round -> Nullable<Integer>,
        total_children -> Integer,
        completed_children -> Integer,
        child_failure_policy -> Text,
        worker_id -> Nullable<Text>,
        start_time -> Nullable<BigInt>,
        deadline -> Nullable<BigInt>,
        attempt -> Integer,
        context -> Nullable<Binary>,
        suspend_reason -> Nullable<Text>,
        suspend_metadata -> Nullable<Json>,
        cron_key -> Nullable<Text>,
        unique_key -> Nullable<Text>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::Json;

    fib_flow_task_events (id) {
        id -> BigInt,
        task_id -> BigInt,
        root_id -> BigInt,
        parent_id -> Nullable<BigInt>,
        event_type -> Text,
        from_status -> Nullable<Text>,
        to_status -> Nullable<Text>,
        stage -> Nullable<Integer>,
        worker_id -> Nullable<Text>,
        attempt -> Nullable<Integer>,
        event_time -> BigInt,
        message -> Nullable<Text>,
        metadata -> Json,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::Json;

    fib_flow_task_attempts (id) {
        id -> BigInt,
        task_id -> BigInt,
        attempt -> Integer,
        worker_id -> Nullable<Text>,
        started_at -> BigInt,
        ended_at -> Nullable<BigInt>,
        outcome -> Nullable<Text>,
        error -> Nullable<Text>,
        timeout_flag -> Bool,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::Json;

    fib_flow_workers (worker_id) {
        worker_id -> Text,
        pod_id -> Text,
        status -> Text,
        registered_at -> BigInt,
        last_seen_at -> BigInt,
        expires_at -> BigInt,
        superseded_at -> Nullable<BigInt>,
        dead_at -> Nullable<BigInt>,
        meta -> Nullable<Json>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    fib_flow_tasks,
    fib_flow_task_events,
    fib_flow_task_attempts,
    fib_flow_workers,
);
