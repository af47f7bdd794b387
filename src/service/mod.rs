//! `pgsteward run`: the partition pass, the lag check, the capacity run and
//! the PgBouncer pools' figures (`cutover.stats_schedule`) on their cron
//! schedules, plus the HTTP endpoints, until SIGTERM or SIGINT.
//!
//! * `scheduler`: one loop per job; no overlap, failures counted and retried next tick.
//! * `leader`: the advisory lock on the primary; only the leader runs DDL.
//! * `shutdown`: the signal, and the named task tracker drained with a deadline.
//!
//! Shutdown order: stop taking new work (cancel: sleeping jobs return, a
//! running pass stops before its next statement and a statement in flight
//! finishes or is cancelled by the pass), drain tasks with a deadline, then
//! release the leader lock, so the lock is held for as long as our DDL can run.
//!
//! Every job runs once at start, then on its schedule.
//!
//! The database going away is an ordinary state: every job reconnects through
//! its pool at its next tick, `/readyz` reports 503 meanwhile, and leadership
//! is re-established by whichever instance gets the lock first.

pub mod leader;
pub mod scheduler;
pub mod shutdown;
pub mod sql;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::capacity;
use crate::config::{Cluster, Config};
use crate::http::{self, HttpState, PrimaryProbe};
use crate::lag::{self, LagPools};
use crate::metrics::Metrics;
use crate::outcome::{ErrorLabel, Outcome};
use crate::partitions::{self, PartitionError};
use crate::upgrade;
use leader::Leader;
use scheduler::{run_job, JobRun};
use shutdown::Tasks;

/// How long running work gets to finish after a signal.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// Bounds the leader session's queries and the readiness probe.
const PROBE_TIMEOUT_MAX: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot listen on {addr}: {source} (set http.listen to a free address)")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
}

impl ServiceError {
    /// The failure kind for metrics: one per subsystem.
    pub fn metric_label(&self) -> crate::outcome::ErrorLabel {
        crate::outcome::ErrorLabel::Service
    }
}

pub async fn run_until_signal(cfg: Config) -> Result<Outcome, ServiceError> {
    let signal = shutdown::signal().map_err(ServiceError::Signal)?;
    run(cfg, async {
        let name = signal.await;
        tracing::info!(signal = name, "shutting down");
    })
    .await
}

/// The service until `shutdown` resolves. Tests pass their own trigger.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<Outcome, ServiceError> {
    // The process's endpoint serves the jobs of its cluster; each job below
    // sees only the cluster. Serving several clusters would spawn this set
    // of jobs (with its leader and pools) once per cluster.
    let Config { process, cluster } = cfg;
    let cfg = Arc::new(cluster);
    let metrics = Arc::new(Metrics::new());
    let timeout = cfg.database.connect_timeout.0.min(PROBE_TIMEOUT_MAX);
    let primary = cfg.database.primary.spec()?;
    let leader = Arc::new(Leader::new(primary.clone(), timeout, metrics.clone()));
    let pools = Arc::new(LagPools::new(&cfg.database, &cfg.lag)?);
    let probe = Arc::new(PrimaryProbe::new(primary.pool(1, timeout), timeout));
    let cancel = CancellationToken::new();
    let tasks = Tasks::new();

    let server = http::bind(
        process.http.listen,
        HttpState {
            metrics: metrics.clone(),
            probe,
        },
        cancel.clone(),
    )
    .await
    .map_err(|source| ServiceError::Listen {
        addr: process.http.listen,
        source,
    })?;
    tasks.spawn("http", async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "http server failed");
        }
    });

    let jobs = Jobs {
        tasks: &tasks,
        ctx: JobCtx {
            cfg: cfg.clone(),
            cancel: cancel.clone(),
            metrics: metrics.clone(),
            leader: leader.clone(),
        },
    };
    jobs.spawn("lag", cfg.lag.schedule.clone(), move |j| {
        let pools = pools.clone();
        async move { lag_job(&j.cfg, &pools, &j.leader, &j.metrics, &j.cancel).await }
    });
    jobs.spawn(
        "partitions",
        cfg.partitions.schedule.clone(),
        |j| async move { partitions_job(&j.cfg, &j.leader, &j.metrics, &j.cancel).await },
    );
    jobs.spawn("capacity", cfg.capacity.schedule.clone(), |j| async move {
        capacity_job(&j.cfg, &j.leader, &j.metrics, &j.cancel).await
    });
    if cfg.cutover.kind == crate::config::CutoverKind::Pgbouncer && !cfg.cutover.admin.is_empty() {
        jobs.spawn(
            "pgbouncer",
            cfg.cutover.stats_schedule.clone(),
            |j| async move { pgbouncer_job(&j.cfg, &j.leader, &j.metrics, &j.cancel).await },
        );
    }

    tracing::info!(listen = %process.http.listen, "service started");
    shutdown.await;
    cancel.cancel();
    let stuck = tasks.drain(DRAIN_DEADLINE).await;
    if !stuck.is_empty() {
        tracing::warn!(tasks = ?stuck, deadline = ?DRAIN_DEADLINE, "tasks still running at the drain deadline; abandoned");
    }
    leader.release().await;
    tracing::info!("service stopped");
    Ok(Outcome::Healthy)
}

