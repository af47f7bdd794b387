//! The `[upgrade]` and `[cutover]` sections: which provider makes the new
//! server and how, the bounds of the write pause, and the PgBouncer consoles
//! and files the cutover repoints. Re-exported from `config`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::{ByteSize, ConnString, HumanDuration, Schedule};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    #[default]
    Local,
    Rds,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeConfig {
    #[serde(default)]
    pub provider: ProviderKind,
    /// The upgrade journal lives here; it must survive the process (a PVC in
    /// Kubernetes). Read once, at load, as the process's state root: code
    /// reads a cluster's own directory, `Cluster::state_dir`.
    #[serde(default = "default_state_dir")]
    pub(super) state_dir: PathBuf,
    /// Replica lag at which the cutover may begin.
    #[serde(default = "default_catchup_max_bytes")]
    pub catchup_max_bytes: ByteSize,
    /// Longest write pause allowed; past it, roll back and resume writes.
    #[serde(default = "default_pause_timeout")]
    pub pause_timeout: HumanDuration,
    /// Grace before the old primary is retired.
    #[serde(default = "default_retire_after")]
    pub retire_after: HumanDuration,
    /// Longest wait for the new replica to become available / catch up.
    #[serde(default = "default_step_timeout")]
    pub step_timeout: HumanDuration,
    #[serde(default)]
    pub local: LocalProviderConfig,
    #[serde(default)]
    pub rds: Option<RdsProviderConfig>,
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        UpgradeConfig {
            provider: ProviderKind::Local,
            state_dir: default_state_dir(),
            catchup_max_bytes: default_catchup_max_bytes(),
            pause_timeout: default_pause_timeout(),
            retire_after: default_retire_after(),
            step_timeout: default_step_timeout(),
            local: LocalProviderConfig::default(),
            rds: None,
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/pgsteward")
}
fn default_catchup_max_bytes() -> ByteSize {
    ByteSize(16 << 20)
}
fn default_pause_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_retire_after() -> HumanDuration {
    HumanDuration(Duration::ZERO)
}
fn default_step_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}

/// A server setting value in a class: strings, integers and booleans are all
/// written to `postgresql.conf` as strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingValue(pub String);

impl<'de> Deserialize<'de> for SettingValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            S(String),
            I(i64),
            B(bool),
            F(f64),
        }
        Ok(SettingValue(match Any::deserialize(d)? {
            Any::S(s) => s,
            Any::I(i) => i.to_string(),
            Any::B(b) => if b { "on" } else { "off" }.to_string(),
            Any::F(f) => f.to_string(),
        }))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalProviderConfig {
    /// New data directories are created under this directory.
    #[serde(default = "default_data_root")]
    pub data_root: PathBuf,
    /// Directory of `pg_basebackup`, `pg_ctl`; default: PATH, then /usr/lib/postgresql/*/bin.
    #[serde(default)]
    pub bin_dir: Option<PathBuf>,
    /// Keep the old primary's data directory when it is retired (it is only stopped).
    #[serde(default = "default_true")]
    pub keep_old_data: bool,
    /// Named sets of server settings; `--target-class NAME` picks one.
    #[serde(default)]
    pub classes: BTreeMap<String, BTreeMap<String, SettingValue>>,
}

impl Default for LocalProviderConfig {
    fn default() -> Self {
        LocalProviderConfig {
            data_root: default_data_root(),
            bin_dir: None,
            keep_old_data: true,
            classes: BTreeMap::new(),
        }
    }
}

fn default_data_root() -> PathBuf {
    PathBuf::from("/var/lib/pgsteward/clusters")
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RdsRepoint {
    /// Rewrite PgBouncer's `[databases]` entry to the new instance's endpoint.
    #[default]
    Pgbouncer,
    /// Rename the instances so the new primary takes over the old endpoint name.
    IdentifierSwap,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RdsProviderConfig {
    pub source_instance: String,
    #[serde(default)]
    pub region: Option<String>,
    /// Any RDS-compatible API (moto in tests).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    #[serde(default)]
    pub repoint: RdsRepoint,
    /// Take a final snapshot when deleting the old primary. Only `true` is safe.
    #[serde(default = "default_true")]
    pub final_snapshot: bool,
    /// First pause between `DescribeDBInstances` polls while waiting for an
    /// instance; it grows by half each poll up to one minute.
    #[serde(default = "default_rds_poll_interval")]
    pub poll_interval: HumanDuration,
    /// SQL address (`host:port`) per instance identifier, used instead of the
    /// endpoint RDS reports: for tunnels, and for tests against moto, whose
    /// endpoints are fictitious. A key ending in `*` matches ids by prefix.
    #[serde(default)]
    pub endpoint_override: BTreeMap<String, String>,
    /// Instance class of the new readers that replace the source's read
    /// replicas (`db.r5.xlarge`); default: each old reader's own class.
    #[serde(default)]
    pub reader_class: Option<String>,
}

fn default_rds_poll_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CutoverKind {
    #[default]
    Pgbouncer,
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutoverConfig {
    #[serde(default)]
    pub kind: CutoverKind,
    /// PgBouncer admin consoles (`.../pgbouncer` database), every one paused and repointed.
    /// A host name stands for every address it resolves to (a headless Service: one per pod).
    #[serde(default)]
    pub admin: Vec<ConnString>,
    /// The pgbouncer.ini whose `[databases]` entry is rewritten. One file per admin endpoint,
    /// in the same order, or a single file shared by all.
    #[serde(default, deserialize_with = "one_or_many")]
    pub config_file: Vec<PathBuf>,
    /// The `[databases]` entry clients use.
    #[serde(default = "default_cutover_database")]
    pub database: String,
    /// When `pgsteward run` reads every instance's pools for the
    /// `pgsteward_pgbouncer_*` metrics.
    #[serde(default = "default_stats_schedule")]
    pub stats_schedule: Schedule,
    /// The pause does not start while more clients than this wait on one
    /// database of an instance (a saturated pool turns a pause into client timeouts).
    #[serde(default = "default_max_waiting_clients")]
    pub max_waiting_clients: u64,
    /// ... or while a waiting client has waited this long.
    #[serde(default = "default_max_client_wait")]
    pub max_client_wait: HumanDuration,
}

impl Default for CutoverConfig {
    fn default() -> Self {
        CutoverConfig {
            kind: CutoverKind::Pgbouncer,
            admin: Vec::new(),
            config_file: Vec::new(),
            database: default_cutover_database(),
            stats_schedule: default_stats_schedule(),
            max_waiting_clients: default_max_waiting_clients(),
            max_client_wait: default_max_client_wait(),
        }
    }
}

impl CutoverConfig {
    /// The pgbouncer.ini for the i-th admin endpoint.
    pub fn pooler_config_file(&self, i: usize) -> Option<&std::path::Path> {
        let files = &self.config_file;
        files
            .get(i)
            .or_else(|| {
                if files.len() == 1 {
                    files.first()
                } else {
                    None
                }
            })
            .map(|p| p.as_path())
    }
}

fn default_cutover_database() -> String {
    "app".to_string()
}
fn default_stats_schedule() -> Schedule {
    super::parse_const("*/15 * * * * *")
}
fn default_max_waiting_clients() -> u64 {
    10
}
fn default_max_client_wait() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

/// Accepts `"x"` as well as `["x", "y"]`.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}
