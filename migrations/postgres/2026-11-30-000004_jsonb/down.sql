-- Back to JSON text, as jsonb prints it (`{"a": 1}`: a space after each colon and comma).
ALTER TABLE fib_flow_tasks
    ALTER COLUMN payload TYPE TEXT USING payload::text,
    ALTER COLUMN result TYPE TEXT USING result::text,
    ALTER COLUMN suspend_metadata TYPE TEXT USING suspend_metadata::text;
ALTER TABLE fib_flow_task_events ALTER COLUMN metadata TYPE TEXT USING metadata::text;
ALTER TABLE fib_flow_workers ALTER COLUMN meta TYPE TEXT USING meta::text;
