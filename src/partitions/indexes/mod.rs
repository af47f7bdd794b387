//! Indexes of managed partitioned tables: declared in the configuration
//! (`spec`), read from the catalog (`catalog`), compared (`drift`, pure) and
//! built or repaired online (`build`).
//!
//! `CREATE INDEX` on a partitioned parent blocks writes for the whole build and
//! `CONCURRENTLY` is refused there, so an index is made `ON ONLY` the parent
//! (invalid, instant), built concurrently on each partition, and attached;
//! the parent becomes valid with the last attach. The pass does this for
//! declared indexes and finishes any half-done one (declared or made by hand);
//! `partitions status` reports what is incomplete.
//!
//! Reusable entry points: [`build_online`] (one index on a partitioned parent)
//! and [`build::create_index_concurrently`] (one index on one table).

pub mod build;
pub mod catalog;
pub mod drift;

use crate::partitions::sql;
use serde::Serialize;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

pub use build::{create_index_concurrently, Created, Log, Session};
pub use drift::Problem;

pub use super::error::IndexError;
use super::ADVISORY_NAMESPACE;
use crate::config::indexes::IndexSpec;
use crate::config::{Cluster, PartitionsConfig};
use crate::pg::{server_message, QualifiedName};

/// What the index part of a pass did for one table, and what is still wrong.
#[derive(Debug, Clone, Serialize)]
pub struct TableIndexReport {
    pub table: QualifiedName,
    /// Partition indexes built concurrently (each also attached).
    pub built: u32,
    /// Partition indexes attached (built ones included).
    pub attached: u32,
    pub reindexed: u32,
    /// Invalid leftovers of failed builds dropped.
    pub dropped: u32,
    /// Problems left after the pass: empty when every index is complete.
    pub drift: Vec<Problem>,
    pub notes: Vec<String>,
    /// Why an index could not be completed; retried next pass.
    pub error: Option<String>,
    pub skipped: Option<String>,
    pub statements: Vec<String>,
}

impl TableIndexReport {
    fn new(table: &QualifiedName) -> Self {
        TableIndexReport {
            table: table.clone(),
            built: 0,
            attached: 0,
            reindexed: 0,
            dropped: 0,
            drift: Vec::new(),
            notes: Vec::new(),
            error: None,
            skipped: None,
            statements: Vec::new(),
        }
    }
    fn add_error(&mut self, e: &IndexError) {
        let msg = e.to_string();
        self.error = Some(match self.error.take() {
            Some(prev) => format!("{prev}; {msg}"),
            None => msg,
        });
    }
}

/// A managed table the catalog found: `(position in partitions.tables, name, oid)`.
pub type Managed = (usize, QualifiedName, u32);

/// The managed tables of a catalog read, for the index part of the pass and status.
pub fn managed(catalog: &super::catalog::Catalog) -> Vec<Managed> {
    catalog
        .tables
        .iter()
        .enumerate()
        .filter_map(|(i, (_, l))| l.as_ref().ok().map(|s| (i, s.table.clone(), s.oid)))
        .collect()
}

fn declared<'a>(partitions: &'a PartitionsConfig, m: &Managed) -> &'a [IndexSpec] {
    partitions
        .tables
        .get(m.0)
        .map_or(&[], |t| t.indexes.as_slice())
}

