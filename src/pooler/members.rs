//! Which PgBouncer instances the configured admin endpoints stand for.
//!
//! An endpoint whose host is a name stands for every address the system
//! resolver gives for it (a Kubernetes headless Service lists one address
//! per ready pod, a Deployment's pods included): each address is one
//! instance, and every command meant for that instance is pinned to its
//! address (`hostaddr`; `host` keeps the name, so TLS verification and the
//! password file still see the name). A literal address, a Unix socket
//! directory, a list of hosts (libpq's fail-over form) or an explicit
//! `hostaddr` stands for itself: one instance. A name with both IPv4 and
//! IPv6 addresses counts its IPv4 ones only (dual stack: each pod twice).
//!
//! Membership is read again at the moments the cutover depends on it
//! ([`Poolers::refresh_members`]): before PAUSE, before promote, before
//! repoint and before RESUME, so an instance that a rollout or a scale-up
//! added in between is paused and repointed too (see `window`).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use super::{Endpoint, PoolerError, Poolers};
use crate::config::ConnString;

/// The longest one resolution of a name may take (the system resolver has
/// its own retries; a cluster DNS that does not answer in this time is down).
pub const RESOLVE_BOUND: Duration = Duration::from_secs(3);

/// One instance an admin endpoint stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The instance as a metric label and a key: `ip:port`, or the
    /// endpoint's own `host:port` when it stands for itself.
    pub key: String,
    /// What messages call it: the endpoint (no password) and, when a name
    /// stood for several addresses, this one's.
    pub name: String,
    /// The admin URL that reaches exactly this instance.
    pub admin: ConnString,
}

/// `host:port`, an IPv6 address in brackets.
fn address_key(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// How an admin endpoint is reached: by itself, or by resolving `host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reach {
    /// One instance, the endpoint as written (`key` is its `host:port`).
    Itself { key: String },
    /// A name to resolve.
    Name { host: String, port: u16 },
}

/// Pure: how `admin` is reached (see the module doc).
pub(super) fn reach_of(admin: &ConnString) -> Result<Reach, PoolerError> {
    let spec = super::pooler_spec(admin)?;
    let (host, port) = spec.host_port();
    let itself = Reach::Itself {
        key: format!("{host}:{port}"),
    };
    let several_hosts = spec.config.get_hosts().len() > 1;
    let pinned = !spec.config.get_hostaddrs().is_empty();
    if several_hosts || pinned || host.is_empty() || host.starts_with('/') {
        return Ok(itself);
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Reach::Itself {
            key: address_key(ip, port),
        });
    }
    Ok(Reach::Name { host, port })
}

/// Pure: `admin` pinned to `ip` (`hostaddr`), everything else kept.
pub(super) fn pinned(admin: &ConnString, ip: IpAddr) -> Result<ConnString, PoolerError> {
    let mut p = crate::pg::conninfo::ConnParams::parse(admin.expose()).map_err(|e| {
        PoolerError::Resolve {
            endpoint: admin.to_string(),
            detail: e.to_string(),
        }
    })?;
    p.set("hostaddr", ip.to_string());
    Ok(ConnString::new(p.to_key_value()))
}

/// Every instance `admin` stands for, in address order; a name that does not
/// resolve within `bound`, or to no address, is an error naming it.
pub async fn instances_of(
    admin: &ConnString,
    bound: Duration,
) -> Result<Vec<Instance>, PoolerError> {
    let (host, port) = match reach_of(admin)? {
        Reach::Itself { key } => {
            return Ok(vec![Instance {
                key,
                name: admin.to_string(),
                admin: admin.clone(),
            }])
        }
        Reach::Name { host, port } => (host, port),
    };
    let resolve_error = |detail: String| PoolerError::Resolve {
        endpoint: admin.to_string(),
        detail,
    };
    let lookup = tokio::net::lookup_host((host.as_str(), port));
    let addrs: BTreeSet<IpAddr> = match tokio::time::timeout(bound, lookup).await {
        Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
        Ok(Err(e)) => return Err(resolve_error(format!("{host} does not resolve: {e}"))),
        Err(_) => {
            return Err(resolve_error(format!(
                "{host} not resolved within {bound:?}"
            )))
        }
    };
    let addrs = one_family(addrs);
    if addrs.is_empty() {
        return Err(resolve_error(format!("{host} resolves to no address")));
    }
    addrs
        .into_iter()
        .map(|ip| {
            Ok(Instance {
                key: address_key(ip, port),
                name: format!("{admin} at {}", address_key(ip, port)),
                admin: pinned(admin, ip)?,
            })
        })
        .collect()
}

