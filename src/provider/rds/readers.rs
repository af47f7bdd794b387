//! The source's readers and the identifier swap, on RDS.
//!
//! * **Readers.** Every read replica of the source (except instances
//!   pgsteward made) gets a new reader before the cutover: a read replica of
//!   the *new* server (RDS PostgreSQL 14.1+ has cascading replicas, up to
//!   three levels), so it follows the new server through `PromoteReadReplica`
//!   and needs nothing after it. A replica can feed replicas only with
//!   automated backups on, so the new server gets the source's retention first.
//! * **Identifier swap.** Two renames per name (`ModifyDBInstance
//!   NewDBInstanceIdentifier`, `ApplyImmediately`): the old holder aside to
//!   `<name>-old-<upgrade>`, then the new server into `<name>`. RDS deletes
//!   the old DNS name at once, publishes the new one within minutes and
//!   reboots the renamed instance, so each rename is waited for under
//!   `upgrade.step_timeout`, after the write pause, never in it. Which
//!   instance is which is read back from the tags, so a crash between the two
//!   renames resumes with the second.
//! * **Retiring readers.** `DeleteDBInstance` with `SkipFinalSnapshot`: RDS
//!   refuses a final snapshot of a read replica (its data is the primary's,
//!   whose final snapshot is taken).

use crate::config::RdsRepoint;
use tokio::time::Instant;

use crate::provider::{Check, ReaderFacts, ReplicaInfo, SourceFacts};

use super::region::{parse_db_arn, placement, placement_check, Placement};
use super::{
    classify, is_renamed, rds_old_id, replica_tags, ApiErrorKind, CreateReplica, Instance,
    RdsError, RdsProvider, StatusClass, SOURCE_TAG, UPGRADE_TAG,
};

/// Cascading read replicas exist from RDS for PostgreSQL 14.1 on.
const CASCADING_SINCE: (u32, u32) = (14, 1);

/// `major.minor` of an RDS `EngineVersion` (`"15.4"`, `"14.10"`).
fn version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next().unwrap_or("0").parse().ok()?;
    Some((major, minor))
}

impl RdsProvider {
    /// The readers of `src` an upgrade replaces, and the checks about them.
    /// `new_id` is left empty: it depends on the upgrade id (the saga fills it).
    pub(super) async fn readers_of(
        &self,
        step: &'static str,
        src: &Instance,
    ) -> Result<(Vec<ReaderFacts>, Vec<Check>), RdsError> {
        let mut readers = Vec::new();
        let mut checks = Vec::new();
        let deadline = self.deadline();
        let source_region = self.region_of(src);
        let source_arn = src.arn.as_deref().and_then(parse_db_arn);
        // The primary after the upgrade, for the recreate command of a refusal.
        let new_primary = match self.cfg.repoint {
            RdsRepoint::IdentifierSwap => src.id.clone(),
            RdsRepoint::Pgbouncer => format!("{}-<upgrade id>", src.id),
        };
        for listed in &src.read_replicas {
            // Every listed replica is either described here or refused: one
            // left out would be replicating from the old primary when it is deleted.
            let p = placement(listed, source_region.as_deref());
            let Placement::Local { id } = &p else {
                checks.extend(placement_check(
                    &src.id,
                    source_arn.as_ref(),
                    source_region.as_deref(),
                    &new_primary,
                    &p,
                ));
                continue;
            };
            let Some(r) = self.describe_raw(step, id, deadline).await? else {
                checks.push(Check::seen_and_fix(
                    format!("rds reader {id} can be described"),
                    false,
                    format!(
                        "{} lists {id} as a read replica, but DescribeDBInstances in {} does not find it",
                        src.id,
                        source_region.as_deref().unwrap_or("the source's region")
                    ),
                    "if it was deleted a moment ago, run again; otherwise check it in the RDS console: pgsteward does not upgrade a primary that feeds a replica it cannot see",
                ));
                continue;
            };
            // A new server of an earlier (rolled back) attempt is not a reader.
            if r.tags.contains_key(UPGRADE_TAG) && r.tags.get(SOURCE_TAG) == Some(&src.id) {
                continue;
            }
            if classify(&r.status) == StatusClass::Deleting {
                continue;
            }
            if !r.read_replicas.is_empty() {
                checks.push(Check::new(
                    format!("rds reader {id} has no replicas of its own"),
                    false,
                    format!(
                        "{id} feeds {}; pgsteward replaces one level of readers only: move those replicas to the source first",
                        r.read_replicas.join(", ")
                    ),
                ));
            }
            readers.push(ReaderFacts {
                id: r.id.clone(),
                class: r.class.clone(),
                new_id: String::new(),
                new_class: self
                    .cfg
                    .reader_class
                    .clone()
                    .unwrap_or_else(|| r.class.clone()),
                address: self.endpoint(&r).and_then(|e| {
                    let (host, port) = e.spec().ok()?.host_port();
                    Some(format!("{host}:{port}"))
                }),
            });
        }
        if readers.is_empty() {
            // "none" only when nothing is listed that was refused above.
            if checks.is_empty() {
                checks.push(Check::new("rds readers", true, "none"));
            }
            return Ok((readers, checks));
        }
        let cascading = version(&src.engine_version).is_some_and(|v| v >= CASCADING_SINCE);
        checks.push(Check::new(
            "rds cascading replicas",
            cascading,
            if cascading {
                format!(
                    "engine {}: new readers replicate from the new server",
                    src.engine_version
                )
            } else {
                format!(
                    "engine {:?}: replicas of a read replica need RDS for PostgreSQL 14.1 or later; upgrade the engine first",
                    src.engine_version
                )
            },
        ));
        checks.push(Check::new(
            "rds readers",
            true,
            readers
                .iter()
                .map(|r| format!("{} ({}) -> new reader on {}", r.id, r.class, r.new_class))
                .collect::<Vec<_>>()
                .join(", "),
        ));
        Ok((readers, checks))
    }

