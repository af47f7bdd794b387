//! The capacity metrics. Labels are bounded: `resource` is a fixed set,
//! tables come from the configuration plus at most `capacity.large_table_count`
//! plain tables, sequences are the 20 most used, databases are the cluster's.
//!
//! `pgsteward_capacity_days_until` is the soonest date per resource: `+Inf`
//! when nothing runs out within the forecast window, absent when it cannot be
//! known (not enough history, unreadable), so alerts on `< N` neither fire on
//! nor hide a missing forecast (a separate alert watches for absence).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::capacity::report::{CapacityReport, State};

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SequenceLabels {
    pub sequence: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatabaseLabels {
    pub database: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorageLabels {
    /// `used`, `limit`, `allocated`, `max_allocated`.
    pub kind: &'static str,
}

/// The resources of `pgsteward_capacity_days_until`.
pub const RESOURCES: [&str; 9] = [
    "storage_full",
    "storage_autoscale",
    "rds_max_allocated",
    "xid_freeze_max_age",
    "xid_wraparound",
    "mxid_wraparound",
    "sequence_exhausted",
    "connections_exhausted",
    "partitions_exhausted",
];

/// Sequences exported, most used first.
const SEQUENCES_EXPORTED: usize = 20;

#[derive(Default)]
pub struct CapacityMetrics {
    pub days_until: Family<ResourceLabels, FloatGauge>,
    pub table_growth: Family<TableLabels, FloatGauge>,
    pub table_bytes: Family<TableLabels, FloatGauge>,
    pub sequence_used_ratio: Family<SequenceLabels, FloatGauge>,
    pub xid_age: Family<DatabaseLabels, Gauge>,
    pub storage_bytes: Family<StorageLabels, FloatGauge>,
}

impl CapacityMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "capacity_days_until",
            "Days until the resource runs out (soonest subject); +Inf when not within the forecast window, absent when unknown",
            self.days_until.clone(),
        );
        r.register(
            "capacity_table_growth_bytes_per_day",
            "Bytes the table grows by per day now (closed periods for partitioned tables, samples for plain ones)",
            self.table_growth.clone(),
        );
        r.register_with_unit(
            "capacity_table",
            "Table size: heap, indexes and TOAST, all partitions",
            Unit::Bytes,
            self.table_bytes.clone(),
        );
        r.register(
            "capacity_sequence_used_ratio",
            "Share of the sequence's values used, against the smaller of its maximum and its column type's",
            self.sequence_used_ratio.clone(),
        );
        r.register(
            "capacity_xid_age",
            "age(datfrozenxid) of the database",
            self.xid_age.clone(),
        );
        r.register_with_unit(
            "capacity_storage",
            "Storage: used, limit (volume or RDS maximum), allocated and max_allocated on RDS",
            Unit::Bytes,
            self.storage_bytes.clone(),
        );
    }

    /// Replaces every capacity series with the report's (subjects no longer
    /// reported disappear).
    pub fn record(&self, r: &CapacityReport) {
        self.days_until.clear();
        let soonest = |days: &mut dyn Iterator<Item = (Option<f64>, State)>| -> Option<f64> {
            let mut any_known = false;
            let mut min = f64::INFINITY;
            for (d, state) in days {
                if matches!(state, State::NotEnoughHistory | State::Unknown) && d.is_none() {
                    continue;
                }
                any_known = true;
                if let Some(d) = d {
                    min = min.min(d);
                }
            }
            any_known.then_some(min)
        };
        let s = &r.storage;
        let storage_known = !matches!(
            s.state,
            State::NotEnoughHistory | State::Unknown | State::NoLimit
        );
        let rds = s.rds.as_ref();
        let values: [(&str, Option<f64>); 9] = [
            (
                "storage_full",
                storage_known.then(|| s.days_until_full.unwrap_or(f64::INFINITY)),
            ),
            (
                "storage_autoscale",
                rds.filter(|_| storage_known)
                    .map(|d| d.days_until_autoscale.unwrap_or(f64::INFINITY)),
            ),
            (
                "rds_max_allocated",
                rds.filter(|d| storage_known && d.max_allocated_bytes.is_some())
                    .map(|d| d.days_until_max_allocated.unwrap_or(f64::INFINITY)),
            ),
            (
                "xid_freeze_max_age",
                soonest(&mut r.xid.iter().map(|x| (x.days_until_freeze_max_age, x.state))),
            ),
            (
                "xid_wraparound",
                soonest(&mut r.xid.iter().map(|x| (x.days_until_wraparound, x.state))),
            ),
            (
                "mxid_wraparound",
                soonest(
                    &mut r
                        .xid
                        .iter()
                        .filter(|x| x.mxids_per_day.is_some())
                        .map(|x| (x.mxid_days_until_wraparound, x.state)),
                ),
            ),
            (
                "sequence_exhausted",
                soonest(
                    &mut r
                        .sequences
                        .iter()
                        .map(|q| (q.days_until_exhausted, q.state)),
                ),
            ),
            (
                "connections_exhausted",
                soonest(&mut std::iter::once((
                    r.connections.days_until_exhausted,
                    r.connections.state,
                ))),
            ),
            (
                "partitions_exhausted",
                soonest(
                    &mut r
                        .partitions
                        .iter()
                        .map(|p| (Some(p.days_covered_ahead), p.state)),
                ),
            ),
        ];
        for (resource, v) in values {
            if let Some(v) = v {
                self.days_until
                    .get_or_create(&ResourceLabels { resource })
                    .set(v);
            }
        }
        self.table_growth.clear();
        self.table_bytes.clear();
        for t in &r.tables {
            let l = TableLabels {
                table: t.table.clone(),
            };
            self.table_bytes.get_or_create(&l).set(t.bytes);
            if let Some(g) = t.growth_bytes_per_day {
                self.table_growth.get_or_create(&l).set(g);
            }
        }
        self.sequence_used_ratio.clear();
        let mut seqs: Vec<_> = r
            .sequences
            .iter()
            .filter(|q| q.used_ratio.is_some())
            .collect();
        seqs.sort_by(|a, b| {
            b.used_ratio
                .unwrap_or(0.0)
                .total_cmp(&a.used_ratio.unwrap_or(0.0))
        });
        for q in seqs.into_iter().take(SEQUENCES_EXPORTED) {
            self.sequence_used_ratio
                .get_or_create(&SequenceLabels {
                    sequence: q.sequence.clone(),
                })
                .set(q.used_ratio.unwrap_or(0.0));
        }
        self.xid_age.clear();
        for x in &r.xid {
            self.xid_age
                .get_or_create(&DatabaseLabels {
                    database: x.database.clone(),
                })
                .set(x.age);
        }
        self.storage_bytes.clear();
        let put = |kind, v: Option<f64>| {
            if let Some(v) = v {
                self.storage_bytes
                    .get_or_create(&StorageLabels { kind })
                    .set(v);
            }
        };
        put("used", s.used_bytes);
        put("limit", s.limit_bytes);
        put("allocated", rds.map(|d| d.allocated_bytes));
        put("max_allocated", rds.and_then(|d| d.max_allocated_bytes));
    }
}
