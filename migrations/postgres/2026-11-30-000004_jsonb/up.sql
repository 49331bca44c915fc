-- JSON as jsonb (issue 12): users can index and query payloads, results and metadata
-- (payload->>'customer', a GIN index; docs/audit.md). jsonb keeps a value, not its text: key
-- order, duplicate keys and whitespace are normalised (docs/semantics.md, "How JSON is stored").
-- A stored string holding U+0000 cannot become jsonb and fails this migration; fib-flow has
-- refused such values since this change, so only rows written by an older build can hold one.
ALTER TABLE fib_flow_tasks
    ALTER COLUMN payload TYPE jsonb USING payload::jsonb,
    ALTER COLUMN result TYPE jsonb USING result::jsonb,
    ALTER COLUMN suspend_metadata TYPE jsonb USING suspend_metadata::jsonb;
ALTER TABLE fib_flow_task_events ALTER COLUMN metadata TYPE jsonb USING metadata::jsonb;
ALTER TABLE fib_flow_workers ALTER COLUMN meta TYPE jsonb USING meta::jsonb;