/// The index part of a pass: every managed table's declared indexes built,
/// half-done ones finished, leftovers dropped. Runs after partitions are
/// made, under the same per-table advisory lock. Never fails as a whole: a
/// table's trouble goes into its report.
/// `main`: the pass's catalog session when it ran no DDL (a no-op pass then
/// opens no second session), else a new one is opened.
pub async fn run_pass(
    cfg: &Cluster,
    tables: &[Managed],
    main: Option<Client>,
    gate: &tokio::sync::Mutex<crate::upgrade::DdlGate>,
    cancel: &CancellationToken,
) -> Vec<TableIndexReport> {
    if tables.is_empty() {
        return Vec::new();
    }
    let all_failed = |e: &IndexError| {
        tables
            .iter()
            .map(|m| {
                let mut r = TableIndexReport::new(&m.1);
                r.add_error(e);
                r
            })
            .collect()
    };
    let main = match main {
        Some(c) => c,
        None => match super::connect(cfg).await {
            Ok(c) => c,
            Err(e) => return all_failed(&IndexError::Connect(e)),
        },
    };
    let names: Vec<(QualifiedName, u32)> = tables.iter().map(|m| (m.1.clone(), m.2)).collect();
    let decl: Vec<bool> = tables
        .iter()
        .map(|m| !declared(&cfg.partitions, m).is_empty())
        .collect();
    let current = match catalog::read(&main, &names, &decl).await {
        Ok(c) => c,
        Err(e) => return all_failed(&e),
    };
    let mut out = Vec::new();
    for (m, t) in tables.iter().zip(current) {
        let decl = declared(&cfg.partitions, m);
        let repair = drift::plan(decl, &t);
        let mut report = TableIndexReport::new(&m.1);
        if repair.is_empty() {
            report.drift = repair.problems;
            report.notes = repair.notes;
        } else if cancel.is_cancelled() {
            report.error = Some("cancelled before its indexes were repaired".into());
        } else {
            // Index builds are DDL too: the gate is asked per table.
            match crate::partitions::gate_of(gate).await {
                Ok(None) => locked_repair(cfg, &main, m, decl, cancel, &mut report).await,
                Ok(Some(wait)) => report.skipped = Some(wait),
                Err(e) => report.error = Some(format!("cannot run index DDL: {e}")),
            }
        }
        out.push(report);
    }
    out
}

async fn locked_repair(
    cfg: &Cluster,
    main: &Client,
    m: &Managed,
    decl: &[IndexSpec],
    cancel: &CancellationToken,
    report: &mut TableIndexReport,
) {
    let key = m.2 as i32;
    match main
        .query_one(sql::TRY_TABLE_LOCK, &[&ADVISORY_NAMESPACE, &key])
        .await
    {
        Ok(r) if r.get::<_, bool>(0) => {}
        Ok(_) => {
            report.skipped = Some("another pass holds this table's advisory lock".into());
            return;
        }
        Err(e) => {
            report.add_error(&IndexError::query("take the table's advisory lock", e));
            return;
        }
    }
    repair_table(cfg, main, &m.1, m.2, decl, None, cancel, report).await;
    if let Err(e) = main
        .query_one(sql::UNLOCK_TABLE, &[&ADVISORY_NAMESPACE, &key])
        .await
    {
        tracing::warn!(table = %m.1, error = %server_message(&e), "advisory unlock failed");
    }
}

/// Re-reads one table (the caller holds whatever excludes other builders),
/// repairs it, and records what is still wrong. `only` limits the work to one
/// parent index.
#[allow(clippy::too_many_arguments)]
async fn repair_table(
    cfg: &Cluster,
    main: &Client,
    table: &QualifiedName,
    oid: u32,
    decl: &[IndexSpec],
    only: Option<&str>,
    cancel: &CancellationToken,
    report: &mut TableIndexReport,
) {
    let log = Log::default();
    let main_s = Session::new(main, &cfg.partitions).await;
    let read_plan = || async {
        let t = catalog::read(main, &[(table.clone(), oid)], &[true]).await?;
        let t = t
            .into_iter()
            .next()
            .ok_or_else(|| IndexError::Conflict(format!("{table} vanished from the catalog")))?;
        let mut r = drift::plan(decl, &t);
        if let Some(name) = only {
            r.create.retain(|c| c.0 == name);
            r.jobs.retain(|j| j.index == name);
            r.problems.retain(|p| problem_index(p) == name);
        }
        Ok::<_, IndexError>(r)
    };
    let mut repair = match read_plan().await {
        Ok(r) => r,
        Err(e) => return report.add_error(&e),
    };
    let mut failed: Vec<String> = Vec::new();
    if !repair.create.is_empty() {
        for (name, def) in &repair.create {
            let sql = def.create_sql(name, table, true, false);
            if let Err(e) = build::run_sql(&main_s, &sql, Some(cancel), &log).await {
                report.add_error(&e);
                failed.push(name.clone());
            } else {
                tracing::info!(table = %table, index = %name, "parent index created ON ONLY");
            }
        }
        // Built from the catalog from now on: partitions that already have
        // a matching index get it attached instead of a second build.
        repair = match read_plan().await {
            Ok(r) => r,
            Err(e) => return report.add_error(&e),
        };
    }
    for (part, ix) in &repair.drop {
        if build::drop_invalid_leftover(&main_s, part, ix, &log).await {
            report.dropped += 1;
        }
    }
    let jobs: Vec<drift::Job> = repair
        .jobs
        .into_iter()
        .filter(|j| !failed.contains(&j.index))
        .collect();
    if !jobs.is_empty() && !cancel.is_cancelled() {
        build_jobs(cfg, main, &main_s, table, decl, jobs, cancel, &log, report).await;
    }
    report.statements = log.take();
    match read_plan().await {
        Ok(after) => {
            report.drift = after.problems;
            report.notes = after.notes;
        }
        Err(e) => report.add_error(&e),
    }
}

