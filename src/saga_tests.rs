//! The runner against an in-memory kind: order, resume, the two ways a step
//! is recorded, unwinding and the point of no return.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum S {
    A,
    B,
    C,
    D,
}

impl StepId for S {
    fn name(self) -> &'static str {
        match self {
            S::A => "a",
            S::B => "b",
            S::C => "c",
            S::D => "d",
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum E {
    #[error(transparent)]
    Failpoint(#[from] FailpointError),
    #[error("{0}")]
    Step(&'static str),
    #[error("cancelled")]
    Cancelled,
    #[error("past")]
    Past,
}

/// The journal is `done`; `log` is what ran, in order.
#[derive(Default)]
struct Fake {
    done: Vec<S>,
    log: Vec<String>,
    fail: Option<(S, bool)>,
    end: Option<&'static str>,
}

impl JournalStore for Fake {
    type Step = S;
    type Output = u32;
    type Error = E;
    fn is_done(&self, step: S) -> bool {
        self.done.contains(&step)
    }
    fn record_done(&mut self, step: S, output: u32) -> Boxed<'_, Result<(), E>> {
        self.log.push(format!("record {} {output}", step.name()));
        self.done.push(step);
        Box::pin(async { Ok(()) })
    }
    fn recorded(&mut self, step: S) {
        self.done.push(step);
    }
    fn completed(&mut self) -> Boxed<'_, Result<(), E>> {
        self.end = Some("completed");
        Box::pin(async { Ok(()) })
    }
    fn unwound<'a>(&'a mut self, _reason: &'a str, _left: Vec<(S, E)>) -> Boxed<'a, Result<(), E>> {
        self.end = Some("unwound");
        Box::pin(async { Ok(()) })
    }
}

impl Kind for Fake {
    const KIND: &'static str = "fake";
    const NOUN: &'static str = "fake";
    type Meta = ();
    fn cancelled(&self) -> Option<E> {
        Some(E::Cancelled)
    }
    fn admit(&mut self, _step: S) -> Boxed<'_, Result<(), E>> {
        Box::pin(async { Ok(()) })
    }
    fn failed(&mut self, step: S, _stage: Stage, error: E) -> Boxed<'_, Failure<E>> {
        self.log.push(format!("failed {} {error}", step.name()));
        let unwind = self.fail.is_some_and(|(s, unwind)| s == step && unwind);
        Box::pin(async move {
            if unwind {
                Failure::Unwind {
                    reason: error.to_string(),
                    error,
                }
            } else {
                Failure::Stop(error)
            }
        })
    }
    fn past_no_return(&self) -> E {
        E::Past
    }
}

