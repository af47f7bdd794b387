-- Exact sizes (table + indexes + TOAST) of the relations in $1. Each size
-- function takes ACCESS SHARE on its relation for a moment; a relation with
-- an ACCESS EXCLUSIVE lock held or queued (DDL) is skipped, so the read never
-- queues behind DDL nor makes DDL queue behind it (the caller sets a short
-- lock_timeout as the last guard and keeps the estimate when skipped).
SELECT o.oid::int8 AS oid, pg_total_relation_size(o.oid) AS bytes
FROM unnest($1::oid[]) AS o(oid)
WHERE NOT EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.locktype = 'relation' AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.relation = o.oid AND l.mode = 'AccessExclusiveLock')
  AND EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = o.oid)
