//! The upgrade's one error type: every failure of a step, a command or the
//! saga's bookkeeping, and what it means for the exit code and metrics.

use std::time::Duration;

use super::record::Step;
use super::{guard, journal};
use crate::pooler::PoolerError;
use crate::provider::ProviderError;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error(transparent)]
    Pooler(#[from] PoolerError),
    #[error(transparent)]
    Guard(#[from] guard::GuardError),
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    #[error("prechecks failed:\n  {}", .0.join("\n  "))]
    PrecheckFailed(Vec<String>),
    #[error("step {step}: {detail}")]
    Step { step: Step, detail: String },
    #[error("{what} did not happen within {after:?} (upgrade.step_timeout)")]
    Timeout { what: String, after: Duration },
    #[error("the write pause exceeded upgrade.pause_timeout during {what}")]
    PauseTimeout { what: String },
    #[error(transparent)]
    Injected(#[from] crate::failpoint::FailpointError),
    /// An undo that failed: the roll back names it and goes on.
    #[error(transparent)]
    Undo(#[from] UndoError),
    #[error("cancelled; `pgsteward upgrade resume` continues from the current step")]
    Cancelled,
    #[error("upgrade {id} rolled back ({reason}); the old primary serves writes. `pgsteward upgrade resume` retries, `pgsteward upgrade abort` removes the new replica")]
    RolledBack { id: String, reason: String },
    #[error("upgrade {id}: the journal could not be written ({reason}); the write pause was undone without it: PgBouncer resumed, the old primary unfenced and serving writes. Free the disk and run `pgsteward upgrade resume` to record the roll back")]
    JournalFault { id: String, reason: String },
    #[error("upgrade {id}: the roll back went past what it could not undo and left: {}. Writes were resumed wherever PgBouncer answered (the new server was never promoted, so only the old primary can take them). {keeper}Fix the cause and run `pgsteward upgrade resume` to finish the roll back", .left.join("; "))]
    RollbackIncomplete {
        id: String,
        left: Vec<String>,
        /// What the pause keeper goes on doing, or "".
        keeper: String,
    },
    #[error("upgrade {id} failed after promote ({reason}); the new primary holds every commit. Fix the cause and run `pgsteward upgrade resume`")]
    NeedsResume { id: String, reason: String },
    #[error("database.primary {old} is no longer a writable primary: upgrade {id} moved the primary to {new}. Set database.primary (PGSTEWARD_DATABASE__PRIMARY) to it")]
    PrimaryMoved {
        old: String,
        id: String,
        new: String,
    },
    #[error("database.primary {0} is not a writable primary (in recovery or read-only) and no upgrade moved it; point database.primary at the primary")]
    NotPrimary(String),
    #[error("no upgrade found in {0} (upgrade.state_dir)")]
    NoUpgrade(String),
    /// A later step needs a fact an earlier one journals, and it is not there.
    #[error(
        "{journal}: {what} is not recorded; the journal was not written by a finished `{step}`"
    )]
    MissingFact {
        journal: std::path::PathBuf,
        what: &'static str,
        step: Step,
    },
}

/// An undo's failure, as the roll back reports it ("what was not undone").
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct UndoError(pub String);

impl UpgradeError {
    /// The failure kind for metrics: one per subsystem.
    pub fn metric_label(&self) -> crate::outcome::ErrorLabel {
        crate::outcome::ErrorLabel::Upgrade
    }
}

impl UpgradeError {
    /// Errors the operator fixes in the invocation or configuration (exit 2).
    pub fn is_usage(&self) -> bool {
        match self {
            UpgradeError::Usage(_) => true,
            UpgradeError::Provider(p) => p.is_usage(),
            _ => false,
        }
    }
}

/// A query error on `target`, as the steps report it.
pub(crate) fn q(target: &crate::config::ConnString, e: tokio_postgres::Error) -> UpgradeError {
    UpgradeError::Pg(crate::pg::PgError::Query {
        target: target.to_string(),
        source: e,
    })
}
