//! The queries of a lag check, named for what they return; the text is in
//! `sql/lag_*.sql`.

/// On the primary: whether it is in recovery, its current WAL position
/// (NULL on a "primary" that is in fact a replica), and its connection load.
pub const PRIMARY_WAL_POSITION: &str = include_str!("../../sql/lag_primary_wal_position.sql");
/// On the primary: one row per WAL sender (a connected replica) with its
/// sent/write/flush/replay positions and lag times.
pub const WAL_SENDERS: &str = include_str!("../../sql/lag_wal_senders.sql");
/// On a replica: recovery state, receive and replay positions, replay pause,
/// last replay time, WAL receiver status, and its connection load.
pub const REPLICA_STATE: &str = include_str!("../../sql/lag_replica_state.sql");
/// On a replica: its replay position, re-read while a streaming replica settles.
pub const REPLAY_LSN: &str = include_str!("../../sql/lag_replay_lsn.sql");
