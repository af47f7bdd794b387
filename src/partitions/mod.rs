//! Partition maintenance: `catalog` reads every managed table in one query,
//! `plan` decides (pure), `apply` executes lock-safe DDL. This file holds the
//! pass, the three commands and the session every pass talks through.

pub mod apply;
pub mod catalog;
pub mod plan;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::cli::OutputFormat;
use crate::config::{Config, TableConfig};
use crate::pg::{server_message, QualifiedName};
use crate::Outcome;

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    #[error("cannot {what}: {message}")]
    Query { what: &'static str, message: String },
    #[error("cancelled")]
    Cancelled,
}

impl PartitionError {
    pub(crate) fn query(what: &'static str, e: tokio_postgres::Error) -> Self {
        PartitionError::Query {
            what,
            message: server_message(&e),
        }
    }
}

/// What one maintenance pass did, per managed table. The service turns it
/// into metrics; `partitions apply` prints it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PassReport {
    /// Set when the pass did nothing on purpose (server in recovery, another pass holds the lock).
    pub skipped: Option<String>,
    pub tables: Vec<TableReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: QualifiedName,
    /// Whole periods covered by partitions after the current one.
    pub future_partitions: u32,
    /// Rows in the DEFAULT partition after the pass (0 when there is none).
    pub default_rows: u64,
    pub created: u32,
    pub retired: u32,
    pub rows_moved: u64,
    /// Why the table could not be brought up to date; it is retried next pass.
    pub error: Option<String>,
    /// Set when the table was left alone on purpose (another pass holds its lock).
    pub skipped: Option<String>,
    /// Partitions reported but not touched (off the grid, overlapping, FK-referenced) and warnings.
    pub notes: Vec<String>,
    /// The DDL this pass ran for the table, in order.
    pub statements: Vec<String>,
}

impl TableReport {
    pub fn new(table: &QualifiedName) -> TableReport {
        TableReport {
            table: table.clone(),
            future_partitions: 0,
            default_rows: 0,
            created: 0,
            retired: 0,
            rows_moved: 0,
            error: None,
            skipped: None,
            notes: Vec::new(),
            statements: Vec::new(),
        }
    }
}

impl PassReport {
    pub fn outcome(&self) -> Outcome {
        if self.tables.iter().any(|t| t.error.is_some()) {
            Outcome::Problem
        } else {
            Outcome::Healthy
        }
    }
}

/// Namespace of the per-table advisory locks (`pg_try_advisory_lock(NS, oid)`):
/// "pgst". The two-int form never collides with the service's one-bigint leader lock.
pub const ADVISORY_NAMESPACE: i32 = 0x7067_7374;

const RECOVERY_SKIP: &str =
    "the server is in recovery (a replica): partition DDL runs on the primary only";

/// Opens a session for maintenance. Settings ride in the startup packet (no
/// extra round trip): `lock_timeout` bounds every statement's lock wait, and
/// UTC/ISO make `pg_get_expr` print bounds the way `plan::parse_bound` reads them.
pub async fn connect(cfg: &Config) -> Result<Client, PartitionError> {
    let spec = cfg.database.primary.spec()?;
    let timeout = cfg.database.connect_timeout.0;
    let mut config = spec.config.clone();
    let mut options = config.get_options().unwrap_or_default().to_string();
    options.push_str(&format!(
        " -c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c standard_conforming_strings=on \
         -c statement_timeout=0 -c work_mem=64MB -c lock_timeout={}ms",
        cfg.partitions.lock_timeout.0.as_millis().max(1)
    ));
    config.options(options.trim());
    // TLS (sslmode, sslrootcert), IAM tokens and server notices as debug logs:
    // all in ConnSpec.
    Ok(spec.connect_with(config, timeout).await?)
}

/// One maintenance pass over every managed table. Cancelling stops before the
/// next DDL statement; a statement in flight finishes or is cancelled cleanly.
pub async fn run_pass(
    cfg: &Config,
    cancel: &CancellationToken,
) -> Result<PassReport, PartitionError> {
    run_pass_at(cfg, Utc::now(), cancel).await
}

/// Connects to the primary and reads the catalog of every managed table in
/// one query: the shared start of a pass, `plan` and `status`.
async fn connect_and_read(cfg: &Config) -> Result<(Client, catalog::Catalog), PartitionError> {
    let client = connect(cfg).await?;
    let names: Vec<QualifiedName> = cfg
        .partitions
        .tables
        .iter()
        .map(|t| t.table.clone())
        .collect();
    let catalog = catalog::read(&client, &names).await?;
    Ok((client, catalog))
}

