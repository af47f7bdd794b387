//! The partition subsystem's error.

use crate::pg::server_message;

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    #[error("cannot {what}: {message}")]
    Query { what: &'static str, message: String },
    #[error(transparent)]
    Index(Box<super::indexes::IndexError>),
    #[error("cancelled")]
    Cancelled,
    #[error("the primary runs PostgreSQL with server_version_num {version}: pgsteward needs PostgreSQL 13 or newer (tested on 13 to 18)")]
    Unsupported { version: i32 },
}

impl PartitionError {
    pub(crate) fn query(what: &'static str, e: tokio_postgres::Error) -> Self {
        PartitionError::Query {
            what,
            message: server_message(&e),
        }
    }
}
