-- A batch write whose COMMIT is pipelined right behind it must fail by itself when a guarded
-- row did not match: the statement's error aborts the transaction, so the COMMIT that follows
-- rolls it back instead of committing attempt and event rows for a task that was not written.
CREATE FUNCTION fib_flow_guards_matched(matched BIGINT, expected BIGINT) RETURNS BIGINT
LANGUAGE plpgsql AS $$
BEGIN
    IF matched <> expected THEN
        RAISE EXCEPTION 'fib_flow: % of % guarded task rows matched their guard', matched, expected
            USING ERRCODE = 'FF001';
    END IF;
    RETURN matched;
END
$$;
