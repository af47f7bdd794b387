//! The guard's sessions: the runner's identity, the guard database of a
//! server, a plain reader session and a lock session with keepalives.

use std::time::Duration;

use tokio_postgres::Client;

use super::sql::{SESSION_SETUP, TRY_LOCK};
use super::{bounded, GuardError, GUARD_DATABASE, GUARD_KEY, GUARD_NS};
use crate::config::ConnString;

/// Identity of this runner for the row: `hostname` (pod name in Kubernetes).
pub fn runner_host() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host} pid {}", std::process::id())
}

/// `target` with its database replaced by [`GUARD_DATABASE`]: same server,
/// user, password and TLS settings.
pub fn guard_conn(target: &ConnString) -> ConnString {
    match crate::pg::conninfo::ConnParams::parse(target.expose()) {
        Ok(mut p) => {
            p.set("dbname", GUARD_DATABASE);
            ConnString::new(p.to_key_value())
        }
        // Unparseable: connecting fails with the parser's own message.
        Err(_) => target.clone(),
    }
}

/// A plain session in the guard database of `target`'s server, for the
/// readers (service, CronJob, partition pass, prechecks).
pub async fn reader_session(
    target: &ConnString,
    connect_timeout: Duration,
) -> Result<Client, GuardError> {
    Ok(guard_conn(target).spec()?.connect(connect_timeout).await?)
}

/// A new lock session on `target`'s server, in [`GUARD_DATABASE`]:
/// (client, lock taken, backend pid).
pub(super) async fn lock_session(
    target: &ConnString,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<(Client, bool, i32), GuardError> {
    let mut spec = guard_conn(target).spec()?;
    spec.config.keepalives(true);
    spec.config.keepalives_idle(Duration::from_secs(5));
    spec.config.keepalives_interval(Duration::from_secs(2));
    spec.config.keepalives_retries(3);
    spec.config.application_name("pgsteward-upgrade-guard");
    let client = spec.connect(connect_timeout).await?;
    let t = target.to_string();
    bounded(&t, timeout, client.batch_execute(SESSION_SETUP)).await?;
    let row = bounded(
        &t,
        timeout,
        client.query_one(TRY_LOCK, &[&GUARD_NS, &GUARD_KEY]),
    )
    .await?;
    Ok((client, row.get(0), row.get(1)))
}
