//! Running a repair online: the parent index `ON ONLY`, then per partition
//! `CREATE INDEX CONCURRENTLY` and `ALTER INDEX ... ATTACH PARTITION`, on up
//! to `partitions.index_parallelism` sessions.
//!
//! Invariants:
//! - Every statement runs on a session opened by `partitions::connect`, so
//!   under `lock_timeout`: a statement that cannot get its lock gives up
//!   within it (and is retried with backoff, `lock_retries` times), so writes
//!   never queue behind a build for longer. `CREATE INDEX ON ONLY` (SHARE on
//!   the parent, instant: it builds nothing) and ATTACH are short; a
//!   concurrent build holds SHARE UPDATE EXCLUSIVE, which writes do not wait for.
//! - A concurrent build that fails or is cancelled leaves an INVALID index;
//!   it is dropped concurrently at once (a bounded, uncancellable clean-up),
//!   and one left by a killed process is found and dropped by the next pass
//!   before it builds again.
//! - A unique build that meets duplicates stops the other builds of that
//!   index, drops what they left, and drops a declared parent index it made,
//!   so nothing invalid stays behind; the error names the partition and the key.

use crate::partitions::sql;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use super::drift::{sql_attach, sql_drop, sql_drop_concurrently, sql_reindex, ChildAction, Job};
use super::IndexError;
use crate::config::indexes::IndexDef;
use crate::pg::{is_transient_lock_error, server_message, Backoff, QualifiedName, Retry};

/// Attempts of a clean-up statement that must run even after cancellation.
const CLEANUP_ATTEMPTS: u32 = 5;
/// How often a long build logs its progress.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// A session that runs DDL: opened by `partitions::connect` (so under
/// `lock_timeout`), with the attempts a statement gets on lost lock races.
pub struct Session<'a> {
    pub client: &'a Client,
    pub lock_retries: u32,
    /// The session's `lock_timeout`, restored after a build.
    pub lock_timeout: Duration,
    /// `lock_timeout` while a concurrent build runs: it holds only SHARE
    /// UPDATE EXCLUSIVE (no write waits for it) and then waits for older
    /// transactions, so it may wait longer than DDL that blocks writes.
    pub build_wait: Duration,
    /// The server process, for progress reports (0 when unknown).
    pub pid: i32,
}

impl<'a> Session<'a> {
    /// A session on `client` (from `partitions::connect`) with the pass's settings.
    pub async fn new(client: &'a Client, p: &crate::config::PartitionsConfig) -> Session<'a> {
        let pid = match client.query_one(sql::BACKEND_PID, &[]).await {
            Ok(r) => r.get(0),
            Err(_) => 0,
        };
        Session {
            client,
            lock_retries: p.lock_retries,
            lock_timeout: p.lock_timeout.0,
            build_wait: p.index_build_wait.0.max(p.lock_timeout.0),
            pid,
        }
    }

    /// `SET lock_timeout` for the statements that wait without blocking writes.
    async fn set_lock_timeout(&self, d: Duration) -> Result<(), IndexError> {
        let sql = format!("SET lock_timeout = '{}ms'", d.as_millis().max(1));
        self.client
            .batch_execute(&sql)
            .await
            .map_err(|e| IndexError::query("set lock_timeout", e))
    }
}

/// What [`create_index_concurrently`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Built,
    /// A valid index of that name was already on the table (a previous,
    /// interrupted pass built it): nothing built.
    Existing,
}

/// Statements run, shared by the sessions of one repair.
#[derive(Default)]
pub struct Log {
    pub statements: Mutex<Vec<String>>,
}

impl Log {
    fn push(&self, sql: &str) {
        if let Ok(mut s) = self.statements.lock() {
            s.push(sql.to_string());
        }
    }
    pub fn take(&self) -> Vec<String> {
        self.statements
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }
}

enum Attempt {
    Cancelled,
    Failed(tokio_postgres::Error),
}

/// One try of one statement; cancelling asks the server to cancel it.
async fn attempt(client: &Client, sql: &str, cancel: &CancellationToken) -> Result<(), Attempt> {
    if cancel.is_cancelled() {
        return Err(Attempt::Cancelled);
    }
    tokio::select! {
        r = client.simple_query(sql) => r.map(|_| ()).map_err(Attempt::Failed),
        _ = cancel.cancelled() => {
            let _ = client.cancel_token().cancel_query(NoTls).await;
            Err(Attempt::Cancelled)
        }
    }
}

