//! The `fib-flow` binary against real databases: every command, its `--json` shape, its
//! filters and paging, and its exit codes. Each scenario runs on a SQLite file and, with the
//! `postgres` feature, on a fresh PostgreSQL database.

mod support;

use serde_json::Value;
use support::{Backend, SEED_WORKER, TestDb, run_with_url};

/// Instantiates each scenario once per backend.
macro_rules! on_every_backend {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario(super::Backend::SqliteFile);
                }
            )*
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario(super::Backend::Postgres);
                }
            )*
        }
    };
}

on_every_backend!(
    migrate_creates_the_schema_and_can_run_again,
    tasks_list_filters_by_status_name_tag_parent_root_and_workflow,
    tasks_list_pages_with_limit_offset_and_order,
    tasks_show_prints_fields_payload_error_attempts_and_events,
    task_actions_change_statuses_and_map_failures_to_exit_codes,
    tasks_delete_by_filter_needs_a_confirmation_and_deletes_group_by_group,
    tasks_delete_by_id_deletes_those_and_reports_missing_ones,
    workflow_show_draws_the_tree_stages_and_critical_path,
    audit_events_and_attempts_filter_and_page,
    workers_list_shows_the_registry_and_commands_register_no_worker,
    stats_count_by_status_name_and_tag,
    retention_run_deletes_expired_workflows_only,
);

fn ids(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {page}"))
        .iter()
        .map(|task| task["id"].as_i64().unwrap_or_default())
        .collect()
}

