//! The bodies of a conversion's steps and undos: one observe-then-act
//! function each, run by the saga core from the rows in `table.rs`.
//!
//! Crash safety: the CHECK, its validation and the swap commit in the same
//! transaction as their journal entry (they return `Done::Recorded`, having
//! passed their `-done` failpoint between the journal write and the commit),
//! so a kill -9 anywhere leaves either both or neither. The concurrent index
//! builds cannot run in a transaction; the runner journals them right after
//! (`Done::Record`), and on resume the step observes the index (valid: kept;
//! invalid: dropped and rebuilt).

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::ddl::{self, SequenceState};
use super::journal::{self, Record, Step};
use super::plan::{self, ConvertPlan, CHECK_NAME};
use super::sql;
use super::{inspect, ConvertError};
use crate::config::{Cluster, TableConfig};
use crate::partitions::blockers;
use crate::partitions::indexes::IndexError;
use crate::pg::{is_transient_lock_error, server_message, Backoff, QualifiedName, Retry};
use crate::saga::{At, Done};

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

/// The conversion of `table` stopped on a signal at a safe point.
pub(super) fn cancelled(table: &QualifiedName) -> ConvertError {
    ConvertError::Cancelled(table.to_string())
}

/// What a step returns: the runner journals it, or it journaled itself.
type StepResult = Result<Done<()>, ConvertError>;

pub(super) async fn unique_indexes(c: &mut Conversion, at: At<'_>) -> StepResult {
    let table = c.rec.plan.name();
    for b in &c.rec.plan.unique_builds {
        match super::index::build_unique_concurrently(
            &c.cfg, &c.client, &table, &b.index, &b.columns, at.cancel,
        )
        .await
        {
            Err(ConvertError::Index(IndexError::Cancelled)) => return Err(cancelled(&table)),
            r => r?,
        }
    }
    Ok(Done::Record(()))
}

async fn check_state(client: &Client, plan: &ConvertPlan) -> Result<Option<bool>, ConvertError> {
    let row = client
        .query_opt(sql::CHECK_VALIDATED, &[&plan.name().quoted(), &CHECK_NAME])
        .await
        .map_err(|e| ConvertError::query("look up the conversion CHECK", e))?;
    Ok(row.map(|r| r.get(0)))
}

pub(super) async fn add_check(c: &mut Conversion, at: At<'_>) -> StepResult {
    let already = check_state(&c.client, &c.rec.plan).await?.is_some();
    // NOT VALID: a brief ACCESS EXCLUSIVE, under lock_timeout, retried.
    let stmts = if already {
        vec![]
    } else {
        vec![ddl::add_check(&c.rec.plan)]
    };
    in_tx(c, at, Step::CheckAdded, &stmts).await
}

pub(super) async fn validate_check(c: &mut Conversion, at: At<'_>) -> StepResult {
    let stmts = match check_state(&c.client, &c.rec.plan).await? {
        Some(true) => vec![],
        Some(false) => vec![
            // SHARE UPDATE EXCLUSIVE blocks no reads or writes: waiting for it
            // queues no traffic, and a timeout would waste the scan.
            sql::NO_LOCK_TIMEOUT_IN_TX.to_string(),
            ddl::validate_check(&c.rec.plan),
        ],
        None => {
            return Err(ConvertError::Step {
                step: "check_validated",
                message: format!(
                "the CHECK {CHECK_NAME} is missing; run `pgsteward convert abort` and start again"
            ),
            })
        }
    };
    let started = Instant::now();
    let (key, boundary) = (c.rec.plan.key.clone(), c.rec.plan.boundary_text.clone());
    let tx = in_tx(c, at, Step::CheckValidated, &stmts);
    tokio::pin!(tx);
    // A progress line every 5 s until the transaction ends.
    let r = loop {
        tokio::select! {
            r = &mut tx => break r,
            _ = tokio::time::sleep(Duration::from_secs(5)) => tracing::info!(
                phase = "validating check",
                elapsed_s = started.elapsed().as_secs(),
                "conversion progress"
            ),
        }
    };
    match r {
        Err(ConvertError::Sql { message, .. }) if message.contains("(23514)") => {
            Err(ConvertError::RowsOutside { key, boundary })
        }
        r => r,
    }
}

