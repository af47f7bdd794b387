//! Unit tests of `upgrade::record`: transitions and replay.
use super::*;

fn entry(seq: u64, event: Event) -> Entry {
    Entry {
        seq,
        at: Utc::now(),
        event,
    }
}

pub(crate) fn created() -> UpgradeRecord {
    UpgradeRecord::from_created(&entry(
        1,
        Event::Created {
            kind: crate::upgrade::record::UPGRADE_KIND.into(),
            id: "u1".into(),
            target_class: "large".into(),
            provider: "local".into(),
            source_primary: "postgres://x@h:1/app".into(),
            saga: SAGA_VERSION,
        },
    ))
    .unwrap()
}

pub(crate) fn run(rec: &mut UpgradeRecord, events: Vec<Event>) -> Result<(), TransitionError> {
    for e in events {
        let seq = rec.last_seq + 1;
        rec.apply(&entry(seq, e))?;
    }
    Ok(())
}

/// Every step up to `step` started and succeeded.
pub(crate) fn through(step: Step) -> Vec<Event> {
    started_and_succeeded(STEPS.iter().copied().take_while(|s| *s <= step))
}

/// Each of `steps` started and succeeded, in order.
fn started_and_succeeded(steps: impl IntoIterator<Item = Step>) -> Vec<Event> {
    steps
        .into_iter()
        .flat_map(|step| {
            [
                Event::StepStarted { step },
                Event::StepSucceeded {
                    step,
                    output: Output::default(),
                },
            ]
        })
        .collect()
}

#[test]
fn the_saga_table_is_in_step_order() {
    for (i, row) in crate::upgrade::table::SAGA.iter().enumerate() {
        assert_eq!(row.step, STEPS[i]);
        assert_eq!(row.step.index(), i);
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
    let mut events = started_and_succeeded(v1);
    events.push(Event::Completed);
    run(&mut r, events).unwrap();
    assert_eq!(r.phase, Phase::Completed);
    // A new journal has every step to run.
    let new = created();
    assert_eq!(new.status(Step::CreateReaders), StepStatus::Pending);
}

#[test]
fn a_version_two_journal_past_verify_replays_and_completes() {
    // Written by the release before carry_slots (saga 2): it refused every
    // logical slot, so the step is done as far as that journal goes.
    let line = r#"{"seq":1,"at":"2026-11-01T00:00:00Z","event":"created","id":"u2","target_class":"large","provider":"local","source_primary":"p","saga":2}"#;
    let first: Entry = serde_json::from_str(line).unwrap();
    let mut r = UpgradeRecord::from_created(&first).unwrap();
    assert_eq!(r.status(Step::CarrySlots), StepStatus::Done);
    assert_eq!(r.status(Step::CreateReaders), StepStatus::Pending);
    let mut events =
        started_and_succeeded(STEPS.iter().copied().filter(|&s| s != Step::CarrySlots));
    events.push(Event::Completed);
    run(&mut r, events).unwrap();
    assert_eq!(r.phase, Phase::Completed);
    assert_eq!(created().status(Step::CarrySlots), StepStatus::Pending);
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
