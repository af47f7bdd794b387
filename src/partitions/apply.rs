//! Lock-safe execution of a plan.
//!
//! Invariants:
//! - One DDL statement per transaction, each under the session's `lock_timeout`:
//!   a statement that cannot get its lock gives up quickly, so application
//!   queries never queue behind maintenance for longer than that. Lost lock
//!   races (55P03, 40P01) are retried with backoff and jitter, at most
//!   `partitions.lock_retries` times, and every wait is cancellable.
//! - Statements that lock more than one relation lock them parent → DEFAULT →
//!   child (the order ATTACH itself uses), so two passes cannot deadlock.
//! - A new partition is created in one transaction and attached in another
//!   that also moves its rows out of DEFAULT (`attach.rs`): readers never
//!   miss a row, writers wait at most for that transaction.
//! - A table's DDL runs only while this session holds the table's advisory
//!   lock; the table is re-read and re-planned under it, so a pass that
//!   started from a stale catalog snapshot never repeats another's work.
//! - One table failing never stops the others: its error goes into its report.

use crate::partitions::sql;
use std::collections::VecDeque;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::catalog;
use super::ddl;
use super::error::{PartitionError, TableError};
use super::model::{Action, DetachHow, Range, TableState};
use super::plan;
use super::report::TableReport;
use super::session::{self, ADVISORY_NAMESPACE};
use crate::config::{Cluster, TableConfig};
use crate::heap::boxed;
use crate::pg::{server_message, Cancelled, QualifiedName};
use crate::schema::published::{Once as Published, Writer};

/// A table with something to do.
pub struct Work {
    pub index: usize,
    pub cfg: TableConfig,
    pub table: QualifiedName,
    pub oid: u32,
}

/// Why a step failed; its text becomes the table's error.
#[derive(Debug, thiserror::Error)]
pub(super) enum StepError {
    #[error("cancelled")]
    Cancelled,
    /// The server refused a statement (after retries, for lock races).
    #[error("{message}")]
    Sql { code: SqlState, message: String },
    /// A statement failed without a server error (the connection broke).
    #[error("{}", server_message(.0))]
    Client(tokio_postgres::Error),
    /// Reading the table's catalog again, under its lock, failed.
    #[error(transparent)]
    Reread(PartitionError),
    /// The table, read again, can no longer be maintained.
    #[error(transparent)]
    Table(TableError),
    #[error("table vanished from the catalog")]
    Vanished,
    #[error("cannot look up {child}: {}", server_message(.source))]
    LookUp {
        child: QualifiedName,
        source: tokio_postgres::Error,
    },
    #[error("{0} already exists and was not made by pgsteward; rename or drop it so the period can be created")]
    NotOurs(QualifiedName),
    #[error("{default} received {moved} rows of {child}'s range since the probe, more than partitions.default_move_batch = {batch}; nothing moved, the next pass retries")]
    RowsArrived {
        default: QualifiedName,
        child: QualifiedName,
        moved: u64,
        batch: u32,
    },
    /// A catalog read about `table` failed: `what` says what, ending in a
    /// preposition ("the triggers of").
    #[error("cannot read {what} {table}: {}", server_message(.source))]
    Read {
        what: &'static str,
        table: QualifiedName,
        source: tokio_postgres::Error,
    },
    /// A partition the pass will not make as things are (data would move
    /// that must not, or past the configured bounds); the table's other
    /// actions still run.
    #[error("{0}")]
    Refused(String),
    /// Hot standby queries hold what the step's replayed lock needs
    /// (`partitions.standby_lock_wait`).
    #[error("{0}")]
    StandbyBusy(super::standby::Busy),
    /// Partitions were refused, and maybe a later step failed too: all of it
    /// is the table's error.
    #[error("{}", refused_text(.refused, .then.as_deref()))]
    SomeRefused {
        refused: Vec<String>,
        then: Option<Box<StepError>>,
    },
}

fn refused_text(refused: &[String], then: Option<&StepError>) -> String {
    let mut all = refused.to_vec();
    all.extend(then.map(StepError::to_string));
    all.join("; ")
}

impl From<Cancelled> for StepError {
    fn from(_: Cancelled) -> Self {
        StepError::Cancelled
    }
}

impl StepError {
    pub(super) fn is(&self, code: &SqlState) -> bool {
        matches!(self, StepError::Sql { code: c, .. } if c == code)
    }
    /// A lost lock race (lock_timeout, deadlock): worth another attempt.
    pub(super) fn is_lock_race(&self) -> bool {
        matches!(self, StepError::Sql { code, .. } if crate::pg::retry::is_transient(code))
    }
    pub(super) fn text(&self) -> String {
        self.to_string()
    }
}

