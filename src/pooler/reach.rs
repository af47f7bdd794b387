//! How pgsteward reaches a PgBouncer (never with startup `options`) and
//! which `[databases]` entries reach a given server.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use tokio_postgres::Client;

use super::PoolerError;
use crate::config::ConnString;

/// The spec of a connection through PgBouncer (its admin console or a
/// pooled database): `conn` without any startup `options`. A stock
/// PgBouncer refuses a startup parameter it neither tracks nor ignores
/// (1.18: `options` at all; 1.20+: a `-c` of an untracked setting such as
/// `statement_timeout`), and in transaction pooling a session setting
/// would leak to other clients' server connections anyway: whatever a
/// pooled statement needs it sets with `SET LOCAL` inside its own
/// transaction. Every connection pgsteward makes to a PgBouncer is made
/// from this spec.
pub fn pooler_spec(conn: &ConnString) -> Result<crate::pg::ConnSpec, crate::pg::PgError> {
    let raw = conn.expose();
    match crate::pg::conninfo::ConnParams::parse(raw) {
        Ok(mut p) => {
            p.take("options");
            crate::pg::ConnSpec::parse(&p.to_key_value())
        }
        // Unparseable: the spec's own error names why.
        Err(_) => crate::pg::ConnSpec::parse(raw),
    }
}

/// A session through PgBouncer on `conn` (see [`pooler_spec`]), with TCP
/// keepalives so a PgBouncer that vanished is noticed in seconds.
pub async fn pooled_session(conn: &ConnString, timeout: Duration) -> Result<Client, PoolerError> {
    let mut spec = pooler_spec(conn)?;
    spec.config.keepalives(true);
    spec.config.keepalives_idle(Duration::from_secs(5));
    spec.config.keepalives_interval(Duration::from_secs(2));
    spec.config.keepalives_retries(3);
    Ok(spec.connect(timeout).await?)
}

/// The addresses (IPs) `host` resolves to; a literal address or a socket
/// directory stands for itself. Bounded: a name that does not resolve in
/// time resolves to nothing.
async fn resolve(host: &str, port: u16) -> HashSet<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return HashSet::from([ip]);
    }
    if host.is_empty() || host.starts_with('/') {
        return HashSet::new();
    }
    let lookup = tokio::net::lookup_host((host, port));
    match tokio::time::timeout(Duration::from_secs(2), lookup).await {
        Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
        _ => HashSet::new(),
    }
}

/// The servers whose entries are cut over, each as written and resolved.
#[derive(Debug, Clone, Default)]
pub struct Servers(Vec<(String, u16, HashSet<IpAddr>)>);

impl Servers {
    pub async fn resolve(addresses: &[(String, u16)]) -> Servers {
        let mut out = Vec::new();
        for (h, p) in addresses {
            out.push((h.clone(), *p, resolve(h, *p).await));
        }
        Servers(out)
    }

    /// Whether an entry at `host:port` reaches one of these servers: same
    /// port, and the same name or an address in common.
    pub async fn reaches(&self, host: &str, port: u16) -> bool {
        let mut ips: Option<HashSet<IpAddr>> = None;
        for (h, p, addrs) in &self.0 {
            if *p != port {
                continue;
            }
            if h.eq_ignore_ascii_case(host) {
                return true;
            }
            if ips.is_none() {
                ips = Some(resolve(host, port).await);
            }
            if ips.as_ref().is_some_and(|i| !i.is_disjoint(addrs)) {
                return true;
            }
        }
        false
    }
}