fn problem_index(p: &Problem) -> &str {
    match p {
        Problem::DeclaredMissing { index }
        | Problem::ParentInvalid { index, .. }
        | Problem::PartitionMissing { index, .. }
        | Problem::PartitionInvalid { index, .. }
        | Problem::PartitionUnattached { index, .. }
        | Problem::NotRepairable { index, .. } => index,
    }
}

/// Opens the build sessions and runs the jobs, one parent index at a time.
#[allow(clippy::too_many_arguments)]
async fn build_jobs(
    cfg: &Cluster,
    main: &Client,
    main_s: &Session<'_>,
    table: &QualifiedName,
    decl: &[IndexSpec],
    jobs: Vec<drift::Job>,
    cancel: &CancellationToken,
    log: &Log,
    report: &mut TableIndexReport,
) {
    let mut groups: Vec<(String, Vec<drift::Job>)> = Vec::new();
    for j in jobs {
        match groups.iter_mut().find(|g| g.0 == j.index) {
            Some(g) => g.1.push(j),
            None => groups.push((j.index.clone(), vec![j])),
        }
    }
    let widest = groups.iter().map(|g| g.1.len()).max().unwrap_or(0);
    let want = widest.min(cfg.partitions.index_parallelism.max(1) as usize);
    let mut clients = Vec::new();
    for _ in 0..want {
        match super::connect(cfg).await {
            Ok(c) => clients.push(c),
            Err(e) if clients.is_empty() => return report.add_error(&IndexError::Connect(e)),
            Err(e) => {
                tracing::warn!(error = %e, sessions = clients.len(), "fewer index build sessions than configured");
                break;
            }
        }
    }
    let mut sessions = Vec::new();
    for c in &clients {
        sessions.push(Session::new(c, &cfg.partitions).await);
    }
    for (index, jobs) in groups {
        if cancel.is_cancelled() {
            report.add_error(&IndexError::Cancelled);
            break;
        }
        tracing::info!(table = %table, index = %index, partitions = jobs.len(), sessions = sessions.len(), "building partition indexes online");
        let done = build::run_jobs(&sessions, main, table, jobs, cancel, log).await;
        report.built += done.built;
        report.attached += done.attached;
        report.reindexed += done.reindexed;
        let duplicate = done
            .errors
            .iter()
            .any(|e| matches!(e, IndexError::Duplicate { .. }));
        for e in &done.errors {
            tracing::warn!(table = %table, index = %index, error = %e, "partition index not completed; retried next pass");
            report.add_error(e);
        }
        if duplicate && decl.iter().any(|d| d.name == index) {
            build::drop_parent(main_s, &QualifiedName::new(&table.schema, &index), log).await;
        }
    }
}

/// Builds the declared index `spec` on the partitioned table `parent` online
/// (see the module doc), or finishes it when an earlier build was
/// interrupted; returns what was done and what is still wrong with that
/// index. `main` is a session from `partitions::connect` that stays idle
/// except for catalog reads and progress queries; build sessions are opened
/// per `partitions.index_parallelism`. The caller excludes other builders of
/// the same table (the pass holds the table's advisory lock).
pub async fn build_online(
    cfg: &Cluster,
    main: &Client,
    parent: &QualifiedName,
    spec: &IndexSpec,
    cancel: &CancellationToken,
) -> Result<TableIndexReport, IndexError> {
    let row = main
        .query_one(sql::RELATION_OID, &[&parent.quoted()])
        .await
        .map_err(|e| IndexError::query("look up the table", e))?;
    let oid: Option<i64> = row.get(0);
    let oid = oid.ok_or_else(|| IndexError::Conflict(format!("table {parent} does not exist")))?;
    let mut report = TableIndexReport::new(parent);
    repair_table(
        cfg,
        main,
        parent,
        oid as u32,
        std::slice::from_ref(spec),
        Some(&spec.name),
        cancel,
        &mut report,
    )
    .await;
    Ok(report)
}