fn sorted(mut ids: Vec<i64>) -> Vec<i64> {
    ids.sort_unstable();
    ids
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

fn status_of(db: &TestDb, id: i64) -> String {
    let shown = db.json(&["tasks", "show", &id.to_string()]);
    shown["task"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn migrate_creates_the_schema_and_can_run_again(backend: Backend) {
    let Some(db) = TestDb::create(backend, "migrate") else {
        return;
    };
    let first = db.ok(&["migrate"]);
    assert!(
        first.stdout.starts_with("migrations applied to "),
        "{first:?}"
    );
    assert_eq!(db.json(&["migrate"]).as_object().map(|o| o.len()), Some(1));
    let stats = db.json(&["stats"]);
    assert_eq!(stats["total"], 0, "{stats}");
}

fn tasks_list_filters_by_status_name_tag_parent_root_and_workflow(backend: Backend) {
    let Some((db, seeded)) = TestDb::seeded(backend, "list_filters") else {
        return;
    };
    let all = db.json(&["tasks", "list"]);
    assert_eq!(
        keys(&all),
        ["has_more", "items", "limit", "offset", "total"],
        "a page keeps the library's serde shape"
    );
    assert_eq!(all["total"], 9);
    let task = &all["items"][0];
    for field in [
        "id",
        "name",
        "type",
        "status",
        "payload",
        "created_at",
        "tag",
    ] {
        assert!(task.get(field).is_some(), "task lacks {field}: {task}");
    }

    let completed = db.json(&["tasks", "list", "--status", "completed"]);
    assert_eq!(completed["total"], 6);
    let failed = db.json(&["tasks", "list", "--status", "permanently_failed"]);
    assert_eq!(ids(&failed), [seeded.declined]);
    let billing = db.json(&["tasks", "list", "--tag", "billing"]);
    let mut expected = seeded.billed.clone();
    expected.push(seeded.declined);
    assert_eq!(sorted(ids(&billing)), sorted(expected));
    let billed_ok = db.json(&["tasks", "list", "--tag", "billing", "--name", "ok"]);
    assert_eq!(sorted(ids(&billed_ok)), sorted(seeded.billed.clone()));
    let children = db.json(&["tasks", "list", "--parent", &seeded.root.to_string()]);
    assert_eq!(sorted(ids(&children)), sorted(seeded.children.clone()));
    let descendants = db.json(&["tasks", "list", "--root", &seeded.root.to_string()]);
    assert_eq!(sorted(ids(&descendants)), sorted(seeded.children.clone()));
    let workflow = db.json(&["tasks", "list", "--workflow", &seeded.root.to_string()]);
    let mut whole = seeded.children.clone();
    whole.push(seeded.root);
    assert_eq!(sorted(ids(&workflow)), sorted(whole));
    let cron = db.json(&["tasks", "list", "--type", "cron"]);
    assert_eq!(cron["total"], 0);

    let human = db.ok(&["tasks", "list", "--status", "paused"]);
    let header = human.stdout.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("ID") && header.contains("STATUS"),
        "{human:?}"
    );
    assert!(
        human.stdout.contains(&format!("{}  ", seeded.held)) && human.stdout.contains("paused"),
        "{human:?}"
    );
    assert!(human.stdout.contains("tasks 1-1 of 1"), "{human:?}");

    let refused = db.run(&["tasks", "list", "--status", "done"]);
    assert_eq!(
        refused.code,
        Some(2),
        "an unknown status is a usage error: {refused:?}"
    );
}

fn tasks_list_pages_with_limit_offset_and_order(backend: Backend) {
    let Some((db, _seeded)) = TestDb::seeded(backend, "list_paging") else {
        return;
    };
    let all = ids(&db.json(&["tasks", "list"]));
    let first = db.json(&["tasks", "list", "--limit", "4"]);
    assert_eq!(first["limit"], 4);
    assert_eq!(first["has_more"], true);
    assert_eq!(ids(&first), all[..4]);
    let last = db.json(&["tasks", "list", "--limit", "4", "--offset", "8"]);
    assert_eq!(last["has_more"], false);
    assert_eq!(ids(&last), all[8..]);
    let newest = db.json(&["tasks", "list", "--limit", "1", "--order", "desc"]);
    assert_eq!(ids(&newest), [all[all.len() - 1]]);

    let human = db.ok(&["tasks", "list", "--limit", "4", "--offset", "4"]);
    assert!(
        human
            .stdout
            .contains("tasks 5-8 of 9; next page: --offset 8"),
        "{human:?}"
    );
    let refused = db.run(&["tasks", "list", "--limit", "0"]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(refused.stderr.contains("limit"), "{refused:?}");
}

fn tasks_show_prints_fields_payload_error_attempts_and_events(backend: Backend) {
    let Some((db, seeded)) = TestDb::seeded(backend, "show") else {
        return;
    };
    let declined = seeded.declined.to_string();
    let shown = db.json(&["tasks", "show", &declined]);
    assert_eq!(keys(&shown), ["attempts", "events", "task"]);
    assert_eq!(shown["task"]["status"], "permanently_failed");
    assert_eq!(shown["task"]["error"], "card declined");
    assert_eq!(shown["attempts"]["total"], 1);
    assert_eq!(shown["attempts"]["items"][0]["outcome"], "failed");
    let event_types: Vec<&str> = shown["events"]["items"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|event| event["event_type"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(event_types.contains(&"task_created"), "{event_types:?}");
    assert!(
        event_types.contains(&"task_permanently_failed"),
        "{event_types:?}"
    );

    let human = db.ok(&["tasks", "show", &declined]);
    for expected in [
        "status",
        "permanently_failed",
        "billing",
        "payload:",
        "4000 0000 0000 0002",
        "error:",
        "card declined",
        "attempts (1):",
        "events (",
        "task_created",
        SEED_WORKER,
    ] {
        assert!(
            human.stdout.contains(expected),
            "no {expected:?} in {human:?}"
        );
    }
    let completed = db.ok(&["tasks", "show", &seeded.plain.to_string()]);
    assert!(
        completed.stdout.contains("result:") && completed.stdout.contains("\"ok\": true"),
        "{completed:?}"
    );
    let limited = db.json(&["tasks", "show", &declined, "--events-limit", "1"]);
    assert_eq!(limited["events"]["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(limited["events"]["has_more"], true);

    let missing = db.run(&["tasks", "show", "999999"]);
    assert_eq!(missing.code, Some(3), "{missing:?}");
    assert!(missing.stdout.is_empty(), "{missing:?}");
    assert!(
        missing.stderr.contains("task 999999 not found"),
        "{missing:?}"
    );
}

fn task_actions_change_statuses_and_map_failures_to_exit_codes(backend: Backend) {
    let Some((db, seeded)) = TestDb::seeded(backend, "actions") else {
        return;
    };
    let declined = seeded.declined.to_string();
    let retried = db.json(&["tasks", "retry", &declined, "--reason", "card updated"]);
    assert_eq!(retried[0]["id"], seeded.declined);
    assert_eq!(retried[0]["task"]["status"], "pending");
    let events = db.json(&[
        "audit",
        "events",
        "--task",
        &declined,
        "--type",
        "task_retried",
    ]);
    assert_eq!(events["total"], 1, "{events}");

    let later = seeded.later.to_string();
    let paused = db.ok(&["tasks", "pause", &later]);
    assert_eq!(
        paused.stdout.trim(),
        format!("task {later} paused: now paused")
    );
    assert_eq!(status_of(&db, seeded.later), "paused");
    db.ok(&["tasks", "resume", &later]);
    assert_eq!(status_of(&db, seeded.later), "pending");
    db.ok(&["tasks", "cancel", &later, "--reason", "not needed"]);
    assert_eq!(status_of(&db, seeded.later), "permanently_failed");

    let plain = seeded.plain.to_string();
    let illegal = db.run(&["tasks", "retry", &plain]);
    assert_eq!(
        illegal.code,
        Some(4),
        "retrying a completed task: {illegal:?}"
    );
    assert!(illegal.stderr.contains("not allowed"), "{illegal:?}");
    let missing = db.run(&["tasks", "pause", "999999"]);
    assert_eq!(missing.code, Some(3), "{missing:?}");

    // Every id is tried; the exit code is the first failure's.
    let held = seeded.held.to_string();
    let mixed = db.run(&["tasks", "resume", "999999", &plain, &held, "--json"]);
    assert_eq!(mixed.code, Some(3), "{mixed:?}");
    let results: Value = serde_json::from_str(&mixed.stdout).expect("json results");
    assert_eq!(results[0]["exit_code"], 3, "{results}");
    assert_eq!(results[1]["exit_code"], 4, "{results}");
    assert!(results[1]["error"].as_str().is_some(), "{results}");
    assert_eq!(results[2]["task"]["status"], "pending", "{results}");
    assert!(mixed.stderr.contains("2 of 3 task(s) failed"), "{mixed:?}");

    let usage = db.run(&["tasks", "cancel"]);
    assert_eq!(usage.code, Some(2), "ids are required: {usage:?}");
}

fn tasks_delete_by_filter_needs_a_confirmation_and_deletes_group_by_group(backend: Backend) {
    let Some((db, seeded)) = TestDb::seeded(backend, "delete") else {
        return;
    };
    let unfiltered = db.run(&["tasks", "delete", "--yes"]);
    assert_eq!(unfiltered.code, Some(2), "{unfiltered:?}");
    let unconfirmed = db.run(&["tasks", "delete", "--tag", "billing"]);
    assert_eq!(
        unconfirmed.code,
        Some(2),
        "stdin is not a terminal: {unconfirmed:?}"
    );
    assert!(unconfirmed.stderr.contains("--yes"), "{unconfirmed:?}");
    assert_eq!(db.json(&["stats"])["total"], 9, "nothing was deleted");

    // Two groups match (ok/completed and boom/permanently_failed).
    let deleted = db.json(&["tasks", "delete", "--tag", "billing", "--yes"]);
    assert_eq!(keys(&deleted), ["deleted", "filter", "matched"]);
    assert_eq!(deleted["matched"], 3);
    assert_eq!(deleted["deleted"], 3);
    assert_eq!(deleted["filter"]["tag"], "billing");
    let billing = db.json(&["tasks", "list", "--tag", "billing"]);
    assert_eq!(billing["total"], 0);
    let events = db.json(&["audit", "events", "--task", &seeded.declined.to_string()]);
    assert_eq!(events["total"], 0, "events go with the task");

    let by_status = db.ok(&["tasks", "delete", "--status", "paused", "-y"]);
    assert_eq!(
        by_status.stdout.trim(),
        "deleted 1 task(s) with their events and attempts"
    );
    assert!(
        by_status.stderr.is_empty(),
        "no progress bar without a terminal: {by_status:?}"
    );
    let none = db.ok(&["tasks", "delete", "--name", "nothing-by-this-name", "--yes"]);
    assert_eq!(none.stdout.trim(), "no task matches; nothing deleted");
    let everything = db.json(&["tasks", "delete", "--all", "--yes"]);
    assert_eq!(everything["deleted"], 5);
    assert_eq!(db.json(&["stats"])["total"], 0);
}

fn tasks_delete_by_id_deletes_those_and_reports_missing_ones(backend: Backend) {
    let Some((db, seeded)) = TestDb::seeded(backend, "delete_id") else {
        return;
    };
    let plain = seeded.plain.to_string();
    let declined = seeded.declined.to_string();
    let unconfirmed = db.run(&["tasks", "delete", &plain]);
    assert_eq!(unconfirmed.code, Some(2), "{unconfirmed:?}");

    let narrowed = db.json(&[
        "tasks", "delete", &plain, &declined, "--name", "boom", "--yes",
    ]);
    assert_eq!(narrowed["matched"], 2, "both ids exist");
    assert_eq!(
        narrowed["deleted"], 1,
        "--name narrows the ids to the declined one"
    );
    assert_eq!(db.run(&["tasks", "show", &declined]).code, Some(3));
    assert_eq!(status_of(&db, seeded.plain), "completed");

    let with_missing = db.run(&["tasks", "delete", &plain, "999999", "--yes"]);
    assert_eq!(with_missing.code, Some(3), "{with_missing:?}");
    assert!(
        with_missing.stderr.contains("task 999999 not found"),
        "{with_missing:?}"
    );
    assert_eq!(
        with_missing.stdout.trim(),
        "deleted 1 task(s) with their events and attempts"
    );
    assert_eq!(db.run(&["tasks", "show", &plain]).code, Some(3));
    assert_eq!(db.json(&["stats"])["total"], 7);
}

fn workflow_show_draws_the_tree_stages_and_critical_path(backend: Backend) {
    let Some((db, seeded)) = TestDb::seeded(backend, "workflow") else {
        return;
    };
    let root = seeded.root.to_string();
    let view = db.json(&["workflow", "show", &root]);
    assert_eq!(keys(&view), ["summary", "tasks"]);
    assert_eq!(view["summary"]["root_task"]["id"], seeded.root);
    assert_eq!(view["summary"]["totals"]["tasks"], 3);
    assert_eq!(view["summary"]["statuses"]["completed"], 3);
    assert_eq!(view["tasks"].as_array().map(Vec::len), Some(3));
    let path = view["summary"]["critical_path"]["nodes"]
        .as_array()
        .expect("critical path nodes");
    assert!(
        path.iter().any(|node| node["task_id"] == seeded.root),
        "{path:?}"
    );

    let human = db.ok(&["workflow", "show", &root]);
    for expected in [
        format!("workflow {root}  fanout  completed"),
        "tree (* = on the critical path):".to_owned(),
        "├── ".to_owned(),
        "└── ".to_owned(),
        format!("{} leaf  completed", seeded.children[1]),
        "root stages:".to_owned(),
        "critical path (".to_owned(),
        "STAGE".to_owned(),
    ] {
        assert!(
            human.stdout.contains(&expected),
            "no {expected:?} in {human:?}"
        );
    }
    assert!(
        human
            .stdout
            .lines()
            .any(|line| line.starts_with(&format!("* {root} fanout"))),
        "the root is on the critical path: {human:?}"
    );

    let missing = db.run(&["workflow", "show", "999999"]);
    assert_eq!(missing.code, Some(3), "{missing:?}");
    assert!(
        missing.stderr.contains("workflow 999999 not found"),
        "{missing:?}"
    );
}

fn audit_events_and_attempts_filter_and_page(backend: Backend) {
    let Some((db, seeded)) = TestDb::seeded(backend, "audit") else {
        return;
    };
    let root = seeded.root.to_string();
    let all = db.json(&["audit", "events", "--workflow", &root]);
    assert_eq!(
        keys(&all),
        ["has_more", "items", "limit", "offset", "total"]
    );
    let total = all["total"].as_u64().unwrap_or_default();
    assert!(total > 6, "{all}");
    let event = &all["items"][0];
    for field in [
        "id",
        "task_id",
        "root_id",
        "event_type",
        "event_time",
        "metadata",
    ] {
        assert!(event.get(field).is_some(), "event lacks {field}: {event}");
    }
    let created = db.json(&[
        "audit",
        "events",
        "--workflow",
        &root,
        "--type",
        "task_created",
    ]);
    assert_eq!(created["total"], 3, "{created}");
    let two_types = db.json(&[
        "audit",
        "events",
        "--workflow",
        &root,
        "--type",
        "task_created,task_subtasks_created",
    ]);
    assert_eq!(two_types["total"], 4, "{two_types}");
    let own = db.json(&["audit", "events", "--task", &root, "--type", "task_created"]);
    assert_eq!(own["total"], 1, "{own}");
    let second_page = db.json(&[
        "audit",
        "events",
        "--workflow",
        &root,
        "--limit",
        "2",
        "--offset",
        "2",
    ]);
    assert_eq!(second_page["items"][0], all["items"][2]);
    let future = db.json(&[
        "audit",
        "events",
        "--workflow",
        &root,
        "--since",
        "2999-01-01T00:00:00Z",
    ]);
    assert_eq!(future["total"], 0);

    let attempts = db.json(&["audit", "attempts", "--workflow", &root]);
    assert_eq!(
        attempts["total"], 4,
        "two root attempts and one per child: {attempts}"
    );
    let failed = db.json(&[
        "audit",
        "attempts",
        "--task",
        &seeded.declined.to_string(),
        "--outcome",
        "failed",
    ]);
    assert_eq!(failed["total"], 1);
    assert_eq!(failed["items"][0]["worker_id"], SEED_WORKER);
    let open = db.json(&["audit", "attempts", "--workflow", &root, "--open"]);
    assert_eq!(open["total"], 0);

    let human = db.ok(&["audit", "attempts", "--workflow", &root]);
    assert!(
        human
            .stdout
            .lines()
            .next()
            .unwrap_or_default()
            .starts_with("TASK"),
        "workflow listings name the task: {human:?}"
    );
    assert!(human.stdout.contains("attempts 1-4 of 4"), "{human:?}");
    let events = db.ok(&["audit", "events", "--task", &root, "--limit", "1"]);
    assert!(events.stdout.contains("task_created"), "{events:?}");
    assert!(
        events.stdout.contains("next page: --offset 1"),
        "{events:?}"
    );

    let unscoped = db.run(&["audit", "events"]);
    assert_eq!(unscoped.code, Some(2), "{unscoped:?}");
    let both = db.run(&["audit", "events", "--task", "1", "--workflow", "1"]);
    assert_eq!(both.code, Some(2), "{both:?}");
    let bad_type = db.run(&["audit", "events", "--task", "1", "--type", "nope"]);
    assert_eq!(bad_type.code, Some(2), "{bad_type:?}");
}

fn workers_list_shows_the_registry_and_commands_register_no_worker(backend: Backend) {
    let Some((db, seeded)) = TestDb::seeded(backend, "workers") else {
        return;
    };
    // Commands of every kind, reads and writes: none may start a worker.
    db.ok(&["tasks", "list"]);
    db.ok(&["tasks", "retry", &seeded.declined.to_string()]);
    db.ok(&["stats"]);
    let workers = db.json(&["workers", "list"]);
    let workers = workers.as_array().expect("a list of workers");
    assert_eq!(workers.len(), 1, "only the seeding worker: {workers:?}");
    assert_eq!(workers[0]["worker_id"], SEED_WORKER);
    assert_eq!(workers[0]["pod_id"], "seed-pod");
    assert_eq!(workers[0]["status"], "stopped");
    assert_eq!(
        status_of(&db, seeded.declined),
        "pending",
        "the retried task waits: nothing claims it"
    );

    let stopped = db.json(&[
        "workers", "list", "--status", "stopped", "--pod", "seed-pod",
    ]);
    assert_eq!(stopped.as_array().map(Vec::len), Some(1));
    let active = db.json(&["workers", "list", "--status", "active"]);
    assert_eq!(active.as_array().map(Vec::len), Some(0));
    let human = db.ok(&["workers", "list"]);
    assert!(
        human.stdout.starts_with("WORKER") && human.stdout.contains(SEED_WORKER),
        "{human:?}"
    );
    let none = db.ok(&["workers", "list", "--status", "dead"]);
    assert_eq!(none.stdout.trim(), "no registered worker");
}

fn stats_count_by_status_name_and_tag(backend: Backend) {
    let Some((db, _seeded)) = TestDb::seeded(backend, "stats") else {
        return;
    };
    let stats = db.json(&["stats"]);
    assert_eq!(
        keys(&stats),
        [
            "by_name",
            "by_status",
            "by_tag",
            "groups",
            "total",
            "untagged"
        ]
    );
    assert_eq!(stats["total"], 9);
    assert_eq!(stats["by_status"]["completed"], 6);
    assert_eq!(stats["by_status"]["permanently_failed"], 1);
    assert_eq!(stats["by_status"]["pending"], 1);
    assert_eq!(stats["by_status"]["paused"], 1);
    assert_eq!(stats["by_name"]["ok"], 5);
    assert_eq!(stats["by_name"]["leaf"], 2);
    assert_eq!(stats["by_tag"]["billing"], 3);
    assert_eq!(stats["by_tag"]["later"], 1);
    assert_eq!(stats["untagged"], 5);
    let group = &stats["groups"][0];
    assert_eq!(keys(group), ["count", "name", "status", "tag"]);

    let billing = db.json(&["stats", "--tag", "billing"]);
    assert_eq!(billing["total"], 3);
    let completed = db.json(&["stats", "--status", "completed"]);
    assert_eq!(completed["total"], 6);

    let human = db.ok(&["stats"]);
    for expected in [
        "9 task(s)",
        "by status:",
        "by name:",
        "by tag:",
        "(untagged)",
    ] {
        assert!(
            human.stdout.contains(expected),
            "no {expected:?} in {human:?}"
        );
    }
}

fn retention_run_deletes_expired_workflows_only(backend: Backend) {
    let Some((db, seeded)) = TestDb::seeded(backend, "retention") else {
        return;
    };
    let younger = db.json(&["retention", "run", "--older-than", "30d"]);
    assert_eq!(keys(&younger), ["policy", "report"]);
    assert_eq!(
        younger["report"]["tasks_deleted"], 0,
        "the data is ten days old"
    );

    let expired = db.json(&["retention", "run", "--older-than", "7d"]);
    assert_eq!(
        expired["policy"]["expire_time"].as_f64(),
        Some(7.0 * 86_400.0),
        "seconds, as the library serialises durations"
    );
    assert_eq!(
        expired["policy"]["statuses"],
        serde_json::json!(["completed", "permanently_failed"])
    );
    // Three completed `ok` tasks, the declined task and the three tasks of the workflow.
    assert_eq!(expired["report"]["tasks_deleted"], 7, "{expired}");
    assert!(
        expired["report"]["events_deleted"].as_u64() > Some(7),
        "{expired}"
    );
    let left = sorted(ids(&db.json(&["tasks", "list"])));
    assert_eq!(left, sorted(vec![seeded.later, seeded.held]));

    let paused = db.ok(&[
        "retention",
        "run",
        "--older-than",
        "7d",
        "--status",
        "paused",
    ]);
    assert!(paused.stdout.starts_with("deleted 1 task(s)"), "{paused:?}");
    let refused = db.run(&["retention", "run", "--status", "pending"]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
}

#[test]
fn a_missing_url_is_a_usage_error() {
    let run = run_with_url(None, &["tasks", "list"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("FIB_FLOW_DATABASE_URL"), "{run:?}");
}

#[test]
fn a_missing_sqlite_file_is_unreachable_and_is_not_created() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("absent.db");
    let url = format!("sqlite:{}", path.display());
    let run = run_with_url(Some(&url), &["stats"]);
    assert_eq!(run.code, Some(5), "{run:?}");
    assert!(run.stderr.contains("fib-flow migrate"), "{run:?}");
    assert!(!path.exists());
}

#[test]
fn the_url_flag_wins_over_the_environment() {
    let Some(db) = TestDb::create(Backend::SqliteFile, "url_flag") else {
        return;
    };
    db.ok(&["migrate"]);
    let run = run_with_url(
        Some("sqlite:/nonexistent/dir/x.db"),
        &["stats", "--url", &db.url],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
}

#[cfg(feature = "postgres")]
#[test]
fn an_unreachable_server_exits_with_code_5() {
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let run = run_with_url(Some("postgres://postgres@127.0.0.1:1/test"), &["stats"]);
    assert_eq!(run.code, Some(5), "{run:?}");
}

#[test]
fn help_lists_every_command_and_the_exit_codes() {
    let run = run_with_url(None, &["--help"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    for command in [
        "tasks",
        "workflow",
        "audit",
        "workers",
        "stats",
        "retention",
        "migrate",
        "serve",
        "bench",
    ] {
        assert!(run.stdout.contains(command), "no {command} in {run:?}");
    }
    assert!(run.stdout.contains("5 database unreachable"), "{run:?}");
}

#[test]
fn a_reader_that_closes_the_pipe_early_is_not_a_failure() {
    let Some((db, _seeded)) = TestDb::seeded(Backend::SqliteFile, "closed_pipe") else {
        return;
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fib-flow"))
        .args(["tasks", "list", "--json"])
        .env("FIB_FLOW_DATABASE_URL", &db.url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the fib-flow binary");
    // Like `fib-flow tasks list --json | head -0`: the reader is gone before the output.
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("wait for fib-flow");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(output.stderr.is_empty(), "{output:?}");
}

#[test]
fn bench_still_runs_next_to_the_operator_commands() {
    let run = run_with_url(
        None,
        &[
            "bench",
            "--backends",
            "sqlite-file",
            "--tasks",
            "20",
            "--depth-tasks",
            "0",
            "--single-enqueues",
            "5",
            "--latency-samples",
            "3",
            "--concurrency",
            "2",
            "--rounds",
            "1",
        ],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("| drain c=2 |"), "{run:?}");
}

#[test]
fn serve_refuses_a_non_loopback_address_without_a_token() {
    let Some(db) = TestDb::create(Backend::SqliteFile, "serve_no_token") else {
        return;
    };
    db.ok(&["migrate"]);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fib-flow"));
    let output = command
        .args(["serve", "--listen", "0.0.0.0:0", "--url", &db.url])
        .env_remove("FIB_FLOW_DASHBOARD_TOKEN")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the fib-flow binary");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("without a token"),
        "{output:?}"
    );
}

/// One HTTP/1.1 GET on loopback; `None` while nothing listens yet.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

#[cfg(unix)]
#[test]
fn serve_answers_the_api_and_metrics_then_stops_on_sigterm() {
    let Some((db, seeded)) = TestDb::seeded(Backend::SqliteFile, "serve") else {
        return;
    };
    // A free port: bind port 0, read it, release it for the dashboard.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fib-flow"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--url",
            &db.url,
        ])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("run the fib-flow binary");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let task = loop {
        if let Some(response) = http_get(port, &format!("/api/v1/tasks/{}", seeded.declined)) {
            break response;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard did not answer within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(task.starts_with("HTTP/1.1 200"), "{task}");
    assert!(task.contains("permanently_failed"), "{task}");
    let metrics = http_get(port, "/metrics").expect("metrics");
    assert!(metrics.contains("fib_flow_tasks{"), "{metrics}");

    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(status.success());
    let exit = child.wait().expect("wait for fib-flow serve");
    assert_eq!(exit.code(), Some(0), "{exit:?}");
}