fn run(c: &mut Fake, at: At<'_>) -> Boxed<'static, Result<Done<u32>, E>> {
    c.log.push(format!("run {}", at.step()));
    let fail = c.fail.is_some_and(|(s, _)| s.name() == at.step());
    Box::pin(async move {
        if fail {
            Err(E::Step("boom"))
        } else {
            Ok(Done::Record(7))
        }
    })
}

/// A step that commits its journal entry itself.
fn run_tx(c: &mut Fake, at: At<'_>) -> Boxed<'static, Result<Done<u32>, E>> {
    c.log.push(format!("run {}", at.step()));
    if c.fail.is_some_and(|(s, _)| s.name() == at.step()) {
        return Box::pin(async { Err(E::Step("boom")) });
    }
    let r = at.done().map(Done::Recorded).map_err(E::from);
    Box::pin(async move { r })
}

fn undo(c: &mut Fake, at: At<'_>) -> Boxed<'static, Result<(), E>> {
    c.log.push(format!("undo {}", at.step()));
    Box::pin(async { Ok(()) })
}

const ROWS: &[Row<Fake>] = &[
    Row {
        step: S::A,
        does: "",
        run,
        undo: Undo::Run(undo),
        meta: (),
    },
    Row {
        step: S::B,
        does: "",
        run: run_tx,
        undo: Undo::None,
        meta: (),
    },
    Row {
        step: S::C,
        does: "",
        run: run_tx,
        undo: Undo::PointOfNoReturn,
        meta: (),
    },
    Row {
        step: S::D,
        does: "",
        run,
        undo: Undo::None,
        meta: (),
    },
];

#[tokio::test]
async fn runs_every_step_once_in_order() {
    let mut f = Fake::default();
    drive(&mut f, ROWS, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        f.log,
        [
            "run a",
            "record a 7",
            "run b",
            "run c",
            "run d",
            "record d 7"
        ]
    );
    assert_eq!(f.done, [S::A, S::B, S::C, S::D]);
    assert_eq!(f.end, Some("completed"));
}

#[tokio::test]
async fn resumes_after_the_last_recorded_step() {
    let mut f = Fake {
        done: vec![S::A, S::B],
        ..Default::default()
    };
    drive(&mut f, ROWS, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(f.log, ["run c", "run d", "record d 7"]);
}

#[tokio::test]
async fn a_cancelled_saga_stops_before_the_next_step() {
    let mut f = Fake::default();
    let cancel = CancellationToken::new();
    cancel.cancel();
    assert!(matches!(
        drive(&mut f, ROWS, &cancel).await,
        Err(E::Cancelled)
    ));
    assert!(f.log.is_empty());
}

#[tokio::test]
async fn a_failure_is_noted_and_left_for_a_resume_or_unwound() {
    let mut f = Fake {
        fail: Some((S::A, false)),
        ..Default::default()
    };
    assert!(drive(&mut f, ROWS, &CancellationToken::new())
        .await
        .is_err());
    assert_eq!(f.log, ["run a", "failed a boom"]);
    assert_eq!(f.end, None);

    let mut f = Fake {
        done: vec![S::A],
        fail: Some((S::C, true)),
        ..Default::default()
    };
    assert!(drive(&mut f, ROWS, &CancellationToken::new())
        .await
        .is_err());
    // Only rows before the point of no return have undos; A's runs although
    // the journal is what it is (undos observe).
    assert_eq!(f.log, ["run b", "run c", "failed c boom", "undo a"]);
    assert_eq!(f.end, Some("unwound"));
}

#[tokio::test]
async fn no_unwind_past_the_point_of_no_return() {
    let mut f = Fake {
        done: vec![S::A, S::B, S::C],
        ..Default::default()
    };
    let r = unwind(&mut f, ROWS, &CancellationToken::new(), "test").await;
    assert!(matches!(r, Err(E::Past)));
    assert!(f.log.is_empty());
}

#[test]
fn boundaries_follow_the_table() {
    let b: Vec<_> = boundaries(ROWS)
        .into_iter()
        .map(|b| (b.failpoint, b.past_no_return))
        .collect();
    assert_eq!(b[0], ("fake-a-start".to_string(), false));
    assert_eq!(b[5], ("fake-c-done".to_string(), false));
    assert_eq!(b[6], ("fake-d-start".to_string(), true));
    assert_eq!(b.len(), 8);
    assert_eq!(undo_boundaries(ROWS), ["fake-a-undo"]);
    assert_eq!(point("", "promote", "start"), "promote-start");
}

/// A kind whose journal records starts, like the upgrade's: undos chosen by
/// the journal, an unwind that goes on past a failed undo, region entry.
#[derive(Default)]
struct Jnl {
    started: Vec<(S, bool)>,
    done: Vec<S>,
    log: Vec<String>,
    /// The step whose body fails, and the one whose undo fails.
    fail: Option<S>,
    fail_undo: Option<S>,
    left: Vec<String>,
}

impl JournalStore for Jnl {
    type Step = S;
    type Output = ();
    type Error = E;
    fn is_done(&self, step: S) -> bool {
        self.done.contains(&step)
    }
    fn started(&mut self, step: S, durable: bool) -> Result<(), E> {
        self.started.push((step, durable));
        Ok(())
    }
    fn may_have_acted(&self, step: S) -> bool {
        self.started.iter().any(|(s, _)| *s == step)
    }
    fn record_done(&mut self, step: S, _output: ()) -> Boxed<'_, Result<(), E>> {
        self.done.push(step);
        Box::pin(async { Ok(()) })
    }
    fn recorded(&mut self, step: S) {
        self.done.push(step);
    }
    fn undo_started(&mut self, step: S) {
        self.log.push(format!("undo_started {}", step.name()));
    }
    fn undo_finished(&mut self, step: S) {
        self.log.push(format!("undo_finished {}", step.name()));
    }
    fn undo_failed(&mut self, step: S, error: &E) {
        self.log
            .push(format!("undo_failed {} {error}", step.name()));
    }
    fn completed(&mut self) -> Boxed<'_, Result<(), E>> {
        Box::pin(async { Ok(()) })
    }
    fn unwound<'a>(&'a mut self, reason: &'a str, left: Vec<(S, E)>) -> Boxed<'a, Result<(), E>> {
        self.log.push(format!("unwound {reason}"));
        self.left = left
            .iter()
            .map(|(s, e)| format!("{}: {e}", s.name()))
            .collect();
        Box::pin(async { Ok(()) })
    }
}

impl Kind for Jnl {
    const KIND: &'static str = "";
    const NOUN: &'static str = "jnl";
    const UNWIND_PAST_FAILED_UNDO: bool = true;
    type Meta = &'static str;
    fn cancelled(&self) -> Option<E> {
        None
    }
    fn entering(&mut self, step: S) {
        self.log.push(format!("enter {}", step.name()));
    }
    fn admit(&mut self, _step: S) -> Boxed<'_, Result<(), E>> {
        Box::pin(async { Ok(()) })
    }
    fn failed(&mut self, step: S, stage: Stage, error: E) -> Boxed<'_, Failure<E>> {
        self.log.push(format!("failed {} {stage:?}", step.name()));
        Box::pin(async move {
            Failure::Unwind {
                reason: format!("{}: {error}", step.name()),
                error: E::Step("rolled back"),
            }
        })
    }
    fn past_no_return(&self) -> E {
        E::Past
    }
    fn unwinding(&mut self) {
        self.log.push("unwinding".into());
    }
}

