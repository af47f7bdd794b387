//! Retirement with `retention_mode = "archive"`: a partition past retention
//! is detached, its rows copied to object storage, the copy verified, and
//! only then dropped. Every state is recorded in `pgsteward.retirements` on
//! the primary, in the transaction of the DDL that makes it true, and every
//! pass resumes unfinished retirements from their recorded state.
//!
//! Crash safety (kill -9 anywhere):
//! - before the `detaching` row commits: nothing happened; the next pass plans again.
//! - `detaching`: the partition may be attached, half-detached or detached;
//!   `state::next` reads which and finishes the detach.
//! - `detached`: the write barrier (a trigger refusing writes) committed with
//!   the state. A multipart upload in flight is recorded by its id and
//!   aborted on resume; the object key is a function of (table, bounds), so a
//!   second attempt replaces the first's object, never adds one.
//! - `uploaded`/`verified`: the drop checks the row count under ACCESS
//!   EXCLUSIVE in the transaction that drops and records `dropped`.
//!
//! A partition is never dropped without a verified archive (`state::next`
//! only plans `Drop` from `verified`), and an upgrade's cutover holds the
//! detach and the drop like any other partition DDL.

pub mod commands;
pub mod record;
mod sql;
pub mod state;
mod steps;

use super::exec::{Exec, StepError};
use super::model::{DetachHow, TableState};
use super::report::TableReport;
use crate::archive::Store;
use crate::heap::boxed;
use crate::pg::QualifiedName;
use record::Retirement;
use state::{Facts, Next};

/// How a retirement went this pass.
enum Went {
    Done,
    /// Held by the DDL gate (an upgrade's cutover), resumed next pass.
    Held(String),
}

/// The pass's store, made on first use.
#[derive(Default)]
pub(super) struct Stores(Option<Store>);

impl Stores {
    async fn get(&mut self, ex: &Exec<'_>) -> Result<&Store, StepError> {
        if self.0.is_none() {
            let Some(cfg) = &ex.cfg.archive else {
                return Err(StepError::Refused(
                    "a retirement to object storage is in flight but the configuration has no [archive] section; restore it to finish the retirement".into(),
                ));
            };
            self.0 = Some(Store::new(cfg).await);
        }
        match &self.0 {
            Some(s) => Ok(s),
            None => Err(StepError::Vanished),
        }
    }
}

/// The retention action for a partition of an `archive` table: record the
/// intent, then drive it as far as it goes this pass.
pub(super) async fn start(
    ex: &Exec<'_>,
    table: &TableState,
    partition: &QualifiedName,
    how: DetachHow,
    stores: &mut Stores,
    report: &mut TableReport,
) -> Result<(), StepError> {
    // Also asked by the caller; answered once per pass.
    ex.published
        .check(ex.client, crate::schema::published::Writer::Archive)
        .await
        .map_err(|e| StepError::Refused(e.to_string()))?;
    record::migrate(ex.client, &ex.cfg.database.primary.to_string())
        .await
        .map_err(refused)?;
    if let Some(r) = record::open_of_partition(ex.client, partition)
        .await
        .map_err(refused)?
    {
        // Resumed by `resume` already this pass, or by another earlier.
        return finish(ex, r, Some(how), stores, report).await;
    }
    let Some(range) = table
        .partitions
        .iter()
        .find(|p| &p.name == partition)
        .and_then(|p| p.range)
    else {
        return Err(StepError::Refused(format!(
            "{partition}: its bounds cannot be read; not archived"
        )));
    };
    if let Some(limit) = ex.cfg.archive.as_ref().map(|a| a.max_partition_size) {
        let size = steps::total_size(ex, partition).await?;
        if size > limit.0 {
            report.archive.held_back += 1;
            return Err(StepError::Refused(format!(
                "{partition} is {} on disk, more than archive.max_partition_size = {limit}; left attached: raise the limit or archive it by hand",
                crate::config::ByteSize(size)
            )));
        }
    }
    if let Some(why) = steps::gate(ex).await? {
        report.archive.held_back += 1;
        report
            .notes
            .push(format!("{partition}: retirement held: {why}"));
        return Ok(());
    }
    let r = steps::insert_intent(ex, table, partition, range).await?;
    failpoint("retire-detaching")?;
    finish(ex, r, Some(how), stores, report).await
}

