-- The sessions session $1 waits for (holders of, or queued ahead for, a
-- conflicting lock), for the error a pass reports when it gives up.
SELECT a.pid, a.usename::text, a.application_name, a.state,
       extract(epoch FROM now() - a.xact_start)::float8 AS xact_age_s,
       extract(epoch FROM now() - a.query_start)::float8 AS query_age_s,
       left(a.query, 120) AS query
FROM pg_stat_activity a
WHERE a.pid = ANY (pg_blocking_pids($1::int4))
ORDER BY a.xact_start NULLS LAST
