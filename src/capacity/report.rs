//! The report `pgsteward capacity` prints and the service turns into
//! metrics. The JSON field names are a contract (tests and other tools read
//! them): extend, never rename.
//!
//! Every figure that cannot be known is `null` with a `state` saying why
//! (`not_enough_history`, `not_growing`, `no_limit`, `unknown`), never a
//! made-up number. Days are counted from the run and searched up to the
//! larger of `--horizon` and the resource's warning window; past that a
//! days field is `null` with state `ok` ("not within the horizon").

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Why a forecast has (or has no) date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Forecast made; nothing runs out within the warning window.
    Ok,
    /// Runs out within its warning window: a problem (exit 1, alert).
    Warning,
    NotEnoughHistory,
    /// Flat or shrinking: no date.
    NotGrowing,
    /// Nothing to run out of (no storage limit configured).
    NoLimit,
    /// Could not be read (privilege, unreachable API): see `detail`.
    Unknown,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Warning => "WARNING",
            State::NotEnoughHistory => "not enough history",
            State::NotGrowing => "not growing",
            State::NoLimit => "no limit",
            State::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CapacityReport {
    /// Nothing runs out within its warning window and everything was read.
    pub healthy: bool,
    pub checked_at: DateTime<Utc>,
    pub horizon_days: f64,
    pub tables: Vec<TableReport>,
    pub databases: Vec<DatabaseReport>,
    pub storage: StorageReport,
    pub xid: Vec<XidReport>,
    pub sequences: Vec<SequenceReport>,
    pub partitions: Vec<CoverageReport>,
    pub connections: ConnectionsReport,
    /// The current database's relations with the oldest unfrozen XIDs.
    pub oldest_tables: Vec<OldTableReport>,
    /// How partition sizes were read (exact, or from relpages).
    pub size_method: String,
    /// Whether this run's samples were recorded in `pgsteward.capacity_samples`.
    pub samples_recorded: bool,
    /// Findings that make the exit code 1, in words.
    pub problems: Vec<String>,
    /// What the operator should know that is not a problem.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// `schema.table`.
    pub table: String,
    /// `partitioned` (growth from closed periods) or `plain` (from samples).
    pub kind: &'static str,
    /// Table + indexes + TOAST now (all partitions).
    pub bytes: f64,
    /// Bytes the table grows by per day now (trended to today).
    pub growth_bytes_per_day: Option<f64>,
    /// Days until the storage limit is reached if this table alone kept
    /// growing at its forecast rate (free space ÷ its growth); `null`
    /// without a limit, without growth, or past the horizon.
    pub days_until_full: Option<f64>,
    /// 0..1, see docs/capacity.md.
    pub confidence: Option<f64>,
    pub state: State,
    /// Projected size at the horizon, retention applied.
    pub projected_bytes: Option<f64>,
    /// Size the table settles at under its retention (at the horizon's rate).
    pub steady_state_bytes: Option<f64>,
    /// Closed periods (partitioned) or daily sample points (plain) used.
    pub observations: usize,
    /// "not enough history: ..." and other words on this row.
    pub detail: Option<String>,
    /// Per closed period (partitioned) or per day (plain): bytes per day.
    pub history: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatabaseReport {
    pub database: String,
    pub bytes: Option<f64>,
    pub growth_bytes_per_day: Option<f64>,
    pub confidence: Option<f64>,
    pub state: State,
}

#[derive(Debug, Clone, Serialize)]
pub struct StorageReport {
    /// `rds` (API and CloudWatch), `config` (`capacity.storage_limit`) or
    /// `none` (no limit known).
    pub source: &'static str,
    pub used_bytes: Option<f64>,
    pub limit_bytes: Option<f64>,
    pub days_until_full: Option<f64>,
    /// The earliest the disk may be full: the upper edge of the 95 % band.
    /// The warning (and `storage_full` alert) is judged on this date.
    pub days_until_full_earliest: Option<f64>,
    pub growth_bytes_per_day: Option<f64>,
    pub confidence: Option<f64>,
    pub state: State,
    /// What `used_bytes` counts.
    pub counted: String,
    pub detail: Option<String>,
    #[serde(flatten)]
    pub rds: Option<RdsDates>,
}

/// The three RDS dates: the next autoscaling step, `max_allocated_storage`
/// reached, and (in `days_until_full`) the disk full.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RdsDates {
    pub allocated_bytes: f64,
    pub max_allocated_bytes: Option<f64>,
    pub days_until_autoscale: Option<f64>,
    /// The size of that step: max(10 GiB, 10 % of allocated, 7 h of growth), capped at the maximum.
    pub autoscale_step_bytes: Option<f64>,
    pub days_until_max_allocated: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct XidReport {
    pub database: String,
    /// `age(datfrozenxid)`.
    pub age: i64,
    pub mxid_age: i64,
    /// Transaction IDs the cluster consumes per day now.
    pub xids_per_day: Option<f64>,
    /// Until `autovacuum_freeze_max_age` (anti-wraparound vacuums start).
    pub days_until_freeze_max_age: Option<f64>,
    /// Until the wraparound stop limit (the server refuses new XIDs).
    pub days_until_wraparound: Option<f64>,
    pub mxids_per_day: Option<f64>,
    pub mxid_days_until_wraparound: Option<f64>,
    pub state: State,
}

#[derive(Debug, Clone, Serialize)]
pub struct SequenceReport {
    pub sequence: String,
    /// `schema.table.column` it feeds, when known.
    pub column: Option<String>,
    pub last_value: Option<i64>,
    /// Values used over values available, against the smaller of the
    /// sequence's own limit and the column type's.
    pub used_ratio: Option<f64>,
    /// `column` (its type is the tighter limit) or `sequence`.
    pub limited_by: &'static str,
    pub limit: i64,
    pub per_day: Option<f64>,
    pub days_until_exhausted: Option<f64>,
    pub state: State,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CoverageReport {
    pub table: String,
    /// Days from now to the end of the partitions covering now contiguously;
    /// 0 when now itself is not covered.
    pub days_covered_ahead: f64,
    /// The next scheduled partition pass (`partitions.schedule`).
    pub next_pass: Option<DateTime<Utc>>,
    /// The premade partitions end before the next pass can add more.
    pub exhausted_before_next_pass: bool,
    pub state: State,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsReport {
    /// Client backends now.
    pub used: i64,
    /// `max_connections` less the reserved slots (superuser, and
    /// `reserved_connections` on 16+): what applications can have.
    pub max: i64,
    pub peak_today: Option<f64>,
    /// Trend of the daily peak, connections per day.
    pub peak_growth_per_day: Option<f64>,
    pub days_until_exhausted: Option<f64>,
    pub state: State,
}

#[derive(Debug, Clone, Serialize)]
pub struct OldTableReport {
    pub table: String,
    pub xid_age: i64,
}

/// One chart of `--plot`: history, forecast with its band, the limit, and
/// where they cross. Times in days since the epoch.
#[derive(Debug, Clone, Default)]
pub struct Chart {
    pub title: String,
    pub unit: &'static str,
    pub history: Vec<(f64, f64)>,
    /// (t, forecast, low, high).
    pub forecast: Vec<(f64, f64, f64, f64)>,
    pub limit: Option<f64>,
    pub crossing: Option<f64>,
}
