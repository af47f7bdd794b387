//! The top-level error: every subsystem's error converts into it, and it
//! decides the process exit code and the metric label.

use crate::config::ConfigError;
use crate::localpg::LocalPgError;
use crate::pg::PgError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
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
    Demo(#[from] crate::demo::DemoError),
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// 2 for anything the operator must fix in the invocation or the
    /// configuration; 1 for everything that failed while doing the work.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Usage(_) => 2,
            Error::Upgrade(e) if e.is_usage() => 2,
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
            | Error::Upgrade(crate::upgrade::UpgradeError::Pooler(
                crate::pooler::PoolerError::Pg(e),
            ))
            | Error::Upgrade(crate::upgrade::UpgradeError::Provider(ProviderError::Pg(e))) => {
                Some(e)
            }
            _ => None,
        }
    }

    /// A short, fixed label for metrics: bounded cardinality.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Usage(_) => "usage",
            Error::Pg(_) => "postgres",
            Error::LocalPg(_) => "local_server",
            Error::Partitions(_) => "partitions",
            Error::Lag(_) => "lag",
            Error::Service(_) => "service",
            Error::Upgrade(_) => "upgrade",
            Error::Demo(_) => "demo",
            Error::Other(_) => "other",
        }
    }
}
