//! What the prechecks read: the provider's checks, the source's facts
//! (judged by the pure `precheck::judge`) and the pooler's settings.
//! Reads only.

use std::time::Duration;

use super::error::q;
use super::error::UpgradeError;
use super::journal;
use super::precheck::{judge, Facts, LocalUpgrade};
use super::privileges::PrivilegeFacts;
use super::session::connect;
use super::sql::{
    DDL_LOCKS, LONG_TRANSACTIONS, PRIMARY_FACTS, READ_GUARD_PRIVILEGES, READ_PARAMETER_PRIVILEGES,
    READ_PRIVILEGES, READ_SLOTS, READ_SLOTS_17, UNFENCEABLE_DATABASES,
};
use crate::config::{Cluster, CutoverKind};
use crate::pooler::query_timeout;
use crate::pooler::Poolers;
use crate::provider::{Check, Precheck, Provider};

/// Every precheck: the provider's, then the source's and the pooler's.
/// Changes nothing. `own_id` is the upgrade doing the check (it does not count as "another").
pub async fn prechecks(
    cfg: &Cluster,
    provider: &dyn Provider,
    poolers: &mut Poolers,
    target_class: &str,
    own_id: Option<&str>,
) -> Result<Precheck, UpgradeError> {
    // Reads only, each bounded by the servers' own timeouts and this one.
    let after = query_timeout(cfg) * 3;
    match tokio::time::timeout(after, observe(cfg, provider, poolers, target_class, own_id)).await {
        Ok(r) => r,
        Err(_) => Err(UpgradeError::Timeout {
            what: "the prechecks' answers".into(),
            after,
        }),
    }
}

async fn observe(
    cfg: &Cluster,
    provider: &dyn Provider,
    poolers: &mut Poolers,
    target_class: &str,
    own_id: Option<&str>,
) -> Result<Precheck, UpgradeError> {
    let mut pre = provider.precheck(target_class).await?;
    let primary = connect(&cfg.database.primary, cfg).await?;
    let row = primary
        .query_one(PRIMARY_FACTS, &[])
        .await
        .map_err(|e| q(&cfg.database.primary, e))?;
    let pause_seconds = cfg.upgrade.pause_timeout.0.as_secs_f64();
    let long = primary
        .query_one(LONG_TRANSACTIONS, &[&pause_seconds])
        .await
        .map_err(|e| q(&cfg.database.primary, e))?;
    let access_exclusive_locks: i64 = primary
        .query_one(DDL_LOCKS, &[])
        .await
        .map_err(|e| q(&cfg.database.primary, e))?
        .get(0);
    let local = match journal::latest(&cfg.state_dir)? {
        Some(path) => {
            let rec = journal::read(&path)?;
            Some(LocalUpgrade {
                in_flight: rec.in_flight(),
                phase: format!("{:?}", rec.phase),
                id: rec.id,
                path: path.display().to_string(),
            })
        }
        None => None,
    };
    // The same question asked of the primary itself (its guard database):
    // runners elsewhere.
    let target = cfg.database.primary.to_string();
    let guard_session =
        super::guard::reader_session(&cfg.database.primary, cfg.database.connect_timeout.0).await;
    let guard = match &guard_session {
        Ok(c) => super::guard::read(c, &target, query_timeout(cfg)).await?,
        Err(_) => None,
    };
    // The guard row is written in the guard database from the first step:
    // a publication there that publishes pgsteward's tables stops its
    // subscribers at that row unless they have the table (issue 22).
    if let Ok(c) = &guard_session {
        pre.checks.push(guard_publications(cfg, c, &target).await?);
    }
    let privileges = read_privileges(
        cfg,
        provider,
        &primary,
        guard_session
            .as_ref()
            .map_err(|e| super::privileges::GuardUnreachable(e.to_string())),
    )
    .await?;
    let facts = Facts {
        primary: cfg.database.primary.to_string(),
        in_recovery: row.get(0),
        free_senders: row.get(1),
        free_slots: row.get(2),
        server_version_num: row.get(3),
        pause_seconds,
        long_transactions: long.get(0),
        oldest_transaction_seconds: long.get(1),
        access_exclusive_locks,
        local,
        guard,
    };
    pre.checks.extend(judge(&facts, own_id));
    let support = super::slots::Support {
        failover_slots: provider.syncs_failover_slots(),
        physical_slots: provider.carries_physical_slots(),
    };
    let slots = read_slots(cfg, &primary, facts.server_version_num).await?;
    pre.checks.extend(super::slots::judge(
        &slots,
        facts.server_version_num,
        support,
    ));
    pre.source.slots = super::slots::carried(&slots, facts.server_version_num, support);
    pre.checks.extend(super::privileges::judge(
        &privileges,
        provider.fence_method(),
    ));
    let checks = &mut pre.checks;
    if cfg.cutover.kind == CutoverKind::Pgbouncer {
        pooler_checks(cfg, poolers, checks).await;
    }
    Ok(pre)
}

