//! Where a listed read replica lives. RDS lists a same-region replica in
//! `ReadReplicaDBInstanceIdentifiers` by its plain identifier and a
//! cross-region one by its ARN (`arn:aws:rds:us-west-2:123456789012:db:name`).
//! `DescribeDBInstances` in the source's region does not find the latter, so
//! the provider must tell them apart before describing, or it would skip a
//! reader it cannot see. Pure: unit-tested without an API.
//!
//! Replacing a cross-region reader in its own region is not built: the
//! precheck refuses it with the operator's options ([`placement_check`]).

use crate::provider::Check;

/// The parts of a DB instance ARN (`arn:<partition>:rds:<region>:<account>:db:<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbArn {
    /// `aws`, `aws-cn`, `aws-us-gov`, ...
    pub partition: String,
    pub region: String,
    pub account: String,
    /// The instance identifier in its own region.
    pub name: String,
}

impl DbArn {
    /// The ARN of instance `name` in the same partition, region and account
    /// (the new primary's, for the operator's recreate command).
    pub fn sibling(&self, name: &str) -> String {
        format!(
            "arn:{}:rds:{}:{}:db:{name}",
            self.partition, self.region, self.account
        )
    }
}

/// A DB instance ARN, or `None` for anything else (a plain identifier, another
/// service's or resource type's ARN, a malformed string).
pub fn parse_db_arn(s: &str) -> Option<DbArn> {
    let mut it = s.splitn(7, ':');
    let (arn, partition, service, region, account, kind, name) = (
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
    );
    let ok = arn == "arn"
        && partition.starts_with("aws")
        && service == "rds"
        && is_region(region)
        && !account.is_empty()
        && account.chars().all(|c| c.is_ascii_digit())
        && kind == "db"
        && super::is_valid_identifier(name);
    ok.then(|| DbArn {
        partition: partition.into(),
        region: region.into(),
        account: account.into(),
        name: name.into(),
    })
}

/// `us-west-2`, `cn-north-1`, `us-gov-west-1`: lower-case words and digits
/// joined by hyphens, ending in a number.
fn is_region(s: &str) -> bool {
    s.split('-').count() >= 3
        && s.split('-').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
        && s.rsplit('-')
            .next()
            .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
}

/// Where a replica the source lists lives, relative to the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// In the source's region: describe it by `id`. A plain identifier, or
    /// an ARN naming the source's region.
    Local { id: String },
    /// In another region: the source region's API cannot see it.
    OtherRegion { arn: DbArn },
    /// An ARN, but the source's region is not known (no `upgrade.rds.region`
    /// and no ARN on the source), so whether it is remote cannot be told.
    Undetermined { arn: DbArn },
    /// An ARN, but not of a DB instance.
    Unrecognised { listed: String },
}

impl Placement {
    /// The instance identifier to name it by in messages.
    pub fn name(&self) -> &str {
        match self {
            Placement::Local { id } => id,
            Placement::OtherRegion { arn } | Placement::Undetermined { arn } => &arn.name,
            Placement::Unrecognised { listed } => listed,
        }
    }

    /// Its region when known: the source's for a local one.
    pub fn region<'a>(&'a self, source_region: Option<&'a str>) -> Option<&'a str> {
        match self {
            Placement::Local { .. } => source_region,
            Placement::OtherRegion { arn } | Placement::Undetermined { arn } => Some(&arn.region),
            Placement::Unrecognised { .. } => None,
        }
    }
}

/// Where the replica listed as `listed` lives, for a source in `source_region`.
pub fn placement(listed: &str, source_region: Option<&str>) -> Placement {
    if let Some(arn) = parse_db_arn(listed) {
        return match source_region {
            Some(r) if r == arn.region => Placement::Local { id: arn.name },
            Some(_) => Placement::OtherRegion { arn },
            None => Placement::Undetermined { arn },
        };
    }
    // Anything else is taken as an identifier and described; one RDS does
    // not find becomes a failed check there, never a silent skip.
    if listed.starts_with("arn:") {
        return Placement::Unrecognised {
            listed: listed.into(),
        };
    }
    Placement::Local { id: listed.into() }
}

