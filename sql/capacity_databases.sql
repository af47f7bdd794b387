-- Every database: size (where the steward may read it: CONNECT, or
-- pg_read_all_stats through pg_monitor) and the age of its oldest XIDs.
SELECT d.datname::text AS name,
       CASE WHEN has_database_privilege(d.oid, 'CONNECT')
              OR pg_has_role('pg_read_all_stats', 'USAGE')
            THEN pg_database_size(d.oid) END AS bytes,
       age(d.datfrozenxid)::int8 AS xid_age,
       mxid_age(d.datminmxid)::int8 AS mxid_age
FROM pg_database d
ORDER BY d.datname