/// [`run_pass`] with the clock given: periods and retention are computed from `now`.
pub async fn run_pass_at(
    cfg: &Config,
    now: DateTime<Utc>,
    cancel: &CancellationToken,
) -> Result<PassReport, PartitionError> {
    let (client, catalog) = connect_and_read(cfg).await?;
    // The upgrade guard, read from the database (every caller gets it).
    if let Some(skip) = crate::upgrade::guard::hold_partition_ddl(&client, cfg)
        .await
        .map_err(|message| PartitionError::Query {
            what: "run partition DDL",
            message,
        })?
    {
        return Ok(PassReport {
            skipped: Some(skip),
            tables: Vec::new(),
        });
    }
    if catalog.in_recovery {
        tracing::info!(reason = RECOVERY_SKIP, "partition pass skipped");
        return Ok(PassReport {
            skipped: Some(RECOVERY_SKIP.into()),
            tables: Vec::new(),
        });
    }
    let mut reports: Vec<Option<TableReport>> = vec![None; cfg.partitions.tables.len()];
    let mut work = Vec::new();
    for (i, (tcfg, (name, lookup))) in cfg.partitions.tables.iter().zip(catalog.tables).enumerate()
    {
        match lookup {
            Err(msg) => {
                tracing::warn!(table = %name, error = %msg, "table cannot be maintained");
                let mut r = TableReport::new(&name);
                r.error = Some(msg);
                reports[i] = Some(r);
            }
            Ok(state) => {
                let p = plan::plan(tcfg, &state, now);
                if p.actions.is_empty() {
                    reports[i] = Some(unchanged_report(tcfg, &state, &p, now));
                } else {
                    work.push(apply::Work {
                        index: i,
                        cfg: tcfg.clone(),
                        table: state.table.clone(),
                        oid: state.oid,
                    });
                }
            }
        }
    }
    if !work.is_empty() {
        let done = apply::execute(cfg, client, &catalog.current_user, work, now, cancel).await;
        for (i, r) in done {
            reports[i] = Some(r);
        }
    }
    if cancel.is_cancelled() {
        return Err(PartitionError::Cancelled);
    }
    let tables: Vec<TableReport> = reports.into_iter().flatten().collect();
    Ok(PassReport {
        skipped: None,
        tables,
    })
}

fn unchanged_report(
    tcfg: &TableConfig,
    state: &plan::TableState,
    p: &plan::TablePlan,
    now: DateTime<Utc>,
) -> TableReport {
    let mut r = TableReport::new(&state.table);
    r.future_partitions = coverage_of(tcfg, state, &[], now).periods_ahead;
    r.default_rows = state.default.as_ref().map_or(0, |d| d.rows_estimate);
    r.notes = p.notes.iter().map(note_text).collect();
    r
}

pub(crate) fn note_text(n: &plan::Note) -> String {
    if n.partition.is_empty() {
        n.message.clone()
    } else {
        format!("{}: {}", n.partition, n.message)
    }
}

pub(crate) fn coverage_of(
    tcfg: &TableConfig,
    state: &plan::TableState,
    extra: &[plan::Range],
    now: DateTime<Utc>,
) -> plan::Coverage {
    let ranges: Vec<plan::Range> = state
        .partitions
        .iter()
        .filter(|p| !p.detach_pending)
        .filter_map(|p| p.range)
        .chain(extra.iter().copied())
        .collect();
    plan::coverage(tcfg.interval, state.key_type, tcfg.timezone, &ranges, now)
}

// ---------------------------------------------------------------------------
// Commands

#[derive(Serialize)]
struct PlanOutput {
    skipped: Option<String>,
    tables: Vec<TablePlanOutput>,
}

#[derive(Serialize)]
struct TablePlanOutput {
    table: QualifiedName,
    actions: Vec<ActionOutput>,
    notes: Vec<plan::Note>,
    error: Option<String>,
}

#[derive(Serialize)]
struct ActionOutput {
    #[serde(flatten)]
    action: plan::Action,
    sql: Vec<String>,
}

