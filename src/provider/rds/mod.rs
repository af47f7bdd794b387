//! The `rds` provider: the new primary is an RDS read replica of the source on
//! the target instance class (`CreateDBInstanceReadReplica`), promoted with
//! `PromoteReadReplica`; the old primary is deleted with a final snapshot.
//!
//! Everything is found again by name and tag, so a restarted saga adopts what
//! a crashed one started:
//! * the new instance is [`rds_replica_id`]`(source, upgrade)`, tagged
//!   `pgsteward:upgrade-id = <upgrade>`; an instance of that name WITHOUT the
//!   tag is never touched;
//! * with `repoint = "identifier-swap"` the old primary becomes
//!   [`rds_old_id`]`(source, upgrade)` and the new one takes the source's name;
//!   which of the two names is which is read back from the tag;
//! * the final snapshot is `<instance>-final`.
//!
//! Waits poll `DescribeDBInstances` with a growing pause: transitional statuses
//! (`creating`, `modifying`, `backing-up`, `renaming`, ...) wait, terminal ones
//! (`failed`, `incompatible-*`, `insufficient-capacity`, `storage-full`, ...)
//! end the step with what to do; throttling and transient errors are retried;
//! everything is bounded by `upgrade.step_timeout` and cancellable.
//!
//! * `api`: the `RdsApi` seam (aws-sdk-rds, or a scripted RDS in tests);
//! * `ids`: identifiers and tags; `status`: what a status means for a wait;
//! * `poll`: calls with backoff, waits, delete with snapshot, rename;
//! * `readers`: the source's readers and the identifier swap;
//! * `region`: where a listed replica lives (cross-region ones are refused);
//! * `discover`: the source's replicas for `pgsteward lag`, with their regions;
//! * `error`: `RdsError`; this file: the provider and its `Provider` impl.

pub mod api;
mod discover;
pub mod error;
pub mod ids;
mod poll;
mod readers;
pub mod region;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{
    Cluster, ConnString, ProviderKind, RdsProviderConfig, RdsRepoint, UpgradeConfig,
};
use crate::provider::{
    endpoint_like, Check, FenceMethod, Precheck, Provider, ProviderError, ReaderFacts, ReplicaInfo,
    ServerState, SourceFacts,
};
pub use api::{
    sdk_error, ApiError, ApiErrorKind, CreateReplica, Instance, RdsApi, SdkRds, SdkSettings,
};
pub use discover::{discover_replicas, DiscoveredReplica};
pub use error::RdsError;
pub use ids::{
    final_snapshot_id, is_renamed, is_valid_identifier, rds_identifier, rds_old_id, rds_replica_id,
    replica_tags, SOURCE_TAG, UPGRADE_TAG,
};
use readers::replica_like;
pub use status::{classify, replica_state, StatusClass};

pub struct RdsProvider {
    api: Arc<dyn RdsApi>,
    cfg: RdsProviderConfig,
    primary: ConnString,
    step_timeout: Duration,
    cancel: CancellationToken,
}

impl RdsProvider {
    /// The provider with the real SDK client (default credential chain,
    /// `upgrade.rds.region` / `endpoint_url`).
    pub fn new(cfg: &Cluster) -> Result<RdsProvider, ProviderError> {
        let rds = rds_config(&cfg.upgrade)?;
        let api = SdkRds::new(SdkSettings {
            region: rds.region.clone(),
            endpoint_url: rds.endpoint_url.clone(),
            static_credentials: None,
        });
        RdsProvider::with_api(cfg, Arc::new(api))
    }

