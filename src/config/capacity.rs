//! The `[capacity]` section: when the service samples, the self-managed
//! volume's size, which plain tables are tracked, and where CloudWatch is.

use serde::Deserialize;

use super::{parse_const, ByteSize, ConfigError, Reason, Schedule};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityConfig {
    /// When `pgsteward run` samples and forecasts (one sample per run).
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    /// Size of the self-managed volume the data directory (and WAL) live on.
    /// On RDS it is read from the API instead; without either the report
    /// says there is no limit.
    #[serde(default)]
    pub storage_limit: Option<ByteSize>,
    /// Plain (not partitioned) tables at least this large are sampled and forecast.
    #[serde(default = "default_large_table_min_size")]
    pub large_table_min_size: ByteSize,
    /// At most this many of them, largest first (a metric label each).
    #[serde(default = "default_large_table_count")]
    pub large_table_count: u32,
    /// CloudWatch's endpoint when it is not the SDK's default for the region
    /// (defaults to `upgrade.rds.endpoint_url`).
    #[serde(default)]
    pub cloudwatch_endpoint_url: Option<String>,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        CapacityConfig {
            schedule: default_schedule(),
            storage_limit: None,
            large_table_min_size: default_large_table_min_size(),
            large_table_count: default_large_table_count(),
            cloudwatch_endpoint_url: None,
        }
    }
}

fn default_schedule() -> Schedule {
    parse_const("0 * * * *")
}
fn default_large_table_min_size() -> ByteSize {
    ByteSize(1 << 30)
}
fn default_large_table_count() -> u32 {
    20
}

/// Values serde accepts but no volume has.
pub(super) fn check(c: &CapacityConfig) -> Result<(), ConfigError> {
    if let Some(limit) = c.storage_limit {
        if limit.0 < 1 << 20 {
            return Err(Reason::new(format!(
                "\"{limit}\" is out of range; expected the volume's size, at least 1MB (e.g. \"500GB\")"
            ))
            .at("capacity.storage_limit"));
        }
    }
    if !(1..=200).contains(&c.large_table_count) {
        return Err(Reason::new(format!(
            "{} is out of range; expected 1..=200",
            c.large_table_count
        ))
        .at("capacity.large_table_count"));
    }
    Ok(())
}
