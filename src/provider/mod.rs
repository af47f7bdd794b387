//! Providers make, describe, promote and retire the servers of a vertical
//! upgrade. The saga (the `upgrade` module) owns ordering, persistence and every
//! decision; a provider only performs one idempotent effect per call.
//!
//! Contract every implementation keeps (the saga relies on it after a crash):
//!
//! * **Deterministic names.** The new server of upgrade `U` on source `S` is
//!   always [`replica_id`]`(S, U)` = `S-U`. A saga that died between "create"
//!   and "journal the result" finds the server by name on resume.
//! * **Idempotent, adopting calls.** `create_replica` on an id that already
//!   exists (creating or available, on the requested class) adopts it and
//!   returns its description; `promote` on a server that is already a primary,
//!   `delete_replica` on one that is gone and `retire_old` on a source already
//!   retired succeed without doing anything.
//! * **Observation, not trust.** `describe` reads the provider's current view
//!   (`Missing` when nothing has that id). Whether a server really is a writable
//!   primary is confirmed by the saga over SQL (`pg_is_in_recovery()`), never by
//!   a provider status alone.
//! * **No waiting for long.** Calls return when the request was accepted; the
//!   saga polls `describe` under its own deadline and cancellation token.
//!
//! Implementations: [`local`] (clusters on this host, `pg_basebackup`,
//! `pg_ctl`, `pg_promote()`), and [`rds`] (aws-sdk-rds, behind the `RdsApi`
//! seam so tests can play RDS's slow statuses).
//!
//! Where providers differ the saga asks the trait, never the provider kind:
//! how the old primary is fenced ([`Provider::fence_method`]), whether names
//! move after the cutover ([`Provider::swaps_identifiers`]), what the
//! source's readers are and how they are replaced ([`ReaderFacts`],
//! [`Provider::create_reader`]), and whether `database.replicas` can be told
//! to follow the new primary over SQL ([`Provider::follow_new_primary`]:
//! local yes, RDS never: it refuses `ALTER SYSTEM`).

pub mod fence;
pub mod local;
pub mod rds;
pub mod settings;
pub mod slotsync;
pub(crate) mod sql;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{Cluster, ConnString, ProviderKind};

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The operator must fix the invocation or the configuration (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The provider's API (or a local program) refused or failed the request.
    #[error("{op} failed: {detail}")]
    Api { op: &'static str, detail: String },
    /// The server exists but is in a state the requested call cannot work from.
    #[error("{id} is {state}; {hint}")]
    WrongState {
        id: String,
        state: String,
        hint: String,
    },
    #[error(transparent)]
    LocalPg(#[from] crate::localpg::LocalPgError),
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    #[error("cancelled")]
    Cancelled,
    /// A role the `pg_hba.conf` fence would have to name but cannot.
    #[error("role {role:?} cannot be named in pg_hba.conf; rename it or make it NOLOGIN before the upgrade")]
    UnnameableRole { role: String },
}

impl ProviderError {
    pub fn is_usage(&self) -> bool {
        matches!(self, ProviderError::Usage(_))
    }
}

/// The name of the new server for upgrade `upgrade_id` of `source_id`.
/// Deterministic so a resumed saga finds what a crashed one created.
/// Names longer than RDS's 63-character identifier limit are shortened
/// deterministically (see [`rds::rds_identifier`]).
pub fn replica_id(source_id: &str, upgrade_id: &str) -> String {
    let id = format!("{source_id}-{upgrade_id}");
    if id.len() <= 63 {
        id
    } else {
        rds::rds_identifier(source_id, upgrade_id, 63)
    }
}

/// Lifecycle of a new server as the provider sees it. (Not the lag check's
/// `lag::ReplicaState`, which is about replication, not provisioning.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum ServerState {
    /// Nothing with this id exists.
    Missing,
    /// Being created (RDS `creating`, `backing-up`, `modifying`...; local: base backup running).
    Creating,
    /// Running and accepting SQL connections (as a replica or, after promote, as a primary).
    Available,
    /// Being deleted.
    Deleting,
    /// Will not become available without an operator: the reason says why.
    Failed(String),
}

/// For people: `failed: <reason>`, never the enum's debug form.
impl std::fmt::Display for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerState::Missing => f.write_str("missing"),
            ServerState::Creating => f.write_str("being created"),
            ServerState::Available => f.write_str("available"),
            ServerState::Deleting => f.write_str("being deleted"),
            ServerState::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// What `describe` observed about a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    pub id: String,
    pub state: ServerState,
    /// Where SQL reaches the server: same user, database and options as
    /// `database.primary`, other host and port. `None` until it has an address.
    pub endpoint: Option<ConnString>,
    /// The class the provider reports (RDS instance class; local: the class name given at create).
    pub class: Option<String>,
}

