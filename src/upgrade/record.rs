//! The upgrade's state, rebuilt from its journal: the eighteen steps, each
//! step's status, the facts steps produced, and the legal transitions.
//!
//! Every event goes through [`UpgradeRecord::apply`], both when it is
//! appended and when the journal is replayed, so a journal that could not
//! have been written by a correct runner is rejected instead of acted on.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::provider::SourceFacts;

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
const NOT_IN_V1: [Step; 6] = [
    Step::CreateReaders,
    Step::WaitReaders,
    Step::RenameOldAside,
    Step::RenameNewIn,
    Step::RepointStable,
    Step::MoveReads,
];

fn v1() -> u32 {
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
        does: "fence staged, PgBouncer PAUSE (in-flight transactions finish); the pause deadline starts" },
    StepSpec { step: Step::FenceOldPrimary, name: "fence_old_primary", region: Region::PauseDeadline, undo: "remove the pg_hba.conf block and the setting, reload, verify",
        does: "hard fence: pg_hba.conf rejects every non-superuser role, reload, application sessions ended" },
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Done,
    Failed,
    Undoing,
    Undone,
    UndoFailed,
}

/// The upgrade as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase", content = "reason")]
pub enum Phase {
    /// Moving forward (or interrupted while moving forward: `upgrade resume`).
    Running,
    /// Undone before promotion; the old primary serves writes. The new replica
    /// is kept: `upgrade resume` retries the cutover, `upgrade abort` deletes it.
    RolledBack(String),
    /// Failed after promotion: only forward is possible, `upgrade resume`.
    NeedsResume(String),
    Completed,
    /// Rolled back and the new replica deleted. Final.
    Aborted,
}

/// What is written to the journal, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    Created {
        id: String,
        target_class: String,
        provider: String,
        /// `database.primary` at the start, password redacted.
        source_primary: String,
        /// The saga version the journal follows ([`SAGA_VERSION`]; 1 when absent).
        #[serde(default = "v1")]
        saga: u32,
    },
    StepStarted {
        step: Step,
    },
    StepSucceeded {
        step: Step,
        #[serde(default, skip_serializing_if = "Output::is_empty")]
        output: Output,
    },
    StepFailed {
        step: Step,
        error: String,
    },
    UndoStarted {
        step: Step,
    },
    UndoFinished {
        step: Step,
    },
    UndoFailed {
        step: Step,
        error: String,
    },
    RolledBack {
        reason: String,
    },
    NeedsResume {
        reason: String,
    },
    /// `upgrade resume` after a roll back: the cutover is tried again.
    Retry,
    Completed,
    Aborted,
}

/// Facts a step learnt that later steps (possibly in another process) need.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceFacts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    /// The new server's SQL endpoint, password redacted (for people; code asks the provider).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_endpoint: Option<String>,
    /// The old primary's last WAL position after fencing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Output {
    pub fn is_empty(&self) -> bool {
        *self == Output::default()
    }
    pub fn note(s: impl Into<String>) -> Output {
        Output {
            note: Some(s.into()),
            ..Output::default()
        }
    }
}

/// A journal line: the event plus when it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepState {
    pub step: Step,
    pub status: StepStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub output: Output,
    /// How many times the step was started (more than once after a resume).
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpgradeRecord {
    pub id: String,
    pub target_class: String,
    pub provider: String,
    pub source_primary: String,
    pub created_at: DateTime<Utc>,
    pub phase: Phase,
    pub steps: Vec<StepState>,
    pub last_seq: u64,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal journal transition at seq {seq}: {what}")]
pub struct TransitionError {
    pub seq: u64,
    pub what: String,
}

/// An event a step's status does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("step {step} is {from:?}; {event} is not allowed{}", if *.past_promote { " (past promote nothing is undone)" } else { "" })]
pub struct IllegalStep {
    pub step: Step,
    pub from: StepStatus,
    pub event: &'static str,
    pub past_promote: bool,
}

/// The status a step moves to on `event`, or why it cannot.
pub fn next_status(step: Step, cur: StepStatus, event: &Event) -> Result<StepStatus, IllegalStep> {
    use StepStatus::*;
    let undoable = step.before_promote();
    let next = match (event, cur) {
        // A started step runs again on resume (every step is idempotent); a failed or
        // undone one is retried by `upgrade resume`.
        (Event::StepStarted { .. }, Pending | Running | Failed | Undone) => Running,
        (Event::StepSucceeded { .. }, Running) => Done,
        (Event::StepFailed { .. }, Running) => Failed,
        (Event::UndoStarted { .. }, Running | Done | Failed | Undoing | UndoFailed) if undoable => {
            Undoing
        }
        (Event::UndoFinished { .. }, Undoing) => Undone,
        (Event::UndoFailed { .. }, Undoing) => UndoFailed,
        (e, s) => {
            return Err(IllegalStep {
                step,
                from: s,
                event: event_name(e),
                past_promote: !undoable,
            })
        }
    };
    Ok(next)
}

fn event_name(e: &Event) -> &'static str {
    match e {
        Event::Created { .. } => "created",
        Event::StepStarted { .. } => "step_started",
        Event::StepSucceeded { .. } => "step_succeeded",
        Event::StepFailed { .. } => "step_failed",
        Event::UndoStarted { .. } => "undo_started",
        Event::UndoFinished { .. } => "undo_finished",
        Event::UndoFailed { .. } => "undo_failed",
        Event::RolledBack { .. } => "rolled_back",
        Event::NeedsResume { .. } => "needs_resume",
        Event::Retry => "retry",
        Event::Completed => "completed",
        Event::Aborted => "aborted",
    }
}

