-- For parents with no index and none declared: only the invalid indexes of
-- their partitions ($1: parent oids as int8), each a leftover to report.
-- Starts from the few invalid indexes instead of every partition, so a
-- no-op pass over thousands of unindexed partitions reads next to nothing.
-- Same columns as partitions_indexes_children.sql.
SELECT inh.inhparent::int8 AS parent,
       pn.nspname::text AS part_schema,
       p.relname::text AS part_name,
       p.relkind::text AS part_kind,
       coalesce((to_jsonb(inh) ->> 'inhdetachpending')::bool, false) AS detach_pending,
       ci.indexrelid::int8 AS idx_oid,
       cc.relname::text AS idx_name,
       ci.indisvalid AS idx_valid,
       ci.indisunique AS idx_unique,
       ip.inhparent::int8 AS attached_to,
       NULL::text AS tail
FROM pg_index ci
JOIN pg_inherits inh ON inh.inhrelid = ci.indrelid
JOIN pg_class p ON p.oid = inh.inhrelid
JOIN pg_namespace pn ON pn.oid = p.relnamespace
JOIN pg_class cc ON cc.oid = ci.indexrelid
LEFT JOIN pg_inherits ip ON ip.inhrelid = ci.indexrelid
WHERE NOT ci.indisvalid AND inh.inhparent = ANY ($1::int8[]::oid[])
ORDER BY 1, 2, 3, 7