fn jrun(c: &mut Jnl, at: At<'_>) -> Boxed<'static, Result<Done<()>, E>> {
    let fail = c.fail.is_some_and(|s| s.name() == at.step());
    Box::pin(async move {
        if fail {
            Err(E::Step("boom"))
        } else {
            Ok(Done::Record(()))
        }
    })
}

fn jundo(c: &mut Jnl, at: At<'_>) -> Boxed<'static, Result<(), E>> {
    let fail = c.fail_undo.is_some_and(|s| s.name() == at.step());
    Box::pin(async move {
        if fail {
            Err(E::Step("stuck"))
        } else {
            Ok(())
        }
    })
}

const JROWS: &[Row<Jnl>] = &[
    Row {
        step: S::A,
        does: "",
        run: jrun,
        undo: Undo::Keep,
        meta: "kept",
    },
    Row {
        step: S::B,
        does: "",
        run: jrun,
        undo: Undo::Run(jundo),
        meta: "",
    },
    Row {
        step: S::C,
        does: "",
        run: jrun,
        undo: Undo::Rerun,
        meta: "",
    },
    Row {
        step: S::D,
        does: "",
        run: jrun,
        undo: Undo::PointOfNoReturn,
        meta: "",
    },
];

#[tokio::test]
async fn starts_are_journaled_durably_where_the_undo_needs_it() {
    let mut j = Jnl::default();
    drive(&mut j, JROWS, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        j.started,
        [(S::A, true), (S::B, true), (S::C, false), (S::D, true)]
    );
    assert_eq!(j.log, ["enter a", "enter b", "enter c", "enter d"]);
}

#[tokio::test]
async fn the_journal_chooses_the_undos_and_a_failed_undo_does_not_stop_them() {
    // C fails: B's undo runs and fails, A is kept (done), C is journaled
    // as undone (nothing to reverse), D never started.
    let mut j = Jnl {
        fail: Some(S::C),
        fail_undo: Some(S::B),
        ..Default::default()
    };
    let r = drive(&mut j, JROWS, &CancellationToken::new()).await;
    assert!(matches!(r, Err(E::Step("rolled back"))));
    assert_eq!(
        j.log,
        [
            "enter a",
            "enter b",
            "enter c",
            "failed c Run",
            "unwinding",
            "undo_started c",
            "undo_finished c",
            "undo_started b",
            "undo_failed b stuck",
            "unwound c: boom",
        ]
    );
    assert_eq!(j.left, ["b: stuck"]);

    // A kept step that never finished is undone like any other.
    let mut j = Jnl {
        started: vec![(S::A, true)],
        ..Default::default()
    };
    unwind(&mut j, JROWS, &CancellationToken::new(), "abort")
        .await
        .unwrap();
    assert_eq!(
        j.log,
        [
            "unwinding",
            "undo_started a",
            "undo_finished a",
            "unwound abort"
        ]
    );
}
