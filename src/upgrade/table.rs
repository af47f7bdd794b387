//! The saga as an executable table: one row per step — what it does, how
//! it is undone, how the guard row moves before it, when it has work — and
//! the function that runs it. The runner (runner.rs, cutover.rs) reads the
//! rows and knows no step by name; `upgrade plan` prints them; the
//! failpoint at every boundary and the "fail each step and unwind" tests
//! walk them, so a new row is covered without new test code.

use std::future::Future;
use std::pin::Pin;

use super::error::UpgradeError;
use super::record::Output;
use super::saga::Saga;
use super::step::{Step, STEPS};

/// A step's body, boxed: the saga's future stays small whatever a step holds.
pub type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<Output, UpgradeError>> + 'a>>;
pub type StepFn = for<'a> fn(&'a mut Saga) -> StepFuture<'a>;

/// An undo's failure, as the roll back reports it ("what was not undone").
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct UndoError(pub String);

pub type UndoFuture<'a> = Pin<Box<dyn Future<Output = Result<(), UndoError>> + 'a>>;
pub type UndoFn = for<'a> fn(&'a mut Saga) -> UndoFuture<'a>;

/// How a roll back treats a step it finds started.
#[derive(Clone, Copy)]
pub enum Undo {
    /// Left done: what it made (the prechecks' facts, the new server) is
    /// kept for a retry, which goes on from the next step. `upgrade abort`
    /// deletes what it says.
    Keep(&'static str),
    /// Nothing to reverse; a retry runs it again.
    Rerun(&'static str),
    /// Reversed by this function (journaled before it runs, idempotent).
    Run(&'static str, UndoFn),
    /// At or past promote, the point of no return: only forward.
    Forward,
}

impl Undo {
    /// For `upgrade plan` ("" when there is nothing to say).
    pub fn text(&self) -> &'static str {
        match self {
            Undo::Keep(t) | Undo::Rerun(t) | Undo::Run(t, _) => t,
            Undo::Forward => "",
        }
    }
}

/// How the guard row (one upgrade per cluster, guard/) moves before a step acts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuardMove {
    /// Record the cutover flag (partition DDL waits while it is set).
    pub cutover: Option<bool>,
    /// Hold the old primary's session without writing there: past the final
    /// flush its WAL must not move (its replicas follow the new primary only
    /// from the switch point).
    pub hold_old: bool,
    /// The guard follows the primary to the new server.
    pub follow_new: bool,
    /// The old node's row names where the primary went (local provider:
    /// its replicas have been repointed by then).
    pub mark_moved: bool,
    /// The check holds the writes paused: bounded by the pause deadline.
    pub pause_bound: bool,
}

const NO_MOVE: GuardMove = GuardMove {
    cutover: None,
    hold_old: false,
    follow_new: false,
    mark_moved: false,
    pause_bound: false,
};

/// When a step has work: the plan lists only these, and a body whose
/// condition is false returns at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    Always,
    /// The source has readers the provider replaces (RDS).
    Readers,
    /// `cutover.kind = pgbouncer`.
    Pgbouncer,
    /// The provider swaps identifiers (RDS).
    Swap,
    Both,
    /// The source has logical slots the upgrade carries (PostgreSQL 17+ failover slots).
    LogicalSlots,
}

/// One row of the saga.
#[derive(Clone, Copy)]
pub struct Row {
    pub step: Step,
    /// What the step does (`upgrade plan` prints it).
    pub does: &'static str,
    pub undo: Undo,
    pub guard: GuardMove,
    pub needs: Needs,
    pub run: StepFn,
}

/// The step function for a `Saga` method.
macro_rules! body {
    ($method:ident) => {{
        fn run(saga: &mut Saga) -> StepFuture<'_> {
            Box::pin(saga.$method())
        }
        run as StepFn
    }};
}

/// The undo function for a `Saga` method.
macro_rules! undo {
    ($method:ident) => {{
        fn undo(saga: &mut Saga) -> UndoFuture<'_> {
            Box::pin(saga.$method())
        }
        undo as UndoFn
    }};
}

const KEPT_REPLICA: &str = "kept for a retry; `upgrade abort` deletes it";
const KEPT_READERS: &str = "kept for a retry; `upgrade abort` deletes them";
const UNDO_PAUSE: &str = "RESUME (only a PAUSE this upgrade made), remove the staged fence";
const UNDO_FENCE: &str = "remove the pg_hba.conf block and the setting, reload, verify";

