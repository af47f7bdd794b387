//! Drives an upgrade: record → run → record, one step at a time.
//!
//! Crash safety: `step_started` is durable before a step acts, so a step found
//! `running` after a crash may or may not have acted; it runs again, and every
//! step observes before it acts (steps.rs). Where to go after a crash is
//! decided by the pure [`recovery`]:
//! * promote has started → only forward (the old primary is fenced and the
//!   new one has everything; going back could lose commits made on it);
//! * a write-pause step (pause_writes to final_sync) had started, or an undo was in progress → finish
//!   the roll back: the pause deadline has certainly passed while we were dead;
//! * otherwise → forward from the first step that is not done.
//!
//! The `step_succeeded` of a step is written together with the next
//! `step_started` (one fsync instead of two inside the write pause). Losing it
//! in a crash only makes the finished step run again, which is harmless.

use std::time::Instant;

use super::error::UpgradeError;
use super::guard::{GuardError, StepUpdate};
use super::record::{Event, Output, Phase, Step, StepStatus, UpgradeRecord, STEPS};
pub use super::saga::{Progress, Saga};
use super::table::{self, Undo};
use crate::failpoint;

/// What a runner does with a journal it did not write itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    Forward,
    FinishRollback(String),
    /// Rolled back earlier; try the cutover again (`upgrade resume`).
    Retry,
    Done,
}

/// Pure: where to go with `rec` (see the module doc).
pub fn recovery(rec: &UpgradeRecord) -> Recovery {
    match &rec.phase {
        Phase::Completed | Phase::Aborted => return Recovery::Done,
        Phase::RolledBack(_) => return Recovery::Retry,
        Phase::NeedsResume(_) => return Recovery::Forward,
        Phase::Running => {}
    }
    if rec.promote_started() {
        return Recovery::Forward;
    }
    let undoing = STEPS.iter().any(|s| {
        matches!(
            rec.status(*s),
            StepStatus::Failed | StepStatus::Undoing | StepStatus::UndoFailed | StepStatus::Undone
        )
    });
    if undoing {
        return Recovery::FinishRollback("a roll back was interrupted".into());
    }
    let in_window = STEPS
        .iter()
        .filter(|s| s.under_pause_deadline())
        .any(|s| rec.status(*s) != StepStatus::Pending);
    if in_window {
        return Recovery::FinishRollback(
            "the process stopped during the write pause; the pause deadline has passed".into(),
        );
    }
    Recovery::Forward
}

impl Saga {
    /// Appends `events` after any pending ones, durably.
    fn log(&mut self, events: &[Event]) -> Result<(), UpgradeError> {
        self.journal.append(events)?;
        Ok(())
    }

    pub(crate) fn begin(&mut self, step: Step) -> Result<(), UpgradeError> {
        let started = [Event::StepStarted { step }];
        if table::start_must_be_durable(step) {
            self.log(&started)?;
        } else {
            self.journal.append_written(&started)?;
        }
        self.step_started = Some(Instant::now());
        Ok(())
    }

    pub(crate) fn finish(&mut self, step: Step, output: Output) -> Result<(), UpgradeError> {
        let took = self
            .step_started
            .take()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        self.progress.say(
            step,
            &format!(
                "done in {:.1} ms{}",
                took.as_secs_f64() * 1000.0,
                output
                    .note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ),
        );
        self.journal
            .stage(&[Event::StepSucceeded { step, output }])?;
        Ok(())
    }

    /// Writes what is pending (before waiting, exiting or reporting).
    pub(crate) fn flush(&mut self) -> Result<(), UpgradeError> {
        self.log(&[])
    }

    /// One step: started (durable) → failpoint → action (twice under the
    /// repeat switch) → failpoint → succeeded (written with the next start).
    pub(crate) async fn forward(&mut self, step: Step) -> Result<(), UpgradeError> {
        self.attempting = Some(step);
        self.guard_step(step).await?;
        self.begin(step)?;
        let name = step.name();
        failpoint::hit(&format!("{name}-start")).map_err(UpgradeError::Injected)?;
        let mut output = self.action(step).await?;
        if failpoint::repeat_steps() {
            self.progress.say(step, "running again (idempotence check)");
            output = self.action(step).await?;
        }
        failpoint::hit(&format!("{name}-done")).map_err(UpgradeError::Injected)?;
        self.finish(step, output)
    }