async fn pooler_checks(cfg: &Cluster, poolers: &mut Poolers, checks: &mut Vec<Check>) {
    if poolers.is_empty() {
        checks.push(Check::new(
            "pooler configured",
            false,
            "cutover.admin is empty; list the PgBouncer admin consoles (or set cutover.kind = \"none\")",
        ));
        return;
    }
    if !Poolers::valid_database_name(&poolers.database) {
        checks.push(Check::new(
            "pooler database name",
            false,
            format!(
                "cutover.database {:?}: PgBouncer's console takes letters, digits and _ only",
                poolers.database
            ),
        ));
    }
    let configs = match poolers.configs().await {
        Ok(c) => c,
        Err(e) => {
            checks.push(Check::new("pooler reachable", false, e.to_string()));
            return;
        }
    };
    checks.push(Check::new(
        "pooler reachable",
        true,
        format!("{} instance(s)", configs.len()),
    ));
    for (admin, instances) in poolers.membership() {
        checks.push(Check::new(
            format!("pooler {admin} instances"),
            !instances.is_empty(),
            format!(
                "{} instance(s), each paused, repointed and verified: {}",
                instances.len(),
                instances.join(", ")
            ),
        ));
    }
    let pause = cfg.upgrade.pause_timeout.0;
    for (admin, conf) in &configs {
        let mode = conf.get("pool_mode").cloned().unwrap_or_default();
        checks.push(Check::seen_and_fix(
            format!("pooler {admin} in transaction mode"),
            mode == "transaction",
            format!("pool_mode = {mode}"),
            "session pooling keeps server connections, so PAUSE would wait for every client to disconnect: set pool_mode = transaction",
        ));
        let wait: f64 = conf
            .get("query_wait_timeout")
            .and_then(|v| v.trim_end_matches('s').parse().ok())
            .unwrap_or(120.0);
        let ok = wait == 0.0 || Duration::from_secs_f64(wait) > pause;
        checks.push(Check::seen_and_fix(
            format!("pooler {admin} query_wait_timeout > pause_timeout"),
            ok,
            format!("query_wait_timeout = {wait}s, pause_timeout = {pause:?}"),
            "clients waiting in the pause would get errors: raise query_wait_timeout",
        ));
    }
    let modes: std::collections::BTreeMap<String, String> = configs
        .iter()
        .map(|(a, c)| (a.clone(), c.get("pool_mode").cloned().unwrap_or_default()))
        .collect();
    pooler_entry_checks(poolers, &modes, checks).await;
    let limits = crate::pooler::GateLimits::from_config(&cfg.cutover);
    let (ok, detail) = match poolers.health_gate(&limits).await {
        Ok(stats) => (
            true,
            format!(
                "{} instance(s): no pool over {} waiting clients or a wait of {:?}",
                stats.len(),
                limits.max_waiting_clients,
                limits.max_client_wait
            ),
        ),
        Err(e) => (false, e.to_string()),
    };
    checks.push(Check::new("pooler not saturated", ok, detail));
    for i in 0..cfg.cutover.admin.len() {
        let (ok, detail) = match cfg.cutover.pooler_config_file(i) {
            None => (
                false,
                "no cutover.config_file for this endpoint".to_string(),
            ),
            Some(p) => match std::fs::read_to_string(p) {
                Ok(text) => match crate::pooler::ini_target(&text, &poolers.database) {
                    Some(_) => (true, p.display().to_string()),
                    None => (
                        false,
                        format!(
                            "{}: no `{} =` entry under [databases]",
                            p.display(),
                            poolers.database
                        ),
                    ),
                },
                Err(e) => (false, format!("{}: {e}", p.display())),
            },
        };
        checks.push(Check::new(
            format!("pooler config file {i} writable"),
            ok,
            detail,
        ));
    }
}