impl UpgradeRecord {
    /// The record a `Created` entry starts.
    pub fn from_created(entry: &Entry) -> Result<UpgradeRecord, TransitionError> {
        let Event::Created {
            id,
            target_class,
            provider,
            source_primary,
            saga,
        } = &entry.event
        else {
            return Err(TransitionError {
                seq: entry.seq,
                what: "a journal must start with `created`".into(),
            });
        };
        Ok(UpgradeRecord {
            id: id.clone(),
            target_class: target_class.clone(),
            provider: provider.clone(),
            source_primary: source_primary.clone(),
            created_at: entry.at,
            phase: Phase::Running,
            steps: STEPS
                .iter()
                .map(|&step| {
                    let absent = *saga < 2 && NOT_IN_V1.contains(&step);
                    StepState {
                        step,
                        status: if absent {
                            StepStatus::Done
                        } else {
                            StepStatus::Pending
                        },
                        started_at: None,
                        finished_at: None,
                        error: None,
                        output: if absent {
                            Output::note("not a step of this journal's saga (version 1)")
                        } else {
                            Output::default()
                        },
                        attempts: 0,
                    }
                })
                .collect(),
            last_seq: entry.seq,
            updated_at: entry.at,
        })
    }

    pub fn step(&self, step: Step) -> &StepState {
        &self.steps[step.index()]
    }

    pub fn status(&self, step: Step) -> StepStatus {
        self.step(step).status
    }

    /// Validates `entry` against the current state and applies it.
    pub fn apply(&mut self, entry: &Entry) -> Result<(), TransitionError> {
        let err = |what: String| TransitionError {
            seq: entry.seq,
            what,
        };
        if entry.seq != self.last_seq + 1 {
            return Err(err(format!(
                "expected seq {}, found {}",
                self.last_seq + 1,
                entry.seq
            )));
        }
        let terminal = matches!(self.phase, Phase::Completed | Phase::Aborted);
        match &entry.event {
            Event::Created { .. } => return Err(err("`created` may only come first".into())),
            Event::StepStarted { step }
            | Event::StepSucceeded { step, .. }
            | Event::StepFailed { step, .. }
            | Event::UndoStarted { step }
            | Event::UndoFinished { step }
            | Event::UndoFailed { step, .. } => {
                let step = *step;
                if terminal {
                    return Err(err(format!("upgrade is {:?}; no step may run", self.phase)));
                }
                let forward = matches!(entry.event, Event::StepStarted { .. });
                if forward {
                    if self.phase != Phase::Running && !matches!(self.phase, Phase::NeedsResume(_))
                    {
                        return Err(err(format!(
                            "step {step} started while the upgrade is {:?}",
                            self.phase
                        )));
                    }
                    if let Some(prev) = STEPS[..step.index()]
                        .iter()
                        .find(|s| self.status(**s) != StepStatus::Done)
                    {
                        return Err(err(format!("step {step} started before {prev} was done")));
                    }
                }
                let cur = self.status(step);
                let next = next_status(step, cur, &entry.event).map_err(|e| err(e.to_string()))?;
                let s = &mut self.steps[step.index()];
                s.status = next;
                match &entry.event {
                    Event::StepStarted { .. } => {
                        s.started_at = Some(entry.at);
                        s.finished_at = None;
                        s.error = None;
                        s.attempts += 1;
                    }
                    Event::StepSucceeded { output, .. } => {
                        s.finished_at = Some(entry.at);
                        s.output = output.clone();
                    }
                    Event::StepFailed { error, .. } | Event::UndoFailed { error, .. } => {
                        s.finished_at = Some(entry.at);
                        s.error = Some(error.clone());
                    }
                    Event::UndoFinished { .. } => s.finished_at = Some(entry.at),
                    _ => {}
                }
                if matches!(self.phase, Phase::NeedsResume(_)) && forward {
                    self.phase = Phase::Running;
                }
            }
            Event::RolledBack { reason } => {
                if self.promote_started() {
                    return Err(err("cannot roll back once promote has started".into()));
                }
                if terminal {
                    return Err(err(format!("upgrade is already {:?}", self.phase)));
                }
                self.phase = Phase::RolledBack(reason.clone());
            }
            Event::NeedsResume { reason } => {
                if !self.promote_started() {
                    return Err(err("needs_resume is only for failures after promote".into()));
                }
                if terminal {
                    return Err(err(format!("upgrade is already {:?}", self.phase)));
                }
                self.phase = Phase::NeedsResume(reason.clone());
            }
            Event::Retry => {
                if !matches!(self.phase, Phase::RolledBack(_)) {
                    return Err(err(format!("retry from {:?}", self.phase)));
                }
                self.phase = Phase::Running;
                // The undone steps run again from the start.
                for s in &mut self.steps {
                    if s.status == StepStatus::Undone {
                        s.status = StepStatus::Pending;
                    }
                }
            }
            Event::Completed => {
                if let Some(s) = STEPS.iter().find(|s| self.status(**s) != StepStatus::Done) {
                    return Err(err(format!("completed while step {s} is not done")));
                }
                self.phase = Phase::Completed;
            }
            Event::Aborted => {
                if !matches!(self.phase, Phase::RolledBack(_)) {
                    return Err(err(format!(
                        "abort is only possible after a roll back, not from {:?}",
                        self.phase
                    )));
                }
                self.phase = Phase::Aborted;
            }
        }
        self.last_seq = entry.seq;
        self.updated_at = entry.at;
        Ok(())
    }

