-- Foreign keys of other tables that reference the partitioned table $1 or
-- its DEFAULT partition $2 (oids as int8). Top-level constraints only: the
-- per-partition copies PostgreSQL makes for a partitioned referencing table
-- have a conparentid and are covered by their parent constraint.
SELECT k.conname::text AS constraint_name,
       n.nspname::text AS schema_name,
       c.relname::text AS table_name,
       ARRAY(SELECT a.attname::text
             FROM unnest(k.conkey) WITH ORDINALITY AS u(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.attnum
             ORDER BY u.ord) AS columns,
       ARRAY(SELECT a.attname::text
             FROM unnest(k.confkey) WITH ORDINALITY AS u(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.attnum
             ORDER BY u.ord) AS referenced,
       CASE k.confdeltype WHEN 'a' THEN 'NO ACTION' WHEN 'r' THEN 'RESTRICT'
            WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL' ELSE 'SET DEFAULT' END AS on_delete
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE k.contype = 'f'
  AND k.conparentid = 0
  AND k.confrelid IN ($1::int8::oid, $2::int8::oid)
ORDER BY 2, 3, 1
