-- Keys the database enforces across processes (issue 11):
-- cron_key: one row per cron schedule, so registering a schedule at every start upserts it.
-- unique_key: at most one unfinished task per key. MySQL/MariaDB have no partial indexes, so a
-- stored generated column holds the key only while the task is unfinished (NULL once it is
-- completed or permanently_failed; NULLs never collide in a unique index).
ALTER TABLE fib_flow_tasks
    ADD COLUMN cron_key VARCHAR(255) NULL,
    ADD COLUMN unique_key VARCHAR(255) NULL,
    ADD COLUMN unique_key_live VARCHAR(255) AS (CASE WHEN status IN ('completed', 'permanently_failed') THEN NULL ELSE unique_key END) STORED;
CREATE UNIQUE INDEX uq_tasks_cron_key ON fib_flow_tasks (cron_key);
CREATE UNIQUE INDEX uq_tasks_unique_key ON fib_flow_tasks (unique_key_live);
