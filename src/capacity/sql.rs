//! The capacity queries, one named constant each (the long ones in `sql/`).

pub const CLUSTER: &str = include_str!("../../sql/capacity_cluster.sql");
pub const DATABASES: &str = include_str!("../../sql/capacity_databases.sql");
pub const OLDEST_TABLES: &str = include_str!("../../sql/capacity_oldest_tables.sql");
pub const SEQUENCES: &str = include_str!("../../sql/capacity_sequences.sql");
pub const PARTITIONS: &str = include_str!("../../sql/capacity_partitions.sql");
pub const EXACT_SIZES: &str = include_str!("../../sql/capacity_exact_sizes.sql");
pub const PLAIN_TABLES: &str = include_str!("../../sql/capacity_plain_tables.sql");
pub const HISTORY: &str = include_str!("../../sql/capacity_history.sql");
pub const PRUNE: &str = include_str!("../../sql/capacity_prune.sql");
/// Whether the sample table is there to read (no migration asked).
pub const SAMPLES_EXIST: &str = "SELECT to_regclass('pgsteward.capacity_samples') IS NOT NULL";

/// Partition bounds the node-text decoder did not understand, as SQL prints them.
pub const BOUND_EXPRS: &str =
    "SELECT o::int8, pg_get_expr(c.relpartbound, c.oid) FROM unnest($1::int8[]) AS o \
     JOIN pg_class c ON c.oid = o::oid";

/// The run's own session never waits long for a lock (the exact-size reads
/// skip relations under DDL; this is the last guard: a read that times out
/// keeps the estimates) nor runs away.
pub const SESSION_SETUP: &str = "SET lock_timeout = '50ms'; SET statement_timeout = '60s'; \
     SET application_name = 'pgsteward capacity'; SET TimeZone = 'UTC'; SET DateStyle = 'ISO'";

pub const RECORD: &str = "INSERT INTO pgsteward.capacity_samples (kind, subject, taken_at, value) \
     SELECT r.kind, r.subject, to_timestamp($1), r.value \
     FROM unnest($2::text[], $3::text[], $4::float8[]) AS r(kind, subject, value) \
     ON CONFLICT DO NOTHING";
