//! What every step of a table's work runs with ([`Exec`]: the session, the
//! cluster, the token, the DDL gate) and how a step fails ([`StepError`]).
//! Below `apply` (the pass), `apply_run` (one statement), `attach`,
//! `guards` and `retire`, which all take them.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::error::{PartitionError, TableError};
use crate::config::Cluster;
use crate::pg::{server_message, Cancelled, QualifiedName};
use crate::schema::published::Once as Published;

/// Why a step failed; its text becomes the table's error.
#[derive(Debug, thiserror::Error)]
pub(super) enum StepError {
    #[error("cancelled")]
    Cancelled,
    /// The server refused a statement (after retries, for lock races).
    #[error("{message}")]
    Sql { code: SqlState, message: String },
    /// A statement failed without a server error (the connection broke).
    #[error("{}", server_message(.0))]
    Client(tokio_postgres::Error),
    /// Reading the table's catalog again, under its lock, failed.
    #[error(transparent)]
    Reread(PartitionError),
    /// The table, read again, can no longer be maintained.
    #[error(transparent)]
    Table(TableError),
    #[error("table vanished from the catalog")]
    Vanished,
    #[error("cannot look up {child}: {}", server_message(.source))]
    LookUp {
        child: QualifiedName,
        source: tokio_postgres::Error,
    },
    #[error("{0} already exists and was not made by pgsteward; rename or drop it so the period can be created")]
    NotOurs(QualifiedName),
    #[error("{default} received {moved} rows of {child}'s range since the probe, more than partitions.default_move_batch = {batch}; nothing moved, the next pass retries")]
    RowsArrived {
        default: QualifiedName,
        child: QualifiedName,
        moved: u64,
        batch: u32,
    },
    /// A catalog read about `table` failed: `what` says what, ending in a
    /// preposition ("the triggers of").
    #[error("cannot read {what} {table}: {}", server_message(.source))]
    Read {
        what: &'static str,
        table: QualifiedName,
        source: tokio_postgres::Error,
    },
    /// A partition the pass will not make as things are (data would move
    /// that must not, or past the configured bounds); the table's other
    /// actions still run.
    #[error("{0}")]
    Refused(String),
    /// Hot standby queries hold what the step's replayed lock needs
    /// (`partitions.standby_lock_wait`).
    #[error("{0}")]
    StandbyBusy(super::standby::Busy),
    /// Partitions were refused, and maybe a later step failed too: all of it
    /// is the table's error.
    #[error("{}", refused_text(.refused, .then.as_deref()))]
    SomeRefused {
        refused: Vec<String>,
        then: Option<Box<StepError>>,
    },
}

fn refused_text(refused: &[String], then: Option<&StepError>) -> String {
    let mut all = refused.to_vec();
    all.extend(then.map(StepError::to_string));
    all.join("; ")
}

impl From<Cancelled> for StepError {
    fn from(_: Cancelled) -> Self {
        StepError::Cancelled
    }
}

impl StepError {
    pub(super) fn is(&self, code: &SqlState) -> bool {
        matches!(self, StepError::Sql { code: c, .. } if c == code)
    }
    /// A lost lock race (lock_timeout, deadlock): worth another attempt.
    pub(super) fn is_lock_race(&self) -> bool {
        matches!(self, StepError::Sql { code, .. } if crate::pg::retry::is_transient(code))
    }
    pub(super) fn text(&self) -> String {
        self.to_string()
    }
}

impl StepError {
    /// The statement (its first line) appended to a server error.
    pub(super) fn context(self, what: &str) -> StepError {
        match self {
            StepError::Sql { code, message } => StepError::Sql {
                code,
                message: format!("{message} [{what}]"),
            },
            other => other,
        }
    }
}

/// What a statement batch returned: rows affected by the last command, and
/// the first row of the last result (as text) if it had one.
pub(super) struct Done {
    pub(super) count: u64,
    pub(super) row: Vec<Option<String>>,
}

/// Attempts of a clean-up statement that must run even after cancellation.
pub(super) const UNCANCELLABLE_ATTEMPTS: u32 = 5;
pub(super) struct Exec<'a> {
    pub(super) client: &'a Client,
    pub(super) cfg: &'a Cluster,
    pub(super) cancel: &'a CancellationToken,
    pub(super) current_user: &'a str,
    /// This session's backend pid, for naming who blocks it.
    pub(super) pid: i32,
    /// Asked before each table's DDL and each retirement step.
    pub(super) gate: &'a tokio::sync::Mutex<crate::upgrade::DdlGate>,
    /// Asked before the first write to `pgsteward.retirements`.
    pub(super) published: &'a Published,
}
