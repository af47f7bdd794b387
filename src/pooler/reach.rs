//! How pgsteward reaches a PgBouncer (never with startup `options`),
//! which `[databases]` entries reach a given server, and which entries of
//! one instance are cut over (`discover_one`).

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use tokio_postgres::Client;

use super::{ini_entries, simple, sql, DatabaseEntry, Endpoint, PoolerError};
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

/// `SHOW DATABASES` on `c`.
pub(super) async fn show_databases(
    c: &Client,
    admin: &str,
    after: Duration,
) -> Result<Vec<DatabaseEntry>, PoolerError> {
    let rows = simple(c, admin, sql::SHOW_DATABASES, after).await?;
    Ok(rows
        .iter()
        .map(|r| DatabaseEntry {
            name: r.get("name").unwrap_or_default().to_string(),
            host: r.get("host").unwrap_or_default().to_string(),
            port: r.get("port").and_then(|p| p.parse().ok()).unwrap_or(0),
            database: r.get("database").unwrap_or_default().to_string(),
            paused: r.get("paused").is_some_and(|p| p == "1"),
            pool_mode: r
                .get("pool_mode")
                .filter(|m| !m.is_empty())
                .map(str::to_string),
        })
        .collect())
}

/// [`Poolers::discover`] for one instance: its control session (opened
/// when needed), `SHOW DATABASES` within `limit`; failing that, the
/// entries of its pgbouncer.ini; failing that, `cutover_db` alone.
pub(super) async fn discover_one(
    e: &mut Endpoint,
    servers: &Option<Servers>,
    cutover_db: &str,
    connect_timeout: Duration,
    limit: Duration,
) {
    let admin = e.name.clone();
    let read = async {
        if e.ctl_conn.as_ref().map_or(true, |c| c.is_closed()) {
            e.ctl_conn = Some(super::open(&admin, &e.admin, connect_timeout.min(limit)).await?);
        }
        let c = e.ctl_conn.as_ref().ok_or(PoolerError::NotConfigured)?;
        show_databases(c, &admin, limit).await
    };
    let shown: Vec<(String, String, u16)> = match tokio::time::timeout(limit, read).await {
        Ok(Ok(rows)) => rows.into_iter().map(|d| (d.name, d.host, d.port)).collect(),
        failed => {
            let why = match failed {
                Ok(Err(err)) => err.to_string(),
                _ => format!("no answer within {limit:?}"),
            };
            // A hung console: the next command opens a fresh session.
            e.ctl_conn = None;
            tracing::warn!(pooler = %admin, error = %why, "SHOW DATABASES failed; the entries are read from the instance's pgbouncer.ini");
            e.ini
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .map(|t| ini_entries(&t))
                .unwrap_or_default()
        }
    };
    let mut dbs = vec![cutover_db.to_string()];
    for (name, host, port) in shown {
        let reaches = match servers {
            Some(s) => s.reaches(&host, port).await,
            None => true,
        };
        if name != "pgbouncer" && !dbs.contains(&name) && reaches {
            dbs.push(name);
        }
    }
    e.dbs = dbs;
}
