//! `upgrade plan`: the prechecks, the servers each step changes, and only the
//! steps this provider and cutover will run (a step that would only say
//! "nothing to do" is left out), with the new server's address.

use serde::Serialize;

use super::error::UpgradeError;
use super::record::{Region, Step};
use super::swap;
use super::table::{self, Needs, Row};
use crate::cli::OutputFormat;
use crate::config::{Cluster, CutoverKind};
use crate::outcome::Outcome;
use crate::pooler::Poolers;

/// What decides which steps an upgrade runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// `cutover.kind = pgbouncer`: PAUSE, repoint, RESUME through PgBouncer.
    pub pgbouncer: bool,
    /// The provider renames the new servers into the old names (RDS identifier swap).
    pub swaps_identifiers: bool,
    /// The source has readers the provider replaces (RDS).
    pub readers: bool,
    /// The source has logical slots the upgrade carries (PostgreSQL 17+ failover slots).
    pub logical_slots: bool,
}

/// One step as the plan prints it.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    pub name: &'static str,
    pub region: Region,
    pub does: &'static str,
    pub undo: &'static str,
}

/// What `pause_writes` does when no pooler holds the clients.
const PAUSE_WITHOUT_POOLER: &str = "fence staged, the pause deadline starts (cutover.kind = none: \
     nothing pauses the clients; they get errors from the fence until they reconnect to the new server)";
const VERIFY_WITHOUT_POOLER: &str = "the new server is out of recovery; local replicas follow it";

/// Pure: the steps an upgrade of this shape runs, in order, with what each
/// does for it. Invariant: every step left out is one whose body returns
/// at once for this shape (steps.rs, swap.rs), so the plan lists what runs.
pub fn relevant(shape: Shape) -> Vec<PlannedStep> {
    let runs = |r: &Row| match r.meta.needs {
        Needs::Always => true,
        Needs::Readers => shape.readers,
        Needs::Pgbouncer => shape.pgbouncer,
        Needs::Swap => shape.swaps_identifiers,
        Needs::Both => shape.swaps_identifiers && shape.pgbouncer,
        Needs::LogicalSlots => shape.logical_slots,
    };
    table::rows()
        .filter(|r| runs(r))
        .map(|r| PlannedStep {
            name: r.step.name(),
            region: r.step.region(),
            does: match r.step {
                Step::PauseWrites if !shape.pgbouncer => PAUSE_WITHOUT_POOLER,
                Step::Verify if !shape.pgbouncer => VERIFY_WITHOUT_POOLER,
                _ => r.does,
            },
            undo: match r.step {
                Step::PauseWrites if !shape.pgbouncer => "remove the staged fence",
                _ => r.meta.undoes,
            },
        })
        .collect()
}

pub async fn plan_command(
    cfg: &Cluster,
    class: &str,
    output: OutputFormat,
) -> Result<Outcome, UpgradeError> {
    let provider = crate::provider::from_config(cfg)?;
    plan_with(cfg, provider.as_ref(), class, output).await
}

/// `upgrade plan` with a given provider (tests put a scripted RDS behind it).
pub async fn plan_with(
    cfg: &Cluster,
    provider: &dyn crate::provider::Provider,
    class: &str,
    output: OutputFormat,
) -> Result<Outcome, UpgradeError> {
    let mut poolers = Poolers::from_config(cfg);
    let pre = super::observe::prechecks(cfg, provider, &mut poolers, class, None).await?;
    let ok = pre.checks.iter().all(|c| c.ok);
    // RDS identifiers take lower-case letters, digits and hyphens only.
    let placeholder = "uid";
    let replica = crate::provider::replica_id(&pre.source.id, placeholder);
    let address = provider.new_server_address(&replica);
    let servers = swap::server_changes(provider, &pre.source, placeholder, class);
    let steps = relevant(Shape {
        pgbouncer: cfg.cutover.kind == CutoverKind::Pgbouncer,
        swaps_identifiers: provider.swaps_identifiers(),
        readers: !pre.source.readers.is_empty(),
        logical_slots: pre.source.syncs_logical_slots(),
    });
    #[derive(Serialize)]
    struct Plan<'a> {
        target_class: &'a str,
        source: &'a crate::provider::SourceFacts,
        new_server: &'a str,
        /// Where the new server will listen (as far as it is known before it exists).
        new_server_address: &'a str,
        /// Every server created, promoted, renamed and deleted, in order.
        servers: &'a [swap::ServerChange],
        checks: &'a [crate::provider::Check],
        /// Only the steps this provider and cutover run.
        steps: &'a [PlannedStep],
        ready: bool,
    }
    let plan = Plan {
        target_class: class,
        source: &pre.source,
        new_server: &replica,
        new_server_address: &address,
        servers: &servers,
        checks: &pre.checks,
        steps: &steps,
        ready: ok,
    };
    match output {
        OutputFormat::Json => crate::output::print_json(&plan),
        OutputFormat::Text => print_text(
            cfg,
            &plan.source.id,
            &replica,
            &address,
            class,
            &pre.checks,
            &servers,
            &steps,
            ok,
        ),
    }
    Ok(if ok {
        Outcome::Healthy
    } else {
        Outcome::Problem
    })
}

