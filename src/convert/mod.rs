//! Online conversion of a plain table into a partitioned one, without copying
//! rows: `pgsteward convert plan|start|status|resume|abort --table T`.
//!
//! The table becomes the first partition (FROM MINVALUE TO a coming period
//! boundary) of a new parent that takes its name; a CHECK validated
//! beforehand (without blocking writes) lets ATTACH skip the scan; keys that
//! must include the partition key get their unique index built concurrently
//! first. Everything else is carried over in one short swap transaction.
//!
//! * `inspect`: one catalog read of the table (JSON), used by `plan` and under the swap's locks.
//! * `plan`: pure: boundary, names, changes, refusals.
//! * `refuse`: pure: what cannot be carried, with the fix.
//! * `ddl`: pure: the statements of each step, the swap's in order (tests in `ddl_tests.rs`).
//! * `journal`: `pgsteward.conversions`, written in the same transaction as each step's DDL.
//! * `sql`: the static queries, named for what they return.
//! * `table`: the conversion as a saga of the core (`crate::saga`): one row per step, its
//!   journal's store; the runner, the failpoints and the unwinding are the core's.
//! * `steps`: the observe-then-act bodies of the steps and their undos.
//! * `index`: the concurrent unique index builds, through the shared `partitions::indexes` builder.

pub mod ddl;
pub mod index;
pub mod inspect;
pub mod journal;
pub mod plan;
pub mod refuse;
pub mod sql;
pub mod steps;
pub mod table;

use chrono::Utc;
use serde::Serialize;
use tokio_postgres::Client;