/// What every scheduled job is handed: the service's shared state, cloned
/// afresh for each run so a run owns what it borrows.
#[derive(Clone)]
struct JobCtx {
    cfg: Arc<Cluster>,
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
    leader: Arc<Leader>,
}

/// Spawns the scheduled jobs on the service's task tracker, each run at
/// start and then on its schedule (see the module doc).
struct Jobs<'a> {
    tasks: &'a Tasks,
    ctx: JobCtx,
}

impl Jobs<'_> {
    fn spawn<F, Fut>(&self, name: &'static str, schedule: crate::config::Schedule, job: F)
    where
        F: Fn(JobCtx) -> Fut + Send + 'static,
        Fut: Future<Output = JobRun> + Send + 'static,
    {
        let ctx = self.ctx.clone();
        let (cancel, metrics) = (ctx.cancel.clone(), ctx.metrics.clone());
        self.tasks.spawn(
            name,
            run_job(name, schedule, true, cancel, metrics, move || {
                job(ctx.clone())
            }),
        );
    }
}

/// The lag check. It also refreshes leadership, so the leader gauge stays
/// current and a follower takes over at the lag cadence too. Replica problems
/// are findings, not job failures; the job fails when the primary cannot be read.
async fn lag_job(
    cfg: &Cluster,
    pools: &LagPools,
    leader: &Leader,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> JobRun {
    // Dropping a refresh midway is safe: a half-made lock session just closes.
    tokio::select! {
        _ = leader.refresh() => {}
        _ = cancel.cancelled() => return JobRun::Cancelled,
    }
    match lag::check(&cfg.lag, pools, cancel).await {
        Ok(report) => {
            metrics.record_lag(&report);
            if report.primary.reachable {
                record_upgrade_step(cfg, metrics).await;
            }
            match (&report.primary.reachable, &report.primary.error) {
                (false, Some(e)) => JobRun::Failed {
                    error: ErrorLabel::PrimaryUnreachable,
                    message: e.clone(),
                },
                (true, Some(e)) => JobRun::Failed {
                    error: ErrorLabel::PrimaryInRecovery,
                    message: e.clone(),
                },
                _ => JobRun::Done,
            }
        }
        Err(lag::LagError::Cancelled) => JobRun::Cancelled,
        Err(e) => {
            metrics.record_primary_down();
            JobRun::Failed {
                error: e.metric_label(),
                message: e.to_string(),
            }
        }
    }
}

/// `pgsteward_upgrade_step` from the primary's upgrade guard row: the upgrade
/// runs as its own process (CLI, Job), and the row is where every runner
/// records its step before acting, on whichever node is the primary. A read
/// that fails leaves the gauge as it was.
async fn record_upgrade_step(cfg: &Cluster, metrics: &Metrics) {
    let row = upgrade::guard::read_cluster(
        &cfg.database.primary,
        cfg.database.connect_timeout.0,
        cfg.lag.query_timeout.0,
    )
    .await;
    match row {
        Ok(row) => {
            metrics.set_upgrade_step(upgrade::guard::step_reading(row.as_ref()));
            // A write pause whose runner and keeper are both gone (a pod or
            // host lost): resume writes where that is safe (upgrade::rescue).
            if let Some(row) = row {
                if let Some(did) = upgrade::rescue::service_rescue(cfg, &row).await {
                    tracing::warn!(upgrade = %row.upgrade_id, "{did}");
                }
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade guard not read"),
    }
}

/// Refreshes leadership before a leader-only run. `Err` is the run's
/// result when it must not go on: cancelled meanwhile, or another instance
/// leads. Dropping a refresh midway is safe: a half-made lock session just
/// closes.
async fn require_leader(leader: &Leader, cancel: &CancellationToken) -> Result<(), JobRun> {
    match cancel.run_until_cancelled(leader.refresh()).await {
        None => Err(JobRun::Cancelled),
        Some(false) => Err(JobRun::Skipped("not leader")),
        Some(true) => Ok(()),
    }
}

/// One capacity run, on the leader only: one sample per scheduled run (the
/// followers would record duplicates), and the leader's metrics are the ones
/// the alerts read. Findings (something runs out) are metrics and alerts,
/// not job failures; the job fails when the run itself could not be made.
async fn capacity_job(
    cfg: &Cluster,
    leader: &Leader,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> JobRun {
    if let Err(stop) = require_leader(leader, cancel).await {
        return stop;
    }
    let run = capacity::run(cfg, capacity::DEFAULT_HORIZON_DAYS, None);
    let Some(result) = cancel.run_until_cancelled(run).await else {
        return JobRun::Cancelled;
    };
    match result {
        Ok((report, _charts)) => {
            metrics.capacity.record(&report);
            for p in &report.problems {
                tracing::warn!(problem = %p, "capacity");
            }
            JobRun::Done
        }
        Err(e) => JobRun::Failed {
            error: e.metric_label(),
            message: e.to_string(),
        },
    }
}

/// Every PgBouncer instance's pools, on the leader only (the alerts read
/// the leader's metrics). Membership is resolved afresh each run, so a pod
/// added or gone since shows at the next run. An instance that does not
/// answer is `pgsteward_pgbouncer_up 0`, not a job failure; the job fails
/// when a name does not resolve at all.
async fn pgbouncer_job(
    cfg: &Cluster,
    leader: &Leader,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> JobRun {
    if let Err(stop) = require_leader(leader, cancel).await {
        return stop;
    }
    let mut poolers = crate::pooler::Poolers::from_config(cfg);
    let read = async {
        poolers.refresh_members().await?;
        poolers.stats().await
    };
    let Some(result) = cancel.run_until_cancelled(read).await else {
        return JobRun::Cancelled;
    };
    match result {
        Ok(stats) => {
            for s in stats.iter().filter(|s| !s.up) {
                tracing::warn!(instance = %s.instance, error = s.error.as_deref().unwrap_or(""), "pgbouncer instance down");
            }
            metrics.pooler.record(&stats);
            JobRun::Done
        }
        Err(e) => JobRun::Failed {
            error: ErrorLabel::Pooler,
            message: e.to_string(),
        },
    }
}

/// The partition pass, on the leader only.
async fn partitions_job(
    cfg: &Cluster,
    leader: &Leader,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> JobRun {
    if let Err(stop) = require_leader(leader, cancel).await {
        return stop;
    }
    if cancel.is_cancelled() {
        return JobRun::Cancelled;
    }
    // No DDL while an upgrade fences and promotes: the pass asks the DDL
    // gate (upgrade::gate) and skips; the next tick runs it. A primary an
    // upgrade has moved must not get DDL meant for the new one: the gate
    // refuses it by the guard row, this by the local journal.
    if let Err(e @ crate::upgrade::UpgradeError::PrimaryMoved { .. }) =
        crate::upgrade::ensure_primary_current(cfg).await
    {
        let message = e.to_string();
        return JobRun::Failed {
            error: e.metric_label(),
            message,
        };
    }
    match partitions::run_pass(cfg, cancel).await {
        Ok(report) => {
            metrics.record_partitions(&report);
            if let Some(reason) = &report.skipped {
                tracing::info!(reason = %reason, "partition pass skipped");
            } else {
                let sum = |f: fn(&partitions::TableReport) -> u64| -> u64 {
                    report.tables.iter().map(f).sum()
                };
                tracing::info!(
                    tables = report.tables.len(),
                    created = sum(|t| u64::from(t.created)),
                    retired = sum(|t| u64::from(t.retired)),
                    rows_moved = sum(|t| t.rows_moved),
                    "partition pass"
                );
            }
            let failed: Vec<String> = report
                .tables
                .iter()
                .filter_map(|t| t.error.as_ref().map(|e| format!("{}: {e}", t.table)))
                .chain(report.indexes.iter().filter_map(|t| {
                    t.error
                        .as_ref()
                        .map(|e| format!("{} indexes: {e}", t.table))
                }))
                .collect();
            if failed.is_empty() {
                JobRun::Done
            } else {
                JobRun::Failed {
                    error: ErrorLabel::Table,
                    message: failed.join("; "),
                }
            }
        }
        Err(PartitionError::Cancelled) => JobRun::Cancelled,
        // The gate found the primary moved (the guard row): an upgrade's
        // finding, labelled as `ensure_primary_current` labels its own.
        Err(e @ PartitionError::Guard(crate::upgrade::guard::GuardError::Moved { .. })) => {
            JobRun::Failed {
                error: ErrorLabel::Upgrade,
                message: e.to_string(),
            }
        }
        Err(e) => {
            let message = e.to_string();
            JobRun::Failed {
                error: e.metric_label(),
                message,
            }
        }
    }
}
