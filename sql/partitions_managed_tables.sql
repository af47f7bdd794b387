-- Everything a maintenance pass needs about every managed table, in one round
-- trip: $1 and $2 are parallel arrays of schema and table names. One row per
-- requested table, in request order; a missing table has a NULL oid.
-- Partitions come as parallel arrays (cheaper to build and decode than JSON
-- at thousands of tables).
WITH req AS (
    SELECT r.ord, r.schema_name, r.table_name
    FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS r(schema_name, table_name, ord)
), parent AS (
    SELECT req.ord, c.oid, c.relkind, c.relowner, c.relacl, c.relnamespace,
           c.relrowsecurity, c.relforcerowsecurity, c.relreplident,
           -- What every partition's access must be: the parent's grants, or
           -- the owner's alone under row-level security (as PARTITION OF).
           CASE WHEN c.relrowsecurity THEN acldefault('r', c.relowner)
                ELSE coalesce(c.relacl, acldefault('r', c.relowner)) END AS want_acl,
           (SELECT x.indexrelid FROM pg_index x WHERE x.indrelid = c.oid AND x.indisreplident) AS ident_index
    FROM req
    JOIN pg_namespace n ON n.nspname = req.schema_name
    JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = req.table_name
), fk_referenced AS (
    -- pg_constraint has no index on confrelid: read it once, hash-join below.
    SELECT DISTINCT confrelid FROM pg_constraint WHERE contype = 'f'
), parts AS (
    SELECT i.inhparent,
           array_agg(pn.nspname::text) AS schemas,
           array_agg(p.relname::text) AS names,
           array_agg(p.oid::int8) AS oids,
           -- The stored node text, decoded in Rust: pg_get_expr costs more
           -- than the rest of this query together at thousands of partitions.
           array_agg(p.relpartbound::text) AS bounds,
           -- inhdetachpending is 14+ (DETACH CONCURRENTLY); read through
           -- to_jsonb so one text serves 13 too, where no detach is pending.
           array_agg(coalesce((to_jsonb(i) ->> 'inhdetachpending')::bool, false)) AS pending,
           array_agg(fk.confrelid IS NOT NULL) AS fk
    FROM parent
    JOIN pg_partitioned_table pt ON pt.partrelid = parent.oid
    JOIN pg_inherits i ON i.inhparent = parent.oid
    JOIN pg_class p ON p.oid = i.inhrelid
    JOIN pg_namespace pn ON pn.oid = p.relnamespace
    LEFT JOIN fk_referenced fk ON fk.confrelid = p.oid
    WHERE p.oid <> pt.partdefid
    GROUP BY i.inhparent
), drift AS (
    -- Partitions (DEFAULT included) whose owner, privileges, row-level
    -- security or replica identity differ from what the parent implies now.
    -- Only those are described: a table without drift costs one comparison
    -- per partition here and nothing in Rust.
    SELECT i.inhparent,
           json_agg(json_build_object(
               'schema', pn.nspname::text, 'name', p.relname::text,
               'is_default', p.oid = pt.partdefid,
               'owner', pg_get_userbyid(p.relowner)::text,
               -- The steward acts as the partition's owner (to repair it).
               'manageable', pg_has_role(current_user, p.relowner, 'USAGE'),
               'grants', (SELECT coalesce(json_agg(json_build_object(
                               'grantee', CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee)::text END,
                               'privilege', x.privilege_type, 'grantable', x.is_grantable)), '[]'::json)
                          FROM aclexplode(coalesce(p.relacl, acldefault('r', p.relowner))) x),
               'row_security', p.relrowsecurity,
               'force_row_security', p.relforcerowsecurity,
               'replica_identity', p.relreplident::text,
               'identity_index', (SELECT quote_ident(ci.relname) FROM pg_inherits ii
                                  JOIN pg_index x ON x.indexrelid = ii.inhrelid
                                  JOIN pg_class ci ON ci.oid = x.indexrelid
                                  WHERE ii.inhparent = parent.ident_index AND x.indrelid = p.oid),
               'policies', (SELECT count(*) FROM pg_policy pol WHERE pol.polrelid = p.oid)::int4
           ) ORDER BY p.relname) AS partitions
    FROM parent
    JOIN pg_partitioned_table pt ON pt.partrelid = parent.oid
    JOIN pg_inherits i ON i.inhparent = parent.oid
    JOIN pg_class p ON p.oid = i.inhrelid
    JOIN pg_namespace pn ON pn.oid = p.relnamespace
    WHERE p.relowner <> parent.relowner
       OR CASE WHEN coalesce(p.relacl, acldefault('r', p.relowner)) = parent.want_acl THEN false
               ELSE ARRAY(SELECT a::text FROM unnest(coalesce(p.relacl, acldefault('r', p.relowner))) a ORDER BY 1)
                    <> ARRAY(SELECT a::text FROM unnest(parent.want_acl) a ORDER BY 1) END
       OR p.relrowsecurity <> parent.relrowsecurity
       -- DEFAULT is never forced by us: the steward must see all its rows to move them.
       OR (p.relforcerowsecurity <> parent.relforcerowsecurity
           AND NOT (p.oid = pt.partdefid AND parent.relforcerowsecurity))
       OR (parent.relreplident IN ('f', 'n') AND p.relreplident <> parent.relreplident)
       OR (parent.relreplident = 'i' AND NOT EXISTS (
              SELECT 1 FROM pg_index x JOIN pg_inherits ii ON ii.inhrelid = x.indexrelid
              WHERE x.indrelid = p.oid AND x.indisreplident AND ii.inhparent = parent.ident_index))
       OR (parent.relrowsecurity AND EXISTS (SELECT 1 FROM pg_policy pol WHERE pol.polrelid = p.oid))
    GROUP BY i.inhparent
)
SELECT req.ord::int8 AS ord,
       pg_is_in_recovery() AS in_recovery,
       current_user::text AS current_user_name,
       current_setting('server_version_num')::int4 AS server_version_num,
       parent.oid::int8 AS oid,
       parent.relkind::text AS relkind,
       pt.partstrat::text AS strategy,
       pt.partnatts::int4 AS key_count,
       ka.attname::text AS key_column,
       format_type(ka.atttypid, NULL) AS key_type,
       pg_get_userbyid(parent.relowner)::text AS owner,
       (SELECT coalesce(json_agg(json_build_object(
                   'grantee', CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee)::text END,
                   'privilege', x.privilege_type,
                   'grantable', x.is_grantable)), '[]'::json)
        FROM aclexplode(parent.relacl) x) AS grants,
       parent.relrowsecurity AS row_security,
       parent.relforcerowsecurity AS force_row_security,
       parent.relreplident::text AS replica_identity,
       has_schema_privilege(parent.relowner, parent.relnamespace, 'CREATE') AS owner_can_create,
       drift.partitions AS drift,
       parts.schemas, parts.names, parts.oids, parts.bounds, parts.pending, parts.fk,
       dn.nspname::text AS default_schema,
       d.relname::text AS default_name,
       d.reltuples::float8 AS default_reltuples,
       (SELECT array_agg(k.conname::text) FROM pg_constraint k
        WHERE k.conrelid = d.oid AND k.contype = 'c'
          AND k.conname::text LIKE 'pgsteward\_excl\_%') AS default_checks
FROM req
LEFT JOIN parent ON parent.ord = req.ord
LEFT JOIN pg_partitioned_table pt ON pt.partrelid = parent.oid
LEFT JOIN pg_attribute ka ON ka.attrelid = parent.oid AND ka.attnum = pt.partattrs[0]
LEFT JOIN parts ON parts.inhparent = parent.oid
LEFT JOIN drift ON drift.inhparent = parent.oid
LEFT JOIN pg_class d ON d.oid = pt.partdefid
LEFT JOIN pg_namespace dn ON dn.oid = d.relnamespace
ORDER BY req.ord
