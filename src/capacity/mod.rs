//! Capacity planning: when storage, RDS `max_allocated_storage`, transaction
//! IDs, sequences, premade partitions and connections run out.
//!
//! * `forecast`: the model, pure (rates from increments, trend, weekly term).
//! * `model`: what a run observes; `sql` and `observe`: reading it.
//! * `samples`: this run's samples recorded on the primary, the history read back.
//! * `aws`: RDS allocated and maximum storage, CloudWatch `FreeStorageSpace`.
//! * `evaluate` (growth, storage) and `limits` (XIDs, sequences,
//!   connections, coverage): the verdicts, pure.
//! * `report`: the JSON contract; `assemble`: one report from the parts, pure.
//! * `render`: the text table with sparklines; `plot`: `--plot FILE.svg`.
//!
//! A run: connect to the primary, bring the `pgsteward` schema up to date
//! (`schema::ensure`), observe, record this run's samples, read the history,
//! judge. Recording is best effort: without the privilege the report still
//! comes out, names the GRANT, and counts as a problem.

pub mod assemble;
pub mod aws;
pub mod evaluate;
pub mod forecast;
pub mod limits;
pub mod model;
pub mod observe;
pub mod plot;
pub mod render;
pub mod report;
pub mod samples;
pub mod sizing;
mod sql;

use std::path::Path;

use chrono::Utc;

use crate::cli::OutputFormat;
use crate::config::{Cluster, ProviderKind};
use crate::outcome::Outcome;
use crate::output;
pub use report::{CapacityReport, Chart, State};

/// The default `--horizon`.
pub const DEFAULT_HORIZON_DAYS: f64 = 90.0;

#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    #[error("capacity: cannot {what}: {}", crate::pg::server_message(.source))]
    Query {
        what: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("capacity: {what}: {message}")]
    Aws { what: &'static str, message: String },
    #[error("{target} is in recovery: database.primary must name the primary (samples are recorded there)")]
    NotPrimary { target: String },
    #[error("cannot write the plot {path}: {message}")]
    Plot { path: String, message: String },
    #[error("--horizon {0}")]
    Horizon(String),
    #[error("capacity run cancelled")]
    Cancelled,
}

impl CapacityError {
    /// The failure kind for metrics: one per subsystem.
    pub fn metric_label(&self) -> crate::outcome::ErrorLabel {
        crate::outcome::ErrorLabel::Capacity
    }

    /// The operator must fix the invocation or the configuration (exit 2).
    pub fn is_usage(&self) -> bool {
        match self {
            CapacityError::Pg(e) => e.is_usage(),
            CapacityError::Horizon(_) | CapacityError::Plot { .. } => true,
            _ => false,
        }
    }
}

/// Where the RDS facts come from: `upgrade.rds` when the provider is RDS.
fn rds_target(cfg: &Cluster) -> Option<aws::RdsTarget> {
    if cfg.upgrade.provider != ProviderKind::Rds {
        return None;
    }
    let rds = cfg.upgrade.rds.as_ref()?;
    let settings = crate::provider::rds::SdkSettings {
        region: rds.region.clone(),
        endpoint_url: rds.endpoint_url.clone(),
        static_credentials: None,
    };
    let mut cloudwatch = settings.clone();
    if let Some(url) = &cfg.capacity.cloudwatch_endpoint_url {
        cloudwatch.endpoint_url = Some(url.clone());
    }
    Some(aws::RdsTarget {
        instance: rds.source_instance.clone(),
        rds: settings,
        cloudwatch,
    })
}

/// `--horizon`: a duration ("90d", "12w" is not one: "84d") of 1 day to 10 years.
pub fn horizon_days(text: &str) -> Result<f64, CapacityError> {
    let d: crate::config::HumanDuration = text
        .parse()
        .map_err(|e| CapacityError::Horizon(format!("{text:?}: {e}")))?;
    let days = d.0.as_secs_f64() / forecast::DAY_SECONDS;
    if !(1.0..=3653.0).contains(&days) {
        return Err(CapacityError::Horizon(format!(
            "{text:?} is out of range; expected between 1 day and 10 years (\"90d\")"
        )));
    }
    Ok(days)
}

