-- lag check, on the primary: one row per WAL sender (a connected replica).
-- Lag intervals are NULL once a replica has caught up and the primary is idle.
SELECT application_name,
       client_addr::text AS client_addr,
       state,
       sent_lsn::text AS sent_lsn,
       write_lsn::text AS write_lsn,
       flush_lsn::text AS flush_lsn,
       replay_lsn::text AS replay_lsn,
       extract(epoch FROM write_lag)::float8 AS write_lag_seconds,
       extract(epoch FROM flush_lag)::float8 AS flush_lag_seconds,
       extract(epoch FROM replay_lag)::float8 AS replay_lag_seconds,
       sync_state
  FROM pg_stat_replication
 ORDER BY application_name, client_addr
