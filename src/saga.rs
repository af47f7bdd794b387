//! The saga core: a linear saga as an executable table (one [`Row`] per
//! step: its name, its do, its undo, and what the kind keeps beside them),
//! one runner ([`drive`], [`forward`], [`unwind`]) generic over the saga
//! kind, which knows no step by name, and the journal's store as a seam
//! ([`JournalStore`]): a JSONL file (the vertical upgrade), a database row
//! (`convert`).
//!
//! Boundaries, for every row of every kind, by construction:
//! * `<kind>-<step>-start`: the step is not recorded done, it may run; its
//!   start is journaled (where the store records starts), it has not acted;
//! * `<kind>-<step>-done`: it acted; its journal entry is not durable yet;
//! * `<kind>-<step>-undo`: before its undo runs (after the store journaled
//!   that the undo starts).
//!
//! (An empty kind name leaves the prefix out: `<step>-start`.) Tests walk
//! [`boundaries`] and [`undo_boundaries`], so a new row is covered without
//! new test code. Under `PGSTEWARD_FAILPOINT_REPEAT=1`
//! ([`failpoint::repeat_steps`]) every step the runner records runs twice.
//!
//! One step, in order: the kind's [`Kind::entering`] hook (a region's entry:
//! the upgrade arms its pause keeper there), [`Kind::admit`] (may it start:
//! the upgrade's guard check), [`JournalStore::started`], `-start`, the body,
//! `-done`, [`JournalStore::record_done`].
//!
//! Crash safety, the contract between the runner, the rows and the store:
//! * A store that records starts ([`JournalStore::started`]) has the start
//!   durably before a step acts when its [`Undo`] asks for it
//!   ([`Undo::start_must_be_durable`]): a step a roll back reverses or keeps,
//!   and the point of no return (recovery must never undo past a promote
//!   that may have happened), must be known to have started.
//! * A step is recorded done only after it acted, so a crash at any boundary
//!   leaves it either recorded (it will not run again) or not (it runs again).
//!   Hence every step observes before it acts: run twice, it does no harm.
//! * A step whose effect is transactional records its own completion through
//!   the store in the SAME transaction as its effect, and returns
//!   [`Done::Recorded`]: then the journal can never say a step happened that
//!   did not, nor miss one that did. The only way to get the [`Recorded`] it
//!   returns is [`At::done`], which hits the step's `-done` failpoint: call it
//!   after the journal write and before the commit, and that boundary sits
//!   where it does for every other step.
//! * Any other step returns [`Done::Record`]; the runner hits `-done`, then
//!   asks the store to record it (durably before the next step acts, or
//!   written with the next step's start: losing it only runs it again).
//! * Undos observe too. Which rows an unwind undoes is the journal's answer
//!   ([`JournalStore::may_have_acted`]; a store that records no starts
//!   cannot tell, and every undo runs: a step may have acted and died before
//!   its entry). Each is idempotent, so an interrupted unwind is simply run
//!   again. Nothing at or past a point of no return is undone; [`unwind`]
//!   refuses once such a step is recorded done.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::failpoint::{self, FailpointError};

/// A boxed future: a saga's future stays small whatever its steps hold.
pub type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// A step's identity: the journal's vocabulary and the failpoints' names.
pub trait StepId: Copy + Eq + 'static {
    fn name(self) -> &'static str;
}

/// Where a saga's journal lives and how it is written: the seam between the
/// runner and a kind's storage (a JSONL file, a row in the database). The
/// store is handed to the runner loaded (the kind reads its first record,
/// which names the kind's parameters, before it drives anything).
pub trait JournalStore {
    type Step: StepId;
    /// What a step hands the journal for later steps to read back.
    type Output;
    type Error: From<FailpointError> + std::fmt::Display;
    /// The journal records `step` as done.
    fn is_done(&self, step: Self::Step) -> bool;
    /// Journals that `step` starts, before its `-start` failpoint: on disk
    /// (synced) when `durable`, else at least written (see the module doc).
    /// A store that records only completions writes nothing.
    fn started(&mut self, _step: Self::Step, _durable: bool) -> Result<(), Self::Error> {
        Ok(())
    }
    /// Whether `step` may have acted, as far as the journal knows: an unwind
    /// undoes only these. A store that records no starts cannot tell.
    fn may_have_acted(&self, _step: Self::Step) -> bool {
        true
    }
    /// Records `step` done with its output (see the module doc for when it
    /// must be durable).
    fn record_done(
        &mut self,
        step: Self::Step,
        output: Self::Output,
    ) -> Boxed<'_, Result<(), Self::Error>>;
    /// The step recorded itself in its own transaction ([`Done::Recorded`]):
    /// bring what is in memory up to the journal, writing nothing.
    fn recorded(&mut self, step: Self::Step);
    /// An undo of `step` starts (best effort: the unwind goes on without it;
    /// the undo is idempotent, a next unwind runs it again).
    fn undo_started(&mut self, _step: Self::Step) {}
    /// The undo of `step` finished (best effort, as above).
    fn undo_finished(&mut self, _step: Self::Step) {}
    /// The undo of `step` failed (best effort, as above).
    fn undo_failed(&mut self, _step: Self::Step, _error: &Self::Error) {}
    /// Every step is done: the saga is over.
    fn completed(&mut self) -> Boxed<'_, Result<(), Self::Error>>;
    /// Every undo ran: the saga is over, undone for `reason`. `left` holds
    /// the undos that failed (only a kind whose unwind goes on past them,
    /// [`Kind::UNWIND_PAST_FAILED_UNDO`]); the kind decides what that is.
    fn unwound<'a>(
        &'a mut self,
        reason: &'a str,
        left: Vec<(Self::Step, Self::Error)>,
    ) -> Boxed<'a, Result<(), Self::Error>>;
}

