//! Partition maintenance. `catalog` reads every managed table in one query,
//! `plan` decides (pure, over the types of `model` and the calendar of
//! `period`), `ddl` writes the statements and `apply` executes them
//! lock-safely through the `session`. This file holds the pass; `commands`
//! the three CLI commands; `converting`
//! the tables a conversion has not swapped yet, which every pass leaves alone.

pub mod access;
pub mod apply;
mod apply_run;
mod attach;
pub mod blockers;
pub mod catalog;
mod commands;
pub mod converting;
pub mod ddl;
mod error;
mod guards;
pub mod indexes;
pub mod model;
pub mod needs;
pub mod period;
pub mod plan;
pub mod probe;
pub mod report;
pub mod retire;
pub mod session;
pub mod sql;
pub mod standby;
mod status_command;
#[cfg(test)]
mod test_fixtures;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::{Cluster, TableConfig};
use crate::pg::QualifiedName;

pub use commands::{apply_command, plan_command};
pub use error::{PartitionError, TableError};
pub use report::{PassReport, TableReport};
pub use session::{connect, ADVISORY_NAMESPACE};
pub use status_command::status_command;

/// Why a pass did nothing on a replica. The service logs it and moves on (its
/// lag job alerts on it); the commands exit 1 with it, so a CronJob pointed at
/// the wrong host does not stay green.
const RECOVERY_SKIP: &str =
    "the server is in recovery (a replica): partition DDL runs on the primary only; \
     set database.primary (or PGSTEWARD_DATABASE__PRIMARY) to the primary's address";

/// One maintenance pass over every managed table. Cancelling stops before the
/// next DDL statement; a statement in flight finishes or is cancelled cleanly.
pub async fn run_pass(
    cfg: &Cluster,
    cancel: &CancellationToken,
) -> Result<PassReport, PartitionError> {
    run_pass_at(cfg, Utc::now(), cancel).await
}

/// Connects to the primary and reads the catalog of every managed table in
/// one query: the shared start of a pass, `plan` and `status`.
async fn connect_and_read(cfg: &Cluster) -> Result<(Client, catalog::Catalog), PartitionError> {
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
    cfg: &Cluster,
    now: DateTime<Utc>,
    cancel: &CancellationToken,
) -> Result<PassReport, PartitionError> {
    let (client, catalog) = connect_and_read(cfg).await?;
    // The DDL gate (every caller gets it): asked here for the whole pass,
    // then again before each table's DDL (apply.rs, retire, index builds).
    let gate = tokio::sync::Mutex::new(crate::upgrade::DdlGate::new(cfg));
    match gate
        .lock()
        .await
        .ask()
        .await
        .map_err(PartitionError::Guard)?
    {
        crate::upgrade::Gate::Clear => {}
        crate::upgrade::Gate::Wait(skip) => {
            return Ok(PassReport {
                skipped: Some(skip),
                tables: Vec::new(),
                indexes: Vec::new(),
            })
        }
        crate::upgrade::Gate::Moved { id, new_primary } => {
            return Err(PartitionError::Guard(
                crate::upgrade::guard::GuardError::Moved { id, new_primary },
            ))
        }
    }
    if catalog.in_recovery {
        tracing::info!(reason = RECOVERY_SKIP, "partition pass skipped");
        return Ok(PassReport {
            skipped: Some(RECOVERY_SKIP.into()),
            tables: Vec::new(),
            indexes: Vec::new(),
        });
    }
    let managed = indexes::managed(&catalog);
    let mut reports: Vec<Option<TableReport>> = vec![None; cfg.partitions.tables.len()];
    let mut work = Vec::new();
    // Read after the catalog (see `converting::read`).
    let in_flight = converting::read(&client).await;
    // Tables with an unfinished archive retirement are visited even with
    // nothing planned: the retirement resumes under the table's lock.
    let retiring = match retire::record::open_tables(&client).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "unfinished retirements not read; resumed next pass");
            Vec::new()
        }
    };
    for (i, (tcfg, (name, lookup))) in cfg.partitions.tables.iter().zip(catalog.tables).enumerate()
    {
        if let Some(c) = converting::of(&in_flight, &name) {
            let mut r = TableReport::new(&name);
            r.skipped = Some(c.describe());
            reports[i] = Some(r);
            continue;
        }
        match lookup {
            Err(msg) => {
                tracing::warn!(table = %name, error = %msg, "table cannot be maintained");
                let mut r = TableReport::new(&name);
                r.error = Some(msg.to_string());
                reports[i] = Some(r);
            }
            Ok(state) => {
                let p = catalog::fit(catalog.server_version_num, plan::plan(tcfg, &state, now));
                if p.actions.is_empty() && !retiring.contains(&name) {
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
    // A pass with no DDL to run hands its session on to the index part.
    let spare = if work.is_empty() {
        Some(client)
    } else {
        // Read only if an archive retirement is about to write its row.
        let published = crate::schema::published::Once::new(
            &cfg.database.subscribers_have_pgsteward_schema,
            catalog.server_version_num,
            &cfg.database.primary.to_string(),
        );
        // On the heap (crate::heap), as the index part below: the pass is
        // awaited by the service, the CLI and tests on their own stacks.
        let done = crate::heap::boxed(|| {
            apply::execute(
                cfg,
                client,
                &catalog.current_user,
                work,
                now,
                &gate,
                &published,
                cancel,
            )
        })
        .await;
        for (i, r) in done {
            reports[i] = Some(r);
        }
        None
    };
    if cancel.is_cancelled() {
        return Err(PartitionError::Cancelled);
    }
    let tables: Vec<TableReport> = reports.into_iter().flatten().collect();
    // After partitions are made, so new ones are covered by the drift check.
    let indexes =
        crate::heap::boxed(|| indexes::run_pass(cfg, &managed, spare, &gate, cancel)).await;
    if cancel.is_cancelled() {
        return Err(PartitionError::Cancelled);
    }
    Ok(PassReport {
        skipped: None,
        tables,
        indexes,
    })
}

fn unchanged_report(
    tcfg: &TableConfig,
    state: &model::TableState,
    p: &model::TablePlan,
    now: DateTime<Utc>,
) -> TableReport {
    let mut r = TableReport::new(&state.table);
    let cov = plan::coverage_of(tcfg, state, &[], now);
    r.future_partitions = cov.periods_ahead;
    r.current_covered = cov.current_covered;
    r.holes = cov.holes;
    r.default_rows = state.default.as_ref().map_or(0, |d| d.rows_estimate);
    r.notes = p.notes.iter().map(plan::note_text).collect();
    // Nothing to run, but what is left to the operator is still a problem.
    if !p.problems.is_empty() {
        r.access_problems = p.problems.len() as u32;
        r.error = Some(p.problems.join("; "));
    }
    r
}

/// Asks the pass's DDL gate: `Ok(None)` clear, `Ok(Some(reason))` wait (skip
/// this table now; the next pass goes on), `Err` refused (the primary
/// moved, or the guard row cannot be read: no DDL runs blind to an upgrade).
pub(crate) async fn gate_of(
    gate: &tokio::sync::Mutex<crate::upgrade::DdlGate>,
) -> Result<Option<String>, crate::upgrade::guard::GuardError> {
    match gate.lock().await.ask().await? {
        crate::upgrade::Gate::Clear => Ok(None),
        crate::upgrade::Gate::Wait(reason) => Ok(Some(reason)),
        crate::upgrade::Gate::Moved { id, new_primary } => {
            Err(crate::upgrade::guard::GuardError::Moved { id, new_primary })
        }
    }
}
