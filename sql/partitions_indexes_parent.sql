-- Every index of the given partitioned parents ($1: oids as int8), with what
-- the online build needs: validity, the constraint it backs, and its
-- definition after USING, cut from pg_get_indexdef at a prefix computed the
-- way the server prints it (so odd names cannot shift the cut; NULL when the
-- text does not start as expected).
SELECT i.indrelid::int8 AS parent,
       i.indexrelid::int8 AS oid,
       c.relname::text AS name,
       i.indisvalid AS valid,
       i.indisunique AS is_unique,
       con.conname::text AS constraint_name,
       CASE WHEN starts_with(d.def, d.prefix) THEN substr(d.def, length(d.prefix) + 1) END AS tail
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace tn ON tn.oid = t.relnamespace
LEFT JOIN pg_constraint con
       ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u', 'x')
CROSS JOIN LATERAL (
    SELECT pg_get_indexdef(i.indexrelid) AS def,
           format('CREATE %sINDEX %s ON ONLY %s.%s USING ',
                  CASE WHEN i.indisunique THEN 'UNIQUE ' ELSE '' END,
                  quote_ident(c.relname), quote_ident(tn.nspname), quote_ident(t.relname)) AS prefix
) d
WHERE i.indrelid = ANY ($1::int8[]::oid[])
ORDER BY 1, 3