/// Facts about the source learnt at precheck and journaled with it, so later
/// steps (create, retire) work after a restart even when the source no longer
/// answers SQL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFacts {
    /// Stable provider name of the source: RDS instance identifier; local: the
    /// data directory's base name. New server ids derive from it.
    pub id: String,
    /// Local provider: the source's `data_directory` (read over SQL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_directory: Option<PathBuf>,
    /// Anything else a provider wants back later (e.g. the source's instance class).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
    /// The source's readers the upgrade replaces, fixed at precheck so every
    /// later step (and `upgrade abort`) works on the same list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readers: Vec<ReaderFacts>,
    /// The source's replication slots the upgrade carries to the new server
    /// (`upgrade::slots`), fixed at precheck: a slot made later is not carried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<ReplicationSlot>,
}

impl SourceFacts {
    /// Logical slots the new server must have synchronized before promote
    /// (PostgreSQL 17+ failover slots).
    pub fn syncs_logical_slots(&self) -> bool {
        self.slots.iter().any(|s| s.kind == SlotKind::Logical)
    }
}

/// Physical (a standby, pg_receivewal) or logical (a subscription, a CDC consumer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotKind {
    #[default]
    Physical,
    Logical,
}

/// One replication slot of the source as `pg_replication_slots` and
/// `pg_stat_replication` show it (positions are `pg_lsn` text).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationSlot {
    pub name: String,
    pub kind: SlotKind,
    /// Logical: the output plugin (`pgoutput`, `test_decoding`, `wal2json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Logical: the database it decodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    pub active: bool,
    pub temporary: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_lsn: Option<String>,
    /// Logical: what the consumer confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_flush: Option<String>,
    /// PostgreSQL 17+: synchronized to standbys that ask for it.
    pub failover: bool,
    /// Who streams from it now: application name, address, state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
}

/// One reader (read replica) of the source and the new reader that replaces it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaderFacts {
    /// The old reader's stable name (RDS instance identifier).
    pub id: String,
    /// The old reader's class.
    pub class: String,
    /// The new reader: a replica of the new server, deterministic (see [`reader_id`]).
    pub new_id: String,
    /// The class of the new reader (the old one's, or `upgrade.rds.reader_class`).
    pub new_class: String,
    /// `host:port` the old reader answered at, at precheck: PgBouncer
    /// entries pointing there are read entries and move to the new reader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// The new reader that replaces `old_reader` in upgrade `upgrade_id`.
pub fn reader_id(old_reader: &str, upgrade_id: &str) -> String {
    replica_id(old_reader, upgrade_id)
}

/// What [`Provider::follow_new_primary`] did with one `database.replicas` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Follow {
    /// Told to stream from the new primary.
    Repointed,
    /// Not a replica (or already following): nothing to do.
    NotAReplica,
    /// The provider does not let SQL change it (RDS): its readers are
    /// replaced instead (create_readers, move_reads, retire_old).
    Managed,
    /// Did not answer; the upgrade goes on, the operator is told.
    Unreachable(String),
}

/// One precheck result. `ok = false` stops `upgrade start` before any change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// What was seen; when not ok, what to do about it.
    pub detail: String,
}

