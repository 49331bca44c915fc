DROP INDEX uq_tasks_unique_key;
DROP INDEX uq_tasks_cron_key;
ALTER TABLE fib_flow_tasks DROP COLUMN unique_key;
ALTER TABLE fib_flow_tasks DROP COLUMN cron_key;