    /// Proves this runner still owns the upgrade (lock held, epoch current)
    /// and records the step in the guard row, before the step acts. After
    /// the write pause the guard follows the primary to the new server and
    /// the old one's row names where the primary went.
    async fn guard_step(&mut self, step: Step) -> Result<(), UpgradeError> {
        if self.guard.is_none() {
            return Ok(());
        }
        let moves = table::row(step).guard;
        let old = self.cfg.database.primary.to_string();
        if moves.hold_old {
            if let Some(g) = self.guard.as_mut() {
                g.freeze(&old);
            }
        }
        if moves.follow_new {
            let endpoint = self.new_endpoint().await?;
            // An identifier swap (RDS) gives the new server the old address:
            // the session held there already follows the primary.
            if let (Some(g), false) = (self.guard.as_mut(), endpoint.to_string() == old) {
                g.extend_to(&endpoint).await?;
                let local =
                    self.provider.fence_method() == crate::provider::FenceMethod::AlterSystem;
                if moves.mark_moved && local {
                    g.mark_moved(&old, &endpoint.to_string()).await?;
                }
            }
        }
        let deadline = if moves.pause_bound {
            self.window.deadline()
        } else {
            None
        };
        if let Some(g) = self.guard.as_mut() {
            g.set_deadline(deadline);
            let update = StepUpdate {
                cutover: moves.cutover,
                ..Default::default()
            };
            g.step(step.name(), update).await?;
        }
        Ok(())
    }

    /// Records the end of the upgrade (or of its roll back) in the guard row;
    /// a failure is logged: the journal already holds the outcome.
    async fn guard_end(&mut self, what: &str, finished: bool) {
        if let Some(g) = self.guard.as_mut() {
            let update = StepUpdate {
                cutover: Some(false),
                finished: Some(finished),
                ..Default::default()
            };
            if let Err(e) = g.step(what, update).await {
                tracing::error!(error = %e, "cannot record the end of the upgrade in the guard row");
            }
        }
    }

    /// Runs the upgrade from wherever its journal stands to the end.
    pub async fn drive(&mut self) -> Result<(), UpgradeError> {
        match recovery(self.record()) {
            Recovery::Done => return Ok(()),
            Recovery::Retry => {
                self.progress
                    .say(Step::Precheck, "retrying after the earlier roll back");
                self.log(&[Event::Retry])?;
            }
            Recovery::FinishRollback(reason) => {
                self.progress
                    .say(Step::Precheck, &format!("rolling back: {reason}"));
                self.rollback(&reason).await?;
                return Err(self.rolled_back_error(reason));
            }
            Recovery::Forward => {}
        }
        while let Some(step) = self.record().next_step() {
            let result = if step.under_pause_deadline() {
                self.cutover().await
            } else if step.in_pause_window() {
                self.forward_from_promote().await
            } else {
                self.forward(step).await
            };
            let Err(err) = result else { continue };
            if matches!(err, UpgradeError::Guard(GuardError::Lost { .. })) {
                // Another runner may own the upgrade now: touch nothing more.
                let _ = self.flush();
                return Err(err);
            }
            // The step that failed is the one running, else the one about to
            // start (a window runs several steps in one call).
            let attempted = self.attempting.take().unwrap_or(step);
            let failed = self
                .record()
                .steps
                .iter()
                .find(|s| s.status == StepStatus::Running)
                .map(|s| s.step)
                .unwrap_or(attempted);
            if matches!(err, UpgradeError::Cancelled) && !failed.in_pause_window() {
                // Stop at the step boundary; `upgrade resume` runs this step again.
                self.flush()?;
                return Err(err);
            }
            // A journal that cannot be written (a full disk) before a step
            // started is that, not a failure of the step.
            let msg = if matches!(err, UpgradeError::Journal(_))
                && self.record().status(failed) != StepStatus::Running
            {
                format!("the journal could not be written before {failed} started: {err}")
            } else {
                format!("{failed}: {err}")
            };
            // A failure before the step started (its guard check, its journal
            // entry) has no step to fail.
            if self.record().status(failed) == StepStatus::Running {
                self.log_soft(&[Event::StepFailed {
                    step: failed,
                    error: err.to_string(),
                }]);
            }
            self.progress.say(failed, &format!("failed: {err}"));
            if self.record().promote_started() {
                self.after_promote_failure(&msg).await;
                return Err(UpgradeError::NeedsResume {
                    id: self.record().id.clone(),
                    reason: msg,
                });
            }
            self.rollback(&msg).await?;
            return Err(self.rolled_back_error(msg));
        }
        self.log(&[Event::Completed])?;
        self.guard_end("completed", true).await;
        Ok(())
    }

