//! The upgrade commands: `start`, `resume`, `abort`, `status`, the pause
//! keeper's run, and what they print.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::claim::{take_guard, take_guard_for};
use super::error::UpgradeError;
use super::record::{Event, Phase, Step, StepStatus, UpgradeRecord};
use super::runner::Saga;
use super::{guard, journal, keeper, record, rescue};
use crate::cli::OutputFormat;
use crate::config::Cluster;
use crate::outcome::Outcome;
use crate::pooler::Poolers;

/// Listens for SIGINT/SIGTERM: before the write pause the upgrade stops at the
/// next step boundary, inside it the upgrade rolls back at once.
fn cancel_on_signal() -> CancellationToken {
    crate::pg::retry::cancel_on_signal("the upgrade")
}

/// A new upgrade id: sortable by creation time, valid in RDS identifiers.
fn new_upgrade_id() -> String {
    format!("u{}", chrono::Utc::now().format("%y%m%d%H%M%S%3f"))
}

/// What `start` and `resume` return to their callers (the demo and the benchmark use it).
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub record: UpgradeRecord,
    /// PAUSE sent → RESUME returned, when one process ran the whole window.
    pub pause_window: Option<Duration>,
}

/// Starts a new upgrade to `class` and drives it to the end.
pub async fn start(cfg: &Cluster, class: &str, quiet: bool) -> Result<RunSummary, UpgradeError> {
    start_with(cfg, class, quiet, |cancel| {
        crate::provider::from_config_cancellable(cfg, cancel)
    })
    .await
}

/// [`start`] with the provider `make_provider` builds around the run's
/// cancellation token (tests put a scripted RDS behind it).
pub async fn start_with(
    cfg: &Cluster,
    class: &str,
    quiet: bool,
    make_provider: impl FnOnce(
        CancellationToken,
    ) -> Result<
        Box<dyn crate::provider::Provider>,
        crate::provider::ProviderError,
    >,
) -> Result<RunSummary, UpgradeError> {
    let _lock = keeper::lock_after_keeper(&cfg.state_dir).await?;
    let id = new_upgrade_id();
    // Before anything changes: one upgrade per primary, wherever it runs.
    let mut guard = take_guard(cfg, &cfg.database.primary, &id).await?;
    let cancel = cancel_on_signal();
    let provider = make_provider(cancel.clone())?;
    let mut poolers = Poolers::from_config(cfg);
    let pre =
        match super::observe::prechecks(cfg, provider.as_ref(), &mut poolers, class, Some(&id))
            .await
        {
            Ok(p) => p,
            Err(e) => {
                guard.give_up().await;
                return Err(e);
            }
        };
    let failed = pre.failures();
    if !failed.is_empty() {
        guard.give_up().await;
        guard.release_all().await;
        return Err(UpgradeError::PrecheckFailed(failed));
    }
    let journal = match journal::Journal::create(
        &cfg.state_dir,
        Event::Created {
            kind: record::UPGRADE_KIND.into(),
            id: id.clone(),
            target_class: class.to_string(),
            provider: format!("{:?}", cfg.upgrade.provider).to_lowercase(),
            source_primary: cfg.database.primary.without_password(),
            saga: record::SAGA_VERSION,
        },
    ) {
        Ok(j) => j,
        Err(e) => {
            guard.give_up().await;
            return Err(e.into());
        }
    };
    if !quiet {
        println!("upgrade {id}: journal {}", journal.path().display());
    }
    let mut saga = Saga::new(cfg.clone(), journal, provider, cancel, quiet);
    saga.guard = Some(guard);
    let r = saga.drive().await;
    finish(saga, r).await
}

/// Continues the newest upgrade from its journal.
pub async fn resume(cfg: &Cluster, quiet: bool) -> Result<RunSummary, UpgradeError> {
    let _lock = keeper::lock_after_keeper(&cfg.state_dir).await?;
    let path = journal::latest(&cfg.state_dir)?
        .ok_or_else(|| UpgradeError::NoUpgrade(cfg.state_dir.display().to_string()))?;
    let journal = journal::Journal::open(&path)?;
    let cancel = cancel_on_signal();
    let provider = crate::provider::from_config_cancellable(cfg, cancel.clone())?;
    let guard = if journal.record().in_flight() {
        Some(take_guard_for(cfg, journal.record(), provider.as_ref()).await?)
    } else {
        None
    };
    if !quiet {
        println!(
            "resuming upgrade {} ({})",
            journal.record().id,
            journal.record().phase
        );
    }
    let mut saga = Saga::new(cfg.clone(), journal, provider, cancel, quiet);
    saga.guard = guard;
    let r = saga.drive().await;
    finish(saga, r).await
}

async fn finish(mut saga: Saga, r: Result<(), UpgradeError>) -> Result<RunSummary, UpgradeError> {
    if let Some(g) = saga.guard.take() {
        g.release_all().await;
    }
    r?;
    let record = saga.record().clone();
    if !saga.progress.quiet {
        if let Some(w) = saga.pause_window() {
            println!(
                "write pause (PAUSE sent -> RESUME returned): {:.1} ms",
                w.as_secs_f64() * 1000.0
            );
        }
        if let Some(e) = record.replica_endpoint() {
            println!(
                "upgrade {} completed; the primary is now {e}: set database.primary to it",
                record.id
            );
        }
    }
    Ok(RunSummary {
        record,
        pause_window: saga.pause_window(),
    })
}

pub async fn start_command(cfg: &Cluster, class: &str) -> Result<Outcome, UpgradeError> {
    start(cfg, class, false).await.map(|_| Outcome::Healthy)
}