    /// The provider over any implementation of the RDS calls (tests).
    pub fn with_api(cfg: &Cluster, api: Arc<dyn RdsApi>) -> Result<RdsProvider, ProviderError> {
        let rds = rds_config(&cfg.upgrade)?;
        if !rds.final_snapshot {
            return Err(ProviderError::Usage(
                "key `upgrade.rds.final_snapshot`: false is not supported; the old primary is always deleted with a final snapshot (remove the key)".into(),
            ));
        }
        if !is_valid_identifier(&rds.source_instance)
            || rds.source_instance.chars().any(|c| c.is_ascii_uppercase())
        {
            return Err(ProviderError::Usage(format!(
                "key `upgrade.rds.source_instance`: {:?} is not an RDS instance identifier as RDS stores it (1-63 lower-case letters, digits, hyphens, starting with a letter)",
                rds.source_instance
            )));
        }
        Ok(RdsProvider {
            api,
            cfg: rds.clone(),
            primary: cfg.database.primary.clone(),
            step_timeout: cfg.upgrade.step_timeout.0,
            cancel: CancellationToken::new(),
        })
    }

    /// Every internal wait ends early with `Cancelled` when `cancel` fires.
    pub fn with_cancel(mut self, cancel: CancellationToken) -> RdsProvider {
        self.cancel = cancel;
        self
    }

    /// `endpoint_override` for `id`: the exact key, else the longest key
    /// ending in `*` whose prefix matches (`"platform-postgres-*"`).
    fn endpoint_override(&self, id: &str) -> Option<&String> {
        self.cfg.endpoint_override.get(id).or_else(|| {
            self.cfg
                .endpoint_override
                .iter()
                .filter_map(|(k, v)| {
                    let prefix = k.strip_suffix('*')?;
                    id.starts_with(prefix).then_some((prefix.len(), v))
                })
                .max_by_key(|(len, _)| *len)
                .map(|(_, v)| v)
        })
    }

    /// The SQL endpoint `endpoint_override` gives `id`, if any.
    fn override_endpoint(&self, id: &str) -> Option<ConnString> {
        let (host, port) = self.endpoint_override(id)?.rsplit_once(':')?;
        Some(endpoint_like(&self.primary, host, port.parse().ok()?))
    }

    fn endpoint(&self, inst: &Instance) -> Option<ConnString> {
        if self.endpoint_override(&inst.id).is_some() {
            return self.override_endpoint(&inst.id);
        }
        let (host, port) = inst.endpoint.as_ref()?;
        Some(endpoint_like(&self.primary, host, *port))
    }

