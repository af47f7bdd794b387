-- Every partition of the given parents ($1: oids as int8) with each of its
-- indexes (NULL index columns for a partition without any): validity, the
-- parent index it is attached to, and its definition after USING (as in
-- partitions_indexes_parent.sql, without ONLY), so an index made by hand that
-- matches a parent index can be attached instead of built again.
SELECT inh.inhparent::int8 AS parent,
       pn.nspname::text AS part_schema,
       p.relname::text AS part_name,
       p.relkind::text AS part_kind,
       -- inhdetachpending is 14+: through to_jsonb so 13 reads false.
       coalesce((to_jsonb(inh) ->> 'inhdetachpending')::bool, false) AS detach_pending,
       ci.indexrelid::int8 AS idx_oid,
       cc.relname::text AS idx_name,
       ci.indisvalid AS idx_valid,
       ci.indisunique AS idx_unique,
       ip.inhparent::int8 AS attached_to,
       CASE WHEN starts_with(d.def, d.prefix) THEN substr(d.def, length(d.prefix) + 1) END AS tail
FROM pg_inherits inh
JOIN pg_class p ON p.oid = inh.inhrelid
JOIN pg_namespace pn ON pn.oid = p.relnamespace
LEFT JOIN pg_index ci ON ci.indrelid = p.oid
LEFT JOIN pg_class cc ON cc.oid = ci.indexrelid
LEFT JOIN pg_inherits ip ON ip.inhrelid = ci.indexrelid
LEFT JOIN LATERAL (
    SELECT pg_get_indexdef(ci.indexrelid) AS def,
           format('CREATE %sINDEX %s ON %s.%s USING ',
                  CASE WHEN ci.indisunique THEN 'UNIQUE ' ELSE '' END,
                  quote_ident(cc.relname), quote_ident(pn.nspname), quote_ident(p.relname)) AS prefix
) d ON ci.indexrelid IS NOT NULL
WHERE inh.inhparent = ANY ($1::int8[]::oid[])
ORDER BY 1, 2, 3, 7
