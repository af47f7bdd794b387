//! The saga as an executable table: one row per step of the core's
//! [`saga::Row`] — what it does, how it is undone, and the upgrade's own
//! column ([`Meta`]: the undo's text, how the guard row moves before it,
//! when it has work) — and the function that runs it. The core's runner
//! (`crate::saga`, driven by runner.rs) reads the rows and knows no step by
//! name; `upgrade plan` prints them; the failpoint at every boundary and the
//! "fail each step and unwind" tests walk them, so a new row is covered
//! without new test code.

pub use super::error::UndoError;
use super::error::UpgradeError;
use super::record::Output;
use super::saga::Saga;
use super::step::{Step, STEPS};
use crate::config::CutoverKind;
use crate::saga::{self, At, Boxed, Done};

pub type Row = saga::Row<Saga>;
pub type Undo = saga::Undo<Saga>;

/// The upgrade's column of a row: what the core's runner does not read.
#[derive(Clone, Copy)]
pub struct Meta {
    /// What the undo does or why there is none (`upgrade plan`; "" when
    /// there is nothing to say).
    pub undoes: &'static str,
    pub guard: GuardMove,
    pub needs: Needs,
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

/// When a step has work: the plan lists only these. Where the condition is
/// fixed for the whole upgrade (the provider's identifier swap, the
/// cutover's kind) the row's function asks [`Needs::unmet_by`] before the
/// body runs, so no body branches on it; where it depends on what earlier
/// steps found (readers, slots) the body returns at once with nothing to do.
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

impl Needs {
    /// Why a row that needs this has nothing to do in `saga`'s upgrade,
    /// when that is fixed for the whole upgrade: the provider swaps
    /// identifiers or not, the cutover is PgBouncer or not. `None`: the row
    /// runs (its body decides on what earlier steps found). The one place
    /// the saga asks these capabilities for whole steps.
    pub fn unmet_by(self, saga: &Saga) -> Option<&'static str> {
        let swap = saga.provider.swaps_identifiers();
        let pgbouncer = saga.cfg.cutover.kind == CutoverKind::Pgbouncer;
        match self {
            Needs::Swap | Needs::Both if !swap => Some("no identifier swap: names stay"),
            Needs::Both if !pgbouncer => Some("cutover.kind = none: nothing to repoint"),
            // Repoint and resume_writes also end the pause window, PgBouncer
            // or not: their bodies always run.
            _ => None,
        }
    }
}

/// The step function for a `Saga` method: the runner records its output.
/// A row this upgrade does not need ([`Needs::unmet_by`]) is recorded done
/// with the reason, its body not run.
macro_rules! body {
    ($method:ident, $needs:ident) => {{
        fn run<'a>(
            saga: &'a mut Saga,
            _at: At<'a>,
        ) -> Boxed<'a, Result<Done<Output>, UpgradeError>> {
            Box::pin(async move {
                if let Some(why) = Needs::$needs.unmet_by(saga) {
                    return Ok(Done::Record(Output::note(why)));
                }
                saga.$method().await.map(Done::Record)
            })
        }
        run
    }};
}

/// The undo function for a `Saga` method.
macro_rules! undo {
    ($method:ident) => {{
        fn undo<'a>(saga: &'a mut Saga, _at: At<'a>) -> Boxed<'a, Result<(), UpgradeError>> {
            Box::pin(async move { saga.$method().await.map_err(UpgradeError::from) })
        }
        Undo::Run(undo)
    }};
}

/// A row: the macros above keep each one a line or two.
macro_rules! row {
    ($step:ident, $undo:expr, $undoes:expr, $guard:expr, $needs:ident, $method:ident, $does:expr) => {
        Row {
            step: Step::$step,
            does: $does,
            run: body!($method, $needs),
            undo: $undo,
            meta: Meta {
                undoes: $undoes,
                guard: $guard,
                needs: Needs::$needs,
            },
        }
    };
}

const KEPT_REPLICA: &str = "kept for a retry; `upgrade abort` deletes it";
const KEPT_READERS: &str = "kept for a retry; `upgrade abort` deletes them";
const UNDO_PAUSE: &str = "RESUME (only a PAUSE this upgrade made), remove the staged fence";
const UNDO_FENCE: &str = "remove the pg_hba.conf block and the setting, reload, verify";

