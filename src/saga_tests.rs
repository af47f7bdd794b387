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
    fn record(&mut self, step: S, output: u32) -> Boxed<'_, Result<(), E>> {
        self.log.push(format!("record {} {output}", step.name()));
        self.done.push(step);
        Box::pin(async { Ok(()) })
    }
    fn recorded(&mut self, step: S) {
        self.done.push(step);
    }
    fn note_failed<'a>(&'a mut self, step: S, error: &'a E) -> Boxed<'a, ()> {
        self.log.push(format!("failed {} {error}", step.name()));
        Box::pin(async {})
    }
    fn completed(&mut self) -> Boxed<'_, Result<(), E>> {
        self.end = Some("completed");
        Box::pin(async { Ok(()) })
    }
    fn unwound(&mut self) -> Boxed<'_, Result<(), E>> {
        self.end = Some("unwound");
        Box::pin(async { Ok(()) })
    }
}

impl Kind for Fake {
    const KIND: &'static str = "fake";
    const NOUN: &'static str = "fake";
    fn cancelled(&self) -> E {
        E::Cancelled
    }
    fn admit(&mut self, _step: S) -> Boxed<'_, Result<(), E>> {
        Box::pin(async { Ok(()) })
    }
    fn unwinds(&self, step: S, _error: &E) -> bool {
        self.fail.is_some_and(|(s, unwind)| s == step && unwind)
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
    },
    Row {
        step: S::B,
        does: "",
        run: run_tx,
        undo: Undo::None,
    },
    Row {
        step: S::C,
        does: "",
        run: run_tx,
        undo: Undo::PointOfNoReturn,
    },
    Row {
        step: S::D,
        does: "",
        run,
        undo: Undo::None,
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
    let r = unwind(&mut f, ROWS, &CancellationToken::new()).await;
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
