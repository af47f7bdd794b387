//! What a `DBInstanceStatus` means for a wait: go on, wait, or stop with
//! what the operator must do.

use super::Instance;
use crate::provider::ServerState;

/// How a `DBInstanceStatus` bears on a wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusClass {
    Available,
    /// Will change by itself: wait.
    Transitional,
    Deleting,
    /// Will not change without an operator; the hint says what to do.
    Terminal(&'static str),
}

/// Classifies a `DBInstanceStatus`. Unknown statuses wait: RDS adds
/// transitional statuses more often than terminal ones, and the step timeout
/// bounds the wait.
pub fn classify(status: &str) -> StatusClass {
    match status {
        "available" => StatusClass::Available,
        "deleting" | "deleted" => StatusClass::Deleting,
        "failed" => StatusClass::Terminal(
            "RDS could not create or run the instance; read its events (aws rds describe-events --source-type db-instance --source-identifier ID), then `pgsteward upgrade abort` deletes it",
        ),
        "insufficient-capacity" => StatusClass::Terminal(
            "RDS has no capacity for this instance class in the availability zone; abort and retry later or pick another class",
        ),
        "storage-full" => StatusClass::Terminal(
            "the instance ran out of storage; increase its allocated storage, then resume",
        ),
        "incompatible-parameters" => StatusClass::Terminal(
            "the parameter group does not fit the target class (memory-based settings?); fix the parameter group, then abort and start again",
        ),
        "incompatible-network" => StatusClass::Terminal(
            "RDS cannot place the instance in the subnet group (no free addresses or a removed subnet); fix the subnet group, then abort and start again",
        ),
        "incompatible-option-group" | "incompatible-restore" | "incompatible-credentials" => {
            StatusClass::Terminal(
                "RDS reports an incompatible configuration; read the instance's events, fix it, then abort and start again",
            )
        }
        "inaccessible-encryption-credentials" | "inaccessible-encryption-credentials-recoverable" => {
            StatusClass::Terminal(
                "RDS cannot use the instance's KMS key; restore access to the key (key policy, grants)",
            )
        }
        "stopped" | "stopping" => StatusClass::Terminal(
            "the instance is stopped; start it (aws rds start-db-instance), then resume",
        ),
        s if s.starts_with("incompatible-") => StatusClass::Terminal(
            "RDS reports an incompatible configuration; read the instance's events, fix it, then abort and start again",
        ),
        _ => StatusClass::Transitional,
    }
}

/// The provider's view of an instance's status.
pub fn replica_state(inst: &Instance) -> ServerState {
    match classify(&inst.status) {
        StatusClass::Available => ServerState::Available,
        StatusClass::Transitional => ServerState::Creating,
        StatusClass::Deleting => ServerState::Deleting,
        StatusClass::Terminal(hint) => ServerState::Failed(format!("{}: {hint}", inst.status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        for s in [
            "creating",
            "backing-up",
            "modifying",
            "rebooting",
            "renaming",
            "upgrading",
            "configuring-enhanced-monitoring",
            "starting",
        ] {
            assert_eq!(classify(s), StatusClass::Transitional, "{s}");
        }
        for s in [
            "failed",
            "incompatible-parameters",
            "incompatible-network",
            "incompatible-something-new",
            "insufficient-capacity",
            "storage-full",
            "stopped",
        ] {
            assert!(matches!(classify(s), StatusClass::Terminal(_)), "{s}");
        }
        assert_eq!(classify("available"), StatusClass::Available);
        assert_eq!(classify("deleting"), StatusClass::Deleting);
    }
}