/// One table's indexes as `partitions status` and `plan` show them.
#[derive(Debug, Clone, Serialize)]
pub struct TableIndexStatus {
    pub table: QualifiedName,
    pub indexes: Vec<IndexSummary>,
    pub drift: Vec<Problem>,
    pub notes: Vec<String>,
    /// What `apply` would run to repair it.
    pub sql: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IndexSummary {
    pub name: String,
    pub valid: bool,
    pub declared: bool,
}

/// Reads and compares every managed table's indexes, changing nothing.
pub async fn inspect(
    client: &Client,
    cfg: &Cluster,
    tables: &[Managed],
) -> Result<Vec<TableIndexStatus>, IndexError> {
    let names: Vec<(QualifiedName, u32)> = tables.iter().map(|m| (m.1.clone(), m.2)).collect();
    let decl: Vec<bool> = tables
        .iter()
        .map(|m| !declared(&cfg.partitions, m).is_empty())
        .collect();
    let current = catalog::read(client, &names, &decl).await?;
    Ok(tables
        .iter()
        .zip(current)
        .map(|(m, t)| {
            let decl = declared(&cfg.partitions, m);
            let r = drift::plan(decl, &t);
            let mut indexes: Vec<IndexSummary> = t
                .parent
                .iter()
                .map(|p| IndexSummary {
                    name: p.name.clone(),
                    valid: p.valid,
                    declared: decl.iter().any(|d| d.name == p.name),
                })
                .collect();
            indexes.extend(
                decl.iter()
                    .filter(|d| !t.parent.iter().any(|p| p.name == d.name))
                    .map(|d| IndexSummary {
                        name: d.name.clone(),
                        valid: false,
                        declared: true,
                    }),
            );
            TableIndexStatus {
                table: m.1.clone(),
                sql: drift::sql(&m.1, &r),
                indexes,
                drift: r.problems,
                notes: r.notes,
            }
        })
        .collect())
}

/// Text lines for `partitions status`: one per problem, then notes.
pub fn status_text(tables: &[TableIndexStatus]) -> String {
    let mut s = String::new();
    for t in tables {
        if t.indexes.is_empty() && t.drift.is_empty() && t.notes.is_empty() {
            continue;
        }
        let valid = t.indexes.iter().filter(|i| i.valid).count();
        s.push_str(&format!(
            "{}: indexes {valid}/{} valid{}\n",
            t.table,
            t.indexes.len(),
            if t.drift.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} problems (run `pgsteward partitions apply`)",
                    t.drift.len()
                )
            }
        ));
        for p in &t.drift {
            s.push_str(&format!("{}: index drift: {}\n", t.table, p.text()));
        }
        for n in &t.notes {
            s.push_str(&format!("{}: index note: {n}\n", t.table));
        }
    }
    s
}

/// Text lines for `partitions apply`: statements, then one summary per
/// table that has indexes to speak of.
pub fn apply_text(reports: &[TableIndexReport]) -> String {
    let mut s = String::new();
    for r in reports {
        for stmt in &r.statements {
            s.push_str(&format!("{}: {stmt}\n", r.table));
        }
        let quiet = r.built == 0
            && r.attached == 0
            && r.reindexed == 0
            && r.dropped == 0
            && r.drift.is_empty()
            && r.error.is_none()
            && r.skipped.is_none();
        if quiet {
            continue;
        }
        let state = match (&r.error, &r.skipped, r.drift.is_empty()) {
            (Some(e), _, _) => format!("error: {e}"),
            (None, Some(why), _) => format!("skipped: {why}"),
            (None, None, false) => format!("{} index problems left", r.drift.len()),
            (None, None, true) => "indexes complete".into(),
        };
        s.push_str(&format!(
            "{}: indexes: built {}, attached {}, reindexed {}, dropped {} invalid: {state}\n",
            r.table, r.built, r.attached, r.reindexed, r.dropped
        ));
        for p in &r.drift {
            s.push_str(&format!("{}: index drift: {}\n", r.table, p.text()));
        }
        for n in &r.notes {
            s.push_str(&format!("{}: index note: {n}\n", r.table));
        }
    }
    s
}
