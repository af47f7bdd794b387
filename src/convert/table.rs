//! A conversion as a saga of the core (`crate::saga`): its table of rows,
//! its context, and its journal's store, the row in `pgsteward.conversions`.
//!
//! The store writes on the same session the steps run on: a step whose DDL
//! is transactional writes its journal entry in its own transaction
//! (`Done::Recorded`, see `steps::in_tx` and the swap); the index builds and
//! the partition pass are recorded by the runner right after them.

use chrono::Utc;
use tokio_postgres::Client;

use super::journal::{self, Record, Step};
use super::plan::SWAP_GUARD;
use super::{steps, ConvertError};
use crate::config::{Cluster, TableConfig};
use crate::saga::{At, Boxed, Done, Failure, JournalStore, Kind, Row, Stage, StepId, Undo};

/// Everything a conversion's steps run with. The session holds the table's
/// conversion lock (an advisory lock) for as long as this lives.
pub struct Conversion {
    pub cfg: Cluster,
    pub tcfg: TableConfig,
    pub client: Client,
    /// The journal's row as last read or written: `rec.step` is the last
    /// step recorded done.
    pub rec: Record,
}

impl StepId for Step {
    fn name(self) -> &'static str {
        self.as_str()
    }
}

impl JournalStore for Conversion {
    type Step = Step;
    type Output = ();
    type Error = ConvertError;

    fn is_done(&self, step: Step) -> bool {
        self.rec.step >= step
    }

    fn record_done(&mut self, step: Step, _output: ()) -> Boxed<'_, Result<(), ConvertError>> {
        Box::pin(async move {
            journal::advance(&self.client, self.rec.id, step, None).await?;
            self.rec.step = step;
            Ok(())
        })
    }

    fn recorded(&mut self, step: Step) {
        self.rec.step = step;
    }

    fn completed(&mut self) -> Boxed<'_, Result<(), ConvertError>> {
        Box::pin(self.finish("done"))
    }

    /// A conversion's unwind stops at a failed undo (the default), so
    /// `left` is empty; the row's state says it all.
    fn unwound<'a>(
        &'a mut self,
        _reason: &'a str,
        _left: Vec<(Step, ConvertError)>,
    ) -> Boxed<'a, Result<(), ConvertError>> {
        Box::pin(self.finish("aborted"))
    }
}

impl Conversion {
    async fn finish(&mut self, state: &'static str) -> Result<(), ConvertError> {
        journal::finish(&self.client, self.rec.id, state).await?;
        self.rec.state = state.into();
        Ok(())
    }
}

impl Kind for Conversion {
    const KIND: &'static str = "convert";
    const NOUN: &'static str = "conversion";
    type Meta = ();

    fn cancelled(&self) -> Option<ConvertError> {
        Some(steps::cancelled(&self.rec.plan.name()))
    }

