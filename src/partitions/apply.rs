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
//! - A table's DDL runs only while this session holds the table's advisory
//!   lock; the table is re-read and re-planned under it, so a pass that
//!   started from a stale catalog snapshot never repeats another's work.
//! - One table failing never stops the others: its error goes into its report.

use std::collections::VecDeque;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};
use tokio_util::sync::CancellationToken;

use super::plan::{self, Action, DetachHow, Range, TableState};
use super::{catalog, TableReport, ADVISORY_NAMESPACE};
use crate::config::{Config, TableConfig};
use crate::pg::{is_transient_lock_error, server_message, QualifiedName};

const TRY_LOCK_SQL: &str = "SELECT pg_try_advisory_lock($1, $2)";
const UNLOCK_SQL: &str = "SELECT pg_advisory_unlock($1, $2)";
/// Whether a name is taken, and if so whether it is a standalone table that an
/// interrupted pass of ours created (it carries our bounds CHECK).
const RELATION_SQL: &str = "SELECT c.relkind::text, c.relispartition, \
       EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.conname = $2) \
     FROM pg_class c WHERE c.oid = to_regclass($1)";
const DETACH_PENDING_SQL: &str =
    "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = to_regclass($1)";
/// Columns the move copies: every stored, non-dropped column of the parent.
const COLUMNS_SQL: &str = "SELECT attname::text FROM pg_attribute \
     WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped AND attgenerated = '' \
     ORDER BY attnum";

/// A table with something to do.
pub struct Work {
    pub index: usize,
    pub cfg: TableConfig,
    pub table: QualifiedName,
    pub oid: u32,
}

/// Why a step failed; becomes the table's error text.
#[derive(Debug)]
enum StepError {
    Cancelled,
    Failed(String),
}

impl From<String> for StepError {
    fn from(s: String) -> Self {
        StepError::Failed(s)
    }
}

/// Runs every table's work on up to `partitions.parallelism` sessions (the
/// catalog session is the first). Tables are independent, so sessions never
/// contend for the same table's locks.
pub async fn execute(
    cfg: &Config,
    first: Client,
    current_user: &str,
    work: Vec<Work>,
    now: DateTime<Utc>,
    cancel: &CancellationToken,
) -> Vec<(usize, TableReport)> {
    let sessions = work.len().min(cfg.partitions.parallelism.max(1) as usize);
    let mut clients = vec![first];
    for _ in 1..sessions {
        match super::connect(cfg).await {
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
                };
                ex.table(&w, now, &mut report).await;
            }
            if let Ok(mut r) = results.lock() {
                r.push((w.index, report));
            }
        }
    });
    futures::future::join_all(workers).await;
    results.into_inner().unwrap_or_default()
}

struct Exec<'a> {
    client: &'a Client,
    cfg: &'a Config,
    cancel: &'a CancellationToken,
    current_user: &'a str,
}

