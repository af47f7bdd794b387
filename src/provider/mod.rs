//! Providers make, describe, promote and retire the servers of a vertical
//! upgrade. The saga (`crate::upgrade`) owns ordering, persistence and every
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
//! `pg_ctl`, `pg_promote()`), and `rds` (aws-sdk-rds; built on its own branch).

pub mod local;
pub mod rds;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConnString, ProviderKind};

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

/// Lifecycle of the new server as the provider sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum ReplicaState {
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

/// What `describe` observed about a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    pub id: String,
    pub state: ReplicaState,
    /// Where SQL reaches the server: same user, database and options as
    /// `database.primary`, other host and port. `None` until it has an address.
    pub endpoint: Option<ConnString>,
    /// The class the provider reports (RDS instance class; local: the class name given at create).
    pub class: Option<String>,
}

/// Who moves client traffic to the new primary in the `repoint` step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RepointBy {
    /// The saga rewrites PgBouncer's `[databases]` entry to the new endpoint and RELOADs.
    Pooler,
    /// The provider makes the old address reach the new server (RDS identifier
    /// swap); the saga then only RELOADs the pooler so it reconnects.
    Provider,
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
}

/// The provider's part of the prechecks: whether the target class exists and
/// differs from the source's, whether the provider can create the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Precheck {
    pub source: SourceFacts,
    pub checks: Vec<Check>,
}

/// How the saga fences the old primary (step 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FenceMethod {
    /// `ALTER SYSTEM SET default_transaction_read_only` + reload: needs a
    /// superuser, stays on the old server (postgresql.auto.conf is not replicated).
    AlterSystem,
    /// `ALTER DATABASE ... SET default_transaction_read_only` on every database
    /// (RDS refuses `ALTER SYSTEM`; see `rds::fence_databases`). Replicated:
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

    /// Who performs the `repoint` step for this provider (see [`RepointBy`]).
    fn repoint_by(&self) -> RepointBy {
        RepointBy::Pooler
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

    /// Only for [`RepointBy::Provider`]: make the source's address reach server
    /// `id`. Idempotent. The default does nothing.
    async fn repoint(&self, _source: &SourceFacts, _id: &str) -> Result<(), ProviderError> {
        Ok(())
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
pub fn from_config(cfg: &Config) -> Result<Box<dyn Provider>, ProviderError> {
    match cfg.upgrade.provider {
        ProviderKind::Local => Ok(Box::new(local::LocalProvider::new(cfg)?)),
        ProviderKind::Rds => Ok(Box::new(rds::RdsProvider::new(cfg)?)),
    }
}

/// [`from_config`] whose waits (RDS polling and backoff) end when `cancel`
/// fires (SIGTERM/SIGINT of an upgrade run).
pub fn from_config_cancellable(
    cfg: &Config,
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
    // Key/value: parsed (values may be quoted, with spaces and escapes), so
    // only the address changes.
    match crate::pg::conninfo::ConnParams::parse(s) {
        Ok(mut p) => {
            p.take("host");
            p.take("hostaddr");
            p.take("port");
            p.set("host", host);
            p.set("port", port.to_string());
            ConnString::new(p.to_key_value())
        }
        Err(_) => ConnString::new(format!("{s} host={host} port={port}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
