//! The eighteen steps of an upgrade and the saga as one table: where each
//! runs (before the pause, under its deadline, after promote), what it does
//! and what its undo does. `upgrade plan`, the runner and the tests read it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The steps of an upgrade, in order (design: "Vertical upgrade").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Precheck,
    CreateReplica,
    WaitAvailable,
    CreateReaders,
    WaitReaders,
    WaitCatchup,
    PauseWrites,
    FenceOldPrimary,
    FinalSync,
    Promote,
    Repoint,
    ResumeWrites,
    Verify,
    RenameOldAside,
    RenameNewIn,
    RepointStable,
    MoveReads,
    RetireOld,
}

pub const STEPS: [Step; 18] = [
    Step::Precheck,
    Step::CreateReplica,
    Step::WaitAvailable,
    Step::CreateReaders,
    Step::WaitReaders,
    Step::WaitCatchup,
    Step::PauseWrites,
    Step::FenceOldPrimary,
    Step::FinalSync,
    Step::Promote,
    Step::Repoint,
    Step::ResumeWrites,
    Step::Verify,
    Step::RenameOldAside,
    Step::RenameNewIn,
    Step::RepointStable,
    Step::MoveReads,
    Step::RetireOld,
];

/// The saga a new journal follows. Version 1 (journals without `saga`) had
/// twelve steps; replaying one marks the steps it did not have as done, so
/// an upgrade started by an older pgsteward finishes as it began.
pub const SAGA_VERSION: u32 = 2;

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

/// One row of the saga.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepSpec {
    pub step: Step,
    pub name: &'static str,
    /// What the step does (`upgrade plan` prints it).
    pub does: &'static str,
    pub region: Region,
    /// What its undo does ("" when it has none).
    pub undo: &'static str,
}

/// The saga as one table: the runner (regions, undo), `upgrade plan`'s text
/// and the tests read it. The step bodies are in steps.rs and fence.rs, the
/// undo bodies in `Saga::undo` (runner.rs).
pub const SAGA: [StepSpec; 18] = [
    StepSpec { step: Step::Precheck, name: "precheck", region: Region::Prepare, undo: "",
        does: "source is a primary, class differs, no upgrade in flight here or on the primary (guard row), the pooler is ready; the source's readers are recorded" },
    StepSpec { step: Step::CreateReplica, name: "create_replica", region: Region::Prepare, undo: "kept for a retry; `upgrade abort` deletes it",
        does: "new server <source>-<id> on the target class (the class's settings win over the copied postgresql.auto.conf)" },
    StepSpec { step: Step::WaitAvailable, name: "wait_available", region: Region::Prepare, undo: "",
        does: "the new server accepts connections, in recovery" },
    StepSpec { step: Step::CreateReaders, name: "create_readers", region: Region::Prepare, undo: "kept for a retry; `upgrade abort` deletes them",
        does: "RDS: one new reader per reader of the source, a replica of the new server (cascading), on the reader class" },
    StepSpec { step: Step::WaitReaders, name: "wait_readers", region: Region::Prepare, undo: "",
        does: "the new readers accept connections, in recovery, lag below upgrade.catchup_max_bytes" },
    StepSpec { step: Step::WaitCatchup, name: "wait_catchup", region: Region::Prepare, undo: "",
        does: "replay lag below upgrade.catchup_max_bytes, steadily" },
    StepSpec { step: Step::PauseWrites, name: "pause_writes", region: Region::PauseDeadline, undo: "RESUME (only a PAUSE this upgrade made), remove the staged fence",
        does: "fence staged, pause keeper armed, PgBouncer PAUSE of every entry on the primary (in-flight transactions finish); the pause deadline starts" },
    StepSpec { step: Step::FenceOldPrimary, name: "fence_old_primary", region: Region::PauseDeadline, undo: "remove the pg_hba.conf block and the setting, reload, verify",
        does: "hard fence: pg_hba.conf rejects every role but superusers and the steward, reload, verified by a probe login, application sessions ended" },
    StepSpec { step: Step::FinalSync, name: "final_sync", region: Region::PauseDeadline, undo: "",
        does: "old primary's WAL flushed (async commits included); the new server replayed it" },
    StepSpec { step: Step::Promote, name: "promote", region: Region::AfterPromote, undo: "",
        does: "point of no return: the new server leaves recovery (its readers follow it)" },
    StepSpec { step: Step::Repoint, name: "repoint", region: Region::AfterPromote, undo: "",
        does: "PgBouncer [databases] rewritten to the new server's own endpoint, RELOAD" },
    StepSpec { step: Step::ResumeWrites, name: "resume_writes", region: Region::AfterPromote, undo: "",
        does: "PgBouncer RESUME: the pause window ends" },
    StepSpec { step: Step::Verify, name: "verify", region: Region::AfterPromote, undo: "",
        does: "a write through PgBouncer lands on the new primary; local replicas follow it" },
    StepSpec { step: Step::RenameOldAside, name: "rename_old_aside", region: Region::AfterPromote, undo: "",
        does: "identifier-swap: the old primary renamed <source>-old-<id>, waited for (writes keep flowing)" },
    StepSpec { step: Step::RenameNewIn, name: "rename_new_in", region: Region::AfterPromote, undo: "",
        does: "identifier-swap: the new primary takes the source's name, waited for" },
    StepSpec { step: Step::RepointStable, name: "repoint_stable", region: Region::AfterPromote, undo: "",
        does: "identifier-swap: PgBouncer back on the stable name, plain RELOAD (no PAUSE), write verified" },
    StepSpec { step: Step::MoveReads, name: "move_reads", region: Region::AfterPromote, undo: "",
        does: "reads move to the new readers: renamed into the old names (identifier-swap) or PgBouncer read entries repointed" },
    StepSpec { step: Step::RetireOld, name: "retire_old", region: Region::AfterPromote, undo: "",
        does: "after upgrade.retire_after: the old readers deleted (RDS: no snapshot of a replica exists), then the old primary (fenced until then; RDS: final snapshot)" },
];

impl Step {
    /// This step's row of [`SAGA`].
    pub fn spec(self) -> &'static StepSpec {
        &SAGA[self.index()]
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn next(self) -> Option<Step> {
        STEPS.get(self.index() + 1).copied()
    }

    /// Steps before the point of no return can be undone.
    pub fn before_promote(self) -> bool {
        self.spec().region != Region::AfterPromote
    }

    /// Under the pause deadline (pause_writes, fence, final_sync).
    pub fn under_pause_deadline(self) -> bool {
        self.spec().region == Region::PauseDeadline
    }

    /// In the pause window (PAUSE sent → RESUME returned).
    pub fn in_pause_window(self) -> bool {
        (Step::PauseWrites..=Step::ResumeWrites).contains(&self)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