    /// First half of a swap: whoever holds `name` (the old server) goes to
    /// `<name>-old-<upgrade>`. Nothing when `name` is free or already held by
    /// the new server `new_id`.
    pub(crate) async fn swap_aside(
        &self,
        step: &'static str,
        name: &str,
        upgrade_id: &str,
        new_id: &str,
    ) -> Result<String, RdsError> {
        let aside = rds_old_id(name, upgrade_id);
        match self.describe_raw(step, name, self.deadline()).await? {
            Some(h) if is_renamed(&h, name, new_id) => Ok(format!("{name} already holds {new_id}")),
            Some(_) => {
                self.rename(step, name, &aside).await?;
                Ok(format!("{name} -> {aside}"))
            }
            None => {
                // Renamed by an earlier attempt: wait until it settled.
                if self
                    .describe_raw(step, &aside, self.deadline())
                    .await?
                    .is_some()
                {
                    self.wait_available(step, &aside).await?;
                }
                Ok(format!("{name} already free ({aside})"))
            }
        }
    }

    /// Second half of a swap: the new server `new_id` takes `name`.
    pub(crate) async fn swap_in(
        &self,
        step: &'static str,
        new_id: &str,
        name: &str,
    ) -> Result<String, RdsError> {
        match self.describe_raw(step, name, self.deadline()).await? {
            Some(h) if is_renamed(&h, name, new_id) => {
                self.wait_available(step, name).await?;
                Ok(format!("{new_id} already holds {name}"))
            }
            Some(h) => Err(RdsError::Refused {
                step,
                reason: format!(
                    "{name} is held by {} (status {}), not by {new_id}; the old server was not renamed aside",
                    h.id, h.status
                ),
            }),
            None => {
                self.rename(step, new_id, name).await?;
                Ok(format!("{new_id} -> {name}"))
            }
        }
    }

    /// Creates (or adopts) the new reader of `reader`, a replica of `new_primary`.
    pub(super) async fn make_reader(
        &self,
        source: &SourceFacts,
        upgrade_id: &str,
        new_primary: &str,
        reader: &ReaderFacts,
    ) -> Result<ReplicaInfo, RdsError> {
        const STEP: &str = "create_readers";
        let deadline = self.deadline();
        if let Some(existing) = self.describe_raw(STEP, &reader.new_id, deadline).await? {
            return self.adopt(STEP, existing, upgrade_id, &reader.new_class);
        }
        // A read replica feeds replicas only with automated backups on.
        let feeder = self.wait_available(STEP, new_primary).await?;
        if feeder.backup_retention == 0 {
            let days = self
                .describe_raw(STEP, &source.id, deadline)
                .await?
                .map_or(1, |s| s.backup_retention.max(1));
            self.call(
                STEP,
                "ModifyDBInstance(BackupRetentionPeriod)",
                new_primary,
                deadline,
                || self.api.set_backup_retention(new_primary, days),
            )
            .await?;
            tracing::info!(
                id = new_primary,
                days,
                "automated backups enabled on the new server"
            );
            // RDS shows `modifying` / `backing-up` a moment later: wait for both.
            self.wait_available(STEP, new_primary).await?;
        }
        let old = self
            .describe_raw(STEP, &reader.id, deadline)
            .await?
            .ok_or_else(|| RdsError::Refused {
                step: STEP,
                reason: format!("reader {} recorded at precheck no longer exists", reader.id),
            })?;
        let req = replica_like(
            &old,
            reader.new_id.clone(),
            new_primary.to_string(),
            reader.new_class.clone(),
            &reader.id,
            upgrade_id,
        );
        self.request_replica(STEP, &req, upgrade_id, deadline).await
    }

