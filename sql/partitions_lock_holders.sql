-- Fallback when no wait was observed: other sessions holding a lock on any
-- of the relations $1 (regclass texts) a failed statement needed.
SELECT DISTINCT ON (a.pid) a.pid, a.usename::text, a.application_name, a.state,
       extract(epoch FROM now() - a.xact_start)::float8 AS xact_age_s,
       extract(epoch FROM now() - a.query_start)::float8 AS query_age_s,
       left(a.query, 120) AS query
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.granted AND l.pid <> pg_backend_pid()
  AND l.relation = ANY (ARRAY(SELECT to_regclass(r) FROM unnest($1::text[]) AS r))
ORDER BY a.pid
