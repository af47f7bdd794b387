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

pub mod api;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConnString, ProviderKind, RdsProviderConfig, RdsRepoint};
use crate::pg::fnv1a_32 as fnv1a;
use crate::provider::{
    endpoint_like, Check, FenceMethod, Precheck, Provider, ProviderError, ReplicaInfo,
    ReplicaState, RepointBy, SourceFacts,
};
pub use api::{ApiError, ApiErrorKind, CreateReplica, Instance, RdsApi, SdkRds, SdkSettings};

/// Tag on every instance pgsteward creates: the upgrade that made it.
pub const UPGRADE_TAG: &str = "pgsteward:upgrade-id";
/// Tag on the new instance: the instance it replaces.
pub const SOURCE_TAG: &str = "pgsteward:source";
/// Longest RDS DB instance identifier.
const MAX_ID_LEN: usize = 63;
/// Longest RDS DB snapshot identifier.
const MAX_SNAPSHOT_ID_LEN: usize = 255;
/// Ceiling of the pause between polls and between retries of a throttled call.
const MAX_PAUSE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RdsError {
    /// The API refused or failed a call; its own message and code, and the step.
    #[error("{step}: {op} on {id} failed: {source}")]
    Api {
        step: &'static str,
        op: &'static str,
        id: String,
        source: ApiError,
    },
    /// The instance reached a status it will not leave without an operator.
    #[error("{step}: {id} is {status}: {hint}")]
    Terminal {
        step: &'static str,
        id: String,
        status: String,
        hint: String,
    },
    #[error("{step}: {id} is still {last} after {waited:?} (upgrade.step_timeout); check it in the RDS console, then `pgsteward upgrade resume` or `abort`")]
    Timeout {
        step: &'static str,
        id: String,
        last: String,
        waited: Duration,
    },
    /// Refused on purpose: acting would touch something pgsteward did not make.
    #[error("{step}: {reason}")]
    Refused { step: &'static str, reason: String },
    #[error("cancelled")]
    Cancelled,
}

impl RdsError {
    fn refused(step: &'static str, reason: impl Into<String>) -> RdsError {
        RdsError::Refused {
            step,
            reason: reason.into(),
        }
    }
}

impl From<RdsError> for ProviderError {
    fn from(e: RdsError) -> ProviderError {
        match e {
            RdsError::Cancelled => ProviderError::Cancelled,
            RdsError::Api { op, .. } => ProviderError::Api {
                op,
                detail: e.to_string(),
            },
            RdsError::Terminal {
                ref id,
                ref status,
                ref hint,
                step,
            } => ProviderError::WrongState {
                id: id.clone(),
                state: status.clone(),
                hint: format!("{hint} (step {step})"),
            },
            RdsError::Timeout { .. } => ProviderError::Api {
                op: "wait",
                detail: e.to_string(),
            },
            RdsError::Refused { .. } => ProviderError::Api {
                op: "refused",
                detail: e.to_string(),
            },
        }
    }
}

/// How a `DBInstanceStatus` bears on a wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusClass {
    Available,
    /// Will change by itself: wait.
    Transitional,
    Deleting,
    /// Will not change without an operator; the hint says what to do.
    Terminal(&'static str),
}

/// Classifies a `DBInstanceStatus`. Unknown statuses wait: RDS adds
/// transitional statuses more often than terminal ones, and the step timeout
/// bounds the wait.
pub fn classify(status: &str) -> StatusClass {
    match status {
        "available" => StatusClass::Available,
        "deleting" | "deleted" => StatusClass::Deleting,
        "failed" => StatusClass::Terminal(
            "RDS could not create or run the instance; read its events (aws rds describe-events --source-type db-instance --source-identifier ID), then `pgsteward upgrade abort` deletes it",
        ),
        "insufficient-capacity" => StatusClass::Terminal(
            "RDS has no capacity for this instance class in the availability zone; abort and retry later or pick another class",
        ),
        "storage-full" => StatusClass::Terminal(
            "the instance ran out of storage; increase its allocated storage, then resume",
        ),
        "incompatible-parameters" => StatusClass::Terminal(
            "the parameter group does not fit the target class (memory-based settings?); fix the parameter group, then abort and start again",
        ),
        "incompatible-network" => StatusClass::Terminal(
            "RDS cannot place the instance in the subnet group (no free addresses or a removed subnet); fix the subnet group, then abort and start again",
        ),
        "incompatible-option-group" | "incompatible-restore" | "incompatible-credentials" => {
            StatusClass::Terminal(
                "RDS reports an incompatible configuration; read the instance's events, fix it, then abort and start again",
            )
        }
        "inaccessible-encryption-credentials" | "inaccessible-encryption-credentials-recoverable" => {
            StatusClass::Terminal(
                "RDS cannot use the instance's KMS key; restore access to the key (key policy, grants)",
            )
        }
        "stopped" | "stopping" => StatusClass::Terminal(
            "the instance is stopped; start it (aws rds start-db-instance), then resume",
        ),
        s if s.starts_with("incompatible-") => StatusClass::Terminal(
            "RDS reports an incompatible configuration; read the instance's events, fix it, then abort and start again",
        ),
        _ => StatusClass::Transitional,
    }
}

/// The provider's view of an instance's status.
pub fn replica_state(inst: &Instance) -> ReplicaState {
    match classify(&inst.status) {
        StatusClass::Available => ReplicaState::Available,
        StatusClass::Transitional => ReplicaState::Creating,
        StatusClass::Deleting => ReplicaState::Deleting,
        StatusClass::Terminal(hint) => ReplicaState::Failed(format!("{}: {hint}", inst.status)),
    }
}

/// Lower case letters, digits and single hyphens, as RDS identifiers allow.
fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && (out.is_empty() || out.ends_with('-'))) {
            out.push(c);
        }
    }
    out.trim_end_matches('-').to_string()
}