use crate::cli::OutputFormat;
use crate::config::{Cluster, TableConfig};
use crate::outcome::Outcome;
use crate::pg::{server_message, QualifiedName};
use crate::saga;
use journal::Step;
use steps::Conversion;
use table::TABLE;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    #[error(transparent)]
    Schema(#[from] crate::schema::SchemaError),
    #[error(transparent)]
    Partitions(#[from] crate::partitions::PartitionError),
    #[error(transparent)]
    Index(#[from] crate::partitions::indexes::IndexError),
    #[error("cannot {what}: {message}")]
    Query { what: &'static str, message: String },
    #[error("{message} [{statement}]")]
    Sql { statement: String, message: String },
    #[error("unexpected catalog data: {0}")]
    Catalog(String),
    #[error("{0} has no [[partitions.tables]] entry; add one (interval, premake, retention, timezone) for what it becomes")]
    NotConfigured(String),
    #[error("table {0} does not exist")]
    NoTable(String),
    #[error("{table} cannot be converted:\n  {}", reasons.join("\n  "))]
    Refused { table: String, reasons: Vec<String> },
    #[error("another pgsteward is converting {table} ({holder}); wait for it or stop it")]
    Busy { table: String, holder: String },
    #[error("a conversion of {table} is in flight (last step: {step}); run `pgsteward convert resume --table {table}` or `abort`")]
    InFlight { table: String, step: String },
    #[error("no conversion of {0} is in flight")]
    NoConversion(String),
    #[error("the conversion of {table} has passed the swap (the point of no return); run `pgsteward convert resume --table {table}` to finish it")]
    PastSwap { table: String },
    #[error("the boundary {boundary} is too close for the swap; the conversion was undone, start it again to pick a later boundary")]
    BoundaryTooClose { boundary: String },
    #[error("some rows have {key} NULL or at/after {boundary}: they cannot go in the first partition; the conversion was undone: fix or move those rows and start again")]
    RowsOutside { key: String, boundary: String },
    #[error("step {step}: {message}")]
    Step { step: &'static str, message: String },
    #[error(transparent)]
    Failpoint(#[from] crate::failpoint::FailpointError),
    #[error("the conversion of {0} stopped on a signal at a safe point; `pgsteward convert resume --table {0}` continues it (or `abort` undoes it before the swap)")]
    Cancelled(String),
}

impl ConvertError {
    /// The failure kind for metrics: one per subsystem.
    pub fn metric_label(&self) -> crate::outcome::ErrorLabel {
        crate::outcome::ErrorLabel::Convert
    }
}

impl ConvertError {
    pub(crate) fn query(what: &'static str, e: tokio_postgres::Error) -> Self {
        ConvertError::Query {
            what,
            message: server_message(&e),
        }
    }
    pub fn is_usage(&self) -> bool {
        matches!(self, ConvertError::NotConfigured(_))
    }
}

/// Namespace of the per-table conversion lock: "pgcv" (the partition pass uses "pgst").
pub const ADVISORY_NAMESPACE: i32 = 0x7067_6376;
/// A session for conversion: the partition session's settings (lock_timeout,
/// UTC, ISO) plus an empty search_path, so every definition the catalog
/// prints is schema-qualified and every name we write is resolved exactly.
pub async fn connect(cfg: &Cluster) -> Result<Client, ConvertError> {
    let client = crate::partitions::connect(cfg).await?;
    client
        .batch_execute(sql::SESSION_SETTINGS)
        .await
        .map_err(|e| ConvertError::query("set up the session", e))?;
    Ok(client)
}

fn table_config<'a>(
    cfg: &'a Cluster,
    table: &QualifiedName,
) -> Result<&'a TableConfig, ConvertError> {
    cfg.partitions
        .tables
        .iter()
        .find(|t| &t.table == table)
        .ok_or_else(|| ConvertError::NotConfigured(table.to_string()))
}

/// Takes the table's conversion lock for this session (held until it ends),
/// or names the session holding it.
async fn lock(client: &Client, table: &QualifiedName) -> Result<(), ConvertError> {
    let key = table.to_string();
    let got: bool = client
        .query_one(sql::LOCK_TAKEN, &[&ADVISORY_NAMESPACE, &key])
        .await
        .map_err(|e| ConvertError::query("take the conversion lock", e))?
        .get(0);
    if got {
        return Ok(());
    }
    let holder = match client
        .query_opt(sql::LOCK_HOLDER, &[&ADVISORY_NAMESPACE, &key])
        .await
    {
        Ok(Some(r)) => format!(
            "backend pid {} from {} ({}), connected since {}",
            r.get::<_, i32>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, String>(3)
        ),
        _ => "a session holding its advisory lock".into(),
    };
    Err(ConvertError::Busy { table: key, holder })
}

#[derive(Serialize)]
struct PlanOutput {
    table: String,
    plan: Option<plan::ConvertPlan>,
    refusals: Vec<plan::Refusal>,
    steps: Vec<StepOutput>,
}

#[derive(Serialize)]
struct StepOutput {
    step: Step,
    what: String,
    sql: Vec<String>,
}

/// Reads the table and builds the plan, with every refusal (names taken,
/// rows past the boundary included).
async fn make_plan(
    client: &Client,
    tcfg: &TableConfig,
    key: Option<&str>,
) -> Result<(plan::ConvertPlan, inspect::TableInfo, Vec<plan::Refusal>), ConvertError> {
    let table = &tcfg.table;
    // The key is needed only for `key_indexed`: read once to pick it.
    let probe = inspect::read(client, table, key.unwrap_or(""))
        .await?
        .ok_or_else(|| ConvertError::NoTable(table.to_string()))?;
    let (key, kt) = match plan::pick_key(&probe, key) {
        Ok(k) => k,
        Err(r) => {
            return Ok((
                plan::build(
                    tcfg,
                    &probe,
                    "",
                    crate::partitions::model::KeyType::Timestamptz,
                    Utc::now(),
                )
                .0,
                probe,
                vec![r],
            ))
        }
    };
    let info = inspect::read(client, table, &key)
        .await?
        .ok_or_else(|| ConvertError::NoTable(table.to_string()))?;
    let (p, mut refusals) = plan::build(tcfg, &info, &key, kt, Utc::now());
    let mut names = vec![p.first_partition.clone(), p.default_partition()];
    names.extend(info.indexes.iter().map(|i| p.child_index_name(&i.name)));
    for b in &p.unique_builds {
        names.push(p.child_index_name(&b.replaces));
    }
    let taken = inspect::taken(client, &p.schema, &names).await?;
    let ours: Vec<&str> = p.unique_builds.iter().map(|b| b.index.as_str()).collect();
    for t in taken.iter().filter(|t| !ours.contains(&t.as_str())) {
        refusals.push(plan::Refusal {
            reason: format!("the name {t} that the conversion needs is taken"),
            fix: "rename or drop that relation".into(),
        });
    }
    if info.key_indexed && refusals.is_empty() {
        let q = ddl::rows_outside_probe(&p);
        let n: i64 = client
            .query_one(&q, &[])
            .await
            .map_err(|e| ConvertError::query("look for rows past the boundary", e))?
            .get(0);
        if n > 0 {
            refusals.push(plan::Refusal {
                reason: format!("rows with {key} NULL or at or after the boundary {} exist", p.boundary_text),
                fix: "they could not stay in the first partition: move or delete them, or convert by hand".into(),
            });
        }
    }
    Ok((p, info, refusals))
}

fn steps_of(p: &plan::ConvertPlan, info: &inspect::TableInfo) -> Vec<StepOutput> {
    let idx: Vec<String> = p
        .unique_builds
        .iter()
        .map(|b| index::unique_def(&b.columns).create_sql(&b.index, &p.name(), false, true))
        .collect();
    let seqs: Vec<ddl::SequenceState> = Vec::new();
    let mut swap = vec![format!(
        "{} -- views first, then the table; lock_timeout, retried",
        ddl::swap_lock(p, info)
    )];
    swap.extend(ddl::swap(p, info, &seqs));
    if info.columns.iter().any(|c| c.sequence.is_some()) {
        swap.push("-- identity/serial sequences: recreated or re-owned with the value read under the lock".into());
    }
    TABLE
        .iter()
        .map(|row| StepOutput {
            step: row.step,
            what: row.does.into(),
            sql: match row.step {
                Step::Prepared | Step::PartitionsMade => vec![],
                Step::UniqueIndexes => idx.clone(),
                Step::CheckAdded => vec![ddl::add_check(p)],
                Step::CheckValidated => vec![ddl::validate_check(p)],
                Step::Swapped => swap.clone(),
            },
        })
        .collect()
}

/// `convert plan`: what would change, the steps and their SQL, or why not.
pub async fn plan_command(
    cfg: &Cluster,
    table: &QualifiedName,
    key: Option<&str>,
    output: OutputFormat,
) -> Result<Outcome, ConvertError> {
    let tcfg = table_config(cfg, table)?;
    let client = connect(cfg).await?;
    let (p, info, mut refusals) = make_plan(&client, tcfg, key).await?;
    refusals
        .extend(journal::published(&client, &cfg.database, Some(info.server_version_num)).await?);
    let steps = if refusals.is_empty() {
        steps_of(&p, &info)
    } else {
        vec![]
    };
    let out = PlanOutput {
        table: table.to_string(),
        plan: Some(p),
        refusals,
        steps,
    };
    match output {
        OutputFormat::Json => crate::output::print_json(&out),
        OutputFormat::Text => print!("{}", plan_text(&out)),
    }
    Ok(if out.refusals.is_empty() {
        Outcome::Healthy
    } else {
        Outcome::Problem
    })
}

fn plan_text(out: &PlanOutput) -> String {
    let mut s = String::new();
    if !out.refusals.is_empty() {
        s.push_str(&format!("{}: cannot be converted\n", out.table));
        for r in &out.refusals {
            s.push_str(&format!(
                "  refused: {}\n    what to do: {}\n",
                r.reason, r.fix
            ));
        }
        return s;
    }
    let Some(p) = &out.plan else { return s };
    s.push_str(&format!(
        "{}: PARTITION BY RANGE ({}), {:?} in {}, boundary {}\n",
        out.table, p.key, p.interval, p.timezone, p.boundary_text
    ));
    s.push_str("changes:\n");
    for c in &p.changes {
        s.push_str(&format!("  - {c}\n"));
    }
    s.push_str("carried over:\n");
    for c in &p.carried {
        s.push_str(&format!("  - {c}\n"));
    }
    for n in &p.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    for (i, st) in out.steps.iter().enumerate() {
        s.push_str(&format!(
            "step {} {}: {}\n",
            i + 1,
            st.step.as_str(),
            st.what
        ));
        if st.sql.is_empty() {
            continue;
        }
        for q in &st.sql {
            s.push_str(&format!("    {q}\n"));
        }
    }
    s
}

/// `convert start`: plan, journal, drive to the end.
pub async fn start_command(
    cfg: &Cluster,
    table: &QualifiedName,
    key: Option<&str>,
) -> Result<Outcome, ConvertError> {
    let cancel = crate::pg::retry::cancel_on_signal("the conversion");
    let tcfg = table_config(cfg, table)?;
    let client = connect(cfg).await?;
    lock(&client, table).await?;
    // Before the journal's first write (the migration included).
    if let Some(r) = journal::published(&client, &cfg.database, None).await? {
        return Err(ConvertError::Refused {
            table: table.to_string(),
            reasons: vec![format!("{} ({})", r.reason, r.fix)],
        });
    }
    journal::ensure(&client, &cfg.database.primary.to_string()).await?;
    if let Some(r) = journal::latest(&client, table).await? {
        if r.state == "active" {
            return Err(ConvertError::InFlight {
                table: table.to_string(),
                step: r.step.as_str().into(),
            });
        }
    }
    let (p, _info, refusals) = make_plan(&client, tcfg, key).await?;
    if !refusals.is_empty() {
        return Err(ConvertError::Refused {
            table: table.to_string(),
            reasons: refusals
                .iter()
                .map(|r| format!("{} ({})", r.reason, r.fix))
                .collect(),
        });
    }
    let rec = journal::create(&client, &p).await?;
    tracing::info!(table = %table, boundary = %p.boundary_text, id = rec.id, "conversion started");
    let mut conv = Conversion {
        cfg: cfg.clone(),
        tcfg: tcfg.clone(),
        client,
        rec,
    };
    saga::drive(&mut conv, TABLE, &cancel).await?;
    println!(
        "{table}: converted; first partition {} holds every row before {}",
        p.first(),
        p.boundary_text
    );
    Ok(Outcome::Healthy)
}

/// The table's active conversion from its journal, with the table's lock
/// held (as `start` holds it), for `resume` and `abort`.
async fn active_conversion(
    cfg: &Cluster,
    table: &QualifiedName,
) -> Result<Conversion, ConvertError> {
    let tcfg = table_config(cfg, table)?;
    let client = connect(cfg).await?;
    lock(&client, table).await?;
    let rec = match journal::latest(&client, table).await? {
        Some(r) if r.state == "active" => r,
        _ => return Err(ConvertError::NoConversion(table.to_string())),
    };
    Ok(Conversion {
        cfg: cfg.clone(),
        tcfg: tcfg.clone(),
        client,
        rec,
    })
}

/// `convert resume`: continue the table's active conversion from its journal.
pub async fn resume_command(cfg: &Cluster, table: &QualifiedName) -> Result<Outcome, ConvertError> {
    let cancel = crate::pg::retry::cancel_on_signal("the conversion");
    let mut conv = active_conversion(cfg, table).await?;
    tracing::info!(table = %table, step = conv.rec.step.as_str(), "resuming conversion");
    saga::drive(&mut conv, TABLE, &cancel).await?;
    println!(
        "{table}: converted; first partition {}",
        conv.rec.plan.first()
    );
    Ok(Outcome::Healthy)
}

/// `convert abort`: before the swap, remove everything the conversion built.
pub async fn abort_command(cfg: &Cluster, table: &QualifiedName) -> Result<Outcome, ConvertError> {
    let cancel = crate::pg::retry::cancel_on_signal("the conversion");
    let mut conv = active_conversion(cfg, table).await?;
    saga::unwind(&mut conv, TABLE, &cancel, "aborted by the operator").await?;
    println!("{table}: conversion aborted; the table is as it was");
    Ok(Outcome::Healthy)
}

#[derive(Serialize)]
struct StatusOutput {
    table: String,
    conversion: Option<journal::Record>,
    /// The session driving it now, if any.
    driver: Option<String>,
    progress: Option<String>,
    first_partition: Option<FirstPartition>,
}

#[derive(Serialize)]
struct FirstPartition {
    name: String,
    range: String,
    bytes: i64,
}

/// `convert status`: the table's conversion step by step, who drives it,
/// live index-build progress, and afterwards the first partition's range and size.
pub async fn status_command(
    cfg: &Cluster,
    table: &QualifiedName,
    output: OutputFormat,
) -> Result<Outcome, ConvertError> {
    table_config(cfg, table)?;
    let client = connect(cfg).await?;
    let rec = journal::latest(&client, table).await?;
    let key = table.to_string();
    let holder = client
        .query_opt(sql::LOCK_HOLDER, &[&ADVISORY_NAMESPACE, &key])
        .await
        .ok()
        .flatten();
    let driver = holder.as_ref().map(|r| {
        format!(
            "backend pid {} ({})",
            r.get::<_, i32>(0),
            r.get::<_, String>(2)
        )
    });
    let progress = match &holder {
        Some(r) => index::progress_of(&client, r.get(0)).await,
        None => None,
    };
    let mut first = None;
    if let Some(r) = &rec {
        if r.step >= Step::Swapped {
            let name = r.plan.first();
            if let Ok(Some(row)) = client
                .query_opt(sql::PARTITION_BOUND_AND_SIZE, &[&name.quoted()])
                .await
            {
                first = Some(FirstPartition {
                    name: name.to_string(),
                    range: row
                        .get::<_, Option<String>>(0)
                        .unwrap_or_else(|| "detached".into()),
                    bytes: row.get(1),
                });
            }
        }
    }
    let outcome = match &rec {
        Some(r) if r.state == "active" && driver.is_none() => Outcome::Problem,
        _ => Outcome::Healthy,
    };
    let out = StatusOutput {
        table: key,
        conversion: rec,
        driver,
        progress,
        first_partition: first,
    };
    match output {
        OutputFormat::Json => crate::output::print_json(&out),
        OutputFormat::Text => print!("{}", status_text(&out)),
    }
    Ok(outcome)
}

fn status_text(out: &StatusOutput) -> String {
    let mut s = String::new();
    let Some(r) = &out.conversion else {
        return format!("{}: never converted\n", out.table);
    };
    s.push_str(&format!(
        "{}: conversion {} {} (started {}, updated {}), boundary {}, first partition {}\n",
        out.table,
        r.id,
        r.state,
        r.started_at,
        r.updated_at,
        r.plan.boundary_text,
        r.plan.first()
    ));
    for row in TABLE {
        let st = &row.step;
        let mark = if *st <= r.step {
            "done"
        } else if r.state == "active" {
            "pending"
        } else {
            "-"
        };
        let nr = if matches!(row.undo, saga::Undo::PointOfNoReturn) {
            "  (point of no return)"
        } else {
            ""
        };
        s.push_str(&format!("  {:<16} {mark}{nr}\n", st.as_str()));
    }
    match (&out.driver, r.state.as_str()) {
        (Some(d), _) => s.push_str(&format!("driven by {d}\n")),
        (None, "active") => s.push_str(&format!(
            "not running: run `pgsteward convert resume --table {}` (or `abort` before the swap) before {}\n",
            out.table, r.plan.boundary_text
        )),
        _ => {}
    }
    if let Some(p) = &out.progress {
        s.push_str(&format!("progress: {p}\n"));
    }
    if let Some(f) = &out.first_partition {
        s.push_str(&format!(
            "first partition {} {} ({} bytes)\n",
            f.name, f.range, f.bytes
        ));
    }
    s
}
