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

use super::catalog;
use super::ddl;
use super::model::{Action, DetachHow, Range, TableState};
use super::plan;
use super::report::TableReport;
use super::session::{self, ADVISORY_NAMESPACE};
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
    /// The server refused a statement (after retries, for lock races).
    Sql {
        code: SqlState,
        message: String,
    },
    Failed(String),
}

impl StepError {
    fn is(&self, code: &SqlState) -> bool {
        matches!(self, StepError::Sql { code: c, .. } if c == code)
    }
    fn text(&self) -> String {
        match self {
            StepError::Cancelled => "cancelled".into(),
            StepError::Sql { message, .. } | StepError::Failed(message) => message.clone(),
        }
    }
}

impl From<String> for StepError {
    fn from(s: String) -> Self {
        StepError::Failed(s)
    }
}

/// What a statement batch returned: rows affected by the last command, and
/// the first row of the last result (as text) if it had one.
struct Done {
    count: u64,
    row: Vec<Option<String>>,
}

impl Done {
    /// `(rows of the range in DEFAULT, DEFAULT's bytes)` from `sql_probe_default`.
    fn probe(&self) -> Option<(u64, u64)> {
        match self.row.as_slice() {
            [Some(n), Some(size)] => Some((n.parse().ok()?, size.parse().ok()?)),
            _ => None,
        }
    }
}

