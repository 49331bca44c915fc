-- Keys the database enforces across processes (issue 11):
-- cron_key: one row per cron schedule, so registering a schedule at every start upserts it.
-- unique_key: at most one unfinished task per key; a finished one (completed or
-- permanently_failed) leaves the index, so the key can be used again.
ALTER TABLE fib_flow_tasks ADD COLUMN cron_key VARCHAR(255);
ALTER TABLE fib_flow_tasks ADD COLUMN unique_key VARCHAR(255);
CREATE UNIQUE INDEX uq_tasks_cron_key ON fib_flow_tasks (cron_key) WHERE cron_key IS NOT NULL;
CREATE UNIQUE INDEX uq_tasks_unique_key ON fib_flow_tasks (unique_key) WHERE unique_key IS NOT NULL AND status NOT IN ('completed', 'permanently_failed');