/// Where a step was when it failed: what the kind's failure policy
/// ([`Kind::failed`]) may assume about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Refused by [`Kind::admit`]: it did not start.
    Admit,
    /// Its start could not be journaled, or its `-start` failpoint fired:
    /// it has not acted.
    Start,
    /// Its body, its `-done` failpoint or its journal entry failed: it may
    /// have acted.
    Run,
}

/// What the runner does with a failed step, as the kind decides.
pub enum Failure<E> {
    /// Stop here and return this error; the saga is left for a resume.
    Stop(E),
    /// Unwind now (a clean-up, not cancelled) for `reason`, then return
    /// `error`. An unwind that fails returns its own error instead.
    Unwind { reason: String, error: E },
}

/// A saga kind: its context (which is its store) and its policies. The
/// runner asks these and nothing else.
pub trait Kind: JournalStore + Sized {
    /// The failpoints' prefix (`convert`), or "" for none.
    const KIND: &'static str;
    /// For the log: `<noun> step`, `<noun> step done`.
    const NOUN: &'static str;
    /// An undo that fails does not stop the unwind: the next one still runs
    /// and [`JournalStore::unwound`] gets the failures. Otherwise the first
    /// failed undo ends the unwind with its error.
    const UNWIND_PAST_FAILED_UNDO: bool = false;
    /// What each row carries for the kind alone (the runner never reads it).
    type Meta: 'static;
    /// The error that stops a saga whose token is cancelled, checked between
    /// steps; `None`: the kind does not stop between steps (its steps end
    /// their waits on the token with their own error, and [`Kind::failed`]
    /// decides).
    fn cancelled(&self) -> Option<Self::Error>;
    /// `step` is about to be asked in ([`Kind::admit`]): the kind enters the
    /// region it lies in (idempotently: called before every step that runs).
    fn entering(&mut self, _step: Self::Step) {}
    /// May `step` start now? Asked before it is journaled as started; an
    /// error goes to [`Kind::failed`] with [`Stage::Admit`].
    fn admit(&mut self, step: Self::Step) -> Boxed<'_, Result<(), Self::Error>>;
    /// `step` failed at `stage` with `error`: note it (best effort) and
    /// decide between leaving the saga for a resume and undoing it now, and
    /// what the caller is told.
    fn failed(
        &mut self,
        step: Self::Step,
        stage: Stage,
        error: Self::Error,
    ) -> Boxed<'_, Failure<Self::Error>>;
    /// The error of an unwind asked for past the point of no return.
    fn past_no_return(&self) -> Self::Error;
    /// Called before the first undo of an unwind (the upgrade clears its
    /// pause deadline and arms its keeper there).
    fn unwinding(&mut self) {}
    /// A progress line about `step` for the operator (the log has them all).
    fn say(&self, _step: Self::Step, _msg: &str) {}
}

/// Where a step or an undo runs: its boundary and its cancellation token.
#[derive(Clone, Copy)]
pub struct At<'a> {
    kind: &'static str,
    step: &'static str,
    pub cancel: &'a CancellationToken,
}

impl At<'_> {
    /// Hits the step's `-done` failpoint: for a step that wrote its journal
    /// entry in its own transaction, after that write, before the commit.
    pub fn done(&self) -> Result<Recorded, FailpointError> {
        failpoint::hit(&point(self.kind, self.step, "done"))?;
        Ok(Recorded(()))
    }

    pub fn step(&self) -> &'static str {
        self.step
    }
}

/// Proof that a step passed its `-done` failpoint ([`At::done`]).
#[derive(Debug)]
pub struct Recorded(());

