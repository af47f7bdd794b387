//! [`ArchiveError`]: every failure of the archive subsystem names what it was
//! doing, the store (bucket, endpoint) and the fix. No variant carries a
//! credential: errors of the store are reduced to their code, HTTP status and
//! message before they are kept.

use crate::pg::server_message;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The store failed or refused a request.
    #[error("object store {store}: cannot {op} {key}: {cause}; {fix}")]
    Store {
        store: String,
        op: &'static str,
        key: String,
        cause: String,
        fix: String,
    },
    /// PostgreSQL failed while rows streamed.
    #[error("cannot {what}: {message}")]
    Pg { what: String, message: String },
    /// What was read back is not what was written.
    #[error("archive {key} does not verify: {what} is {found}, expected {expected}; the partition is kept and archived again")]
    Mismatch {
        key: String,
        what: &'static str,
        expected: String,
        found: String,
    },
    #[error("manifest {key}: {message}")]
    Manifest { key: String, message: String },
    /// A restore that would overwrite or clash with something.
    #[error("{0}")]
    Refused(String),
    #[error("cancelled")]
    Cancelled,
}

impl ArchiveError {
    pub(crate) fn pg(what: impl Into<String>, e: &tokio_postgres::Error) -> Self {
        ArchiveError::Pg {
            what: what.into(),
            message: server_message(e),
        }
    }

    /// The failure kind for metrics: one per subsystem.
    pub fn metric_label(&self) -> crate::outcome::ErrorLabel {
        crate::outcome::ErrorLabel::Partitions
    }

    /// True when the store (not PostgreSQL, not the data) failed: the
    /// partition is kept and the next pass retries.
    pub fn is_store(&self) -> bool {
        matches!(self, ArchiveError::Store { .. })
    }
}
