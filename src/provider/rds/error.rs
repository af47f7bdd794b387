//! What can go wrong talking to RDS, and how it reaches the saga.

use std::time::Duration;

use super::ApiError;
use crate::provider::ProviderError;

#[derive(Debug, thiserror::Error)]
pub enum RdsError {
    /// The API refused or failed a call; its own message and code, and the step.
    #[error("{step}: {op} on {id} failed: {source}")]
    Api {
        step: &'static str,
        op: &'static str,
        id: String,
        source: ApiError,
    },
    /// The instance reached a status it will not leave without an operator.
    #[error("{step}: {id} is {status}: {hint}")]
    Terminal {
        step: &'static str,
        id: String,
        status: String,
        hint: String,
    },
    #[error("{step}: {id} is still {last} after {waited:?} (upgrade.step_timeout); check it in the RDS console, then `pgsteward upgrade resume` or `abort`")]
    Timeout {
        step: &'static str,
        id: String,
        last: String,
        waited: Duration,
    },
    /// Refused on purpose: acting would touch something pgsteward did not make.
    #[error("{step}: {reason}")]
    Refused { step: &'static str, reason: String },
    #[error("cancelled")]
    Cancelled,
}

impl RdsError {
    pub(super) fn refused(step: &'static str, reason: impl Into<String>) -> RdsError {
        RdsError::Refused {
            step,
            reason: reason.into(),
        }
    }
}

impl From<RdsError> for ProviderError {
    fn from(e: RdsError) -> ProviderError {
        match e {
            RdsError::Cancelled => ProviderError::Cancelled,
            RdsError::Api { op, .. } => ProviderError::Api {
                op,
                detail: e.to_string(),
            },
            RdsError::Terminal {
                ref id,
                ref status,
                ref hint,
                step,
            } => ProviderError::WrongState {
                id: id.clone(),
                state: status.clone(),
                hint: format!("{hint} (step {step})"),
            },
            RdsError::Timeout { .. } => ProviderError::Api {
                op: "wait",
                detail: e.to_string(),
            },
            RdsError::Refused { .. } => ProviderError::Api {
                op: "refused",
                detail: e.to_string(),
            },
        }
    }
}
