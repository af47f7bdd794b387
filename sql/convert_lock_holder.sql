-- The session holding a table's conversion lock: pid, client address, application
-- name, connected since. $1 the lock namespace (ADVISORY_NAMESPACE), $2 the
-- table as `schema.table`; no row when nobody holds it.
SELECT a.pid, coalesce(a.client_addr::text, 'local'), a.application_name, a.backend_start::text
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::int4::oid
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.objid = hashtext($2)::oid AND l.objsubid = 2
