-- The largest plain tables (not partitions, not partitioned parents) at or
-- above $1 bytes, $2 at most, sized exactly; relations under ACCESS
-- EXCLUSIVE (DDL) are left out of this run rather than waited for.
SELECT format('%I.%I', n.nspname, c.relname) AS name, pg_total_relation_size(c.oid) AS bytes
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgsteward')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
  AND NOT EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.locktype = 'relation' AND l.relation = c.oid AND l.mode = 'AccessExclusiveLock'
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
  AND pg_total_relation_size(c.oid) >= $1
ORDER BY 2 DESC
LIMIT $2