/// `partitions plan`: the DDL the next pass would run, changing nothing.
pub async fn plan_command(cfg: &Config, output: OutputFormat) -> Result<Outcome, PartitionError> {
    let (_client, catalog) = connect_and_read(cfg).await?;
    let now = Utc::now();
    let mut out = PlanOutput {
        skipped: catalog.in_recovery.then(|| RECOVERY_SKIP.to_string()),
        tables: Vec::new(),
    };
    let mut outcome = Outcome::Healthy;
    if !catalog.in_recovery {
        for (tcfg, (name, lookup)) in cfg.partitions.tables.iter().zip(catalog.tables) {
            match lookup {
                Err(msg) => {
                    outcome = Outcome::Problem;
                    out.tables.push(TablePlanOutput {
                        table: name,
                        actions: vec![],
                        notes: vec![],
                        error: Some(msg),
                    });
                }
                Ok(state) => {
                    let p = plan::plan(tcfg, &state, now);
                    let actions = p
                        .actions
                        .iter()
                        .map(|a| ActionOutput {
                            action: a.clone(),
                            sql: plan::action_sql(&state, tcfg.timezone, a),
                        })
                        .collect();
                    out.tables.push(TablePlanOutput {
                        table: name,
                        actions,
                        notes: p.notes,
                        error: None,
                    });
                }
            }
        }
    }
    match output {
        OutputFormat::Json => crate::output::print_json(&out),
        OutputFormat::Text => print!("{}", plan_text(&out)),
    }
    Ok(outcome)
}

fn plan_text(out: &PlanOutput) -> String {
    let mut s = String::new();
    if let Some(why) = &out.skipped {
        s.push_str(&format!("-- skipped: {why}\n"));
    }
    for t in &out.tables {
        if let Some(e) = &t.error {
            s.push_str(&format!("-- {}: error: {e}\n", t.table));
            continue;
        }
        if t.actions.is_empty() {
            s.push_str(&format!("-- {}: nothing to do\n", t.table));
        }
        for a in &t.actions {
            let what = match &a.action {
                plan::Action::Create {
                    partition, reason, ..
                } => format!("create {partition} ({reason:?})").to_lowercase(),
                plan::Action::Retire {
                    partition,
                    how,
                    drop,
                    reason,
                } => format!(
                    "retire {partition}: detach {how:?}{}; {reason}",
                    if *drop { " and drop" } else { "" }
                )
                .to_lowercase(),
                plan::Action::DropDefaultCheck { constraint } => {
                    format!("drop leftover check {constraint} on the default partition")
                }
            };
            s.push_str(&format!("-- {}: {what}\n", t.table));
            for stmt in &a.sql {
                if stmt.starts_with("--") {
                    s.push_str(&format!("{stmt}\n"));
                } else {
                    s.push_str(&format!("{stmt};\n"));
                }
            }
        }
        for n in &t.notes {
            s.push_str(&format!("-- {}: note: {}\n", t.table, note_text(n)));
        }
    }
    s
}

/// `partitions apply`: one maintenance pass; Ctrl-C stops before the next statement.
pub async fn apply_command(cfg: &Config, output: OutputFormat) -> Result<Outcome, PartitionError> {
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    let signal = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    let report = run_pass(cfg, &cancel).await;
    signal.abort();
    let report = report?;
    match output {
        OutputFormat::Json => crate::output::print_json(&report),
        OutputFormat::Text => print!("{}", apply_text(&report)),
    }
    Ok(report.outcome())
}

fn apply_text(r: &PassReport) -> String {
    let mut s = String::new();
    if let Some(why) = &r.skipped {
        s.push_str(&format!("skipped: {why}\n"));
    }
    for t in &r.tables {
        for stmt in &t.statements {
            s.push_str(&format!("{}: {stmt}\n", t.table));
        }
        let state = match (&t.error, &t.skipped) {
            (Some(e), _) => format!("error: {e}"),
            (None, Some(why)) => format!("skipped: {why}"),
            (None, None) => "ok".into(),
        };
        s.push_str(&format!(
            "{}: created {}, retired {}, moved {} rows from default, {} periods ahead, {} rows in default: {state}\n",
            t.table, t.created, t.retired, t.rows_moved, t.future_partitions, t.default_rows
        ));
        for n in &t.notes {
            s.push_str(&format!("{}: note: {n}\n", t.table));
        }
    }
    s
}

#[derive(Serialize)]
struct StatusOutput {
    skipped: Option<String>,
    tables: Vec<TableStatus>,
}

#[derive(Serialize)]
struct TableStatus {
    table: QualifiedName,
    interval: crate::config::Interval,
    #[serde(flatten)]
    coverage: Option<plan::Coverage>,
    default_partition: Option<String>,
    default_rows: Option<u64>,
    notes: Vec<String>,
    error: Option<String>,
}

