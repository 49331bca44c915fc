-- fib-flow initial schema (MySQL/MariaDB: InnoDB, utf8mb4, LONGTEXT/LONGBLOB so payloads are not capped at 64 KiB). Same tables, columns, constraints and indexes as the
-- postgres and mysql migrations. No foreign keys: workflows are deleted explicitly, with their
-- audit rows. Timestamps are Unix milliseconds, durations *_ms.
CREATE TABLE fib_flow_tasks (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    type VARCHAR(10) NOT NULL CHECK (type IN ('async', 'cron')),
    status VARCHAR(20) NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'completed', 'failed', 'timeout', 'permanently_failed', 'paused', 'suspended')),
    priority INT NOT NULL DEFAULT 0,
    payload LONGTEXT NOT NULL,
    created_at BIGINT NOT NULL,
    tag VARCHAR(255),
    next_run_time BIGINT NOT NULL,
    last_active_time BIGINT,
    last_event_time BIGINT,
    last_event_type VARCHAR(100),
    result LONGTEXT,
    error LONGTEXT,
    current_stage_name VARCHAR(255),
    progress_text LONGTEXT,
    progress_percent DOUBLE,
    stage INT NOT NULL DEFAULT 0,
    timeout_ms BIGINT,
    retry_count INT NOT NULL DEFAULT 0,
    max_retries INT NOT NULL DEFAULT 3,
    retry_interval_ms BIGINT NOT NULL DEFAULT 0,
    retry_backoff VARCHAR(16) NOT NULL DEFAULT 'fixed' CHECK (retry_backoff IN ('fixed', 'exponential')),
    cron_expr VARCHAR(255),
    timezone VARCHAR(64),
    root_id BIGINT,
    parent_id BIGINT,
    parent_round INT,
    total_children INT NOT NULL DEFAULT 0,
    completed_children INT NOT NULL DEFAULT 0,
    child_failure_policy VARCHAR(16) NOT NULL DEFAULT 'resume' CHECK (child_failure_policy IN ('resume', 'fail_parent')),
    worker_id VARCHAR(255),
    start_time BIGINT,
    deadline BIGINT,
    attempt INT NOT NULL DEFAULT 0,
    context LONGBLOB,
    suspend_reason VARCHAR(255),
    suspend_metadata LONGTEXT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX idx_tasks_claim ON fib_flow_tasks (status, priority DESC, next_run_time, id);
CREATE INDEX idx_tasks_deadline ON fib_flow_tasks (status, deadline);
CREATE INDEX idx_tasks_active ON fib_flow_tasks (status, last_active_time);
CREATE INDEX idx_tasks_children ON fib_flow_tasks (parent_id, parent_round, status);
CREATE INDEX idx_tasks_workflow ON fib_flow_tasks (root_id, created_at);
CREATE INDEX idx_tasks_stats ON fib_flow_tasks (tag, name, status);

CREATE TABLE fib_flow_task_events (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    task_id BIGINT NOT NULL,
    root_id BIGINT NOT NULL,
    parent_id BIGINT,
    event_type VARCHAR(100) NOT NULL,
    from_status VARCHAR(32),
    to_status VARCHAR(32),
    stage INT,
    worker_id VARCHAR(255),
    attempt INT,
    event_time BIGINT NOT NULL,
    message LONGTEXT,
    metadata LONGTEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX idx_task_events_task_time ON fib_flow_task_events (task_id, event_time);
CREATE INDEX idx_task_events_root_time ON fib_flow_task_events (root_id, event_time);
CREATE INDEX idx_task_events_type_time ON fib_flow_task_events (event_type, event_time);
CREATE INDEX idx_task_events_worker_time ON fib_flow_task_events (worker_id, event_time);

CREATE TABLE fib_flow_task_attempts (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    task_id BIGINT NOT NULL,
    attempt INT NOT NULL,
    worker_id VARCHAR(255),
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    outcome VARCHAR(32) CHECK (outcome IS NULL OR outcome IN ('completed', 'failed', 'timeout', 'suspended', 'paused', 'pending', 'interrupted', 'cancelled')),
    error LONGTEXT,
    timeout_flag BOOLEAN NOT NULL DEFAULT FALSE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE UNIQUE INDEX idx_task_attempts_task_attempt ON fib_flow_task_attempts (task_id, attempt);
CREATE INDEX idx_task_attempts_worker_started ON fib_flow_task_attempts (worker_id, started_at);
CREATE INDEX idx_task_attempts_outcome_started ON fib_flow_task_attempts (outcome, started_at);
CREATE INDEX idx_task_attempts_ended ON fib_flow_task_attempts (ended_at);

CREATE TABLE fib_flow_workers (
    worker_id VARCHAR(255) NOT NULL PRIMARY KEY,
    pod_id VARCHAR(255) NOT NULL,
    status VARCHAR(32) NOT NULL CHECK (status IN ('active', 'superseded', 'dead', 'stopped')),
    registered_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    superseded_at BIGINT,
    dead_at BIGINT,
    meta LONGTEXT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX idx_workers_pod_status ON fib_flow_workers (pod_id, status);
CREATE INDEX idx_workers_status_expires ON fib_flow_workers (status, expires_at);
