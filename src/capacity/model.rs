//! What one capacity run observed on the primary (and, on RDS, through the
//! AWS API), as plain data: `observe` fills it, `evaluate` judges it.

use crate::partitions::model::{KeyType, Range};
use crate::pg::QualifiedName;

/// Server settings the limits come from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub server_version_num: i32,
    pub max_connections: i64,
    pub superuser_reserved_connections: i64,
    /// `reserved_connections` (16+), 0 before.
    pub reserved_connections: i64,
    pub autovacuum_freeze_max_age: i64,
    pub autovacuum_multixact_freeze_max_age: i64,
}

/// One database of the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseFacts {
    pub name: String,
    /// `pg_database_size`; `None` when the steward may not read it.
    pub bytes: Option<i64>,
    pub xid_age: i64,
    pub mxid_age: i64,
}

/// One partition of a managed table, sized.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionSize {
    pub name: String,
    /// `None` for DEFAULT and for bounds that could not be read.
    pub range: Option<Range>,
    /// Table + indexes + TOAST.
    pub bytes: i64,
    /// From `relpages` (statistics VACUUM/ANALYZE keep), not measured.
    pub estimated: bool,
}

/// A managed partitioned table and its partitions.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionedTable {
    pub table: QualifiedName,
    pub key_type: KeyType,
    pub partitions: Vec<PartitionSize>,
}

/// A sequence, with the column it feeds when one can be found.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceFacts {
    /// `schema.sequence`, quoted where needed.
    pub name: String,
    pub min_value: i64,
    pub max_value: i64,
    pub increment: i64,
    pub cycle: bool,
    /// `None` until first used, or when the steward may not read it.
    pub last_value: Option<i64>,
    /// Whether the steward may read `last_value` (SELECT or USAGE).
    pub readable: bool,
    /// `schema.table.column`, and the column's type name, when it feeds one.
    pub column: Option<String>,
    pub column_type: Option<String>,
}

/// The current database's tables with the oldest unfrozen XIDs.
#[derive(Debug, Clone, PartialEq)]
pub struct OldTable {
    pub table: String,
    pub xid_age: i64,
}

/// Everything one run read from the primary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// Unix seconds.
    pub taken_at: f64,
    /// The database `database.primary` names.
    pub database: String,
    pub in_recovery: bool,
    pub settings: Settings,
    pub databases: Vec<DatabaseFacts>,
    /// `pg_ls_waldir()` total; `None` without `pg_monitor`.
    pub wal_bytes: Option<i64>,
    /// The next transaction ID, epoch included (64-bit, never wraps).
    pub next_xid: i64,
    /// The next multixact ID, when `pg_control_checkpoint()` is readable.
    pub next_mxid: Option<i64>,
    pub client_connections: i64,
    pub oldest_tables: Vec<OldTable>,
    pub sequences: Vec<SequenceFacts>,
    pub partitioned: Vec<PartitionedTable>,
    /// Configured tables that are not partitioned tables (named in notes).
    pub missing_tables: Vec<String>,
    /// The largest plain tables (`schema.table`, bytes), largest first.
    pub plain: Vec<(String, i64)>,
    /// How sizes were read ("exact", or why estimates stood in).
    pub size_method: String,
}

impl Observation {
    /// What the self-managed volume holds, as far as SQL can see: every
    /// database plus WAL. `None` when a database's size is unreadable.
    pub fn storage_used(&self) -> Option<i64> {
        let dbs: Option<i64> = self.databases.iter().map(|d| d.bytes).sum();
        Some(dbs? + self.wal_bytes.unwrap_or(0))
    }
}

/// RDS storage facts: `DescribeDBInstances` and CloudWatch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RdsStorage {
    pub instance: String,
    /// `AllocatedStorage`, bytes.
    pub allocated_bytes: f64,
    /// `MaxAllocatedStorage`, bytes; `None` when storage autoscaling is off.
    pub max_allocated_bytes: Option<f64>,
    /// `FreeStorageSpace` history (days since epoch, bytes), oldest first.
    pub free_history: Vec<crate::capacity::forecast::Point>,
}
