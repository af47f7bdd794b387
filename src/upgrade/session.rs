//! The saga's own sessions to the servers (not through a pooler): every
//! step, precheck and rescue that talks to the old or new server directly
//! connects here.

use std::time::Duration;

use tokio_postgres::Client;

use super::error::UpgradeError;
use crate::config::{Cluster, ConnString};
use crate::pooler::query_timeout;

/// A saga session: TCP keepalives (a peer that vanished is noticed in
/// seconds, not hours) and a server-side `statement_timeout` matching the
/// client-side bound, both in the startup packet (no extra round trip).
pub(crate) async fn connect(target: &ConnString, cfg: &Cluster) -> Result<Client, UpgradeError> {
    let spec = target.spec()?;
    let mut config = spec.config.clone();
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(5));
    config.keepalives_interval(Duration::from_secs(2));
    config.keepalives_retries(3);
    let mut options = config.get_options().unwrap_or_default().to_string();
    options.push_str(&format!(
        " -c statement_timeout={}ms",
        query_timeout(cfg).as_millis()
    ));
    config.options(options.trim());
    let timeout = cfg.database.connect_timeout.0;
    // The connect timeout of ConnSpec covers TCP and the startup exchange.
    Ok(spec.connect_with(config, timeout).await?)
}