/// `<base>-<suffix>` within RDS's identifier rules (1–`max` characters,
/// letters, digits and hyphens, starting with a letter, no `--`, no trailing
/// hyphen). When too long, `base` is cut and a hash of the full name keeps the
/// result unique and the same on every run.
pub fn rds_identifier(base: &str, suffix: &str, max: usize) -> String {
    let mut base = sanitize(base);
    if !base.starts_with(|c: char| c.is_ascii_lowercase()) {
        base = format!("db-{base}").trim_end_matches('-').to_string();
    }
    let suffix = sanitize(suffix);
    let joined = if suffix.is_empty() {
        base.clone()
    } else {
        format!("{base}-{suffix}")
    };
    if joined.len() <= max {
        return joined;
    }
    let hash = format!("{:08x}", fnv1a(&format!("{base}\u{0}{suffix}")));
    // Keep the suffix whole when it fits with a little of the base; it is
    // what tells upgrades apart.
    let suffix = if suffix.len() + hash.len() + 4 > max {
        String::new()
    } else {
        suffix
    };
    let room = max
        - hash.len()
        - 1
        - if suffix.is_empty() {
            0
        } else {
            suffix.len() + 1
        };
    let head = base[..room.min(base.len())].trim_end_matches('-');
    let mut id = format!("{head}-{hash}");
    if !suffix.is_empty() {
        id = format!("{id}-{suffix}");
    }
    id
}

/// The new instance of upgrade `upgrade_id` on `source`: the saga's
/// [`crate::provider::replica_id`], which keeps within RDS's rules for a
/// valid (lower-case) source identifier and an upgrade id of letters and digits.
pub fn rds_replica_id(source: &str, upgrade_id: &str) -> String {
    let id = crate::provider::replica_id(source, upgrade_id);
    if is_valid_identifier(&id) {
        id
    } else {
        rds_identifier(source, upgrade_id, MAX_ID_LEN)
    }
}