/// Pure: the IPv4 addresses when there are any, else the IPv6 ones. A
/// dual-stack headless Service lists each pod twice (A and AAAA), and
/// `localhost` is often both 127.0.0.1 and ::1: one process must count
/// once, or it would be paused twice over two "instances".
pub(super) fn one_family(addrs: BTreeSet<IpAddr>) -> BTreeSet<IpAddr> {
    if addrs.iter().any(IpAddr::is_ipv4) {
        addrs.into_iter().filter(IpAddr::is_ipv4).collect()
    } else {
        addrs
    }
}

/// Pure: what a new resolution changes. `known` are the (source, key) of
/// the instances held now, `found` those just resolved. Returns the indexes
/// into `found` that are new, and the indexes into `known` no longer listed.
pub(super) fn changes(
    known: &[(usize, String)],
    found: &[(usize, String)],
) -> (Vec<usize>, Vec<usize>) {
    let added = (0..found.len())
        .filter(|i| !known.contains(&found[*i]))
        .collect();
    let gone = (0..known.len())
        .filter(|i| !found.contains(&known[*i]))
        .collect();
    (added, gone)
}

impl Poolers {
    /// Resolves every configured admin endpoint again. Instances not known
    /// before are added (nothing discovered or paused there yet) and their
    /// names returned. An instance no longer listed is dropped, unless a
    /// PAUSE of this process is in force there: RESUME must still reach it
    /// (it is then marked unlisted, see [`Poolers::resume`]).
    ///
    /// Every endpoint at once, each bounded by [`RESOLVE_BOUND`] (and the
    /// pause deadline inside the window); any that fails is the error, and
    /// nothing changes.
    pub async fn refresh_members(&mut self) -> Result<Vec<String>, PoolerError> {
        let bound = RESOLVE_BOUND
            .min(self.limit())
            .max(Duration::from_millis(1));
        let runs = self.sources.iter().map(|s| instances_of(&s.admin, bound));
        let mut found = Vec::new();
        for (i, r) in futures::future::join_all(runs)
            .await
            .into_iter()
            .enumerate()
        {
            for inst in r? {
                found.push((i, inst));
            }
        }
        let known: Vec<(usize, String)> = self
            .endpoints
            .iter()
            .map(|e| (e.source, e.instance.clone()))
            .collect();
        let keys: Vec<(usize, String)> = found.iter().map(|(i, f)| (*i, f.key.clone())).collect();
        let (added, gone) = changes(&known, &keys);
        let gone: BTreeSet<usize> = gone.into_iter().collect();
        let mut kept = Vec::new();
        for (i, mut e) in std::mem::take(&mut self.endpoints).into_iter().enumerate() {
            if !gone.contains(&i) {
                e.listed = true;
                kept.push(e);
            } else if !e.paused_here.is_empty() {
                tracing::warn!(pooler = %e.name, "instance no longer listed by its name, but paused by this upgrade: RESUME will still be sent");
                e.listed = false;
                kept.push(e);
            } else {
                tracing::info!(pooler = %e.name, "instance no longer listed by its name; forgotten");
            }
        }
        let mut names = Vec::new();
        for i in added {
            let (source, inst) = &found[i];
            names.push(inst.name.clone());
            kept.push(Endpoint::new(
                *source,
                inst.clone(),
                self.sources[*source].ini.clone(),
            ));
        }
        // Address order within each endpoint, endpoints in configured order.
        kept.sort_by(|a, b| (a.source, &a.instance).cmp(&(b.source, &b.instance)));
        self.endpoints = kept;
        self.members_known = true;
        Ok(names)
    }

    /// Resolves the members once, if that has not happened yet.
    pub(super) async fn ensure_members(&mut self) -> Result<(), PoolerError> {
        if !self.members_known {
            self.refresh_members().await?;
        }
        Ok(())
    }

