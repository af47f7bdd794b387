//! The vertical upgrade as a kind of the saga core (`crate::saga`): its
//! store (the JSONL journal: a step's start, its success written with the
//! next start, the undos), its hooks (the write pause's region entry, the
//! guard check before each step) and its failure policy (roll back before
//! promote, needs resume from promote on). Nothing here names a step: the
//! step's region, its row's columns and the record decide.
//!
//! Crash safety: `step_started` is on disk before a step acts where the
//! row's undo needs it (`saga::Undo::start_must_be_durable`), else written;
//! the `step_succeeded` of a step is written together with the next
//! `step_started` (one fsync instead of two inside the write pause). Losing
//! it in a crash only makes the finished step run again, which is harmless.
//! Each undo is journaled before it runs and is idempotent.

use std::time::Instant;

use super::error::UpgradeError;
use super::guard::{GuardError, StepUpdate};
use super::record::{Event, Output, Step, StepStatus};
use super::saga::Saga;
use super::table::{self, Meta};
use crate::saga::{Boxed, Failure, JournalStore, Kind, Stage, StepId};

impl StepId for Step {
    fn name(self) -> &'static str {
        Step::name(self)
    }
}

impl JournalStore for Saga {
    type Step = Step;
    type Output = Output;
    type Error = UpgradeError;

    fn is_done(&self, step: Step) -> bool {
        self.record().status(step) == StepStatus::Done
    }

    fn started(&mut self, step: Step, durable: bool) -> Result<(), UpgradeError> {
        let started = [Event::StepStarted { step }];
        if durable {
            self.log(&started)?;
        } else {
            self.journal.append_written(&started)?;
        }
        self.step_started = Some(Instant::now());
        Ok(())
    }

    /// A step never started, or already undone, has nothing to undo.
    fn may_have_acted(&self, step: Step) -> bool {
        !matches!(
            self.record().status(step),
            StepStatus::Pending | StepStatus::Undone
        )
    }

    /// Staged: written with the next start (or the end), see the module doc.
    fn record_done(&mut self, step: Step, output: Output) -> Boxed<'_, Result<(), UpgradeError>> {
        let r = self.finish(step, output);
        Box::pin(std::future::ready(r))
    }

    /// The upgrade's steps never record themselves: its journal is a file.
    fn recorded(&mut self, _step: Step) {}

    fn undo_started(&mut self, step: Step) {
        self.log_soft(&[Event::UndoStarted { step }]);
    }

    fn undo_finished(&mut self, step: Step) {
        self.log_soft(&[Event::UndoFinished { step }]);
        self.progress.say(step, "undone");
    }

    fn undo_failed(&mut self, step: Step, error: &UpgradeError) {
        let error = error.to_string();
        self.progress
            .say(step, &format!("undo failed, going on: {error}"));
        self.log_soft(&[Event::UndoFailed { step, error }]);
    }

    fn completed(&mut self) -> Boxed<'_, Result<(), UpgradeError>> {
        Box::pin(async move {
            self.log(&[Event::Completed])?;
            self.guard_end("completed", true).await;
            Ok(())
        })
    }

    fn unwound<'a>(
        &'a mut self,
        reason: &'a str,
        left: Vec<(Step, UpgradeError)>,
    ) -> Boxed<'a, Result<(), UpgradeError>> {
        Box::pin(self.rolled_back(reason, left))
    }
}

impl Kind for Saga {
    /// Failpoints are `<step>-start`: the names tests and operators use.
    const KIND: &'static str = "";
    const NOUN: &'static str = "upgrade";
    /// Writes are resumed even when the old primary cannot be unfenced
    /// (see `Saga::rollback`).
    const UNWIND_PAST_FAILED_UNDO: bool = true;
    type Meta = Meta;

    /// The upgrade does not stop between steps: its waits watch its token
    /// (`Saga::tick`) and end their step with `Cancelled`, which
    /// [`Saga::fail`] turns into a stop at that step outside the pause
    /// window and a roll back inside it.
    fn cancelled(&self) -> Option<UpgradeError> {
        None
    }