    /// Once promote has started the upgrade can only go forward.
    pub fn promote_started(&self) -> bool {
        self.status(Step::Promote) != StepStatus::Pending
    }

    /// The first step that is not done: where a runner continues.
    pub fn next_step(&self) -> Option<Step> {
        STEPS
            .iter()
            .copied()
            .find(|s| self.status(*s) != StepStatus::Done)
    }

    /// Whether the upgrade still needs a runner (not completed, not aborted).
    pub fn in_flight(&self) -> bool {
        !matches!(self.phase, Phase::Completed | Phase::Aborted)
    }

    /// Between `pause_writes` started and `verify` done: partition DDL waits.
    pub fn in_cutover(&self) -> bool {
        let started = self.status(Step::PauseWrites) != StepStatus::Pending;
        let verified = self.status(Step::Verify) == StepStatus::Done;
        let rolled_back = matches!(self.phase, Phase::RolledBack(_) | Phase::Aborted);
        started && !verified && !rolled_back
    }

    /// Facts recorded by earlier steps.
    pub fn source(&self) -> Option<&SourceFacts> {
        self.step(Step::Precheck).output.source.as_ref()
    }
    pub fn replica_id(&self) -> Option<&str> {
        self.step(Step::CreateReplica).output.replica_id.as_deref()
    }
    pub fn replica_endpoint(&self) -> Option<&str> {
        self.step(Step::CreateReplica)
            .output
            .replica_endpoint
            .as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, event: Event) -> Entry {
        Entry {
            seq,
            at: Utc::now(),
            event,
        }
    }

    fn created() -> UpgradeRecord {
        UpgradeRecord::from_created(&entry(
            1,
            Event::Created {
                id: "u1".into(),
                target_class: "large".into(),
                provider: "local".into(),
                source_primary: "postgres://x@h:1/app".into(),
                saga: SAGA_VERSION,
            },
        ))
        .unwrap()
    }

    fn run(rec: &mut UpgradeRecord, events: Vec<Event>) -> Result<(), TransitionError> {
        for e in events {
            let seq = rec.last_seq + 1;
            rec.apply(&entry(seq, e))?;
        }
        Ok(())
    }

    fn through(step: Step) -> Vec<Event> {
        STEPS
            .iter()
            .take_while(|s| **s <= step)
            .flat_map(|&s| {
                [
                    Event::StepStarted { step: s },
                    Event::StepSucceeded {
                        step: s,
                        output: Output::default(),
                    },
                ]
            })
            .collect()
    }

    #[test]
    fn the_saga_table_is_in_step_order() {
        for (i, spec) in SAGA.iter().enumerate() {
            assert_eq!(spec.step, STEPS[i]);
            assert_eq!(spec.step.index(), i);
        }
        let under: Vec<Step> = STEPS
            .iter()
            .copied()
            .filter(|s| s.under_pause_deadline())
            .collect();
        assert_eq!(
            under,
            [Step::PauseWrites, Step::FenceOldPrimary, Step::FinalSync]
        );
        assert!(!Step::Promote.before_promote() && Step::FinalSync.before_promote());
    }

