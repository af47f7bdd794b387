-- lag check, on a replica that is streaming but behind: re-read while it settles.
SELECT pg_last_wal_replay_lsn()::text AS replay_lsn