/// Runs `stmts` and the journal entry for `step` in one transaction, retried
/// from the start on a lost lock race (each statement waits at most lock_timeout).
async fn in_tx(c: &mut Conversion, at: At<'_>, step: Step, stmts: &[String]) -> StepResult {
    let (table, id) = (&c.rec.plan.name(), c.rec.id);
    let client = &mut c.client;
    let mut retry = Retry::new(c.cfg.partitions.lock_retries, Backoff::LOCK, at.cancel);
    loop {
        let attempt = retry.begin().map_err(|_| cancelled(table))?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| ConvertError::query("begin a transaction", e))?;
        let mut failed = None;
        for s in stmts {
            if let Err(e) = tx.batch_execute(s).await {
                failed = Some((s.clone(), e));
                break;
            }
        }
        let Some((s, e)) = failed else {
            journal::advance(&tx, id, step, None).await?;
            let recorded = at.done()?;
            tx.commit()
                .await
                .map_err(|e| ConvertError::query("commit a conversion step", e))?;
            return Ok(Done::Recorded(recorded));
        };
        drop(tx);
        let transient = is_transient_lock_error(&e);
        if retry
            .again(transient, &server_message(&e))
            .await
            .map_err(|_| cancelled(table))?
        {
            continue;
        }
        let gave_up = if transient {
            let who = blockers::report(client, &[table.quoted()]).await;
            format!(" after {attempt} attempts; {who}; `pgsteward convert resume` retries")
        } else {
            String::new()
        };
        return Err(ConvertError::Sql {
            statement: s.lines().next().unwrap_or_default().to_string(),
            message: format!("{}{gave_up}", server_message(&e)),
        });
    }
}

/// The swap: the point of no return. Locks the views that read the table,
/// then the table (readers lock view before table, so this order cannot
/// deadlock with them), re-reads the catalog under the locks, refuses if
/// anything changed into something it cannot carry, and runs the whole swap
/// with its journal entry in one transaction.
pub(super) async fn swap(c: &mut Conversion, at: At<'_>) -> StepResult {
    let (plan, id) = (&c.rec.plan, c.rec.id);
    let client = &mut c.client;
    match check_state(client, plan).await? {
        Some(true) => {}
        _ => {
            return Err(ConvertError::Step {
                step: "swapped",
                message: format!("the CHECK {CHECK_NAME} is missing or not validated; run `pgsteward convert abort` and start again"),
            })
        }
    }
    let before = inspect::read(&*client, &plan.name(), &plan.key)
        .await?
        .ok_or_else(|| ConvertError::Step {
            step: "swapped",
            message: format!("{} no longer exists", plan.name()),
        })?;
    let lock = ddl::swap_lock(plan, &before);
    let attempts = c.cfg.partitions.lock_retries.max(1) * 3;
    let mut retry = Retry::new(attempts, Backoff::LOCK, at.cancel);
    loop {
        let attempt = retry.begin().map_err(|_| cancelled(&plan.name()))?;
        let e = match swap_once(client, plan, id, &lock, at).await {
            Ok(recorded) => return Ok(Done::Recorded(recorded)),
            Err(SwapError::Other(e)) => return Err(e),
            Err(SwapError::Lock(e)) => e,
        };
        if retry
            .again(true, &e)
            .await
            .map_err(|_| cancelled(&plan.name()))?
        {
            continue;
        }
        let mut relations: Vec<String> = before.views.iter().map(|v| v.quoted.clone()).collect();
        relations.push(plan.name().quoted());
        let who = blockers::report(client, &relations).await;
        return Err(ConvertError::Step {
            step: "swapped",
            message: format!(
                "{e} after {attempt} attempts; {who}; `pgsteward convert resume` retries"
            ),
        });
    }
}

enum SwapError {
    Lock(String),
    Other(ConvertError),
}

impl From<ConvertError> for SwapError {
    fn from(e: ConvertError) -> Self {
        SwapError::Other(e)
    }
}

async fn swap_once(
    client: &mut Client,
    plan: &ConvertPlan,
    id: i64,
    lock: &str,
    at: At<'_>,
) -> Result<crate::saga::Recorded, SwapError> {
    let started = Instant::now();
    let tx = client
        .transaction()
        .await
        .map_err(|e| ConvertError::query("begin the swap", e))?;
    let classify = |s: &str, e: tokio_postgres::Error| {
        if is_transient_lock_error(&e) {
            SwapError::Lock(server_message(&e))
        } else {
            SwapError::Other(ConvertError::Sql {
                statement: s.lines().next().unwrap_or_default().to_string(),
                message: server_message(&e),
            })
        }
    };
    tx.batch_execute(lock)
        .await
        .map_err(|e| classify(lock, e))?;
    let info = inspect::read(&tx, &plan.name(), &plan.key)
        .await?
        .ok_or_else(|| ConvertError::Step {
            step: "swapped",
            message: format!("{} no longer exists", plan.name()),
        })?;
    let refused = super::refuse::refusals(&info, &plan.key);
    if !refused.is_empty() {
        return Err(ConvertError::Refused {
            table: plan.name().to_string(),
            reasons: refused
                .iter()
                .map(|r| format!("{} ({})", r.reason, r.fix))
                .collect(),
        }
        .into());
    }
    let mut fresh = plan.clone();
    plan::describe(&mut fresh, &info);
    if fresh.unique_builds != plan.unique_builds {
        return Err(ConvertError::Step {
            step: "swapped",
            message: "the table's keys changed since the conversion started; run `pgsteward convert abort` and start again".into(),
        }
        .into());
    }
    let seqs = sequence_states(&tx, &info).await?;
    // One round trip for the whole swap: the lock is held for the server's
    // work only, not for ~40 network round trips.
    let batch = ddl::swap(plan, &info, &seqs).join(";\n");
    tx.batch_execute(&batch)
        .await
        .map_err(|e| classify("the swap", e))?;
    journal::advance(&tx, id, Step::Swapped, None).await?;
    let recorded = at.done().map_err(ConvertError::from)?;
    tx.commit()
        .await
        .map_err(|e| ConvertError::query("commit the swap", e))?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "swap committed"
    );
    Ok(recorded)
}

