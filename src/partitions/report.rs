//! What a pass did, per table: printed by `partitions apply`, turned into
//! metrics by the service.

use serde::Serialize;

use crate::outcome::Outcome;
use crate::pg::QualifiedName;

/// What one maintenance pass did, per managed table. The service turns it
/// into metrics; `partitions apply` prints it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PassReport {
    /// Set when the pass did nothing on purpose (server in recovery, another pass holds the lock).
    pub skipped: Option<String>,
    pub tables: Vec<TableReport>,
    /// The index part of the pass, per managed table (`indexes::run_pass`).
    pub indexes: Vec<super::indexes::TableIndexReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: QualifiedName,
    /// Whole periods covered by partitions after the current one.
    pub future_partitions: u32,
    /// Uncovered parts of the current period and the `premake` periods
    /// after it, after the pass (`from .. to`).
    pub holes: Vec<String>,
    /// The current period had no hole after the pass; when false the pass
    /// is a problem whatever else it did.
    pub current_covered: bool,
    /// Rows in the DEFAULT partition after the pass (0 when there is none).
    pub default_rows: u64,
    pub created: u32,
    pub retired: u32,
    pub rows_moved: u64,
    /// Partitions whose owner, privileges, row-level security or replica
    /// identity this pass made follow the parent's.
    pub access_repaired: u32,
    /// Access problems left to the operator (each in `error` with its fix).
    pub access_problems: u32,
    /// Why the table could not be brought up to date; it is retried next pass.
    pub error: Option<String>,
    /// Set when the table was left alone on purpose (another pass holds its lock).
    pub skipped: Option<String>,
    /// Partitions reported but not touched (off the grid, overlapping, FK-referenced) and warnings.
    pub notes: Vec<String>,
    /// The DDL this pass ran for the table, in order.
    pub statements: Vec<String>,
    /// Retirements to object storage (`retention_mode = "archive"`).
    pub archive: ArchiveReport,
}

impl TableReport {
    pub fn new(table: &QualifiedName) -> TableReport {
        TableReport {
            table: table.clone(),
            future_partitions: 0,
            holes: Vec::new(),
            current_covered: true,
            default_rows: 0,
            created: 0,
            retired: 0,
            rows_moved: 0,
            access_repaired: 0,
            access_problems: 0,
            error: None,
            skipped: None,
            notes: Vec::new(),
            statements: Vec::new(),
            archive: Default::default(),
        }
    }
}

impl PassReport {
    pub fn outcome(&self) -> Outcome {
        if self
            .tables
            .iter()
            .any(|t| t.error.is_some() || !t.current_covered)
            || self
                .indexes
                .iter()
                .any(|t| t.error.is_some() || !t.drift.is_empty())
        {
            Outcome::Problem
        } else {
            Outcome::Healthy
        }
    }
}

/// What the archive part of a pass did for one table (metrics, `apply`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ArchiveReport {
    /// Bytes uploaded by this pass.
    pub bytes: u64,
    /// Partitions archived, verified and dropped by this pass.
    pub archived: u32,
    /// Retirement steps that failed in this pass.
    pub failures: u32,
    /// Partitions past retention still in the database after the pass for
    /// lack of a verified archive (in flight, failed, held, too large).
    pub held_back: u32,
    /// Seconds since the oldest unfinished retirement last moved.
    pub oldest_idle_s: Option<f64>,
}
