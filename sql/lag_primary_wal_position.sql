-- lag check, on the primary: where the primary's WAL is now, and its connection load.
-- pg_current_wal_lsn() fails during recovery, so a "primary" that is in fact a
-- replica yields NULL here and is reported, not an error.
SELECT pg_is_in_recovery() AS in_recovery,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_current_wal_lsn()::text END AS current_lsn,
       now() AS observed_at,
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend')::int8 AS connections,
       current_setting('max_connections')::int8 AS max_connections
