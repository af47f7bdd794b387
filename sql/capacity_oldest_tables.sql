-- The current database's relations with the oldest unfrozen XIDs: what an
-- anti-wraparound vacuum must reach first.
SELECT format('%I.%I', n.nspname, c.relname) AS name, age(c.relfrozenxid)::int8 AS xid_age
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm', 't') AND c.relfrozenxid <> '0'::xid
ORDER BY age(c.relfrozenxid) DESC
LIMIT 5