/// Runs `sql` with lock-race retries and backoff; `cancel = None` is for
/// clean-up: it cannot be cancelled and gets [`CLEANUP_ATTEMPTS`].
pub async fn run_sql(
    s: &Session<'_>,
    sql: &str,
    cancel: Option<&CancellationToken>,
    log: &Log,
) -> Result<(), IndexError> {
    let never = CancellationToken::new();
    let (cancel, retries) = match cancel {
        Some(c) => (c, s.lock_retries),
        None => (&never, CLEANUP_ATTEMPTS),
    };
    let mut retry = Retry::new(retries, Backoff::LOCK, cancel);
    loop {
        let n = retry.begin()?;
        match attempt(s.client, sql, cancel).await {
            Ok(()) => {
                log.push(sql);
                return Ok(());
            }
            Err(Attempt::Cancelled) => return Err(IndexError::Cancelled),
            Err(Attempt::Failed(e)) => {
                if !retry
                    .again(is_transient_lock_error(&e), &server_message(&e))
                    .await?
                {
                    return Err(IndexError::sql(sql, n, &e));
                }
            }
        }
    }
}

/// `(is an index on table, valid)` of the relation `name` in `table`'s
/// schema; `None` when there is none.
async fn lookup(
    s: &Session<'_>,
    table: &QualifiedName,
    name: &str,
) -> Result<Option<(bool, bool)>, IndexError> {
    let index = QualifiedName::new(&table.schema, name);
    let row = s
        .client
        .query_opt(
            sql::INDEX_KIND_VALID_ON,
            &[&index.quoted(), &table.quoted()],
        )
        .await
        .map_err(|e| IndexError::query("look up an index", e))?;
    Ok(row.map(|r| {
        let kind: String = r.get(0);
        let on_table = kind == "i" && r.get::<_, Option<bool>>(2) == Some(true);
        (on_table, r.get::<_, Option<bool>>(1).unwrap_or(false))
    }))
}

/// Drops `name` on `table` if it is an invalid index there (a failed
/// concurrent build's leftover). Runs after cancellation too; a failure is
/// logged and left for the next pass, which finds the leftover again.
pub async fn drop_invalid_leftover(
    s: &Session<'_>,
    table: &QualifiedName,
    name: &str,
    log: &Log,
) -> bool {
    match lookup(s, table, name).await {
        Ok(Some((true, false))) => {}
        _ => return false,
    }
    let sql = sql_drop_concurrently(&QualifiedName::new(&table.schema, name));
    match run_sql(s, &sql, None, log).await {
        Ok(()) => {
            tracing::info!(table = %table, index = name, "invalid index left by a failed build dropped");
            true
        }
        Err(e) => {
            tracing::warn!(table = %table, index = name, error = %e, "invalid index not dropped; the next pass drops it");
            false
        }
    }
}

