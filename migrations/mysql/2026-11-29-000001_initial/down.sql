DROP TABLE IF EXISTS fib_flow_workers;
DROP TABLE IF EXISTS fib_flow_task_attempts;
DROP TABLE IF EXISTS fib_flow_task_events;
DROP TABLE IF EXISTS fib_flow_tasks;
