//! `pgsteward demo`. (Being built.)

use crate::cli::DemoArgs;
use crate::Outcome;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    LocalPg(#[from] crate::localpg::LocalPgError),
}

pub async fn run(_args: &DemoArgs) -> Result<Outcome, DemoError> {
    Ok(Outcome::Healthy)
}