/// The state of every identity and owned sequence of the table, read under
/// the swap's ACCESS EXCLUSIVE lock (no insert can take a value meanwhile).
pub async fn sequence_states(
    client: &impl tokio_postgres::GenericClient,
    info: &inspect::TableInfo,
) -> Result<Vec<SequenceState>, ConvertError> {
    let mut out = Vec::new();
    for c in &info.columns {
        let Some(seq) = &c.sequence else { continue };
        let p = client
            .query_one(sql::SEQUENCE_PARAMETERS, &[seq])
            .await
            .map_err(|e| ConvertError::query("read a sequence", e))?;
        let v = client
            .query_one(&ddl::sequence_value_query(seq), &[])
            .await
            .map_err(|e| ConvertError::query("read a sequence", e))?;
        out.push(SequenceState {
            column: c.name.clone(),
            sequence: seq.clone(),
            type_name: p.get(0),
            start: p.get(1),
            increment: p.get(2),
            min: p.get(3),
            max: p.get(4),
            cache: p.get(5),
            cycle: p.get(6),
            last_value: v.get(0),
            is_called: v.get(1),
        });
    }
    Ok(out)
}

/// After the swap the table is an ordinary managed partitioned table: one
/// partition pass for it creates the periods from the boundary on (premake).
pub(super) async fn make_partitions(c: &mut Conversion, at: At<'_>) -> StepResult {
    let mut one = c.cfg.clone();
    one.partitions.tables = vec![c.tcfg.clone()];
    let report = crate::partitions::run_pass(&one, at.cancel).await;
    if at.cancel.is_cancelled() {
        return Err(cancelled(&c.rec.plan.name()));
    }
    let report = report.map_err(|e| ConvertError::Step {
        step: "partitions_made",
        message: e.to_string(),
    })?;
    if let Some(t) = report.tables.first() {
        if let Some(e) = &t.error {
            return Err(ConvertError::Step {
                step: "partitions_made",
                message: format!(
                    "{e}; `pgsteward convert resume` (or the next partition pass) retries"
                ),
            });
        }
    }
    Ok(Done::Record(()))
}

/// The undo of `check_added` (and of `check_validated`): the CHECK dropped,
/// with the journal reset to `prepared` in the same transaction, so from
/// here a resume starts over and observes what is left. Idempotent.
pub(super) async fn drop_check(c: &mut Conversion, at: At<'_>) -> Result<(), ConvertError> {
    let plan = &c.rec.plan;
    let drop_check = ddl::drop_check(&plan.name());
    let mut retry = Retry::new(c.cfg.partitions.lock_retries, Backoff::LOCK, at.cancel);
    loop {
        retry.begin().map_err(|_| cancelled(&plan.name()))?;
        let tx = c
            .client
            .transaction()
            .await
            .map_err(|e| ConvertError::query("begin a transaction", e))?;
        let e = match tx.batch_execute(&drop_check).await {
            Ok(()) => {
                journal::reset(&tx, c.rec.id).await?;
                tx.commit()
                    .await
                    .map_err(|e| ConvertError::query("commit the abort", e))?;
                break;
            }
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => break,
            Err(e) => e,
        };
        drop(tx);
        let transient = is_transient_lock_error(&e);
        if !retry
            .again(transient, &server_message(&e))
            .await
            .map_err(|_| cancelled(&plan.name()))?
        {
            return Err(ConvertError::Sql {
                statement: drop_check.clone(),
                message: server_message(&e),
            });
        }
    }
    c.rec.step = Step::Prepared;
    Ok(())
}

/// The undo of `unique_indexes`: every index the plan builds, dropped
/// concurrently if it exists (a build killed midway leaves an invalid one).
pub(super) async fn drop_unique_indexes(
    c: &mut Conversion,
    _at: At<'_>,
) -> Result<(), ConvertError> {
    for b in &c.rec.plan.unique_builds {
        let s = ddl::drop_index_concurrently(&c.rec.plan.schema, &b.index);
        c.client
            .batch_execute(&s)
            .await
            .map_err(|e| ConvertError::Sql {
                statement: s.clone(),
                message: server_message(&e),
            })?;
    }
    Ok(())
}
