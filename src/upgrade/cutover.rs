//! The write pause and the decision to start it.
//!
//! [`ready`] is the pure catch-up gate. The window's steps (pause_writes to
//! resume_writes: PAUSE, fence, final sync, promote, repoint, RESUME) are
//! rows of the table like any other; entering them arms the pause keeper
//! (kind.rs). The steps under the pause deadline share one deadline,
//! `pause_timeout`, counted from the moment PAUSE is sent; any error or a
//! missed deadline before promote makes the runner roll back (RESUME,
//! unfence), so the pause is the only thing clients can notice. Promote is
//! the point of no return: from there the window only goes forward, without
//! a deadline.
//!
//! The vertical upgrade's side of its two components: the window's
//! deadline handed to the pooler and the guard (`window::PauseWindow` holds it),
//! and the fence step and unfences as thin calls into [`Fence`], which get
//! the session, the deadline and the pids to spare from the saga.

use super::error::UpgradeError;
use super::fence::Fence;
use super::record::{Output, Step};
use super::runner::Saga;
use super::window::remaining;
use crate::config::{ConnString, CutoverKind};
use crate::provider::FenceMethod;

/// The catch-up gate's answer, with the reason (for the progress line and the journal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Go(String),
    NoGo(String),
}

/// How many consecutive samples must be under the limit: one lucky sample
/// between two bursts is not "caught up".
pub const STEADY_SAMPLES: usize = 3;

/// Pure go/no-go for the cutover: the replica's replay lag (`lag`, bytes)
/// must be at or below `max_bytes` in this and the previous
/// `STEADY_SAMPLES - 1` samples (`history`, oldest first, without `lag`).
pub fn ready(lag: u64, history: &[u64], max_bytes: u64) -> Readiness {
    if lag > max_bytes {
        return Readiness::NoGo(format!("lag {lag} B > {max_bytes} B"));
    }
    let recent = history.iter().rev().take(STEADY_SAMPLES - 1);
    let under = 1 + recent.take_while(|l| **l <= max_bytes).count();
    if under >= STEADY_SAMPLES {
        Readiness::Go(format!(
            "lag {lag} B <= {max_bytes} B for {under} consecutive samples"
        ))
    } else {
        Readiness::NoGo(format!(
            "lag {lag} B <= {max_bytes} B, {under} of {STEADY_SAMPLES} samples"
        ))
    }
}

impl Saga {
    /// Sets (at PAUSE) or clears (once promote starts) the pause deadline
    /// every wait under the pause deadline shares, the pooler's included.
    pub(crate) fn set_pause_deadline(&mut self, deadline: Option<tokio::time::Instant>) {
        self.window.set_deadline(deadline);
        self.poolers.set_deadline(deadline);
        if let Some(g) = self.guard.as_mut() {
            g.set_deadline(deadline);
        }
    }

    /// The deadline a step of the window works to (see
    /// `PauseWindow::deadline_or`).
    pub(crate) fn window_deadline(&self) -> tokio::time::Instant {
        self.window.deadline_or(self.cfg.upgrade.pause_timeout.0)
    }

    /// Inside the window: every PgBouncer instance that appeared since
    /// PAUSE (a rollout, a scale-up) is paused too, within what is left of
    /// `deadline` (before promote: a failure rolls back). Returns a note
    /// naming them, if any.
    pub(crate) async fn pause_newcomers(
        &mut self,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Option<String>, UpgradeError> {
        if self.cfg.cutover.kind != CutoverKind::Pgbouncer {
            return Ok(None);
        }
        let left = match deadline {
            Some(d) => remaining(d, "PAUSE of a new PgBouncer instance")?,
            None => crate::pooler::query_timeout(&self.cfg),
        };
        let added = self
            .poolers
            .admit_newcomers(left)
            .await
            .map_err(|e| match e {
                crate::pooler::PoolerError::PauseTimeout { .. } if deadline.is_some() => {
                    UpgradeError::PauseTimeout {
                        what: format!("PAUSE of a new instance ({e})"),
                    }
                }
                other => other.into(),
            })?;
        Ok((!added.is_empty()).then(|| format!("paused new instance(s): {}", added.join(", "))))
    }

    /// Membership read again first: an instance that appeared since the
    /// repoint is paused and repointed before any RESUME, so no instance
    /// sends writes to the old server once writes resume.
    pub(crate) async fn resume_writes(&mut self) -> Result<Output, UpgradeError> {
        let mut note = None;
        if self.cfg.cutover.kind == CutoverKind::Pgbouncer {
            if let Some(nc) = self.pause_newcomers(None).await? {
                let endpoint = self.new_endpoint().await?;
                let (host, port) = endpoint.spec()?.host_port();
                self.point_pooler_at(Step::ResumeWrites, &host, port)
                    .await?;
                self.progress
                    .say(Step::ResumeWrites, &format!("{nc}, repointed"));
            }
            self.poolers.resume().await?;
            self.window.close();
            // The repoint's files, renamed into place inside the window, are
            // made durable now, outside it (and again after a crash: idempotent).
            self.poolers.sync_configs().await?;
            note = Some(format!("writes resumed on {}", self.poolers.pause_report()));
        }
        self.window.close();
        self.window.disarm_keeper();
        Ok(Output {
            note,
            ..Output::default()
        })
    }
}

impl Saga {
    /// Before PAUSE: stages the fence on the old primary's session
    /// ([`Fence::stage`]).
    pub(crate) async fn stage_fence(&mut self) -> Result<(), UpgradeError> {
        let method = self.provider.fence_method();
        let primary = self.cfg.database.primary.clone();
        let limit = self.query_limit();
        let connect_timeout = self.cfg.database.connect_timeout.0;
        let id = self.record().id.clone();
        let (old, fence) = self.old_and_fence().await?;
        fence
            .stage(method, old, &primary, &id, limit, connect_timeout)
            .await
    }

