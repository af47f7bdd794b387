//! The steps of an upgrade as names: their order, where each runs
//! (region), and which lie in the write pause. A journal names its steps
//! with these, so this file is the vocabulary every other part shares; what
//! a step does and undoes is its row in [`super::table::SAGA`], which the
//! saga core (`crate::saga`) runs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Declares the steps once: the enum, [`STEPS`] in order, and each step's
/// journal name, region and pause-window membership. Adding a step is a line
/// here, its row in `table.rs` and its function; a unit test keeps the two
/// in the same order.
macro_rules! steps {
    ($($variant:ident = $name:literal, $region:ident, $window:literal;)*) => {
        /// The steps of an upgrade, in order (design: "Vertical upgrade").
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Step {
            $($variant,)*
        }

        /// Every step, in the order the saga runs them.
        pub const STEPS: &[Step] = &[$(Step::$variant,)*];

        impl Step {
            /// The step's name in the journal, the guard row, logs and failpoints.
            pub fn name(self) -> &'static str {
                match self {
                    $(Step::$variant => $name,)*
                }
            }

            pub fn region(self) -> Region {
                match self {
                    $(Step::$variant => Region::$region,)*
                }
            }

            /// In the pause window (PAUSE sent → RESUME returned).
            pub const fn in_pause_window(self) -> bool {
                match self {
                    $(Step::$variant => $window,)*
                }
            }
        }
    };
}

steps! {
    Precheck = "precheck", Prepare, false;
    CreateReplica = "create_replica", Prepare, false;
    WaitAvailable = "wait_available", Prepare, false;
    CreateReaders = "create_readers", Prepare, false;
    WaitReaders = "wait_readers", Prepare, false;
    WaitCatchup = "wait_catchup", Prepare, false;
    PauseWrites = "pause_writes", PauseDeadline, true;
    FenceOldPrimary = "fence_old_primary", PauseDeadline, true;
    FinalSync = "final_sync", PauseDeadline, true;
    Promote = "promote", AfterPromote, true;
    Repoint = "repoint", AfterPromote, true;
    ResumeWrites = "resume_writes", AfterPromote, true;
    Verify = "verify", AfterPromote, false;
    CarrySlots = "carry_slots", AfterPromote, false;
    RenameOldAside = "rename_old_aside", AfterPromote, false;
    RenameNewIn = "rename_new_in", AfterPromote, false;
    RepointStable = "repoint_stable", AfterPromote, false;
    MoveReads = "move_reads", AfterPromote, false;
    RetireOld = "retire_old", AfterPromote, false;
}

/// The saga a new journal follows. Version 1 (journals without `saga`) had
/// twelve steps, version 2 no `carry_slots`; replaying one marks the steps
/// it did not have as done ([`first_version`]), so an upgrade started by an
/// older pgsteward finishes as it began.
pub const SAGA_VERSION: u32 = 3;

/// The saga version that added `step` (1: there from the start).
pub fn first_version(step: Step) -> u32 {
    if NOT_IN_V1.contains(&step) {
        2
    } else if step == Step::CarrySlots {
        // Version 2 refused every logical slot at precheck: nothing to carry.
        3
    } else {
        1
    }
}

/// Steps that version 1 of the saga did not have.
pub(super) const NOT_IN_V1: [Step; 6] = [
    Step::CreateReaders,
    Step::WaitReaders,
    Step::RenameOldAside,
    Step::RenameNewIn,
    Step::RepointStable,
    Step::MoveReads,
];

pub(super) fn v1() -> u32 {
    1
}

/// The saga kind this release runs: a vertical upgrade (a bigger machine,
/// same major). A journal names its kind in its first record; one of a kind
/// this binary does not know (a newer release's) is refused, never replayed
/// as if it were this one's.
pub const UPGRADE_KIND: &str = "vertical";

pub(super) fn vertical() -> String {
    UPGRADE_KIND.to_string()
}

/// Where a step runs. The **pause window** is PAUSE sent → RESUME returned
/// (pause_writes to resume_writes: what clients feel). The **pause deadline**
/// is `upgrade.pause_timeout` counted from PAUSE: pause_writes, fence and
/// final_sync must finish before it or the upgrade rolls back; promote is the
/// point of no return, after which the window only goes forward. Nothing
/// slow runs in the window: readers are made before it, RDS renames after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Region {
    /// Before the pause: bounded by `step_timeout`, cancellable at step boundaries.
    Prepare,
    /// Under the pause deadline; any failure or a missed deadline rolls back.
    PauseDeadline,
    /// From promote on: nothing is undone, a failure leaves needs_resume.
    AfterPromote,
}

impl Region {
    pub fn name(self) -> &'static str {
        match self {
            Region::Prepare => "prepare",
            Region::PauseDeadline => "pause_deadline",
            Region::AfterPromote => "after_promote",
        }
    }
}

/// The pause window's last step: the RESUME that ends it. Read off the
/// window's flags, so code outside the table need not name it.
pub const WINDOW_RESUME: Step = {
    // Evaluated at compile time: a saga without a window does not build.
    let mut i = STEPS.len();
    loop {
        i -= 1;
        if STEPS[i].in_pause_window() {
            break STEPS[i];
        }
    }
};

/// The window's last step before its RESUME. Once it is done, everything
/// the window is for is done and PgBouncer points where writes may go (at
/// the new primary after promote): a RESUME then is safe, whoever sends it.
pub const BEFORE_WINDOW_RESUME: Step = STEPS[WINDOW_RESUME.index() - 1];

impl Step {
    pub const fn index(self) -> usize {
        self as usize
    }

    pub fn next(self) -> Option<Step> {
        STEPS.get(self.index() + 1).copied()
    }

    /// The step named `name` in a journal or guard row.
    pub fn from_name(name: &str) -> Option<Step> {
        STEPS.iter().copied().find(|s| s.name() == name)
    }

    /// Steps before the point of no return can be undone.
    pub fn before_promote(self) -> bool {
        self.region() != Region::AfterPromote
    }

    /// Under the pause deadline (pause_writes, fence, final_sync).
    pub fn under_pause_deadline(self) -> bool {
        self.region() == Region::PauseDeadline
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_names_are_the_serde_names_and_in_order() {
        for (i, s) in STEPS.iter().enumerate() {
            assert_eq!(s.index(), i);
            let json = serde_json::to_string(s).expect("a step serialises");
            assert_eq!(json, format!("\"{}\"", s.name()));
            assert_eq!(Step::from_name(s.name()), Some(*s));
        }
    }

    #[test]
    fn the_pause_window_is_one_run_from_pause_to_resume() {
        let window: Vec<Step> = STEPS
            .iter()
            .copied()
            .filter(|s| s.in_pause_window())
            .collect();
        assert_eq!(window.first(), Some(&Step::PauseWrites));
        assert_eq!(window.last(), Some(&Step::ResumeWrites));
        let (first, last) = (Step::PauseWrites.index(), Step::ResumeWrites.index());
        assert_eq!(window.len(), last - first + 1, "no gap in the window");
        assert_eq!(WINDOW_RESUME, Step::ResumeWrites);
        // What Saga::after_promote_failure runs itself when the journal is
        // gone: the step that points PgBouncer at the new primary.
        assert_eq!(BEFORE_WINDOW_RESUME, Step::Repoint);
        // The deadline covers the start of the window up to promote.
        assert!(STEPS
            .iter()
            .filter(|s| s.under_pause_deadline())
            .all(|s| s.in_pause_window() && s.before_promote()));
    }
}
