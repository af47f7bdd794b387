//! The pause keeper's process (`pgsteward upgrade keeper`, see `keeper` for
//! the rules): it waits for the runner's word, and closes the write pause
//! in its place when the runner is gone or stuck. And the service's side
//! ([`service_rescue`]): `pgsteward run` RESUMEs what is safe to resume
//! when the guard row says a window is open and no runner holds the guard,
//! for a runner whose keeper died with it (a pod or host lost).

use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use super::error::UpgradeError;
use super::journal;
use super::keeper::{DISARM, PERSIST, PID_FILE};
use super::sql::WINDOW_AGE;
use crate::config::Cluster;
use crate::outcome::Outcome;
use crate::pooler::Poolers;

/// Between two attempts.
const RETRY: Duration = Duration::from_secs(2);
/// How long a keeper whose runner is gone retries the whole roll back
/// quickly before it RESUMEs what is safe on its own. The usual first
/// failure is a race with the dead runner's sessions (its guard lock ends
/// when the server notices the closed socket, milliseconds later); a RESUME
/// then would send PgBouncer's logins into the still-fenced old primary,
/// which refuses them, and PgBouncer waits `server_login_retry` (15 s by
/// default) before trying again: seconds of stalled or failed clients that
/// the unfence a few hundred milliseconds later would have avoided.
const RESUME_ALONE_AFTER: Duration = Duration::from_secs(1);
/// Between two attempts within [`RESUME_ALONE_AFTER`].
const QUICK_RETRY: Duration = Duration::from_millis(100);

/// `pgsteward upgrade keeper`: waits for the runner's word on standard input
/// (see the module doc). Exit 0 when disarmed or the window was closed, 1
/// when it gave up after [`PERSIST`].
pub async fn run(cfg: &Cluster, after: Duration) -> Result<Outcome, UpgradeError> {
    let r = watch(cfg, after).await;
    let pid_file = cfg.state_dir.join(PID_FILE);
    if std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == std::process::id().to_string())
    {
        let _ = std::fs::remove_file(&pid_file);
    }
    r
}

