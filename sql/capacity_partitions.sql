-- Every partition of the managed tables ($1 schemas, $2 names, parallel),
-- sized from the statistics VACUUM and ANALYZE keep (relpages of the heap,
-- its TOAST table and its indexes): a catalog read that opens and locks no
-- partition, so it costs the same at 10,000 partitions and never waits
-- behind DDL. `stats_known` is false for a partition never vacuumed or
-- analysed; the caller sizes those (and the open periods) exactly, within a
-- time budget, and estimates the rest from their live rows.
WITH req AS (
    SELECT r.ord, r.schema_name, r.table_name
    FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS r(schema_name, table_name, ord)
), parent AS (
    SELECT req.ord, c.oid
    FROM req
    JOIN pg_namespace n ON n.nspname = req.schema_name
    JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = req.table_name AND c.relkind = 'p'
), kids AS (
    SELECT parent.ord, i.inhrelid AS oid
    FROM parent JOIN pg_inherits i ON i.inhparent = parent.oid
), ix AS (
    SELECT x.indrelid, sum(xc.relpages)::int8 AS pages
    FROM kids
    JOIN pg_index x ON x.indrelid = kids.oid
    JOIN pg_class xc ON xc.oid = x.indexrelid
    GROUP BY x.indrelid
)
SELECT parent.ord::int8 AS ord,
       format_type(ka.atttypid, NULL) AS key_type,
       p.oid::int8 AS oid,
       p.relname::text AS name,
       p.relpartbound::text AS bound,
       (p.oid = pt.partdefid) AS is_default,
       ((p.relpages::int8 + coalesce(t.relpages, 0) + coalesce(ix.pages, 0))
           * current_setting('block_size')::int8) AS est_bytes,
       (p.relpages > 0 AND p.reltuples >= 0) AS stats_known,
       -- The cumulative statistics' live rows: kept per insert, readable
       -- without opening the partition, and known before any ANALYZE.
       pg_stat_get_live_tuples(p.oid) AS live_tuples
FROM parent
JOIN pg_partitioned_table pt ON pt.partrelid = parent.oid
JOIN pg_attribute ka ON ka.attrelid = parent.oid AND ka.attnum = pt.partattrs[0]
JOIN kids ON kids.ord = parent.ord
JOIN pg_class p ON p.oid = kids.oid
LEFT JOIN pg_class t ON t.oid = p.reltoastrelid
LEFT JOIN ix ON ix.indrelid = p.oid
ORDER BY parent.ord, p.relname