/// The failed precheck for a listed replica the upgrade cannot replace: in
/// another region, in an undetermined one, or not a DB instance at all.
/// `None` for a local one (it is described and checked like any reader).
/// `new_primary` names the instance that will be the primary afterwards, for
/// the recreate command (the source's name with `identifier-swap`).
pub fn placement_check(
    source: &str,
    source_arn: Option<&DbArn>,
    source_region: Option<&str>,
    new_primary: &str,
    p: &Placement,
) -> Option<Check> {
    let name = p.name();
    let check = format!("rds reader {name} in the source's region");
    match p {
        Placement::Local { .. } => None,
        Placement::OtherRegion { arn } => {
            let region = &arn.region;
            let src_region = source_region.unwrap_or("?");
            // The new primary lives where the source does, in the source's account.
            let new_arn = match source_arn {
                Some(s) => s.sibling(new_primary),
                None => DbArn {
                    region: src_region.into(),
                    ..arn.clone()
                }
                .sibling(new_primary),
            };
            Some(Check::seen_and_fix(
                check,
                false,
                format!(
                    "{name} is a cross-region read replica in {region} (account {}) of {source} in {src_region}; pgsteward replaces readers in the source's region only, so {name} would be left replicating from the old primary until retire_old deletes it",
                    arn.account
                ),
                format!(
                    "before the upgrade, promote it (aws rds promote-read-replica --region {region} --db-instance-identifier {name}) or delete it (aws rds delete-db-instance --region {region} --db-instance-identifier {name} --skip-final-snapshot); after the upgrade, recreate it from the new primary: aws rds create-db-instance-read-replica --region {region} --db-instance-identifier {name} --source-db-instance-identifier {new_arn} --source-region {src_region}"
                ),
            ))
        }
        Placement::Undetermined { arn } => Some(Check::seen_and_fix(
            check,
            false,
            format!(
                "{source} lists {name} by its ARN in {}, and the source's own region is not known",
                arn.region
            ),
            "set upgrade.rds.region to the source's region so pgsteward can tell whether the reader is in it",
        )),
        Placement::Unrecognised { listed } => Some(Check::seen_and_fix(
            format!("rds reader {listed} is a DB instance"),
            false,
            format!("{source} lists {listed:?} as a read replica, which is neither an instance identifier nor a DB instance ARN"),
            "check the source's read replicas in the RDS console; pgsteward does not upgrade a primary that feeds a replica it cannot identify",
        )),
    }
}