/// `pgsteward upgrade keeper` (hidden; see `keeper`).
pub async fn keeper_command(cfg: &Cluster, after_ms: u64) -> Result<Outcome, UpgradeError> {
    rescue::run(cfg, Duration::from_millis(after_ms)).await
}

pub async fn resume_command(cfg: &Cluster) -> Result<Outcome, UpgradeError> {
    resume(cfg, false).await.map(|_| Outcome::Healthy)
}

/// Deletes the new replica of a rolled-back upgrade and closes it.
pub async fn abort_command(cfg: &Cluster) -> Result<Outcome, UpgradeError> {
    abort(cfg).await.map(|_| Outcome::Healthy)
}

pub async fn abort(cfg: &Cluster) -> Result<(), UpgradeError> {
    let _lock = keeper::lock_after_keeper(&cfg.state_dir).await?;
    let path = journal::latest(&cfg.state_dir)?
        .ok_or_else(|| UpgradeError::NoUpgrade(cfg.state_dir.display().to_string()))?;
    let journal = journal::Journal::open(&path)?;
    let rec = journal.record().clone();
    let cancel = cancel_on_signal();
    let provider = crate::provider::from_config_cancellable(cfg, cancel.clone())?;
    let mut guard = if rec.in_flight() {
        Some(take_guard_for(cfg, &rec, provider.as_ref()).await?)
    } else {
        None
    };
    match &rec.phase {
        Phase::Aborted => {
            println!("upgrade {} is already aborted", rec.id);
            return Ok(());
        }
        Phase::Completed | Phase::NeedsResume(_) => {
            return Err(UpgradeError::Usage(format!(
                "upgrade {} is {}: it promoted the new primary and can only go forward (`upgrade resume`)",
                rec.id, rec.phase
            )))
        }
        Phase::Running if rec.promote_started() => {
            return Err(UpgradeError::Usage(format!(
                "upgrade {} has started promote and can only go forward (`upgrade resume`)",
                rec.id
            )))
        }
        Phase::Running => {
            // Interrupted before promote: undo what it did first.
            let mut saga = Saga::new(cfg.clone(), journal, provider, cancel, false);
            saga.guard = guard;
            saga.rollback("aborted by the operator").await?;
            let guard = saga.guard.take();
            return Box::pin(abort_rolled_back(cfg, &path, guard)).await;
        }
        Phase::RolledBack(_) => {}
    }
    drop(journal);
    abort_rolled_back(cfg, &path, guard.take()).await
}

async fn abort_rolled_back(
    cfg: &Cluster,
    path: &std::path::Path,
    guard: Option<guard::Guard>,
) -> Result<(), UpgradeError> {
    let mut journal = journal::Journal::open(path)?;
    let rec = journal.record().clone();
    let provider = crate::provider::from_config(cfg)?;
    if let Some(source) = rec.source() {
        // Readers first: they replicate from the new server.
        for r in &source.readers {
            provider.delete_reader(r).await?;
            println!("deleted {}", r.new_id);
        }
        let id = crate::provider::replica_id(&source.id, &rec.id);
        provider.delete_replica(&id).await?;
        println!("deleted {id}");
    }
    journal.append(&[Event::Aborted])?;
    if let Some(mut g) = guard {
        g.step(
            "aborted",
            guard::StepUpdate {
                cutover: Some(false),
                finished: Some(true),
                ..Default::default()
            },
        )
        .await?;
        g.release_all().await;
    }
    println!("upgrade {} aborted", rec.id);
    Ok(())
}

pub async fn status_command(cfg: &Cluster, output: OutputFormat) -> Result<Outcome, UpgradeError> {
    let Some(path) = journal::latest(&cfg.state_dir)? else {
        match output {
            OutputFormat::Json => crate::output::print_json(&serde_json::json!({"upgrade": null})),
            OutputFormat::Text => println!("no upgrade in {}", cfg.state_dir.display()),
        }
        return Ok(Outcome::Healthy);
    };
    let rec = journal::read(&path)?;
    match output {
        OutputFormat::Json => crate::output::print_json(&rec),
        OutputFormat::Text => print_status(&rec),
    }
    Ok(match rec.phase {
        Phase::Completed | Phase::Aborted => Outcome::Healthy,
        _ => Outcome::Problem,
    })
}

fn print_status(rec: &UpgradeRecord) {
    println!(
        "upgrade {} to class {} ({}): {}",
        rec.id, rec.target_class, rec.provider, rec.phase
    );
    println!("source {}", rec.source_primary);
    if let Some(e) = rec.replica_endpoint() {
        println!("new server {} at {e}", rec.replica_id().unwrap_or("?"));
    }
    let rows: Vec<Vec<String>> = rec
        .steps
        .iter()
        .map(|s| {
            let took = match (s.started_at, s.finished_at) {
                (Some(a), Some(b)) => crate::output::human_seconds(
                    (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6,
                ),
                _ => String::new(),
            };
            vec![
                s.step.name().to_string(),
                s.status.to_string(),
                s.started_at
                    .map(|t| t.format("%H:%M:%S%.3f").to_string())
                    .unwrap_or_default(),
                took,
                s.error
                    .clone()
                    .or_else(|| s.output.note.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        crate::output::table(&["step", "status", "started", "took", "detail"], &rows)
    );
}

/// Summary helpers for the demo and the benchmark: step name, duration.
pub fn step_timings(rec: &UpgradeRecord) -> Vec<(Step, Option<Duration>, StepStatus)> {
    rec.steps
        .iter()
        .map(|s| {
            let d = match (s.started_at, s.finished_at) {
                (Some(a), Some(b)) => (b - a).to_std().ok(),
                _ => None,
            };
            (s.step, d, s.status)
        })
        .collect()
}
