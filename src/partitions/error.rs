//! The partition subsystem's error.

use crate::pg::server_message;

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    #[error("cannot {what}: {message}")]
    Query { what: &'static str, message: String },
    #[error("cancelled")]
    Cancelled,
}

impl PartitionError {
    pub(crate) fn query(what: &'static str, e: tokio_postgres::Error) -> Self {
        PartitionError::Query {
            what,
            message: server_message(&e),
        }
    }
}
