//! The partition subsystem's errors: [`PartitionError`] for the pass and its
//! index part [`IndexError`], and [`TableError`] for one configured table
//! the catalog shows cannot be maintained. They wrap each other (an index session that
//! cannot connect), so they live together, below everything that returns them.

use tokio_postgres::error::SqlState;

use crate::pg::{server_message, QualifiedName};

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    #[error("cannot {what}: {message}")]
    Query { what: &'static str, message: String },
    #[error(transparent)]
    Index(Box<IndexError>),
    /// The upgrade guard holds DDL off this node (an upgrade moved the
    /// primary), or could not be read.
    #[error("cannot run partition DDL: {0}")]
    Guard(crate::upgrade::guard::GuardError),
    #[error(transparent)]
    Privileges(#[from] crate::privileges::PrivilegeError),
    #[error("cancelled")]
    Cancelled,
    /// An archive command without an `[archive]` section.
    #[error("the configuration has no [archive] section: add one with url = \"s3://bucket/prefix/\" (docs/partitions.md#archiving-to-object-storage)")]
    NoArchive,
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error("the primary runs PostgreSQL with server_version_num {version}: pgsteward needs PostgreSQL 13 or newer (tested on 13 to 18)")]
    Unsupported { version: i32 },
}

impl PartitionError {
    /// The failure kind for metrics: one per subsystem.
    pub fn metric_label(&self) -> crate::outcome::ErrorLabel {
        crate::outcome::ErrorLabel::Partitions
    }

    /// The operator must fix the configuration or the invocation (exit 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, PartitionError::NoArchive)
    }
}

impl PartitionError {
    pub(crate) fn query(what: &'static str, e: tokio_postgres::Error) -> Self {
        PartitionError::Query {
            what,
            message: server_message(&e),
        }
    }
}

/// Why one configured table cannot be maintained, as the catalog shows it:
/// a finding of the pass for that table, not a failure of the pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("table {0} does not exist; create it PARTITION BY RANGE on a timestamptz, timestamp or date column, or remove it from partitions.tables")]
    Missing(QualifiedName),
    #[error("{0} is not a partitioned table; convert it online with `pgsteward convert plan --table {0}`, or recreate it with PARTITION BY RANGE (column)")]
    NotPartitioned(QualifiedName),
    #[error("{0} is not partitioned BY RANGE; only range partitioning on one column is managed")]
    NotRange(QualifiedName),
    #[error("{0} is partitioned on more than one column or an expression; only one plain column is managed")]
    NotOneColumn(QualifiedName),
    #[error("{table} is partitioned on {column:?} of type {type_name}; only timestamptz, timestamp and date keys are managed")]
    KeyType {
        table: QualifiedName,
        column: String,
        type_name: String,
    },
    #[error("{table}: unexpected privileges in the catalog: {message}")]
    Grants {
        table: QualifiedName,
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("cannot open a session: {0}")]
    Connect(#[source] PartitionError),
    #[error("cannot {what}: {message}")]
    Query { what: &'static str, message: String },
    /// The server refused a statement (after retries, for lock races).
    #[error("{message}")]
    Sql {
        code: Option<SqlState>,
        message: String,
    },
    #[error("unique index {index} cannot be built on {partition}: {sample} Remove the duplicates; the next pass builds it again")]
    Duplicate {
        partition: QualifiedName,
        index: String,
        sample: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("cancelled")]
    Cancelled,
}

impl From<crate::pg::Cancelled> for IndexError {
    fn from(_: crate::pg::Cancelled) -> Self {
        IndexError::Cancelled
    }
}

impl IndexError {
    pub(crate) fn query(what: &'static str, e: tokio_postgres::Error) -> Self {
        IndexError::Query {
            what,
            message: server_message(&e),
        }
    }
    /// A lock the build waited for was not granted within its bound: the
    /// sessions holding the table are named (`blockers`, described).
    pub(super) fn locked(
        sql: &str,
        attempts: u32,
        e: &tokio_postgres::Error,
        blockers: &str,
    ) -> Self {
        IndexError::Sql {
            code: e.code().cloned(),
            message: format!(
                "{} after {attempts} attempts; {blockers}; the next run retries [{}]",
                server_message(e),
                sql.lines().next().unwrap_or_default()
            ),
        }
    }
    pub(super) fn sql(sql: &str, attempts: u32, e: &tokio_postgres::Error) -> Self {
        let hint = if crate::pg::is_transient_lock_error(e) {
            format!(" after {attempts} attempts; a long transaction holds a conflicting lock (see pg_locks), the next pass retries")
        } else {
            String::new()
        };
        IndexError::Sql {
            code: e.code().cloned(),
            message: format!(
                "{}{hint} [{}]",
                server_message(e),
                sql.lines().next().unwrap_or_default()
            ),
        }
    }
}
