//! The top-level error: every subsystem's error converts into it, and it
//! decides the process exit code. It stands above every subsystem; none of
//! them uses it (each labels its own error for metrics, [`ErrorLabel`]).

use crate::config::ConfigError;
use crate::localpg::LocalPgError;
use crate::outcome::ErrorLabel;
use crate::pg::PgError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    LocalPg(#[from] LocalPgError),
    #[error(transparent)]
    Partitions(#[from] crate::partitions::PartitionError),
    #[error(transparent)]
    Lag(#[from] crate::lag::LagError),
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
    #[error(transparent)]
    Upgrade(#[from] crate::upgrade::UpgradeError),
    #[error(transparent)]
    Convert(#[from] crate::convert::ConvertError),
    #[error(transparent)]
    Capacity(#[from] crate::capacity::CapacityError),
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
    #[error(transparent)]
    Check(#[from] crate::check::CheckError),
}

impl Error {
    /// 2 for anything the operator must fix in the invocation or the
    /// configuration; 1 for everything that failed while doing the work.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Check(crate::check::CheckError::Usage { .. }) => 2,
            Error::Upgrade(e) if e.is_usage() => 2,
            Error::Convert(e) if e.is_usage() => 2,
            Error::Capacity(e) if e.is_usage() => 2,
            _ if self.pg_error().is_some_and(PgError::is_usage) => 2,
            _ => 1,
        }
    }

    /// The PostgreSQL error inside, when a subsystem passed one on as it was
    /// (an invalid connection string, a missing password: exit 2 wherever found).
    fn pg_error(&self) -> Option<&PgError> {
        use crate::provider::ProviderError;
        match self {
            Error::Pg(e)
            | Error::Partitions(crate::partitions::PartitionError::Pg(e))
            | Error::Lag(crate::lag::LagError::Pg(e))
            | Error::Service(crate::service::ServiceError::Pg(e))
            | Error::Demo(crate::demo::DemoError::Pg(e))
            | Error::Upgrade(crate::upgrade::UpgradeError::Pg(e))
            | Error::Convert(crate::convert::ConvertError::Pg(e))
            | Error::Convert(crate::convert::ConvertError::Partitions(
                crate::partitions::PartitionError::Pg(e),
            ))
            | Error::Upgrade(crate::upgrade::UpgradeError::Pooler(
                crate::pooler::PoolerError::Pg(e),
            ))
            | Error::Upgrade(crate::upgrade::UpgradeError::Provider(ProviderError::Pg(e))) => {
                Some(e)
            }
            _ => None,
        }
    }

    /// The failure kind for metrics: each subsystem's error names its own.
    pub fn metric_label(&self) -> ErrorLabel {
        match self {
            Error::Config(e) => e.metric_label(),
            Error::Pg(e) => e.metric_label(),
            Error::LocalPg(e) => e.metric_label(),
            Error::Partitions(e) => e.metric_label(),
            Error::Lag(e) => e.metric_label(),
            Error::Service(e) => e.metric_label(),
            Error::Upgrade(e) => e.metric_label(),
            Error::Convert(e) => e.metric_label(),
            Error::Capacity(e) => e.metric_label(),
            Error::Demo(e) => e.metric_label(),
            Error::Check(e) => e.metric_label(),
        }
    }
}