/// `partitions status`: per table, partitions, covered range, coverage ahead,
/// gaps and rows in DEFAULT (counted exactly, in one query for all tables).
pub async fn status_command(cfg: &Config, output: OutputFormat) -> Result<Outcome, PartitionError> {
    let (client, catalog) = connect_and_read(cfg).await?;
    let now = Utc::now();
    let mut outcome = Outcome::Healthy;
    let mut tables = Vec::new();
    let mut defaults = Vec::new();
    for (tcfg, (name, lookup)) in cfg.partitions.tables.iter().zip(catalog.tables) {
        match lookup {
            Err(msg) => {
                outcome = Outcome::Problem;
                tables.push(TableStatus {
                    table: name,
                    interval: tcfg.interval,
                    coverage: None,
                    default_partition: None,
                    default_rows: None,
                    notes: vec![],
                    error: Some(msg),
                });
            }
            Ok(state) => {
                let p = plan::plan(tcfg, &state, now);
                let cov = coverage_of(tcfg, &state, &[], now);
                if cov.periods_ahead < tcfg.premake {
                    outcome = Outcome::Problem;
                }
                if let Some(d) = &state.default {
                    defaults.push((tables.len(), d.name.clone()));
                }
                tables.push(TableStatus {
                    table: name,
                    interval: tcfg.interval,
                    coverage: Some(cov),
                    default_partition: state.default.as_ref().map(|d| d.name.to_string()),
                    default_rows: state.default.as_ref().map(|d| d.rows_estimate),
                    notes: p.notes.iter().map(note_text).collect(),
                    error: None,
                });
            }
        }
    }
    if !defaults.is_empty() {
        let sql = defaults
            .iter()
            .map(|(i, d)| format!("SELECT {i}::int8, count(*)::int8 FROM {}", d.quoted()))
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        match client.query(&sql, &[]).await {
            Ok(rows) => {
                for row in rows {
                    let i: i64 = row.get(0);
                    let n: i64 = row.get(1);
                    if let Some(t) = tables.get_mut(i as usize) {
                        t.default_rows = Some(n.max(0) as u64);
                    }
                }
            }
            // Counting needs ACCESS SHARE on every DEFAULT: under lock_timeout
            // a busy one leaves the planner's estimate in place.
            Err(e) => {
                tracing::warn!(error = %server_message(&e), "default partitions not counted; showing estimates")
            }
        }
    }
    let out = StatusOutput {
        skipped: catalog.in_recovery.then(|| RECOVERY_SKIP.to_string()),
        tables,
    };
    match output {
        OutputFormat::Json => crate::output::print_json(&out),
        OutputFormat::Text => {
            if let Some(why) = &out.skipped {
                println!("note: {why}");
            }
            let rows: Vec<Vec<String>> = out
                .tables
                .iter()
                .map(|t| {
                    let c = t.coverage.as_ref();
                    vec![
                        t.table.to_string(),
                        format!("{:?}", t.interval).to_lowercase(),
                        c.map_or("-".into(), |c| c.partitions.to_string()),
                        c.map_or("-".into(), |c| {
                            format!(
                                "{} .. {}",
                                c.covered_from.as_deref().unwrap_or("-"),
                                c.covered_to.as_deref().unwrap_or("-")
                            )
                        }),
                        c.map_or("-".into(), |c| c.periods_ahead.to_string()),
                        c.map_or("-".into(), |c| {
                            if c.gaps.is_empty() {
                                "none".into()
                            } else {
                                c.gaps.join(", ")
                            }
                        }),
                        t.default_rows
                            .map_or("no default".into(), |n| n.to_string()),
                        t.error.clone().unwrap_or_else(|| t.notes.join("; ")),
                    ]
                })
                .collect();
            print!(
                "{}",
                crate::output::table(
                    &[
                        "TABLE",
                        "INTERVAL",
                        "PARTITIONS",
                        "COVERED",
                        "AHEAD",
                        "GAPS",
                        "DEFAULT ROWS",
                        "NOTES"
                    ],
                    &rows
                )
            );
        }
    }
    Ok(outcome)
}

/// How long to wait before retry `attempt` (1-based) of a statement that lost
/// a lock race: exponential from 50 ms, capped at 2 s, with up to 50 % jitter
/// so competing passes do not retry in lockstep.
pub fn backoff(attempt: u32) -> Duration {
    let base = 50u64.saturating_mul(1 << attempt.min(6)).min(2000);
    Duration::from_millis(base + fastrand::u64(0..=base / 2))
}
