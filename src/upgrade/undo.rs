//! The undo bodies of the saga table (table.rs): what a roll back runs for
//! a step it found started before promote. Each is idempotent and is
//! journaled before it runs (runner.rs).

use super::error::UndoError;
use super::saga::Saga;

impl Saga {
    /// fence_old_primary: lift the fence and prove it. A failure is
    /// remembered so that pause_writes' undo does not wait for a hung old
    /// primary a second time.
    pub(crate) async fn undo_fence(&mut self) -> Result<(), UndoError> {
        match self.unfence().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let error = e.to_string();
                self.fence.unfence_failed(error.clone());
                Err(UndoError(error))
            }
        }
    }

    /// pause_writes: writes first (RESUME), then the fence staged before
    /// PAUSE comes out of the file. Both are tried whatever the other did:
    /// before promote the old primary is the only writable node, so
    /// resuming writes on it is safe even when it cannot be unfenced.
    pub(crate) async fn undo_pause(&mut self) -> Result<(), UndoError> {
        let resumed = self.poolers.resume().await.map_err(|e| e.to_string());
        let unfenced = match self.fence.unfence_failure() {
            Some(e) => Err(format!("not tried again ({e})")),
            None => self.unfence().await.map_err(|e| e.to_string()),
        };
        match (resumed, unfenced) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(r), Ok(())) => Err(UndoError(r)),
            (Ok(()), Err(u)) => Err(UndoError(format!(
                "the fence staged on the old primary: {u}"
            ))),
            (Err(r), Err(u)) => Err(UndoError(format!(
                "{r}; the fence staged on the old primary: {u}"
            ))),
        }
    }
}