/// Builds index `name` (in `table`'s schema) on one table with
/// `CREATE INDEX CONCURRENTLY`, outside any transaction: writes go on
/// throughout. An invalid index of that name (an interrupted earlier build) is
/// dropped concurrently first; a valid one is kept ([`Created::Existing`]).
/// Lost lock races drop the attempt's invalid leftover and retry with backoff.
/// Any failure or cancellation drops the leftover before returning, so the
/// table is left as it was. A unique violation is [`IndexError::Duplicate`]
/// with the server's sample of the key. Works on any plain table, partition or not.
pub async fn create_index_concurrently(
    s: &Session<'_>,
    table: &QualifiedName,
    name: &str,
    def: &IndexDef,
    cancel: &CancellationToken,
    log: &Log,
) -> Result<Created, IndexError> {
    match lookup(s, table, name).await? {
        None => {}
        Some((true, true)) => return Ok(Created::Existing),
        Some((true, false)) => {
            tracing::info!(table = %table, index = name, "resuming: dropping the invalid index an interrupted build left");
            drop_invalid_leftover(s, table, name, log).await;
        }
        Some((false, _)) => {
            return Err(IndexError::Conflict(format!(
            "{} already exists and is not an index on {table}; rename it so the index can be built",
            QualifiedName::new(&table.schema, name)
        )))
        }
    }
    let sql = def.create_sql(name, table, false, true);
    let mut retry = Retry::new(s.lock_retries, Backoff::LOCK, cancel);
    loop {
        let n = retry.begin()?;
        s.set_lock_timeout(s.build_wait).await?;
        let res = attempt(s.client, &sql, cancel).await;
        // Back to the pass's bound before anything that could block writes
        // (the clean-up, the ATTACH); a session that cannot is not used again.
        if s.set_lock_timeout(s.lock_timeout).await.is_err() {
            // A cancel request that arrived after the build ended hits the SET.
            s.set_lock_timeout(s.lock_timeout).await?;
        }
        let err = match res {
            Ok(()) => {
                log.push(&sql);
                return Ok(Created::Built);
            }
            Err(e) => e,
        };
        // Whatever happened, the attempt may have left an invalid index.
        drop_invalid_leftover(s, table, name, log).await;
        match err {
            Attempt::Cancelled => return Err(IndexError::Cancelled),
            Attempt::Failed(e) if is_transient_lock_error(&e) => {
                // A leftover the same lock kept from being dropped would make
                // the next attempt fail on its name: stop here instead.
                let left = matches!(lookup(s, table, name).await, Ok(Some((true, false))));
                if retry.again(!left, &server_message(&e)).await? {
                    continue;
                }
                let who = crate::partitions::blockers::report(s.client, &[table.quoted()]).await;
                return Err(IndexError::locked(&sql, n, &e, &who));
            }
            Attempt::Failed(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                let sample = e
                    .as_db_error()
                    .and_then(|d| d.detail())
                    .unwrap_or("the server gave no sample")
                    .to_string();
                return Err(IndexError::Duplicate {
                    partition: table.clone(),
                    index: name.to_string(),
                    sample,
                });
            }
            Attempt::Failed(e) => return Err(IndexError::sql(&sql, n, &e)),
        }
    }
}

/// What the builds of one repair did.
#[derive(Debug, Default)]
pub struct Done {
    pub built: u32,
    pub attached: u32,
    pub reindexed: u32,
    pub errors: Vec<IndexError>,
}

/// What each build session is doing, for the progress log.
#[derive(Default)]
struct Progress(Mutex<HashMap<i32, String>>);

impl Progress {
    fn set(&self, pid: i32, what: Option<String>) {
        if let Ok(mut m) = self.0.lock() {
            match what {
                Some(w) => m.insert(pid, w),
                None => m.remove(&pid),
            };
        }
    }
    fn snapshot(&self) -> HashMap<i32, String> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// Runs the jobs of one parent index on `sessions`; `monitor` (idle
/// otherwise) reports progress every [`PROGRESS_EVERY`]. A duplicate key stops
/// the other jobs of the index. `parent` is the parent table.
pub async fn run_jobs(
    sessions: &[Session<'_>],
    monitor: &Client,
    parent: &QualifiedName,
    jobs: Vec<Job>,
    cancel: &CancellationToken,
    log: &Log,
) -> Done {
    let total = jobs.len();
    let queue = Mutex::new(jobs.into_iter().enumerate().collect::<VecDeque<_>>());
    let results: Mutex<Vec<Result<ChildAction, IndexError>>> = Mutex::new(Vec::new());
    let abort = cancel.child_token();
    let progress = Progress::default();
    let workers = sessions.iter().map(|s| {
        let (queue, results, abort, progress) = (&queue, &results, &abort, &progress);
        async move {
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                let Some((k, job)) = next else { break };
                if abort.is_cancelled() {
                    break;
                }
                let what = format!(
                    "{} on {} (partition {} of {total})",
                    job.index,
                    job.partition,
                    k + 1
                );
                tracing::info!(index = %job.index, partition = %job.partition, k = k + 1, n = total, action = ?job.action, "partition index");
                progress.set(s.pid, Some(what));
                let r = run_job(s, parent, &job, abort, cancel, log).await;
                progress.set(s.pid, None);
                if matches!(r, Err(IndexError::Duplicate { .. })) {
                    abort.cancel();
                }
                if let Ok(mut v) = results.lock() {
                    v.push(r.map(|()| job.action.clone()));
                }
            }
        }
    });
    let all = futures::future::join_all(workers);
    tokio::pin!(all);
    let pids: Vec<i32> = sessions.iter().map(|s| s.pid).collect();
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = &mut all => break,
            _ = tick.tick() => report_progress(monitor, &pids, &progress).await,
        }
    }
    let mut done = Done::default();
    let duplicate = abort.is_cancelled() && !cancel.is_cancelled();
    let results = results
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default();
    for r in results {
        match r {
            Ok(ChildAction::Build) => {
                done.built += 1;
                done.attached += 1;
            }
            Ok(ChildAction::Attach) => done.attached += 1,
            Ok(ChildAction::Reindex) => done.reindexed += 1,
            // Stopped because another partition had duplicates: not an error of its own.
            Err(IndexError::Cancelled) if duplicate => {}
            Err(e) => done.errors.push(e),
        }
    }
    done
}

