//! The statements of the service's leadership, named for what they return.

/// Whether the leader lock (`$1`, one bigint) was taken by this session.
pub const TRY_LEADER_LOCK: &str = "SELECT pg_try_advisory_lock($1)";
/// Whether the leader lock was held by this session (and is now released).
pub const UNLOCK_LEADER: &str = "SELECT pg_advisory_unlock($1)";
/// One row: the session (and so the lock it holds) is alive.
pub const ALIVE: &str = "SELECT 1";
