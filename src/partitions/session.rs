//! The session every pass talks through (its statements' retry pacing is
//! [`crate::pg::retry`]).

use tokio_postgres::Client;

use super::error::PartitionError;
use crate::config::Cluster;

/// Namespace of the per-table advisory locks (`pg_try_advisory_lock(NS, oid)`):
/// "pgst". The two-int form never collides with the service's one-bigint leader lock.
pub const ADVISORY_NAMESPACE: i32 = 0x7067_7374;

/// Opens a session for maintenance. Settings ride in the startup packet (no
/// extra round trip): `lock_timeout` bounds every statement's lock wait, and
/// UTC/ISO make `pg_get_expr` print bounds the way `catalog::parse_bound` reads them.
pub async fn connect(cfg: &Cluster) -> Result<Client, PartitionError> {
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
