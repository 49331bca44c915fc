-- Partial indexes: a task row enters an index only while the lookup that index serves can
-- want it, so a status change writes few index entries (docs/audit.md has the query plans).
-- The claim, sweep and attention indexes name the statuses as literals; the queries they
-- serve spell the same literals so that the planner can match the predicate.
DROP INDEX idx_tasks_claim;
DROP INDEX idx_tasks_deadline;
DROP INDEX idx_tasks_active;
DROP INDEX idx_tasks_children;
DROP INDEX idx_tasks_workflow;
DROP INDEX idx_tasks_stats;
CREATE INDEX idx_tasks_claim ON fib_flow_tasks (priority DESC, next_run_time, id) WHERE status = 'pending';
CREATE INDEX idx_tasks_deadline ON fib_flow_tasks (deadline) WHERE status = 'running' AND deadline IS NOT NULL;
CREATE INDEX idx_tasks_active ON fib_flow_tasks (last_active_time) WHERE status = 'running';
CREATE INDEX idx_tasks_children ON fib_flow_tasks (parent_id, parent_round, status) WHERE parent_id IS NOT NULL;
CREATE INDEX idx_tasks_workflow ON fib_flow_tasks (root_id, created_at) WHERE root_id IS NOT NULL;
CREATE INDEX idx_tasks_stats ON fib_flow_tasks (tag, name, status) WHERE tag IS NOT NULL;
CREATE INDEX idx_tasks_attention ON fib_flow_tasks (status, created_at) WHERE status IN ('failed', 'timeout', 'permanently_failed', 'paused', 'suspended');
DROP INDEX idx_task_events_worker_time;
CREATE INDEX idx_task_events_worker_time ON fib_flow_task_events (worker_id, event_time) WHERE worker_id IS NOT NULL;
DROP INDEX idx_task_attempts_ended;
CREATE INDEX idx_task_attempts_ended ON fib_flow_task_attempts (ended_at) WHERE ended_at IS NOT NULL;