/// One capacity run against the configured primary. `rds_override` replaces
/// the AWS settings (tests give moto's static credentials).
pub async fn run(
    cfg: &Cluster,
    horizon_days: f64,
    rds_override: Option<aws::RdsTarget>,
) -> Result<(CapacityReport, Vec<Chart>), CapacityError> {
    let spec = cfg.database.primary.spec()?;
    let target = spec.display.clone();
    let mut client = spec.connect(cfg.database.connect_timeout.0).await?;
    let mut problems = Vec::new();
    // Nothing is written (the migration included) while a publication
    // publishes the samples to subscribers not declared to have the table.
    let published = crate::schema::published::check(
        &client,
        None,
        &cfg.database.subscribers_have_pgsteward_schema,
        crate::schema::published::Writer::Capacity,
        &target,
    )
    .await;
    let refused = matches!(published, Err(crate::schema::SchemaError::Published { .. }));
    let schema_ok = match published {
        Ok(()) => crate::schema::ensure(&client, &target).await.map(|_| ()),
        Err(e) => Err(e),
    };
    let schema_ok = match schema_ok {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "capacity samples cannot be recorded");
            problems.push(e.to_string());
            false
        }
    };
    let now = Utc::now();
    let managed: Vec<_> = cfg
        .partitions
        .tables
        .iter()
        .map(|t| t.table.clone())
        .collect();
    // Partitions that ended within the last period (and later ones) are
    // sized exactly: their statistics may predate their last writes.
    let fresh: Vec<i64> = cfg
        .partitions
        .tables
        .iter()
        .map(|t| {
            let back = now
                - chrono::Duration::seconds(
                    (assemble::period_days(t.interval) * forecast::DAY_SECONDS) as i64,
                );
            crate::partitions::period::now_key(
                crate::partitions::model::KeyType::Timestamptz,
                t.timezone,
                back,
            )
        })
        .collect();
    let obs = observe::observe(
        &client,
        &observe::Wanted {
            managed: &managed,
            large_table_min: cfg.capacity.large_table_min_size.0 as i64,
            large_table_count: i64::from(cfg.capacity.large_table_count),
            fresh_after_key: &fresh,
        },
    )
    .await?;
    if obs.in_recovery {
        return Err(CapacityError::NotPrimary { target });
    }
    let mut recorded = false;
    if schema_ok {
        match samples::record(&mut client, &obs).await {
            Ok(()) => recorded = true,
            Err(e) => problems.push(format!("samples not recorded: {e}")),
        }
    }
    // Refused, the samples recorded so far still make the forecast.
    let mut history = if schema_ok || (refused && samples::exist(&client).await?) {
        samples::history(&client).await?
    } else {
        samples::History::default()
    };
    if !recorded {
        history.add_run(&obs);
    }
    let rds = match rds_override.or_else(|| rds_target(cfg)) {
        Some(t) => Some(aws::read(&t).await),
        None => None,
    };
    let user = spec.user().unwrap_or("steward").to_string();
    Ok(assemble::assemble(assemble::Inputs {
        cfg,
        obs: &obs,
        history: &history,
        rds,
        now,
        horizon_days,
        user: &user,
        samples_recorded: recorded,
        problems,
    }))
}

/// `pgsteward capacity`: one run, printed; the plot written when asked.
pub async fn capacity_command(
    cfg: &Cluster,
    format: OutputFormat,
    horizon: &str,
    plot: Option<&Path>,
) -> Result<Outcome, CapacityError> {
    let days = horizon_days(horizon)?;
    let (report, charts) = run(cfg, days, None).await?;
    if let Some(path) = plot {
        plot::write(path, &charts)?;
    }
    match format {
        OutputFormat::Json => output::print_json(&report),
        OutputFormat::Text => print!("{}", render::text(&report)),
    }
    Ok(if report.healthy {
        Outcome::Healthy
    } else {
        Outcome::Problem
    })
}
