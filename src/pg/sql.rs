//! The statements the PostgreSQL plumbing itself runs.

/// Settings every DDL session starts with. `lock_timeout` is set per statement.
pub const DDL_SESSION_SETUP: &str =
    "SET standard_conforming_strings = on; SET statement_timeout = 0";

/// The server's version string and whether it is in recovery (a replica).
pub const VERSION_AND_RECOVERY: &str =
    "SELECT current_setting('server_version'), pg_is_in_recovery()";
