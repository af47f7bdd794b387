-- lag check, on a replica. pg_is_wal_replay_paused() raises an error outside
-- recovery, hence the CASE (the function is volatile, so it is not folded).
-- pg_stat_wal_receiver shows its columns only to roles with pg_read_all_stats
-- (pg_monitor); without it the receiver status reads as NULL.
SELECT pg_is_in_recovery() AS in_recovery,
       pg_last_wal_receive_lsn()::text AS receive_lsn,
       pg_last_wal_replay_lsn()::text AS replay_lsn,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused()
            ELSE false END AS replay_paused,
       pg_last_xact_replay_timestamp() AS last_replay_at,
       (SELECT status FROM pg_stat_wal_receiver) AS receiver_status,
       (SELECT last_msg_receipt_time FROM pg_stat_wal_receiver) AS last_msg_receipt_at,
       (SELECT conninfo FROM pg_stat_wal_receiver) AS receiver_conninfo,
       current_setting('cluster_name') AS cluster_name,
       now() AS observed_at,
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend')::int8 AS connections,
       current_setting('max_connections')::int8 AS max_connections
