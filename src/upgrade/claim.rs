//! Taking the upgrade guard (the lock and the row) for a run or for
//! continuing one. Its own module so the commands (`start`, `resume`,
//! `abort`) and the keeper's `rescue` both call it with the imports running
//! one way: commands -> rescue -> claim (issue 23: no circle).

use super::error::UpgradeError;
use super::guard;
use super::record::UpgradeRecord;
use crate::config::Cluster;

/// Takes the upgrade lock on `target` for upgrade `id` (see `guard`).
async fn lock_guard(
    cfg: &Cluster,
    target: &crate::config::ConnString,
    id: &str,
) -> Result<guard::Guard, UpgradeError> {
    Ok(guard::Guard::acquire(
        target,
        id,
        &cfg.state_dir.display().to_string(),
        cfg.database.connect_timeout.0,
        crate::pooler::query_timeout(cfg),
    )
    .await?)
}

/// The lock and the row, for continuing upgrade `id`.
pub(super) async fn take_guard(
    cfg: &Cluster,
    target: &crate::config::ConnString,
    id: &str,
) -> Result<guard::Guard, UpgradeError> {
    let mut g = lock_guard(cfg, target, id).await?;
    g.claim().await?;
    Ok(g)
}

/// The guard for continuing upgrade `rec`: on `database.primary`; once
/// promote has started, the new primary is where the guard is written (the
/// old one is only held, and not at all when it no longer answers).
pub(super) async fn take_guard_for(
    cfg: &Cluster,
    rec: &UpgradeRecord,
    provider: &dyn crate::provider::Provider,
) -> Result<guard::Guard, UpgradeError> {
    if !rec.promote_started() {
        return take_guard(cfg, &cfg.database.primary, &rec.id).await;
    }
    let endpoint = match rec.source() {
        Some(source) => {
            let id = crate::provider::replica_id(&source.id, &rec.id);
            provider.describe(&id).await?.endpoint
        }
        None => None,
    };
    let Some(endpoint) = endpoint else {
        return take_guard(cfg, &cfg.database.primary, &rec.id).await;
    };
    match lock_guard(cfg, &cfg.database.primary, &rec.id).await {
        Ok(mut g) => {
            g.freeze(&cfg.database.primary.to_string());
            g.extend_to(&endpoint).await?;
            Ok(g)
        }
        Err(UpgradeError::Guard(guard::GuardError::Pg(e))) => {
            tracing::info!(error = %e, "old primary unreachable after promote; the guard is on the new one");
            take_guard(cfg, &endpoint, &rec.id).await
        }
        Err(e) => Err(e),
    }
}