/// How a step ended.
pub enum Done<O> {
    /// The runner records it, with this output.
    Record(O),
    /// Its journal entry committed with its effect (see the module doc).
    Recorded(Recorded),
}

pub type StepFn<C> =
    for<'a> fn(
        &'a mut C,
        At<'a>,
    )
        -> Boxed<'a, Result<Done<<C as JournalStore>::Output>, <C as JournalStore>::Error>>;
pub type UndoFn<C> =
    for<'a> fn(&'a mut C, At<'a>) -> Boxed<'a, Result<(), <C as JournalStore>::Error>>;

/// How an unwind treats a row.
pub enum Undo<C: Kind> {
    /// Skipped: nothing of its own to reverse (an earlier row's undo covers
    /// it), or, after the point of no return, nothing is reversed at all.
    None,
    /// Left as it is once done (what it made is kept for a retry, which
    /// goes on from the next step); started but not done, it is undone as
    /// [`Undo::Rerun`].
    Keep,
    /// Nothing to reverse, but its undo is journaled (no function runs), so
    /// that a retry runs it again.
    Rerun,
    /// Reversed by this function (idempotent, observes first).
    Run(UndoFn<C>),
    /// This step is the point of no return: once it is recorded done, only
    /// forward. Rows after it have [`Undo::None`].
    PointOfNoReturn,
}

impl<C: Kind> Clone for Undo<C> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<C: Kind> Copy for Undo<C> {}

impl<C: Kind> Undo<C> {
    /// Whether a step with this undo must have its start on disk before it
    /// acts. A step a roll back reverses (`Run`) or keeps (`Keep`) must be
    /// known to have started; so must the point of no return (recovery must
    /// never roll back past it when it may have happened). A step with
    /// nothing to reverse, or one after the point of no return (recovery
    /// from a durable point of no return goes forward through idempotent
    /// steps), may act on a start that is only written: lost with the host,
    /// its recovery is the one from the previous step's start, which is
    /// already correct. Each sync saved is time saved (inside the upgrade's
    /// write pause, client-visible).
    pub fn start_must_be_durable(&self) -> bool {
        match self {
            Undo::Run(_) | Undo::Keep | Undo::PointOfNoReturn => true,
            Undo::Rerun | Undo::None => false,
        }
    }
}

/// One row of a saga's table.
pub struct Row<C: Kind> {
    pub step: C::Step,
    /// What the step does (the plan prints it).
    pub does: &'static str,
    pub run: StepFn<C>,
    pub undo: Undo<C>,
    /// The kind's own column(s): the runner never reads them.
    pub meta: C::Meta,
}

/// A failpoint's name.
pub fn point(kind: &str, step: &str, edge: &str) -> String {
    if kind.is_empty() {
        format!("{step}-{edge}")
    } else {
        format!("{kind}-{step}-{edge}")
    }
}

/// One boundary of a saga, for tests that walk them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boundary {
    pub failpoint: String,
    /// The point of no return's effect is committed by the time the saga
    /// reaches this boundary (it lies after that step's `-done`).
    pub past_no_return: bool,
}

/// Every forward boundary of `rows`, in order: each step's start and done.
pub fn boundaries<C: Kind>(rows: &[Row<C>]) -> Vec<Boundary> {
    let mut past = false;
    let mut out = Vec::new();
    for r in rows {
        for edge in ["start", "done"] {
            out.push(Boundary {
                failpoint: point(C::KIND, r.step.name(), edge),
                past_no_return: past,
            });
        }
        past |= matches!(r.undo, Undo::PointOfNoReturn);
    }
    out
}

/// The rows an unwind may undo: those before the point of no return.
fn undoable<C: Kind>(rows: &[Row<C>]) -> (&[Row<C>], &[Row<C>]) {
    let end = rows
        .iter()
        .position(|r| matches!(r.undo, Undo::PointOfNoReturn))
        .unwrap_or(rows.len());
    rows.split_at(end)
}

/// The `-undo` failpoints of `rows`, in the order an unwind of a saga that
/// started every step hits them.
pub fn undo_boundaries<C: Kind>(rows: &[Row<C>]) -> Vec<String> {
    undoable(rows)
        .0
        .iter()
        .rev()
        .filter(|r| matches!(r.undo, Undo::Run(_)))
        .map(|r| point(C::KIND, r.step.name(), "undo"))
        .collect()
}

/// Why [`forward`] stopped: the step, where it was, the error.
pub struct Stopped<C: JournalStore> {
    pub step: C::Step,
    /// `None`: stopped between steps by the cancellation token.
    pub stage: Option<Stage>,
    pub error: C::Error,
}

