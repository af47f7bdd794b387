//! Shared fixtures of the pure unit tests.

pub use chrono::{DateTime, NaiveDate, TimeZone, Utc};

pub use super::model::*;
pub use crate::config::{Interval, RetentionMode, TableConfig};
pub use crate::pg::QualifiedName;
use chrono_tz::Tz;

pub fn d(y: i32, m: u32, dd: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, dd).unwrap()
}
pub fn utc(y: i32, m: u32, dd: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, dd, h, 0, 0).unwrap()
}
pub fn cfg(interval: Interval, premake: u32) -> TableConfig {
    TableConfig {
        table: "public.audit_log".parse().unwrap(),
        interval,
        premake,
        retention: None,
        retention_mode: RetentionMode::Detach,
        timezone: Tz::UTC,
        indexes: Vec::new(),
    }
}
pub fn state(kt: KeyType) -> TableState {
    TableState {
        table: QualifiedName::new("public", "audit_log"),
        oid: 1,
        key_column: "created_at".into(),
        key_type: kt,
        owner: "app".into(),
        grants: vec![],
        partitions: vec![],
        default: None,
        row_security: false,
        force_row_security: false,
        replica_identity: "d".into(),
        owner_can_create: true,
        access_drift: vec![],
    }
}
/// The state after executing `p` against `s`: what a second pass sees.
pub fn applied(mut s: TableState, p: &TablePlan) -> TableState {
    for a in &p.actions {
        match a {
            Action::Create {
                partition, range, ..
            } => s.partitions.push(ExistingPartition {
                name: partition.clone(),
                range: Some(*range),
                detach_pending: false,
                fk_referenced: false,
            }),
            Action::Retire { partition, .. } => s.partitions.retain(|e| &e.name != partition),
            Action::RepairAccess { partition, .. } => s
                .access_drift
                .retain(|d| QualifiedName::new(d.schema.clone(), d.name.clone()) != *partition),
            Action::DropDefaultCheck { .. } => {
                if let Some(d) = s.default.as_mut() {
                    d.pgsteward_checks.clear()
                }
            }
        }
    }
    s
}
pub fn created(p: &TablePlan) -> Vec<String> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::Create { partition, .. } => Some(partition.name.clone()),
            _ => None,
        })
        .collect()
}
