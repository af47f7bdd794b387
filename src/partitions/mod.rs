//! Partition maintenance. (Being built: catalog, plan, apply.)

use crate::cli::OutputFormat;
use crate::config::Config;
use crate::Outcome;

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
}

pub async fn plan_command(_cfg: &Config, _output: OutputFormat) -> Result<Outcome, PartitionError> {
    Ok(Outcome::Healthy)
}
pub async fn apply_command(_cfg: &Config, _output: OutputFormat) -> Result<Outcome, PartitionError> {
    Ok(Outcome::Healthy)
}
pub async fn status_command(_cfg: &Config, _output: OutputFormat) -> Result<Outcome, PartitionError> {
    Ok(Outcome::Healthy)
}
