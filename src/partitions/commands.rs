//! The three commands: `partitions plan`, `apply` and `status`, and their text output.

use chrono::Utc;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::model::{Action, Note};
use super::plan::note_text;
use super::report::PassReport;
use super::{
    catalog, connect_and_read, converting, ddl, indexes, plan, run_pass, PartitionError,
    RECOVERY_SKIP,
};
use crate::cli::OutputFormat;
use crate::config::Cluster;
use crate::outcome::Outcome;
use crate::pg::QualifiedName;

#[derive(Serialize)]
struct PlanOutput {
    skipped: Option<String>,
    /// Privileges the steward lacks for this plan, each with its GRANT: `apply` would fail on them.
    missing_privileges: Vec<crate::privileges::Verdict>,
    tables: Vec<TablePlanOutput>,
    indexes: Vec<indexes::TableIndexStatus>,
    /// Archive retirements the next pass resumes.
    retirements: Vec<super::retire::record::Retirement>,
}

#[derive(Serialize)]
struct TablePlanOutput {
    table: QualifiedName,
    actions: Vec<ActionOutput>,
    notes: Vec<Note>,
    error: Option<String>,
    /// Left alone on purpose: a conversion has not swapped it yet.
    skipped: Option<String>,
    converting: Option<converting::Converting>,
    /// What `apply` would refuse or leave to the operator, each with its fix.
    problems: Vec<String>,
}

#[derive(Serialize)]
struct ActionOutput {
    #[serde(flatten)]
    action: Action,
    sql: Vec<String>,
}

