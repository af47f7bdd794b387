//! Drives an upgrade on the saga core (`crate::saga`): the table is
//! `table::SAGA`, the kind's store, hooks and failure policy are in
//! kind.rs; this file decides where a run starts and how it ends.
//!
//! Crash safety: `step_started` is durable before a step acts where it must
//! be (kind.rs), so a step found `running` after a crash may or may not have
//! acted; it runs again, and every step observes before it acts (steps.rs).
//! Where to go after a crash is decided by the pure [`recovery`]:
//! * promote has started → only forward (the old primary is fenced and the
//!   new one has everything; going back could lose commits made on it);
//! * a write-pause step (under the pause deadline) had started, or an undo
//!   was in progress → finish the roll back: the pause deadline has
//!   certainly passed while we were dead;
//! * otherwise → forward from the first step that is not done.

use tokio_util::sync::CancellationToken;

use super::error::UpgradeError;
use super::record::{Event, Phase, StepStatus, UpgradeRecord, STEPS};
pub use super::saga::{Progress, Saga};
use super::table::{self, Row};
use crate::saga::{self, JournalStore};

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
    pub(super) fn log(&mut self, events: &[Event]) -> Result<(), UpgradeError> {
        self.journal.append(events)?;
        Ok(())
    }

    /// Writes what is pending (before waiting, exiting or reporting).
    pub(crate) fn flush(&mut self) -> Result<(), UpgradeError> {
        self.log(&[])
    }

    /// Runs the upgrade from wherever its journal stands to the end.
    pub async fn drive(&mut self) -> Result<(), UpgradeError> {
        let first = STEPS[0];
        match recovery(self.record()) {
            Recovery::Done => return Ok(()),
            Recovery::Retry => {
                self.progress
                    .say(first, "retrying after the earlier roll back");
                self.log(&[Event::Retry])?;
            }
            Recovery::FinishRollback(reason) => {
                self.progress.say(first, &format!("rolling back: {reason}"));
                self.rollback(&reason).await?;
                return Err(self.rolled_back_error(reason));
            }
            Recovery::Forward => {}
        }
        let cancel = self.cancel.clone();
        saga::drive(self, table::SAGA, &cancel).await
    }

    /// The pause keeper's run (keeper.rs): closes the write pause of an
    /// upgrade whose runner is gone, as `upgrade resume` would, and goes no
    /// further: before promote the roll back, from promote on the steps up
    /// to the end of the pause window. The rest is left to `upgrade resume`.
    pub async fn drive_window(&mut self) -> Result<(), UpgradeError> {
        let window = through_the_window();
        match recovery(self.record()) {
            Recovery::FinishRollback(reason) => self.rollback(&reason).await,
            Recovery::Forward
                if self.record().promote_started()
                    && window.last().is_some_and(|r| !self.is_done(r.step)) =>
            {
                let cancel = self.cancel.clone();
                match saga::forward(self, window, &cancel).await {
                    Ok(()) => self.log(&[Event::NeedsResume {
                        reason: "the runner stopped inside the write pause; the pause keeper closed it (PgBouncer on the new primary, writes resumed): `pgsteward upgrade resume` finishes the upgrade".into(),
                    }]),
                    Err(stopped) => {
                        let msg = format!("pause keeper: {}", stopped.error);
                        self.after_promote_failure(&msg).await;
                        Err(stopped.error)
                    }
                }
            }
            _ => Ok(()),
        }
    }

    /// Appends `events` when the journal can still be written; after a write
    /// failure the roll back goes on without it (the file then says where
    /// `upgrade resume` continues: it finishes the roll back, idempotently).
    pub(super) fn log_soft(&mut self, events: &[Event]) {
        if self.journal.is_broken() {
            return;
        }
        if let Err(e) = self.journal.append(events) {
            tracing::error!(error = %e, "journal write failed; undoing the write pause without it");
        }
    }

    pub(super) fn rolled_back_error(&self, reason: String) -> UpgradeError {
        UpgradeError::RolledBack {
            id: self.record().id.clone(),
            reason,
        }
    }

    /// Undoes every started step before promote, newest first, then records
    /// the roll back (the core's unwind; the journaling and the end are
    /// kind.rs's). Crash safety: each undo is journaled before it runs and
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
        saga::unwind(self, table::SAGA, &CancellationToken::new(), reason).await
    }

    /// After promote nothing is undone. Writes may resume only where the pooler
    /// already points at the new, writable primary; otherwise clients stay
    /// paused (and wait) until `upgrade resume` repoints it.
    pub(super) async fn after_promote_failure(&mut self, reason: &str) {
        if self.journal.is_broken() && !self.record().window_work_done() {
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
        let rec = self.record();
        if rec.window_work_done() && !rec.window_resumed() {
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
}

/// The rows up to the end of the pause window (the last row in it).
fn through_the_window() -> &'static [Row] {
    let end = table::SAGA
        .iter()
        .rposition(|r| r.step.in_pause_window())
        .map_or(0, |i| i + 1);
    &table::SAGA[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::record::tests::{created, run, through as done};
    use crate::upgrade::record::Step;

    fn rec(events: Vec<Event>) -> UpgradeRecord {
        let mut r = created();
        run(&mut r, events).unwrap();
        r
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
