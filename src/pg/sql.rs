//! The statements the PostgreSQL plumbing itself runs.

/// Settings every DDL session starts with. `lock_timeout` is set per statement.
pub const DDL_SESSION_SETUP: &str =
    "SET standard_conforming_strings = on; SET statement_timeout = 0";
