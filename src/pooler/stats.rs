//! The pools of every instance as its admin console reports them (SHOW
//! POOLS, DATABASES, LISTS, STATS and `max_client_conn`), for the
//! `pgsteward_pgbouncer_*` metrics and the pre-pause health gate.
//!
//! Reading is effects (`Poolers::stats`); assembling the rows into figures
//! and judging saturation are pure (`assemble`, `saturation`), tested
//! without a server. Figures are per database, summed over its users, so
//! the labels stay bounded by the `[databases]` entries (at most
//! [`MAX_DATABASES`] per instance).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::{simple, sql, Endpoint, PoolerError, Poolers, Row};

/// At most this many databases per instance are reported (an auto-database
/// `*` entry makes one per database clients name: the labels stay bounded).
pub const MAX_DATABASES: usize = 64;
/// Client connections above this share of `max_client_conn` saturate an instance.
pub const CLIENT_CONN_RATIO: f64 = 0.9;

/// One database's pools on one instance, summed over users.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PoolStats {
    pub database: String,
    pub cl_active: i64,
    pub cl_waiting: i64,
    /// The longest a client of this database has waited for a server, seconds.
    pub maxwait_seconds: f64,
    pub sv_active: i64,
    pub sv_idle: i64,
    pub sv_used: i64,
    pub sv_login: i64,
    /// The entry's pool size (SHOW DATABASES), per user.
    pub pool_size: Option<i64>,
    pub reserve_pool: Option<i64>,
    pub paused: bool,
    /// PgBouncer's counters since it started (SHOW STATS).
    pub xact_count: Option<u64>,
    pub query_count: Option<u64>,
    pub wait_time_us: Option<u64>,
}

/// One instance: up or why not, its client connections, its pools.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct InstanceStats {
    /// The instance label (`ip:port`).
    pub instance: String,
    pub up: bool,
    pub error: Option<String>,
    /// Client connections in use (SHOW LISTS `used_clients`).
    pub used_clients: Option<i64>,
    pub max_client_conn: Option<i64>,
    pub pools: Vec<PoolStats>,
}

/// A simple-protocol row as column → text.
type Fields = HashMap<String, String>;

