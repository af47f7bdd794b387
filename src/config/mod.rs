//! Configuration: defaults, then the TOML file, then `PGSTEWARD_` environment
//! variables (`__` between nested keys). Unknown keys are errors. Every error
//! names where the value came from, the key, and what was expected.

pub mod archive;
mod bounds;
mod capacity;
mod cluster;
mod error;
#[cfg(test)]
mod fuzz;
pub mod indexes;
mod suggest;
pub mod units;
mod upgrade;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize};

use crate::pg::{ConnSpec, QualifiedName};
pub use archive::{ArchiveConfig, ArchiveFormat, ArchiveVerify, S3Url};
pub use capacity::CapacityConfig;
pub use cluster::{Cluster, Config, Process, DEFAULT_CLUSTER};
pub use error::{ConfigError, Reason};
pub use units::{ByteSize, CalendarSpan, HumanDuration, Schedule};
pub use upgrade::{
    CutoverConfig, CutoverKind, LocalProviderConfig, ProviderKind, RdsProviderConfig, RdsRepoint,
    SettingValue, UpgradeConfig,
};

/// Where the configuration comes from when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/pgsteward/pgsteward.toml";
pub const CONFIG_ENV: &str = "PGSTEWARD_CONFIG";
pub const ENV_PREFIX: &str = "PGSTEWARD_";

/// A PostgreSQL connection string. Its `Display` and `Debug` never show the
/// password, so it can be logged and put in errors.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnString(String);

impl ConnString {
    pub fn new(s: impl Into<String>) -> Self {
        ConnString(s.into())
    }
    /// The full string, password included: only for handing to a driver.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn spec(&self) -> Result<ConnSpec, crate::pg::PgError> {
        ConnSpec::parse(&self.0)
    }
    /// The string with no password at all, for records kept on disk (the
    /// upgrade journal): used again, it logs in with the password libpq's
    /// rules find (`PGPASSWORD`, the password file).
    pub fn without_password(&self) -> String {
        crate::pg::without_password(&self.0)
    }
}

impl fmt::Display for ConnString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::pg::redact(&self.0))
    }
}
impl fmt::Debug for ConnString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnString({})", crate::pg::redact(&self.0))
    }
}
impl<'de> Deserialize<'de> for ConnString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ConnSpec::parse(&s).map_err(serde::de::Error::custom)?;
        Ok(ConnString(s))
    }
}
impl Serialize for ConnString {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The file as written: every section side by side, each key checked
/// (`deny_unknown_fields`, which serde's `flatten` would defeat). Validated,
/// it is split into the process and its cluster ([`Config`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub database: DatabaseConfig,
    #[serde(default)]
    pub partitions: PartitionsConfig,
    #[serde(default)]
    pub lag: LagConfig,
    #[serde(default)]
    pub capacity: CapacityConfig,
    #[serde(default)]
    pub upgrade: UpgradeConfig,
    #[serde(default)]
    pub cutover: CutoverConfig,
    #[serde(default)]
    pub http: HttpConfig,
    /// Where `retention_mode = "archive"` puts retired partitions.
    #[serde(default)]
    pub archive: Option<ArchiveConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// The primary, reached directly (not through the pooler): DDL and
    /// upgrades must know which server they talk to.
    pub primary: ConnString,
    /// Streaming replicas to watch for lag.
    #[serde(default)]
    pub replicas: Vec<ConnString>,
    /// Longest wait for a TCP connection and login.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Publications of the primary's database that publish pgsteward's own
    /// tables (FOR ALL TABLES, FOR TABLES IN SCHEMA pgsteward) and whose
    /// every subscriber has those tables: archive retention, `convert` and
    /// capacity samples write there only when each such publication is
    /// listed (`schema::published`).
    #[serde(default)]
    pub subscribers_have_pgsteward_schema: Vec<String>,
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionsConfig {
    /// When `pgsteward run` runs a maintenance pass.
    #[serde(default = "default_partition_schedule")]
    pub schedule: Schedule,
    /// Applied to every DDL statement; a statement that cannot get its lock in
    /// this time gives up (and is retried with backoff), so application queries
    /// never queue behind maintenance for longer.
    #[serde(default = "default_lock_timeout")]
    pub lock_timeout: HumanDuration,
    /// Attempts per DDL statement on lock timeout or deadlock before the table
    /// is left for the next pass.
    #[serde(default = "default_lock_retries")]
    pub lock_retries: u32,
    /// Most rows of a new partition's range moved out of DEFAULT: they move
    /// in the transaction that attaches the partition, while writers of the
    /// table wait. A move of more rows is refused with the figures.
    #[serde(default = "default_move_batch")]
    pub default_move_batch: u32,
    /// Largest DEFAULT partition (on disk) an ATTACH may scan: readers of the
    /// table wait for that scan. A larger DEFAULT makes the pass refuse.
    #[serde(default = "default_max_default_scan")]
    pub max_default_scan: ByteSize,
    /// Sessions a pass uses to maintain different tables at once (each table
    /// is still handled by one session, in order).
    #[serde(default = "default_parallelism")]
    pub parallelism: u32,
    /// Sessions one table's concurrent index builds use (one partition each), 1..=16.
    #[serde(default = "default_index_parallelism")]
    pub index_parallelism: u32,
    /// How long a concurrent index build may wait for older transactions (its
    /// waits block no client statement, so this may exceed `lock_timeout`; a
    /// long report query would otherwise fail every build after its scan).
    #[serde(default = "default_index_build_wait")]
    pub index_build_wait: HumanDuration,
    /// Before a step whose ACCESS EXCLUSIVE lock replays on hot standbys
    /// (`database.replicas`) onto a relation a standby query holds, wait up to
    /// this long for those queries to end, else leave the table for the next
    /// pass, naming them: replay then never waits (up to the standby's
    /// `max_standby_streaming_delay`) nor makes the standby's readers of the
    /// table queue. Unset: the pass does not look at the standbys.
    #[serde(default)]
    pub standby_lock_wait: Option<HumanDuration>,
    #[serde(default)]
    pub tables: Vec<TableConfig>,
}

impl Default for PartitionsConfig {
    fn default() -> Self {
        PartitionsConfig {
            schedule: default_partition_schedule(),
            lock_timeout: default_lock_timeout(),
            lock_retries: default_lock_retries(),
            default_move_batch: default_move_batch(),
            max_default_scan: default_max_default_scan(),
            parallelism: default_parallelism(),
            index_parallelism: default_index_parallelism(),
            index_build_wait: default_index_build_wait(),
            standby_lock_wait: None,
            tables: Vec::new(),
        }
    }
}

fn default_partition_schedule() -> Schedule {
    parse_const("0 * * * *")
}
fn default_lock_timeout() -> HumanDuration {
    HumanDuration(Duration::from_millis(200))
}
fn default_lock_retries() -> u32 {
    10
}
fn default_move_batch() -> u32 {
    10_000
}
fn default_max_default_scan() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_parallelism() -> u32 {
    4
}
fn default_index_parallelism() -> u32 {
    2
}
fn default_index_build_wait() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}