/// `partitions plan`: the DDL the next pass would run, changing nothing.
pub async fn plan_command(cfg: &Cluster, output: OutputFormat) -> Result<Outcome, PartitionError> {
    let (client, catalog) = connect_and_read(cfg).await?;
    let now = Utc::now();
    let managed = indexes::managed(&catalog);
    // Checked before anything else is planned, so plan fails where apply would.
    let missing_privileges: Vec<_> = if catalog.in_recovery {
        Vec::new()
    } else {
        crate::privileges::check(&client, &super::needs::needs(&cfg.partitions))
            .await?
            .into_iter()
            .filter(|v| !v.ok)
            .collect()
    };
    let mut out = PlanOutput {
        missing_privileges,
        skipped: catalog.in_recovery.then(|| RECOVERY_SKIP.to_string()),
        tables: Vec::new(),
        indexes: Vec::new(),
        retirements: Vec::new(),
    };
    // A replica has nothing to plan: a problem, so a script notices (RECOVERY_SKIP).
    let mut outcome = if catalog.in_recovery || !out.missing_privileges.is_empty() {
        Outcome::Problem
    } else {
        Outcome::Healthy
    };
    let in_flight = converting::read(&client).await;
    // Asked only if an archive retirement is planned or in flight.
    let published = crate::schema::published::Once::new(
        &cfg.database.subscribers_have_pgsteward_schema,
        catalog.server_version_num,
        &cfg.database.primary.to_string(),
    );
    if !catalog.in_recovery {
        for (tcfg, (name, lookup)) in cfg.partitions.tables.iter().zip(catalog.tables) {
            if let Some(c) = converting::of(&in_flight, &name) {
                out.tables.push(TablePlanOutput {
                    table: name,
                    actions: vec![],
                    notes: vec![],
                    error: None,
                    skipped: Some(c.describe()),
                    converting: Some(c.clone()),
                    problems: vec![],
                });
                continue;
            }
            match lookup {
                Err(msg) => {
                    outcome = Outcome::Problem;
                    out.tables.push(TablePlanOutput {
                        table: name,
                        actions: vec![],
                        notes: vec![],
                        error: Some(msg.to_string()),
                        skipped: None,
                        converting: None,
                        problems: vec![],
                    });
                }
                Ok(state) => {
                    let p = catalog::fit(catalog.server_version_num, plan::plan(tcfg, &state, now));
                    // What `apply` would refuse shows here, with exit 1.
                    let mut problems = p.problems.clone();
                    problems.extend(
                        super::probe::refusals(
                            &client,
                            &cfg.partitions,
                            &state,
                            tcfg.timezone,
                            &p.actions,
                        )
                        .await,
                    );
                    if p.actions
                        .iter()
                        .any(|a| matches!(a, Action::Retire { archive: true, .. }))
                    {
                        if let Err(refused) = published
                            .check(&client, crate::schema::published::Writer::Archive)
                            .await
                        {
                            problems.push(refused.to_string());
                        }
                    }
                    if !problems.is_empty() {
                        outcome = Outcome::Problem;
                    }
                    let actions = p
                        .actions
                        .iter()
                        .map(|a| ActionOutput {
                            action: a.clone(),
                            sql: planned_sql(&state, tcfg.timezone, a, &catalog.current_user),
                        })
                        .collect();
                    out.tables.push(TablePlanOutput {
                        table: name,
                        actions,
                        notes: p.notes,
                        error: None,
                        skipped: None,
                        converting: None,
                        problems,
                    });
                }
            }
        }
    }
    if !catalog.in_recovery {
        out.retirements = super::retire::commands::in_flight(&client).await;
        // A retirement in flight writes its row at its next step too.
        for r in &out.retirements {
            let Err(refused) = published
                .check(&client, crate::schema::published::Writer::Archive)
                .await
                .map_err(|e| e.to_string())
            else {
                break;
            };
            outcome = Outcome::Problem;
            if let Some(t) = out.tables.iter_mut().find(|t| t.table == r.table) {
                if !t.problems.contains(&refused) {
                    t.problems.push(refused);
                }
            }
        }
        out.indexes = indexes::inspect(&client, cfg, &managed)
            .await
            .map_err(|e| PartitionError::Index(Box::new(e)))?;
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
    for v in &out.missing_privileges {
        s.push_str(&format!("-- PROBLEM: {}\n", v.line()));
    }
    for t in &out.tables {
        if let Some(e) = &t.error {
            s.push_str(&format!("-- {}: error: {e}\n", t.table));
            continue;
        }
        if let Some(why) = &t.skipped {
            s.push_str(&format!("-- {}: skipped: {why}\n", t.table));
            continue;
        }
        if t.actions.is_empty() {
            s.push_str(&format!("-- {}: nothing to do\n", t.table));
        }
        for a in &t.actions {
            let what = match &a.action {
                Action::Create {
                    partition, reason, ..
                } => format!("create {partition} ({})", reason.as_str()),
                Action::Retire {
                    partition,
                    how,
                    drop,
                    archive,
                    reason,
                } => format!(
                    "retire {partition}: detach {how:?}{}; {reason}",
                    if *archive {
                        ", archive to object storage, verify and drop"
                    } else if *drop {
                        " and drop"
                    } else {
                        ""
                    }
                )
                .to_lowercase(),
                Action::DropDefaultCheck { constraint } => {
                    format!("drop leftover check {constraint} on the default partition")
                }
                Action::RepairAccess { partition, repairs } => format!(
                    "make {partition}'s access follow the parent's: {}",
                    repairs
                        .iter()
                        .map(super::access::describe)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
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
        for p in &t.problems {
            s.push_str(&format!("-- {}: PROBLEM: {p}\n", t.table));
        }
    }
    for r in &out.retirements {
        s.push_str(&format!(
            "-- {}: resume the retirement of {} from {} (archive {}), then verify and drop\n",
            r.table,
            r.partition,
            r.state.as_str(),
            r.key
        ));
    }
    for t in out.indexes.iter().filter(|t| !t.sql.is_empty()) {
        s.push_str(&format!("-- {}: indexes, built online\n", t.table));
        for stmt in &t.sql {
            let end = if stmt.starts_with("--") { "" } else { ";" };
            s.push_str(&format!("{stmt}{end}\n"));
        }
    }
    s
}

/// `partitions apply`: one maintenance pass; Ctrl-C stops before the next statement.
pub async fn apply_command(cfg: &Cluster, output: OutputFormat) -> Result<Outcome, PartitionError> {
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
    // The service skips a replica quietly; a command pointed at one failed its job.
    let recovery = report.skipped.as_deref() == Some(RECOVERY_SKIP);
    Ok(report.outcome().and(if recovery {
        Outcome::Problem
    } else {
        Outcome::Healthy
    }))
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
            (None, None) if !t.current_covered => "error: the current period is not covered".into(),
            (None, None) => "ok".into(),
        };
        s.push_str(&format!(
            "{}: created {}, retired {}, moved {} rows from default, {} periods ahead, {} rows in default: {state}\n",
            t.table, t.created, t.retired, t.rows_moved, t.future_partitions, t.default_rows
        ));
        for n in &t.notes {
            s.push_str(&format!("{}: note: {n}\n", t.table));
        }
        for h in &t.holes {
            s.push_str(&format!("{}: hole: {h} has no partition\n", t.table));
        }
    }
    s.push_str(&indexes::apply_text(&r.indexes));
    s
}

/// The statements `apply` will run for `action`: it changes a new
/// partition's owner only when the parent's owner is not the role DDL runs as.
fn planned_sql(
    state: &crate::partitions::model::TableState,
    tz: chrono_tz::Tz,
    action: &Action,
    current_user: &str,
) -> Vec<String> {
    let mut sql = ddl::action_sql(state, tz, action);
    if let Action::Create { partition, .. } = action {
        if state.owner == current_user {
            let owner = ddl::sql_owner(partition, &state.owner);
            sql.retain(|s| *s != owner);
        }
    }
    sql
}