impl Check {
    pub fn new(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        }
    }

    /// What was seen, and the fix only when the check fails: an `[ok]` line
    /// carries no advice.
    pub fn seen_and_fix(
        name: impl Into<String>,
        ok: bool,
        seen: impl Into<String>,
        fix: impl AsRef<str>,
    ) -> Check {
        let seen = seen.into();
        let detail = if ok {
            seen
        } else {
            format!("{seen}; {}", fix.as_ref())
        };
        Check::new(name, ok, detail)
    }
}

/// The provider's part of the prechecks: whether the target class exists and
/// differs from the source's, whether the provider can create the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Precheck {
    pub source: SourceFacts,
    pub checks: Vec<Check>,
}

impl Precheck {
    /// Every failed check as "name: detail", in order.
    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect()
    }
}

/// How the saga fences the old primary (fence_old_primary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FenceMethod {
    /// `ALTER SYSTEM SET default_transaction_read_only` + reload: needs a
    /// superuser, stays on the old server (postgresql.auto.conf is not replicated).
    AlterSystem,
    /// `ALTER DATABASE ... SET default_transaction_read_only` on every database
    /// (RDS refuses `ALTER SYSTEM`; see `fence::fence_databases`). Replicated:
    /// the new primary must be unfenced after promotion.
    AlterDatabase,
}

