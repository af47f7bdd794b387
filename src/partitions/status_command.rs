//! `partitions status`: what each managed table's partitions cover, what
//! the next pass would do or refuse, and its text output.

use crate::partitions::sql;
use chrono::Utc;
use serde::Serialize;

use super::model::{Action, KEY_MIN};
use super::plan::{coverage_of, note_text, Coverage};
use super::{
    catalog, connect_and_read, converting, ddl, indexes, plan, PartitionError, RECOVERY_SKIP,
};
use crate::cli::OutputFormat;
use crate::config::Cluster;
use crate::outcome::Outcome;
use crate::pg::{server_message, QualifiedName};

#[derive(Serialize)]
struct StatusOutput {
    skipped: Option<String>,
    tables: Vec<TableStatus>,
    indexes: Vec<indexes::TableIndexStatus>,
    /// Archive retirements not finished (`retention_mode = "archive"`).
    retirements: Vec<super::retire::record::Retirement>,
}

#[derive(Serialize)]
struct TableStatus {
    table: QualifiedName,
    interval: crate::config::Interval,
    #[serde(flatten)]
    coverage: Option<Coverage>,
    default_partition: Option<String>,
    default_rows: Option<u64>,
    notes: Vec<String>,
    error: Option<String>,
    /// Why this table makes `status` exit 1, when it does.
    problem: Option<String>,
    /// A conversion in flight before its swap: the table is not maintained yet
    /// (not a problem here; `convert status` says whether anyone drives it).
    converting: Option<converting::Converting>,
}

impl TableStatus {
    /// A table the catalog gave no coverage for (missing, refused, or being
    /// converted): nothing but its name and interval yet.
    fn uncovered(table: QualifiedName, interval: crate::config::Interval) -> TableStatus {
        TableStatus {
            table,
            interval,
            coverage: None,
            default_partition: None,
            default_rows: None,
            notes: vec![],
            error: None,
            problem: None,
            converting: None,
        }
    }
}

