//! Prometheus metrics, all named `pgsteward_*`. Labels are bounded: nodes and
//! tables come from the configuration, jobs and error kinds are fixed sets.
//!
//! A value that cannot be known (an unreachable replica's lag) is removed
//! rather than left stale or set to 0; `pgsteward_replica_up` says why.

pub mod capacity;
pub mod pooler;
pub mod upgrade;

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{Atomic, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::lag::{LagReport, ReplicaState};
use crate::outcome::ErrorLabel;
use crate::partitions::PassReport;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    /// `user@host:port/db` from the configuration, no password.
    pub replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
    /// `primary` or `replica`, as configured.
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub job: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobErrorLabels {
    pub job: &'static str,
    /// A fixed kind: each subsystem error's `metric_label()`.
    pub error: ErrorLabel,
}

impl EncodeLabelValue for ErrorLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Sets the series to `value`, or removes it when the value is not known
/// (the module doc: removed rather than left stale or set to 0).
fn set_or_remove<L, N, A>(family: &Family<L, Gauge<N, A>>, labels: &L, value: Option<N>)
where
    L: Clone + std::hash::Hash + Eq,
    A: Atomic<N> + Default,
{
    match value {
        Some(v) => {
            family.get_or_create(labels).set(v);
        }
        None => {
            family.remove(labels);
        }
    }
}

/// Every metric the process exports. Cheap to share (`Arc<Metrics>`); all
/// updates are atomic.
pub struct Metrics {
    registry: Registry,
    pub replica_lag_bytes: Family<ReplicaLabels, Gauge>,
    pub replica_lag_seconds: Family<ReplicaLabels, FloatGauge>,
    pub replica_up: Family<ReplicaLabels, Gauge>,
    pub replica_streaming: Family<ReplicaLabels, Gauge>,
    pub replica_replay_paused: Family<ReplicaLabels, Gauge>,
    pub replica_writable: Family<ReplicaLabels, Gauge>,
    pub primary_up: Gauge,
    pub connections: Family<NodeLabels, Gauge>,
    pub max_connections: Family<NodeLabels, Gauge>,
    pub partitions_future: Family<TableLabels, Gauge>,
    pub partitions_holes: Family<TableLabels, Gauge>,
    pub partitions_default_rows: Family<TableLabels, Gauge>,
    pub partitions_created: Family<TableLabels, Counter>,
    pub partitions_retired: Family<TableLabels, Counter>,
    pub partitions_rows_moved: Family<TableLabels, Counter>,
    pub partitions_index_drift: Family<TableLabels, Gauge>,
    pub archive_bytes: Family<TableLabels, Counter>,
    pub archive_failures: Family<TableLabels, Counter>,
    pub archive_held_back: Family<TableLabels, Gauge>,
    pub archive_stuck_seconds: Family<TableLabels, FloatGauge>,
    pub partitions_access_drift: Family<TableLabels, Gauge>,
    pub job_runs: Family<JobLabels, Counter>,
    pub job_failures: Family<JobErrorLabels, Counter>,
    pub job_duration: Family<JobLabels, Histogram>,
    pub job_last_success: Family<JobLabels, FloatGauge>,
    pub leader: Gauge,
    pub upgrade: upgrade::UpgradeMetrics,
    pub capacity: capacity::CapacityMetrics,
    pub pooler: pooler::PoolerMetrics,
}

fn duration_histogram() -> Histogram {
    // 10ms .. ~5.5 min: a lag check is milliseconds, a pass with DEFAULT-row moves minutes.
    Histogram::new(exponential_buckets(0.01, 4.0, 9))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pgsteward");
        let m = Metrics {
            registry: Registry::default(),
            replica_lag_bytes: Family::default(),
            replica_lag_seconds: Family::default(),
            replica_up: Family::default(),
            replica_streaming: Family::default(),
            replica_replay_paused: Family::default(),
            replica_writable: Family::default(),
            primary_up: Gauge::default(),
            connections: Family::default(),
            max_connections: Family::default(),
            partitions_future: Family::default(),
            partitions_holes: Family::default(),
            partitions_default_rows: Family::default(),
            partitions_created: Family::default(),
            partitions_retired: Family::default(),
            partitions_rows_moved: Family::default(),
            partitions_index_drift: Family::default(),
            archive_bytes: Family::default(),
            archive_failures: Family::default(),
            archive_held_back: Family::default(),
            archive_stuck_seconds: Family::default(),
            partitions_access_drift: Family::default(),
            job_runs: Family::default(),
            job_failures: Family::default(),
            job_duration: Family::new_with_constructor(duration_histogram),
            job_last_success: Family::default(),
            leader: Gauge::default(),
            upgrade: upgrade::UpgradeMetrics::default(),
            capacity: capacity::CapacityMetrics::default(),
            pooler: pooler::PoolerMetrics::default(),
        };
        registry.register_with_unit(
            "replica_lag",
            "WAL bytes the replica has not replayed: primary's current LSN minus replay LSN",
            Unit::Bytes,
            m.replica_lag_bytes.clone(),
        );
        registry.register_with_unit(
            "replica_lag",
            "How far behind the replica's replay is in time; 0 when it has replayed all WAL",
            Unit::Seconds,
            m.replica_lag_seconds.clone(),
        );
        registry.register(
            "replica_up",
            "1 when the replica answered the last lag check",
            m.replica_up.clone(),
        );
        registry.register(
            "replica_streaming",
            "1 when the replica's WAL receiver is streaming from the primary",
            m.replica_streaming.clone(),
        );
        registry.register(
            "replica_replay_paused",
            "1 when WAL replay is paused on the replica (pg_wal_replay_pause)",
            m.replica_replay_paused.clone(),
        );
        registry.register(
            "replica_writable",
            "1 when a configured replica is NOT in recovery: a second writable node",
            m.replica_writable.clone(),
        );
        registry.register(
            "primary_up",
            "1 when the primary answered the last lag check as a primary",
            m.primary_up.clone(),
        );
        registry.register(
            "connections",
            "Client backends connected to the node",
            m.connections.clone(),
        );
        registry.register(
            "max_connections",
            "The node's max_connections setting",
            m.max_connections.clone(),
        );
        registry.register(
            "partitions_future",
            "Whole periods covered by partitions after the current one, per managed table",
            m.partitions_future.clone(),
        );
        registry.register(
            "partitions_holes",
            "Uncovered parts of the current period and the premake periods after it, per managed table",
            m.partitions_holes.clone(),
        );
        registry.register(
            "partitions_default_rows",
            "Rows in the managed table's DEFAULT partition after the last pass",
            m.partitions_default_rows.clone(),
        );
        registry.register(
            "partitions_created",
            "Partitions this instance created",
            m.partitions_created.clone(),
        );
        registry.register(
            "partitions_retired",
            "Partitions this instance detached or dropped under retention",
            m.partitions_retired.clone(),
        );
        registry.register(
            "partitions_default_rows_moved",
            "Rows this instance moved out of DEFAULT partitions into new partitions",
            m.partitions_rows_moved.clone(),
        );
        registry.register(
            "partitions_index_drift",
            "Problems with the parent's indexes after the last pass: declared but missing, invalid, missing or unattached on partitions",
            m.partitions_index_drift.clone(),
        );
        registry.register_with_unit(
            "partitions_archived",
            "Bytes of retired partitions this instance uploaded to object storage",
            Unit::Bytes,
            m.archive_bytes.clone(),
        );
        registry.register(
            "partitions_archive_failures",
            "Retirement steps to object storage that failed (upload, verification, drop)",
            m.archive_failures.clone(),
        );
        registry.register(
            "partitions_held_back",
            "Partitions past retention still in the database for lack of a verified archive, after the last pass",
            m.archive_held_back.clone(),
        );
        registry.register_with_unit(
            "partitions_retirement_stalled",
            "Time since the oldest unfinished retirement of the table last changed state (0: none)",
            Unit::Seconds,
            m.archive_stuck_seconds.clone(),
        );
        registry.register(
            "partitions_access_drift",
            "Partitions whose owner, privileges, row-level security or replica identity differ from the parent's and that the last pass could not repair",
            m.partitions_access_drift.clone(),
        );
        registry.register("job_runs", "Scheduled job runs started", m.job_runs.clone());
        registry.register(
            "job_failures",
            "Scheduled job runs that failed, by error kind",
            m.job_failures.clone(),
        );
        registry.register_with_unit(
            "job_duration",
            "Duration of scheduled job runs",
            Unit::Seconds,
            m.job_duration.clone(),
        );
        registry.register_with_unit(
            "job_last_success_timestamp",
            "Unix time of the job's last successful run",
            Unit::Seconds,
            m.job_last_success.clone(),
        );
        registry.register(
            "leader",
            "1 on the instance holding the leader advisory lock (runs DDL and upgrades), 0 elsewhere",
            m.leader.clone(),
        );
        m.upgrade.register(&mut registry);
        m.capacity.register(&mut registry);
        m.pooler.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// The Prometheus/OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Sets the upgrade gauges from what the primary's guard row says.
    pub fn set_upgrade_step(&self, reading: upgrade::UpgradeStepReading) {
        self.upgrade.set(reading);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// A job run ended: count it, time it, and stamp success or count the failure.
    pub fn record_job(&self, job: &'static str, seconds: f64, error: Option<ErrorLabel>) {
        let l = JobLabels { job };
        self.job_runs.get_or_create(&l).inc();
        self.job_duration.get_or_create(&l).observe(seconds);
        match error {
            None => {
                let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
                self.job_last_success.get_or_create(&l).set(now);
            }
            Some(error) => {
                self.job_failures
                    .get_or_create(&JobErrorLabels { job, error })
                    .inc();
            }
        }
    }

    pub fn record_lag(&self, report: &LagReport) {
        let p = &report.primary;
        self.primary_up.set(i64::from(p.healthy()));
        self.record_connections(
            NodeLabels {
                node: p.node.clone(),
                role: "primary",
            },
            p.observation
                .as_ref()
                .map(|o| (o.connections, o.max_connections)),
        );
        for r in &report.replicas {
            let l = ReplicaLabels {
                replica: r.replica.clone(),
            };
            let v = &r.verdict;
            let up = v.state != ReplicaState::Unreachable;
            self.replica_up.get_or_create(&l).set(i64::from(up));
            self.replica_streaming
                .get_or_create(&l)
                .set(i64::from(v.state == ReplicaState::Streaming));
            self.replica_writable
                .get_or_create(&l)
                .set(i64::from(v.state == ReplicaState::Writable));
            self.replica_replay_paused
                .get_or_create(&l)
                .set(i64::from(v.replay_paused));
            let bytes = v.bytes_behind.map(|b| i64::try_from(b).unwrap_or(i64::MAX));
            set_or_remove(&self.replica_lag_bytes, &l, bytes);
            set_or_remove(&self.replica_lag_seconds, &l, v.seconds_behind);
            self.record_connections(
                NodeLabels {
                    node: r.replica.clone(),
                    role: "replica",
                },
                r.observation
                    .as_ref()
                    .map(|o| (o.connections, o.max_connections)),
            );
        }
    }

    /// A node's connections and max_connections; both removed when the node
    /// was not read, rather than left stale.
    fn record_connections(&self, node: NodeLabels, counts: Option<(i64, i64)>) {
        set_or_remove(&self.connections, &node, counts.map(|c| c.0));
        set_or_remove(&self.max_connections, &node, counts.map(|c| c.1));
    }

    /// The primary could not be read at all (e.g. the check failed early).
    pub fn record_primary_down(&self) {
        self.primary_up.set(0);
    }

    pub fn record_partitions(&self, report: &PassReport) {
        if report.skipped.is_some() {
            return;
        }
        for t in &report.tables {
            let l = TableLabels {
                table: t.table.to_string(),
            };
            if t.created > 0 {
                self.partitions_created
                    .get_or_create(&l)
                    .inc_by(u64::from(t.created));
            }
            if t.retired > 0 {
                self.partitions_retired
                    .get_or_create(&l)
                    .inc_by(u64::from(t.retired));
            }
            if t.archive.bytes > 0 {
                self.archive_bytes.get_or_create(&l).inc_by(t.archive.bytes);
            }
            if t.archive.failures > 0 {
                self.archive_failures
                    .get_or_create(&l)
                    .inc_by(u64::from(t.archive.failures));
            }
            if t.skipped.is_none() {
                self.archive_held_back
                    .get_or_create(&l)
                    .set(i64::from(t.archive.held_back));
                self.archive_stuck_seconds
                    .get_or_create(&l)
                    .set(t.archive.oldest_idle_s.unwrap_or(0.0));
            }
            if t.rows_moved > 0 {
                self.partitions_rows_moved
                    .get_or_create(&l)
                    .inc_by(t.rows_moved);
            }
            if t.skipped.is_none() {
                self.partitions_access_drift
                    .get_or_create(&l)
                    .set(i64::from(t.access_problems));
            }
            // Holes are known after a failed pass too (from the catalog and
            // what the pass created); a skipped or unread table has none to report.
            if t.skipped.is_none() && (t.error.is_none() || !t.holes.is_empty()) {
                self.partitions_holes
                    .get_or_create(&l)
                    .set(i64::try_from(t.holes.len()).unwrap_or(i64::MAX));
            }
            // A table that failed or was left to another pass has no trustworthy coverage figure.
            if t.error.is_some() || t.skipped.is_some() {
                continue;
            }
            self.partitions_future
                .get_or_create(&l)
                .set(i64::from(t.future_partitions));
            self.partitions_default_rows
                .get_or_create(&l)
                .set(i64::try_from(t.default_rows).unwrap_or(i64::MAX));
        }
        for t in &report.indexes {
            // Left to another pass, or not read at all: no figure rather than a wrong one.
            if t.skipped.is_some() || (t.error.is_some() && t.drift.is_empty()) {
                continue;
            }
            self.partitions_index_drift
                .get_or_create(&TableLabels {
                    table: t.table.to_string(),
                })
                .set(t.drift.len() as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_drift_is_a_gauge_per_table() {
        let m = Metrics::new();
        let table = crate::pg::QualifiedName::new("public", "t");
        let report = PassReport {
            skipped: None,
            tables: Vec::new(),
            indexes: vec![crate::partitions::indexes::TableIndexReport {
                table,
                built: 0,
                attached: 0,
                reindexed: 0,
                dropped: 0,
                drift: vec![crate::partitions::indexes::Problem::DeclaredMissing {
                    index: "t_idx".into(),
                }],
                notes: Vec::new(),
                error: Some("duplicate".into()),
                skipped: None,
                statements: Vec::new(),
            }],
        };
        m.record_partitions(&report);
        let text = m.encode();
        assert!(
            text.contains("pgsteward_partitions_index_drift{table=\"public.t\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.record_job("lag", 0.02, None);
        m.record_job("partitions", 1.5, Some(ErrorLabel::Postgres));
        m.set_leader(true);
        m.set_upgrade_step(upgrade::UpgradeStepReading {
            position: 8,
            step: Some(("fence_old_primary", "pause_deadline")),
            in_write_pause: true,
        });
        let l = ReplicaLabels {
            replica: "steward@db:5432/app".into(),
        };
        m.replica_lag_bytes.get_or_create(&l).set(42);
        m.replica_lag_seconds.get_or_create(&l).set(1.5);
        let text = m.encode();
        for line in [
            "pgsteward_replica_lag_bytes{replica=\"steward@db:5432/app\"} 42",
            "pgsteward_replica_lag_seconds{replica=\"steward@db:5432/app\"} 1.5",
            "pgsteward_job_runs_total{job=\"lag\"} 1",
            "pgsteward_job_failures_total{job=\"partitions\",error=\"postgres\"} 1",
            "pgsteward_job_duration_seconds_count{job=\"partitions\"} 1",
            "pgsteward_leader 1",
            "pgsteward_upgrade_step 8",
            "pgsteward_upgrade_in_write_pause 1",
            "pgsteward_upgrade_step_info{step=\"fence_old_primary\",region=\"pause_deadline\"} 1",
            "# TYPE pgsteward_job_last_success_timestamp_seconds gauge",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .all(|l| l.starts_with("pgsteward_")),
            "{text}"
        );
    }

    #[test]
    fn partition_holes_are_counted_per_table_even_when_the_pass_failed() {
        use crate::partitions::TableReport;
        let m = Metrics::new();
        let name: crate::pg::QualifiedName = "public.events".parse().unwrap();
        let mut t = TableReport::new(&name);
        t.holes = vec!["a .. b".into(), "c .. d".into()];
        t.current_covered = false;
        t.error = Some("refused".into());
        m.record_partitions(&PassReport {
            skipped: None,
            tables: vec![t],
            indexes: Vec::new(),
        });
        let text = m.encode();
        assert!(
            text.contains("pgsteward_partitions_holes{table=\"public.events\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn archive_figures_per_table() {
        use crate::partitions::TableReport;
        let m = Metrics::new();
        let name: crate::pg::QualifiedName = "public.audit".parse().unwrap();
        let mut t = TableReport::new(&name);
        t.archive.bytes = 1000;
        t.archive.failures = 2;
        t.archive.held_back = 1;
        t.archive.oldest_idle_s = Some(90_000.0);
        m.record_partitions(&PassReport {
            skipped: None,
            tables: vec![t],
            indexes: vec![],
        });
        let text = m.encode();
        for line in [
            "pgsteward_partitions_archived_bytes_total{table=\"public.audit\"} 1000",
            "pgsteward_partitions_archive_failures_total{table=\"public.audit\"} 2",
            "pgsteward_partitions_held_back{table=\"public.audit\"} 1",
            "pgsteward_partitions_retirement_stalled_seconds{table=\"public.audit\"} 90000",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