#[allow(clippy::too_many_arguments)]
fn print_text(
    cfg: &Cluster,
    source: &str,
    replica: &str,
    address: &str,
    class: &str,
    checks: &[crate::provider::Check],
    servers: &[swap::ServerChange],
    steps: &[PlannedStep],
    ok: bool,
) {
    println!("upgrade plan: {source} -> {replica} (class {class})");
    println!("new server address: {address}");
    println!("prechecks:");
    for c in checks {
        println!(
            "  [{}] {}: {}",
            if c.ok { "ok" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    println!("servers (in order; `uid` stands for the upgrade id):");
    let rows: Vec<Vec<String>> = servers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            vec![
                format!("{}", i + 1),
                c.step.to_string(),
                c.action.to_string(),
                c.server.clone(),
                c.class.clone().unwrap_or_default(),
                c.detail.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        crate::output::table(&["#", "step", "action", "server", "class", "detail"], &rows)
    );
    println!("steps (only those this provider and cutover run):");
    let rows: Vec<Vec<String>> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            vec![
                format!("{}", i + 1),
                s.name.to_string(),
                format!("{:?}", s.region).to_lowercase(),
                s.does.to_string(),
                s.undo.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        crate::output::table(&["#", "step", "region", "does", "undo"], &rows)
    );
    println!(
        "pause deadline {:?} (pause_writes to final_sync, from PAUSE); before promote any failure rolls back",
        cfg.upgrade.pause_timeout.0
    );
    if !ok {
        println!("not ready: fix the failed checks first");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(shape: Shape) -> Vec<&'static str> {
        relevant(shape).iter().map(|s| s.name).collect()
    }

    #[test]
    fn local_with_pgbouncer_lists_no_rds_steps() {
        let n = names(Shape {
            pgbouncer: true,
            swaps_identifiers: false,
            readers: false,
            logical_slots: false,
        });
        for gone in [
            "create_readers",
            "wait_readers",
            "rename_old_aside",
            "rename_new_in",
            "repoint_stable",
            "move_reads",
        ] {
            assert!(!n.contains(&gone), "{gone}: {n:?}");
        }
        assert!(n.contains(&"repoint") && n.contains(&"resume_writes"));
        assert_eq!(n.len(), 12);
    }

    #[test]
    fn without_a_pooler_nothing_says_pgbouncer() {
        let steps = relevant(Shape {
            pgbouncer: false,
            swaps_identifiers: false,
            readers: false,
            logical_slots: false,
        });
        assert!(
            steps.iter().all(|s| !s.does.contains("PgBouncer")),
            "{steps:?}"
        );
        assert!(
            steps.iter().all(|s| !s.undo.contains("RESUME")),
            "{steps:?}"
        );
        let n: Vec<_> = steps.iter().map(|s| s.name).collect();
        assert!(!n.contains(&"repoint") && !n.contains(&"resume_writes"));
        assert!(n.contains(&"pause_writes") && n.contains(&"fence_old_primary"));
    }

    #[test]
    fn rds_with_readers_a_swap_and_logical_slots_lists_every_step() {
        let n = names(Shape {
            pgbouncer: true,
            swaps_identifiers: true,
            readers: true,
            logical_slots: true,
        });
        assert_eq!(n.len(), crate::upgrade::step::STEPS.len());
    }

    #[test]
    fn carry_slots_is_listed_only_with_logical_slots_to_carry() {
        let shape = Shape {
            pgbouncer: true,
            swaps_identifiers: false,
            readers: false,
            logical_slots: false,
        };
        assert!(!names(shape).contains(&"carry_slots"));
        assert!(names(Shape {
            logical_slots: true,
            ..shape
        })
        .contains(&"carry_slots"));
    }
}