impl Row {
    fn fields(&self) -> Fields {
        self.0
            .columns()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    c.name().to_string(),
                    self.0.get(i).unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

fn int(f: &Fields, key: &str) -> i64 {
    f.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn opt_int(f: &Fields, key: &str) -> Option<i64> {
    f.get(key).and_then(|v| v.parse().ok())
}

/// Pure: one instance's figures from its console's answers. `pools`: SHOW
/// POOLS; `databases`: SHOW DATABASES; `lists`: SHOW LISTS; `stats`: SHOW
/// STATS; `config`: SHOW CONFIG. The admin console's own `pgbouncer`
/// database is left out.
pub fn assemble(
    instance: &str,
    pools: &[Fields],
    databases: &[Fields],
    lists: &[Fields],
    stats: &[Fields],
    config: &[Fields],
) -> InstanceStats {
    let mut by_db: BTreeMap<String, PoolStats> = BTreeMap::new();
    let name_of = |f: &Fields, key: &str| f.get(key).cloned().unwrap_or_default();
    for d in databases {
        let name = name_of(d, "name");
        if name == "pgbouncer" || name.is_empty() {
            continue;
        }
        let p = by_db.entry(name.clone()).or_default();
        p.database = name;
        p.pool_size = opt_int(d, "pool_size");
        p.reserve_pool = opt_int(d, "reserve_pool").or_else(|| opt_int(d, "reserve_pool_size"));
        p.paused = d.get("paused").is_some_and(|v| v == "1");
    }
    for r in pools {
        let name = name_of(r, "database");
        if name == "pgbouncer" || name.is_empty() {
            continue;
        }
        let p = by_db.entry(name.clone()).or_default();
        p.database = name;
        p.cl_active += int(r, "cl_active");
        p.cl_waiting += int(r, "cl_waiting");
        p.sv_active += int(r, "sv_active");
        p.sv_idle += int(r, "sv_idle");
        p.sv_used += int(r, "sv_used");
        p.sv_login += int(r, "sv_login");
        let wait = int(r, "maxwait") as f64 + int(r, "maxwait_us") as f64 / 1e6;
        p.maxwait_seconds = p.maxwait_seconds.max(wait);
    }
    for r in stats {
        let name = name_of(r, "database");
        if let Some(p) = by_db.get_mut(&name) {
            let u = |k: &str| r.get(k).and_then(|v| v.parse::<u64>().ok());
            p.xact_count = u("total_xact_count");
            p.query_count = u("total_query_count");
            p.wait_time_us = u("total_wait_time");
        }
    }
    let used_clients = lists
        .iter()
        .find(|l| l.get("list").is_some_and(|n| n == "used_clients"))
        .and_then(|l| opt_int(l, "items"));
    let max_client_conn = config
        .iter()
        .find(|c| c.get("key").is_some_and(|k| k == "max_client_conn"))
        .and_then(|c| opt_int(c, "value"));
    let mut pools: Vec<PoolStats> = by_db.into_values().collect();
    if pools.len() > MAX_DATABASES {
        // The busiest first: those are the ones an operator must see.
        pools.sort_by_key(|p| std::cmp::Reverse(p.cl_active + p.cl_waiting));
        pools.truncate(MAX_DATABASES);
        pools.sort_by(|a, b| a.database.cmp(&b.database));
    }
    InstanceStats {
        instance: instance.to_string(),
        up: true,
        error: None,
        used_clients,
        max_client_conn,
        pools,
    }
}

/// When a pooler counts as saturated: then a pause turns into client timeouts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateLimits {
    /// More clients waiting than this on one database.
    pub max_waiting_clients: u64,
    /// A client waiting at least this long.
    pub max_client_wait: Duration,
}

impl GateLimits {
    /// `cutover.max_waiting_clients` and `cutover.max_client_wait`.
    pub fn from_config(cutover: &crate::config::CutoverConfig) -> GateLimits {
        GateLimits {
            max_waiting_clients: cutover.max_waiting_clients,
            max_client_wait: cutover.max_client_wait.0,
        }
    }
}

/// Pure: why the pause must not start, one line per finding with the
/// figures; empty when every instance may be paused. Only the databases in
/// `cut_over` (per instance label; all when missing) count: the others are
/// not paused.
pub fn saturation(
    stats: &[InstanceStats],
    cut_over: &HashMap<String, Vec<String>>,
    limits: &GateLimits,
) -> Vec<String> {
    let mut out = Vec::new();
    for s in stats {
        if !s.up {
            out.push(format!(
                "{} does not answer ({}): its pause could not be confirmed",
                s.instance,
                s.error.as_deref().unwrap_or("no answer")
            ));
            continue;
        }
        if let (Some(used), Some(max)) = (s.used_clients, s.max_client_conn) {
            if max > 0 && used as f64 > CLIENT_CONN_RATIO * max as f64 {
                out.push(format!(
                    "{}: {used} client connections of max_client_conn {max} (over {:.0} %): clients that connect during the pause would be refused",
                    s.instance,
                    CLIENT_CONN_RATIO * 100.0
                ));
            }
        }
        let dbs = cut_over.get(&s.instance);
        for p in &s.pools {
            // Not cut over; or paused already (its clients wait for the
            // RESUME, not for a server: a PAUSE of this upgrade's earlier
            // run, or another's, which the pause itself then refuses).
            if dbs.is_some_and(|d| !d.contains(&p.database)) || p.paused {
                continue;
            }
            let long = p.maxwait_seconds >= limits.max_client_wait.as_secs_f64();
            if p.cl_waiting as u64 > limits.max_waiting_clients || (p.cl_waiting > 0 && long) {
                out.push(format!(
                    "{} database {}: {} clients waiting, the longest for {:.1} s, {} server connections active of pool_size {} \
                     (limits: cutover.max_waiting_clients = {}, cutover.max_client_wait = {:?})",
                    s.instance,
                    p.database,
                    p.cl_waiting,
                    p.maxwait_seconds,
                    p.sv_active,
                    p.pool_size.map_or("?".to_string(), |n| n.to_string()),
                    limits.max_waiting_clients,
                    limits.max_client_wait
                ));
            }
        }
    }
    out
}

/// Reads one instance within `limit` (its control session, opened when needed).
async fn read_one(e: &mut Endpoint, connect_timeout: Duration, limit: Duration) -> InstanceStats {
    let (name, admin) = (e.name.clone(), e.admin.clone());
    let read = async {
        if e.ctl_conn.as_ref().map_or(true, |c| c.is_closed()) {
            e.ctl_conn = Some(super::open(&name, &admin, connect_timeout.min(limit)).await?);
        }
        let c = e.ctl_conn.as_ref().ok_or(PoolerError::NotConfigured)?;
        let mut answers = Vec::new();
        for cmd in [
            sql::SHOW_POOLS,
            sql::SHOW_DATABASES,
            sql::SHOW_LISTS,
            sql::SHOW_STATS,
            sql::SHOW_CONFIG,
        ] {
            let rows = simple(c, &name, cmd, limit).await?;
            answers.push(rows.iter().map(Row::fields).collect::<Vec<_>>());
        }
        Ok::<_, PoolerError>(answers)
    };
    match tokio::time::timeout(limit, read).await {
        Ok(Ok(a)) => assemble(&e.instance, &a[0], &a[1], &a[2], &a[3], &a[4]),
        failed => {
            // A hung console: the next read opens a fresh session.
            e.ctl_conn = None;
            let error = match failed {
                Ok(Err(err)) => err.to_string(),
                _ => format!("no answer within {limit:?}"),
            };
            InstanceStats {
                instance: e.instance.clone(),
                up: false,
                error: Some(error),
                ..InstanceStats::default()
            }
        }
    }
}

impl Poolers {
    /// Every instance's figures, each read on its own time (a hung one is
    /// reported down after its bound and holds up no other). Membership is
    /// what the last resolution found.
    pub async fn stats(&mut self) -> Result<Vec<InstanceStats>, PoolerError> {
        self.ensure_members().await?;
        let (connect_timeout, limit) = (self.connect_timeout, self.limit());
        let runs = self
            .endpoints
            .iter_mut()
            .map(|e| read_one(e, connect_timeout, limit));
        Ok(futures::future::join_all(runs).await)
    }

    /// The pre-pause health gate: every instance answers and none is
    /// saturated on a database the pause covers, or the error with the
    /// figures. Returns the figures read.
    pub async fn health_gate(
        &mut self,
        limits: &GateLimits,
    ) -> Result<Vec<InstanceStats>, PoolerError> {
        self.discover().await?;
        let stats = self.stats().await?;
        let cut_over: HashMap<String, Vec<String>> = self
            .endpoints
            .iter()
            .map(|e| (e.instance.clone(), e.dbs.clone()))
            .collect();
        let found = saturation(&stats, &cut_over, limits);
        if found.is_empty() {
            Ok(stats)
        } else {
            Err(PoolerError::Saturated(found))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(header: &[&str], data: &[&[&str]]) -> Vec<Fields> {
        data.iter()
            .map(|r| {
                header
                    .iter()
                    .zip(r.iter())
                    .map(|(h, v)| (h.to_string(), v.to_string()))
                    .collect()
            })
            .collect()
    }

    fn sample() -> InstanceStats {
        let pools = rows(
            &[
                "database",
                "user",
                "cl_active",
                "cl_waiting",
                "sv_active",
                "sv_idle",
                "sv_used",
                "sv_login",
                "maxwait",
                "maxwait_us",
            ],
            &[
                &["app", "app", "20", "3", "25", "0", "0", "0", "1", "500000"],
                &["app", "batch", "5", "1", "5", "2", "1", "0", "0", "20000"],
                &["batch", "app", "1", "0", "0", "4", "0", "0", "0", "0"],
                &[
                    "pgbouncer",
                    "pgbouncer",
                    "1",
                    "0",
                    "0",
                    "0",
                    "0",
                    "0",
                    "0",
                    "0",
                ],
            ],
        );
        let dbs = rows(
            &["name", "host", "pool_size", "reserve_pool", "paused"],
            &[
                &["app", "10.0.0.9", "25", "10", "0"],
                &["batch", "10.0.0.9", "25", "10", "1"],
                &["pgbouncer", "", "2", "0", "0"],
            ],
        );
        let lists = rows(
            &["list", "items"],
            &[&["databases", "3"], &["used_clients", "9200"]],
        );
        let stats = rows(
            &[
                "database",
                "total_xact_count",
                "total_query_count",
                "total_wait_time",
            ],
            &[&["app", "1000", "2000", "30000"]],
        );
        let config = rows(
            &["key", "value"],
            &[&["max_client_conn", "10000"], &["pool_mode", "transaction"]],
        );
        assemble("10.0.0.5:6432", &pools, &dbs, &lists, &stats, &config)
    }

    #[test]
    fn figures_are_per_database_summed_over_users() {
        let s = sample();
        assert_eq!(s.pools.len(), 2, "{s:?}");
        let app = &s.pools[0];
        assert_eq!(
            (app.cl_active, app.cl_waiting, app.sv_active, app.sv_idle),
            (25, 4, 30, 2)
        );
        assert_eq!(app.maxwait_seconds, 1.5);
        assert_eq!((app.pool_size, app.reserve_pool), (Some(25), Some(10)));
        assert_eq!(app.xact_count, Some(1000));
        assert!(s.pools[1].paused && !app.paused);
        assert_eq!(
            (s.used_clients, s.max_client_conn),
            (Some(9200), Some(10000))
        );
    }

    #[test]
    fn saturation_names_waiting_clients_long_waits_client_slots_and_silence() {
        let limits = GateLimits {
            max_waiting_clients: 10,
            max_client_wait: Duration::from_secs(1),
        };
        let s = sample();
        let found = saturation(std::slice::from_ref(&s), &HashMap::new(), &limits);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].contains("9200 client connections of max_client_conn 10000"),
            "{found:?}"
        );
        assert!(
            found[1].contains("database app: 4 clients waiting, the longest for 1.5 s"),
            "{found:?}"
        );
        // Only the databases the pause covers count.
        let only_batch = HashMap::from([(s.instance.clone(), vec!["batch".to_string()])]);
        assert_eq!(
            saturation(std::slice::from_ref(&s), &only_batch, &limits).len(),
            1
        );
        // Clients waiting on a paused database wait for its RESUME.
        let mut paused = s.clone();
        paused.used_clients = Some(100);
        paused.pools[0].paused = true;
        assert!(saturation(&[paused], &HashMap::new(), &limits).is_empty());
        // A short wait with few clients is business as usual.
        let mut calm = s.clone();
        calm.used_clients = Some(100);
        calm.pools[0].maxwait_seconds = 0.2;
        assert!(saturation(&[calm], &HashMap::new(), &limits).is_empty());
        let down = InstanceStats {
            instance: "10.0.0.6:6432".into(),
            error: Some("no answer within 5s".into()),
            ..InstanceStats::default()
        };
        let found = saturation(&[down], &HashMap::new(), &limits);
        assert!(
            found[0].contains("10.0.0.6:6432 does not answer (no answer within 5s)"),
            "{found:?}"
        );
    }

    #[test]
    fn databases_beyond_the_bound_are_left_out_the_idle_first() {
        let many: Vec<Vec<String>> = (0..MAX_DATABASES + 5)
            .map(|i| {
                vec![
                    format!("db{i:03}"),
                    "u".into(),
                    (i % 7).to_string(),
                    "0".into(),
                ]
            })
            .collect();
        let pools: Vec<Fields> = many
            .iter()
            .map(|r| {
                ["database", "user", "cl_active", "cl_waiting"]
                    .iter()
                    .zip(r)
                    .map(|(h, v)| (h.to_string(), v.clone()))
                    .collect()
            })
            .collect();
        let s = assemble("x", &pools, &[], &[], &[], &[]);
        assert_eq!(s.pools.len(), MAX_DATABASES);
        assert!(s.pools.windows(2).all(|w| w[0].database < w[1].database));
    }
}