    /// The way back when a name cannot be resolved at all (RESUME after a
    /// crash with the cluster DNS down): each endpoint as written, left to
    /// the driver's own resolution. Better one address reached than none.
    pub(super) fn members_as_written(&mut self) {
        self.endpoints = self
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Endpoint::new(
                    i,
                    Instance {
                        key: s.admin.to_string(),
                        name: s.admin.to_string(),
                        admin: s.admin.clone(),
                    },
                    s.ini.clone(),
                )
            })
            .collect();
        self.members_known = true;
    }

    /// Every instance known, as (its label, what messages call it).
    pub fn instances(&self) -> Vec<(String, String)> {
        self.endpoints
            .iter()
            .map(|e| (e.instance.clone(), e.name.clone()))
            .collect()
    }

    /// Every configured endpoint with the instances it stands for (after a
    /// resolution): for `upgrade plan` and `check`.
    pub fn membership(&self) -> Vec<(String, Vec<String>)> {
        self.sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let members = self
                    .endpoints
                    .iter()
                    .filter(|e| e.source == i && e.listed)
                    .map(|e| e.instance.clone())
                    .collect();
                (s.admin.to_string(), members)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_resolved_an_address_or_socket_stands_for_itself() {
        let c = |s: &str| ConnString::new(s);
        assert_eq!(
            reach_of(&c(
                "postgres://pgbouncer:pw@pgbouncer.data.svc:6432/pgbouncer"
            ))
            .unwrap(),
            Reach::Name {
                host: "pgbouncer.data.svc".into(),
                port: 6432
            }
        );
        assert_eq!(
            reach_of(&c("postgres://pgbouncer@10.0.0.5:6432/pgbouncer")).unwrap(),
            Reach::Itself {
                key: "10.0.0.5:6432".into()
            }
        );
        assert_eq!(
            reach_of(&c(
                "host=/run/pgbouncer port=6432 user=pgbouncer dbname=pgbouncer"
            ))
            .unwrap(),
            Reach::Itself {
                key: "/run/pgbouncer:6432".into()
            }
        );
        // The operator pinned it already, or gave libpq a fail-over list.
        assert!(matches!(
            reach_of(&c(
                "host=pooler hostaddr=10.0.0.5 port=6432 user=pgbouncer dbname=pgbouncer"
            ))
            .unwrap(),
            Reach::Itself { .. }
        ));
        assert!(matches!(
            reach_of(&c("postgres://pgbouncer@a:6432,b:6432/pgbouncer")).unwrap(),
            Reach::Itself { .. }
        ));
        assert_eq!(
            reach_of(&c("postgres://pgbouncer@[::1]:6432/pgbouncer")).unwrap(),
            Reach::Itself {
                key: "[::1]:6432".into()
            }
        );
    }

    /// The pinned URL reaches the address and still names the host (TLS
    /// verification and the password file use the name).
    #[test]
    fn pinning_keeps_the_name_user_password_and_tls() {
        let admin = ConnString::new(
            "postgres://pgbouncer:p%40ss@pgbouncer.data.svc:6432/pgbouncer?sslmode=verify-full",
        );
        let p = pinned(&admin, "10.1.2.3".parse().unwrap()).unwrap();
        let spec = p.spec().unwrap();
        assert_eq!(spec.host_port(), ("pgbouncer.data.svc".to_string(), 6432));
        assert_eq!(
            spec.config.get_hostaddrs(),
            &["10.1.2.3".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(spec.password(), Some("p@ss"));
        assert_eq!(spec.ssl_mode, crate::pg::SslMode::VerifyFull);
        assert!(!p.to_string().contains("p@ss"), "{p}");
    }

    #[test]
    fn a_dual_stack_name_counts_each_instance_once() {
        let ips =
            |v: &[&str]| -> BTreeSet<IpAddr> { v.iter().map(|a| a.parse().unwrap()).collect() };
        assert_eq!(
            one_family(ips(&["10.0.0.1", "fd00::1", "10.0.0.2", "fd00::2"])),
            ips(&["10.0.0.1", "10.0.0.2"])
        );
        assert_eq!(one_family(ips(&["127.0.0.1", "::1"])), ips(&["127.0.0.1"]));
        assert_eq!(
            one_family(ips(&["fd00::1", "fd00::2"])),
            ips(&["fd00::1", "fd00::2"])
        );
    }

    #[test]
    fn changes_name_what_appeared_and_what_left() {
        let k = |s: usize, a: &str| (s, a.to_string());
        let known = [k(0, "10.0.0.1:6432"), k(0, "10.0.0.2:6432")];
        let found = [
            k(0, "10.0.0.2:6432"),
            k(0, "10.0.0.3:6432"),
            k(1, "10.0.0.1:6432"),
        ];
        assert_eq!(changes(&known, &found), (vec![1, 2], vec![0]));
        assert_eq!(changes(&known, &known), (vec![], vec![]));
    }

    #[tokio::test]
    async fn localhost_resolves_to_its_addresses() {
        let admin = ConnString::new("postgres://pgbouncer@localhost:6432/pgbouncer");
        let found = instances_of(&admin, RESOLVE_BOUND).await.unwrap();
        assert!(!found.is_empty());
        assert!(found.iter().all(|i| i.key.ends_with(":6432")), "{found:?}");
        let e = instances_of(
            &ConnString::new("postgres://pgbouncer@no-such-host.invalid:6432/pgbouncer"),
            RESOLVE_BOUND,
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("no-such-host.invalid"), "{e}");
    }
}
