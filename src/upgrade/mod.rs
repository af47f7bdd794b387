//! The vertical-upgrade saga. (Being built.)

use crate::cli::OutputFormat;
use crate::config::Config;
use crate::Outcome;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Provider(#[from] crate::provider::ProviderError),
}

impl UpgradeError {
    /// Errors the operator fixes in the invocation or configuration (exit 2).
    pub fn is_usage(&self) -> bool {
        match self {
            UpgradeError::Usage(_) => true,
            UpgradeError::Provider(p) => p.is_usage(),
        }
    }
}

pub async fn plan_command(
    _cfg: &Config,
    _class: &str,
    _output: OutputFormat,
) -> Result<Outcome, UpgradeError> {
    Err(UpgradeError::Usage("upgrade is not built yet".into()))
}
pub async fn start_command(_cfg: &Config, _class: &str) -> Result<Outcome, UpgradeError> {
    Err(UpgradeError::Usage("upgrade is not built yet".into()))
}
pub async fn status_command(_cfg: &Config, _output: OutputFormat) -> Result<Outcome, UpgradeError> {
    Err(UpgradeError::Usage("upgrade is not built yet".into()))
}
pub async fn resume_command(_cfg: &Config) -> Result<Outcome, UpgradeError> {
    Err(UpgradeError::Usage("upgrade is not built yet".into()))
}
pub async fn abort_command(_cfg: &Config) -> Result<Outcome, UpgradeError> {
    Err(UpgradeError::Usage("upgrade is not built yet".into()))
}
