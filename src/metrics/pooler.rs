//! The `pgsteward_pgbouncer_*` metrics: every PgBouncer instance's pools, as
//! the scheduled `pgbouncer` job of `pgsteward run` reads them.
//!
//! Names follow prometheus-community's pgbouncer_exporter (`pgbouncer_up`,
//! `pgbouncer_pools_client_waiting_connections`, ...) with `pools_` dropped
//! and our prefix. Labels are bounded: `instance` is one per address the
//! configured admin endpoints resolve to (the pods behind a Service),
//! `database` at most [`crate::pooler::stats::MAX_DATABASES`] per instance.
//! Every run replaces every series: an instance that left its name, or a
//! database removed from `[databases]`, disappears.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::pooler::InstanceStats;

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub instance: String,
    pub database: String,
}

#[derive(Default)]
pub struct PoolerMetrics {
    pub up: Family<InstanceLabels, Gauge>,
    pub used_clients: Family<InstanceLabels, Gauge>,
    pub max_client_conn: Family<InstanceLabels, Gauge>,
    pub client_active: Family<PoolLabels, Gauge>,
    pub client_waiting: Family<PoolLabels, Gauge>,
    pub client_maxwait: Family<PoolLabels, FloatGauge>,
    pub server_active: Family<PoolLabels, Gauge>,
    pub server_idle: Family<PoolLabels, Gauge>,
    pub server_used: Family<PoolLabels, Gauge>,
    pub server_login: Family<PoolLabels, Gauge>,
    pub pool_size: Family<PoolLabels, Gauge>,
    pub reserve_pool: Family<PoolLabels, Gauge>,
    pub paused: Family<PoolLabels, Gauge>,
    pub transactions: Family<PoolLabels, Gauge>,
    pub client_wait_seconds: Family<PoolLabels, FloatGauge>,
}

impl PoolerMetrics {
    pub fn register(&self, r: &mut Registry) {
        let pools: [(&str, &str, &Family<PoolLabels, Gauge>); 9] = [
            (
                "pgbouncer_client_active_connections",
                "Client connections linked to a server connection or idle, per instance and database (SHOW POOLS cl_active)",
                &self.client_active,
            ),
            (
                "pgbouncer_client_waiting_connections",
                "Client connections waiting for a server connection (SHOW POOLS cl_waiting)",
                &self.client_waiting,
            ),
            (
                "pgbouncer_server_active_connections",
                "Server connections linked to a client (SHOW POOLS sv_active)",
                &self.server_active,
            ),
            (
                "pgbouncer_server_idle_connections",
                "Server connections idle and ready for a client (SHOW POOLS sv_idle)",
                &self.server_idle,
            ),
            (
                "pgbouncer_server_used_connections",
                "Server connections idle for more than server_check_delay (SHOW POOLS sv_used)",
                &self.server_used,
            ),
            (
                "pgbouncer_server_login_connections",
                "Server connections logging in (SHOW POOLS sv_login)",
                &self.server_login,
            ),
            (
                "pgbouncer_databases_pool_size",
                "The entry's pool size, per user (SHOW DATABASES pool_size)",
                &self.pool_size,
            ),
            (
                "pgbouncer_databases_reserve_pool",
                "The entry's reserve pool, per user (SHOW DATABASES reserve_pool)",
                &self.reserve_pool,
            ),
            (
                "pgbouncer_databases_paused",
                "1 while the entry is paused (SHOW DATABASES paused)",
                &self.paused,
            ),
        ];
        for (name, help, family) in pools {
            r.register(name, help, family.clone());
        }
        r.register(
            "pgbouncer_up",
            "1 when the instance's admin console answered the last run, 0 when it did not",
            self.up.clone(),
        );
        r.register(
            "pgbouncer_used_clients",
            "Client connections in use on the instance (SHOW LISTS used_clients)",
            self.used_clients.clone(),
        );
        r.register(
            "pgbouncer_config_max_client_connections",
            "The instance's max_client_conn (SHOW CONFIG)",
            self.max_client_conn.clone(),
        );
        r.register(
            "pgbouncer_client_maxwait_seconds",
            "How long the oldest waiting client has waited (SHOW POOLS maxwait, maxwait_us)",
            self.client_maxwait.clone(),
        );
        r.register(
            "pgbouncer_stats_sql_transactions_pooled",
            "Transactions pooled since the instance started (SHOW STATS total_xact_count); resets when it restarts",
            self.transactions.clone(),
        );
        r.register(
            "pgbouncer_stats_client_wait_seconds",
            "Time clients spent waiting for a server since the instance started (SHOW STATS total_wait_time)",
            self.client_wait_seconds.clone(),
        );
    }