/// The saga, in [`STEPS`] order (a unit test holds them together).
pub const SAGA: &[Row] = &[
    row!(Precheck, Undo::Keep, "", NO_MOVE, Always, precheck_step,
        "source is a primary, class differs, no upgrade in flight here or on the primary (guard row), the pooler is ready; the source's readers are recorded"),
    row!(CreateReplica, Undo::Keep, KEPT_REPLICA, NO_MOVE, Always, create_replica,
        "new server <source>-<id> on the target class (the class's settings win over the copied postgresql.auto.conf)"),
    row!(WaitAvailable, Undo::Rerun, "", NO_MOVE, Always, wait_available,
        "the new server accepts connections, in recovery"),
    row!(CreateReaders, Undo::Rerun, KEPT_READERS, NO_MOVE, Readers, create_readers,
        "RDS: one new reader per reader of the source, a replica of the new server (cascading), on the reader class"),
    row!(WaitReaders, Undo::Rerun, "", NO_MOVE, Readers, wait_readers,
        "the new readers accept connections, in recovery, lag below upgrade.catchup_max_bytes"),
    row!(WaitCatchup, Undo::Rerun, "", NO_MOVE, Always, wait_catchup,
        "replay lag below upgrade.catchup_max_bytes, steadily"),
    row!(PauseWrites, undo!(undo_pause), UNDO_PAUSE, GuardMove { cutover: Some(true), ..NO_MOVE }, Always, pause_writes,
        "fence staged, pause keeper armed, PgBouncer PAUSE of every entry on the primary (in-flight transactions finish); the pause deadline starts"),
    row!(FenceOldPrimary, undo!(undo_fence), UNDO_FENCE, GuardMove { pause_bound: true, ..NO_MOVE }, Always, fence_old_primary,
        "hard fence: pg_hba.conf rejects every role but superusers and the steward, reload, verified by a probe login, application sessions ended"),
    row!(FinalSync, Undo::Rerun, "", GuardMove { pause_bound: true, ..NO_MOVE }, Always, final_sync,
        "old primary's WAL flushed (async commits included); the new server replayed it"),
    row!(Promote, Undo::PointOfNoReturn, "", GuardMove { hold_old: true, pause_bound: true, ..NO_MOVE }, Always, promote,
        "point of no return: the new server leaves recovery (its readers follow it)"),
    row!(Repoint, Undo::None, "", GuardMove { hold_old: true, pause_bound: true, ..NO_MOVE }, Pgbouncer, repoint,
        "PgBouncer [databases] rewritten to the new server's own endpoint, RELOAD"),
    row!(ResumeWrites, Undo::None, "", GuardMove { hold_old: true, pause_bound: true, ..NO_MOVE }, Pgbouncer, resume_writes,
        "PgBouncer RESUME: the pause window ends"),
    row!(Verify, Undo::None, "", GuardMove { hold_old: true, follow_new: true, ..NO_MOVE }, Always, verify,
        "a write through PgBouncer lands on the new primary; local replicas follow it"),
    row!(CarrySlots, Undo::None, "", GuardMove { hold_old: true, follow_new: true, ..NO_MOVE }, LogicalSlots, carry_slots,
        "PostgreSQL 17+ failover slots: each copy on the new primary advanced to where its consumer stopped on the old one (waits for the consumer to settle, at most 45 s)"),
    // From here on the old primary is not held at all: after an identifier
    // swap its address reaches the new primary.
    row!(RenameOldAside, Undo::None, "", GuardMove { hold_old: true, follow_new: true, ..NO_MOVE }, Swap, rename_old_aside,
        "identifier-swap: the old primary renamed <source>-old-<id>, waited for (writes keep flowing)"),
    row!(RenameNewIn, Undo::None, "", GuardMove { follow_new: true, ..NO_MOVE }, Swap, rename_new_in,
        "identifier-swap: the new primary takes the source's name, waited for"),
    row!(RepointStable, Undo::None, "", GuardMove { follow_new: true, ..NO_MOVE }, Both, repoint_stable,
        "identifier-swap: PgBouncer back on the stable name, plain RELOAD (no PAUSE), write verified"),
    row!(MoveReads, Undo::None, "", GuardMove { follow_new: true, ..NO_MOVE }, Readers, move_reads,
        "reads move to the new readers: renamed into the old names (identifier-swap) or PgBouncer read entries repointed"),
    row!(RetireOld, Undo::None, "", GuardMove { cutover: Some(false), follow_new: true, mark_moved: true, ..NO_MOVE }, Always, retire_old,
        "after upgrade.retire_after: the old readers deleted (RDS: no snapshot of a replica exists), then the old primary (fenced until then; RDS: final snapshot)"),
];

/// `step`'s row.
pub fn row(step: Step) -> &'static Row {
    &SAGA[step.index()]
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
        // The point of no return is the first step after promote's region
        // starts; nothing after it is undone, everything before it can be.
        for r in SAGA {
            let after = r.step.region() == Region::AfterPromote;
            let i = r.step.index();
            let first_after = after && (i == 0 || STEPS[i - 1].before_promote());
            assert_eq!(
                matches!(r.undo, Undo::PointOfNoReturn),
                first_after,
                "{}",
                r.step
            );
            if after && !first_after {
                assert!(matches!(r.undo, Undo::None), "{}", r.step);
            }
            if !after {
                assert!(!matches!(r.undo, Undo::None), "{}", r.step);
            }
        }
    }

    #[test]
    fn durable_starts_are_the_undoable_steps_and_promote() {
        let durable: Vec<&str> = SAGA
            .iter()
            .filter(|r| r.undo.start_must_be_durable())
            .map(|r| r.step.name())
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
            if r.meta.guard.pause_bound {
                assert!(r.step.in_pause_window(), "{}", r.step);
            }
            // The old primary is held from promote until its address moves on.
            if r.meta.guard.hold_old {
                assert!(!r.step.before_promote(), "{}", r.step);
            }
            // Following the new server starts once writes are resumed.
            if r.meta.guard.follow_new {
                assert!(!r.step.in_pause_window() && !r.step.before_promote());
            }
        }
        let set: Vec<_> = SAGA.iter().filter_map(|r| r.meta.guard.cutover).collect();
        assert_eq!(
            set,
            [true, false],
            "the cutover flag is set once and cleared once"
        );
    }
}