/// One place where upgrades happen. Object-safe (`Box<dyn Provider>`) so the
/// saga is written once for every provider.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// How the old primary is fenced (see [`FenceMethod`]).
    fn fence_method(&self) -> FenceMethod {
        FenceMethod::AlterSystem
    }

    /// Whether the new server gets the source's failover logical slots
    /// synchronized (PostgreSQL 17+, see `upgrade::slots`). The default: no.
    fn syncs_failover_slots(&self) -> bool {
        false
    }

    /// Whether the source's physical slots are made on the new server
    /// (`false`: they are the provider's own, RDS's replicas').
    fn carries_physical_slots(&self) -> bool {
        false
    }

    /// Reads the source and validates `target_class` (exists, differs from the
    /// source's). Changes nothing.
    async fn precheck(&self, target_class: &str) -> Result<Precheck, ProviderError>;

    /// Starts creating [`replica_id`]`(source.id, upgrade_id)`, a streaming
    /// replica of the source on `target_class`. Adopts an existing server of that
    /// id; returns without waiting for it to become available.
    async fn create_replica(
        &self,
        source: &SourceFacts,
        upgrade_id: &str,
        target_class: &str,
    ) -> Result<ReplicaInfo, ProviderError>;

    /// The provider's current view of server `id` (`Missing` when there is none).
    async fn describe(&self, id: &str) -> Result<ReplicaInfo, ProviderError>;

    /// Called before the write pause: open whatever `promote` needs (a
    /// connection, an API client) so it costs no login inside the pause.
    /// The default does nothing.
    async fn prepare_promote(&self, _id: &str) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Asks server `id` to leave recovery. Idempotent; returns once the request
    /// is accepted. The saga confirms the promotion over SQL.
    async fn promote(&self, id: &str) -> Result<(), ProviderError>;

    /// Whether the new servers take the old ones' names after the cutover
    /// (RDS `identifier-swap`). The renames run after RESUME, never in the pause.
    fn swaps_identifiers(&self) -> bool {
        false
    }

    /// Identifier swap, first half: the server holding `name` is renamed
    /// aside (RDS: `<name>-old-<upgrade id>`), unless `name` is free or
    /// already held by `new_id`'s server. Waits (bounded) until the rename is
    /// done. Idempotent; returns what it did.
    async fn rename_aside(
        &self,
        name: &str,
        _upgrade_id: &str,
        _new_id: &str,
    ) -> Result<String, ProviderError> {
        Ok(format!("{name}: this provider renames nothing"))
    }

    /// Identifier swap, second half: server `new_id` takes `name`, waited for.
    /// Idempotent; returns what it did.
    async fn rename_in(&self, new_id: &str, name: &str) -> Result<String, ProviderError> {
        Ok(format!("{new_id}: this provider renames nothing ({name})"))
    }

    /// The new reader that replaces `old_reader` in upgrade `upgrade_id`.
    fn reader_id(&self, old_reader: &str, upgrade_id: &str) -> String {
        reader_id(old_reader, upgrade_id)
    }

    /// The name an identifier swap gives the old holder of `name`.
    fn aside_id(&self, name: &str, upgrade_id: &str) -> String {
        format!("{name}-old-{upgrade_id}")
    }

    /// Where new server `new_id` will listen, as far as it is known before
    /// it exists (`upgrade plan`; `upgrade status` shows the real endpoint).
    fn new_server_address(&self, new_id: &str) -> String {
        format!("the endpoint the provider gives {new_id} when it is created")
    }

    /// How server `id` is retired (`upgrade plan`): `reader` for an old reader.
    fn retire_detail(&self, _id: &str, _reader: bool) -> String {
        "stopped (its data directory is kept unless upgrade.local.keep_old_data = false)".into()
    }

    /// The provider's view of the new reader of `reader` (found under the old
    /// reader's name once an identifier swap gave it that name).
    async fn describe_reader(&self, reader: &ReaderFacts) -> Result<ReplicaInfo, ProviderError> {
        self.describe(&reader.new_id).await
    }

    /// Removes the new reader of `reader` (`upgrade abort`, before promote).
    /// Idempotent: a missing server is success.
    async fn delete_reader(&self, reader: &ReaderFacts) -> Result<(), ProviderError> {
        self.delete_replica(&reader.new_id).await
    }

    /// Starts creating `reader.new_id`, a replica of the new server
    /// `new_primary` (so it follows it through promotion), on
    /// `reader.new_class`. Adopts an existing one; returns without waiting.
    async fn create_reader(
        &self,
        _source: &SourceFacts,
        _upgrade_id: &str,
        _new_primary: &str,
        reader: &ReaderFacts,
    ) -> Result<ReplicaInfo, ProviderError> {
        Err(ProviderError::Usage(format!(
            "this provider does not replace readers ({})",
            reader.id
        )))
    }

    /// Takes the old reader of `reader` (under its own name or renamed
    /// aside) out of service for good, only while it is a replica of the old
    /// primary. Waits until it is gone. Idempotent; returns what it did.
    async fn retire_reader(
        &self,
        _source: &SourceFacts,
        _upgrade_id: &str,
        reader: &ReaderFacts,
    ) -> Result<String, ProviderError> {
        Err(ProviderError::Usage(format!(
            "this provider does not retire readers ({})",
            reader.id
        )))
    }

    /// After promotion: makes each `database.replicas` entry stream from
    /// `new_primary` where the provider lets SQL do it. The default (RDS)
    /// changes nothing: managed replicas are replaced, not reconfigured.
    async fn follow_new_primary(
        &self,
        replicas: &[ConnString],
        _new_primary: &ConnString,
    ) -> Vec<(ConnString, Follow)> {
        replicas
            .iter()
            .map(|r| (r.clone(), Follow::Managed))
            .collect()
    }

    /// Takes the old primary out of service for good (local: stop it, keep its
    /// data directory unless configured otherwise; RDS: delete with a final
    /// snapshot). Called only after the new primary was verified. Idempotent.
    async fn retire_old(&self, source: &SourceFacts) -> Result<(), ProviderError>;

    /// Removes server `id` (used by `upgrade abort`, never after promote).
    /// Idempotent: a missing server is success.
    async fn delete_replica(&self, id: &str) -> Result<(), ProviderError>;
}

/// The provider `upgrade.provider` names.
pub fn from_config(cfg: &Cluster) -> Result<Box<dyn Provider>, ProviderError> {
    match cfg.upgrade.provider {
        ProviderKind::Local => Ok(Box::new(local::LocalProvider::new(cfg)?)),
        ProviderKind::Rds => Ok(Box::new(rds::RdsProvider::new(cfg)?)),
    }
}