/// `cancel` stops this index's jobs (the pass's token, or a duplicate key
/// elsewhere); `outer` is the pass's token alone.
async fn run_job(
    s: &Session<'_>,
    parent: &QualifiedName,
    job: &Job,
    cancel: &CancellationToken,
    outer: &CancellationToken,
    log: &Log,
) -> Result<(), IndexError> {
    let parent_index = QualifiedName::new(&parent.schema, &job.index);
    let child = QualifiedName::new(&job.partition.schema, &job.child);
    match job.action {
        ChildAction::Attach => {
            run_sql(s, &sql_attach(&parent_index, &child), Some(cancel), log).await
        }
        ChildAction::Reindex => {
            // Waits like a concurrent build, without blocking writes.
            s.set_lock_timeout(s.build_wait).await?;
            let r = run_sql(s, &sql_reindex(&child), Some(cancel), log).await;
            s.set_lock_timeout(s.lock_timeout).await?;
            r
        }
        ChildAction::Build => {
            let built =
                create_index_concurrently(s, &job.partition, &job.child, &job.def, cancel, log)
                    .await;
            let ours = !matches!(built, Ok(Created::Existing));
            let r = match built {
                Ok(_) => run_sql(s, &sql_attach(&parent_index, &child), Some(cancel), log).await,
                Err(e) => Err(e),
            };
            // Stopped by a duplicate key elsewhere: the parent index is about
            // to be dropped, taking only attached indexes with it. One this
            // job built (a build can finish just as the cancel arrives) is
            // dropped here. A cancelled pass keeps it: the next attaches it.
            if matches!(r, Err(IndexError::Cancelled)) && ours && !outer.is_cancelled() {
                if let Err(e) = run_sql(s, &sql_drop_concurrently(&child), None, log).await {
                    tracing::warn!(index = %child, error = %e, "index of a stopped unique build not dropped");
                }
            }
            r
        }
    }
}

/// One row of `pg_stat_progress_create_index`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BuildProgress {
    pub pid: i32,
    pub phase: String,
    pub blocks_done: i64,
    pub blocks_total: i64,
    pub tuples_done: i64,
    pub tuples_total: i64,
}

/// The progress of the index builds running in the server processes `pids`.
pub async fn progress(client: &Client, pids: &[i32]) -> Result<Vec<BuildProgress>, IndexError> {
    let rows = client
        .query(sql::INDEX_BUILD_PROGRESS, &[&pids])
        .await
        .map_err(|e| IndexError::query("read pg_stat_progress_create_index", e))?;
    Ok(rows
        .iter()
        .map(|r| BuildProgress {
            pid: r.get(0),
            phase: r.get(1),
            blocks_done: r.get(2),
            blocks_total: r.get(3),
            tuples_done: r.get(4),
            tuples_total: r.get(5),
        })
        .collect())
}

async fn report_progress(monitor: &Client, pids: &[i32], building: &Progress) {
    let what = building.snapshot();
    let rows = match progress(monitor, pids).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "index build progress not read");
            return;
        }
    };
    for p in rows {
        tracing::info!(
            building = what.get(&p.pid).map(String::as_str).unwrap_or("?"),
            phase = %p.phase,
            blocks_done = p.blocks_done,
            blocks_total = p.blocks_total,
            tuples_done = p.tuples_done,
            tuples_total = p.tuples_total,
            "index build progress"
        );
    }
}

/// Drops a declared parent index whose build met duplicates: with it go the
/// partition indexes already attached, so nothing half-built stays.
pub async fn drop_parent(s: &Session<'_>, parent_index: &QualifiedName, log: &Log) {
    if let Err(e) = run_sql(s, &sql_drop(parent_index), None, log).await {
        tracing::warn!(index = %parent_index, error = %e, "invalid parent index not dropped; the next pass retries");
    }
}