/// The name the old primary takes in an identifier swap.
pub fn rds_old_id(source: &str, upgrade_id: &str) -> String {
    rds_identifier(source, &format!("old-{upgrade_id}"), MAX_ID_LEN)
}

/// The final snapshot taken when `instance` is deleted.
pub fn final_snapshot_id(instance: &str) -> String {
    rds_identifier(instance, "final", MAX_SNAPSHOT_ID_LEN)
}

/// Whether `id` is a valid RDS DB instance identifier.
pub fn is_valid_identifier(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !id.contains("--")
        && !id.ends_with('-')
}

/// Tags for the new instance: the source's own (except AWS's reserved and
/// pgsteward's from earlier upgrades) plus this upgrade's.
pub fn replica_tags(
    source_tags: &BTreeMap<String, String>,
    source_id: &str,
    upgrade_id: &str,
) -> BTreeMap<String, String> {
    let mut tags: BTreeMap<String, String> = source_tags
        .iter()
        .filter(|(k, _)| !k.starts_with("aws:") && !k.starts_with("pgsteward:"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    tags.insert(UPGRADE_TAG.into(), upgrade_id.into());
    tags.insert(SOURCE_TAG.into(), source_id.into());
    tags
}

// The RDS fence lives with the local one in `upgrade::fence` (both methods
// in one module); re-exported here for callers of the provider.
pub use crate::upgrade::fence::{
    fence_databases, terminate_application_sessions, unfence_databases, FENCEABLE_DATABASES,
    TERMINATE_APPLICATION_SESSIONS,
};

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
    pub fn new(cfg: &Config) -> Result<RdsProvider, ProviderError> {
        let rds = rds_config(cfg)?;
        let api = SdkRds::new(SdkSettings {
            region: rds.region.clone(),
            endpoint_url: rds.endpoint_url.clone(),
            static_credentials: None,
        });
        RdsProvider::with_api(cfg, Arc::new(api))
    }

    /// The provider over any implementation of the RDS calls (tests).
    pub fn with_api(cfg: &Config, api: Arc<dyn RdsApi>) -> Result<RdsProvider, ProviderError> {
        let rds = rds_config(cfg)?;
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

    async fn pause(&self, d: Duration) -> Result<(), RdsError> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.cancel.cancelled() => Err(RdsError::Cancelled),
        }
    }

    /// The next pause: half again as long, capped, with ±10 % jitter so many
    /// stewards do not poll in lock step.
    fn grow(d: Duration) -> Duration {
        let next = (d + d / 2).min(MAX_PAUSE);
        let jitter = 0.9 + fastrand::f64() * 0.2;
        next.mul_f64(jitter)
    }

    /// One API call, retried with backoff while it is throttled or fails
    /// transiently, until `deadline`.
    async fn call<T, F, Fut>(
        &self,
        step: &'static str,
        op: &'static str,
        id: &str,
        deadline: Instant,
        mut f: F,
    ) -> Result<T, RdsError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut pause = (self.cfg.poll_interval.0 / 4).max(Duration::from_millis(1));
        loop {
            if self.cancel.is_cancelled() {
                return Err(RdsError::Cancelled);
            }
            match f().await {
                Ok(v) => return Ok(v),
                Err(e)
                    if matches!(e.kind, ApiErrorKind::Throttled | ApiErrorKind::Transient)
                        && Instant::now() + pause < deadline =>
                {
                    tracing::warn!(step, op, id, error = %e, retry_in = ?pause, "rds call failed; retrying");
                    self.pause(pause).await?;
                    pause = Self::grow(pause);
                }
                Err(source) => {
                    return Err(RdsError::Api {
                        step,
                        op,
                        id: id.to_string(),
                        source,
                    })
                }
            }
        }
    }

    async fn describe_raw(
        &self,
        step: &'static str,
        id: &str,
        deadline: Instant,
    ) -> Result<Option<Instance>, RdsError> {
        self.call(step, "DescribeDBInstances", id, deadline, || {
            self.api.describe_instance(id)
        })
        .await
    }

    /// Polls `id` until `ready` says yes. A terminal status ends the wait with
    /// its hint; a missing instance waits (RDS lists a new or renamed instance
    /// a little later) unless `missing_ok` makes it the goal.
    async fn wait_for(
        &self,
        step: &'static str,
        id: &str,
        want: &str,
        ready: impl Fn(Option<&Instance>) -> bool,
    ) -> Result<Option<Instance>, RdsError> {
        let started = Instant::now();
        let deadline = started + self.step_timeout;
        let mut pause = self.cfg.poll_interval.0;
        loop {
            let inst = self.describe_raw(step, id, deadline).await?;
            if ready(inst.as_ref()) {
                return Ok(inst);
            }
            if let Some(i) = &inst {
                if let StatusClass::Terminal(hint) = classify(&i.status) {
                    return Err(RdsError::Terminal {
                        step,
                        id: id.to_string(),
                        status: i.status.clone(),
                        hint: hint.to_string(),
                    });
                }
            }
            let last = inst
                .as_ref()
                .map_or("not found".to_string(), |i| i.status.clone());
            tracing::debug!(step, id, status = %last, want, "waiting for rds instance");
            if Instant::now() + pause > deadline {
                return Err(RdsError::Timeout {
                    step,
                    id: id.to_string(),
                    last,
                    waited: started.elapsed(),
                });
            }
            self.pause(pause).await?;
            pause = Self::grow(pause);
        }
    }

    /// Waits until `id` exists and is `available`.
    pub async fn wait_available(&self, step: &'static str, id: &str) -> Result<Instance, RdsError> {
        let inst = self
            .wait_for(step, id, "available", |i| {
                i.is_some_and(|i| i.status == "available")
            })
            .await?;
        inst.ok_or_else(|| RdsError::refused(step, format!("{id} vanished")))
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

    fn endpoint(&self, inst: &Instance) -> Option<ConnString> {
        if let Some(addr) = self.endpoint_override(&inst.id) {
            let (host, port) = addr.rsplit_once(':')?;
            return Some(endpoint_like(&self.primary, host, port.parse().ok()?));
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

    /// The SQL endpoints of the source's read replicas (`ReadReplicaDBInstanceIdentifiers`),
    /// for `pgsteward lag` with `provider = "rds"`. Replicas still being created
    /// (no address yet) are left out.
    pub async fn discover_replicas(&self) -> Result<Vec<(String, ConnString)>, RdsError> {
        const STEP: &str = "replica discovery";
        let deadline = self.deadline();
        let source_id = &self.cfg.source_instance;
        let source = self
            .describe_raw(STEP, source_id, deadline)
            .await?
            .ok_or_else(|| {
                RdsError::refused(
                    STEP,
                    format!(
                        "no RDS instance {source_id}; check upgrade.rds.source_instance and region"
                    ),
                )
            })?;
        let mut out = Vec::new();
        for id in &source.read_replicas {
            if let Some(inst) = self.describe_raw(STEP, id, deadline).await? {
                if let Some(endpoint) = self.endpoint(&inst) {
                    out.push((inst.id.clone(), endpoint));
                }
            }
        }
        Ok(out)
    }

    /// `DeleteDBInstance` with a final snapshot, accepted once. A snapshot that
    /// already exists under our name means an earlier attempt got this far.
    async fn delete_with_snapshot(&self, step: &'static str, id: &str) -> Result<(), RdsError> {
        let snapshot = final_snapshot_id(id);
        let res = self
            .call(step, "DeleteDBInstance", id, self.deadline(), || {
                self.api.delete_instance(id, Some(&snapshot))
            })
            .await;
        match res {
            Ok(()) => {
                tracing::info!(id, snapshot = %snapshot, "old primary deleted with a final snapshot");
                Ok(())
            }
            Err(RdsError::Api { source, .. }) if matches!(source.kind, ApiErrorKind::NotFound) => {
                Ok(())
            }
            Err(RdsError::Api { source, .. })
                if source.kind == ApiErrorKind::InvalidState
                    || source.kind == ApiErrorKind::AlreadyExists =>
            {
                // Already deleting (a retried call) is success; busy otherwise: wait and retry once.
                let inst = self.describe_raw(step, id, self.deadline()).await?;
                match inst {
                    None => Ok(()),
                    Some(i) if classify(&i.status) == StatusClass::Deleting => Ok(()),
                    Some(_) => {
                        self.wait_available(step, id).await?;
                        self.call(step, "DeleteDBInstance", id, self.deadline(), || {
                            self.api.delete_instance(id, Some(&snapshot))
                        })
                        .await
                    }
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Renames `from` to `to` and waits until `to` is available. Idempotent:
    /// a rename already done or under way is waited for, not repeated.
    async fn rename(&self, step: &'static str, from: &str, to: &str) -> Result<(), RdsError> {
        let deadline = self.deadline();
        let src = self.describe_raw(step, from, deadline).await?;
        let dst = self.describe_raw(step, to, deadline).await?;
        match (src, dst) {
            (Some(_), Some(_)) => {
                return Err(RdsError::refused(
                    step,
                    format!("both {from} and {to} exist; cannot rename {from} to {to}"),
                ))
            }
            (None, _) => {}
            (Some(s), None) => {
                if s.status != "renaming" {
                    self.wait_available(step, from).await?;
                    let res = self
                        .call(
                            step,
                            "ModifyDBInstance(NewDBInstanceIdentifier)",
                            from,
                            deadline,
                            || self.api.rename_instance(from, to),
                        )
                        .await;
                    match res {
                        Ok(()) => tracing::info!(from, to, "rds instance rename requested"),
                        // A retry of an accepted rename finds the old name gone.
                        Err(RdsError::Api { source, .. })
                            if source.kind == ApiErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                self.wait_for(step, from, "the old name to be free", |i| i.is_none())
                    .await?;
            }
        }
        self.wait_available(step, to).await?;
        Ok(())
    }
}

/// The read replicas of `upgrade.rds.source_instance` and their SQL
/// endpoints, for `pgsteward lag` with `provider = "rds"` (instead of
/// `database.replicas`).
pub async fn discover_replicas(cfg: &Config) -> Result<Vec<(String, ConnString)>, ProviderError> {
    Ok(RdsProvider::new(cfg)?.discover_replicas().await?)
}

fn rds_config(cfg: &Config) -> Result<&RdsProviderConfig, ProviderError> {
    cfg.upgrade.rds.as_ref().ok_or_else(|| {
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

    fn repoint_by(&self) -> RepointBy {
        match self.cfg.repoint {
            RdsRepoint::Pgbouncer => RepointBy::Pooler,
            RdsRepoint::IdentifierSwap => RepointBy::Provider,
        }
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
        let others: Vec<&String> = src.read_replicas.iter().collect();
        checks.push(Check::new(
            "rds other read replicas",
            true,
            if others.is_empty() {
                "none".to_string()
            } else {
                format!(
                    "{} stay attached to the old primary; retire_old stops until they are recreated from the new primary and deleted: {}",
                    others.len(),
                    others.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                )
            },
        ));
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
        let req = CreateReplica {
            id: id.clone(),
            source: source.id.clone(),
            class: target_class.to_string(),
            parameter_group: src.parameter_group.clone(),
            subnet_group: src.subnet_group.clone(),
            security_groups: src.security_groups.clone(),
            multi_az: src.multi_az,
            tags: replica_tags(&src.tags, &source.id, upgrade_id),
        };
        let res = self
            .call(STEP, "CreateDBInstanceReadReplica", &id, deadline, || {
                self.api.create_read_replica(&req)
            })
            .await;
        match res {
            Ok(()) => {
                tracing::info!(id = %id, class = target_class, source = %source.id, "rds read replica requested")
            }
            // Our own earlier attempt (a retried call, or a crash after the call) made it.
            Err(RdsError::Api { source: e, .. }) if e.kind == ApiErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
        match self.describe_raw(STEP, &id, deadline).await? {
            Some(inst) => Ok(self.adopt(STEP, inst, upgrade_id, target_class)?),
            // Listed a moment later; the saga's wait polls describe.
            None => Ok(ReplicaInfo {
                id,
                state: ReplicaState::Creating,
                endpoint: None,
                class: Some(target_class.to_string()),
            }),
        }
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
                    state: ReplicaState::Missing,
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

    async fn repoint(&self, source: &SourceFacts, id: &str) -> Result<(), ProviderError> {
        const STEP: &str = "repoint";
        let name = source.id.as_str();
        // With the pooler the saga repoints; the names stay.
        if self.cfg.repoint != RdsRepoint::IdentifierSwap || id == name {
            return Ok(());
        }
        let deadline = self.deadline();
        let new = self.describe_raw(STEP, id, deadline).await?;
        let current = self.describe_raw(STEP, name, deadline).await?;
        // The instance that holds the name is the new one of THIS upgrade when
        // its upgrade tag maps to `id` (an earlier upgrade's instance carries
        // an older tag).
        let holder_upgrade = current.as_ref().and_then(|c| {
            let u = c.tags.get(UPGRADE_TAG)?;
            (rds_replica_id(name, u) == id).then(|| u.clone())
        });
        let upgrade_id = match (&new, &holder_upgrade) {
            (_, Some(u)) => u.clone(),
            (Some(n), None) => match n.tags.get(UPGRADE_TAG) {
                Some(u) if rds_replica_id(name, u) == id => u.clone(),
                _ => {
                    return Err(RdsError::refused(
                        STEP,
                        format!("{id} does not carry the {UPGRADE_TAG} tag of an upgrade of {name}; rename the instances by hand"),
                    )
                    .into())
                }
            },
            (None, None) => {
                return Err(RdsError::refused(
                    STEP,
                    format!("{id} does not exist and {name} is not the new instance; nothing to swap"),
                )
                .into())
            }
        };
        let old = rds_old_id(name, &upgrade_id);
        if holder_upgrade.is_some() {
            self.wait_available(STEP, name).await?;
            tracing::info!(name, old = %old, "identifier swap already done");
            return Ok(());
        }
        if current.is_some() {
            // Old primary out of the way first: the name must be free.
            self.rename(STEP, name, &old).await?;
        }
        self.rename(STEP, id, name).await?;
        Ok(())
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
        for r in &old.read_replicas {
            match self.describe_raw(STEP, r, deadline).await? {
                Some(i) if i.tags.get(SOURCE_TAG).map(String::as_str) == Some(name) => {}
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

impl RdsProvider {
    /// With `identifier-swap`: the instance now named like the source when it
    /// is the replica `id` of an upgrade, renamed.
    async fn renamed_to_source(&self, id: &str) -> Result<Option<Instance>, RdsError> {
        if self.cfg.repoint != RdsRepoint::IdentifierSwap {
            return Ok(None);
        }
        let name = &self.cfg.source_instance;
        let holder = self.describe_raw("describe", name, self.deadline()).await?;
        Ok(holder.filter(|h| {
            h.tags.get(SOURCE_TAG) == Some(name)
                && h.tags
                    .get(UPGRADE_TAG)
                    .is_some_and(|u| rds_replica_id(name, u) == id)
        }))
    }

    /// An instance already carries the new server's name: adopt it when this
    /// upgrade made it, refuse otherwise.
    fn adopt(
        &self,
        step: &'static str,
        inst: Instance,
        upgrade_id: &str,
        target_class: &str,
    ) -> Result<ReplicaInfo, RdsError> {
        if inst.tags.get(UPGRADE_TAG).map(String::as_str) != Some(upgrade_id) {
            return Err(RdsError::refused(
                step,
                format!(
                    "an instance named {} exists without tag {UPGRADE_TAG}={upgrade_id}; pgsteward will not adopt it (rename or delete it)",
                    inst.id
                ),
            ));
        }
        if inst.class != target_class && inst.status != "modifying" {
            return Err(RdsError::refused(
                step,
                format!(
                    "{} of this upgrade runs on {}, not {target_class}; abort the upgrade to delete it",
                    inst.id, inst.class
                ),
            ));
        }
        tracing::info!(id = %inst.id, status = %inst.status, "adopting the replica of this upgrade");
        Ok(self.info(&inst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_follow_rds_rules() {
        assert_eq!(
            rds_replica_id("platform-postgres", "u1"),
            "platform-postgres-u1"
        );
        assert_eq!(
            rds_old_id("platform-postgres", "u1"),
            "platform-postgres-old-u1"
        );
        let odd = rds_replica_id("Platform_Postgres", "2026-01-02T03:04:05Z");
        assert_eq!(odd, "platform-postgres-2026-01-02t03-04-05z");
        assert!(is_valid_identifier(&odd));
        let long = "a".repeat(60);
        let a = rds_replica_id(&long, "20260127-abc");
        let b = rds_replica_id(&long, "20260127-abc");
        let c = rds_replica_id(&format!("{long}b"), "20260127-abc");
        assert_eq!(a, b, "deterministic");
        assert_ne!(a, c, "unique after shortening");
        for id in [&a, &c, &rds_old_id(&long, "20260127-abc")] {
            assert!(is_valid_identifier(id), "{id}");
            assert!(id.ends_with("-20260127-abc"), "{id}");
        }
        assert!(is_valid_identifier(&rds_replica_id("9db", "--x--")));
        assert!(!is_valid_identifier("a--b"));
        assert!(!is_valid_identifier("a-"));
        assert!(!is_valid_identifier("1a"));
        assert!(!is_valid_identifier(&"a".repeat(64)));
        assert_eq!(final_snapshot_id("db-old-u1"), "db-old-u1-final");
    }

    #[test]
    fn statuses_are_classified() {
        for s in [
            "creating",
            "backing-up",
            "modifying",
            "rebooting",
            "renaming",
            "upgrading",
            "configuring-enhanced-monitoring",
            "starting",
        ] {
            assert_eq!(classify(s), StatusClass::Transitional, "{s}");
        }
        for s in [
            "failed",
            "incompatible-parameters",
            "incompatible-network",
            "incompatible-something-new",
            "insufficient-capacity",
            "storage-full",
            "stopped",
        ] {
            assert!(matches!(classify(s), StatusClass::Terminal(_)), "{s}");
        }
        assert_eq!(classify("available"), StatusClass::Available);
        assert_eq!(classify("deleting"), StatusClass::Deleting);
    }

    #[test]
    fn tags_drop_reserved_and_earlier_upgrade_tags() {
        let src: BTreeMap<String, String> = [
            ("team", "data"),
            ("aws:cloudformation:stack-name", "x"),
            (UPGRADE_TAG, "old"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let tags = replica_tags(&src, "db", "u2");
        assert_eq!(tags.get("team").map(String::as_str), Some("data"));
        assert_eq!(tags.get(UPGRADE_TAG).map(String::as_str), Some("u2"));
        assert_eq!(tags.get(SOURCE_TAG).map(String::as_str), Some("db"));
        assert!(!tags.keys().any(|k| k.starts_with("aws:")));
    }

    #[test]
    fn api_codes_are_classified() {
        assert_eq!(api::kind_of_code("Throttling"), ApiErrorKind::Throttled);
        assert_eq!(
            api::kind_of_code("DBInstanceNotFound"),
            ApiErrorKind::NotFound
        );
        assert_eq!(
            api::kind_of_code("InvalidDBInstanceState"),
            ApiErrorKind::InvalidState
        );
        assert_eq!(
            api::kind_of_code("InvalidParameterCombination"),
            ApiErrorKind::Other
        );
    }
}
