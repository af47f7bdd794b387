-- The cluster-wide facts of one capacity run, in one round trip. Read-only:
-- the next XID comes from a snapshot (pg_current_xact_id would assign one).
-- WAL and the multixact counter need pg_monitor; without it they are NULL.
SELECT current_database()::text AS database,
       pg_is_in_recovery() AS in_recovery,
       current_setting('server_version_num')::int4 AS server_version_num,
       current_setting('max_connections')::int8 AS max_connections,
       current_setting('superuser_reserved_connections')::int8 AS superuser_reserved,
       coalesce(current_setting('reserved_connections', true), '0')::int8 AS reserved,
       current_setting('autovacuum_freeze_max_age')::int8 AS freeze_max_age,
       current_setting('autovacuum_multixact_freeze_max_age')::int8 AS mxid_freeze_max_age,
       txid_snapshot_xmax(txid_current_snapshot())::int8 AS next_xid,
       CASE WHEN has_function_privilege('pg_control_checkpoint()', 'EXECUTE')
            THEN (pg_control_checkpoint()).next_multixact_id::text::int8 END AS next_mxid,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int8
           AS client_connections,
       CASE WHEN pg_has_role('pg_monitor', 'USAGE')
            THEN (SELECT coalesce(sum(size), 0) FROM pg_ls_waldir())::int8 END AS wal_bytes,
       extract(epoch FROM clock_timestamp())::float8 AS taken_at