    /// Asks for the read replica `req`. Our own earlier attempt (a retried
    /// call, or a crash after the call) having made it is no failure. Then
    /// what describe says of it: adopted, or `Creating` while it is not
    /// listed yet (the saga's wait polls describe).
    pub(super) async fn request_replica(
        &self,
        step: &'static str,
        req: &CreateReplica,
        upgrade_id: &str,
        deadline: Instant,
    ) -> Result<ReplicaInfo, RdsError> {
        let res = self
            .call(
                step,
                "CreateDBInstanceReadReplica",
                &req.id,
                deadline,
                || self.api.create_read_replica(req),
            )
            .await;
        match res {
            Ok(()) => {
                tracing::info!(id = %req.id, class = %req.class, source = %req.source, "rds read replica requested")
            }
            Err(RdsError::Api { source: e, .. }) if e.kind == ApiErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        match self.describe_raw(step, &req.id, deadline).await? {
            Some(inst) => self.adopt(step, inst, upgrade_id, &req.class),
            None => Ok(ReplicaInfo {
                id: req.id.clone(),
                state: crate::provider::ServerState::Creating,
                endpoint: None,
                class: Some(req.class.clone()),
            }),
        }
    }

    /// Deletes the old reader of `reader` (own name, or aside after a swap)
    /// without a snapshot, and waits until it is gone.
    pub(super) async fn drop_reader(
        &self,
        source: &SourceFacts,
        upgrade_id: &str,
        reader: &ReaderFacts,
    ) -> Result<String, RdsError> {
        const STEP: &str = "retire_old";
        let deadline = self.deadline();
        let aside = rds_old_id(&reader.id, upgrade_id);
        let mut found = None;
        for name in [aside.as_str(), reader.id.as_str()] {
            match self.describe_raw(STEP, name, deadline).await? {
                // The new reader holds the old name now: not ours to delete.
                Some(i) if is_renamed(&i, &reader.id, &reader.new_id) => {}
                Some(i) => {
                    found = Some(i);
                    break;
                }
                None => {}
            }
        }
        let Some(old) = found else {
            return Ok(format!("{} already gone", reader.id));
        };
        if classify(&old.status) != StatusClass::Deleting {
            let feeds_old = old
                .replica_source
                .as_deref()
                .is_some_and(|s| s == source.id || s == rds_old_id(&source.id, upgrade_id));
            if !feeds_old {
                return Err(RdsError::Refused {
                    step: STEP,
                    reason: format!(
                        "{} is not a read replica of the old primary (source {:?}); it may hold writes, delete it by hand",
                        old.id, old.replica_source
                    ),
                });
            }
            let res = self
                .call(
                    STEP,
                    "DeleteDBInstance(SkipFinalSnapshot)",
                    &old.id,
                    deadline,
                    || self.api.delete_instance(&old.id, None),
                )
                .await;
            match res {
                Ok(()) => tracing::info!(id = %old.id, "old reader deleted"),
                Err(RdsError::Api { source: e, .. })
                    if matches!(e.kind, ApiErrorKind::NotFound | ApiErrorKind::InvalidState) => {}
                Err(e) => return Err(e),
            }
        }
        // Gone before the old primary is deleted: deleting a primary promotes
        // the replicas it still has into writable instances.
        self.wait_for(STEP, &old.id, "the old reader to be deleted", |i| {
            i.is_none() || i.is_some_and(|i| i.status == "deleted")
        })
        .await?;
        Ok(format!(
            "{} deleted (no snapshot: RDS keeps none of a replica)",
            old.id
        ))
    }
}

impl RdsProvider {
    /// With `identifier-swap`: the instance now named like the source when it
    /// is the replica `id` of an upgrade, renamed.
    pub(super) async fn renamed_to_source(&self, id: &str) -> Result<Option<Instance>, RdsError> {
        let name = self.cfg.source_instance.clone();
        self.renamed_to(id, &name).await
    }

    /// With `identifier-swap`: the instance holding `name` when it is the new
    /// server `id` of an upgrade, renamed into that name.
    pub(super) async fn renamed_to(
        &self,
        id: &str,
        name: &str,
    ) -> Result<Option<Instance>, RdsError> {
        if self.cfg.repoint != RdsRepoint::IdentifierSwap {
            return Ok(None);
        }
        let holder = self.describe_raw("describe", name, self.deadline()).await?;
        Ok(holder.filter(|h| is_renamed(h, name, id)))
    }

    /// An instance already carries the new server's name: adopt it when this
    /// upgrade made it, refuse otherwise.
    pub(super) fn adopt(
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

/// A read replica `id` of `source` on `class`, placed as `like` is
/// (parameter group, subnets, security groups, Multi-AZ) and tagged as the
/// replacement of `replaces` for `upgrade_id`.
pub(super) fn replica_like(
    like: &Instance,
    id: String,
    source: String,
    class: String,
    replaces: &str,
    upgrade_id: &str,
) -> CreateReplica {
    CreateReplica {
        id,
        source,
        class,
        parameter_group: like.parameter_group.clone(),
        subnet_group: like.subnet_group.clone(),
        security_groups: like.security_groups.clone(),
        multi_az: like.multi_az,
        tags: replica_tags(&like.tags, replaces, upgrade_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_versions_compare_for_cascading() {
        assert!(version("14.1").is_some_and(|v| v >= CASCADING_SINCE));
        assert!(version("15.4").is_some_and(|v| v >= CASCADING_SINCE));
        assert!(version("14.10").is_some_and(|v| v >= CASCADING_SINCE));
        assert!(!version("13.12").is_some_and(|v| v >= CASCADING_SINCE));
        assert!(!version("14").is_some_and(|v| v >= CASCADING_SINCE));
        assert!(version("").is_none());
    }
}