    /// Replaces every series with the figures of one run.
    pub fn record(&self, instances: &[InstanceStats]) {
        self.clear();
        for s in instances {
            let inst = InstanceLabels {
                instance: s.instance.clone(),
            };
            self.up.get_or_create(&inst).set(i64::from(s.up));
            if !s.up {
                continue;
            }
            if let Some(n) = s.used_clients {
                self.used_clients.get_or_create(&inst).set(n);
            }
            if let Some(n) = s.max_client_conn {
                self.max_client_conn.get_or_create(&inst).set(n);
            }
            for p in &s.pools {
                let l = PoolLabels {
                    instance: s.instance.clone(),
                    database: p.database.clone(),
                };
                self.client_active.get_or_create(&l).set(p.cl_active);
                self.client_waiting.get_or_create(&l).set(p.cl_waiting);
                self.client_maxwait.get_or_create(&l).set(p.maxwait_seconds);
                self.server_active.get_or_create(&l).set(p.sv_active);
                self.server_idle.get_or_create(&l).set(p.sv_idle);
                self.server_used.get_or_create(&l).set(p.sv_used);
                self.server_login.get_or_create(&l).set(p.sv_login);
                self.paused.get_or_create(&l).set(i64::from(p.paused));
                if let Some(n) = p.pool_size {
                    self.pool_size.get_or_create(&l).set(n);
                }
                if let Some(n) = p.reserve_pool {
                    self.reserve_pool.get_or_create(&l).set(n);
                }
                if let Some(n) = p.xact_count {
                    self.transactions
                        .get_or_create(&l)
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                if let Some(us) = p.wait_time_us {
                    self.client_wait_seconds
                        .get_or_create(&l)
                        .set(us as f64 / 1e6);
                }
            }
        }
    }

    fn clear(&self) {
        self.up.clear();
        self.used_clients.clear();
        self.max_client_conn.clear();
        for f in [
            &self.client_active,
            &self.client_waiting,
            &self.server_active,
            &self.server_idle,
            &self.server_used,
            &self.server_login,
            &self.pool_size,
            &self.reserve_pool,
            &self.paused,
            &self.transactions,
        ] {
            f.clear();
        }
        self.client_maxwait.clear();
        self.client_wait_seconds.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pooler::PoolStats;

    #[test]
    fn a_run_replaces_every_series_and_a_down_instance_has_only_up() {
        let m = crate::metrics::Metrics::new();
        let pool = PoolStats {
            database: "app".into(),
            cl_active: 7,
            cl_waiting: 2,
            maxwait_seconds: 1.5,
            sv_active: 25,
            pool_size: Some(25),
            paused: true,
            ..PoolStats::default()
        };
        let up = InstanceStats {
            instance: "127.0.0.2:6432".into(),
            up: true,
            used_clients: Some(9),
            max_client_conn: Some(10000),
            pools: vec![pool],
            ..InstanceStats::default()
        };
        let down = InstanceStats {
            instance: "127.0.0.3:6432".into(),
            error: Some("refused".into()),
            ..InstanceStats::default()
        };
        m.pooler.record(&[up.clone(), down]);
        let text = m.encode();
        for line in [
            "pgsteward_pgbouncer_up{instance=\"127.0.0.2:6432\"} 1",
            "pgsteward_pgbouncer_up{instance=\"127.0.0.3:6432\"} 0",
            "pgsteward_pgbouncer_client_waiting_connections{instance=\"127.0.0.2:6432\",database=\"app\"} 2",
            "pgsteward_pgbouncer_client_maxwait_seconds{instance=\"127.0.0.2:6432\",database=\"app\"} 1.5",
            "pgsteward_pgbouncer_databases_paused{instance=\"127.0.0.2:6432\",database=\"app\"} 1",
            "pgsteward_pgbouncer_config_max_client_connections{instance=\"127.0.0.2:6432\"} 10000",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(
            !text.contains("client_waiting_connections{instance=\"127.0.0.3:6432\""),
            "{text}"
        );
        // The next run no longer lists 127.0.0.3: its series are gone.
        m.pooler.record(&[up]);
        assert!(!m.encode().contains("127.0.0.3"));
    }
}
