-- Everything `pgsteward convert` needs to know about one table, as one JSON
-- document: $1 schema, $2 table, $3 partition key column. NULL when the table
-- does not exist. Run with search_path = '' so every definition printed here
-- (views, indexes, triggers, policies, defaults) is schema-qualified and means
-- the same thing after the rename.
WITH t AS (
    SELECT c.*, n.nspname
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = $1 AND c.relname = $2
)
SELECT json_build_object(
  'oid', t.oid::int8,
  'relkind', t.relkind::text,
  'persistence', t.relpersistence::text,
  'is_partition', t.relispartition,
  'typed', t.reloftype <> 0,
  'inherits', EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = t.oid),
  'inherited', EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = t.oid),
  'quoted_schema', quote_ident(t.nspname),
  'quoted_name', quote_ident(t.relname),
  'owner', pg_get_userbyid(t.relowner)::text,
  'current_user', current_user::text,
  'owner_member', pg_has_role(current_user, t.relowner, 'MEMBER'),
  'schema_create', has_schema_privilege(current_user, t.relnamespace, 'CREATE'),
  'in_recovery', pg_is_in_recovery(),
  'server_version_num', current_setting('server_version_num')::int4,
  'row_security', t.relrowsecurity,
  'force_row_security', t.relforcerowsecurity,
  'replica_identity', t.relreplident::text,
  'reloptions', coalesce(array_to_json(t.reloptions), '[]'::json),
  'comment', obj_description(t.oid, 'pg_class'),
  'bytes', pg_total_relation_size(t.oid)::int8,
  'table_bytes', pg_relation_size(t.oid)::int8,
  'rows_estimate', t.reltuples::float8,
  'grants', (SELECT coalesce(json_agg(json_build_object(
        'grantee', CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee)::text END,
        'privilege', x.privilege_type, 'grantable', x.is_grantable)), '[]'::json)
      FROM aclexplode(t.relacl) x),
  'columns', (SELECT coalesce(json_agg(json_build_object(
        'name', a.attname::text,
        'type', format_type(a.atttypid, a.atttypmod),
        'not_null', a.attnotnull,
        'identity', a.attidentity::text,
        'generated', a.attgenerated::text,
        'stattarget', COALESCE(a.attstattarget::int4, -1),
        'column_acl', a.attacl IS NOT NULL,
        'default', pg_get_expr(d.adbin, d.adrelid),
        'sequence', pg_get_serial_sequence(format('%I.%I', t.nspname, t.relname), a.attname)
      ) ORDER BY a.attnum), '[]'::json)
      FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped),
  'constraints', (SELECT coalesce(json_agg(json_build_object(
        'name', k.conname::text, 'type', k.contype::text, 'validated', k.convalidated,
        'deferrable', k.condeferrable,
        'def', pg_get_constraintdef(k.oid),
        'columns', (SELECT array_agg(a.attname::text ORDER BY u.ord) FROM unnest(k.conkey) WITH ORDINALITY u(n, ord)
                    JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = u.n),
        'index', (SELECT ic.relname::text FROM pg_class ic WHERE ic.oid = k.conindid)
      ) ORDER BY k.conname), '[]'::json)
      FROM pg_constraint k WHERE k.conrelid = t.oid),
  'indexes', (SELECT coalesce(json_agg(json_build_object(
        'name', ic.relname::text,
        'quoted_name', quote_ident(ic.relname),
        'def', pg_get_indexdef(ic.oid),
        'unique', x.indisunique, 'primary', x.indisprimary, 'valid', x.indisvalid,
        'partial', x.indpred IS NOT NULL, 'expressions', x.indexprs IS NOT NULL,
        'constraint', (SELECT k.conname::text FROM pg_constraint k WHERE k.conindid = ic.oid AND k.conrelid = t.oid),
        'columns', (SELECT array_agg(a.attname::text ORDER BY u.ord) FROM unnest(x.indkey::int2[]) WITH ORDINALITY u(n, ord)
                    JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = u.n WHERE u.ord <= x.indnkeyatts),
        'key_count', x.indnkeyatts::int4,
        'comment', obj_description(ic.oid, 'pg_class')
      ) ORDER BY ic.relname), '[]'::json)
      FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid WHERE x.indrelid = t.oid),
  'triggers', (SELECT coalesce(json_agg(json_build_object(
        'name', g.tgname::text, 'def', pg_get_triggerdef(g.oid), 'enabled', g.tgenabled::text,
        'transition', g.tgoldtable IS NOT NULL OR g.tgnewtable IS NOT NULL,
        'constraint_trigger', g.tgconstraint <> 0
      ) ORDER BY g.tgname), '[]'::json)
      FROM pg_trigger g WHERE g.tgrelid = t.oid AND NOT g.tgisinternal),
  'policies', (SELECT coalesce(json_agg(json_build_object(
        'name', p.polname::text, 'permissive', p.polpermissive, 'cmd', p.polcmd::text,
        'roles', (SELECT coalesce(array_agg(CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(r)::text END), '{}')
                  FROM unnest(p.polroles) r),
        'using', pg_get_expr(p.polqual, p.polrelid),
        'check', pg_get_expr(p.polwithcheck, p.polrelid)
      ) ORDER BY p.polname), '[]'::json)
      FROM pg_policy p WHERE p.polrelid = t.oid),
  'rules', (SELECT coalesce(json_agg(r.rulename::text), '[]'::json)
      FROM pg_rewrite r WHERE r.ev_class = t.oid),
  'referencing_fks', (SELECT coalesce(json_agg(format('%s on %s', k.conname, k.conrelid::regclass)), '[]'::json)
      FROM pg_constraint k WHERE k.confrelid = t.oid AND k.contype = 'f'),
  'views', (SELECT coalesce(json_agg(json_build_object(
        'schema', vn.nspname::text, 'name', v.relname::text, 'kind', v.relkind::text,
        'quoted', format('%I.%I', vn.nspname, v.relname),
        'def', pg_get_viewdef(v.oid),
        'options', coalesce(array_to_json(v.reloptions), '[]'::json),
        'triggers', EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = v.oid),
        'rules', EXISTS (SELECT 1 FROM pg_rewrite r2 WHERE r2.ev_class = v.oid AND r2.rulename <> '_RETURN')
      ) ORDER BY vn.nspname, v.relname), '[]'::json)
      FROM (SELECT DISTINCT r.ev_class FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
            WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
              AND d.refobjid = t.oid AND r.ev_class <> t.oid) dv
      JOIN pg_class v ON v.oid = dv.ev_class JOIN pg_namespace vn ON vn.oid = v.relnamespace),
  -- Every publication that publishes the table (listed, FOR ALL TABLES, FOR
  -- TABLES IN SCHEMA): after the swap its rows live in partitions.
  'publications', (SELECT coalesce(json_agg(json_build_object(
        'name', pb.pubname::text,
        'filtered', coalesce((to_jsonb(pr) ->> 'prqual') IS NOT NULL OR (to_jsonb(pr) ->> 'prattrs') IS NOT NULL, false),
        'listed', pr.prrelid IS NOT NULL,
        'via_root', pb.pubviaroot,
        'owner', pg_get_userbyid(pb.pubowner)::text,
        'owner_member', pg_has_role(current_user, pb.pubowner, 'USAGE')) ORDER BY pb.pubname), '[]'::json)
      FROM pg_publication pb
      LEFT JOIN pg_publication_rel pr ON pr.prpubid = pb.oid AND pr.prrelid = t.oid
      WHERE pr.prrelid IS NOT NULL
         OR EXISTS (SELECT 1 FROM pg_get_publication_tables(pb.pubname::text) gt WHERE gt.relid = t.oid)),
  -- What the swap does as the steward beyond the table's ownership.
  'foreign_needs', (SELECT coalesce(json_agg(x.need ORDER BY x.need), '[]'::json) FROM (
      SELECT format('CREATE OR REPLACE VIEW %s needs ownership of the view (owned by %s)',
                    v.oid::regclass, pg_get_userbyid(v.relowner)) AS need
      FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class
      WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
        AND d.refobjid = t.oid AND r.ev_class <> t.oid
        AND NOT pg_has_role(current_user, v.relowner, 'USAGE')
      UNION
      SELECT format('the foreign key %s needs REFERENCES on %s', k.conname, k.confrelid::regclass)
      FROM pg_constraint k WHERE k.conrelid = t.oid AND k.contype = 'f'
        AND NOT has_table_privilege(current_user, k.confrelid, 'REFERENCES')
      UNION
      SELECT format('trigger %s needs EXECUTE on %s', g.tgname, g.tgfoid::regprocedure)
      FROM pg_trigger g WHERE g.tgrelid = t.oid AND NOT g.tgisinternal
        AND NOT has_function_privilege(current_user, g.tgfoid, 'EXECUTE')
      UNION
      SELECT format('sequence %s must be re-owned, which needs ownership of it (owned by %s)',
                    sq.oid::regclass, pg_get_userbyid(sq.relowner))
      FROM pg_depend d JOIN pg_class sq ON sq.oid = d.objid AND sq.relkind = 'S'
      WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
        AND d.refobjid = t.oid AND NOT pg_has_role(current_user, sq.relowner, 'USAGE')) x),
  -- Objects that depend on the table or its row type and that conversion does
  -- not carry (functions taking the row type, other tables' columns of it, ...).
  'other_dependents', (SELECT coalesce(json_agg(DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid)), '[]'::json)
      FROM pg_depend d
      WHERE ((d.refclassid = 'pg_class'::regclass AND d.refobjid = t.oid)
             OR (d.refclassid = 'pg_type'::regclass AND d.refobjid = t.reltype))
        AND d.classid NOT IN ('pg_attrdef'::regclass, 'pg_constraint'::regclass, 'pg_class'::regclass,
                              'pg_trigger'::regclass, 'pg_policy'::regclass, 'pg_rewrite'::regclass,
                              'pg_publication_rel'::regclass, 'pg_statistic_ext'::regclass, 'pg_type'::regclass)),
  -- Whether some valid index leads with the key: then max(key) is one probe.
  'key_indexed', EXISTS (SELECT 1 FROM pg_index x JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0]
                         WHERE x.indrelid = t.oid AND x.indisvalid AND a.attname = $3 AND x.indpred IS NULL)
)::text
FROM t