/// Every entry that reaches the primary, on every instance: it is paused,
/// repointed and verified with `cutover.database`, so it must be in the
/// instance's pgbouncer.ini (or it could not be repointed) and pool in
/// transaction mode, its own `pool_mode` or the instance's (a session-mode
/// entry keeps its server connections, and PAUSE would wait for every client
/// of it to disconnect: the whole pause_timeout, then a roll back).
async fn pooler_entry_checks(
    poolers: &mut Poolers,
    modes: &std::collections::BTreeMap<String, String>,
    checks: &mut Vec<Check>,
) {
    if let Err(e) = poolers.discover().await {
        checks.push(Check::new("pooler databases", false, e.to_string()));
        return;
    }
    let all = match poolers.all_entries().await {
        Ok(a) => a,
        Err(e) => {
            checks.push(Check::new("pooler databases", false, e.to_string()));
            return;
        }
    };
    for (i, ((admin, dbs), (_, shown))) in poolers.targets().into_iter().zip(all).enumerate() {
        let file = poolers
            .config_file_of(i)
            .map_or("cutover.config_file".to_string(), |p| {
                p.display().to_string()
            });
        let ini_text = poolers
            .config_file_of(i)
            .and_then(|p| std::fs::read_to_string(p).ok());
        let in_ini: Vec<String> = ini_text
            .as_deref()
            .map(|t| {
                crate::pooler::ini_entries(t)
                    .into_iter()
                    .map(|e| e.0)
                    .collect()
            })
            .unwrap_or_default();
        let global = modes.get(&admin).cloned().unwrap_or_default();
        for db in &dbs {
            let entry = shown.iter().find(|d| &d.name == db);
            let Some(entry) = entry else {
                checks.push(Check::new(
                    format!("pooler {admin} has database {db}"),
                    false,
                    "no such [databases] entry; fix cutover.database",
                ));
                continue;
            };
            let mode = entry.pool_mode.clone().unwrap_or_else(|| global.clone());
            let ok = mode == "transaction" && in_ini.contains(db);
            let detail = if mode != "transaction" {
                format!(
                    "{db} -> {}:{}/{} pools in {mode} mode: PAUSE would wait for every client of it to disconnect; \
                     set pool_mode=transaction on the entry (or remove its pool_mode)",
                    entry.host, entry.port, entry.database
                )
            } else if !in_ini.contains(db) {
                format!(
                    "{db} -> {}:{}/{} reaches the primary but is not in the [databases] section of \
                     {file}, so it could not be repointed: move it there",
                    entry.host, entry.port, entry.database
                )
            } else {
                format!(
                    "{db} -> {}:{}/{} ({mode}): paused, repointed and verified with the cutover",
                    entry.host, entry.port, entry.database
                )
            };
            checks.push(Check::new(
                format!("pooler {admin} database {db}"),
                ok,
                detail,
            ));
        }
    }
}

