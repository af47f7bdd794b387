//! Replica lag: `observe` reads the primary and every replica on pooled
//! connections with timeouts; `evaluate` turns the observations into a verdict
//! per replica (pure, unit-tested); this file assembles the report that
//! `pgsteward lag` prints and the service turns into metrics.
//!
//! An unreachable node is a state in the report, never an error of the check.

pub mod evaluate;
pub mod observe;
pub mod sql;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::cli::OutputFormat;
use crate::config::{Cluster, DatabaseConfig, LagConfig};
use crate::outcome::Outcome;
use crate::output;
pub use evaluate::{evaluate, Problem, ReplicaState, Thresholds, Verdict};
pub use observe::{
    LagPools, Lsn, LsnError, ObserveError, PrimaryObservation, ReplicaObservation,
    SenderObservation,
};

#[derive(Debug, thiserror::Error)]
pub enum LagError {
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    #[error("lag check cancelled")]
    Cancelled,
    /// `provider = "rds"` without `database.replicas`: listing the source's
    /// read replicas failed.
    #[error("replica discovery: {0}")]
    Discovery(#[from] crate::provider::ProviderError),
}

impl LagError {
    /// The failure kind for metrics: one per subsystem.
    pub fn metric_label(&self) -> crate::outcome::ErrorLabel {
        crate::outcome::ErrorLabel::Lag
    }
}

/// One check of every replica.
#[derive(Debug, Clone, Serialize)]
pub struct LagReport {
    /// Every replica reachable, streaming, in recovery and within thresholds.
    pub healthy: bool,
    pub checked_at: DateTime<Utc>,
    pub max_bytes: u64,
    pub max_delay_seconds: f64,
    pub primary: PrimaryReport,
    pub replicas: Vec<ReplicaReport>,
    /// Replicas RDS lists that could not be checked from here (a
    /// cross-region one without `endpoint_override`, one still being
    /// created), with the reason. Absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unchecked: Vec<UncheckedReplica>,
}

/// A replica the source lists whose lag this check could not read.
#[derive(Debug, Clone, Serialize)]
pub struct UncheckedReplica {
    pub instance: String,
    pub region: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrimaryReport {
    /// `user@host:port/db`, never a password.
    pub node: String,
    pub reachable: bool,
    pub error: Option<String>,
    pub observation: Option<PrimaryObservation>,
    /// Why it could not be read, typed; `error` is its text.
    #[serde(skip)]
    pub read_error: Option<ObserveError>,
}

impl PrimaryReport {
    /// Reachable and not in recovery.
    pub fn healthy(&self) -> bool {
        self.observation
            .as_ref()
            .is_some_and(|o| !o.in_recovery && o.current_lsn.is_some())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaReport {
    pub replica: String,
    pub healthy: bool,
    #[serde(flatten)]
    pub verdict: Verdict,
    pub observation: Option<ReplicaObservation>,
    /// Its row in the primary's `pg_stat_replication`, when it could be matched.
    pub sender: Option<SenderObservation>,
    /// Why it could not be read, typed; the verdict says it in words.
    #[serde(skip)]
    pub read_error: Option<ObserveError>,
    /// The RDS instance, when the replica was found through RDS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Its AWS region, when the replica was found through RDS (a
    /// cross-region reader's own region, else the source's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

impl LagReport {
    pub fn outcome(&self) -> Outcome {
        if self.healthy {
            Outcome::Healthy
        } else {
            Outcome::Problem
        }
    }
}

/// One lag check on existing pools. The primary is read first so that a
/// caught-up replica reads at or past the primary's LSN (never "behind" by
/// WAL written between two reads); replicas are then read concurrently.
pub async fn check(
    lag: &LagConfig,
    pools: &LagPools,
    cancel: &CancellationToken,
) -> Result<LagReport, LagError> {
    let thresholds = Thresholds {
        max_bytes: lag.max_bytes.0,
        max_delay: lag.max_delay.0,
    };
    let work = async {
        let primary = pools.observe_primary().await;
        let target = primary.as_ref().ok().and_then(|p| p.current_lsn);
        let replicas = futures::future::join_all(
            pools
                .replicas
                .iter()
                .map(|n| pools.observe_replica(n, target, cancel)),
        )
        .await;
        (primary, replicas)
    };
    let (primary, replicas) = tokio::select! {
        r = work => r,
        _ = cancel.cancelled() => return Err(LagError::Cancelled),
    };
    if let Err(e) = &primary {
        tracing::warn!(node = %pools.primary.name, error = %e, "primary unreachable");
    }
    // The verdict is pure and speaks of a node it could not read in words.
    let primary_text = primary.as_ref().map_err(ToString::to_string);
    let replicas: Vec<ReplicaReport> = pools
        .replicas
        .iter()
        .zip(replicas)
        .map(|(node, obs)| {
            let sender = match (&primary, &obs) {
                (Ok(p), Ok(r)) => match_sender(&p.senders, r.sender_name.as_deref()),
                _ => None,
            };
            let obs_text = obs.as_ref().map_err(ToString::to_string);
            let verdict = evaluate(
                primary_text.as_ref().copied().map_err(String::as_str),
                obs_text.as_ref().copied().map_err(String::as_str),
                sender.as_ref(),
                &thresholds,
            );
            log_verdict(&node.name, &verdict);
            let (observation, read_error) = match obs {
                Ok(o) => (Some(o), None),
                Err(e) => (None, Some(e)),
            };
            ReplicaReport {
                replica: node.name.clone(),
                healthy: verdict.healthy(),
                verdict,
                observation,
                sender,
                read_error,
                instance: None,
                region: None,
            }
        })
        .collect();
    let primary = match primary {
        Ok(o) => PrimaryReport {
            node: pools.primary.name.clone(),
            reachable: true,
            error: o
                .in_recovery
                .then(|| "in recovery: database.primary names a replica".to_string()),
            observation: Some(o),
            read_error: None,
        },
        Err(e) => PrimaryReport {
            node: pools.primary.name.clone(),
            reachable: false,
            error: Some(e.to_string()),
            observation: None,
            read_error: Some(e),
        },
    };
    Ok(LagReport {
        healthy: primary.healthy() && replicas.iter().all(|r| r.healthy),
        checked_at: Utc::now(),
        max_bytes: thresholds.max_bytes,
        max_delay_seconds: thresholds.max_delay.as_secs_f64(),
        primary,
        replicas,
        unchecked: Vec::new(),
    })
}

/// One check with pools made for it (the CLI, the demo).
pub async fn check_once(cfg: &Cluster) -> Result<LagReport, LagError> {
    // With provider = "rds" and no replica list, the replicas are the
    // source instance's read replicas as RDS lists them.
    if cfg.upgrade.provider == crate::config::ProviderKind::Rds && cfg.database.replicas.is_empty()
    {
        let found = crate::provider::rds::discover_replicas(cfg).await?;
        return check_discovered(&cfg.database, &cfg.lag, found).await;
    }
    let pools = LagPools::new(&cfg.database, &cfg.lag)?;
    check(&cfg.lag, &pools, &CancellationToken::new()).await
}

/// One check of the replicas RDS discovery found: each row carries its
/// instance and region; those without an endpoint are reported unchecked.
pub async fn check_discovered(
    database: &DatabaseConfig,
    lag: &LagConfig,
    found: Vec<crate::provider::rds::DiscoveredReplica>,
) -> Result<LagReport, LagError> {
    let mut database = database.clone();
    let mut checked = Vec::new();
    let mut unchecked = Vec::new();
    for r in found {
        match r.endpoint {
            Ok(endpoint) => {
                database.replicas.push(endpoint);
                checked.push((r.id, r.region));
            }
            Err(reason) => unchecked.push(UncheckedReplica {
                instance: r.id,
                region: r.region,
                reason: reason.to_string(),
            }),
        }
    }
    let pools = LagPools::new(&database, lag)?;
    let mut report = check(lag, &pools, &CancellationToken::new()).await?;
    // `check` reports the replicas in the order of database.replicas.
    for (row, (id, region)) in report.replicas.iter_mut().zip(checked) {
        row.instance = Some(id);
        row.region = region;
    }
    report.unchecked = unchecked;
    Ok(report)
}

/// The replica's `pg_stat_replication` row: only when exactly one sender has
/// its name (replicas that all call themselves `walreceiver` stay unmatched).
fn match_sender(senders: &[SenderObservation], name: Option<&str>) -> Option<SenderObservation> {
    let name = name?;
    let mut it = senders.iter().filter(|s| s.application_name == name);
    match (it.next(), it.next()) {
        (Some(s), None) => Some(s.clone()),
        _ => None,
    }
}

fn log_verdict(replica: &str, v: &Verdict) {
    for p in &v.problems {
        match p {
            Problem::SecondWritableNode => tracing::error!(
                replica,
                "SECOND WRITABLE NODE: replica is not in recovery; fence it before clients write to it"
            ),
            // Logged once for the primary, not once per replica.
            Problem::LagUnknown { .. } => {}
            _ => tracing::warn!(replica, problem = %p, "replica unhealthy"),
        }
    }
}

pub async fn lag_command(cfg: &Cluster, format: OutputFormat) -> Result<Outcome, LagError> {
    let report = check_once(cfg).await?;
    match format {
        OutputFormat::Json => output::print_json(&report),
        OutputFormat::Text => print!("{}", render_text(&report)),
    }
    // No password for a node (the primary first, then each replica) is the
    // operator's to fix (exit 2), not lag: the error names the connection
    // and every place looked in.
    let nodes = std::iter::once(&report.primary.read_error)
        .chain(report.replicas.iter().map(|r| &r.read_error));
    if let Some(e) = nodes.flatten().find_map(ObserveError::password_missing) {
        return Err(e.into());
    }
    Ok(report.outcome())
}

/// What `pgsteward lag` prints.
pub fn render_text(report: &LagReport) -> String {
    let mut out = String::new();
    match (&report.primary.observation, &report.primary.error) {
        (Some(o), None) => out.push_str(&format!(
            "primary {}: current LSN {}, {} WAL senders\n",
            report.primary.node,
            o.current_lsn.map(|l| l.to_string()).unwrap_or_default(),
            o.senders.len()
        )),
        (_, Some(e)) => out.push_str(&format!("primary {}: PROBLEM: {e}\n", report.primary.node)),
        (None, None) => {}
    }
    // Replicas found through RDS carry their instance and region.
    let from_rds = report.replicas.iter().any(|r| r.instance.is_some());
    let rows: Vec<Vec<String>> = report
        .replicas
        .iter()
        .map(|r| {
            let v = &r.verdict;
            let mut row = vec![r.replica.clone()];
            if from_rds {
                row.push(r.instance.clone().unwrap_or_default());
                row.push(r.region.clone().unwrap_or_else(|| "?".into()));
            }
            row.extend([
                v.state.as_str().to_string(),
                v.bytes_behind
                    .map(output::human_bytes)
                    .unwrap_or_else(|| "?".into()),
                v.seconds_behind
                    .map(output::human_seconds)
                    .unwrap_or_else(|| "?".into()),
                // Unreachable: whether replay is paused is not known, not "no".
                match (&r.observation, v.replay_paused) {
                    (None, _) => "?",
                    (Some(_), true) => "yes",
                    (Some(_), false) => "no",
                }
                .to_string(),
                if v.problems.is_empty() {
                    "ok".to_string()
                } else {
                    v.problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                },
            ]);
            row
        })
        .collect();
    let mut header = vec!["REPLICA"];
    if from_rds {
        header.extend(["INSTANCE", "REGION"]);
    }
    header.extend(["STATE", "BEHIND", "TIME_BEHIND", "PAUSED", "VERDICT"]);
    out.push_str(&output::table(&header, &rows));
    for u in &report.unchecked {
        out.push_str(&format!(
            "note: replica {} (region {}) not checked: {}\n",
            u.instance,
            u.region.as_deref().unwrap_or("?"),
            u.reason
        ));
    }
    if report.replicas.is_empty() && report.unchecked.is_empty() {
        out.push_str(
            "note: no replicas configured (database.replicas is empty): no replica lag to check\n",
        );
    }
    // A paused replay is someone's deliberate act or a forgotten one: say
    // how to undo it, healthy or not (a paused replica falls behind as soon
    // as the primary writes).
    for r in &report.replicas {
        if r.observation.is_some() && r.verdict.replay_paused {
            out.push_str(&format!(
                "note: WAL replay is paused on {}: unless intended, run SELECT pg_wal_replay_resume(); on that replica\n",
                r.replica
            ));
        }
    }
    out.push_str(&format!(
        "thresholds: {}, {}; {}\n",
        output::human_bytes(report.max_bytes),
        output::human_seconds(report.max_delay_seconds),
        if report.healthy { "healthy" } else { "PROBLEM" }
    ));
    out
}