    /// The write pause's regions, entered before each of their steps (the
    /// first call does the work): a window step arms the pause keeper first,
    /// so that a crash of this process inside the window is covered; from
    /// the point of no return on the window only goes forward, without a
    /// pause deadline.
    fn entering(&mut self, step: Step) {
        if step.in_pause_window() {
            self.window.arm_keeper(&self.cfg);
            if !step.before_promote() {
                self.set_pause_deadline(None);
            }
        }
    }

    fn admit(&mut self, step: Step) -> Boxed<'_, Result<(), UpgradeError>> {
        Box::pin(self.guard_step(step))
    }

    /// The record, not the stage, tells whether the step started.
    fn failed(
        &mut self,
        step: Step,
        _stage: Stage,
        error: UpgradeError,
    ) -> Boxed<'_, Failure<UpgradeError>> {
        Box::pin(self.fail(step, error))
    }

    fn past_no_return(&self) -> UpgradeError {
        UpgradeError::Usage(format!(
            "upgrade {} has promoted and can only go forward (`upgrade resume`)",
            self.record().id
        ))
    }

    /// The undo gets its own time (the pause deadline may be what failed),
    /// and a keeper: a crash of the roll back is finished by it.
    fn unwinding(&mut self) {
        self.set_pause_deadline(None);
        self.window.arm_keeper(&self.cfg);
        // An unfence that failed once is not waited for a second time.
        self.fence.forget_unfence_failure();
    }

    fn say(&self, step: Step, msg: &str) {
        self.progress.say(step, msg);
    }
}

impl Saga {
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

    /// The failure policy: a lost guard touches nothing more (another
    /// runner may own the upgrade); a cancel outside the pause window stops
    /// at the step (`upgrade resume` runs it again); anything else fails the
    /// step, then rolls back before promote, or leaves needs_resume from
    /// promote on.
    async fn fail(&mut self, failed: Step, err: UpgradeError) -> Failure<UpgradeError> {
        if matches!(err, UpgradeError::Guard(GuardError::Lost { .. })) {
            let _ = self.flush();
            return Failure::Stop(err);
        }
        if matches!(err, UpgradeError::Cancelled) && !failed.in_pause_window() {
            return Failure::Stop(match self.flush() {
                Ok(()) => err,
                Err(e) => e,
            });
        }
        // A failure before the step started (its guard check, its journal
        // entry) has no step to fail; a journal that cannot be written (a
        // full disk) then is that, not a failure of the step.
        let running = self.record().status(failed) == StepStatus::Running;
        let msg = if matches!(err, UpgradeError::Journal(_)) && !running {
            format!("the journal could not be written before {failed} started: {err}")
        } else {
            format!("{failed}: {err}")
        };
        if running {
            self.log_soft(&[Event::StepFailed {
                step: failed,
                error: err.to_string(),
            }]);
        }
        self.progress.say(failed, &format!("failed: {err}"));
        if self.record().promote_started() {
            self.after_promote_failure(&msg).await;
            return Failure::Stop(UpgradeError::NeedsResume {
                id: self.record().id.clone(),
                reason: msg,
            });
        }
        Failure::Unwind {
            error: self.rolled_back_error(msg.clone()),
            reason: msg,
        }
    }

    /// The end of a roll back (see `Saga::rollback`): what could not be
    /// undone is named in the error and stays `undo_failed` in the journal
    /// for the next run; the keeper then stays armed.
    async fn rolled_back(
        &mut self,
        reason: &str,
        left: Vec<(Step, UpgradeError)>,
    ) -> Result<(), UpgradeError> {
        if !left.is_empty() {
            self.guard_end("roll back incomplete", false).await;
            // The keeper stays armed: it finishes the roll back once the
            // runner has exited (see keeper.rs).
            let keeper = self.window.keeper_note();
            return Err(UpgradeError::RollbackIncomplete {
                id: self.record().id.clone(),
                left: left.iter().map(|(s, e)| format!("{s}: {e}")).collect(),
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

    /// Proves this runner still owns the upgrade (lock held, epoch current)
    /// and records the step in the guard row, before the step acts. After
    /// the write pause the guard follows the primary to the new server and
    /// the old one's row names where the primary went.
    async fn guard_step(&mut self, step: Step) -> Result<(), UpgradeError> {
        if self.guard.is_none() {
            return Ok(());
        }
        let moves = table::row(step).meta.guard;
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
}