/// Parses a compile-time constant; a failure is a bug in this file.
fn parse_const<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: fmt::Debug,
{
    match s.parse() {
        Ok(v) => v,
        Err(e) => panic!("built-in default {s:?} does not parse: {e:?}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    Daily,
    Weekly,
    Monthly,
    Quarterly,
    Yearly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RetentionMode {
    /// Detach old partitions and keep them as ordinary tables.
    #[default]
    Detach,
    /// Detach, then drop.
    Drop,
    /// Detach, copy the rows to object storage (`[archive]`), verify the
    /// copy, then drop: `partitions::retire`.
    Archive,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// `schema.table`; unquoted parts fold to lower case as in SQL, `"Quoted"` parts keep theirs.
    pub table: QualifiedName,
    #[serde(default = "default_interval")]
    pub interval: Interval,
    /// Future partitions kept ahead of the current one.
    #[serde(default = "default_premake")]
    pub premake: u32,
    /// Partitions whose whole range ends before now minus this are retired.
    #[serde(default)]
    pub retention: Option<CalendarSpan>,
    #[serde(default)]
    pub retention_mode: RetentionMode,
    /// Where period boundaries fall for `timestamptz` keys (and the zone "now" is read in).
    #[serde(default = "default_tz", deserialize_with = "deserialize_tz")]
    pub timezone: Tz,
    /// Indexes the parent must have, built online by the pass (`partitions::indexes`).
    #[serde(default)]
    pub indexes: Vec<indexes::IndexSpec>,
}

fn default_interval() -> Interval {
    Interval::Monthly
}
fn default_premake() -> u32 {
    3
}
fn default_tz() -> Tz {
    Tz::UTC
}
fn deserialize_tz<'de, D: Deserializer<'de>>(d: D) -> Result<Tz, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<Tz>().map_err(|_| {
        serde::de::Error::custom(format!(
            "{s:?} is not an IANA time zone name such as \"UTC\" or \"Europe/Berlin\""
        ))
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LagConfig {
    #[serde(default = "default_lag_schedule")]
    pub schedule: Schedule,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    #[serde(default = "default_max_delay")]
    pub max_delay: HumanDuration,
    /// Longest a single lag query may take before the node counts as unreachable.
    #[serde(default = "default_query_timeout")]
    pub query_timeout: HumanDuration,
}

impl Default for LagConfig {
    fn default() -> Self {
        LagConfig {
            schedule: default_lag_schedule(),
            max_bytes: default_max_bytes(),
            max_delay: default_max_delay(),
            query_timeout: default_query_timeout(),
        }
    }
}

fn default_lag_schedule() -> Schedule {
    parse_const("*/1 * * * *")
}
fn default_max_bytes() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_max_delay() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_query_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9187))
}

/// Resolves which file to read: `--config`, then `$PGSTEWARD_CONFIG`, then the default path.
pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os(CONFIG_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

/// Loads and validates the configuration from `path` plus the environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    if !path.exists() {
        return Err(ConfigError::Missing {
            path: path.to_path_buf(),
        });
    }
    if let Err(source) = std::fs::metadata(path).and_then(|_| std::fs::File::open(path)) {
        return Err(ConfigError::Unreadable {
            path: path.to_path_buf(),
            source,
        });
    }
    // file_exact: `Toml::file` would silently skip a missing file and search parent directories.
    let figment = Figment::new()
        .merge(Toml::file_exact(path))
        .merge(env_provider());
    from_figment(figment, Some(path))
}

/// Environment overrides: `PGSTEWARD_DATABASE__PRIMARY` → `database.primary`.
/// `PGSTEWARD_CONFIG` names the file and is not a key.
pub fn env_provider() -> Env {
    Env::prefixed(ENV_PREFIX).split("__").ignore(&[
        "config",
        "log_level",
        "log_format",
        // Test-only switches (upgrade failpoints, local server watchdog), not keys.
        "failpoint",
        "failpoint_repeat",
        "local_owner_pid",
    ])
}

pub fn from_figment(figment: Figment, path: Option<&Path>) -> Result<Config, ConfigError> {
    let file: FileConfig = figment
        .extract()
        .map_err(|e| ConfigError::Invalid(error::describe_figment_error(e, path)))?;
    file.validate().map_err(|e| e.in_file(path))?;
    Ok(Config::split(file))
}

/// `db.<family>.<size>`: lower-case letters and digits, as RDS names classes.
fn is_rds_instance_class(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts[0] == "db"
        && parts[1..].iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

impl FileConfig {
    /// Checks that need more than one field at a time.
    fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.partitions.tables.iter().enumerate() {
            if !seen.insert(t.table.clone()) {
                return Err(Reason::new(format!(
                    "{} is listed twice; each table may appear once",
                    t.table
                ))
                .at(format!("partitions.tables[{i}].table")));
            }
        }
        indexes::validate(&self.partitions)?;
        let mut names = std::collections::HashSet::new();
        for (i, p) in self
            .database
            .subscribers_have_pgsteward_schema
            .iter()
            .enumerate()
        {
            let why = if p.is_empty() || p.len() > 63 {
                Some(format!(
                    "{p:?} is not a publication name; expected 1 to 63 bytes, as pg_publication has it"
                ))
            } else if !names.insert(p) {
                Some(format!("{p:?} is listed twice"))
            } else {
                None
            };
            if let Some(why) = why {
                return Err(
                    Reason::new(why).at(format!("database.subscribers_have_pgsteward_schema[{i}]"))
                );
            }
        }
        if let Some(i) = self
            .partitions
            .tables
            .iter()
            .position(|t| t.retention_mode == RetentionMode::Archive)
        {
            if self.archive.is_none() {
                return Err(Reason::new(
                    "\"archive\" needs an [archive] section with url = \"s3://bucket/prefix/\"",
                )
                .at(format!("partitions.tables[{i}].retention_mode")));
            }
        }
        bounds::check(self)?;
        capacity::check(&self.capacity)?;
        if self.upgrade.provider == ProviderKind::Rds && self.upgrade.rds.is_none() {
            return Err(Reason::new(
                "provider = \"rds\" needs an [upgrade.rds] section with source_instance",
            )
            .at("upgrade.rds"));
        }
        if let Some(class) = self
            .upgrade
            .rds
            .as_ref()
            .and_then(|r| r.reader_class.as_ref())
        {
            if !is_rds_instance_class(class) {
                return Err(Reason::new(format!(
                    "{class:?} is not an RDS instance class; expected db.<family>.<size> (e.g. \"db.r5.xlarge\")"
                ))
                .at("upgrade.rds.reader_class"));
            }
        }
        let files = self.cutover.config_file.len();
        if self.cutover.kind == CutoverKind::Pgbouncer
            && !self.cutover.admin.is_empty()
            && files != 1
            && files != self.cutover.admin.len()
        {
            return Err(Reason::new(format!(
                "{files} files for {} admin endpoints; give one shared file or one per endpoint",
                self.cutover.admin.len()
            ))
            .at("cutover.config_file"));
        }
        Ok(())
    }
}
