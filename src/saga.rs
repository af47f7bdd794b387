//! The saga core: a linear saga as an executable table (one [`Row`] per
//! step: its name, its do, its undo), one runner ([`drive`], [`unwind`])
//! generic over the saga kind, which knows no step by name, and the journal's
//! store as a seam ([`JournalStore`]): a file, a database row.
//!
//! Boundaries, for every row of every kind, by construction:
//! * `<kind>-<step>-start`: the step is not recorded done, it may run; it has
//!   not acted yet;
//! * `<kind>-<step>-done`: it acted; its journal entry is not durable yet;
//! * `<kind>-<step>-undo`: before its undo runs.
//!
//! (An empty kind name leaves the prefix out: `<step>-start`.) Tests walk
//! [`boundaries`] and [`undo_boundaries`], so a new row is covered without
//! new test code.
//!
//! Crash safety, the contract between the runner, the rows and the store:
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
//!   asks the store to record it (durably before the next step starts).
//! * Undos observe too, and run whatever the journal says (a step may have
//!   acted and died before its entry): each is idempotent, so an interrupted
//!   unwind is simply run again. Nothing at or past a point of no return is
//!   undone; [`unwind`] refuses once such a step is recorded done.
//!
//! TODO-design(#23): the vertical upgrade (`upgrade::runner`) still has its
//! own runner over its own table (`upgrade::table::SAGA`). To run on this
//! core it needs, as store hooks or row fields: a durable `started` record
//! before a step acts (its JSONL journal's `step_started`, which recovery
//! reads), undos journaled (`undo_started`/`finished`/`failed`) and chosen by
//! the journal (`Keep`, `Rerun`, only started steps) with an unwind that goes
//! on past a failed undo, a failure mapped to the kind's outcome (rolled
//! back, needs resume) instead of the step's error, region entry hooks for
//! the write pause (keeper, deadline), and the repeat switch.

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
    /// Records `step` done with its output, durably before it returns.
    fn record(
        &mut self,
        step: Self::Step,
        output: Self::Output,
    ) -> Boxed<'_, Result<(), Self::Error>>;
    /// The step recorded itself in its own transaction ([`Done::Recorded`]):
    /// bring what is in memory up to the journal, writing nothing.
    fn recorded(&mut self, step: Self::Step);
    /// Notes that `step` failed (best effort: the failure is returned anyway).
    fn note_failed<'a>(&'a mut self, step: Self::Step, error: &'a Self::Error) -> Boxed<'a, ()>;
    /// Every step is done: the saga is over.
    fn completed(&mut self) -> Boxed<'_, Result<(), Self::Error>>;
    /// Every undo ran: the saga is over, undone.
    fn unwound(&mut self) -> Boxed<'_, Result<(), Self::Error>>;
}

/// A saga kind: its context (which is its store) and its policies. The
/// runner asks these and nothing else.
pub trait Kind: JournalStore + Sized {
    /// The failpoints' prefix (`convert`), or "" for none.
    const KIND: &'static str;
    /// For the log: `<noun> step`, `<noun> step done`.
    const NOUN: &'static str;
    /// The error for a saga stopped by its cancellation token between steps.
    fn cancelled(&self) -> Self::Error;
    /// May `step` start now? Asked before its `-start` failpoint; an error
    /// is not the step's failure (not noted), [`Kind::unwinds`] decides.
    fn admit(&mut self, step: Self::Step) -> Boxed<'_, Result<(), Self::Error>>;
    /// Whether `error` at `step` is undone at once (resuming would fail the
    /// same way) or left for a resume.
    fn unwinds(&self, step: Self::Step, error: &Self::Error) -> bool;
    /// The error of an unwind asked for past the point of no return.
    fn past_no_return(&self) -> Self::Error;
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
    /// Nothing of its own to reverse (an earlier row's undo covers it), or,
    /// after the point of no return, nothing is reversed at all.
    None,
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

/// One row of a saga's table.
pub struct Row<C: Kind> {
    pub step: C::Step,
    /// What the step does (the plan prints it).
    pub does: &'static str,
    pub run: StepFn<C>,
    pub undo: Undo<C>,
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

/// The `-undo` failpoints of `rows`, in the order an unwind hits them.
pub fn undo_boundaries<C: Kind>(rows: &[Row<C>]) -> Vec<String> {
    undoable(rows)
        .0
        .iter()
        .rev()
        .filter(|r| matches!(r.undo, Undo::Run(_)))
        .map(|r| point(C::KIND, r.step.name(), "undo"))
        .collect()
}

/// Runs every row not recorded done, in order, to the end. `cancel` stops it
/// between steps (and, through [`At::cancel`], inside a step that waits). A
/// failure is noted; when the kind says resuming cannot help, the saga is
/// unwound at once (a clean-up, not cancelled) before the error is returned.
pub async fn drive<C: Kind>(
    ctx: &mut C,
    rows: &[Row<C>],
    cancel: &CancellationToken,
) -> Result<(), C::Error> {
    for row in rows {
        if ctx.is_done(row.step) {
            continue;
        }
        if cancel.is_cancelled() {
            return Err(ctx.cancelled());
        }
        let name = row.step.name();
        if let Err(e) = ctx.admit(row.step).await {
            if ctx.unwinds(row.step, &e) {
                unwind(ctx, rows, &CancellationToken::new()).await?;
            }
            return Err(e);
        }
        failpoint::hit(&point(C::KIND, name, "start"))?;
        tracing::info!(step = name, "{} step", C::NOUN);
        let started = Instant::now();
        let at = At {
            kind: C::KIND,
            step: name,
            cancel,
        };
        let res = match (row.run)(ctx, at).await {
            Ok(Done::Recorded(_)) => {
                ctx.recorded(row.step);
                Ok(())
            }
            Ok(Done::Record(output)) => match failpoint::hit(&point(C::KIND, name, "done")) {
                Ok(()) => ctx.record(row.step, output).await,
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            ctx.note_failed(row.step, &e).await;
            if ctx.unwinds(row.step, &e) {
                tracing::warn!(error = %e, "{} undone: resuming would fail the same way", C::NOUN);
                unwind(ctx, rows, &CancellationToken::new()).await?;
            }
            return Err(e);
        }
        tracing::info!(
            step = name,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "{} step done",
            C::NOUN
        );
    }
    ctx.completed().await
}

/// Undoes every row before the point of no return, newest first, whatever
/// the journal says (see the module doc), then ends the saga as undone.
/// Refused once the point of no return is recorded done.
pub async fn unwind<C: Kind>(
    ctx: &mut C,
    rows: &[Row<C>],
    cancel: &CancellationToken,
) -> Result<(), C::Error> {
    let (before, from) = undoable(rows);
    if from.iter().any(|r| ctx.is_done(r.step)) {
        return Err(ctx.past_no_return());
    }
    for row in before.iter().rev() {
        let Undo::Run(undo) = row.undo else { continue };
        let name = row.step.name();
        failpoint::hit(&point(C::KIND, name, "undo"))?;
        let at = At {
            kind: C::KIND,
            step: name,
            cancel,
        };
        undo(ctx, at).await?;
    }
    ctx.unwound().await
}

#[cfg(test)]
#[path = "saga_tests.rs"]
mod tests;
