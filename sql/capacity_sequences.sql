-- Every sequence the steward can see, with the narrowest integer column it
-- feeds: through OWNED BY / identity (pg_depend 'a' / 'i') or through a
-- column default calling nextval() (the default depends on the sequence).
-- pg_sequences shows last_value only to roles with SELECT or USAGE on the
-- sequence; `readable` tells an unreadable one from one never used.
SELECT format('%I.%I', s.schemaname, s.sequencename) AS name,
       s.min_value, s.max_value, s.increment_by, s.cycle, s.last_value,
       has_sequence_privilege(c.oid, 'SELECT,USAGE') AS readable,
       col.name AS column_name, col.type_name AS column_type
FROM pg_sequences s
JOIN pg_namespace n ON n.nspname = s.schemaname
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = s.sequencename AND c.relkind = 'S'
LEFT JOIN LATERAL (
  SELECT u.name, u.type_name FROM (
    SELECT format('%I.%I.%I', tn.nspname, t.relname, a.attname) AS name,
           format_type(a.atttypid, NULL) AS type_name
    FROM pg_depend d
    JOIN pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND ad.oid = d.objid
    JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
    JOIN pg_class t ON t.oid = a.attrelid
    JOIN pg_namespace tn ON tn.oid = t.relnamespace
    WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = c.oid
    UNION ALL
    SELECT format('%I.%I.%I', tn.nspname, t.relname, a.attname),
           format_type(a.atttypid, NULL)
    FROM pg_depend d
    JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
    JOIN pg_class t ON t.oid = a.attrelid
    JOIN pg_namespace tn ON tn.oid = t.relnamespace
    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
      AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
  ) u
  ORDER BY u.type_name = 'smallint' DESC, u.type_name = 'integer' DESC
  LIMIT 1
) col ON true
WHERE s.schemaname NOT IN ('pg_catalog', 'information_schema', 'pgsteward')
ORDER BY 1
