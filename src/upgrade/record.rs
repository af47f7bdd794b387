//! The upgrade's state, rebuilt from its journal: each step's status, the
//! facts steps produced, and the legal transitions (the steps themselves
//! and the saga table are in `step`).
//!
//! Every event goes through [`UpgradeRecord::apply`], both when it is
//! appended and when the journal is replayed, so a journal that could not
//! have been written by a correct runner is rejected instead of acted on.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::provider::SourceFacts;

use super::step::{first_version, v1, BEFORE_WINDOW_RESUME, WINDOW_RESUME};
pub use super::step::{Region, Step, SAGA_VERSION, STEPS, UPGRADE_KIND};

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

/// For people (`upgrade status`, `resume`, `abort`); JSON keeps the tagged form.
impl std::fmt::Display for StepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Done => "done",
            StepStatus::Failed => "failed",
            StepStatus::Undoing => "undoing",
            StepStatus::Undone => "undone",
            StepStatus::UndoFailed => "undo failed",
        })
    }
}

/// For people: `rolled back: <reason>`, never the enum's debug form.
impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Running => f.write_str("running"),
            Phase::RolledBack(why) => write!(f, "rolled back: {why}"),
            Phase::NeedsResume(why) => write!(f, "needs `upgrade resume`: {why}"),
            Phase::Completed => f.write_str("completed"),
            Phase::Aborted => f.write_str("aborted"),
        }
    }
}

/// What is written to the journal, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    Created {
        /// The saga kind ([`UPGRADE_KIND`]; journals from before it was
        /// written are vertical upgrades).
        #[serde(default = "super::step::vertical")]
        kind: String,
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
    /// pause_writes, RDS fence: databases that were read-only on purpose
    /// before the upgrade (a database-level `default_transaction_read_only
    /// = on`); the fence leaves them alone and the unfence keeps them so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_read_only: Option<Vec<String>>,
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
            kind,
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
        // Checked before anything is replayed (or a garbled line rewritten
        // away): a newer release's events would read as garbled here.
        if kind != UPGRADE_KIND || *saga > SAGA_VERSION {
            return Err(TransitionError {
                seq: entry.seq,
                what: format!(
                    "this journal is a `{kind}` upgrade on saga version {saga}, written by a newer \
                     pgsteward; this one runs `{UPGRADE_KIND}` up to version {SAGA_VERSION}. Run \
                     `upgrade status`, `resume` or `abort` with the release that started it"
                ),
            });
        }
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
                    let absent = *saga < first_version(step);
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
                            Output::note(format!(
                                "not a step of this journal's saga (version {saga})"
                            ))
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
                    return Err(err(format!("upgrade is {}; no step may run", self.phase)));
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
                    return Err(err(format!("upgrade is already {}", self.phase)));
                }
                self.phase = Phase::RolledBack(reason.clone());
            }
            Event::NeedsResume { reason } => {
                if !self.promote_started() {
                    return Err(err("needs_resume is only for failures after promote".into()));
                }
                if terminal {
                    return Err(err(format!("upgrade is already {}", self.phase)));
                }
                self.phase = Phase::NeedsResume(reason.clone());
            }
            Event::Retry => {
                if !matches!(self.phase, Phase::RolledBack(_)) {
                    return Err(err(format!("retry from {}", self.phase)));
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

    /// Everything in the pause window but its RESUME is done: PgBouncer
    /// points where writes may go, so resuming them is safe (see
    /// [`BEFORE_WINDOW_RESUME`]).
    pub fn window_work_done(&self) -> bool {
        self.status(BEFORE_WINDOW_RESUME) == StepStatus::Done
    }

    /// The RESUME that ends the pause window is done.
    pub fn window_resumed(&self) -> bool {
        self.status(WINDOW_RESUME) == StepStatus::Done
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

// Its fixtures (a created record, journals through a step) serve the
// runner's tests too.
#[cfg(test)]
#[path = "record_tests.rs"]
pub(crate) mod tests;