/// How a replica is named in a refusal: with its region when it is in
/// another one (or when that cannot be told).
pub fn describe_remote(p: &Placement) -> Option<String> {
    match p {
        Placement::Local { .. } => None,
        Placement::OtherRegion { arn } => {
            Some(format!("{} (cross-region, in {})", arn.name, arn.region))
        }
        Placement::Undetermined { arn } => Some(format!(
            "{} (in {}; the source's region is not known)",
            arn.name, arn.region
        )),
        Placement::Unrecognised { listed } => Some(listed.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arn(partition: &str, region: &str, name: &str) -> DbArn {
        DbArn {
            partition: partition.into(),
            region: region.into(),
            account: "123456789012".into(),
            name: name.into(),
        }
    }

    #[test]
    fn db_arns_of_every_partition_parse() {
        assert_eq!(
            parse_db_arn("arn:aws:rds:us-west-2:123456789012:db:reporting-west"),
            Some(arn("aws", "us-west-2", "reporting-west"))
        );
        assert_eq!(
            parse_db_arn("arn:aws-cn:rds:cn-north-1:123456789012:db:ro"),
            Some(arn("aws-cn", "cn-north-1", "ro"))
        );
        assert_eq!(
            parse_db_arn("arn:aws-us-gov:rds:us-gov-west-1:123456789012:db:ro-gov"),
            Some(arn("aws-us-gov", "us-gov-west-1", "ro-gov"))
        );
        let a = arn("aws", "eu-west-1", "x");
        assert_eq!(
            a.sibling("new"),
            "arn:aws:rds:eu-west-1:123456789012:db:new"
        );
    }

    #[test]
    fn plain_ids_and_malformed_strings_are_not_arns() {
        for s in [
            "reporting-west",
            "",
            "arn:aws:rds:us-west-2:123456789012:db:",
            "arn:aws:rds:us-west-2:123456789012:cluster:aurora-1",
            "arn:aws:rds:us-west-2:123456789012:snapshot:snap",
            "arn:aws:ec2:us-west-2:123456789012:db:x",
            "arn:aws:rds:us-west-2::db:x",
            "arn:aws:rds:uswest2:123456789012:db:x",
            "arn:aws:rds:US-WEST-2:123456789012:db:x",
            "arn:aws:rds:us-west-2:12345678901x:db:x",
            "arn:aws:rds:us-west-2:123456789012:db:x:extra",
            "arn:aws:rds:us-west-2:123456789012:db",
            "arn:azure:rds:us-west-2:123456789012:db:x",
            "ARN:aws:rds:us-west-2:123456789012:db:x",
        ] {
            assert_eq!(parse_db_arn(s), None, "{s:?}");
        }
    }

    #[test]
    fn placement_compares_the_region_with_the_sources() {
        let west = "arn:aws:rds:us-west-2:123456789012:db:reporting-west";
        assert_eq!(
            placement(west, Some("us-east-1")),
            Placement::OtherRegion {
                arn: arn("aws", "us-west-2", "reporting-west")
            }
        );
        assert_eq!(
            placement(west, Some("us-west-2")),
            Placement::Local {
                id: "reporting-west".into()
            }
        );
        assert_eq!(
            placement(west, None),
            Placement::Undetermined {
                arn: arn("aws", "us-west-2", "reporting-west")
            }
        );
        let plain = placement("ro-1", None);
        assert_eq!(plain, Placement::Local { id: "ro-1".into() });
        assert_eq!(plain.region(Some("us-east-1")), Some("us-east-1"));
        assert_eq!(plain.region(None), None);
        assert_eq!(
            placement(west, Some("us-east-1")).region(Some("us-east-1")),
            Some("us-west-2")
        );
        for bad in [
            "arn:aws:rds:us-west-2:123456789012:cluster:c",
            "arn:aws:rds:us-west-2:123456789012:db:",
        ] {
            let p = placement(bad, Some("us-east-1"));
            assert_eq!(p, Placement::Unrecognised { listed: bad.into() });
            assert_eq!(p.name(), bad);
        }
    }

    #[test]
    fn a_cross_region_reader_fails_with_its_region_and_the_fix() {
        let p = placement(
            "arn:aws:rds:us-west-2:123456789012:db:reporting-west",
            Some("us-east-1"),
        );
        let src = parse_db_arn("arn:aws:rds:us-east-1:123456789012:db:pg");
        let c = placement_check("pg", src.as_ref(), Some("us-east-1"), "pg-<upgrade id>", &p)
            .expect("a failed check");
        assert!(!c.ok);
        assert_eq!(c.name, "rds reader reporting-west in the source's region");
        for part in [
            "reporting-west is a cross-region read replica in us-west-2",
            "of pg in us-east-1",
            "promote-read-replica --region us-west-2 --db-instance-identifier reporting-west",
            "create-db-instance-read-replica --region us-west-2",
            "--source-db-instance-identifier arn:aws:rds:us-east-1:123456789012:db:pg-<upgrade id>",
        ] {
            assert!(c.detail.contains(part), "{part:?} in {}", c.detail);
        }
        // Without the source's ARN, the new primary's is built from the reader's account.
        let c = placement_check("pg", None, Some("us-east-1"), "pg", &p).expect("failed");
        assert!(
            c.detail
                .contains("arn:aws:rds:us-east-1:123456789012:db:pg "),
            "{}",
            c.detail
        );
        assert_eq!(
            describe_remote(&p).as_deref(),
            Some("reporting-west (cross-region, in us-west-2)")
        );
        let local = placement("ro-1", Some("us-east-1"));
        assert!(placement_check("pg", None, Some("us-east-1"), "pg", &local).is_none());
        assert!(describe_remote(&local).is_none());
        let unknown = placement("arn:aws:rds:us-west-2:123456789012:db:r", None);
        let c = placement_check("pg", None, None, "pg", &unknown).expect("failed");
        assert!(c.detail.contains("upgrade.rds.region"), "{}", c.detail);
    }
}