    /// fence_old_primary (see fence/): newcomers paused first, then the provider's
    /// fence, within the window's deadline.
    pub(crate) async fn fence_old_primary(&mut self) -> Result<Output, UpgradeError> {
        let deadline = self.window_deadline();
        // A PgBouncer instance that appeared since PAUSE would send its
        // clients' writes into the fence (client errors): paused first.
        if let Some(n) = self.pause_newcomers(Some(deadline)).await? {
            self.progress.say(Step::FenceOldPrimary, &n);
        }
        let primary = self.cfg.database.primary.clone();
        let cancel = self.cancel.clone();
        let method = self.provider.fence_method();
        let t0 = std::time::Instant::now();
        if method == FenceMethod::AlterDatabase {
            let keep = self.kept_read_only().unwrap_or_default();
            let ours = self.own_pids();
            let old = self.old_client().await?;
            return Fence::put_up_databases(old, &primary, &keep, &ours, deadline).await;
        }
        if !self.fence.is_staged() {
            // Run again after a crash or on a retry: stage (idempotent) first.
            self.stage_fence().await?;
        }
        let id = self.record().id.clone();
        let ours = self.own_pids();
        let written = self.fence.write_hba(&id, t0, deadline)?;
        let old = self.old_client().await?;
        let (output, settling) = written
            .enforce(old, &primary, &ours, deadline, &cancel)
            .await?;
        self.fence.settling(Some(settling));
        Ok(output)
    }

    /// Lifts the fence completely and proves it, or fails. Idempotent.
    pub(crate) async fn unfence(&mut self) -> Result<(), UpgradeError> {
        let primary = self.cfg.database.primary.clone();
        let method = self.provider.fence_method();
        let limit = self.query_limit();
        if method == FenceMethod::AlterDatabase {
            // Not known: pause_writes never finished, so no fence was put up.
            let Some(keep) = self.kept_read_only() else {
                return Ok(());
            };
            let old = self.old_client().await?;
            return Fence::lift_databases(old, &primary, &keep, limit).await;
        }
        let old = self.old_client().await?;
        let files = Fence::clear_hba(old, &primary, limit).await?;
        let probe = self.fence.probe();
        let connect_timeout = self.cfg.database.connect_timeout.0;
        let old = self.old_client().await?;
        Fence::reload_unfenced(old, files, probe, &primary, limit, connect_timeout).await
    }

    /// A database-level fence streamed to the new server with the rest of the
    /// catalog: lift it there before writes resume. Idempotent.
    pub(crate) async fn unfence_new(&mut self, endpoint: &ConnString) -> Result<(), UpgradeError> {
        if self.provider.fence_method() != FenceMethod::AlterDatabase {
            return Ok(());
        }
        let keep = self.kept_read_only().unwrap_or_default();
        let limit = self.query_limit();
        let new = self.new_client().await?;
        Fence::lift_databases(new, endpoint, &keep, limit).await
    }

    /// The databases read-only on purpose (RDS fence): read before PAUSE
    /// by this run, else journaled with pause_writes.
    pub(crate) fn kept_read_only(&self) -> Option<Vec<String>> {
        self.fence.kept_read_only(self.record())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_needs_steady_samples_under_the_limit() {
        assert_eq!(
            ready(10, &[], 100),
            Readiness::NoGo("lag 10 B <= 100 B, 1 of 3 samples".into())
        );
        assert!(matches!(ready(10, &[5, 50], 100), Readiness::Go(_)));
        assert!(matches!(ready(10, &[500, 5, 50], 100), Readiness::Go(_)));
        assert!(matches!(ready(10, &[5, 500], 100), Readiness::NoGo(_)));
        assert!(matches!(ready(101, &[5, 5, 5], 100), Readiness::NoGo(_)));
        assert!(matches!(ready(100, &[100, 100], 100), Readiness::Go(_)));
    }
}