/// `partitions status`: per table, partitions, covered range, coverage ahead,
/// gaps and rows in DEFAULT (counted exactly, in one query for all tables).
pub async fn status_command(
    cfg: &Cluster,
    output: OutputFormat,
) -> Result<Outcome, PartitionError> {
    let (client, catalog) = connect_and_read(cfg).await?;
    let now = Utc::now();
    // Coverage can be read on a replica, but the command was pointed at the wrong host.
    let mut outcome = if catalog.in_recovery {
        Outcome::Problem
    } else {
        Outcome::Healthy
    };
    let managed = indexes::managed(&catalog);
    let mut tables = Vec::new();
    let mut firsts = Vec::new();
    let mut defaults = Vec::new();
    let in_flight = converting::read(&client).await;
    for (tcfg, (name, lookup)) in cfg.partitions.tables.iter().zip(catalog.tables) {
        if let Some(c) = converting::of(&in_flight, &name) {
            tables.push(TableStatus {
                notes: vec![c.describe()],
                converting: Some(c.clone()),
                ..TableStatus::uncovered(name, tcfg.interval)
            });
            continue;
        }
        match lookup {
            Err(msg) => {
                outcome = Outcome::Problem;
                tables.push(TableStatus {
                    problem: Some(msg.to_string()),
                    error: Some(msg.to_string()),
                    ..TableStatus::uncovered(name, tcfg.interval)
                });
            }
            Ok(state) => {
                let p = catalog::fit(catalog.server_version_num, plan::plan(tcfg, &state, now));
                let cov = coverage_of(tcfg, &state, &[], now);
                let mut problem = None;
                // Access drift: repairable (the next apply does it) or not.
                let drift: Vec<String> = p
                    .actions
                    .iter()
                    .filter_map(|a| match a {
                        Action::RepairAccess { partition, repairs } => Some(format!(
                            "{partition}: access differs from the parent's ({}); `pgsteward partitions apply` repairs it",
                            repairs
                                .iter()
                                .map(super::access::describe)
                                .collect::<Vec<_>>()
                                .join("; ")
                        )),
                        _ => None,
                    })
                    .chain(p.problems.iter().cloned())
                    .collect();
                if !drift.is_empty() {
                    outcome = Outcome::Problem;
                    problem = Some(drift.join("; "));
                }
                if cov.periods_ahead < tcfg.premake || !cov.holes.is_empty() {
                    outcome = Outcome::Problem;
                    let before = problem.take();
                    problem = Some(if cov.holes.is_empty() {
                        format!(
                            "{} of premake = {} periods covered ahead of the current one; \
                             `pgsteward partitions apply` creates the rest",
                            cov.periods_ahead, tcfg.premake
                        )
                    } else {
                        format!("holes in the coverage: {}", cov.holes.join(", "))
                    });
                    if let (Some(b), Some(p)) = (before, problem.as_mut()) {
                        *p = format!("{p}; {b}");
                    }
                }
                // Rows in DEFAULT the next pass would refuse to move: said
                // here with the reason and the fix, as `plan` says it (a
                // probe only when a partition is to be made next to DEFAULT).
                let refused = super::probe::refusals(
                    &client,
                    &cfg.partitions,
                    &state,
                    tcfg.timezone,
                    &p.actions,
                )
                .await;
                if !refused.is_empty() {
                    outcome = Outcome::Problem;
                    let why = refused.join("; ");
                    problem = Some(match problem.take() {
                        Some(p) => format!("{p}; the next pass refuses: {why}"),
                        None => format!("the next pass refuses: {why}"),
                    });
                }
                if let Some(d) = &state.default {
                    defaults.push((tables.len(), d.name.clone()));
                }
                // A converted table's first partition (MINVALUE .. boundary): its size is reported.
                for p in &state.partitions {
                    if p.range.is_some_and(|r| r.lo == KEY_MIN) {
                        firsts.push((tables.len(), p.name.clone()));
                    }
                }
                tables.push(TableStatus {
                    table: name,
                    interval: tcfg.interval,
                    coverage: Some(cov),
                    default_partition: state.default.as_ref().map(|d| d.name.to_string()),
                    default_rows: state.default.as_ref().map(|d| d.rows_estimate),
                    notes: p.notes.iter().map(note_text).collect(),
                    error: None,
                    problem,
                    converting: None,
                });
            }
        }
    }
    if !defaults.is_empty() {
        let sql = ddl::sql_count_defaults(&defaults);
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
    for (i, name) in &firsts {
        // Sizes come from the catalog: no lock on the partition.
        if let Ok(row) = client
            .query_one(sql::PARTITION_SIZE_PRETTY, &[&name.quoted()])
            .await
        {
            if let (Some(t), Some(size)) = (tables.get_mut(*i), row.get::<_, Option<String>>(0)) {
                t.notes.push(format!("{name}: first partition, {size}"));
            }
        }
    }
    // Tables a pass made and could not attach (a lost lock race, a kill):
    // the next pass attaches them; until then the period has no partition.
    if let Ok(rows) = client.query(sql::UNATTACHED, &[]).await {
        for row in rows {
            let left = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
            let prefix = |t: &QualifiedName| t.name.chars().take(40).collect::<String>();
            if let Some(t) = tables
                .iter_mut()
                .find(|t| t.table.schema == left.schema && left.name.starts_with(&prefix(&t.table)))
            {
                let what = format!(
                    "{left} was made by a pass and is not attached yet (a lost lock race or an interrupted pass); \
                     the next `pgsteward partitions apply` attaches it"
                );
                t.notes.push(what.clone());
                outcome = Outcome::Problem;
                t.problem = Some(match t.problem.take() {
                    Some(p) => format!("{p}; {what}"),
                    None => what,
                });
            }
        }
    }
    // Every index of every managed parent, declared or made by hand.
    let index_status = indexes::inspect(&client, cfg, &managed)
        .await
        .map_err(|e| PartitionError::Index(Box::new(e)))?;
    if index_status.iter().any(|t| !t.drift.is_empty()) {
        outcome = Outcome::Problem;
    }
    let retirements = super::retire::commands::in_flight(&client).await;
    if retirements.iter().any(|r| r.stuck()) {
        outcome = Outcome::Problem;
    }
    let out = StatusOutput {
        skipped: catalog.in_recovery.then(|| RECOVERY_SKIP.to_string()),
        tables,
        indexes: index_status,
        retirements,
    };
    match output {
        OutputFormat::Json => crate::output::print_json(&out),
        OutputFormat::Text => {
            if let Some(why) = &out.skipped {
                println!("PROBLEM: {why}");
            }
            print!("{}", status_table(&out.tables));
            // Details too long for a 120-column table, one line each.
            for t in &out.tables {
                let c = t.coverage.as_ref();
                if let Some(gaps) = c.filter(|c| !c.gaps.is_empty()) {
                    println!("gaps {}: {}", t.table, gaps.gaps.join(", "));
                }
                let notes = t.error.clone().unwrap_or_else(|| t.notes.join("; "));
                if !notes.is_empty() {
                    println!("note {}: {notes}", t.table);
                }
                if let Some(why) = &t.problem {
                    println!("PROBLEM {}: {why}", t.table);
                }
            }
            print!("{}", indexes::status_text(&out.indexes));
            print!("{}", super::retire::commands::status_text(&out.retirements));
        }
    }
    Ok(outcome)
}

/// The status table, one row per table, within 120 columns for common names:
/// bounds as dates when they fall on midnight, holes and gaps as counts (the
/// lines below the table list them).
fn status_table(tables: &[TableStatus]) -> String {
    let count = |v: &Vec<String>| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.len().to_string()
        }
    };
    let rows: Vec<Vec<String>> = tables
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
                        c.covered_from.as_deref().map_or("-", short_bound),
                        c.covered_to.as_deref().map_or("-", short_bound)
                    )
                }),
                c.map_or("-".into(), |c| c.periods_ahead.to_string()),
                c.map_or("-".into(), |c| count(&c.holes)),
                c.map_or("-".into(), |c| count(&c.gaps)),
                t.default_rows.map_or("none".into(), |n| n.to_string()),
            ]
        })
        .collect();
    crate::output::table(
        &[
            "TABLE",
            "INTERVAL",
            "PARTITIONS",
            "COVERED",
            "AHEAD",
            "HOLES",
            "GAPS",
            "DEFAULT_ROWS",
        ],
        &rows,
    )
}

/// `2025-01-01 00:00:00+00` → `2025-01-01`; any other bound as it is.
fn short_bound(bound: &str) -> &str {
    match bound.split_once(' ') {
        Some((date, time)) if time.starts_with("00:00:00") && !time.contains('.') => date,
        _ => bound,
    }
}