impl StepError {
    /// The statement (its first line) appended to a server error.
    pub(super) fn context(self, what: &str) -> StepError {
        match self {
            StepError::Sql { code, message } => StepError::Sql {
                code,
                message: format!("{message} [{what}]"),
            },
            other => other,
        }
    }
}

/// What a statement batch returned: rows affected by the last command, and
/// the first row of the last result (as text) if it had one.
pub(super) struct Done {
    pub(super) count: u64,
    pub(super) row: Vec<Option<String>>,
}

/// Attempts of a clean-up statement that must run even after cancellation.
pub(super) const UNCANCELLABLE_ATTEMPTS: u32 = 5;
/// Runs every table's work on up to `partitions.parallelism` sessions (the
/// catalog session is the first). Tables are independent, so sessions never
/// contend for the same table's locks. `published` answers, once per pass,
/// whether archive bookkeeping may be written (`schema::published`).
#[allow(clippy::too_many_arguments)]
pub async fn execute(
    cfg: &Cluster,
    first: Client,
    current_user: &str,
    work: Vec<Work>,
    now: DateTime<Utc>,
    gate: &tokio::sync::Mutex<crate::upgrade::DdlGate>,
    published: &Published,
    cancel: &CancellationToken,
) -> Vec<(usize, TableReport)> {
    let sessions = work.len().min(cfg.partitions.parallelism.max(1) as usize);
    let mut clients = vec![first];
    for _ in 1..sessions {
        match session::connect(cfg).await {
            Ok(c) => clients.push(c),
            Err(e) => {
                tracing::warn!(error = %e, sessions = clients.len(), "fewer maintenance sessions than configured");
                break;
            }
        }
    }
    let queue = Mutex::new(work.into_iter().collect::<VecDeque<_>>());
    let results = Mutex::new(Vec::new());
    let workers = clients.iter().map(|client| async {
        loop {
            let next = match queue.lock() {
                Ok(mut q) => q.pop_front(),
                Err(_) => None,
            };
            let Some(w) = next else { break };
            let mut report = TableReport::new(&w.table);
            if cancel.is_cancelled() {
                report.error = Some("cancelled before it was maintained".into());
            } else {
                let ex = Exec {
                    client,
                    cfg,
                    cancel,
                    current_user,
                    pid: 0,
                    gate,
                    published,
                };
                // On the heap (crate::heap): a table's maintenance (moves,
                // retirements, archive uploads) is a deep future; there it
                // does not bound the stack of whatever thread drives the pass.
                boxed(|| ex.table(&w, now, &mut report)).await;
            }
            if let Ok(mut r) = results.lock() {
                r.push((w.index, report));
            }
        }
    });
    futures::future::join_all(workers).await;
    results.into_inner().unwrap_or_default()
}

pub(super) struct Exec<'a> {
    pub(super) client: &'a Client,
    pub(super) cfg: &'a Cluster,
    pub(super) cancel: &'a CancellationToken,
    pub(super) current_user: &'a str,
    /// This session's backend pid, for naming who blocks it.
    pub(super) pid: i32,
    /// Asked before each table's DDL and each retirement step.
    pub(super) gate: &'a tokio::sync::Mutex<crate::upgrade::DdlGate>,
    /// Asked before the first write to `pgsteward.retirements`.
    pub(super) published: &'a Published,
}