    #[test]
    fn happy_path_completes() {
        let mut r = created();
        run(&mut r, through(Step::RetireOld)).unwrap();
        run(&mut r, vec![Event::Completed]).unwrap();
        assert_eq!(r.phase, Phase::Completed);
        assert!(!r.in_flight());
    }

    #[test]
    fn steps_run_in_order() {
        let mut r = created();
        let e = run(
            &mut r,
            vec![Event::StepStarted {
                step: Step::CreateReplica,
            }],
        )
        .unwrap_err();
        assert!(e.what.contains("before precheck"), "{e}");
    }

    #[test]
    fn a_started_step_may_start_again() {
        let mut r = created();
        run(
            &mut r,
            vec![
                Event::StepStarted {
                    step: Step::Precheck,
                },
                Event::StepStarted {
                    step: Step::Precheck,
                },
            ],
        )
        .unwrap();
        assert_eq!(r.step(Step::Precheck).attempts, 2);
    }

    #[test]
    fn nothing_is_undone_after_promote() {
        let mut r = created();
        run(&mut r, through(Step::Promote)).unwrap();
        assert!(run(
            &mut r,
            vec![Event::UndoStarted {
                step: Step::Promote
            }]
        )
        .is_err());
        assert!(run(&mut r, vec![Event::RolledBack { reason: "x".into() }]).is_err());
        run(&mut r, vec![Event::NeedsResume { reason: "x".into() }]).unwrap();
        run(
            &mut r,
            vec![Event::StepStarted {
                step: Step::Repoint,
            }],
        )
        .unwrap();
        assert_eq!(r.phase, Phase::Running);
    }

    #[test]
    fn roll_back_then_retry_then_abort_rules() {
        let mut r = created();
        run(&mut r, through(Step::WaitCatchup)).unwrap();
        run(
            &mut r,
            vec![
                Event::StepStarted {
                    step: Step::PauseWrites,
                },
                Event::StepFailed {
                    step: Step::PauseWrites,
                    error: "timeout".into(),
                },
                Event::UndoStarted {
                    step: Step::PauseWrites,
                },
                Event::UndoFinished {
                    step: Step::PauseWrites,
                },
                Event::RolledBack {
                    reason: "timeout".into(),
                },
            ],
        )
        .unwrap();
        assert!(!r.in_cutover());
        assert!(run(
            &mut r,
            vec![Event::StepStarted {
                step: Step::PauseWrites
            }]
        )
        .is_err());
        run(
            &mut r,
            vec![
                Event::Retry,
                Event::StepStarted {
                    step: Step::PauseWrites,
                },
            ],
        )
        .unwrap();
        assert!(r.in_cutover());
        assert!(run(&mut r, vec![Event::Aborted]).is_err());
    }

    #[test]
    fn a_twelve_step_journal_replays_and_completes() {
        // Written by a pgsteward before readers and the swap steps existed.
        let line = r#"{"seq":1,"at":"2026-01-01T00:00:00Z","event":"created","id":"u0","target_class":"large","provider":"local","source_primary":"p"}"#;
        let first: Entry = serde_json::from_str(line).unwrap();
        let mut r = UpgradeRecord::from_created(&first).unwrap();
        assert_eq!(r.status(Step::CreateReaders), StepStatus::Done);
        assert_eq!(r.status(Step::WaitCatchup), StepStatus::Pending);
        let v1 = [
            Step::Precheck,
            Step::CreateReplica,
            Step::WaitAvailable,
            Step::WaitCatchup,
            Step::PauseWrites,
            Step::FenceOldPrimary,
            Step::FinalSync,
            Step::Promote,
            Step::Repoint,
            Step::ResumeWrites,
            Step::Verify,
            Step::RetireOld,
        ];
        let events: Vec<Event> = v1
            .iter()
            .flat_map(|&step| {
                [
                    Event::StepStarted { step },
                    Event::StepSucceeded {
                        step,
                        output: Output::default(),
                    },
                ]
            })
            .chain([Event::Completed])
            .collect();
        run(&mut r, events).unwrap();
        assert_eq!(r.phase, Phase::Completed);
        // A new journal has every step to run.
        let new = created();
        assert_eq!(new.status(Step::CreateReaders), StepStatus::Pending);
    }

    #[test]
    fn replay_rejects_gaps_in_seq() {
        let mut r = created();
        let e = r
            .apply(&entry(
                5,
                Event::StepStarted {
                    step: Step::Precheck,
                },
            ))
            .unwrap_err();
        assert!(e.what.contains("expected seq 2"));
    }
}