    fn info(&self, inst: &Instance) -> ReplicaInfo {
        ReplicaInfo {
            id: inst.id.clone(),
            state: replica_state(inst),
            endpoint: self.endpoint(inst),
            class: Some(inst.class.clone()),
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.step_timeout
    }

    /// The region `inst` lives in: its ARN's, else the configured one (the
    /// API's, which found it). `None` when neither is known.
    fn region_of(&self, inst: &Instance) -> Option<String> {
        inst.arn
            .as_deref()
            .and_then(region::parse_db_arn)
            .map(|a| a.region)
            .or_else(|| self.cfg.region.clone())
    }
}

fn rds_config(upgrade: &UpgradeConfig) -> Result<&RdsProviderConfig, ProviderError> {
    upgrade.rds.as_ref().ok_or_else(|| {
        ProviderError::Usage(
            "key `upgrade.rds`: provider = \"rds\" needs an [upgrade.rds] section with source_instance".into(),
        )
    })
}

#[async_trait::async_trait]
impl Provider for RdsProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Rds
    }

    fn fence_method(&self) -> FenceMethod {
        FenceMethod::AlterDatabase
    }

    async fn prepare_promote(&self, id: &str) -> Result<(), ProviderError> {
        // Loads credentials and opens the API connection before the pause.
        self.describe_raw("prepare_promote", id, self.deadline())
            .await?;
        Ok(())
    }

    async fn precheck(&self, target_class: &str) -> Result<Precheck, ProviderError> {
        const STEP: &str = "precheck";
        let id = self.cfg.source_instance.clone();
        let mut facts = SourceFacts {
            id: id.clone(),
            ..SourceFacts::default()
        };
        let mut checks = Vec::new();
        let Some(src) = self.describe_raw(STEP, &id, self.deadline()).await? else {
            checks.push(Check::new(
                "rds source exists",
                false,
                format!("no DB instance {id} in this region; check upgrade.rds.source_instance and upgrade.rds.region"),
            ));
            return Ok(Precheck {
                source: facts,
                checks,
            });
        };
        facts.extra.insert("class".into(), src.class.clone());
        facts.extra.insert("engine".into(), src.engine.clone());
        checks.push(Check::new(
            "rds engine is postgres",
            src.engine == "postgres",
            if src.engine == "postgres" {
                "postgres".to_string()
            } else {
                format!("engine is {:?}; only RDS for PostgreSQL (engine \"postgres\") is supported, not Aurora", src.engine)
            },
        ));
        checks.push(Check::new(
            "rds source available",
            src.status == "available",
            if src.status == "available" {
                "available".to_string()
            } else {
                format!("source is {}; wait until it is available", src.status)
            },
        ));
        checks.push(Check::new(
            "rds backups enabled",
            src.backup_retention > 0,
            if src.backup_retention > 0 {
                format!("backup retention {} days", src.backup_retention)
            } else {
                format!("read replicas need automated backups; set a retention of at least 1 day (aws rds modify-db-instance --db-instance-identifier {id} --backup-retention-period 7 --apply-immediately)")
            },
        ));
        checks.push(Check::new(
            "rds source is a primary",
            src.replica_source.is_none(),
            match &src.replica_source {
                None => "not a read replica".to_string(),
                Some(up) => format!("{id} is a read replica of {up}; upgrade the primary"),
            },
        ));
        let class_ok = target_class.starts_with("db.") && target_class != src.class;
        checks.push(Check::new(
            "rds target class",
            class_ok,
            if target_class == src.class {
                format!("{id} already runs on {target_class}; name a different class")
            } else if !target_class.starts_with("db.") {
                format!("{target_class:?} is not an RDS instance class (e.g. db.r5.2xlarge)")
            } else {
                format!("{} -> {target_class}", src.class)
            },
        ));
        let (readers, reader_checks) = self.readers_of(STEP, &src).await?;
        facts.readers = readers;
        checks.extend(reader_checks);
        Ok(Precheck {
            source: facts,
            checks,
        })
    }

    async fn create_replica(
        &self,
        source: &SourceFacts,
        upgrade_id: &str,
        target_class: &str,
    ) -> Result<ReplicaInfo, ProviderError> {
        const STEP: &str = "create_replica";
        let id = rds_replica_id(&source.id, upgrade_id);
        let deadline = self.deadline();
        if let Some(existing) = self.describe_raw(STEP, &id, deadline).await? {
            return Ok(self.adopt(STEP, existing, upgrade_id, target_class)?);
        }
        let src = self
            .describe_raw(STEP, &source.id, deadline)
            .await?
            .ok_or_else(|| {
                RdsError::refused(STEP, format!("source {} does not exist", source.id))
            })?;
        let req = replica_like(
            &src,
            id,
            source.id.clone(),
            target_class.to_string(),
            &source.id,
            upgrade_id,
        );
        Ok(self
            .request_replica(STEP, &req, upgrade_id, deadline)
            .await?)
    }

    async fn describe(&self, id: &str) -> Result<ReplicaInfo, ProviderError> {
        match self.describe_raw("describe", id, self.deadline()).await? {
            Some(inst) => Ok(self.info(&inst)),
            None => match self.renamed_to_source(id).await? {
                // After an identifier swap the new server answers under the
                // source's name (and its endpoint): report that one.
                Some(holder) => Ok(self.info(&holder)),
                None => Ok(ReplicaInfo {
                    id: id.to_string(),
                    state: ServerState::Missing,
                    endpoint: None,
                    class: None,
                }),
            },
        }
    }

    async fn promote(&self, id: &str) -> Result<(), ProviderError> {
        const STEP: &str = "promote";
        let deadline = self.deadline();
        loop {
            // RDS refuses PromoteReadReplica while the replica is busy
            // (`backing-up`, `modifying`): wait until it is available.
            let inst = self.wait_available(STEP, id).await?;
            if inst.replica_source.is_none() {
                tracing::info!(id, "already a standalone instance; nothing to promote");
                return Ok(());
            }
            let res = self
                .call(STEP, "PromoteReadReplica", id, deadline, || {
                    self.api.promote_read_replica(id)
                })
                .await;
            match res {
                Ok(()) => {
                    tracing::info!(id, "promotion requested");
                    return Ok(());
                }
                Err(RdsError::Api { source, .. })
                    if source.kind == ApiErrorKind::InvalidState && Instant::now() < deadline =>
                {
                    tracing::info!(id, error = %source, "replica busy; waiting before promoting");
                    self.pause(self.cfg.poll_interval.0).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn swaps_identifiers(&self) -> bool {
        self.cfg.repoint == RdsRepoint::IdentifierSwap
    }

    async fn rename_aside(
        &self,
        name: &str,
        upgrade_id: &str,
        new_id: &str,
    ) -> Result<String, ProviderError> {
        Ok(self
            .swap_aside("rename_old_aside", name, upgrade_id, new_id)
            .await?)
    }

    async fn rename_in(&self, new_id: &str, name: &str) -> Result<String, ProviderError> {
        Ok(self.swap_in("rename_new_in", new_id, name).await?)
    }

    fn reader_id(&self, old_reader: &str, upgrade_id: &str) -> String {
        rds_replica_id(old_reader, upgrade_id)
    }

    fn aside_id(&self, name: &str, upgrade_id: &str) -> String {
        rds_old_id(name, upgrade_id)
    }

    fn retire_detail(&self, id: &str, reader: bool) -> String {
        if reader {
            "DeleteDBInstance, SkipFinalSnapshot (RDS takes no snapshot of a read replica)".into()
        } else {
            format!(
                "DeleteDBInstance with final snapshot {}",
                final_snapshot_id(id)
            )
        }
    }

    async fn create_reader(
        &self,
        source: &SourceFacts,
        upgrade_id: &str,
        new_primary: &str,
        reader: &ReaderFacts,
    ) -> Result<ReplicaInfo, ProviderError> {
        Ok(self
            .make_reader(source, upgrade_id, new_primary, reader)
            .await?)
    }

    async fn describe_reader(&self, reader: &ReaderFacts) -> Result<ReplicaInfo, ProviderError> {
        const STEP: &str = "describe";
        match self
            .describe_raw(STEP, &reader.new_id, self.deadline())
            .await?
        {
            Some(inst) => Ok(self.info(&inst)),
            None => match self.renamed_to(&reader.new_id, &reader.id).await? {
                Some(holder) => Ok(self.info(&holder)),
                None => Ok(ReplicaInfo {
                    id: reader.new_id.clone(),
                    state: ServerState::Missing,
                    endpoint: None,
                    class: None,
                }),
            },
        }
    }

    async fn retire_reader(
        &self,
        source: &SourceFacts,
        upgrade_id: &str,
        reader: &ReaderFacts,
    ) -> Result<String, ProviderError> {
        Ok(self.drop_reader(source, upgrade_id, reader).await?)
    }

    async fn delete_reader(&self, reader: &ReaderFacts) -> Result<(), ProviderError> {
        self.delete_replica(&reader.new_id).await
    }

    async fn retire_old(&self, source: &SourceFacts) -> Result<(), ProviderError> {
        const STEP: &str = "retire_old";
        let name = source.id.as_str();
        let deadline = self.deadline();
        // Which instance is the old primary depends on whether the names were swapped.
        let old_id = match self.cfg.repoint {
            RdsRepoint::Pgbouncer => name.to_string(),
            RdsRepoint::IdentifierSwap => {
                // After the swap the name is held by the new primary, whose
                // upgrade tag names the old one.
                let holder = self.describe_raw(STEP, name, deadline).await?;
                let swapped = holder.as_ref().and_then(|h| {
                    (h.tags.get(SOURCE_TAG).map(String::as_str) == Some(name))
                        .then(|| h.tags.get(UPGRADE_TAG).cloned())
                        .flatten()
                });
                match swapped {
                    Some(u) => rds_old_id(name, &u),
                    None => {
                        return Err(RdsError::refused(
                            STEP,
                            format!("{name} is not the new primary of an identifier swap; refusing to delete anything"),
                        )
                        .into())
                    }
                }
            }
        };
        let Some(old) = self.describe_raw(STEP, &old_id, deadline).await? else {
            tracing::info!(id = %old_id, "old primary already gone");
            return Ok(());
        };
        if classify(&old.status) == StatusClass::Deleting {
            return Ok(());
        }
        if old.replica_source.is_some() {
            return Err(RdsError::refused(
                STEP,
                format!("{old_id} is still a read replica; it is not the old primary"),
            )
            .into());
        }
        // RDS keeps listing a replica under its source until the promotion has
        // finished (moto never stops listing it): the instances pgsteward made
        // from this source are the new primary, not replicas left behind.
        let mut others = Vec::new();
        let old_region = self.region_of(&old);
        for listed in &old.read_replicas {
            // A cross-region replica is not visible here: it is one of the
            // replicas deleting the old primary would cut off, named with its region.
            let p = region::placement(listed, old_region.as_deref());
            let region::Placement::Local { id: r } = &p else {
                others.extend(region::describe_remote(&p));
                continue;
            };
            match self.describe_raw(STEP, r, deadline).await? {
                Some(i) if i.tags.get(SOURCE_TAG).map(String::as_str) == Some(name) => {}
                // Old readers retire_reader already deleted (RDS lists them while deleting).
                Some(i) if classify(&i.status) == StatusClass::Deleting => {}
                Some(i) if i.replica_source.as_deref() != Some(old_id.as_str()) => {}
                Some(_) => others.push(r.clone()),
                None => {}
            }
        }
        if !others.is_empty() {
            // Deleting a primary promotes its replicas into standalone writable
            // instances: never do that silently.
            return Err(RdsError::refused(
                STEP,
                format!(
                    "{old_id} still feeds read replicas {}; recreate them from the new primary and delete these, then `pgsteward upgrade resume`",
                    others.join(", ")
                ),
            )
            .into());
        }
        self.delete_with_snapshot(STEP, &old_id).await?;
        Ok(())
    }

    async fn delete_replica(&self, id: &str) -> Result<(), ProviderError> {
        const STEP: &str = "delete_replica";
        let Some(inst) = self.describe_raw(STEP, id, self.deadline()).await? else {
            return Ok(());
        };
        if classify(&inst.status) == StatusClass::Deleting {
            return Ok(());
        }
        if !inst.tags.contains_key(UPGRADE_TAG) {
            return Err(RdsError::refused(
                STEP,
                format!("{id} has no {UPGRADE_TAG} tag: pgsteward did not create it and will not delete it"),
            )
            .into());
        }
        if inst.replica_source.is_none() {
            return Err(RdsError::refused(
                STEP,
                format!("{id} was promoted and may hold writes; delete it by hand with a final snapshot if it is really unwanted"),
            )
            .into());
        }
        // A replica that never took writes: its data is the source's, no snapshot needed.
        let res = self
            .call(STEP, "DeleteDBInstance", id, self.deadline(), || {
                self.api.delete_instance(id, None)
            })
            .await;
        match res {
            Ok(()) => Ok(()),
            Err(RdsError::Api { source, .. }) if source.kind == ApiErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
