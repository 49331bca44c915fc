DROP FUNCTION fib_flow_guards_matched(BIGINT, BIGINT);