/// Below this size on disk (8 pages) the DEFAULT's exclusion CHECK is added
/// valid in one statement: its scan is shorter than a round trip.
const SMALL_DEFAULT_BYTES: u64 = 64 * 1024;
/// Attempts of a clean-up statement that must run even after cancellation.
const UNCANCELLABLE_ATTEMPTS: u32 = 5;
/// Upper bound on move batches per partition and attempt.
const MAX_MOVE_BATCHES: usize = 100_000;

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
            Err(e) => {
                let msg = e.text();
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
        report.notes = p.notes.iter().map(plan::note_text).collect();
        report.default_rows = state.default.as_ref().map_or(0, |d| d.rows_estimate);
        let mut created: Vec<Range> = Vec::new();
        let mut default_checks: Vec<String> = Vec::new();
        let mut result = Ok(());
        for action in &p.actions {
            let step = match action {
                Action::Create {
                    partition,
                    range,
                    reason,
                    ..
                } => {
                    let r = self
                        .create(
                            &state,
                            &w.cfg,
                            partition,
                            *range,
                            &mut default_checks,
                            report,
                        )
                        .await;
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
                Action::DropDefaultCheck { constraint } => {
                    default_checks.push(constraint.clone());
                    Ok(())
                }
            };
            if let Err(e) = step {
                // Later actions of this table would wait on the same locks.
                result = Err(e);
                break;
            }
        }
        // One statement for every exclusion CHECK of this pass and any stale
        // ones: a failure is harmless for attached ranges and the next pass retries.
        if let (Some(d), false) = (&state.default, default_checks.is_empty()) {
            let sql = ddl::sql_drop_constraints(&d.name, &default_checks);
            if let Err(e) = self.run(&sql, report).await {
                tracing::warn!(partition = %d.name, error = %e.text(), "default exclusion checks not dropped; next pass drops them");
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
        report.future_partitions = plan::coverage_of(&w.cfg, &after, &created, now).periods_ahead;
        report.default_rows = report.default_rows.saturating_sub(report.rows_moved);
        result
    }

    /// Creates one partition the lock-safe way; see the module invariants.
    /// Exclusion CHECKs left on DEFAULT are pushed to `default_checks` and
    /// dropped once per table: while the range is attached they are harmless.
    /// Crash safety: an interruption before ATTACH leaves a standalone table
    /// with our bounds CHECK (and possibly rows moved out of DEFAULT); the next
    /// pass finds it by name and carries on from there.
    async fn create(
        &self,
        state: &TableState,
        tcfg: &TableConfig,
        child: &QualifiedName,
        range: Range,
        default_checks: &mut Vec<String>,
        report: &mut TableReport,
    ) -> Result<(), StepError> {
        let (parent, key, kt, tz) = (
            &state.table,
            state.key_column.as_str(),
            state.key_type,
            tcfg.timezone,
        );
        // The new table is invisible to others until commit, so its CREATE,
        // CHECK and GRANTs share one short transaction (the only lock on a
        // shared object is ACCESS SHARE on the parent, then on DEFAULT for the probe).
        let mut stmts = vec![
            ddl::sql_create_child(parent, child),
            ddl::sql_add_bounds_check(child, key, kt, tz, range),
        ];
        stmts.extend(state.grants.iter().map(|g| ddl::sql_grant(child, g)));
        if let Some(d) = &state.default {
            stmts.push(ddl::sql_probe_default(&d.name, key, kt, tz, range));
        }
        let mut probe = None;
        match self.run(&stmts.join(";\n"), report).await {
            Ok(done) => {
                probe = done.probe();
                if state.owner != self.current_user {
                    let sql = ddl::sql_owner(child, &state.owner);
                    if let Err(e) = self.run(&sql, report).await {
                        report.notes.push(format!(
                            "{child}: owned by {} instead of the parent's owner {}: {}; grant {} membership in {} to fix",
                            self.current_user, state.owner, e.text(), self.current_user, state.owner
                        ));
                    }
                }
            }
            Err(e) if e.is(&SqlState::DUPLICATE_TABLE) => {
                let existing = self
                    .client
                    .query_opt(RELATION_SQL, &[&child.quoted(), &ddl::BOUNDS_CHECK])
                    .await
                    .map_err(|e| format!("cannot look up {child}: {}", server_message(&e)))?;
                let ours = existing.is_some_and(|row| {
                    row.get::<_, String>(0) == "r"
                        && !row.get::<_, bool>(1)
                        && row.get::<_, bool>(2)
                });
                if !ours {
                    return Err(format!(
                        "{child} already exists and was not made by pgsteward; rename or drop it so the period can be created"
                    )
                    .into());
                }
                tracing::info!(partition = %child, "resuming a partition an interrupted pass created");
            }
            Err(e) => return Err(e),
        }

        let mut default_check = None;
        if let Some(d) = &state.default {
            let (in_range, size) = match probe {
                Some(p) => p,
                None => self
                    .run(&ddl::sql_probe_default(&d.name, key, kt, tz, range), report)
                    .await?
                    .probe()
                    .unwrap_or((1, u64::MAX)),
            };
            if in_range > 0 {
                self.move_default_rows(state, tcfg, &d.name, child, range, report)
                    .await?;
            }
            let c = ddl::default_check_name(child);
            default_check = Some((d.name.clone(), c.clone()));
            let mut validated = false;
            if in_range == 0 && size <= SMALL_DEFAULT_BYTES {
                // One statement: the scan of a DEFAULT this small is instant.
                match self
                    .run(
                        &ddl::sql_add_default_check_valid(&d.name, &c, key, kt, tz, range),
                        report,
                    )
                    .await
                {
                    Ok(_) => validated = true,
                    Err(e)
                        if e.is(&SqlState::CHECK_VIOLATION)
                            || e.is(&SqlState::DUPLICATE_OBJECT) => {}
                    Err(e) => return Err(e),
                }
            }
            if !validated {
                validated = self
                    .add_default_check_not_valid(state, tcfg, &d.name, &c, child, range, report)
                    .await?;
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
            .run(&ddl::sql_attach(parent, child, kt, tz, range), report)
            .await
        {
            if let Some((d, c)) = &default_check {
                self.undo_default_check(d, c, report).await;
            }
            return Err(e);
        }
        if let Some((_, c)) = default_check {
            default_checks.push(c);
        }
        // Redundant now that the partition constraint holds; a failure leaves
        // a harmless constraint behind.
        if let Err(e) = self
            .run(&ddl::sql_drop_constraint(child, ddl::BOUNDS_CHECK), report)
            .await
        {
            tracing::warn!(partition = %child, error = %e.text(), "bounds check not dropped");
        }
        Ok(())
    }

    /// NOT VALID (instant, brief ACCESS EXCLUSIVE), then VALIDATE (a scan under
    /// SHARE UPDATE EXCLUSIVE, which blocks neither reads nor writes). Rows of
    /// the range inserted between the move and the CHECK make VALIDATE fail;
    /// the CHECK refuses new ones from then on, so move again and retry.
    #[allow(clippy::too_many_arguments)]
    async fn add_default_check_not_valid(
        &self,
        state: &TableState,
        tcfg: &TableConfig,
        default: &QualifiedName,
        c: &str,
        child: &QualifiedName,
        range: Range,
        report: &mut TableReport,
    ) -> Result<bool, StepError> {
        let (key, kt, tz) = (state.key_column.as_str(), state.key_type, tcfg.timezone);
        match self
            .run(
                &ddl::sql_add_default_check(default, c, key, kt, tz, range),
                report,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.is(&SqlState::DUPLICATE_OBJECT) => {}
            Err(e) => return Err(e),
        }
        for _ in 0..3 {
            match self.run(&ddl::sql_validate(default, c), report).await {
                Ok(_) => return Ok(true),
                Err(e) if e.is(&SqlState::CHECK_VIOLATION) => {
                    self.move_default_rows(state, tcfg, default, child, range, report)
                        .await?;
                }
                Err(e) => {
                    self.undo_default_check(default, c, report).await;
                    return Err(e);
                }
            }
        }
        Ok(false)
    }

    /// The exclusion CHECK refuses inserts of the range into DEFAULT; once the
    /// attach is abandoned it must go, or the application would get errors.
    /// Runs even after cancellation (a few bounded attempts): leaving the CHECK
    /// would turn the application's inserts into errors.
    async fn undo_default_check(&self, d: &QualifiedName, c: &str, report: &mut TableReport) {
        let sql = ddl::sql_drop_constraint(d, c);
        if let Err(e) = self.run_with(&sql, report, false).await {
            tracing::warn!(partition = %d, error = %e.text(), "default exclusion check left; next pass drops it");
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
        let sql = ddl::sql_move_batch(default, child, &cols, key, kt, tz, range)
            .replace("LIMIT $1", &format!("LIMIT {batch}"));
        let mut moved_here = 0u64;
        // Bounded: rows beyond what the probe saw (concurrent inserts) get
        // a generous allowance; the exclusion CHECK stops them for good.
        for _ in 0..MAX_MOVE_BATCHES {
            let n = self.run(&sql, report).await?.count;
            moved_here += n;
            if n < u64::from(batch) {
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
                    .query_opt(DETACH_PENDING_SQL, &[&partition.quoted()])
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

    /// Runs one statement, or one batch that is a single implicit
    /// transaction, with lock-race retries.
    async fn run(&self, sql: &str, report: &mut TableReport) -> Result<Done, StepError> {
        self.run_with(sql, report, true).await
    }

    /// `cancellable = false` is for clean-up only: it ignores the token and
    /// stops after `UNCANCELLABLE_ATTEMPTS`, each bounded by `lock_timeout`.
    async fn run_with(
        &self,
        sql: &str,
        report: &mut TableReport,
        cancellable: bool,
    ) -> Result<Done, StepError> {
        let retries = if cancellable {
            self.cfg.partitions.lock_retries.max(1)
        } else {
            UNCANCELLABLE_ATTEMPTS
        };
        let never = CancellationToken::new();
        let cancel = if cancellable { self.cancel } else { &never };
        let mut attempt = 0;
        loop {
            attempt += 1;
            if cancel.is_cancelled() {
                return Err(StepError::Cancelled);
            }
            let res = tokio::select! {
                r = self.client.simple_query(sql) => r,
                _ = cancel.cancelled() => {
                    let _ = self.client.cancel_token().cancel_query(NoTls).await;
                    return Err(StepError::Cancelled);
                }
            };
            match res {
                Ok(msgs) => {
                    report.statements.push(sql.to_string());
                    let mut done = Done {
                        count: 0,
                        row: Vec::new(),
                    };
                    for m in &msgs {
                        match m {
                            SimpleQueryMessage::CommandComplete(n) => done.count = *n,
                            SimpleQueryMessage::Row(r) => {
                                done.row =
                                    (0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()
                            }
                            _ => {}
                        }
                    }
                    return Ok(done);
                }
                Err(e) if is_transient_lock_error(&e) && attempt < retries => {
                    let wait = session::backoff(attempt);
                    tracing::info!(attempt, wait_ms = wait.as_millis() as u64, error = %server_message(&e), "lock not granted; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = cancel.cancelled() => return Err(StepError::Cancelled),
                    }
                }
                Err(e) => {
                    let hint = if is_transient_lock_error(&e) {
                        format!(
                            " after {attempt} attempts; a long transaction holds a conflicting lock (see pg_locks), the next pass retries"
                        )
                    } else {
                        String::new()
                    };
                    let first_line = sql.lines().next().unwrap_or_default();
                    let message = format!("{}{hint} [{first_line}]", server_message(&e));
                    return Err(match e.code() {
                        Some(code) => StepError::Sql {
                            code: code.clone(),
                            message,
                        },
                        None => StepError::Failed(message),
                    });
                }
            }
        }
    }
}
