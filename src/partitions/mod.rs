//! Partition maintenance. (Being built: catalog, plan, apply.)

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::cli::OutputFormat;
use crate::config::Config;
use crate::pg::QualifiedName;
use crate::Outcome;

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    #[error("cancelled")]
    Cancelled,
}

/// What one maintenance pass did, per managed table. The service turns it
/// into metrics; `partitions apply` prints it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PassReport {
    /// Set when the pass did nothing on purpose (server in recovery, another pass holds the lock).
    pub skipped: Option<String>,
    pub tables: Vec<TableReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: QualifiedName,
    /// Whole periods covered by partitions after the current one.
    pub future_partitions: u32,
    /// Rows in the DEFAULT partition after the pass (0 when there is none).
    pub default_rows: u64,
    pub created: u32,
    pub retired: u32,
    pub rows_moved: u64,
    /// Why the table could not be brought up to date; it is retried next pass.
    pub error: Option<String>,
}

impl PassReport {
    pub fn outcome(&self) -> Outcome {
        if self.tables.iter().any(|t| t.error.is_some()) {
            Outcome::Problem
        } else {
            Outcome::Healthy
        }
    }
}

/// One maintenance pass over every managed table. Cancelling stops before the
/// next DDL statement; a statement in flight finishes or is cancelled cleanly.
pub async fn run_pass(
    _cfg: &Config,
    _cancel: &CancellationToken,
) -> Result<PassReport, PartitionError> {
    Ok(PassReport::default())
}

pub async fn plan_command(_cfg: &Config, _output: OutputFormat) -> Result<Outcome, PartitionError> {
    Ok(Outcome::Healthy)
}
pub async fn apply_command(
    _cfg: &Config,
    _output: OutputFormat,
) -> Result<Outcome, PartitionError> {
    Ok(Outcome::Healthy)
}
pub async fn status_command(
    _cfg: &Config,
    _output: OutputFormat,
) -> Result<Outcome, PartitionError> {
    Ok(Outcome::Healthy)
}