impl Exec<'_> {
    async fn table(&self, w: &Work, now: DateTime<Utc>, report: &mut TableReport) {
        // Same bit pattern as the server's oid::int4: the lock key is the oid.
        let key = w.oid as i32;
        let locked = self
            .client
            .query_one(TRY_LOCK_SQL, &[&ADVISORY_NAMESPACE, &key])
            .await;
        match locked {
            Ok(row) if row.get::<_, bool>(0) => {}
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
            Err(StepError::Failed(msg)) => {
                tracing::warn!(table = %w.table, error = %msg, "table not brought up to date; retried next pass");
                report.error = Some(msg);
            }
        }
        if let Err(e) = self
            .client
            .query_one(UNLOCK_SQL, &[&ADVISORY_NAMESPACE, &key])
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
        let fresh = catalog::read(self.client, std::slice::from_ref(&w.table))
            .await
            .map_err(|e| e.to_string())?;
        let state = match fresh.tables.into_iter().next() {
            Some((_, Ok(s))) => s,
            Some((_, Err(msg))) => return Err(msg.into()),
            None => return Err("table vanished from the catalog".to_string().into()),
        };
        let p = plan::plan(&w.cfg, &state, now);
        report.notes = p.notes.iter().map(super::note_text).collect();
        report.default_rows = state.default.as_ref().map_or(0, |d| d.rows_estimate);
        let mut created: Vec<Range> = Vec::new();
        let mut result = Ok(());
        for action in &p.actions {
            let step = match action {
                Action::Create {
                    partition,
                    range,
                    reason,
                    ..
                } => {
                    let r = self.create(&state, &w.cfg, partition, *range, report).await;
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
                    drop,
                    ..
                } => {
                    let r = self.retire(&state, partition, *how, *drop, report).await;
                    if r.is_ok() {
                        tracing::info!(partition = %partition, dropped = drop, "partition retired");
                        report.retired += 1;
                    }
                    r
                }
                Action::DropDefaultCheck { constraint } => match &state.default {
                    Some(d) => {
                        self.ddl(&plan::sql_drop_constraint(&d.name, constraint), report)
                            .await
                    }
                    None => Ok(()),
                },
            };
            if let Err(e) = step {
                // Later actions of this table would wait on the same locks.
                result = Err(e);
                break;
            }
        }
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
        report.future_partitions = super::coverage_of(&w.cfg, &after, &created, now).periods_ahead;
        report.default_rows = report.default_rows.saturating_sub(report.rows_moved);
        result
    }

    /// Creates one partition the lock-safe way; see the module invariants.
    /// Crash safety: an interruption before ATTACH leaves a standalone table
    /// with our bounds CHECK (and possibly rows moved out of DEFAULT); the next
    /// pass finds it by name and carries on from there.
    async fn create(
        &self,
        state: &TableState,
        tcfg: &TableConfig,
        child: &QualifiedName,
        range: Range,
        report: &mut TableReport,
    ) -> Result<(), StepError> {
        let (parent, key, kt, tz) = (
            &state.table,
            state.key_column.as_str(),
            state.key_type,
            tcfg.timezone,
        );
        let existing = self
            .client
            .query_opt(RELATION_SQL, &[&child.quoted(), &plan::BOUNDS_CHECK])
            .await
            .map_err(|e| format!("cannot look up {child}: {}", server_message(&e)))?;
        match existing {
            None => {
                // The new table is invisible to others until commit, so its
                // CREATE, CHECK and GRANTs share one short transaction; the
                // only lock on a shared object is ACCESS SHARE on the parent.
                let mut stmts = vec![
                    plan::sql_create_child(parent, child),
                    plan::sql_add_bounds_check(child, key, kt, tz, range),
                ];
                stmts.extend(state.grants.iter().map(|g| plan::sql_grant(child, g)));
                self.ddl(&stmts.join(";\n"), report).await?;
                if state.owner != self.current_user {
                    let sql = plan::sql_owner(child, &state.owner);
                    if let Err(StepError::Failed(e)) = self.ddl(&sql, report).await {
                        report.notes.push(format!(
                            "{child}: owned by {} instead of the parent's owner {}: {e}; grant {} membership in {} to fix",
                            self.current_user, state.owner, self.current_user, state.owner
                        ));
                    }
                }
            }
            Some(row) => {
                let (relkind, is_partition, ours): (String, bool, bool) =
                    (row.get(0), row.get(1), row.get(2));
                if relkind != "r" || is_partition || !ours {
                    return Err(format!(
                        "{child} already exists and was not made by pgsteward; rename or drop it so the period can be created"
                    )
                    .into());
                }
                tracing::info!(partition = %child, "resuming a partition an interrupted pass created");
            }
        }

        let mut default_check = None;
        if let Some(d) = &state.default {
            self.move_default_rows(state, tcfg, &d.name, child, range, report)
                .await?;
            let c = plan::default_check_name(child);
            match self
                .ddl(
                    &plan::sql_add_default_check(&d.name, &c, key, kt, tz, range),
                    report,
                )
                .await
            {
                Ok(()) => {}
                Err(StepError::Failed(e)) if e.contains("(42710)") => {}
                Err(e) => return Err(e),
            }
            default_check = Some((d.name.clone(), c.clone()));
            // Rows of the range inserted between the move and the CHECK make
            // VALIDATE fail; the CHECK now refuses new ones, so move and retry.
            let mut validated = false;
            for _ in 0..3 {
                match self.ddl(&plan::sql_validate(&d.name, &c), report).await {
                    Ok(()) => {
                        validated = true;
                        break;
                    }
                    Err(StepError::Failed(e)) if e.contains("(23514)") => {
                        self.move_default_rows(state, tcfg, &d.name, child, range, report)
                            .await?;
                    }
                    Err(e) => {
                        self.undo_default_check(&d.name, &c, report).await;
                        return Err(e);
                    }
                }
            }
            if !validated {
                self.undo_default_check(&d.name, &c, report).await;
                return Err(format!(
                    "{}: rows of {child}'s range keep arriving in the DEFAULT partition",
                    d.name
                )
                .into());
            }
        }

        if let Err(e) = self
            .ddl(&plan::sql_attach(parent, child, kt, tz, range), report)
            .await
        {
            if let Some((d, c)) = &default_check {
                self.undo_default_check(d, c, report).await;
            }
            return Err(e);
        }
        // Redundant now that the partition constraint holds; failures leave
        // a harmless constraint (and a stale DEFAULT check the next pass drops).
        if let Err(StepError::Failed(e)) = self
            .ddl(
                &plan::sql_drop_constraint(child, plan::BOUNDS_CHECK),
                report,
            )
            .await
        {
            tracing::warn!(partition = %child, error = %e, "bounds check not dropped");
        }
        if let Some((d, c)) = &default_check {
            if let Err(StepError::Failed(e)) =
                self.ddl(&plan::sql_drop_constraint(d, c), report).await
            {
                tracing::warn!(partition = %d, error = %e, "default exclusion check not dropped; next pass drops it");
            }
        }
        Ok(())
    }

    /// The exclusion CHECK refuses inserts of the range into DEFAULT; once the
    /// attach is abandoned it must go, or the application would get errors.
    async fn undo_default_check(&self, d: &QualifiedName, c: &str, report: &mut TableReport) {
        if let Err(StepError::Failed(e)) = self.ddl(&plan::sql_drop_constraint(d, c), report).await
        {
            tracing::warn!(partition = %d, error = %e, "default exclusion check left; next pass drops it");
        }
    }

    /// Moves rows of `range` out of DEFAULT into the (not yet attached) child,
    /// `default_move_batch` rows per transaction. Until the attach the moved
    /// rows are visible only in the child table, not through the parent.
    async fn move_default_rows(
        &self,
        state: &TableState,
        tcfg: &TableConfig,
        default: &QualifiedName,
        child: &QualifiedName,
        range: Range,
        report: &mut TableReport,
    ) -> Result<(), StepError> {
        let (key, kt, tz) = (state.key_column.as_str(), state.key_type, tcfg.timezone);
        let count = self
            .simple(&plan::sql_count_in_range(default, key, kt, tz, range))
            .await?;
        let in_range: u64 = count.first().and_then(|v| v.parse().ok()).unwrap_or(0);
        if in_range == 0 {
            return Ok(());
        }
        let cols: Vec<String> = self
            .client
            .query(COLUMNS_SQL, &[&state.table.quoted()])
            .await
            .map_err(|e| {
                format!(
                    "cannot read the columns of {}: {}",
                    state.table,
                    server_message(&e)
                )
            })?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let batch = self.cfg.partitions.default_move_batch.max(1);
        let sql = plan::sql_move_batch(default, child, &cols, key, kt, tz, range)
            .replace("LIMIT $1", &format!("LIMIT {batch}"));
        let mut moved_here = 0u64;
        // Bounded: every batch either moves rows or ends the loop, and rows
        // beyond the count (concurrent inserts) get a generous allowance.
        let max_batches = in_range / u64::from(batch) + 100;
        for _ in 0..max_batches {
            let n = self.ddl_count(&sql, report).await?;
            moved_here += n;
            if n == 0 {
                break;
            }
        }
        tracing::info!(from = %default, into = %child, rows = moved_here, "rows moved out of the default partition");
        report.rows_moved += moved_here;
        Ok(())
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
            .ddl(&plan::sql_detach(parent, partition, how), report)
            .await
        {
            Ok(()) => {}
            Err(StepError::Failed(e)) if how == DetachHow::Concurrently => {
                // CONCURRENTLY commits its first half before waiting for older
                // snapshots; interrupted there, the detach is pending and only
                // FINALIZE completes it.
                let pending = self
                    .client
                    .query_opt(DETACH_PENDING_SQL, &[&partition.quoted()])
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|r| r.get::<_, bool>(0));
                if !pending {
                    return Err(StepError::Failed(e));
                }
                self.ddl(
                    &plan::sql_detach(parent, partition, DetachHow::Finalize),
                    report,
                )
                .await?;
            }
            Err(e) => return Err(e),
        }
        if drop {
            self.ddl(&plan::sql_drop_table(partition), report).await?;
        }
        Ok(())
    }

    async fn ddl(&self, sql: &str, report: &mut TableReport) -> Result<(), StepError> {
        self.ddl_count(sql, report).await.map(|_| ())
    }

    /// Runs one statement (its own transaction) with lock-race retries;
    /// returns the rows it affected.
    async fn ddl_count(&self, sql: &str, report: &mut TableReport) -> Result<u64, StepError> {
        let retries = self.cfg.partitions.lock_retries.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            if self.cancel.is_cancelled() {
                return Err(StepError::Cancelled);
            }
            let res = tokio::select! {
                r = self.client.simple_query(sql) => r,
                _ = self.cancel.cancelled() => {
                    let _ = self.client.cancel_token().cancel_query(NoTls).await;
                    return Err(StepError::Cancelled);
                }
            };
            match res {
                Ok(msgs) => {
                    report.statements.push(sql.to_string());
                    let n = msgs
                        .iter()
                        .filter_map(|m| match m {
                            SimpleQueryMessage::CommandComplete(n) => Some(*n),
                            _ => None,
                        })
                        .last()
                        .unwrap_or(0);
                    return Ok(n);
                }
                Err(e) if is_transient_lock_error(&e) && attempt < retries => {
                    let wait = super::backoff(attempt);
                    tracing::info!(attempt, wait_ms = wait.as_millis() as u64, error = %server_message(&e), "lock not granted; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.cancel.cancelled() => return Err(StepError::Cancelled),
                    }
                }
                Err(e) => {
                    let hint = if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
                        format!(
                            " after {attempt} attempts; a long transaction holds a conflicting lock (see pg_locks), the next pass retries"
                        )
                    } else {
                        String::new()
                    };
                    let first_line = sql.lines().next().unwrap_or_default();
                    return Err(StepError::Failed(format!(
                        "{}{hint} [{first_line}]",
                        server_message(&e)
                    )));
                }
            }
        }
    }

    /// A query whose first column of each row is returned as text.
    async fn simple(&self, sql: &str) -> Result<Vec<String>, StepError> {
        let msgs = tokio::select! {
            r = self.client.simple_query(sql) => r.map_err(|e| StepError::Failed(server_message(&e)))?,
            _ = self.cancel.cancelled() => return Err(StepError::Cancelled),
        };
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect())
    }
}