    /// Up to the swap, the boundary must be far enough ahead ([`SWAP_GUARD`]):
    /// the CHECK would refuse writers' rows at the boundary, so a conversion
    /// that cannot swap in time undoes itself.
    fn admit(&mut self, step: Step) -> Boxed<'_, Result<(), ConvertError>> {
        let too_close = step <= Step::Swapped
            && self.rec.plan.lead(Utc::now()).num_seconds() < SWAP_GUARD.as_secs() as i64;
        let boundary = self.rec.plan.boundary_text.clone();
        Box::pin(async move {
            if too_close {
                tracing::warn!(boundary = %boundary, "boundary too close for the swap; undoing the conversion");
                return Err(ConvertError::BoundaryTooClose { boundary });
            }
            Ok(())
        })
    }

    /// A failure before the step started (its `-start` failpoint) is left
    /// as it is; one in the step is noted in the journal's row. Then the
    /// CHECK would keep refusing rows at the boundary from writers: undo at
    /// once when resuming cannot help (the boundary too close, rows outside
    /// the first partition, or a swap the server refused, which rolled back
    /// whole: a missing privilege, something changed). A swap that lost its
    /// lock race stays, for `resume`.
    fn failed(
        &mut self,
        step: Step,
        stage: Stage,
        error: ConvertError,
    ) -> Boxed<'_, Failure<ConvertError>> {
        Box::pin(async move {
            match stage {
                Stage::Start => return Failure::Stop(error),
                Stage::Admit => {}
                Stage::Run => {
                    journal::note(
                        &self.client,
                        self.rec.id,
                        step,
                        "failed",
                        &error.to_string(),
                    )
                    .await;
                }
            }
            let unwinds = matches!(
                error,
                ConvertError::RowsOutside { .. } | ConvertError::BoundaryTooClose { .. }
            ) || (step == Step::Swapped
                && matches!(
                    error,
                    ConvertError::Sql { .. } | ConvertError::Refused { .. }
                ));
            if !unwinds {
                return Failure::Stop(error);
            }
            if stage == Stage::Run {
                tracing::warn!(error = %error, "conversion undone: resuming would fail the same way");
            }
            Failure::Unwind {
                reason: error.to_string(),
                error,
            }
        })
    }

    fn past_no_return(&self) -> ConvertError {
        ConvertError::PastSwap {
            table: self.rec.plan.name().to_string(),
        }
    }
}

/// The step function for a body in `steps`.
macro_rules! body {
    ($f:path) => {{
        fn run<'a>(c: &'a mut Conversion, at: At<'a>) -> Boxed<'a, Result<Done<()>, ConvertError>> {
            Box::pin($f(c, at))
        }
        run
    }};
}

/// The undo function for a body in `steps`.
macro_rules! undo {
    ($f:path) => {{
        fn undo<'a>(c: &'a mut Conversion, at: At<'a>) -> Boxed<'a, Result<(), ConvertError>> {
            Box::pin($f(c, at))
        }
        Undo::Run(undo)
    }};
}

/// The conversion, in [`Step`] order after `prepared` (the journal's first
/// record, written by `convert start` with the plan). A new step is a
/// variant of [`Step`], a row here and its body in `steps`.
pub const TABLE: &[Row<Conversion>] = &[
    Row {
        step: Step::UniqueIndexes,
        does: "build unique indexes that include the key (no lock on writers)",
        run: body!(steps::unique_indexes),
        undo: undo!(steps::drop_unique_indexes),
        meta: (),
    },
    Row {
        step: Step::CheckAdded,
        does: "add the CHECK NOT VALID (brief lock, lock_timeout, retried)",
        run: body!(steps::add_check),
        undo: undo!(steps::drop_check),
        meta: (),
    },
    Row {
        step: Step::CheckValidated,
        does: "validate it: a scan under SHARE UPDATE EXCLUSIVE, reads and writes go on",
        run: body!(steps::validate_check),
        // Dropping the CHECK (the row above) undoes its validation too.
        undo: Undo::None,
        meta: (),
    },
    Row {
        step: Step::Swapped,
        does: "the swap, one transaction: THE POINT OF NO RETURN",
        run: body!(steps::swap),
        undo: Undo::PointOfNoReturn,
        meta: (),
    },
    Row {
        step: Step::PartitionsMade,
        does: "a partition pass for the table: periods from the boundary on (premake)",
        run: body!(steps::make_partitions),
        undo: Undo::None,
        meta: (),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_step_after_prepared_in_order() {
        let steps: Vec<Step> = TABLE.iter().map(|r| r.step).collect();
        assert_eq!(steps, Step::ALL[1..]);
    }

    #[test]
    fn the_swap_is_the_point_of_no_return() {
        let ponr: Vec<Step> = TABLE
            .iter()
            .filter(|r| matches!(r.undo, Undo::PointOfNoReturn))
            .map(|r| r.step)
            .collect();
        assert_eq!(ponr, [Step::Swapped]);
    }
}