async fn watch(cfg: &Cluster, after: Duration) -> Result<Outcome, UpgradeError> {
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
async fn close_window(cfg: &Cluster) -> Result<Outcome, UpgradeError> {
    let started = tokio::time::Instant::now();
    let give_up = started + PERSIST;
    let mut resumed_alone = false;
    loop {
        match recover_once(cfg).await {
            Ok(()) => return Ok(Outcome::Healthy),
            Err(e) => {
                tracing::warn!(error = %e, "pause keeper: the write pause is not closed yet; retrying");
                if !resumed_alone && started.elapsed() >= RESUME_ALONE_AFTER {
                    // Whatever else failed, writes go on where that is safe.
                    if let Err(e) = resume_safe(cfg).await {
                        tracing::error!(error = %e, "pause keeper: RESUME failed");
                    }
                    resumed_alone = true;
                }
            }
        }
        if tokio::time::Instant::now() >= give_up {
            eprintln!(
                "pgsteward pause keeper: gave up after {PERSIST:?}; run `pgsteward upgrade resume`"
            );
            return Ok(Outcome::Problem);
        }
        tokio::time::sleep(if resumed_alone { RETRY } else { QUICK_RETRY }).await;
    }
}

/// One attempt at what `upgrade resume` does, up to the end of the window.
async fn recover_once(cfg: &Cluster) -> Result<(), UpgradeError> {
    let _lock = journal::lock(&cfg.state_dir)?;
    let Some(path) = journal::latest(&cfg.state_dir)? else {
        return Ok(());
    };
    let journal = journal::Journal::open(&path)?;
    if !journal.record().in_flight() {
        return Ok(());
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let provider = crate::provider::from_config_cancellable(cfg, cancel.clone())?;
    let guard = super::claim::take_guard_for(cfg, journal.record(), provider.as_ref()).await?;
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
pub async fn resume_safe(cfg: &Cluster) -> Result<(), UpgradeError> {
    let rec = match journal::latest(&cfg.state_dir)? {
        Some(p) => journal::read(&p)?,
        None => return Ok(()),
    };
    if rec.promote_started() && !rec.window_work_done() {
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

/// What [`service_rescue`] makes of a guard row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowVerdict {
    /// No write pause open, or its runner (or keeper) still holds the guard.
    Nothing,
    /// Open, its runner gone, not for long enough yet: the keeper may act.
    Wait,
    /// Open, its runner gone past the bound, PgBouncer may be resumed:
    /// before promote (the old primary is the only writable node) or once
    /// repoint is done (PgBouncer points at the new primary).
    Resume,
    /// Open between promote and repoint: PgBouncer would send writes to the
    /// fenced old primary; `upgrade resume` must repoint first.
    NeedsRepoint,
}

/// Pure: the service's verdict on guard row `step` with `cutover` set, the
/// lock `held` or not, the step `age` old, against the keeper's `bound`.
pub fn window_verdict(
    cutover: bool,
    finished: bool,
    step: &str,
    held: bool,
    age: Duration,
    bound: Duration,
) -> WindowVerdict {
    const BEFORE_PROMOTE: [&str; 4] = [
        "pause_writes",
        "fence_old_primary",
        "final_sync",
        "final_sync flush",
    ];
    const BEFORE_REPOINT: [&str; 2] = ["promote", "repoint"];
    let open = cutover
        && !finished
        && (BEFORE_PROMOTE.contains(&step)
            || BEFORE_REPOINT.contains(&step)
            || step == "resume_writes");
    if !open || held {
        return WindowVerdict::Nothing;
    }
    if age < bound {
        return WindowVerdict::Wait;
    }
    if BEFORE_REPOINT.contains(&step) {
        WindowVerdict::NeedsRepoint
    } else {
        WindowVerdict::Resume
    }
}

/// The service's check at every lag pass (see the module doc): RESUMEs
/// every PgBouncer entry when the verdict allows it. Returns what it did,
/// for the log; `None` when nothing was to be done.
pub async fn service_rescue(cfg: &Cluster, row: &super::guard::GuardRow) -> Option<String> {
    if !row.cutover || row.finished || cfg.cutover.kind != crate::config::CutoverKind::Pgbouncer {
        return None;
    }
    let after = crate::pooler::query_timeout(cfg);
    let client =
        super::guard::reader_session(&cfg.database.primary, cfg.database.connect_timeout.0)
            .await
            .ok()?;
    let age = tokio::time::timeout(
        after,
        client.query_one(
            WINDOW_AGE,
            &[&super::guard::GUARD_NS, &super::guard::GUARD_KEY],
        ),
    )
    .await
    .ok()?
    .ok()?;
    let held: bool = age.get(0);
    let age = Duration::from_secs_f64(age.get::<_, f64>(1).max(0.0));
    let bound = cfg.upgrade.pause_timeout.0 + super::keeper::bound(cfg);
    match window_verdict(row.cutover, row.finished, &row.step, held, age, bound) {
        WindowVerdict::Nothing | WindowVerdict::Wait => None,
        WindowVerdict::NeedsRepoint => Some(format!(
            "upgrade {} stopped between promote and repoint {age:?} ago and no runner holds it: \
             writes stay paused until `pgsteward upgrade resume` repoints PgBouncer",
            row.upgrade_id
        )),
        WindowVerdict::Resume => {
            let mut poolers = Poolers::from_config(cfg);
            poolers.cut_over_every_entry();
            Some(match poolers.resume().await {
                Ok(()) => format!(
                    "upgrade {} left writes paused at {} {age:?} ago and no runner holds it: \
                     RESUMEd every PgBouncer; `pgsteward upgrade resume` finishes the upgrade",
                    row.upgrade_id, row.step
                ),
                Err(e) => format!(
                    "upgrade {} left writes paused at {}: RESUME failed: {e}",
                    row.upgrade_id, row.step
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_resumes_only_an_abandoned_window_on_the_safe_side_of_promote() {
        let bound = Duration::from_secs(27);
        let old = Duration::from_secs(60);
        let v = |cutover, finished, step, held, age| {
            window_verdict(cutover, finished, step, held, age, bound)
        };
        assert_eq!(
            v(true, false, "fence_old_primary", false, old),
            WindowVerdict::Resume
        );
        assert_eq!(
            v(true, false, "final_sync flush", false, old),
            WindowVerdict::Resume
        );
        assert_eq!(
            v(true, false, "resume_writes", false, old),
            WindowVerdict::Resume
        );
        // The fenced old primary is where PgBouncer points until repoint.
        assert_eq!(
            v(true, false, "promote", false, old),
            WindowVerdict::NeedsRepoint
        );
        assert_eq!(
            v(true, false, "repoint", false, old),
            WindowVerdict::NeedsRepoint
        );
        // A runner (or its keeper) holds the guard: theirs to finish.
        assert_eq!(
            v(true, false, "final_sync", true, old),
            WindowVerdict::Nothing
        );
        // Give the keeper its time first.
        assert_eq!(
            v(true, false, "final_sync", false, Duration::from_secs(3)),
            WindowVerdict::Wait
        );
        // No window open.
        assert_eq!(
            v(false, false, "wait_catchup", false, old),
            WindowVerdict::Nothing
        );
        assert_eq!(v(true, false, "verify", false, old), WindowVerdict::Nothing);
        assert_eq!(
            v(true, true, "final_sync", false, old),
            WindowVerdict::Nothing
        );
    }
}