/// [`from_config`] whose waits (RDS polling and backoff) end when `cancel`
/// fires (SIGTERM/SIGINT of an upgrade run).
pub fn from_config_cancellable(
    cfg: &Cluster,
    cancel: tokio_util::sync::CancellationToken,
) -> Result<Box<dyn Provider>, ProviderError> {
    match cfg.upgrade.provider {
        ProviderKind::Local => Ok(Box::new(local::LocalProvider::new(cfg)?)),
        ProviderKind::Rds => Ok(Box::new(rds::RdsProvider::new(cfg)?.with_cancel(cancel))),
    }
}

/// `database.primary` with its host and port replaced: the SQL endpoint of a
/// new server, keeping user, password, database and options (sslmode...).
pub fn endpoint_like(primary: &ConnString, host: &str, port: u16) -> ConnString {
    let s = primary.expose();
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        if let Ok(mut url) = url::Url::parse(s) {
            if url.set_host(Some(host)).is_ok() && url.set_port(Some(port)).is_ok() {
                return ConnString::new(url.to_string());
            }
        }
    }
    ConnString::new(with_address(s, host, port))
}

/// A key/value connection string (`primary_conninfo`, a libpq string) with
/// its host and port replaced. Parsed, so quoted values with spaces and
/// escapes survive and only the address changes.
pub fn with_address(conninfo: &str, host: &str, port: u16) -> String {
    match crate::pg::conninfo::ConnParams::parse(conninfo) {
        Ok(mut p) => {
            p.take("host");
            p.take("hostaddr");
            p.take("port");
            p.set("host", host);
            p.set("port", port.to_string());
            p.to_key_value()
        }
        Err(_) => format!(
            "{conninfo} host={} port={port}",
            crate::pg::conninfo::quote_value(host)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ok_check_carries_no_fix() {
        let ok = Check::seen_and_fix("x", true, "pool_mode = transaction", "set pool_mode");
        assert_eq!(ok.detail, "pool_mode = transaction");
        let bad = Check::seen_and_fix("x", false, "pool_mode = session", "set pool_mode");
        assert_eq!(bad.detail, "pool_mode = session; set pool_mode");
    }

    #[test]
    fn replica_ids_are_deterministic() {
        assert_eq!(
            replica_id("platform-postgres", "u1"),
            "platform-postgres-u1"
        );
    }

    #[test]
    fn endpoint_keeps_everything_but_the_address() {
        let p = ConnString::new("postgres://steward:secret@db:5432/app?sslmode=require");
        let e = endpoint_like(&p, "10.0.0.7", 6543);
        assert_eq!(
            e.expose(),
            "postgres://steward:secret@10.0.0.7:6543/app?sslmode=require"
        );
        let kv = ConnString::new("host=db port=5432 user=steward dbname=app");
        assert_eq!(
            endpoint_like(&kv, "127.0.0.1", 7000).expose(),
            "user=steward dbname=app host=127.0.0.1 port=7000"
        );
        let quoted = ConnString::new("host=db password='a b\\'c' user=steward");
        let e = endpoint_like(&quoted, "127.0.0.1", 7000);
        let spec = e.spec().unwrap();
        assert_eq!(spec.password(), Some("a b'c"));
        assert_eq!(spec.host_port(), ("127.0.0.1".to_string(), 7000));
    }

    #[test]
    fn conninfo_with_quoted_spaces_keeps_them() {
        let c = "user=postgres passfile='/var/lib/my dir/pass' host=10.0.0.1 port=5000 application_name='a b'";
        let out = with_address(c, "127.0.0.1", 6000);
        let p = crate::pg::conninfo::ConnParams::parse(&out).unwrap();
        assert_eq!(p.get("passfile"), Some("/var/lib/my dir/pass"));
        assert_eq!(p.get("application_name"), Some("a b"));
        assert_eq!(p.get("host"), Some("127.0.0.1"));
        assert_eq!(p.get("port"), Some("6000"));
    }
}
