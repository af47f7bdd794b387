//! The source's read replicas for `pgsteward lag` with `provider = "rds"`
//! and no `database.replicas`: each with its region and, where this process
//! can reach it, its SQL endpoint. A replica that cannot be checked is
//! listed with the reason, never dropped.

use crate::config::{Cluster, ConnString};
use crate::provider::ProviderError;

use super::region::{placement, Placement};
use super::{RdsError, RdsProvider};

/// One read replica the source lists.
#[derive(Debug, Clone)]
pub struct DiscoveredReplica {
    /// Its instance identifier (the name part of a cross-region ARN).
    pub id: String,
    /// Where it lives: the source's region for a same-region replica; `None`
    /// when that is not known (no ARN on the source, no `upgrade.rds.region`).
    pub region: Option<String>,
    /// Its SQL endpoint, or why there is none to check.
    pub endpoint: Result<ConnString, Unchecked>,
}

/// Why a listed replica's lag cannot be checked from here (reported, never dropped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unchecked(pub String);

impl RdsProvider {
    /// The source's read replicas (`ReadReplicaDBInstanceIdentifiers`) with
    /// their regions and SQL endpoints. A cross-region replica is not visible
    /// to this region's API: its endpoint comes from `endpoint_override`, or
    /// it is reported unchecked.
    pub async fn discover_replicas(&self) -> Result<Vec<DiscoveredReplica>, RdsError> {
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
        let source_region = self.region_of(&source);
        let here = source_region.as_deref().unwrap_or("the source's region");
        let mut out = Vec::new();
        for listed in &source.read_replicas {
            let p = placement(listed, source_region.as_deref());
            let region = p.region(source_region.as_deref()).map(str::to_string);
            let endpoint = match &p {
                Placement::Local { id } => match self.describe_raw(STEP, id, deadline).await? {
                    Some(inst) => self.endpoint(&inst).ok_or_else(|| {
                        format!("no endpoint yet (status {})", inst.status)
                    }),
                    None => Err(format!(
                        "listed by {source_id}, but DescribeDBInstances in {here} does not find it"
                    )),
                },
                Placement::OtherRegion { arn } | Placement::Undetermined { arn } => {
                    self.override_endpoint(&arn.name).ok_or_else(|| {
                        format!(
                            "cross-region replica in {}: pgsteward reads the RDS API of {here} only; set upgrade.rds.endpoint_override for {} or list it in database.replicas",
                            arn.region, arn.name
                        )
                    })
                }
                Placement::Unrecognised { listed } => Err(format!(
                    "{source_id} lists {listed:?}, which is not a DB instance"
                )),
            };
            out.push(DiscoveredReplica {
                id: p.name().to_string(),
                region,
                endpoint: endpoint.map_err(Unchecked),
            });
        }
        Ok(out)
    }
}

/// The read replicas of `upgrade.rds.source_instance`, their regions and SQL
/// endpoints, for `pgsteward lag` with `provider = "rds"` (instead of
/// `database.replicas`).
pub async fn discover_replicas(cfg: &Cluster) -> Result<Vec<DiscoveredReplica>, ProviderError> {
    Ok(RdsProvider::new(cfg)?.discover_replicas().await?)
}
