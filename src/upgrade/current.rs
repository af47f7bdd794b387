//! For the other commands (partitions, convert, check): whether
//! `database.primary` is still the writable primary after an upgrade
//! (whether DDL may run now is `gate`).

use super::error::UpgradeError;
use super::journal;
use super::sql::PRIMARY_WRITABLE;
use crate::config::Cluster;

/// For other commands: fails when `database.primary` no longer answers as a
/// writable primary, naming the node an upgrade of this state_dir made
/// primary. The guard row (an upgrade run from any host) is the DDL gate's
/// witness (`gate`): every caller asks the gate too, which reads the row
/// once for both questions.
pub async fn ensure_primary_current(cfg: &Cluster) -> Result<(), UpgradeError> {
    let moved = || -> Option<UpgradeError> {
        let path = journal::latest_readonly(&cfg.state_dir).ok()??;
        let rec = journal::read(&path).ok()?;
        rec.promote_started().then(|| UpgradeError::PrimaryMoved {
            old: cfg.database.primary.to_string(),
            id: rec.id.clone(),
            new: rec
                .replica_endpoint()
                .unwrap_or("(see `upgrade status`)")
                .to_string(),
        })
    };
    let client = match super::session::connect(&cfg.database.primary, cfg).await {
        Ok(c) => c,
        Err(e) => return Err(moved().unwrap_or(e)),
    };
    let after = crate::pooler::query_timeout(cfg);
    let row = match tokio::time::timeout(after, client.query_one(PRIMARY_WRITABLE, &[])).await {
        Ok(r) => r.map_err(|e| super::error::q(&cfg.database.primary, e))?,
        Err(_) => {
            return Err(UpgradeError::Timeout {
                what: format!("an answer from {}", cfg.database.primary),
                after,
            })
        }
    };
    let writable = !row.get::<_, bool>(0) && row.get::<_, String>(1) == "off";
    if writable {
        return Ok(());
    }
    Err(moved().unwrap_or_else(|| UpgradeError::NotPrimary(cfg.database.primary.to_string())))
}
