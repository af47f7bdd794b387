-- On a hot standby: sessions holding a lock on any of the relations $1
-- (regclass texts; a physical standby has the primary's oids) in this
-- database. A pass's ACCESS EXCLUSIVE lock on one of them would wait in
-- replay for each, up to max_standby_streaming_delay, then cancel it.
SELECT DISTINCT ON (a.pid) a.pid, a.usename::text, a.application_name, a.state,
       extract(epoch FROM now() - a.xact_start)::float8 AS xact_age_s,
       extract(epoch FROM now() - a.query_start)::float8 AS query_age_s,
       left(a.query, 120) AS query
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.granted AND l.locktype = 'relation' AND l.pid <> pg_backend_pid()
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.relation = ANY (ARRAY(SELECT to_regclass(r) FROM unnest($1::text[]) AS r))
ORDER BY a.pid
