-- What a new partition copies from its parent beyond the pass's catalog:
-- row-level security, replica identity and tablespace, and the server
-- version (for the LIKE clauses it knows), the parent's index names (the
-- partition's copies are named after them). $1: the parent's oid.
SELECT c.relrowsecurity AS row_security,
       c.relforcerowsecurity AS force_row_security,
       c.relreplident::text AS replica_identity,
       t.spcname::text AS tablespace,
       current_setting('server_version_num')::int4 AS server_version,
       (SELECT x.indexrelid::int8 FROM pg_index x
        WHERE x.indrelid = c.oid AND x.indisreplident AND c.relreplident = 'i') AS identity_index,
       ARRAY(SELECT ci.relname::text FROM pg_index x JOIN pg_class ci ON ci.oid = x.indexrelid
             WHERE x.indrelid = c.oid ORDER BY 1) AS indexes
FROM pg_class c
LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace
WHERE c.oid = $1::int8::oid
