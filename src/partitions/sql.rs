//! Every static query of partition maintenance, named for what it returns.
//! The long ones live in `sql/partitions_*.sql`; DDL, which names tables,
//! is built at run time by `partitions::ddl` (identifiers quoted, bounds as
//! literals) and by the index builders.

/// One row per requested table (`$1`, `$2`: schema and name arrays), in
/// request order, with everything a pass needs about it (NULL oid: missing).
pub const MANAGED_TABLES: &str = include_str!("../../sql/partitions_managed_tables.sql");
/// `pg_get_expr` of each partition bound, by partition oid.
pub const BOUND_EXPRS: &str = include_str!("../../sql/partitions_bound_exprs.sql");
/// Whether this is a replica, who we are and the server version: what the
/// catalog query would say when no table is configured (it returns no row).
pub const RECOVERY_USER_VERSION: &str = "SELECT pg_is_in_recovery(), current_user::text, \
     current_setting('server_version_num')::int4";

/// The sessions session `$1` waits for (holders of, or queued ahead for, a
/// conflicting lock): pid, user, application, state, ages, query.
pub const BLOCKERS: &str = include_str!("../../sql/partitions_blockers.sql");
/// Other sessions holding a lock on any of the relations `$1` (regclass
/// texts), when no wait was observed: the same columns as [`BLOCKERS`].
pub const LOCK_HOLDERS: &str = include_str!("../../sql/partitions_lock_holders.sql");
/// On a hot standby: sessions holding a lock on any of $1 (regclass texts) in this database.
pub const STANDBY_HOLDERS: &str = include_str!("../../sql/partitions_standby_holders.sql");
/// A standby's settings that decide how a replayed lock meets its queries:
/// in recovery, hot_standby, max_standby_streaming_delay (ms, -1 = forever), hot_standby_feedback.
pub const STANDBY_SETTINGS: &str =
    "SELECT pg_is_in_recovery(), current_setting('hot_standby')::bool, \
     (SELECT setting::int8 FROM pg_settings WHERE name = 'max_standby_streaming_delay'), \
     current_setting('hot_standby_feedback')::bool";

/// What a new partition copies from its parent (`$1`: its oid): row-level
/// security, replica identity, tablespace, and the server version.
pub const PARENT_DETAILS: &str = include_str!("../../sql/partitions_parent_details.sql");
/// Foreign keys of other tables that reference the parent `$1` or its DEFAULT `$2`.
pub const REFERENCING_FKS: &str = include_str!("../../sql/partitions_referencing_fks.sql");
/// Names of the enabled user triggers that fire on DELETE from `$1` (a
/// DEFAULT-row move would fire them).
pub const DELETE_TRIGGERS: &str = include_str!("../../sql/partitions_delete_triggers.sql");
/// Whether a name is taken, and if so whether it is a standalone table that an
/// interrupted pass of ours created (it carries our bounds CHECK): relkind,
/// relispartition, has that CHECK.
pub const RELATION_KIND_PARTITION_CHECK: &str = "SELECT c.relkind::text, c.relispartition, \
       EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.conname = $2) \
     FROM pg_class c WHERE c.oid = to_regclass($1)";
/// Columns a DEFAULT-row move copies: every stored, non-dropped column of the parent.
pub const STORED_COLUMNS: &str = "SELECT attname::text FROM pg_attribute \
     WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped AND attgenerated = '' \
     ORDER BY attnum";
/// Standalone tables carrying our bounds CHECK: made by a pass that was
/// interrupted (or lost its lock race) before the ATTACH; schema, name.
pub const UNATTACHED: &str = "SELECT n.nspname::text, c.relname::text FROM pg_constraint k \
     JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE k.conname = 'pgsteward_bounds' AND k.contype = 'c' AND NOT c.relispartition ORDER BY 1, 2";
/// A relation's oid, NULL when the name does not exist.
pub const RELATION_OID: &str = "SELECT to_regclass($1)::oid::int8";
pub const BEGIN: &str = "BEGIN";
pub const COMMIT: &str = "COMMIT";
pub const ROLLBACK: &str = "ROLLBACK";

/// Whether the per-table advisory lock was taken, and this session's pid.
pub const TRY_TABLE_LOCK_AND_PID: &str = "SELECT pg_try_advisory_lock($1, $2), pg_backend_pid()";
/// Whether the per-table advisory lock was taken.
pub const TRY_TABLE_LOCK: &str = "SELECT pg_try_advisory_lock($1, $2)";
/// Whether the per-table advisory lock was held (and is now released).
pub const UNLOCK_TABLE: &str = "SELECT pg_advisory_unlock($1, $2)";
/// Whether a partition is left half-detached by an interrupted
/// `DETACH ... CONCURRENTLY` (false on 13, which has no such state).
pub const DETACH_PENDING: &str =
    "SELECT coalesce((to_jsonb(i) ->> 'inhdetachpending')::bool, false) \
     FROM pg_inherits i WHERE inhrelid = to_regclass($1)";
/// A converted table's first partition's size, from the catalog (no lock on it).
pub const PARTITION_SIZE_PRETTY: &str =
    "SELECT pg_size_pretty(pg_total_relation_size(to_regclass($1)))";

/// Every index of the partitioned parents `$1` (oids), with validity, the
/// constraint it backs and its definition after USING.
pub const PARENT_INDEXES: &str = include_str!("../../sql/partitions_indexes_parent.sql");
/// Every partition of the parents `$1` (oids) with each of its indexes:
/// validity, the parent index it is attached to, its definition after USING.
pub const CHILD_INDEXES: &str = include_str!("../../sql/partitions_indexes_children.sql");
/// The invalid indexes of the partitions of $1 (parents with no index and
/// none declared), with the columns of [`CHILD_INDEXES`].
pub const CHILD_INVALID_INDEXES: &str =
    include_str!("../../sql/partitions_indexes_children_invalid.sql");
/// An index name's relkind, validity, and whether it is on the given table.
pub const INDEX_KIND_VALID_ON: &str =
    "SELECT c.relkind::text, i.indisvalid, i.indrelid = to_regclass($2) \
     FROM pg_class c LEFT JOIN pg_index i ON i.indexrelid = c.oid WHERE c.oid = to_regclass($1)";
/// Progress rows of the index builds of the given backends.
pub const INDEX_BUILD_PROGRESS: &str =
    "SELECT pid, phase, blocks_done, blocks_total, tuples_done, tuples_total \
     FROM pg_stat_progress_create_index WHERE pid = ANY ($1)";
/// This session's backend pid.
pub const BACKEND_PID: &str = "SELECT pg_backend_pid()";

/// Whether convert's journal `pgsteward.conversions` exists (made by the
/// first `convert start`).
pub const JOURNAL_EXISTS: &str = "SELECT to_regclass('pgsteward.conversions') IS NOT NULL";
/// Tables `pgsteward convert` is converting that have not reached the swap:
/// schema, table, last step, when it was done, when the conversion started.
pub const TABLES_CONVERTING: &str = include_str!("../../sql/partitions_tables_converting.sql");
