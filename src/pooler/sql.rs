//! The PgBouncer admin-console commands pgsteward sends (simple query
//! protocol only). Database names are bare words there: callers check them
//! with `Poolers::valid_database_name` before building PAUSE or RESUME.

/// Re-reads pgbouncer.ini.
pub const RELOAD: &str = "RELOAD";
/// One row per configured database: name, host, port, paused, ...
pub const SHOW_DATABASES: &str = "SHOW DATABASES";
/// One row per server connection: database, state, address, port, ...
pub const SHOW_SERVERS: &str = "SHOW SERVERS";
/// One row per setting: key, value, ...
pub const SHOW_CONFIG: &str = "SHOW CONFIG";
/// One row per (database, user) pool: clients active and waiting, servers, maxwait.
pub const SHOW_POOLS: &str = "SHOW POOLS";
/// One row per list: `used_clients`, `free_clients`, `pools`, ...
pub const SHOW_LISTS: &str = "SHOW LISTS";
/// One row per database: totals since start (transactions, queries, wait time).
pub const SHOW_STATS: &str = "SHOW STATS";
/// One row: PgBouncer's version.
pub const SHOW_VERSION: &str = "SHOW VERSION";

/// Pauses `database`: returns once its server connections are released.
pub fn pause(database: &str) -> String {
    format!("PAUSE {database}")
}

/// Lifts a PAUSE of `database`.
pub fn resume(database: &str) -> String {
    format!("RESUME {database}")
}