/// Every unfinished retirement of `table`, driven as far as it goes. Errors
/// are the table's (one per retirement); the pass's other work goes on.
pub(super) async fn resume(
    ex: &Exec<'_>,
    table: &QualifiedName,
    stores: &mut Stores,
    report: &mut TableReport,
) -> Vec<String> {
    let open = match record::open_of(ex.client, table).await {
        Ok(o) => o,
        Err(e) => return vec![e.to_string()],
    };
    if open.is_empty() {
        return Vec::new();
    }
    // Every step of a retirement (its error included) writes its row.
    if let Err(refused) = ex
        .published
        .check(ex.client, crate::schema::published::Writer::Archive)
        .await
    {
        return vec![refused.to_string()];
    }
    let mut errors = Vec::new();
    for r in open {
        let partition = r.partition.clone();
        if let Err(e) = finish(ex, r, None, stores, report).await {
            if matches!(e, StepError::Cancelled) {
                errors.push("cancelled".into());
                break;
            }
            errors.push(format!("{partition}: {}", e.text()));
        }
    }
    errors
}

/// After the pass's work on `table`: what is still held back, and for how long.
pub(super) async fn tally(ex: &Exec<'_>, table: &QualifiedName, report: &mut TableReport) {
    if let Ok(open) = record::open_of(ex.client, table).await {
        report.archive.held_back += open.len() as u32;
        report.archive.oldest_idle_s = open.iter().map(|r| r.idle_s).reduce(f64::max);
    }
}

/// Drives one retirement through its states; records a failure on its row.
async fn finish(
    ex: &Exec<'_>,
    mut r: Retirement,
    how: Option<DetachHow>,
    stores: &mut Stores,
    report: &mut TableReport,
) -> Result<(), StepError> {
    let result = boxed(|| drive(ex, &mut r, how, stores, report)).await;
    match &result {
        Ok(Went::Done) => {}
        Ok(Went::Held(why)) => report.notes.push(format!(
            "{}: retirement held at {}: {why}",
            r.partition,
            r.state.as_str()
        )),
        Err(StepError::Cancelled) => {}
        Err(e) => {
            report.archive.failures += 1;
            steps::record_error(ex, r.id, &e.text()).await;
        }
    }
    result.map(|_| ())
}

async fn drive(
    ex: &Exec<'_>,
    r: &mut Retirement,
    how: Option<DetachHow>,
    stores: &mut Stores,
    report: &mut TableReport,
) -> Result<Went, StepError> {
    // At most one pass through the states (a redo of the upload adds one).
    for _ in 0..8 {
        if ex.cancel.is_cancelled() {
            return Err(StepError::Cancelled);
        }
        let facts: Facts = steps::facts(ex, &r.partition).await?;
        let next = state::next(r.state, facts);
        tracing::debug!(partition = %r.partition, state = r.state.as_str(), ?next, "retirement step");
        match next {
            Next::Done => return Ok(Went::Done),
            Next::Stuck(why) => return Err(StepError::Refused(why)),
            Next::Detach | Next::Finalize | Next::Drop => {
                if let Some(why) = steps::gate(ex).await? {
                    return Ok(Went::Held(why));
                }
                // Every step on the heap (crate::heap): drive's future stays
                // small for start, resume and the table that await it.
                match next {
                    Next::Detach => boxed(|| steps::detach(ex, r, how, report)).await?,
                    Next::Finalize => boxed(|| steps::finalize(ex, r, report)).await?,
                    _ => {
                        boxed(|| steps::drop(ex, r, report)).await?;
                        report.retired += 1;
                        report.archive.archived += 1;
                        tracing::info!(partition = %r.partition, key = %r.key, "partition archived, verified and dropped");
                    }
                }
            }
            Next::RecordDetached => boxed(|| steps::record_detached(ex, r, report)).await?,
            Next::Upload => {
                let store = boxed(|| stores.get(ex)).await?;
                let up = boxed(|| steps::upload(ex, store, r)).await?;
                report.archive.bytes += up.bytes;
            }
            Next::Verify => {
                let store = boxed(|| stores.get(ex)).await?;
                boxed(|| steps::verify(ex, store, r)).await?;
            }
            Next::RecordDropped => boxed(|| steps::record_dropped_outside(ex, r)).await?,
        }
        // After each recorded state: `retire-<state>` (kill -9 tests).
        failpoint(&format!("retire-{}", r.state.as_str()))?;
    }
    Ok(Went::Held(format!(
        "still {} after every step ran; next pass",
        r.state.as_str()
    )))
}

pub(super) fn failpoint(name: &str) -> Result<(), StepError> {
    crate::failpoint::hit(name).map_err(|e| StepError::Refused(e.to_string()))
}

fn refused(e: record::RecordError) -> StepError {
    StepError::Refused(e.to_string())
}