    /// The pause keeper's run (keeper.rs): closes the write pause of an
    /// upgrade whose runner is gone, as `upgrade resume` would, and goes no
    /// further: before promote the roll back, from promote on the steps up
    /// to `resume_writes`. The rest is left to `upgrade resume`.
    pub async fn drive_window(&mut self) -> Result<(), UpgradeError> {
        match recovery(self.record()) {
            Recovery::FinishRollback(reason) => self.rollback(&reason).await,
            Recovery::Forward
                if self.record().promote_started()
                    && self.record().status(Step::ResumeWrites) != StepStatus::Done =>
            {
                match self.forward_from_promote().await {
                    Ok(()) => self.log(&[Event::NeedsResume {
                        reason: "the runner stopped inside the write pause; the pause keeper closed it (PgBouncer on the new primary, writes resumed): `pgsteward upgrade resume` finishes the upgrade".into(),
                    }]),
                    Err(err) => {
                        let msg = format!("pause keeper: {err}");
                        self.after_promote_failure(&msg).await;
                        Err(err)
                    }
                }
            }
            _ => Ok(()),
        }
    }

    /// Appends `events` when the journal can still be written; after a write
    /// failure the roll back goes on without it (the file then says where
    /// `upgrade resume` continues: it finishes the roll back, idempotently).
    fn log_soft(&mut self, events: &[Event]) {
        if self.journal.is_broken() {
            return;
        }
        if let Err(e) = self.journal.append(events) {
            tracing::error!(error = %e, "journal write failed; undoing the write pause without it");
        }
    }

    fn rolled_back_error(&self, reason: String) -> UpgradeError {
        UpgradeError::RolledBack {
            id: self.record().id.clone(),
            reason,
        }
    }

    /// Undoes every started step before promote, newest first, then records
    /// the roll back. Crash safety: each undo is journaled before it runs and
    /// is idempotent; a crash here is finished by `upgrade resume` (or the
    /// pause keeper).
    ///
    /// An undo that fails does not stop the roll back: the next one still
    /// runs, so writes are resumed even when the old primary cannot be
    /// unfenced (hung, unreachable) or one PgBouncer does not answer. That is
    /// safe before promote: the new server is still in recovery, so the old
    /// primary is the only node that can take a write. What could not be
    /// undone is named in the error and stays `undo_failed` in the journal
    /// for the next run.
    pub(crate) async fn rollback(&mut self, reason: &str) -> Result<(), UpgradeError> {
        // The undo gets its own time: the pause deadline may be what failed.
        self.set_pause_deadline(None);
        self.window.arm_keeper(&self.cfg);
        let steps: Vec<Step> = STEPS
            .iter()
            .rev()
            .copied()
            .filter(|s| {
                let status = self.record().status(*s);
                let kept =
                    matches!(table::row(*s).undo, Undo::Keep(_)) && status == StepStatus::Done;
                s.before_promote()
                    && !matches!(status, StepStatus::Pending | StepStatus::Undone)
                    && !kept
            })
            .collect();
        let mut left: Vec<String> = Vec::new();
        // An unfence that failed once is not waited for a second time.
        self.fence.forget_unfence_failure();
        for step in steps {
            self.log_soft(&[Event::UndoStarted { step }]);
            failpoint::hit(&format!("{}-undo", step.name())).map_err(UpgradeError::Injected)?;
            let outcome = match table::row(step).undo {
                Undo::Run(_, undo) => undo(self).await,
                Undo::Keep(_) | Undo::Rerun(_) | Undo::Forward => Ok(()),
            };
            match outcome {
                Ok(()) => {
                    self.log_soft(&[Event::UndoFinished { step }]);
                    self.progress.say(step, "undone");
                }
                Err(error) => {
                    let error = error.to_string();
                    self.progress
                        .say(step, &format!("undo failed, going on: {error}"));
                    self.log_soft(&[Event::UndoFailed {
                        step,
                        error: error.clone(),
                    }]);
                    left.push(format!("{step}: {error}"));
                }
            }
        }
        if !left.is_empty() {
            self.guard_end("roll back incomplete", false).await;
            // The keeper stays armed: it finishes the roll back once the
            // runner has exited (see keeper.rs).
            let keeper = self.window.keeper_note();
            return Err(UpgradeError::RollbackIncomplete {
                id: self.record().id.clone(),
                left,
                keeper,
            });
        }
        self.window.disarm_keeper();
        if self.journal.is_broken() {
            self.guard_end("rolled_back (journal unwritable)", false)
                .await;
            return Err(UpgradeError::JournalFault {
                id: self.record().id.clone(),
                reason: reason.to_string(),
            });
        }
        self.log(&[Event::RolledBack {
            reason: reason.to_string(),
        }])?;
        self.guard_end("rolled_back", false).await;
        Ok(())
    }