/// Runs every row of `rows` not recorded done, in order, and stops at the
/// first failure, which it hands back unhandled: [`drive`] hands it to the
/// kind; a caller that runs part of a table (the upgrade's pause keeper
/// finishing the write pause) decides itself. `cancel` stops it between
/// steps when the kind says so ([`Kind::cancelled`]), and reaches a step
/// that waits through [`At::cancel`].
pub async fn forward<C: Kind>(
    ctx: &mut C,
    rows: &[Row<C>],
    cancel: &CancellationToken,
) -> Result<(), Stopped<C>> {
    for row in rows {
        let step = row.step;
        if ctx.is_done(step) {
            continue;
        }
        let stop = |stage, error| Stopped { step, stage, error };
        if cancel.is_cancelled() {
            if let Some(e) = ctx.cancelled() {
                return Err(stop(None, e));
            }
        }
        ctx.entering(step);
        ctx.admit(step)
            .await
            .map_err(|e| stop(Some(Stage::Admit), e))?;
        let name = step.name();
        ctx.started(step, row.undo.start_must_be_durable())
            .map_err(|e| stop(Some(Stage::Start), e))?;
        failpoint::hit(&point(C::KIND, name, "start"))
            .map_err(|e| stop(Some(Stage::Start), e.into()))?;
        tracing::info!(step = name, "{} step", C::NOUN);
        let started = Instant::now();
        let at = At {
            kind: C::KIND,
            step: name,
            cancel,
        };
        let mut res = (row.run)(ctx, at).await;
        // The repeat switch (tests only): a step the runner records runs
        // again, as after a crash between its act and its entry. A step
        // that recorded itself is done: the journal would skip it.
        if matches!(res, Ok(Done::Record(_))) && failpoint::repeat_steps() {
            ctx.say(step, "running again (idempotence check)");
            res = (row.run)(ctx, at).await;
        }
        let res = match res {
            Ok(Done::Recorded(_)) => {
                ctx.recorded(step);
                Ok(())
            }
            Ok(Done::Record(output)) => match failpoint::hit(&point(C::KIND, name, "done")) {
                Ok(()) => ctx.record_done(step, output).await,
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e),
        };
        res.map_err(|e| stop(Some(Stage::Run), e))?;
        tracing::info!(
            step = name,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "{} step done",
            C::NOUN
        );
    }
    Ok(())
}

/// Runs every row not recorded done, in order, to the end ([`forward`]).
/// A failure goes to the kind ([`Kind::failed`]), which leaves the saga for
/// a resume or has it unwound at once before its error is returned.
pub async fn drive<C: Kind>(
    ctx: &mut C,
    rows: &[Row<C>],
    cancel: &CancellationToken,
) -> Result<(), C::Error> {
    let Err(stopped) = forward(ctx, rows, cancel).await else {
        return ctx.completed().await;
    };
    let Some(stage) = stopped.stage else {
        return Err(stopped.error);
    };
    match ctx.failed(stopped.step, stage, stopped.error).await {
        Failure::Stop(e) => Err(e),
        Failure::Unwind { reason, error } => {
            unwind(ctx, rows, &CancellationToken::new(), &reason).await?;
            Err(error)
        }
    }
}

/// Undoes the rows before the point of no return that may have acted (the
/// journal's answer, see the module doc), newest first, then ends the saga
/// as undone for `reason`. Refused once the point of no return is recorded
/// done.
pub async fn unwind<C: Kind>(
    ctx: &mut C,
    rows: &[Row<C>],
    cancel: &CancellationToken,
    reason: &str,
) -> Result<(), C::Error> {
    let (before, from) = undoable(rows);
    if from.iter().any(|r| ctx.is_done(r.step)) {
        return Err(ctx.past_no_return());
    }
    ctx.unwinding();
    let mut left = Vec::new();
    for row in before.iter().rev() {
        let step = row.step;
        let undo = match row.undo {
            Undo::None | Undo::PointOfNoReturn => continue,
            Undo::Keep if ctx.is_done(step) => continue,
            Undo::Run(f) => Some(f),
            Undo::Keep | Undo::Rerun => None,
        };
        if !ctx.may_have_acted(step) {
            continue;
        }
        ctx.undo_started(step);
        let name = step.name();
        failpoint::hit(&point(C::KIND, name, "undo"))?;
        let outcome = match undo {
            Some(f) => {
                let at = At {
                    kind: C::KIND,
                    step: name,
                    cancel,
                };
                f(ctx, at).await
            }
            None => Ok(()),
        };
        match outcome {
            Ok(()) => ctx.undo_finished(step),
            Err(e) => {
                ctx.undo_failed(step, &e);
                if !C::UNWIND_PAST_FAILED_UNDO {
                    return Err(e);
                }
                left.push((step, e));
            }
        }
    }
    ctx.unwound(reason, left).await
}

#[cfg(test)]
#[path = "saga_tests.rs"]
mod tests;