impl Exec<'_> {
    async fn table(mut self, w: &Work, now: DateTime<Utc>, report: &mut TableReport) {
        // An upgrade may have started its cutover since the pass began.
        match super::gate_of(self.gate).await {
            Ok(None) => {}
            Ok(Some(wait)) => {
                tracing::info!(table = %w.table, reason = %wait, "table skipped");
                report.skipped = Some(wait);
                return;
            }
            Err(e) => {
                report.error = Some(format!("cannot run partition DDL: {e}"));
                return;
            }
        }
        // Same bit pattern as the server's oid::int4: the lock key is the oid.
        let key = w.oid as i32;
        let locked = self
            .client
            .query_one(sql::TRY_TABLE_LOCK_AND_PID, &[&ADVISORY_NAMESPACE, &key])
            .await;
        match locked {
            Ok(row) if row.get::<_, bool>(0) => self.pid = row.get(1),
            Ok(_) => {
                tracing::info!(table = %w.table, "another pass is maintaining the table; skipped");
                report.skipped = Some("another pass holds this table's advisory lock".into());
                return;
            }
            Err(e) => {
                report.error = Some(format!(
                    "cannot take the table's advisory lock: {}",
                    server_message(&e)
                ));
                return;
            }
        }
        match self.maintain(w, now, report).await {
            Ok(()) => {}
            Err(StepError::Cancelled) => report.error = Some("cancelled".into()),
            Err(e) => {
                let msg = e.text();
                tracing::warn!(table = %w.table, error = %msg, "table not brought up to date; retried next pass");
                report.error = Some(msg);
            }
        }
        if let Err(e) = self
            .client
            .query_one(sql::UNLOCK_TABLE, &[&ADVISORY_NAMESPACE, &key])
            .await
        {
            // The lock goes with the session; a broken session releases it.
            tracing::warn!(table = %w.table, error = %server_message(&e), "advisory unlock failed");
        }
    }

    async fn maintain(
        &self,
        w: &Work,
        now: DateTime<Utc>,
        report: &mut TableReport,
    ) -> Result<(), StepError> {
        // Unfinished archive retirements first: they began in earlier passes
        // (their partitions are detached, so no plan names them again).
        let mut archives = super::retire::Stores::default();
        // Each action's future on the heap (crate::heap): maintain awaits many,
        // and a debug build gives each its own slot in this frame.
        let resumed = boxed(|| super::retire::resume(self, &w.table, &mut archives, report)).await;
        let fresh = catalog::read(self.client, std::slice::from_ref(&w.table))
            .await
            .map_err(StepError::Reread)?;
        let state = match fresh.tables.into_iter().next() {
            Some((_, Ok(s))) => s,
            Some((_, Err(e))) => return Err(StepError::Table(e)),
            None => return Err(StepError::Vanished),
        };
        let p = catalog::fit(fresh.server_version_num, plan::plan(&w.cfg, &state, now));
        report.notes = p.notes.iter().map(plan::note_text).collect();
        report.access_problems = p.problems.len() as u32;
        report.default_rows = state.default.as_ref().map_or(0, |d| d.rows_estimate);
        let mut created: Vec<Range> = Vec::new();
        let mut default_checks: Vec<String> = Vec::new();
        let mut details = None;
        // What the plan will not do by itself, and unfinished retirements
        // that failed: the table's error, after the rest ran.
        let mut refused: Vec<String> = resumed;
        refused.extend(p.problems.iter().cloned());
        // Archive bookkeeping goes to pgsteward.retirements: refused, before
        // the first of it, while a publication publishes that table to
        // subscribers not declared to have it. The table's other actions run.
        let archive_refused = if p.actions.iter().any(is_archive) {
            self.published
                .check(self.client, Writer::Archive)
                .await
                .err()
                .map(|e| e.to_string())
        } else {
            None
        };
        if let Some(msg) = &archive_refused {
            if !refused.contains(msg) {
                refused.push(msg.clone());
            }
        }
        let mut result = Ok(());
        let mut standbys = None;
        for action in &p.actions {
            if archive_refused.is_some() && is_archive(action) {
                report.archive.held_back += 1;
                continue;
            }
            if let Err(busy) =
                boxed(|| super::standby::gate(self.cfg, &mut standbys, action, &state, self.cancel))
                    .await
            {
                result = Err(StepError::StandbyBusy(busy));
                break;
            }
            let step = match action {
                Action::Create {
                    partition,
                    range,
                    reason,
                    ..
                } => {
                    let r = match &details {
                        Some(d) => {
                            boxed(|| self.create(&state, d, &w.cfg, partition, *range, report))
                                .await
                        }
                        None => match self.parent_details(&state).await {
                            Ok(d) => {
                                let r = boxed(|| {
                                    self.create(&state, &d, &w.cfg, partition, *range, report)
                                })
                                .await;
                                details = Some(d);
                                r
                            }
                            Err(e) => Err(e),
                        },
                    };
                    if r.is_ok() {
                        tracing::info!(partition = %partition, reason = ?reason, "partition created");
                        report.created += 1;
                        created.push(*range);
                    }
                    r
                }
                Action::Retire {
                    partition,
                    how,
                    archive: true,
                    ..
                } => {
                    boxed(|| {
                        super::retire::start(self, &state, partition, *how, &mut archives, report)
                    })
                    .await
                }
                Action::Retire {
                    partition,
                    how,
                    drop,
                    ..
                } => {
                    let r = boxed(|| self.retire(&state, partition, *how, *drop, report)).await;
                    if r.is_ok() {
                        tracing::info!(partition = %partition, dropped = drop, "partition retired");
                        report.retired += 1;
                    }
                    r
                }
                Action::DropDefaultCheck { constraint } => {
                    default_checks.push(constraint.clone());
                    Ok(())
                }
                Action::RepairAccess { partition, repairs } => {
                    // One transaction: others see the old access or the new.
                    let stmts = super::access::sql(partition, repairs).join(";\n");
                    let r = boxed(|| self.run(&stmts, report)).await.map(|_| ());
                    if r.is_ok() {
                        let what: Vec<String> =
                            repairs.iter().map(super::access::describe).collect();
                        tracing::warn!(partition = %partition, repairs = %what.join("; "), "partition access repaired to follow the parent");
                        report.access_repaired += 1;
                        report
                            .notes
                            .push(format!("{partition}: access repaired: {}", what.join("; ")));
                    }
                    r
                }
            };
            match step {
                Ok(()) => {}
                Err(StepError::Refused(msg)) => {
                    tracing::warn!(table = %w.table, error = %msg, "partition refused");
                    refused.push(msg);
                }
                Err(e) => {
                    // Later actions of this table would wait on the same locks.
                    result = Err(e);
                    break;
                }
            }
        }
        // Exclusion CHECKs an earlier version left on DEFAULT, in one statement:
        // a failure is harmless for attached ranges and the next pass retries.
        if let (Some(d), false) = (&state.default, default_checks.is_empty()) {
            let sql = ddl::sql_drop_constraints(&d.name, &default_checks);
            if let Err(e) = self.run(&sql, report).await {
                tracing::warn!(partition = %d.name, error = %e.text(), "default exclusion checks not dropped; next pass drops them");
            }
        }
        super::retire::tally(self, &w.table, report).await;
        let retired: Vec<&QualifiedName> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Retire { partition, .. } => Some(partition),
                _ => None,
            })
            .collect();
        let mut after = state.clone();
        if report.retired > 0 {
            after.partitions.retain(|e| !retired.contains(&&e.name));
        }
        let cov = plan::coverage_of(&w.cfg, &after, &created, now);
        report.future_partitions = cov.periods_ahead;
        report.current_covered = cov.current_covered;
        report.holes = cov.holes;
        report.default_rows = report.default_rows.saturating_sub(report.rows_moved);
        if let (Some(d), true) = (&state.default, report.rows_moved > 0) {
            // The planner's estimate lags a move by an ANALYZE: say what is
            // there, counting at most DEFAULT_COUNT_CAP rows.
            let count = ddl::sql_count_defaults(&[(0, d.name.clone())]);
            match self.client.query_one(&count, &[]).await {
                Ok(row) => {
                    let n = row.get::<_, i64>(1).max(0) as u64;
                    report.default_rows = if n >= ddl::DEFAULT_COUNT_CAP as u64 {
                        n.max(report.default_rows)
                    } else {
                        n
                    };
                }
                Err(e) => tracing::warn!(
                    default = %d.name,
                    error = %server_message(&e),
                    "default partition not counted; reporting the estimate"
                ),
            }
        }
        if !refused.is_empty() {
            return Err(StepError::SomeRefused {
                refused,
                then: result.err().map(Box::new),
            });
        }
        result
    }

    async fn retire(
        &self,
        state: &TableState,
        partition: &QualifiedName,
        how: DetachHow,
        drop: bool,
        report: &mut TableReport,
    ) -> Result<(), StepError> {
        let parent = &state.table;
        match self
            .run(&ddl::sql_detach(parent, partition, how), report)
            .await
        {
            Ok(_) => {}
            Err(e) if how == DetachHow::Concurrently && !matches!(e, StepError::Cancelled) => {
                // CONCURRENTLY commits its first half before waiting for older
                // snapshots; interrupted there, the detach is pending and only
                // FINALIZE completes it.
                let pending = self
                    .client
                    .query_opt(sql::DETACH_PENDING, &[&partition.quoted()])
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|r| r.get::<_, bool>(0));
                if !pending {
                    return Err(e);
                }
                self.run(
                    &ddl::sql_detach(parent, partition, DetachHow::Finalize),
                    report,
                )
                .await?;
            }
            Err(e) => return Err(e),
        }
        if drop {
            self.run(&ddl::sql_drop_table(partition), report).await?;
        }
        Ok(())
    }
}

fn is_archive(action: &Action) -> bool {
    matches!(action, Action::Retire { archive: true, .. })
}
