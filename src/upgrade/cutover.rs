//! The write pause and the decision to start it.
//!
//! [`ready`] is the pure catch-up gate. [`Saga::cutover`] runs steps 5–10:
//! PAUSE, fence, final sync, promote, repoint, RESUME. Steps 5–7 share one
//! deadline, `pause_timeout`, counted from the moment PAUSE is sent; any error
//! or a missed deadline before promote makes the runner roll back (RESUME,
//! unfence), so the pause is the only thing clients can notice. Promote is the
//! point of no return: from there the window only goes forward.

use std::time::Duration;

use tokio::time::Instant;

use super::error::UpgradeError;
use super::record::{Output, Step, StepStatus, STEPS};
use super::runner::Saga;
use crate::config::CutoverKind;

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
    /// Steps 5–10. Returns on the first error; the caller decides between
    /// rolling back (before promote) and waiting for resume (after).
    /// `pause_writes` opens every connection the window needs before it sends
    /// PAUSE and starts the deadline the next two steps share.
    pub(crate) async fn cutover(&mut self) -> Result<(), UpgradeError> {
        // Before PAUSE: a crash of this process inside the window is covered.
        self.arm_keeper();
        for step in STEPS.iter().copied().filter(|s| s.under_pause_deadline()) {
            if self.journal.record().status(step) != StepStatus::Done {
                self.forward(step).await?;
            }
        }
        // From promote on the window only goes forward: no pause deadline.
        self.set_pause_deadline(None);
        self.forward_from_promote().await
    }

    /// Steps 8–10; also the way a resumed upgrade finishes a window that
    /// crashed after promote had started.
    pub(crate) async fn forward_from_promote(&mut self) -> Result<(), UpgradeError> {
        if self.record().status(super::record::Step::ResumeWrites) != StepStatus::Done {
            self.arm_keeper();
        }
        let rest = STEPS
            .iter()
            .copied()
            .filter(|s| !s.before_promote() && s.in_pause_window());
        for step in rest {
            if self.journal.record().status(step) != StepStatus::Done {
                self.forward(step).await?;
            }
        }
        self.end_pause_window();
        Ok(())
    }

    /// The client-visible window closes when RESUME returns (or, without a
    /// pooler, when the last step of the window ends).
    fn end_pause_window(&mut self) {
        if let Some(t0) = self.window_start.take() {
            self.pause_window = Some(t0.elapsed());
        }
    }
}

impl Saga {
    /// Sets (at PAUSE) or clears (once promote starts) the pause deadline
    /// every wait of steps 5–7 shares, the pooler's included.
    pub(crate) fn set_pause_deadline(&mut self, deadline: Option<tokio::time::Instant>) {
        self.deadline = deadline;
        self.poolers.set_deadline(deadline);
        if let Some(g) = self.guard.as_mut() {
            g.set_deadline(deadline);
        }
    }

    pub(crate) fn window_deadline(&self) -> tokio::time::Instant {
        // Resumed after a crash (forward only happens past promote): no deadline left to keep.
        self.deadline
            .unwrap_or_else(|| tokio::time::Instant::now() + self.cfg.upgrade.pause_timeout.0)
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
            self.end_pause_window();
            // The repoint's files, renamed into place inside the window, are
            // made durable now, outside it (and again after a crash: idempotent).
            self.poolers.sync_configs().await?;
            note = Some(format!("writes resumed on {}", self.poolers.pause_report()));
        }
        self.end_pause_window();
        self.disarm_keeper();
        Ok(Output {
            note,
            ..Output::default()
        })
    }
}

/// Time left until `deadline`, or the pause-timeout error.
pub(crate) fn remaining(deadline: Instant, what: &str) -> Result<Duration, UpgradeError> {
    let now = Instant::now();
    if now >= deadline {
        return Err(UpgradeError::PauseTimeout {
            what: what.to_string(),
        });
    }
    Ok(deadline - now)
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
