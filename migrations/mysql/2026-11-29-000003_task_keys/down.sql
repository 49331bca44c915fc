DROP INDEX uq_tasks_unique_key ON fib_flow_tasks;
DROP INDEX uq_tasks_cron_key ON fib_flow_tasks;
ALTER TABLE fib_flow_tasks DROP COLUMN unique_key_live, DROP COLUMN unique_key, DROP COLUMN cron_key;