/// Every replication slot of the source and who streams from it (`slots`).
async fn read_slots(
    cfg: &Cluster,
    primary: &tokio_postgres::Client,
    version: i32,
) -> Result<Vec<crate::provider::ReplicationSlot>, UpgradeError> {
    use crate::provider::{ReplicationSlot, SlotKind};
    let stmt = if version >= 170_000 {
        READ_SLOTS_17
    } else {
        READ_SLOTS
    };
    let rows = primary
        .query(stmt, &[])
        .await
        .map_err(|e| q(&cfg.database.primary, e))?;
    Ok(rows
        .iter()
        .map(|r| ReplicationSlot {
            name: r.get(0),
            kind: if r.get::<_, String>(1) == "logical" {
                SlotKind::Logical
            } else {
                SlotKind::Physical
            },
            plugin: r.get(2),
            database: r.get(3),
            active: r.get(4),
            temporary: r.get(5),
            restart_lsn: r.get(6),
            confirmed_flush: r.get(7),
            failover: r.get(8),
            consumer: r.get(9),
        })
        .collect())
}

/// The steward's privileges (see `privileges`), read on the primary and in
/// its guard database (`guard`: the session there, or why there is none).
async fn read_privileges(
    cfg: &Cluster,
    provider: &dyn Provider,
    primary: &tokio_postgres::Client,
    guard: Result<&tokio_postgres::Client, super::privileges::GuardUnreachable>,
) -> Result<PrivilegeFacts, UpgradeError> {
    use super::privileges as p;
    let e = |err| q(&cfg.database.primary, err);
    let row = primary.query_one(READ_PRIVILEGES, &[]).await.map_err(e)?;
    let server_version_num: i32 = row.get(7);
    let alter_system = if server_version_num >= 150000 {
        let a = primary
            .query_one(READ_PARAMETER_PRIVILEGES, &[])
            .await
            .map_err(e)?;
        Some([a.get(0), a.get(1), a.get(2)])
    } else {
        None
    };
    let unfenceable = if provider.fence_method() == crate::provider::FenceMethod::AlterDatabase {
        primary
            .query(UNFENCEABLE_DATABASES, &[])
            .await
            .map_err(e)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    } else {
        Vec::new()
    };
    let guard = match guard {
        Ok(c) => match c.query_one(READ_GUARD_PRIVILEGES, &[]).await {
            Ok(g) => Ok(p::GuardPrivileges {
                create: g.get(0),
                usable: g.get(1),
                reload_conf: g.get(2),
            }),
            Err(err) => Err(p::GuardUnreachable(crate::pg::server_message(&err))),
        },
        Err(why) => Err(why),
    };
    Ok(PrivilegeFacts {
        role: row.get(0),
        superuser: row.get(1),
        replication: row.get(2),
        pg_monitor: row.get(3),
        pg_signal_backend: row.get(4),
        reload_conf: row.get(5),
        promote: row.get(6),
        server_version_num,
        alter_system,
        guard,
        unfenceable,
    })
}

/// The precheck on the guard database's publications (see
/// `schema::published`): refused unless each one that publishes
/// pgsteward's tables is declared in `database.subscribers_have_pgsteward_schema`.
async fn guard_publications(
    cfg: &Cluster,
    guard: &tokio_postgres::Client,
    target: &str,
) -> Result<Check, UpgradeError> {
    use crate::schema::published::{decide, explain, read, Verdict, Writer};
    let rows = tokio::time::timeout(query_timeout(cfg), read(guard, None, target))
        .await
        .map_err(|_| UpgradeError::Timeout {
            what: "the guard database's publications".into(),
            after: query_timeout(cfg),
        })?
        .map_err(|e| UpgradeError::Step {
            step: super::record::Step::Precheck,
            detail: e.to_string(),
        })?;
    let declared = &cfg.database.subscribers_have_pgsteward_schema;
    let name = "guard database publications";
    Ok(match decide(&rows, declared) {
        Verdict::Clear => Check::new(name, true, "none publishes pgsteward's tables"),
        Verdict::Acknowledged(names) => Check::new(
            name,
            true,
            format!(
                "declared to have subscribers with pgsteward's tables: {}",
                names.join(", ")
            ),
        ),
        Verdict::Refuse(refused) => {
            let (reason, fix) =
                explain(Writer::Upgrade, &refused, declared, "the database postgres");
            Check::new(name, false, format!("{reason}; {fix}"))
        }
    })
}