/// The saga, in [`STEPS`] order (a unit test holds them together).
pub const SAGA: &[Row] = &[
    Row { step: Step::Precheck, undo: Undo::Keep(""), guard: NO_MOVE, needs: Needs::Always, run: body!(precheck_step),
        does: "source is a primary, class differs, no upgrade in flight here or on the primary (guard row), the pooler is ready; the source's readers are recorded" },
    Row { step: Step::CreateReplica, undo: Undo::Keep(KEPT_REPLICA), guard: NO_MOVE, needs: Needs::Always, run: body!(create_replica),
        does: "new server <source>-<id> on the target class (the class's settings win over the copied postgresql.auto.conf)" },
    Row { step: Step::WaitAvailable, undo: Undo::Rerun(""), guard: NO_MOVE, needs: Needs::Always, run: body!(wait_available),
        does: "the new server accepts connections, in recovery" },
    Row { step: Step::CreateReaders, undo: Undo::Rerun(KEPT_READERS), guard: NO_MOVE, needs: Needs::Readers, run: body!(create_readers),
        does: "RDS: one new reader per reader of the source, a replica of the new server (cascading), on the reader class" },
    Row { step: Step::WaitReaders, undo: Undo::Rerun(""), guard: NO_MOVE, needs: Needs::Readers, run: body!(wait_readers),
        does: "the new readers accept connections, in recovery, lag below upgrade.catchup_max_bytes" },
    Row { step: Step::WaitCatchup, undo: Undo::Rerun(""), guard: NO_MOVE, needs: Needs::Always, run: body!(wait_catchup),
        does: "replay lag below upgrade.catchup_max_bytes, steadily" },
    Row { step: Step::PauseWrites, undo: Undo::Run(UNDO_PAUSE, undo!(undo_pause)),
        guard: GuardMove { cutover: Some(true), ..NO_MOVE }, needs: Needs::Always, run: body!(pause_writes),
        does: "fence staged, pause keeper armed, PgBouncer PAUSE of every entry on the primary (in-flight transactions finish); the pause deadline starts" },
    Row { step: Step::FenceOldPrimary, undo: Undo::Run(UNDO_FENCE, undo!(undo_fence)),
        guard: GuardMove { pause_bound: true, ..NO_MOVE }, needs: Needs::Always, run: body!(fence_old_primary),
        does: "hard fence: pg_hba.conf rejects every role but superusers and the steward, reload, verified by a probe login, application sessions ended" },
    Row { step: Step::FinalSync, undo: Undo::Rerun(""), guard: GuardMove { pause_bound: true, ..NO_MOVE }, needs: Needs::Always, run: body!(final_sync),
        does: "old primary's WAL flushed (async commits included); the new server replayed it" },
    Row { step: Step::Promote, undo: Undo::Forward, guard: GuardMove { hold_old: true, pause_bound: true, ..NO_MOVE }, needs: Needs::Always, run: body!(promote),
        does: "point of no return: the new server leaves recovery (its readers follow it)" },
    Row { step: Step::Repoint, undo: Undo::Forward, guard: GuardMove { hold_old: true, pause_bound: true, ..NO_MOVE }, needs: Needs::Pgbouncer, run: body!(repoint),
        does: "PgBouncer [databases] rewritten to the new server's own endpoint, RELOAD" },
    Row { step: Step::ResumeWrites, undo: Undo::Forward, guard: GuardMove { hold_old: true, pause_bound: true, ..NO_MOVE }, needs: Needs::Pgbouncer, run: body!(resume_writes),
        does: "PgBouncer RESUME: the pause window ends" },
    Row { step: Step::Verify, undo: Undo::Forward, guard: GuardMove { hold_old: true, follow_new: true, ..NO_MOVE }, needs: Needs::Always, run: body!(verify),
        does: "a write through PgBouncer lands on the new primary; local replicas follow it" },
    Row { step: Step::CarrySlots, undo: Undo::Forward, guard: GuardMove { hold_old: true, follow_new: true, ..NO_MOVE }, needs: Needs::LogicalSlots, run: body!(carry_slots),
        does: "PostgreSQL 17+ failover slots: each copy on the new primary advanced to where its consumer stopped on the old one (waits for the consumer to settle, at most 45 s)" },
    // From here on the old primary is not held at all: after an identifier
    // swap its address reaches the new primary.
    Row { step: Step::RenameOldAside, undo: Undo::Forward, guard: GuardMove { hold_old: true, follow_new: true, ..NO_MOVE }, needs: Needs::Swap, run: body!(rename_old_aside),
        does: "identifier-swap: the old primary renamed <source>-old-<id>, waited for (writes keep flowing)" },
    Row { step: Step::RenameNewIn, undo: Undo::Forward, guard: GuardMove { follow_new: true, ..NO_MOVE }, needs: Needs::Swap, run: body!(rename_new_in),
        does: "identifier-swap: the new primary takes the source's name, waited for" },
    Row { step: Step::RepointStable, undo: Undo::Forward, guard: GuardMove { follow_new: true, ..NO_MOVE }, needs: Needs::Both, run: body!(repoint_stable),
        does: "identifier-swap: PgBouncer back on the stable name, plain RELOAD (no PAUSE), write verified" },
    Row { step: Step::MoveReads, undo: Undo::Forward, guard: GuardMove { follow_new: true, ..NO_MOVE }, needs: Needs::Readers, run: body!(move_reads),
        does: "reads move to the new readers: renamed into the old names (identifier-swap) or PgBouncer read entries repointed" },
    Row { step: Step::RetireOld, undo: Undo::Forward,
        guard: GuardMove { cutover: Some(false), follow_new: true, mark_moved: true, ..NO_MOVE }, needs: Needs::Always, run: body!(retire_old),
        does: "after upgrade.retire_after: the old readers deleted (RDS: no snapshot of a replica exists), then the old primary (fenced until then; RDS: final snapshot)" },
];

