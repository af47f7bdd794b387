//! The pause keeper's process (`pgsteward upgrade keeper`, see `keeper` for
//! the rules): it waits for the runner's word, and closes the write pause
//! in its place when the runner is gone or stuck.

use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use super::keeper::{DISARM, PERSIST, PID_FILE};
use super::record::{Step, StepStatus};
use super::{journal, UpgradeError};
use crate::config::Config;
use crate::outcome::Outcome;
use crate::pooler::Poolers;

/// Between two attempts.
const RETRY: Duration = Duration::from_secs(2);

/// `pgsteward upgrade keeper`: waits for the runner's word on standard input
/// (see the module doc). Exit 0 when disarmed or the window was closed, 1
/// when it gave up after [`PERSIST`].
pub async fn run(cfg: &Config, after: Duration) -> Result<Outcome, UpgradeError> {
    let r = watch(cfg, after).await;
    let pid_file = cfg.upgrade.state_dir.join(PID_FILE);
    if std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == std::process::id().to_string())
    {
        let _ = std::fs::remove_file(&pid_file);
    }
    r
}

async fn watch(cfg: &Config, after: Duration) -> Result<Outcome, UpgradeError> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let deadline = tokio::time::Instant::now() + after;
    let mut resumed_for_a_stuck_runner = false;
    loop {
        let stuck = tokio::time::sleep_until(deadline);
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(l)) if l.trim() == DISARM => return Ok(Outcome::Healthy),
                Ok(Some(_)) => continue,
                // End of file (or a broken pipe): the runner is gone.
                Ok(None) | Err(_) => break,
            },
            _ = stuck, if !resumed_for_a_stuck_runner => {
                resumed_for_a_stuck_runner = true;
                tracing::warn!("the upgrade runner did not close the write pause in time; resuming writes for it");
                if let Err(e) = resume_safe(cfg).await {
                    tracing::error!(error = %e, "pause keeper: RESUME failed");
                }
            }
        }
    }
    close_window(cfg).await
}

/// The runner is gone: close its window, retrying for up to [`PERSIST`].
async fn close_window(cfg: &Config) -> Result<Outcome, UpgradeError> {
    let give_up = tokio::time::Instant::now() + PERSIST;
    let mut first = true;
    loop {
        match recover_once(cfg).await {
            Ok(()) => return Ok(Outcome::Healthy),
            Err(e) => {
                tracing::warn!(error = %e, "pause keeper: the write pause is not closed yet; retrying");
                if first {
                    // Whatever else failed, writes go on where that is safe.
                    if let Err(e) = resume_safe(cfg).await {
                        tracing::error!(error = %e, "pause keeper: RESUME failed");
                    }
                    first = false;
                }
            }
        }
        if tokio::time::Instant::now() >= give_up {
            eprintln!(
                "pgsteward pause keeper: gave up after {PERSIST:?}; run `pgsteward upgrade resume`"
            );
            return Ok(Outcome::Problem);
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One attempt at what `upgrade resume` does, up to the end of the window.
async fn recover_once(cfg: &Config) -> Result<(), UpgradeError> {
    let _lock = journal::lock(&cfg.upgrade.state_dir)?;
    let Some(path) = journal::latest(&cfg.upgrade.state_dir)? else {
        return Ok(());
    };
    let journal = journal::Journal::open(&path)?;
    if !journal.record().in_flight() {
        return Ok(());
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let provider = crate::provider::from_config_cancellable(cfg, cancel.clone())?;
    let guard = super::take_guard_for(cfg, journal.record(), provider.as_ref()).await?;
    let mut saga = super::runner::Saga::new(cfg.clone(), journal, provider, cancel, false);
    saga.guard = Some(guard);
    let r = saga.drive_window().await;
    if let Some(g) = saga.guard.take() {
        g.release_all().await;
    }
    r
}

/// RESUMEs what may be resumed without the journal's lock or the guard:
/// every database before promote (PgBouncer points at the old primary, the
/// only writable node), and from promote on only once `repoint` is done
/// (see the module doc).
pub async fn resume_safe(cfg: &Config) -> Result<(), UpgradeError> {
    let rec = match journal::latest(&cfg.upgrade.state_dir)? {
        Some(p) => journal::read(&p)?,
        None => return Ok(()),
    };
    if rec.promote_started() && rec.status(Step::Repoint) != StepStatus::Done {
        tracing::warn!("promote has started and PgBouncer is not repointed yet: writes stay paused until the repoint (`upgrade resume`)");
        return Ok(());
    }
    let mut poolers = Poolers::from_config(cfg);
    if let Some(endpoint) = rec.replica_endpoint() {
        if let Ok(spec) = crate::pg::ConnSpec::parse(endpoint) {
            let (host, port) = spec.host_port();
            poolers.add_server(&host, port);
        }
    }
    poolers.resume().await?;
    Ok(())
}
