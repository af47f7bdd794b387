//! What a new server needs to receive its source's PostgreSQL 17+ failover
//! logical slots: a physical slot of its own on the source, streamed
//! through (`primary_slot_name`), `hot_standby_feedback` (the source then
//! keeps the catalog rows the synchronized slots still decode), a database
//! in `primary_conninfo` (the slot synchronization worker connects there)
//! and `sync_replication_slots` (the worker itself). The upgrade checks the
//! result (`upgrade::slots::not_ready`) before the pause and before promote.

/// The upgrade's own slots: never carried, never refused.
pub const OWN_PREFIX: &str = "pgsteward_";

/// The new server's settings for slot synchronization (a standby; after
/// promote the worker does not run and the feedback goes nowhere).
/// `wal_level = logical` is needed by the worker and by the consumers once
/// the server is their primary; the copy's own configuration may not carry
/// it (a setting in an included file outside the data directory).
pub const SYNC_SETTINGS: [(&str, &str); 3] = [
    ("wal_level", "logical"),
    ("hot_standby_feedback", "on"),
    ("sync_replication_slots", "on"),
];

/// The slot on the old primary that new server `replica_id` streams through.
pub fn standby_slot(replica_id: &str) -> String {
    let mut name: String = format!("{OWN_PREFIX}{replica_id}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    name.truncate(63);
    name
}