/// `step`'s row.
pub fn row(step: Step) -> &'static Row {
    &SAGA[step.index()]
}

/// Whether `step`'s start must be on disk before it acts. A step whose
/// effects a roll back must reverse (`Run`), or keeps (`Keep`), must be
/// known to have started; so must the point of no return (recovery must
/// never roll back past a promote that may have happened). A step with
/// nothing to reverse (`Rerun`), or one after promote (recovery from a
/// durable promote goes forward through idempotent steps), may act on a
/// start that is only written: lost with the host, its recovery is the one
/// from the previous step's start, which is already correct. Inside the
/// pause window each sync saved is client-visible pause saved.
pub fn start_must_be_durable(step: Step) -> bool {
    match row(step).undo {
        Undo::Run(..) | Undo::Keep(_) => true,
        Undo::Rerun(_) => false,
        Undo::Forward => STEPS
            .iter()
            .find(|s| !s.before_promote())
            .is_some_and(|first| *first == step),
    }
}

/// Every row, in order.
pub fn rows() -> impl Iterator<Item = &'static Row> {
    STEPS.iter().map(|s| row(*s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::step::Region;

    #[test]
    fn one_row_per_step_in_order() {
        assert_eq!(SAGA.len(), STEPS.len());
        for (row, step) in SAGA.iter().zip(STEPS) {
            assert_eq!(row.step, *step);
        }
    }

    #[test]
    fn undo_agrees_with_the_region() {
        for r in SAGA {
            let forward = matches!(r.undo, Undo::Forward);
            assert_eq!(
                forward,
                r.step.region() == Region::AfterPromote,
                "{}",
                r.step
            );
        }
    }

    #[test]
    fn durable_starts_are_the_undoable_steps_and_promote() {
        let durable: Vec<&str> = STEPS
            .iter()
            .filter(|s| start_must_be_durable(**s))
            .map(|s| s.name())
            .collect();
        assert!(durable.contains(&"pause_writes"));
        assert!(durable.contains(&"fence_old_primary"));
        assert!(durable.contains(&"promote"));
        for light in ["final_sync", "repoint", "resume_writes", "verify"] {
            assert!(!durable.contains(&light), "{light}");
        }
    }

    #[test]
    fn guard_moves_fit_the_window() {
        for r in SAGA {
            // A check inside the window holds the writes paused.
            if r.guard.pause_bound {
                assert!(r.step.in_pause_window(), "{}", r.step);
            }
            // The old primary is held from promote until its address moves on.
            if r.guard.hold_old {
                assert!(!r.step.before_promote(), "{}", r.step);
            }
            // Following the new server starts once writes are resumed.
            if r.guard.follow_new {
                assert!(!r.step.in_pause_window() && !r.step.before_promote());
            }
        }
        let set: Vec<_> = SAGA.iter().filter_map(|r| r.guard.cutover).collect();
        assert_eq!(
            set,
            [true, false],
            "the cutover flag is set once and cleared once"
        );
    }
}