    /// After promote nothing is undone. Writes may resume only where the pooler
    /// already points at the new, writable primary; otherwise clients stay
    /// paused (and wait) until `upgrade resume` repoints it.
    async fn after_promote_failure(&mut self, reason: &str) {
        if self.journal.is_broken() && self.record().status(Step::Repoint) != StepStatus::Done {
            // No journal, but repoint and RESUME are idempotent forward steps
            // that `upgrade resume` runs again anyway: do them now, so clients
            // reach the new primary instead of waiting in the pause.
            match self.repoint().await {
                Ok(_) => {
                    if let Err(e) = self.poolers.resume().await {
                        tracing::error!(error = %e, "resume after a journal failure failed");
                    }
                }
                Err(e) => tracing::error!(error = %e, "repoint after a journal failure failed"),
            }
            return;
        }
        let repointed = self.record().status(Step::Repoint) == StepStatus::Done;
        if repointed && self.record().status(Step::ResumeWrites) != StepStatus::Done {
            if let Err(e) = self.poolers.resume().await {
                tracing::error!(error = %e, "resume after a post-promote failure failed");
            }
        }
        if let Err(e) = self.log(&[Event::NeedsResume {
            reason: reason.to_string(),
        }]) {
            tracing::error!(error = %e, "cannot record needs_resume");
        }
    }

    /// The step's body, from its row of the saga table.
    async fn action(&mut self, step: Step) -> Result<Output, UpgradeError> {
        (table::row(step).run)(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::record::Entry;
    use chrono::Utc;

    fn rec(events: Vec<Event>) -> UpgradeRecord {
        let mut r = UpgradeRecord::from_created(&Entry {
            seq: 1,
            at: Utc::now(),
            event: Event::Created {
                id: "u".into(),
                target_class: "c".into(),
                provider: "local".into(),
                source_primary: "p".into(),
                saga: crate::upgrade::record::SAGA_VERSION,
            },
        })
        .unwrap();
        for e in events {
            let seq = r.last_seq + 1;
            r.apply(&Entry {
                seq,
                at: Utc::now(),
                event: e,
            })
            .unwrap();
        }
        r
    }

    fn done(upto: Step) -> Vec<Event> {
        STEPS
            .iter()
            .take_while(|s| **s <= upto)
            .flat_map(|&step| {
                [
                    Event::StepStarted { step },
                    Event::StepSucceeded {
                        step,
                        output: Output::default(),
                    },
                ]
            })
            .collect()
    }

    #[test]
    fn crash_before_the_window_goes_forward() {
        let mut ev = done(Step::CreateReplica);
        ev.push(Event::StepStarted {
            step: Step::WaitAvailable,
        });
        assert_eq!(recovery(&rec(ev)), Recovery::Forward);
    }

    #[test]
    fn crash_in_the_window_before_promote_rolls_back() {
        let mut ev = done(Step::WaitCatchup);
        ev.push(Event::StepStarted {
            step: Step::PauseWrites,
        });
        assert!(matches!(recovery(&rec(ev)), Recovery::FinishRollback(_)));
        let ev = done(Step::FinalSync);
        assert!(matches!(recovery(&rec(ev)), Recovery::FinishRollback(_)));
    }

    #[test]
    fn crash_once_promote_started_goes_forward() {
        let mut ev = done(Step::FinalSync);
        ev.push(Event::StepStarted {
            step: Step::Promote,
        });
        assert_eq!(recovery(&rec(ev)), Recovery::Forward);
    }

    #[test]
    fn rolled_back_retries_and_finished_is_done() {
        let mut ev = done(Step::WaitCatchup);
        ev.push(Event::RolledBack { reason: "x".into() });
        assert_eq!(recovery(&rec(ev)), Recovery::Retry);
        let mut ev = done(Step::RetireOld);
        ev.push(Event::Completed);
        assert_eq!(recovery(&rec(ev)), Recovery::Done);
    }
}
