//! Driving a conversion: one observe-then-act function per step, each ending
//! with the journal entry that says it is done.
//!
//! Crash safety: the CHECK, its validation and the swap commit in the same
//! transaction as their journal entry, so a kill -9 anywhere leaves either
//! both or neither. The concurrent index builds cannot run in a transaction;
//! they are journaled right after, and on resume the step observes the index
//! (valid: kept; invalid: dropped and rebuilt). Failpoints
//! `convert-<step>-start` (before the step acts) and `convert-<step>-done`
//! (after it acted, before its journal entry commits) sit at every boundary.

use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::ddl::{self, SequenceState};
use super::journal::{self, Record, Step};
use super::plan::{self, ConvertPlan, CHECK_NAME, SWAP_GUARD};
use super::sql;
use super::{inspect, ConvertError};
use crate::config::{Config, TableConfig};
use crate::failpoint;
use crate::partitions::blockers;
use crate::partitions::indexes::IndexError;
use crate::pg::{is_transient_lock_error, server_message, Backoff, QualifiedName, Retry};

/// Runs the remaining steps of `rec` to the end (`done`). `cancel` stops it
/// at the next safe point: between steps, before a transaction's attempt,
/// in a wait between attempts, or in an index build (its leftover dropped).
/// The undo this runs itself (the CHECK would refuse writers at the boundary)
/// is a clean-up: not cancelled, bounded by `lock_retries`.
pub async fn drive(
    cfg: &Config,
    tcfg: &TableConfig,
    client: &mut Client,
    rec: &mut Record,
    cancel: &CancellationToken,
) -> Result<(), ConvertError> {
    while let Some(step) = rec.step.next() {
        if cancel.is_cancelled() {
            return Err(cancelled(&rec.plan.name()));
        }
        if step <= Step::Swapped {
            let lead = rec.plan.lead(Utc::now());
            if lead.num_seconds() < SWAP_GUARD.as_secs() as i64 {
                tracing::warn!(boundary = %rec.plan.boundary_text, "boundary too close for the swap; undoing the conversion");
                undo(cfg, client, rec, &CancellationToken::new()).await?;
                return Err(ConvertError::BoundaryTooClose {
                    boundary: rec.plan.boundary_text.clone(),
                });
            }
        }
        point(&format!("convert-{}-start", step.as_str()))?;
        tracing::info!(step = step.as_str(), "conversion step");
        let started = Instant::now();
        let res = match step {
            Step::Prepared => Ok(()),
            Step::UniqueIndexes => unique_indexes(cfg, client, rec, cancel).await,
            Step::CheckAdded => add_check(cfg, client, rec, cancel).await,
            Step::CheckValidated => validate_check(cfg, client, rec, cancel).await,
            Step::Swapped => swap(cfg, client, rec, cancel).await,
            Step::PartitionsMade => make_partitions(cfg, tcfg, client, rec, cancel).await,
        };
        if let Err(e) = res {
            journal::note(&*client, rec.id, step, "failed", &e.to_string()).await;
            // The CHECK would keep refusing rows at the boundary from writers:
            // undo now when resuming cannot help (rows outside the first
            // partition, or a swap the server refused, which rolled back
            // whole: a missing privilege, something changed). A swap that
            // lost its lock race stays, for `resume`.
            let permanent = matches!(e, ConvertError::RowsOutside { .. })
                || (step == Step::Swapped
                    && matches!(e, ConvertError::Sql { .. } | ConvertError::Refused { .. }));
            if permanent {
                tracing::warn!(error = %e, "conversion undone: resuming would fail the same way");
                undo(cfg, client, rec, &CancellationToken::new()).await?;
            }
            return Err(e);
        }
        tracing::info!(
            step = step.as_str(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "conversion step done"
        );
        rec.step = step;
    }
    journal::finish(&*client, rec.id, "done").await?;
    rec.state = "done".into();
    Ok(())
}

fn point(name: &str) -> Result<(), ConvertError> {
    failpoint::hit(name).map_err(ConvertError::Failpoint)
}

/// The conversion of `table` stopped on a signal at a safe point.
fn cancelled(table: &QualifiedName) -> ConvertError {
    ConvertError::Cancelled(table.to_string())
}

async fn unique_indexes(
    cfg: &Config,
    client: &Client,
    rec: &Record,
    cancel: &CancellationToken,
) -> Result<(), ConvertError> {
    let table = rec.plan.name();
    for b in &rec.plan.unique_builds {
        match super::index::build_unique_concurrently(
            cfg, client, &table, &b.index, &b.columns, cancel,
        )
        .await
        {
            Err(ConvertError::Index(IndexError::Cancelled)) => return Err(cancelled(&table)),
            r => r?,
        }
    }
    point("convert-unique_indexes-done")?;
    journal::advance(client, rec.id, Step::UniqueIndexes, None).await
}

async fn check_state(client: &Client, plan: &ConvertPlan) -> Result<Option<bool>, ConvertError> {
    let row = client
        .query_opt(sql::CHECK_VALIDATED, &[&plan.name().quoted(), &CHECK_NAME])
        .await
        .map_err(|e| ConvertError::query("look up the conversion CHECK", e))?;
    Ok(row.map(|r| r.get(0)))
}

async fn add_check(
    cfg: &Config,
    client: &mut Client,
    rec: &Record,
    cancel: &CancellationToken,
) -> Result<(), ConvertError> {
    let already = check_state(client, &rec.plan).await?.is_some();
    // NOT VALID: a brief ACCESS EXCLUSIVE, under lock_timeout, retried.
    let stmts = if already {
        vec![]
    } else {
        vec![ddl::add_check(&rec.plan)]
    };
    in_tx(
        cfg,
        client,
        &rec.plan.name(),
        rec.id,
        Step::CheckAdded,
        &stmts,
        cancel,
    )
    .await
}

async fn validate_check(
    cfg: &Config,
    client: &mut Client,
    rec: &Record,
    cancel: &CancellationToken,
) -> Result<(), ConvertError> {
    let stmts = match check_state(client, &rec.plan).await? {
        Some(true) => vec![],
        Some(false) => vec![
            // SHARE UPDATE EXCLUSIVE blocks no reads or writes: waiting for it
            // queues no traffic, and a timeout would waste the scan.
            sql::NO_LOCK_TIMEOUT_IN_TX.to_string(),
            ddl::validate_check(&rec.plan),
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
    let ticker = async {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            tracing::info!(
                phase = "validating check",
                elapsed_s = started.elapsed().as_secs(),
                "conversion progress"
            );
        }
    };
    let table = rec.plan.name();
    let r = tokio::select! {
        r = in_tx(cfg, client, &table, rec.id, Step::CheckValidated, &stmts, cancel) => r,
        _ = ticker => Ok(()),
    };
    match r {
        Err(ConvertError::Sql { message, .. }) if message.contains("(23514)") => {
            Err(ConvertError::RowsOutside {
                key: rec.plan.key.clone(),
                boundary: rec.plan.boundary_text.clone(),
            })
        }
        r => r,
    }
}

/// Runs `stmts` and the journal entry for `step` in one transaction, retried
/// from the start on a lost lock race (each statement waits at most lock_timeout).
async fn in_tx(
    cfg: &Config,
    client: &mut Client,
    table: &QualifiedName,
    id: i64,
    step: Step,
    stmts: &[String],
    cancel: &CancellationToken,
) -> Result<(), ConvertError> {
    let mut retry = Retry::new(cfg.partitions.lock_retries, Backoff::LOCK, cancel);
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
            point(&format!("convert-{}-done", step.as_str()))?;
            return tx
                .commit()
                .await
                .map_err(|e| ConvertError::query("commit a conversion step", e));
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
async fn swap(
    cfg: &Config,
    client: &mut Client,
    rec: &Record,
    cancel: &CancellationToken,
) -> Result<(), ConvertError> {
    let plan = &rec.plan;
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
    let attempts = cfg.partitions.lock_retries.max(1) * 3;
    let mut retry = Retry::new(attempts, Backoff::LOCK, cancel);
    loop {
        let attempt = retry.begin().map_err(|_| cancelled(&plan.name()))?;
        let e = match swap_once(client, rec, &lock).await {
            Ok(()) => return Ok(()),
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

async fn swap_once(client: &mut Client, rec: &Record, lock: &str) -> Result<(), SwapError> {
    let plan = &rec.plan;
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
    journal::advance(&tx, rec.id, Step::Swapped, None).await?;
    point("convert-swapped-done")?;
    tx.commit()
        .await
        .map_err(|e| ConvertError::query("commit the swap", e))?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "swap committed"
    );
    Ok(())
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
async fn make_partitions(
    cfg: &Config,
    tcfg: &TableConfig,
    client: &Client,
    rec: &Record,
    cancel: &CancellationToken,
) -> Result<(), ConvertError> {
    let mut one = cfg.clone();
    one.partitions.tables = vec![tcfg.clone()];
    let report = crate::partitions::run_pass(&one, cancel).await;
    if cancel.is_cancelled() {
        return Err(cancelled(&rec.plan.name()));
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
    point("convert-partitions_made-done")?;
    journal::advance(client, rec.id, Step::PartitionsMade, None).await
}

/// Removes everything a conversion built before its swap and ends it as
/// `aborted`. Each part is idempotent, so an interrupted abort is run again.
pub async fn undo(
    cfg: &Config,
    client: &mut Client,
    rec: &mut Record,
    cancel: &CancellationToken,
) -> Result<(), ConvertError> {
    if rec.step >= Step::Swapped {
        return Err(ConvertError::PastSwap {
            table: rec.plan.name().to_string(),
        });
    }
    let plan = rec.plan.clone();
    // The CHECK first, with the step reset in the same transaction: from here
    // a resume starts over and observes what is left.
    let drop_check = ddl::drop_check(&plan.name());
    let mut retry = Retry::new(cfg.partitions.lock_retries, Backoff::LOCK, cancel);
    loop {
        retry.begin().map_err(|_| cancelled(&plan.name()))?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| ConvertError::query("begin a transaction", e))?;
        let e = match tx.batch_execute(&drop_check).await {
            Ok(()) => {
                journal::reset(&tx, rec.id).await?;
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
    rec.step = Step::Prepared;
    point("convert-abort-check_dropped")?;
    for b in &plan.unique_builds {
        let s = ddl::drop_index_concurrently(&plan.schema, &b.index);
        client
            .batch_execute(&s)
            .await
            .map_err(|e| ConvertError::Sql {
                statement: s.clone(),
                message: server_message(&e),
            })?;
    }
    journal::finish(&*client, rec.id, "aborted").await?;
    rec.state = "aborted".into();
    Ok(())
}
